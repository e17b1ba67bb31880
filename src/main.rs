use std::process::ExitCode;

fn main() -> ExitCode {
    wgan_train::backend::keep_freed_memory();
    wgan_train::cli::main()
}

use std::process::ExitCode;

fn main() -> ExitCode {
    burn_flex_kernels::keep_freed_memory();
    wgan_train::cli::main()
}

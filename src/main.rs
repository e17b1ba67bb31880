use std::process::ExitCode;

fn main() -> ExitCode {
    wgan_train::cli::main()
}

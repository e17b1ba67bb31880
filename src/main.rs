use std::process::ExitCode;

fn main() -> ExitCode {
    burn_flex_kernels::keep_freed_memory();
    burn_flex_kernels::on_pool_thread(wgan_train::cli::main)
}

//! Command-line interface: parse flags, load and validate the config, pick the device, train.

use crate::backend::Backend;
use crate::config::Config;
use crate::train;
use anyhow::Result;
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

/// Train a Wasserstein GAN whose critic is kept Lipschitz (spectral normalization by default),
/// writing sample grids, metrics and checkpoints into a run folder.
#[derive(Debug, Parser)]
#[command(name = "wgan-train", version, about, long_about = None)]
pub struct Cli {
    /// TOML config file (see configs/ and the README's config reference).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,

    /// Compute backend: flex (CPU, default), ndarray (CPU, slow, deprecated by Burn) or wgpu (GPU).
    #[arg(long, value_enum, default_value_t = Backend::Flex)]
    pub backend: Backend,

    /// Override a config key before validation, as TOML: --set train.iterations=200
    /// --set data.dir=/path/to/images. Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,

    /// Run folder (overrides output.dir).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// Parses the process arguments and runs; the error, if any, is printed once with its causes.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<ExitCode> {
    let config = Config::load(&cli.config, &cli.overrides)?;
    let device = cli.backend.device()?;
    let run_dir = cli.out.unwrap_or_else(|| config.output.dir.clone());
    let summary = train::train(&config, &run_dir, &device)?;
    println!(
        "trained {} iterations; samples, metrics and checkpoints in {} (last grid: {})",
        summary.iterations,
        summary.dir.display(),
        summary.last_grid.display()
    );
    Ok(ExitCode::SUCCESS)
}

//! Command-line interface: parse flags, load and validate the config, pick the device, run.

use crate::backend::{self, Backend};
use crate::config::{Config, EVAL_IMAGES};
use crate::train::{self, Ended, Start};
use crate::{compare, eval, pytorch, sample};
use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Exit code after Ctrl-C (128 + SIGINT), as shells use.
pub const EXIT_INTERRUPTED: u8 = 130;

/// Train a Wasserstein GAN whose critic is kept Lipschitz (spectral normalization by default),
/// writing sample grids, metrics and checkpoints into a run folder.
#[derive(Debug, Parser)]
#[command(name = "wgan-train", version, about, long_about = None, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// Sample from, export, inspect or evaluate a trained run, or compare configs, instead of
    /// training.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Training flags (the default command).
    #[command(flatten)]
    pub train: TrainArgs,
}

/// Flags of a training run.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// TOML config file (see configs/ and the README's config reference). With --resume it may
    /// be left out: the run's own config.toml is used.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Compute backend: flex (CPU, default), ndarray (CPU, slow, deprecated by Burn) or wgpu
    /// (GPU). Wins over the config's `backend` key.
    #[arg(long, value_enum)]
    pub backend: Option<Backend>,

    /// GPU adapter for --backend wgpu, by index in wgpu's list (default: wgpu's choice, a
    /// discrete GPU where there is one). Wins over the config's `device` key.
    #[arg(long, value_name = "N")]
    pub device: Option<usize>,

    /// Override a config key before validation, as TOML: --set train.iterations=200
    /// --set data.dir=/path/to/images. Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,

    /// Run folder (overrides output.dir).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,

    /// Continue the run in the run folder from its newest usable checkpoint.
    #[arg(long, conflicts_with = "force")]
    pub resume: bool,

    /// Start over in a run folder that already holds a run, deleting its config.toml,
    /// metrics.jsonl, samples/ and checkpoints/.
    #[arg(long)]
    pub force: bool,
}

/// Commands on a trained run.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write N individual PNG images (and optionally a grid) from a run's generator.
    Sample(SampleArgs),
    /// Write a run's generator as safetensors with PyTorch's parameter names and layouts.
    Export(ExportArgs),
    /// Check the Lipschitz constraint of a run's critic: per-layer sigma (stored u, v vs exact),
    /// the product bound, and input-gradient norms on the run's data.
    Inspect(InspectArgs),
    /// Sliced Wasserstein distance between a run's generator and its data, with --fid also FID
    /// and KID (and each of the data against itself, for reference).
    Eval(EvalArgs),
    /// Train several configs with the same seed, data and budget, and write report.md with a
    /// table, overlaid plots and the final grids side by side.
    Compare(CompareArgs),
    /// Train a GAN on a 2-D toy distribution (8 Gaussians, 25 Gaussians, Swiss roll; see
    /// configs/toy/) and picture the critic's value and gradient-norm landscape.
    Toy(ToyArgs),
    /// List the GPU adapters that wgpu sees, with the index --device takes.
    Adapters,
    /// Check a backend against the CPU: one critic and one generator step of a tiny GAN per
    /// constraint (sn, gp, clip) from identical weights and inputs on --backend and on Flex;
    /// prints how far every parameter ended apart and fails above the tolerance.
    Parity(ParityArgs),
}

/// Flags of `toy`.
#[derive(Debug, Args)]
pub struct ToyArgs {
    /// Toy config file, e.g. configs/toy/8gaussians-sn.toml.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Override a config key, as TOML (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Run folder (overrides output.dir).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Start over in a run folder that already holds a run (deleting it).
    #[arg(long)]
    pub force: bool,
    /// Compute backend (default: flex).
    #[arg(long, value_enum, default_value_t = Backend::Flex)]
    pub backend: Backend,
    /// GPU adapter for --backend wgpu.
    #[arg(long, value_name = "N")]
    pub device: Option<usize>,
}

/// Flags of `parity`.
#[derive(Debug, Args)]
pub struct ParityArgs {
    /// The backend to check against Flex (default: wgpu).
    #[arg(long, value_enum, default_value_t = Backend::Wgpu)]
    pub backend: Backend,
    /// GPU adapter for --backend wgpu.
    #[arg(long, value_name = "N")]
    pub device: Option<usize>,
}

/// Flags of `inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The run folder.
    #[arg(long, value_name = "RUN")]
    pub run: PathBuf,
    /// Iteration of the checkpoint (default: the newest usable one).
    #[arg(long, value_name = "N")]
    pub checkpoint: Option<usize>,
    /// Images of the run's data (and as many generated) for the gradient norms.
    #[arg(long, default_value_t = 64)]
    pub images: usize,
    /// Compute backend (default: flex).
    #[arg(long, value_enum, default_value_t = Backend::Flex)]
    pub backend: Backend,
    /// GPU adapter for --backend wgpu.
    #[arg(long, value_name = "N")]
    pub device: Option<usize>,
}

/// Flags of `eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The run folder.
    #[arg(long, value_name = "RUN")]
    pub run: PathBuf,
    /// Iteration of the checkpoint (default: the newest usable one).
    #[arg(long, value_name = "N")]
    pub checkpoint: Option<usize>,
    /// Images per set (default: the run's output.eval_images).
    #[arg(long)]
    pub images: Option<usize>,
    /// Compute backend (default: flex).
    #[arg(long, value_enum, default_value_t = Backend::Flex)]
    pub backend: Backend,
    /// GPU adapter for --backend wgpu.
    #[arg(long, value_name = "N")]
    pub device: Option<usize>,
    /// Use G itself where the run keeps a moving average of its weights (train.ema_decay > 0),
    /// which is the default.
    #[arg(long)]
    pub raw: bool,
    /// Also the Fréchet Inception Distance (as pytorch-fid), and KID (as torch-fidelity); both
    /// need Inception weights (--inception).
    #[arg(long)]
    pub fid: bool,
    /// Also the Kernel Inception Distance (same as --fid: both are printed).
    #[arg(long)]
    pub kid: bool,
    /// Inception weights for FID/KID: pytorch-fid's pt_inception-2015-12-05-6726825d.pth or
    /// the safetensors of scripts/get-inception.sh (default: $WGAN_TRAIN_INCEPTION).
    #[arg(long, value_name = "FILE")]
    pub inception: Option<PathBuf>,
}

/// Flags of `compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// The configs to compare, e.g. configs/sn.toml configs/gp.toml configs/clip.toml.
    #[arg(long, num_args = 1.., required = true, value_name = "FILE")]
    pub configs: Vec<PathBuf>,
    /// Folder for the runs (one subfolder per config) and report.md.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Override a config key in every run, as TOML (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Generator iterations per run (default: each config's train.iterations).
    #[arg(long)]
    pub iterations: Option<usize>,
    /// Training minutes per run (stops each run there; with --iterations, whichever first).
    #[arg(long, allow_negative_numbers = true)]
    pub minutes: Option<f64>,
    /// Run each config with this many consecutive seeds (from its train.seed) and report the
    /// mean and spread over seeds, with a verdict on which config wins beyond seed noise.
    #[arg(long, default_value_t = 1, value_name = "K")]
    pub seeds: usize,
    /// Delete earlier runs in --out first.
    #[arg(long)]
    pub force: bool,
    /// Compute backend (default: flex).
    #[arg(long, value_enum, default_value_t = Backend::Flex)]
    pub backend: Backend,
    /// GPU adapter for --backend wgpu.
    #[arg(long, value_name = "N")]
    pub device: Option<usize>,
}

/// Flags of `sample`.
#[derive(Debug, Args)]
pub struct SampleArgs {
    /// The run folder (it holds config.toml and checkpoints/).
    #[arg(long, value_name = "RUN")]
    pub run: PathBuf,
    /// Iteration of the checkpoint to use (default: the newest usable one).
    #[arg(long, value_name = "N")]
    pub checkpoint: Option<usize>,
    /// Number of images.
    #[arg(long, default_value_t = 64)]
    pub n: usize,
    /// Output folder for sample_NNNNNN.png.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Seed of the latent noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also write grid.png of the first (up to 64) images.
    #[arg(long)]
    pub grid: bool,
    /// Compute backend (default: flex).
    #[arg(long, value_enum, default_value_t = Backend::Flex)]
    pub backend: Backend,
    /// GPU adapter for --backend wgpu.
    #[arg(long, value_name = "N")]
    pub device: Option<usize>,
    /// Use G itself where the run keeps a moving average of its weights (train.ema_decay > 0),
    /// which is the default.
    #[arg(long)]
    pub raw: bool,
}

/// Flags of `export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The run folder.
    #[arg(long, value_name = "RUN")]
    pub run: PathBuf,
    /// Iteration of the checkpoint to export (default: the newest usable one).
    #[arg(long, value_name = "N")]
    pub checkpoint: Option<usize>,
    /// Output file, e.g. generator.safetensors.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Use G itself where the run keeps a moving average of its weights (train.ema_decay > 0),
    /// which is the default.
    #[arg(long)]
    pub raw: bool,
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
    match cli.command {
        Some(Command::Sample(args)) => sample_command(args),
        Some(Command::Export(args)) => export_command(args),
        Some(Command::Inspect(args)) => inspect_command(args),
        Some(Command::Eval(args)) => eval_command(args),
        Some(Command::Compare(args)) => compare_command(args),
        Some(Command::Toy(args)) => toy_command(args),
        Some(Command::Adapters) => adapters_command(),
        Some(Command::Parity(args)) => parity_command(args),
        None => train_command(cli.train),
    }
}

fn toy_command(args: ToyArgs) -> Result<ExitCode> {
    let config = crate::toy::ToyConfig::load(&args.config, &args.overrides)?;
    backend::check_adapter(args.backend, args.device)?;
    let device = args.backend.device(args.device)?;
    let run_dir = args.out.unwrap_or_else(|| config.output.dir.clone());
    crate::toy::prepare(&run_dir, args.force)?;
    let interrupt = install_interrupt_handler()?;
    let summary = crate::toy::train(&config, &run_dir, &device, &interrupt)?;
    let s = &summary.stats;
    let modes = match (s.modes, s.centres) {
        (Some(m), Some(c)) => format!(", modes {m}/{c}"),
        _ => String::new(),
    };
    println!(
        "{} iterations in {:.1} s: W {:.3}, ||grad f|| on the grid mean {:.3} max {:.3}{modes}; landscapes in {}",
        s.step,
        s.seconds,
        s.wasserstein,
        s.grid_grad_mean,
        s.grid_grad_max,
        run_dir.join("landscape.png").display()
    );
    Ok(if summary.interrupted {
        ExitCode::from(EXIT_INTERRUPTED)
    } else {
        ExitCode::SUCCESS
    })
}

fn adapters_command() -> Result<ExitCode> {
    let found = backend::adapters();
    if found.is_empty() {
        println!("no wgpu adapter found (a build without wgpu, or no Vulkan/Metal/DX12 driver)");
    }
    for (i, name) in found.iter().enumerate() {
        println!("{i}: {name}");
    }
    Ok(ExitCode::SUCCESS)
}

fn parity_command(args: ParityArgs) -> Result<ExitCode> {
    backend::check_adapter(args.backend, args.device)?;
    let device = args.backend.device(args.device)?.autodiff();
    let cpu = burn::prelude::Device::flex().autodiff();
    println!(
        "one critic step and one generator step (SGD lr 1e-2), {} against flex; tolerance {:e}",
        args.backend.name(),
        crate::parity::TOLERANCE
    );
    println!("kind              critic loss diff  critic max diff  generator max diff  verdict");
    let mut all = true;
    for kind in ["spectral_norm", "gradient_penalty", "weight_clipping"] {
        let p = crate::parity::step_parity(&Config::tiny(kind), &cpu, &device, 3);
        let ok = p.holds();
        all &= ok;
        println!(
            "{kind:17} {:16.2e} {:16.2e} {:19.2e}  {}",
            (p.critic_loss.0 - p.critic_loss.1).abs(),
            p.critic,
            p.generator,
            if ok { "ok" } else { "DIFFERS" }
        );
    }
    Ok(if all {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "error: {} differs from flex beyond the tolerance",
            args.backend.name()
        );
        ExitCode::FAILURE
    })
}

fn train_command(args: TrainArgs) -> Result<ExitCode> {
    let mut config = resolve_config(&args)?;
    config.resolve_data_dir()?;
    let backend = args.backend.or(config.backend).unwrap_or(Backend::Flex);
    let adapter = args.device.or(config.device);
    backend::check_adapter(backend, adapter)?;
    let device = backend.device(adapter)?;
    let run_dir = args
        .out
        .clone()
        .unwrap_or_else(|| config.output.dir.clone());
    let start = if args.resume {
        Start::Resume
    } else {
        if train::holds_anything(&run_dir) {
            if !args.force {
                bail!(
                    "run folder {} already holds a run: pass --resume to continue it, --force to start over (deleting it), or choose another --out",
                    run_dir.display()
                );
            }
            train::clear_run_dir(&run_dir)?;
        }
        Start::Fresh
    };
    let interrupt = install_interrupt_handler()?;
    let summary = train::train(&config, &run_dir, &device, start, &interrupt)?;
    let checkpoint = summary
        .last_checkpoint
        .as_deref()
        .map_or("none".to_string(), |p| p.display().to_string());
    match summary.ended {
        Ended::Finished => {
            println!(
                "trained {} iterations; samples, metrics and checkpoints in {} (last checkpoint: {checkpoint})",
                summary.step,
                summary.dir.display(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Ended::Interrupted => {
            eprintln!(
                "interrupted at iteration {}; checkpoint written to {checkpoint}; continue with --resume --out {}",
                summary.step,
                summary.dir.display()
            );
            Ok(ExitCode::from(EXIT_INTERRUPTED))
        }
    }
}

/// The config file (or, with `--resume` and no `--config`, the run's own config.toml) with
/// the `--set` overrides, validated.
fn resolve_config(args: &TrainArgs) -> Result<Config> {
    match (&args.config, args.resume, &args.out) {
        (Some(path), _, _) => Config::load(path, &args.overrides),
        (None, true, Some(run)) => Config::load(&run.join("config.toml"), &args.overrides),
        (None, true, None) => {
            bail!("--resume without --config needs --out RUN (the run folder to continue)")
        }
        (None, false, _) => bail!("--config FILE is required to train (see --help)"),
    }
}

/// Ctrl-C sets the returned flag, which the loop checks after each iteration; a second
/// Ctrl-C exits at once.
fn install_interrupt_handler() -> Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    let handler_flag = flag.clone();
    ctrlc::set_handler(move || {
        if handler_flag.swap(true, Ordering::SeqCst) {
            eprintln!("\nsecond Ctrl-C: exiting now");
            std::process::exit(EXIT_INTERRUPTED as i32);
        }
        eprintln!(
            "\nCtrl-C: finishing this iteration and writing a checkpoint (Ctrl-C again to exit now)"
        );
    })
    .context("cannot install the Ctrl-C handler")?;
    Ok(flag)
}

fn sample_command(args: SampleArgs) -> Result<ExitCode> {
    if args.n == 0 {
        bail!("--n 0: ask for at least one image");
    }
    backend::check_adapter(args.backend, args.device)?;
    let device = args.backend.device(args.device)?;
    let (config, generator, averaged, step) =
        eval::run_generator(&args.run, args.checkpoint, args.raw, &device)?;
    sample::write_samples(
        &generator,
        config.model.z_dim,
        args.n,
        args.seed,
        &args.out,
        args.grid,
    )?;
    println!(
        "wrote {} images of {} from checkpoint {step} to {}",
        args.n,
        eval::generator_name(&config, averaged),
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn export_command(args: ExportArgs) -> Result<ExitCode> {
    let device = burn::prelude::Device::flex();
    let (config, generator, averaged, step) =
        eval::run_generator(&args.run, args.checkpoint, args.raw, &device)?;
    // Every critic step and the generator step each run G once in training mode.
    let batches = (step * (config.train.n_critic + 1)) as i64;
    pytorch::export_generator(&generator, batches, &args.out)?;
    println!(
        "exported {} of checkpoint {step} to {}",
        eval::generator_name(&config, averaged),
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn inspect_command(args: InspectArgs) -> Result<ExitCode> {
    if args.images == 0 {
        bail!("--images 0: ask for at least one image");
    }
    backend::check_adapter(args.backend, args.device)?;
    let device = args.backend.device(args.device)?;
    // The critic was trained against G itself, so its fakes come from G.
    let run = eval::load_run(&args.run, args.checkpoint, true, &device)?;
    let data = eval::run_data(&run.config, args.images)?;
    let n = args.images.min(data.len());
    let diagnostics = eval::diagnostics(
        &run.critic,
        &run.generator,
        &data,
        n,
        run.config.model.z_dim,
        run.config.train.seed,
        &device,
    );
    println!(
        "critic of {} at iteration {} ({})",
        args.run.display(),
        run.step,
        run.config.constraint.kind.name()
    );
    // A plain (non-autodiff) device: the kernels come without a power iteration.
    let operator_norms = operator_norms(&run.critic, run.config.data.image_size);
    print!(
        "{}",
        eval::inspect_report(&run.critic, &diagnostics, &operator_norms, n)
    );
    Ok(ExitCode::SUCCESS)
}

fn operator_norms(critic: &crate::model::Critic, image_size: usize) -> Vec<f64> {
    use crate::lipschitz::{OPERATOR_NORM_STEPS, conv_operator_norms};
    conv_operator_norms(critic, image_size, OPERATOR_NORM_STEPS)
}

fn eval_command(args: EvalArgs) -> Result<ExitCode> {
    backend::check_adapter(args.backend, args.device)?;
    let device = args.backend.device(args.device)?;
    let run = eval::load_run(&args.run, args.checkpoint, args.raw, &device)?;
    let n = args.images.unwrap_or(run.config.output.eval_images);
    if !EVAL_IMAGES.contains(&n) {
        bail!(
            "--images {n} is out of range: use {} to {}",
            EVAL_IMAGES.start(),
            EVAL_IMAGES.end()
        );
    }
    let (generated, floor, n) = eval::evaluate_run(&run, n, &device)?;
    println!(
        "{} of {} at iteration {}",
        eval::generator_name(&run.config, run.averaged),
        args.run.display(),
        run.step
    );
    print!("{}", eval::swd_report(&generated, floor.as_ref(), n));
    if args.fid || args.kid {
        match eval::inception_weights(args.inception.as_deref(), &run.config) {
            Some(weights) => {
                let scores = eval::fid_scores(&args.run, &run, n, &weights, &device)?;
                print!("{}", eval::fid_report(&scores));
            }
            None => println!("{}", eval::NO_INCEPTION),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn compare_command(args: CompareArgs) -> Result<ExitCode> {
    if let Some(m) = args.minutes
        && !(m.is_finite() && m > 0.0)
    {
        bail!("--minutes {m}: give a positive number of minutes");
    }
    if args.iterations == Some(0) {
        bail!("--iterations 0: give at least one iteration");
    }
    backend::check_adapter(args.backend, args.device)?;
    let device = args.backend.device(args.device)?;
    let entries = compare::entries(&args.configs, &args.out);
    let toys = args
        .configs
        .iter()
        .filter(|c| crate::toy::is_toy_config(c))
        .count();
    if toys > 0 {
        if toys < args.configs.len() {
            bail!(
                "--configs mixes toy configs (with a [toy] table) and image configs: compare one kind at a time"
            );
        }
        if args.minutes.is_some() {
            bail!("--minutes does not apply to toy configs: use --iterations");
        }
        if args.seeds != 1 {
            bail!("--seeds does not apply to toy configs yet: compare them one seed at a time");
        }
        let interrupt = install_interrupt_handler()?;
        let (report, interrupted) = crate::toy::compare(
            &entries,
            &args.overrides,
            args.iterations,
            &args.out,
            args.force,
            &device,
            &interrupt,
        )?;
        println!("compared {} toy runs: {}", entries.len(), report.display());
        return Ok(if interrupted {
            ExitCode::from(EXIT_INTERRUPTED)
        } else {
            ExitCode::SUCCESS
        });
    }
    let budget = compare::Budget {
        iterations: args.iterations,
        minutes: args.minutes,
    };
    let interrupt = install_interrupt_handler()?;
    let (report, ended) = compare::compare(
        &entries,
        &args.overrides,
        budget,
        args.seeds,
        &args.out,
        args.force,
        &device,
        &interrupt,
    )?;
    match ended {
        Ended::Finished => {
            let seeds = if args.seeds > 1 {
                format!(" x {} seeds", args.seeds)
            } else {
                String::new()
            };
            println!(
                "compared {} runs{seeds}: {}",
                entries.len(),
                report.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Ended::Interrupted => {
            eprintln!(
                "interrupted; the report covers the runs so far: {}",
                report.display()
            );
            Ok(ExitCode::from(EXIT_INTERRUPTED))
        }
    }
}

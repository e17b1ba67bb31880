//! The WGAN training loop (Arjovsky et al. 2017, Alg. 1): `n_critic` critic steps minimising
//! mean f(fake) - mean f(real), then one generator step minimising -mean f(fake).

use crate::checkpoint::{self, TrainState, write_atomic};
use crate::config::{Config, OptimizerKind};
use crate::constraint::{Constraint, PenaltyInputs};
use crate::data::{BatchSampler, ImageSet};
use crate::eval::{self, Evaluator};
use crate::metrics::{self, MetricsLog, Record};
use crate::model::{Critic, Generator};
use crate::plot;
use crate::sample::{grid, save_png};
use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer, RmsPropConfig};
use burn::prelude::*;
use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// The two networks, their optimizers and the critic's constraint.
pub struct Gan {
    /// G.
    pub generator: Generator,
    /// f.
    pub critic: Critic,
    /// Optimizer of G.
    pub optim_g: ModuleOptimizer,
    /// Optimizer of f.
    pub optim_d: ModuleOptimizer,
    /// How f is kept Lipschitz.
    pub constraint: Constraint,
}

impl Gan {
    /// Fresh networks for `config`, initialised from the device RNG seeded with `train.seed`.
    /// `device` should carry autodiff.
    pub fn new(config: &Config, device: &Device) -> Self {
        device.seed(config.train.seed);
        let (d, m) = (&config.data, &config.model);
        let constraint = Constraint::from_config(&config.constraint);
        let generator = Generator::new(d.image_size, d.channels, m.z_dim, m.g_width, device);
        let critic = Critic::new(
            d.image_size,
            d.channels,
            m.d_width,
            constraint.critic_spectral(),
            device,
        );
        crate::model::initialize_params(&generator);
        crate::model::initialize_params(&critic);
        Self {
            generator,
            critic,
            optim_g: optimizer(config),
            optim_d: optimizer(config),
            constraint,
        }
    }
}

fn optimizer(config: &Config) -> ModuleOptimizer {
    let t = &config.train;
    match t.optimizer {
        // PyTorch's epsilon, so that runs compare with the peer.
        OptimizerKind::Adam => AdamConfig::new()
            .with_beta_1(t.beta1 as f32)
            .with_beta_2(t.beta2 as f32)
            .with_epsilon(1e-8)
            .init(),
        OptimizerKind::Rmsprop => RmsPropConfig::new()
            .with_alpha(0.99)
            .with_momentum(0.0)
            .with_epsilon(1e-8)
            .init(),
    }
}

/// The inputs of one critic step.
pub struct CriticBatch {
    /// Real images `[B, C, S, S]` in [-1, 1].
    pub real: Tensor<4>,
    /// Noise `[B, z]` for the fake batch.
    pub z: Tensor<2>,
    /// `[B, 1, 1, 1]`, uniform in [0, 1]: interpolation weights for the gradient penalty
    /// (drawn for every kind, so that all kinds see the same noise stream).
    pub epsilon: Tensor<4>,
}

/// Scalars `[1]` of one critic step.
pub struct CriticStats {
    /// The minimised loss: mean f(fake) - mean f(real) + penalty.
    pub loss: Tensor<1>,
    /// mean f(real) - mean f(fake).
    pub wasserstein: Tensor<1>,
    /// The constraint's penalty term, if it has one.
    pub penalty: Option<Tensor<1>>,
}

/// One critic step: minimise mean f(fake) - mean f(real) (+ the constraint's penalty), then
/// apply the constraint's post-step (clipping).
pub fn critic_step(gan: &mut Gan, batch: CriticBatch, lr: f64) -> CriticStats {
    let CriticBatch { real, z, epsilon } = batch;
    // G in training mode (batch statistics, running statistics updated) but untracked: the
    // fakes are constants here.
    let fake = gan.generator.clone().no_grad().forward(z).detach(); // [B, C, S, S]
    // Two forwards, fake first, as PyTorch's `d(fake).mean() - d(real).mean()`: under spectral
    // normalization each refines u, v once, and the real batch sees the newer estimate.
    let fake_mean = gan.critic.forward(fake.clone()).mean(); // [1]
    let real_mean = gan.critic.forward(real.clone()).mean(); // [1]
    let wasserstein = (real_mean.clone() - fake_mean.clone()).detach();
    let inputs = PenaltyInputs {
        real,
        fake,
        epsilon,
    };
    let penalty = gan.constraint.penalty(&gan.critic, inputs);
    let loss = match &penalty {
        Some(p) => fake_mean - real_mean + p.clone(),
        None => fake_mean - real_mean,
    };
    let grads = GradientsParams::from_grads(loss.backward(), &gan.critic);
    let critic = gan.optim_d.step(lr, gan.critic.clone(), grads);
    gan.critic = gan.constraint.after_critic_step(critic);
    CriticStats {
        loss: loss.detach(),
        wasserstein,
        penalty: penalty.map(Tensor::detach),
    }
}

/// One generator step on noise `[B, z]`; returns the loss -mean f(G(z)).
///
/// The backward pass runs in two graphs: the critic's, from the loss to the images
/// (`g = d loss / d fake`), then the generator's, from `sum(fake * g)` with `g` constant, whose
/// gradient is exactly `J^T g`, the chain rule's. One graph from the loss to the generator's
/// weights gives the same numbers on the CPU backends, but on Burn 0.22's wgpu backend
/// (lavapipe) it gave wrong generator gradients in about one process in three when a critic
/// step had run before (every generator parameter off, e.g. 7e-4 after one SGD step of lr 1e-2,
/// while the critic's input gradient alone was right); the split graphs matched the CPU in
/// 10 runs of 10. The parity test in this file guards it.
pub fn generator_step(gan: &mut Gan, z: Tensor<2>, lr: f64) -> Tensor<1> {
    // The critic's weights get no gradient in this step.
    let critic = gan.critic.clone().no_grad();
    let fake = gan.generator.forward(z); // [B, C, S, S]
    let images = fake.clone().detach().require_grad();
    let loss = critic.forward(images.clone()).mean().neg(); // [1]
    let upstream = images
        .grad(&loss.backward())
        .expect("the images require a gradient"); // [B, C, S, S]
    let surrogate = (fake * upstream).sum(); // [1], gradient J^T upstream
    let grads = GradientsParams::from_grads(surrogate.backward(), &gan.generator);
    gan.generator = gan.optim_g.step(lr, gan.generator.clone(), grads);
    loss.detach()
}

/// Standard normal noise `[n, z_dim]` from the host RNG, so that runs are reproducible on
/// every backend.
pub fn noise(rng: &mut ChaCha8Rng, n: usize, z_dim: usize, device: &Device) -> Tensor<2> {
    let values: Vec<f32> = (0..n * z_dim).map(|_| StandardNormal.sample(rng)).collect();
    Tensor::from_data(TensorData::new(values, [n, z_dim]), device)
}

/// Uniform [0, 1) interpolation weights `[n, 1, 1, 1]` from the host RNG.
pub fn epsilon(rng: &mut ChaCha8Rng, n: usize, device: &Device) -> Tensor<4> {
    let values: Vec<f32> = (0..n).map(|_| rng.random::<f32>()).collect();
    Tensor::from_data(TensorData::new(values, [n, 1, 1, 1]), device)
}

/// How a run starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// A new run in an empty (or `--force`d) folder.
    Fresh,
    /// Continue from the newest usable checkpoint in the folder.
    Resume,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// All `train.iterations` done.
    Finished,
    /// Stopped by Ctrl-C after a checkpoint was written.
    Interrupted,
}

/// What a run leaves behind.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The run folder.
    pub dir: PathBuf,
    /// Generator iterations done.
    pub step: usize,
    /// The last sample grid written, if any.
    pub last_grid: Option<PathBuf>,
    /// The last checkpoint written.
    pub last_checkpoint: Option<PathBuf>,
    /// Finished or interrupted.
    pub ended: Ended,
}

/// Test hook: `WGAN_TRAIN_TEST_NAN_AT=N` makes the critic loss NaN at iteration N, so that
/// the divergence path can be tested end to end.
const NAN_HOOK: &str = "WGAN_TRAIN_TEST_NAN_AT";

/// Trains `config` on `device` (a plain device; autodiff is added here), writing samples,
/// metrics, the resolved config and checkpoints into `run_dir`. Checks `interrupt` after each
/// iteration: when set, writes a checkpoint and returns [`Ended::Interrupted`].
pub fn train(
    config: &Config,
    run_dir: &Path,
    device: &Device,
    start: Start,
    interrupt: &AtomicBool,
) -> Result<Summary> {
    let data = load_data(config)?;
    let device = device.clone().autodiff();
    let (mut gan, mut state) = match start {
        Start::Fresh => fresh_run(config, run_dir, &data, &device)?,
        Start::Resume => resume_run(config, run_dir, &device)?,
    };
    let t = &config.train;
    let rows = config.output.grid_rows;
    let fixed_noise = Tensor::<2>::from_data(
        TensorData::new(state.fixed_noise.clone(), [rows * rows, config.model.z_dim]),
        &device,
    );
    let nan_at: Option<usize> = std::env::var(NAN_HOOK).ok().and_then(|v| v.parse().ok());
    let mut monitor = Monitor::open(config, run_dir, &data)?;
    let bar = progress_bar(t.iterations, state.step);
    let (start_time, elapsed_before) = (Instant::now(), state.elapsed_s);
    let mut window = (Instant::now(), 0usize);
    let mut summary = Summary {
        dir: run_dir.to_path_buf(),
        step: state.step,
        last_grid: None,
        last_checkpoint: None,
        ended: Ended::Finished,
    };
    let o = &config.output;
    while state.step < t.iterations {
        let step = state.step + 1;
        let mut losses = iteration(&mut gan, &mut state, &data, config, &device);
        if nan_at == Some(step) {
            losses.critic_loss = f64::NAN;
        }
        check_finite(step, &losses)?;
        state.step = step;
        state.elapsed_s = elapsed_before + start_time.elapsed().as_secs_f64() - monitor.overhead_s;
        bar.set_message(format!(
            "D {:+.4} G {:+.4} W {:+.4}",
            losses.critic_loss, losses.generator_loss, losses.wasserstein
        ));
        bar.inc(1);
        window.1 += 1;
        let out_of_time = t.max_minutes.is_some_and(|m| state.elapsed_s >= m * 60.0);
        let last = step == t.iterations || out_of_time;
        let interrupted = interrupt.load(Ordering::SeqCst);
        let evaluate = monitor.evaluator.is_some() && (every(step, o.eval_every) || last);
        if step.is_multiple_of(o.log_every) || last || interrupted || evaluate {
            let secs = window.0.elapsed().as_secs_f64() / window.1 as f64;
            let images = (t.batch_size * t.n_critic) as f64;
            let record = losses.record(step, secs, images, state.elapsed_s);
            bar.suspend(|| monitor.log(record, &gan, evaluate, &device))?;
            window = (Instant::now(), 0);
        }
        if every(step, o.sample_every) || last {
            summary.last_grid = Some(write_grid(
                &gan.generator,
                fixed_noise.clone(),
                rows,
                run_dir,
                step,
            )?);
        }
        if every(step, o.checkpoint_every) || last || interrupted {
            let keep = o.keep_checkpoints;
            summary.last_checkpoint = Some(checkpoint::save(run_dir, &gan, &state, keep)?);
        }
        summary.step = step;
        if interrupted && !last {
            summary.ended = Ended::Interrupted;
            break;
        }
        if out_of_time {
            break;
        }
    }
    bar.finish_and_clear();
    Ok(summary)
}

/// What a metrics line carries beyond the losses (diagnostics, SWD), the metrics file and the
/// plots, and the seconds all that took, which are left out of the training time.
struct Monitor<'a> {
    config: &'a Config,
    run_dir: &'a Path,
    data: &'a ImageSet,
    evaluator: Option<Evaluator>,
    log: MetricsLog,
    records: Vec<Record>,
    overhead_s: f64,
}

impl<'a> Monitor<'a> {
    /// Appends to the run's metrics.jsonl (a resumed run's earlier lines feed the plots).
    fn open(config: &'a Config, run_dir: &'a Path, data: &'a ImageSet) -> Result<Self> {
        let path = run_dir.join("metrics.jsonl");
        let o = &config.output;
        Ok(Self {
            config,
            run_dir,
            data,
            evaluator: (o.eval_every > 0).then(|| {
                Evaluator::new(data, o.eval_images, config.model.z_dim, config.train.seed)
            }),
            records: metrics::read(&path).unwrap_or_default(),
            log: MetricsLog::open(&path)?,
            overhead_s: 0.0,
        })
    }

    /// Adds the diagnostics (and, when `evaluate`, the SWD) to `record`, appends it, redraws
    /// the plots.
    fn log(
        &mut self,
        mut record: Record,
        gan: &Gan,
        evaluate: bool,
        device: &Device,
    ) -> Result<()> {
        let started = Instant::now();
        let (o, t) = (&self.config.output, &self.config.train);
        let step = record.step;
        if o.diagnostics {
            record.lipschitz = Some(eval::diagnostics(
                &gan.critic,
                &gan.generator,
                self.data,
                DIAGNOSTICS_BATCH.min(t.batch_size),
                self.config.model.z_dim,
                t.seed.wrapping_add(step as u64),
                device,
            ));
        }
        if let Some(evaluator) = self.evaluator.as_ref().filter(|_| evaluate) {
            let swd = evaluator.swd(&gan.generator, device);
            let levels: Vec<String> = swd.levels.iter().map(|l| format!("{l:.2}")).collect();
            eprintln!(
                "iteration {step}: SWD x1e3 {:.2} (levels {})",
                swd.mean,
                levels.join(", ")
            );
            record.swd = Some(swd);
        }
        self.log.append(&record)?;
        self.records.push(record);
        if o.plots
            && let Err(e) = plot::run_plots(&self.run_dir.join(PLOTS), &self.records)
        {
            eprintln!("warning: plots not updated: {e:#}");
        }
        self.overhead_s += started.elapsed().as_secs_f64();
        Ok(())
    }
}

/// The scalars of one generator iteration.
#[derive(Debug, Clone, Copy)]
pub struct IterationLosses {
    /// Critic loss of the last critic step.
    pub critic_loss: f64,
    /// Generator loss.
    pub generator_loss: f64,
    /// Wasserstein estimate of the last critic step.
    pub wasserstein: f64,
    /// Penalty term of the last critic step.
    pub penalty: Option<f64>,
}

impl IterationLosses {
    fn record(
        &self,
        step: usize,
        sec_per_iter: f64,
        images_per_iter: f64,
        elapsed_s: f64,
    ) -> Record {
        Record {
            step,
            critic_loss: self.critic_loss,
            generator_loss: self.generator_loss,
            wasserstein: self.wasserstein,
            penalty: self.penalty,
            sec_per_iter,
            images_per_sec: images_per_iter / sec_per_iter,
            elapsed_s,
            lipschitz: None,
            swd: None,
        }
    }
}

/// One generator iteration: `n_critic` critic steps, then one generator step.
pub fn iteration(
    gan: &mut Gan,
    state: &mut TrainState,
    data: &ImageSet,
    config: &Config,
    device: &Device,
) -> IterationLosses {
    let t = &config.train;
    let z_dim = config.model.z_dim;
    let mut last = None;
    for _ in 0..t.n_critic {
        let batch = CriticBatch {
            real: data.batch(state.sampler.next_batch(t.batch_size), device),
            z: noise(&mut state.rng, t.batch_size, z_dim, device),
            epsilon: epsilon(&mut state.rng, t.batch_size, device),
        };
        last = Some(critic_step(gan, batch, t.lr_d));
    }
    let stats = last.expect("n_critic >= 1");
    let z = noise(&mut state.rng, t.batch_size, z_dim, device);
    let generator_loss = scalar(generator_step(gan, z, t.lr_g));
    IterationLosses {
        critic_loss: scalar(stats.loss),
        generator_loss,
        wasserstein: scalar(stats.wasserstein),
        penalty: stats.penalty.map(scalar),
    }
}

/// A new run: networks from the seed, the folder prepared, the resolved config written.
fn fresh_run(
    config: &Config,
    run_dir: &Path,
    data: &ImageSet,
    device: &Device,
) -> Result<(Gan, TrainState)> {
    prepare_run_dir(config, run_dir)?;
    let gan = Gan::new(config, device);
    let t = &config.train;
    let mut rng = ChaCha8Rng::seed_from_u64(t.seed.wrapping_add(1));
    let rows = config.output.grid_rows;
    let fixed: Vec<f32> = (0..rows * rows * config.model.z_dim)
        .map(|_| StandardNormal.sample(&mut rng))
        .collect();
    let state = TrainState {
        format_version: checkpoint::FORMAT_VERSION,
        step: 0,
        sampler: BatchSampler::new(data.len(), t.seed),
        rng,
        fixed_noise: fixed,
        elapsed_s: 0.0,
    };
    Ok((gan, state))
}

/// Continue from the newest usable checkpoint; metrics lines written after it are dropped.
fn resume_run(config: &Config, run_dir: &Path, device: &Device) -> Result<(Gan, TrainState)> {
    let (gan, state, dir, warnings) = checkpoint::load_latest(run_dir, || Gan::new(config, device))
        .with_context(|| format!("cannot resume {}", run_dir.display()))?;
    for w in warnings {
        eprintln!("{w}");
    }
    let rows = config.output.grid_rows;
    if state.fixed_noise.len() != rows * rows * config.model.z_dim {
        bail!(
            "checkpoint {} was written with another output.grid_rows or model.z_dim: resume with the run's config.toml",
            dir.display()
        );
    }
    metrics::truncate_after(&run_dir.join("metrics.jsonl"), state.step)?;
    write_atomic(&run_dir.join("config.toml"), config.to_toml().as_bytes())?;
    eprintln!(
        "resuming {} from {} (iteration {})",
        run_dir.display(),
        dir.display(),
        state.step
    );
    Ok((gan, state))
}

fn every(step: usize, period: usize) -> bool {
    period > 0 && step.is_multiple_of(period)
}

fn scalar(t: Tensor<1>) -> f64 {
    t.into_scalar::<f32>() as f64
}

fn check_finite(step: usize, losses: &IterationLosses) -> Result<()> {
    let named = [
        ("critic", losses.critic_loss),
        ("generator", losses.generator_loss),
    ];
    for (name, value) in named {
        if !value.is_finite() {
            bail!(
                "the {name} loss is {value} at iteration {step}: training diverged; the last good checkpoint is kept: lower the learning rates and resume with --resume, or check the data"
            );
        }
    }
    Ok(())
}

fn prepare_run_dir(config: &Config, run_dir: &Path) -> Result<()> {
    std::fs::create_dir_all(run_dir.join("samples")).with_context(|| {
        format!(
            "cannot create run folder {}: choose a writable folder with --out",
            run_dir.display()
        )
    })?;
    write_atomic(&run_dir.join("config.toml"), config.to_toml().as_bytes())
}

/// The run's plot folder.
pub const PLOTS: &str = "plots";

/// Real images in the diagnostics batch (at most the training batch size).
const DIAGNOSTICS_BATCH: usize = 64;

/// The files and folders a run writes; `--force` removes these and nothing else.
pub const RUN_CONTENTS: [&str; 5] = [
    "config.toml",
    "metrics.jsonl",
    "samples",
    "checkpoints",
    PLOTS,
];

/// Whether `run_dir` exists and holds anything.
pub fn holds_anything(run_dir: &Path) -> bool {
    std::fs::read_dir(run_dir).is_ok_and(|mut entries| entries.next().is_some())
}

/// Removes what an earlier run wrote into `run_dir` (`--force`).
pub fn clear_run_dir(run_dir: &Path) -> Result<()> {
    for name in RUN_CONTENTS {
        let path = run_dir.join(name);
        let result = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else if path.exists() {
            std::fs::remove_file(&path)
        } else {
            Ok(())
        };
        result.with_context(|| format!("cannot remove {}", path.display()))?;
    }
    Ok(())
}

fn load_data(config: &Config) -> Result<ImageSet> {
    let d = &config.data;
    let (data, skipped) = ImageSet::load(&d.dir, d.preprocess())?;
    if let Some(warning) = skipped.warning(&d.dir) {
        eprintln!("{warning}");
    }
    if data.len() < config.train.batch_size {
        bail!(
            "{} holds {} readable images, fewer than train.batch_size = {}: lower train.batch_size or add images",
            d.dir.display(),
            data.len(),
            config.train.batch_size
        );
    }
    Ok(data)
}

fn progress_bar(iterations: usize, done: usize) -> ProgressBar {
    let bar = ProgressBar::new(iterations as u64).with_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} it, {per_sec}, ETA {eta_precise}  {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_position(done as u64);
    bar.reset_eta();
    bar
}

/// Writes `samples/step_NNNNNN.png` from the generator in inference mode.
fn write_grid(
    generator: &Generator,
    noise: Tensor<2>,
    rows: usize,
    run_dir: &Path,
    step: usize,
) -> Result<PathBuf> {
    let images = generator.valid().forward(noise.without_autodiff()); // [rows^2, C, S, S]
    let path = run_dir.join("samples").join(format!("step_{step:06}.png"));
    save_png(&grid(images, rows), &path)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn tiny_config(kind: &str) -> Config {
        let text = format!(
            "[data]\nimage_size = 32\nchannels = 1\n[model]\nz_dim = 8\ng_width = 4\nd_width = 4\n[constraint]\nkind = \"{kind}\"\n"
        );
        Config::from_toml(&text, &[]).unwrap()
    }

    /// Every float parameter and state value of `module`, one vector per tensor.
    pub(super) fn params<M: Module>(module: &M) -> Vec<Vec<f32>> {
        struct Collect(Vec<Vec<f32>>);
        impl burn::module::ModuleVisitor for Collect {
            fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<D>>) {
                self.0
                    .push(p.val().into_data().convert::<f32>().try_to_vec().unwrap());
            }
        }
        let mut c = Collect(Vec::new());
        module.visit(&mut c);
        c.0
    }

    fn batch(device: &Device, rng: &mut ChaCha8Rng) -> CriticBatch {
        CriticBatch {
            real: Tensor::random([4, 1, 32, 32], burn::tensor::Distribution::Default, device),
            z: noise(rng, 4, 8, device),
            epsilon: epsilon(rng, 4, device),
        }
    }

    const KINDS: [&str; 5] = [
        "spectral_norm",
        "gradient_penalty",
        "weight_clipping",
        "spectral_penalty",
        "none",
    ];

    #[test]
    fn critic_step_moves_only_the_critic_and_generator_step_only_the_generator() {
        for kind in KINDS {
            let device = Device::flex().autodiff();
            let mut gan = Gan::new(&tiny_config(kind), &device);
            let mut rng = ChaCha8Rng::seed_from_u64(0);
            for _ in 0..2 {
                let (g0, d0) = (params(&gan.generator), params(&gan.critic));
                critic_step(&mut gan, batch(&device, &mut rng), 1e-3);
                let (g1, d1) = (params(&gan.generator), params(&gan.critic));
                // BatchNorm running statistics move in the critic step (G runs in training
                // mode), but no trainable generator weight does.
                assert_eq!(g0[0], g1[0], "{kind}: critic step moved G's projection");
                assert_ne!(d0[0], d1[0], "{kind}: critic step left the critic");
                generator_step(&mut gan, noise(&mut rng, 4, 8, &device), 1e-3);
                let (g2, d2) = (params(&gan.generator), params(&gan.critic));
                assert_ne!(g1[0], g2[0], "{kind}: generator step left G");
                assert_eq!(d1[0], d2[0], "{kind}: generator step moved the critic");
            }
        }
    }

    #[test]
    fn the_loss_is_the_penalty_minus_the_wasserstein_estimate_and_falls_on_a_fixed_batch() {
        for kind in KINDS {
            let device = Device::flex().autodiff();
            let mut gan = Gan::new(&tiny_config(kind), &device);
            let mut rng = ChaCha8Rng::seed_from_u64(1);
            let fixed = batch(&device, &mut rng);
            let mut losses = Vec::new();
            for _ in 0..20 {
                let b = CriticBatch {
                    real: fixed.real.clone(),
                    z: fixed.z.clone(),
                    epsilon: fixed.epsilon.clone(),
                };
                let stats = critic_step(&mut gan, b, 1e-3);
                let penalty = stats.penalty.map(scalar).unwrap_or(0.0);
                let (loss, w) = (scalar(stats.loss), scalar(stats.wasserstein));
                assert!((loss + w - penalty).abs() < 1e-5, "{kind}");
                losses.push(loss);
            }
            assert!(
                losses[19] < losses[0] - 1e-4,
                "{kind}: loss did not fall: {losses:?}"
            );
        }
    }

    #[test]
    fn after_a_clipping_step_every_critic_parameter_lies_in_the_bound() {
        let device = Device::flex().autodiff();
        let config = Config::from_toml(
            "[model]\nz_dim = 8\ng_width = 4\nd_width = 4\n[constraint]\nkind = \"weight_clipping\"\nclip_value = 0.005\n",
            &[],
        )
        .unwrap();
        let mut gan = Gan::new(&config, &device);
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let before: f32 = params(&gan.critic)
            .iter()
            .flatten()
            .fold(0.0, |m, v| m.max(v.abs()));
        assert!(before > 0.005, "the initial weights exceed the bound");
        critic_step(&mut gan, batch(&device, &mut rng), 1e-3);
        for p in params(&gan.critic) {
            assert!(
                p.iter().all(|v| v.abs() <= 0.005),
                "a parameter escaped the bound"
            );
        }
    }

    /// The two-graph generator step (critic to images, then generator) gives the gradient of
    /// one graph from the loss to the generator's weights, which autodiff computes directly.
    #[test]
    fn the_two_graph_generator_step_equals_one_graph_backpropagation() {
        let device = Device::flex().autodiff();
        for kind in ["spectral_norm", "none"] {
            let config = tiny_config(kind);
            let mut a = Gan::new(&config, &device);
            let mut b = Gan::new(&config, &device);
            b.generator = b.generator.load_record(a.generator.clone().into_record());
            b.critic = b.critic.load_record(a.critic.clone().into_record());
            a.optim_g = burn::optim::SgdConfig::new().init();
            b.optim_g = burn::optim::SgdConfig::new().init();
            let z = noise(&mut ChaCha8Rng::seed_from_u64(4), 4, 8, &device);
            let la = scalar(generator_step(&mut a, z.clone(), 1e-1));
            // One graph, as autodiff would do it.
            let critic = b.critic.clone().no_grad();
            let loss = critic.forward(b.generator.forward(z)).mean().neg();
            let grads = GradientsParams::from_grads(loss.backward(), &b.generator);
            b.generator = b.optim_g.step(1e-1, b.generator.clone(), grads);
            assert!((la - scalar(loss.detach())).abs() < 1e-7, "{kind}: losses");
            let (pa, pb) = (params(&a.generator), params(&b.generator));
            let before = params(&Gan::new(&config, &device).generator);
            let mut moved = 0.0f32;
            for ((x, y), z) in pa.iter().zip(&pb).zip(&before) {
                for ((p, q), r) in x.iter().zip(y).zip(z) {
                    assert!((p - q).abs() <= 1e-6, "{kind}: {p} vs {q}");
                    moved = moved.max((p - r).abs());
                }
            }
            assert!(moved > 1e-4, "{kind}: the step moved the generator");
        }
    }

    #[test]
    fn noise_is_standard_normal_and_reproducible() {
        let device = Device::flex();
        let a = noise(&mut ChaCha8Rng::seed_from_u64(3), 100, 100, &device);
        let b = noise(&mut ChaCha8Rng::seed_from_u64(3), 100, 100, &device);
        let (a, b): (Vec<f32>, Vec<f32>) = (
            a.into_data().try_to_vec().unwrap(),
            b.into_data().try_to_vec().unwrap(),
        );
        assert_eq!(a, b);
        let mean = a.iter().sum::<f32>() / a.len() as f32;
        let var = a.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / a.len() as f32;
        assert!(
            mean.abs() < 0.05 && (var - 1.0).abs() < 0.05,
            "mean {mean} var {var}"
        );
    }
}

#[cfg(all(test, feature = "wgpu"))]
mod wgpu_parity {
    use super::tests::{params, tiny_config};
    use super::*;
    use crate::backend::{Backend, gpu_available};
    use crate::testing::max_abs_diff;

    /// Every input drawn on the host, so both devices get the same numbers.
    fn host_batch(seed: u64, device: &Device) -> (CriticBatch, Tensor<2>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let real: Vec<f32> = (0..4 * 32 * 32)
            .map(|_| rng.random::<f32>() * 2.0 - 1.0)
            .collect();
        let batch = CriticBatch {
            real: Tensor::from_data(TensorData::new(real, [4, 1, 32, 32]), device),
            z: noise(&mut rng, 4, 8, device),
            epsilon: epsilon(&mut rng, 4, device),
        };
        (batch, noise(&mut rng, 4, 8, device))
    }

    fn flat<M: Module>(module: &M) -> Vec<f32> {
        params(module).concat()
    }

    /// Parity tolerance on every parameter and state value (spectral u, v; BatchNorm
    /// statistics): f32 sums in another order, then one SGD step of lr 1e-2.
    const TOLERANCE: f32 = 1e-5;

    #[test]
    #[allow(deprecated)] // ndarray is the reference the issue names
    fn one_critic_and_one_generator_step_on_wgpu_match_the_cpu_backends() {
        if !gpu_available() {
            println!("skipped: no wgpu adapter on this machine (install mesa-vulkan-drivers)");
            return;
        }
        let gpu = Backend::Wgpu.device(None).unwrap().autodiff();
        for cpu in [Device::ndarray().autodiff(), Device::flex().autodiff()] {
            for kind in ["spectral_norm", "gradient_penalty", "weight_clipping"] {
                let config = tiny_config(kind);
                let mut a = Gan::new(&config, &cpu);
                let mut b = Gan::new(&config, &gpu);
                // Identical initial weights (and spectral-norm u, v): copy a's into b.
                b.generator = b.generator.load_record(a.generator.clone().into_record());
                b.critic = b.critic.load_record(a.critic.clone().into_record());
                // SGD, so that an update is lr * gradient. Adam's first step is lr * sign(g),
                // which turns rounding noise on gradients that are identically zero (the
                // critic head's bias under the WGAN loss, biases before BatchNorm) into +-lr.
                for gan in [&mut a, &mut b] {
                    gan.optim_d = burn::optim::SgdConfig::new().init();
                    gan.optim_g = burn::optim::SgdConfig::new().init();
                }
                assert_eq!(max_abs_diff(&flat(&a.critic), &flat(&b.critic)), 0.0);
                let (batch_a, z_a) = host_batch(3, &cpu);
                let (batch_b, z_b) = host_batch(3, &gpu);
                let sa = critic_step(&mut a, batch_a, 1e-2);
                let sb = critic_step(&mut b, batch_b, 1e-2);
                let (la, lb) = (scalar(sa.loss), scalar(sb.loss));
                assert!(
                    (la - lb).abs() <= 1e-4 * (1.0 + la.abs()),
                    "{kind}: critic loss {la} vs {lb}"
                );
                let d = max_abs_diff(&flat(&a.critic), &flat(&b.critic));
                assert!(d <= TOLERANCE, "{kind}: critic parameters differ by {d}");
                let (ga, gb) = (
                    scalar(generator_step(&mut a, z_a, 1e-2)),
                    scalar(generator_step(&mut b, z_b, 1e-2)),
                );
                assert!(
                    (ga - gb).abs() <= 1e-4 * (1.0 + ga.abs()),
                    "{kind}: generator loss {ga} vs {gb}"
                );
                let d = max_abs_diff(&flat(&a.generator), &flat(&b.generator));
                assert!(d <= TOLERANCE, "{kind}: generator parameters differ by {d}");
            }
        }
    }
}

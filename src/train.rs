//! The WGAN training loop (Arjovsky et al. 2017, Alg. 1): per iteration `n_critic` critic steps,
//! then one generator step ([`crate::gan`]); around it the run folder, resume, the progress bar,
//! metrics, sample grids and checkpoints.

use crate::atomic::write_atomic;
use crate::checkpoint::{self, TrainState};
use crate::config::Config;
use crate::data::{BatchSampler, CacheUse, ImageSet};
use crate::eval::{self, Evaluator};
use crate::gan::{CriticBatch, Gan, critic_step, generator_step};
use crate::metrics::{self, MetricsLog, Record};
use crate::model::Generator;
use crate::noise::{epsilon, noise};
use crate::plot;
use crate::sample::{grid, save_png};
use anyhow::{Context, Result, bail};
use burn::prelude::*;
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

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
    let mut monitor = Monitor::open(config, run_dir, &data, &device)?;
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
                gan.sampler(),
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
    fn open(
        config: &'a Config,
        run_dir: &'a Path,
        data: &'a ImageSet,
        device: &Device,
    ) -> Result<Self> {
        let path = run_dir.join("metrics.jsonl");
        let o = &config.output;
        let evaluator = if o.eval_every > 0 {
            let evaluator =
                Evaluator::new(data, o.eval_images, config.model.z_dim, config.train.seed);
            Some(if o.evaluates("fid") || o.evaluates("kid") {
                let Some(weights) = o.inception_weights() else {
                    bail!(
                        "output.eval_metrics asks for FID/KID but no Inception weights are given: \
                         run scripts/get-inception.py and set output.inception (or \
                         WGAN_TRAIN_INCEPTION) to the file"
                    );
                };
                evaluator.with_fid(&weights, device)?
            } else {
                evaluator
            })
        } else {
            None
        };
        Ok(Self {
            config,
            run_dir,
            data,
            evaluator,
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
            let evaluation = evaluator.evaluate(gan.sampler(), device)?;
            let swd = evaluation.swd;
            let levels: Vec<String> = swd.levels.iter().map(|l| format!("{l:.2}")).collect();
            let fid = evaluation.fid.map_or(String::new(), |(fid, kid)| {
                format!("; FID {fid:.2}, KID {:.4} +- {:.4}", kid.mean, kid.std)
            });
            eprintln!(
                "iteration {step}: SWD x1e3 {:.2} (levels {}){fid}",
                swd.mean,
                levels.join(", ")
            );
            if o.evaluates("swd") {
                record.swd = Some(swd);
            }
            if let Some((fid, kid)) = evaluation.fid {
                record.fid = o.evaluates("fid").then_some(fid);
                record.kid = o.evaluates("kid").then_some(kid);
            }
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
            fid: None,
            kid: None,
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
    gan.update_ema(state.step + 1);
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
        sampler: BatchSampler::new(data.len(), t.seed, config.data.sampling),
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
    remove_entries(run_dir, &RUN_CONTENTS)
}

/// Removes the files and folders `names` from `dir` (those that exist), naming any that
/// cannot be removed.
pub fn remove_entries(dir: &Path, names: &[&str]) -> Result<()> {
    for name in names {
        let path = dir.join(name);
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

/// The run's images: through the decoded-image cache unless `data.cache = false`.
pub fn load_data(config: &Config) -> Result<ImageSet> {
    let d = &config.data;
    let started = Instant::now();
    let (data, skipped) = if d.cache {
        let cache_dir = crate::cache::default_dir();
        let (data, skipped, used) = ImageSet::load_cached(&d.dir, d.preprocess(), &cache_dir)?;
        let secs = started.elapsed().as_secs_f64();
        match used {
            Some(CacheUse::Hit(path)) => eprintln!(
                "images: {} from the cache {} in {secs:.2} s",
                data.len(),
                path.display()
            ),
            Some(CacheUse::Written(path)) => eprintln!(
                "images: {} decoded in {secs:.1} s ({:.0} images/s) and cached in {} (delete it any time; data.cache = false turns the cache off)",
                data.len(),
                data.len() as f64 / secs,
                path.display()
            ),
            None => {}
        }
        (data, skipped)
    } else {
        ImageSet::load(&d.dir, d.preprocess())?
    };
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

/// Writes `samples/step_NNNNNN.png` from `generator` (G, or its moving average when on) in
/// inference mode.
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

//! 2-D toy tasks (`wgan-train toy --config configs/toy/NAME.toml`): gan_toy.py's datasets
//! (8 Gaussians, 25 Gaussians, Swiss roll) and MLPs, trained with the same constraints and
//! losses as the image GAN, and pictured as the critic's value and gradient-norm landscape
//! (Gulrajani et al. 2017, Fig. 1), where what each constraint does to the critic can be seen.
//!
//! A run folder holds `config.toml`, `metrics.jsonl` and `plots/` as an image run does,
//! `landscape/step_NNNNNN.png` every `output.sample_every` iterations, `landscape.png` (those
//! pictures over time, side by side) and `toy.json` (the final statistics). Toy runs take
//! seconds to a minute and keep no checkpoints.

pub mod data;
pub mod model;
pub mod picture;

use crate::atomic::write_atomic;
use crate::config::{ConstraintConfig, ConstraintKind, LossKind, OptimizerKind};
use crate::constraint::{Constraint, clip_weights, penalty_of_norms};
use crate::gan::{critic_loss, optimizer};
use crate::metrics::{MetricsLog, Record};
use crate::sample::save_png;
use anyhow::{Context, Result, bail};
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use data::ToyDataset;
use image::DynamicImage;
use model::{ToyCritic, ToyGenerator};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// A toy run's configuration (gan_toy.py's settings by default).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToyConfig {
    /// `[toy]`: the dataset.
    pub toy: ToySection,
    /// `[model]`: the MLPs.
    #[serde(default)]
    pub model: ToyModel,
    /// `[train]`: loop, optimizer, loss and seed.
    #[serde(default)]
    pub train: ToyTrain,
    /// `[constraint]`: as for images (spectral_norm, gradient_penalty, weight_clipping, none).
    #[serde(default)]
    pub constraint: ConstraintConfig,
    /// `[output]`: run folder and picture settings.
    #[serde(default)]
    pub output: ToyOutput,
}

/// `[toy]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToySection {
    /// `"8gaussians"`, `"25gaussians"` or `"swissroll"`.
    pub dataset: ToyDataset,
}

/// `[model]` table of a toy run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ToyModel {
    /// Dimension of the generator's normal noise.
    pub z_dim: usize,
    /// Units of every hidden layer.
    pub width: usize,
    /// Hidden layers of each network.
    pub hidden_layers: usize,
}

impl Default for ToyModel {
    fn default() -> Self {
        Self {
            z_dim: 2,
            width: 512,
            hidden_layers: 3,
        }
    }
}

/// `[train]` table of a toy run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ToyTrain {
    /// Generator iterations.
    pub iterations: usize,
    /// Points per batch.
    pub batch_size: usize,
    /// Critic steps per generator step.
    pub n_critic: usize,
    /// `"adam"` or `"rmsprop"`.
    pub optimizer: OptimizerKind,
    /// Generator learning rate.
    pub lr_g: f64,
    /// Critic learning rate.
    pub lr_d: f64,
    /// Adam's first-moment decay.
    pub beta1: f64,
    /// Adam's second-moment decay.
    pub beta2: f64,
    /// Seeds the networks, the data and the noise.
    pub seed: u64,
    /// `"wasserstein"` or `"hinge"`.
    pub loss: LossKind,
}

impl Default for ToyTrain {
    /// gan_toy.py's: batch 256, 5 critic steps, Adam(1e-4, 0.5, 0.9).
    fn default() -> Self {
        Self {
            iterations: 2000,
            batch_size: 256,
            n_critic: 5,
            optimizer: OptimizerKind::Adam,
            lr_g: 1e-4,
            lr_d: 1e-4,
            beta1: 0.5,
            beta2: 0.9,
            seed: 0,
            loss: LossKind::Wasserstein,
        }
    }
}

/// `[output]` table of a toy run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ToyOutput {
    /// Run folder; `--out` overrides it.
    pub dir: PathBuf,
    /// A landscape picture every this many iterations (0: only at the end).
    pub sample_every: usize,
    /// A metrics line every this many iterations.
    pub log_every: usize,
    /// Real and generated points drawn on each picture (and used for the statistics).
    pub points: usize,
    /// Grid points per side of the landscape.
    pub resolution: usize,
    /// The box pictured is `[-range, range]^2`.
    pub range: f64,
    /// Pixels per panel side.
    pub panel: u32,
}

impl Default for ToyOutput {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("runs/toy"),
            sample_every: 100,
            log_every: 10,
            points: 512,
            resolution: 128,
            range: 3.0,
            panel: 320,
        }
    }
}

impl ToyConfig {
    /// Reads `path`, applies `overrides` (`"train.iterations=200"`), parses and validates.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read config file {}: check the path given to --config",
                path.display()
            )
        })?;
        Self::from_toml(&text, overrides)
            .with_context(|| format!("invalid toy config {}", path.display()))
    }

    /// Parses TOML text, applies `overrides` and validates.
    pub fn from_toml(text: &str, overrides: &[String]) -> Result<Self> {
        let config: Self = crate::config::parse_with_overrides(text, overrides)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every value serde cannot, naming the key.
    pub fn validate(&self) -> Result<()> {
        use crate::config::{learning_rate, positive, unit_interval};
        let (m, t, o) = (&self.model, &self.train, &self.output);
        positive("model.z_dim", m.z_dim)?;
        positive("model.width", m.width)?;
        positive("model.hidden_layers", m.hidden_layers)?;
        positive("train.iterations", t.iterations)?;
        positive("train.batch_size", t.batch_size)?;
        positive("train.n_critic", t.n_critic)?;
        learning_rate("train.lr_g", t.lr_g)?;
        learning_rate("train.lr_d", t.lr_d)?;
        unit_interval("train.beta1", t.beta1)?;
        unit_interval("train.beta2", t.beta2)?;
        self.constraint.validate()?;
        if self.constraint.kind == ConstraintKind::SpectralPenalty {
            bail!(
                "constraint.kind = \"spectral_penalty\" is not available for toy runs: use \"spectral_norm\", \"gradient_penalty\", \"weight_clipping\" or \"none\""
            );
        }
        positive("output.log_every", o.log_every)?;
        positive("output.points", o.points)?;
        if !(8..=1024).contains(&o.resolution) {
            bail!(
                "output.resolution = {} is out of range: use 8 to 1024",
                o.resolution
            );
        }
        if !(o.range.is_finite() && o.range > 0.0) {
            bail!(
                "output.range = {} is out of range: use a positive number",
                o.range
            );
        }
        if !(32..=2048).contains(&o.panel) {
            bail!(
                "output.panel = {} is out of range: use 32 to 2048 pixels",
                o.panel
            );
        }
        if o.dir.as_os_str().is_empty() {
            bail!("output.dir is empty: set it, or pass --out DIR");
        }
        Ok(())
    }

    /// The config as TOML, as written into the run folder.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a ToyConfig always serializes")
    }
}

/// Whether the TOML file at `path` is a toy config (it has a `[toy]` table).
pub fn is_toy_config(path: &Path) -> bool {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.parse::<toml::Table>().ok())
        .is_some_and(|t| t.contains_key("toy"))
}

/// The networks, optimizers and constraint of a toy GAN.
pub struct ToyGan {
    /// G: noise -> points.
    pub generator: ToyGenerator,
    /// f: points -> scores.
    pub critic: ToyCritic,
    optim_g: ModuleOptimizer,
    optim_d: ModuleOptimizer,
    constraint: Constraint,
    loss: LossKind,
}

impl ToyGan {
    /// Fresh networks for `config` from the device RNG seeded with `train.seed`; `device`
    /// should carry autodiff.
    pub fn new(config: &ToyConfig, device: &Device) -> Self {
        let (m, t) = (&config.model, &config.train);
        device.seed(t.seed);
        let constraint = Constraint::from_config(&config.constraint);
        let generator = ToyGenerator::new(m.z_dim, m.width, m.hidden_layers, device);
        let critic = ToyCritic::new(
            m.width,
            m.hidden_layers,
            constraint.critic_spectral(),
            device,
        );
        crate::model::initialize_params(&generator);
        crate::model::initialize_params(&critic);
        Self {
            generator,
            critic,
            optim_g: optimizer(t.optimizer, t.beta1, t.beta2),
            optim_d: optimizer(t.optimizer, t.beta1, t.beta2),
            constraint,
            loss: t.loss,
        }
    }

    /// One critic step on `real` `[B, 2]`, noise `z` `[B, z]` and interpolation weights
    /// `epsilon` `[B, 1]`; returns (loss, Wasserstein estimate, penalty).
    pub fn critic_step(
        &mut self,
        real: Tensor<2>,
        z: Tensor<2>,
        epsilon: Tensor<2>,
        lr: f64,
    ) -> (f64, f64, Option<f64>) {
        let fake = self.generator.clone().no_grad().forward(z).detach(); // [B, 2]
        // Fake first, then real, as the image critic step (each refines u, v once under SN).
        let f_fake = self.critic.forward(fake.clone()); // [B, 1]
        let f_real = self.critic.forward(real.clone()); // [B, 1]
        let wasserstein = scalar(f_real.clone().mean() - f_fake.clone().mean());
        let mut loss = critic_loss(self.loss, f_real, f_fake);
        let penalty = match self.constraint {
            Constraint::GradientPenalty { lambda, one_sided } => {
                let x_hat =
                    (real * epsilon.clone() + fake * epsilon.neg().add_scalar(1.0)).detach();
                let grad = self.critic.input_gradient(x_hat); // [B, 2]
                let [b, _] = grad.dims();
                let norms = grad.square().sum_dim(1).reshape([b]).sqrt(); // [B]
                let p = penalty_of_norms(norms, lambda, one_sided);
                loss = loss + p.clone();
                Some(scalar(p))
            }
            _ => None,
        };
        let value = scalar(loss.clone());
        let grads = GradientsParams::from_grads(loss.backward(), &self.critic);
        let critic = self.optim_d.step(lr, self.critic.clone(), grads);
        self.critic = match self.constraint {
            Constraint::WeightClipping { clip_value } => clip_weights(critic, clip_value),
            _ => critic,
        };
        (value, wasserstein, penalty)
    }

    /// One generator step on noise `[B, z]`; returns -mean f(G(z)).
    pub fn generator_step(&mut self, z: Tensor<2>, lr: f64) -> f64 {
        let critic = self.critic.clone().no_grad();
        let loss = critic.forward(self.generator.forward(z)).mean().neg(); // [1]
        let value = scalar(loss.clone());
        let grads = GradientsParams::from_grads(loss.backward(), &self.generator);
        self.generator = self.optim_g.step(lr, self.generator.clone(), grads);
        value
    }
}

/// What a toy run measures at its end (on `output.points` points, and over the grid).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ToyStats {
    /// Generator iterations done.
    pub step: usize,
    /// mean f(real) - mean f(fake) on the final points.
    pub wasserstein: f64,
    /// Mean and max of ||grad_x f|| over the pictured grid.
    pub grid_grad_mean: f64,
    /// Max of ||grad_x f|| over the pictured grid.
    pub grid_grad_max: f64,
    /// Mean ||grad_x f|| at the real points.
    pub real_grad_mean: f64,
    /// Mean ||grad_x f|| at the generated points.
    pub fake_grad_mean: f64,
    /// Mixtures: centres that hold at least 1% of the generated points within `near_radius`.
    pub modes: Option<usize>,
    /// Mixtures: the number of centres.
    pub centres: Option<usize>,
    /// Mixtures: share of generated points within `near_radius` of a centre.
    pub near: Option<f64>,
    /// A quarter of the distance between neighbouring centres.
    pub near_radius: Option<f64>,
    /// Training seconds.
    pub seconds: f64,
}

/// How a toy run ended.
pub struct ToySummary {
    /// The final statistics (also in `toy.json`).
    pub stats: ToyStats,
    /// The last landscape picture.
    pub last_picture: PathBuf,
    /// Stopped by Ctrl-C.
    pub interrupted: bool,
}

/// The files and folders a toy run writes; `--force` removes these and nothing else.
pub const RUN_CONTENTS: [&str; 6] = [
    "config.toml",
    "metrics.jsonl",
    "landscape",
    "landscape.png",
    "toy.json",
    crate::train::PLOTS,
];

/// Landscape frames in `landscape.png`.
const STRIP_FRAMES: usize = 8;

/// Trains a toy GAN into `run_dir` (which must be empty or cleared), drawing the landscape
/// every `output.sample_every` iterations and at the end; Ctrl-C (`interrupt`) stops after the
/// current iteration, with the pictures and statistics written.
pub fn train(
    config: &ToyConfig,
    run_dir: &Path,
    device: &Device,
    interrupt: &AtomicBool,
) -> Result<ToySummary> {
    std::fs::create_dir_all(run_dir.join("landscape")).with_context(|| {
        format!(
            "cannot create run folder {}: choose a writable folder with --out",
            run_dir.display()
        )
    })?;
    write_atomic(&run_dir.join("config.toml"), config.to_toml().as_bytes())?;
    let device = device.clone().autodiff();
    let (t, o) = (&config.train, &config.output);
    let set = config.toy.dataset;
    let mut gan = ToyGan::new(config, &device);
    let mut rng = ChaCha8Rng::seed_from_u64(t.seed.wrapping_add(1));
    // Fixed points for the pictures and the statistics, from their own stream.
    let mut fixed_rng = ChaCha8Rng::seed_from_u64(t.seed.wrapping_add(2));
    let shown_real = set.sample(&mut fixed_rng, o.points);
    let shown_z = normal(&mut fixed_rng, o.points * config.model.z_dim);
    let mut log = MetricsLog::open(&run_dir.join("metrics.jsonl"))?;
    let mut records = Vec::new();
    let mut frames = Vec::new();
    let bar = progress_bar(t.iterations);
    let started = Instant::now();
    let mut overhead = 0.0;
    let mut window = (Instant::now(), 0usize);
    let mut last_picture = PathBuf::new();
    let mut step = 0;
    let mut interrupted = false;
    while step < t.iterations {
        step += 1;
        let (mut d_loss, mut w, mut penalty) = (0.0, 0.0, None);
        for _ in 0..t.n_critic {
            let real = points_tensor(&set.sample(&mut rng, t.batch_size), &device);
            let z = noise(&mut rng, t.batch_size, config.model.z_dim, &device);
            let e: Vec<f32> = (0..t.batch_size)
                .map(|_| rand::Rng::random(&mut rng))
                .collect();
            let epsilon = Tensor::<2>::from_data(TensorData::new(e, [t.batch_size, 1]), &device);
            (d_loss, w, penalty) = gan.critic_step(real, z, epsilon, t.lr_d);
        }
        let z = noise(&mut rng, t.batch_size, config.model.z_dim, &device);
        let g_loss = gan.generator_step(z, t.lr_g);
        if !(d_loss.is_finite() && g_loss.is_finite()) {
            bail!(
                "a loss is not finite at iteration {step} (critic {d_loss}, generator {g_loss}): training diverged; lower the learning rates"
            );
        }
        bar.inc(1);
        window.1 += 1;
        interrupted = interrupt.load(Ordering::SeqCst);
        let last = step == t.iterations || interrupted;
        if step.is_multiple_of(o.log_every) || last {
            let secs = window.0.elapsed().as_secs_f64() / window.1 as f64;
            let record = Record {
                step,
                critic_loss: d_loss,
                generator_loss: g_loss,
                wasserstein: w,
                penalty,
                sec_per_iter: secs,
                images_per_sec: (t.batch_size * t.n_critic) as f64 / secs,
                elapsed_s: started.elapsed().as_secs_f64() - overhead,
                lipschitz: None,
                swd: None,
                fid: None,
                kid: None,
            };
            log.append(&record)?;
            records.push(record);
            bar.set_message(format!("D {d_loss:+.4} G {g_loss:+.4} W {w:+.4}"));
            window = (Instant::now(), 0);
        }
        if (o.sample_every > 0 && step.is_multiple_of(o.sample_every)) || last {
            let t0 = Instant::now();
            let fake = generate(&gan.generator, &shown_z, config.model.z_dim);
            let l = picture::landscape(&gan.critic.valid(), o.resolution, o.range, &Device::flex());
            let frame = picture::render(&l, &shown_real, &fake, o.panel);
            last_picture = run_dir
                .join("landscape")
                .join(format!("step_{step:06}.png"));
            save_png(&DynamicImage::ImageRgb8(frame.clone()), &last_picture)?;
            frames.push(frame);
            overhead += t0.elapsed().as_secs_f64();
        }
        if interrupted {
            break;
        }
    }
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64() - overhead;
    save_png(
        &DynamicImage::ImageRgb8(picture::strip(&frames, STRIP_FRAMES)),
        &run_dir.join("landscape.png"),
    )?;
    if let Err(e) = crate::plot::run_plots(&run_dir.join(crate::train::PLOTS), &records) {
        eprintln!("warning: plots not drawn: {e:#}");
    }
    let fake = generate(&gan.generator, &shown_z, config.model.z_dim);
    let stats = statistics(
        config,
        &gan.critic.valid(),
        &shown_real,
        &fake,
        step,
        seconds,
    );
    let json = serde_json::to_vec_pretty(&stats).expect("stats serialize");
    write_atomic(&run_dir.join("toy.json"), &json)?;
    Ok(ToySummary {
        stats,
        last_picture,
        interrupted,
    })
}

/// The final statistics of a critic (plain device) and the generated points.
pub fn statistics(
    config: &ToyConfig,
    critic: &ToyCritic,
    real: &[[f32; 2]],
    fake: &[[f32; 2]],
    step: usize,
    seconds: f64,
) -> ToyStats {
    let device = Device::flex();
    let o = &config.output;
    let l = picture::landscape(critic, o.resolution, o.range, &device);
    let mean = |v: &[f32]| v.iter().map(|&x| x as f64).sum::<f64>() / v.len().max(1) as f64;
    let grad_norms = |p: &[[f32; 2]]| -> Vec<f32> {
        host(critic.input_gradient(points_tensor(p, &device)))
            .chunks(2)
            .map(|g| g[0].hypot(g[1]))
            .collect()
    };
    let scores = |p: &[[f32; 2]]| mean(&host(critic.forward(points_tensor(p, &device))));
    let (modes, centres, near, near_radius) = coverage(config.toy.dataset, fake);
    ToyStats {
        step,
        wasserstein: scores(real) - scores(fake),
        grid_grad_mean: mean(&l.grad_norms),
        grid_grad_max: l.grad_norms.iter().fold(0.0f32, |a, &b| a.max(b)) as f64,
        real_grad_mean: mean(&grad_norms(real)),
        fake_grad_mean: mean(&grad_norms(fake)),
        modes,
        centres,
        near,
        near_radius,
        seconds,
    }
}

/// Mixture coverage of `points`: (modes holding >= 1% of the points within a quarter of the
/// centre spacing, the number of centres, the share of points that near a centre, the radius).
/// All `None` for the Swiss roll.
pub fn coverage(
    set: ToyDataset,
    points: &[[f32; 2]],
) -> (Option<usize>, Option<usize>, Option<f64>, Option<f64>) {
    let centres = set.centres();
    if centres.is_empty() {
        return (None, None, None, None);
    }
    let spacing = centres
        .iter()
        .enumerate()
        .flat_map(|(i, a)| {
            centres[i + 1..]
                .iter()
                .map(move |b| (a[0] - b[0]).hypot(a[1] - b[1]))
        })
        .fold(f64::INFINITY, f64::min);
    let radius = spacing / 4.0;
    let mut counts = vec![0usize; centres.len()];
    for &p in points {
        let (i, d) = data::nearest(&centres, p);
        if d <= radius {
            counts[i] += 1;
        }
    }
    let n = points.len().max(1) as f64;
    let modes = counts.iter().filter(|&&c| c as f64 >= 0.01 * n).count();
    let near = counts.iter().sum::<usize>() as f64 / n;
    (Some(modes), Some(centres.len()), Some(near), Some(radius))
}

/// Points as a `[n, 2]` tensor.
pub fn points_tensor(points: &[[f32; 2]], device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(points.concat(), [points.len(), 2]), device)
}

/// A tensor's values as f32 on the host.
pub fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec()
        .expect("f32 values")
}

/// G's points for the flat noise `z` (`[n * z_dim]`), in inference on the plain device.
fn generate(generator: &ToyGenerator, z: &[f32], z_dim: usize) -> Vec<[f32; 2]> {
    let g = generator.valid();
    let device = g.layers[0].weight.val().device();
    let z = Tensor::<2>::from_data(
        TensorData::new(z.to_vec(), [z.len() / z_dim, z_dim]),
        &device,
    );
    host(g.forward(z)).chunks(2).map(|p| [p[0], p[1]]).collect()
}

fn normal(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| StandardNormal.sample(rng)).collect()
}

fn noise(rng: &mut ChaCha8Rng, n: usize, z_dim: usize, device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(normal(rng, n * z_dim), [n, z_dim]), device)
}

fn scalar(t: Tensor<1>) -> f64 {
    t.into_scalar::<f32>() as f64
}

fn progress_bar(iterations: usize) -> indicatif::ProgressBar {
    indicatif::ProgressBar::new(iterations as u64).with_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} it, {per_sec}, ETA {eta_precise}  {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    )
}

/// Trains every toy config in `configs` (names and folders as `compare` gives them) with the
/// shared `overrides`, then writes `OUT/report.md` with the final statistics and
/// `OUT/landscapes.png`, every run's final landscape one under the other in config order.
pub fn compare(
    entries: &[crate::compare::Entry],
    overrides: &[String],
    iterations: Option<usize>,
    out: &Path,
    force: bool,
    device: &Device,
    interrupt: &AtomicBool,
) -> Result<(PathBuf, bool)> {
    let mut all = overrides.to_vec();
    if let Some(n) = iterations {
        all.push(format!("train.iterations={n}"));
    }
    let configs: Vec<ToyConfig> = entries
        .iter()
        .map(|e| ToyConfig::load(&e.config_path, &all))
        .collect::<Result<_>>()?;
    for e in entries {
        prepare(&e.dir, force)?;
    }
    let mut rows = Vec::new();
    let mut pictures = Vec::new();
    let mut interrupted = false;
    for (e, c) in entries.iter().zip(&configs) {
        eprintln!(
            "compare: training {} ({}, {}) into {}",
            e.name,
            c.toy.dataset.name(),
            c.constraint.kind.name(),
            e.dir.display()
        );
        let s = train(c, &e.dir, device, interrupt)?;
        pictures.push(image::open(&s.last_picture)?.to_rgb8());
        rows.push((e.name.clone(), c.constraint.kind.name(), s.stats));
        if s.interrupted {
            interrupted = true;
            break;
        }
    }
    save_png(
        &DynamicImage::ImageRgb8(picture::stack(&pictures, false)),
        &out.join("landscapes.png"),
    )?;
    let report = out.join("report.md");
    write_atomic(&report, report_markdown(&rows).as_bytes())?;
    Ok((report, interrupted))
}

/// Clears (with `force`) or checks a toy run folder.
pub fn prepare(dir: &Path, force: bool) -> Result<()> {
    if crate::train::holds_anything(dir) {
        if !force {
            bail!(
                "{} already holds a run: pass --force to start over (deleting it), or choose another --out",
                dir.display()
            );
        }
        crate::train::remove_entries(dir, &RUN_CONTENTS)?;
    }
    Ok(())
}

fn report_markdown(rows: &[(String, &str, ToyStats)]) -> String {
    let mut md = String::from("# wgan-train compare: toy tasks\n\n");
    md += "Final statistics of each run. W is mean f(real) - mean f(fake) on the pictured points; ||grad f|| is the critic's input-gradient norm over the pictured grid (mean, max) and at the real and generated points; modes counts the mixture centres that hold at least 1% of the generated points within a quarter of the centre spacing, and near is the share of generated points that close to a centre.\n\n";
    md += "| run | constraint | iterations | W | ||grad f|| grid mean | grid max | at real | at fake | modes | near | seconds |\n";
    md += "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n";
    for (name, kind, s) in rows {
        let modes = match (s.modes, s.centres) {
            (Some(m), Some(c)) => format!("{m}/{c}"),
            _ => "-".into(),
        };
        let near = s.near.map_or("-".into(), |n| format!("{:.0}%", 100.0 * n));
        md += &format!(
            "| {name} | {kind} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {modes} | {near} | {:.1} |\n",
            s.step,
            s.wasserstein,
            s.grid_grad_mean,
            s.grid_grad_max,
            s.real_grad_mean,
            s.fake_grad_mean,
            s.seconds
        );
    }
    let names: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    md += &format!(
        "\n## Final landscapes\n\nTop to bottom: {}. Left: the critic's value f(x) (dark low, yellow high, ten iso-lines); right: ||grad_x f(x)|| from 0 (dark) to 2 (yellow), the level 1 in white. Real points orange, generated points white.\n\n![landscapes](landscapes.png)\n",
        names.join(", ")
    );
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(kind: &str, extra: &str) -> ToyConfig {
        let text = format!(
            "[toy]\ndataset = \"8gaussians\"\n[model]\nwidth = 64\n[constraint]\nkind = \"{kind}\"\n{extra}"
        );
        ToyConfig::from_toml(&text, &[]).unwrap()
    }

    /// A critic step lowers the loss on a fixed batch for every constraint, clipping keeps
    /// every weight in the bound, and the gradient penalty is reported.
    #[test]
    fn critic_steps_train_under_every_constraint() {
        let device = Device::flex().autodiff();
        for kind in [
            "spectral_norm",
            "gradient_penalty",
            "weight_clipping",
            "none",
        ] {
            let config = tiny(kind, "");
            let mut gan = ToyGan::new(&config, &device);
            let mut rng = ChaCha8Rng::seed_from_u64(0);
            let real = points_tensor(&ToyDataset::EightGaussians.sample(&mut rng, 64), &device);
            let z = noise(&mut rng, 64, 2, &device);
            let e = Tensor::<2>::random([64, 1], burn::tensor::Distribution::Default, &device);
            let mut losses = Vec::new();
            for _ in 0..10 {
                let (loss, _, penalty) = gan.critic_step(real.clone(), z.clone(), e.clone(), 1e-3);
                assert_eq!(penalty.is_some(), kind == "gradient_penalty", "{kind}");
                losses.push(loss);
            }
            assert!(losses[9] < losses[0], "{kind}: {losses:?}");
            if kind == "weight_clipping" {
                for p in crate::model::float_values(&gan.critic) {
                    assert!(
                        p.iter().all(|v| v.abs() <= 0.01),
                        "{kind}: escaped the bound"
                    );
                }
            }
        }
    }

    /// With spectral normalization the critic's gradient-norm field over the pictured grid is
    /// at most 1 (+1e-3) after training steps (each layer's kernel divided by its estimated
    /// sigma, ReLU 1-Lipschitz), and the unconstrained critic's is not.
    #[test]
    fn the_gradient_norm_field_of_an_sn_critic_is_at_most_one() {
        let device = Device::flex().autodiff();
        for (kind, bounded) in [("spectral_norm", true), ("none", false)] {
            let config = tiny(kind, "[train]\nlr_d = 1e-3\n");
            let mut gan = ToyGan::new(&config, &device);
            let mut rng = ChaCha8Rng::seed_from_u64(1);
            for _ in 0..100 {
                let real = points_tensor(&ToyDataset::EightGaussians.sample(&mut rng, 64), &device);
                let z = noise(&mut rng, 64, 2, &device);
                let e = Tensor::<2>::random([64, 1], burn::tensor::Distribution::Default, &device);
                gan.critic_step(real, z, e, 1e-3);
            }
            let l = picture::landscape(&gan.critic.valid(), 64, 3.0, &Device::flex());
            let max = l.grad_norms.iter().fold(0.0f32, |a, &b| a.max(b));
            if bounded {
                assert!(max <= 1.0 + 1e-3, "{kind}: max gradient norm {max}");
                assert!(max > 0.2, "{kind}: the critic is not flat ({max})");
            } else {
                assert!(max > 1.0 + 1e-3, "{kind}: max gradient norm {max}");
            }
        }
    }

    /// Every configs/toy/DATASET-KIND.toml is valid, a toy config, and trains what its name says.
    #[test]
    fn every_shipped_toy_config_is_valid_and_names_its_dataset_and_kind() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/toy");
        let mut seen = 0;
        for entry in std::fs::read_dir(&root).unwrap() {
            let path = entry.unwrap().path();
            let c = ToyConfig::load(&path, &[]).unwrap_or_else(|e| panic!("{e:#}"));
            assert!(is_toy_config(&path));
            let stem = path.file_stem().unwrap().to_str().unwrap();
            let (dataset, kind) = stem.split_once('-').unwrap();
            assert_eq!(c.toy.dataset.name(), dataset);
            let expected = match kind {
                "sn" => ConstraintKind::SpectralNorm,
                "gp" => ConstraintKind::GradientPenalty,
                "clip" => ConstraintKind::WeightClipping,
                "none" => ConstraintKind::None,
                other => panic!("unexpected config {other}"),
            };
            assert_eq!(c.constraint.kind, expected, "{}", path.display());
            seen += 1;
        }
        assert_eq!(seen, 12);
        let image = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/sn.toml");
        assert!(!is_toy_config(&image));
    }

    #[test]
    fn coverage_counts_modes_and_near_points() {
        let set = ToyDataset::EightGaussians;
        let c = set.centres();
        // 50 points on centre 0, 49 on centre 1, 1 far from all: 2 modes, 99% near.
        let mut points = vec![[c[0][0] as f32, c[0][1] as f32]; 50];
        points.extend(vec![[c[1][0] as f32 + 0.05, c[1][1] as f32]; 49]);
        points.push([0.0, 0.0]);
        let (modes, centres, near, radius) = coverage(set, &points);
        assert_eq!((modes, centres), (Some(2), Some(8)));
        assert!((near.unwrap() - 0.99).abs() < 1e-12);
        let spacing = 2.0 / 1.414 * 2.0 * (std::f64::consts::PI / 8.0).sin();
        assert!((radius.unwrap() - spacing / 4.0).abs() < 1e-9);
    }

    #[test]
    fn bad_toy_configs_name_the_key() {
        let err = |text: &str| format!("{:#}", ToyConfig::from_toml(text, &[]).unwrap_err());
        assert!(err("[toy]\ndataset = \"9gaussians\"\n").contains("9gaussians"));
        assert!(
            err("[toy]\ndataset = \"swissroll\"\n[model]\nwidth = 0\n").contains("model.width")
        );
        assert!(
            err("[toy]\ndataset = \"swissroll\"\n[constraint]\nkind = \"spectral_penalty\"\n")
                .contains("not available for toy runs")
        );
        assert!(
            err("[toy]\ndataset = \"swissroll\"\n[train]\nema_decay = 0.9\n").contains("ema_decay")
        );
        assert!(err("[data]\ndir = \"x\"\n").contains("toy"));
    }
}

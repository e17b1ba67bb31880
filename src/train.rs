//! The WGAN training loop (Arjovsky et al. 2017, Alg. 1): `n_critic` critic steps minimising
//! mean f(fake) - mean f(real), then one generator step minimising -mean f(fake).

use crate::checkpoint::{save_module, write_atomic};
use crate::config::{Config, OptimizerKind};
use crate::constraint::Constraint;
use crate::data::{BatchSampler, ImageSet, Preprocess};
use crate::metrics::{MetricsLog, Record};
use crate::model::{Critic, Generator};
use crate::sample::{grid, save_png};
use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer, RmsPropConfig};
use burn::prelude::*;
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The two networks and their optimizers.
pub struct Models {
    /// G.
    pub generator: Generator,
    /// f.
    pub critic: Critic,
    /// Optimizer of G.
    pub optim_g: ModuleOptimizer,
    /// Optimizer of f.
    pub optim_d: ModuleOptimizer,
}

impl Models {
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
            constraint.critic_power_iterations(),
            device,
        );
        crate::model::initialize_params(&generator);
        crate::model::initialize_params(&critic);
        Self {
            generator,
            critic,
            optim_g: optimizer(config),
            optim_d: optimizer(config),
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

/// One critic step on a real batch `[B, C, S, S]` and noise `[B, z]`; returns the loss
/// and the Wasserstein estimate mean f(real) - mean f(fake), both `[1]`.
pub fn critic_step(
    models: &mut Models,
    real: Tensor<4>,
    z: Tensor<2>,
    lr: f64,
) -> (Tensor<1>, Tensor<1>) {
    let batch = real.dims()[0];
    // G in training mode (batch statistics) but untracked: the fakes are constants here.
    let fake = models.generator.clone().no_grad().forward(z).detach(); // [B, C, S, S]
    let scores = models.critic.forward(Tensor::cat(vec![real, fake], 0)); // [2B, 1]
    let real_mean = scores.clone().slice(0..batch).mean(); // [1]
    let fake_mean = scores.slice(batch..2 * batch).mean(); // [1]
    let wasserstein = (real_mean.clone() - fake_mean.clone()).detach();
    let loss = fake_mean - real_mean;
    let grads = GradientsParams::from_grads(loss.backward(), &models.critic);
    models.critic = models.optim_d.step(lr, models.critic.clone(), grads);
    (loss.detach(), wasserstein)
}

/// One generator step on noise `[B, z]`; returns the loss -mean f(G(z)).
pub fn generator_step(models: &mut Models, z: Tensor<2>, lr: f64) -> Tensor<1> {
    // The critic's weights get no gradient in this step.
    let critic = models.critic.clone().no_grad();
    let loss = critic.forward(models.generator.forward(z)).mean().neg(); // [1]
    let grads = GradientsParams::from_grads(loss.backward(), &models.generator);
    models.generator = models.optim_g.step(lr, models.generator.clone(), grads);
    loss.detach()
}

/// Standard normal noise `[n, z_dim]` from the host RNG, so that runs are reproducible on
/// every backend.
pub fn noise(rng: &mut ChaCha8Rng, n: usize, z_dim: usize, device: &Device) -> Tensor<2> {
    let values: Vec<f32> = (0..n * z_dim).map(|_| StandardNormal.sample(rng)).collect();
    Tensor::from_data(TensorData::new(values, [n, z_dim]), device)
}

/// What a finished run leaves behind.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The run folder.
    pub dir: PathBuf,
    /// Generator iterations done.
    pub iterations: usize,
    /// The last sample grid written.
    pub last_grid: PathBuf,
}

/// Trains `config` on `device` (a plain device; autodiff is added here), writing samples,
/// metrics, the resolved config and checkpoints into `run_dir`.
pub fn train(config: &Config, run_dir: &Path, device: &Device) -> Result<Summary> {
    prepare_run_dir(config, run_dir)?;
    let data = load_data(config)?;
    let device = device.clone().autodiff();
    let mut models = Models::new(config, &device);
    let t = &config.train;
    let mut sampler = BatchSampler::new(data.len(), t.seed);
    let mut rng = ChaCha8Rng::seed_from_u64(t.seed.wrapping_add(1));
    let rows = config.output.grid_rows;
    let fixed_noise = noise(&mut rng, rows * rows, config.model.z_dim, &device);
    let mut log = MetricsLog::open(&run_dir.join("metrics.jsonl"))?;
    let bar = progress_bar(t.iterations);
    let start = Instant::now();
    let mut window = (Instant::now(), 0usize);
    let mut last_grid = PathBuf::new();
    for step in 1..=t.iterations {
        let mut critic_out = None;
        for _ in 0..t.n_critic {
            let real = data.batch(sampler.next_batch(t.batch_size), &device);
            let z = noise(&mut rng, t.batch_size, config.model.z_dim, &device);
            critic_out = Some(critic_step(&mut models, real, z, t.lr_d));
        }
        let (critic_loss, wasserstein) = critic_out.expect("n_critic >= 1");
        let z = noise(&mut rng, t.batch_size, config.model.z_dim, &device);
        let generator_loss = generator_step(&mut models, z, t.lr_g);
        let (critic_loss, wasserstein, generator_loss) = (
            scalar(critic_loss),
            scalar(wasserstein),
            scalar(generator_loss),
        );
        check_finite(
            step,
            &[("critic", critic_loss), ("generator", generator_loss)],
        )?;
        bar.set_message(format!(
            "D {critic_loss:+.4} G {generator_loss:+.4} W {wasserstein:+.4}"
        ));
        bar.inc(1);
        window.1 += 1;
        let last = step == t.iterations;
        if step % config.output.log_every == 0 || last {
            let secs = window.0.elapsed().as_secs_f64() / window.1 as f64;
            log.append(&Record {
                step,
                critic_loss,
                generator_loss,
                wasserstein,
                sec_per_iter: secs,
                images_per_sec: (t.batch_size * t.n_critic) as f64 / secs,
                elapsed_s: start.elapsed().as_secs_f64(),
            })?;
            window = (Instant::now(), 0);
        }
        if every(step, config.output.sample_every) || last {
            last_grid = write_grid(&models.generator, fixed_noise.clone(), rows, run_dir, step)?;
        }
        if every(step, config.output.checkpoint_every) || last {
            save_checkpoint(&models, run_dir)?;
        }
    }
    bar.finish_and_clear();
    Ok(Summary {
        dir: run_dir.to_path_buf(),
        iterations: t.iterations,
        last_grid,
    })
}

fn every(step: usize, period: usize) -> bool {
    period > 0 && step % period == 0
}

fn scalar(t: Tensor<1>) -> f64 {
    t.into_scalar::<f32>() as f64
}

fn check_finite(step: usize, losses: &[(&str, f64)]) -> Result<()> {
    for (name, value) in losses {
        if !value.is_finite() {
            bail!(
                "the {name} loss is {value} at iteration {step}: training diverged; lower the learning rates or check the data"
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

fn load_data(config: &Config) -> Result<ImageSet> {
    let d = &config.data;
    let prep = Preprocess {
        size: d.image_size,
        channels: d.channels,
        crop: d.crop,
    };
    let (data, skipped) = ImageSet::load(&d.dir, prep)?;
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

fn progress_bar(iterations: usize) -> ProgressBar {
    ProgressBar::new(iterations as u64).with_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} it, {per_sec}, ETA {eta_precise}  {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    )
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

fn save_checkpoint(models: &Models, run_dir: &Path) -> Result<()> {
    save_module(&models.generator, &run_dir.join("generator.bpk"))?;
    save_module(&models.critic, &run_dir.join("critic.bpk"))
}

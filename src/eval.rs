//! Measuring a run while and after it trains: the sliced Wasserstein distance of the generator
//! to the data, and the critic's Lipschitz diagnostics on a batch of the data. Neither touches
//! the training state: both use inference copies (`valid()`: no power iteration, BatchNorm
//! running statistics) and their own seeded random streams, so a run with them gives the same
//! losses as one without.

use crate::checkpoint;
use crate::config::Config;
use crate::constraint::Constraint;
use crate::data::ImageSet;
use crate::lipschitz::{self, Lipschitz};
use crate::model::{Critic, Generator};
use crate::sample::to_byte;
use crate::swd::{self, Images, Swd};
use anyhow::{Context, Result};
use burn::prelude::*;
use rand::SeedableRng;
use rand::seq::index::sample;
use rand_chacha::ChaCha8Rng;
use std::path::Path;

/// Images per generator forward when generating an evaluation set.
const GENERATE_BATCH: usize = 256;

/// Offsets that keep the evaluation streams apart from the training streams of one seed.
const REAL_STREAM: u64 = 0x5744_5245_414c;
const NOISE_STREAM: u64 = 0x5744_4e4f_4953;
const DIAGNOSTICS_STREAM: u64 = 0x5744_4449_4147;

/// `n` distinct images of `data`, drawn with `seed`, as a SWD set.
pub fn real_images(data: &ImageSet, n: usize, seed: u64) -> Images {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut bytes = Vec::new();
    for i in sample(&mut rng, data.len(), n.min(data.len())) {
        bytes.extend_from_slice(data.image(i));
    }
    Images::from_bytes(&bytes, data.channels(), data.size())
}

/// `n` images of `generator` (an inference copy) from noise drawn with `seed`, quantized to
/// 8 bits like the data.
pub fn generated_images(
    generator: &Generator,
    n: usize,
    z_dim: usize,
    seed: u64,
    device: &Device,
) -> Images {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut bytes = Vec::new();
    let (mut channels, mut size) = (0, 0);
    for start in (0..n).step_by(GENERATE_BATCH) {
        let count = GENERATE_BATCH.min(n - start);
        let z = crate::noise::noise(&mut rng, count, z_dim, device);
        let images = generator.forward(z); // [count, C, S, S]
        [_, channels, size, _] = images.dims();
        let values: Vec<f32> = images
            .into_data()
            .convert::<f32>()
            .try_to_vec()
            .expect("f32 data");
        bytes.extend(values.into_iter().map(to_byte));
    }
    Images::from_bytes(&bytes, channels, size)
}

/// Sliced Wasserstein distance (and, with [`with_fid`](Self::with_fid), FID and KID) between
/// a run's generator and a fixed sample of its data.
pub struct Evaluator {
    real: Images,
    z_dim: usize,
    seed: u64,
    fid: Option<FidSide>,
}

/// The FID network and the real sample's features.
struct FidSide {
    net: crate::inception::InceptionV3,
    real_features: Vec<f32>,
    real_stats: crate::fid::FeatureStats,
}

/// One evaluation: SWD, and FID and KID where the evaluator has the Inception.
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// Sliced Wasserstein distance.
    pub swd: Swd,
    /// FID and KID of the same generated images against the same real ones.
    pub fid: Option<(f64, crate::fid::Kid)>,
}

impl Evaluator {
    /// `n` real images (at most the data's size) drawn with the run's `seed`.
    pub fn new(data: &ImageSet, n: usize, z_dim: usize, seed: u64) -> Self {
        Self {
            real: real_images(data, n, seed ^ REAL_STREAM),
            z_dim,
            seed,
            fid: None,
        }
    }

    /// Also FID and KID, with the Inception of `weights` (the real sample's features are
    /// extracted now, with a progress bar).
    pub fn with_fid(mut self, weights: &Path, device: &Device) -> Result<Self> {
        let device = device.clone().without_autodiff();
        let net = crate::inception::InceptionV3::load(weights, &device)?;
        let real_features = inception_features(&net, &self.real, "the data", &device);
        let real_stats =
            crate::fid::FeatureStats::from_features(&real_features, crate::inception::FEATURES)?;
        self.fid = Some(FidSide {
            net,
            real_features,
            real_stats,
        });
        Ok(self)
    }

    /// Images per set.
    pub fn len(&self) -> usize {
        self.real.n
    }

    /// Whether the real set is empty.
    pub fn is_empty(&self) -> bool {
        self.real.n == 0
    }

    /// SWD of `generator` (any mode; an inference copy is taken) against the real sample.
    pub fn swd(&self, generator: &Generator, device: &Device) -> Swd {
        swd::swd(&self.real, &self.generated(generator, device), self.seed)
    }

    /// SWD, and FID/KID where set up, of one set of generated images.
    pub fn evaluate(&self, generator: &Generator, device: &Device) -> Result<Evaluation> {
        let fake = self.generated(generator, device);
        let fid = match &self.fid {
            Some(side) => {
                let device = device.clone().without_autodiff();
                let features = inception_features(&side.net, &fake, "G's samples", &device);
                Some(fid_and_kid(
                    &features,
                    &side.real_features,
                    &side.real_stats,
                    self.seed,
                )?)
            }
            None => None,
        };
        Ok(Evaluation {
            swd: swd::swd(&self.real, &fake, self.seed),
            fid,
        })
    }

    fn generated(&self, generator: &Generator, device: &Device) -> Images {
        generated_images(
            &generator.valid(),
            self.real.n,
            self.z_dim,
            self.seed ^ NOISE_STREAM,
            &device.clone().without_autodiff(),
        )
    }
}

/// The critic's Lipschitz diagnostics on `batch` real images drawn for `step`, as many generated
/// images and their interpolates; the networks are used in inference copies.
pub fn diagnostics(
    critic: &Critic,
    generator: &Generator,
    data: &ImageSet,
    batch: usize,
    z_dim: usize,
    seed: u64,
    device: &Device,
) -> Lipschitz {
    let device = device.clone().without_autodiff();
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ DIAGNOSTICS_STREAM);
    let n = batch.min(data.len());
    let indices = sample(&mut rng, data.len(), n).into_vec();
    let real = data.batch(&indices, &device);
    let fake = generator
        .valid()
        .forward(crate::noise::noise(&mut rng, n, z_dim, &device));
    let epsilon = crate::noise::epsilon(&mut rng, n, &device);
    lipschitz::diagnose(&critic.valid(), real, fake, epsilon)
}

/// A trained run as `inspect` and `eval` use it: its config, one checkpoint's networks.
pub struct LoadedRun {
    /// The run's config.toml.
    pub config: Config,
    /// The generator of the checkpoint (its moving average where the run keeps one, unless
    /// the raw one was asked for).
    pub generator: Generator,
    /// Whether `generator` is the moving average.
    pub averaged: bool,
    /// The critic of the checkpoint, with its spectral-norm `u`, `v`.
    pub critic: Critic,
    /// The checkpoint's iteration.
    pub step: usize,
}

/// The run's config and a generator of checkpoint `step` (the newest usable one when `None`):
/// the moving average when the run keeps one (`train.ema_decay > 0`) and `raw` is false, else
/// G itself; with whether it is the average and the checkpoint's iteration. What `sample`,
/// `export` and `eval` use.
pub fn run_generator(
    run: &Path,
    step: Option<usize>,
    raw: bool,
    device: &Device,
) -> Result<(Config, Generator, bool, usize)> {
    let config = Config::load(&run.join("config.toml"), &[])
        .with_context(|| format!("{} is not a wgan-train run folder", run.display()))?;
    let (d, m) = (&config.data, &config.model);
    let averaged = config.train.ema_decay > 0.0 && !raw;
    let name = if averaged {
        "generator_ema"
    } else {
        "generator"
    };
    let (generator, step) = checkpoint::load_network(run, step, name, || {
        Generator::new(d.image_size, d.channels, m.z_dim, m.g_width, device)
    })?;
    Ok((config, generator, averaged, step))
}

/// Loads checkpoint `step` (the newest usable one when `None`) of the run in `run`: its
/// config, generator (as [`run_generator`] picks it) and critic.
pub fn load_run(run: &Path, step: Option<usize>, raw: bool, device: &Device) -> Result<LoadedRun> {
    let (config, generator, averaged, step) = run_generator(run, step, raw, device)?;
    let (d, m) = (&config.data, &config.model);
    let spectral = Constraint::from_config(&config.constraint).critic_spectral();
    let (critic, _) = checkpoint::load_network(run, Some(step), "critic", || {
        Critic::new(d.image_size, d.channels, m.d_width, spectral, device)
            .with_activation(m.critic_activation)
    })?;
    Ok(LoadedRun {
        config,
        generator,
        averaged,
        critic,
        step,
    })
}

/// "G" or "the moving average of G (decay d)", for the commands' output.
pub fn generator_name(config: &Config, averaged: bool) -> String {
    if averaged {
        format!(
            "the moving average of G (decay {}; --raw for G itself)",
            config.train.ema_decay
        )
    } else {
        "G".to_string()
    }
}

/// `n` images of the run's data folder (a random subset of a large folder).
pub fn run_data(config: &Config, n: usize) -> Result<ImageSet> {
    let d = &config.data;
    let (data, skipped) = ImageSet::load_some(&d.dir, d.preprocess(), n, config.train.seed)?;
    if let Some(warning) = skipped.warning(&d.dir) {
        eprintln!("{warning}");
    }
    Ok(data)
}

/// `inspect`'s report: a table per critic layer (power-iteration sigma from the stored `u`,
/// `v`, the exact largest singular value, their relative error, the norm of the kernel as used
/// in the forward pass), the product bound, and input-gradient statistics.
pub fn inspect_report(
    critic: &Critic,
    diagnostics: &Lipschitz,
    operator_norms: &[f64],
    images: usize,
) -> String {
    let mut shapes: Vec<(String, Vec<usize>)> = critic
        .convs
        .iter()
        .enumerate()
        .map(|(i, c)| (format!("conv{}", i + 1), c.weight.val().dims().to_vec()))
        .collect();
    shapes.push(("head".into(), critic.head.weight.val().dims().to_vec()));
    let mut out = format!(
        "{:<6} {:<16} {:>12} {:>12} {:>10} {:>12} {:>12} {:>12}\n",
        "layer",
        "shape",
        "sigma (u,v)",
        "sigma exact",
        "rel. err",
        "kernel norm",
        "layer norm",
        "layer bound"
    );
    // The head is a linear map: its operator norm is its kernel norm.
    let layer_norms: Vec<f64> = operator_norms
        .iter()
        .copied()
        .chain(diagnostics.layers.last().map(|l| l.sigma))
        .collect();
    let bounds = &diagnostics.operator_bounds;
    let rows = shapes.iter().zip(&diagnostics.layers).zip(&layer_norms);
    for (i, (((name, shape), layer), op)) in rows.enumerate() {
        let bound = bounds.get(i).map_or("-".into(), |b| format!("{b:.6}"));
        let shape = format!("{shape:?}");
        let pi = layer.sigma_pi.map_or("-".into(), |p| format!("{p:.6}"));
        let err = layer
            .relative_error()
            .map_or("-".into(), |e| format!("{e:.2e}"));
        out += &format!(
            "{name:<6} {shape:<16} {pi:>12} {:>12.6} {err:>10} {:>12.6} {op:>12.6} {bound:>12}\n",
            layer.sigma_raw, layer.sigma
        );
    }
    out += &format!(
        "product of kernel norms (matrix views, as spectral normalization sees them): {:.6}\n",
        diagnostics.bound
    );
    let product = layer_norms.iter().product::<f64>();
    out += &format!(
        "product of layer norms (convolutions as operators, by power iteration): {product:.6}\n"
    );
    let bound = bounds.iter().product::<f64>();
    out += &format!(
        "product of certified layer bounds (circular polyphase bound, Gram iteration): {bound:.6}\n"
    );
    out += &if diagnostics.certified {
        format!(
            "certified 1-Lipschitz: yes (the product of bounds is <= 1 + {:e})\n",
            crate::lipschitz::CERTIFY_TOLERANCE
        )
    } else {
        "certified 1-Lipschitz: no (the product of bounds exceeds 1; constraint.norm = \"operator\" with certify = true divides each layer by its bound)\n".to_string()
    };
    out += &format!("input-gradient norm ||grad_x f|| over {images} images:\n");
    for (what, s) in [
        ("real", diagnostics.grad_real),
        ("generated", diagnostics.grad_fake),
        ("interpolates", diagnostics.grad_interpolates),
    ] {
        out += &format!("  {what:<13} mean {:.6}  max {:.6}\n", s.mean, s.max);
    }
    out
}

/// `eval`'s report: SWD per level of the generator against the data and, where the data holds
/// two disjoint sets of the size, of the data against itself (the floor to compare with).
pub fn swd_report(generated: &Swd, real_vs_real: Option<&Swd>, images: usize) -> String {
    let mut out = format!(
        "sliced Wasserstein distance x1e3 over {images} images per set (lower is better)\n{:<12} {:>12} {:>14}\n",
        "resolution", "generated", "real vs real"
    );
    for (i, res) in generated.resolutions.iter().enumerate() {
        let floor = real_vs_real.map_or("-".into(), |r| format!("{:.3}", r.levels[i]));
        out += &format!(
            "{:<12} {:>12.3} {floor:>14}\n",
            format!("{res}x{res}"),
            generated.levels[i]
        );
    }
    let floor = real_vs_real.map_or("-".into(), |r| format!("{:.3}", r.mean));
    out += &format!("{:<12} {:>12.3} {floor:>14}\n", "mean", generated.mean);
    out
}

/// SWD of a run's generator against `n` of its images, and of two disjoint sets of `n` real
/// images against each other where the data has `2n`.
pub fn evaluate_run(
    run: &LoadedRun,
    n: usize,
    device: &Device,
) -> Result<(Swd, Option<Swd>, usize)> {
    let config = &run.config;
    let data = run_data(config, 2 * n)?;
    let n = n.min(data.len());
    let seed = config.train.seed;
    let evaluator = Evaluator::new(&data, n, config.model.z_dim, seed);
    let generated = evaluator.swd(&run.generator, device);
    let floor = (data.len() >= 2 * n).then(|| {
        let all = real_images(&data, 2 * n, seed ^ REAL_STREAM);
        let per = n * all.channels * all.size * all.size;
        let half = |k: usize| Images {
            values: all.values[k * per..(k + 1) * per].to_vec(),
            n,
            channels: all.channels,
            size: all.size,
        };
        swd::swd(&half(0), &half(1), seed)
    });
    Ok((generated, floor, n))
}

/// torch-fidelity's KID defaults: subsets and images per subset.
const KID_SUBSETS: usize = 100;
const KID_SUBSET_SIZE: usize = 1000;

/// Images per KID subset for sets of `n`: torch-fidelity's 1,000, or half the set where it is
/// smaller than 2,000 (subsets of the whole set would all be the same, with no spread).
fn kid_subset_size(n: usize) -> usize {
    KID_SUBSET_SIZE.min(n / 2).max(2)
}

/// Where the Inception weights come from: `--inception`, else the run's `output.inception`,
/// else `WGAN_TRAIN_INCEPTION`; `None` (FID and KID are skipped) when none is given.
pub fn inception_weights(flag: Option<&Path>, config: &Config) -> Option<std::path::PathBuf> {
    flag.map(Path::to_path_buf)
        .or_else(|| config.output.inception_weights())
}

/// The line printed where FID/KID are skipped for want of weights.
pub const NO_INCEPTION: &str = "FID/KID skipped: no Inception weights; run scripts/get-inception.sh \
     and pass --inception PATH (or set WGAN_TRAIN_INCEPTION), or use pytorch-fid's \
     pt_inception-2015-12-05-6726825d.pth";

/// Inception pool3 features `[n, 2048]` (row-major) of `images` (values 0..255, as
/// pytorch-fid reads 8-bit files), in batches, with a progress bar naming `what`.
pub fn inception_features(
    net: &crate::inception::InceptionV3,
    images: &Images,
    what: &str,
    device: &Device,
) -> Vec<f32> {
    use crate::inception::FEATURES;
    let per = images.channels * images.size * images.size;
    let template = format!(
        "Inception features of {what} {{bar:30}} {{pos}}/{{len}} [{{elapsed}} < {{eta}}, {{per_sec}}]"
    );
    let bar = indicatif::ProgressBar::new(images.n as u64)
        .with_style(indicatif::ProgressStyle::with_template(&template).expect("valid template"));
    let mut out = Vec::with_capacity(images.n * FEATURES);
    for start in (0..images.n).step_by(crate::inception::BATCH) {
        let count = crate::inception::BATCH.min(images.n - start);
        let values = images.values[start * per..(start + count) * per].to_vec();
        let shape = [count, images.channels, images.size, images.size];
        let x = Tensor::<4>::from_data(TensorData::new(values, shape), device) / 255.0;
        let features = net.features(x); // [count, 2048]
        out.extend(
            features
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .expect("f32 data"),
        );
        bar.inc(count as u64);
    }
    bar.finish_and_clear();
    out
}

/// FID and KID of a run's generator against its data, and of the data against itself.
#[derive(Debug, Clone)]
pub struct FidScores {
    /// Images per set.
    pub n: usize,
    /// FID of `n` generated images against `n` real ones.
    pub fid: f64,
    /// KID of the same sets.
    pub kid: crate::fid::Kid,
    /// FID and KID of `n` real images against `n` others, where the data holds `2n`.
    pub floor: Option<(f64, crate::fid::Kid)>,
    /// The real features' statistics file (pytorch-fid's .npz) in the run folder.
    pub stats_file: std::path::PathBuf,
}

/// FID/KID of `run`'s generator with the Inception `weights`: `n` generated images (the SWD
/// evaluation's noise stream) against `n` real images (its real stream); the real features are
/// cached under `RUN/fid/`, keyed by the data folder's files, the preparation, `n`, the seed
/// and the weights file, with their statistics as a pytorch-fid `.npz` beside them.
pub fn fid_scores(
    run_dir: &Path,
    run: &LoadedRun,
    n: usize,
    weights: &Path,
    device: &Device,
) -> Result<FidScores> {
    use crate::fid::FeatureStats;
    use crate::inception::{FEATURES, InceptionV3};
    let device = device.clone().without_autodiff();
    let net = InceptionV3::load(weights, &device)?;
    let config = &run.config;
    let seed = config.train.seed;
    let data = run_data(config, 2 * n)?;
    let n = n.min(data.len());
    let halves = if data.len() >= 2 * n { 2 } else { 1 };
    let cache = fid_cache_path(run_dir, config, halves * n, weights)?;
    let real = match read_features(&cache, halves * n) {
        Some(features) => features,
        None => {
            let images = real_images(&data, halves * n, seed ^ REAL_STREAM);
            let features = inception_features(&net, &images, "the data", &device);
            write_features(&cache, &features)?;
            features
        }
    };
    let first = &real[..n * FEATURES];
    let real_stats = FeatureStats::from_features(first, FEATURES)?;
    let stats_file = cache.with_extension("npz");
    real_stats.write_npz(&stats_file)?;
    let generated = generated_images(
        &run.generator.valid(),
        n,
        config.model.z_dim,
        seed ^ NOISE_STREAM,
        &device,
    );
    let fake = inception_features(&net, &generated, "G's samples", &device);
    let (fid, kid_fake) = fid_and_kid(&fake, first, &real_stats, seed)?;
    let floor = if halves == 2 {
        let second = &real[n * FEATURES..];
        Some(fid_and_kid(second, first, &real_stats, seed)?)
    } else {
        None
    };
    Ok(FidScores {
        n,
        fid,
        kid: kid_fake,
        floor,
        stats_file,
    })
}

/// FID and KID of `features` (`[n, 2048]`) against the real side's features and their
/// statistics; KID subsets drawn with `seed`.
fn fid_and_kid(
    features: &[f32],
    real: &[f32],
    real_stats: &crate::fid::FeatureStats,
    seed: u64,
) -> Result<(f64, crate::fid::Kid)> {
    use crate::fid::{FeatureStats, frechet_distance, kid};
    use crate::inception::FEATURES;
    let n = features.len() / FEATURES;
    let fid = frechet_distance(
        &FeatureStats::from_features(features, FEATURES)?,
        real_stats,
    )?;
    let kid = kid(
        features,
        real,
        FEATURES,
        KID_SUBSETS,
        kid_subset_size(n),
        seed,
    )?;
    Ok((fid, kid))
}

/// `RUN/fid/real-<key>.f32`: the key hashes the data folder's image files (paths, sizes,
/// mtimes), the preparation, the image count, the seed and the weights file (path, size, mtime).
fn fid_cache_path(
    run_dir: &Path,
    config: &Config,
    n: usize,
    weights: &Path,
) -> Result<std::path::PathBuf> {
    use std::hash::{Hash, Hasher};
    let d = &config.data;
    let files = crate::data::image_files(&d.dir)?;
    let folder =
        crate::cache::path_for(run_dir, &d.dir, &files, (d.image_size, d.channels, d.crop))?;
    let mut h = std::hash::DefaultHasher::new();
    folder.file_stem().hash(&mut h);
    (n, config.train.seed).hash(&mut h);
    weights
        .canonicalize()
        .unwrap_or_else(|_| weights.to_path_buf())
        .hash(&mut h);
    if let Ok(meta) = std::fs::metadata(weights) {
        meta.len().hash(&mut h);
        meta.modified().ok().hash(&mut h);
    }
    Ok(run_dir
        .join("fid")
        .join(format!("real-{:016x}.f32", h.finish())))
}

/// Cached features: `n * 2048` little-endian f32, or `None` when absent or of another size.
fn read_features(path: &Path, n: usize) -> Option<Vec<f32>> {
    let bytes = std::fs::read(path).ok()?;
    (bytes.len() == n * crate::inception::FEATURES * 4).then(|| crate::pytorch::le_f32s(&bytes))
}

fn write_features(path: &Path, features: &[f32]) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| {
            format!(
                "cannot create {}: check that the run folder is writable",
                dir.display()
            )
        })?;
    }
    let bytes: Vec<u8> = features.iter().flat_map(|v| v.to_le_bytes()).collect();
    crate::atomic::write_atomic(path, &bytes)
}

/// `eval`'s FID/KID lines.
pub fn fid_report(scores: &FidScores) -> String {
    let kid = |k: &crate::fid::Kid| format!("{:.5} +- {:.5}", k.mean, k.std);
    let mut out = format!(
        "FID {:.3}  KID {}  ({} generated against {} real images; KID over {} subsets of {})\n",
        scores.fid,
        kid(&scores.kid),
        scores.n,
        scores.n,
        KID_SUBSETS,
        kid_subset_size(scores.n)
    );
    if let Some((fid, k)) = &scores.floor {
        out += &format!(
            "real against real: FID {fid:.3}  KID {} (the floor at this many images)\n",
            kid(k)
        );
    }
    out += &format!("real statistics: {}\n", scores.stats_file.display());
    out
}

//! Run configuration: TOML file + `--set key=value` overrides -> validated [`Config`].
//!
//! Parsing is strict (`deny_unknown_fields`), and [`Config::validate`] checks every value that
//! serde cannot, so that a bad run fails before any data is loaded, naming the key at fault.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The whole run configuration, one struct per TOML table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Compute backend (`"flex"`, `"ndarray"` or `"wgpu"`); `--backend` wins. Default flex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<crate::backend::Backend>,
    /// GPU adapter index for wgpu (as wgpu lists them); `--device` wins. Default: wgpu's choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<usize>,
    /// `[data]`: where the images are and how they are prepared.
    #[serde(default)]
    pub data: DataConfig,
    /// `[model]`: generator and critic widths.
    #[serde(default)]
    pub model: ModelConfig,
    /// `[train]`: loop length, optimizer and seed.
    #[serde(default)]
    pub train: TrainSection,
    /// `[constraint]`: how the critic is kept Lipschitz.
    #[serde(default)]
    pub constraint: ConstraintConfig,
    /// `[output]`: run folder and how often to write samples, metrics and checkpoints.
    #[serde(default)]
    pub output: OutputConfig,
}

/// `[data]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Folder of JPEG/PNG images, searched recursively. Relative paths are taken from the
    /// working directory when a run starts ([`Config::resolve_data_dir`]); the run's
    /// config.toml records the absolute path.
    pub dir: PathBuf,
    /// Side of the square training images: 32, 64 or 128.
    pub image_size: usize,
    /// 1 (grayscale) or 3 (RGB).
    pub channels: usize,
    /// Side of the centred square cropped before resizing; 0 = the largest centred square.
    pub crop: usize,
    /// Keep the decoded images in the decoded-image cache ([`crate::cache`]) and map them from
    /// there on the next run over the same files and preparation.
    pub cache: bool,
    /// How real batches are drawn: `"epochs"` (default) or `"replacement"`.
    pub sampling: crate::data::Sampling,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("data/fashion-mnist"),
            image_size: 32,
            channels: 1,
            crop: 0,
            cache: true,
            sampling: crate::data::Sampling::Epochs,
        }
    }
}

/// `[model]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Dimension of the generator's normal latent vector.
    pub z_dim: usize,
    /// Channels of the generator's last hidden layer (doubling towards the input).
    pub g_width: usize,
    /// Channels of the critic's first layer (doubling with depth).
    pub d_width: usize,
    /// The critic's hidden activation: `"leaky_relu"` (default) or `"groupsort"`.
    pub critic_activation: Activation,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            z_dim: 128,
            g_width: 64,
            d_width: 64,
            critic_activation: Activation::LeakyRelu,
        }
    }
}

/// Which optimizer updates both networks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    /// Adam with `beta1`, `beta2` (the SN and GP papers).
    Adam,
    /// RMSProp (the original weight-clipping WGAN).
    Rmsprop,
}

/// The objective both networks minimise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    /// WGAN: critic `mean f(fake) - mean f(real)`, generator `-mean f(fake)`.
    #[default]
    Wasserstein,
    /// Hinge (Lim & Ye 2017; the SN-GAN paper's, Miyato et al. 2018):
    /// critic `mean relu(1 - f(real)) + mean relu(1 + f(fake))`, generator `-mean f(fake)`.
    Hinge,
}

/// `[train]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSection {
    /// Number of generator iterations (each preceded by `n_critic` critic steps).
    pub iterations: usize,
    /// Images per batch, for real and fake batches alike.
    pub batch_size: usize,
    /// Critic steps per generator step.
    pub n_critic: usize,
    /// Generator learning rate.
    pub lr_g: f64,
    /// Critic learning rate.
    pub lr_d: f64,
    /// Optimizer for both networks.
    pub optimizer: OptimizerKind,
    /// Adam's first-moment decay.
    pub beta1: f64,
    /// Adam's second-moment decay.
    pub beta2: f64,
    /// Seed of every random choice: initial weights, data order, noise.
    pub seed: u64,
    /// Wall-clock budget in minutes: stop (with a checkpoint) after the first iteration that
    /// reaches it, even before `iterations`. Unset: no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_minutes: Option<f64>,
    /// Objective: `"wasserstein"` (default) or `"hinge"`. The Wasserstein estimate
    /// mean f(real) - mean f(fake) is logged either way.
    pub loss: LossKind,
    /// Decay of the exponential moving average of the generator's weights that samples,
    /// grids, `sample`, `export` and the metrics use (e.g. 0.999); 0 = off.
    pub ema_decay: f64,
    /// Generator iterations during which the average only copies the generator; it averages
    /// from the next one on.
    pub ema_start: usize,
}

impl Default for TrainSection {
    fn default() -> Self {
        Self {
            iterations: 2000,
            batch_size: 64,
            n_critic: 5,
            lr_g: 2e-4,
            lr_d: 2e-4,
            optimizer: OptimizerKind::Adam,
            beta1: 0.0,
            beta2: 0.9,
            seed: 0,
            max_minutes: None,
            loss: LossKind::Wasserstein,
            ema_decay: 0.0,
            ema_start: 0,
        }
    }
}

/// The way the critic is kept Lipschitz.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConstraintKind {
    /// Every critic kernel divided by its power-iteration spectral norm (Miyato et al. 2018).
    SpectralNorm,
    /// WGAN-GP: a penalty on the critic's input-gradient norm at random interpolates
    /// (Gulrajani et al. 2017); `one_sided` penalizes only norms above 1.
    GradientPenalty,
    /// Every critic parameter clamped to [-clip_value, clip_value] after each critic step
    /// (Arjovsky et al. 2017).
    WeightClipping,
    /// No normalization in the forward pass; `lambda` * sum of squared layer spectral norms
    /// added to the critic loss (Yoshida & Miyato 2017, "Spectral Norm Regularization").
    SpectralPenalty,
    /// No constraint: the unconstrained baseline.
    None,
}

impl ConstraintKind {
    /// The TOML spelling of this kind.
    pub fn name(self) -> &'static str {
        match self {
            Self::SpectralNorm => "spectral_norm",
            Self::GradientPenalty => "gradient_penalty",
            Self::WeightClipping => "weight_clipping",
            Self::SpectralPenalty => "spectral_penalty",
            Self::None => "none",
        }
    }
}

/// What spectral normalization divides each convolution by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum NormKind {
    /// The largest singular value of the kernel's matrix view `[out, in*kh*kw]` (Miyato et al.
    /// 2018; the SN-GAN results use it). A 4x4 stride-2 convolution can then still have an
    /// operator norm up to 2.
    #[default]
    Matrix,
    /// The norm of the convolution as an operator on the layer's input shape (Farnia et al.
    /// 2019; Gouk et al. 2021), estimated by a persistent power iteration through the
    /// convolution and its adjoint. Each layer is then 1-Lipschitz as far as the estimate has
    /// caught up with the weights, which it does not in training: measured on a width-8
    /// critic after 30 Adam steps on random images, layers as used reach 1.12 with one
    /// iteration per forward at lr 2e-4 (1.02 with three); iterating to convergence on every
    /// forward still leaves 1.004, at 5.4x the time per iteration. `certify = true` divides
    /// by a certified upper bound instead.
    Operator,
}

/// The critic's hidden activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// LeakyReLU with slope 0.2 (DCGAN, SN-GAN).
    #[default]
    LeakyRelu,
    /// GroupSort with groups of 2 (MaxMin; Anil et al. 2019): sorts each pair of channels,
    /// gradient-norm preserving.
    Groupsort,
}

/// `[constraint]` table. Keys that do not apply to `kind` are rejected by [`Config::validate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConstraintConfig {
    /// Which constraint.
    pub kind: ConstraintKind,
    /// Power-iteration steps per training forward (spectral_norm, spectral_penalty).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub power_iterations: Option<usize>,
    /// Penalty weight (gradient_penalty: 10; spectral_penalty: 0.1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lambda: Option<f64>,
    /// gradient_penalty: penalize only gradient norms above 1 (default false).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub one_sided: Option<bool>,
    /// weight_clipping: the bound c (default 0.01).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clip_value: Option<f64>,
    /// spectral_norm, spectral_penalty: `"matrix"` (default) or `"operator"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub norm: Option<NormKind>,
    /// spectral_norm with `norm = "operator"`: divide every layer by a certified upper bound
    /// on its norm (module `model::bound`, recomputed after each critic step) instead of
    /// the power-iteration estimate, so that the critic is provably 1-Lipschitz (default
    /// false).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certify: Option<bool>,
}

impl Default for ConstraintConfig {
    fn default() -> Self {
        Self {
            kind: ConstraintKind::SpectralNorm,
            power_iterations: None,
            lambda: None,
            one_sided: None,
            clip_value: None,
            norm: None,
            certify: None,
        }
    }
}

impl ConstraintConfig {
    /// Power iterations per training forward; 1 when unset, as in the SN paper.
    pub fn power_iterations(&self) -> usize {
        self.power_iterations.unwrap_or(1)
    }

    /// The penalty weight; the papers' default for the kind when unset.
    pub fn lambda(&self) -> f64 {
        self.lambda.unwrap_or(match self.kind {
            ConstraintKind::SpectralPenalty => 0.1,
            _ => 10.0,
        })
    }

    /// Whether the gradient penalty is one-sided.
    pub fn one_sided(&self) -> bool {
        self.one_sided.unwrap_or(false)
    }

    /// The clipping bound; 0.01 when unset, as in the WGAN paper.
    pub fn clip_value(&self) -> f64 {
        self.clip_value.unwrap_or(0.01)
    }

    /// Whether convolutions are normalized by their operator norm.
    pub fn operator(&self) -> bool {
        self.norm == Some(NormKind::Operator)
    }

    /// Whether layers are divided by certified upper bounds on their norms.
    pub fn certify(&self) -> bool {
        self.certify.unwrap_or(false)
    }

    /// Which kinds each optional key applies to.
    fn key_applies(&self) -> [(&'static str, bool, &'static [ConstraintKind]); 6] {
        use ConstraintKind::*;
        [
            (
                "power_iterations",
                self.power_iterations.is_some(),
                &[SpectralNorm, SpectralPenalty],
            ),
            (
                "lambda",
                self.lambda.is_some(),
                &[GradientPenalty, SpectralPenalty],
            ),
            ("one_sided", self.one_sided.is_some(), &[GradientPenalty]),
            ("clip_value", self.clip_value.is_some(), &[WeightClipping]),
            (
                "norm",
                self.norm.is_some(),
                &[SpectralNorm, SpectralPenalty],
            ),
            ("certify", self.certify.is_some(), &[SpectralNorm]),
        ]
    }
}

/// `[output]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputConfig {
    /// Run folder; `--out` overrides it.
    pub dir: PathBuf,
    /// Write a sample grid every this many generator iterations (0: only at the end).
    pub sample_every: usize,
    /// Append a metrics line every this many generator iterations.
    pub log_every: usize,
    /// Write a checkpoint every this many generator iterations (0: only at the end).
    pub checkpoint_every: usize,
    /// How many of the newest checkpoints to keep.
    pub keep_checkpoints: usize,
    /// The sample grid is `grid_rows` x `grid_rows` images.
    pub grid_rows: usize,
    /// Log the critic's Lipschitz diagnostics (per-layer sigma, product bound, input-gradient
    /// norms) with every metrics line.
    pub diagnostics: bool,
    /// Compute the sliced Wasserstein distance to the data every this many generator
    /// iterations and at the end (0: never).
    pub eval_every: usize,
    /// Images per set (generated and real) for the sliced Wasserstein distance (and FID/KID).
    pub eval_images: usize,
    /// What each evaluation computes, of "swd", "fid", "kid"; empty (the default): SWD, and FID
    /// and KID too where Inception weights are given (`inception` or `WGAN_TRAIN_INCEPTION`).
    pub eval_metrics: Vec<String>,
    /// The FID Inception's weights (scripts/get-inception.py's safetensors or pytorch-fid's
    /// .pth); unset: `WGAN_TRAIN_INCEPTION`, else none.
    pub inception: Option<PathBuf>,
    /// Redraw the plots in `plots/` with every metrics line.
    pub plots: bool,
}

impl Default for OutputConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("runs/sn"),
            sample_every: 100,
            log_every: 10,
            checkpoint_every: 500,
            keep_checkpoints: 3,
            grid_rows: 8,
            diagnostics: true,
            eval_every: 250,
            eval_images: 256,
            eval_metrics: Vec::new(),
            inception: None,
            plots: true,
        }
    }
}

impl DataConfig {
    /// How images are cropped, resized and coloured for the networks.
    pub fn preprocess(&self) -> crate::data::Preprocess {
        crate::data::Preprocess {
            size: self.image_size,
            channels: self.channels,
            crop: self.crop,
        }
    }
}

/// The metrics `output.eval_metrics` may name.
pub const EVAL_METRICS: [&str; 3] = ["swd", "fid", "kid"];

impl OutputConfig {
    /// The Inception weights FID/KID use: `inception`, else `WGAN_TRAIN_INCEPTION`.
    pub fn inception_weights(&self) -> Option<PathBuf> {
        self.inception.clone().or_else(|| {
            std::env::var_os("WGAN_TRAIN_INCEPTION")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
    }

    /// Whether evaluations compute `metric` ("swd", "fid" or "kid"): as listed in
    /// `eval_metrics`, or by default SWD, and FID and KID where weights are given.
    pub fn evaluates(&self, metric: &str) -> bool {
        if self.eval_metrics.is_empty() {
            metric == "swd" || self.inception_weights().is_some()
        } else {
            self.eval_metrics.iter().any(|m| m == metric)
        }
    }
}

/// Allowed `output.eval_images` (and `eval --images`): images per SWD set.
pub const EVAL_IMAGES: std::ops::RangeInclusive<usize> = 16..=16384;

impl Config {
    /// Reads `path`, applies `overrides` (`"train.iterations=200"`), parses and validates.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read config file {}: check the path given to --config",
                path.display()
            )
        })?;
        Self::from_toml(&text, overrides)
            .with_context(|| format!("invalid config {}", path.display()))
    }

    /// A tiny GAN with constraint `kind` (32x32x1, widths 4, z 8, otherwise the defaults): what
    /// `wgan-train parity` and the step tests train.
    pub fn tiny(kind: &str) -> Self {
        let text = format!(
            "[data]\nimage_size = 32\nchannels = 1\n[model]\nz_dim = 8\ng_width = 4\nd_width = 4\n[constraint]\nkind = \"{kind}\"\n"
        );
        Self::from_toml(&text, &[]).expect("a valid tiny config")
    }

    /// Parses TOML text, applies `overrides` and validates.
    pub fn from_toml(text: &str, overrides: &[String]) -> Result<Self> {
        let config: Config = parse_with_overrides(text, overrides)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every value serde cannot; the error names the key and the allowed values.
    pub fn validate(&self) -> Result<()> {
        let d = &self.data;
        if ![32, 64, 128].contains(&d.image_size) {
            bail!(
                "data.image_size = {} is not supported: use 32, 64 or 128",
                d.image_size
            );
        }
        if ![1, 3].contains(&d.channels) {
            bail!(
                "data.channels = {} is not supported: use 1 (grayscale) or 3 (RGB)",
                d.channels
            );
        }
        if d.dir.as_os_str().is_empty() {
            bail!("data.dir is empty: set it to a folder of JPEG/PNG images");
        }
        let m = &self.model;
        positive("model.z_dim", m.z_dim)?;
        positive("model.g_width", m.g_width)?;
        positive("model.d_width", m.d_width)?;
        if m.critic_activation == Activation::Groupsort && m.d_width % 2 != 0 {
            bail!(
                "model.d_width = {} is odd: critic_activation = \"groupsort\" sorts pairs of channels, so use an even width",
                m.d_width
            );
        }
        let t = &self.train;
        positive("train.iterations", t.iterations)?;
        positive("train.batch_size", t.batch_size)?;
        positive("train.n_critic", t.n_critic)?;
        learning_rate("train.lr_g", t.lr_g)?;
        learning_rate("train.lr_d", t.lr_d)?;
        unit_interval("train.beta1", t.beta1)?;
        unit_interval("train.beta2", t.beta2)?;
        unit_interval("train.ema_decay", t.ema_decay)?;
        self.constraint.validate()?;
        let o = &self.output;
        positive("output.log_every", o.log_every)?;
        positive("output.keep_checkpoints", o.keep_checkpoints)?;
        if !EVAL_IMAGES.contains(&o.eval_images) {
            bail!(
                "output.eval_images = {} is out of range: use {} to {}",
                o.eval_images,
                EVAL_IMAGES.start(),
                EVAL_IMAGES.end()
            );
        }
        if let Some(bad) = o
            .eval_metrics
            .iter()
            .find(|m| !EVAL_METRICS.contains(&m.as_str()))
        {
            bail!(
                "output.eval_metrics: unknown metric {bad:?}: use any of {}",
                EVAL_METRICS.map(|m| format!("{m:?}")).join(", ")
            );
        }
        if let Some(m) = t.max_minutes
            && !(m.is_finite() && m > 0.0)
        {
            bail!("train.max_minutes = {m} must be a positive number of minutes (or left out)");
        }
        if !(1..=16).contains(&o.grid_rows) {
            bail!(
                "output.grid_rows = {} is out of range: use 1 to 16",
                o.grid_rows
            );
        }
        if o.dir.as_os_str().is_empty() {
            bail!("output.dir is empty: set it, or pass --out DIR");
        }
        Ok(())
    }
}

impl ConstraintConfig {
    /// Checks the keys against the kind and every value's range.
    pub fn validate(&self) -> Result<()> {
        let c = self;
        for (key, present, kinds) in c.key_applies() {
            if present && !kinds.contains(&c.kind) {
                let names: Vec<String> =
                    kinds.iter().map(|k| format!("\"{}\"", k.name())).collect();
                bail!(
                    "constraint.{key} does not apply to kind = \"{}\" (only to {}): remove it or change constraint.kind",
                    c.kind.name(),
                    names.join(", ")
                );
            }
        }
        if c.certify() && !c.operator() {
            bail!(
                "constraint.certify = true needs constraint.norm = \"operator\" (a matrix-view bound does not bound the convolution): add it or remove certify"
            );
        }
        if !(1..=100).contains(&c.power_iterations()) {
            bail!(
                "constraint.power_iterations = {} is out of range: use 1 to 100",
                c.power_iterations()
            );
        }
        let lambda = c.lambda();
        if !(lambda.is_finite() && lambda >= 0.0) {
            bail!("constraint.lambda = {lambda} is out of range: use a finite value >= 0");
        }
        let clip = c.clip_value();
        if !(clip.is_finite() && clip > 0.0) {
            bail!("constraint.clip_value = {clip} is out of range: use a finite value > 0");
        }
        Ok(())
    }
}

impl Config {
    /// Makes a relative `data.dir` (and `output.inception`) absolute (from the working
    /// directory), so that the run's config.toml names them wherever `inspect`, `eval`,
    /// `sample` or `--resume` run from.
    pub fn resolve_data_dir(&mut self) -> Result<()> {
        if self.data.dir.is_relative() {
            self.data.dir = std::path::absolute(&self.data.dir).with_context(|| {
                format!(
                    "cannot resolve data.dir = {} against the working directory",
                    self.data.dir.display()
                )
            })?;
        }
        // The Inception weights too, so that `eval` finds them from any folder.
        if let Some(weights) = self.output.inception.as_mut().filter(|w| w.is_relative()) {
            *weights = std::path::absolute(&*weights).with_context(|| {
                format!(
                    "cannot resolve output.inception = {} against the working directory",
                    weights.display()
                )
            })?;
        }
        Ok(())
    }

    /// The config as TOML, as written into the run folder.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a Config always serializes")
    }
}

/// Parses TOML text into `T` after applying `overrides` (`"train.iterations=200"`) to the raw
/// table, with one-line errors; validation is the caller's. Image and toy configs share it.
pub(crate) fn parse_with_overrides<T: serde::de::DeserializeOwned>(
    text: &str,
    overrides: &[String],
) -> Result<T> {
    let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        anyhow::anyhow!("malformed TOML: {}", one_line(&e.to_string()))
    })?;
    for item in overrides {
        apply_override(&mut table, item)?;
    }
    toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| anyhow::anyhow!("{}", one_line(&e.to_string())))
}

/// Applies one `--set a.b=value` to the raw table. The value is parsed as a TOML value
/// (`200`, `2e-4`, `true`, `"text"`), and taken as a plain string when it is not one
/// (`data.dir=/path/to/images`).
fn apply_override(table: &mut toml::Table, item: &str) -> Result<()> {
    let Some((key, raw)) = item.split_once('=') else {
        bail!(
            "--set {item:?} has no '=': write --set section.key=value, e.g. --set train.iterations=200"
        );
    };
    let key = key.trim();
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        bail!("--set {item:?}: key {key:?} is not of the form section.key");
    }
    let value = parse_value(raw.trim());
    let (last, sections) = parts.split_last().expect("split yields at least one part");
    let mut current = table;
    for section in sections {
        let entry = current
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = match entry {
            toml::Value::Table(t) => t,
            _ => bail!("--set {item:?}: {section:?} is a value, not a section"),
        };
    }
    current.insert(last.to_string(), value);
    Ok(())
}

fn parse_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.chars().all(|c| c == '|' || c == '^' || c == ' '))
        .collect::<Vec<_>>()
        .join(" ")
}

pub(crate) fn positive(key: &str, value: usize) -> Result<()> {
    if value == 0 {
        bail!("{key} = 0 is out of range: it must be at least 1");
    }
    Ok(())
}

pub(crate) fn learning_rate(key: &str, value: f64) -> Result<()> {
    if !(value.is_finite() && value > 0.0 && value < 1.0) {
        bail!("{key} = {value} is out of range: a learning rate must be > 0 and < 1");
    }
    Ok(())
}

pub(crate) fn unit_interval(key: &str, value: f64) -> Result<()> {
    if !(0.0..1.0).contains(&value) {
        bail!("{key} = {value} is out of range: use 0 <= {key} < 1");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str, overrides: &[&str]) -> String {
        let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        format!("{:#}", Config::from_toml(text, &overrides).unwrap_err())
    }

    #[test]
    fn empty_file_gives_the_documented_defaults() {
        let c = Config::from_toml("", &[]).unwrap();
        assert_eq!(c, Config::from_toml(&c.to_toml(), &[]).unwrap());
        assert_eq!(c.data.image_size, 32);
        assert_eq!(c.constraint.kind, ConstraintKind::SpectralNorm);
        assert_eq!(c.constraint.power_iterations(), 1);
    }

    #[test]
    fn overrides_are_parsed_as_toml_values_or_strings() {
        let c = Config::from_toml(
            "[train]\niterations = 5\n",
            &[
                "train.iterations=200".into(),
                "train.lr_d = 1e-4".into(),
                "data.dir=/tmp/some images".into(),
                "constraint.kind=\"none\"".into(),
            ],
        )
        .unwrap();
        assert_eq!(c.train.iterations, 200);
        assert_eq!(c.train.lr_d, 1e-4);
        assert_eq!(c.data.dir, PathBuf::from("/tmp/some images"));
        assert_eq!(c.constraint.kind, ConstraintKind::None);
    }

    #[test]
    fn eval_metrics_are_checked_and_fid_follows_the_weights() {
        let e = err("[output]\neval_metrics = [\"swd\", \"fdi\"]\n", &[]);
        assert!(
            e.contains("output.eval_metrics") && e.contains("\"fdi\"") && e.contains("\"fid\""),
            "{e}"
        );
        let c = Config::from_toml("[output]\ninception = \"w.safetensors\"\n", &[]).unwrap();
        assert!(["swd", "fid", "kid"].iter().all(|m| c.output.evaluates(m)));
        let c = Config::from_toml("[output]\neval_metrics = [\"fid\"]\n", &[]).unwrap();
        assert!(
            c.output.evaluates("fid") && !c.output.evaluates("swd") && !c.output.evaluates("kid")
        );
        if std::env::var_os("WGAN_TRAIN_INCEPTION").is_none() {
            let c = Config::from_toml("", &[]).unwrap();
            assert!(c.output.evaluates("swd") && !c.output.evaluates("fid"));
        }
    }

    #[test]
    fn unknown_keys_are_named() {
        assert!(err("[train]\nitrations = 5\n", &[]).contains("itrations"));
        assert!(err("", &["model.depth=3"]).contains("depth"));
        assert!(err("[trian]\n", &[]).contains("trian"));
    }

    #[test]
    fn out_of_range_values_name_the_key_and_the_allowed_values() {
        let e = err("[data]\nimage_size = 48\n", &[]);
        assert!(
            e.contains("data.image_size = 48") && e.contains("32, 64 or 128"),
            "{e}"
        );
        assert!(err("[data]\nchannels = 2\n", &[]).contains("data.channels = 2"));
        assert!(err("[train]\nbatch_size = 0\n", &[]).contains("train.batch_size"));
        assert!(err("[train]\nn_critic = 0\n", &[]).contains("train.n_critic"));
        assert!(err("[train]\nlr_g = -1e-4\n", &[]).contains("train.lr_g"));
        assert!(err("[train]\nlr_d = 0.0\n", &[]).contains("train.lr_d"));
        assert!(err("[train]\nbeta2 = 1.0\n", &[]).contains("train.beta2"));
        assert!(err("[output]\ngrid_rows = 0\n", &[]).contains("output.grid_rows"));
        // A certified bound needs the operator norm, and applies to spectral_norm only.
        let e = err("[constraint]\ncertify = true\n", &[]);
        assert!(
            e.contains("constraint.certify") && e.contains("operator"),
            "{e}"
        );
        let e = err(
            "[constraint]\nkind = \"gradient_penalty\"\ncertify = true\n",
            &[],
        );
        assert!(e.contains("constraint.certify does not apply"), "{e}");
        let ok = "[constraint]\nnorm = \"operator\"\ncertify = true\n";
        assert!(Config::from_toml(ok, &[]).unwrap().constraint.certify());
    }

    #[test]
    fn wrong_types_and_unknown_kinds_are_named() {
        assert!(err("[train]\niterations = \"many\"\n", &[]).contains("iterations"));
        let e = err("[constraint]\nkind = \"magic\"\n", &[]);
        assert!(e.contains("magic") && e.contains("spectral_norm"), "{e}");
    }

    #[test]
    fn keys_of_another_constraint_kind_are_rejected() {
        let e = err("[constraint]\nkind = \"none\"\npower_iterations = 2\n", &[]);
        assert!(e.contains("constraint.power_iterations"), "{e}");
        let e = err(
            "[constraint]\nkind = \"spectral_norm\"\nclip_value = 0.1\n",
            &[],
        );
        assert!(
            e.contains("constraint.clip_value") && e.contains("weight_clipping"),
            "{e}"
        );
        let e = err(
            "[constraint]\nkind = \"weight_clipping\"\none_sided = true\n",
            &[],
        );
        assert!(e.contains("constraint.one_sided"), "{e}");
        let e = err(
            "[constraint]\nkind = \"gradient_penalty\"\nlambda = -1.0\n",
            &[],
        );
        assert!(e.contains("constraint.lambda = -1"), "{e}");
        let e = err(
            "[constraint]\nkind = \"weight_clipping\"\nclip_value = 0.0\n",
            &[],
        );
        assert!(e.contains("constraint.clip_value = 0"), "{e}");
    }

    #[test]
    fn constraint_defaults_follow_the_papers() {
        let c = |kind: &str| {
            Config::from_toml(&format!("[constraint]\nkind = \"{kind}\"\n"), &[])
                .unwrap()
                .constraint
        };
        assert_eq!(c("gradient_penalty").lambda(), 10.0);
        assert!(!c("gradient_penalty").one_sided());
        assert_eq!(c("weight_clipping").clip_value(), 0.01);
        assert_eq!(c("spectral_penalty").lambda(), 0.1);
    }

    #[test]
    fn set_without_equals_is_explained() {
        assert!(err("", &["train.iterations"]).contains("has no '='"));
    }

    #[test]
    fn malformed_toml_is_one_line() {
        let e = err("[train\n", &[]);
        assert!(e.starts_with("malformed TOML"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }
}

#[cfg(test)]
mod shipped_configs {
    use super::*;

    #[test]
    fn every_shipped_config_is_valid_and_names_its_kind() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
        let mut seen = 0;
        for dir in [root.clone(), root.join("celeba")] {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.extension().is_some_and(|e| e == "toml") {
                    let c = Config::load(&path, &[]).unwrap_or_else(|e| panic!("{e:#}"));
                    let stem = path.file_stem().unwrap().to_str().unwrap();
                    let expected = match stem {
                        "sn" | "sn-operator" | "sn-operator-groupsort" => {
                            ConstraintKind::SpectralNorm
                        }
                        "gp" | "gp1" => ConstraintKind::GradientPenalty,
                        "clip" => ConstraintKind::WeightClipping,
                        "sp" => ConstraintKind::SpectralPenalty,
                        "none" => ConstraintKind::None,
                        other => panic!("unexpected config {other}"),
                    };
                    assert_eq!(c.constraint.kind, expected, "{}", path.display());
                    assert_eq!(c.constraint.one_sided(), stem == "gp1");
                    // The operator configs are the certified critic, with the named activation.
                    let operator = stem.starts_with("sn-operator");
                    assert_eq!(c.constraint.operator() && c.constraint.certify(), operator);
                    let groupsort = c.model.critic_activation == Activation::Groupsort;
                    assert_eq!(groupsort, stem.ends_with("groupsort"), "{}", path.display());
                    seen += 1;
                }
            }
        }
        assert_eq!(seen, 16);
    }
}

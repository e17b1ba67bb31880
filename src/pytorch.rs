//! The PyTorch peer's state dicts (`G` and `D` of `../shared/peer/torch_wgan.py`, the same
//! architecture): one walk over each network names every tensor as PyTorch does and converts the
//! layouts, and serves both directions: [`export_generator`] writes safetensors that
//! `G.load_state_dict` takes, [`load_generator`] and [`load_critic`] read the peer's weights (the
//! training-parity test starts both trainers from the same ones), [`generator_state`] and
//! [`critic_state`] list ours; [`Replay`] takes the peer's steps on inputs drawn on the peer's
//! side.
//!
//! Written by hand over the `safetensors` crate rather than through `burn-store`'s PyTorch
//! adapter: the spectral-norm vectors `_u`, `_v` are running states here and parametrization
//! buffers there, which a key remapping alone does not carry across.

use crate::atomic::write_atomic;
use crate::config::TrainSection;
use crate::gan::{CriticBatch, Gan, critic_step, generator_step};
use crate::model::critic::{CriticConv, CriticLinear};
use crate::model::generator::UpBlock;
use crate::model::{Critic, Generator, SpectralNorm};
use anyhow::{Context, Result, bail};
use burn::module::{Param, RunningState};
use burn::nn::BatchNorm;
use burn::nn::conv::ConvTranspose2d;
use burn::prelude::*;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use std::path::Path;

/// One tensor of a state dict: PyTorch name, shape and little-endian bytes.
pub struct Entry {
    /// The state-dict key, e.g. `net.0.weight`.
    pub name: String,
    /// `F32`, or `I64` for BatchNorm's `num_batches_tracked`.
    pub dtype: Dtype,
    /// PyTorch's shape.
    pub shape: Vec<usize>,
    /// The values, little-endian.
    pub bytes: Vec<u8>,
}

impl Entry {
    fn float<const D: usize>(name: String, tensor: Tensor<D>) -> Self {
        let shape = tensor.dims().to_vec();
        let values: Vec<f32> = tensor
            .into_data()
            .convert::<f32>()
            .try_to_vec()
            .expect("f32");
        Self {
            name,
            dtype: Dtype::F32,
            shape,
            bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// The values as f32 (for F32 entries).
    pub fn values(&self) -> Vec<f32> {
        le_f32s(&self.bytes)
    }
}

/// Little-endian f32 values from `bytes` (safetensors' F32 layout).
pub(crate) fn le_f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
        .collect()
}

/// What the walks do at each tensor: read it out, or replace it.
trait Visitor {
    /// A parameter; `transpose` when Burn keeps it as the transpose of PyTorch's (`Linear`).
    fn param<const D: usize>(&mut self, name: &str, p: &mut Param<Tensor<D>>, transpose: bool);
    /// A running state (BatchNorm statistics, spectral-norm vectors).
    fn state<const D: usize>(&mut self, name: &str, s: &mut RunningState<Tensor<D>>);
    /// BatchNorm's `num_batches_tracked` counter, which Burn does not keep.
    fn counter(&mut self, _name: &str) {}
}

fn walk_batch_norm(prefix: &str, norm: &mut BatchNorm, v: &mut impl Visitor) {
    v.param(&format!("{prefix}.weight"), &mut norm.gamma, false);
    v.param(&format!("{prefix}.bias"), &mut norm.beta, false);
    v.state(&format!("{prefix}.running_mean"), &mut norm.running_mean);
    v.state(&format!("{prefix}.running_var"), &mut norm.running_var);
    v.counter(&format!("{prefix}.num_batches_tracked"));
}

fn walk_conv_transpose(prefix: &str, conv: &mut ConvTranspose2d, v: &mut impl Visitor) {
    // Same layout in both: [in, out, kh, kw].
    v.param(&format!("{prefix}.weight"), &mut conv.weight, false);
    if let Some(bias) = &mut conv.bias {
        v.param(&format!("{prefix}.bias"), bias, false);
    }
}

/// The generator under the names of the peer's `G`: `fc`, `bn0`, then `net` as
/// [ConvT, BN, ReLU] per block and a last ConvT, Tanh.
fn walk_generator(generator: &mut Generator, v: &mut impl Visitor) {
    // Burn's Linear keeps [in, out]; PyTorch's [out, in].
    v.param("fc.weight", &mut generator.project.weight, true);
    if let Some(bias) = &mut generator.project.bias {
        v.param("fc.bias", bias, false);
    }
    walk_batch_norm("bn0", &mut generator.project_norm, v);
    for (i, UpBlock { conv, norm }) in generator.blocks.iter_mut().enumerate() {
        walk_conv_transpose(&format!("net.{}", 3 * i), conv, v);
        walk_batch_norm(&format!("net.{}", 3 * i + 1), norm, v);
    }
    let last = format!("net.{}", 3 * generator.blocks.len());
    walk_conv_transpose(&last, &mut generator.to_image, v);
}

/// A critic layer's kernel: `weight`, or under `torch.nn.utils.parametrizations.spectral_norm`
/// the unnormalized `parametrizations.weight.original` and the vectors `_u`, `_v`.
fn walk_kernel<const D: usize>(
    prefix: &str,
    weight: &mut Param<Tensor<D>>,
    spectral: &mut Option<SpectralNorm>,
    v: &mut impl Visitor,
) {
    match spectral {
        Some(sn) => {
            let p = format!("{prefix}.parametrizations.weight");
            v.param(&format!("{p}.original"), weight, false);
            v.state(&format!("{p}.0._u"), &mut sn.u);
            v.state(&format!("{p}.0._v"), &mut sn.v);
        }
        None => v.param(&format!("{prefix}.weight"), weight, false),
    }
}

/// The critic under the names of the peer's `D`: `net` as [Conv, LeakyReLU] per layer, `fc`.
fn walk_critic(critic: &mut Critic, v: &mut impl Visitor) {
    for (
        i,
        CriticConv {
            weight,
            bias,
            spectral,
            .. // the operator norm has no PyTorch counterpart in the peer
        },
    ) in critic.convs.iter_mut().enumerate()
    {
        let prefix = format!("net.{}", 2 * i);
        walk_kernel(&prefix, weight, spectral, v);
        v.param(&format!("{prefix}.bias"), bias, false);
    }
    let CriticLinear {
        weight,
        bias,
        spectral,
    } = &mut critic.head;
    walk_kernel("fc", weight, spectral, v);
    v.param("fc.bias", bias, false);
}

/// Reads every tensor out, in PyTorch's layout, names prefixed.
struct Reader<'a> {
    prefix: &'a str,
    batches: Option<i64>,
    out: Vec<Entry>,
}

impl Visitor for Reader<'_> {
    fn param<const D: usize>(&mut self, name: &str, p: &mut Param<Tensor<D>>, transpose: bool) {
        let t = p.val();
        let t = if transpose { t.swap_dims(0, 1) } else { t };
        self.out
            .push(Entry::float(format!("{}{name}", self.prefix), t));
    }

    fn state<const D: usize>(&mut self, name: &str, s: &mut RunningState<Tensor<D>>) {
        let name = format!("{}{name}", self.prefix);
        self.out.push(Entry::float(name, s.value_sync()));
    }

    fn counter(&mut self, name: &str) {
        // A 0-d int64 buffer of PyTorch's BatchNorm; only read when momentum is None.
        if let Some(batches) = self.batches {
            self.out.push(Entry {
                name: format!("{}{name}", self.prefix),
                dtype: Dtype::I64,
                shape: vec![],
                bytes: batches.to_le_bytes().to_vec(),
            });
        }
    }
}

/// Replaces every tensor by the one of the same (prefixed) name in a safetensors file,
/// keeping parameter ids and gradient tracking; the first problem is kept in `error`.
struct Writer<'a> {
    prefix: &'a str,
    file: &'a SafeTensors<'a>,
    error: Option<anyhow::Error>,
}

impl Writer<'_> {
    /// The named tensor, `[shape]` checked against ours (PyTorch's layout).
    fn read<const D: usize>(
        &mut self,
        name: &str,
        shape: [usize; D],
        device: &Device,
    ) -> Option<Tensor<D>> {
        if self.error.is_some() {
            return None;
        }
        let name = format!("{}{name}", self.prefix);
        let result = (|| {
            let view = self
                .file
                .tensor(&name)
                .with_context(|| format!("no tensor {name}"))?;
            if view.dtype() != Dtype::F32 || view.shape() != shape {
                bail!(
                    "{name} is {:?} {:?}, expected F32 {shape:?}",
                    view.dtype(),
                    view.shape()
                );
            }
            let values = le_f32s(view.data());
            Ok(Tensor::from_data(TensorData::new(values, shape), device))
        })();
        result.map_err(|e| self.error = Some(e)).ok()
    }
}

impl Visitor for Writer<'_> {
    fn param<const D: usize>(&mut self, name: &str, p: &mut Param<Tensor<D>>, transpose: bool) {
        let old = p.val();
        let mut shape = old.dims();
        if transpose {
            shape.swap(0, 1);
        }
        if let Some(t) = self.read(name, shape, &old.device()) {
            let t = if transpose { t.swap_dims(0, 1) } else { t };
            let t = t.set_require_grad(old.is_require_grad());
            *p = p.clone().map(|_| t);
        }
    }

    fn state<const D: usize>(&mut self, name: &str, s: &mut RunningState<Tensor<D>>) {
        let old = s.value_sync();
        if let Some(t) = self.read(name, old.dims(), &old.device()) {
            *s = RunningState::new(t);
        }
    }
}

/// The generator's tensors under the peer's names, each prefixed with `prefix` (e.g. `"g."`),
/// BatchNorm's `num_batches_tracked` set to `batches` when given.
pub fn generator_state(generator: &Generator, prefix: &str, batches: Option<i64>) -> Vec<Entry> {
    let mut generator = generator.valid(); // flushes pending running statistics
    let mut reader = Reader {
        prefix,
        batches,
        out: Vec::new(),
    };
    walk_generator(&mut generator, &mut reader);
    reader.out
}

/// The critic's tensors under the peer's names (spectral-norm vectors included), prefixed.
pub fn critic_state(critic: &Critic, prefix: &str) -> Vec<Entry> {
    let mut critic = critic.clone();
    let mut reader = Reader {
        prefix,
        batches: None,
        out: Vec::new(),
    };
    walk_critic(&mut critic, &mut reader);
    reader.out
}

/// Every tensor of `generator` replaced by `prefix` + its peer name in `file`; an error names
/// the first missing or misshapen tensor.
pub fn load_generator(generator: Generator, file: &SafeTensors, prefix: &str) -> Result<Generator> {
    let mut generator = generator;
    let mut writer = Writer {
        prefix,
        file,
        error: None,
    };
    walk_generator(&mut generator, &mut writer);
    writer.error.map_or(Ok(generator), Err)
}

/// As [`load_generator`], for the critic.
pub fn load_critic(critic: Critic, file: &SafeTensors, prefix: &str) -> Result<Critic> {
    let mut critic = critic;
    let mut writer = Writer {
        prefix,
        file,
        error: None,
    };
    walk_critic(&mut critic, &mut writer);
    writer.error.map_or(Ok(critic), Err)
}

/// Writes `entries` as safetensors to `path`, atomically.
pub fn write_safetensors(entries: &[Entry], path: &Path) -> Result<()> {
    let views = entries
        .iter()
        .map(|e| {
            Ok((
                e.name.clone(),
                TensorView::new(e.dtype, e.shape.clone(), &e.bytes)?,
            ))
        })
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()
        .context("cannot build the safetensors views")?;
    let bytes = safetensors::serialize(views, None).context("cannot serialize safetensors")?;
    write_atomic(path, &bytes)
}

/// Writes the generator as safetensors to `path`, atomically, loadable by the peer's
/// `G.load_state_dict`. `batches` fills BatchNorm's `num_batches_tracked`.
pub fn export_generator(generator: &Generator, batches: i64, path: &Path) -> Result<()> {
    write_safetensors(&generator_state(generator, "", Some(batches)), path)
}

/// Every tensor of a safetensors file, as f32 values (F32, or I64 converted) and shape.
pub type Arrays = std::collections::BTreeMap<String, (Vec<f32>, Vec<usize>)>;

/// Reads every tensor of the safetensors file at `path` as f32 (`I64` converted, e.g. BatchNorm's
/// `num_batches_tracked` or the drawn `real_index`); another dtype is an error naming the tensor.
pub fn read_arrays(path: &Path) -> Result<Arrays> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file = SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{} is not a safetensors file", path.display()))?;
    let mut out = Arrays::new();
    for (name, view) in file.tensors() {
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => le_f32s(view.data()),
            Dtype::I64 => view
                .data()
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
                .collect(),
            other => bail!(
                "{}: tensor {name} has dtype {other:?}, expected F32 or I64",
                path.display()
            ),
        };
        out.insert(name, (values, view.shape().to_vec()));
    }
    Ok(out)
}

/// Both networks of `gan` under the peer's names, generator as `g.`, critic as `d.` (the layout
/// `scripts/torch_parity.py` writes).
pub fn gan_state(gan: &Gan) -> Vec<Entry> {
    let mut entries = generator_state(&gan.generator, "g.", None);
    entries.extend(critic_state(&gan.critic, "d."));
    entries
}

/// Replaces both networks of `gan` by the `g.` / `d.` tensors of the safetensors file at `path`.
pub fn load_gan(mut gan: Gan, path: &Path) -> Result<Gan> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file = SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{} is not a safetensors file", path.display()))?;
    gan.generator = load_generator(gan.generator, &file, "g.")
        .with_context(|| format!("generator from {}", path.display()))?;
    gan.critic = load_critic(gan.critic, &file, "d.")
        .with_context(|| format!("critic from {}", path.display()))?;
    Ok(gan)
}

/// Every input of a run drawn once on the PyTorch side (`scripts/torch_parity.py`'s
/// `inputs.safetensors`): real batches as `real` `[K, B, C, S, S]`, or as `data` `[N, C, S, S]`
/// with `real_index` `[K, B]`; `z_critic` `[K, B, z]`, `epsilon` `[K, B]` (any shape of K*B
/// values) for the K = iterations * n_critic critic steps, `z_gen` `[iterations, B, z]`.
/// Feeding them to [`Replay::iteration`] takes the peer's steps on the peer's inputs: the
/// training-parity test and `examples/replay.rs` both do.
pub struct Replay {
    arrays: Arrays,
    device: Device,
    /// `[C, S, S]` of one image.
    image: [usize; 3],
}

impl Replay {
    /// Reads the drawn inputs at `path`, for images of `channels` x `size` x `size`.
    pub fn load(path: &Path, channels: usize, size: usize, device: &Device) -> Result<Self> {
        let arrays = read_arrays(path)?;
        for name in ["z_critic", "epsilon", "z_gen"] {
            if !arrays.contains_key(name) {
                bail!("{}: no tensor {name}", path.display());
            }
        }
        let indexed = arrays.contains_key("data") && arrays.contains_key("real_index");
        if !arrays.contains_key("real") && !indexed {
            bail!(
                "{}: neither `real` nor `data` with `real_index`",
                path.display()
            );
        }
        Ok(Self {
            arrays,
            device: device.clone(),
            image: [channels, size, size],
        })
    }

    /// `(iterations, batch, z_dim)`, from `z_gen`'s shape.
    pub fn dims(&self) -> (usize, usize, usize) {
        let shape = &self.arrays["z_gen"].1;
        (shape[0], shape[1], shape[2])
    }

    /// Block `index` of `shape`'s size from the flat array `name`.
    fn block<const D: usize>(&self, name: &str, index: usize, shape: [usize; D]) -> Tensor<D> {
        let n: usize = shape.iter().product();
        let values = self.arrays[name].0[index * n..(index + 1) * n].to_vec();
        Tensor::from_data(TensorData::new(values, shape), &self.device)
    }

    /// The real images of critic step `k`: `[B, C, S, S]`.
    fn real(&self, k: usize) -> Tensor<4> {
        let (_, batch, _) = self.dims();
        let [c, s, _] = self.image;
        let shape = [batch, c, s, s];
        if self.arrays.contains_key("real") {
            return self.block("real", k, shape);
        }
        let n = c * s * s;
        let data = &self.arrays["data"].0;
        let values: Vec<f32> = self.arrays["real_index"].0[k * batch..(k + 1) * batch]
            .iter()
            .flat_map(|&i| data[i as usize * n..(i as usize + 1) * n].iter().copied())
            .collect();
        Tensor::from_data(TensorData::new(values, shape), &self.device)
    }

    /// The inputs of critic step `k` (counted over the whole run).
    fn critic_batch(&self, k: usize) -> CriticBatch {
        let (_, batch, z_dim) = self.dims();
        CriticBatch {
            real: self.real(k),
            z: self.block("z_critic", k, [batch, z_dim]),
            epsilon: self.block("epsilon", k, [batch, 1, 1, 1]),
        }
    }

    /// The generator step's noise of iteration `it`: `[B, z]`.
    fn z_gen(&self, it: usize) -> Tensor<2> {
        let (_, batch, z_dim) = self.dims();
        self.block("z_gen", it, [batch, z_dim])
    }

    /// Iteration `it` (from 0) of `train`'s schedule on these inputs: `n_critic` critic steps,
    /// calling `after_critic(k, gan)` after each (k counted over the run, from 0), then one
    /// generator step.
    pub fn iteration(
        &self,
        gan: &mut Gan,
        it: usize,
        train: &TrainSection,
        mut after_critic: impl FnMut(usize, &Gan),
    ) {
        for j in 0..train.n_critic {
            let k = it * train.n_critic + j;
            critic_step(gan, self.critic_batch(k), train.lr_d);
            after_critic(k, gan);
        }
        generator_step(gan, self.z_gen(it), train.lr_g);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::SafeTensors;

    /// `values` drawn from U(-b, b): all within [-b, b]; with 16 or more values, the standard
    /// deviation within 5 standard errors of b / sqrt(3) (a uniform's kurtosis is 1.8, so the
    /// sample std's standard error is std * sqrt(0.8 / (4 n))) and the mean within 5 of 0.
    fn uniform_within_sampling_error(name: &str, values: &[f32], b: f64) {
        assert!(
            values.iter().all(|&v| (v as f64).abs() <= b),
            "{name} outside +-{b}"
        );
        let n = values.len() as f64;
        if n < 16.0 {
            return;
        }
        let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = values
            .iter()
            .map(|&v| (v as f64 - mean).powi(2))
            .sum::<f64>()
            / n;
        let expected = b / 3f64.sqrt();
        let se_std = expected * (0.8 / (4.0 * n)).sqrt();
        let std = var.sqrt();
        assert!(
            (std - expected).abs() < 5.0 * se_std,
            "{name}: std {std} vs {expected}"
        );
        assert!(
            mean.abs() < 5.0 * expected / n.sqrt(),
            "{name}: mean {mean}"
        );
    }

    /// PyTorch's default init, applied to the state dict in PyTorch's layout: a conv, conv-
    /// transpose or linear weight is U(-b, b) with `b = 1 / sqrt(fan_in)`, where
    /// `torch.nn.init._calculate_fan_in_and_fan_out` takes `fan_in = size(1) * kh * kw` (for
    /// ConvTranspose2d's `[in, out, kh, kw]` that is the *output* channels), and its bias
    /// U(-b, b) with the same `b`; BatchNorm's weight is 1 and its bias 0, its running mean 0
    /// and variance 1. Checked on the shipped widths (64) at 32x32x1 and 64x64x3.
    #[test]
    fn every_layer_is_initialized_as_pytorch_does() {
        let device = Device::flex().autodiff();
        device.seed(11);
        let spectral = Some(crate::model::spectral::SpectralOptions {
            power_iterations: 1,
            in_forward: true,
            operator: false,
            certify: false,
        });
        for (size, channels) in [(32, 1), (64, 3)] {
            let mut entries = generator_state(
                &Generator::new(size, channels, 128, 64, &device),
                "g.",
                None,
            );
            entries.extend(critic_state(
                &Critic::new(size, channels, 64, spectral, &device),
                "d.",
            ));
            let shapes: std::collections::HashMap<String, Vec<usize>> = entries
                .iter()
                .map(|e| (e.name.clone(), e.shape.clone()))
                .collect();
            let mut checked = 0;
            for e in &entries {
                let values = e.values();
                let (base, field) = e.name.rsplit_once('.').unwrap();
                // The layer's weight: its own shape, or its sibling's for a bias.
                let weight = match field {
                    "weight" | "original" => Some(&e.shape),
                    "bias" => shapes.get(&format!("{base}.weight")).or_else(|| {
                        shapes.get(&format!("{base}.parametrizations.weight.original"))
                    }),
                    _ => None, // running statistics, spectral-norm vectors
                };
                match (field, weight.map(Vec::len)) {
                    ("running_mean", _) | ("bias", Some(1)) => {
                        assert!(values.iter().all(|&v| v == 0.0), "{}", e.name)
                    }
                    ("running_var", _) | ("weight", Some(1)) => {
                        assert!(values.iter().all(|&v| v == 1.0), "{}", e.name)
                    }
                    (_, Some(2..)) => {
                        let w = weight.unwrap();
                        let fan_in: usize = w[1] * w[2..].iter().product::<usize>();
                        let b = 1.0 / (fan_in as f64).sqrt();
                        uniform_within_sampling_error(&e.name, &values, b);
                        checked += 1;
                    }
                    _ => assert!(field == "_u" || field == "_v", "{}", e.name),
                }
            }
            assert!(checked >= 14, "{checked} layers checked");
        }
    }

    #[test]
    fn export_round_trips_with_pytorch_names_and_layouts() {
        let device = Device::flex();
        device.seed(5);
        let generator = Generator::new(32, 3, 16, 8, &device);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.safetensors");
        export_generator(&generator, 7, &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let mut names: Vec<&str> = st.names();
        names.sort();
        let bn = |p: &str| {
            [
                "weight",
                "bias",
                "running_mean",
                "running_var",
                "num_batches_tracked",
            ]
            .map(|k| format!("{p}.{k}"))
        };
        let mut expected: Vec<String> = vec!["fc.weight".into(), "fc.bias".into()];
        expected.extend(bn("bn0"));
        expected.extend(["net.0.weight".into(), "net.0.bias".into()]);
        expected.extend(bn("net.1"));
        expected.extend(["net.3.weight".into(), "net.3.bias".into()]);
        expected.extend(bn("net.4"));
        expected.extend(["net.6.weight".into(), "net.6.bias".into()]);
        expected.sort();
        assert_eq!(
            names,
            expected.iter().map(String::as_str).collect::<Vec<_>>()
        );

        // 32x32: n = 3, base channels 8 * 4 = 32; PyTorch Linear weight is [out, in].
        let fc = st.tensor("fc.weight").unwrap();
        assert_eq!(fc.shape(), &[16 * 32, 16]);
        let burn_w: Vec<f32> = generator
            .project
            .weight
            .val()
            .into_data()
            .try_to_vec()
            .unwrap(); // [in, out]
        let torch_w = le_f32s(fc.data());
        let (d_in, d_out) = (16, 16 * 32);
        assert_eq!(torch_w[5 * d_in + 3], burn_w[3 * d_out + 5]);
        assert_eq!(st.tensor("net.0.weight").unwrap().shape(), &[32, 16, 4, 4]);
        assert_eq!(st.tensor("net.6.weight").unwrap().shape(), &[8, 3, 4, 4]);
        let tracked = st.tensor("net.4.num_batches_tracked").unwrap();
        assert_eq!((tracked.dtype(), tracked.shape()), (Dtype::I64, &[][..]));
        assert_eq!(i64::from_le_bytes(tracked.data().try_into().unwrap()), 7);
    }
}

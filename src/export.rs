//! Export of the generator's weights as safetensors with PyTorch's parameter names and layouts,
//! loadable by `G.load_state_dict` of `../shared/peer/torch_wgan.py` (same architecture).

use crate::checkpoint::write_atomic;
use crate::model::Generator;
use crate::model::generator::UpBlock;
use anyhow::{Context, Result};
use burn::nn::BatchNorm;
use burn::nn::conv::ConvTranspose2d;
use burn::prelude::*;
use safetensors::{Dtype, tensor::TensorView};
use std::path::Path;

/// One exported tensor: PyTorch name, shape and little-endian bytes.
struct Entry {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

fn float_entry<const D: usize>(name: String, tensor: Tensor<D>) -> Entry {
    let shape = tensor.dims().to_vec();
    let values: Vec<f32> = tensor
        .into_data()
        .convert::<f32>()
        .try_to_vec()
        .expect("f32");
    Entry {
        name,
        dtype: Dtype::F32,
        shape,
        bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

fn batch_norm_entries(prefix: &str, norm: &BatchNorm, batches: i64, out: &mut Vec<Entry>) {
    out.push(float_entry(format!("{prefix}.weight"), norm.gamma.val()));
    out.push(float_entry(format!("{prefix}.bias"), norm.beta.val()));
    out.push(float_entry(
        format!("{prefix}.running_mean"),
        norm.running_mean.value(),
    ));
    out.push(float_entry(
        format!("{prefix}.running_var"),
        norm.running_var.value(),
    ));
    // A PyTorch BatchNorm buffer (a 0-d int64); only used when momentum is None.
    out.push(Entry {
        name: format!("{prefix}.num_batches_tracked"),
        dtype: Dtype::I64,
        shape: vec![],
        bytes: batches.to_le_bytes().to_vec(),
    });
}

fn conv_entries(prefix: &str, conv: &ConvTranspose2d, out: &mut Vec<Entry>) {
    // Same layout in both: [in, out, kh, kw].
    out.push(float_entry(format!("{prefix}.weight"), conv.weight.val()));
    if let Some(bias) = &conv.bias {
        out.push(float_entry(format!("{prefix}.bias"), bias.val()));
    }
}

/// The generator's tensors under the names of the peer's `G` (`fc`, `bn0`, `net.{i}`).
/// `batches` fills BatchNorm's `num_batches_tracked`.
fn entries(generator: &Generator, batches: i64) -> Vec<Entry> {
    let generator = generator.valid(); // flushes pending running statistics
    let mut out = Vec::new();
    // Burn's Linear keeps [in, out]; PyTorch's [out, in].
    out.push(float_entry(
        "fc.weight".into(),
        generator.project.weight.val().transpose(),
    ));
    if let Some(bias) = &generator.project.bias {
        out.push(float_entry("fc.bias".into(), bias.val()));
    }
    batch_norm_entries("bn0", &generator.project_norm, batches, &mut out);
    // The peer's `net` is [ConvT, BN, ReLU] per block, then ConvT, Tanh.
    for (i, UpBlock { conv, norm }) in generator.blocks.iter().enumerate() {
        conv_entries(&format!("net.{}", 3 * i), conv, &mut out);
        batch_norm_entries(&format!("net.{}", 3 * i + 1), norm, batches, &mut out);
    }
    conv_entries(
        &format!("net.{}", 3 * generator.blocks.len()),
        &generator.to_image,
        &mut out,
    );
    out
}

/// Writes the generator as safetensors to `path`, atomically.
pub fn export_generator(generator: &Generator, batches: i64, path: &Path) -> Result<()> {
    let entries = entries(generator, batches);
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

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::SafeTensors;

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
        let torch_w: Vec<f32> = fc
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        let (d_in, d_out) = (16, 16 * 32);
        assert_eq!(torch_w[5 * d_in + 3], burn_w[3 * d_out + 5]);
        assert_eq!(st.tensor("net.0.weight").unwrap().shape(), &[32, 16, 4, 4]);
        assert_eq!(st.tensor("net.6.weight").unwrap().shape(), &[8, 3, 4, 4]);
        let tracked = st.tensor("net.4.num_batches_tracked").unwrap();
        assert_eq!((tracked.dtype(), tracked.shape()), (Dtype::I64, &[][..]));
        assert_eq!(i64::from_le_bytes(tracked.data().try_into().unwrap()), 7);
    }
}

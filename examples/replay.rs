//! Trains wgan-train on inputs drawn by the PyTorch side (`scripts/torch_parity.py`), from the
//! same initial weights, for as many iterations as those inputs hold, and writes our state in
//! the peer's names after the iterations listed in SAVE_AT (comma-separated):
//!
//!     cargo run --release --example replay -- CONFIG PARITY_DIR OUT_DIR 1,10,100,400 [KEY=VALUE...]
//!
//! (KEY=VALUE as `--set` takes them.)
//! PARITY_DIR holds `init.safetensors` and `inputs.safetensors` (real batches as `real`
//! [K, B, C, S, S], or as `data` [N, C, S, S] with `real_index` [K, B]; `z_critic`, `epsilon`,
//! `z_gen`). OUT_DIR gets `iter_N.safetensors`. `scripts/replay_compare.py` runs both sides at
//! full size and compares how far they drift apart, and the sample quality each ends with: the
//! long-run form of the parity test in tests/torch_parity.rs.

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use safetensors::SafeTensors;
use std::collections::HashMap;
use std::path::Path;
use wgan_train::config::Config;
use wgan_train::gan::{CriticBatch, Gan, critic_step, generator_step};
use wgan_train::pytorch::write_safetensors;
use wgan_train::pytorch::{critic_state, generator_state, load_critic, load_generator};

/// Every tensor of a safetensors file as f32 values and shape.
fn read(path: &Path) -> Result<HashMap<String, (Vec<f32>, Vec<usize>)>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let file = SafeTensors::deserialize(&bytes)?;
    let mut out = HashMap::new();
    for (name, view) in file.tensors() {
        let values: Vec<f32> = match view.dtype() {
            safetensors::Dtype::F32 => view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect(),
            safetensors::Dtype::I64 => view
                .data()
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f32)
                .collect(),
            other => bail!("{name}: dtype {other:?}, expected F32 or I64"),
        };
        out.insert(name, (values, view.shape().to_vec()));
    }
    Ok(out)
}

/// Block `index` of `shape` from the flat `values`.
fn slice<const D: usize>(
    values: &[f32],
    index: usize,
    shape: [usize; D],
    device: &Device,
) -> Tensor<D> {
    let n: usize = shape.iter().product();
    Tensor::from_data(
        TensorData::new(values[index * n..(index + 1) * n].to_vec(), shape),
        device,
    )
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [config, parity, out, save_at, sets @ ..] = args.as_slice() else {
        bail!(
            "usage: replay CONFIG PARITY_DIR OUT_DIR SAVE_AT [KEY=VALUE...] (SAVE_AT e.g. 1,10,400)"
        );
    };
    let save_at: Vec<usize> = save_at
        .split(',')
        .map(|s| s.parse().with_context(|| format!("SAVE_AT {s}")))
        .collect::<Result<_>>()?;
    let config = Config::load(Path::new(config), sets)?;
    let (parity, out) = (Path::new(parity), Path::new(out));
    std::fs::create_dir_all(out)?;
    let device = Device::flex().autodiff();
    let mut gan = Gan::new(&config, &device);
    let init = std::fs::read(parity.join("init.safetensors"))?;
    let init = SafeTensors::deserialize(&init)?;
    gan.generator = load_generator(gan.generator, &init, "g.")?;
    gan.critic = load_critic(gan.critic, &init, "d.")?;
    let inputs = read(&parity.join("inputs.safetensors"))?;
    let (z_gen, z_shape) = &inputs["z_gen"];
    let (iters, batch, z_dim) = (z_shape[0], z_shape[1], z_shape[2]);
    let image = config.data.channels * config.data.image_size * config.data.image_size;
    let shape = [
        batch,
        config.data.channels,
        config.data.image_size,
        config.data.image_size,
    ];
    let real = |k: usize| -> Tensor<4> {
        let values: Vec<f32> = match inputs.get("real") {
            Some((real, _)) => real[k * batch * image..(k + 1) * batch * image].to_vec(),
            None => {
                let (data, _) = &inputs["data"];
                let (index, _) = &inputs["real_index"];
                index[k * batch..(k + 1) * batch]
                    .iter()
                    .flat_map(|&i| data[i as usize * image..(i as usize + 1) * image].to_vec())
                    .collect()
            }
        };
        Tensor::from_data(TensorData::new(values, shape), &device)
    };
    let t = &config.train;
    let (z_critic, _) = &inputs["z_critic"];
    let (epsilon, _) = &inputs["epsilon"];
    let mut k = 0;
    let started = std::time::Instant::now();
    for it in 0..iters {
        for _ in 0..t.n_critic {
            let batch_inputs = CriticBatch {
                real: real(k),
                z: slice(z_critic, k, [batch, z_dim], &device),
                epsilon: slice(epsilon, k, [batch, 1, 1, 1], &device),
            };
            critic_step(&mut gan, batch_inputs, t.lr_d);
            k += 1;
        }
        generator_step(&mut gan, slice(z_gen, it, [batch, z_dim], &device), t.lr_g);
        if save_at.contains(&(it + 1)) {
            let mut entries = generator_state(&gan.generator, "g.", None);
            entries.extend(critic_state(&gan.critic, "d."));
            write_safetensors(&entries, &out.join(format!("iter_{}.safetensors", it + 1)))?;
            eprintln!(
                "iteration {} of {iters} ({:.0} s)",
                it + 1,
                started.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}

//! Pool3 features of our FID Inception for network inputs given as raw f32, so that
//! scripts/get-inception.py can check converted weights against PyTorch:
//!
//!     cargo run --example inception_features -- WEIGHTS INPUT.f32 N OUT.f32
//!
//! INPUT.f32 holds `[N, 3, 299, 299]` little-endian f32 network inputs (already resized and
//! scaled to [-1, 1]); OUT.f32 receives `[N, 2048]` features.

use anyhow::{Context, Result, ensure};
use burn::prelude::*;
use std::path::Path;
use wgan_train::inception::{BATCH, FEATURES, INPUT_SIZE, InceptionV3};

fn main() -> Result<()> {
    // As the binary does: freed tensor buffers stay in the heap.
    burn_flex_kernels::keep_freed_memory();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [weights, input, n, out] = args.as_slice() else {
        anyhow::bail!("usage: inception_features WEIGHTS INPUT.f32 N OUT.f32");
    };
    let n: usize = n
        .parse()
        .with_context(|| format!("N {n}: give an integer"))?;
    let device = Device::flex();
    let net = InceptionV3::load(Path::new(weights), &device)?;
    let bytes = std::fs::read(input).with_context(|| format!("cannot read {input}"))?;
    let per = 3 * INPUT_SIZE * INPUT_SIZE;
    ensure!(
        bytes.len() == n * per * 4,
        "{input}: {} bytes, expected {}",
        bytes.len(),
        n * per * 4
    );
    let values: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let started = std::time::Instant::now();
    let mut features = Vec::with_capacity(n * FEATURES);
    let batch: usize = std::env::var("BATCH")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(BATCH);
    for start in (0..n).step_by(batch) {
        let count = batch.min(n - start);
        let x = Tensor::<4>::from_data(
            TensorData::new(
                values[start * per..(start + count) * per].to_vec(),
                [count, 3, INPUT_SIZE, INPUT_SIZE],
            ),
            &device,
        );
        let f = net.forward(x).into_data().convert::<f32>();
        features.extend(f.try_to_vec::<f32>().expect("f32 data"));
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!("{n} images in {secs:.2} s: {:.2} images/s", n as f64 / secs);
    let bytes: Vec<u8> = features.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(out, bytes).with_context(|| format!("cannot write {out}"))
}

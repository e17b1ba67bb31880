//! Side-by-side timing of the DCGAN layers' convolutions on Flex: Burn's own `conv2d` /
//! `conv_transpose2d` against this crate's batch-wide kernels (`wgan_train::model::conv`),
//! forward and backward (input and kernel gradients), median of 5 after one warm-up.
//!
//!     RAYON_NUM_THREADS=2 cargo bench --bench conv

use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::ops::{ConvOptions, ConvTransposeOptions};
use std::time::Instant;
use wgan_train::model::conv;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median seconds of `f` (which must finish its work, e.g. by reading a value back).
fn time(mut f: impl FnMut()) -> f64 {
    f();
    median(
        (0..5)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

fn row(layer: &str, burn: f64, ours: f64, flop: f64) {
    let (ratio, gflops) = (burn / ours, flop / ours / 1e9);
    println!("{layer:<36} {burn:6.4}  {ours:6.4}  {ratio:9.2}  {gflops:12.1}");
}

fn main() {
    let device = Device::flex().autodiff();
    let normal = Distribution::Normal(0.0, 1.0);
    let options = ConvOptions::new([2, 2], [1, 1], [1, 1], 1);
    let t_options = ConvTransposeOptions::new([2, 2], [1, 1], [0, 0], [1, 1], 1);
    println!(
        "{:<36} burn s  ours s  burn/ours  ours GFLOP/s",
        "layer (forward + backward)"
    );
    // Critic layers of a 64x64x3 critic of width 64 at batch 128 ([real; fake]), then the
    // generator's transposed convolutions at batch 64.
    let critic = [(3, 64, 64), (64, 128, 32), (128, 256, 16), (256, 512, 8)];
    for (c_in, c_out, size) in critic {
        let x = Tensor::<4>::random([128, c_in, size, size], normal, &device).require_grad();
        let w = Tensor::<4>::random([c_out, c_in, 4, 4], normal, &device).require_grad();
        let step = |ours: bool| {
            let y = if ours {
                conv::conv2d(x.clone(), w.clone(), None, options.clone())
            } else {
                burn::tensor::module::conv2d(x.clone(), w.clone(), None, options.clone())
            };
            let grads = y.sum().backward();
            let _ = w.grad(&grads).unwrap().sum().into_scalar::<f32>();
        };
        let flop = 3.0 * 2.0 * 128.0 * (c_out * c_in * 16 * size * size / 4) as f64;
        let (burn, ours) = (time(|| step(false)), time(|| step(true)));
        let layer = format!("conv {c_in}->{c_out} {size}x{size} batch 128");
        row(&layer, burn, ours, flop);
    }
    let generator = [(512, 256, 4), (256, 128, 8), (128, 64, 16), (64, 3, 32)];
    for (c_in, c_out, size) in generator {
        let x = Tensor::<4>::random([64, c_in, size, size], normal, &device).require_grad();
        let w = Tensor::<4>::random([c_in, c_out, 4, 4], normal, &device).require_grad();
        let step = |ours: bool| {
            let y = if ours {
                conv::conv_transpose2d(x.clone(), w.clone(), None, t_options.clone())
            } else {
                burn::tensor::module::conv_transpose2d(
                    x.clone(),
                    w.clone(),
                    None,
                    t_options.clone(),
                )
            };
            let grads = y.sum().backward();
            let _ = w.grad(&grads).unwrap().sum().into_scalar::<f32>();
        };
        let flop = 3.0 * 2.0 * 64.0 * (c_out * c_in * 16 * size * size) as f64;
        let (burn, ours) = (time(|| step(false)), time(|| step(true)));
        let layer = format!("conv_transpose {c_in}->{c_out} {size}x{size} batch 64");
        row(&layer, burn, ours, flop);
    }
}

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

/// Times forward + backward (input and kernel gradients) of `apply(ours, x, w)` on random
/// `x`, `w` with Burn's op (`ours` false) and ours, and prints a row of the table.
fn compare(
    layer: &str,
    flop: f64,
    (x_shape, w_shape): ([usize; 4], [usize; 4]),
    apply: impl Fn(bool, Tensor<4>, Tensor<4>) -> Tensor<4>,
) {
    let device = Device::flex().autodiff();
    let normal = Distribution::Normal(0.0, 1.0);
    let x = Tensor::<4>::random(x_shape, normal, &device).require_grad();
    let w = Tensor::<4>::random(w_shape, normal, &device).require_grad();
    let step = |ours: bool| {
        let grads = apply(ours, x.clone(), w.clone()).sum().backward();
        let _ = w.grad(&grads).unwrap().sum().into_scalar::<f32>();
    };
    let (burn, ours) = (time(|| step(false)), time(|| step(true)));
    let (ratio, gflops) = (burn / ours, flop / ours / 1e9);
    println!("{layer:<36} {burn:6.4}  {ours:6.4}  {ratio:9.2}  {gflops:12.1}");
}

fn main() {
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
        let flop = 3.0 * 2.0 * 128.0 * (c_out * c_in * 16 * size * size / 4) as f64;
        let shapes = ([128, c_in, size, size], [c_out, c_in, 4, 4]);
        let layer = format!("conv {c_in}->{c_out} {size}x{size} batch 128");
        compare(&layer, flop, shapes, |ours, x, w| {
            let options = options.clone();
            if ours {
                conv::conv2d(x, w, None, options)
            } else {
                burn::tensor::module::conv2d(x, w, None, options)
            }
        });
    }
    let generator = [(512, 256, 4), (256, 128, 8), (128, 64, 16), (64, 3, 32)];
    for (c_in, c_out, size) in generator {
        let flop = 3.0 * 2.0 * 64.0 * (c_out * c_in * 16 * size * size) as f64;
        let shapes = ([64, c_in, size, size], [c_in, c_out, 4, 4]);
        let layer = format!("conv_transpose {c_in}->{c_out} {size}x{size} batch 64");
        compare(&layer, flop, shapes, |ours, x, w| {
            let options = t_options.clone();
            if ours {
                conv::conv_transpose2d(x, w, None, options)
            } else {
                burn::tensor::module::conv_transpose2d(x, w, None, options)
            }
        });
    }
}

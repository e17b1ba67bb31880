//! Side-by-side timing of the DCGAN layers' convolutions on Flex: Burn's own `conv2d` /
//! `conv_transpose2d` against this crate's batch-wide kernels (`burn_flex_kernels::conv`),
//! forward and backward (input and kernel gradients), median of 5 after one warm-up; then the
//! convolutions of one whole generator iteration of wgan-train's DCGAN at 32x32 and 64x64, nothing else.
//!
//!     RAYON_NUM_THREADS=2 cargo bench --bench conv
//!     RAYON_NUM_THREADS=2 cargo bench --bench conv -- --iteration 64   # ours only, one JSON line
//!
//! The second form is what `scripts/bench.py` runs beside `scripts/torch_convs.py`, PyTorch's
//! convolutions of the same iteration.

use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::activation::relu;
use burn::tensor::ops::{ConvOptions, ConvTransposeOptions};
use burn_flex_kernels::{activation, conv};
use std::time::Instant;

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

/// One layer's kernel `[out, in, 4, 4]` (transposed: `[in, out, 4, 4]`) and bias, both tracked.
type Layer = (Tensor<4>, Tensor<1>);

/// `conv2d` with this crate's kernels (`ours`) or Burn's op.
fn conv2d(ours: bool, x: Tensor<4>, w: Tensor<4>, b: Option<Tensor<1>>) -> Tensor<4> {
    let options = ConvOptions::new([2, 2], [1, 1], [1, 1], 1);
    if ours {
        conv::conv2d(x, w, b, options)
    } else {
        burn::tensor::module::conv2d(x, w, b, options)
    }
}

/// `conv_transpose2d` with this crate's kernels (`ours`) or Burn's op.
fn conv_transpose2d(ours: bool, x: Tensor<4>, w: Tensor<4>, b: Option<Tensor<1>>) -> Tensor<4> {
    let options = ConvTransposeOptions::new([2, 2], [1, 1], [0, 0], [1, 1], 1);
    if ours {
        conv::conv_transpose2d(x, w, b, options)
    } else {
        burn::tensor::module::conv_transpose2d(x, w, b, options)
    }
}

/// The DCGAN layers at `size` (3 channels): the critic's convolutions (widths 64, 128, ...)
/// and the generator's transposed convolutions (mirrored), and the generator's input channels.
fn dcgan_layers(size: usize, device: &Device) -> (Vec<Layer>, Vec<Layer>, usize) {
    let normal = Distribution::Normal(0.0, 0.02);
    let layer = |shape: [usize; 4], out: usize| {
        let w = Tensor::<4>::random(shape, normal, device).require_grad();
        (w, Tensor::<1>::zeros([out], device).require_grad())
    };
    let n = (size / 4).trailing_zeros() as usize; // stride-2 stages from 4x4
    let widths: Vec<usize> = std::iter::once(3).chain((0..n).map(|i| 64 << i)).collect();
    let critic = widths
        .windows(2)
        .map(|c| layer([c[1], c[0], 4, 4], c[1]))
        .collect();
    let generator = widths
        .windows(2)
        .rev()
        .map(|c| layer([c[1], c[0], 4, 4], c[0]))
        .collect();
    (critic, generator, widths[n])
}

/// The layers with untracked kernels, as `Module::no_grad` gives them (`detach` alone keeps a
/// leaf's `require_grad`).
fn untracked(layers: &[Layer]) -> Vec<Layer> {
    let off = |(w, b): &Layer| {
        (
            w.clone().set_require_grad(false),
            b.clone().set_require_grad(false),
        )
    };
    layers.iter().map(off).collect()
}

/// The convolutions of one generator iteration as the trainer runs them (batch 64, n_critic 5),
/// with their activations, without the linear layers, normalization, tanh and optimizer: per
/// critic step the generator forward untracked, the critic forward on `[real; fake]` and its
/// backward (kernel gradients, input gradients below the first layer); then the generator step
/// (generator forward, critic forward with untracked kernels, input gradients through both,
/// the generator's kernel gradients). The same kernel calls, shape for shape, as training.
fn iteration(ours: bool, size: usize, device: &Device) -> impl FnMut() {
    let (critic, generator, c0) = dcgan_layers(size, device);
    // Each critic convolution followed by LeakyReLU 0.2, ReLU between the generator's layers.
    let d = move |layers: &[Layer], x: Tensor<4>| {
        layers.iter().fold(x, |x, (w, b)| {
            let y = conv2d(ours, x, w.clone(), Some(b.clone()));
            if ours {
                activation::leaky_relu(y, 0.2)
            } else {
                burn::tensor::activation::leaky_relu(y, 0.2)
            }
        })
    };
    let g = move |layers: &[Layer], h: Tensor<4>| {
        layers.iter().enumerate().fold(h, |h, (i, (w, b))| {
            let h = if i > 0 { relu(h) } else { h };
            conv_transpose2d(ours, h, w.clone(), Some(b.clone()))
        })
    };
    let (normal, batch) = (Distribution::Normal(0.0, 1.0), 64);
    let device = device.clone();
    let real = Tensor::<4>::random([batch, 3, size, size], normal, &device);
    // Drawn once: drawing 6 x 64 x c0 x 16 normals per iteration would be timed too.
    let noise = Tensor::<4>::random([batch, c0, 4, 4], normal, &device);
    move || {
        for _ in 0..5 {
            let fake = g(&untracked(&generator), noise.clone()); // [64, 3, size, size]
            let scores = d(&critic, Tensor::cat(vec![real.clone(), fake], 0));
            let loss =
                scores.clone().slice(batch..2 * batch).mean() - scores.slice(0..batch).mean();
            let grads = loss.backward();
            let _ = critic[0].0.grad(&grads).unwrap().sum().into_scalar::<f32>();
        }
        let fake = g(&generator, noise.clone().require_grad());
        let images = fake.clone().detach().require_grad();
        let loss = d(&untracked(&critic), images.clone()).mean().neg();
        let upstream = images.grad(&loss.backward()).unwrap();
        let grads = (fake * upstream).sum().backward();
        let _ = generator[0]
            .0
            .grad(&grads)
            .unwrap()
            .sum()
            .into_scalar::<f32>();
    }
}

fn main() {
    // As wgan-train's binary does: freed tensor buffers stay in the heap, and the work runs
    // on a thread of rayon's pool.
    burn_flex_kernels::keep_freed_memory();
    burn_flex_kernels::on_pool_thread(run);
}

fn run() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--iteration") {
        let size = args.get(i + 1).and_then(|s| s.parse().ok()).unwrap_or(64);
        let secs = time(iteration(true, size, &Device::flex().autodiff()));
        println!("{{\"size\": {size}, \"s_per_gen_iter_median\": {secs}}}");
        return;
    }
    layers();
    println!();
    println!(
        "{:<36} burn s  ours s  burn/ours",
        "convolutions of one iteration"
    );
    for size in [32, 64] {
        let device = Device::flex().autodiff();
        let burn = time(iteration(false, size, &device));
        let ours = time(iteration(true, size, &device));
        let label = format!("{size}x{size}, batch 64, n_critic 5");
        println!("{label:<36} {burn:6.4}  {ours:6.4}  {:9.2}", burn / ours);
    }
}

/// The per-layer table.
fn layers() {
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
        compare(&layer, flop, shapes, |ours, x, w| conv2d(ours, x, w, None));
    }
    let generator = [(512, 256, 4), (256, 128, 8), (128, 64, 16), (64, 3, 32)];
    for (c_in, c_out, size) in generator {
        let flop = 3.0 * 2.0 * 64.0 * (c_out * c_in * 16 * size * size) as f64;
        let shapes = ([64, c_in, size, size], [c_in, c_out, 4, 4]);
        let layer = format!("conv_transpose {c_in}->{c_out} {size}x{size} batch 64");
        compare(&layer, flop, shapes, |ours, x, w| {
            conv_transpose2d(ours, x, w, None)
        });
    }
}

//! The CPU kernels (`burn_flex_kernels`) against Burn's own ops on every layer shape that a
//! shipped config (`configs/**/*.toml`) builds, at the config's batch size and twice it (the
//! critic's two forwards of one critic step, and a [real; fake] batch): values and every
//! gradient. The activation and BatchNorm checks run again on the AVX2 and scalar paths under
//! qemu-user (at batch 8, `WGAN_TRAIN_KERNEL_BATCH`: qemu is about 100x slower); the
//! convolutions' AVX2/scalar runs are the kernel crate's own definition tests.

use burn::prelude::*;
use burn_flex_kernels::testing::{
    check_batch_norm, check_conv, check_leaky_relu, under_emulated_cpus,
};
use std::path::Path;
use wgan_train::config::Config;

/// Which op a layer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A critic convolution, 4x4 stride 2 pad 1: `size` -> `size / 2`.
    Conv,
    /// A generator transposed convolution, 4x4 stride 2 pad 1: `size` -> `2 * size`.
    ConvTranspose,
}

/// One layer at one batch size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layer {
    kind: Kind,
    batch: usize,
    c_in: usize,
    c_out: usize,
    /// Input side.
    size: usize,
}

/// Every distinct layer of every shipped config, at the config's batch size and twice it
/// (`WGAN_TRAIN_KERNEL_BATCH` alone when set).
fn shipped_layers() -> Vec<Layer> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut out = Vec::new();
    let mut configs = 0;
    for entry in walkdir::WalkDir::new(&root) {
        let path = entry.expect("configs/ is readable").into_path();
        // Toy configs (configs/toy/) train MLPs: no convolution, BatchNorm or LeakyReLU.
        if path.extension().is_none_or(|e| e != "toml") || wgan_train::toy::is_toy_config(&path) {
            continue;
        }
        configs += 1;
        let config = Config::load(&path, &[]).expect("a valid config");
        let batches = match std::env::var("WGAN_TRAIN_KERNEL_BATCH") {
            Ok(v) => vec![v.parse().expect("a batch size")],
            Err(_) => vec![config.train.batch_size, 2 * config.train.batch_size],
        };
        let (size, channels, m) = (config.data.image_size, config.data.channels, &config.model);
        let n = wgan_train::model::depth(size);
        let mut shapes = Vec::new();
        let (mut c, mut s) = (channels, size);
        for i in 0..n {
            shapes.push((Kind::Conv, c, m.d_width << i, s));
            (c, s) = (m.d_width << i, s / 2);
        }
        let (mut c, mut s) = (m.g_width << (n - 1), 4);
        for i in 0..n {
            let c_out = if i + 1 == n { channels } else { c / 2 };
            shapes.push((Kind::ConvTranspose, c, c_out, s));
            (c, s) = (c / 2, 2 * s);
        }
        for (kind, c_in, c_out, size) in shapes {
            for &batch in &batches {
                let layer = Layer {
                    kind,
                    batch,
                    c_in,
                    c_out,
                    size,
                };
                if !out.contains(&layer) {
                    out.push(layer);
                }
            }
        }
    }
    assert!(configs >= 5, "{configs} configs under {}", root.display());
    out
}

/// Every convolution of the shipped configs: the critic's, and the generator's transposed ones
/// as the convolution whose adjoint they are (ConvT c_in -> c_out from s to 2s is the adjoint
/// of a conv c_out -> c_in on 2s), through `check_conv` (both directions, all gradients).
#[test]
fn every_shipped_conv_shape_matches_burn() {
    let device = Device::flex().autodiff();
    device.seed(4);
    println!("CPU: {}", burn_flex_kernels::simd_level());
    let mut done: Vec<([usize; 4], [usize; 4])> = Vec::new();
    for l in shipped_layers() {
        let (c_in, c_out, s) = match l.kind {
            Kind::Conv => (l.c_in, l.c_out, l.size),
            Kind::ConvTranspose => (l.c_out, l.c_in, 2 * l.size),
        };
        let shapes = ([l.batch, c_in, s, s], [c_out, c_in, 4, 4]);
        if !done.contains(&shapes) {
            check_conv(shapes.0, shapes.1, 2, [1, 1], &device);
            done.push(shapes);
        }
    }
    assert!(done.len() >= 7, "{} geometries", done.len());
}

/// The LeakyReLU after each critic convolution of the shipped configs.
#[test]
fn every_shipped_activation_shape_matches_burn() {
    let device = Device::flex().autodiff();
    device.seed(6);
    println!("CPU: {}", burn_flex_kernels::simd_level());
    for l in shipped_layers() {
        if l.kind == Kind::Conv {
            check_leaky_relu([l.batch, l.c_out, l.size / 2, l.size / 2], &device);
        }
    }
}

/// The BatchNorm before each generator transposed convolution of the shipped configs.
#[test]
fn every_shipped_batch_norm_shape_matches() {
    let device = Device::flex().autodiff();
    device.seed(8);
    println!("CPU: {}", burn_flex_kernels::simd_level());
    for l in shipped_layers() {
        if l.kind == Kind::ConvTranspose {
            check_batch_norm([l.batch, l.c_in, l.size, l.size], &device);
        }
    }
}

/// The activation and BatchNorm checks above on the AVX2 and scalar paths.
#[test]
fn shipped_activation_and_batch_norm_shapes_match_on_avx2_and_scalar() {
    for name in [
        "every_shipped_activation_shape_matches_burn",
        "every_shipped_batch_norm_shape_matches",
    ] {
        under_emulated_cpus(name, &[("WGAN_TRAIN_KERNEL_BATCH", "8")]);
    }
}

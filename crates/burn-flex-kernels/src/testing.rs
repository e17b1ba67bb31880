//! The checks that the tests run (this crate's, and a model crate's on its own layer shapes):
//! each kernel against Burn's own op, and a helper that reruns a test on the AVX2 and scalar
//! paths under qemu-user. Each check panics with what differs and by how much.

use crate::activation::leaky_relu;
use crate::conv::{conv_geometry, conv_transpose2d, conv2d, gemm_path};
use crate::norm::{composed, forward};
use burn::module::Param;
use burn::nn::BatchNormConfig;
use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::ops::{ConvOptions, ConvTransposeOptions};
use std::process::Command;

/// The largest `|a_i - b_i|` of two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

/// qemu-user CPU models and the vector level each leaves the gemm crate: Haswell has AVX2 and
/// FMA but no AVX-512, Nehalem no AVX at all (the scalar kernels).
pub const EMULATED_CPUS: [(&str, &str); 2] = [("Haswell", "AVX2"), ("Nehalem", "scalar")];

/// Runs the test `name` of the current test binary again under `qemu-x86_64 -cpu MODEL` for
/// each of [`EMULATED_CPUS`], with `env` set, and asserts that it passed there and saw the
/// model's vector level (its output must print [`crate::simd_level`]). Without
/// qemu-user (installed by `scripts/install-deps.sh`) or off x86-64 it prints why it skips,
/// except under CI=true, where that is a failure.
pub fn under_emulated_cpus(name: &str, env: &[(&str, &str)]) {
    let available = Command::new("qemu-x86_64").arg("--version").output();
    let why = match available {
        _ if !cfg!(target_arch = "x86_64") => "not an x86-64 machine".to_string(),
        Err(e) => format!("no qemu-x86_64 ({e}): apt-get install qemu-user"),
        Ok(_) => String::new(),
    };
    if !why.is_empty() {
        assert!(
            std::env::var("CI").is_err(),
            "under CI this must run: {why}"
        );
        println!("skipped: {why}");
        return;
    }
    let exe = std::env::current_exe().expect("the test binary");
    for (cpu, level) in EMULATED_CPUS {
        let out = Command::new("qemu-x86_64")
            .args(["-cpu", cpu])
            .arg(&exe)
            .args(["--exact", name, "--nocapture", "--test-threads", "1"])
            .envs(env.iter().copied())
            .output()
            .expect("qemu-x86_64 runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stdout.lines().rev().take(30).collect();
        let log = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{name} under -cpu {cpu}:\n{log}\n{}",
            stderr
                .lines()
                .filter(|l| !l.contains("TCG doesn't support"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        assert!(
            stdout.contains(&format!("CPU: {level}")),
            "-cpu {cpu} should leave {level}:\n{log}"
        );
        println!("-cpu {cpu} ({level}): passed");
    }
}

/// Runs the test `name` of the current test binary again on this CPU with this crate's own
/// kernels capped at AVX2 and at scalar ([`crate::SIMD_ENV`]; the gemm crate's products keep
/// the CPU's level), and asserts that it passed and saw the capped level: the narrower paths
/// on the real CPU, in seconds (what [`under_emulated_cpus`] reaches in minutes, with gemm's).
pub fn under_simd_caps(name: &str) {
    let exe = std::env::current_exe().expect("the test binary");
    for (cap, level) in [("avx2", crate::Simd::Avx2), ("scalar", crate::Simd::Scalar)] {
        let out = Command::new(&exe)
            .args(["--exact", name, "--nocapture", "--test-threads", "1"])
            .env(crate::SIMD_ENV, cap)
            .output()
            .expect("the test binary runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{name} with {}={cap}:\n{stdout}\n{}",
            crate::SIMD_ENV,
            String::from_utf8_lossy(&out.stderr)
        );
        let expected = crate::simd_name(crate::cpu_simd().min(level));
        assert!(
            stdout.contains(&format!("CPU: {expected}")),
            "{}={cap} should leave {expected}:\n{stdout}",
            crate::SIMD_ENV
        );
        println!("{}={cap} ({expected}): passed", crate::SIMD_ENV);
    }
}

fn close(a: &Tensor<4>, b: &Tensor<4>, what: &str) {
    close_within(a, b, what, 1e-5);
}

fn close_within(a: &Tensor<4>, b: &Tensor<4>, what: &str, tolerance: f32) {
    let scale = b.clone().abs().max().into_scalar::<f32>().max(1.0);
    let err = (a.clone() - b.clone()).abs().max().into_scalar::<f32>();
    assert!(err < tolerance * scale, "{what}: {err} (scale {scale})");
}

/// A bias gradient, a float32 sum over `terms` values on each side: its rounding grows
/// as sqrt(terms) (measured: 1.2e-5 of the scale over the 65,536 of a batch of 64 32x32
/// images), so the tolerance does too, from 1e-5 at 256 terms.
fn close1(a: Tensor<1>, b: Tensor<1>, what: &str, terms: usize) {
    let tolerance = 1e-5 * (terms as f32 / 256.0).sqrt().max(1.0);
    let (a, b) = (a.reshape([1, 1, 1, -1]), b.reshape([1, 1, 1, -1]));
    close_within(&a, &b, what, tolerance);
}

/// [`conv2d`] of `x` (`[B, C_in, H, W]`) with a kernel `w` (`[C_out, C_in, kh, kw]`) and
/// padding `pad` (`[rows, columns]`), and
/// [`conv_transpose2d`] with the adjoint shape (`dy` of the convolution's output shape to its
/// input shape, so a transposed convolution `C_out -> C_in` from `oh` to `H`), against Burn's
/// own ops on random values: outputs and every gradient (input, kernel, bias), through a loss
/// that reaches each input, at first order. Panics on a difference over 1e-5 of the scale
/// (bias gradients: growing as the square root of the summed terms).
pub fn check_conv(x: [usize; 4], w: [usize; 4], stride: usize, pad: [usize; 2], device: &Device) {
    let g = &conv_geometry(x, w, stride, pad);
    let normal = Distribution::Normal(0.0, 1.0);
    let x = Tensor::<4>::random([g.batch, g.c_in, g.h, g.w], normal, device);
    let w = Tensor::<4>::random([g.c_out, g.c_in, g.kh, g.kw], normal, device);
    let b = Tensor::<1>::random([g.c_out], normal, device);
    let dy = Tensor::<4>::random([g.batch, g.c_out, g.oh, g.ow], normal, device);
    let options = ConvOptions::new([g.stride; 2], pad, [1, 1], 1);
    let out_pad =
        [(g.h, g.kh, g.pad_h), (g.w, g.kw, g.pad_w)].map(|(i, k, p)| (i + 2 * p - k) % g.stride);
    let t_options = ConvTransposeOptions::new([g.stride; 2], pad, out_pad, [1, 1], 1);
    let tb = Tensor::<1>::random([g.c_in], normal, device);
    assert!(gemm_path(&x, &w, options.stride), "takes the gemm path");
    let run = |ours: bool| {
        let (x, w, b, dy, tb) = (
            x.clone().require_grad(),
            w.clone().require_grad(),
            b.clone().require_grad(),
            dy.clone().require_grad(),
            tb.clone().require_grad(),
        );
        let (y, t) = if ours {
            let y = conv2d(x.clone(), w.clone(), Some(b.clone()), options.clone());
            let t = conv_transpose2d(dy.clone(), w.clone(), Some(tb.clone()), t_options.clone());
            (y, t)
        } else {
            let y = burn::tensor::module::conv2d(
                x.clone(),
                w.clone(),
                Some(b.clone()),
                options.clone(),
            );
            let t = burn::tensor::module::conv_transpose2d(
                dy.clone(),
                w.clone(),
                Some(tb.clone()),
                t_options.clone(),
            );
            (y, t)
        };
        // A loss reaching every input, with t's shape equal to x's.
        let loss = (y.clone() * y.clone()).sum() + (t.clone() * x.clone().sin()).sum();
        let grads = loss.backward();
        (
            y,
            t,
            x.grad(&grads).unwrap(),
            w.grad(&grads).unwrap(),
            b.grad(&grads).unwrap(),
            dy.grad(&grads).unwrap(),
            tb.grad(&grads).unwrap(),
        )
    };
    let (ours, burn) = (run(true), run(false));
    close(&ours.0, &burn.0, &format!("{g:?} conv2d"));
    close(&ours.1, &burn.1, &format!("{g:?} conv_transpose2d"));
    close(&ours.2, &burn.2, &format!("{g:?} d/dx"));
    close(&ours.3, &burn.3, &format!("{g:?} d/dw"));
    close1(
        ours.4,
        burn.4,
        &format!("{g:?} d/db"),
        g.batch * g.positions(),
    );
    close(&ours.5, &burn.5, &format!("{g:?} d/ddy"));
    close1(
        ours.6,
        burn.6,
        &format!("{g:?} d/dbias_t"),
        g.batch * g.h * g.w,
    );
}

/// [`leaky_relu`](crate::activation::leaky_relu) against Burn's on a random `shape`: values and the gradient of a loss
/// that uses the activation twice.
pub fn check_leaky_relu(shape: [usize; 4], device: &Device) {
    let x = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), device);
    assert!(x.clone().lower_elem(0.0).any().into_scalar::<bool>());
    check_activation(
        x,
        |x| leaky_relu(x, 0.2),
        |x| burn::tensor::activation::leaky_relu(x, 0.2),
        Default::default(),
    );
}

/// [`tanh`](crate::activation::tanh) against Burn's on a random `shape` (spread over
/// [-6, 6]): values within 2 ulp of libm's, and the gradient of a loss that uses the output
/// twice.
pub fn check_tanh(shape: [usize; 4], device: &Device) {
    let x = Tensor::<4>::random(shape, Distribution::Normal(0.0, 3.0), device);
    check_activation(
        x,
        crate::activation::tanh,
        burn::tensor::activation::tanh,
        burn::tensor::Tolerance::absolute(2.5e-7),
    );
}

/// `ours` against `burn` on `x`: values within `tolerance`, and the gradients of a loss that
/// uses the output twice (`sum(y cos y)`) within the default tolerance.
fn check_activation(
    x: Tensor<4>,
    ours: impl Fn(Tensor<4>) -> Tensor<4>,
    burn: impl Fn(Tensor<4>) -> Tensor<4>,
    tolerance: burn::tensor::Tolerance<f32>,
) {
    let run = |f: &dyn Fn(Tensor<4>) -> Tensor<4>| {
        let x = x.clone().require_grad();
        let y = f(x.clone());
        let loss = (y.clone() * y.clone().cos()).sum();
        let grad = x.grad(&loss.backward()).unwrap();
        (y.inner(), grad)
    };
    let ((y, gy), (z, gz)) = (run(&ours), run(&burn));
    y.into_data()
        .assert_approx_eq::<f32>(&z.into_data(), tolerance);
    gy.into_data()
        .assert_approx_eq::<f32>(&gz.into_data(), Default::default());
}

/// [`forward`](crate::norm::forward) (fused on Flex) and the composed ops against Burn's `BatchNorm` on `shape`:
/// output, input/gamma/beta gradients, running mean after two training forwards; the
/// running variance against PyTorch's: Burn's biased update with every batch variance scaled
/// by n / (n - 1), i.e. `ours - 0.81 = n / (n - 1) (burn - 0.81)` from the initial 1.
pub fn check_batch_norm(shape: [usize; 4], device: &Device) {
    let n = (shape[0] * shape[2] * shape[3]) as f32;
    let c = shape[1];
    let device = device.clone();
    let x = Tensor::<4>::random(shape, Distribution::Normal(1.5, 2.0), &device);
    let weights = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
    let gamma = Tensor::<1>::random([c], Distribution::Normal(0.5, 1.0), &device);
    let beta = Tensor::<1>::random([c], Distribution::Normal(0.5, 1.0), &device);
    // 0: Burn's module, 1: `forward` (fused on Flex), 2: the composed ops.
    let run = |path: usize| {
        // A fresh layer per run: clones of a module share their running statistics.
        let mut norm = BatchNormConfig::new(c).init(&device);
        norm.gamma = Param::from_tensor(gamma.clone());
        norm.beta = Param::from_tensor(beta.clone());
        let x = x.clone().require_grad();
        let out = |t: Tensor<4>| match path {
            0 => norm.forward(t),
            1 => forward(&norm, t),
            _ => composed(&norm, t).0,
        };
        let _ = out(x.clone() * 0.5); // a first step for the running statistics
        let y = out(x.clone());
        let grads = (y.clone() * weights.clone()).sum().backward();
        let g = |t: Tensor<1>| t.reshape([1, 1, 1, -1]);
        vec![
            y.inner(),
            x.grad(&grads).unwrap(),
            g(norm.gamma.grad(&grads).unwrap()),
            g(norm.beta.grad(&grads).unwrap()),
            // value_sync: `value` lags one update (the latest is kept per thread).
            g(norm.running_mean.value_sync().inner()),
            g(norm.running_var.value_sync().inner()),
        ]
    };
    let close = |a: Tensor<4>, b: Tensor<4>, what: String| {
        let scale = b.clone().abs().max().into_scalar::<f32>().max(1.0);
        let err = (a - b).abs().max().into_scalar::<f32>();
        assert!(err < 1e-5 * scale, "{what}: {err}");
    };
    let burn = run(0);
    let fused = run(1);
    for (i, (a, b)) in fused.iter().zip(&burn).take(5).enumerate() {
        close(a.clone(), b.clone(), format!("{shape:?} fused output {i}"));
    }
    let pytorch_var = (burn[5].clone() - 0.81) * (n / (n - 1.0)) + 0.81;
    close(
        fused[5].clone(),
        pytorch_var,
        format!("{shape:?} running variance"),
    );
    for (i, (a, b)) in run(2).into_iter().zip(burn).take(4).enumerate() {
        close(a, b, format!("{shape:?} composed output {i}"));
    }
}

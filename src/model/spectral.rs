//! Spectral normalization (Miyato et al. 2018, "Spectral Normalization for GANs", Alg. 1).
//!
//! A kernel `W` (any rank, viewed as the matrix `[out, rest]`) is used as `W / sigma(W)`, with
//! `sigma(W) = u^T W v` and `u`, `v` persistent estimates of the top singular vectors. Each
//! training forward refines them by power iteration, without gradient; the gradient of the
//! loss then flows through `W` both in the numerator and in `sigma` (with `u`, `v` constant),
//! exactly as in PyTorch's `torch.nn.utils.parametrizations.spectral_norm`.
//!
//! The power iteration is Miyato's alternating sequence `v = normalize(W^T u)`,
//! `u = normalize(W v)`, ...; where a forward pass cuts it is PyTorch's choice: each step starts
//! from the stored `v` with `u = normalize(W v)` and ends with `v = normalize(W^T u)`, so that
//! `sigma = u^T W v = ||W^T u||` uses the newest pair. (Cutting after the `u` half, as Alg. 1 is
//! often written, gives `sigma = ||W v||` from a `v` half a step older: the same estimator one
//! half-step behind, and not PyTorch's numbers, which `tests/torch_parity.rs` compares with.)

use burn::module::{Flag, Module, Param, RunningState};
use burn::prelude::*;
use burn::tensor::Distribution;

use super::bound::matrix_bound;

/// Power iterations run once at initialisation so that the first `sigma` is already accurate
/// (PyTorch's parametrization does the same 15).
pub const WARMUP_ITERATIONS: usize = 15;

/// `F.normalize`'s floor on the norm, so that a zero vector stays finite.
const NORM_EPS: f64 = 1e-12;

/// How a critic layer uses its spectral-norm state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpectralOptions {
    /// Power-iteration steps per training forward.
    pub power_iterations: usize,
    /// Divide the kernel by sigma in the forward pass (spectral_norm); when false, sigma is
    /// only estimated, for a penalty (spectral_penalty).
    pub in_forward: bool,
    /// Normalize each convolution by its norm as an operator on the layer's input shape
    /// ([`super::operator::OperatorNorm`]) instead of its matrix view's (`norm = "operator"`);
    /// linear layers are their own matrix either way.
    pub operator: bool,
    /// Divide by a certified upper bound on each layer's norm ([`super::bound`]) instead of
    /// the power-iteration estimate (`certify = true`, with `operator`).
    pub certify: bool,
}

/// Persistent power-iteration state of one kernel, saved and loaded with the model.
#[derive(Module, Debug)]
pub struct SpectralNorm {
    /// Estimate of the top left singular vector, `[out]`.
    pub u: RunningState<Tensor<1>>,
    /// Estimate of the top right singular vector, `[rest]`.
    pub v: RunningState<Tensor<1>>,
    /// Training mode: refine `u`, `v` on each forward. Cleared by `valid()`/`freeze()`.
    pub training: Param<Flag>,
    /// Power-iteration steps per training forward.
    pub power_iterations: usize,
    /// Whether the layer divides its kernel by sigma in the forward pass.
    pub in_forward: bool,
    /// With `certify`: a certified upper bound on the matrix's largest singular value, `[1]`,
    /// the value sigma takes; recomputed by [`certify`](Self::certify) after each step.
    pub bound: Option<RunningState<Tensor<1>>>,
}

impl SpectralNorm {
    /// Random normal, normalized `u` and `v` for `kernel` (drawn from the device's seeded RNG,
    /// in this order, as PyTorch does), then [`WARMUP_ITERATIONS`] power iterations.
    pub fn new<const D: usize>(kernel: &Tensor<D>, options: SpectralOptions) -> Self {
        let matrix = as_matrix(kernel.clone()).detach();
        let [rows, cols] = matrix.dims();
        let device = matrix.device();
        let draw =
            |n: usize| normalize(Tensor::random([n], Distribution::Normal(0.0, 1.0), &device));
        let (u, v) = (draw(rows), draw(cols));
        let (u, v) = power_iteration(&matrix, (u, v), WARMUP_ITERATIONS);
        let bound = options
            .certify
            .then(|| RunningState::new(super::bound::as_tensor(matrix_bound(&matrix), &matrix)));
        Self {
            u: RunningState::new(u),
            v: RunningState::new(v),
            training: Param::from_bool(true),
            power_iterations: options.power_iterations,
            in_forward: options.in_forward,
            bound,
        }
    }

    /// Recomputes the certified bound for `kernel` (no-op without `certify`).
    pub fn certify<const D: usize>(&self, kernel: &Tensor<D>) {
        if let Some(bound) = &self.bound {
            let matrix = as_matrix(kernel.clone()).detach();
            bound.update(super::bound::as_tensor(matrix_bound(&matrix), &matrix));
            bound.value_sync();
        }
    }

    /// `kernel / sigma(kernel)`, refining `u`, `v` first when training on an autodiff device.
    pub fn normalize<const D: usize>(&self, kernel: Tensor<D>) -> Tensor<D> {
        let sigma = self.sigma(as_matrix(kernel.clone())); // [1]
        // A product with 1 / sigma rather than a quotient: Burn's backward of a broadcast
        // division makes four kernel-sized tensors (-W, / sigma^2, * grad, grad / sigma), that of
        // a product two (grad / sigma, grad * W); the reciprocal itself is of a [1] tensor.
        kernel.mul(sigma.recip().unsqueeze::<D>())
    }

    /// `sigma = u^T W v` for the matrix view `[out, rest]` of a kernel, differentiable in `W`.
    /// Runs the power iteration first (and stores the new `u`, `v`) in training mode.
    pub fn sigma(&self, matrix: Tensor<2>) -> Tensor<1> {
        let (u, v) = if self.is_training(&matrix) {
            self.refine(&matrix)
        } else {
            (self.u.value(), self.v.value())
        };
        let device = matrix.device();
        let [rows, cols] = matrix.dims();
        let u = u.to_device(&device).reshape([1, rows]);
        let v = v.to_device(&device).reshape([cols, 1]);
        let sigma = u.matmul(matrix).matmul(v).reshape([1]); // [1]
        super::bound::rescale(sigma, &self.bound)
    }

    /// The current estimate `u^T W v` without refining, detached (a diagnostic).
    pub fn estimate<const D: usize>(&self, kernel: &Tensor<D>) -> f32 {
        let matrix = as_matrix(kernel.clone()).detach();
        let [rows, cols] = matrix.dims();
        let u = self.u.value().reshape([1, rows]);
        let v = self.v.value().reshape([cols, 1]);
        u.matmul(matrix).matmul(v).into_scalar::<f32>()
    }

    /// What the kernel is divided by in the forward pass: the certified bound with `certify`,
    /// else the current estimate (a diagnostic).
    pub fn divisor<const D: usize>(&self, kernel: &Tensor<D>) -> f32 {
        match &self.bound {
            Some(bound) => bound.value().into_scalar::<f32>(),
            None => self.estimate(kernel),
        }
    }

    fn is_training(&self, matrix: &Tensor<2>) -> bool {
        matrix.is_autodiff() && self.training.is_enabled()
    }

    /// `power_iterations` steps from the stored `u`, `v`, stored again at once: `RunningState`
    /// keeps updates per thread until synced, and a record must see the latest values.
    fn refine(&self, matrix: &Tensor<2>) -> (Tensor<1>, Tensor<1>) {
        let matrix = matrix.clone().detach();
        let device = matrix.device();
        let u = self.u.value_sync().to_device(&device);
        let v = self.v.value_sync().to_device(&device);
        let (u, v) = power_iteration(&matrix, (u, v), self.power_iterations);
        self.u.update(u.clone());
        self.v.update(v.clone());
        self.u.value_sync();
        self.v.value_sync();
        (u, v)
    }
}

/// The `[out, in*kh*kw]` view of a kernel (a `[out, in]` matrix stays as it is).
pub fn as_matrix<const D: usize>(kernel: Tensor<D>) -> Tensor<2> {
    let dims = kernel.dims();
    let rows = dims[0];
    let cols = dims[1..].iter().product::<usize>();
    kernel.reshape([rows, cols])
}

/// `steps` x { u = normalize(W v); v = normalize(W^T u) } from `(u, v)` (only `v` is read),
/// on detached values, as PyTorch's `_SpectralNorm._power_method`.
pub fn power_iteration(
    matrix: &Tensor<2>,
    (u, v): (Tensor<1>, Tensor<1>),
    steps: usize,
) -> (Tensor<1>, Tensor<1>) {
    let [rows, cols] = matrix.dims();
    let (mut u, mut v) = (u.detach(), v.detach());
    for _ in 0..steps.max(1) {
        u = normalize(matrix.clone().matmul(v.reshape([cols, 1])).reshape([rows]));
        // W^T u as the row vector u^T W: a transposed W would be copied on every call.
        v = normalize(
            u.clone()
                .reshape([1, rows])
                .matmul(matrix.clone())
                .reshape([cols]),
        );
    }
    (u.detach(), v.detach())
}

/// `x / max(||x||, 1e-12)`.
fn normalize(x: Tensor<1>) -> Tensor<1> {
    let norm = x.clone().square().sum().sqrt().clamp_min(NORM_EPS); // [1]
    x.div(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Critic;
    use burn::optim::{AdamConfig, GradientsParams};
    use nalgebra::DMatrix;

    /// `module`'s record through burnpack bytes (what a checkpoint file holds) into `fresh`.
    fn round_trip<M: Module>(module: &M, fresh: M) -> M {
        let _ = module.valid(); // flushes pending state, as a checkpoint does
        let bytes = module.clone().into_record().into_bytes().unwrap();
        let record = burn::store::ModuleRecord::from_bytes(bytes).unwrap();
        fresh.try_load_record(record).unwrap()
    }

    fn device() -> Device {
        Device::flex().autodiff()
    }

    fn opts(power_iterations: usize) -> SpectralOptions {
        SpectralOptions {
            power_iterations,
            in_forward: true,
            operator: false,
            certify: false,
        }
    }

    fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
    }

    /// Exact largest singular value of the `[out, rest]` view, by nalgebra's SVD in f64.
    fn exact_sigma<const D: usize>(kernel: Tensor<D>) -> f64 {
        let matrix = as_matrix(kernel);
        let [rows, cols] = matrix.dims();
        let values: Vec<f64> = to_vec(matrix).into_iter().map(f64::from).collect();
        DMatrix::from_row_slice(rows, cols, &values)
            .singular_values()
            .max()
    }

    fn random<const D: usize>(shape: [usize; D], device: &Device) -> Tensor<D> {
        Tensor::random(shape, Distribution::Normal(0.0, 1.0), device)
    }

    #[test]
    fn sigma_matches_exact_svd_after_warmup() {
        let device = device();
        device.seed(1);
        let kernels: Vec<Tensor<2>> = vec![
            random([1, 4096], &device),                  // critic head
            random([64, 300], &device),                  // a linear layer
            as_matrix(random([32, 16, 4, 4], &device)),  // a conv kernel
            as_matrix(random([128, 64, 4, 4], &device)), // a wider conv kernel
        ];
        for kernel in kernels {
            // Warm-up: one training forward with many power iterations.
            let sn = SpectralNorm::new(&kernel, opts(500));
            let normalized = sn.normalize(kernel.clone());
            let exact = exact_sigma(kernel.clone());
            let estimate = sn.estimate(&kernel) as f64;
            let rel = (estimate - exact).abs() / exact;
            assert!(
                rel < 1e-3,
                "{:?}: estimate {estimate} vs SVD {exact}",
                kernel.dims()
            );
            let normalized_norm = exact_sigma(normalized);
            assert!(
                (normalized_norm - 1.0).abs() < 1e-3,
                "normalized norm {normalized_norm}"
            );
        }
    }

    /// PyTorch's `spectral_norm`, from the same `u`, `v` and weights, over three critic steps
    /// of two training forwards each (d(fake), d(real)) with the weights moved between steps:
    ///
    /// ```python
    /// import math, torch
    /// from torch.nn.utils.parametrizations import spectral_norm
    /// conv = spectral_norm(torch.nn.Conv2d(4, 8, 4, 2, 1))
    /// n = 8 * 4 * 4 * 4
    /// w0 = torch.tensor([math.sin(0.37 * i) for i in range(n)]).reshape(8, 4, 4, 4)
    /// dw = torch.tensor([math.cos(1.3 * i) for i in range(n)]).reshape(8, 4, 4, 4)
    /// sn = conv.parametrizations.weight[0]
    /// with torch.no_grad():
    ///     sn._u.copy_(torch.nn.functional.normalize(torch.tensor([math.cos(0.5 * i) for i in range(8)]), dim=0))
    ///     sn._v.copy_(torch.nn.functional.normalize(torch.tensor([math.sin(0.9 * i + 0.3) for i in range(64)]), dim=0))
    /// conv.train()
    /// sigmas = []
    /// for step in range(3):
    ///     with torch.no_grad():
    ///         conv.parametrizations.weight.original.copy_(w0 + 0.05 * step * dw)
    ///     for _ in range(2):
    ///         _ = conv.weight  # one training forward: one power iteration
    ///         mat = conv.parametrizations.weight.original.reshape(8, -1)
    ///         sigmas.append(float(torch.vdot(sn._u, torch.mv(mat, sn._v))))
    /// print([f"{s:.6f}" for s in sigmas])  # torch 2.15
    /// ```
    /// The exact top singular value at the last step is 11.6987: the estimates are far from
    /// converged, so the order of the half-steps shows.
    #[test]
    fn sigma_sequence_matches_pytorch_spectral_norm_over_critic_steps() {
        let device = device();
        let expected = [
            10.904696, 10.909521, 10.945549, 10.952673, 11.017149, 11.027212,
        ];
        let seq = |n: usize, f: &dyn Fn(f64) -> f64| -> Vec<f32> {
            (0..n).map(|i| f(i as f64) as f32).collect()
        };
        let tensor = |v: Vec<f32>| Tensor::<1>::from_data(TensorData::from(v.as_slice()), &device);
        let n = 8 * 4 * 4 * 4;
        let w0 = tensor(seq(n, &|i| (0.37 * i).sin())).reshape([8, 4, 4, 4]);
        let dw = tensor(seq(n, &|i| (1.3 * i).cos())).reshape([8, 4, 4, 4]);
        let sn = SpectralNorm {
            u: RunningState::new(normalize(tensor(seq(8, &|i| (0.5 * i).cos())))),
            v: RunningState::new(normalize(tensor(seq(64, &|i| (0.9 * i + 0.3).sin())))),
            training: Param::from_bool(true),
            power_iterations: 1,
            in_forward: true,
            bound: None,
        };
        let mut sigmas = Vec::new();
        for step in 0..3 {
            let w = w0.clone() + dw.clone() * (0.05 * step as f64);
            for _ in 0..2 {
                let _ = sn.normalize(w.clone());
                sigmas.push(sn.estimate(&w));
            }
        }
        for (ours, torch) in sigmas.iter().zip(expected) {
            assert!(
                (ours - torch).abs() < 2e-5 * torch,
                "{sigmas:?} vs {expected:?}"
            );
        }
    }

    #[test]
    fn one_iteration_per_forward_converges_during_training_forwards() {
        let device = device();
        device.seed(2);
        let kernel = random([64, 32, 4, 4], &device);
        let sn = SpectralNorm::new(&kernel, opts(1));
        for _ in 0..300 {
            let _ = sn.normalize(kernel.clone());
        }
        let exact = exact_sigma(kernel.clone());
        let rel = (sn.estimate(&kernel) as f64 - exact).abs() / exact;
        assert!(rel < 1e-3, "relative error {rel}");
    }

    #[test]
    fn u_changes_in_a_training_forward_and_not_in_eval() {
        let device = device();
        device.seed(3);
        let critic = Critic::new(32, 1, 8, Some(opts(1)), &device);
        let x = random([2, 1, 32, 32], &device);
        let u = |c: &Critic| to_vec(c.convs[1].spectral.as_ref().unwrap().u.value());
        let before = u(&critic);
        let _ = critic.forward(x.clone());
        let after_train = u(&critic);
        assert_ne!(before, after_train, "training forward must refine u");

        let eval = critic.valid();
        let _ = eval.forward(x.clone().without_autodiff());
        assert_eq!(u(&eval), after_train, "eval forward must not touch u");
        assert_eq!(u(&critic), after_train);
    }

    #[test]
    fn u_is_unchanged_by_the_optimizer_step_and_round_trips_through_save_load() {
        let device = device();
        device.seed(4);
        let critic = Critic::new(32, 1, 8, Some(opts(1)), &device);
        let x = random([2, 1, 32, 32], &device);
        let loss = critic.forward(x).mean();
        let u = |c: &Critic| to_vec(c.convs[1].spectral.as_ref().unwrap().u.value());
        let v = |c: &Critic| to_vec(c.convs[0].spectral.as_ref().unwrap().v.value());
        let (u_forward, v_forward) = (u(&critic), v(&critic));
        let w_before = to_vec(critic.head.weight.val());
        let grads = GradientsParams::from_grads(loss.backward(), &critic);
        let mut optim = AdamConfig::new().init();
        let stepped = optim.step(1e-2, critic, grads);
        assert_ne!(
            to_vec(stepped.head.weight.val()),
            w_before,
            "the weight must move"
        );
        assert_eq!(u(&stepped), u_forward);
        assert_eq!(v(&stepped), v_forward);

        device.seed(99);
        let fresh = Critic::new(32, 1, 8, Some(opts(1)), &device);
        assert_ne!(u(&fresh), u_forward);
        let loaded = round_trip(&stepped, fresh);
        assert_eq!(u(&loaded), u_forward);
        assert_eq!(v(&loaded), v_forward);
        assert_eq!(
            to_vec(loaded.head.weight.val()),
            to_vec(stepped.head.weight.val())
        );
    }

    #[test]
    fn saved_u_is_the_latest_after_several_forwards() {
        let device = device();
        device.seed(5);
        let critic = Critic::new(32, 1, 8, Some(opts(1)), &device);
        for _ in 0..3 {
            let _ = critic.forward(random([2, 1, 32, 32], &device));
        }
        let latest = to_vec(critic.convs[2].spectral.as_ref().unwrap().u.value());
        let loaded = round_trip(&critic, Critic::new(32, 1, 8, Some(opts(1)), &device));
        assert_eq!(
            to_vec(loaded.convs[2].spectral.as_ref().unwrap().u.value()),
            latest
        );
    }

    #[test]
    fn d_sigma_d_w_is_u_v_transposed_and_matches_finite_differences_of_the_svd() {
        let device = device();
        device.seed(6);
        let (rows, cols) = (6, 10);
        let w = random([rows, cols], &device);
        let sn = SpectralNorm::new(&w, opts(2000)); // converged
        let _ = sn.normalize(w.clone());
        let sn = sn.freeze(); // u, v fixed from here on
        let w = w.require_grad();
        let sigma = sn.sigma(w.clone());
        let grad = to_vec(w.grad(&sigma.backward()).unwrap());
        let u = to_vec(sn.u.value());
        let v = to_vec(sn.v.value());
        let base: Vec<f64> = to_vec(w.clone()).into_iter().map(f64::from).collect();
        let exact = |m: &[f64]| {
            DMatrix::from_row_slice(rows, cols, m)
                .singular_values()
                .max()
        };
        let h = 1e-5;
        #[allow(clippy::needless_range_loop)] // (i, j) index W, u and v together
        for i in 0..rows {
            for j in 0..cols {
                let k = i * cols + j;
                // Autodiff through sigma = u^T W v is u v^T.
                assert!((grad[k] - u[i] * v[j]).abs() < 1e-6, "({i},{j})");
                // Central difference of the exact top singular value (f64).
                let (mut plus, mut minus) = (base.clone(), base.clone());
                plus[k] += h;
                minus[k] -= h;
                let fd = (exact(&plus) - exact(&minus)) / (2.0 * h);
                assert!(
                    (grad[k] as f64 - fd).abs() < 1e-4,
                    "({i},{j}): {} vs {fd}",
                    grad[k]
                );
            }
        }
    }

    #[test]
    fn spectrally_normalized_critic_has_input_gradient_norm_at_most_one() {
        // Each layer's kernel matrix has norm 1 and LeakyReLU has slope <= 1. (The reshaped
        // kernel's norm is not exactly the conv operator's norm, so this is checked, not
        // proven: on random inputs and on real images.)
        let device = device();
        device.seed(7);
        let critic = Critic::new(32, 1, 16, Some(opts(1)), &device);
        for _ in 0..100 {
            let _ = critic.forward(random([1, 1, 32, 32], &device));
        }
        let critic = critic.freeze(); // no more power iterations, no weight gradients
        let plain = Device::flex().autodiff();
        let data_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/data/fashion-mnist");
        let prep = crate::data::Preprocess {
            size: 32,
            channels: 1,
            crop: 0,
        };
        let files: Vec<_> = crate::data::image_files(data_dir.as_ref()).unwrap();
        let images: Vec<u8> = files[..16]
            .iter()
            .flat_map(|p| crate::data::prepare(&image::open(p).unwrap(), prep))
            .collect();
        let real = crate::data::ImageSet::from_pixels(images, 1, 32)
            .batch(&(0..16).collect::<Vec<_>>(), &plain);
        for x in [random([16, 1, 32, 32], &plain), real] {
            let x = x.require_grad();
            let out = critic.forward(x.clone()).sum();
            let grad = x.grad(&out.backward()).unwrap(); // [16, 1, 32, 32]
            let norms = to_vec(grad.square().sum_dims(&[1, 2, 3]).sqrt());
            for n in norms {
                assert!(n > 0.0 && n <= 1.0 + 1e-3, "input-gradient norm {n}");
            }
        }
    }
}

//! Spectral normalization of a convolution as an operator (Farnia, Zhang & Tse, "Generalizable
//! Adversarially-Trained GANs", ICLR 2019; Gouk et al., "Regularisation of neural networks by
//! enforcing Lipschitz continuity", Machine Learning 2021).
//!
//! Miyato's spectral normalization divides a kernel by the largest singular value of its matrix
//! view `[out, in*kh*kw]`; a 4x4 stride-2 convolution's norm as an operator on images can be up
//! to twice that (each input pixel falls in up to `ceil(k/s)^2 = 4` windows, and the norm grows
//! with the square root of the overlap), so the layer is not 1-Lipschitz. Here the kernel is divided by the norm of the
//! convolution itself on the layer's actual input shape (stride, zero padding): persistent
//! unit vectors `u` `[1, out, oh, ow]` and `v` `[1, in, h, w]` are refined by power iteration
//! through the convolution `A` and its adjoint `A^T` (the transposed convolution with the
//! output padding that restores the input size), without gradient: `u = normalize(A v)`,
//! `v = normalize(A^T u)` (PyTorch's cut, as the matrix view's), and
//! `sigma = <u, A_W v>`, differentiable in `W` (its gradient is the convolution's weight
//! gradient of `v` against `u`).

use burn::module::{Flag, Module, Param, RunningState};
use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::module::{conv_transpose2d, conv2d};
use burn::tensor::ops::{ConvOptions, ConvTransposeOptions};

/// Power iterations at creation: the operator's top singular values lie closer together than
/// a random matrix's, so more than the matrix view's 15.
pub const OPERATOR_WARMUP_ITERATIONS: usize = 100;

/// After [`OPERATOR_WARMUP_ITERATIONS`], the warm-up goes on while the estimate still changes
/// by more than this (relative) per iteration, up to [`WARMUP_MAX_ITERATIONS`] in all.
const CONVERGED: f64 = 1e-6;

/// The most power iterations of the warm-up after the first [`OPERATOR_WARMUP_ITERATIONS`].
const WARMUP_MAX_ITERATIONS: usize = 2000;

/// Persistent power-iteration state of one convolution's operator norm.
#[derive(Module, Debug)]
pub struct OperatorNorm {
    /// Estimate of the top left singular vector, `[1, out, oh, ow]`.
    pub u: RunningState<Tensor<4>>,
    /// Estimate of the top right singular vector, `[1, in, h, w]`.
    pub v: RunningState<Tensor<4>>,
    /// Training mode: refine `u`, `v` on each forward. Cleared by `valid()`.
    pub training: Param<Flag>,
    /// Power-iteration steps per training forward.
    pub power_iterations: usize,
    /// Whether the layer divides its kernel by sigma in the forward pass.
    pub in_forward: bool,
    /// The convolution's stride.
    pub stride: usize,
    /// The convolution's zero padding.
    pub padding: usize,
    /// With `certify`: a certified upper bound on the operator norm ([`super::bound`]), `[1]`,
    /// the value sigma takes; recomputed by [`certify`](Self::certify) after each step.
    pub bound: Option<RunningState<Tensor<1>>>,
}

impl OperatorNorm {
    /// Random normal unit `u`, `v` (drawn from the device's seeded RNG, `u` first) for `kernel`
    /// `[out, in, k, k]` on `[in, size[0], size[1]]` inputs, then
    /// [`OPERATOR_WARMUP_ITERATIONS`] power iterations.
    pub fn new(
        kernel: &Tensor<4>,
        size: [usize; 2],
        stride: usize,
        padding: usize,
        power_iterations: usize,
        in_forward: bool,
        certify: bool,
    ) -> Self {
        let kernel = kernel.clone().detach();
        let [c_out, c_in, k, _] = kernel.dims();
        let out = |i: usize| (size[i] + 2 * padding - k) / stride + 1;
        let device = kernel.device();
        let dtype = kernel.dtype();
        let draw = |shape: [usize; 4]| {
            unit(Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device).cast(dtype))
        };
        let u = draw([1, c_out, out(0), out(1)]);
        let v = draw([1, c_in, size[0], size[1]]);
        let mut norm = Self {
            u: RunningState::new(u),
            v: RunningState::new(v),
            training: Param::from_bool(true),
            power_iterations,
            in_forward,
            stride,
            padding,
            bound: None,
        };
        let (u, v) = norm.iterate(&kernel, OPERATOR_WARMUP_ITERATIONS);
        norm.u = RunningState::new(u);
        norm.v = RunningState::new(v);
        // Then on to convergence (some kernels' top singular values lie very close).
        let (u, v) = norm.refine_for(&kernel, 0, WARMUP_MAX_ITERATIONS);
        norm.u = RunningState::new(u);
        norm.v = RunningState::new(v);
        if certify {
            norm.bound = Some(RunningState::new(norm.bound_of(&kernel)));
        }
        norm
    }

    /// Recomputes the certified bound for `kernel` (no-op without `certify`).
    pub fn certify(&self, kernel: &Tensor<4>) {
        if let Some(bound) = &self.bound {
            bound.update(self.bound_of(&kernel.clone().detach()));
            bound.value_sync();
        }
    }

    /// The certified bound on `kernel`'s operator norm on this layer's input size, `[1]`.
    fn bound_of(&self, kernel: &Tensor<4>) -> Tensor<1> {
        let [_, _, h, w] = self.v.value().dims();
        let value = super::bound::conv_bound(kernel, [h, w], self.stride, self.padding);
        super::bound::as_tensor(value, kernel)
    }

    /// `kernel / sigma(kernel)`, refining `u`, `v` first when training on an autodiff device.
    pub fn normalize(&self, kernel: Tensor<4>) -> Tensor<4> {
        let sigma = self.sigma(kernel.clone()); // [1]
        kernel.div(sigma.unsqueeze::<4>())
    }

    /// `sigma = <u, A_W v>`, differentiable in `W`; runs the power iteration first (and stores
    /// the new `u`, `v`) in training mode.
    pub fn sigma(&self, kernel: Tensor<4>) -> Tensor<1> {
        let device = kernel.device();
        let (u, v) = if kernel.is_autodiff() && self.training.is_enabled() {
            let (u, v) = self.iterate(&kernel.clone().detach(), self.power_iterations);
            self.u.update(u.clone());
            self.v.update(v.clone());
            self.u.value_sync();
            self.v.value_sync();
            (u, v)
        } else {
            (self.u.value(), self.v.value())
        };
        let (u, v) = (u.to_device(&device), v.to_device(&device));
        let sigma = (u * self.conv(v, kernel)).sum(); // [1]
        super::bound::rescale(sigma, &self.bound)
    }

    /// The current estimate `<u, A_W v>` without refining (a diagnostic).
    pub fn estimate(&self, kernel: &Tensor<4>) -> f32 {
        let kernel = kernel.clone().detach();
        let device = kernel.device();
        let (u, v) = (
            self.u.value().to_device(&device),
            self.v.value().to_device(&device),
        );
        (u * self.conv(v, kernel)).sum().into_scalar::<f32>()
    }

    /// `steps` x { u = normalize(A v); v = normalize(A^T u) } from the stored `v`.
    fn iterate(&self, kernel: &Tensor<4>, steps: usize) -> (Tensor<4>, Tensor<4>) {
        let device = kernel.device();
        let v = self.v.value_sync().to_device(&device).detach();
        let u = self.u.value_sync().to_device(&device).detach();
        let (mut u, mut v) = (u, v);
        for _ in 0..steps.max(1) {
            (u, v) = self.step(kernel, v);
        }
        (u.detach(), v.detach())
    }

    /// `first` steps, then more until the estimate changes by at most [`CONVERGED`] (relative)
    /// in one step, at most `max` in all.
    fn refine_for(&self, kernel: &Tensor<4>, first: usize, max: usize) -> (Tensor<4>, Tensor<4>) {
        let (mut u, mut v) = self.iterate(kernel, first);
        let mut sigma = self.rayleigh(&u, &v, kernel);
        for _ in first.max(1)..max {
            let (u2, v2) = self.step(kernel, v);
            let next = self.rayleigh(&u2, &v2, kernel);
            (u, v) = (u2, v2);
            let converged = (next - sigma).abs() <= CONVERGED * next.abs();
            sigma = next;
            if converged {
                break;
            }
        }
        (u, v)
    }

    /// One power-iteration step from `v`: `u = normalize(A v)`, `v = normalize(A^T u)`.
    fn step(&self, kernel: &Tensor<4>, v: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let [_, _, h, w] = v.dims();
        let u = unit(self.conv(v, kernel.clone()));
        let v = unit(self.adjoint(u.clone(), kernel.clone(), [h, w]));
        (u, v)
    }

    /// What the kernel is divided by in the forward pass: the certified bound with `certify`,
    /// else the current estimate (a diagnostic).
    pub fn divisor(&self, kernel: &Tensor<4>) -> f32 {
        match &self.bound {
            Some(bound) => bound.value().into_scalar::<f32>(),
            None => self.estimate(kernel),
        }
    }

    /// `<u, A v>` on the host.
    fn rayleigh(&self, u: &Tensor<4>, v: &Tensor<4>, kernel: &Tensor<4>) -> f64 {
        let s = (u.clone() * self.conv(v.clone(), kernel.clone())).sum();
        s.into_data()
            .convert::<f64>()
            .try_to_vec::<f64>()
            .expect("f64")[0]
    }

    /// `A_W x`: the convolution without bias, `[1, in, h, w] -> [1, out, oh, ow]`.
    pub fn conv(&self, x: Tensor<4>, kernel: Tensor<4>) -> Tensor<4> {
        conv2d(x, kernel, None, conv_options(self.stride, self.padding))
    }

    /// `A_W^T y`, back to `[1, in, size]`.
    pub fn adjoint(&self, y: Tensor<4>, kernel: Tensor<4>, size: [usize; 2]) -> Tensor<4> {
        conv_transpose2d(
            y,
            kernel.clone(),
            None,
            adjoint_options(&kernel, self.stride, self.padding, size),
        )
    }
}

/// Stride `s`, padding `p`, no dilation or groups.
pub fn conv_options(stride: usize, padding: usize) -> ConvOptions<2> {
    ConvOptions::new([stride; 2], [padding; 2], [1, 1], 1)
}

/// The transposed convolution that is the adjoint of the convolution with `kernel`, `stride`
/// and `padding` on inputs of `size`: the output padding `(size + 2p - k) mod s` restores the
/// input size (as Burn's own `conv2d_x_backward`).
pub fn adjoint_options(
    kernel: &Tensor<4>,
    stride: usize,
    padding: usize,
    size: [usize; 2],
) -> ConvTransposeOptions<2> {
    let [_, _, kh, kw] = kernel.dims();
    let out_pad = |i: usize| (size[i] + 2 * padding - [kh, kw][i]) % stride;
    ConvTransposeOptions::new(
        [stride; 2],
        [padding; 2],
        [out_pad(0), out_pad(1)],
        [1, 1],
        1,
    )
}

/// `x / max(||x||, 1e-12)` over all elements.
fn unit(x: Tensor<4>) -> Tensor<4> {
    let norm = x.clone().square().sum().sqrt().clamp_min(1e-12); // [1]
    x.div(norm.unsqueeze::<4>())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use burn::tensor::DType;
    use nalgebra::DMatrix;

    fn f64_values<const D: usize>(t: Tensor<D>) -> Vec<f64> {
        t.into_data().convert::<f64>().try_to_vec().unwrap()
    }

    /// The convolution (`stride`, zero `padding`) on `[in, size]` inputs written out as a
    /// dense matrix `[out*oh*ow, in*h*w]` in f64 (column j: the convolution of the j-th basis
    /// image), the independent truth for the operator norm and its bounds.
    pub(crate) fn dense_convolution(
        kernel: &Tensor<4>,
        size: [usize; 2],
        stride: usize,
        padding: usize,
    ) -> DMatrix<f64> {
        let [_, c_in, _, _] = kernel.dims();
        let n = c_in * size[0] * size[1];
        let device = kernel.device();
        let columns: Vec<Vec<f64>> = (0..n)
            .map(|j| {
                let mut e = vec![0.0f64; n];
                e[j] = 1.0;
                let x = Tensor::<4>::from_data(
                    TensorData::new(e, [1, c_in, size[0], size[1]]),
                    (&device, DType::F64),
                );
                let y = conv2d(x, kernel.clone(), None, conv_options(stride, padding));
                f64_values(y)
            })
            .collect();
        DMatrix::from_fn(columns[0].len(), n, |r, c| columns[c][r])
    }

    /// Layer shapes `(out, in, k, stride, padding, size)` the dense checks run on: stride 1
    /// and 2, padding 0 and 1, square and non-square channel counts, kernels 3 and 4.
    pub(crate) const DENSE_CASES: [(usize, usize, usize, usize, usize, usize); 5] = [
        (4, 4, 3, 1, 1, 6),
        (6, 3, 4, 2, 1, 8),
        (3, 5, 3, 2, 0, 7),
        (5, 2, 4, 1, 0, 6),
        (8, 8, 4, 2, 1, 6),
    ];

    /// Uniform in [-1, 1), from a generator seeded by the shape rather than the device's: the
    /// tests running beside these reseed and draw from the device's, which made the kernels
    /// (and the power iteration's convergence on them) change from run to run.
    fn kernel(shape: [usize; 4], device: &Device) -> Tensor<4> {
        use rand::{Rng, SeedableRng};
        let seed = shape.iter().fold(7u64, |h, &d| h * 31 + d as u64);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let values: Vec<f64> = (0..shape.iter().product::<usize>())
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        Tensor::<4>::from_data(TensorData::new(values, shape), (device, DType::F64))
    }

    /// After the warm-up, sigma equals the dense matrix's largest singular value within 1e-3
    /// (relative), for stride 1 and 2, padding 0 and 1, square and non-square channel counts,
    /// kernels 3 and 4; and the adjoint is the dense matrix's transpose (<A x, y> = <x, A^T y>).
    #[test]
    fn sigma_equals_the_largest_singular_value_of_the_dense_convolution() {
        let device = Device::flex();
        device.seed(7);
        for (c_out, c_in, k, stride, padding, size) in DENSE_CASES {
            let w = kernel([c_out, c_in, k, k], &device);
            let norm = OperatorNorm::new(&w, [size, size], stride, padding, 1, true, false);
            let exact = dense_convolution(&w, [size, size], stride, padding)
                .singular_values()
                .max();
            let estimate = norm.estimate(&w) as f64;
            let case = format!("{c_out}x{c_in}x{k} s{stride} p{padding} on {size}");
            assert!(
                (estimate - exact).abs() <= 1e-3 * exact,
                "{case}: {estimate} vs SVD {exact}"
            );
            let x = kernel([1, c_in, size, size], &device);
            let y = norm.conv(x.clone(), w.clone());
            let y = Tensor::<4>::random(y.shape(), Distribution::Normal(0.0, 1.0), &device)
                .cast(DType::F64);
            let lhs = f64_values((norm.conv(x.clone(), w.clone()) * y.clone()).sum())[0];
            let rhs = f64_values((x * norm.adjoint(y, w.clone(), [size, size])).sum())[0];
            assert!(
                (lhs - rhs).abs() < 1e-9 * (1.0 + lhs.abs()),
                "{case}: adjoint"
            );
        }
    }

    /// d sigma / dW (autodiff, u and v held) equals central finite differences of
    /// `<u, A_W v>` in f64.
    #[test]
    fn sigma_gradient_equals_finite_differences() {
        let device = Device::flex();
        device.seed(8);
        let w = kernel([3, 2, 4, 4], &device);
        let norm = OperatorNorm::new(&w, [6, 6], 2, 1, 1, true, false).valid(); // no refinement
        let ad = device.clone().autodiff();
        let w_ad = Tensor::<4>::from_data(w.to_data(), (&ad, DType::F64)).require_grad();
        let sigma = norm.sigma(w_ad.clone());
        let grad = f64_values(w_ad.grad(&sigma.backward()).unwrap());
        let values = f64_values(w.clone());
        let h = 1e-6;
        for i in [0, 5, 17, 40, 95] {
            let at = |d: f64| {
                let mut v = values.clone();
                v[i] += d;
                let t =
                    Tensor::<4>::from_data(TensorData::new(v, [3, 2, 4, 4]), (&device, DType::F64));
                f64_values(norm.sigma(t))[0]
            };
            let fd = (at(h) - at(-h)) / (2.0 * h);
            assert!(
                (grad[i] - fd).abs() < 1e-7,
                "element {i}: {} vs {fd}",
                grad[i]
            );
        }
    }
}

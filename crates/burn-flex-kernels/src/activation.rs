//! LeakyReLU and tanh on Flex in one pass forward and one backward.
//!
//! Burn builds `leaky_relu` from three tensor ops (a comparison, a scaling and a `mask_where`),
//! and autodiff differentiates each: five passes over every critic activation per step, which
//! made `mask_where` 6-7% of a training step's profile. Here a backend extension ([`Fused`],
//! implemented for Flex and `Autodiff<Flex>`) does `y = x > 0 ? x : slope x` in one pass and its
//! backward `dx = y > 0 ? dy : slope dy` in another (for a positive slope y > 0 exactly where
//! x > 0, so the backward keeps y, which the next layer holds anyway). [`leaky_relu`] takes this
//! path on Flex with f32 and Burn's own op elsewhere.
//!
//! [`tanh`] (the generator's output) likewise: Flex evaluates libm's `tanhf` element by
//! element (1.7% of a 64x64 training step, in `expm1f`), and Burn's backward evaluates it
//! again and then takes four more passes for `dy (1 - y^2)`. Here [`tanh_f32`] is
//! branch-free, so that its loop vectorizes (AVX-512 / AVX2 chosen at run time), and the
//! backward is one pass over the kept output.

use crate::flex::{self, contiguous, tensor, values};
use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::{Flex, FlexTensor};
use burn::backend::tensor::FloatTensor;
use burn::backend::{AutodiffBackend, Dispatch, backend_extension};
use burn::prelude::*;
use rayon::prelude::*;

/// Elements per parallel task.
const TASK: usize = 1 << 16;

/// Fused LeakyReLU; see the module documentation.
#[backend_extension(Autodiff, Flex)]
pub trait Fused: burn::backend::Backend {
    /// `x > 0 ? x : slope x`, element-wise; `slope` must be positive.
    fn fused_leaky_relu(x: FloatTensor<Self>, slope: f64) -> FloatTensor<Self>;

    /// The gradient of [`fused_leaky_relu`](Self::fused_leaky_relu) from its output `y` (or
    /// its input: same sign): `y > 0 ? dy : slope dy`. Differentiable in `dy` (a product with
    /// a mask that is constant almost everywhere); `y` is taken as a constant.
    fn fused_leaky_relu_backward(
        y: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        slope: f64,
    ) -> FloatTensor<Self>;

    /// `tanh(x)`, element-wise ([`tanh_f32`]).
    fn fused_tanh(x: FloatTensor<Self>) -> FloatTensor<Self>;

    /// The gradient of [`fused_tanh`](Self::fused_tanh) from its output `y`: `dy (1 - y^2)`,
    /// as Burn's and PyTorch's tanh backward. Not differentiable.
    fn fused_tanh_backward(y: FloatTensor<Self>, dy: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// `tanh(x)` in f32 without a call into libm, so that loops over it vectorize: Cephes'
/// `tanhf` (its odd polynomial below |x| = 0.625, `1 - 2 / (e^2|x| + 1)` above, with the sign
/// of x), with `e^y` as Cephes' `expf` (y = n ln 2 + r, a degree-6 polynomial in r, times 2^n
/// built in the exponent bits). |x| is clamped at 10, past which tanh rounds to 1 in f32; NaN
/// stays NaN, -0 stays -0. Within 2 ulp of the exact value (tested against f64 on a million points).
/// Written by hand: the vectorizable math crates (sleef) need nightly Rust.
#[inline(always)]
pub fn tanh_f32(x: f32) -> f32 {
    let a = x.abs();
    // `if` rather than `min`, which would turn NaN into 10.
    let y = 2.0 * if a > 10.0 { 10.0 } else { a };
    // n = round(y / ln 2) (the 1.5 * 2^23 shift rounds to nearest), r = y - n ln 2.
    const SHIFT: f32 = 12_582_912.0;
    let n = (y * std::f32::consts::LOG2_E + SHIFT) - SHIFT;
    let r = y - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = (((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2)
        * r
        + 1.666_666_5e-1)
        * r
        + 5.000_000_1e-1)
        * (r * r)
        + r
        + 1.0;
    let e = p * f32::from_bits(((n as i32 + 127) << 23) as u32); // e^y, y <= 20
    let large = 1.0 - 2.0 / (e + 1.0);
    let z = x * x;
    let small =
        ((((-5.704_988_7e-3 * z + 2.063_908_9e-2) * z - 5.373_971_6e-2) * z + 1.333_144_2e-1) * z
            - 3.333_328_2e-1)
            * z
            * x
            + x;
    (if a < 0.625 { small } else { large }).copysign(x)
}

widest! {
    /// `out[i] = tanh(x[i])`.
    fn tanh_slice(x: &[f32], out: &mut [f32]) {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = tanh_f32(v);
        }
    }
}

widest! {
    /// `out[i] = dy[i] (1 - y[i]^2)`.
    fn tanh_backward_slice(y: &[f32], dy: &[f32], out: &mut [f32]) {
        for ((o, &y), &g) in out.iter_mut().zip(y).zip(dy) {
            *o = g * (1.0 - y * y);
        }
    }
}

/// `f` over tasks of [`TASK`] elements of two equally shaped Flex tensors, into a new one.
fn map_slices(a: &FlexTensor, b: &FlexTensor, f: fn(&[f32], &[f32], &mut [f32])) -> FlexTensor {
    let (a, b) = (contiguous(a), contiguous(b));
    let (xa, xb) = (values(&a), values(&b));
    assert_eq!(xa.len(), xb.len());
    let mut out = vec![0.0; xa.len()];
    out.par_chunks_mut(TASK)
        .zip(xa.par_chunks(TASK).zip(xb.par_chunks(TASK)))
        .for_each(|(o, (a, b))| f(a, b, o));
    tensor(out, a.layout().shape().clone())
}

/// `out[i] = f(a[i], b[i])` over two equally shaped Flex tensors (or one, `b = a`).
fn map2(a: &FlexTensor, b: &FlexTensor, f: impl Fn(f32, f32) -> f32 + Sync) -> FlexTensor {
    let (a, b) = (contiguous(a), contiguous(b));
    let (xa, xb) = (values(&a), values(&b));
    assert_eq!(xa.len(), xb.len());
    // Collected straight into the output (no zeroed buffer first), in tasks of TASK elements.
    let out: Vec<f32> = xa
        .par_iter()
        .zip(xb)
        .with_min_len(TASK)
        .map(|(a, b)| f(*a, *b))
        .collect();
    tensor(out, a.layout().shape().clone())
}

impl Fused for Flex {
    fn fused_leaky_relu(x: FlexTensor, slope: f64) -> FlexTensor {
        let slope = slope as f32;
        map2(&x, &x, move |v, _| v * if v > 0.0 { 1.0 } else { slope })
    }

    fn fused_leaky_relu_backward(y: FlexTensor, dy: FlexTensor, slope: f64) -> FlexTensor {
        let slope = slope as f32;
        map2(&y, &dy, move |y, g| g * if y > 0.0 { 1.0 } else { slope })
    }

    fn fused_tanh(x: FlexTensor) -> FlexTensor {
        map_slices(&x, &x, |x, _, out| tanh_slice(x, out))
    }

    fn fused_tanh_backward(y: FlexTensor, dy: FlexTensor) -> FlexTensor {
        map_slices(&y, &dy, tanh_backward_slice)
    }
}

/// Backward of [`Fused::fused_tanh`]: one parent, state the output `y`.
#[derive(Debug)]
struct TanhBackward;

impl<B: Fused> Backward<B, 1> for TanhBackward {
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let dy = grads.consume::<B>(&ops.node);
        if let Some(node) = node {
            grads.register::<B>(node.id, B::fused_tanh_backward(ops.state, dy));
        }
    }
}

/// Backward of both fused ops, each a product with the same mask: of
/// [`Fused::fused_leaky_relu`] in its input and of [`Fused::fused_leaky_relu_backward`] in
/// `dy`. One parent; the gradient is the mask of `y` applied again.
#[derive(Debug)]
struct LeakyReluBackward;

impl<B: Fused> Backward<B, 1> for LeakyReluBackward {
    /// `(y: the forward's output, or the masked op's y; slope)`.
    type State = (FloatTensor<B>, f64);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let dy = grads.consume::<B>(&ops.node);
        let (y, slope) = ops.state;
        if let Some(node) = node {
            grads.register::<B>(node.id, B::fused_leaky_relu_backward(y, dy, slope));
        }
    }
}

impl<B: Fused, C: CheckpointStrategy> Fused for Autodiff<B, C> {
    fn fused_leaky_relu(x: FloatTensor<Self>, slope: f64) -> FloatTensor<Self> {
        match LeakyReluBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = B::fused_leaky_relu(x.into_primitive(), slope);
                prep.finish((y.clone(), slope), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_leaky_relu(x.into_primitive(), slope)),
        }
    }

    fn fused_leaky_relu_backward(
        y: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        slope: f64,
    ) -> FloatTensor<Self> {
        let y = Self::inner(y);
        match LeakyReluBackward
            .prepare::<C>([dy.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let out = B::fused_leaky_relu_backward(y.clone(), dy.into_primitive(), slope);
                prep.finish((y, slope), out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::fused_leaky_relu_backward(y, dy.into_primitive(), slope))
            }
        }
    }

    fn fused_tanh(x: FloatTensor<Self>) -> FloatTensor<Self> {
        match TanhBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = B::fused_tanh(x.into_primitive());
                prep.finish(y.clone(), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_tanh(x.into_primitive())),
        }
    }

    fn fused_tanh_backward(y: FloatTensor<Self>, dy: FloatTensor<Self>) -> FloatTensor<Self> {
        let (y, dy) = (Self::inner(y), Self::inner(dy));
        Self::from_inner(B::fused_tanh_backward(y, dy))
    }
}

/// `burn::tensor::activation::tanh` on Flex (f32) as [`tanh_f32`], with a one-pass backward;
/// Burn's own op elsewhere.
pub fn tanh<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if !flex::applies(&x) {
        return burn::tensor::activation::tanh(x);
    }
    Tensor::from_dispatch(Dispatch::fused_tanh(x.into_dispatch()))
}

/// `burn::tensor::activation::leaky_relu`, fused on Flex (f32, positive slope).
pub fn leaky_relu<const D: usize>(x: Tensor<D>, slope: f64) -> Tensor<D> {
    if slope <= 0.0 || !flex::applies(&x) {
        return burn::tensor::activation::leaky_relu(x, slope);
    }
    Tensor::from_dispatch(Dispatch::fused_leaky_relu(x.into_dispatch(), slope))
}

/// `dy * leaky_relu'(a)` (`dy` where `a > 0`, else `slope dy`) with the derivative taken
/// as a constant: one fused pass on Flex (f32, positive slope), Burn's ops elsewhere.
/// Differentiable in `dy`, so the gradient penalty's input-gradient network runs through it.
pub fn leaky_relu_backward<const D: usize>(a: Tensor<D>, dy: Tensor<D>, slope: f64) -> Tensor<D> {
    if slope <= 0.0 || !flex::applies(&dy) {
        let a = a.detach();
        return dy * Tensor::ones_like(&a).mask_fill(a.lower_equal_elem(0.0), slope);
    }
    let (a, dy) = (a.detach().into_dispatch(), dy.into_dispatch());
    Tensor::from_dispatch(Dispatch::fused_leaky_relu_backward(a, dy, slope))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    /// Values and gradients equal Burn's `leaky_relu` on Flex with autodiff, including the
    /// gradient of a loss that uses the activation twice.
    #[test]
    fn matches_burn_leaky_relu_values_and_gradients() {
        let device = Device::flex().autodiff();
        device.seed(4);
        crate::testing::check_leaky_relu([3, 5, 7, 9], &device);
    }

    /// The vectorized tanh is within 2 ulp of f64's on a million points of [-12, 12] (and
    /// as many of [-1e-3, 1e-3]), is odd, gives ±0, ±1 at ±inf and NaN at NaN.
    #[test]
    fn tanh_is_within_two_ulp_of_the_exact_value() {
        println!("CPU: {}", crate::simd_level());
        const N: usize = 1 << 19;
        let xs: Vec<f32> = (0..N)
            .flat_map(|i| {
                let t = i as f32 / N as f32;
                [12.0 * t, -12.0 * t, 1e-3 * t, -1e-3 * t]
            })
            .collect();
        let mut ys = vec![0.0; xs.len()];
        tanh_slice(&xs, &mut ys);
        let mut worst = (0.0f64, 0.0f32);
        for (&x, &y) in xs.iter().zip(&ys) {
            let exact = (x as f64).tanh();
            let near = (exact as f32).abs();
            let ulp = (f32::from_bits(near.to_bits() + 1) - near) as f64;
            let err = (y as f64 - exact).abs() / ulp;
            if err > worst.0 {
                worst = (err, x);
            }
        }
        assert!(worst.0 <= 2.0, "{} ulp at x = {}", worst.0, worst.1);
        let special = [
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            1e-30,
            -1e-40,
        ];
        let mut out = [0.0; 7];
        tanh_slice(&special, &mut out);
        assert_eq!(out[0].to_bits(), 0.0f32.to_bits());
        assert_eq!(out[1].to_bits(), (-0.0f32).to_bits());
        assert_eq!(&out[2..4], &[1.0, -1.0]);
        assert!(out[4].is_nan());
        assert_eq!(&out[5..], &[1e-30, -1e-40]);
    }

    /// Values and gradients equal Burn's `tanh` on Flex with autodiff (a loss that uses
    /// the output twice), and the backward is exactly `dy (1 - y^2)`.
    #[test]
    fn tanh_matches_burn_tanh_values_and_gradients() {
        let device = Device::flex().autodiff();
        device.seed(6);
        crate::testing::check_tanh([3, 5, 7, 9], &device);
        let normal = Distribution::Normal(0.0, 1.0);
        let y = tanh(Tensor::<4>::random([2, 3, 4, 5], normal, &device)).inner();
        let dy = Tensor::<4>::random([2, 3, 4, 5], normal, &device).inner();
        let ours = Tensor::<4>::from_dispatch(Dispatch::fused_tanh_backward(
            y.clone().into_dispatch(),
            dy.clone().into_dispatch(),
        ));
        let expected = dy * (y.clone() * y).neg().add_scalar(1.0);
        ours.into_data().assert_eq(&expected.into_data(), true);
    }

    /// `leaky_relu_backward(a, dy)` equals `dy * leaky_relu'(a)` written with Burn's ops, in
    /// value and in the gradient of a loss on it with respect to `dy` (the gradient penalty's
    /// use), and is exactly the mask: `dy` where `a > 0`, `0.2 dy` elsewhere.
    #[test]
    fn masked_gradient_matches_burn_ops_and_is_differentiable_in_dy() {
        let device = Device::flex().autodiff();
        device.seed(5);
        let normal = Distribution::Normal(0.0, 1.0);
        let a = Tensor::<4>::random([2, 3, 5, 7], normal, &device);
        let dy = Tensor::<4>::random([2, 3, 5, 7], normal, &device);
        let run = |ours: bool| {
            let dy = dy.clone().require_grad();
            let h = if ours {
                leaky_relu_backward(a.clone(), dy.clone(), 0.2)
            } else {
                let mask = Tensor::ones_like(&a).mask_fill(a.clone().lower_equal_elem(0.0), 0.2);
                dy.clone() * mask
            };
            let loss = (h.clone() * h.clone().sin()).sum();
            let grad = dy.grad(&loss.backward()).unwrap();
            (h.inner(), grad)
        };
        let ((h, gh), (k, gk)) = (run(true), run(false));
        let expected = dy.clone().inner().mask_where(
            a.clone().inner().lower_equal_elem(0.0),
            dy.clone().inner() * 0.2,
        );
        h.clone().into_data().assert_eq(&expected.into_data(), true);
        h.into_data()
            .assert_approx_eq::<f32>(&k.into_data(), Default::default());
        gh.into_data()
            .assert_approx_eq::<f32>(&gk.into_data(), Default::default());
    }
}

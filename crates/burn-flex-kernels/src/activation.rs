//! LeakyReLU on Flex in one pass forward and one backward.
//!
//! Burn builds `leaky_relu` from three tensor ops (a comparison, a scaling and a `mask_where`),
//! and autodiff differentiates each: five passes over every critic activation per step, which
//! made `mask_where` 6-7% of a training step's profile. Here a backend extension ([`Fused`],
//! implemented for Flex and `Autodiff<Flex>`) does `y = x > 0 ? x : slope x` in one pass and its
//! backward `dx = y > 0 ? dy : slope dy` in another (for a positive slope y > 0 exactly where
//! x > 0, so the backward keeps y, which the next layer holds anyway). [`leaky_relu`] takes this
//! path on Flex with f32 and Burn's own op elsewhere.

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

//! Training-mode BatchNorm on Flex in two passes forward and two backward.
//!
//! Burn's `batch_norm_train` is, on Flex, its backend-generic decomposition: the batch
//! statistics through a transposed copy of the activation, then the normalization through
//! Burn's inference `batch_norm`, and a backward of the same shape, about eight passes over
//! every generator activation each way (the generator runs six times per iteration). Here a
//! backend extension ([`FusedBatchNorm`], for Flex and `Autodiff<Flex>`) takes one pass for the
//! per-channel mean and biased variance (f64 sums) and one for `y = x * scale + shift`;
//! backward, one pass for `sum(dy)` and `sum(dy * x_hat)` per channel and one for
//! `dx = gamma / std * (dy - mean(dy) - x_hat * mean(dy * x_hat))`. [`forward`] is
//! `BatchNorm::forward` with this op in its training path on Flex (the same running-statistics
//! update), and Burn's module everywhere else.

use crate::flex::{self, contiguous, tensor, values};
use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::{Flex, FlexTensor};
use burn::backend::tensor::FloatTensor;
use burn::backend::{AutodiffBackend, Dispatch, TensorMetadata, backend_extension};
use burn::nn::BatchNorm;
use burn::prelude::*;
use rayon::prelude::*;

/// Fused training-mode BatchNorm; see the module documentation.
#[backend_extension(Autodiff, Flex)]
pub trait FusedBatchNorm: burn::backend::Backend {
    /// `x [B, C, ...]`, `gamma`, `beta` `[C]` -> (`y` like `x`, `[2, C]` batch mean and biased
    /// variance). `y` is differentiable in `x`, `gamma` and `beta`; the statistics are not.
    fn fused_batch_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// Gradients of `y` for the upstream `dy`: `[dx, dgamma, dbeta]`, from the statistics
    /// `[2, C]` of the forward pass. Not differentiable.
    fn fused_batch_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

/// `[batch, channels, per-channel elements per image]` of a `[B, C, ...]` shape.
fn split(t: &FlexTensor) -> (usize, usize, usize) {
    let shape = t.shape();
    let (b, c) = (shape[0], shape[1]);
    (b, c, shape.num_elements() / (b * c).max(1))
}

/// Per channel `(sum f(i), sum g(i))` over the batch, f64, channels in parallel.
fn channel_sums(
    (b, c, hw): (usize, usize, usize),
    f: impl Fn(usize) -> (f64, f64) + Sync,
) -> Vec<(f64, f64)> {
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let (mut s, mut t) = (0.0, 0.0);
            for bi in 0..b {
                for i in (bi * c + ch) * hw..(bi * c + ch + 1) * hw {
                    let (a, d) = f(i);
                    s += a;
                    t += d;
                }
            }
            (s, t)
        })
        .collect()
}

impl FusedBatchNorm for Flex {
    fn fused_batch_norm(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        epsilon: f64,
    ) -> (FlexTensor, FlexTensor) {
        let [x, gamma, beta] = [x, gamma, beta].map(|t| contiguous(&t));
        let (dims, xs) = (split(&x), values(&x));
        let (_, c, hw) = dims;
        let n = (xs.len() / c.max(1)) as f64;
        let sums = channel_sums(dims, |i| (xs[i] as f64, (xs[i] as f64).powi(2)));
        let mean: Vec<f64> = sums.iter().map(|(s, _)| s / n).collect();
        let var: Vec<f64> = sums
            .iter()
            .zip(&mean)
            .map(|((_, t), m)| (t / n - m * m).max(0.0))
            .collect();
        let (g, bt) = (values(&gamma), values(&beta));
        let scale: Vec<f32> = (0..c)
            .map(|k| (g[k] as f64 / (var[k] + epsilon).sqrt()) as f32)
            .collect();
        let shift: Vec<f32> = (0..c)
            .map(|k| bt[k] - (mean[k] as f32) * scale[k])
            .collect();
        let mut y = vec![0.0f32; xs.len()];
        y.par_chunks_mut(hw)
            .zip(xs.par_chunks(hw))
            .enumerate()
            .for_each(|(i, (out, inp))| {
                let (a, b) = (scale[i % c], shift[i % c]);
                out.iter_mut().zip(inp).for_each(|(o, v)| *o = v * a + b);
            });
        let stats: Vec<f32> = mean.iter().chain(&var).map(|v| *v as f32).collect();
        (tensor(y, x.shape()), tensor(stats, Shape::new([2, c])))
    }

    fn fused_batch_norm_backward(
        x: FlexTensor,
        gamma: FlexTensor,
        stats: FlexTensor,
        dy: FlexTensor,
        epsilon: f64,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let [x, gamma, stats, dy] = [x, gamma, stats, dy].map(|t| contiguous(&t));
        let (dims, xs, gs) = (split(&x), values(&x), values(&dy));
        let (_, c, hw) = dims;
        let n = (xs.len() / c.max(1)) as f64;
        let (mean, var) = values(&stats).split_at(c);
        let inv_std: Vec<f64> = var
            .iter()
            .map(|v| 1.0 / (*v as f64 + epsilon).sqrt())
            .collect();
        let channel = |i: usize| (i / hw) % c;
        let x_hat = |i: usize| (xs[i] as f64 - mean[channel(i)] as f64) * inv_std[channel(i)];
        let sums = channel_sums(dims, |i| (gs[i] as f64, gs[i] as f64 * x_hat(i)));
        let g = values(&gamma);
        let mut dx = vec![0.0f32; xs.len()];
        dx.par_chunks_mut(hw).enumerate().for_each(|(p, out)| {
            let k = p % c;
            let (sum_g, sum_gx) = sums[k];
            let scale = g[k] as f64 * inv_std[k];
            let (mg, mgx) = (sum_g / n, sum_gx / n);
            for (j, o) in out.iter_mut().enumerate() {
                let i = p * hw + j;
                *o = (scale * (gs[i] as f64 - mg - x_hat(i) * mgx)) as f32;
            }
        });
        let dgamma = sums.iter().map(|(_, t)| *t as f32).collect();
        let dbeta = sums.iter().map(|(s, _)| *s as f32).collect();
        (
            tensor(dx, x.shape()),
            tensor(dgamma, Shape::new([c])),
            tensor(dbeta, Shape::new([c])),
        )
    }
}

#[derive(Debug)]
struct BatchNormBackward;

impl<B: FusedBatchNorm> Backward<B, 3> for BatchNormBackward {
    /// `(x, gamma, stats, epsilon)`.
    type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, f64);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let dy = grads.consume::<B>(&ops.node);
        let (x, gamma, stats, epsilon) = ops.state;
        let (dx, dgamma, dbeta) = B::fused_batch_norm_backward(x, gamma, stats, dy, epsilon);
        for (node, grad) in [(node_x, dx), (node_gamma, dgamma), (node_beta, dbeta)] {
            if let Some(node) = node {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

impl<B: FusedBatchNorm, C: CheckpointStrategy> FusedBatchNorm for Autodiff<B, C> {
    fn fused_batch_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let nodes = [x.node(), gamma.node(), beta.node()];
        let (x, gamma, beta) = (
            x.into_primitive(),
            gamma.into_primitive(),
            beta.into_primitive(),
        );
        match BatchNormBackward
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (y, stats) = B::fused_batch_norm(x.clone(), gamma.clone(), beta, epsilon);
                let state = (x, gamma, stats.clone(), epsilon);
                (prep.finish(state, y), Self::from_inner(stats))
            }
            OpsKind::UnTracked(prep) => {
                let (y, stats) = B::fused_batch_norm(x, gamma, beta, epsilon);
                (prep.finish(y), Self::from_inner(stats))
            }
        }
    }

    fn fused_batch_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let [x, gamma, stats, dy] = [x, gamma, stats, dy].map(Self::inner);
        let (dx, dgamma, dbeta) = B::fused_batch_norm_backward(x, gamma, stats, dy, epsilon);
        (
            Self::from_inner(dx),
            Self::from_inner(dgamma),
            Self::from_inner(dbeta),
        )
    }
}

/// `norm.forward(x)` for `x` `[B, C, H, W]` with PyTorch's running statistics: in training
/// (autodiff device, training flag set) the batch's mean and biased variance normalize `x`,
/// and `running = (1 - momentum) running + momentum batch` takes the *unbiased* variance
/// (`n / (n - 1)` times the biased one, `n = B H W`), as `torch.nn.BatchNorm2d` does; Burn's
/// own `BatchNorm` keeps the biased one. The fused op serves Flex; elsewhere the same
/// normalization is written with tensor ops. In inference, Burn's module (running statistics).
pub fn forward(norm: &BatchNorm, x: Tensor<4>) -> Tensor<4> {
    let training = x.device().is_autodiff() && norm.training.is_enabled();
    if !training {
        return norm.forward(x);
    }
    let [b, _, h, w] = x.dims();
    let (y, mean, var) = if flex::applies(&x) {
        fused(norm, x)
    } else {
        composed(norm, x)
    };
    let n = (b * h * w) as f64;
    let unbiased = var.mul_scalar(n / (n - 1.0).max(1.0));
    let m = norm.momentum;
    let device = y.device();
    let running_mean = norm.running_mean.value_sync().to_device(&device);
    let running_var = norm.running_var.value_sync().to_device(&device);
    let running_mean = running_mean.mul_scalar(1.0 - m).add(mean.mul_scalar(m));
    let running_var = running_var.mul_scalar(1.0 - m).add(unbiased.mul_scalar(m));
    norm.running_mean.update(running_mean.detach());
    norm.running_var.update(running_var.detach());
    y
}

/// The fused Flex op: (`y`, batch mean `[C]`, biased batch variance `[C]`).
fn fused(norm: &BatchNorm, x: Tensor<4>) -> (Tensor<4>, Tensor<1>, Tensor<1>) {
    let (y, stats) = Dispatch::fused_batch_norm(
        x.into_dispatch(),
        norm.gamma.val().into_dispatch(),
        norm.beta.val().into_dispatch(),
        norm.epsilon,
    );
    let stats = Tensor::<2>::from_dispatch(stats).detach(); // [2, C]
    let c = stats.dims()[1];
    let mean = stats.clone().slice(0..1).reshape([c]);
    let var = stats.slice(1..2).reshape([c]);
    (Tensor::from_dispatch(y), mean, var)
}

/// Training-mode BatchNorm with tensor ops (any backend): as [`fused`].
pub(crate) fn composed(norm: &BatchNorm, x: Tensor<4>) -> (Tensor<4>, Tensor<1>, Tensor<1>) {
    let [_, c, _, _] = x.dims();
    let mean = x.clone().mean_dim(0).mean_dim(2).mean_dim(3); // [1, C, 1, 1]
    let centered = x - mean.clone();
    let var = centered
        .clone()
        .square()
        .mean_dim(0)
        .mean_dim(2)
        .mean_dim(3); // [1, C, 1, 1]
    let std = var.clone().add_scalar(norm.epsilon).sqrt();
    let gamma = norm.gamma.val().reshape([1, c, 1, 1]);
    let beta = norm.beta.val().reshape([1, c, 1, 1]);
    let y = centered.div(std).mul(gamma).add(beta); // [B, C, H, W]
    (y, mean.reshape([c]).detach(), var.reshape([c]).detach())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On Flex with autodiff, output, input/gamma/beta gradients and the running mean after two
    /// training forwards equal Burn's BatchNorm, for the fused op and the composed one; the
    /// running variance is PyTorch's: Burn's biased update with every batch variance scaled by
    /// n / (n - 1), i.e. `ours - 0.81 = n / (n - 1) (burn - 0.81)` from the initial 1.
    #[test]
    fn matches_burn_batch_norm_training_and_pytorch_running_variance() {
        let device = Device::flex().autodiff();
        device.seed(7);
        crate::testing::check_batch_norm([5, 3, 6, 7], &device);
    }
}

//! The 3x3 pools of the FID Inception on Flex, each in two separable passes per plane: the
//! average pool (stride 1, padding 1, padding left out of the count) and the max pools
//! (stride 2 without padding, stride 1 with padding 1).
//!
//! Flex runs `avg_pool2d` through its generic 3-D pooling loop, which took 10-13% of an
//! Inception forward pass (`perf`, 299x299 inputs). With stride 1 and a centred 3x3 window the
//! pool is a box sum (three shifted row adds, then three shifted column adds, each a
//! contiguous slice operation that vectorizes) divided by the window's size inside the plane
//! (9 inside, 6 on an edge, 4 in a corner). The box sum is its own adjoint, so the gradient is
//! the box sum of `dy / count`. A backend extension ([`BoxPool`], Flex and `Autodiff<Flex>`);
//! [`avg_pool_3x3`] takes this path on Flex with f32 and Burn's `avg_pool2d` elsewhere.
//!
//! Flex's `max_pool2d` goes through its 3-D pooling loop that also records the argmax indices:
//! 16% of an Inception forward pass (`perf`, 1 thread). A 3x3 max is separable too (a row
//! max, then a column max); [`max_pool_3x3`] takes that path on Flex without autodiff (FID
//! never differentiates through the Inception) and Burn's `max_pool2d` elsewhere.
//!
//! Written by hand: a 3x3 box filter or max is a few lines, and no maintained crate offers it on
//! Burn's tensors.

use crate::flex::{self, contiguous, tensor, values};
use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::{Flex, FlexTensor};
use burn::backend::ops::ModuleOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Dispatch, TensorMetadata, backend_extension};
use burn::prelude::*;
use rayon::prelude::*;

/// The Inception's 3x3 pools: the stride 1, padding 1 average pool without the padding in the
/// count, and the max pools.
#[backend_extension(Autodiff, Flex)]
pub trait BoxPool: burn::backend::Backend {
    /// `x [B, C, H, W]` -> `[B, C, H, W]`: the pool (`adjoint` false), or its adjoint, the box
    /// sum of `x / count` (`adjoint` true), which is the pool's input gradient.
    fn box_pool_3x3(x: FloatTensor<Self>, adjoint: bool) -> FloatTensor<Self>;

    /// `x [B, C, H, W]` -> `[B, C, (H + 2 pad - 3) / stride + 1, (W + 2 pad - 3) / stride + 1]`:
    /// the 3x3 max pool (padding never wins).
    fn max_pool_3x3(x: FloatTensor<Self>, stride: usize, pad: usize) -> FloatTensor<Self>;
}

/// Output length of a 3-wide window with `stride` over `n` cells padded by `pad` on each side.
fn pooled_len(n: usize, stride: usize, pad: usize) -> usize {
    (n + 2 * pad - 3) / stride + 1
}

/// The 3x3 max pool of one `h x w` plane into `dst [oh, ow]`: a row pass, then a column pass.
/// NaN does not propagate (`f32::max`); the Inception's inputs are finite.
fn max_plane(src: &[f32], dst: &mut [f32], (h, w): (usize, usize), stride: usize, pad: usize) {
    let (oh, ow) = (pooled_len(h, stride, pad), pooled_len(w, stride, pad));
    // The input index read by output `o` at window offset `k`, if inside `0..n`.
    let at = |o: usize, k: usize, n: usize| (o * stride + k).checked_sub(pad).filter(|&i| i < n);
    // Rows: tmp[i, o] = max over k of src[i, o*stride + k - pad].
    let mut tmp = vec![f32::NEG_INFINITY; h * ow];
    for (line, t) in src.chunks_exact(w).zip(tmp.chunks_exact_mut(ow)) {
        for (o, t) in t.iter_mut().enumerate() {
            for k in 0..3 {
                if let Some(j) = at(o, k, w) {
                    *t = t.max(line[j]);
                }
            }
        }
    }
    // Columns: dst[o, :] = max over k of tmp[o*stride + k - pad, :].
    for (o, line) in dst.chunks_exact_mut(ow).enumerate().take(oh) {
        line.fill(f32::NEG_INFINITY);
        for k in 0..3 {
            if let Some(i) = at(o, k, h) {
                for (d, t) in line.iter_mut().zip(&tmp[i * ow..][..ow]) {
                    *d = d.max(*t);
                }
            }
        }
    }
}

/// `1 / (cells of a 3-wide window centred on i that lie in 0..n)` for every `i` in `0..n`.
fn inverse_counts(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| 1.0 / (1 + usize::from(i > 0) + usize::from(i + 1 < n)) as f32)
        .collect()
}

/// `dst[j] = src[j-1] + src[j] + src[j+1]` (terms outside the slice left out).
fn add3(src: &[f32], dst: &mut [f32]) {
    let n = src.len();
    dst.copy_from_slice(src);
    if n > 1 {
        for (d, s) in dst[1..].iter_mut().zip(&src[..n - 1]) {
            *d += s;
        }
        for (d, s) in dst[..n - 1].iter_mut().zip(&src[1..]) {
            *d += s;
        }
    }
}

/// The pool (or its adjoint) of one `h x w` plane.
fn pool_plane(src: &[f32], dst: &mut [f32], (h, w): (usize, usize), adjoint: bool) {
    let (inv_r, inv_c) = (inverse_counts(h), inverse_counts(w));
    let mut tmp = vec![0.0f32; h * w];
    let mut scaled = Vec::new();
    let src = if adjoint {
        // dy / count first: the box sum is its own adjoint.
        scaled.extend(
            src.chunks_exact(w)
                .zip(&inv_r)
                .flat_map(|(line, r)| line.iter().zip(&inv_c).map(move |(v, c)| v * r * c)),
        );
        &scaled[..]
    } else {
        src
    };
    // Rows: tmp[i, j] = src[i, j-1] + src[i, j] + src[i, j+1].
    for (s, t) in src.chunks_exact(w).zip(tmp.chunks_exact_mut(w)) {
        add3(s, t);
    }
    // Columns: dst[i, :] = tmp[i-1, :] + tmp[i, :] + tmp[i+1, :].
    for i in 0..h {
        let line = &mut dst[i * w..][..w];
        line.copy_from_slice(&tmp[i * w..][..w]);
        for r in [i.wrapping_sub(1), i + 1] {
            if r < h {
                for (d, s) in line.iter_mut().zip(&tmp[r * w..][..w]) {
                    *d += s;
                }
            }
        }
        if !adjoint {
            let r = inv_r[i];
            for (d, c) in line.iter_mut().zip(&inv_c) {
                *d *= r * c;
            }
        }
    }
}

impl BoxPool for Flex {
    fn box_pool_3x3(x: FlexTensor, adjoint: bool) -> FlexTensor {
        let x = contiguous(&x);
        let shape = x.shape();
        let (h, w) = (shape[2], shape[3]);
        let src = values(&x);
        let mut out = vec![0.0f32; src.len()];
        if h * w > 0 {
            out.par_chunks_mut(h * w)
                .zip(src.par_chunks(h * w))
                .for_each(|(d, s)| pool_plane(s, d, (h, w), adjoint));
        }
        tensor(out, shape)
    }

    fn max_pool_3x3(x: FlexTensor, stride: usize, pad: usize) -> FlexTensor {
        let x = contiguous(&x);
        let shape = x.shape();
        let (b, c, h, w) = (shape[0], shape[1], shape[2], shape[3]);
        let (oh, ow) = (pooled_len(h, stride, pad), pooled_len(w, stride, pad));
        let src = values(&x);
        let mut out = vec![0.0f32; b * c * oh * ow];
        if oh * ow > 0 {
            out.par_chunks_mut(oh * ow)
                .zip(src.par_chunks(h * w))
                .for_each(|(d, s)| max_plane(s, d, (h, w), stride, pad));
        }
        tensor(out, [b, c, oh, ow])
    }
}

/// Backward of [`BoxPool::box_pool_3x3`]: the op with `adjoint` flipped.
#[derive(Debug)]
struct BoxPoolBackward;

impl<B: BoxPool> Backward<B, 1> for BoxPoolBackward {
    /// Whether the forward op was the adjoint.
    type State = bool;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let dy = grads.consume::<B>(&ops.node);
        if let Some(node) = node {
            grads.register::<B>(node.id, B::box_pool_3x3(dy, !ops.state));
        }
    }
}

impl<B: BoxPool, C: CheckpointStrategy> BoxPool for Autodiff<B, C> {
    fn box_pool_3x3(x: FloatTensor<Self>, adjoint: bool) -> FloatTensor<Self> {
        match BoxPoolBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                prep.finish(adjoint, B::box_pool_3x3(x.into_primitive(), adjoint))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::box_pool_3x3(x.into_primitive(), adjoint)),
        }
    }

    /// Burn's own (differentiable) `max_pool2d`.
    fn max_pool_3x3(x: FloatTensor<Self>, stride: usize, pad: usize) -> FloatTensor<Self> {
        Self::max_pool2d(x, [3, 3], [stride; 2], [pad; 2], [1, 1], false)
    }
}

/// `avg_pool2d(x, 3x3, stride 1, padding 1, count_include_pad = false)` on `x [B, C, H, W]`:
/// two separable passes on Flex (f32), Burn's op elsewhere.
pub fn avg_pool_3x3(x: Tensor<4>) -> Tensor<4> {
    if !flex::applies(&x) {
        let options = burn::tensor::ops::AvgPoolOptions::new([3, 3])
            .with_stride([1, 1])
            .with_padding([1, 1])
            .with_count_include_pad(false);
        return burn::tensor::module::avg_pool2d(x, options);
    }
    Tensor::from_dispatch(Dispatch::box_pool_3x3(x.into_dispatch(), false))
}

/// `max_pool2d(x, 3x3, stride, padding pad)` on `x [B, C, H, W]` (`H, W >= 3 - 2 pad`): two
/// separable passes on Flex (f32) without autodiff, Burn's op elsewhere.
pub fn max_pool_3x3(x: Tensor<4>, stride: usize, pad: usize) -> Tensor<4> {
    if !flex::applies(&x) || x.is_autodiff() {
        let options = burn::tensor::ops::MaxPoolOptions::new([3, 3])
            .with_stride([stride; 2])
            .with_padding([pad; 2]);
        return burn::tensor::module::max_pool2d(x, options);
    }
    Tensor::from_dispatch(Dispatch::max_pool_3x3(x.into_dispatch(), stride, pad))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;
    use burn::tensor::module::avg_pool2d;
    use burn::tensor::ops::AvgPoolOptions;

    fn burn_pool(x: Tensor<4>) -> Tensor<4> {
        let options = AvgPoolOptions::new([3, 3])
            .with_stride([1, 1])
            .with_padding([1, 1])
            .with_count_include_pad(false);
        avg_pool2d(x, options)
    }

    /// Values and input gradients equal Burn's `avg_pool2d` (count_include_pad false) on
    /// planes with one row or column, small planes and the Inception's 35x35.
    #[test]
    fn matches_burn_avg_pool_values_and_gradients() {
        let device = Device::flex().autodiff();
        device.seed(7);
        for shape in [
            [2, 3, 5, 7],
            [1, 2, 1, 1],
            [2, 2, 1, 4],
            [1, 3, 6, 1],
            [2, 4, 35, 35],
        ] {
            let x = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
            let weights = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
            let run = |ours: bool| {
                let x = x.clone().require_grad();
                let y = if ours {
                    avg_pool_3x3(x.clone())
                } else {
                    burn_pool(x.clone())
                };
                // A loss that is not linear in y, so dy varies over the plane.
                let loss = (y.clone() * weights.clone() + y.clone().powi_scalar(2)).sum();
                let grad = x.grad(&loss.backward()).unwrap();
                (y.inner(), grad)
            };
            let ((y, gy), (z, gz)) = (run(true), run(false));
            let tolerance = burn::tensor::Tolerance::absolute(1e-5);
            y.into_data()
                .assert_approx_eq::<f32>(&z.into_data(), tolerance);
            gy.into_data()
                .assert_approx_eq::<f32>(&gz.into_data(), tolerance);
        }
    }

    /// Values equal Burn's `max_pool2d` on Flex (the Inception's stride 2 without padding and
    /// stride 1 with padding 1, odd and even sizes, the Inception's 147x147 and 8x8), and the
    /// autodiff path keeps Burn's values and gradients.
    #[test]
    fn max_pool_matches_burn_max_pool() {
        use burn::tensor::module::max_pool2d;
        use burn::tensor::ops::MaxPoolOptions;
        for device in [Device::flex(), Device::flex().autodiff()] {
            device.seed(8);
            for (shape, stride, pad) in [
                ([2, 3, 7, 9], 2, 0),
                ([2, 3, 8, 6], 2, 0),
                ([1, 2, 3, 3], 2, 0),
                ([2, 3, 5, 7], 1, 1),
                ([1, 2, 1, 2], 1, 1),
                ([1, 4, 147, 147], 2, 0),
                ([2, 8, 8, 8], 1, 1),
            ] {
                let x = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
                let options = MaxPoolOptions::new([3, 3])
                    .with_stride([stride; 2])
                    .with_padding([pad; 2]);
                let ours = max_pool_3x3(x.clone(), stride, pad);
                let burn = max_pool2d(x, options);
                assert_eq!(ours.dims(), burn.dims(), "{shape:?}");
                ours.into_data().assert_eq(&burn.into_data(), true);
            }
        }
    }

    /// Against the definition on one plane: the largest of the window's cells inside it.
    #[test]
    fn max_plane_is_the_largest_cell_of_the_window() {
        let (h, w) = (5, 6);
        let x: Vec<f32> = (0..h * w)
            .map(|i| ((i * 7 + 3) % 11) as f32 - 5.0)
            .collect();
        for (stride, pad) in [(2, 0), (1, 1)] {
            let (oh, ow) = (pooled_len(h, stride, pad), pooled_len(w, stride, pad));
            let mut y = vec![0.0; oh * ow];
            max_plane(&x, &mut y, (h, w), stride, pad);
            for o in 0..oh {
                for p in 0..ow {
                    let rows = (o * stride).saturating_sub(pad)..(o * stride + 3 - pad).min(h);
                    let cols = (p * stride).saturating_sub(pad)..(p * stride + 3 - pad).min(w);
                    let best = rows
                        .flat_map(|r| cols.clone().map(move |c| r * w + c))
                        .map(|i| x[i])
                        .fold(f32::NEG_INFINITY, f32::max);
                    assert_eq!(y[o * ow + p], best, "stride {stride} ({o}, {p})");
                }
            }
        }
    }

    /// Against the definition on one plane: the mean of the window's cells inside the plane.
    #[test]
    fn equals_the_mean_of_the_window_inside_the_plane() {
        let (h, w) = (4, 5);
        let x: Vec<f32> = (0..h * w).map(|i| (i * i % 7) as f32 - 2.5).collect();
        let mut y = vec![0.0; h * w];
        pool_plane(&x, &mut y, (h, w), false);
        for i in 0..h as isize {
            for j in 0..w as isize {
                let cells: Vec<f32> = (i - 1..=i + 1)
                    .flat_map(|r| (j - 1..=j + 1).map(move |c| (r, c)))
                    .filter(|&(r, c)| r >= 0 && c >= 0 && r < h as isize && c < w as isize)
                    .map(|(r, c)| x[r as usize * w + c as usize])
                    .collect();
                let mean = cells.iter().sum::<f32>() / cells.len() as f32;
                assert!(
                    (y[i as usize * w + j as usize] - mean).abs() < 1e-6,
                    "({i}, {j})"
                );
            }
        }
    }
}

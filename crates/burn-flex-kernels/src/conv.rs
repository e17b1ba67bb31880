//! Convolutions of the critic and the generator on the CPU as batch-wide matrix products.
//!
//! Burn's Flex backend runs a convolution as one small matrix product per image (im2col tiles of
//! at most 512 output positions), and its gradients through Burn's generic rewrites (the weight
//! gradient as a convolution with a 16x16 "kernel", the input gradient as a transposed
//! convolution, again per image). On this project's layers (4x4, stride 2, 64-512 channels,
//! 4x4-32x32 outputs) the matrix products then have 16-256 columns and the kernel is streamed
//! from memory once per image. Here the whole batch (in chunks of ~2 MiB) goes through one
//! product per layer, `[out, in*kh*kw] x [in*kh*kw, B*oh*ow]`, and so do both gradients:
//!
//! - forward:         `y = W cols(x)`                 (im2col, gemm)
//! - input gradient:  `dx = col2im(W^T dy)`            (gemm, col2im)
//! - weight gradient: `dW = dy cols(x)^T`              (im2col, gemm, summed over the chunks)
//!
//! A transposed convolution is the input gradient of a convolution, so the same three kernels
//! serve both, forward and backward. They reach Burn through a backend extension
//! ([`GemmConv`]): implemented for Flex (the kernels here) and for `Autodiff<Flex>` (with a
//! backward pass made of the same kernels, so the gradient penalty's second derivative runs
//! through them too). [`conv2d`] and [`conv_transpose2d`] take this path on Flex with f32 and
//! Burn's own ops everywhere else (ndarray, wgpu); both give the same values (tests below).
//!
//! Written by hand: no maintained crate offers batched convolutions with their gradients on
//! host slices; the matrix products are the `gemm` crate's (the one Flex uses).

use crate::flex::{self, contiguous, tensor, values};
use crate::winograd;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::flex::{Flex, FlexTensor};
use burn::backend::ops::{ActivationOps, FloatTensorOps};
use burn::backend::tensor::FloatTensor;
use burn::backend::{AutodiffBackend, Dispatch, TensorMetadata, backend_extension};
use burn::prelude::*;
use burn::tensor::ops::{ConvOptions, ConvTransposeOptions};
use rayon::prelude::*;

/// Bytes of one im2col chunk: the batch is processed in chunks of whole images whose column
/// matrix stays near this size (at least one image per chunk). Measured with benches/conv.rs
/// on the 64x64 layers (2 threads, sum of the eight layers' forward + backward): 2 MiB 0.47 s,
/// 1 MiB 0.50-0.54, 4 MiB 0.51, 16 MiB 0.54, 64 MiB 0.71: the column matrix stays in cache
/// between im2col and the product.
const CHUNK_BYTES: usize = 2 << 20;

/// The shape of one convolution `x [B, c_in, h, w] -> y [B, c_out, oh, ow]` with a
/// `kh x kw` kernel `[c_out, c_in, kh, kw]`, one stride for both axes and zero padding
/// `pad_h` rows and `pad_w` columns on each side (no dilation, no groups).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub batch: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad_h: usize,
    pub pad_w: usize,
    pub oh: usize,
    pub ow: usize,
}

impl Geometry {
    /// Rows of the column matrix, `c_in * kh * kw`.
    pub(crate) fn rows(&self) -> usize {
        self.c_in * self.kh * self.kw
    }

    /// Output positions per image, `oh * ow`.
    pub(crate) fn positions(&self) -> usize {
        self.oh * self.ow
    }

    /// Images per im2col chunk.
    fn chunk(&self) -> usize {
        let per_image = self.rows() * self.positions() * 4;
        (CHUNK_BYTES / per_image.max(1)).clamp(1, self.batch.max(1))
    }
}

/// A kernel offset `q = ki - pad` as `stride * shift + phase` (`0 <= phase < stride`): output
/// `o` reads input `o * stride + q`, which is element `o + shift` of phase `phase`.
#[inline]
fn split(q: isize, stride: usize) -> (isize, usize) {
    let s = stride as isize;
    (q.div_euclid(s), q.rem_euclid(s) as usize)
}

/// The outputs `lo..hi` (of `outputs`) whose phase element `o + shift` lies in `0..len`.
#[inline]
fn valid(shift: isize, len: usize, outputs: usize) -> (usize, usize) {
    let lo = (-shift).clamp(0, outputs as isize) as usize;
    let hi = (len as isize - shift).clamp(lo as isize, outputs as isize) as usize;
    (lo, hi)
}

impl Geometry {
    /// Rows and columns of one phase plane, `ceil(h / s) x ceil(w / s)`.
    fn phase_size(&self) -> (usize, usize) {
        (self.h.div_ceil(self.stride), self.w.div_ceil(self.stride))
    }

    /// The `stride x stride` phase planes of one `h x w` plane: `phases[(a*s + b)]` holds
    /// `plane[a::s, b::s]`, zero-padded to [`phase_size`](Self::phase_size). With them every
    /// im2col row is a run of contiguous copies instead of a strided gather.
    fn split_phases(&self, plane: &[f32], phases: &mut [f32]) {
        let (s, (hq, wq)) = (self.stride, self.phase_size());
        if s == 2 && self.h == 2 * hq && self.w == 2 * wq {
            // Even sizes: every phase element is written, and each input row splits in pairs.
            for (i, line) in plane.chunks_exact(self.w).enumerate() {
                let at = ((i % 2) * 2 * hq + i / 2) * wq;
                let (even, odd) = phases[at..].split_at_mut(hq * wq);
                let (even, odd) = (&mut even[..wq], &mut odd[..wq]);
                for (j, pair) in line.chunks_exact(2).enumerate() {
                    even[j] = pair[0];
                    odd[j] = pair[1];
                }
            }
            return;
        }
        phases.fill(0.0);
        for (i, line) in plane.chunks_exact(self.w).enumerate() {
            let (a, r) = (i % s, i / s);
            for b in 0..s {
                let dst = &mut phases[((a * s + b) * hq + r) * wq..][..wq];
                for (d, v) in dst.iter_mut().zip(line[b.min(self.w)..].iter().step_by(s)) {
                    *d = *v;
                }
            }
        }
    }

    /// The inverse of [`split_phases`](Self::split_phases).
    fn merge_phases(&self, phases: &[f32], plane: &mut [f32]) {
        let (s, (hq, wq)) = (self.stride, self.phase_size());
        if s == 2 && self.h == 2 * hq && self.w == 2 * wq {
            for (i, line) in plane.chunks_exact_mut(self.w).enumerate() {
                let at = ((i % 2) * 2 * hq + i / 2) * wq;
                let (even, odd) = (&phases[at..][..wq], &phases[at + hq * wq..][..wq]);
                for (j, pair) in line.chunks_exact_mut(2).enumerate() {
                    pair[0] = even[j];
                    pair[1] = odd[j];
                }
            }
            return;
        }
        for (i, line) in plane.chunks_exact_mut(self.w).enumerate() {
            let (a, r) = (i % s, i / s);
            for b in 0..s.min(self.w) {
                let src = &phases[((a * s + b) * hq + r) * wq..][..wq];
                for (d, v) in line[b..].iter_mut().step_by(s).zip(src) {
                    *d = *v;
                }
            }
        }
    }

    /// For kernel tap `(ki, kj)`: the phase plane index, the row and column shifts.
    fn tap(&self, ki: usize, kj: usize) -> (usize, isize, isize) {
        let (di, ri) = split(ki as isize - self.pad_h as isize, self.stride);
        let (dj, rj) = split(kj as isize - self.pad_w as isize, self.stride);
        (ri * self.stride + rj, di, dj)
    }
}

/// `cols [c_in*kh*kw, n*oh*ow]` (row-major) of images `b0..b0+n` of `x [B, c_in, h, w]`.
/// `phases` is scratch space of at least `n * c_in * stride^2 * hq * wq` elements.
fn im2col(
    g: &Geometry,
    x: &[f32],
    (b0, n): (usize, usize),
    cols: &mut [f32],
    phases: &mut [f32],
    inside: bool,
) {
    let (p, hw, (hq, wq)) = (g.positions(), g.h * g.w, g.phase_size());
    let size = g.stride * g.stride * hq * wq;
    let phases = &mut phases[..n * g.c_in * size]; // [n, c_in, s*s, hq, wq]
    let planes = &x[b0 * g.c_in * hw..(b0 + n) * g.c_in * hw];
    each_chunk(phases, size, inside, |i, dst| {
        g.split_phases(&planes[i * hw..][..hw], dst)
    });
    let width = n * p;
    each_chunk(cols, width, inside, |row, dst| {
        let (c, ki, kj) = (row / (g.kh * g.kw), (row / g.kw) % g.kh, row % g.kw);
        let (phase, di, dj) = g.tap(ki, kj);
        let (lo, hi) = valid(dj, wq, g.ow);
        for b in 0..n {
            let plane = &phases[(b * g.c_in + c) * size + phase * hq * wq..][..hq * wq];
            let out = &mut dst[b * p..][..p];
            if wq == g.ow {
                copy_shifted(g, plane, out, (di, dj), (lo, hi));
                continue;
            }
            for oh in 0..g.oh {
                let out = &mut out[oh * g.ow..][..g.ow];
                let i = oh as isize + di;
                if i < 0 || i >= hq as isize || lo == hi {
                    out.fill(0.0);
                    continue;
                }
                let line = &plane[i as usize * wq..][..wq];
                out[..lo].fill(0.0);
                out[hi..].fill(0.0);
                let first = (lo as isize + dj) as usize;
                out[lo..hi].copy_from_slice(&line[first..first + hi - lo]);
            }
        }
    });
}

/// One image's im2col row when phase rows are as wide as output rows (`wq == ow`, the usual
/// `h = stride * oh`): `out[oh, x] = plane[oh + di, x + dj]` is then one flat copy shifted by
/// `di * ow + dj`, after which the columns outside `lo..hi` (read from a neighbouring row)
/// and the rows outside the plane are zeroed.
fn copy_shifted(
    g: &Geometry,
    plane: &[f32],
    out: &mut [f32],
    (di, dj): (isize, isize),
    (lo, hi): (usize, usize),
) {
    let ow = g.ow;
    let (r0, r1) = valid(di, plane.len() / ow, g.oh);
    out[..r0 * ow].fill(0.0);
    out[r1 * ow..].fill(0.0);
    if r0 == r1 {
        return;
    }
    let shift = di * ow as isize + dj;
    // Destination range whose source index lies inside the plane.
    let start = (r0 * ow).max((-shift).max(0) as usize);
    let end = (r1 * ow).min((plane.len() as isize - shift) as usize);
    if start < end {
        let from = (start as isize + shift) as usize;
        out[start..end].copy_from_slice(&plane[from..from + end - start]);
    }
    out[r0 * ow..start].fill(0.0);
    out[end.max(r0 * ow)..r1 * ow].fill(0.0);
    if lo > 0 || hi < ow {
        for line in out[r0 * ow..r1 * ow].chunks_exact_mut(ow) {
            line[..lo].fill(0.0);
            line[hi..].fill(0.0);
        }
    }
}

/// Adds `cols [c_in*kh*kw, n*oh*ow]` back onto images `b0..b0+n` of `dx [B, c_in, h, w]`
/// (the adjoint of [`im2col`]): `planes` are those images' `[n, c_in, h, w]`, overwritten.
fn col2im(g: &Geometry, cols: &[f32], n: usize, planes: &mut [f32], inside: bool) {
    let (p, hw, kk, (hq, wq)) = (g.positions(), g.h * g.w, g.kh * g.kw, g.phase_size());
    let width = n * p;
    // Per column shift dj: which output columns have their input inside the phase row.
    let masks: Vec<Vec<u32>> = (0..g.kw)
        .map(|kj| {
            let (_, _, dj) = g.tap(0, kj);
            let (lo, hi) = valid(dj, wq, g.ow);
            let line = (0..g.ow).map(|x| if (lo..hi).contains(&x) { !0 } else { 0 });
            line.cycle().take(p).collect()
        })
        .collect();
    each_chunk(planes, hw, inside, |i, plane| {
        let (b, c) = (i / g.c_in, i % g.c_in);
        let mut phases = vec![0.0f32; g.stride * g.stride * hq * wq];
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let row = &cols[(c * kk + ki * g.kw + kj) * width + b * p..][..p];
                let (phase, di, dj) = g.tap(ki, kj);
                let dst = &mut phases[phase * hq * wq..][..hq * wq];
                if wq == g.ow {
                    add_shifted(g, row, dst, (di, dj), &masks[kj]);
                    continue;
                }
                let (lo, hi) = valid(dj, wq, g.ow);
                if lo == hi {
                    continue;
                }
                let first = (lo as isize + dj) as usize;
                for oh in 0..g.oh {
                    let r = oh as isize + di;
                    if r < 0 || r >= hq as isize {
                        continue;
                    }
                    let line = &mut dst[r as usize * wq + first..][..hi - lo];
                    let src = &row[oh * g.ow + lo..oh * g.ow + hi];
                    for (d, v) in line.iter_mut().zip(src) {
                        *d += v;
                    }
                }
            }
        }
        g.merge_phases(&phases, plane);
    });
}

/// The adjoint of [`copy_shifted`] (phase rows as wide as output rows): `plane[oh + di,
/// x + dj] += row[oh, x]` as one flat run of adds shifted by `di * ow + dj`, where `mask`
/// (`[oh * ow]`, all ones or zeros) drops the columns whose input lies outside the phase row
/// (they would land on a neighbouring row). Rows outside the plane fall outside the run.
fn add_shifted(
    g: &Geometry,
    row: &[f32],
    plane: &mut [f32],
    (di, dj): (isize, isize),
    mask: &[u32],
) {
    let ow = g.ow;
    let (r0, r1) = valid(di, plane.len() / ow, g.oh);
    let shift = di * ow as isize + dj;
    let start = (r0 * ow).max((-shift).max(0) as usize);
    let end = (r1 * ow).min((plane.len() as isize - shift).max(0) as usize);
    if start >= end {
        return;
    }
    let at = (start as isize + shift) as usize;
    let (dst, src, mask) = (
        &mut plane[at..at + end - start],
        &row[start..end],
        &mask[start..end],
    );
    if dj == 0 {
        for i in 0..dst.len() {
            dst[i] += src[i];
        }
    } else {
        for i in 0..dst.len() {
            dst[i] += f32::from_bits(src[i].to_bits() & mask[i]);
        }
    }
}

/// `f(i, chunk)` for the `size`-element chunks of `data`, in parallel when `inside`.
pub(crate) fn each_chunk(
    data: &mut [f32],
    size: usize,
    inside: bool,
    f: impl Fn(usize, &mut [f32]) + Sync,
) {
    if inside {
        data.par_chunks_mut(size)
            .enumerate()
            .for_each(|(i, c)| f(i, c));
    } else {
        data.chunks_mut(size).enumerate().for_each(|(i, c)| f(i, c));
    }
}

/// A dense row-major or transposed view for [`matmul`]: `(data, row stride, column stride)`.
pub(crate) type View<'a> = (&'a [f32], isize, isize);

/// `dst [m, n] (row-major) = (accumulate ? dst : 0) + lhs [m, k] rhs [k, n]`; on all threads
/// when `inside` and the product has at least 2^21 multiply-adds.
#[allow(clippy::too_many_arguments)]
fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    accumulate: bool,
    lhs: View,
    rhs: View,
    inside: bool,
) {
    matmul_strided(
        (m, n, k),
        (dst, n as isize, 1),
        accumulate,
        lhs,
        rhs,
        inside,
    );
}

/// [`matmul`] into a strided `dst` view `(data, row stride, column stride)`.
pub(crate) fn matmul_strided(
    (m, n, k): (usize, usize, usize),
    (dst, dst_rs, dst_cs): (&mut [f32], isize, isize),
    accumulate: bool,
    lhs: View,
    rhs: View,
    inside: bool,
) {
    let parallelism = if inside && m * n * k >= 1 << 21 {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    let last = |(rs, cs): (isize, isize), rows: usize, cols: usize| {
        (rows.max(1) - 1) * rs as usize + (cols.max(1) - 1) * cs as usize
    };
    assert!(m * n == 0 || last((dst_rs, dst_cs), m, n) < dst.len());
    assert!(m * k == 0 || last((lhs.1, lhs.2), m, k) < lhs.0.len());
    assert!(k * n == 0 || last((rhs.1, rhs.2), k, n) < rhs.0.len());
    // SAFETY: the asserts above keep every access inside the slices.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dst_cs,
            dst_rs,
            accumulate,
            lhs.0.as_ptr(),
            lhs.2,
            lhs.1,
            rhs.0.as_ptr(),
            rhs.2,
            rhs.1,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// `[n, c, p]` images `b0..b0+n` of a `[B, c, p]` tensor as the matrix `[c, n*p]`.
fn channels_first(
    t: &[f32],
    c: usize,
    p: usize,
    b0: usize,
    n: usize,
    out: &mut [f32],
    inside: bool,
) {
    each_chunk(out, n * p, inside, |ch, row| {
        for b in 0..n {
            row[b * p..][..p].copy_from_slice(&t[((b0 + b) * c + ch) * p..][..p]);
        }
    });
}

/// How the chunks of a batch run: with at least two chunks per thread, each chunk runs on
/// one thread from im2col to the product (no synchronization inside, its column matrix in
/// that core's cache); otherwise one after the other, each step parallel inside (`inside`).
/// `chunk` is images per chunk.
pub(crate) fn inside_parallel(batch: usize, chunk: usize) -> bool {
    let threads = rayon::current_num_threads();
    threads > 1 && batch.div_ceil(chunk) < 2 * threads
}

/// A thread's buffers for one chunk: here its column and gradient matrices and phase planes
/// (the Winograd path keeps its transformed input in `cols` and its product in `mat`). Every
/// use writes the part it reads first, so the buffers are reused across calls without being
/// cleared.
#[derive(Default)]
pub(crate) struct Scratch {
    pub(crate) cols: Vec<f32>,
    pub(crate) mat: Vec<f32>,
    pub(crate) phases: Vec<f32>,
}

impl Scratch {
    /// The lengths of [`cols`](Self::cols), [`mat`](Self::mat), [`phases`](Self::phases) for
    /// one im2col chunk of `g`.
    fn im2col(g: &Geometry) -> [usize; 3] {
        let width = g.chunk() * g.positions();
        let (hq, wq) = g.phase_size();
        let phases = g.chunk() * g.c_in * g.stride * g.stride * hq * wq;
        [g.rows() * width, g.c_out * width, phases]
    }

    /// Grows the buffers to at least `lens` (zeros only where they grow).
    fn fit(&mut self, lens: [usize; 3]) {
        for (buffer, len) in [&mut self.cols, &mut self.mat, &mut self.phases]
            .into_iter()
            .zip(lens)
        {
            if buffer.len() < len {
                buffer.resize(len, 0.0);
            }
        }
    }
}

thread_local! {
    /// This thread's [`Scratch`]: allocating and zeroing it per call (per rayon task) was 4-6%
    /// of a training step in `memset`.
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// `f(scratch fitted to lens)` with this thread's scratch, or a fresh one when it is in use (a
/// task stolen while this thread waits inside a parallel step of its own chunk).
pub(crate) fn with_scratch<R>(lens: [usize; 3], f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|cell| {
        let mut fresh = Scratch::default();
        let mut borrowed = cell.try_borrow_mut();
        let s = match borrowed.as_deref_mut() {
            Ok(s) => s,
            Err(_) => &mut fresh,
        };
        s.fit(lens);
        f(s)
    })
}

/// Runs `f(chunk index, chunk of out, scratch, inside)` over the `per_chunk`-element chunks of
/// `out`: one after the other, each parallel inside, when `inside`, else one per task; the
/// scratch fitted to `lens`.
pub(crate) fn run_chunks(
    inside: bool,
    lens: [usize; 3],
    out: &mut [f32],
    per_chunk: usize,
    f: impl Fn(usize, &mut [f32], &mut Scratch, bool) + Sync,
) {
    if inside {
        with_scratch(lens, |s| {
            for (i, c) in out.chunks_mut(per_chunk).enumerate() {
                f(i, c, s, true);
            }
        });
    } else {
        out.par_chunks_mut(per_chunk)
            .enumerate()
            .for_each(|(i, c)| with_scratch(lens, |s| f(i, c, s, false)));
    }
}

/// The forward convolution: `x [B, c_in, h, w]`, `w [c_out, c_in, kh, kw]` -> `[B, c_out, oh, ow]`.
pub fn forward(g: &Geometry, x: &[f32], w: &[f32]) -> Vec<f32> {
    forward_fused(g, x, w, None)
}

/// [`forward`], and with `shift` (`[c_out]`) `relu(y + shift[channel])` written in the same
/// pass that moves the product into place (inference: a convolution with BatchNorm folded into
/// its kernel). A 1x1 stride-1 convolution without padding skips im2col: its column matrix is
/// the images' channels side by side.
pub fn forward_fused(g: &Geometry, x: &[f32], w: &[f32], shift: Option<&[f32]>) -> Vec<f32> {
    if winograd::applies(g) {
        return winograd::forward(g, x, &winograd::transform_kernel(g, w), shift);
    }
    forward_fused_im2col(g, x, w, shift)
}

/// [`forward_fused`] of a contiguous Flex kernel: the Winograd path reuses the kernel's
/// transform while the kernel lives ([`winograd::cached_kernel`]).
fn forward_fused_tensor(
    g: &Geometry,
    x: &[f32],
    w: &FlexTensor,
    shift: Option<&[f32]>,
) -> Vec<f32> {
    if winograd::applies(g) {
        return winograd::forward(g, x, &winograd::cached_kernel(g, w), shift);
    }
    forward_fused_im2col(g, x, values(w), shift)
}

/// [`forward_fused`] through im2col / col2im and one product per chunk (any geometry).
pub(crate) fn forward_fused_im2col(
    g: &Geometry,
    x: &[f32],
    w: &[f32],
    shift: Option<&[f32]>,
) -> Vec<f32> {
    let (rows, p, chunk) = (g.rows(), g.positions(), g.chunk());
    let pointwise = g.kh == 1 && g.kw == 1 && g.stride == 1 && g.pad_h == 0 && g.pad_w == 0;
    let mut y = vec![0.0; g.batch * g.c_out * p];
    let (inside, lens) = (inside_parallel(g.batch, chunk), Scratch::im2col(g));
    run_chunks(
        inside,
        lens,
        &mut y,
        chunk * g.c_out * p,
        |i, images, s, inside| {
            let n = images.len() / (g.c_out * p);
            let width = n * p;
            let cols = &mut s.cols[..rows * width];
            if pointwise {
                channels_first(x, g.c_in, p, i * chunk, n, cols, inside);
            } else {
                im2col(g, x, (i * chunk, n), cols, &mut s.phases, inside);
            }
            // out [c_out, n*p] = w [c_out, rows] cols [rows, n*p]
            let (lhs, rhs) = ((w, rows as isize, 1), (&s.cols[..], width as isize, 1));
            matmul(g.c_out, width, rows, &mut s.mat, false, lhs, rhs, inside);
            let out = &s.mat;
            each_chunk(images, p, inside, |i, dst| {
                let (b, o) = (i / g.c_out, i % g.c_out);
                let src = &out[o * width + b * p..][..p];
                match shift {
                    None => dst.copy_from_slice(src),
                    Some(shift) => {
                        let t = shift[o];
                        for (d, v) in dst.iter_mut().zip(src) {
                            *d = (v + t).max(0.0);
                        }
                    }
                }
            });
        },
    );
    y
}

/// The input gradient (the adjoint of [`forward`], a transposed convolution):
/// `dy [B, c_out, oh, ow]`, `w [c_out, c_in, kh, kw]` -> `[B, c_in, h, w]`.
pub fn backward_data(g: &Geometry, dy: &[f32], w: &[f32]) -> Vec<f32> {
    if winograd::applies(g) {
        return winograd::backward_data(g, dy, &winograd::transform_kernel(g, w));
    }
    backward_data_im2col(g, dy, w)
}

/// [`backward_data`] of a contiguous Flex kernel, as [`forward_fused_tensor`].
fn backward_data_tensor(g: &Geometry, dy: &[f32], w: &FlexTensor) -> Vec<f32> {
    if winograd::applies(g) {
        return winograd::backward_data(g, dy, &winograd::cached_kernel(g, w));
    }
    backward_data_im2col(g, dy, values(w))
}

/// [`backward_data`] through im2col / col2im and one product per chunk (any geometry).
pub(crate) fn backward_data_im2col(g: &Geometry, dy: &[f32], w: &[f32]) -> Vec<f32> {
    let (rows, p, chunk) = (g.rows(), g.positions(), g.chunk());
    let hw = g.h * g.w;
    let mut dx = vec![0.0; g.batch * g.c_in * hw];
    let (inside, lens) = (inside_parallel(g.batch, chunk), Scratch::im2col(g));
    run_chunks(
        inside,
        lens,
        &mut dx,
        chunk * g.c_in * hw,
        |i, planes, s, inside| {
            let n = planes.len() / (g.c_in * hw);
            let width = n * p;
            let grad = &mut s.mat[..g.c_out * width];
            channels_first(dy, g.c_out, p, i * chunk, n, grad, inside);
            // cols [rows, n*p] = w^T [rows, c_out] grad [c_out, n*p]
            let (lhs, rhs) = ((w, 1, rows as isize), (&s.mat[..], width as isize, 1));
            matmul(rows, width, g.c_out, &mut s.cols, false, lhs, rhs, inside);
            col2im(g, &s.cols[..rows * width], n, planes, inside);
        },
    );
    dx
}

/// The kernel gradient: `x [B, c_in, h, w]`, `dy [B, c_out, oh, ow]` -> `[c_out, c_in, kh, kw]`.
/// Always through im2col: the Winograd form (`dU = Z V^T` summed over every tile of the batch,
/// then `G^T dU G`) was 12% faster on a 64x64 iteration's convolutions but moved the PyTorch
/// parity run's second gradient-penalty iteration out of its tolerance (README, issue 17).
pub fn backward_weight(g: &Geometry, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let (rows, p, chunk) = (g.rows(), g.positions(), g.chunk());
    // dw^T [rows, c_out] += cols [rows, n*p] grad^T [n*p, c_out] for chunk b0..b0+n: 1.3-2.3x
    // faster with the gemm crate than dw = grad cols^T (both operands then run along the long
    // dimension).
    let add_chunk = |b0: usize, dw_t: &mut [f32], s: &mut Scratch, first: bool, inside: bool| {
        let n = chunk.min(g.batch - b0);
        let width = n * p;
        im2col(
            g,
            x,
            (b0, n),
            &mut s.cols[..rows * width],
            &mut s.phases,
            inside,
        );
        channels_first(dy, g.c_out, p, b0, n, &mut s.mat[..g.c_out * width], inside);
        let (lhs, rhs) = (
            (&s.cols[..], width as isize, 1),
            (&s.mat[..], 1, width as isize),
        );
        if inside {
            matmul_long(rows, g.c_out, width, dw_t, !first, lhs, rhs);
        } else {
            matmul(rows, g.c_out, width, dw_t, !first, lhs, rhs, false);
        }
    };
    let starts: Vec<usize> = (0..g.batch).step_by(chunk).collect();
    let lens = Scratch::im2col(g);
    let dw_t = if inside_parallel(g.batch, chunk) {
        let mut dw_t = vec![0.0; rows * g.c_out];
        with_scratch(lens, |s| {
            for (i, &b0) in starts.iter().enumerate() {
                add_chunk(b0, &mut dw_t, s, i == 0, true);
            }
        });
        dw_t
    } else {
        // Each thread sums its chunks into its own dw^T; then the partial sums are added.
        starts
            .par_iter()
            .fold(
                || (vec![0.0; rows * g.c_out], true),
                |(mut dw_t, first), &b0| {
                    with_scratch(lens, |s| add_chunk(b0, &mut dw_t, s, first, false));
                    (dw_t, false)
                },
            )
            .map(|(dw_t, _)| dw_t)
            .reduce_with(|mut a, b| {
                a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                a
            })
            .unwrap_or_else(|| vec![0.0; rows * g.c_out])
    };
    let mut dw = vec![0.0; g.c_out * rows];
    dw.par_chunks_mut(rows).enumerate().for_each(|(o, line)| {
        for (r, v) in line.iter_mut().enumerate() {
            *v = dw_t[r * g.c_out + o];
        }
    });
    dw
}

/// [`matmul`] for a small result over a long inner dimension: the gemm crate splits the
/// result among the threads, so a result of a few blocks (the first layer's 64 x 48 kernel
/// gradient) would run on one thread; here each thread takes a slice of the inner dimension.
fn matmul_long(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    accumulate: bool,
    lhs: View,
    rhs: View,
) {
    let threads = rayon::current_num_threads();
    if m * n >= 1 << 16 || threads == 1 || k < 2 * threads {
        return matmul(m, n, k, dst, accumulate, lhs, rhs, true);
    }
    let step = k.div_ceil(threads);
    let partial: Vec<Vec<f32>> = (0..k)
        .step_by(step)
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|k0| {
            let len = step.min(k - k0);
            let mut out = vec![0.0; m * n];
            let l = (&lhs.0[k0 * lhs.2 as usize..], lhs.1, lhs.2);
            let r = (&rhs.0[k0 * rhs.1 as usize..], rhs.1, rhs.2);
            matmul(m, n, len, &mut out, false, l, r, false);
            out
        })
        .collect();
    for (j, out) in partial.iter().enumerate() {
        let keep = accumulate || j > 0;
        for (d, v) in dst[..m * n].iter_mut().zip(out) {
            *d = if keep { *d + v } else { *v };
        }
    }
}

/// The geometry of `x [B, c_in, h, w]` convolved with `w [c_out, c_in, kh, kw]`, padding
/// `[rows, columns]`.
pub(crate) fn conv_geometry(
    x: [usize; 4],
    w: [usize; 4],
    stride: usize,
    pad: [usize; 2],
) -> Geometry {
    let [batch, c_in, h, wd] = x;
    let [c_out, _, kh, kw] = w;
    Geometry {
        batch,
        c_in,
        h,
        w: wd,
        c_out,
        kh,
        kw,
        stride,
        pad_h: pad[0],
        pad_w: pad[1],
        oh: (h + 2 * pad[0] - kh) / stride + 1,
        ow: (wd + 2 * pad[1] - kw) / stride + 1,
    }
}

/// The geometry of the convolution whose adjoint maps `x [B, c, h, w]` with
/// `w [c, c_out, kh, kw]` to `[B, c_out, (h-1)s - 2p_h + kh + out_pad[0], (w-1)s - 2p_w + kw +
/// out_pad[1]]` (a transposed convolution).
fn transpose_geometry(
    x: [usize; 4],
    w: [usize; 4],
    stride: usize,
    pad: [usize; 2],
    out_pad: [usize; 2],
) -> Geometry {
    let [batch, c, h, wd] = x;
    let [_, c_out, kh, kw] = w;
    let size = |i: usize, k: usize, extra: usize, p: usize| (i - 1) * stride + k + extra - 2 * p;
    Geometry {
        batch,
        c_in: c_out,
        h: size(h, kh, out_pad[0], pad[0]),
        w: size(wd, kw, out_pad[1], pad[1]),
        c_out: c,
        kh,
        kw,
        stride,
        pad_h: pad[0],
        pad_w: pad[1],
        oh: h,
        ow: wd,
    }
}

fn dims4<T: TensorMetadata>(t: &T) -> [usize; 4] {
    let s = t.shape();
    [s[0], s[1], s[2], s[3]]
}

/// Convolutions as batch-wide matrix products; see the module documentation.
#[backend_extension(Autodiff, Flex)]
pub trait GemmConv: burn::backend::Backend {
    /// `x [B, c_in, h, w]`, `weight [c_out, c_in, kh, kw]` -> `[B, c_out, oh, ow]` (no bias;
    /// `pad` is `[rows, columns]`).
    fn gemm_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride: usize,
        pad: [usize; 2],
    ) -> FloatTensor<Self>;

    /// `relu(conv(x, weight) + shift[channel])`: `x [B, c_in, h, w]`, `weight [c_out, c_in,
    /// kh, kw]`, `shift [c_out]` -> `[B, c_out, oh, ow]`, in one pass over the output on Flex
    /// (a convolution followed by inference BatchNorm, folded into `weight` and `shift`, and
    /// ReLU).
    fn gemm_conv2d_shift_relu(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        stride: usize,
        pad: [usize; 2],
    ) -> FloatTensor<Self>;

    /// `x [B, c_in, h, w]`, `weight [c_in, c_out, kh, kw]` ->
    /// `[B, c_out, (h-1)s - 2p_h + kh + out_pad[0], (w-1)s - 2p_w + kw + out_pad[1]]` (no bias).
    fn gemm_conv_transpose2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride: usize,
        pad: [usize; 2],
        out_pad: [usize; 2],
    ) -> FloatTensor<Self>;

    /// The kernel gradient of [`gemm_conv2d`](Self::gemm_conv2d): `x [B, c_in, h, w]`,
    /// `dy [B, c_out, oh, ow]` -> `[c_out, c_in, kh, kw]` (`k` is `[kh, kw]`). Not
    /// differentiable.
    fn gemm_conv2d_weight(
        x: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        k: [usize; 2],
        stride: usize,
        pad: [usize; 2],
    ) -> FloatTensor<Self>;
}

impl GemmConv for Flex {
    fn gemm_conv2d(
        x: FlexTensor,
        weight: FlexTensor,
        stride: usize,
        pad: [usize; 2],
    ) -> FlexTensor {
        let g = conv_geometry(dims4(&x), dims4(&weight), stride, pad);
        let (x, weight) = (contiguous(&x), contiguous(&weight));
        let y = forward_fused_tensor(&g, values(&x), &weight, None);
        tensor(y, [g.batch, g.c_out, g.oh, g.ow])
    }

    fn gemm_conv2d_shift_relu(
        x: FlexTensor,
        weight: FlexTensor,
        shift: FlexTensor,
        stride: usize,
        pad: [usize; 2],
    ) -> FlexTensor {
        let g = conv_geometry(dims4(&x), dims4(&weight), stride, pad);
        let (x, weight, shift) = (contiguous(&x), contiguous(&weight), contiguous(&shift));
        let y = forward_fused_tensor(&g, values(&x), &weight, Some(values(&shift)));
        tensor(y, [g.batch, g.c_out, g.oh, g.ow])
    }

    fn gemm_conv_transpose2d(
        x: FlexTensor,
        weight: FlexTensor,
        stride: usize,
        pad: [usize; 2],
        out_pad: [usize; 2],
    ) -> FlexTensor {
        let g = transpose_geometry(dims4(&x), dims4(&weight), stride, pad, out_pad);
        let (x, weight) = (contiguous(&x), contiguous(&weight));
        let y = backward_data_tensor(&g, values(&x), &weight);
        tensor(y, [g.batch, g.c_in, g.h, g.w])
    }

    fn gemm_conv2d_weight(
        x: FlexTensor,
        dy: FlexTensor,
        [kh, kw]: [usize; 2],
        stride: usize,
        pad: [usize; 2],
    ) -> FlexTensor {
        let c_out = dims4(&dy)[1];
        let [_, c_in, ..] = dims4(&x);
        let g = conv_geometry(dims4(&x), [c_out, c_in, kh, kw], stride, pad);
        let (x, dy) = (contiguous(&x), contiguous(&dy));
        let dw = backward_weight(&g, values(&x), values(&dy));
        tensor(dw, [c_out, c_in, kh, kw])
    }
}

/// Backward of [`GemmConv::gemm_conv2d`]: parents `[x, weight]`.
#[derive(Debug)]
struct ConvBackward;

impl<B: GemmConv> Backward<B, 2> for ConvBackward {
    /// `(x, weight, stride, pad)`.
    type State = (NodeId, NodeId, usize, [usize; 2]);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_w] = ops.parents;
        let grad = grads.consume::<B>(&ops.node); // [B, c_out, oh, ow]
        let (x_id, w_id, stride, pad) = ops.state;
        let x: FloatTensor<B> = checkpointer.retrieve_node_output(x_id);
        let w: FloatTensor<B> = checkpointer.retrieve_node_output(w_id);
        let ([_, _, h, wd], [_, _, kh, kw]) = (dims4(&x), dims4(&w));
        if let Some(node) = node_w {
            let dw = B::gemm_conv2d_weight(x, grad.clone(), [kh, kw], stride, pad);
            grads.register::<B>(node.id, dw);
        }
        if let Some(node) = node_x {
            let out_pad =
                [(h, kh, pad[0]), (wd, kw, pad[1])].map(|(i, k, p)| (i + 2 * p - k) % stride);
            let dx = B::gemm_conv_transpose2d(grad, w, stride, pad, out_pad);
            grads.register::<B>(node.id, dx);
        }
    }
}

/// Backward of [`GemmConv::gemm_conv_transpose2d`]: parents `[x, weight]`.
#[derive(Debug)]
struct ConvTransposeBackward;

impl<B: GemmConv> Backward<B, 2> for ConvTransposeBackward {
    /// `(x, weight, stride, pad)`.
    type State = (NodeId, NodeId, usize, [usize; 2]);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_w] = ops.parents;
        let grad = grads.consume::<B>(&ops.node); // [B, c_out, H, W]
        let (x_id, w_id, stride, pad) = ops.state;
        let x: FloatTensor<B> = checkpointer.retrieve_node_output(x_id);
        let w: FloatTensor<B> = checkpointer.retrieve_node_output(w_id);
        let [.., kh, kw] = dims4(&w);
        if let Some(node) = node_w {
            // The transposed convolution is the adjoint of the convolution grad -> x.
            let dw = B::gemm_conv2d_weight(grad.clone(), x, [kh, kw], stride, pad);
            grads.register::<B>(node.id, dw);
        }
        if let Some(node) = node_x {
            grads.register::<B>(node.id, B::gemm_conv2d(grad, w, stride, pad));
        }
    }
}

impl<B: GemmConv, C: CheckpointStrategy> GemmConv for Autodiff<B, C> {
    fn gemm_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride: usize,
        pad: [usize; 2],
    ) -> FloatTensor<Self> {
        record::<B, C, _>(ConvBackward, x, weight, (stride, pad), |x, w| {
            B::gemm_conv2d(x, w, stride, pad)
        })
    }

    /// The recorded convolution, then Burn's own (differentiable) add and ReLU.
    fn gemm_conv2d_shift_relu(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        stride: usize,
        pad: [usize; 2],
    ) -> FloatTensor<Self> {
        let c = shift.shape()[0];
        let y = Self::gemm_conv2d(x, weight, stride, pad);
        let shift = Self::float_reshape(shift, Shape::new([1, c, 1, 1]));
        Self::relu(Self::float_add(y, shift))
    }

    fn gemm_conv_transpose2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride: usize,
        pad: [usize; 2],
        out_pad: [usize; 2],
    ) -> FloatTensor<Self> {
        record::<B, C, _>(ConvTransposeBackward, x, weight, (stride, pad), |x, w| {
            B::gemm_conv_transpose2d(x, w, stride, pad, out_pad)
        })
    }

    fn gemm_conv2d_weight(
        x: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        k: [usize; 2],
        stride: usize,
        pad: [usize; 2],
    ) -> FloatTensor<Self> {
        let (x, dy) = (Self::inner(x), Self::inner(dy));
        Self::from_inner(B::gemm_conv2d_weight(x, dy, k, stride, pad))
    }
}

/// `run` on the inner tensors of `x` and `weight`; when either is tracked, `op` is recorded
/// with the state its backward reads, `(x, weight, stride, pad)`.
fn record<B, C, O>(
    op: O,
    x: FloatTensor<Autodiff<B, C>>,
    weight: FloatTensor<Autodiff<B, C>>,
    (stride, pad): (usize, [usize; 2]),
    run: impl FnOnce(FloatTensor<B>, FloatTensor<B>) -> FloatTensor<B>,
) -> FloatTensor<Autodiff<B, C>>
where
    B: GemmConv,
    C: CheckpointStrategy,
    O: Backward<B, 2, State = (NodeId, NodeId, usize, [usize; 2])>,
{
    match op
        .prepare::<C>([x.node(), weight.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(mut prep) => {
            let state = (prep.checkpoint(&x), prep.checkpoint(&weight), stride, pad);
            prep.finish(state, run(x.into_primitive(), weight.into_primitive()))
        }
        OpsKind::UnTracked(prep) => prep.finish(run(x.into_primitive(), weight.into_primitive())),
    }
}

/// Whether the batch-wide kernels apply: f32 tensors on Flex and equal strides (any kernel
/// shape and padding; the callers check dilation and groups).
pub(crate) fn gemm_path(x: &Tensor<4>, weight: &Tensor<4>, stride: [usize; 2]) -> bool {
    flex::applies(x) && flex::applies(weight) && stride[0] == stride[1]
}

fn add_bias(y: Tensor<4>, bias: Option<Tensor<1>>) -> Tensor<4> {
    match bias {
        Some(b) => {
            let c = b.dims()[0];
            y + b.reshape([1, c, 1, 1])
        }
        None => y,
    }
}

/// `burn::tensor::module::conv2d`, through the batch-wide kernels on Flex.
pub fn conv2d(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    options: ConvOptions<2>,
) -> Tensor<4> {
    let pad = options.padding_begin();
    let plain = options.dilation == [1, 1]
        && options.groups == 1
        && options.padding_end() == pad
        && gemm_path(&x, &weight, options.stride);
    if !plain {
        return burn::tensor::module::conv2d(x, weight, bias, options);
    }
    let y = Dispatch::gemm_conv2d(
        x.into_dispatch(),
        weight.into_dispatch(),
        options.stride[0],
        pad,
    );
    add_bias(Tensor::from_dispatch(y), bias)
}

/// `relu(conv2d(x, weight) + shift[channel])` (no dilation, no groups, padding `[rows, columns]`
/// on both sides): one pass over the output on Flex with f32, Burn's own ops elsewhere. For
/// inference with BatchNorm folded into `weight` and `shift` (the FID Inception).
pub fn conv2d_shift_relu(
    x: Tensor<4>,
    weight: Tensor<4>,
    shift: Tensor<1>,
    stride: usize,
    pad: [usize; 2],
) -> Tensor<4> {
    if !gemm_path(&x, &weight, [stride, stride]) || !flex::applies(&shift) {
        let options = ConvOptions::new_with_padding(
            [stride, stride],
            [(pad[0], pad[0]), (pad[1], pad[1])],
            [1, 1],
            1,
        );
        return burn::tensor::activation::relu(burn::tensor::module::conv2d(
            x,
            weight,
            Some(shift),
            options,
        ));
    }
    let y = Dispatch::gemm_conv2d_shift_relu(
        x.into_dispatch(),
        weight.into_dispatch(),
        shift.into_dispatch(),
        stride,
        pad,
    );
    Tensor::from_dispatch(y)
}

/// `burn::tensor::module::conv_transpose2d`, through the batch-wide kernels on Flex.
pub fn conv_transpose2d(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    options: ConvTransposeOptions<2>,
) -> Tensor<4> {
    let plain =
        options.dilation == [1, 1] && options.groups == 1 && gemm_path(&x, &weight, options.stride);
    if !plain {
        return burn::tensor::module::conv_transpose2d(x, weight, bias, options);
    }
    let y = Dispatch::gemm_conv_transpose2d(
        x.into_dispatch(),
        weight.into_dispatch(),
        options.stride[0],
        options.padding,
        options.padding_out,
    );
    add_bias(Tensor::from_dispatch(y), bias)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::max_abs_diff;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// The input row (or column) read by output row `o` at kernel row `ki` with padding
    /// `pad`, if inside `0..size`.
    fn source(g: &Geometry, o: usize, ki: usize, pad: usize, size: usize) -> Option<usize> {
        let i = (o * g.stride + ki) as isize - pad as isize;
        (i >= 0 && (i as usize) < size).then_some(i as usize)
    }

    /// The convolution by its definition, one output at a time (f64 sums).
    fn direct(g: &Geometry, x: &[f32], w: &[f32]) -> Vec<f32> {
        let mut y = vec![0.0; g.batch * g.c_out * g.oh * g.ow];
        for b in 0..g.batch {
            for o in 0..g.c_out {
                for oh in 0..g.oh {
                    for ow in 0..g.ow {
                        let mut sum = 0.0f64;
                        for c in 0..g.c_in {
                            for ki in 0..g.kh {
                                for kj in 0..g.kw {
                                    let (Some(ih), Some(iw)) = (
                                        source(g, oh, ki, g.pad_h, g.h),
                                        source(g, ow, kj, g.pad_w, g.w),
                                    ) else {
                                        continue;
                                    };
                                    let xv = x[((b * g.c_in + c) * g.h + ih) * g.w + iw];
                                    let wv = w[((o * g.c_in + c) * g.kh + ki) * g.kw + kj];
                                    sum += xv as f64 * wv as f64;
                                }
                            }
                        }
                        y[((b * g.c_out + o) * g.oh + oh) * g.ow + ow] = sum as f32;
                    }
                }
            }
        }
        y
    }

    fn random(n: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    fn dot(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(a, b)| *a as f64 * *b as f64).sum()
    }

    /// `(batch, c_in, h, w, c_out, [kh, kw], stride, [pad_h, pad_w])`.
    type Case = (
        usize,
        usize,
        usize,
        usize,
        usize,
        [usize; 2],
        usize,
        [usize; 2],
    );

    /// The critic's and generator's 4x4/2/1 layers, odd sizes, stride 1 and 3, padding 0 and 2,
    /// 1x1 kernels, the FID Inception's 1x7/7x1 and 1x3/3x1 kernels with their one-sided
    /// paddings, a rectangular kernel at stride 2, two 4x4/2/1 layers with channels for the
    /// Winograd path (one of them rectangular), and a batch of 20 images of 1 MiB columns
    /// each, which the 2 MiB chunks split in ten (last: the test of the chunks reads it).
    const CASES: [Case; 15] = [
        (3, 3, 16, 16, 8, [4, 4], 2, [1, 1]),
        (2, 8, 8, 8, 16, [4, 4], 2, [1, 1]),
        (2, 5, 7, 9, 3, [3, 3], 1, [1, 1]),
        (3, 4, 11, 10, 6, [4, 4], 2, [1, 1]),
        (2, 3, 10, 10, 4, [3, 3], 3, [2, 2]),
        (2, 6, 5, 5, 7, [1, 1], 1, [0, 0]),
        (1, 2, 6, 6, 3, [5, 5], 2, [0, 0]),
        (2, 5, 9, 9, 4, [1, 7], 1, [0, 3]),
        (2, 5, 9, 9, 4, [7, 1], 1, [3, 0]),
        (2, 6, 4, 5, 3, [1, 3], 1, [0, 1]),
        (2, 6, 5, 4, 3, [3, 1], 1, [1, 0]),
        (2, 3, 9, 8, 4, [3, 2], 2, [1, 0]),
        (3, 16, 8, 8, 16, [4, 4], 2, [1, 1]),
        (2, 32, 16, 12, 48, [4, 4], 2, [1, 1]),
        (20, 64, 32, 32, 4, [4, 4], 2, [1, 1]),
    ];

    fn geometries() -> impl Iterator<Item = Geometry> {
        CASES
            .iter()
            .map(|&(batch, c_in, h, w, c_out, [kh, kw], stride, pad)| {
                conv_geometry([batch, c_in, h, w], [c_out, c_in, kh, kw], stride, pad)
            })
    }

    #[test]
    fn forward_equals_the_definition() {
        println!("CPU: {}", crate::simd_level());
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for g in geometries() {
            let x = random(g.batch * g.c_in * g.h * g.w, &mut rng);
            let w = random(g.c_out * g.rows(), &mut rng);
            let err = max_abs_diff(&forward(&g, &x, &w), &direct(&g, &x, &w));
            assert!(err < 1e-4, "{g:?}: {err}");
        }
        assert!(
            geometries().last().unwrap().chunk() < 20,
            "the last case spans two chunks"
        );
    }

    /// `backward_data` is the adjoint of `forward` in x, `backward_weight` its adjoint in w:
    /// <dy, conv(x, w)> = <backward_data(dy, w), x> = <backward_weight(x, dy), w>.
    #[test]
    fn gradients_are_the_adjoints_of_the_forward_convolution() {
        println!("CPU: {}", crate::simd_level());
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        for g in geometries() {
            let x = random(g.batch * g.c_in * g.h * g.w, &mut rng);
            let w = random(g.c_out * g.rows(), &mut rng);
            let dy = random(g.batch * g.c_out * g.positions(), &mut rng);
            let reference = dot(&dy, &direct(&g, &x, &w));
            let through_x = dot(&backward_data(&g, &dy, &w), &x);
            let through_w = dot(&backward_weight(&g, &x, &dy), &w);
            let tol = 1e-5 * (x.len() as f64).sqrt() * (w.len() as f64).sqrt();
            assert!(
                (through_x - reference).abs() < tol,
                "{g:?}: {through_x} vs {reference}"
            );
            assert!(
                (through_w - reference).abs() < tol,
                "{g:?}: {through_w} vs {reference}"
            );
        }
    }

    /// On Flex with autodiff, [`conv2d`] and [`conv_transpose2d`] give Burn's own values and
    /// gradients (input, kernel, bias), at first order and through an input gradient
    /// differentiated again (the gradient penalty's pattern).
    #[test]
    fn burn_ops_on_flex_match_burn_own_convolutions() {
        let device = Device::flex().autodiff();
        device.seed(3);
        for g in geometries().take(CASES.len() - 1) {
            crate::testing::check_conv(
                [g.batch, g.c_in, g.h, g.w],
                [g.c_out, g.c_in, g.kh, g.kw],
                g.stride,
                [g.pad_h, g.pad_w],
                &device,
            );
        }
    }

    /// With a shift, the forward pass is `relu(definition + shift[channel])` (the 1x1 case
    /// takes the path without im2col).
    #[test]
    fn fused_shift_relu_equals_the_definition() {
        println!("CPU: {}", crate::simd_level());
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        for g in geometries() {
            let x = random(g.batch * g.c_in * g.h * g.w, &mut rng);
            let w = random(g.c_out * g.rows(), &mut rng);
            let shift = random(g.c_out, &mut rng);
            let p = g.positions();
            let expected: Vec<f32> = direct(&g, &x, &w)
                .iter()
                .enumerate()
                .map(|(i, v)| (v + shift[(i / p) % g.c_out]).max(0.0))
                .collect();
            assert!(
                expected.iter().any(|&v| v == 0.0) && expected.iter().any(|&v| v > 0.0),
                "{g:?}"
            );
            let err = max_abs_diff(&forward_fused(&g, &x, &w, Some(&shift)), &expected);
            assert!(err < 1e-4, "{g:?}: {err}");
        }
    }

    /// [`conv2d_shift_relu`] equals Burn's `relu(conv2d(x, w, shift))` on Flex, and with
    /// autodiff also in its gradients with respect to the input, the kernel and the shift.
    #[test]
    fn shift_relu_matches_burn_ops_with_and_without_autodiff() {
        use burn::tensor::Distribution;
        use burn::tensor::activation::relu;
        for (device, tracked) in [(Device::flex(), false), (Device::flex().autodiff(), true)] {
            device.seed(5);
            for g in geometries() {
                let normal = Distribution::Normal(0.0, 1.0);
                let x = Tensor::<4>::random([g.batch, g.c_in, g.h, g.w], normal, &device);
                let w = Tensor::<4>::random([g.c_out, g.c_in, g.kh, g.kw], normal, &device);
                let b = Tensor::<1>::random([g.c_out], normal, &device);
                let (pad, stride) = ([g.pad_h, g.pad_w], g.stride);
                let options = ConvOptions::new([stride; 2], pad, [1, 1], 1);
                let run = |ours: bool| {
                    let (x, w, b) = if tracked {
                        (
                            x.clone().require_grad(),
                            w.clone().require_grad(),
                            b.clone().require_grad(),
                        )
                    } else {
                        (x.clone(), w.clone(), b.clone())
                    };
                    let y = if ours {
                        conv2d_shift_relu(x.clone(), w.clone(), b.clone(), stride, pad)
                    } else {
                        let y = burn::tensor::module::conv2d(
                            x.clone(),
                            w.clone(),
                            Some(b.clone()),
                            options.clone(),
                        );
                        relu(y)
                    };
                    let mut out = vec![y.clone().into_data().try_to_vec::<f32>().unwrap()];
                    if tracked {
                        let grads = (y.clone() * y).sum().backward();
                        for g in [
                            x.grad(&grads).unwrap().into_data(),
                            w.grad(&grads).unwrap().into_data(),
                            b.grad(&grads).unwrap().into_data(),
                        ] {
                            out.push(g.try_to_vec::<f32>().unwrap());
                        }
                    }
                    out
                };
                let (ours, burn) = (run(true), run(false));
                assert_eq!(ours.len(), if tracked { 4 } else { 1 });
                for (i, (a, b)) in ours.iter().zip(&burn).enumerate() {
                    let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
                    let err = max_abs_diff(a, b);
                    assert!(
                        err < 1e-5 * scale,
                        "{g:?} output {i}: {err} (scale {scale})"
                    );
                }
            }
        }
    }

    /// The kernels against the definition and the adjoint identities (f64 truth, including a
    /// batch that spans ten im2col chunks) with the CPU's vector extensions taken away by
    /// qemu-user's CPU models: Haswell (AVX2 + FMA, no AVX-512) and Nehalem (no AVX), so that
    /// the gemm crate's AVX2 and scalar micro-kernels run whatever machine runs the tests.
    /// (Against Burn's own ops on the shipped shapes it took over 20 minutes under qemu; the
    /// training-parity test also runs there, through every kernel.)
    #[test]
    fn kernels_match_the_definition_on_avx2_and_scalar() {
        for name in [
            "conv::tests::forward_equals_the_definition",
            "conv::tests::gradients_are_the_adjoints_of_the_forward_convolution",
            "conv::tests::fused_shift_relu_equals_the_definition",
            "winograd::tests::winograd_equals_the_im2col_convolution_and_its_input_gradient",
            "winograd::tests::lanes_are_the_transposed_planes",
            "activation::tests::tanh_is_within_two_ulp_of_the_exact_value",
        ] {
            crate::testing::under_emulated_cpus(name, &[]);
        }
    }

    /// The same checks natively with this crate's kernels capped at AVX2 and at scalar
    /// (`BURN_FLEX_KERNELS_SIMD`, what `scripts/bench.py --avx2` times).
    #[test]
    fn kernels_match_the_definition_with_simd_capped() {
        for name in [
            "conv::tests::forward_equals_the_definition",
            "conv::tests::gradients_are_the_adjoints_of_the_forward_convolution",
            "winograd::tests::winograd_equals_the_im2col_convolution_and_its_input_gradient",
            "winograd::tests::lanes_are_the_transposed_planes",
            "activation::tests::tanh_is_within_two_ulp_of_the_exact_value",
        ] {
            crate::testing::under_simd_caps(name);
        }
    }
}

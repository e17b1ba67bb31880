//! The DCGAN convolution (4x4 kernel, stride 2, padding 1) with Winograd's minimal filtering
//! F(2x2, 2x2): 9 multiplications per 2x2 output tile and stride phase instead of 16, so the
//! matrix products of the forward pass and of the input gradient do 9/16 of the im2col
//! products' work.
//!
//! A stride-2 4x4 convolution is the sum over the four stride phases `(φ, ψ)` of the padded
//! input, `Q_φψ[u, v] = x_pad[2u + φ, 2v + ψ]`, of stride-1 2x2 correlations with the
//! sub-kernels `g_φψ[a, b] = W[2a + φ, 2b + ψ]`. Each output tile `y[2s..2s+2, 2t..2t+2]`
//! reads the 3x3 window `d = Q_φψ[2s..2s+3, 2t..2t+3]` of each phase, and (Lavin & Gray 2016)
//!
//! `y_tile = A^T [ sum over c, φψ of (G g G^T) ⊙ (B^T d B) ] A`
//!
//! with `B^T = [[1,-1,0],[0,1,0],[0,-1,1]]`, `G = [[1,0],[1,1],[0,1]]`, `A^T = [[1,1,0],[0,1,1]]`
//! (only additions and subtractions). The sum over channels and phases is, for each of the 9
//! transformed points `ξ`, one matrix product `M_ξ [c_out, tiles] = U_ξ [c_out, 4 c_in]
//! V_ξ [4 c_in, tiles]`. The input gradient is its adjoint, the same transforms run
//! backwards: `Z = A dY A^T` per tile, `dV_ξ = U_ξ^T Z_ξ`, then `B dV B^T` added back onto
//! the overlapping windows. (The kernel gradient stays on im2col: see
//! [`crate::conv::backward_weight`].)
//!
//! The transforms work on 16 channels at a time (one AVX-512 vector): each image's 16 planes
//! are transposed to `[position][16]` (in registers with AVX-512), the padded image is read
//! tile by tile, and `V`, `M`, `Z` keep the channels innermost, so that a small image (2x2
//! tiles) costs as little per value as a large one. Planes of 2-16 tiles per row transformed
//! one at a time cost more than the products saved (README, issue 17).
//!
//! Written by hand: no crate offers Winograd convolutions for this shape.

use crate::conv::{Geometry, each_chunk, inside_parallel, matmul_strided, run_chunks};
use burn::backend::flex::FlexTensor;
use burn::tensor::Bytes;
use rayon::prelude::*;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Bytes of one chunk's transformed input and product (`V` and `M`, or `dV` and `Z`)...
const CHUNK_BYTES: usize = 4 << 20;

/// ...but at least this many tiles per chunk: each product packs its `U_ξ` (up to 2 MiB) once
/// per chunk, so small images need more of them per chunk. `benches/conv.rs --iteration`, 2
/// threads, Zen 4, two runs each: 0 tiles 0.55 / 3.21 s (32x32 / 64x64), 256 0.55-0.61 /
/// 3.11-3.13, 512 0.51-0.59 / 2.80-2.86, 1024 0.55 / 2.93.
const MIN_COLUMNS: usize = 512;

/// Whether `g` is a 4x4, stride-2, padding-1 convolution with an even output tiling
/// (`h = 2 oh`, `w = 2 ow`, `oh` and `ow` even) and channels in and out that are multiples
/// of 16 (the transforms' vector width; the critic's first layer with 3 input channels and
/// the generator's last with 3 outputs take the im2col path), and the path is not switched off (`BURN_FLEX_KERNELS_WINOGRAD=0`).
pub(crate) fn applies(g: &Geometry) -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let enabled = *ENABLED.get_or_init(|| {
        std::env::var("BURN_FLEX_KERNELS_WINOGRAD").map_or(true, |v| v.trim() != "0")
    });
    enabled && shape_fits(g)
}

/// [`applies`] without the switch.
pub(crate) fn shape_fits(g: &Geometry) -> bool {
    g.kh == 4
        && g.kw == 4
        && g.stride == 2
        && g.pad_h == 1
        && g.pad_w == 1
        && g.h == 2 * g.oh
        && g.w == 2 * g.ow
        && g.oh % 2 == 0
        && g.ow % 2 == 0
        && g.oh > 0
        && g.ow > 0
        && g.c_in % L == 0
        && g.c_out % L == 0
}

/// The tiling of one image: `th x tw` output tiles of 2x2.
#[derive(Clone, Copy)]
struct Tiles {
    th: usize,
    tw: usize,
}

impl Tiles {
    fn of(g: &Geometry) -> Self {
        Tiles {
            th: g.oh / 2,
            tw: g.ow / 2,
        }
    }

    /// Tiles per image.
    fn count(&self) -> usize {
        self.th * self.tw
    }
}

/// Channels per vector: every transform works on 16 channels at once (one AVX-512 register,
/// two AVX2 or four SSE registers), so that its cost does not grow as images get small.
const L: usize = 16;

/// 16 channels of one position.
type Lane = [f32; L];

#[inline(always)]
fn add(a: Lane, b: Lane) -> Lane {
    let mut r = a;
    for i in 0..L {
        r[i] += b[i];
    }
    r
}

#[inline(always)]
fn sub(a: Lane, b: Lane) -> Lane {
    let mut r = a;
    for i in 0..L {
        r[i] -= b[i];
    }
    r
}

#[inline(always)]
fn load(s: &[f32]) -> Lane {
    s[..L].try_into().expect("16 lanes")
}

#[inline(always)]
fn store(d: &mut [f32], v: Lane) {
    d[..L].copy_from_slice(&v);
}

/// `B^T d`: `(d0 - d1, d1, d2 - d1)`.
#[inline(always)]
fn bt(d: [Lane; 3]) -> [Lane; 3] {
    [sub(d[0], d[1]), d[1], sub(d[2], d[1])]
}

/// `B v`, the adjoint of [`bt`]: `(v0, v1 - v0 - v2, v2)`.
#[inline(always)]
fn b(v: [Lane; 3]) -> [Lane; 3] {
    [v[0], sub(sub(v[1], v[0]), v[2]), v[2]]
}

/// `A^T m`: `(m0 + m1, m1 + m2)`.
#[inline(always)]
fn at(m: [Lane; 3]) -> [Lane; 2] {
    [add(m[0], m[1]), add(m[1], m[2])]
}

/// `A y` (and `G g`), the adjoint of [`at`]: `(y0, y0 + y1, y1)`.
#[inline(always)]
fn a(y: [Lane; 2]) -> [Lane; 3] {
    [y[0], add(y[0], y[1]), y[1]]
}

/// Images per chunk.
fn chunk(g: &Geometry) -> usize {
    let t = Tiles::of(g).count();
    let per_image = (36 * g.c_in + 9 * g.c_out) * t * 4;
    (CHUNK_BYTES / per_image.max(1))
        .max(MIN_COLUMNS.div_ceil(t))
        .clamp(1, g.batch.max(1))
}

/// `planes [16][len]` (16 planes, one after the other) as `lanes [len][16]`.
#[inline(always)]
fn to_lanes(planes: &[f32], len: usize, lanes: &mut [f32]) {
    let (planes, lanes) = (&planes[..L * len], &mut lanes[..L * len]);
    let blocks = len / L * L;
    for q in (0..blocks).step_by(L) {
        transpose16(&planes[q..], len, &mut lanes[q * L..], L);
    }
    for l in 0..L {
        for q in blocks..len {
            lanes[q * L + l] = planes[l * len + q];
        }
    }
}

/// The inverse of [`to_lanes`].
#[inline(always)]
fn from_lanes(lanes: &[f32], len: usize, planes: &mut [f32]) {
    let (lanes, planes) = (&lanes[..L * len], &mut planes[..L * len]);
    let blocks = len / L * L;
    for q in (0..blocks).step_by(L) {
        transpose16(&lanes[q * L..], L, &mut planes[q..], len);
    }
    for l in 0..L {
        for q in blocks..len {
            planes[l * len + q] = lanes[q * L + l];
        }
    }
}

/// `dst[j * dst_stride + i] = src[i * src_stride + j]` for `i, j < 16`: with AVX-512 in
/// registers (unpack and lane shuffles, 64 instructions), else element by element.
#[inline(always)]
fn transpose16(src: &[f32], src_stride: usize, dst: &mut [f32], dst_stride: usize) {
    assert!(src.len() >= 15 * src_stride + L && dst.len() >= 15 * dst_stride + L);
    #[cfg(target_arch = "x86_64")]
    if crate::simd() == crate::Simd::Avx512 {
        // SAFETY: this CPU has AVX-512F; the assert keeps the 16 rows inside both slices.
        unsafe { transpose16_avx512(src.as_ptr(), src_stride, dst.as_mut_ptr(), dst_stride) };
        return;
    }
    for i in 0..L {
        for j in 0..L {
            dst[j * dst_stride + i] = src[i * src_stride + j];
        }
    }
}

/// [`transpose16`] in AVX-512 registers. Safety: 16 rows of 16 floats at `src + i * src_stride`
/// and `dst + j * dst_stride` must be readable / writable.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose16_avx512(src: *const f32, src_stride: usize, dst: *mut f32, dst_stride: usize) {
    use std::arch::x86_64::*;
    // SAFETY (every load and store below): inside the rows the caller guarantees.
    let r: [__m512; 16] =
        std::array::from_fn(|i| unsafe { _mm512_loadu_ps(src.add(i * src_stride)) });
    // Within each 128-bit lane: rows (2i, 2i+1) interleaved, then 4x4 blocks transposed.
    let mut a = [_mm512_setzero_ps(); 16];
    for i in 0..8 {
        a[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        a[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    let mut b = [_mm512_setzero_ps(); 16];
    for i in 0..4 {
        let pd = |v: __m512| _mm512_castps_pd(v);
        let ps = |v: __m512d| _mm512_castpd_ps(v);
        b[4 * i] = ps(_mm512_unpacklo_pd(pd(a[4 * i]), pd(a[4 * i + 2])));
        b[4 * i + 1] = ps(_mm512_unpackhi_pd(pd(a[4 * i]), pd(a[4 * i + 2])));
        b[4 * i + 2] = ps(_mm512_unpacklo_pd(pd(a[4 * i + 1]), pd(a[4 * i + 3])));
        b[4 * i + 3] = ps(_mm512_unpackhi_pd(pd(a[4 * i + 1]), pd(a[4 * i + 3])));
    }
    // b[4i + j], lane l: column 4l + j of rows 4i..4i+4. Gather the four lanes of each column.
    for j in 0..4 {
        let c1 = _mm512_shuffle_f32x4::<0x44>(b[j], b[4 + j]);
        let c2 = _mm512_shuffle_f32x4::<0xEE>(b[j], b[4 + j]);
        let d1 = _mm512_shuffle_f32x4::<0x44>(b[8 + j], b[12 + j]);
        let d2 = _mm512_shuffle_f32x4::<0xEE>(b[8 + j], b[12 + j]);
        let out = [
            _mm512_shuffle_f32x4::<0x88>(c1, d1),
            _mm512_shuffle_f32x4::<0xDD>(c1, d1),
            _mm512_shuffle_f32x4::<0x88>(c2, d2),
            _mm512_shuffle_f32x4::<0xDD>(c2, d2),
        ];
        for (l, v) in out.into_iter().enumerate() {
            unsafe { _mm512_storeu_ps(dst.add((4 * l + j) * dst_stride), v) };
        }
    }
}

widest! {
    /// One image of [`transform_input`]: its planes `[c_in][h][w]` -> its rows of `V`,
    /// `[T][9 ξ][4 c_in]`.
    fn input_image(g: &Geometry, planes: &[f32], rows: &mut [f32]) {
        let k = Tiles::of(g);
        let (kk, hw, wp) = (4 * g.c_in, g.h * g.w, g.w + 2);
        // The padded image, 16 channels per position: [h + 2][w + 2][16].
        let mut pad = vec![0.0f32; (g.h + 2) * wp * L];
        let mut lanes = vec![0.0f32; hw * L];
        for cb in 0..g.c_in / L {
            to_lanes(&planes[cb * L * hw..][..L * hw], hw, &mut lanes);
            for (i, line) in lanes.chunks_exact(g.w * L).enumerate() {
                pad[((i + 1) * wp + 1) * L..][..g.w * L].copy_from_slice(line);
            }
            for (tile, row) in rows.chunks_exact_mut(9 * kk).enumerate() {
                let (s, tt) = (tile / k.tw, tile % k.tw);
                // Macros, not closures: a closure is compiled without the caller's target
                // features and called, not inlined.
                macro_rules! patch {
                    ($e:expr, $f:expr) => {
                        load(&pad[((4 * s + $e) * wp + 4 * tt + $f) * L..])
                    };
                }
                for phi in 0..2 {
                    for psi in 0..2 {
                        let col = (phi * 2 + psi) * g.c_in + cb * L;
                        // Columns first: cols[α] = B^T d[α][.]; then rows: B^T cols[.][β].
                        macro_rules! col_of {
                            ($e:expr) => {
                                bt([patch!($e, psi), patch!($e, 2 + psi), patch!($e, 4 + psi)])
                            };
                        }
                        let cols = [col_of!(phi), col_of!(2 + phi), col_of!(4 + phi)];
                        for beta in 0..3 {
                            let out = bt([cols[0][beta], cols[1][beta], cols[2][beta]]);
                            for (alpha, o) in out.into_iter().enumerate() {
                                store(&mut row[(alpha * 3 + beta) * kk + col..], o);
                            }
                        }
                    }
                }
            }
        }
    }
}

widest! {
    /// One image of [`transform_input_adjoint`]: its rows of `dV` -> its planes of `dx`.
    fn input_adjoint_image(g: &Geometry, rows: &[f32], image: &mut [f32]) {
        let k = Tiles::of(g);
        let (kk, hw, wp) = (4 * g.c_in, g.h * g.w, g.w + 2);
        let mut pad = vec![0.0f32; (g.h + 2) * wp * L];
        let mut lanes = vec![0.0f32; hw * L];
        for cb in 0..g.c_in / L {
            pad.fill(0.0);
            for (tile, row) in rows.chunks_exact(9 * kk).enumerate() {
                let (s, tt) = (tile / k.tw, tile % k.tw);
                for phi in 0..2 {
                    for psi in 0..2 {
                        let col = (phi * 2 + psi) * g.c_in + cb * L;
                        macro_rules! d {
                            ($alpha:expr, $beta:expr) => {
                                load(&row[($alpha * 3 + $beta) * kk + col..])
                            };
                        }
                        // The forward's two passes backwards: rows, then columns.
                        macro_rules! dcol {
                            ($beta:expr) => {
                                b([d!(0, $beta), d!(1, $beta), d!(2, $beta)])
                            };
                        }
                        let dcols = [dcol!(0), dcol!(1), dcol!(2)];
                        for alpha in 0..3 {
                            let dd = b([dcols[0][alpha], dcols[1][alpha], dcols[2][alpha]]);
                            let e = 2 * alpha + phi;
                            for (beta, v) in dd.into_iter().enumerate() {
                                let at = ((4 * s + e) * wp + 4 * tt + 2 * beta + psi) * L;
                                let cell = &mut pad[at..at + L];
                                store(cell, add(load(cell), v));
                            }
                        }
                    }
                }
            }
            for (i, line) in lanes.chunks_exact_mut(g.w * L).enumerate() {
                line.copy_from_slice(&pad[((i + 1) * wp + 1) * L..][..g.w * L]);
            }
            from_lanes(&lanes, hw, &mut image[cb * L * hw..][..L * hw]);
        }
    }
}

widest! {
    /// One image of [`transform_output_adjoint`]: its planes of `dy` -> its rows of `Z`.
    fn output_adjoint_image(g: &Geometry, planes: &[f32], rows: &mut [f32]) {
        let k = Tiles::of(g);
        let (p, o_all) = (g.oh * g.ow, g.c_out);
        let mut lanes = vec![0.0f32; p * L];
        for ob in 0..o_all / L {
            to_lanes(&planes[ob * L * p..][..L * p], p, &mut lanes);
            for (tile, row) in rows.chunks_exact_mut(9 * o_all).enumerate() {
                let (s, tt) = (tile / k.tw, tile % k.tw);
                macro_rules! y {
                    ($i:expr, $j:expr) => {
                        load(&lanes[((2 * s + $i) * g.ow + 2 * tt + $j) * L..])
                    };
                }
                let r = [a([y!(0, 0), y!(0, 1)]), a([y!(1, 0), y!(1, 1)])];
                for beta in 0..3 {
                    for (alpha, v) in a([r[0][beta], r[1][beta]]).into_iter().enumerate() {
                        store(&mut row[(alpha * 3 + beta) * o_all + ob * L..], v);
                    }
                }
            }
        }
    }
}

widest! {
    /// One image of [`transform_output`]: its rows of `M` -> its planes of `y`.
    fn output_image(g: &Geometry, rows: &[f32], image: &mut [f32], shift: Option<&[f32]>) {
        let k = Tiles::of(g);
        let (p, o_all) = (g.oh * g.ow, g.c_out);
        let mut lanes = vec![0.0f32; p * L];
        for ob in 0..o_all / L {
            let add_relu = shift.map(|s| load(&s[ob * L..]));
            for (tile, row) in rows.chunks_exact(9 * o_all).enumerate() {
                let (s, tt) = (tile / k.tw, tile % k.tw);
                macro_rules! row_of {
                    ($al:expr) => {
                        at([
                            load(&row[3 * $al * o_all + ob * L..]),
                            load(&row[(3 * $al + 1) * o_all + ob * L..]),
                            load(&row[(3 * $al + 2) * o_all + ob * L..]),
                        ])
                    };
                }
                let r = [row_of!(0), row_of!(1), row_of!(2)];
                for j in 0..2 {
                    for (i, mut v) in at([r[0][j], r[1][j], r[2][j]]).into_iter().enumerate() {
                        if let Some(sh) = add_relu {
                            for l in 0..L {
                                v[l] = (v[l] + sh[l]).max(0.0);
                            }
                        }
                        store(&mut lanes[((2 * s + i) * g.ow + 2 * tt + j) * L..], v);
                    }
                }
            }
            from_lanes(&lanes, p, &mut image[ob * L * p..][..L * p]);
        }
    }
}

/// `V [n*T][9 ξ][4 c_in]` (`B^T d B` of every tile's 3x3 window of every stride phase, column
/// `φψ * c_in + c`) of images `b0..b0+n` of `x [B, c_in, h, w]`.
fn transform_input(g: &Geometry, x: &[f32], (b0, n): (usize, usize), v: &mut [f32], inside: bool) {
    let (t, kk, hw) = (Tiles::of(g).count(), 4 * g.c_in, g.h * g.w);
    each_chunk(&mut v[..n * t * 9 * kk], t * 9 * kk, inside, |bl, rows| {
        input_image(g, &x[(b0 + bl) * g.c_in * hw..][..g.c_in * hw], rows)
    });
}

/// The adjoint of [`transform_input`]: `dv` (laid out as `V`) back onto images `b0..b0+n` of
/// `dx`, whose planes `planes` (`[n, c_in, h, w]`) are overwritten.
fn transform_input_adjoint(g: &Geometry, dv: &[f32], n: usize, planes: &mut [f32], inside: bool) {
    let (t, kk, hw) = (Tiles::of(g).count(), 4 * g.c_in, g.h * g.w);
    each_chunk(
        &mut planes[..n * g.c_in * hw],
        g.c_in * hw,
        inside,
        |bl, image| input_adjoint_image(g, &dv[bl * t * 9 * kk..][..t * 9 * kk], image),
    );
}

/// `Z [n*T][9 ξ][c_out]` (`A dY A^T` per tile) of images `b0..b0+n` of `dy [B, c_out, oh, ow]`.
fn transform_output_adjoint(
    g: &Geometry,
    dy: &[f32],
    (b0, n): (usize, usize),
    z: &mut [f32],
    inside: bool,
) {
    let (t, p, o) = (Tiles::of(g).count(), g.oh * g.ow, g.c_out);
    each_chunk(&mut z[..n * t * 9 * o], t * 9 * o, inside, |bl, rows| {
        output_adjoint_image(g, &dy[(b0 + bl) * o * p..][..o * p], rows)
    });
}

/// `y` planes (`[n, c_out, oh, ow]`, overwritten) from `M [n*T][9 ξ][c_out]`:
/// `A^T M A` per tile, then `relu(y + shift[o])` when a shift is given.
fn transform_output(
    g: &Geometry,
    m: &[f32],
    n: usize,
    planes: &mut [f32],
    shift: Option<&[f32]>,
    inside: bool,
) {
    let (t, p, o) = (Tiles::of(g).count(), g.oh * g.ow, g.c_out);
    each_chunk(&mut planes[..n * o * p], o * p, inside, |bl, image| {
        output_image(g, &m[bl * t * 9 * o..][..t * 9 * o], image, shift)
    });
}

/// `U [c_out][9 ξ][4 c_in]` (`G g G^T` of every sub-kernel, column `φψ * c_in + c`) of
/// `w [c_out, c_in, 4, 4]`. Every element is written once, row by row (no zeroed buffer
/// first: at 256 -> 512 channels `U` is 19 MB).
pub(crate) fn transform_kernel(g: &Geometry, w: &[f32]) -> Vec<f32> {
    let (c_in, kk) = (g.c_in, 4 * g.c_in);
    let mut u = Vec::with_capacity(g.c_out * 9 * kk);
    let spare = &mut u.spare_capacity_mut()[..g.c_out * 9 * kk];
    spare.par_chunks_mut(9 * kk).enumerate().for_each(|(o, u)| {
        let kernels = &w[o * c_in * 16..][..c_in * 16];
        for phase in 0..4 {
            let (phi, psi) = (phase / 2, phase % 2);
            // The 9 rows (ξ = 3 α + β) of this phase's columns.
            let mut rows: [&mut [std::mem::MaybeUninit<f32>]; 9] = Default::default();
            let mut rest = &mut u[..];
            for (xi, row) in rows.iter_mut().enumerate() {
                let skip = if xi == 0 { phase * c_in } else { 3 * c_in };
                (*row, rest) = std::mem::take(&mut rest)[skip..].split_at_mut(c_in);
            }
            for (c, kernel) in kernels.chunks_exact(16).enumerate() {
                let gv = |a: usize, b: usize| kernel[(2 * a + phi) * 4 + 2 * b + psi];
                // G g: rows (g0, g0 + g1, g1), then the same on the columns.
                let r = [
                    [gv(0, 0), gv(0, 1)],
                    [gv(0, 0) + gv(1, 0), gv(0, 1) + gv(1, 1)],
                    [gv(1, 0), gv(1, 1)],
                ];
                for alpha in 0..3 {
                    let v = [r[alpha][0], r[alpha][0] + r[alpha][1], r[alpha][1]];
                    for beta in 0..3 {
                        rows[alpha * 3 + beta][c].write(v[beta]);
                    }
                }
            }
        }
    });
    // SAFETY: the loops above wrote every one of the first `c_out * 9 * kk` elements: for each
    // `o`, row `ξ` and phase, the `c_in` columns `(ξ * 4 + phase) * c_in + c`.
    unsafe { u.set_len(g.c_out * 9 * kk) };
    u
}

/// `U` of the Flex kernel `w` ([`transform_kernel`]), transformed once per buffer.
///
/// A Flex buffer is never written while shared (Flex copies it first), so while this cache
/// holds a reference to a kernel's buffer, the buffer's address names its values: the key is
/// the address and length of `w`'s values and the channels, and a hit can never be stale. An
/// entry is dropped once the cache holds the last reference (the kernel tensor is gone: a
/// spectrally normalized kernel after its step's backward pass, a parameter after the
/// optimizer's update). So the forward pass and the input gradient of a step share one
/// transform, and the generator's forwards between two of its updates (the critic steps'
/// fakes, then its own step) share one.
pub(crate) fn cached_kernel(g: &Geometry, w: &FlexTensor) -> Arc<Vec<f32>> {
    let values = crate::flex::values(w);
    let key = [values.as_ptr() as usize, values.len(), g.c_in, g.c_out];
    let mut cache = live_kernels();
    if let Some(e) = cache.iter().find(|e| e.key == key) {
        return Arc::clone(&e.u);
    }
    let u = Arc::new(transform_kernel(g, values));
    if cache.len() == MAX_KERNELS {
        cache.remove(0);
    }
    cache.push(CachedKernel {
        owner: w.data_arc(),
        key,
        u: Arc::clone(&u),
    });
    u
}

/// One entry of [`cached_kernel`]'s cache: the buffer it pins, its key, its transform.
struct CachedKernel {
    owner: Arc<Bytes>,
    key: [usize; 4],
    u: Arc<Vec<f32>>,
}

/// The cache of [`cached_kernel`], oldest first.
static KERNELS: Mutex<Vec<CachedKernel>> = Mutex::new(Vec::new());

/// At most this many live kernels keep their transforms (a DCGAN at 64x64 has 6 in use at
/// once: three critic layers in two forward passes; the generator's three add 3).
const MAX_KERNELS: usize = 32;

/// The cache, locked, without the entries of dead kernels (those it holds the last
/// reference to).
fn live_kernels() -> MutexGuard<'static, Vec<CachedKernel>> {
    let mut cache = KERNELS.lock().unwrap_or_else(PoisonError::into_inner);
    cache.retain(|e| Arc::strong_count(&e.owner) > 1);
    cache
}

/// How many transforms [`cached_kernel`] holds (after dropping those of dead kernels).
#[cfg(test)]
fn cached_kernels() -> usize {
    live_kernels().len()
}

/// How a path's chunks run ([`inside_parallel`]) and its scratch: `V` or `dV` in `cols`, `M`
/// or `Z` in `mat`.
fn plan(g: &Geometry) -> (bool, [usize; 3]) {
    let width = chunk(g) * Tiles::of(g).count();
    let lens = [36 * g.c_in * width, 9 * g.c_out * width, 0];
    (inside_parallel(g.batch, chunk(g)), lens)
}

// Layouts: U [c_out][9][4 c_in], V and dV [n*T][9][4 c_in], M and Z [n*T][9][c_out], so
// that the 9 products of a chunk read strided views: U_ξ [c_out, 4 c_in] (rows 9 * 4 c_in),
// V_ξ [4 c_in, n*T] (columns 9 * 4 c_in), M_ξ and Z_ξ [c_out, n*T] (columns 9 * c_out).

/// The forward convolution (see [`crate::conv::forward_fused`]), for [`applies`] geometries.
/// `u` is the kernel's transform ([`transform_kernel`], [`cached_kernel`]).
pub(crate) fn forward(g: &Geometry, x: &[f32], u: &[f32], shift: Option<&[f32]>) -> Vec<f32> {
    let (t, p, kk, o) = (Tiles::of(g).count(), g.oh * g.ow, 4 * g.c_in, g.c_out);
    let mut y = vec![0.0; g.batch * o * p];
    let ((inside, lens), chunk) = (plan(g), chunk(g));
    run_chunks(
        inside,
        lens,
        &mut y,
        chunk * o * p,
        |i, images, s, inside| {
            let n = images.len() / (o * p);
            let width = n * t;
            transform_input(g, x, (i * chunk, n), &mut s.cols, inside);
            let (kk9, o9) = (9 * kk as isize, 9 * o as isize);
            for xi in 0..9 {
                // M_ξ [c_out, n*T] = U_ξ [c_out, 4 c_in] V_ξ [4 c_in, n*T]
                let lhs = (&u[xi * kk..], kk9, 1);
                let rhs = (&s.cols[xi * kk..], 1, kk9);
                let dst = (&mut s.mat[xi * o..], 1, o9);
                matmul_strided((o, width, kk), dst, false, lhs, rhs, inside);
            }
            transform_output(g, &s.mat, n, images, shift, inside);
        },
    );
    y
}

/// The input gradient (see [`crate::conv::backward_data`]), for [`applies`] geometries.
/// `u` is the kernel's transform ([`transform_kernel`], [`cached_kernel`]).
pub(crate) fn backward_data(g: &Geometry, dy: &[f32], u: &[f32]) -> Vec<f32> {
    let (t, hw, kk, o) = (Tiles::of(g).count(), g.h * g.w, 4 * g.c_in, g.c_out);
    let mut dx = vec![0.0; g.batch * g.c_in * hw];
    let ((inside, lens), chunk) = (plan(g), chunk(g));
    run_chunks(
        inside,
        lens,
        &mut dx,
        chunk * g.c_in * hw,
        |i, planes, s, inside| {
            let n = planes.len() / (g.c_in * hw);
            let width = n * t;
            transform_output_adjoint(g, dy, (i * chunk, n), &mut s.mat, inside);
            let (kk9, o9) = (9 * kk as isize, 9 * o as isize);
            for xi in 0..9 {
                // dV_ξ [4 c_in, n*T] = U_ξ^T [4 c_in, c_out] Z_ξ [c_out, n*T]
                let lhs = (&u[xi * kk..], 1, kk9);
                let rhs = (&s.mat[xi * o..], 1, o9);
                let dst = (&mut s.cols[xi * kk..], 1, kk9);
                matmul_strided((kk, width, o), dst, false, lhs, rhs, inside);
            }
            transform_input_adjoint(g, &s.cols, n, planes, inside);
        },
    );
    dx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::{backward_data_im2col, conv_geometry, forward_fused_im2col};
    use crate::testing::max_abs_diff;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random(n: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    /// `(batch, c_in, h, w, c_out)` of 4x4/2/1 convolutions: the DCGAN layers' shapes at a
    /// small batch, a rectangular one, one tile per image, and a batch that spans several
    /// chunks (so that chunks run one per task).
    const CASES: [(usize, usize, usize, usize, usize); 6] = [
        (2, 16, 8, 8, 16),
        (3, 32, 16, 12, 48),
        (2, 64, 4, 4, 32),
        (4, 16, 32, 32, 64),
        (5, 128, 8, 8, 256),
        (24, 16, 64, 64, 16),
    ];

    fn geometries() -> impl Iterator<Item = Geometry> {
        CASES.iter().map(|&(b, c, h, w, o)| {
            let g = conv_geometry([b, c, h, w], [o, c, 4, 4], 2, [1, 1]);
            assert!(shape_fits(&g), "{g:?}");
            g
        })
    }

    /// The forward pass (with and without the fused shift) and the input gradient against the
    /// im2col kernels (themselves checked against the
    /// definition in `conv`), relative to the largest value, on one thread and on two.
    fn check_all() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for g in geometries() {
            let x = random(g.batch * g.c_in * g.h * g.w, &mut rng);
            let w = random(g.c_out * g.rows(), &mut rng);
            let dy = random(g.batch * g.c_out * g.positions(), &mut rng);
            let shift = random(g.c_out, &mut rng);
            let u = transform_kernel(&g, &w);
            let close = |ours: &[f32], reference: &[f32], what: &str| {
                assert_eq!(ours.len(), reference.len());
                let scale = reference.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let err = max_abs_diff(ours, reference) / scale;
                assert!(err < 2e-6, "{g:?} {what}: relative error {err}");
            };
            close(
                &forward(&g, &x, &u, None),
                &forward_fused_im2col(&g, &x, &w, None),
                "y",
            );
            close(
                &forward(&g, &x, &u, Some(&shift)),
                &forward_fused_im2col(&g, &x, &w, Some(&shift)),
                "relu(y + shift)",
            );
            close(
                &backward_data(&g, &dy, &u),
                &backward_data_im2col(&g, &dy, &w),
                "dx",
            );
        }
    }

    /// A Flex kernel is transformed once while its buffer lives; a write to it (which copies
    /// a shared buffer) gets the new values' transform; a dropped kernel's buffer is let go.
    #[test]
    fn a_kernel_is_transformed_once_per_buffer_and_never_stale() {
        let g = conv_geometry([2, 16, 8, 8], [32, 16, 4, 4], 2, [1, 1]);
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let w = crate::flex::tensor(random(32 * 16 * 16, &mut rng), [32, 16, 4, 4]);
        let u = cached_kernel(&g, &w);
        assert!(Arc::ptr_eq(&u, &cached_kernel(&g, &w.clone())));
        assert_eq!(*u, transform_kernel(&g, crate::flex::values(&w)));
        let mut v = w.clone();
        v.storage_mut::<f32>()[5] += 1.0;
        let uv = cached_kernel(&g, &v);
        assert_eq!(*uv, transform_kernel(&g, crate::flex::values(&v)));
        assert_ne!(*uv, *u);
        let (weak_w, weak_v) = (Arc::downgrade(&w.data_arc()), Arc::downgrade(&v.data_arc()));
        drop((w, v));
        cached_kernels();
        assert!(weak_w.upgrade().is_none() && weak_v.upgrade().is_none());
        assert!(cached_kernels() <= MAX_KERNELS);
    }

    #[test]
    fn winograd_equals_the_im2col_convolution_and_its_input_gradient() {
        println!("CPU: {}", crate::simd_level());
        assert!(
            geometries().any(|g| g.batch > 2 * chunk(&g)),
            "a case runs its chunks one per task"
        );
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(check_all);
        }
    }

    #[test]
    fn lanes_are_the_transposed_planes() {
        println!("CPU: {}", crate::simd_level());
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        for len in [4, 16, 20, 64, 100] {
            let planes = random(L * len, &mut rng);
            let mut lanes = vec![0.0; L * len];
            to_lanes(&planes, len, &mut lanes);
            for l in 0..L {
                for q in 0..len {
                    assert_eq!(lanes[q * L + l], planes[l * len + q], "len {len}");
                }
            }
            let mut back = vec![0.0; L * len];
            from_lanes(&lanes, len, &mut back);
            assert_eq!(back, planes, "len {len}");
        }
    }

    #[test]
    fn only_4x4_stride_2_padding_1_layers_with_an_even_tiling_take_the_path() {
        let fits = |x: [usize; 4], w: [usize; 4], s, p| shape_fits(&conv_geometry(x, w, s, p));
        assert!(fits([1, 16, 8, 8], [16, 16, 4, 4], 2, [1, 1]));
        assert!(
            !fits([1, 3, 8, 8], [64, 3, 4, 4], 2, [1, 1]),
            "3 input channels"
        );
        assert!(!fits([1, 64, 8, 8], [3, 64, 4, 4], 2, [1, 1]), "3 outputs");
        assert!(
            !fits([1, 16, 6, 6], [16, 16, 4, 4], 2, [1, 1]),
            "3x3 outputs"
        );
        assert!(!fits([1, 16, 9, 9], [16, 16, 4, 4], 2, [1, 1]), "odd input");
        assert!(
            !fits([1, 16, 8, 8], [16, 16, 3, 3], 2, [1, 1]),
            "3x3 kernel"
        );
        assert!(!fits([1, 16, 8, 8], [16, 16, 4, 4], 1, [1, 1]), "stride 1");
        assert!(!fits([1, 16, 8, 8], [16, 16, 4, 4], 2, [0, 0]), "padding 0");
    }
}

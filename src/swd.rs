//! Sliced Wasserstein distance between two image sets over Laplacian-pyramid patches
//! (Karras et al. 2018, "Progressive Growing of GANs", appendix D), a quality metric that needs
//! nothing downloaded.
//!
//! Follows the authors' `metrics/sliced_wasserstein.py`: images as 0..255 values; a Laplacian
//! pyramid (5x5 binomial filter, mirrored borders, as `cv2.pyrDown`/`pyrUp`) from the image
//! size down to 16x16; 128 random 7x7 patches per image and level; each channel of the
//! descriptors normalized to mean 0, std 1 per set; 4 repeats of 128 random unit directions,
//! each giving the mean absolute difference of the sorted projections; the distance is the
//! mean over repeats, times 1e3 as the authors report it. Written by hand: no crate does it.

use nalgebra::DMatrix;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Side of the square patches (neighbourhoods).
pub const PATCH: usize = 7;
/// Patches drawn per image and level.
pub const PATCHES_PER_IMAGE: usize = 128;
/// Random directions per repeat.
pub const DIRECTIONS: usize = 128;
/// Repeats, each with fresh directions.
pub const REPEATS: usize = 4;
/// The smallest pyramid level.
pub const MIN_RESOLUTION: usize = 16;

/// A set of `n` images `[n, channels, size, size]`, values 0..255, channel-first.
#[derive(Debug, Clone, PartialEq)]
pub struct Images {
    /// `n * channels * size * size` values.
    pub values: Vec<f32>,
    /// Number of images.
    pub n: usize,
    /// Channels per image.
    pub channels: usize,
    /// Height and width.
    pub size: usize,
}

impl Images {
    /// Wraps channel-first 8-bit pixels (`ImageSet` layout).
    pub fn from_bytes(bytes: &[u8], channels: usize, size: usize) -> Self {
        let n = bytes.len() / (channels * size * size);
        Self {
            values: bytes.iter().map(|&b| b as f32).collect(),
            n,
            channels,
            size,
        }
    }

    fn zeros(n: usize, channels: usize, size: usize) -> Self {
        Self {
            values: vec![0.0; n * channels * size * size],
            n,
            channels,
            size,
        }
    }

    /// The planes (`size * size` values), one per image and channel.
    fn planes(&self) -> std::slice::Chunks<'_, f32> {
        self.values.chunks(self.size * self.size)
    }
}

/// SWD per pyramid level (finest first) and their mean, times 1e3.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Swd {
    /// Resolution of each level, e.g. `[64, 32, 16]`.
    pub resolutions: Vec<usize>,
    /// Distance at each level.
    pub levels: Vec<f64>,
    /// Mean over the levels.
    pub mean: f64,
}

/// The 1D binomial filter; the 2D filter of `pyrDown` is its outer product.
const BINOMIAL: [f32; 5] = [1.0 / 16.0, 4.0 / 16.0, 6.0 / 16.0, 4.0 / 16.0, 1.0 / 16.0];

/// scipy.ndimage's `mirror` border: `d c b | a b c d | c b a`.
fn mirror(i: isize, n: usize) -> usize {
    let n = n as isize;
    let period = 2 * (n - 1).max(1);
    let i = i.rem_euclid(period);
    (if i < n { i } else { period - i }) as usize
}

/// Separable 5x5 binomial filter of one plane, times `gain`, mirrored borders.
fn blur(plane: &[f32], size: usize, gain: f32) -> Vec<f32> {
    let mut rows = vec![0.0; size * size];
    for y in 0..size {
        for x in 0..size {
            rows[y * size + x] = (0..5)
                .map(|k| BINOMIAL[k] * plane[y * size + mirror(x as isize + k as isize - 2, size)])
                .sum();
        }
    }
    let mut out = vec![0.0; size * size];
    for y in 0..size {
        for x in 0..size {
            out[y * size + x] = gain
                * (0..5)
                    .map(|k| {
                        BINOMIAL[k] * rows[mirror(y as isize + k as isize - 2, size) * size + x]
                    })
                    .sum::<f32>();
        }
    }
    out
}

/// `cv2.pyrDown`: blur, then every second pixel. `[n, c, s, s]` -> `[n, c, s/2, s/2]`.
pub fn pyr_down(images: &Images) -> Images {
    let (s, h) = (images.size, images.size / 2);
    let mut out = Images::zeros(images.n, images.channels, h);
    out.values
        .par_chunks_mut(h * h)
        .zip(images.values.par_chunks(s * s))
        .for_each(|(dst, src)| {
            let blurred = blur(src, s, 1.0);
            for y in 0..h {
                for x in 0..h {
                    dst[y * h + x] = blurred[2 * y * s + 2 * x];
                }
            }
        });
    out
}

/// `cv2.pyrUp`: zeros between the pixels, then blur times 4. `[n, c, s, s]` -> `[n, c, 2s, 2s]`.
pub fn pyr_up(images: &Images) -> Images {
    let (s, d) = (images.size, images.size * 2);
    let mut out = Images::zeros(images.n, images.channels, d);
    out.values
        .par_chunks_mut(d * d)
        .zip(images.values.par_chunks(s * s))
        .for_each(|(dst, src)| {
            let mut spread = vec![0.0; d * d];
            for y in 0..s {
                for x in 0..s {
                    spread[2 * y * d + 2 * x] = src[y * s + x];
                }
            }
            dst.copy_from_slice(&blur(&spread, d, 4.0));
        });
    out
}

/// The Laplacian pyramid with `levels` levels: band-pass images, finest first, then the
/// low-pass residual. Summing `pyr_up` from the coarsest level back rebuilds the images.
pub fn laplacian_pyramid(images: &Images, levels: usize) -> Vec<Images> {
    let mut pyramid = vec![images.clone()];
    for _ in 1..levels {
        let down = pyr_down(pyramid.last().expect("one level"));
        let up = pyr_up(&down);
        let finer = pyramid.last_mut().expect("one level");
        finer
            .values
            .iter_mut()
            .zip(&up.values)
            .for_each(|(v, u)| *v -= u);
        pyramid.push(down);
    }
    pyramid
}

/// Pyramid levels from `size` down to [`MIN_RESOLUTION`] (at least one).
pub fn resolutions(size: usize) -> Vec<usize> {
    let mut out = vec![size];
    while out.last().is_some_and(|&r| r / 2 >= MIN_RESOLUTION) {
        out.push(out.last().expect("non-empty") / 2);
    }
    out
}

/// Patch centres `(image, y, x)`: [`PATCHES_PER_IMAGE`] per image, inside the border.
fn patch_centres(n: usize, size: usize, rng: &mut ChaCha8Rng) -> Vec<(usize, usize, usize)> {
    let h = PATCH / 2;
    (0..n * PATCHES_PER_IMAGE)
        .map(|i| {
            let x = rng.random_range(h..size - h);
            let y = rng.random_range(h..size - h);
            (i / PATCHES_PER_IMAGE, y, x)
        })
        .collect()
}

/// Descriptors `[patches, channels * 7 * 7]` (column-major), each channel normalized to mean 0
/// and std 1 over all patches.
fn descriptors(level: &Images, centres: &[(usize, usize, usize)]) -> DMatrix<f32> {
    let (c, s, h) = (level.channels, level.size, PATCH / 2);
    let per_channel = PATCH * PATCH;
    let planes: Vec<&[f32]> = level.planes().collect();
    let mut desc = DMatrix::<f32>::zeros(centres.len(), c * per_channel);
    for ch in 0..c {
        for dy in 0..PATCH {
            for dx in 0..PATCH {
                let col = ch * per_channel + dy * PATCH + dx;
                for (row, &(img, y, x)) in centres.iter().enumerate() {
                    desc[(row, col)] = planes[img * c + ch][(y + dy - h) * s + (x + dx - h)];
                }
            }
        }
    }
    for ch in 0..c {
        let cols = ch * per_channel..(ch + 1) * per_channel;
        let block = desc.columns(cols.start, per_channel);
        let count = block.len() as f64;
        let mean = block.iter().map(|&v| v as f64).sum::<f64>() / count;
        let var = block
            .iter()
            .map(|&v| (v as f64 - mean).powi(2))
            .sum::<f64>()
            / count;
        let std = var.sqrt().max(1e-8);
        desc.columns_mut(cols.start, per_channel)
            .apply(|v| *v = ((*v as f64 - mean) / std) as f32);
    }
    desc
}

/// Mean absolute difference of the sorted projections on each column of `directions`.
fn sliced(a: &DMatrix<f32>, b: &DMatrix<f32>, directions: &DMatrix<f32>) -> f64 {
    let sorted = |m: &DMatrix<f32>| -> Vec<Vec<f32>> {
        let projected = m * directions; // [patches, directions]
        projected
            .column_iter()
            .map(|c| c.iter().copied().collect::<Vec<f32>>())
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(|mut c| {
                c.sort_unstable_by(f32::total_cmp);
                c
            })
            .collect()
    };
    let (pa, pb) = (sorted(a), sorted(b));
    let total: f64 = pa
        .iter()
        .zip(&pb)
        .map(|(x, y)| {
            x.iter()
                .zip(y)
                .map(|(p, q)| (p - q).abs() as f64)
                .sum::<f64>()
        })
        .sum();
    total / (a.nrows() * directions.ncols()) as f64
}

/// SWD between two image sets of the same shape; `seed` draws the patch positions (the same
/// for both sets, so that the distance is symmetric and zero for identical sets) and the
/// directions.
pub fn swd(a: &Images, b: &Images, seed: u64) -> Swd {
    assert_eq!(
        (a.n, a.channels, a.size),
        (b.n, b.channels, b.size),
        "SWD needs two sets of the same shape"
    );
    let resolutions = resolutions(a.size);
    let (pa, pb) = (
        laplacian_pyramid(a, resolutions.len()),
        laplacian_pyramid(b, resolutions.len()),
    );
    let levels: Vec<f64> = pa
        .iter()
        .zip(&pb)
        .enumerate()
        .map(|(i, (la, lb))| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_add(i as u64));
            let centres = patch_centres(la.n, la.size, &mut rng);
            let (da, db) = (descriptors(la, &centres), descriptors(lb, &centres));
            let dims = da.ncols();
            let repeats: Vec<f64> = (0..REPEATS)
                .map(|_| {
                    let mut dirs = DMatrix::<f32>::from_fn(dims, DIRECTIONS, |_, _| {
                        StandardNormal.sample(&mut rng)
                    });
                    for mut col in dirs.column_iter_mut() {
                        let norm = col.norm();
                        col /= norm;
                    }
                    sliced(&da, &db, &dirs)
                })
                .collect();
            1e3 * repeats.iter().sum::<f64>() / REPEATS as f64
        })
        .collect();
    let mean = levels.iter().sum::<f64>() / levels.len() as f64;
    Swd {
        resolutions,
        levels,
        mean,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` smooth random images: low-frequency blobs, like photographs more than noise.
    fn blobs(n: usize, channels: usize, size: usize, seed: u64) -> Images {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut values = Vec::with_capacity(n * channels * size * size);
        for _ in 0..n * channels {
            let (cx, cy, r, level) = (
                rng.random_range(0.0..size as f32),
                rng.random_range(0.0..size as f32),
                rng.random_range(3.0..size as f32 / 2.0),
                rng.random_range(60.0..255.0f32),
            );
            for y in 0..size {
                for x in 0..size {
                    let d2 = (x as f32 - cx).powi(2) + (y as f32 - cy).powi(2);
                    values.push(level * (-d2 / (2.0 * r * r)).exp());
                }
            }
        }
        Images {
            values,
            n,
            channels,
            size,
        }
    }

    fn noise(n: usize, channels: usize, size: usize, seed: u64) -> Images {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        Images {
            values: (0..n * channels * size * size)
                .map(|_| rng.random_range(0.0..255.0f32))
                .collect(),
            n,
            channels,
            size,
        }
    }

    #[test]
    fn mirror_border_matches_scipy() {
        // scipy.ndimage mirror mode on [a b c d]: index -2 -> c, -1 -> b, 4 -> c, 5 -> b.
        let idx: Vec<usize> = [-2, -1, 0, 3, 4, 5].iter().map(|&i| mirror(i, 4)).collect();
        assert_eq!(idx, vec![2, 1, 0, 3, 2, 1]);
    }

    /// The authors' numpy/scipy pyramid (scipy 1.16), pasted:
    /// ```python
    /// import numpy as np, scipy.ndimage
    /// g = np.float32([[1,4,6,4,1],[4,16,24,16,4],[6,24,36,24,6],[4,16,24,16,4],[1,4,6,4,1]])/256
    /// x = np.arange(64, dtype=np.float32).reshape(1, 1, 8, 8) ** 1.5
    /// d = scipy.ndimage.convolve(x, g[None, None], mode='mirror')[:, :, ::2, ::2]  # pyr_down
    /// print(d[0, 0].ravel())
    /// u = np.zeros((1, 1, 8, 8), np.float32); u[:, :, ::2, ::2] = d
    /// u = scipy.ndimage.convolve(u, g[None, None] * 4, mode='mirror')              # pyr_up
    /// print(u[0, 0, 0, :4], u[0, 0, 5, 5])
    /// ```
    #[test]
    fn pyramid_steps_match_scipy() {
        let images = Images {
            values: (0..64).map(|i| (i as f32).powf(1.5)).collect(),
            n: 1,
            channels: 1,
            size: 8,
        };
        let down = pyr_down(&images);
        let want = [
            21.86319, 26.593906, 35.10067, 44.05812, 74.76623, 82.35754, 95.06586, 107.63173,
            191.68527, 202.47192, 220.0963, 237.06671, 332.564, 345.60086, 366.7607, 386.9689,
        ];
        for (got, want) in down.values.iter().zip(want) {
            assert!(
                (got - want).abs() <= 1e-5 * want,
                "pyr_down {got} vs {want}"
            );
        }
        let up = pyr_up(&down);
        let got = [
            up.values[0],
            up.values[1],
            up.values[2],
            up.values[3],
            up.values[5 * 8 + 5],
        ];
        let want = [36.450417, 37.811882, 41.048725, 45.31339, 302.72314];
        for (got, want) in got.iter().zip(want) {
            assert!((got - want).abs() <= 1e-5 * want, "pyr_up {got} vs {want}");
        }
    }

    #[test]
    fn laplacian_pyramid_rebuilds_the_images() {
        let images = blobs(3, 3, 64, 1);
        let pyramid = laplacian_pyramid(&images, 3);
        assert_eq!(
            pyramid.iter().map(|l| l.size).collect::<Vec<_>>(),
            vec![64, 32, 16]
        );
        let mut rebuilt = pyramid[2].clone();
        for finer in pyramid[..2].iter().rev() {
            let mut up = pyr_up(&rebuilt);
            up.values
                .iter_mut()
                .zip(&finer.values)
                .for_each(|(u, f)| *u += f);
            rebuilt = up;
        }
        let err = rebuilt
            .values
            .iter()
            .zip(&images.values)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(err < 1e-3, "reconstruction error {err}");
    }

    #[test]
    fn identical_sets_are_at_distance_zero() {
        let a = blobs(16, 1, 32, 2);
        let d = swd(&a, &a.clone(), 7);
        assert_eq!(d.resolutions, vec![32, 16]);
        assert!(d.levels.iter().all(|&l| l == 0.0), "{d:?}");
    }

    #[test]
    fn swd_is_symmetric() {
        let (a, b) = (blobs(16, 3, 32, 3), noise(16, 3, 32, 4));
        let (ab, ba) = (swd(&a, &b, 9), swd(&b, &a, 9));
        for (x, y) in ab.levels.iter().zip(&ba.levels) {
            assert!((x - y).abs() <= 1e-9 * x.abs(), "{ab:?} vs {ba:?}");
        }
        assert!(ab.mean > 0.0);
    }

    #[test]
    fn noise_is_farther_from_images_than_other_images_are() {
        let (a, b, n) = (
            blobs(32, 1, 32, 5),
            blobs(32, 1, 32, 6),
            noise(32, 1, 32, 7),
        );
        let (same_kind, to_noise) = (swd(&a, &b, 1).mean, swd(&a, &n, 1).mean);
        assert!(
            to_noise > 3.0 * same_kind,
            "images vs images {same_kind}, images vs noise {to_noise}"
        );
    }

    #[test]
    fn shifted_one_dimensional_sets_give_the_shift() {
        // In one dimension the sorted-difference mean is the exact W1 distance: |shift|.
        let a = DMatrix::<f32>::from_fn(100, 1, |i, _| i as f32);
        let b = a.map(|v| v + 2.5);
        let dirs = DMatrix::<f32>::from_element(1, 1, 1.0);
        assert!((sliced(&a, &b, &dirs) - 2.5).abs() < 1e-6);
    }
}

//! Pictures of a toy critic: its value f(x) and its gradient norm ||grad_x f(x)|| over the
//! data's box, with the real and generated points on top (the WGAN-GP paper's Fig. 1).
//!
//! Each picture is two square panels side by side, colour-mapped with viridis (plotters'
//! colormap): left, f(x) from its minimum (dark) to its maximum (yellow) over the box, with
//! ten iso-lines; right, ||grad_x f(x)|| on a fixed scale from 0 (dark) to 2 (yellow), with the
//! level ||grad|| = 1 drawn in white, so that a 1-Lipschitz critic stays below the middle of the
//! scale and pictures of different runs compare. Real points are orange, generated ones white,
//! both outlined in black. Drawn pixel by pixel with the image crate.

use super::model::ToyCritic;
use image::{Rgb, RgbImage};
use plotters::style::colors::colormaps::{ColorMap, ViridisRGB};

/// The critic's value and gradient norm on an `n` x `n` grid over `[-range, range]^2`.
#[derive(Debug, Clone)]
pub struct Landscape {
    /// Grid points per side.
    pub n: usize,
    /// Half-width of the box.
    pub range: f64,
    /// `f` at each grid point, row-major, the first row at y = +range (the top of a picture).
    pub values: Vec<f32>,
    /// `||grad_x f||` at each grid point, in the same order.
    pub grad_norms: Vec<f32>,
}

/// The grid points (cell centres), row-major from the top-left: `[n * n]` of `(x, y)`.
pub fn grid_points(n: usize, range: f64) -> Vec<[f32; 2]> {
    let coord = |i: usize| (-range + (i as f64 + 0.5) * 2.0 * range / n as f64) as f32;
    (0..n)
        .flat_map(|row| (0..n).map(move |col| [coord(col), coord(n - 1 - row)]))
        .collect()
}

/// Evaluates `critic` (on a plain device: no power iteration runs) on the grid.
pub fn landscape(
    critic: &ToyCritic,
    n: usize,
    range: f64,
    device: &burn::prelude::Device,
) -> Landscape {
    let points = grid_points(n, range);
    let x = super::points_tensor(&points, device); // [n*n, 2]
    let values = super::host(critic.forward(x.clone()));
    let grad = super::host(critic.input_gradient(x)); // [n*n, 2] flattened
    let grad_norms = grad
        .chunks(2)
        .map(|g| (g[0] * g[0] + g[1] * g[1]).sqrt())
        .collect();
    Landscape {
        n,
        range,
        values,
        grad_norms,
    }
}

/// The gradient-norm scale's top: norms at or above it are drawn yellow.
pub const GRAD_SCALE: f32 = 2.0;
/// Iso-lines of f per panel.
const LEVELS: f32 = 10.0;
/// Pixels between the panels.
const GAP: u32 = 6;
const REAL: Rgb<u8> = Rgb([255, 127, 14]);
const FAKE: Rgb<u8> = Rgb([255, 255, 255]);

/// The two panels, each `panel` pixels square, side by side, with `real` and `fake` points.
pub fn render(l: &Landscape, real: &[[f32; 2]], fake: &[[f32; 2]], panel: u32) -> RgbImage {
    let (lo, hi) = l
        .values
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let span = (hi - lo).max(1e-12);
    let value_level = |v: f32| (((v - lo) / span) * LEVELS).floor().min(LEVELS - 1.0);
    let above_one = |i: usize| if l.grad_norms[i] > 1.0 { 1.0 } else { 0.0 };
    let mut value = field(l, panel, |i| (l.values[i] - lo) / span);
    let mut grad_img = field(l, panel, |i| l.grad_norms[i] / GRAD_SCALE);
    let levels = field_levels(l, panel, |i| value_level(l.values[i]));
    outline(&mut value, &levels, |p| Rgb(p.0.map(|c| c / 3)));
    let unit = field_levels(l, panel, above_one);
    outline(&mut grad_img, &unit, |_| Rgb([255, 255, 255]));
    // Generated points small, real ones larger and on top, so that the modes stay visible.
    for img in [&mut value, &mut grad_img] {
        for &p in fake {
            dot(img, l.range, p, FAKE, 0);
        }
        for &p in real {
            dot(img, l.range, p, REAL, 1);
        }
    }
    let mut out = RgbImage::from_pixel(2 * panel + GAP, panel, Rgb([255, 255, 255]));
    image::imageops::replace(&mut out, &value, 0, 0);
    image::imageops::replace(&mut out, &grad_img, (panel + GAP) as i64, 0);
    out
}

/// A panel coloured (viridis) by `t(i)` in [0, 1] (clamped) of the grid cell under each pixel.
fn field(l: &Landscape, panel: u32, t: impl Fn(usize) -> f32) -> RgbImage {
    RgbImage::from_fn(panel, panel, |x, y| {
        let c = ViridisRGB.get_color(t(cell(l.n, panel, x, y)).clamp(0.0, 1.0));
        Rgb([c.0, c.1, c.2])
    })
}

/// The level of the grid cell under each pixel, row-major.
fn field_levels(l: &Landscape, panel: u32, level: impl Fn(usize) -> f32) -> Vec<f32> {
    (0..panel)
        .flat_map(|y| (0..panel).map(move |x| (x, y)))
        .map(|(x, y)| level(cell(l.n, panel, x, y)))
        .collect()
}

/// The grid cell (row-major index) under pixel `(x, y)` of a `panel`-pixel panel.
fn cell(n: usize, panel: u32, x: u32, y: u32) -> usize {
    let col = (x as usize * n) / panel as usize;
    let row = (y as usize * n) / panel as usize;
    row * n + col
}

/// Recolours (with `recolour`) every pixel whose level differs from its right or lower
/// neighbour's: the iso-lines between levels.
fn outline(img: &mut RgbImage, levels: &[f32], recolour: impl Fn(Rgb<u8>) -> Rgb<u8>) {
    let (w, h) = img.dimensions();
    for y in 0..h {
        for x in 0..w {
            let here = levels[(y * w + x) as usize];
            let right = (x + 1 < w).then(|| levels[(y * w + x + 1) as usize]);
            let below = (y + 1 < h).then(|| levels[((y + 1) * w + x) as usize]);
            if right.is_some_and(|r| r != here) || below.is_some_and(|b| b != here) {
                let p = *img.get_pixel(x, y);
                img.put_pixel(x, y, recolour(p));
            }
        }
    }
}

/// A dot of `colour`, `2 radius + 1` pixels wide, with a one-pixel black outline, at point `p`
/// (clipped to the box).
fn dot(img: &mut RgbImage, range: f64, p: [f32; 2], colour: Rgb<u8>, radius: i64) {
    let side = img.width() as f64;
    let px = ((p[0] as f64 + range) / (2.0 * range) * side).floor() as i64;
    let py = ((range - p[1] as f64) / (2.0 * range) * side).floor() as i64;
    for (r, c) in [(radius + 1, Rgb([0, 0, 0])), (radius, colour)] {
        for dy in -r..=r {
            for dx in -r..=r {
                let (x, y) = (px + dx, py + dy);
                if (0..img.width() as i64).contains(&x) && (0..img.height() as i64).contains(&y) {
                    img.put_pixel(x as u32, y as u32, c);
                }
            }
        }
    }
}

/// Up to `max` of `frames` (evenly spaced, the last always in), side by side, each scaled to
/// half size: the run's landscapes over time.
pub fn strip(frames: &[RgbImage], max: usize) -> RgbImage {
    let picks = pick(frames.len(), max);
    let scaled: Vec<RgbImage> = picks
        .iter()
        .map(|&i| {
            let f = &frames[i];
            image::imageops::resize(
                f,
                f.width() / 2,
                f.height() / 2,
                image::imageops::FilterType::Triangle,
            )
        })
        .collect();
    stack(&scaled, true)
}

/// `images` in a row (`horizontal`) or a column, `GAP` white pixels between them.
pub fn stack(images: &[RgbImage], horizontal: bool) -> RgbImage {
    let along: u32 = images
        .iter()
        .map(|i| if horizontal { i.width() } else { i.height() })
        .sum::<u32>()
        + GAP * images.len().saturating_sub(1) as u32;
    let across = images
        .iter()
        .map(|i| if horizontal { i.height() } else { i.width() })
        .max()
        .unwrap_or(1);
    let (w, h) = if horizontal {
        (along, across)
    } else {
        (across, along)
    };
    let mut out = RgbImage::from_pixel(w.max(1), h.max(1), Rgb([255, 255, 255]));
    let mut at = 0i64;
    for img in images {
        let (x, y) = if horizontal { (at, 0) } else { (0, at) };
        image::imageops::replace(&mut out, img, x, y);
        at += (if horizontal {
            img.width()
        } else {
            img.height()
        } + GAP) as i64;
    }
    out
}

/// `max` indices of `0..n`, evenly spaced, ending at `n - 1`.
fn pick(n: usize, max: usize) -> Vec<usize> {
    if n <= max {
        return (0..n).collect();
    }
    (1..=max).map(|k| (k * n).div_ceil(max) - 1).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_points_cover_the_box_from_the_top_left() {
        let p = grid_points(4, 2.0);
        assert_eq!(p.len(), 16);
        assert_eq!(p[0], [-1.5, 1.5]);
        assert_eq!(p[3], [1.5, 1.5]);
        assert_eq!(p[15], [1.5, -1.5]);
    }

    #[test]
    fn pick_spaces_evenly_and_keeps_the_last() {
        assert_eq!(pick(3, 8), vec![0, 1, 2]);
        assert_eq!(pick(20, 4), vec![4, 9, 14, 19]);
    }

    /// The panels show the field: a linear f(x, y) = x has its minimum (viridis' dark end) on
    /// the left and maximum (yellow) on the right, and gradient norm 1 everywhere (the middle
    /// of the scale); a point is drawn where it lies.
    #[test]
    fn render_maps_the_field_and_the_points_to_pixels() {
        let n = 8;
        let points = grid_points(n, 1.0);
        let l = Landscape {
            n,
            range: 1.0,
            values: points.iter().map(|p| p[0]).collect(),
            grad_norms: vec![1.0; n * n],
        };
        let img = render(&l, &[[0.5, 0.5]], &[], 64);
        assert_eq!(img.dimensions(), (2 * 64 + GAP, 64));
        let dark = ViridisRGB.get_color(0.0);
        assert_eq!(img.get_pixel(0, 40).0, [dark.0, dark.1, dark.2]);
        let yellow = ViridisRGB.get_color(1.0);
        assert_eq!(img.get_pixel(63, 40).0, [yellow.0, yellow.1, yellow.2]);
        let mid = ViridisRGB.get_color(0.5);
        assert_eq!(img.get_pixel(64 + GAP + 10, 40).0, [mid.0, mid.1, mid.2]);
        // (0.5, 0.5) is at pixel (48, 16) of a 64-pixel panel over [-1, 1].
        assert_eq!(img.get_pixel(48, 16).0, REAL.0);
        assert_eq!(img.get_pixel(64 + GAP + 48, 16).0, REAL.0);
    }
}

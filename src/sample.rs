//! Sample grids: generator outputs in [-1, 1] tiled into one PNG.

use crate::atomic::write_atomic;
use anyhow::{Context, Result};
use burn::prelude::*;
use image::{DynamicImage, GrayImage, RgbImage};
use std::io::Cursor;
use std::path::Path;

/// Pixels of padding between (and around) the images of a grid.
pub const GRID_PADDING: usize = 2;

/// Tiles `images` (`[N, C, S, S]`, values in [-1, 1]) into a `rows`-column grid with
/// [`GRID_PADDING`] pixels of black padding, as an 8-bit grayscale or RGB image.
pub fn grid(images: Tensor<4>, rows: usize) -> DynamicImage {
    let [n, channels, size, _] = images.dims();
    let values = images
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("f32 data");
    let grid_rows = n.div_ceil(rows);
    let side_w = rows * (size + GRID_PADDING) + GRID_PADDING;
    let side_h = grid_rows * (size + GRID_PADDING) + GRID_PADDING;
    let mut out = vec![0u8; side_w * side_h * channels];
    let plane = size * size;
    for i in 0..n {
        let (gx, gy) = (i % rows, i / rows);
        let (x0, y0) = (
            GRID_PADDING + gx * (size + GRID_PADDING),
            GRID_PADDING + gy * (size + GRID_PADDING),
        );
        for c in 0..channels {
            for y in 0..size {
                for x in 0..size {
                    let v = values[i * channels * plane + c * plane + y * size + x];
                    out[((y0 + y) * side_w + x0 + x) * channels + c] = to_byte(v);
                }
            }
        }
    }
    from_interleaved(out, channels, side_w, side_h)
}

/// A value in [-1, 1] as a byte (clamped).
pub fn to_byte(v: f32) -> u8 {
    ((v + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8
}

fn from_interleaved(bytes: Vec<u8>, channels: usize, w: usize, h: usize) -> DynamicImage {
    let (w, h) = (w as u32, h as u32);
    match channels {
        1 => DynamicImage::ImageLuma8(GrayImage::from_raw(w, h, bytes).expect("sized buffer")),
        _ => DynamicImage::ImageRgb8(RgbImage::from_raw(w, h, bytes).expect("sized buffer")),
    }
}

/// One channel-first image (values in [-1, 1]) as an 8-bit image.
pub fn image_from_chw(values: &[f32], channels: usize, size: usize) -> DynamicImage {
    let plane = size * size;
    let mut out = vec![0u8; values.len()];
    for c in 0..channels {
        for i in 0..plane {
            out[i * channels + c] = to_byte(values[c * plane + i]);
        }
    }
    from_interleaved(out, channels, size, size)
}

/// Writes `image` as PNG to `path`, atomically.
pub fn save_png(image: &DynamicImage, path: &Path) -> Result<()> {
    let mut bytes = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png)
        .with_context(|| format!("cannot encode {}", path.display()))?;
    write_atomic(path, &bytes)
}

/// Writes `n` images from `generator` (in inference mode: BatchNorm running statistics) as
/// `out/sample_NNNNNN.png`, drawing noise `[n, z_dim]` from `seed`, in batches, with a
/// progress bar; with `grid`, also `out/grid.png` of the first (up to 64) images.
pub fn write_samples(
    generator: &crate::model::Generator,
    z_dim: usize,
    n: usize,
    seed: u64,
    out: &Path,
    with_grid: bool,
) -> Result<()> {
    use rand::SeedableRng;
    use rayon::prelude::*;
    std::fs::create_dir_all(out)
        .with_context(|| format!("cannot create {}: choose a writable folder", out.display()))?;
    let generator = generator.valid();
    let device = generator.project.weight.val().device();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let bar = indicatif::ProgressBar::new(n as u64).with_style(
        indicatif::ProgressStyle::with_template(
            "sampling {bar:30} {pos}/{len} [{elapsed} < {eta}]",
        )
        .expect("valid template"),
    );
    const BATCH: usize = 256;
    let mut first: Option<Tensor<4>> = None;
    for start in (0..n).step_by(BATCH) {
        let count = BATCH.min(n - start);
        let z = crate::noise::noise(&mut rng, count, z_dim, &device);
        let images = generator.forward(z); // [count, C, S, S]
        if first.is_none() && with_grid {
            first = Some(images.clone().slice(0..count.min(64)));
        }
        let [_, channels, size, _] = images.dims();
        let values: Vec<f32> = images
            .into_data()
            .convert::<f32>()
            .try_to_vec()
            .expect("f32");
        let per = channels * size * size;
        (0..count).into_par_iter().try_for_each(|i| {
            let image = image_from_chw(&values[i * per..(i + 1) * per], channels, size);
            save_png(&image, &out.join(format!("sample_{:06}.png", start + i)))
        })?;
        bar.inc(count as u64);
    }
    bar.finish_and_clear();
    if let Some(images) = first {
        let rows = (images.dims()[0] as f64).sqrt().ceil() as usize;
        save_png(&grid(images, rows), &out.join("grid.png"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_has_padded_size_and_maps_minus_one_one_to_bytes() {
        let device = Device::flex();
        // Three 2x2 grayscale images: all -1, all 0, all +1, in a 2-column grid.
        let data: Vec<f32> = [-1.0f32, 0.0, 1.0].iter().flat_map(|&v| [v; 4]).collect();
        let images = Tensor::<4>::from_data(TensorData::new(data, [3, 1, 2, 2]), &device);
        let img = grid(images, 2).to_luma8();
        let side = 2 * (2 + GRID_PADDING) + GRID_PADDING;
        assert_eq!((img.width() as usize, img.height() as usize), (side, side));
        let p = GRID_PADDING as u32;
        assert_eq!(img.get_pixel(p, p).0[0], 0);
        assert_eq!(img.get_pixel(p + 2 + p, p).0[0], 128);
        assert_eq!(img.get_pixel(p, p + 2 + p).0[0], 255);
        assert_eq!(img.get_pixel(0, 0).0[0], 0);
    }
}

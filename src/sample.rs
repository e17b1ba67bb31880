//! Sample grids: generator outputs in [-1, 1] tiled into one PNG.

use crate::checkpoint::write_atomic;
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
                    let pixel = ((v + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8;
                    out[((y0 + y) * side_w + x0 + x) * channels + c] = pixel;
                }
            }
        }
    }
    let (w, h) = (side_w as u32, side_h as u32);
    match channels {
        1 => DynamicImage::ImageLuma8(GrayImage::from_raw(w, h, out).expect("sized buffer")),
        _ => DynamicImage::ImageRgb8(RgbImage::from_raw(w, h, out).expect("sized buffer")),
    }
}

/// Writes `image` as PNG to `path`, atomically.
pub fn save_png(image: &DynamicImage, path: &Path) -> Result<()> {
    let mut bytes = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png)
        .with_context(|| format!("cannot encode {}", path.display()))?;
    write_atomic(path, &bytes)
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

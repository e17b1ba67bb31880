//! The data pipeline against the PyTorch reference's `load_folder` (../shared/peer/torch_wgan.py,
//! PIL's centre crop and bilinear resize): on the same files, our prepared images equal the
//! reference's, so that quality comparisons train both on the same pixels. Needs python with
//! torch and pillow (see `common::torch_python`).

mod common;

use image::{GrayImage, Luma, Rgb, RgbImage};
use std::path::Path;
use wgan_train::data::{ImageSet, Preprocess, image_files};

/// Prints, as JSON, the peer's `load_folder(dir, size, channels)` mapped back to 0..255.
const LOAD: &str = r#"
import json, sys
sys.path.insert(0, sys.argv[1])
from torch_wgan import load_folder
x = load_folder(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
print(json.dumps(((x + 1) * 127.5).round().flatten().tolist()))
"#;

/// Our pixels and the peer's for every image of `dir`, at `size` and `channels`.
fn both(python: &str, dir: &Path, size: usize, channels: usize) -> (Vec<u8>, Vec<f64>) {
    let prep = Preprocess {
        size,
        channels,
        crop: 0,
    };
    let (set, skipped) = ImageSet::load(dir, prep).unwrap();
    assert!(skipped.warning(dir).is_none());
    let ours: Vec<u8> = (0..set.len()).flat_map(|i| set.image(i).to_vec()).collect();
    let peer = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/peer");
    let args = [
        peer.into_os_string(),
        dir.into(),
        size.to_string().into(),
        channels.to_string().into(),
    ];
    let theirs: Vec<f64> =
        serde_json::from_str(&common::python_stdout(python, LOAD, &args)).unwrap();
    assert_eq!(ours.len(), theirs.len(), "image count or size differs");
    (ours, theirs)
}

/// Largest and mean absolute difference, in 0..255 levels.
fn differences(ours: &[u8], theirs: &[f64]) -> (f64, f64) {
    let d: Vec<f64> = ours
        .iter()
        .zip(theirs)
        .map(|(&a, &b)| (a as f64 - b).abs())
        .collect();
    let max = d.iter().cloned().fold(0.0, f64::max);
    let mean = d.iter().sum::<f64>() / d.len() as f64;
    println!("largest difference {max} levels, mean {mean:.4}");
    (max, mean)
}

#[test]
fn fashion_mnist_upscaled_to_32_equals_the_reference_loader() {
    let Some(python) = common::torch_python() else {
        return;
    };
    // The first 200 embedded images (28x28 grayscale, upscaled to 32x32 as in every quality
    // comparison), copied so that both loaders read the same files in the same order.
    let tmp = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fashion-mnist");
    for file in image_files(&src).unwrap().iter().take(200) {
        std::fs::copy(file, tmp.path().join(file.file_name().unwrap())).unwrap();
    }
    let (ours, theirs) = both(&python, tmp.path(), 32, 1);
    let (max, mean) = differences(&ours, &theirs);
    // Rounding of the last level between the two resamplers at most (measured: max 1, mean
    // 0.098 levels; with the image crate's Rec. 709 gray a colour photo was 17 and 2.8 off).
    assert!(max <= 1.0 && mean < 0.15, "max {max} mean {mean} levels");
}

#[test]
fn photos_cropped_and_downscaled_equal_the_reference_loader() {
    let Some(python) = common::torch_python() else {
        return;
    };
    // CelebA's shape (178x218, portrait: the centre square is cropped) and a landscape one,
    // RGB and grayscale, with detail at every scale so that the resampling filter shows.
    let tmp = tempfile::tempdir().unwrap();
    for (i, (w, h)) in [(178u32, 218u32), (240, 150), (64, 64)]
        .into_iter()
        .enumerate()
    {
        let rgb = RgbImage::from_fn(w, h, |x, y| {
            let v = |a: u32, b: u32| ((a * 37 + b * 11 + (a * b) % 23) % 256) as u8;
            Rgb([v(x, y), v(y, x + 5), ((x / 3 + y / 5) % 2 * 200) as u8])
        });
        rgb.save(tmp.path().join(format!("rgb{i}.png"))).unwrap();
    }
    let (ours, theirs) = both(&python, tmp.path(), 64, 3);
    let (max, mean) = differences(&ours, &theirs);
    assert!(
        max <= 1.0 && mean < 0.15,
        "RGB: max {max} mean {mean} levels"
    );
    // Colour photos read as grayscale: the luma weights too.
    let (ours, theirs) = both(&python, tmp.path(), 32, 1);
    let (max, mean) = differences(&ours, &theirs);
    assert!(
        max <= 1.0 && mean < 0.15,
        "RGB as gray: max {max} mean {mean} levels"
    );

    let gray = tempfile::tempdir().unwrap();
    let img = GrayImage::from_fn(178, 218, |x, y| Luma([((x * 7 + y * 13) % 256) as u8]));
    img.save(gray.path().join("g.png")).unwrap();
    let (ours, theirs) = both(&python, gray.path(), 32, 1);
    let (max, mean) = differences(&ours, &theirs);
    assert!(
        max <= 1.0 && mean < 0.3,
        "gray: max {max} mean {mean} levels"
    );
}

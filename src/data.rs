//! Training images: a folder (flat or nested) of JPEG/PNG files with no labels, decoded in
//! parallel once, centre-cropped, resized, kept in memory as `u8`, and served as shuffled
//! batches scaled to [-1, 1].

use crate::cache;
use anyhow::{Result, bail};
use burn::prelude::*;
use image::imageops::FilterType;
use image::{DynamicImage, GrayImage};
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// File endings taken as images (case-insensitive).
const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// All training images, channel-first, `u8`: decoded in memory, or memory-mapped from the
/// decoded-image cache ([`crate::cache`]).
#[derive(Debug, Clone)]
pub struct ImageSet {
    pixels: Pixels,
    len: usize,
    channels: usize,
    size: usize,
}

/// Where the pixels live.
#[derive(Clone)]
enum Pixels {
    Owned(Vec<u8>),
    Mapped(Arc<cache::Mapped>),
}

impl Pixels {
    fn bytes(&self) -> &[u8] {
        match self {
            Self::Owned(v) => v,
            Self::Mapped(m) => &m.map[m.offset..],
        }
    }
}

impl std::fmt::Debug for Pixels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Owned(v) => write!(f, "{} bytes in memory", v.len()),
            Self::Mapped(m) => write!(f, "{} bytes mapped", m.map.len() - m.offset),
        }
    }
}

/// How [`ImageSet::load_cached`] got its images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheUse {
    /// Mapped from this existing cache file.
    Hit(PathBuf),
    /// Decoded, and written to this new cache file.
    Written(PathBuf),
}

/// Files that could not be decoded, reported once as a warning.
#[derive(Debug, Clone, Default)]
pub struct Skipped {
    /// How many files were skipped.
    pub count: usize,
    /// The first skipped file and why.
    pub first: Option<(PathBuf, String)>,
}

impl Skipped {
    /// One warning line, or `None` when nothing was skipped.
    pub fn warning(&self, dir: &Path) -> Option<String> {
        let (path, why) = self.first.as_ref()?;
        Some(format!(
            "warning: skipped {} unreadable image file(s) under {} (first: {}: {})",
            self.count,
            dir.display(),
            path.display(),
            why
        ))
    }
}

/// How images are prepared on loading.
#[derive(Debug, Clone, Copy)]
pub struct Preprocess {
    /// Output side in pixels.
    pub size: usize,
    /// 1 (grayscale) or 3 (RGB).
    pub channels: usize,
    /// Side of the centred square crop; 0 = the largest centred square.
    pub crop: usize,
}

impl ImageSet {
    /// Loads every image under `dir`, showing a progress bar on a terminal.
    /// Unreadable files are skipped and counted; no readable image is an error naming `dir`.
    pub fn load(dir: &Path, prep: Preprocess) -> Result<(Self, Skipped)> {
        Self::load_files(dir, image_files(dir)?, prep)
    }

    /// Like [`load`](Self::load), through the decoded-image cache in `cache_dir`: maps the
    /// cache file of this folder and preparation when there is one (no decoding), else decodes
    /// and writes it. A damaged cache file (truncated, a foreign header) is reported in one
    /// warning, decoded again and replaced; a cache that cannot be written is reported and
    /// training goes on.
    pub fn load_cached(
        dir: &Path,
        prep: Preprocess,
        cache_dir: &Path,
    ) -> Result<(Self, Skipped, Option<CacheUse>)> {
        let files = image_files(dir)?;
        let path = cache::path_for(
            cache_dir,
            dir,
            &files,
            (prep.size, prep.channels, prep.crop),
        )?;
        let mapped = cache::read(&path).unwrap_or_else(|e| {
            // Never trained on: decoded again below and replaced (written under a temporary
            // name, then renamed over it).
            eprintln!("warning: {e:#}; decoding the images again and replacing it");
            None
        });
        if let Some(mapped) = mapped {
            let h = &mapped.header;
            let skipped = Skipped {
                count: h.skipped,
                first: h.first_skipped.clone(),
            };
            let set = Self {
                len: h.len,
                channels: h.channels,
                size: h.size,
                pixels: Pixels::Mapped(Arc::new(mapped)),
            };
            return Ok((set, skipped, Some(CacheUse::Hit(path))));
        }
        let (set, skipped) = Self::load_files(dir, files, prep)?;
        let header = cache::Header {
            format: cache::FORMAT.to_string(),
            len: set.len,
            channels: set.channels,
            size: set.size,
            skipped: skipped.count,
            first_skipped: skipped.first.clone(),
        };
        match cache::write(&path, &header, set.pixels.bytes()) {
            Ok(()) => Ok((set, skipped, Some(CacheUse::Written(path)))),
            Err(e) => {
                eprintln!("warning: the decoded images were not cached ({e:#}); training goes on");
                Ok((set, skipped, None))
            }
        }
    }

    /// Loads `n` images (all when there are fewer) chosen at random with `seed`, for
    /// evaluation on a large folder without decoding all of it.
    pub fn load_some(dir: &Path, prep: Preprocess, n: usize, seed: u64) -> Result<(Self, Skipped)> {
        let mut files = image_files(dir)?;
        if files.len() > n {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut chosen = rand::seq::index::sample(&mut rng, files.len(), n).into_vec();
            chosen.sort_unstable();
            files = chosen.into_iter().map(|i| files[i].clone()).collect();
        }
        Self::load_files(dir, files, prep)
    }

    fn load_files(dir: &Path, files: Vec<PathBuf>, prep: Preprocess) -> Result<(Self, Skipped)> {
        let bar = ProgressBar::new(files.len() as u64).with_style(
            ProgressStyle::with_template("loading images {bar:30} {pos}/{len} [{elapsed} < {eta}]")
                .expect("valid template"),
        );
        let decoded: Vec<Result<Vec<u8>, String>> = files
            .par_iter()
            .map(|path| {
                let result = decode(path, prep);
                bar.inc(1);
                result
            })
            .collect();
        bar.finish_and_clear();
        let mut skipped = Skipped::default();
        let per_image = prep.channels * prep.size * prep.size;
        let mut pixels = Vec::with_capacity(files.len() * per_image);
        for (path, result) in files.iter().zip(decoded) {
            match result {
                Ok(image) => pixels.extend_from_slice(&image),
                Err(why) => {
                    skipped.count += 1;
                    skipped.first.get_or_insert_with(|| (path.clone(), why));
                }
            }
        }
        let len = pixels.len() / per_image;
        if len == 0 {
            let (path, why) = skipped.first.clone().unwrap_or_default();
            bail!(
                "none of the {} image files under {} could be read (first: {}: {}); point data.dir at a folder of valid JPEG/PNG images",
                files.len(),
                dir.display(),
                path.display(),
                why
            );
        }
        let set = Self {
            pixels: Pixels::Owned(pixels),
            len,
            channels: prep.channels,
            size: prep.size,
        };
        Ok((set, skipped))
    }

    /// Wraps already prepared channel-first `u8` images (`len * channels * size * size` bytes).
    pub fn from_pixels(pixels: Vec<u8>, channels: usize, size: usize) -> Self {
        let len = pixels.len() / (channels * size * size);
        assert_eq!(
            pixels.len(),
            len * channels * size * size,
            "ragged pixel buffer"
        );
        Self {
            pixels: Pixels::Owned(pixels),
            len,
            channels,
            size,
        }
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there is no image.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Channels per image.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Height and width of every image.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The `u8` pixels of image `index`, channel-first.
    pub fn image(&self, index: usize) -> &[u8] {
        let n = self.channels * self.size * self.size;
        &self.pixels.bytes()[index * n..(index + 1) * n]
    }

    /// The images at `indices` as a `[B, C, S, S]` tensor scaled to [-1, 1].
    pub fn batch(&self, indices: &[usize], device: &Device) -> Tensor<4> {
        let mut values = Vec::with_capacity(indices.len() * self.channels * self.size * self.size);
        for &i in indices {
            values.extend(self.image(i).iter().map(|&p| p as f32 / 127.5 - 1.0));
        }
        let shape = [indices.len(), self.channels, self.size, self.size];
        Tensor::from_data(TensorData::new(values, shape), device)
    }
}

/// Every image file under `dir`, recursively, sorted so that the order (and so a seeded run)
/// does not depend on the file system.
pub fn image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        bail!(
            "data folder {} does not exist or is not a folder: set data.dir (or --set data.dir=PATH) to a folder of JPEG/PNG images",
            dir.display()
        );
    }
    let mut files = Vec::new();
    for entry in walkdir::WalkDir::new(dir).follow_links(true) {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => bail!("cannot read data folder {}: {e}", dir.display()),
        };
        if entry.file_type().is_file() && has_image_extension(entry.path()) {
            files.push(entry.into_path());
        }
    }
    if files.is_empty() {
        bail!(
            "no JPEG/PNG images found under {}: set data.dir to a folder that holds .jpg, .jpeg or .png files",
            dir.display()
        );
    }
    files.sort();
    Ok(files)
}

fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// Decodes one file into channel-first `u8` pixels, or says why it cannot.
fn decode(path: &Path, prep: Preprocess) -> Result<Vec<u8>, String> {
    let image = image::ImageReader::open(path)
        .map_err(|e| e.to_string())?
        .with_guessed_format()
        .map_err(|e| e.to_string())?
        .decode()
        .map_err(|e| e.to_string())?;
    Ok(prepare(&image, prep))
}

/// Channels, centre crop, resize, channel-first: in the order and with the filters of the
/// PyTorch reference's loader (PIL's `convert`, `crop`, `resize(BILINEAR)`; `tests/data_torch.rs`
/// compares the two).
pub fn prepare(image: &DynamicImage, prep: Preprocess) -> Vec<u8> {
    let image = match prep.channels {
        1 => DynamicImage::ImageLuma8(luma(image)),
        _ => DynamicImage::ImageRgb8(image.to_rgb8()),
    };
    let (w, h) = (image.width(), image.height());
    let largest = w.min(h);
    let side = match prep.crop {
        0 => largest,
        c => (c as u32).min(largest),
    };
    let cropped = image.crop_imm((w - side) / 2, (h - side) / 2, side, side);
    let size = prep.size as u32;
    let resized = if side == size {
        cropped
    } else {
        cropped.resize_exact(size, size, FilterType::Triangle)
    };
    match prep.channels {
        1 => resized.into_luma8().into_raw(),
        _ => {
            let hwc = resized.into_rgb8().into_raw();
            let plane = prep.size * prep.size;
            let mut chw = vec![0u8; hwc.len()];
            for (i, px) in hwc.chunks_exact(3).enumerate() {
                for c in 0..3 {
                    chw[c * plane + i] = px[c];
                }
            }
            chw
        }
    }
}

/// Grayscale as PIL's `convert("L")` computes it (and so torchvision's loaders): ITU-R 601-2
/// luma, `(19595 R + 38470 G + 7471 B + 2^15) >> 16`. The image crate's `to_luma8` weighs by
/// Rec. 709 instead, up to 17 levels away on colour photos.
fn luma(image: &DynamicImage) -> GrayImage {
    if !image.color().has_color() {
        return image.to_luma8();
    }
    let rgb = image.to_rgb8();
    let (w, h) = rgb.dimensions();
    let pixels = rgb
        .into_raw()
        .chunks_exact(3)
        .map(|p| {
            let l = 19595 * p[0] as u32 + 38470 * p[1] as u32 + 7471 * p[2] as u32 + 0x8000;
            (l >> 16) as u8
        })
        .collect();
    GrayImage::from_raw(w, h, pixels).expect("w * h pixels")
}

/// How the real batches are drawn from the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Sampling {
    /// Shuffled passes: every image once per epoch, a new permutation each epoch (a tail
    /// shorter than a batch is dropped).
    #[default]
    Epochs,
    /// Each batch's indices drawn independently and uniformly, with replacement, as the
    /// PyTorch reference's `data[torch.randint(0, n, (batch,))]` does.
    Replacement,
}

/// The order of the real batches ([`Sampling`]): shuffled epochs (a fresh seeded permutation
/// every epoch; a tail shorter than a batch is dropped) or independent draws with replacement.
/// Serializable, so that a resumed run continues the same order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchSampler {
    order: Vec<usize>,
    position: usize,
    epoch: usize,
    rng: ChaCha8Rng,
    /// Draws with replacement (`order` then stays `0..len`); absent in checkpoints written
    /// before the option existed, which sampled epochs.
    #[serde(default)]
    replacement: bool,
    /// The last batch drawn with replacement.
    #[serde(skip)]
    drawn: Vec<usize>,
}

impl BatchSampler {
    /// A sampler over `len` images, seeded.
    pub fn new(len: usize, seed: u64, sampling: Sampling) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let replacement = sampling == Sampling::Replacement;
        let mut order: Vec<usize> = (0..len).collect();
        if !replacement {
            order.shuffle(&mut rng);
        }
        Self {
            order,
            position: 0,
            epoch: 0,
            rng,
            replacement,
            drawn: Vec::new(),
        }
    }

    /// The indices of the next batch of `batch_size` (`batch_size <= len`).
    pub fn next_batch(&mut self, batch_size: usize) -> &[usize] {
        let len = self.order.len();
        assert!(batch_size <= len, "batch larger than the data");
        if self.replacement {
            let rng = &mut self.rng;
            self.drawn.clear();
            self.drawn
                .extend((0..batch_size).map(|_| rng.random_range(0..len)));
            // An epoch is `len` images drawn.
            self.position += batch_size;
            self.epoch += self.position / len;
            self.position %= len;
            return &self.drawn;
        }
        if self.position + batch_size > len {
            self.order.shuffle(&mut self.rng);
            self.position = 0;
            self.epoch += 1;
        }
        let start = self.position;
        self.position += batch_size;
        &self.order[start..self.position]
    }

    /// Completed passes over the data.
    pub fn epoch(&self) -> usize {
        self.epoch
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, Luma, Rgb, RgbImage};

    fn prep(size: usize, channels: usize, crop: usize) -> Preprocess {
        Preprocess {
            size,
            channels,
            crop,
        }
    }

    #[test]
    fn centre_crop_keeps_the_middle_of_a_wide_image() {
        // 6x2 image: columns 0-1 black, 2-3 white, 4-5 black; crop 0 -> the middle 2x2.
        let img = GrayImage::from_fn(6, 2, |x, _| {
            Luma([if (2..4).contains(&x) { 255 } else { 0 }])
        });
        let out = prepare(&DynamicImage::ImageLuma8(img), prep(2, 1, 0));
        assert_eq!(out, vec![255; 4]);
    }

    #[test]
    fn colour_reads_as_gray_with_pils_weights() {
        // PIL: Image.new("RGB", (1, 1), c).convert("L").getpixel((0, 0)) for red, green, blue,
        // white and (200, 100, 50) gives 76, 150, 29, 255, 124.
        let colours = [
            [255, 0, 0],
            [0, 255, 0],
            [0, 0, 255],
            [255, 255, 255],
            [200, 100, 50],
        ];
        let img = RgbImage::from_fn(5, 1, |x, _| Rgb(colours[x as usize]));
        let gray = luma(&DynamicImage::ImageRgb8(img));
        assert_eq!(gray.into_raw(), vec![76, 150, 29, 255, 124]);
    }

    #[test]
    fn rgb_is_stored_channel_first() {
        let img = RgbImage::from_pixel(4, 4, Rgb([10, 20, 30]));
        let out = prepare(&DynamicImage::ImageRgb8(img), prep(4, 3, 0));
        assert_eq!(&out[0..16], &[10; 16]);
        assert_eq!(&out[16..32], &[20; 16]);
        assert_eq!(&out[32..48], &[30; 16]);
    }

    #[test]
    fn batches_are_scaled_to_minus_one_one() {
        let set = ImageSet::from_pixels(vec![0, 255, 51, 204], 1, 1);
        let batch = set.batch(&[1, 0], &Device::flex());
        let values = batch.into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(values, vec![1.0, -1.0]);
    }

    #[test]
    fn sampler_visits_every_image_once_per_epoch_and_reshuffles() {
        let mut s = BatchSampler::new(10, 7, Sampling::Epochs);
        let mut first: Vec<usize> = (0..5).flat_map(|_| s.next_batch(2).to_vec()).collect();
        let epoch0 = first.clone();
        first.sort();
        assert_eq!(first, (0..10).collect::<Vec<_>>());
        let epoch1: Vec<usize> = (0..5).flat_map(|_| s.next_batch(2).to_vec()).collect();
        assert_eq!(s.epoch(), 1);
        assert_ne!(epoch0, epoch1);
        // Same seed, same order.
        let mut t = BatchSampler::new(10, 7, Sampling::Epochs);
        assert_eq!(t.next_batch(2), &epoch0[0..2]);
    }

    #[test]
    fn sampling_with_replacement_draws_uniform_independent_indices_and_resumes() {
        let (len, batch, batches) = (10, 8, 5000);
        let mut s = BatchSampler::new(len, 3, Sampling::Replacement);
        let mut counts = vec![0usize; len];
        let mut batches_with_a_repeat = 0;
        for _ in 0..batches {
            let b = s.next_batch(batch);
            assert_eq!(b.len(), batch);
            let mut seen = [false; 10];
            let mut repeat = false;
            for &i in b {
                counts[i] += 1;
                repeat |= std::mem::replace(&mut seen[i], true);
            }
            batches_with_a_repeat += repeat as usize;
        }
        // Uniform: each index n p = 4000 times, binomial sd sqrt(n p (1 - p)) = 60; 5 sd.
        let expected = (batches * batch / len) as f64;
        for (i, &c) in counts.iter().enumerate() {
            assert!(
                (c as f64 - expected).abs() < 300.0,
                "index {i} drawn {c} times"
            );
        }
        // Independent within a batch: P(no repeat in 8 draws of 10) = 10!/(2! 10^8) = 0.018.
        let p_repeat = 1.0 - 1814400.0 / 1e8;
        let share = batches_with_a_repeat as f64 / batches as f64;
        assert!(
            (share - p_repeat).abs() < 0.01,
            "{share} of batches repeat an index"
        );
        assert_eq!(s.epoch(), batches * batch / len);
        // A serialized sampler (a checkpoint) continues the same draws.
        let saved: BatchSampler =
            serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        let mut resumed = saved;
        let next: Vec<Vec<usize>> = (0..3).map(|_| s.next_batch(batch).to_vec()).collect();
        let again: Vec<Vec<usize>> = (0..3).map(|_| resumed.next_batch(batch).to_vec()).collect();
        assert_eq!(next, again);
    }

    #[test]
    fn a_sampler_saved_before_the_sampling_option_samples_epochs() {
        let mut s = BatchSampler::new(6, 1, Sampling::Epochs);
        let mut old: serde_json::Value = serde_json::to_value(&s).unwrap();
        old.as_object_mut().unwrap().remove("replacement");
        let mut old: BatchSampler = serde_json::from_value(old).unwrap();
        for _ in 0..7 {
            assert_eq!(old.next_batch(4), s.next_batch(4));
        }
    }

    #[test]
    fn missing_and_empty_folders_are_errors_naming_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let e = image_files(&missing).unwrap_err().to_string();
        assert!(e.contains("nope") && e.contains("does not exist"), "{e}");
        let e = image_files(dir.path()).unwrap_err().to_string();
        assert!(e.contains("no JPEG/PNG images"), "{e}");
    }

    #[test]
    fn corrupt_files_are_skipped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("nested")).unwrap();
        GrayImage::from_pixel(8, 8, Luma([255]))
            .save(dir.path().join("nested/good.PNG"))
            .unwrap();
        std::fs::write(dir.path().join("bad.jpg"), b"not a jpeg").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"ignored").unwrap();
        let (set, skipped) = ImageSet::load(dir.path(), prep(4, 1, 0)).unwrap();
        assert_eq!(set.len(), 1);
        assert_eq!(set.image(0), &[255; 16]);
        assert_eq!(skipped.count, 1);
        assert!(skipped.warning(dir.path()).unwrap().contains("bad.jpg"));
        std::fs::remove_dir_all(dir.path().join("nested")).unwrap();
        let e = ImageSet::load(dir.path(), prep(4, 1, 0))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("none of the 1 image files") && e.contains("bad.jpg"),
            "{e}"
        );
    }

    /// The cache maps exactly what decoding gives; a second load maps it without decoding; a
    /// changed, added or touched file gives another cache file (a removal the one before the
    /// addition); a damaged cache file is decoded again and replaced, never read.
    #[test]
    fn the_cache_maps_what_decoding_gives_and_follows_changes_to_the_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("images");
        std::fs::create_dir_all(&dir).unwrap();
        let write = |i: u32, shade: u8| {
            RgbImage::from_fn(40 + i, 36, |x, y| {
                Rgb([(x * 5) as u8, (y * 3) as u8, shade])
            })
            .save(dir.join(format!("img{i}.png")))
            .unwrap();
        };
        for i in 0..5 {
            write(i, 40 * i as u8);
        }
        std::fs::write(dir.join("broken.jpg"), b"not a jpeg").unwrap();
        let p = prep(32, 3, 0);
        let cache_dir = tmp.path().join("cache");
        let (decoded, _) = ImageSet::load(&dir, p).unwrap();
        let (first, skipped, used) = ImageSet::load_cached(&dir, p, &cache_dir).unwrap();
        let Some(CacheUse::Written(path)) = used else {
            panic!("the first load writes the cache: {used:?}")
        };
        let (second, skipped2, used) = ImageSet::load_cached(&dir, p, &cache_dir).unwrap();
        assert_eq!(used, Some(CacheUse::Hit(path.clone())));
        assert!(format!("{:?}", second.pixels).contains("mapped"));
        assert_eq!((first.len(), second.len(), decoded.len()), (5, 5, 5));
        assert_eq!(
            (skipped.count, skipped2.count),
            (1, 1),
            "the skipped file is remembered"
        );
        for i in 0..5 {
            assert_eq!(second.image(i), decoded.image(i));
            assert_eq!(first.image(i), decoded.image(i));
        }
        // Another preparation, or a changed file: another cache file.
        let (_, _, other) = ImageSet::load_cached(&dir, prep(32, 1, 0), &cache_dir).unwrap();
        assert!(matches!(other, Some(CacheUse::Written(q)) if q != path));
        write(2, 7);
        let (changed, _, used) = ImageSet::load_cached(&dir, p, &cache_dir).unwrap();
        assert!(
            matches!(&used, Some(CacheUse::Written(q)) if *q != path),
            "{used:?}"
        );
        assert_ne!(changed.image(2), decoded.image(2));
        // Adding a file, removing it again, touching one (same bytes, a new mtime): each is a
        // miss that decodes the folder as it now is; the state before the addition maps its
        // old file again.
        let Some(CacheUse::Written(changed_file)) = used else {
            unreachable!()
        };
        write(9, 90);
        let (added, _, used) = ImageSet::load_cached(&dir, p, &cache_dir).unwrap();
        assert!(
            matches!(&used, Some(CacheUse::Written(q)) if *q != changed_file),
            "{used:?}"
        );
        assert_eq!(added.len(), 6);
        std::fs::remove_file(dir.join("img9.png")).unwrap();
        let (removed, _, used) = ImageSet::load_cached(&dir, p, &cache_dir).unwrap();
        assert_eq!(used, Some(CacheUse::Hit(changed_file.clone())));
        assert_eq!(removed.len(), 5);
        let touched = std::fs::File::options()
            .write(true)
            .open(dir.join("img0.png"))
            .unwrap();
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(60);
        touched.set_modified(later).unwrap();
        let (_, _, used) = ImageSet::load_cached(&dir, p, &cache_dir).unwrap();
        let Some(CacheUse::Written(newest)) = used else {
            panic!("touching a file is a miss: {used:?}")
        };
        assert_ne!(newest, changed_file);
        // A damaged cache file (truncated by one byte, or its header overwritten) is decoded
        // again and replaced; the next load maps the new file.
        let good = std::fs::read(&newest).unwrap();
        let truncated = good[..good.len() - 1].to_vec();
        let mut foreign = good.clone();
        foreign[..8].copy_from_slice(b"{\"x\":1}\n");
        for damaged in [truncated, foreign] {
            std::fs::write(&newest, &damaged).unwrap();
            assert!(cache::read(&newest).is_err(), "the damage is seen");
            let (rebuilt, _, used) = ImageSet::load_cached(&dir, p, &cache_dir).unwrap();
            assert_eq!(used, Some(CacheUse::Written(newest.clone())));
            assert!(format!("{:?}", rebuilt.pixels).contains("in memory"));
            assert_eq!(rebuilt.image(2), changed.image(2));
            assert_eq!(std::fs::read(&newest).unwrap(), good, "replaced whole");
            let (again, _, used) = ImageSet::load_cached(&dir, p, &cache_dir).unwrap();
            assert_eq!(used, Some(CacheUse::Hit(newest.clone())));
            for i in 0..5 {
                assert_eq!(again.image(i), changed.image(i));
            }
        }
    }
}

//! The decoded-image cache: a run's images after decoding, cropping and resizing, kept in one
//! file so that the next run on the same folder (a resume, another config, each run of
//! `compare`) memory-maps it instead of decoding every file again.
//!
//! A cache file is named by a hash of everything its bytes depend on: the folder, every image
//! file's path, size and modification time, and the preprocessing (size, channels, crop). The
//! hash is two runs of std's SipHash (`DefaultHasher`) with different prefixes, 128 bits; std
//! does not promise the same values across Rust releases, which at worst rebuilds the cache
//! once after a toolchain update.
//! Any change gives another name, so a stale cache is never read; old files are left for the
//! user to delete (they live in [`default_dir`], one file per folder and preprocessing).
//! `data.cache = false` turns the cache off.
//!
//! Layout: one JSON header line ([`Header`]), then `len * channels * size * size` bytes of
//! channel-first `u8` pixels. Written to a temporary file beside it and renamed into place.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Version of the cache layout, part of every cache file's name and header.
// 2: colour images read as grayscale with PIL's ITU-R 601 weights (was Rec. 709).
pub const FORMAT: &str = "wgan-train-images-2";

/// The cache folder: `$WGAN_TRAIN_CACHE_DIR`, else `$XDG_CACHE_HOME/wgan-train/images`, else
/// `~/.cache/wgan-train/images`.
pub fn default_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("WGAN_TRAIN_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("wgan-train").join("images")
}

/// What a cache file says of itself, on its first line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// [`FORMAT`].
    pub format: String,
    /// Images stored.
    pub len: usize,
    /// Channels per image.
    pub channels: usize,
    /// Side of every image.
    pub size: usize,
    /// Files that could not be decoded when the cache was made.
    pub skipped: usize,
    /// The first of them and why.
    pub first_skipped: Option<(PathBuf, String)>,
}

/// How the images were prepared: side, channels and crop (`data`'s `Preprocess`).
pub type Preparation = (usize, usize, usize);

/// The cache file for `files` (the folder's image files, in load order) under `dir` prepared
/// as `(size, channels, crop)`, in the cache folder `cache_dir`: its name hashes every input
/// of the decoded bytes.
pub fn path_for(
    cache_dir: &Path,
    dir: &Path,
    files: &[PathBuf],
    (size, channels, crop): Preparation,
) -> Result<PathBuf> {
    let mut hashes = [0u8, 1].map(|salt| {
        let mut h = std::hash::DefaultHasher::new();
        salt.hash(&mut h);
        h
    });
    let mut feed = |bytes: &[u8]| hashes.iter_mut().for_each(|h| h.write(bytes));
    feed(FORMAT.as_bytes());
    let canonical = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    feed(canonical.as_os_str().as_encoded_bytes());
    feed(format!("|{size}|{channels}|{crop}|{}", files.len()).as_bytes());
    for file in files {
        let meta =
            std::fs::metadata(file).with_context(|| format!("cannot read {}", file.display()))?;
        let modified = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        feed(file.as_os_str().as_encoded_bytes());
        feed(format!("|{}|{modified}\n", meta.len()).as_bytes());
    }
    let name = format!("{:016x}{:016x}", hashes[0].finish(), hashes[1].finish());
    Ok(cache_dir.join(format!("{name}.bin")))
}

/// A cache file mapped into memory: the header and where the pixels start.
pub struct Mapped {
    /// The file's header.
    pub header: Header,
    /// The whole file.
    pub map: memmap2::Mmap,
    /// Byte offset of the first pixel.
    pub offset: usize,
}

/// Maps the cache file at `path` if it exists and is whole (its length matches its header);
/// `None` when there is none. A damaged file (its header unreadable, foreign, or its length
/// not the header's) is an error naming it; the pixels themselves are not checked (that would
/// read the whole file on every start).
pub fn read(path: &Path) -> Result<Option<Mapped>> {
    let Ok(file) = std::fs::File::open(path) else {
        return Ok(None);
    };
    // SAFETY: the file is only ever written under a temporary name and renamed into place
    // complete, and wgan-train never modifies it afterwards; another program truncating it
    // while mapped is outside what the cache promises (as for any memory-mapped data).
    let map = unsafe { memmap2::Mmap::map(&file) }
        .with_context(|| format!("cannot map the image cache {}", path.display()))?;
    let damaged = || {
        format!(
            "the image cache {} is damaged (truncated, or not written by this version)",
            path.display()
        )
    };
    let newline = map.iter().position(|&b| b == b'\n').with_context(damaged)?;
    let header: Header = serde_json::from_slice(&map[..newline]).with_context(damaged)?;
    let offset = newline + 1;
    let bytes = header.len * header.channels * header.size * header.size;
    if header.format != FORMAT || map.len() != offset + bytes {
        anyhow::bail!(damaged());
    }
    Ok(Some(Mapped {
        header,
        map,
        offset,
    }))
}

/// Writes a cache file with `header` and `pixels` (channel-first `u8`) at `path`, atomically.
pub fn write(path: &Path, header: &Header, pixels: &[u8]) -> Result<()> {
    let dir = path.parent().expect("a cache file has a folder");
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the image cache folder {}", dir.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    let full = || {
        format!(
            "cannot write the image cache {}: is the disk full?",
            path.display()
        )
    };
    serde_json::to_writer(&mut tmp, header).with_context(full)?;
    tmp.write_all(b"\n").with_context(full)?;
    tmp.write_all(pixels).with_context(full)?;
    tmp.as_file().sync_all().with_context(full)?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot move the image cache into {}", path.display()))?;
    Ok(())
}

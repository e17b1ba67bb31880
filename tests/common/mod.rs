//! Helpers shared by the end-to-end tests: the built binary, tiny image folders, configs.
#![allow(dead_code)] // each test file uses a different subset

use image::{Rgb, RgbImage};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The built binary, with its decoded-image cache in the system's temp folder (not the
/// user's cache).
pub fn binary() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wgan-train"));
    cmd.env(
        "WGAN_TRAIN_CACHE_DIR",
        std::env::temp_dir().join("wgan-train-test-image-cache"),
    );
    cmd
}

/// `count` small RGB images of varied sizes (so crop and resize run), nested one level.
pub fn image_folder(root: &Path, count: usize) -> PathBuf {
    let dir = root.join("images");
    std::fs::create_dir_all(dir.join("nested")).unwrap();
    for i in 0..count {
        let (w, h) = (40 + (i as u32 % 3) * 4, 36);
        let img = RgbImage::from_fn(w, h, |x, y| {
            Rgb([(x * 6) as u8, (y * 7) as u8, (i * 30) as u8])
        });
        let sub = if i % 2 == 0 { "" } else { "nested" };
        let ext = if i % 3 == 0 { "jpg" } else { "png" };
        img.save(dir.join(sub).join(format!("img{i}.{ext}")))
            .unwrap();
    }
    dir
}

/// A tiny, fast config: 32x32 grayscale, narrow networks.
pub fn tiny_config(root: &Path, data: &Path) -> PathBuf {
    let path = root.join("tiny.toml");
    let text = format!(
        r#"
[data]
dir = {data:?}
image_size = 32
channels = 1

[model]
z_dim = 8
g_width = 4
d_width = 4

[train]
iterations = 3
batch_size = 4
n_critic = 2

[output]
dir = {out:?}
sample_every = 2
log_every = 1
grid_rows = 2
"#,
        out = root.join("run"),
    );
    std::fs::write(&path, text).unwrap();
    path
}

pub fn run(cmd: &mut Command) -> (Output, String) {
    let out = cmd.output().expect("binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    (out, stderr)
}

pub fn assert_clean_failure(out: &Output, stderr: &str, needles: &[&str]) {
    assert!(!out.status.success(), "must fail: {stderr}");
    assert!(!stderr.contains("panicked"), "no panic: {stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
    }
}

/// Runs `cmd` and asserts that it succeeded; returns its stderr.
pub fn succeed(cmd: &mut Command) -> String {
    let (out, stderr) = run(cmd);
    assert!(out.status.success(), "{stderr}");
    stderr
}

/// Runs `cmd` and asserts that it succeeded (showing its stderr if not); returns its stdout.
pub fn succeed_stdout(cmd: &mut Command) -> String {
    let out = cmd.output().expect("command runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A temp dir holding `images` generated images and a tiny config over them (run folder
/// `<tmp>/run`); keep the returned dir alive for the test's length.
pub fn setup(images: usize) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let data = image_folder(tmp.path(), images);
    let config = tiny_config(tmp.path(), &data);
    (tmp, config)
}

/// Runs `python -c script args...` and returns its stdout; fails the test with Python's stderr
/// when the script fails.
pub fn python_stdout<S: AsRef<std::ffi::OsStr>>(python: &str, script: &str, args: &[S]) -> String {
    let out = Command::new(python)
        .args(["-c", script])
        .args(args)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The Python interpreter for the comparisons with PyTorch: `WGAN_TRAIN_PYTHON`, else the venv
/// that `.ci/run` sets up (`~/.cache/wgan-train/venv`), else `python3`; `None` (with a line
/// saying why) when it lacks torch, numpy, pillow or safetensors or the peer is missing. Under
/// CI=true a missing piece is a failure, not a skip: these comparisons must run there.
pub fn torch_python() -> Option<String> {
    let venv = std::env::var("HOME")
        .map(|h| format!("{h}/.cache/wgan-train/venv/bin/python"))
        .ok()
        .filter(|p| Path::new(p).exists());
    let python = std::env::var("WGAN_TRAIN_PYTHON")
        .ok()
        .or(venv)
        .unwrap_or_else(|| "python3".into());
    let peer = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/peer/torch_wgan.py");
    let check = Command::new(&python)
        .args(["-c", "import torch, numpy, PIL, safetensors"])
        .output();
    let why = match check {
        _ if !peer.exists() => format!("{} not found", peer.display()),
        Err(e) => format!("cannot run {python}: {e}"),
        Ok(o) if !o.status.success() => format!(
            "{python} lacks torch, numpy, pillow or safetensors ({}): run scripts/setup-python.sh",
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .last()
                .unwrap_or("")
        ),
        Ok(_) => return Some(python),
    };
    assert!(
        std::env::var("CI").is_err(),
        "under CI this must run: {why}"
    );
    println!("skipped: {why}");
    None
}

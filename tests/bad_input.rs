//! Bad input never panics: one clear line naming the culprit, a non-zero exit, nothing lost.

mod common;

use common::*;
use std::path::Path;

fn fails_with(args: &[&str], config: Option<&Path>, needles: &[&str]) {
    let mut cmd = binary();
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    let (out, err) = run(cmd.args(args));
    assert_clean_failure(&out, &err, needles);
}

#[test]
fn config_errors_name_the_file_or_key() {
    let (tmp, config) = setup(4);
    fails_with(
        &[],
        Some(&tmp.path().join("nope.toml")),
        &["nope.toml", "cannot read config"],
    );
    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, "[data\nimage_size = 32").unwrap();
    fails_with(&[], Some(&bad), &["bad.toml", "malformed TOML"]);
    std::fs::write(&bad, "[model]\nwidth = 3\n").unwrap();
    fails_with(&[], Some(&bad), &["width"]);
    std::fs::write(&bad, "[train]\nbatch_size = \"big\"\n").unwrap();
    fails_with(&[], Some(&bad), &["batch_size"]);
    for (set, key) in [
        ("data.image_size=48", "data.image_size = 48"),
        ("train.batch_size=0", "train.batch_size"),
        ("train.n_critic=0", "train.n_critic"),
        ("train.lr_g=-0.001", "train.lr_g"),
        ("train.lr_d=0", "train.lr_d"),
        ("data.channels=2", "data.channels = 2"),
    ] {
        fails_with(&["--set", set], Some(&config), &[key]);
    }
    fails_with(
        &["--set", "train.iterations"],
        Some(&config),
        &["has no '='"],
    );
    fails_with(&["--backend", "tpu"], Some(&config), &["tpu", "flex"]);
}

#[test]
fn data_errors_name_the_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tiny_config(tmp.path(), &tmp.path().join("missing"));
    fails_with(&[], Some(&missing), &["missing", "does not exist"]);
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    fails_with(
        &[],
        Some(&tiny_config(tmp.path(), &empty)),
        &["empty", "no JPEG/PNG"],
    );
    let corrupt = tmp.path().join("corrupt");
    std::fs::create_dir(&corrupt).unwrap();
    for i in 0..3 {
        std::fs::write(corrupt.join(format!("c{i}.jpg")), b"garbage").unwrap();
    }
    fails_with(
        &[],
        Some(&tiny_config(tmp.path(), &corrupt)),
        &["corrupt", "none of the 3"],
    );
}

#[test]
fn a_folder_mixing_corrupt_and_good_images_trains_and_warns_once() {
    let tmp = tempfile::tempdir().unwrap();
    let data = image_folder(tmp.path(), 5);
    std::fs::write(data.join("broken.png"), b"\x89PNG broken").unwrap();
    std::fs::write(data.join("nested/broken2.jpg"), b"no").unwrap();
    let config = tiny_config(tmp.path(), &data);
    let err = succeed(binary().arg("--config").arg(&config));
    let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("warning")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(
        warnings[0].contains("skipped 2") && warnings[0].contains("broken"),
        "{err}"
    );
}

#[test]
fn run_folder_errors_are_clear() {
    let (tmp, config) = setup(4);
    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let under_file = file.join("run");
    fails_with(
        &["--out", under_file.to_str().unwrap()],
        Some(&config),
        &["cannot create run folder", "a-file"],
    );
    let empty_run = tmp.path().join("fresh");
    fails_with(
        &["--resume", "--out", empty_run.to_str().unwrap()],
        Some(&config),
        &["no checkpoint to resume from"],
    );
    fails_with(&["--resume"], None, &["--out RUN"]);
    fails_with(&[], None, &["--config FILE is required"]);
}

#[test]
fn a_nan_loss_stops_with_the_iteration_and_keeps_the_last_good_checkpoint() {
    let (tmp, config) = setup(4);
    let (out, err) = run(binary()
        .env("WGAN_TRAIN_TEST_NAN_AT", "3")
        .arg("--config")
        .arg(&config)
        .args([
            "--set",
            "train.iterations=5",
            "--set",
            "output.checkpoint_every=1",
        ]));
    assert_clean_failure(
        &out,
        &err,
        &["critic loss is NaN at iteration 3", "last good checkpoint"],
    );
    let run_dir = tmp.path().join("run");
    assert!(run_dir.join("checkpoints/step_000002/state.json").exists());
    assert!(!run_dir.join("checkpoints/step_000003").exists());
}

//! End-to-end tests: the built binary on tiny generated image folders in a temp dir.

mod common;

use common::*;

#[test]
fn trains_end_to_end_and_writes_grids_metrics_config_and_checkpoints() {
    let (tmp, config) = setup(9);
    succeed(binary().arg("--config").arg(&config));
    let run_dir = tmp.path().join("run");

    // Grids at step 2 and at the end; 2x2 images of 32 px with 2 px padding.
    for step in [2, 3] {
        let grid = image::open(run_dir.join(format!("samples/step_{step:06}.png"))).unwrap();
        assert_eq!((grid.width(), grid.height()), (70, 70), "grid size");
    }
    assert!(!run_dir.join("samples/step_000001.png").exists());

    let metrics = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["step"], i + 1);
        for key in [
            "critic_loss",
            "generator_loss",
            "wasserstein",
            "sec_per_iter",
            "images_per_sec",
        ] {
            assert!(line[key].as_f64().unwrap().is_finite(), "{key} in {line}");
        }
        let (d, w) = (
            line["critic_loss"].as_f64().unwrap(),
            line["wasserstein"].as_f64().unwrap(),
        );
        assert!(
            (d + w).abs() < 1e-5,
            "critic loss is minus the W estimate without a penalty"
        );
    }

    let resolved = std::fs::read_to_string(run_dir.join("config.toml")).unwrap();
    assert!(resolved.contains("kind = \"spectral_norm\""), "{resolved}");
    let ckpt = run_dir.join("checkpoints/step_000003");
    for file in [
        "generator.bpk",
        "critic.bpk",
        "optim_g.bpk",
        "optim_d.bpk",
        "state.json",
    ] {
        assert!(
            std::fs::metadata(ckpt.join(file)).unwrap().len() > 0,
            "{file}"
        );
    }
}

#[test]
fn set_overrides_and_out_flag_take_effect() {
    let (tmp, config) = setup(6);
    let out_dir = tmp.path().join("elsewhere");
    succeed(
        binary()
            .arg("--config")
            .arg(&config)
            .args(["--set", "train.iterations=1", "--set", "data.channels=3"])
            .args([
                "--set",
                "output.grid_rows=3",
                "--set",
                "constraint.kind=\"none\"",
            ])
            .arg("--out")
            .arg(&out_dir),
    );
    let grid = image::open(out_dir.join("samples/step_000001.png")).unwrap();
    assert_eq!((grid.width(), grid.height()), (104, 104));
    assert!(grid.as_rgb8().is_some(), "3 channels give an RGB grid");
    let resolved = std::fs::read_to_string(out_dir.join("config.toml")).unwrap();
    assert!(resolved.contains("iterations = 1") && resolved.contains("kind = \"none\""));
}

#[test]
fn missing_data_folder_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tiny_config(tmp.path(), &tmp.path().join("no-such-folder"));
    let (out, stderr) = run(binary().arg("--config").arg(&config));
    assert_clean_failure(&out, &stderr, &["no-such-folder", "data.dir"]);
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
}

#[test]
fn unknown_config_key_is_a_clear_error() {
    let (_tmp, config) = setup(4);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[train]", "[train]\nepochs = 3");
    std::fs::write(&config, text).unwrap();
    let (out, stderr) = run(binary().arg("--config").arg(&config));
    assert_clean_failure(&out, &stderr, &["epochs", "tiny.toml"]);
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
}

#[test]
fn help_documents_every_flag() {
    let out = binary().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--config",
        "--backend",
        "--set",
        "--out",
        "flex",
        "ndarray",
        "wgpu",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
}

#[test]
fn every_constraint_kind_trains_end_to_end() {
    let (tmp, config) = setup(6);
    let kinds: [(&str, &[&str], bool); 5] = [
        ("spectral_norm", &["constraint.power_iterations=2"], false),
        (
            "gradient_penalty",
            &["constraint.one_sided=true", "constraint.lambda=5.0"],
            true,
        ),
        (
            "weight_clipping",
            &["constraint.clip_value=0.02", "train.optimizer=\"rmsprop\""],
            false,
        ),
        ("spectral_penalty", &["constraint.lambda=0.5"], true),
        ("none", &[], false),
    ];
    for (kind, extra, has_penalty) in kinds {
        let out_dir = tmp.path().join(kind);
        let mut cmd = binary();
        cmd.arg("--config").arg(&config).arg("--out").arg(&out_dir);
        cmd.args(["--set", &format!("constraint.kind=\"{kind}\"")]);
        for e in extra {
            cmd.args(["--set", e]);
        }
        let (out, stderr) = run(&mut cmd);
        assert!(out.status.success(), "{kind}: {stderr}");
        assert!(out_dir.join("samples/step_000003.png").exists(), "{kind}");
        let metrics = std::fs::read_to_string(out_dir.join("metrics.jsonl")).unwrap();
        let last: serde_json::Value =
            serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
        assert_eq!(last["penalty"].is_f64(), has_penalty, "{kind}: {last}");
        let resolved = std::fs::read_to_string(out_dir.join("config.toml")).unwrap();
        assert!(resolved.contains(&format!("kind = \"{kind}\"")), "{kind}");
    }
}

#[cfg(not(feature = "wgpu"))]
#[test]
fn wgpu_backend_without_the_feature_is_a_clear_error() {
    let (_tmp, config) = setup(4);
    let (out, stderr) = run(binary()
        .arg("--config")
        .arg(&config)
        .args(["--backend", "wgpu"]));
    assert_clean_failure(&out, &stderr, &["wgpu feature", "--backend flex"]);
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
}

/// A relative `data.dir` is resolved when the run starts and recorded in the run's config.toml,
/// so that `inspect` and `eval` work from another working directory.
#[test]
fn a_relative_data_dir_is_recorded_absolute_and_runs_work_from_anywhere() {
    let (tmp, config) = setup(6);
    let text = std::fs::read_to_string(&config).unwrap();
    let images = tmp.path().join("images");
    let relative = text.replace(&format!("{images:?}"), "\"images\"");
    assert_ne!(relative, text, "the config names the image folder");
    std::fs::write(&config, relative).unwrap();
    // Inception weights named relatively too (random ones: only the path matters here).
    let weights = tmp.path().join("w.safetensors");
    wgan_train::inception::InceptionV3::new(&burn::prelude::Device::flex())
        .save(&weights)
        .unwrap();
    succeed(
        binary()
            .current_dir(tmp.path())
            .arg("--config")
            .arg("tiny.toml")
            .args([
                "--out",
                "run",
                "--set",
                "output.inception=\"w.safetensors\"",
            ]),
    );
    let recorded = std::fs::read_to_string(tmp.path().join("run/config.toml")).unwrap();
    assert!(
        recorded.contains(&images.display().to_string())
            && recorded.contains(&weights.display().to_string()),
        "{recorded}"
    );
    let elsewhere = tempfile::tempdir().unwrap();
    for command in ["inspect", "eval"] {
        let mut cmd = binary();
        cmd.current_dir(elsewhere.path())
            .arg(command)
            .arg("--run")
            .arg(tmp.path().join("run"));
        if command == "eval" {
            cmd.args(["--images", "16", "--fid"]);
        }
        let stdout = succeed_stdout(&mut cmd);
        if command == "eval" {
            assert!(stdout.lines().any(|l| l.starts_with("FID")), "{stdout}");
        }
    }
}

/// The second run on the same folder maps the decoded-image cache that the first wrote (in
/// the folder `WGAN_TRAIN_CACHE_DIR` names); `data.cache = false` writes none; a damaged
/// cache file is decoded again and replaced with one warning.
#[test]
fn the_second_run_maps_the_decoded_image_cache_and_the_key_turns_it_off() {
    let (tmp, config) = setup(5);
    let cache = tmp.path().join("cache");
    let train = |out: &str, extra: &[&str]| {
        succeed(
            binary()
                .env("WGAN_TRAIN_CACHE_DIR", &cache)
                .arg("--config")
                .arg(&config)
                .args(extra)
                .arg("--out")
                .arg(tmp.path().join(out)),
        )
    };
    let off = train("off", &["--set", "data.cache=false"]);
    assert!(!cache.exists(), "{off}");
    let first = train("a", &[]);
    assert!(
        first.contains("decoded in") && first.contains("and cached in"),
        "{first}"
    );
    let second = train("b", &[]);
    assert!(second.contains("from the cache"), "{second}");
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 1);
    let losses = |run: &str| {
        std::fs::read_to_string(tmp.path().join(run).join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| l.split("\"sec_per_iter\"").next().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(losses("a"), losses("b"), "cached images train the same");
    assert_eq!(losses("off"), losses("b"));
    // A truncated cache file: one warning naming it, the images decoded again (never the
    // damaged bytes), the file replaced, and the next run maps it again.
    let file = std::fs::read_dir(&cache)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let whole = std::fs::read(&file).unwrap();
    std::fs::write(&file, &whole[..whole.len() / 2]).unwrap();
    let third = train("c", &[]);
    let warnings: Vec<&str> = third.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warnings.len(), 1, "{third}");
    assert!(
        warnings[0].contains("damaged") && warnings[0].contains(&file.display().to_string()),
        "{third}"
    );
    assert!(third.contains("decoded in"), "{third}");
    assert_eq!(losses("c"), losses("off"), "trained on the decoded images");
    assert_eq!(
        std::fs::read(&file).unwrap(),
        whole,
        "the cache file replaced whole"
    );
    assert!(train("d", &[]).contains("from the cache"));
}

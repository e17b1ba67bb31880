//! `--backend wgpu` end to end. On a machine without a GPU, Mesa's lavapipe (software Vulkan,
//! installed by scripts/install-deps.sh) runs the same WGSL shaders on the CPU; where no adapter
//! exists at all, the GPU tests print why they are skipped.

mod common;

use common::*;

fn skip() -> bool {
    if wgan_train::backend::gpu_available() {
        return false;
    }
    println!(
        "skipped: no wgpu adapter on this machine (install mesa-vulkan-drivers and libvulkan1)"
    );
    true
}

#[test]
fn trains_a_few_iterations_on_wgpu_and_writes_a_grid() {
    if skip() {
        return;
    }
    let (tmp, config) = setup(6);
    for kind in [
        "spectral_norm",
        "gradient_penalty",
        "weight_clipping",
        "spectral_penalty",
        "none",
    ] {
        let out_dir = tmp.path().join(kind);
        let (out, err) = run(binary()
            .arg("--config")
            .arg(&config)
            .args([
                "--backend",
                "wgpu",
                "--set",
                &format!("constraint.kind=\"{kind}\""),
            ])
            .arg("--out")
            .arg(&out_dir));
        assert!(out.status.success(), "{kind}: {err}");
        let grid = image::open(out_dir.join("samples/step_000003.png")).unwrap();
        assert_eq!((grid.width(), grid.height()), (70, 70));
    }
}

#[test]
fn a_checkpoint_written_on_one_backend_resumes_on_the_other() {
    if skip() {
        return;
    }
    let (tmp, config) = setup(6);
    let run_dir = tmp.path().join("run");
    succeed(
        binary()
            .arg("--config")
            .arg(&config)
            .args(["--set", "train.iterations=2"]),
    );
    let (out, err) = run(binary()
        .args([
            "--resume",
            "--backend",
            "wgpu",
            "--set",
            "train.iterations=3",
        ])
        .arg("--out")
        .arg(&run_dir));
    assert!(out.status.success(), "flex -> wgpu: {err}");
    let (out, err) = run(binary()
        .args([
            "--resume",
            "--backend",
            "flex",
            "--set",
            "train.iterations=4",
        ])
        .arg("--out")
        .arg(&run_dir));
    assert!(out.status.success(), "wgpu -> flex: {err}");
    assert!(run_dir.join("checkpoints/step_000004/state.json").exists());
    // The config key selects the backend too.
    let samples = tmp.path().join("s");
    succeed(
        binary()
            .arg("sample")
            .arg("--run")
            .arg(&run_dir)
            .args(["--backend", "wgpu", "--n", "3"])
            .arg("--out")
            .arg(&samples),
    );
    assert!(samples.join("sample_000002.png").exists());
}

#[test]
fn no_adapter_is_a_clear_one_line_error() {
    let (_tmp, config) = setup(4);
    // Point the Vulkan loader at no driver.
    let (out, err) = run(binary()
        .env("VK_ICD_FILENAMES", "/nonexistent/icd.json")
        .env("VK_DRIVER_FILES", "/nonexistent/icd.json")
        .arg("--config")
        .arg(&config)
        .args(["--backend", "wgpu"]));
    assert_clean_failure(
        &out,
        &err,
        &["no GPU/Vulkan adapter found", "--backend flex"],
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

#[test]
fn the_config_backend_key_is_used_and_the_flag_wins() {
    let (_tmp, config) = setup(4);
    let text = format!(
        "backend = \"wgpu\"\n{}",
        std::fs::read_to_string(&config).unwrap()
    );
    std::fs::write(&config, text).unwrap();
    // With no driver, the config's wgpu fails clearly; --backend flex wins and trains.
    let no_driver = |cmd: &mut std::process::Command| {
        cmd.env("VK_ICD_FILENAMES", "/nonexistent/icd.json")
            .env("VK_DRIVER_FILES", "/nonexistent/icd.json");
    };
    let mut cmd = binary();
    no_driver(&mut cmd);
    let (out, err) = run(cmd.arg("--config").arg(&config));
    assert_clean_failure(&out, &err, &["no GPU/Vulkan adapter found"]);
    let mut cmd = binary();
    no_driver(&mut cmd);
    succeed(cmd.arg("--config").arg(&config).args(["--backend", "flex"]));
    let (out, err) = run(binary().arg("--config").arg(&config).args([
        "--backend",
        "flex",
        "--device",
        "1",
        "--force",
    ]));
    assert_clean_failure(&out, &err, &["--device", "wgpu"]);
}

#[test]
fn device_picks_an_adapter_by_index_and_names_the_ones_there_are() {
    if skip() {
        return;
    }
    let (_tmp, config) = setup(4);
    succeed(binary().arg("--config").arg(&config).args([
        "--backend",
        "wgpu",
        "--device",
        "0",
        "--set",
        "train.iterations=1",
    ]));
    let (out, err) = run(binary().arg("--config").arg(&config).args([
        "--backend",
        "wgpu",
        "--device",
        "99",
        "--force",
    ]));
    assert_clean_failure(&out, &err, &["--device 99 does not exist", "0: "]);
}

#[test]
fn adapters_lists_what_device_indexes_and_parity_passes_on_the_adapter() {
    if skip() {
        return;
    }
    let out = binary().arg("adapters").output().unwrap();
    let listed = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() && listed.starts_with("0: "),
        "{listed}"
    );
    let out = binary().args(["parity", "--device", "0"]).output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{table}");
    for kind in ["spectral_norm", "gradient_penalty", "weight_clipping"] {
        let row = table.lines().find(|l| l.starts_with(kind)).expect(kind);
        assert!(row.ends_with("ok"), "{row}");
    }
    // Without a driver: one clear line, no panic.
    let (out, err) = run(binary()
        .env("VK_ICD_FILENAMES", "/nonexistent/icd.json")
        .env("VK_DRIVER_FILES", "/nonexistent/icd.json")
        .arg("parity"));
    assert_clean_failure(&out, &err, &["no GPU/Vulkan adapter found"]);
}

#[test]
fn fid_features_on_wgpu_equal_flex() {
    if skip() {
        return;
    }
    use burn::prelude::*;
    use wgan_train::backend::Backend;
    use wgan_train::inception::InceptionV3;
    let flex = Device::flex();
    flex.seed(4);
    let tmp = tempfile::tempdir().unwrap();
    let weights = tmp.path().join("inception.safetensors");
    InceptionV3::new(&flex).save(&weights).unwrap();
    let gpu = Backend::Wgpu.device(None).unwrap();
    let values: Vec<f32> = (0..2 * 32 * 32)
        .map(|i| ((i * 37) % 256) as f32 / 255.0)
        .collect();
    let features = |device: &Device| -> Vec<f32> {
        let net = InceptionV3::load(&weights, device).unwrap();
        let x = Tensor::<4>::from_data(TensorData::new(values.clone(), [2, 1, 32, 32]), device);
        net.features(x)
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap()
    };
    let (cpu, wgpu) = (features(&flex), features(&gpu));
    let largest = cpu.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = cpu
        .iter()
        .zip(&wgpu)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        largest > 0.0 && worst <= 1e-4 * largest,
        "wgpu features differ by {worst} of {largest}"
    );
}

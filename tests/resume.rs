//! Checkpoints, exact resume, Ctrl-C, kill -9, sampling and export, through the binary.

mod common;

use common::*;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use wgan_train::metrics::Record;

/// The metrics lines of a run (none while the file is missing or a line is half written).
fn metrics(run: &Path) -> Vec<Record> {
    wgan_train::metrics::read(&run.join("metrics.jsonl")).unwrap_or_default()
}

/// Per step: (step, critic loss, generator loss, Wasserstein estimate).
fn losses(lines: &[Record]) -> Vec<(usize, f64, f64, f64)> {
    lines
        .iter()
        .map(|r| (r.step, r.critic_loss, r.generator_loss, r.wasserstein))
        .collect()
}

fn steps_of(run: &Path) -> Vec<usize> {
    let Ok(entries) = std::fs::read_dir(run.join("checkpoints")) else {
        return vec![];
    };
    let mut steps: Vec<usize> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("step_")?.parse().ok())
        .collect();
    steps.sort();
    steps
}

fn spawn(cmd: &mut Command) -> Child {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

#[test]
fn a_stopped_and_resumed_run_gives_the_same_losses_as_an_uninterrupted_one() {
    let (tmp, config) = setup(10);
    // The operator-norm state (u, v of each convolution's output and input shapes, and the
    // certified bounds) and GroupSort go through checkpoints too.
    let operator = [
        "--set",
        "constraint.norm=\"operator\"",
        "--set",
        "constraint.certify=true",
        "--set",
        "model.critic_activation=\"groupsort\"",
    ];
    for (kind, extra) in [
        ("spectral_norm", &[][..]),
        ("gradient_penalty", &[][..]),
        ("spectral_norm", &operator[..]),
    ] {
        let label = format!("{kind}{}", if extra.is_empty() { "" } else { "-operator" });
        let (whole, parts) = (
            tmp.path().join(format!("whole-{label}")),
            tmp.path().join(format!("parts-{label}")),
        );
        let kind_set = format!("constraint.kind=\"{kind}\"");
        let mut base = vec![
            "--set",
            "output.checkpoint_every=2",
            "--set",
            kind_set.as_str(),
        ];
        base.extend_from_slice(extra);
        succeed(
            binary()
                .arg("--config")
                .arg(&config)
                .args(&base)
                .args(["--set", "train.iterations=7"])
                .arg("--out")
                .arg(&whole),
        );
        // Stop after 4, continue to 7 from the run's own config.toml.
        succeed(
            binary()
                .arg("--config")
                .arg(&config)
                .args(&base)
                .args(["--set", "train.iterations=4"])
                .arg("--out")
                .arg(&parts),
        );
        let err = succeed(
            binary()
                .args(["--resume", "--set", "train.iterations=7"])
                .arg("--out")
                .arg(&parts),
        );
        assert!(err.contains("resuming"), "{err}");
        let (a, b) = (losses(&metrics(&whole)), losses(&metrics(&parts)));
        assert_eq!(a.len(), 7);
        assert_eq!(a, b, "{label}: step-by-step losses differ after resume");
    }
}

#[test]
fn keeps_the_newest_checkpoints_and_refuses_to_overwrite_a_run() {
    let (tmp, config) = setup(6);
    let args = [
        "--set",
        "train.iterations=5",
        "--set",
        "output.checkpoint_every=1",
        "--set",
        "output.keep_checkpoints=2",
    ];
    succeed(binary().arg("--config").arg(&config).args(args));
    let run_dir = tmp.path().join("run");
    assert_eq!(steps_of(&run_dir), vec![4, 5]);
    // A second start into the same folder is refused, naming the flags.
    let (out, err) = run(binary().arg("--config").arg(&config).args(args));
    assert_clean_failure(&out, &err, &["already holds a run", "--resume", "--force"]);
    // --force starts over.
    succeed(
        binary()
            .arg("--config")
            .arg(&config)
            .args(args)
            .arg("--force"),
    );
    assert_eq!(metrics(&run_dir).len(), 5);
}

#[test]
fn a_corrupt_newest_checkpoint_falls_back_to_the_previous_one() {
    let (tmp, config) = setup(6);
    let args = [
        "--set",
        "train.iterations=4",
        "--set",
        "output.checkpoint_every=1",
    ];
    succeed(binary().arg("--config").arg(&config).args(args));
    let run_dir = tmp.path().join("run");
    let newest = run_dir.join("checkpoints/step_000004/generator.bpk");
    let bytes = std::fs::read(&newest).unwrap();
    std::fs::write(&newest, &bytes[..bytes.len() / 2]).unwrap();
    let err = succeed(
        binary()
            .args(["--resume", "--set", "train.iterations=5"])
            .arg("--out")
            .arg(&run_dir),
    );
    assert!(
        err.contains("step_000004") && err.contains("unusable"),
        "{err}"
    );
    assert!(err.contains("iteration 3"), "{err}");
    let steps: Vec<usize> = metrics(&run_dir).iter().map(|r| r.step).collect();
    assert_eq!(
        steps,
        vec![1, 2, 3, 4, 5],
        "metrics after the checkpoint are rewritten"
    );
}

#[test]
fn ctrl_c_writes_a_checkpoint_and_exits_130_and_the_run_resumes() {
    let (tmp, config) = setup(6);
    let run_dir = tmp.path().join("run");
    let mut child = spawn(binary().arg("--config").arg(&config).args([
        "--set",
        "train.iterations=100000",
        "--set",
        "output.checkpoint_every=0",
    ]));
    wait_until("the first metrics line", || !metrics(&run_dir).is_empty());
    signal(&child, "-INT");
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("--resume"), "{err}");
    let steps = steps_of(&run_dir);
    assert_eq!(steps.len(), 1, "one checkpoint, at the interruption");
    let at = steps[0];
    assert_eq!(metrics(&run_dir).last().unwrap().step, at);
    succeed(
        binary()
            .args(["--resume", "--set", &format!("train.iterations={}", at + 2)])
            .arg("--out")
            .arg(&run_dir),
    );
    assert_eq!(steps_of(&run_dir).last(), Some(&(at + 2)));
}

#[test]
fn a_run_killed_while_writing_checkpoints_resumes_from_a_valid_one() {
    let (tmp, config) = setup(6);
    let run_dir = tmp.path().join("run");
    let mut child = spawn(binary().arg("--config").arg(&config).args([
        "--set",
        "train.iterations=100000",
        "--set",
        "output.checkpoint_every=1",
    ]));
    wait_until("three checkpoints", || {
        steps_of(&run_dir).last().is_some_and(|&s| s >= 3)
    });
    signal(&child, "-KILL");
    child.wait().unwrap();
    // Every checkpoint folder that has its final name is complete.
    for step in steps_of(&run_dir) {
        let dir = run_dir.join(format!("checkpoints/step_{step:06}"));
        for f in [
            "generator.bpk",
            "critic.bpk",
            "optim_g.bpk",
            "optim_d.bpk",
            "state.json",
        ] {
            assert!(dir.join(f).exists(), "{} lacks {f}", dir.display());
        }
    }
    let newest = *steps_of(&run_dir).last().unwrap();
    let err = succeed(
        binary()
            .args([
                "--resume",
                "--set",
                &format!("train.iterations={}", newest + 1),
            ])
            .arg("--out")
            .arg(&run_dir),
    );
    assert!(err.contains(&format!("iteration {newest}")), "{err}");
}

#[test]
fn sample_writes_n_images_and_a_grid_and_export_writes_safetensors() {
    let (tmp, config) = setup(6);
    succeed(
        binary()
            .arg("--config")
            .arg(&config)
            .args(["--set", "output.checkpoint_every=1"]),
    );
    let run_dir = tmp.path().join("run");
    let samples = tmp.path().join("samples");
    succeed(
        binary()
            .arg("sample")
            .arg("--run")
            .arg(&run_dir)
            .args(["--n", "300", "--grid", "--seed", "4", "--checkpoint", "2"])
            .arg("--out")
            .arg(&samples),
    );
    let pngs = std::fs::read_dir(&samples)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("sample_")
        })
        .count();
    assert_eq!(pngs, 300);
    let one = image::open(samples.join("sample_000299.png")).unwrap();
    assert_eq!((one.width(), one.height()), (32, 32));
    assert!(samples.join("grid.png").exists());
    let (out, err) = run(binary()
        .arg("sample")
        .arg("--run")
        .arg(&run_dir)
        .args(["--checkpoint", "99"])
        .arg("--out")
        .arg(&samples));
    assert_clean_failure(&out, &err, &["no checkpoint 99", "1, 2, 3"]);

    let st = tmp.path().join("g.safetensors");
    succeed(
        binary()
            .arg("export")
            .arg("--run")
            .arg(&run_dir)
            .arg("--out")
            .arg(&st),
    );
    let bytes = std::fs::read(&st).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(tensors.tensor("fc.weight").unwrap().shape(), &[16 * 16, 8]);
    assert_eq!(
        tensors.tensor("net.6.weight").unwrap().shape(),
        &[4, 1, 4, 4]
    );
}

/// The moving average of G is saved with each checkpoint and continues bitwise after a
/// resume; `sample` uses it, `sample --raw` uses G, and the two differ. The run uses the hinge
/// loss, which trains end to end.
#[test]
fn the_generator_average_survives_resume_bitwise_and_sample_raw_uses_g() {
    let (tmp, config) = setup(10);
    let (whole, parts) = (tmp.path().join("whole"), tmp.path().join("parts"));
    let base = [
        "--set",
        "output.checkpoint_every=2",
        "--set",
        "train.ema_decay=0.8",
        "--set",
        "train.ema_start=1",
        "--set",
        "train.loss=\"hinge\"",
    ];
    let train = |out: &Path, iterations: usize| {
        succeed(
            binary()
                .arg("--config")
                .arg(&config)
                .args(base)
                .args(["--set", &format!("train.iterations={iterations}")])
                .arg("--out")
                .arg(out),
        )
    };
    train(&whole, 7);
    train(&parts, 4);
    let err = succeed(
        binary()
            .args(["--resume", "--set", "train.iterations=7"])
            .arg("--out")
            .arg(&parts),
    );
    assert!(err.contains("resuming"), "{err}");
    // The values, not the files: a burnpack file also holds the parameters' random ids.
    let last = |run: &Path, file: &str| {
        let device = burn::prelude::Device::flex();
        let fresh = wgan_train::model::Generator::new(32, 1, 8, 4, &device);
        let path = run.join("checkpoints/step_000007").join(file);
        let g = wgan_train::checkpoint::load_module(fresh, &path).unwrap();
        wgan_train::model::float_values(&g)
    };
    for file in ["generator.bpk", "generator_ema.bpk"] {
        assert!(
            last(&whole, file) == last(&parts, file),
            "{file} differs after resume"
        );
    }
    assert!(
        last(&whole, "generator_ema.bpk") != last(&whole, "generator.bpk"),
        "the average is not G"
    );
    let hinge: Vec<f64> = metrics(&whole).iter().map(|r| r.critic_loss).collect();
    assert!(
        hinge.iter().all(|l| l.is_finite() && *l >= 0.0),
        "{hinge:?}"
    );
    let sample = |raw: bool| {
        let out = tmp.path().join(format!("samples-raw-{raw}"));
        let mut cmd = binary();
        cmd.arg("sample")
            .arg("--run")
            .arg(&whole)
            .args(["--n", "4", "--seed", "1"])
            .arg("--out")
            .arg(&out);
        if raw {
            cmd.arg("--raw");
        }
        let said = succeed_stdout(&mut cmd);
        assert_eq!(said.contains("moving average"), !raw, "{said}");
        std::fs::read(out.join("sample_000000.png")).unwrap()
    };
    assert!(
        sample(true) != sample(false),
        "--raw and the average give the same image"
    );
}

/// Turning the average on when resuming a run that kept none starts it from G, with a note.
#[test]
fn resuming_with_the_average_turned_on_starts_it_from_g() {
    let (tmp, config) = setup(6);
    let run_dir = tmp.path().join("run");
    succeed(
        binary()
            .arg("--config")
            .arg(&config)
            .args(["--set", "train.iterations=2"]),
    );
    let err = succeed(
        binary()
            .args(["--resume", "--set", "train.iterations=3"])
            .args(["--set", "train.ema_decay=0.9"])
            .arg("--out")
            .arg(&run_dir),
    );
    assert!(err.contains("starts from G at iteration 2"), "{err}");
    assert!(
        run_dir
            .join("checkpoints/step_000003/generator_ema.bpk")
            .exists()
    );
}

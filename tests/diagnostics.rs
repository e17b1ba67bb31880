//! End to end: Lipschitz diagnostics and SWD in metrics.jsonl, plots, `inspect`, `eval`,
//! `compare`, and the wall-clock budget.

mod common;

use common::*;
use nalgebra::DMatrix;
use std::path::Path;
use wgan_train::metrics;

/// A tiny config of `kind` over 40 images; `extra` is appended (TOML).
fn kind_config(root: &Path, data: &Path, kind: &str, extra: &str) -> std::path::PathBuf {
    let base = std::fs::read_to_string(tiny_config(root, data)).unwrap();
    let text = format!(
        "{base}eval_every = 2\neval_images = 16\n{extra}\n[constraint]\nkind = \"{kind}\"\n"
    );
    let path = root.join(format!("{kind}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn setup_kind(kind: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let data = image_folder(tmp.path(), 40);
    let config = kind_config(tmp.path(), &data, kind, "");
    (tmp, config)
}

#[test]
fn training_logs_diagnostics_and_swd_and_draws_plots() {
    let (tmp, config) = setup_kind("spectral_norm");
    succeed(
        binary()
            .arg("--config")
            .arg(&config)
            .args(["--set", "train.iterations=4"]),
    );
    let run = tmp.path().join("run");
    let records = metrics::read(&run.join("metrics.jsonl")).unwrap();
    assert_eq!(records.len(), 4);
    for r in &records {
        let l = r.lipschitz.as_ref().expect("diagnostics on every line");
        assert_eq!(l.layers.len(), 4, "3 convolutions and the head at 32x32");
        for layer in &l.layers {
            let pi = layer.sigma_pi.expect("spectral norm has a power iteration");
            assert!((layer.sigma - layer.sigma_raw / pi).abs() < 1e-9 * layer.sigma);
        }
        let product: f64 = l.layers.iter().map(|x| x.sigma).product();
        assert!((l.bound - product).abs() < 1e-9 * product);
        for g in [l.grad_real, l.grad_fake, l.grad_interpolates] {
            assert!(g.mean.is_finite() && g.mean > 0.0 && g.mean <= g.max);
        }
        // SWD at every second iteration (eval_every = 2) and at the end.
        assert_eq!(r.swd.is_some(), r.step % 2 == 0, "step {}", r.step);
    }
    let swd = records[3].swd.as_ref().unwrap();
    assert_eq!(swd.resolutions, vec![32, 16]);
    assert!(swd.levels.iter().all(|&l| l > 0.0 && l.is_finite()));
    for plot in [
        "losses",
        "wasserstein",
        "gradient_norms",
        "lipschitz_bound",
        "swd",
    ] {
        let svg = std::fs::read_to_string(run.join("plots").join(format!("{plot}.svg"))).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("<polyline"),
            "{plot}"
        );
    }
}

/// The numbers of `inspect`'s table: per layer (sigma from u, v; exact sigma; kernel norm).
fn parse_table(stdout: &str) -> Vec<(f64, f64, f64)> {
    stdout
        .lines()
        .filter(|l| l.starts_with("conv") || l.starts_with("head"))
        .map(|l| {
            // name, shape (may hold spaces, inside brackets), then four columns.
            let tail: Vec<&str> = l.rsplit(']').next().unwrap().split_whitespace().collect();
            (
                tail[0].parse().unwrap(),
                tail[1].parse().unwrap(),
                tail[3].parse().unwrap(),
            )
        })
        .collect()
}

#[test]
fn inspect_agrees_with_an_independent_svd_of_the_checkpoint() {
    let (tmp, config) = setup_kind("spectral_norm");
    succeed(binary().arg("--config").arg(&config));
    let run = tmp.path().join("run");
    let stdout = succeed_stdout(
        binary()
            .args(["inspect", "--run"])
            .arg(&run)
            .args(["--images", "8"]),
    );
    let rows = parse_table(&stdout);
    assert_eq!(rows.len(), 4, "{stdout}");
    assert!(stdout.contains("product of kernel norms") && stdout.contains("interpolates"));
    let loaded =
        wgan_train::eval::load_run(&run, None, true, &burn::prelude::Device::flex()).unwrap();
    let mut weights: Vec<(Vec<f32>, usize)> = loaded
        .critic
        .convs
        .iter()
        .map(|c| {
            let w = c.weight.val();
            let rows = w.dims()[0];
            (w.into_data().try_to_vec::<f32>().unwrap(), rows)
        })
        .collect();
    let head = loaded.critic.head.weight.val();
    weights.push((head.into_data().try_to_vec::<f32>().unwrap(), 1));
    for ((values, rows), (pi, exact, norm)) in weights.into_iter().zip(rows) {
        let cols = values.len() / rows;
        let m = DMatrix::from_row_iterator(rows, cols, values.into_iter().map(f64::from));
        let svd = m.singular_values().max();
        assert!(
            (exact - svd).abs() <= 1e-6 + 1e-6 * svd,
            "inspect {exact} vs SVD {svd}"
        );
        assert!((norm - svd / pi).abs() <= 1e-5 * norm, "kernel norm {norm}");
    }
}

/// `inspect` calls a critic certified only when the product of its layers' certified bounds
/// is <= 1: yes for `norm = "operator"` with `certify = true` (every bound <= 1 + 1e-3, and
/// each at least the power iteration's layer norm), no for Miyato's matrix view.
#[test]
fn inspect_certifies_only_the_certified_critic() {
    let (tmp, config) = setup_kind("spectral_norm");
    for (name, sets) in [
        (
            "certified",
            &["constraint.norm=\"operator\"", "constraint.certify=true"][..],
        ),
        ("matrix", &[][..]),
    ] {
        let run = tmp.path().join(name);
        let mut cmd = binary();
        cmd.arg("--config").arg(&config).arg("--out").arg(&run);
        for s in sets {
            cmd.args(["--set", s]);
        }
        succeed(&mut cmd);
        let stdout = succeed_stdout(
            binary()
                .args(["inspect", "--run"])
                .arg(&run)
                .args(["--images", "8"]),
        );
        let certified = name == "certified";
        let verdict = if certified { "yes" } else { "no" };
        assert!(
            stdout.contains(&format!("certified 1-Lipschitz: {verdict}")),
            "{name}: {stdout}"
        );
        for line in stdout
            .lines()
            .filter(|l| l.starts_with("conv") || l.starts_with("head"))
        {
            // The last two columns: the layer norm (power iteration) and the certified bound.
            let tail: Vec<&str> = line.split_whitespace().collect();
            let value = |back: usize| -> f64 { tail[tail.len() - back].parse().unwrap() };
            let (layer_norm, bound) = (value(2), value(1));
            assert!(bound >= layer_norm * (1.0 - 1e-5), "{name}: {line}");
            if certified {
                assert!(bound <= 1.0 + 1e-3, "{name}: {line}");
            }
        }
    }
}

#[test]
fn eval_reports_swd_per_level_with_the_real_data_floor() {
    let (tmp, config) = setup_kind("gradient_penalty");
    succeed(binary().arg("--config").arg(&config));
    let stdout = succeed_stdout(
        binary()
            .args(["eval", "--run"])
            .arg(tmp.path().join("run"))
            .args(["--images", "16"]),
    );
    let row = |name: &str| -> Vec<f64> {
        let line = stdout.lines().find(|l| l.starts_with(name)).unwrap();
        line.split_whitespace()
            .skip(1)
            .map(|v| v.parse().unwrap())
            .collect()
    };
    for name in ["32x32", "16x16", "mean"] {
        let v = row(name);
        assert_eq!(v.len(), 2, "generated and real-vs-real: {stdout}");
        // Three iterations of a 4-wide generator are far from the data; the data's two
        // halves are close to each other.
        assert!(
            v[1] < v[0],
            "{name}: real vs real {} >= generated {}",
            v[1],
            v[0]
        );
    }
}

#[test]
fn eval_reports_fid_and_kid_with_a_cached_real_side() {
    use burn::prelude::Device;
    use wgan_train::inception::InceptionV3;
    let (tmp, config) = setup_kind("spectral_norm");
    // Random weights, written as the weights files are laid out.
    let weights = tmp.path().join("inception.safetensors");
    InceptionV3::new(&Device::flex()).save(&weights).unwrap();
    // Training with weights given evaluates FID and KID with the SWD.
    succeed(
        binary()
            .arg("--config")
            .arg(&config)
            .args(["--set", &format!("output.inception={weights:?}")])
            .args([
                "--set",
                "output.eval_every=3",
                "--set",
                "output.eval_images=16",
            ]),
    );
    let run = tmp.path().join("run");
    let records = metrics::read(&run.join("metrics.jsonl")).unwrap();
    let evaluated: Vec<_> = records.iter().filter(|r| r.swd.is_some()).collect();
    assert!(!evaluated.is_empty());
    for r in &evaluated {
        let (fid, kid) = (r.fid.unwrap(), r.kid.unwrap());
        assert!(
            fid.is_finite() && fid > 0.0 && kid.mean.is_finite(),
            "{r:?}"
        );
    }
    let eval = |extra: &[&str]| {
        succeed_stdout(
            binary()
                .args(["eval", "--run"])
                .arg(&run)
                .args(["--images", "16"])
                .args(extra)
                .env_remove("WGAN_TRAIN_INCEPTION"),
        )
    };
    let weights_arg = weights.to_str().unwrap();
    let first = eval(&["--fid", "--inception", weights_arg]);
    let numbers = |line: &str| -> Vec<f64> {
        line.split_whitespace()
            .filter_map(|w| w.parse::<f64>().ok())
            .collect()
    };
    let fid_line = first
        .lines()
        .find(|l| l.starts_with("FID"))
        .unwrap_or_else(|| panic!("{first}"));
    let v = numbers(fid_line); // FID, KID mean, KID std, then the counts
    assert!(
        v[0].is_finite() && v[0] > 0.0 && v[1].is_finite() && v[2] >= 0.0,
        "{first}"
    );
    let floor = first
        .lines()
        .find(|l| l.starts_with("real against real"))
        .unwrap_or_else(|| panic!("{first}"));
    let f = numbers(floor);
    assert!(f[0].is_finite() && f[0] >= 0.0, "{first}");
    // The real side is cached in the run folder with pytorch-fid statistics beside it; a
    // second evaluation reads it and gives the same numbers.
    let cached: Vec<_> = std::fs::read_dir(run.join("fid"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(
        cached
            .iter()
            .any(|p| p.extension().is_some_and(|e| e == "f32")),
        "{cached:?}"
    );
    let stats = cached
        .iter()
        .find(|p| p.extension().is_some_and(|e| e == "npz"))
        .unwrap();
    let read = wgan_train::fid::FeatureStats::read_npz(stats).unwrap();
    assert_eq!(read.dim(), 2048);
    // Without --inception, the run's own output.inception; the real side from the cache.
    let second = eval(&["--kid"]);
    assert_eq!(
        first.lines().find(|l| l.starts_with("FID")),
        second.lines().find(|l| l.starts_with("FID")),
        "{second}"
    );
    // Without weights: one line saying how to get them, and the SWD as before.
    let config_path = run.join("config.toml");
    let config = std::fs::read_to_string(&config_path).unwrap();
    let without: String = config
        .lines()
        .filter(|l| !l.starts_with("inception"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(config, without, "the run records output.inception");
    std::fs::write(&config_path, without).unwrap();
    let skipped = eval(&["--fid"]);
    assert!(
        skipped.contains("FID/KID skipped") && skipped.contains("get-inception"),
        "{skipped}"
    );
    assert!(skipped.lines().any(|l| l.starts_with("mean")), "{skipped}");
    // Broken weights: a one-line error naming the file.
    let broken = tmp.path().join("broken.safetensors");
    std::fs::write(&broken, b"not safetensors").unwrap();
    let (out, stderr) = common::run(
        binary()
            .args(["eval", "--run"])
            .arg(&run)
            .args(["--images", "16", "--fid", "--inception"])
            .arg(&broken),
    );
    assert_clean_failure(&out, &stderr, &["broken.safetensors"]);
}

#[test]
fn identical_image_sets_are_at_fid_zero() {
    use burn::prelude::Device;
    use wgan_train::fid::{FeatureStats, frechet_distance};
    use wgan_train::inception::{FEATURES, InceptionV3};
    use wgan_train::swd::Images;
    let device = Device::flex();
    device.seed(3);
    let net = InceptionV3::new(&device);
    let values: Vec<f32> = (0..8 * 32 * 32).map(|i| ((i * 37) % 256) as f32).collect();
    let images = Images {
        values,
        n: 8,
        channels: 1,
        size: 32,
    };
    let a = wgan_train::eval::inception_features(&net, &images, "a", &device);
    let b = wgan_train::eval::inception_features(&net, &images, "b", &device);
    let (sa, sb) = (
        FeatureStats::from_features(&a, FEATURES).unwrap(),
        FeatureStats::from_features(&b, FEATURES).unwrap(),
    );
    let fid = frechet_distance(&sa, &sb).unwrap();
    assert!(
        fid.abs() < 1e-6 * sa.sigma.trace().max(1.0),
        "FID {fid} of a set against itself"
    );
}

#[test]
fn compare_over_seeds_reports_mean_spread_and_a_verdict() {
    let tmp = tempfile::tempdir().unwrap();
    let data = image_folder(tmp.path(), 40);
    let configs: Vec<_> = ["spectral_norm", "weight_clipping"]
        .iter()
        .map(|k| kind_config(tmp.path(), &data, k, ""))
        .collect();
    let out = tmp.path().join("cmp");
    succeed(
        binary()
            .args(["compare", "--configs"])
            .args(&configs)
            .arg("--out")
            .arg(&out)
            .args(["--iterations", "2", "--seeds", "2", "--set", "train.seed=7"]),
    );
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    let section = report
        .split("## Over 2 seeds")
        .nth(1)
        .unwrap_or_else(|| panic!("no section over seeds: {report}"));
    for name in ["spectral_norm", "weight_clipping"] {
        // Each seed's own run, and the table's mean is theirs.
        let mut finals = Vec::new();
        for seed in [7, 8] {
            let dir = out.join(name).join(format!("seed-{seed}"));
            let config = std::fs::read_to_string(dir.join("config.toml")).unwrap();
            assert!(config.contains(&format!("seed = {seed}")), "{config}");
            let records = metrics::read(&dir.join("metrics.jsonl")).unwrap();
            finals.push(
                records
                    .iter()
                    .rev()
                    .find_map(|r| r.swd.as_ref())
                    .unwrap()
                    .mean,
            );
        }
        let row = section
            .lines()
            .find(|l| l.starts_with(&format!("| {name} |")))
            .unwrap_or_else(|| panic!("no row for {name}: {section}"));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        assert_eq!(cells[3], "2", "{row}");
        let mean = (finals[0] + finals[1]) / 2.0;
        let std = (finals[0] - finals[1]).abs() / 2.0;
        assert_eq!(cells[4], format!("{mean:.2} +- {std:.2}"), "{row}");
    }
    assert!(
        section.contains("**Verdict by final SWD**") && section.contains("of 2 seeds"),
        "{section}"
    );
}

#[test]
fn compare_trains_each_config_and_writes_the_report() {
    let tmp = tempfile::tempdir().unwrap();
    let data = image_folder(tmp.path(), 40);
    let configs: Vec<_> = ["spectral_norm", "gradient_penalty", "weight_clipping"]
        .iter()
        .map(|k| kind_config(tmp.path(), &data, k, ""))
        .collect();
    let out = tmp.path().join("cmp");
    succeed(
        binary()
            .args(["compare", "--configs"])
            .args(&configs)
            .arg("--out")
            .arg(&out)
            .args(["--iterations", "2", "--set", "train.seed=5"]),
    );
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    for (name, kind) in [
        ("spectral_norm", "spectral_norm"),
        ("gradient_penalty", "gradient_penalty"),
        ("weight_clipping", "weight_clipping"),
    ] {
        let row = report
            .lines()
            .find(|l| l.starts_with(&format!("| {name} |")))
            .unwrap_or_else(|| panic!("no row for {name}: {report}"));
        assert!(row.contains(kind));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        assert_eq!(cells[3], "2", "iterations: {row}");
        assert!(cells[5].parse::<f64>().unwrap() > 0.0, "final SWD: {row}");
        let resolved = std::fs::read_to_string(out.join(name).join("config.toml")).unwrap();
        assert!(resolved.contains("seed = 5"), "--set reaches every run");
    }
    assert!(report.contains("![swd](plots/swd.svg)") && out.join("plots/swd.svg").exists());
    // The three 2x2 grids of 32-pixel images side by side with 8-pixel gaps.
    let grids = image::open(out.join("grids.png")).unwrap();
    let grid = image::open(out.join("spectral_norm/samples/step_000002.png")).unwrap();
    assert_eq!(grids.width(), 3 * grid.width() + 4 * 8);
    // A second compare into the same folder refuses without --force.
    let (o, stderr) = run(binary()
        .args(["compare", "--configs"])
        .args(&configs)
        .arg("--out")
        .arg(&out)
        .args(["--iterations", "1"]));
    assert_clean_failure(&o, &stderr, &["already holds a run", "--force"]);
}

#[test]
fn a_wall_clock_budget_stops_the_run_with_a_checkpoint() {
    let (tmp, config) = setup_kind("spectral_norm");
    succeed(binary().arg("--config").arg(&config).args([
        "--set",
        "train.iterations=100000",
        "--set",
        "train.max_minutes=0.0001",
    ]));
    let run = tmp.path().join("run");
    let records = metrics::read(&run.join("metrics.jsonl")).unwrap();
    let last = records.last().unwrap();
    assert!(last.step < 100, "stopped early at {}", last.step);
    assert!(last.swd.is_some(), "evaluated at the end");
    assert!(
        run.join(format!("checkpoints/step_{:06}", last.step))
            .is_dir(),
        "checkpoint at the last step"
    );
}

#[test]
fn bad_budgets_and_configs_are_clear_errors() {
    let (tmp, config) = setup_kind("spectral_norm");
    let out = tmp.path().join("cmp");
    let (o, e) = run(binary()
        .args(["compare", "--configs"])
        .arg(&config)
        .arg(tmp.path().join("missing.toml"))
        .arg("--out")
        .arg(&out));
    assert_clean_failure(&o, &e, &["missing.toml"]);
    let (o, e) = run(binary()
        .args(["compare", "--configs"])
        .arg(&config)
        .arg("--out")
        .arg(&out)
        .args(["--minutes", "-1"]));
    assert_clean_failure(&o, &e, &["--minutes"]);
    let (o, e) = run(binary()
        .arg("--config")
        .arg(&config)
        .args(["--set", "output.eval_images=3"]));
    assert_clean_failure(&o, &e, &["output.eval_images"]);
    let (o, e) = run(binary()
        .args(["inspect", "--run"])
        .arg(tmp.path().join("nothing")));
    assert_clean_failure(&o, &e, &["not a wgan-train run folder"]);
}

/// The metric tracks learning: on the embedded Fashion-MNIST sample, SWD falls as a small SN
/// GAN trains (Flex is deterministic on one machine, so this is one fixed trajectory: 262, 207,
/// 190, 173, 154, 132 at iterations 50 to 300 when written).
#[test]
fn swd_falls_as_training_progresses_on_the_embedded_data() {
    let tmp = tempfile::tempdir().unwrap();
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fashion-mnist");
    succeed(
        binary()
            .arg("--config")
            .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/sn.toml"))
            .arg("--out")
            .arg(tmp.path().join("run"))
            .arg("--set")
            .arg(format!("data.dir={data:?}"))
            .args([
                "--set",
                "train.iterations=300",
                "--set",
                "model.g_width=16",
                "--set",
                "model.d_width=16",
                "--set",
                "train.batch_size=32",
                "--set",
                "output.eval_every=50",
                "--set",
                "output.eval_images=128",
                "--set",
                "output.log_every=50",
                "--set",
                "output.diagnostics=false",
                "--set",
                "output.sample_every=0",
            ]),
    );
    let swd: Vec<f64> = metrics::read(&tmp.path().join("run/metrics.jsonl"))
        .unwrap()
        .iter()
        .filter_map(|r| r.swd.as_ref().map(|s| s.mean))
        .collect();
    assert_eq!(swd.len(), 6, "{swd:?}");
    assert!(swd[5] < 0.7 * swd[0], "SWD did not fall: {swd:?}");
    assert!(
        swd.windows(2).skip(1).all(|w| w[1] < w[0]),
        "SWD should fall after the first evaluations: {swd:?}"
    );
}

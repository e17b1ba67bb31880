//! FID and KID equal pytorch-fid's `calculate_frechet_distance` and torch-fidelity's KID on the
//! same features, and statistics files pass both ways between NumPy and us (a file written as
//! pytorch-fid's `save_fid_stats` writes it, and ours read by `np.load`). Needs the venv of
//! scripts/setup-python.sh (pytorch-fid, torch-fidelity, scipy; see `common::torch_python`).

mod common;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::process::Command;
use wgan_train::fid::{FeatureStats, frechet_distance, kid_on_subsets};

const CHECK: &str = r#"
import json, sys
import numpy as np
from pytorch_fid.fid_score import calculate_frechet_distance
from torch_fidelity.metric_kid import kernel_mmd

spec = json.load(open(sys.argv[1]))
d = spec["dim"]
a = np.fromfile(spec["a"], dtype="<f4").reshape(-1, d).astype(np.float64)
b = np.fromfile(spec["b"], dtype="<f4").reshape(-1, d).astype(np.float64)
mu1, s1 = np.mean(a, axis=0), np.cov(a, rowvar=False)
mu2, s2 = np.mean(b, axis=0), np.cov(b, rowvar=False)
fid = float(calculate_frechet_distance(mu1, s1, mu2, s2))
np.savez_compressed(spec["saved"], mu=mu1, sigma=s1)  # as pytorch-fid's save_fid_stats does
ours = np.load(spec["ours"])
round_trip = float(max(np.abs(ours["mu"] - mu2).max(), np.abs(ours["sigma"] - s2).max()))
kw = dict(kid_kernel="poly", kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None,
          kid_kernel_poly_coef0=1)
mmds = [kernel_mmd(a[i], b[j], **kw) for i, j in spec["subsets"]]
print(json.dumps({"fid": fid, "kid_mean": float(np.mean(mmds)), "kid_std": float(np.std(mmds)),
                  "round_trip": round_trip}))
"#;

/// `[n, d]` features: correlated columns, shifted by `shift` and scaled by `scale`.
fn features(n: usize, d: usize, shift: f32, scale: f32, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(n * d);
    for _ in 0..n {
        let common: f32 = rng.random_range(-1.0..1.0);
        for j in 0..d {
            let own: f32 = rng.random_range(-1.0..1.0);
            out.push(shift + scale * (own * (1.0 + j as f32 / d as f32) + common));
        }
    }
    out
}

fn relative(ours: f64, theirs: f64) -> f64 {
    (ours - theirs).abs() / theirs.abs().max(1e-300)
}

#[test]
fn fid_and_kid_equal_pytorch_fid_and_torch_fidelity() {
    let Some(python) = common::torch_python() else {
        return;
    };
    let probe = Command::new(&python)
        .args(["-c", "import pytorch_fid, torch_fidelity, scipy"])
        .output()
        .unwrap();
    if !probe.status.success() {
        assert!(
            std::env::var("CI").is_err(),
            "under CI this must run: {python} lacks pytorch-fid or torch-fidelity"
        );
        println!(
            "skipped: {python} lacks pytorch-fid or torch-fidelity: run scripts/setup-python.sh"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = 24;
    let a = features(500, d, 0.0, 1.0, 1);
    let b = features(600, d, 0.3, 0.8, 2);
    let bytes = |x: &[f32]| x.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
    std::fs::write(dir.path().join("a.f32"), bytes(&a)).unwrap();
    std::fs::write(dir.path().join("b.f32"), bytes(&b)).unwrap();
    let sa = FeatureStats::from_features(&a, d).unwrap();
    let sb = FeatureStats::from_features(&b, d).unwrap();
    sb.write_npz(&dir.path().join("ours.npz")).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let subsets: Vec<(Vec<usize>, Vec<usize>)> = (0..5)
        .map(|_| {
            (
                rand::seq::index::sample(&mut rng, 500, 100).into_vec(),
                rand::seq::index::sample(&mut rng, 600, 100).into_vec(),
            )
        })
        .collect();
    let spec = serde_json::json!({
        "dim": d,
        "a": dir.path().join("a.f32"),
        "b": dir.path().join("b.f32"),
        "saved": dir.path().join("saved.npz"),
        "ours": dir.path().join("ours.npz"),
        "subsets": subsets,
    });
    let spec_path = dir.path().join("spec.json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let stdout = common::python_stdout(&python, CHECK, &[&spec_path]);
    let theirs: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let fid = frechet_distance(&sa, &sb).unwrap();
    let kid = kid_on_subsets(&a, &b, d, &subsets).unwrap();
    println!(
        "FID ours {fid} pytorch-fid {}; KID ours {kid:?}, torch-fidelity {} +- {}",
        theirs["fid"], theirs["kid_mean"], theirs["kid_std"]
    );
    assert!(
        relative(fid, theirs["fid"].as_f64().unwrap()) < 1e-6,
        "FID {fid} vs {}",
        theirs["fid"]
    );
    assert!(
        relative(kid.mean, theirs["kid_mean"].as_f64().unwrap()) < 1e-6,
        "KID {kid:?} vs {theirs}"
    );
    assert!(
        relative(kid.std, theirs["kid_std"].as_f64().unwrap()) < 1e-5,
        "KID {kid:?} vs {theirs}"
    );
    assert!(theirs["round_trip"].as_f64().unwrap() < 1e-12, "{theirs}");
    // The file NumPy wrote (deflated, as pytorch-fid saves statistics) reads back as ours.
    let saved = FeatureStats::read_npz(&dir.path().join("saved.npz")).unwrap();
    let worst = (&saved.sigma - &sa.sigma)
        .abs()
        .max()
        .max((&saved.mu - &sa.mu).abs().max());
    assert!(
        worst < 1e-12,
        "statistics read from NumPy's file differ by {worst}"
    );
}

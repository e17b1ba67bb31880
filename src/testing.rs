//! Helpers shared by the tests (unit and end-to-end); not part of the application.

use std::process::Command;

/// The largest `|a_i - b_i|` of two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

/// qemu-user CPU models and the vector level each leaves the gemm crate: Haswell has AVX2 and
/// FMA but no AVX-512, Nehalem no AVX at all (the scalar kernels).
pub const EMULATED_CPUS: [(&str, &str); 2] = [("Haswell", "AVX2"), ("Nehalem", "scalar")];

/// Runs the test `name` of the current test binary again under `qemu-x86_64 -cpu MODEL` for
/// each of [`EMULATED_CPUS`], with `env` set, and asserts that it passed there and saw the
/// model's vector level (its output must print [`crate::backend::simd_level`]). Without
/// qemu-user (installed by `scripts/install-deps.sh`) or off x86-64 it prints why it skips,
/// except under CI=true, where that is a failure.
pub fn under_emulated_cpus(name: &str, env: &[(&str, &str)]) {
    let available = Command::new("qemu-x86_64").arg("--version").output();
    let why = match available {
        _ if !cfg!(target_arch = "x86_64") => "not an x86-64 machine".to_string(),
        Err(e) => format!("no qemu-x86_64 ({e}): apt-get install qemu-user"),
        Ok(_) => String::new(),
    };
    if !why.is_empty() {
        assert!(
            std::env::var("CI").is_err(),
            "under CI this must run: {why}"
        );
        println!("skipped: {why}");
        return;
    }
    let exe = std::env::current_exe().expect("the test binary");
    for (cpu, level) in EMULATED_CPUS {
        let out = Command::new("qemu-x86_64")
            .args(["-cpu", cpu])
            .arg(&exe)
            .args(["--exact", name, "--nocapture", "--test-threads", "1"])
            .envs(env.iter().copied())
            .output()
            .expect("qemu-x86_64 runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stdout.lines().rev().take(30).collect();
        let log = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{name} under -cpu {cpu}:\n{log}\n{}",
            stderr
                .lines()
                .filter(|l| !l.contains("TCG doesn't support"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        assert!(
            stdout.contains(&format!("CPU: {level}")),
            "-cpu {cpu} should leave {level}:\n{log}"
        );
        println!("-cpu {cpu} ({level}): passed");
    }
}

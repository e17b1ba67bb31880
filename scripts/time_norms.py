#!/usr/bin/env python3
"""Seconds per generator iteration of the spectral-normalization variants, side by side in one
run on the same data and settings: the matrix view (configs/sn.toml), the operator norm by
power iteration (norm = "operator"), the certified operator norm (configs/sn-operator.toml) and
the certified one with GroupSort (configs/sn-operator-groupsort.toml). The variants take turns
(round robin, `--rounds` times) so that a drift in the machine's speed hits them alike; the
first iteration of each run is left out, the median of the rest is printed.

  python3 scripts/time_norms.py [--binary PATH] [--sizes 32 64] [--iters 6] [--rounds 2]

Without --binary it times the release binary in $CARGO_TARGET_DIR (or
~/.cache/wgan-train/target), building it if absent. 64x64 runs use 3 channels (as
configs/celeba/), on the embedded Fashion-MNIST sample resized.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = [
    ("matrix", "configs/sn.toml", []),
    ("operator", "configs/sn.toml", ["constraint.norm=\"operator\""]),
    ("certified", "configs/sn-operator.toml", []),
    ("certified+groupsort", "configs/sn-operator-groupsort.toml", []),
]


def cpu_flags():
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return platform.processor()
    return " ".join(sorted(f for f in flags if f.startswith("avx")))


def default_binary():
    target = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/wgan-train/target"))
    binary = os.path.join(target, "release", "wgan-train")
    if not os.path.exists(binary):
        subprocess.run(["cargo", "build", "--release", "--locked"], cwd=ROOT, check=True,
                       env=dict(os.environ, CARGO_TARGET_DIR=target))
    return binary


def one_run(binary, config, sets, size, iters, out):
    cmd = [binary, "--config", os.path.join(ROOT, config), "--out", out, "--force"]
    channels = 1 if size == 32 else 3
    for s in sets + [f"data.image_size={size}", f"data.channels={channels}",
                     f"data.dir={json.dumps(os.path.join(ROOT, 'data/fashion-mnist'))}",
                     f"train.iterations={iters}", "output.log_every=1", "output.sample_every=0",
                     "output.checkpoint_every=0", "output.eval_every=0", "output.diagnostics=false",
                     "output.plots=false"]:
        cmd += ["--set", s]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lines = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    return [l["sec_per_iter"] for l in lines[1:]]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--binary", default=None)
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    p.add_argument("--iters", type=int, default=6)
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args()
    binary = a.binary or default_binary()
    print(f"binary {binary}; CPU flags: {cpu_flags()}; {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        for size in a.sizes:
            secs = {name: [] for name, _, _ in VARIANTS}
            for r in range(a.rounds):
                for name, config, sets in VARIANTS:
                    out = os.path.join(tmp, f"{name}-{size}-{r}")
                    secs[name] += one_run(binary, config, sets, size, a.iters, out)
            base = statistics.median(secs["matrix"])
            print(f"\n{size}x{size}, {1 if size == 32 else 3} channel(s), batch 64, n_critic 5, "
                  f"widths 64; median of {a.rounds} x {a.iters - 1} iterations")
            print(f"{'variant':<22} {'s/it':>8} {'vs matrix':>10}")
            for name, _, _ in VARIANTS:
                m = statistics.median(secs[name])
                print(f"{name:<22} {m:>8.3f} {m / base:>10.3f}", flush=True)


if __name__ == "__main__":
    main()

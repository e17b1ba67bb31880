#!/usr/bin/env python3
"""Side-by-side CPU benchmark: wgan-train vs the PyTorch peer (../shared/peer/torch_wgan.py).

For each constraint kind and image size, both train the same DCGAN shapes on the same image
folder (batch 64, n_critic 5, same thread count) for a few generator iterations; the table
gives the median seconds per generator iteration (n_critic critic steps + 1 generator step,
batch assembly included, first iterations left out as warm-up), the ratio ours/PyTorch and
the peak resident memory (RSS) of each process.

    scripts/bench.py [--sizes 32 64] [--kinds sn gp gp1 clip none] [--iters 3] [--warmup 1]
                     [--threads 2] [--data data/fashion-mnist] [--no-convs] [--repeats 1]
                     [--binary BIN] [--avx2]

With --avx2 (and a --binary built without the x86-v4 feature) both sides run their AVX2 code
on an AVX-512 machine: ours with BURN_FLEX_KERNELS_SIMD=avx2, PyTorch with ATen's, oneDNN's and
MKL's own caps. A stand-in for an AVX2-only CPU, not the same: the core stays the same.

With --repeats R each pair runs R times in the order ours, PyTorch, PyTorch, ours, ours, ...
(so that a slow spell of the machine falls on both), and the table gives each side's median
over the repeats, the ratio of those medians and the range of the R pairwise ratios: on a
shared VM whole processes run 10-20% slower or faster than the next, so one pair is not a
measurement there. The table also gives the ratio of each side's best run ("best ratio"):
on a VM that switches between a fast and a slow state (seen on a 2-core Zen 3: the same run
0.65 or 1.0 s per iteration, whole processes at a time), the medians of three runs depend on
which runs the slow spells hit, while each side's fastest run is its fast-state speed.

Then, per size, the convolutions of one generator iteration alone (no linear layers,
normalization, activations or optimizer), ours (`cargo bench --bench conv -- --iteration SIZE`)
and PyTorch's (`scripts/torch_convs.py`): what each iteration costs at the least with its
convolution engine, and how much of the iteration the rest takes.

Needs a release build (built here) and `pip install torch pillow numpy`. Standard library only.
"""
import argparse, json, os, resource, statistics, subprocess, sys, tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER = os.path.join(ROOT, "..", "shared", "peer", "torch_wgan.py")
# Our config per constraint kind; sp (spectral penalty) is ours only: the peer has none, so
# scripts/ab.py times it, and this script's default --kinds leaves it out.
# --avx2: PyTorch's own caps on its vector level (ATen's kernels, oneDNN's convolutions, MKL's
# matrix products), the same AVX2 code paths as ours under BURN_FLEX_KERNELS_SIMD=avx2.
TORCH_AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
              "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
OUR_CONFIG = {"sn": "sn", "gp": "gp", "gp1": "gp1", "clip": "clip", "none": "none", "sp": "sp"}


def measured(cmd, env=None):
    """Runs cmd inside a fresh Python wrapper so that its peak RSS is its own."""
    wrapper = [sys.executable, "-c",
               "import resource, subprocess, sys, json\n"
               "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
               "sys.stderr.write(p.stderr)\n"
               "print(json.dumps({'rc': p.returncode, 'out': p.stdout,"
               " 'rss_kib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))\n"] + cmd
    proc = subprocess.run(wrapper, capture_output=True, text=True, env=env)
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    if res["rc"] != 0:
        sys.exit(f"error: {' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return res["out"], res["rss_kib"] / 1024.0


def ours(binary, kind, size, channels, a, out):
    run = os.path.join(out, f"{kind}-{size}")
    cmd = [binary, "--config", os.path.join(ROOT, "configs", f"{OUR_CONFIG[kind]}.toml"),
           "--out", run, "--force",
           "--set", f"data.dir={a.data}", "--set", f"data.image_size={size}",
           "--set", f"data.channels={channels}", "--set", "train.batch_size=64",
           "--set", "train.n_critic=5", "--set", f"train.iterations={a.warmup + a.iters}",
           "--set", "output.log_every=1", "--set", "output.sample_every=0",
           "--set", "output.checkpoint_every=0", "--set", "output.diagnostics=false",
           "--set", "output.eval_every=0", "--set", "output.plots=false"]
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
    if a.avx2:
        env["BURN_FLEX_KERNELS_SIMD"] = "avx2"
    _, rss = measured(cmd, env)
    lines = [json.loads(l) for l in open(os.path.join(run, "metrics.jsonl"))]
    secs = [l["sec_per_iter"] for l in lines[a.warmup:]]
    return statistics.median(secs), rss


def peer(kind, size, channels, a):
    cmd = [sys.executable, PEER, "--data", a.data, "--size", str(size),
           "--channels", str(channels), "--constraint", kind, "--iters", str(a.iters),
           "--warmup", str(a.warmup), "--batch", "64", "--n-critic", "5",
           "--threads", str(a.threads)]
    out, rss = measured(cmd, dict(os.environ, **TORCH_AVX2) if a.avx2 else None)
    res = json.loads(out.strip().splitlines()[-1])
    return res["s_per_gen_iter_median"], rss


def convs_only(size, a, target):
    """Seconds per generator iteration of the convolutions alone: (ours, PyTorch's)."""
    env = dict(os.environ, CARGO_TARGET_DIR=target, RAYON_NUM_THREADS=str(a.threads))
    cmd = ["cargo", "bench", "--quiet", "--no-default-features", "--features", "x86-v4",
           "--bench", "conv", "--",
           "--iteration", str(size)]
    ours = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if ours.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} failed:\n{ours.stderr[-2000:]}")
    script = os.path.join(ROOT, "scripts", "torch_convs.py")
    torch = subprocess.run([sys.executable, script, "--size", str(size), "--threads",
                            str(a.threads), "--channels", str(a.channels)],
                           capture_output=True, text=True)
    if torch.returncode != 0:
        sys.exit(f"error: {script} failed:\n{torch.stderr[-2000:]}")
    last = lambda out: json.loads(out.strip().splitlines()[-1])["s_per_gen_iter_median"]
    return last(ours.stdout), last(torch.stdout)


def target_dir():
    """The cargo target folder to build into and run from: CARGO_TARGET_DIR when set; else the
    one that already holds a release build (this checkout's target/, then ~/.cache/wgan-train/
    target, which the README and .ci/run use); else the one with any release folder; else
    cargo's default target/. A warm folder is never passed over for a second cold build."""
    if os.environ.get("CARGO_TARGET_DIR"):
        return os.environ["CARGO_TARGET_DIR"]
    candidates = [os.path.join(ROOT, "target"), os.path.expanduser("~/.cache/wgan-train/target")]
    for probe in ("release/wgan-train", "release"):
        for t in candidates:
            if os.path.exists(os.path.join(t, probe)):
                return t
    return candidates[0]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    p.add_argument("--kinds", nargs="+", default=["sn", "gp", "gp1", "clip", "none"])
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--data", default=os.path.join(ROOT, "data", "fashion-mnist"))
    p.add_argument("--repeats", type=int, default=1,
                   help="runs of each pair, alternating which goes first (medians reported)")
    p.add_argument("--no-convs", action="store_true",
                   help="leave out the convolutions-alone timings")
    p.add_argument("--binary", default=None,
                   help="a wgan-train binary to time as it is (default: a release build, made "
                        "or brought up to date in the target folder that already holds one)")
    p.add_argument("--avx2", action="store_true",
                   help="both sides at AVX2 on an AVX-512 machine: needs --binary built without "
                        "the x86-v4 feature (cargo build --release --no-default-features "
                        "--features wgpu); leaves out the convolutions-alone timings")
    a = p.parse_args()
    if a.avx2 and not a.binary:
        sys.exit("error: --avx2 needs --binary: a build without the x86-v4 feature, e.g. "
                 "cargo build --release --no-default-features --features wgpu")
    a.no_convs = a.no_convs or a.avx2
    if a.repeats < 1:
        sys.exit(f"error: --repeats {a.repeats}: give at least 1")
    if not os.path.exists(PEER):
        sys.exit(f"error: the PyTorch peer {PEER} is missing")
    target = target_dir()
    if a.binary:
        binary = a.binary
    else:
        print(f"building the release binary in {target} (cargo build --release)", file=sys.stderr)
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True,
                       env=dict(os.environ, CARGO_TARGET_DIR=target))
        binary = os.path.join(target, "release", "wgan-train")
    print(f"timing {binary}; the convolution bench builds in {target}", file=sys.stderr)
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for size in a.sizes:
            for kind in a.kinds:
                run_ours = lambda: ours(binary, kind, size, a.channels, a, out)
                run_peer = lambda: peer(kind, size, a.channels, a)
                pairs = []
                for r in range(a.repeats):
                    if r % 2 == 0:
                        (s_ours, m_ours), (s_peer, m_peer) = run_ours(), run_peer()
                    else:
                        (s_peer, m_peer), (s_ours, m_ours) = run_peer(), run_ours()
                    pairs.append((s_ours, s_peer, m_ours, m_peer))
                    print(f"  {size} {kind}: ours {s_ours:.2f} s, pytorch {s_peer:.2f} s "
                          f"({s_ours / s_peer:.2f})", file=sys.stderr)
                rows.append((size, kind,
                             statistics.median(p[0] for p in pairs),
                             statistics.median(p[1] for p in pairs),
                             max(p[2] for p in pairs), max(p[3] for p in pairs),
                             [p[0] / p[1] for p in pairs],
                             min(p[0] for p in pairs), min(p[1] for p in pairs)))
    convs = {} if a.no_convs else {size: convs_only(size, a, target) for size in a.sizes}
    if a.avx2:
        print("both sides capped at AVX2 (BURN_FLEX_KERNELS_SIMD=avx2; "
              + ", ".join(f"{k}={v}" for k, v in TORCH_AVX2.items()) + ")")
    print(f"batch 64, n_critic 5, {a.channels} channels, {a.threads} threads, median of {a.iters} "
          f"generator iterations after {a.warmup} warm-up"
          + (f"; median over {a.repeats} alternating runs each" if a.repeats > 1 else ""))
    spread = a.repeats > 1
    print(f"{'size':>4} {'kind':<5} {'ours s/it':>9} {'torch s/it':>10} {'ours/torch':>10} "
          f"{'ours MiB':>8} {'torch MiB':>9}"
          + (f" {'pair ratios':>11} {'best ratio':>10}" if spread else ""))
    for size, kind, so, sp, mo, mp, ratios, bo, bp in rows:
        print(f"{size:>4} {kind:<5} {so:>9.2f} {sp:>10.2f} {so / sp:>10.2f} {mo:>8.0f} {mp:>9.0f}"
              + (f" {min(ratios):>6.2f}-{max(ratios):.2f} {bo / bp:>10.2f}" if spread else ""))
    for size in a.sizes:
        by = {k: so for s, k, so, *_ in rows if s == size}
        parts = []
        if "gp" in by and "sn" in by:
            parts.append(f"GP/SN {by['gp'] / by['sn']:.2f}")
        if "none" in by and "sn" in by:
            parts.append(f"SN/none {by['sn'] / by['none']:.2f}")
            if spread:
                best = {k: bo for s, k, *_, bo, _ in rows if s == size}
                parts.append(f"best runs' SN/none {best['sn'] / best['none']:.2f}")
        if size in convs:
            co, ct = convs[size]
            parts.append(f"convolutions alone: ours {co:.2f}, torch {ct:.2f} s/it ({co / ct:.2f})")
        print(f"{size}x{size}: " + ", ".join(parts))


if __name__ == "__main__":
    main()

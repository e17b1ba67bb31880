#!/usr/bin/env python3
"""A/B two builds of wgan-train side by side: is a kernel change faster than the noise?

Runs binary A and binary B on the same settings as scripts/bench.py's runner (batch 64,
n_critic 5, 3 channels, the embedded Fashion-MNIST sample), `--rounds R` times per kind and
size in alternating order (A B, B A, A B, ...), and prints each side's median seconds per
generator iteration, the ratio B/A of the medians and every run's time. On a shared 2-core VM
whole processes run 10-20% apart; a change is real only when its ratio stays clear of the
spread of A's own runs.

    scripts/ab.py --a OLD_BINARY --b NEW_BINARY [--sizes 32 64] [--kinds sn gp]
                  [--iters 4] [--rounds 2] [--threads 2]

Copy the first build aside before rebuilding (`cp .../profiling/wgan-train /tmp/wgan-a`):
cargo overwrites the binary in place. Kinds: sn gp gp1 clip none sp. Standard library only.
"""
import argparse, importlib.util, os, statistics, sys, tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_bench():
    """scripts/bench.py as a module, for its runner (`ours`) and its settings."""
    spec = importlib.util.spec_from_file_location("bench", os.path.join(ROOT, "scripts", "bench.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def main():
    bench = load_bench()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--a", required=True, help="the baseline binary")
    p.add_argument("--b", required=True, help="the changed binary")
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    p.add_argument("--kinds", nargs="+", default=["sn", "gp"], choices=list(bench.OUR_CONFIG))
    p.add_argument("--iters", type=int, default=4)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data", default=os.path.join(ROOT, "data", "fashion-mnist"))
    a = p.parse_args()
    for name in ("a", "b"):
        path = getattr(a, name)
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            sys.exit(f"error: --{name} {path} is not an executable file: give a built wgan-train")
    for key in ("iters", "rounds", "threads"):
        if getattr(a, key) < 1:
            sys.exit(f"error: --{key} {getattr(a, key)} must be at least 1")
    settings = argparse.Namespace(data=a.data, warmup=1, iters=a.iters, threads=a.threads,
                                  channels=3, avx2=False)
    out = tempfile.mkdtemp(prefix="wgan-ab-")
    runs = lambda times: " ".join(f"{t:.3f}" for t in times)
    print(f"A = {a.a}\nB = {a.b}\n{a.threads} threads, median of {a.iters} generator iterations "
          f"after 1 warm-up, {a.rounds} rounds in alternating order", flush=True)
    print("size kind  A s/it  B s/it   B/A  A runs / B runs", flush=True)
    for size in a.sizes:
        for kind in a.kinds:
            times = {"a": [], "b": []}
            for r in range(a.rounds):
                for side in ("a", "b") if r % 2 == 0 else ("b", "a"):
                    secs, _ = bench.ours(getattr(a, side), kind, size, settings.channels, settings,
                                         out)
                    times[side].append(secs)
            ma, mb = statistics.median(times["a"]), statistics.median(times["b"])
            print(f"{size:4} {kind:5} {ma:6.3f} {mb:7.3f} {mb / ma:5.3f}  "
                  f"{runs(times['a'])} / {runs(times['b'])}", flush=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The long-run parity check: wgan-train and the PyTorch peer trained from the same initial
weights on the same real batches and noise, at full size, for hundreds of iterations.

tests/torch_parity.rs checks 20 iterations of narrow networks tensor by tensor. Over hundreds
of iterations any two float32 implementations drift apart (a LeakyReLU mask flips, a small
BatchNorm variance amplifies rounding), so a long run is judged against the peer's own
rounding: the peer in float64 on the same inputs. If our algorithm is the peer's, ours drifts
from the float32 peer no faster than the float64 peer does, and ends with the same sample
quality (classifier FD, modes, white pixels as in scripts/quality.py); a difference in the
dynamics (an extra or missing power iteration, another optimizer detail) shows as a drift that
is orders of magnitude faster from the first iterations on.

  python3 scripts/replay_compare.py --constraint clip --iters 400

Writes <work>/<constraint>-<iters>/{f32,f64,ours}/iter_N.safetensors and prints, per saved
iteration: the generator's output distance (RMS over 500 fixed noise vectors, inference mode)
and parameter distance (relative) of ours and of the float64 peer (its first --f64-iters
iterations: float64 is slow) from the float32 peer, and each one's FD. Stages whose files exist
are not run again. Needs the same Python packages as scripts/quality.py and a dev build of
examples/replay (built with cargo if absent).
"""
import argparse
import json
import os
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import quality  # noqa: E402

ROOT = quality.ROOT


def done(work, run, iters):
    return os.path.exists(os.path.join(work, run, f"iter_{iters}.safetensors"))


def generator(path, G):
    from safetensors.torch import load_file
    state = {k[2:]: v for k, v in load_file(path).items() if k.startswith("g.")}
    g = G(32, 1)
    missing, unexpected = g.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing), (missing, unexpected)
    return g.eval()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--constraint", default="clip", choices=list(quality.SETTINGS))
    p.add_argument("--iters", type=int, default=400)
    p.add_argument("--save-at", type=int, nargs="+", default=[1, 2, 5, 10, 20, 50, 100, 200, 400])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--images", type=int, default=10000)
    p.add_argument("--samples", type=int, default=5000)
    p.add_argument("--f64-iters", type=int, default=20,
                   help="iterations of the float64 peer (the rounding reference; slow)")
    p.add_argument("--profile", default="debug", choices=["debug", "release"])
    p.add_argument("--work", default=os.path.join(ROOT, "runs", "replay"))
    a = p.parse_args()
    sys.path.insert(0, quality.PEER)
    from torch_wgan import G

    save_at = sorted(s for s in set(a.save_at + [a.iters]) if s <= a.iters)
    work = os.path.join(a.work, f"{a.constraint}-{a.iters}-s{a.seed}")
    data = quality.data_folder(a.images)
    common = [sys.executable, os.path.join(ROOT, "scripts/torch_parity.py"), "--peer", quality.PEER,
              "--data", data, "--constraint", a.constraint, "--size", "32", "--width", "64",
              "--z-dim", "128", "--batch", "64", "--n-critic", "5", "--iters", str(a.iters),
              "--limit", str(a.images), "--seed", str(a.seed), "--real-index",
              "--save-at", *map(str, save_at)]
    f64_iters = min(a.f64_iters, a.iters)
    runs = [("f32", "float32", a.iters), ("f64", "float64", f64_iters)]
    t0 = time.time()
    # Both precisions at once, one thread each (the machine has two cores); a stage whose last
    # file exists is not run again.
    peers = [subprocess.Popen(common + ["--out", os.path.join(work, dt), "--dtype", dtype,
                                        "--stop-after", str(n)], stdout=subprocess.DEVNULL)
             for dt, dtype, n in runs if not done(work, dt, n)]
    if any([p.wait() for p in peers]):
        sys.exit("torch_parity.py failed")
    t_peer = time.time() - t0
    config, sets = quality.SETTINGS[a.constraint]
    t0 = time.time()
    if not done(work, "ours", a.iters):
        subprocess.run([quality.example("replay", a.profile), os.path.join(ROOT, config),
                        os.path.join(work, "f32"), os.path.join(work, "ours"),
                        ",".join(map(str, save_at)), *sets], check=True,
                       env=dict(os.environ, RAYON_NUM_THREADS="2"))
    t_ours = time.time() - t0
    print(f"{a.constraint}, seed {a.seed}: peer f32 + f64 {t_peer:.0f} s, ours {t_ours:.0f} s")

    net = quality.classifier()
    real_feats, _ = quality.features(net, quality.to_model_input(quality.idx_images("t10k")))
    z = torch.randn(500, 128, generator=torch.Generator().manual_seed(7))
    print(f"{'iter':>5s} {'|G-G32| ours':>13s} {'f64':>9s} {'|θ-θ32| ours':>13s} {'f64':>9s}"
          f" {'FD f32':>8s} {'f64':>7s} {'ours':>7s}   white f32/f64/ours")
    rows = []
    for n in save_at:
        name = f"iter_{n}.safetensors"
        present = ("f32", "f64", "ours") if n <= f64_iters else ("f32", "ours")
        gs = {k: generator(os.path.join(work, k, name), G) for k in present}
        with torch.no_grad():
            out = {k: g(z) for k, g in gs.items()}
        rms = {k: float((out[k] - out["f32"]).pow(2).mean().sqrt()) for k in present[1:]}
        theta = {k: torch.cat([v.flatten() for v in g.state_dict().values() if v.is_floating_point()])
                 for k, g in gs.items()}
        rel = {k: float((theta[k] - theta["f32"]).norm() / theta["f32"].norm()) for k in present[1:]}
        scores = {k: quality.score(net, real_feats, quality.sample_peer_g(g, a.samples, a.seed))
                  for k, g in gs.items()}
        rows.append({"iter": n, "g_rms": rms, "param_rel": rel, "scores": scores})
        f64 = lambda d, k, fmt: format(d[k], fmt) if k in d else "-"  # noqa: E731
        print(f"{n:5d} {rms['ours']:13.2e} {f64(rms, 'f64', '.2e'):>9s} {rel['ours']:13.2e}"
              f" {f64(rel, 'f64', '.2e'):>9s} {scores['f32']['fd']:8.1f}"
              f" {f64({k: v['fd'] for k, v in scores.items()}, 'f64', '.1f'):>7s}"
              f" {scores['ours']['fd']:7.1f}   {scores['f32']['white']}/"
              f"{f64({k: v['white'] for k, v in scores.items()}, 'f64', 'd')}/{scores['ours']['white']}",
              flush=True)
    with open(os.path.join(work, "replay.json"), "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()

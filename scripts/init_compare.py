#!/usr/bin/env python3
"""Are our initial networks distributed as PyTorch's? A many-seed test of the whole starting point.

Per-tensor statistics (the Rust test `every_layer_is_initialized_as_pytorch_does`) can miss a
difference in how the tensors act together. This script draws, for each of --seeds seeds, the
networks a run of CONFIG starts from in both trainers, ours (`examples/init_state.rs`, written in
the peer's names) and the peer's (`torch.manual_seed(s); G(32, 1); D(32, 1, sn=True)`, as
`../shared/peer/torch_wgan.py` does), evaluates both in the peer's PyTorch modules on the same
fixed inputs, and compares the distributions over seeds of statistics that decide how training
starts:

  generator (train mode, as in training; 256 fixed z): output mean and spread, the share of
  saturated pixels (|x| > 0.9), the spread across samples, the period-8 lattice (the mean image
  folded into 8x8 phases: its spread and its largest phase), the largest pixel of the mean image;
  in inference mode: output mean and spread;
  critic (no power iteration, as evaluation): each layer's sigma estimate u^T W v against its
  exact largest singular value, f(real) and f(fake) (256 real Fashion-MNIST images, 256 samples),
  their gap, the input-gradient norm on real images;
  first step: the norm of the critic loss's gradient per critic weight, and of the generator
  loss's gradient per generator weight.

For each statistic it prints both means and a two-sample Kolmogorov-Smirnov p-value; with ~30
statistics, p < 0.05/30 (Bonferroni) is a difference, not chance. Needs the venv of
scripts/setup-python.sh, Debian's dataset-fashion-mnist and the example built:

  cargo build --example init_state   # or any build of the tests (.ci/run)
  ~/.cache/wgan-train/venv/bin/python scripts/init_compare.py --seeds 200
"""
import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from quality import PEER, TARGET, idx_images, to_model_input  # noqa: E402

sys.path.insert(0, PEER)
from torch_wgan import D, G  # noqa: E402


def sn_layers(d):
    """The critic's spectrally normalized layers, input to output."""
    return [m for m in d.modules() if hasattr(m, "parametrizations")]


def stats(g, d, z, real):
    """The statistics of one seed's networks (see the module doc), as a dict of floats."""
    out = {}
    g.train()
    d.eval()  # no power iteration: every statistic sees the stored u, v
    fake = g(z)  # [n, 1, 32, 32]
    x = fake.detach()
    out["g mean"] = x.mean().item()
    out["g std"] = x.std().item()
    out["g saturated"] = (x.abs() > 0.9).float().mean().item()
    out["g spread over z"] = x.std(0).mean().item()
    mean_img = x.mean(0)[0]  # [32, 32]
    phases = mean_img.reshape(4, 8, 4, 8).mean((0, 2))  # [8, 8]: the period-8 lattice
    out["g lattice spread"] = phases.std().item()
    out["g lattice max"] = (phases - mean_img.mean()).max().item()
    out["g mean-image max"] = mean_img.max().item()
    with torch.no_grad():
        g.eval()
        xe = g(z)
        g.train()
    out["g eval mean"] = xe.mean().item()
    out["g eval std"] = xe.std().item()
    for i, m in enumerate(sn_layers(d)):
        p = m.parametrizations.weight
        w = p.original.detach().flatten(1)
        u, v = p[0]._u, p[0]._v
        est = (u @ w @ v).item()
        out[f"d{i} sigma est"] = est
        out[f"d{i} exact/est"] = torch.linalg.matrix_norm(w, 2).item() / est
    xr = real.clone().requires_grad_(True)
    f_real = d(xr)
    gr, = torch.autograd.grad(f_real.sum(), xr, retain_graph=True)
    out["grad-x norm real"] = gr.flatten(1).norm(dim=1).mean().item()
    f_fake = d(x)
    out["f real"] = f_real.mean().item()
    out["f fake"] = f_fake.mean().item()
    out["f real - f fake"] = (f_real.mean() - f_fake.mean()).item()
    out["f real std"] = f_real.std().item()
    loss_d = f_fake.mean() - f_real.mean()
    grads = torch.autograd.grad(loss_d, [m.parametrizations.weight.original for m in sn_layers(d)])
    for i, gw in enumerate(grads):
        out[f"d{i} grad norm"] = gw.norm().item()
    loss_g = -d(fake).mean()
    gws = [g.fc.weight] + [m.weight for m in g.net if isinstance(m, torch.nn.ConvTranspose2d)]
    for i, gw in enumerate(torch.autograd.grad(loss_g, gws)):
        out[f"g{i} grad norm"] = gw.norm().item()
    return out


def ours(config, seed, path, binary):
    """Our initial networks for `seed`, loaded into the peer's modules (strict)."""
    from safetensors.torch import load_file

    subprocess.run([binary, os.path.join(ROOT, config), str(seed), path], check=True)
    state = load_file(path)
    g, d = G(32, 1), D(32, 1, sn=True)
    g.load_state_dict({k[2:]: v for k, v in state.items() if k.startswith("g.")}, strict=True)
    d.load_state_dict({k[2:]: v for k, v in state.items() if k.startswith("d.")}, strict=True)
    return g, d


def peer(seed):
    """The peer's initial networks for `seed`, drawn as torch_wgan.py's main() draws them."""
    torch.manual_seed(seed)
    return G(32, 1), D(32, 1, sn=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=200)
    p.add_argument("--config", default="configs/sn.toml")
    p.add_argument("--binary", default=os.path.join(TARGET, "debug", "examples", "init_state"))
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    if not os.path.exists(a.binary):
        sys.exit(f"error: {a.binary} not found: build it with `cargo build --example init_state` "
                 "(CARGO_TARGET_DIR as for the tests) or pass --binary")
    torch.set_num_threads(a.threads)
    gen = torch.Generator().manual_seed(12345)
    z = torch.randn(256, 128, generator=gen)
    real = to_model_input(idx_images("train")[:256])
    rows = {"ours": [], "peer": []}
    with tempfile.TemporaryDirectory() as tmp:
        for s in range(a.seeds):
            rows["ours"].append(stats(*ours(a.config, s, os.path.join(tmp, "init.safetensors"), a.binary), z, real))
            rows["peer"].append(stats(*peer(s), z, real))
            if (s + 1) % 25 == 0:
                print(f"{s + 1} seeds", file=sys.stderr, flush=True)
    from scipy.stats import ks_2samp

    keys = list(rows["ours"][0])
    bound = 0.05 / len(keys)
    print(f"{a.seeds} seeds per trainer; KS two-sample p-values, Bonferroni bound {bound:.4f}")
    print(f"{'statistic':20s} {'ours mean (sd)':>22s} {'peer mean (sd)':>22s} {'KS p':>8s}")
    worst = 1.0
    for k in keys:
        o = np.array([r[k] for r in rows["ours"]])
        q = np.array([r[k] for r in rows["peer"]])
        pv = ks_2samp(o, q).pvalue
        worst = min(worst, pv)
        flag = "  <- differs" if pv < bound else ""
        print(f"{k:20s} {o.mean():11.4g} ({o.std():8.3g}) {q.mean():11.4g} ({q.std():8.3g}) {pv:8.4f}{flag}")
    print(f"smallest p {worst:.4f}: " + ("a difference beyond chance" if worst < bound
                                          else "no statistic tells the two apart"))


if __name__ == "__main__":
    main()

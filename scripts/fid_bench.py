#!/usr/bin/env python3
"""Feature-extraction throughput of the FID Inception, side by side in one run: pytorch-fid's
InceptionV3 (torch, CPU) and ours (examples/inception_features.rs, Flex), on the same 299x299
network inputs, the same weights (scripts/get-inception.py's file) and the same thread count.
Images per second; the inputs are random (speed does not depend on them).

  python3 scripts/fid_bench.py [--images 100] [--threads 2] [--batch 20] [--weights FILE]
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
CACHE = os.path.expanduser("~/.cache/wgan-train")
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(CACHE, "target"))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=20, help="images per forward (inception::BATCH)")
    p.add_argument("--profile", default="debug", help="cargo profile of the example (debug or release)")
    p.add_argument("--weights", default=os.path.join(CACHE, "inception", "pt_inception-2015-12-05.safetensors"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from safetensors.torch import load_file
    from pytorch_fid import inception as I
    get = __import__("get-inception")
    net = get.fid_architecture()
    net.load_state_dict(load_file(a.weights), strict=False)
    I.fid_inception_v3 = lambda: net.eval()
    model = I.InceptionV3([3], resize_input=False, normalize_input=False).eval()
    x = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (a.images, 3, 299, 299)).astype(np.float32))
    with torch.no_grad():
        model(x[:2])  # warm-up
        t0 = time.perf_counter()
        for s in range(0, a.images, a.batch):
            model(x[s:s + a.batch])
        torch_secs = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as d:
        xin, fout = os.path.join(d, "x.f32"), os.path.join(d, "f.f32")
        x.numpy().astype("<f4").tofile(xin)
        flag = [] if a.profile == "debug" else ["--profile", a.profile]
        # Into TARGET (the tests' folder), never a cold `target/` of the checkout.
        subprocess.run(["cargo", "build", "-q", "--example", "inception_features", *flag], check=True, cwd=ROOT,
                       env=dict(os.environ, CARGO_TARGET_DIR=TARGET))
        exe = os.path.join(TARGET, a.profile, "examples", "inception_features")
        env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads), BATCH=str(a.batch))
        out = subprocess.run([exe, a.weights, xin, str(a.images), fout], check=True, env=env,
                             capture_output=True, text=True).stderr
        ours_secs = float(out.split(" in ")[1].split(" s")[0])
    print(f"{a.images} images, batch {a.batch}, {a.threads} threads: pytorch-fid "
          f"{a.images / torch_secs:.2f} images/s, ours ({a.profile}) {a.images / ours_secs:.2f} images/s "
          f"(ours/PyTorch time {ours_secs / torch_secs:.2f}x)")


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# How fast a run's images are ready: the first start (decoding every file, then writing the
# decoded-image cache) and the second (mapping the cache), on a folder of N CelebA-sized JPEGs.
#   scripts/data_cache_bench.sh [N] [BINARY]      (default N = 200000, the release binary)
# Makes N 178x218 JPEGs (random colour fields, about 6 KB each) under $TMPDIR once, trains one
# iteration of configs/celeba/sn.toml on them twice with a fresh cache folder, and prints the
# "images:" lines, which carry the seconds and images/s. Needs pillow and numpy in python3 (or
# in $PYTHON, e.g. the venv of scripts/setup-python.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-200000}"
binary="${2:-${CARGO_TARGET_DIR:-$HOME/.cache/wgan-train/target}/release/wgan-train}"
root="${TMPDIR:-/tmp}/wgan-train-cache-bench"
data="$root/images-$n"
if [ ! -f "$data/.complete" ]; then
  mkdir -p "$data"
  "${PYTHON:-python3}" - "$data" "$n" <<'PY'
import sys, os, numpy as np
from PIL import Image
from concurrent.futures import ProcessPoolExecutor
out, n = sys.argv[1], int(sys.argv[2])
def make(start):
    rng = np.random.default_rng(start)
    for i in range(start, min(start + 1000, n)):
        small = rng.integers(0, 256, (14, 11, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((178, 218), Image.BILINEAR)
        sub = os.path.join(out, f"{i // 10000:03d}")
        os.makedirs(sub, exist_ok=True)
        img.save(os.path.join(sub, f"{i:06d}.jpg"), quality=90)
with ProcessPoolExecutor() as ex:
    list(ex.map(make, range(0, n, 1000)))
PY
  touch "$data/.complete"
fi
cache="$root/cache"
rm -rf "$cache" "$root/run"
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(nproc) cores; $(grep -o -m1 'avx512f' /proc/cpuinfo || echo 'no avx512f')"
for start in first second; do
  WGAN_TRAIN_CACHE_DIR="$cache" "$binary" --config configs/celeba/sn.toml \
    --set data.dir="\"$data\"" --set train.iterations=1 --set train.batch_size=8 \
    --set model.g_width=8 --set model.d_width=8 --set output.eval_every=0 \
    --set output.diagnostics=false --set output.plots=false --out "$root/run" --force 2>&1 \
    | grep '^images:' | sed "s/^/$start start: /"
done
du -h "$cache"/*.bin

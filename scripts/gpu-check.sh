#!/usr/bin/env bash
# One run that answers, on a machine with a GPU: does wgpu see it, does training on it match the
# CPU, and how fast is it beside PyTorch CUDA on the same shapes (issue 18).
#
#   scripts/gpu-check.sh [--dry] [--out DIR] [--iters N] [--binary PATH]
#
# Steps (each under its own time limit; a failed step is listed and the script goes on, so one
# run always ends with a table and the list of what failed):
#   python    torch (PyPI's CUDA wheel), numpy, pillow: scripts/setup-python.sh when missing
#   vulkan    the Vulkan loader (libvulkan.so.1; apt-get where the network allows, else .deb files
#             carried in .gl/), and the driver: NVIDIA's nvidia_icd.json comes with the NVIDIA
#             driver, not from Debian's packages, and is looked for in the usual places
#   build     `cargo build --release` with every core (or --binary PATH, built elsewhere)
#   adapters  `wgan-train adapters` (what wgpu sees) and `nvidia-smi -L`
#   parity    `wgan-train parity`: one critic and one generator step per constraint on the
#             adapter against the CPU, from identical weights and inputs (fails above 1e-5)
#   tests     (--dry only) the wgpu end-to-end tests
#   ours-K, torch-K  64x64 RGB, batch 64, n_critic 5, widths 64: sn, gp, clip, ours (--backend wgpu)
#             beside ../shared/peer/torch_wgan.py --device cuda
# Output: DIR/gpu-check.md (the table, the adapters, the failed steps) and one log per step.
#
# --dry: the same steps where there is no GPU (Mesa's lavapipe, Debian's mesa-vulkan-drivers):
# 32x32, widths 8, batch 16, 3 iterations, PyTorch on the CPU, the test-profile binary that
# `cargo test` builds (no second, release build). `.ci/run` runs it, so the script does not rot.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
DRY=0
OUT="$ROOT/runs/gpu-check"
ITERS=""
BINARY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry) DRY=1 ;;
    --out) OUT="$2"; shift ;;
    --iters) ITERS="$2"; shift ;;
    --binary) BINARY="$2"; shift ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$OUT" "$OUT/xdg" && chmod 700 "$OUT/xdg"
# Mesa and the NVIDIA driver want a private runtime folder (else one warning per process).
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$OUT/xdg}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/wgan-train/target}"
PYTHON="${WGAN_TRAIN_PYTHON:-$HOME/.cache/wgan-train/venv/bin/python}"
if ! "$PYTHON" -c "import torch, numpy, PIL" 2>/dev/null; then
  # PyPI's Linux torch wheel is the CUDA build: the venv of the PyTorch comparisons serves.
  echo "== python: torch, numpy, pillow missing: scripts/setup-python.sh (at most 900 s)"
  PYTHON="$(timeout 900 scripts/setup-python.sh | tail -n 1)" || PYTHON=python3
fi
FAILED=()
if [ "$DRY" = 1 ]; then
  SIZE=32; WIDTH=8; BATCH=16; ITERS="${ITERS:-3}"; TORCH_DEVICE=cpu; PROFILE=debug
else
  SIZE=64; WIDTH=64; BATCH=64; ITERS="${ITERS:-20}"; TORCH_DEVICE=cuda; PROFILE=release
fi

# step NAME SECONDS COMMAND...: runs COMMAND with a time limit, its output in OUT/NAME.log.
step() {
  local name="$1" limit="$2"; shift 2
  echo "== $name (at most ${limit} s)"
  # Through bash, so that the functions below (exported) run under the limit too.
  timeout --kill-after=10 "$limit" bash -c '"$@"' step "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 5 "$OUT/$name.log" | sed 's/^/   /'
  if [ $rc -ne 0 ]; then
    [ $rc -eq 124 ] && echo "   $name: timed out after ${limit} s" || echo "   $name: failed (exit $rc)"
    FAILED+=("$name (see $OUT/$name.log)")
  fi
  return $rc
}

vulkan() {
  if ! ldconfig -p | grep -q 'libvulkan.so.1'; then
    if compgen -G ".gl/*.deb" >/dev/null; then
      for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
    else
      timeout 120 apt-get install -y -qq libvulkan1 || true
    fi
  fi
  ldconfig -p | grep -q 'libvulkan.so.1' || { echo "no Vulkan loader (libvulkan.so.1): apt-get install libvulkan1, or carry its .deb in .gl/"; return 1; }
  echo "Vulkan loader: $(ldconfig -p | grep -m1 'libvulkan.so.1' | sed 's/.*=> //')"
  if [ "$DRY" = 1 ]; then
    ls /usr/share/vulkan/icd.d/lvp_icd.*.json 2>/dev/null || { echo "no lavapipe: apt-get install mesa-vulkan-drivers"; return 1; }
    return 0
  fi
  local icd
  for icd in /usr/share/vulkan/icd.d/nvidia_icd.json /etc/vulkan/icd.d/nvidia_icd.json \
             /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json; do
    if [ -f "$icd" ]; then echo "NVIDIA Vulkan driver: $icd"; echo "$icd" >"$OUT/icd"; return 0; fi
  done
  echo "no nvidia_icd.json: NVIDIA's Vulkan driver ships with the NVIDIA driver (libnvidia-gl / the .run installer), not with Debian's Vulkan packages; without it wgpu sees no NVIDIA GPU"
  return 1
}

build() {
  if [ -n "$BINARY" ]; then echo "using $BINARY"; return 0; fi
  if [ "$DRY" = 1 ]; then
    cargo build --locked --bin wgan-train   # the test profile's binary, warm after `cargo test`
  else
    cargo build --locked --release -j "$(nproc)" --bin wgan-train
  fi
}

export DRY OUT BINARY PYTHON SIZE WIDTH BATCH ITERS TORCH_DEVICE PROFILE
export -f vulkan build
step vulkan 180 vulkan
[ -f "$OUT/icd" ] && export VK_DRIVER_FILES="$(cat "$OUT/icd")"
step build 3000 build
BIN="${BINARY:-$CARGO_TARGET_DIR/$PROFILE/wgan-train}"
step adapters 60 bash -c "'$BIN' adapters; command -v nvidia-smi >/dev/null && nvidia-smi -L || echo 'nvidia-smi: not found'"
step parity 300 "$BIN" parity
if [ "$DRY" = 1 ]; then
  # The end-to-end wgpu tests (their build is the warm test profile's). On a GPU machine the
  # timing runs below train every kind end to end on the adapter instead: a test build there
  # would be a second cold build.
  step tests 900 cargo test --locked --test wgpu
fi

# Peak GPU memory (MiB) of the processes during COMMAND, from nvidia-smi every 0.2 s.
peak_gpu_mib() {
  local log="$1"; shift
  if ! command -v nvidia-smi >/dev/null; then "$@"; local rc=$?; echo "n/a" >"$log.mem"; return $rc; fi
  ( while :; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -n1; sleep 0.2; done ) >"$log.samples" &
  local sampler=$!
  "$@"; local rc=$?
  kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null
  sort -n "$log.samples" | tail -n1 >"$log.mem"
  return $rc
}

DATA="$OUT/data"
"$PYTHON" - "$DATA" "$SIZE" <<'EOF' || FAILED+=("data")
import os, sys
import numpy as np
from PIL import Image
out, size = sys.argv[1], int(sys.argv[2])
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(0)
for i in range(256):
    p = os.path.join(out, f"{i:04d}.png")
    if not os.path.exists(p):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(p)
EOF

ours() {
  local kind="$1" run="$OUT/run-$1"
  local sets=(--set "data.dir=\"$DATA\"" --set data.image_size=$SIZE --set data.channels=3
    --set model.g_width=$WIDTH --set model.d_width=$WIDTH --set train.batch_size=$BATCH
    --set train.n_critic=5 --set train.iterations=$ITERS --set output.log_every=1
    --set output.eval_every=0 --set output.diagnostics=false --set output.plots=false
    --set output.sample_every=$ITERS --set output.checkpoint_every=$ITERS)
  peak_gpu_mib "$OUT/ours-$kind" "$BIN" --config "configs/$kind.toml" --backend wgpu --out "$run" --force "${sets[@]}"
}

peer() {
  local kind="$1"
  # PASSIVE: PyTorch's OpenMP threads sleep instead of spinning when the CPU is shared.
  OMP_WAIT_POLICY=PASSIVE peak_gpu_mib "$OUT/torch-$kind" "$PYTHON" ../shared/peer/torch_wgan.py --data "$DATA" --size $SIZE \
    --channels 3 --constraint "$kind" --iters "$ITERS" --warmup 2 --batch $BATCH --n-critic 5 \
    --threads "$(nproc)" --device $TORCH_DEVICE
}

export BIN DATA
export -f ours peer peak_gpu_mib
for kind in sn gp clip; do
  step "ours-$kind" 600 ours "$kind"
  if [ "$DRY" = 1 ] || "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    step "torch-$kind" 600 peer "$kind"
  else
    echo "== torch-$kind: skipped (no CUDA torch: pip install torch, with CUDA)" | tee "$OUT/torch-$kind.log"
    FAILED+=("torch-$kind (no CUDA torch)")
  fi
done

# The table, from the runs' metrics (ours: median s/it after the first iteration; the first
# iteration's own time, shader compilation and autotune included) and the peer's JSON line.
"$PYTHON" - "$OUT" "$DRY" "$SIZE" "$BATCH" "$ITERS" "${FAILED[@]}" <<'EOF'
import json, os, statistics, subprocess, sys
out, dry, size, batch, iters, failed = sys.argv[1], sys.argv[2] == "1", sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6:]
def read(path):
    try:
        return open(path).read().strip()
    except OSError:
        return ""
def ours(kind):
    try:
        recs = [json.loads(l) for l in open(os.path.join(out, f"run-{kind}", "metrics.jsonl"))]
    except OSError:
        return None, None
    secs = [r["sec_per_iter"] for r in recs]
    if not secs:
        return None, None
    return statistics.median(secs[1:] or secs), secs[0]
def torch(kind):
    for line in reversed(read(os.path.join(out, f"torch-{kind}.log")).splitlines()):
        if line.startswith("{"):
            return json.loads(line)["s_per_gen_iter_median"]
    return None
f = lambda v, p=3: "-" if v is None else f"{v:.{p}f}"
rows, sn = [], ours("sn")[0]
for kind in ["sn", "gp", "clip"]:
    (o, first), t = ours(kind), torch(kind)
    ratio = o / t if o and t else None
    vs_sn = o / sn if o and sn else None
    mem = lambda who: read(os.path.join(out, f"{who}-{kind}.mem")) or "n/a"
    rows.append(f"| {kind} | {f(o)} | {f(t)} | {f(ratio, 2)} | {f(vs_sn, 2)} | {mem('ours')} | {mem('torch')} | {f(first, 1)} |")
adapters = read(os.path.join(out, "adapters.log"))
text = [f"# gpu-check{' --dry (lavapipe, PyTorch on the CPU)' if dry else ''}", "",
        f"{size}x{size} RGB, batch {batch}, n_critic 5, {iters} generator iterations; ours: --backend wgpu",
        "", "| kind | ours s/it | torch s/it | ours/torch | kind/sn | ours peak GPU MiB | torch peak GPU MiB | ours first iteration s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |", *rows, "", "Adapters:", "", "```", adapters, "```", ""]
text += ["Failed steps:", ""] + [f"- {x}" for x in failed] if failed else ["Every step passed."]
open(os.path.join(out, "gpu-check.md"), "w").write("\n".join(text) + "\n")
print("\n".join(text))
EOF
[ "${#FAILED[@]}" -eq 0 ]

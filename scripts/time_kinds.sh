#!/usr/bin/env bash
# Seconds per generator iteration of every constraint kind, side by side in one run, on the
# same config (release build). Usage:
#   scripts/time_kinds.sh [ITERATIONS] [extra --set KEY=VALUE ...]
# e.g. scripts/time_kinds.sh 8 data.image_size=64 data.channels=3
# The first iteration of each run is a warm-up and is left out of the median.
set -euo pipefail
cd "$(dirname "$0")/.."
iterations="${1:-8}"
shift || true
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/wgan-train/target}"
cargo build --release --quiet
bin="$CARGO_TARGET_DIR/release/wgan-train"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
sets=(--set "train.iterations=$iterations" --set output.log_every=1 --set output.sample_every=0
      --set output.checkpoint_every=0)
for kv in "$@"; do sets+=(--set "$kv"); done
for kind in sn gp gp1 clip sp none; do
  "$bin" --config "configs/$kind.toml" "${sets[@]}" --out "$out/$kind" >/dev/null
done
python3 - "$out" <<'PY'
import json, statistics, sys, os
out = sys.argv[1]
rows = {}
for kind in ["sn", "gp", "gp1", "clip", "sp", "none"]:
    lines = [json.loads(l) for l in open(os.path.join(out, kind, "metrics.jsonl"))]
    secs = [l["sec_per_iter"] for l in lines[1:]] or [lines[0]["sec_per_iter"]]
    rows[kind] = statistics.median(secs)
print(f"{'config':<8} {'s/gen-iter (median)':>20} {'vs sn':>8}")
for kind, s in rows.items():
    print(f"{kind:<8} {s:>20.3f} {s / rows['sn']:>8.2f}")
print(f"GP/SN = {rows['gp'] / rows['sn']:.2f}")
PY

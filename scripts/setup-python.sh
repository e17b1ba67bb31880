#!/usr/bin/env bash
# Sets up the Python venv that the comparisons with PyTorch use (tests/torch_parity.rs,
# tests/export_torch.rs, scripts/quality.py, scripts/bench.py): torch (CPU use only; PyPI's
# Linux wheel also brings CUDA libraries, about 3 GB, downloaded once), numpy, pillow,
# safetensors, scipy, and pytorch-fid and torch-fidelity (whose FID and KID tests/fid_torch.rs
# compares with). Idempotent; prints the interpreter's path on its last line.
#   WGAN_TRAIN_VENV   where the venv goes (default ~/.cache/wgan-train/venv)
set -euo pipefail
venv="${WGAN_TRAIN_VENV:-$HOME/.cache/wgan-train/venv}"
packages=(torch numpy pillow safetensors scipy pytorch-fid torch-fidelity)
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" >&2 || {
    echo "error: cannot create a venv at $venv: install python3-venv (apt-get install python3-venv)" >&2
    exit 1
  }
fi
if ! "$venv/bin/python" -c "import torch, numpy, PIL, safetensors, scipy, pytorch_fid, torch_fidelity" 2>/dev/null; then
  echo "installing ${packages[*]} into $venv (once)" >&2
  "$venv/bin/python" -m pip install -q "${packages[@]}" >&2
fi
echo "$venv/bin/python"

#!/usr/bin/env bash
# Installs what building and testing wgan-train needs beyond the Rust toolchain.
# Idempotent; run as root (CI runs it from .ci/run).
set -euo pipefail
command -v cargo >/dev/null || { echo "error: cargo not found: install Rust (rustup.rs)" >&2; exit 1; }
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt

#!/usr/bin/env bash
# Installs what building and testing wgan-train needs beyond the Rust toolchain.
# Idempotent; run as root (CI runs it from .ci/run).
#  - rustfmt, for `cargo fmt --check`;
#  - Mesa's lavapipe (software Vulkan) and the Vulkan loader, so that the wgpu backend's tests
#    (part of `cargo test`) run for real on a machine without a GPU. Optional: a failed
#    install only warns.
set -euo pipefail
command -v cargo >/dev/null || { echo "error: cargo not found: install Rust (rustup.rs)" >&2; exit 1; }
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
missing=()
for pkg in mesa-vulkan-drivers libvulkan1; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "warning: ${missing[*]} missing and not root: wgpu tests will be skipped" >&2
  else
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; } \
      || echo "warning: could not install ${missing[*]}: wgpu tests will be skipped" >&2
  fi
fi

#!/usr/bin/env bash
# Installs what building and testing wgan-train needs beyond the Rust toolchain.
# Idempotent; run as root (CI runs it from .ci/run).
#  - rustfmt, for `cargo fmt --check`;
#  - Mesa's lavapipe (software Vulkan) and the Vulkan loader, so that the wgpu backend's tests
#    (part of `cargo test`) run for real on a machine without a GPU. Optional: a failed
#    install only warns;
#  - qemu-user, whose CPU models (Haswell: AVX2 without AVX-512; Nehalem: no AVX) force the
#    gemm crate's AVX2 and scalar kernels (crates/burn-flex-kernels, tests/kernels.rs,
#    tests/torch_parity.rs) on any x86-64 machine.
#    Optional too: without it those runs are skipped with a line saying why (not under CI).
#  - with --quality, also Debian's dataset-fashion-mnist (the 70,000 real images under
#    /usr/share/datasets/fashion-mnist that scripts/quality.py and scripts/init_compare.py use;
#    not needed by the tests, so CI does not install it).
set -euo pipefail
command -v cargo >/dev/null || { echo "error: cargo not found: install Rust (rustup.rs)" >&2; exit 1; }
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
missing=()
packages=(mesa-vulkan-drivers libvulkan1 qemu-user)
[ "${1:-}" = "--quality" ] && packages+=(dataset-fashion-mnist)
for pkg in "${packages[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "warning: ${missing[*]} missing and not root: the tests that need them will be skipped" >&2
  else
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; } \
      || echo "warning: could not install ${missing[*]}: the tests that need them will be skipped" >&2
  fi
fi

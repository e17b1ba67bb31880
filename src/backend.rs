//! The compute backend, chosen once at the edge (CLI) and passed in as a Burn [`Device`].

use anyhow::{Result, bail};
use burn::prelude::Device;
use clap::ValueEnum;

/// Backends selectable with `--backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// Burn's Flex CPU backend (default).
    Flex,
    /// burn-ndarray, deprecated by Burn 0.22 and much slower; kept for comparison.
    Ndarray,
    /// The GPU through wgpu (Vulkan, Metal or DX12).
    Wgpu,
}

impl Backend {
    /// The plain (non-autodiff) device of this backend, or a one-line reason it is unavailable.
    pub fn device(self) -> Result<Device> {
        match self {
            Self::Flex => Ok(Device::flex()),
            #[allow(deprecated)] // selectable on purpose, for comparison
            Self::Ndarray => Ok(Device::ndarray()),
            Self::Wgpu => bail!(
                "the wgpu backend is not built into this version of wgan-train yet: use --backend flex (the default CPU backend)"
            ),
        }
    }
}

//! The compute backend, chosen once at the edge (CLI or config) and passed in as a Burn
//! [`Device`].

use anyhow::{Result, bail};
use burn::prelude::Device;
use clap::ValueEnum;
use serde::{Deserialize, Serialize};

/// Backends selectable with `--backend` or the config's `backend` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Burn's Flex CPU backend (default).
    Flex,
    /// burn-ndarray, deprecated by Burn 0.22 and much slower; kept for comparison.
    Ndarray,
    /// The GPU through wgpu (WGSL shaders on Vulkan, Metal or DX12).
    Wgpu,
}

impl Backend {
    /// The plain (non-autodiff) device of this backend; `adapter` picks among several GPUs
    /// (wgpu only). Fails with a one-line reason when the backend is unavailable.
    pub fn device(self, adapter: Option<usize>) -> Result<Device> {
        match self {
            Self::Flex => Ok(Device::flex()),
            #[allow(deprecated)] // selectable on purpose, for comparison
            Self::Ndarray => Ok(Device::ndarray()),
            Self::Wgpu => gpu::device(adapter),
        }
    }

    /// The name `--backend` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Flex => "flex",
            Self::Ndarray => "ndarray",
            Self::Wgpu => "wgpu",
        }
    }
}

/// The GPU adapters wgpu sees, as `name (type)`, in the order `--device` indexes them (none in
/// a build without wgpu).
pub fn adapters() -> Vec<String> {
    #[cfg(feature = "wgpu")]
    return gpu::adapters()
        .into_iter()
        .map(|(name, ty)| format!("{name} ({ty:?})"))
        .collect();
    #[cfg(not(feature = "wgpu"))]
    Vec::new()
}

#[cfg(feature = "wgpu")]
mod gpu {
    use anyhow::{Result, bail};
    use burn::prelude::Device;
    use burn::tensor::DeviceKind;
    use burn::tensor::wgpu::wgpu;

    /// What to do when no adapter is found.
    const NO_ADAPTER: &str = "no GPU/Vulkan adapter found for --backend wgpu: use --backend flex (the CPU), or install Vulkan drivers (e.g. Debian's mesa-vulkan-drivers and libvulkan1, or your GPU vendor's)";

    /// The adapters wgpu sees, in its order, as (name, type).
    pub fn adapters() -> Vec<(String, wgpu::DeviceType)> {
        let backends = wgpu::Backends::PRIMARY;
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends,
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        pollster::block_on(instance.enumerate_adapters(backends))
            .iter()
            .map(|a| {
                let info = a.get_info();
                (info.name, info.device_type)
            })
            .collect()
    }

    /// The device of adapter `index` (in [`adapters`] order), or wgpu's default choice.
    pub fn device(index: Option<usize>) -> Result<Device> {
        let found = adapters();
        if found.is_empty() {
            bail!(NO_ADAPTER);
        }
        let kind = match index {
            None => DeviceKind::DefaultDevice,
            Some(i) => kind_of(&found, i)?,
        };
        Device::wgpu_options()
            .device_kind(kind)
            .init()
            .map_err(|e| anyhow::anyhow!("cannot start the wgpu device: {e}; {NO_ADAPTER}"))
    }

    /// Burn selects an adapter by type and index among that type.
    fn kind_of(found: &[(String, wgpu::DeviceType)], i: usize) -> Result<DeviceKind> {
        let Some((_, ty)) = found.get(i) else {
            let list: Vec<String> = found
                .iter()
                .enumerate()
                .map(|(k, (name, ty))| format!("{k}: {name} ({ty:?})"))
                .collect();
            bail!(
                "--device {i} does not exist; the adapters are {}",
                list.join(", ")
            );
        };
        let same_type = found[..i].iter().filter(|(_, t)| t == ty).count();
        Ok(match ty {
            wgpu::DeviceType::DiscreteGpu => DeviceKind::DiscreteGpu(same_type),
            wgpu::DeviceType::IntegratedGpu => DeviceKind::IntegratedGpu(same_type),
            wgpu::DeviceType::VirtualGpu => DeviceKind::VirtualGpu(same_type),
            wgpu::DeviceType::Cpu => DeviceKind::Cpu,
            wgpu::DeviceType::Other => DeviceKind::DefaultDevice,
        })
    }
}

#[cfg(not(feature = "wgpu"))]
mod gpu {
    use super::*;

    pub fn device(_index: Option<usize>) -> Result<Device> {
        bail!(
            "this wgan-train was built without the wgpu feature: rebuild with default features, or use --backend flex"
        )
    }
}

/// Whether a wgpu adapter exists here (tests skip GPU checks, saying so, where none does).
#[cfg(feature = "wgpu")]
pub fn gpu_available() -> bool {
    !gpu::adapters().is_empty()
}

#[cfg(not(feature = "wgpu"))]
pub fn gpu_available() -> bool {
    false
}

/// Rejects an adapter index on a backend that has none.
pub fn check_adapter(backend: Backend, adapter: Option<usize>) -> Result<()> {
    if adapter.is_some() && backend != Backend::Wgpu {
        bail!(
            "--device (or the config's device key) selects a GPU adapter and applies only to --backend wgpu"
        );
    }
    Ok(())
}

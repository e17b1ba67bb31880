//! What the Flex kernels (`conv`, `activation`, `norm`) share: when they apply, and host
//! slices of Flex tensors in and out.

use burn::backend::flex::FlexTensor;
use burn::prelude::*;
use burn::tensor::{DType, TensorData};

/// Whether `t` is an f32 tensor on Flex (with or without autodiff): where the fused kernels
/// run instead of Burn's ops.
pub fn applies<const D: usize>(t: &Tensor<D>) -> bool {
    t.dtype() == DType::F32 && t.device().inner() == Device::flex()
}

/// `t` in row-major order (a copy only when `t` is strided).
pub fn contiguous(t: &FlexTensor) -> FlexTensor {
    t.to_contiguous()
}

/// The elements of a contiguous f32 tensor (from [`contiguous`]).
pub fn values(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("a contiguous f32 Flex tensor")
}

/// A Flex tensor of `shape` holding `data`.
pub fn tensor(data: Vec<f32>, shape: impl Into<Shape>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(data, shape))
}

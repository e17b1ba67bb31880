//! The critic f: n x [Conv 4x4 stride 2 pad 1, LeakyReLU 0.2], then Linear -> 1.
//! No normalization layers, so that every constraint acts on the same function class.

use super::spectral::SpectralNorm;
use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::prelude::*;
use burn::tensor::activation::leaky_relu;
use burn::tensor::module::{conv2d, linear};
use burn::tensor::ops::ConvOptions;

/// LeakyReLU slope of every hidden critic layer.
pub const LEAKY_SLOPE: f64 = 0.2;

/// A 4x4, stride 2, padding 1 convolution with an optional spectral normalization of its kernel.
#[derive(Module, Debug)]
pub struct CriticConv {
    /// Kernel in PyTorch's layout, `[out, in, 4, 4]`.
    pub weight: Param<Tensor<4>>,
    /// `[out]`.
    pub bias: Param<Tensor<1>>,
    /// Present when the critic is spectrally normalized.
    pub spectral: Option<SpectralNorm>,
}

impl CriticConv {
    /// Stride, padding and dilation of every critic convolution.
    pub fn options() -> ConvOptions<2> {
        ConvOptions::new([2, 2], [1, 1], [1, 1], 1)
    }

    fn new(
        channels_in: usize,
        channels_out: usize,
        power_iterations: Option<usize>,
        device: &Device,
    ) -> Self {
        let fan_in = channels_in * 16;
        let weight = torch_default_init([channels_out, channels_in, 4, 4], fan_in, device);
        let bias = torch_default_init([channels_out], fan_in, device);
        let spectral = power_iterations.map(|p| SpectralNorm::new(&weight.val(), p));
        Self {
            weight,
            bias,
            spectral,
        }
    }

    /// The kernel as used in the forward pass (`W / sigma` under spectral normalization).
    pub fn kernel(&self) -> Tensor<4> {
        match &self.spectral {
            Some(sn) => sn.normalize(self.weight.val()),
            None => self.weight.val(),
        }
    }

    /// `[B, in, H, W]` -> `[B, out, H/2, W/2]`, before the activation.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        conv2d(x, self.kernel(), Some(self.bias.val()), Self::options())
    }
}

/// The final linear layer, `[B, in] -> [B, 1]`, with an optional spectral normalization.
#[derive(Module, Debug)]
pub struct CriticLinear {
    /// Weight in PyTorch's layout, `[out, in]` (Burn's own `Linear` keeps `[in, out]`).
    pub weight: Param<Tensor<2>>,
    /// `[out]`.
    pub bias: Param<Tensor<1>>,
    /// Present when the critic is spectrally normalized.
    pub spectral: Option<SpectralNorm>,
}

impl CriticLinear {
    fn new(d_in: usize, d_out: usize, power_iterations: Option<usize>, device: &Device) -> Self {
        let weight = torch_default_init([d_out, d_in], d_in, device);
        let bias = torch_default_init([d_out], d_in, device);
        let spectral = power_iterations.map(|p| SpectralNorm::new(&weight.val(), p));
        Self {
            weight,
            bias,
            spectral,
        }
    }

    /// The weight as used in the forward pass, `[out, in]`.
    pub fn kernel(&self) -> Tensor<2> {
        match &self.spectral {
            Some(sn) => sn.normalize(self.weight.val()),
            None => self.weight.val(),
        }
    }

    /// `[B, in]` -> `[B, out]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        linear(x, self.kernel().transpose(), Some(self.bias.val()))
    }
}

/// The critic (discriminator) of the WGAN.
#[derive(Module, Debug)]
pub struct Critic {
    /// Downsampling convolutions, each followed by LeakyReLU.
    pub convs: Vec<CriticConv>,
    /// `[B, 4*4*C] -> [B, 1]`.
    pub head: CriticLinear,
}

impl Critic {
    /// A critic for `image_size` x `image_size` x `channels` images: n = log2(image_size/4)
    /// convolutions from `width` channels, doubling. `power_iterations` = `Some(k)` puts a
    /// spectral normalization with k iterations per training forward on every layer.
    pub fn new(
        image_size: usize,
        channels: usize,
        width: usize,
        power_iterations: Option<usize>,
        device: &Device,
    ) -> Self {
        let n = super::depth(image_size);
        let mut convs = Vec::with_capacity(n);
        let (mut c_in, mut c_out) = (channels, width);
        for _ in 0..n {
            convs.push(CriticConv::new(c_in, c_out, power_iterations, device));
            (c_in, c_out) = (c_out, c_out * 2);
        }
        let head = CriticLinear::new(16 * c_in, 1, power_iterations, device);
        Self { convs, head }
    }

    /// `[B, C, H, W]` -> `[B, 1]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let mut h = x;
        for conv in &self.convs {
            h = leaky_relu(conv.forward(h), LEAKY_SLOPE); // [B, c, H/2^i, W/2^i]
        }
        self.head.forward(h.flatten(1, 3)) // [B, 1]
    }
}

/// PyTorch's default init of conv and linear layers: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
fn torch_default_init<const D: usize>(
    shape: [usize; D],
    fan_in: usize,
    device: &Device,
) -> Param<Tensor<D>> {
    let bound = 1.0 / (fan_in as f64).sqrt();
    Initializer::Uniform {
        min: -bound,
        max: bound,
    }
    .init(shape, device)
}

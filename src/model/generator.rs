//! The DCGAN generator: Linear z -> 4x4xC0, BatchNorm, ReLU; (n-1) x [ConvTranspose 4x4/2/1,
//! BatchNorm, ReLU] halving channels; ConvTranspose 4x4/2/1 to the image channels; tanh.

use burn::module::Module;
use burn::nn::conv::{ConvTranspose2d, ConvTranspose2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::relu;
use burn::tensor::ops::ConvTransposeOptions;
use burn_flex_kernels::activation::tanh;

/// One upsampling block: ConvTranspose 4x4/2/1, BatchNorm, ReLU.
#[derive(Module, Debug)]
pub struct UpBlock {
    /// `[B, c, h, w]` -> `[B, c/2, 2h, 2w]`.
    pub conv: ConvTranspose2d,
    /// Batch statistics in training, running statistics in inference.
    pub norm: BatchNorm,
}

impl UpBlock {
    fn new(channels_in: usize, channels_out: usize, device: &Device) -> Self {
        Self {
            conv: up_conv(channels_in, channels_out, device),
            norm: BatchNormConfig::new(channels_out).init(device),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        relu(burn_flex_kernels::norm::forward(
            &self.norm,
            up_forward(&self.conv, x),
        ))
    }
}

/// The generator G: `[B, z_dim]` -> `[B, C, S, S]` in [-1, 1].
#[derive(Module, Debug)]
pub struct Generator {
    /// `[B, z_dim]` -> `[B, 16 * base_channels]`.
    pub project: Linear,
    /// Normalization of the 4x4 projection.
    pub project_norm: BatchNorm,
    /// Upsampling blocks, 4x4 -> S/2 x S/2.
    pub blocks: Vec<UpBlock>,
    /// Last upsampling to the image channels (no normalization).
    pub to_image: ConvTranspose2d,
    /// Channels of the 4x4 projection, `g_width * 2^(n-1)`.
    pub base_channels: usize,
}

impl Generator {
    /// A generator for `image_size` x `image_size` x `channels` images.
    pub fn new(
        image_size: usize,
        channels: usize,
        z_dim: usize,
        width: usize,
        device: &Device,
    ) -> Self {
        let n = super::depth(image_size);
        let base_channels = width << (n - 1);
        let project = LinearConfig::new(z_dim, 16 * base_channels).init(device);
        let project_norm = BatchNormConfig::new(base_channels).init(device);
        let mut blocks = Vec::with_capacity(n - 1);
        let mut c = base_channels;
        for _ in 0..n - 1 {
            blocks.push(UpBlock::new(c, c / 2, device));
            c /= 2;
        }
        let to_image = up_conv(c, channels, device);
        Self {
            project,
            project_norm,
            blocks,
            to_image,
            base_channels,
        }
    }

    /// `[B, z_dim]` -> `[B, C, S, S]`.
    pub fn forward(&self, z: Tensor<2>) -> Tensor<4> {
        let [batch, _] = z.dims();
        let h = self
            .project
            .forward(z)
            .reshape([batch, self.base_channels, 4, 4]); // [B, C0, 4, 4]
        let mut h = relu(burn_flex_kernels::norm::forward(&self.project_norm, h));
        for block in &self.blocks {
            h = block.forward(h); // [B, c/2, 2h, 2w]
        }
        tanh(up_forward(&self.to_image, h)) // [B, C, S, S]
    }
}

fn up_conv(channels_in: usize, channels_out: usize, device: &Device) -> ConvTranspose2d {
    ConvTranspose2dConfig::new([channels_in, channels_out], [4, 4])
        .with_stride([2, 2])
        .with_padding([1, 1])
        .init(device)
}

/// `conv.forward(x)` through [`conv_transpose2d`](burn_flex_kernels::conv::conv_transpose2d) (batch-wide
/// kernels on Flex, Burn's own elsewhere).
fn up_forward(conv: &ConvTranspose2d, x: Tensor<4>) -> Tensor<4> {
    let options = ConvTransposeOptions::new(
        conv.stride,
        conv.padding,
        conv.padding_out,
        conv.dilation,
        conv.groups,
    );
    let bias = conv.bias.as_ref().map(|b| b.val());
    burn_flex_kernels::conv::conv_transpose2d(x, conv.weight.val(), bias, options)
}

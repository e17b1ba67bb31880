//! The critic f: n x [Conv 4x4 stride 2 pad 1, LeakyReLU 0.2], then Linear -> 1.
//! No normalization layers, so that every constraint acts on the same function class.

use super::operator::OperatorNorm;
use super::spectral::{SpectralNorm, SpectralOptions, as_matrix};
use crate::config::Activation;
use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::prelude::*;
use burn::tensor::ops::ConvOptions;
use burn_flex_kernels::activation::{leaky_relu, leaky_relu_backward};
use burn_flex_kernels::conv::{conv_transpose2d, conv2d};

/// LeakyReLU slope of every hidden critic layer.
pub const LEAKY_SLOPE: f64 = 0.2;

/// A 4x4, stride 2, padding 1 convolution with an optional spectral normalization of its kernel.
#[derive(Module, Debug)]
pub struct CriticConv {
    /// Kernel in PyTorch's layout, `[out, in, 4, 4]`.
    pub weight: Param<Tensor<4>>,
    /// `[out]`.
    pub bias: Param<Tensor<1>>,
    /// Present when the critic is spectrally normalized by the kernel's matrix view.
    pub spectral: Option<SpectralNorm>,
    /// Present when the critic is spectrally normalized by the convolution's operator norm.
    pub operator: Option<OperatorNorm>,
}

impl CriticConv {
    /// Stride, padding and dilation of every critic convolution.
    pub fn options() -> ConvOptions<2> {
        ConvOptions::new([2, 2], [1, 1], [1, 1], 1)
    }

    fn new(
        channels_in: usize,
        channels_out: usize,
        size: usize,
        spectral: Option<SpectralOptions>,
        device: &Device,
    ) -> Self {
        let shape = [channels_out, channels_in, 4, 4];
        let operator_options = spectral.filter(|o| o.operator);
        let matrix = spectral.filter(|o| !o.operator);
        let (weight, bias, spectral) = init_layer(shape, channels_in * 16, matrix, device);
        let o = Self::options();
        let operator = operator_options.map(|opts| {
            OperatorNorm::new(
                &weight.val(),
                [size, size],
                o.stride[0],
                o.padding[0].0,
                opts.power_iterations,
                opts.in_forward,
                opts.certify,
            )
        });
        Self {
            weight,
            bias,
            spectral,
            operator,
        }
    }

    /// The kernel as used in the forward pass (`W / sigma` under spectral normalization).
    pub fn kernel(&self) -> Tensor<4> {
        match &self.operator {
            Some(op) if op.in_forward => op.normalize(self.weight.val()),
            _ => forward_kernel(&self.spectral, self.weight.val()),
        }
    }

    /// `[B, in, H, W]` -> `[B, out, H/2, W/2]`, before the activation.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward_with(self.kernel(), x)
    }

    /// The forward pass with a given kernel (as returned by [`kernel`](Self::kernel)).
    pub fn forward_with(&self, kernel: Tensor<4>, x: Tensor<4>) -> Tensor<4> {
        conv2d(x, kernel, Some(self.bias.val()), Self::options())
    }

    /// The input gradient of this convolution: `upstream` `[B, out, h, w]` (d loss / d output)
    /// -> d loss / d input `[B, in, H, W]`, written with differentiable ops so that autodiff
    /// can differentiate it again with respect to `kernel`. The adjoint of a convolution is the
    /// transposed convolution with the same kernel, stride and padding; the output padding
    /// `(H + 2p - k) mod s` restores the input size (as Burn's own `conv2d_x_backward`).
    pub fn input_gradient(
        kernel: Tensor<4>,
        upstream: Tensor<4>,
        input_size: [usize; 2],
    ) -> Tensor<4> {
        let o = Self::options();
        let options =
            super::operator::adjoint_options(&kernel, o.stride[0], o.padding[0].0, input_size);
        conv_transpose2d(upstream, kernel, None, options)
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
    /// A `[d_in] -> [d_out]` layer with PyTorch's default init, then its spectral state.
    pub fn new(
        d_in: usize,
        d_out: usize,
        spectral: Option<SpectralOptions>,
        device: &Device,
    ) -> Self {
        let (weight, bias, spectral) = init_layer([d_out, d_in], d_in, spectral, device);
        Self {
            weight,
            bias,
            spectral,
        }
    }

    /// The weight as used in the forward pass, `[out, in]`.
    pub fn kernel(&self) -> Tensor<2> {
        forward_kernel(&self.spectral, self.weight.val())
    }

    /// `[B, in]` -> `[B, out]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.forward_with(self.kernel(), x)
    }

    /// The forward pass with a given `[out, in]` kernel.
    pub fn forward_with(&self, kernel: Tensor<2>, x: Tensor<2>) -> Tensor<2> {
        // (W x^T)^T rather than x W^T: the kernel then reaches its gradient through a matmul
        // (a dense tensor), not through a transpose (a strided view). On Burn 0.22's wgpu
        // backend (seen on lavapipe) Adam turned such a strided [1, in] gradient into NaN.
        let out = kernel.matmul(x.transpose()).transpose(); // [B, out]
        out + self.bias.val().unsqueeze::<2>()
    }

    /// `upstream` `[B, out]` -> d loss / d input `[B, in]`: a product with the kernel.
    pub fn input_gradient(kernel: Tensor<2>, upstream: Tensor<2>) -> Tensor<2> {
        upstream.matmul(kernel)
    }
}

/// The kernels of every critic layer as used in one forward pass.
pub struct Kernels {
    /// One per convolution, `[out, in, 4, 4]`.
    pub convs: Vec<Tensor<4>>,
    /// The head, `[1, in]`.
    pub head: Tensor<2>,
}

/// The critic (discriminator) of the WGAN.
#[derive(Module, Debug)]
pub struct Critic {
    /// Downsampling convolutions, each followed by LeakyReLU.
    pub convs: Vec<CriticConv>,
    /// `[B, 4*4*C] -> [B, 1]`.
    pub head: CriticLinear,
    /// GroupSort (pairs of channels) instead of LeakyReLU after each convolution.
    pub groupsort: bool,
}

impl Critic {
    /// A critic for `image_size` x `image_size` x `channels` images: n = log2(image_size/4)
    /// convolutions from `width` channels, doubling. `spectral` puts spectral-norm state on
    /// every layer.
    pub fn new(
        image_size: usize,
        channels: usize,
        width: usize,
        spectral: Option<SpectralOptions>,
        device: &Device,
    ) -> Self {
        let n = super::depth(image_size);
        let mut convs = Vec::with_capacity(n);
        let (mut c_in, mut c_out) = (channels, width);
        for i in 0..n {
            convs.push(CriticConv::new(
                c_in,
                c_out,
                image_size >> i,
                spectral,
                device,
            ));
            (c_in, c_out) = (c_out, c_out * 2);
        }
        let head = CriticLinear::new(16 * c_in, 1, spectral, device);
        Self {
            convs,
            head,
            groupsort: false,
        }
    }

    /// The same critic with `activation` after each convolution.
    pub fn with_activation(mut self, activation: Activation) -> Self {
        self.groupsort = activation == Activation::Groupsort;
        self
    }

    /// `[B, C, H, W]` -> `[B, 1]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.forward_with(&self.kernels(), x).0
    }

    /// Recomputes every layer's certified norm bound for the current weights (after an
    /// optimizer step; no-op for layers without `certify`).
    pub fn certify(&self) {
        for conv in &self.convs {
            if let Some(op) = &conv.operator {
                op.certify(&conv.weight.val());
            }
        }
        if let Some(sn) = &self.head.spectral {
            sn.certify(&self.head.weight.val());
        }
    }

    /// Sum over layers of sigma(W)^2 from the persistent power iteration (refined first in
    /// training), differentiable in W; zero without spectral-norm state.
    pub fn squared_spectral_norms(&self) -> Tensor<1> {
        let conv = self.convs.iter().filter_map(|c| {
            if let Some(op) = &c.operator {
                return Some(op.sigma(c.weight.val()).square());
            }
            let sn = c.spectral.as_ref()?;
            Some(sn.sigma(as_matrix(c.weight.val())).square())
        });
        let head = self
            .head
            .spectral
            .as_ref()
            .map(|sn| sn.sigma(self.head.weight.val()).square());
        let device = self.head.weight.val().device();
        conv.chain(head)
            .fold(Tensor::zeros([1], &device), |acc, s| acc + s)
    }

    /// The kernels as used in the forward pass; under spectral normalization in training this
    /// runs the power iteration, once per call.
    pub fn kernels(&self) -> Kernels {
        Kernels {
            convs: self.convs.iter().map(CriticConv::kernel).collect(),
            head: self.head.kernel(),
        }
    }

    /// The forward pass with given kernels: the output `[B, 1]` and the pre-activation of
    /// every convolution (`[B, c_i, H/2^i, W/2^i]`), which the input gradient needs.
    pub fn forward_with(&self, kernels: &Kernels, x: Tensor<4>) -> (Tensor<2>, Vec<Tensor<4>>) {
        let mut h = x;
        let mut pre_activations = Vec::with_capacity(self.convs.len());
        for (conv, kernel) in self.convs.iter().zip(&kernels.convs) {
            let a = conv.forward_with(kernel.clone(), h); // [B, c, H/2^i, W/2^i]
            h = if self.groupsort {
                group_sort(a.clone())
            } else {
                leaky_relu(a.clone(), LEAKY_SLOPE)
            };
            pre_activations.push(a);
        }
        let out = self
            .head
            .forward_with(kernels.head.clone(), h.flatten(1, 3)); // [B, 1]
        (out, pre_activations)
    }

    /// `grad_x sum_b f(x_b)` `[B, C, H, W]` (each sample's gradient of its own score), written
    /// with differentiable tensor ops so that a loss on it (the gradient penalty) has its
    /// exact gradient with respect to every critic parameter under first-order autodiff.
    ///
    /// The forward pass that gives the LeakyReLU masks runs on detached kernels and input:
    /// the masks are constants, and nothing else of that pass is needed.
    pub fn input_gradient(&self, x: Tensor<4>) -> Tensor<4> {
        let kernels = self.kernels();
        let detached = Kernels {
            convs: kernels.convs.iter().map(|k| k.clone().detach()).collect(),
            head: kernels.head.clone().detach(),
        };
        let [batch, _, height, width] = x.dims();
        let (out, pre_activations) = self.forward_with(&detached, x.detach());
        // Spatial size of each convolution's input: the image, then each earlier output.
        let mut input_sizes = vec![[height, width]];
        input_sizes.extend(pre_activations.iter().map(|a| [a.dims()[2], a.dims()[3]]));
        input_sizes.pop(); // the last output is no convolution's input
        let [_, c, h, w] = pre_activations.last().expect("at least one conv").dims();
        let upstream = Tensor::ones_like(&out); // [B, 1]: d sum(f) / d f
        let g = CriticLinear::input_gradient(kernels.head, upstream); // [B, 16 c]
        let mut g = g.reshape([batch, c, h, w]);
        let layers = kernels
            .convs
            .into_iter()
            .zip(pre_activations)
            .zip(input_sizes);
        for ((kernel, a), size) in layers.rev() {
            g = if self.groupsort {
                group_sort_backward(a, g) // through GroupSort: a permutation
            } else {
                leaky_relu_backward(a, g, LEAKY_SLOPE) // through LeakyReLU
            };
            g = CriticConv::input_gradient(kernel, g, size); // [B, c_in, size]
        }
        g
    }
}

/// GroupSort with groups of 2 (MaxMin, Anil et al. 2019) over channels: each pair of channels
/// (2k, 2k+1) becomes (max, min), elementwise. `[B, C, H, W]` -> `[B, C, H, W]`, C even.
/// Differentiable (a selection), 1-Lipschitz and gradient-norm preserving.
pub fn group_sort(x: Tensor<4>) -> Tensor<4> {
    let (a, b, first) = pairs(x.clone());
    let max = b.clone().mask_where(first.clone(), a.clone());
    let min = a.mask_where(first, b);
    unpair(max, min, x.dims())
}

/// The input gradient of [`group_sort`] at pre-activation `x`: `upstream` `[B, C, H, W]` routed
/// back through the permutation (the max's gradient to the larger of each pair), with the
/// selection a constant, so that it is differentiable in `upstream` (exactly, as GroupSort's
/// second derivative is zero almost everywhere).
pub fn group_sort_backward(x: Tensor<4>, upstream: Tensor<4>) -> Tensor<4> {
    let (_, _, first) = pairs(x.detach());
    let (g_max, g_min) = pairs_of(upstream.clone());
    let g_a = g_min.clone().mask_where(first.clone(), g_max.clone());
    let g_b = g_max.mask_where(first, g_min);
    unpair(g_a, g_b, upstream.dims())
}

/// The two members `[B, C/2, H, W]` of each channel pair and where the first is the larger.
fn pairs(x: Tensor<4>) -> (Tensor<4>, Tensor<4>, Tensor<4, Bool>) {
    let (a, b) = pairs_of(x);
    let first = a.clone().greater_equal(b.clone());
    (a, b, first)
}

/// The first and second member `[B, C/2, H, W]` of each channel pair.
fn pairs_of(x: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
    let [batch, c, h, w] = x.dims();
    let x = x.reshape([batch, c / 2, 2, h * w]);
    let a = x
        .clone()
        .slice([0..batch, 0..c / 2, 0..1, 0..h * w])
        .reshape([batch, c / 2, h, w]);
    let b = x
        .slice([0..batch, 0..c / 2, 1..2, 0..h * w])
        .reshape([batch, c / 2, h, w]);
    (a, b)
}

/// Interleaves `[B, C/2, H, W]` halves back into channel pairs `[B, C, H, W]`.
fn unpair(first: Tensor<4>, second: Tensor<4>, dims: [usize; 4]) -> Tensor<4> {
    let [batch, c, h, w] = dims;
    let first = first.reshape([batch, c / 2, 1, h * w]);
    let second = second.reshape([batch, c / 2, 1, h * w]);
    Tensor::cat(vec![first, second], 2).reshape([batch, c, h, w])
}

/// A layer's weight (`[out, ...]`) and bias with PyTorch's default init, then its spectral
/// state (drawn in this order from the device RNG).
fn init_layer<const D: usize>(
    shape: [usize; D],
    fan_in: usize,
    spectral: Option<SpectralOptions>,
    device: &Device,
) -> (Param<Tensor<D>>, Param<Tensor<1>>, Option<SpectralNorm>) {
    let weight = torch_default_init(shape, fan_in, device);
    let bias = torch_default_init([shape[0]], fan_in, device);
    let spectral = spectral.map(|options| SpectralNorm::new(&weight.val(), options));
    (weight, bias, spectral)
}

/// `weight / sigma` when the layer is spectrally normalized in the forward pass, else `weight`.
fn forward_kernel<const D: usize>(spectral: &Option<SpectralNorm>, weight: Tensor<D>) -> Tensor<D> {
    match spectral {
        Some(sn) if sn.in_forward => sn.normalize(weight),
        _ => weight,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::spectral::SpectralOptions;
    use burn::tensor::Distribution;

    #[test]
    fn explicit_input_gradient_equals_autodiff_first_order_gradient() {
        let device = Device::flex().autodiff();
        device.seed(21);
        let sn = Some(SpectralOptions {
            power_iterations: 1,
            in_forward: true,
            operator: false,
            certify: false,
        });
        // (image size, channels, width, spectral norm)
        let op = sn.map(|o| SpectralOptions {
            operator: true,
            ..o
        });
        let gs = Activation::Groupsort;
        let lr = Activation::LeakyRelu;
        for (size, channels, width, spectral, activation) in [
            (32, 1, 4, None, lr),
            (32, 3, 8, sn, lr),
            (64, 3, 4, None, lr),
            (64, 1, 2, sn, lr),
            (128, 3, 2, None, lr),
            (32, 3, 8, op, lr),
            (32, 1, 4, op, gs),
            (64, 3, 2, None, gs),
        ] {
            // Frozen: no power iteration between the two passes, no weight gradients.
            let critic = Critic::new(size, channels, width, spectral, &device)
                .with_activation(activation)
                .freeze();
            let x = Tensor::<4>::random(
                [3, channels, size, size],
                Distribution::Normal(0.0, 1.0),
                &device,
            )
            .require_grad();
            let autodiff = x.grad(&critic.forward(x.clone()).sum().backward()).unwrap();
            let explicit = critic.input_gradient(x);
            let scale = autodiff.clone().abs().max().into_scalar::<f32>();
            let diff = (explicit - autodiff).abs().max().into_scalar::<f32>();
            assert!(
                scale > 0.0 && diff <= 1e-5 * scale,
                "{size}x{size}x{channels} w{width}: {diff} vs {scale}"
            );
        }
    }

    /// GroupSort against its definition on the host: each channel pair (2k, 2k+1) becomes
    /// (max, min) elementwise; its backward routes each pair's gradients by the same selection
    /// and equals autodiff's gradient of sum(w * group_sort(x)).
    #[test]
    fn group_sort_and_its_backward_equal_their_definitions() {
        let device = Device::flex().autodiff();
        device.seed(5);
        let shape = [2, 6, 3, 4];
        let x = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device).require_grad();
        let w = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
        let host =
            |t: Tensor<4>| -> Vec<f32> { t.into_data().convert::<f32>().try_to_vec().unwrap() };
        let (xs, ws) = (host(x.clone()), host(w.clone()));
        let y = group_sort(x.clone());
        let autodiff = host(x.grad(&(y.clone() * w.clone()).sum().backward()).unwrap());
        let explicit = host(group_sort_backward(x.clone(), w));
        let ys = host(y);
        let plane = 3 * 4;
        let mut expected_y = vec![0.0f32; xs.len()];
        let mut expected_g = vec![0.0f32; xs.len()];
        for b in 0..2 {
            for k in 0..3 {
                for p in 0..plane {
                    let i = b * 6 * plane + 2 * k * plane + p; // channel 2k
                    let j = i + plane; // channel 2k + 1
                    let (a, c) = (xs[i], xs[j]);
                    expected_y[i] = a.max(c);
                    expected_y[j] = a.min(c);
                    // d out_i / d x: the max takes the larger input's place.
                    let (gi, gj) = if a >= c {
                        (ws[i], ws[j])
                    } else {
                        (ws[j], ws[i])
                    };
                    expected_g[i] = gi;
                    expected_g[j] = gj;
                }
            }
        }
        assert_eq!(ys, expected_y);
        assert_eq!(explicit, expected_g);
        assert_eq!(autodiff, expected_g);
    }
}

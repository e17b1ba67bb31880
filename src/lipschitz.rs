//! Lipschitz diagnostics of the critic: the spectral norm of every layer's kernel as used in the
//! forward pass, their product, and the critic's input-gradient norms on real images, generated
//! images and interpolates.
//!
//! Norms are of the matrix view `[out, in*kh*kw]` that spectral normalization divides by its
//! sigma. With LeakyReLU (slope < 1) the product of the layers' operator norms bounds the
//! critic's Lipschitz constant; for the 4x4 stride-2 convolutions the matrix-view norm is what
//! SN controls, and the convolution's operator norm can exceed it (by at most
//! `ceil(k/s) = 2`, the overlap of the windows): the gradient norms measure the real thing.

use crate::model::bound::{conv_bound, matrix_bound};
use crate::model::critic::{Critic, CriticConv};
use crate::model::spectral::{SpectralNorm, as_matrix};
use burn::prelude::*;
use burn::tensor::module::conv2d;
use nalgebra::DMatrix;
use serde::{Deserialize, Serialize};

/// One critic layer's norms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerNorms {
    /// Exact largest singular value of the kernel as used in the forward pass (under spectral
    /// normalization: of `W / sigma_pi`).
    pub sigma: f64,
    /// Exact largest singular value of the stored kernel `W`.
    pub sigma_raw: f64,
    /// The power-iteration estimate `u^T W v` of `sigma_raw` from the persistent `u`, `v`
    /// (spectral_norm and spectral_penalty only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sigma_pi: Option<f64>,
}

impl LayerNorms {
    /// `|sigma_pi - sigma_raw| / sigma_raw`, where there is a power iteration.
    pub fn relative_error(&self) -> Option<f64> {
        self.sigma_pi
            .map(|pi| (pi - self.sigma_raw).abs() / self.sigma_raw)
    }
}

/// Mean and maximum of per-sample gradient norms.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct NormStats {
    /// Mean over the batch.
    pub mean: f64,
    /// Maximum over the batch.
    pub max: f64,
}

/// Everything [`diagnose`] measures; one field of a metrics line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lipschitz {
    /// One per layer, convolutions first, then the head.
    pub layers: Vec<LayerNorms>,
    /// Product of the layers' `sigma`.
    pub bound: f64,
    /// `||grad_x f||` on real images.
    pub grad_real: NormStats,
    /// On generated images.
    pub grad_fake: NormStats,
    /// On interpolates `e x_real + (1 - e) x_fake`.
    pub grad_interpolates: NormStats,
    /// Each layer's norm as an operator, as used in the forward pass (convolutions on their
    /// input shape by power iteration, then the head): a true Lipschitz constant per layer.
    #[serde(default)]
    pub operator_norms: Vec<f64>,
    /// A certified upper bound on each layer's norm as used ([`crate::model::bound`]:
    /// convolutions by the circular polyphase bound and Gram iteration, then the head); each
    /// is at least the corresponding `operator_norms` entry.
    #[serde(default)]
    pub operator_bounds: Vec<f64>,
    /// Whether the product of `operator_bounds` is at most 1 (+ [`CERTIFY_TOLERANCE`]): the
    /// critic is then provably 1-Lipschitz (LeakyReLU and GroupSort are 1-Lipschitz).
    #[serde(default)]
    pub certified: bool,
}

/// Slack on 1 for [`Lipschitz::certified`] (f32 rounding of the kernels as used).
pub const CERTIFY_TOLERANCE: f64 = 1e-3;

/// Power-iteration steps for the convolutions' operator norms in the diagnostics.
pub const OPERATOR_NORM_STEPS: usize = 100;

impl Lipschitz {
    /// The largest [`LayerNorms::relative_error`] over the layers, where there is one.
    pub fn max_sigma_error(&self) -> Option<f64> {
        self.layers
            .iter()
            .filter_map(LayerNorms::relative_error)
            .reduce(f64::max)
    }
}

/// Exact largest singular value of a matrix: the square root of the largest eigenvalue of the
/// smaller Gram matrix (`M M^T` or `M^T M`), in f64.
pub fn largest_singular_value(m: &DMatrix<f64>) -> f64 {
    let gram = if m.nrows() <= m.ncols() {
        m * m.transpose()
    } else {
        m.transpose() * m
    };
    gram.symmetric_eigenvalues().max().max(0.0).sqrt()
}

/// A tensor's matrix view `[out, rest]` on the host in f64.
pub fn host_matrix<const D: usize>(kernel: Tensor<D>) -> DMatrix<f64> {
    let matrix = as_matrix(kernel);
    let [rows, cols] = matrix.dims();
    let values = matrix
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("f32 data");
    // Row-major values -> column-major matrix.
    DMatrix::from_row_iterator(rows, cols, values.into_iter().map(f64::from))
}

/// Operator norm of a critic convolution with `kernel` (`[out, in, 4, 4]`, stride 2,
/// padding 1, as used in the forward pass) on `[in, size, size]` inputs: `steps` power
/// iterations on `K^T K`, with the convolution and its adjoint (the transposed convolution).
/// Bias does not matter. Unlike the matrix view's norm this is the layer's true Lipschitz
/// constant, so the product over the layers is a true bound on the critic's.
pub fn conv_operator_norm(kernel: Tensor<4>, size: usize, steps: usize) -> f64 {
    let [_, c_in, _, _] = kernel.dims();
    let device = kernel.device();
    let n = c_in * size * size;
    // A fixed, full-support start (cosines of distinct frequencies), normalized.
    let start: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.7548 + 0.3).cos()).collect();
    let mut x = Tensor::<4>::from_data(TensorData::new(start, [1, c_in, size, size]), &device);
    let conv = |x: Tensor<4>| conv2d(x, kernel.clone(), None, CriticConv::options());
    let unit = |x: Tensor<4>| {
        let norm = x.clone().square().sum().sqrt().into_scalar::<f32>();
        x.div_scalar(norm.max(1e-30))
    };
    x = unit(x);
    for _ in 0..steps {
        let y = conv(x.clone());
        x = unit(CriticConv::input_gradient(kernel.clone(), y, [size, size]));
    }
    conv(x).square().sum().sqrt().into_scalar::<f32>() as f64
}

/// The exact operator norm of a critic convolution with `kernel` on `[in, size, size]` inputs:
/// the largest singular value of the convolution written out as a dense matrix (f64; column j
/// is the convolution of the j-th basis image). For small layers (tests, small images).
pub fn conv_operator_norm_exact(kernel: Tensor<4>, size: usize) -> f64 {
    let [_, c_in, _, _] = kernel.dims();
    let n = c_in * size * size;
    let device = kernel.device();
    let mut eye = vec![0.0f32; n * n];
    for j in 0..n {
        eye[j * n + j] = 1.0;
    }
    let basis = Tensor::<4>::from_data(TensorData::new(eye, [n, c_in, size, size]), &device);
    let columns = conv2d(basis, kernel, None, CriticConv::options()).flatten::<2>(1, 3); // [n, m]
    // Rows of `columns` are the matrix's columns: its transpose has the same singular values.
    largest_singular_value(&host_matrix(columns))
}

/// The operator norm of every critic convolution (kernels as used in the forward pass, inputs
/// of an `image_size` image), by power iteration.
pub fn conv_operator_norms(critic: &Critic, image_size: usize, steps: usize) -> Vec<f64> {
    critic
        .convs
        .iter()
        .enumerate()
        .map(|(i, c)| conv_operator_norm(c.kernel().detach(), image_size >> i, steps))
        .collect()
}

/// A certified upper bound on the norm of every critic layer as used in the forward pass
/// (convolutions on the inputs of an `image_size` image, then the head).
pub fn operator_bounds(critic: &Critic, image_size: usize) -> Vec<f64> {
    let o = CriticConv::options();
    critic
        .convs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let size = image_size >> i;
            conv_bound(
                &c.kernel().detach(),
                [size, size],
                o.stride[0],
                o.padding[0].0,
            )
        })
        .chain(std::iter::once(matrix_bound(
            &critic.head.kernel().detach(),
        )))
        .collect()
}

/// One layer's raw kernel (matrix view) and its spectral-norm state.
fn layer_norms(
    matrix: DMatrix<f64>,
    spectral: Option<&SpectralNorm>,
    kernel: &Tensor<2>,
    operator_divisor: Option<f64>,
) -> LayerNorms {
    let sigma_raw = largest_singular_value(&matrix);
    let sigma_pi = spectral.map(|sn| sn.estimate(kernel) as f64);
    let divides = spectral.is_some_and(|sn| sn.in_forward);
    let divisor = spectral.map(|sn| sn.divisor(kernel) as f64);
    let sigma = match (divides, divisor, operator_divisor) {
        (true, Some(d), _) => sigma_raw / d,
        (_, _, Some(op)) => sigma_raw / op,
        _ => sigma_raw,
    };
    LayerNorms {
        sigma,
        sigma_raw,
        sigma_pi,
    }
}

/// The norms of every critic layer, convolutions first, then the head. Reads `u`, `v`; does not
/// refine them.
pub fn layers(critic: &Critic) -> Vec<LayerNorms> {
    let convs = critic.convs.iter().map(|c| {
        let w = as_matrix(c.weight.val()).detach();
        // Under operator normalization the kernel is divided by the operator-norm estimate
        // (or its certified bound).
        let divisor = c
            .operator
            .as_ref()
            .filter(|op| op.in_forward)
            .map(|op| op.divisor(&c.weight.val()) as f64);
        layer_norms(host_matrix(w.clone()), c.spectral.as_ref(), &w, divisor)
    });
    let head = {
        let w = critic.head.weight.val().detach();
        layer_norms(
            host_matrix(w.clone()),
            critic.head.spectral.as_ref(),
            &w,
            None,
        )
    };
    convs.chain(std::iter::once(head)).collect()
}

/// Per-sample `||grad_x f(x)||` statistics of `critic` (use an inference copy, `valid()`, so
/// that no power iteration runs) on `x` `[B, C, H, W]`.
pub fn gradient_norms(critic: &Critic, x: Tensor<4>) -> NormStats {
    let g = critic.input_gradient(x).flatten::<2>(1, 3); // [B, CHW]
    let norms: Vec<f32> = g
        .square()
        .sum_dim(1)
        .sqrt()
        .into_data()
        .convert::<f32>()
        .try_to_vec()
        .expect("f32 data");
    NormStats {
        mean: norms.iter().map(|&n| n as f64).sum::<f64>() / norms.len() as f64,
        max: norms.iter().fold(0.0, |m, &n| m.max(n as f64)),
    }
}

/// All diagnostics of `critic` (an inference copy) on a real batch, a generated batch and their
/// interpolates with weights `epsilon` `[B, 1, 1, 1]`.
pub fn diagnose(
    critic: &Critic,
    real: Tensor<4>,
    fake: Tensor<4>,
    epsilon: Tensor<4>,
) -> Lipschitz {
    let layers = layers(critic);
    let bound = layers.iter().map(|l| l.sigma).product();
    let size = real.dims()[2];
    let mut operator_norms = conv_operator_norms(critic, size, OPERATOR_NORM_STEPS);
    operator_norms.push(layers.last().map_or(1.0, |head| head.sigma)); // linear: its matrix
    let operator_bounds = operator_bounds(critic, size);
    let interpolates = crate::constraint::interpolates(crate::constraint::PenaltyInputs {
        real: real.clone(),
        fake: fake.clone(),
        epsilon,
    });
    Lipschitz {
        layers,
        bound,
        grad_real: gradient_norms(critic, real),
        grad_fake: gradient_norms(critic, fake),
        grad_interpolates: gradient_norms(critic, interpolates),
        certified: operator_bounds.iter().product::<f64>() <= 1.0 + CERTIFY_TOLERANCE,
        operator_norms,
        operator_bounds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::spectral::SpectralOptions;
    use burn::module::{Module, ModuleMapper, Param};
    use burn::tensor::Distribution;
    use rand::{Rng, SeedableRng};

    fn critic(spectral: bool, device: &Device) -> Critic {
        let options = spectral.then_some(SpectralOptions {
            power_iterations: 1,
            in_forward: true,
            operator: false,
            certify: false,
        });
        Critic::new(32, 3, 8, options, device)
    }

    fn images(device: &Device) -> Tensor<4> {
        Tensor::random([8, 3, 32, 32], Distribution::Uniform(-1.0, 1.0), device)
    }

    #[test]
    fn spectrally_normalized_layers_have_norm_one_and_gradients_at_most_one() {
        let device = Device::flex().autodiff();
        device.seed(4);
        let mut critic = critic(true, &device);
        // Training forwards, one power iteration each, as in training: u, v converge to W's
        // top singular pair (the warm-up alone leaves up to ~0.5%, and 100 forwards up to ~1%
        // on a layer whose top two singular values are close).
        let x = images(&device).narrow(0, 0, 1);
        for _ in 0..500 {
            let _ = critic.forward(x.clone());
        }
        critic = critic.valid();
        let d = diagnose(
            &critic,
            images(&Device::flex()),
            images(&Device::flex()),
            Tensor::random([8, 1, 1, 1], Distribution::Default, &Device::flex()),
        );
        for (i, l) in d.layers.iter().enumerate() {
            assert!((l.sigma - 1.0).abs() < 1e-3, "layer {i}: {l:?}");
            assert!(l.sigma_raw > 0.0 && l.sigma_pi.is_some());
        }
        assert!((d.bound - 1.0).abs() < 5e-3, "bound {}", d.bound);
        for g in [d.grad_real, d.grad_fake, d.grad_interpolates] {
            assert!(g.max <= 1.0 && g.mean <= g.max && g.mean > 0.0, "{g:?}");
        }
    }

    /// Scales every kernel of layer l by 10 and its bias by 10^(l+1): each pre-activation is
    /// then 10^(l+1) times the original, LeakyReLU's pattern is unchanged, and the input
    /// gradient is exactly 10^layers times the original.
    struct Scale {
        layer: usize,
    }

    impl ModuleMapper for Scale {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let is_bias = D == 1;
            let factor = if is_bias {
                let f = 10f32.powi(self.layer as i32 + 1);
                self.layer += 1;
                f
            } else {
                10.0
            };
            let (id, tensor, mapper) = param.consume();
            Param::from_mapped_value(id, tensor.mul_scalar(factor), mapper)
        }
    }

    #[test]
    fn an_unconstrained_critic_scaled_by_ten_grows_accordingly() {
        let device = Device::flex();
        let critic = critic(false, &device);
        let scaled = critic.clone().map(&mut Scale { layer: 0 });
        let (real, fake) = (images(&device), images(&device));
        let epsilon = Tensor::random([8, 1, 1, 1], Distribution::Default, &device);
        let a = diagnose(&critic, real.clone(), fake.clone(), epsilon.clone());
        let b = diagnose(&scaled, real, fake, epsilon);
        let n = a.layers.len();
        assert_eq!(n, 4, "3 convolutions and the head");
        for (x, y) in a.layers.iter().zip(&b.layers) {
            assert!((y.sigma / x.sigma - 10.0).abs() < 1e-4, "{x:?} -> {y:?}");
            assert!(x.sigma_pi.is_none());
        }
        let growth = 10f64.powi(n as i32);
        assert!((b.bound / a.bound / growth - 1.0).abs() < 1e-4);
        for (x, y) in [
            (a.grad_real, b.grad_real),
            (a.grad_fake, b.grad_fake),
            (a.grad_interpolates, b.grad_interpolates),
        ] {
            assert!(
                (y.max / x.max / growth - 1.0).abs() < 1e-3,
                "{x:?} -> {y:?}"
            );
            assert!(
                (y.mean / x.mean / growth - 1.0).abs() < 1e-3,
                "{x:?} -> {y:?}"
            );
        }
    }

    /// Against the convolution written out as a dense matrix (its columns are the images of the
    /// basis vectors) and nalgebra's SVD of it.
    #[test]
    fn conv_operator_norm_matches_the_svd_of_the_dense_convolution() {
        let device = Device::flex();
        device.seed(6);
        let (c_in, c_out, size) = (2, 3, 8);
        let kernel =
            Tensor::<4>::random([c_out, c_in, 4, 4], Distribution::Normal(0.0, 1.0), &device);
        let n = c_in * size * size;
        let basis = Tensor::<2>::eye(n, &device).reshape([n, c_in, size, size]);
        let images = conv2d(basis, kernel.clone(), None, CriticConv::options()); // [n, out, 4, 4]
        let m = host_matrix(images).transpose(); // [out*16, n]
        let svd = m.singular_values().max();
        let ours = conv_operator_norm(kernel.clone(), size, 200);
        assert!((ours - svd).abs() <= 1e-4 * svd, "{ours} vs {svd}");
        // And it lies between the matrix view's norm and twice it.
        let view = largest_singular_value(&host_matrix(kernel));
        assert!(ours <= 2.0 * view + 1e-9, "{ours} > 2 x {view}");
    }

    #[test]
    fn largest_singular_value_agrees_with_nalgebras_svd() {
        let device = Device::flex();
        let critic = critic(false, &device);
        for conv in &critic.convs {
            let m = host_matrix(conv.weight.val());
            let svd = m.clone().singular_values().max();
            let ours = largest_singular_value(&m);
            assert!((ours - svd).abs() <= 1e-10 * svd, "{ours} vs {svd}");
        }
        // Tall and wide shapes with known singular values: U diag(s) V^T.
        for (rows, cols) in [(5, 40), (40, 5)] {
            let k = rows.min(cols);
            let q = |n: usize| {
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(n as u64);
                DMatrix::<f64>::from_fn(n, n, |_, _| rng.random_range(-1.0..1.0))
                    .qr()
                    .q()
            };
            let (u, v) = (q(rows), q(cols));
            let mut s = DMatrix::<f64>::zeros(rows, cols);
            for i in 0..k {
                s[(i, i)] = 3.0 - i as f64 * 0.5;
            }
            let m = u * s * v.transpose();
            assert!((largest_singular_value(&m) - 3.0).abs() < 1e-10);
        }
    }
}

//! gan_toy.py's networks: MLPs with ReLU, `width` wide, `hidden` hidden layers. The critic's
//! layers are the image critic's [`CriticLinear`] (PyTorch's init, optional spectral
//! normalization with a persistent u), and its input gradient is written with differentiable
//! ops, as the image critic's is, so that the gradient penalty is exact.

use crate::model::critic::CriticLinear;
use crate::model::spectral::SpectralOptions;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::relu;

/// The generator: `[B, z]` -> `[B, 2]`, ReLU after every hidden layer.
#[derive(Module, Debug)]
pub struct ToyGenerator {
    /// `z -> width`, `hidden - 1` x `width -> width`, `width -> 2`.
    pub layers: Vec<Linear>,
}

impl ToyGenerator {
    /// An MLP from `z_dim` to 2 with `hidden` ReLU layers of `width`.
    pub fn new(z_dim: usize, width: usize, hidden: usize, device: &Device) -> Self {
        let dims = layer_dims(z_dim, width, hidden, 2);
        let layers = dims
            .iter()
            .map(|&(i, o)| LinearConfig::new(i, o).init(device))
            .collect();
        Self { layers }
    }

    /// `[B, z]` -> `[B, 2]`.
    pub fn forward(&self, z: Tensor<2>) -> Tensor<2> {
        let last = self.layers.len() - 1;
        let mut h = z;
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward(h);
            if i < last {
                h = relu(h);
            }
        }
        h
    }
}

/// The critic: `[B, 2]` -> `[B, 1]`, ReLU after every hidden layer.
#[derive(Module, Debug)]
pub struct ToyCritic {
    /// `2 -> width`, `hidden - 1` x `width -> width`, `width -> 1`.
    pub layers: Vec<CriticLinear>,
}

impl ToyCritic {
    /// An MLP from 2 to 1 with `hidden` ReLU layers of `width`; `spectral` puts spectral-norm
    /// state on every layer.
    pub fn new(
        width: usize,
        hidden: usize,
        spectral: Option<SpectralOptions>,
        device: &Device,
    ) -> Self {
        let layers = layer_dims(2, width, hidden, 1)
            .iter()
            .map(|&(i, o)| CriticLinear::new(i, o, spectral, device))
            .collect();
        Self { layers }
    }

    /// The kernels `[out, in]` as used in the forward pass (`W / sigma` under spectral
    /// normalization; in training on an autodiff device each call runs the power iteration).
    pub fn kernels(&self) -> Vec<Tensor<2>> {
        self.layers.iter().map(CriticLinear::kernel).collect()
    }

    /// `[B, 2]` -> `[B, 1]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.forward_with(&self.kernels(), x).0
    }

    /// The forward pass with given kernels: the output `[B, 1]` and every hidden layer's
    /// pre-activation `[B, width]`.
    pub fn forward_with(&self, kernels: &[Tensor<2>], x: Tensor<2>) -> (Tensor<2>, Vec<Tensor<2>>) {
        let last = self.layers.len() - 1;
        let mut h = x;
        let mut pre = Vec::with_capacity(last);
        for (i, (layer, kernel)) in self.layers.iter().zip(kernels).enumerate() {
            let a = layer.forward_with(kernel.clone(), h);
            if i < last {
                h = relu(a.clone());
                pre.push(a);
            } else {
                h = a;
            }
        }
        (h, pre)
    }

    /// `grad_x f(x_b)` for each row, `[B, 2]`, with differentiable ops:
    /// `W_1^T (m_1 ⊙ W_2^T (m_2 ⊙ ... W_L^T 1))`, the ReLU masks `m_i` constants (ReLU's second
    /// derivative is zero almost everywhere), so that autodiff of a loss on it (the gradient
    /// penalty) gives its exact gradient in every kernel.
    pub fn input_gradient(&self, x: Tensor<2>) -> Tensor<2> {
        self.input_gradient_with(self.kernels(), x)
    }

    /// [`input_gradient`](Self::input_gradient) with given kernels (no power iteration).
    pub fn input_gradient_with(&self, kernels: Vec<Tensor<2>>, x: Tensor<2>) -> Tensor<2> {
        let detached: Vec<Tensor<2>> = kernels.iter().map(|k| k.clone().detach()).collect();
        let (out, pre) = self.forward_with(&detached, x.detach());
        let mut g = Tensor::ones_like(&out); // [B, 1]
        let mut kernels = kernels;
        let head = kernels.pop().expect("at least one layer");
        g = CriticLinear::input_gradient(head, g); // [B, width]
        for (kernel, a) in kernels.into_iter().zip(pre).rev() {
            // Through ReLU: zero where the pre-activation is <= 0 (a constant mask).
            g = CriticLinear::input_gradient(kernel, g.mask_fill(a.lower_equal_elem(0.0), 0.0));
        }
        g
    }
}

/// `(in, out)` of each layer: `d_in -> width`, `hidden - 1` x `width -> width`, `width -> d_out`.
fn layer_dims(d_in: usize, width: usize, hidden: usize, d_out: usize) -> Vec<(usize, usize)> {
    let mut dims = vec![(d_in, width)];
    dims.extend((1..hidden).map(|_| (width, width)));
    dims.push((width, d_out));
    dims
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Casts every float tensor to f64.
    struct ToF64;
    impl burn::module::ModuleMapper for ToF64 {
        fn map_float<const D: usize>(
            &mut self,
            param: burn::module::Param<Tensor<D>>,
        ) -> burn::module::Param<Tensor<D>> {
            let (id, t, mapper) = param.consume();
            burn::module::Param::from_mapped_value(id, t.cast(burn::tensor::DType::F64), mapper)
        }
    }

    fn values(t: Tensor<2>) -> Vec<f64> {
        t.into_data().convert::<f64>().try_to_vec().unwrap()
    }

    /// The hand-written input gradient equals central finite differences of the critic, with
    /// and without spectral normalization (f64, points away from ReLU kinks).
    #[test]
    fn input_gradient_equals_finite_differences() {
        let device = Device::flex();
        device.seed(4);
        for spectral in [
            None,
            Some(SpectralOptions {
                power_iterations: 1,
                in_forward: true,
                operator: false,
                certify: false,
            }),
        ] {
            let critic = ToyCritic::new(16, 3, spectral, &device);
            let points = [[0.3f64, -0.7], [-1.2, 0.4], [0.05, 1.6]];
            let x = Tensor::<2>::from_data(
                TensorData::new(points.concat(), [3, 2]),
                (&device, burn::tensor::DType::F64),
            );
            let critic = critic.map(&mut ToF64);
            let grad = values(critic.input_gradient(x));
            let h = 1e-6;
            for (b, p) in points.iter().enumerate() {
                for axis in 0..2 {
                    let f = |d: f64| {
                        let mut q = *p;
                        q[axis] += d;
                        let t = Tensor::<2>::from_data(
                            TensorData::new(q.to_vec(), [1, 2]),
                            (&device, burn::tensor::DType::F64),
                        );
                        values(critic.forward(t))[0]
                    };
                    let fd = (f(h) - f(-h)) / (2.0 * h);
                    let g = grad[b * 2 + axis];
                    assert!(
                        (g - fd).abs() < 1e-6 * (1.0 + fd.abs()),
                        "{spectral:?} point {b} axis {axis}: {g} vs {fd}"
                    );
                }
            }
        }
    }
}

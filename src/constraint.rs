//! The ways of keeping the critic Lipschitz, behind one interface the training loop calls:
//! what the critic is built with ([`Constraint::critic_spectral`]), what is added to the
//! critic loss ([`Constraint::penalty`]) and what happens after each critic step
//! ([`Constraint::after_critic_step`]).

use crate::config::{ConstraintConfig, ConstraintKind};
use crate::model::Critic;
use crate::model::spectral::SpectralOptions;
use burn::module::{Module, ModuleMapper, Param};
use burn::prelude::*;
use burn::tensor::activation::relu;

/// A constraint as the training loop applies it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Constraint {
    /// Spectral normalization of every critic kernel in the forward pass.
    SpectralNorm {
        /// Power-iteration steps per training forward.
        power_iterations: usize,
        /// Convolutions by their operator norm (`norm = "operator"`), not their matrix view's.
        operator: bool,
        /// Layers divided by certified upper bounds on their norms (`certify = true`).
        certify: bool,
    },
    /// WGAN-GP penalty on the input-gradient norm at random interpolates.
    GradientPenalty {
        /// Penalty weight.
        lambda: f64,
        /// Penalize only norms above 1.
        one_sided: bool,
    },
    /// Clamp every critic parameter to [-clip_value, clip_value] after each critic step.
    WeightClipping {
        /// The bound c.
        clip_value: f64,
    },
    /// `lambda` * sum of squared layer spectral norms added to the critic loss.
    SpectralPenalty {
        /// Power-iteration steps per penalty evaluation.
        power_iterations: usize,
        /// Penalty weight.
        lambda: f64,
        /// Convolutions by their operator norm (`norm = "operator"`), not their matrix view's.
        operator: bool,
    },
    /// No constraint (baseline).
    None,
}

/// The inputs of a critic penalty: the real and fake batches `[B, C, S, S]` of the step and
/// `epsilon` `[B, 1, 1, 1]`, uniform in [0, 1], for the gradient penalty's interpolates.
pub struct PenaltyInputs {
    /// Real images.
    pub real: Tensor<4>,
    /// Generated images (constants for the critic).
    pub fake: Tensor<4>,
    /// Interpolation weights.
    pub epsilon: Tensor<4>,
}

impl Constraint {
    /// The constraint a validated config asks for.
    pub fn from_config(config: &ConstraintConfig) -> Self {
        match config.kind {
            ConstraintKind::SpectralNorm => Self::SpectralNorm {
                power_iterations: config.power_iterations(),
                operator: config.operator(),
                certify: config.certify(),
            },
            ConstraintKind::GradientPenalty => Self::GradientPenalty {
                lambda: config.lambda(),
                one_sided: config.one_sided(),
            },
            ConstraintKind::WeightClipping => Self::WeightClipping {
                clip_value: config.clip_value(),
            },
            ConstraintKind::SpectralPenalty => Self::SpectralPenalty {
                power_iterations: config.power_iterations(),
                lambda: config.lambda(),
                operator: config.operator(),
            },
            ConstraintKind::None => Self::None,
        }
    }

    /// The spectral-norm state the critic's layers carry, if any.
    pub fn critic_spectral(&self) -> Option<SpectralOptions> {
        match *self {
            Self::SpectralNorm {
                power_iterations,
                operator,
                certify,
            } => Some(SpectralOptions {
                power_iterations,
                in_forward: true,
                operator,
                certify,
            }),
            Self::SpectralPenalty {
                power_iterations,
                operator,
                ..
            } => Some(SpectralOptions {
                power_iterations,
                in_forward: false,
                operator,
                certify: false,
            }),
            _ => None,
        }
    }

    /// The term added to the critic loss, `[1]`, or `None`.
    pub fn penalty(&self, critic: &Critic, inputs: PenaltyInputs) -> Option<Tensor<1>> {
        match *self {
            Self::GradientPenalty { lambda, one_sided } => Some(gradient_penalty(
                critic,
                interpolates(inputs),
                lambda,
                one_sided,
            )),
            Self::SpectralPenalty { lambda, .. } => {
                Some(critic.squared_spectral_norms().mul_scalar(lambda))
            }
            _ => None,
        }
    }

    /// Applied to the critic after each of its optimizer steps.
    pub fn after_critic_step(&self, critic: Critic) -> Critic {
        match *self {
            Self::WeightClipping { clip_value } => clip_weights(critic, clip_value),
            Self::SpectralNorm { certify: true, .. } => {
                critic.certify();
                critic
            }
            _ => critic,
        }
    }
}

/// `x_hat = e * real + (1 - e) * fake`, `[B, C, S, S]`, detached.
pub fn interpolates(inputs: PenaltyInputs) -> Tensor<4> {
    let PenaltyInputs {
        real,
        fake,
        epsilon,
    } = inputs;
    let one_minus = epsilon.clone().neg().add_scalar(1.0);
    (real.detach() * epsilon + fake.detach() * one_minus).detach()
}

/// Gulrajani et al. 2017 ("Improved Training of Wasserstein GANs", Alg. 1):
/// `lambda * mean_b (||grad_x f(x_hat_b)|| - 1)^2`; one-sided (Petzka et al. 2018):
/// `lambda * mean_b max(||grad|| - 1, 0)^2`. The input gradient is built with differentiable
/// ops ([`Critic::input_gradient`]), so its gradient with respect to the critic's parameters
/// is exact (what PyTorch gets with `create_graph=True`).
pub fn gradient_penalty(
    critic: &Critic,
    x_hat: Tensor<4>,
    lambda: f64,
    one_sided: bool,
) -> Tensor<1> {
    let [batch, ..] = x_hat.dims();
    let grad = critic.input_gradient(x_hat); // [B, C, S, S]
    let norms = grad.square().sum_dims(&[1, 2, 3]).reshape([batch]).sqrt(); // [B]
    penalty_of_norms(norms, lambda, one_sided)
}

/// `lambda * mean_b (norm_b - 1)^2`, or with `one_sided` `lambda * mean_b max(norm_b - 1, 0)^2`,
/// for input-gradient norms `[B]` (differentiable): the penalty of any critic whose input
/// gradient is written with differentiable ops (the image critic, the toy MLP).
pub fn penalty_of_norms(norms: Tensor<1>, lambda: f64, one_sided: bool) -> Tensor<1> {
    let excess = norms.sub_scalar(1.0);
    let excess = if one_sided { relu(excess) } else { excess };
    excess.square().mean().mul_scalar(lambda) // [1]
}

/// Clamps every float parameter of `critic` (any critic module) to [-c, c], leaving
/// spectral-norm `u`, `v` (matrix or operator; Burn's mappers also see them as float
/// parameters) alone. Gradient
/// tracking is kept as it was.
pub fn clip_weights<M: Module>(critic: M, c: f64) -> M {
    critic.map(&mut Clip {
        bound: c,
        path: Vec::new(),
    })
}

struct Clip {
    bound: f64,
    path: Vec<String>,
}

impl ModuleMapper for Clip {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if self.path.iter().any(|p| p == "spectral" || p == "operator") {
            return param;
        }
        let (id, tensor, mapper) = param.consume();
        let require_grad = tensor.is_require_grad();
        // Clamp outside autodiff: the result is a fresh leaf, not a node of the last graph.
        let clamped = Tensor::from_inner(tensor.inner().clamp(-self.bound, self.bound));
        let clamped = if require_grad {
            clamped.require_grad()
        } else {
            clamped
        };
        Param::from_mapped_value(id, clamped, mapper)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::DType;

    /// The test critic of the PyTorch reference below: 16x16x1 images, d_width 2.
    fn reference_critic(
        device: &Device,
        scale: f64,
        perturb: Option<(usize, usize, f64)>,
    ) -> Critic {
        Critic::new(16, 1, 2, None, device).map(&mut SetParams {
            k: 0,
            scale,
            perturb,
            device: device.clone(),
        })
    }

    /// Sets parameter k (in visiting order), element i, to `scale * sin(1.7 i + 0.5 k + 0.1)`
    /// in f64, optionally adding `delta` to one element.
    struct SetParams {
        k: usize,
        scale: f64,
        perturb: Option<(usize, usize, f64)>,
        device: Device,
    }

    impl ModuleMapper for SetParams {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let (id, tensor, mapper) = param.consume();
            let shape = tensor.shape();
            let k = self.k as f64;
            let mut values: Vec<f64> = (0..shape.num_elements())
                .map(|i| self.scale * (1.7 * i as f64 + 0.5 * k + 0.1).sin())
                .collect();
            if let Some((pk, pi, delta)) = self.perturb
                && pk == self.k
            {
                values[pi] += delta;
            }
            self.k += 1;
            let t =
                Tensor::<D>::from_data(TensorData::new(values, shape), (&self.device, DType::F64));
            Param::from_mapped_value(id, t.require_grad(), mapper)
        }
    }

    /// `x[b, 0, h, w] = cos(0.13 i (1 + b))`, i the flat index, in f64.
    fn reference_input(device: &Device) -> Tensor<4> {
        let values: Vec<f64> = (0..3 * 256)
            .map(|i| (0.13 * i as f64 * (1 + i / 256) as f64).cos())
            .collect();
        Tensor::from_data(
            TensorData::new(values, [3, 1, 16, 16]),
            (device, DType::F64),
        )
    }

    /// The gradient of `loss` w.r.t. each parameter, flattened, in visiting order (a
    /// parameter the loss does not depend on gets zeros).
    fn grads_of(critic: &Critic, loss: Tensor<1>) -> Vec<Vec<f64>> {
        let grads = loss.backward();
        let flat = |g: Option<Tensor<1>>, n: usize| match g {
            Some(g) => g.into_data().convert::<f64>().try_to_vec().unwrap(),
            None => vec![0.0; n],
        };
        let mut out = Vec::new();
        for c in &critic.convs {
            let (w, b) = (c.weight.val(), c.bias.val());
            let n = w.shape().num_elements();
            out.push(flat(w.grad(&grads).map(|g| g.reshape([n])), n));
            out.push(flat(b.grad(&grads), b.dims()[0]));
        }
        let (w, b) = (critic.head.weight.val(), critic.head.bias.val());
        let n = w.shape().num_elements();
        out.push(flat(w.grad(&grads).map(|g| g.reshape([n])), n));
        out.push(flat(b.grad(&grads), b.dims()[0]));
        out
    }

    fn value(t: Tensor<1>) -> f64 {
        t.into_data().convert::<f64>().try_to_vec::<f64>().unwrap()[0]
    }

    // Reference values from PyTorch 2.15 (float64, create_graph=True):
    //
    //   import math, torch
    //   torch.set_default_dtype(torch.float64)
    //   net = torch.nn.Sequential(
    //       torch.nn.Conv2d(1, 2, 4, 2, 1), torch.nn.LeakyReLU(0.2),
    //       torch.nn.Conv2d(2, 4, 4, 2, 1), torch.nn.LeakyReLU(0.2))
    //   fc = torch.nn.Linear(4 * 4 * 4, 1)
    //   params = [net[0].weight, net[0].bias, net[2].weight, net[2].bias, fc.weight, fc.bias]
    //   with torch.no_grad():
    //       for k, p in enumerate(params):
    //           flat = torch.tensor([0.23 * math.sin(1.7 * i + 0.5 * k + 0.1) for i in range(p.numel())])
    //           p.copy_(flat.view_as(p))
    //   x = torch.tensor([math.cos(0.13 * i * (1 + i // 256)) for i in range(3 * 16 * 16)]).view(3, 1, 16, 16)
    //   x.requires_grad_(True)
    //   f = lambda x: fc(net(x).flatten(1))
    //   for one_sided in (False, True):
    //       grad, = torch.autograd.grad(f(x).sum(), x, create_graph=True)
    //       gn = grad.flatten(1).norm(dim=1)
    //       pen = (torch.relu(gn - 1) if one_sided else (gn - 1)) ** 2
    //       loss = 10.0 * pen.mean()
    //       gp = [g if g is not None else torch.zeros_like(p) for g, p in
    //             zip(torch.autograd.grad(loss, params, allow_unused=True), params)]
    //       print(gn.tolist(), loss.item(), [(g.sum().item(), g.flatten()[0].item(), g.flatten()[-1].item()) for g in gp])
    //
    // norms: [1.0674382425657207, 1.0624426665173743, 0.60541367790391409]
    // (sum, first, last) of the gradient w.r.t. conv0.weight, conv0.bias, conv1.weight,
    // conv1.bias, fc.weight, fc.bias.
    #[allow(clippy::excessive_precision)] // as PyTorch printed them
    const TORCH_TWO_SIDED: (f64, [[f64; 3]; 6]) = (
        0.54715122915823011,
        [
            [
                -0.95676649457647844,
                -0.18404784589226872,
                -0.18627201365980611,
            ],
            [0.0, 0.0, 0.0],
            [
                -1.607570177383109,
                -0.097492853801302293,
                -0.0080550798975936675,
            ],
            [0.0, 0.0, 0.0],
            [
                -2.2945949406608981,
                -0.15639220393795408,
                -0.11006547072193751,
            ],
            [0.0, 0.0, 0.0],
        ],
    );
    #[allow(clippy::excessive_precision)]
    const TORCH_ONE_SIDED: (f64, [[f64; 3]; 6]) = (
        0.028156677207176684,
        [
            [
                2.5753958548069855,
                0.083440540420046977,
                0.16116068588757637,
            ],
            [0.0, 0.0, 0.0],
            [
                -0.16781022637252058,
                0.16936963870413657,
                -0.02601759510371459,
            ],
            [0.0, 0.0, 0.0],
            [
                0.076475736105646286,
                0.16412179608073732,
                0.088219395145370527,
            ],
            [0.0, 0.0, 0.0],
        ],
    );

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol * (1.0 + b.abs())
    }

    #[test]
    fn gradient_penalty_and_its_parameter_gradient_match_pytorch_create_graph() {
        let device = Device::flex().autodiff();
        for (one_sided, (penalty, expected)) in [(false, TORCH_TWO_SIDED), (true, TORCH_ONE_SIDED)]
        {
            let critic = reference_critic(&device, 0.23, None);
            let loss = gradient_penalty(&critic, reference_input(&device), 10.0, one_sided);
            let got = value(loss.clone());
            assert!(
                close(got, penalty, 1e-10),
                "penalty {got} vs torch {penalty}"
            );
            for (k, (g, e)) in grads_of(&critic, loss).iter().zip(expected).enumerate() {
                let stats = [g.iter().sum(), g[0], *g.last().unwrap()];
                for (s, t) in stats.iter().zip(e) {
                    assert!(close(*s, t, 1e-9), "param {k}: {stats:?} vs torch {e:?}");
                }
            }
        }
    }

    #[test]
    fn gradient_penalty_gradient_matches_central_finite_differences() {
        let device = Device::flex().autodiff();
        let x = reference_input(&device);
        let penalty = |critic: &Critic| value(gradient_penalty(critic, x.clone(), 10.0, false));
        let critic = reference_critic(&device, 0.23, None);
        let grads = grads_of(&critic, gradient_penalty(&critic, x.clone(), 10.0, false));
        let h = 1e-6;
        for (k, g) in grads.iter().enumerate() {
            for (i, analytic) in g.iter().enumerate() {
                let plus = penalty(&reference_critic(&device, 0.23, Some((k, i, h))));
                let minus = penalty(&reference_critic(&device, 0.23, Some((k, i, -h))));
                let fd = (plus - minus) / (2.0 * h);
                assert!(
                    (analytic - fd).abs() < 1e-7 * (1.0 + fd.abs()),
                    "param {k}[{i}]: {analytic} vs {fd}"
                );
            }
        }
    }

    /// The exact gradient penalty of a GroupSort critic: its gradient in every parameter
    /// equals central finite differences (f64), as with LeakyReLU above.
    #[test]
    fn gradient_penalty_with_groupsort_matches_central_finite_differences() {
        use crate::config::Activation;
        let device = Device::flex().autodiff();
        let x = reference_input(&device);
        let build = |perturb| {
            reference_critic(&device, 0.23, perturb).with_activation(Activation::Groupsort)
        };
        let penalty = |critic: &Critic| value(gradient_penalty(critic, x.clone(), 10.0, false));
        let critic = build(None);
        let grads = grads_of(&critic, gradient_penalty(&critic, x.clone(), 10.0, false));
        let h = 1e-6;
        let mut checked = 0;
        for (k, g) in grads.iter().enumerate() {
            for (i, analytic) in g.iter().enumerate() {
                let fd = (penalty(&build(Some((k, i, h)))) - penalty(&build(Some((k, i, -h)))))
                    / (2.0 * h);
                assert!(
                    (analytic - fd).abs() < 1e-7 * (1.0 + fd.abs()),
                    "param {k}[{i}]: {analytic} vs {fd}"
                );
                checked += usize::from(fd.abs() > 1e-6);
            }
        }
        assert!(checked > 10, "the penalty depends on the parameters");
    }

    #[test]
    fn one_sided_penalty_is_zero_when_every_gradient_norm_is_below_one() {
        let device = Device::flex().autodiff();
        // Half the weights: each of the 3 layers halves the gradient, norms ~ 1/8.
        let critic = reference_critic(&device, 0.115, None);
        let x = reference_input(&device);
        let norms = critic
            .input_gradient(x.clone())
            .square()
            .sum_dims(&[1, 2, 3])
            .sqrt();
        let norms: Vec<f64> = norms.into_data().convert::<f64>().try_to_vec().unwrap();
        assert!(norms.iter().all(|&n| n > 0.0 && n < 1.0), "{norms:?}");
        assert_eq!(value(gradient_penalty(&critic, x.clone(), 10.0, true)), 0.0);
        assert!(value(gradient_penalty(&critic, x, 10.0, false)) > 1.0);
    }

    #[test]
    fn clipping_clamps_weights_and_leaves_spectral_state_alone() {
        let device = Device::flex().autodiff();
        let options = SpectralOptions {
            power_iterations: 1,
            in_forward: true,
            operator: false,
            certify: false,
        };
        let critic = Critic::new(32, 1, 4, Some(options), &device);
        let u_of = |c: &Critic| -> Vec<f32> {
            c.convs[1]
                .spectral
                .as_ref()
                .unwrap()
                .u
                .value()
                .into_data()
                .convert::<f32>()
                .try_to_vec()
                .unwrap()
        };
        let u = u_of(&critic);
        let clipped = clip_weights(critic, 1e-3);
        assert_eq!(u_of(&clipped), u, "u must not be clipped");
        assert!(
            u.iter().any(|v| v.abs() > 1e-3),
            "u has entries beyond the bound"
        );
        let w: Vec<f32> = clipped.convs[1]
            .weight
            .val()
            .into_data()
            .convert::<f32>()
            .try_to_vec()
            .unwrap();
        assert!(w.iter().all(|v| v.abs() <= 1e-3));
        assert!(clipped.convs[1].weight.val().is_require_grad());
    }

    #[test]
    fn spectral_penalty_is_lambda_times_the_sum_of_exact_squared_spectral_norms() {
        use nalgebra::DMatrix;
        let device = Device::flex().autodiff();
        device.seed(11);
        let options = SpectralOptions {
            power_iterations: 1,
            in_forward: false,
            operator: false,
            certify: false,
        };
        let critic = Critic::new(32, 1, 8, Some(options), &device);
        let constraint = Constraint::SpectralPenalty {
            power_iterations: 1,
            lambda: 0.5,
            operator: false,
        };
        let inputs = || PenaltyInputs {
            real: Tensor::zeros([1, 1, 32, 32], &device),
            fake: Tensor::zeros([1, 1, 32, 32], &device),
            epsilon: Tensor::zeros([1, 1, 1, 1], &device),
        };
        // Warm-up: each penalty evaluation runs one power iteration per layer.
        for _ in 0..300 {
            let _ = constraint.penalty(&critic, inputs());
        }
        let got = value(constraint.penalty(&critic, inputs()).unwrap().detach());
        let exact_sq = |w: Tensor<2>| {
            let [r, c] = w.dims();
            let v: Vec<f64> = w.into_data().convert::<f64>().try_to_vec().unwrap();
            DMatrix::from_row_slice(r, c, &v)
                .singular_values()
                .max()
                .powi(2)
        };
        let mut expected: f64 = critic
            .convs
            .iter()
            .map(|c| exact_sq(crate::model::spectral::as_matrix(c.weight.val())))
            .sum();
        expected += exact_sq(critic.head.weight.val());
        expected *= 0.5;
        assert!(
            ((got - expected) / expected).abs() < 1e-3,
            "{got} vs {expected}"
        );
        // No normalization in the forward pass: the kernels are the raw weights.
        let k = critic.convs[0].kernel().into_data();
        k.assert_eq(&critic.convs[0].weight.val().into_data(), true);
    }
}

//! The GAN being trained: both networks, their optimizers and the critic's constraint, and the
//! two updates of one WGAN iteration (Arjovsky et al. 2017, Alg. 1): a critic step minimising
//! mean f(fake) - mean f(real) (+ penalty), a generator step minimising -mean f(fake).
//! The loop that schedules them is the `train` module.

use crate::config::{Config, LossKind, OptimizerKind};
use crate::constraint::{Constraint, PenaltyInputs};
use crate::model::{Critic, Generator};
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer, RmsPropConfig};
use burn::prelude::*;
use burn::tensor::activation::relu;

/// The two networks, their optimizers and the critic's constraint.
pub struct Gan {
    /// G.
    pub generator: Generator,
    /// f.
    pub critic: Critic,
    /// Optimizer of G.
    pub optim_g: ModuleOptimizer,
    /// Optimizer of f.
    pub optim_d: ModuleOptimizer,
    /// How f is kept Lipschitz.
    pub constraint: Constraint,
    /// The objective.
    pub loss: LossKind,
    /// The moving average of G's weights (on the plain device), when `train.ema_decay > 0`.
    pub ema: Option<Generator>,
    /// `train.ema_decay`.
    pub ema_decay: f64,
    /// `train.ema_start`.
    pub ema_start: usize,
}

impl Gan {
    /// Fresh networks for `config`, initialised from the device RNG seeded with `train.seed`.
    /// `device` should carry autodiff.
    pub fn new(config: &Config, device: &Device) -> Self {
        device.seed(config.train.seed);
        let (d, m) = (&config.data, &config.model);
        let constraint = Constraint::from_config(&config.constraint);
        let generator = Generator::new(d.image_size, d.channels, m.z_dim, m.g_width, device);
        let critic = Critic::new(
            d.image_size,
            d.channels,
            m.d_width,
            constraint.critic_spectral(),
            device,
        )
        .with_activation(m.critic_activation);
        crate::model::initialize_params(&generator);
        crate::model::initialize_params(&critic);
        let t = &config.train;
        Self {
            ema: (t.ema_decay > 0.0).then(|| generator.valid()),
            generator,
            critic,
            optim_g: optimizer(t.optimizer, t.beta1, t.beta2),
            optim_d: optimizer(t.optimizer, t.beta1, t.beta2),
            constraint,
            loss: t.loss,
            ema_decay: t.ema_decay,
            ema_start: t.ema_start,
        }
    }

    /// Updates the moving average after generator iteration `step` (1-based); no-op when off.
    pub fn update_ema(&mut self, step: usize) {
        if let Some(ema) = self.ema.take() {
            let decay = crate::ema::decay_at(step, self.ema_decay, self.ema_start);
            self.ema = Some(crate::ema::update(ema, &self.generator, decay));
        }
    }

    /// The generator that samples: the moving average when on, else G itself.
    pub fn sampler(&self) -> &Generator {
        self.ema.as_ref().unwrap_or(&self.generator)
    }
}

/// The critic's loss for scores `[B, 1]` on real and fake images (before any penalty).
pub fn critic_loss(kind: LossKind, real: Tensor<2>, fake: Tensor<2>) -> Tensor<1> {
    match kind {
        LossKind::Wasserstein => fake.mean() - real.mean(),
        LossKind::Hinge => {
            let real = relu(real.neg().add_scalar(1.0)).mean(); // mean max(0, 1 - f(real))
            let fake = relu(fake.add_scalar(1.0)).mean(); // mean max(0, 1 + f(fake))
            real + fake
        }
    }
}

/// Adam (with `beta1`, `beta2`) or RMSProp, with PyTorch's epsilon and RMSProp's alpha, so
/// that runs compare with the PyTorch peer.
pub fn optimizer(kind: OptimizerKind, beta1: f64, beta2: f64) -> ModuleOptimizer {
    match kind {
        OptimizerKind::Adam => AdamConfig::new()
            .with_beta_1(beta1 as f32)
            .with_beta_2(beta2 as f32)
            .with_epsilon(1e-8)
            .init(),
        OptimizerKind::Rmsprop => RmsPropConfig::new()
            .with_alpha(0.99)
            .with_momentum(0.0)
            .with_epsilon(1e-8)
            .init(),
    }
}

/// The inputs of one critic step.
pub struct CriticBatch {
    /// Real images `[B, C, S, S]` in [-1, 1].
    pub real: Tensor<4>,
    /// Noise `[B, z]` for the fake batch.
    pub z: Tensor<2>,
    /// `[B, 1, 1, 1]`, uniform in [0, 1]: interpolation weights for the gradient penalty
    /// (drawn for every kind, so that all kinds see the same noise stream).
    pub epsilon: Tensor<4>,
}

/// Scalars `[1]` of one critic step.
pub struct CriticStats {
    /// The minimised loss: the critic loss + penalty.
    pub loss: Tensor<1>,
    /// mean f(real) - mean f(fake).
    pub wasserstein: Tensor<1>,
    /// The constraint's penalty term, if it has one.
    pub penalty: Option<Tensor<1>>,
}

/// One critic step: minimise the critic loss ([`critic_loss`]: mean f(fake) - mean f(real)
/// for the WGAN) plus the constraint's penalty, then apply the constraint's post-step
/// (clipping).
pub fn critic_step(gan: &mut Gan, batch: CriticBatch, lr: f64) -> CriticStats {
    let CriticBatch { real, z, epsilon } = batch;
    // G in training mode (batch statistics, running statistics updated) but untracked: the
    // fakes are constants here.
    let fake = gan.generator.clone().no_grad().forward(z).detach(); // [B, C, S, S]
    // Two forwards, fake first, as PyTorch's `d(fake).mean() - d(real).mean()`: under spectral
    // normalization each refines u, v once, and the real batch sees the newer estimate.
    let fake_scores = gan.critic.forward(fake.clone()); // [B, 1]
    let real_scores = gan.critic.forward(real.clone()); // [B, 1]
    let wasserstein = (real_scores.clone().mean() - fake_scores.clone().mean()).detach();
    let inputs = PenaltyInputs {
        real,
        fake,
        epsilon,
    };
    let penalty = gan.constraint.penalty(&gan.critic, inputs);
    let loss = critic_loss(gan.loss, real_scores, fake_scores);
    let loss = match &penalty {
        Some(p) => loss + p.clone(),
        None => loss,
    };
    let grads = GradientsParams::from_grads(loss.backward(), &gan.critic);
    let critic = gan.optim_d.step(lr, gan.critic.clone(), grads);
    gan.critic = gan.constraint.after_critic_step(critic);
    CriticStats {
        loss: loss.detach(),
        wasserstein,
        penalty: penalty.map(Tensor::detach),
    }
}

/// One generator step on noise `[B, z]`; returns the loss -mean f(G(z)).
///
/// The backward pass runs in two graphs: the critic's, from the loss to the images
/// (`g = d loss / d fake`), then the generator's, from `sum(fake * g)` with `g` constant, whose
/// gradient is exactly `J^T g`, the chain rule's. One graph from the loss to the generator's
/// weights gives the same numbers on the CPU backends, but on Burn 0.22's wgpu backend
/// (lavapipe) it gave wrong generator gradients in about one process in three when a critic
/// step had run before (every generator parameter off, e.g. 7e-4 after one SGD step of lr 1e-2,
/// while the critic's input gradient alone was right); the split graphs matched the CPU in
/// 10 runs of 10. The parity test in this file guards it.
pub fn generator_step(gan: &mut Gan, z: Tensor<2>, lr: f64) -> Tensor<1> {
    // The critic's weights get no gradient in this step.
    let critic = gan.critic.clone().no_grad();
    let fake = gan.generator.forward(z); // [B, C, S, S]
    let images = fake.clone().detach().require_grad();
    let loss = critic.forward(images.clone()).mean().neg(); // [1]
    let upstream = images
        .grad(&loss.backward())
        .expect("the images require a gradient"); // [B, C, S, S]
    let surrogate = (fake * upstream).sum(); // [1], gradient J^T upstream
    let grads = GradientsParams::from_grads(surrogate.backward(), &gan.generator);
    gan.generator = gan.optim_g.step(lr, gan.generator.clone(), grads);
    loss.detach()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::float_values as params;
    use crate::noise::{epsilon, noise};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn scalar(t: Tensor<1>) -> f64 {
        t.into_scalar::<f32>() as f64
    }

    fn batch(device: &Device, rng: &mut ChaCha8Rng) -> CriticBatch {
        CriticBatch {
            real: Tensor::random([4, 1, 32, 32], burn::tensor::Distribution::Default, device),
            z: noise(rng, 4, 8, device),
            epsilon: epsilon(rng, 4, device),
        }
    }

    const KINDS: [&str; 5] = [
        "spectral_norm",
        "gradient_penalty",
        "weight_clipping",
        "spectral_penalty",
        "none",
    ];

    #[test]
    fn critic_step_moves_only_the_critic_and_generator_step_only_the_generator() {
        for kind in KINDS {
            let device = Device::flex().autodiff();
            let mut gan = Gan::new(&Config::tiny(kind), &device);
            let mut rng = ChaCha8Rng::seed_from_u64(0);
            for _ in 0..2 {
                let (g0, d0) = (params(&gan.generator), params(&gan.critic));
                critic_step(&mut gan, batch(&device, &mut rng), 1e-3);
                let (g1, d1) = (params(&gan.generator), params(&gan.critic));
                // BatchNorm running statistics move in the critic step (G runs in training
                // mode), but no trainable generator weight does.
                assert_eq!(g0[0], g1[0], "{kind}: critic step moved G's projection");
                assert_ne!(d0[0], d1[0], "{kind}: critic step left the critic");
                generator_step(&mut gan, noise(&mut rng, 4, 8, &device), 1e-3);
                let (g2, d2) = (params(&gan.generator), params(&gan.critic));
                assert_ne!(g1[0], g2[0], "{kind}: generator step left G");
                assert_eq!(d1[0], d2[0], "{kind}: generator step moved the critic");
            }
        }
    }

    #[test]
    fn the_loss_is_the_penalty_minus_the_wasserstein_estimate_and_falls_on_a_fixed_batch() {
        for kind in KINDS {
            let device = Device::flex().autodiff();
            let mut gan = Gan::new(&Config::tiny(kind), &device);
            let mut rng = ChaCha8Rng::seed_from_u64(1);
            let fixed = batch(&device, &mut rng);
            let mut losses = Vec::new();
            for _ in 0..20 {
                let b = CriticBatch {
                    real: fixed.real.clone(),
                    z: fixed.z.clone(),
                    epsilon: fixed.epsilon.clone(),
                };
                let stats = critic_step(&mut gan, b, 1e-3);
                let penalty = stats.penalty.map(scalar).unwrap_or(0.0);
                let (loss, w) = (scalar(stats.loss), scalar(stats.wasserstein));
                assert!((loss + w - penalty).abs() < 1e-5, "{kind}");
                losses.push(loss);
            }
            assert!(
                losses[19] < losses[0] - 1e-4,
                "{kind}: loss did not fall: {losses:?}"
            );
        }
    }

    /// `norm = "operator"` with `certify = true` keeps the critic 1-Lipschitz through
    /// training: after 30 iterations (critic and generator steps, Adam at lr 1e-3, far above
    /// the configs' rates) on random images and on the embedded Fashion-MNIST sample, with
    /// LeakyReLU and with GroupSort, every layer's norm as used (the SVD of the convolution
    /// written out as a dense matrix; the head's SVD) is <= 1 + 1e-3, the diagnostics call the
    /// critic certified, and the input-gradient norm on real, generated and interpolated
    /// images is <= 1 + 1e-3. The same run without `certify` ends with layers above 1 (the
    /// power iteration lags the weights), so the check can fail.
    #[test]
    fn a_certified_critic_stays_1_lipschitz_through_training() {
        use crate::data::{ImageSet, Preprocess};
        use crate::lipschitz::{conv_operator_norm_exact, diagnose, largest_singular_value};
        let device = Device::flex().autodiff();
        let prep = Preprocess {
            size: 32,
            channels: 1,
            crop: 0,
        };
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fashion-mnist");
        let (images, _) = ImageSet::load_some(&dir, prep, 256, 0).unwrap();
        let sources = ["random", "fashion-mnist"];
        let activations = ["leaky_relu", "groupsort"];
        for (source, activation, certify) in sources
            .iter()
            .flat_map(|s| activations.iter().map(move |a| (*s, *a, true)))
            .chain([("random", "leaky_relu", false)])
        {
            let text = format!(
                "[model]\nz_dim = 8\ng_width = 8\nd_width = 8\ncritic_activation = \"{activation}\"\n\
                 [train]\nlr_d = 1e-3\nlr_g = 1e-3\n\
                 [constraint]\nkind = \"spectral_norm\"\nnorm = \"operator\"\ncertify = {certify}\n"
            );
            let config = Config::from_toml(&text, &[]).unwrap();
            let mut gan = Gan::new(&config, &device);
            let mut rng = ChaCha8Rng::seed_from_u64(5);
            let real_batch = |rng: &mut ChaCha8Rng| match source {
                "random" => {
                    Tensor::random([8, 1, 32, 32], burn::tensor::Distribution::Default, &device)
                }
                _ => {
                    let at: Vec<usize> = (0..8)
                        .map(|_| rand::Rng::random_range(rng, 0..images.len()))
                        .collect();
                    images.batch(&at, &device)
                }
            };
            for _ in 0..30 {
                for _ in 0..2 {
                    let b = CriticBatch {
                        real: real_batch(&mut rng),
                        z: noise(&mut rng, 8, 8, &device),
                        epsilon: epsilon(&mut rng, 8, &device),
                    };
                    critic_step(&mut gan, b, 1e-3);
                }
                generator_step(&mut gan, noise(&mut rng, 8, 8, &device), 1e-3);
            }
            let critic = gan.critic.valid();
            let case = format!("{source}, {activation}, certify {certify}");
            let mut norms: Vec<f64> = critic
                .convs
                .iter()
                .enumerate()
                .map(|(i, c)| conv_operator_norm_exact(c.kernel(), 32 >> i))
                .collect();
            norms.push(largest_singular_value(&crate::lipschitz::host_matrix(
                critic.head.kernel(),
            )));
            let worst = norms.iter().copied().fold(0.0, f64::max);
            eprintln!("{case}: layer norms as used {norms:?}");
            if !certify {
                assert!(
                    worst > 1.0 + 1e-3,
                    "{case}: uncertified layers {norms:?} already <= 1"
                );
                continue;
            }
            assert!(worst <= 1.0 + 1e-3, "{case}: layer norms as used {norms:?}");
            let plain = device.clone().without_autodiff();
            let real = Tensor::from_data(real_batch(&mut rng).into_data(), &plain);
            let fake = gan.generator.valid().forward(noise(&mut rng, 8, 8, &plain));
            let d = diagnose(&critic, real, fake, epsilon(&mut rng, 8, &plain));
            assert!(d.certified, "{case}: bounds {:?}", d.operator_bounds);
            for (what, g) in [
                ("real", d.grad_real),
                ("fake", d.grad_fake),
                ("interpolates", d.grad_interpolates),
            ] {
                assert!(
                    g.max <= 1.0 + 1e-3,
                    "{case}: ||grad|| on {what} up to {}",
                    g.max
                );
            }
        }
    }

    #[test]
    fn after_a_clipping_step_every_critic_parameter_lies_in_the_bound() {
        let device = Device::flex().autodiff();
        let config = Config::from_toml(
            "[model]\nz_dim = 8\ng_width = 4\nd_width = 4\n[constraint]\nkind = \"weight_clipping\"\nclip_value = 0.005\n",
            &[],
        )
        .unwrap();
        let mut gan = Gan::new(&config, &device);
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let before: f32 = params(&gan.critic)
            .iter()
            .flatten()
            .fold(0.0, |m, v| m.max(v.abs()));
        assert!(before > 0.005, "the initial weights exceed the bound");
        critic_step(&mut gan, batch(&device, &mut rng), 1e-3);
        for p in params(&gan.critic) {
            assert!(
                p.iter().all(|v| v.abs() <= 0.005),
                "a parameter escaped the bound"
            );
        }
    }

    /// The two-graph generator step (critic to images, then generator) gives the gradient of
    /// one graph from the loss to the generator's weights, which autodiff computes directly.
    #[test]
    fn the_two_graph_generator_step_equals_one_graph_backpropagation() {
        let device = Device::flex().autodiff();
        for kind in ["spectral_norm", "none"] {
            let config = Config::tiny(kind);
            let mut a = Gan::new(&config, &device);
            let mut b = Gan::new(&config, &device);
            b.generator = b.generator.load_record(a.generator.clone().into_record());
            b.critic = b.critic.load_record(a.critic.clone().into_record());
            a.optim_g = burn::optim::SgdConfig::new().init();
            b.optim_g = burn::optim::SgdConfig::new().init();
            let z = noise(&mut ChaCha8Rng::seed_from_u64(4), 4, 8, &device);
            let la = scalar(generator_step(&mut a, z.clone(), 1e-1));
            // One graph, as autodiff would do it.
            let critic = b.critic.clone().no_grad();
            let loss = critic.forward(b.generator.forward(z)).mean().neg();
            let grads = GradientsParams::from_grads(loss.backward(), &b.generator);
            b.generator = b.optim_g.step(1e-1, b.generator.clone(), grads);
            assert!((la - scalar(loss.detach())).abs() < 1e-7, "{kind}: losses");
            let (pa, pb) = (params(&a.generator), params(&b.generator));
            let before = params(&Gan::new(&config, &device).generator);
            let mut moved = 0.0f32;
            for ((x, y), z) in pa.iter().zip(&pb).zip(&before) {
                for ((p, q), r) in x.iter().zip(y).zip(z) {
                    assert!((p - q).abs() <= 1e-6, "{kind}: {p} vs {q}");
                    moved = moved.max((p - r).abs());
                }
            }
            assert!(moved > 1e-4, "{kind}: the step moved the generator");
        }
    }

    /// After k generator steps the average equals the closed form, computed in f64 from the
    /// recorded weights w_1..w_k: `ema_k = d^(k-s) w_s + sum_{t=s+1..k} (1-d) d^(k-t) w_t`
    /// with s = ema_start (the copy), and the BatchNorm statistics equal G's last ones.
    #[test]
    fn after_k_steps_the_average_is_the_closed_form_of_the_recorded_weights() {
        let device = Device::flex().autodiff();
        let (decay, start, k) = (0.7, 2usize, 7usize);
        let mut config = Config::tiny("spectral_norm");
        config.train.ema_decay = decay;
        config.train.ema_start = start;
        let mut gan = Gan::new(&config, &device);
        let flags = crate::ema::testing::buffer_flags(&gan.generator);
        assert_eq!(
            flags.iter().filter(|&&b| b).count(),
            2 * (1 + gan.generator.blocks.len()),
            "every BatchNorm has a running mean and variance"
        );
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut recorded = Vec::new();
        for step in 1..=k {
            generator_step(&mut gan, noise(&mut rng, 4, 8, &device), 1e-2);
            gan.update_ema(step);
            recorded.push(params(&gan.generator));
        }
        let ema = params(gan.ema.as_ref().unwrap());
        let last = recorded.last().unwrap();
        for (i, tensor) in ema.iter().enumerate() {
            for (j, &value) in tensor.iter().enumerate() {
                let expected = if flags[i] {
                    last[i][j] as f64
                } else {
                    let w = |t: usize| recorded[t - 1][i][j] as f64;
                    let mut e = decay.powi((k - start) as i32) * w(start);
                    for t in start + 1..=k {
                        e += (1.0 - decay) * decay.powi((k - t) as i32) * w(t);
                    }
                    e
                };
                let tol = 1e-6 * (1.0 + expected.abs());
                assert!(
                    (value as f64 - expected).abs() <= tol,
                    "tensor {i}[{j}]: {value} vs closed form {expected}"
                );
            }
        }
        // The average is not the generator (the test would pass trivially otherwise).
        let differs = ema
            .iter()
            .zip(last)
            .zip(&flags)
            .any(|((e, g), b)| !b && e != g);
        assert!(differs, "the average lags the generator");
    }

    /// The hinge and Wasserstein critic losses on fixed scores, and their gradients, against
    /// the formulas worked by hand: real (0.5, -2, 1.5, 0.9), fake (-0.3, -1.5, 2, 0).
    /// Hinge: mean(0.5, 3, 0, 0.1) + mean(0.7, 0, 3, 1) = 0.9 + 1.175 = 2.075, gradient -1/4
    /// on real scores below 1, +1/4 on fake scores above -1, 0 elsewhere.
    /// Wasserstein: 0.05 - 0.225 = -0.175, gradients -1/4 and +1/4 everywhere.
    #[test]
    fn critic_losses_equal_their_formulas_on_fixed_scores() {
        let device = Device::flex().autodiff();
        let scores = |v: [f32; 4]| {
            Tensor::<2>::from_data(TensorData::new(v.to_vec(), [4, 1]), &device).require_grad()
        };
        let cases = [
            (
                LossKind::Hinge,
                2.075,
                [-0.25, -0.25, 0.0, -0.25],
                [0.25, 0.0, 0.25, 0.25],
            ),
            (LossKind::Wasserstein, -0.175, [-0.25; 4], [0.25; 4]),
        ];
        for (kind, value, d_real, d_fake) in cases {
            let (real, fake) = (
                scores([0.5, -2.0, 1.5, 0.9]),
                scores([-0.3, -1.5, 2.0, 0.0]),
            );
            let loss = critic_loss(kind, real.clone(), fake.clone());
            let grads = loss.backward();
            assert!((scalar(loss) - value).abs() < 1e-6, "{kind:?}");
            let grad = |t: &Tensor<2>| -> Vec<f32> {
                t.grad(&grads)
                    .unwrap()
                    .into_data()
                    .convert::<f32>()
                    .try_to_vec()
                    .unwrap()
            };
            assert_eq!(grad(&real), d_real, "{kind:?}: d loss / d f(real)");
            assert_eq!(grad(&fake), d_fake, "{kind:?}: d loss / d f(fake)");
        }
    }

    #[test]
    fn the_hinge_loss_falls_on_a_fixed_batch_and_the_wasserstein_estimate_is_still_logged() {
        let device = Device::flex().autodiff();
        let mut config = Config::tiny("spectral_norm");
        config.train.loss = LossKind::Hinge;
        let mut gan = Gan::new(&config, &device);
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let fixed = batch(&device, &mut rng);
        let mut losses = Vec::new();
        for _ in 0..20 {
            let b = CriticBatch {
                real: fixed.real.clone(),
                z: fixed.z.clone(),
                epsilon: fixed.epsilon.clone(),
            };
            let stats = critic_step(&mut gan, b, 1e-3);
            let (loss, w) = (scalar(stats.loss), scalar(stats.wasserstein));
            // Scores start near 0, so the hinge loss starts near 2, and it is not -W.
            assert!(loss.is_finite() && w.is_finite());
            assert!(
                (loss + w).abs() > 1e-3,
                "the hinge loss is not the WGAN loss"
            );
            losses.push(loss);
        }
        assert!((losses[0] - 2.0).abs() < 0.1, "{losses:?}");
        assert!(
            losses[19] < losses[0] - 1e-3,
            "loss did not fall: {losses:?}"
        );
    }
}

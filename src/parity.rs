//! Backend parity: one critic step and one generator step of the same GAN, from identical
//! weights and inputs, on two devices, and how far apart every parameter ends. The wgpu tests
//! run it against both CPU backends; `wgan-train parity --backend wgpu` runs it on a real GPU.

use crate::config::Config;
use crate::gan::{CriticBatch, Gan, critic_step, generator_step};
use crate::model::float_values;
use crate::noise::{epsilon, noise};
use burn::module::Module;
use burn::prelude::*;
use burn_flex_kernels::testing::max_abs_diff;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Parity tolerance on every parameter and state value (spectral u, v; BatchNorm statistics)
/// after one SGD step of lr 1e-2 each: f32 sums in another order.
pub const TOLERANCE: f32 = 1e-5;

/// How far two devices' steps ended apart.
#[derive(Debug, Clone, Copy)]
pub struct StepParity {
    /// Critic losses of the critic step on (a, b).
    pub critic_loss: (f64, f64),
    /// Largest |a - b| over the critic's parameters and state after the critic step.
    pub critic: f32,
    /// Generator losses on (a, b).
    pub generator_loss: (f64, f64),
    /// Largest |a - b| over the generator's parameters and state after the generator step.
    pub generator: f32,
}

impl StepParity {
    /// Whether every difference is within [`TOLERANCE`] (losses: 1e-4 relative).
    pub fn holds(&self) -> bool {
        let close = |(a, b): (f64, f64)| (a - b).abs() <= 1e-4 * (1.0 + a.abs());
        close(self.critic_loss)
            && close(self.generator_loss)
            && self.critic <= TOLERANCE
            && self.generator <= TOLERANCE
    }
}

/// One critic and one generator step of `config`'s GAN (batch 4, SGD lr 1e-2) on devices `a`
/// and `b` (both with autodiff) from `a`'s initial weights copied into `b` and inputs drawn on
/// the host from `seed`.
///
/// SGD, so that an update is lr * gradient: Adam's first step is lr * sign(g), which turns
/// rounding noise on gradients that are identically zero (the critic head's bias under the
/// WGAN loss, biases before BatchNorm) into +-lr.
pub fn step_parity(config: &Config, a: &Device, b: &Device, seed: u64) -> StepParity {
    let mut ga = Gan::new(config, a);
    let mut gb = Gan::new(config, b);
    gb.generator = gb.generator.load_record(ga.generator.clone().into_record());
    gb.critic = gb.critic.load_record(ga.critic.clone().into_record());
    for gan in [&mut ga, &mut gb] {
        gan.optim_d = burn::optim::SgdConfig::new().init();
        gan.optim_g = burn::optim::SgdConfig::new().init();
    }
    let (batch_a, z_a) = host_batch(config, seed, a);
    let (batch_b, z_b) = host_batch(config, seed, b);
    let la = scalar(critic_step(&mut ga, batch_a, 1e-2).loss);
    let lb = scalar(critic_step(&mut gb, batch_b, 1e-2).loss);
    let critic = max_abs_diff(&flat(&ga.critic), &flat(&gb.critic));
    let ga_loss = scalar(generator_step(&mut ga, z_a, 1e-2));
    let gb_loss = scalar(generator_step(&mut gb, z_b, 1e-2));
    let generator = max_abs_diff(&flat(&ga.generator), &flat(&gb.generator));
    StepParity {
        critic_loss: (la, lb),
        critic,
        generator_loss: (ga_loss, gb_loss),
        generator,
    }
}

/// A critic batch of 4 and generator noise, every value drawn on the host.
fn host_batch(config: &Config, seed: u64, device: &Device) -> (CriticBatch, Tensor<2>) {
    let (s, c, z) = (
        config.data.image_size,
        config.data.channels,
        config.model.z_dim,
    );
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let real: Vec<f32> = (0..4 * c * s * s)
        .map(|_| rng.random::<f32>() * 2.0 - 1.0)
        .collect();
    let batch = CriticBatch {
        real: Tensor::from_data(TensorData::new(real, [4, c, s, s]), device),
        z: noise(&mut rng, 4, z, device),
        epsilon: epsilon(&mut rng, 4, device),
    };
    (batch, noise(&mut rng, 4, z, device))
}

fn scalar(t: Tensor<1>) -> f64 {
    t.into_scalar::<f32>() as f64
}

/// Every float parameter and state value of `module`, concatenated.
fn flat<M: Module>(module: &M) -> Vec<f32> {
    float_values(module).concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The two CPU backends agree, a device agrees with itself exactly, and a difference
    /// beyond the tolerance fails the check.
    #[test]
    #[allow(deprecated)] // ndarray is the other CPU backend
    fn the_cpu_backends_agree_and_a_difference_is_caught() {
        let (flex, ndarray) = (Device::flex().autodiff(), Device::ndarray().autodiff());
        let config = Config::tiny("spectral_norm");
        let p = step_parity(&config, &flex, &ndarray, 3);
        assert!(p.holds(), "{p:?}");
        let q = step_parity(&config, &flex, &flex, 3);
        assert_eq!(
            (q.critic, q.generator),
            (0.0, 0.0),
            "a device against itself"
        );
        let off = StepParity {
            generator: 2.0 * TOLERANCE,
            ..p
        };
        assert!(!off.holds(), "a generator {} apart fails", off.generator);
        let off = StepParity {
            critic_loss: (p.critic_loss.0, p.critic_loss.0 + 0.1),
            ..p
        };
        assert!(!off.holds(), "critic losses 0.1 apart fail");
    }
}

#[cfg(all(test, feature = "wgpu"))]
mod wgpu {
    use super::*;
    use crate::backend::{Backend, gpu_available};

    #[test]
    #[allow(deprecated)] // ndarray is the reference the issue names
    fn one_critic_and_one_generator_step_on_wgpu_match_the_cpu_backends() {
        if !gpu_available() {
            println!("skipped: no wgpu adapter on this machine (install mesa-vulkan-drivers)");
            return;
        }
        let gpu = Backend::Wgpu.device(None).unwrap().autodiff();
        for cpu in [Device::ndarray().autodiff(), Device::flex().autodiff()] {
            for kind in ["spectral_norm", "gradient_penalty", "weight_clipping"] {
                let p = step_parity(&Config::tiny(kind), &cpu, &gpu, 3);
                assert!(p.holds(), "{kind}: {p:?}");
            }
        }
    }
}

//! The run's random inputs, drawn on the host from the run's ChaCha8 stream so that a run is
//! reproducible on every backend and resumes bit for bit: the generator's noise and the
//! gradient penalty's interpolation weights.

use burn::prelude::*;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// Standard normal noise `[n, z_dim]` from the host RNG, so that runs are reproducible on
/// every backend.
pub fn noise(rng: &mut ChaCha8Rng, n: usize, z_dim: usize, device: &Device) -> Tensor<2> {
    let values: Vec<f32> = (0..n * z_dim).map(|_| StandardNormal.sample(rng)).collect();
    Tensor::from_data(TensorData::new(values, [n, z_dim]), device)
}

/// Uniform [0, 1) interpolation weights `[n, 1, 1, 1]` from the host RNG.
pub fn epsilon(rng: &mut ChaCha8Rng, n: usize, device: &Device) -> Tensor<4> {
    let values: Vec<f32> = (0..n).map(|_| rng.random::<f32>()).collect();
    Tensor::from_data(TensorData::new(values, [n, 1, 1, 1]), device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn noise_is_standard_normal_and_reproducible() {
        let device = Device::flex();
        let a = noise(&mut ChaCha8Rng::seed_from_u64(3), 100, 100, &device);
        let b = noise(&mut ChaCha8Rng::seed_from_u64(3), 100, 100, &device);
        let (a, b): (Vec<f32>, Vec<f32>) = (
            a.into_data().try_to_vec().unwrap(),
            b.into_data().try_to_vec().unwrap(),
        );
        assert_eq!(a, b);
        let mean = a.iter().sum::<f32>() / a.len() as f32;
        let var = a.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / a.len() as f32;
        assert!(
            mean.abs() < 0.05 && (var - 1.0).abs() < 0.05,
            "mean {mean} var {var}"
        );
    }
}

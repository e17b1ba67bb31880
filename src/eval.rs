//! Measuring a run while and after it trains: the sliced Wasserstein distance of the generator
//! to the data, and the critic's Lipschitz diagnostics on a batch of the data. Neither touches
//! the training state: both use inference copies (`valid()`: no power iteration, BatchNorm
//! running statistics) and their own seeded random streams, so a run with them gives the same
//! losses as one without.

use crate::data::ImageSet;
use crate::lipschitz::{self, Lipschitz};
use crate::model::{Critic, Generator};
use crate::sample::to_byte;
use crate::swd::{self, Images, Swd};
use burn::prelude::*;
use rand::SeedableRng;
use rand::seq::index::sample;
use rand_chacha::ChaCha8Rng;

/// Images per generator forward when generating an evaluation set.
const GENERATE_BATCH: usize = 256;

/// Offsets that keep the evaluation streams apart from the training streams of one seed.
const REAL_STREAM: u64 = 0x5744_5245_414c;
const NOISE_STREAM: u64 = 0x5744_4e4f_4953;
const DIAGNOSTICS_STREAM: u64 = 0x5744_4449_4147;

/// `n` distinct images of `data`, drawn with `seed`, as a SWD set.
pub fn real_images(data: &ImageSet, n: usize, seed: u64) -> Images {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut bytes = Vec::new();
    for i in sample(&mut rng, data.len(), n.min(data.len())) {
        bytes.extend_from_slice(data.image(i));
    }
    Images::from_bytes(&bytes, data.channels(), data.size())
}

/// `n` images of `generator` (an inference copy) from noise drawn with `seed`, quantized to
/// 8 bits like the data.
pub fn generated_images(
    generator: &Generator,
    n: usize,
    z_dim: usize,
    seed: u64,
    device: &Device,
) -> Images {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut bytes = Vec::new();
    let (mut channels, mut size) = (0, 0);
    for start in (0..n).step_by(GENERATE_BATCH) {
        let count = GENERATE_BATCH.min(n - start);
        let z = crate::train::noise(&mut rng, count, z_dim, device);
        let images = generator.forward(z); // [count, C, S, S]
        [_, channels, size, _] = images.dims();
        let values: Vec<f32> = images
            .into_data()
            .convert::<f32>()
            .try_to_vec()
            .expect("f32 data");
        bytes.extend(values.into_iter().map(to_byte));
    }
    Images::from_bytes(&bytes, channels, size)
}

/// Sliced Wasserstein distance between a run's generator and a fixed sample of its data.
pub struct Evaluator {
    real: Images,
    z_dim: usize,
    seed: u64,
}

impl Evaluator {
    /// `n` real images (at most the data's size) drawn with the run's `seed`.
    pub fn new(data: &ImageSet, n: usize, z_dim: usize, seed: u64) -> Self {
        Self {
            real: real_images(data, n, seed ^ REAL_STREAM),
            z_dim,
            seed,
        }
    }

    /// Images per set.
    pub fn len(&self) -> usize {
        self.real.n
    }

    /// Whether the real set is empty.
    pub fn is_empty(&self) -> bool {
        self.real.n == 0
    }

    /// SWD of `generator` (any mode; an inference copy is taken) against the real sample.
    pub fn swd(&self, generator: &Generator, device: &Device) -> Swd {
        let fake = generated_images(
            &generator.valid(),
            self.real.n,
            self.z_dim,
            self.seed ^ NOISE_STREAM,
            &device.clone().without_autodiff(),
        );
        swd::swd(&self.real, &fake, self.seed)
    }
}

/// The critic's Lipschitz diagnostics on `batch` real images drawn for `step`, as many generated
/// images and their interpolates; the networks are used in inference copies.
pub fn diagnostics(
    critic: &Critic,
    generator: &Generator,
    data: &ImageSet,
    batch: usize,
    z_dim: usize,
    seed: u64,
    device: &Device,
) -> Lipschitz {
    let device = device.clone().without_autodiff();
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ DIAGNOSTICS_STREAM);
    let n = batch.min(data.len());
    let indices = sample(&mut rng, data.len(), n).into_vec();
    let real = data.batch(&indices, &device);
    let fake = generator
        .valid()
        .forward(crate::train::noise(&mut rng, n, z_dim, &device));
    let epsilon = crate::train::epsilon(&mut rng, n, &device);
    lipschitz::diagnose(&critic.valid(), real, fake, epsilon)
}

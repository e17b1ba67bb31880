//! The 2-D toy distributions of Gulrajani et al.'s `gan_toy.py` (the WGAN-GP paper's Fig. 1),
//! with its scales:
//!
//! - `8gaussians`: centres `2 * (cos k·45°, sin k·45°)`, noise N(0, 0.02²) per coordinate, all
//!   divided by 1.414;
//! - `25gaussians`: centres `(2i, 2j)`, i, j in -2..=2, noise N(0, 0.05²), divided by 2.828
//!   (gan_toy draws a fixed set of 100,000 such points and cycles through it shuffled; here each
//!   point is drawn afresh, the same distribution);
//! - `swissroll`: scikit-learn's `make_swiss_roll(noise=0.25)` (t = 1.5π(1 + 2U), point
//!   (t cos t, 21U, t sin t) plus N(0, 0.25²) per coordinate), columns x and z, divided by 7.5.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, StandardNormal};
use serde::{Deserialize, Serialize};

/// Which toy distribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToyDataset {
    /// Eight Gaussians on a circle.
    #[serde(rename = "8gaussians")]
    EightGaussians,
    /// A 5 x 5 grid of Gaussians.
    #[serde(rename = "25gaussians")]
    TwentyFiveGaussians,
    /// A noisy 2-D Swiss roll.
    #[serde(rename = "swissroll")]
    SwissRoll,
}

impl ToyDataset {
    /// The TOML spelling.
    pub fn name(self) -> &'static str {
        match self {
            Self::EightGaussians => "8gaussians",
            Self::TwentyFiveGaussians => "25gaussians",
            Self::SwissRoll => "swissroll",
        }
    }

    /// The mixture's centres (after scaling), empty for the Swiss roll.
    pub fn centres(self) -> Vec<[f64; 2]> {
        match self {
            Self::EightGaussians => {
                let s = std::f64::consts::FRAC_1_SQRT_2;
                let unit = [
                    (1.0, 0.0),
                    (-1.0, 0.0),
                    (0.0, 1.0),
                    (0.0, -1.0),
                    (s, s),
                    (s, -s),
                    (-s, s),
                    (-s, -s),
                ];
                unit.iter()
                    .map(|&(x, y)| [2.0 * x / 1.414, 2.0 * y / 1.414])
                    .collect()
            }
            Self::TwentyFiveGaussians => (-2..=2)
                .flat_map(|i| {
                    (-2..=2).map(move |j| [2.0 * i as f64 / 2.828, 2.0 * j as f64 / 2.828])
                })
                .collect(),
            Self::SwissRoll => Vec::new(),
        }
    }

    /// Standard deviation of each mixture component per coordinate (after scaling).
    pub fn component_std(self) -> f64 {
        match self {
            Self::EightGaussians => 0.02 / 1.414,
            Self::TwentyFiveGaussians => 0.05 / 2.828,
            Self::SwissRoll => 0.25 / 7.5,
        }
    }

    /// `n` points, drawn from `rng`.
    pub fn sample(self, rng: &mut ChaCha8Rng, n: usize) -> Vec<[f32; 2]> {
        let centres = self.centres();
        let std = self.component_std();
        (0..n)
            .map(|_| match self {
                Self::SwissRoll => swiss_roll_point(rng),
                _ => {
                    let c = centres[rng.random_range(0..centres.len())];
                    let noise = Normal::new(0.0, std).expect("a positive std");
                    [
                        (c[0] + noise.sample(rng)) as f32,
                        (c[1] + noise.sample(rng)) as f32,
                    ]
                }
            })
            .collect()
    }
}

/// scikit-learn's `make_swiss_roll(noise=0.25)`, columns 0 and 2, divided by 7.5.
fn swiss_roll_point(rng: &mut ChaCha8Rng) -> [f32; 2] {
    let t = 1.5 * std::f64::consts::PI * (1.0 + 2.0 * rng.random::<f64>());
    let _height = 21.0 * rng.random::<f64>(); // the dropped y column, drawn as sklearn does
    let mut noise = || 0.25 * Distribution::<f64>::sample(&StandardNormal, rng);
    let (x, _, z) = (t * t.cos() + noise(), noise(), t * t.sin() + noise());
    [(x / 7.5) as f32, (z / 7.5) as f32]
}

/// The index of the centre nearest to `p` and its distance.
pub fn nearest(centres: &[[f64; 2]], p: [f32; 2]) -> (usize, f64) {
    centres
        .iter()
        .enumerate()
        .map(|(i, c)| (i, (c[0] - p[0] as f64).hypot(c[1] - p[1] as f64)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .expect("at least one centre")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn mean_std(values: impl Iterator<Item = f64> + Clone) -> (f64, f64) {
        let n = values.clone().count() as f64;
        let mean = values.clone().sum::<f64>() / n;
        let var = values.map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        (mean, var.sqrt())
    }

    /// Each mixture: every centre gets 1/K of the points (within 5 binomial standard errors),
    /// the offsets from the nearest centre have mean 0 and gan_toy's std per coordinate
    /// (0.02/1.414, 0.05/2.828; within 3%), and the centres are gan_toy's (8gaussians on the
    /// circle of radius 2/1.414; 25gaussians on the grid of spacing 2/2.828).
    #[test]
    fn mixtures_have_gan_toys_centres_weights_and_spreads() {
        for (set, radius_or_spacing) in [
            (ToyDataset::EightGaussians, 2.0 / 1.414),
            (ToyDataset::TwentyFiveGaussians, 2.0 / 2.828),
        ] {
            let centres = set.centres();
            match set {
                ToyDataset::EightGaussians => {
                    for c in &centres {
                        assert!((c[0].hypot(c[1]) - radius_or_spacing).abs() < 1e-12);
                    }
                }
                _ => assert!((centres[1][1] - centres[0][1] - radius_or_spacing).abs() < 1e-12),
            }
            let n = 40_000;
            let points = set.sample(&mut ChaCha8Rng::seed_from_u64(1), n);
            let k = centres.len();
            let mut counts = vec![0usize; k];
            let mut offsets = Vec::new();
            for &p in &points {
                let (i, _) = nearest(&centres, p);
                counts[i] += 1;
                offsets.push([p[0] as f64 - centres[i][0], p[1] as f64 - centres[i][1]]);
            }
            let expected = n as f64 / k as f64;
            let se = (n as f64 * (1.0 / k as f64) * (1.0 - 1.0 / k as f64)).sqrt();
            for c in counts {
                assert!(
                    (c as f64 - expected).abs() < 5.0 * se,
                    "{set:?}: {c} vs {expected}"
                );
            }
            for axis in 0..2 {
                let (mean, std) = mean_std(offsets.iter().map(|o| o[axis]));
                let want = set.component_std();
                assert!(
                    mean.abs() < 4.0 * want / (n as f64).sqrt(),
                    "{set:?} mean {mean}"
                );
                assert!(
                    (std / want - 1.0).abs() < 0.03,
                    "{set:?} std {std} vs {want}"
                );
            }
        }
    }

    /// The Swiss roll's moments against the same ones integrated numerically from its
    /// definition: with t uniform on [1.5π, 4.5π], x = (t cos t + N(0, 0.25²)) / 7.5 and
    /// z = (t sin t + N(0, 0.25²)) / 7.5 have mean E[t cos t]/7.5, E[t sin t]/7.5 and variance
    /// (Var[t cos t] + 0.0625)/7.5², (Var[t sin t] + 0.0625)/7.5².
    #[test]
    fn swiss_roll_moments_equal_the_integrals_of_its_definition() {
        let (a, b) = (1.5 * std::f64::consts::PI, 4.5 * std::f64::consts::PI);
        let steps = 200_000;
        let integrate = |f: &dyn Fn(f64) -> f64| {
            let h = (b - a) / steps as f64;
            (0..steps).map(|i| f(a + (i as f64 + 0.5) * h)).sum::<f64>() * h / (b - a)
        };
        let points = ToyDataset::SwissRoll.sample(&mut ChaCha8Rng::seed_from_u64(2), 200_000);
        let n = points.len() as f64;
        for (axis, f) in [
            (0, &(|t: f64| t * t.cos()) as &dyn Fn(f64) -> f64),
            (1, &(|t: f64| t * t.sin()) as &dyn Fn(f64) -> f64),
        ] {
            let m = integrate(f);
            let var = integrate(&|t| (f(t) - m).powi(2)) + 0.0625;
            let (mean, std) = mean_std(points.iter().map(|p| p[axis] as f64));
            let (want_mean, want_std) = (m / 7.5, var.sqrt() / 7.5);
            assert!(
                (mean - want_mean).abs() < 5.0 * want_std / n.sqrt(),
                "axis {axis}: mean {mean} vs {want_mean}"
            );
            assert!(
                (std / want_std - 1.0).abs() < 0.01,
                "axis {axis}: std {std} vs {want_std}"
            );
        }
    }
}

//! Fréchet Inception Distance and Kernel Inception Distance from feature matrices, computed as
//! pytorch-fid and torch-fidelity compute them, in f64 on the host.
//!
//! - [`FeatureStats`]: the mean and the unbiased covariance of `[n, d]` features (NumPy's
//!   `np.mean(axis=0)` and `np.cov(rowvar=False)`), read from and written to pytorch-fid's `.npz`
//!   statistics files (arrays `mu` `[d]` and `sigma` `[d, d]`, float64);
//! - [`frechet_distance`]: `|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))`, where the
//!   trace of the square root is taken as `sum sqrt(eig(S1^(1/2) S2 S1^(1/2)))` (a symmetric
//!   product with the same eigenvalues as `S1 S2`; negative eigenvalues from rounding clamped to
//!   0), instead of pytorch-fid's general `scipy.linalg.sqrtm(S1 @ S2)`;
//! - [`kid`]: torch-fidelity's KID, the unbiased MMD^2 with the cubic polynomial kernel
//!   `(x.y / d + 1)^3` over random subsets, their mean and (population) standard deviation.

use anyhow::{Context, Result, bail, ensure};
use nalgebra::{DMatrix, DVector, SymmetricEigen};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::io::{Read, Write};
use std::path::Path;

/// Mean and covariance of a feature set: pytorch-fid's `mu` and `sigma`.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureStats {
    /// `[d]` mean feature.
    pub mu: DVector<f64>,
    /// `[d, d]` unbiased covariance (divided by n - 1).
    pub sigma: DMatrix<f64>,
}

impl FeatureStats {
    /// The statistics of `features`, `[n, dim]` row-major; needs n >= 2.
    pub fn from_features(features: &[f32], dim: usize) -> Result<Self> {
        ensure!(
            dim > 0 && features.len() % dim == 0,
            "features: {} values are not rows of {dim}",
            features.len()
        );
        let n = features.len() / dim;
        ensure!(
            n >= 2,
            "features: a covariance needs at least 2 rows, got {n}"
        );
        let x = DMatrix::from_row_slice(n, dim, features).map(f64::from); // [n, d]
        let mu = x.row_mean().transpose(); // [d]
        let centred = DMatrix::from_fn(n, dim, |i, j| x[(i, j)] - mu[j]); // [n, d]
        let sigma = (centred.transpose() * &centred) / (n as f64 - 1.0); // [d, d]
        Ok(Self { mu, sigma })
    }

    /// Feature dimension d.
    pub fn dim(&self) -> usize {
        self.mu.len()
    }

    /// Reads a pytorch-fid statistics file (`np.savez(path, mu=mu, sigma=sigma)`, stored or
    /// deflated; float64 or float32 arrays).
    pub fn read_npz(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path)
            .with_context(|| format!("cannot open statistics file {}", path.display()))?;
        let mut archive = zip::ZipArchive::new(file).with_context(|| {
            format!(
                "{} is not an .npz file (a zip archive of .npy arrays)",
                path.display()
            )
        })?;
        let mut array = |name: &str| -> Result<(Vec<usize>, Vec<f64>)> {
            let mut entry = archive.by_name(&format!("{name}.npy")).with_context(|| {
                format!(
                    "{} holds no array `{name}` (pytorch-fid writes mu and sigma)",
                    path.display()
                )
            })?;
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes)?;
            npy::read(&bytes).with_context(|| format!("{}: array `{name}`", path.display()))
        };
        let (mu_shape, mu) = array("mu")?;
        let (sigma_shape, sigma) = array("sigma")?;
        let d = mu.len();
        ensure!(
            mu_shape.len() == 1 && sigma_shape == [d, d],
            "{}: mu has shape {mu_shape:?} and sigma {sigma_shape:?}; expected [d] and [d, d]",
            path.display()
        );
        Ok(Self {
            mu: DVector::from_vec(mu),
            sigma: DMatrix::from_row_slice(d, d, &sigma),
        })
    }

    /// Writes the statistics as pytorch-fid does (`mu`, `sigma` float64, stored), through a
    /// temporary file renamed into place.
    pub fn write_npz(&self, path: &Path) -> Result<()> {
        let d = self.dim();
        let sigma: Vec<f64> = (0..d * d).map(|k| self.sigma[(k / d, k % d)]).collect();
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        for (name, shape, values) in [
            ("mu.npy", vec![d], self.mu.as_slice()),
            ("sigma.npy", vec![d, d], sigma.as_slice()),
        ] {
            zip.start_file(name, options)?;
            zip.write_all(&npy::write(&shape, values))?;
        }
        let bytes = zip.finish()?.into_inner();
        crate::atomic::write_atomic(path, &bytes)
            .with_context(|| format!("cannot write statistics file {}", path.display()))
    }
}

/// The Fréchet distance between two Gaussians, pytorch-fid's `calculate_frechet_distance`.
pub fn frechet_distance(a: &FeatureStats, b: &FeatureStats) -> Result<f64> {
    ensure!(
        a.dim() == b.dim(),
        "feature statistics of dimension {} and {} cannot be compared",
        a.dim(),
        b.dim()
    );
    let diff = &a.mu - &b.mu;
    let root_a = sqrt_psd(&a.sigma); // S1^(1/2)
    let product = &root_a * &b.sigma * &root_a; // S1^(1/2) S2 S1^(1/2), symmetric PSD
    let product = (&product + product.transpose()) * 0.5;
    let trace_root: f64 = SymmetricEigen::new(product)
        .eigenvalues
        .iter()
        .map(|&l| l.max(0.0).sqrt())
        .sum();
    let fid = diff.dot(&diff) + a.sigma.trace() + b.sigma.trace() - 2.0 * trace_root;
    ensure!(
        fid.is_finite(),
        "the Fréchet distance is not finite ({fid})"
    );
    Ok(fid)
}

/// The square root of a symmetric positive semi-definite matrix (eigenvalues clamped at 0).
fn sqrt_psd(m: &DMatrix<f64>) -> DMatrix<f64> {
    let eigen = SymmetricEigen::new((m + m.transpose()) * 0.5);
    let q = &eigen.eigenvectors;
    let roots = eigen.eigenvalues.map(|l| l.max(0.0).sqrt());
    q * DMatrix::from_diagonal(&roots) * q.transpose()
}

/// KID: mean and standard deviation of the subsets' MMD^2 estimates.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Kid {
    /// Mean over subsets.
    pub mean: f64,
    /// Population standard deviation over subsets (`np.std`).
    pub std: f64,
}

/// torch-fidelity's KID between `[n1, dim]` and `[n2, dim]` features: `subsets` random subsets
/// of `subset_size` rows of each (without replacement, drawn from `seed`; torch-fidelity's
/// defaults are 100 subsets of 1,000).
pub fn kid(
    a: &[f32],
    b: &[f32],
    dim: usize,
    subsets: usize,
    subset_size: usize,
    seed: u64,
) -> Result<Kid> {
    ensure!(
        dim > 0 && a.len() % dim == 0 && b.len() % dim == 0,
        "features are not rows of {dim}"
    );
    let (n1, n2) = (a.len() / dim, b.len() / dim);
    ensure!(
        subset_size >= 2 && n1 >= subset_size && n2 >= subset_size,
        "KID subsets of {subset_size} need at least that many images on each side (got {n1} and {n2})"
    );
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let draws: Vec<(Vec<usize>, Vec<usize>)> = (0..subsets)
        .map(|_| {
            let i = rand::seq::index::sample(&mut rng, n1, subset_size).into_vec();
            let j = rand::seq::index::sample(&mut rng, n2, subset_size).into_vec();
            (i, j)
        })
        .collect();
    kid_on_subsets(a, b, dim, &draws)
}

/// KID over given subsets: for each pair of row-index lists (equal lengths), the unbiased MMD^2
/// of those rows of `a` and `b`.
pub fn kid_on_subsets(
    a: &[f32],
    b: &[f32],
    dim: usize,
    subsets: &[(Vec<usize>, Vec<usize>)],
) -> Result<Kid> {
    if subsets.is_empty() {
        bail!("KID needs at least one subset");
    }
    let rows = |x: &[f32], idx: &[usize]| {
        DMatrix::from_fn(idx.len(), dim, |r, c| f64::from(x[idx[r] * dim + c])) // [m, d]
    };
    let mmds: Vec<f64> = subsets
        .iter()
        .map(|(i, j)| {
            ensure!(
                i.len() == j.len() && i.len() >= 2,
                "KID subsets must pair equal sizes >= 2"
            );
            Ok(polynomial_mmd(&rows(a, i), &rows(b, j)))
        })
        .collect::<Result<_>>()?;
    let mean = mmds.iter().sum::<f64>() / mmds.len() as f64;
    let var = mmds.iter().map(|m| (m - mean).powi(2)).sum::<f64>() / mmds.len() as f64;
    Ok(Kid {
        mean,
        std: var.sqrt(),
    })
}

/// Unbiased MMD^2 of `x` and `y` (both `[m, d]`) under `k(p, q) = (p.q / d + 1)^3`.
fn polynomial_mmd(x: &DMatrix<f64>, y: &DMatrix<f64>) -> f64 {
    let (m, d) = x.shape();
    let kernel = |p: &DMatrix<f64>, q: &DMatrix<f64>| {
        (p * q.transpose()).map(|v| (v / d as f64 + 1.0).powi(3))
    };
    let (kxx, kyy, kxy) = (kernel(x, x), kernel(y, y), kernel(x, y)); // [m, m] each
    let off_diagonal = |k: &DMatrix<f64>| k.sum() - k.trace();
    let m = m as f64;
    (off_diagonal(&kxx) + off_diagonal(&kyy)) / (m * (m - 1.0)) - 2.0 * kxy.sum() / (m * m)
}

/// NumPy's `.npy` format, version 1.0, little-endian float arrays in C order (the part that
/// statistics files use; written by hand: the crates for it bring their own array types).
mod npy {
    use anyhow::{Result, bail, ensure};

    const MAGIC: &[u8] = b"\x93NUMPY";

    /// `(shape, values)` of a `<f8` or `<f4` C-order array.
    pub fn read(bytes: &[u8]) -> Result<(Vec<usize>, Vec<f64>)> {
        ensure!(
            bytes.len() >= 10 && &bytes[..6] == MAGIC,
            "not a .npy array"
        );
        let (header_len, start) = match bytes[6] {
            1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
            2 | 3 if bytes.len() >= 12 => (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            ),
            v => bail!(".npy version {v} is not supported"),
        };
        ensure!(bytes.len() >= start + header_len, "truncated .npy header");
        let header = std::str::from_utf8(&bytes[start..start + header_len])?;
        let field = |key: &str| -> Result<&str> {
            let at = header
                .find(&format!("'{key}':"))
                .ok_or_else(|| anyhow::anyhow!(".npy header has no '{key}': {header}"))?;
            Ok(header[at + key.len() + 3..].trim_start())
        };
        ensure!(
            field("fortran_order")?.starts_with("False"),
            "Fortran-order arrays are not supported"
        );
        let descr = field("descr")?;
        let width = if descr.starts_with("'<f8'") {
            8
        } else if descr.starts_with("'<f4'") {
            4
        } else {
            bail!(
                "array type {} is not supported (float64 or float32)",
                &descr[..descr.find(',').unwrap_or(descr.len())]
            )
        };
        let shape_text = field("shape")?;
        let close = shape_text
            .find(')')
            .ok_or_else(|| anyhow::anyhow!("bad shape in {header}"))?;
        let shape: Vec<usize> = shape_text[1..close]
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        let count: usize = shape.iter().product();
        let data = &bytes[start + header_len..];
        ensure!(
            data.len() == count * width,
            "array data holds {} bytes, shape {shape:?} needs {}",
            data.len(),
            count * width
        );
        let values = if width == 8 {
            data.chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                .collect()
        } else {
            data.chunks_exact(4)
                .map(|c| f64::from(f32::from_le_bytes(c.try_into().unwrap())))
                .collect()
        };
        Ok((shape, values))
    }

    /// A `<f8` C-order array of `shape`.
    pub fn write(shape: &[usize], values: &[f64]) -> Vec<u8> {
        let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
        let shape_text = if dims.len() == 1 {
            format!("({},)", dims[0])
        } else {
            format!("({})", dims.join(", "))
        };
        let mut header =
            format!("{{'descr': '<f8', 'fortran_order': False, 'shape': {shape_text}, }}");
        // Pad so that the data starts on a 64-byte boundary; the header ends with '\n'.
        let total = MAGIC.len() + 4 + header.len() + 1;
        header.push_str(&" ".repeat((64 - total % 64) % 64));
        header.push('\n');
        let mut out = Vec::with_capacity(10 + header.len() + values.len() * 8);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        for v in values {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    /// `[n, d]` features with correlated columns, from `seed`.
    pub(crate) fn features(n: usize, d: usize, shift: f32, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut out = Vec::with_capacity(n * d);
        for _ in 0..n {
            let common: f32 = rng.random_range(-1.0..1.0);
            for j in 0..d {
                let own: f32 = rng.random_range(-1.0..1.0);
                out.push(shift + own * (1.0 + j as f32 / d as f32) + common * 0.5);
            }
        }
        out
    }

    #[test]
    fn statistics_are_the_mean_and_the_unbiased_covariance() {
        // Rows (1, 2), (3, 6), (5, 7): np.cov(rowvar=False) = [[4, 5], [5, 7]].
        let s = FeatureStats::from_features(&[1.0, 2.0, 3.0, 6.0, 5.0, 7.0], 2).unwrap();
        assert_eq!(s.mu.as_slice(), &[3.0, 5.0]);
        assert_eq!(
            s.sigma,
            DMatrix::from_row_slice(2, 2, &[4.0, 5.0, 5.0, 7.0])
        );
        assert!(FeatureStats::from_features(&[1.0, 2.0], 2).is_err());
        assert!(FeatureStats::from_features(&[1.0, 2.0, 3.0], 2).is_err());
    }

    #[test]
    fn frechet_distance_of_diagonal_gaussians_is_the_closed_form() {
        // Commuting (diagonal) covariances: tr((AB)^(1/2)) = sum sqrt(a_i b_i), so
        // FID = |mu1 - mu2|^2 + sum (sqrt(a_i) - sqrt(b_i))^2.
        let (a, b) = ([4.0, 1.0, 0.25, 9.0], [1.0, 1.0, 1.0, 2.0]);
        let stats = |mu: [f64; 4], var: [f64; 4]| FeatureStats {
            mu: DVector::from_row_slice(&mu),
            sigma: DMatrix::from_diagonal(&DVector::from_row_slice(&var)),
        };
        let (s1, s2) = (
            stats([0.0, 1.0, 2.0, 3.0], a),
            stats([1.0, 1.0, 0.0, 3.0], b),
        );
        let expected = 1.0
            + 4.0
            + a.iter()
                .zip(b)
                .map(|(x, y): (&f64, f64)| (x.sqrt() - y.sqrt()).powi(2))
                .sum::<f64>();
        let fid = frechet_distance(&s1, &s2).unwrap();
        assert!((fid - expected).abs() < 1e-12, "{fid} vs {expected}");
        // A rotation of both (the same orthogonal Q) leaves the distance as it is.
        let q = SymmetricEigen::new(
            FeatureStats::from_features(&features(50, 4, 0.0, 1), 4)
                .unwrap()
                .sigma,
        )
        .eigenvectors;
        let rotate = |s: &FeatureStats| FeatureStats {
            mu: &q * &s.mu,
            sigma: &q * &s.sigma * q.transpose(),
        };
        let rotated = frechet_distance(&rotate(&s1), &rotate(&s2)).unwrap();
        assert!((rotated - expected).abs() < 1e-9, "{rotated} vs {expected}");
    }

    #[test]
    fn identical_statistics_are_at_distance_zero() {
        let s = FeatureStats::from_features(&features(300, 32, 0.0, 2), 32).unwrap();
        let fid = frechet_distance(&s, &s).unwrap();
        assert!(fid.abs() < 1e-9 * s.sigma.trace(), "{fid}");
        let other = FeatureStats::from_features(&features(300, 16, 0.0, 2), 16).unwrap();
        assert!(frechet_distance(&s, &other).is_err());
    }

    #[test]
    fn kid_of_a_set_against_itself_is_near_zero_and_a_shift_is_seen() {
        let (d, n) = (8, 400);
        let a = features(n, d, 0.0, 3);
        let b = features(n, d, 0.0, 4);
        let shifted = features(n, d, 0.5, 4);
        let same = kid(&a, &b, d, 20, 100, 0).unwrap();
        let apart = kid(&a, &shifted, d, 20, 100, 0).unwrap();
        assert!(same.mean.abs() < 3.0 * same.std + 1e-3, "{same:?}");
        assert!(
            apart.mean > 10.0 * same.mean.abs().max(same.std),
            "{apart:?} vs {same:?}"
        );
        assert!(
            kid(&a, &b, d, 1, n + 1, 0).is_err(),
            "subsets larger than the sets"
        );
    }

    #[test]
    fn npz_statistics_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stats.npz");
        let s = FeatureStats::from_features(&features(40, 5, 0.1, 5), 5).unwrap();
        s.write_npz(&path).unwrap();
        assert_eq!(FeatureStats::read_npz(&path).unwrap(), s);
        // .npy data starts on a 64-byte boundary, as NumPy writes it.
        let bytes = npy::write(&[3], &[1.0, 2.0, 3.0]);
        assert_eq!((bytes.len() - 24) % 64, 0);
        assert_eq!(npy::read(&bytes).unwrap(), (vec![3], vec![1.0, 2.0, 3.0]));
    }

    #[test]
    fn bad_statistics_files_are_named_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.npz");
        let e = format!("{:#}", FeatureStats::read_npz(&missing).unwrap_err());
        assert!(e.contains("none.npz"), "{e}");
        let text = dir.path().join("text.npz");
        std::fs::write(&text, "not a zip").unwrap();
        let e = format!("{:#}", FeatureStats::read_npz(&text).unwrap_err());
        assert!(e.contains("not an .npz file"), "{e}");
        // An archive with `mu` only.
        let only_mu = dir.path().join("mu.npz");
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&only_mu).unwrap());
        zip.start_file("mu.npy", zip::write::SimpleFileOptions::default())
            .unwrap();
        zip.write_all(&npy::write(&[2], &[0.0, 1.0])).unwrap();
        zip.finish().unwrap();
        let e = format!("{:#}", FeatureStats::read_npz(&only_mu).unwrap_err());
        assert!(e.contains("no array `sigma`"), "{e}");
    }
}

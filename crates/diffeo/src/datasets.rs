//! Small built-in data generators with fixed formulas (row-major `Vec<f64>`).

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use rand_distr::StandardNormal;

/// scikit-learn's `make_moons(n, noise)`: evenly spaced angles on two interleaving half
/// circles, shuffled, plus N(0, noise²) jitter. `[n, 2]`.
pub fn make_moons(n: usize, noise: f64, rng: &mut StdRng) -> Vec<f64> {
    let n_out = n / 2;
    let n_in = n - n_out;
    let lin = |k: usize, i: usize| if k <= 1 { 0.0 } else { std::f64::consts::PI * i as f64 / (k - 1) as f64 };
    let mut pts: Vec<[f64; 2]> = Vec::with_capacity(n);
    for i in 0..n_out {
        let t = lin(n_out, i);
        pts.push([t.cos(), t.sin()]);
    }
    for i in 0..n_in {
        let t = lin(n_in, i);
        pts.push([1.0 - t.cos(), 1.0 - t.sin() - 0.5]);
    }
    pts.shuffle(rng);
    pts.iter()
        .flat_map(|p| {
            let a: f64 = rng.sample(StandardNormal);
            let b: f64 = rng.sample(StandardNormal);
            [p[0] + noise * a, p[1] + noise * b]
        })
        .collect()
}

/// FFJORD's two moons: `make_moons(noise = 0.1)·2 − (1, 0.2)`. Its entropy bound is
/// E[log p] ≈ −2.393 nats.
pub fn two_moons(n: usize, rng: &mut StdRng) -> Vec<f64> {
    let mut v = make_moons(n, 0.1, rng);
    for p in v.chunks_exact_mut(2) {
        p[0] = p[0] * 2.0 - 1.0;
        p[1] = p[1] * 2.0 - 0.2;
    }
    v
}

/// The entropy bound of [`two_moons`] (nats).
pub const TWO_MOONS_EXPECTED_LOG_LIKELIHOOD: f64 = -2.393;

/// Lower Cholesky factor of a symmetric positive-definite matrix (row-major `d×d`), or `None`.
pub fn cholesky(a: &[f64], d: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..=i {
            let mut s = a[i * d + j];
            for k in 0..j {
                s -= l[i * d + k] * l[j * d + k];
            }
            if i == j {
                if s <= 0.0 {
                    return None;
                }
                l[i * d + i] = s.sqrt();
            } else {
                l[i * d + j] = s / l[j * d + j];
            }
        }
    }
    Some(l)
}

/// A multivariate normal N(μ, Σ) given the Cholesky factor `L` of Σ: samples and exact
/// log-densities.
#[derive(Clone, Debug)]
pub struct Gaussian {
    /// Mean.
    pub mean: Vec<f64>,
    /// Lower Cholesky factor of the covariance (row-major).
    pub chol: Vec<f64>,
}

impl Gaussian {
    /// From mean and covariance (`None` if Σ is not positive definite).
    pub fn new(mean: Vec<f64>, cov: &[f64]) -> Option<Self> {
        let chol = cholesky(cov, mean.len())?;
        Some(Self { mean, chol })
    }

    /// Features.
    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// `n` samples, row-major.
    pub fn sample(&self, n: usize, rng: &mut StdRng) -> Vec<f64> {
        let d = self.dim();
        let mut out = Vec::with_capacity(n * d);
        for _ in 0..n {
            let z: Vec<f64> = (0..d).map(|_| rng.sample(StandardNormal)).collect();
            for i in 0..d {
                let s: f64 = (0..=i).map(|k| self.chol[i * d + k] * z[k]).sum();
                out.push(self.mean[i] + s);
            }
        }
        out
    }

    /// Exact log-density of one point.
    pub fn log_prob(&self, x: &[f64]) -> f64 {
        let d = self.dim();
        // Solve L z = x − μ.
        let mut z = vec![0.0; d];
        for i in 0..d {
            let s = x[i] - self.mean[i] - (0..i).map(|k| self.chol[i * d + k] * z[k]).sum::<f64>();
            z[i] = s / self.chol[i * d + i];
        }
        let log_det: f64 = (0..d).map(|i| self.chol[i * d + i].ln()).sum();
        -0.5 * z.iter().map(|v| v * v).sum::<f64>() - log_det - 0.5 * d as f64 * crate::tensor::LN_2PI
    }
}

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
    shuffle_and_jitter(pts, noise, rng)
}

/// Shuffles 2-D points, then adds N(0, noise²) to each coordinate (x before y, point by point);
/// row-major output.
fn shuffle_and_jitter(mut pts: Vec<[f64; 2]>, noise: f64, rng: &mut StdRng) -> Vec<f64> {
    pts.shuffle(rng);
    pts.iter().flat_map(|p| [p[0] + noise * normal(rng), p[1] + noise * normal(rng)]).collect()
}

/// `k` points at evenly spaced angles (endpoint excluded) on the circle of radius `r`.
fn circle(k: usize, r: f64) -> impl Iterator<Item = [f64; 2]> {
    (0..k).map(move |i| {
        let t = 2.0 * std::f64::consts::PI * i as f64 / k as f64;
        [r * t.cos(), r * t.sin()]
    })
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
                if s.is_nan() || s <= 0.0 {
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

fn normal(rng: &mut StdRng) -> f64 {
    rng.sample(StandardNormal)
}

/// scikit-learn's `make_circles(n, factor, noise)`: two concentric circles at evenly spaced
/// angles (endpoint excluded), shuffled, plus N(0, noise²) jitter.
pub fn make_circles(n: usize, factor: f64, noise: f64, rng: &mut StdRng) -> Vec<f64> {
    let n_out = n / 2;
    let n_in = n - n_out;
    let pts = circle(n_out, 1.0).chain(circle(n_in, factor)).collect();
    shuffle_and_jitter(pts, noise, rng)
}

/// The 2-D toy densities of the FFJORD and NSF papers, by name (see [`TOYS`]).
pub fn toy(name: &str, n: usize, rng: &mut StdRng) -> Option<Vec<f64>> {
    use std::f64::consts::PI;
    Some(match name {
        "moons" => two_moons(n, rng),
        "circles" => make_circles(n, 0.5, 0.08, rng).into_iter().map(|v| v * 3.0).collect(),
        "rings" => {
            // Radii 3·{1, ¾, ½, ¼}; the smallest circle takes the remainder.
            let per = n / 4;
            let pts = [1.0, 0.75, 0.5, 0.25]
                .iter()
                .enumerate()
                .flat_map(|(i, r)| circle(if i == 3 { n - 3 * per } else { per }, 3.0 * r))
                .collect();
            shuffle_and_jitter(pts, 0.08, rng)
        }
        "8gaussians" => (0..n)
            .flat_map(|_| {
                let k = rng.random_range(0..8) as f64;
                let (s, c) = (k * PI / 4.0).sin_cos();
                [(4.0 * c + 0.5 * normal(rng)) / 1.414, (4.0 * s + 0.5 * normal(rng)) / 1.414]
            })
            .collect(),
        "pinwheel" => {
            let mut pts: Vec<[f64; 2]> = (0..n)
                .map(|i| {
                    let class = (i * 5 / n.max(1)) as f64;
                    let f1 = 1.0 + 0.3 * normal(rng);
                    let f2 = 0.1 * normal(rng);
                    let a = 2.0 * PI * class / 5.0 + 0.25 * f1.exp();
                    let (s, c) = a.sin_cos();
                    [2.0 * (f1 * c + f2 * s), 2.0 * (-f1 * s + f2 * c)]
                })
                .collect();
            pts.shuffle(rng);
            pts.concat()
        }
        "2spirals" => {
            let half = n / 2;
            let mut pts: Vec<[f64; 2]> = Vec::with_capacity(n);
            for i in 0..n {
                let u: f64 = rng.random();
                let t = u.sqrt() * 540.0 * 2.0 * PI / 360.0;
                let x = -t.cos() * t + rng.random::<f64>() * 0.5;
                let y = t.sin() * t + rng.random::<f64>() * 0.5;
                let sign = if i < half { 1.0 } else { -1.0 };
                pts.push([sign * x / 3.0 + 0.1 * normal(rng), sign * y / 3.0 + 0.1 * normal(rng)]);
            }
            pts.shuffle(rng);
            pts.concat()
        }
        "checkerboard" => (0..n)
            .flat_map(|_| {
                let x1: f64 = rng.random_range(-2.0..2.0);
                let x2 = rng.random::<f64>() - 2.0 * rng.random_range(0..2) as f64 + x1.floor().rem_euclid(2.0);
                [2.0 * x1, 2.0 * x2]
            })
            .collect(),
        "swissroll" => (0..n)
            .flat_map(|_| {
                let t = 1.5 * PI * (1.0 + 2.0 * rng.random::<f64>());
                [(t * t.cos() + normal(rng)) / 5.0, (t * t.sin() + normal(rng)) / 5.0]
            })
            .collect(),
        _ => return None,
    })
}

/// Names of the built-in 2-D toys and their entropy bounds E[log p] (nats), as computed for the
/// formulas above (`pinwheel` assumes its arms do not overlap).
pub const TOYS: [(&str, f64); 8] = [
    ("moons", -2.393),
    ("circles", -3.274),
    ("8gaussians", -2.835),
    ("pinwheel", -2.324),
    ("2spirals", -2.652),
    ("checkerboard", -3.4657),
    ("rings", -2.620),
    ("swissroll", -2.677),
];

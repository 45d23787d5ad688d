//! Base densities `p_u`: standard normal, learnable diagonal normal, Gaussian mixture
//! (learnable, diagonal) and Student-t.
//!
//! Sampling draws its randomness from the caller's RNG, so results are reproducible.
//! Normal and diagonal-normal samples are reparameterised (differentiable in the parameters).

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution as _, StandardNormal as StdNormalDist, StudentT as StudentTDist};
use serde::{Deserialize, Serialize};

use crate::error::{FlowError, Result};
use crate::tensor::{dims2, indices, logsumexp_rows, matrix, sum_rows, to_vec, LN_2PI};

/// Which base density (serialized in a flow's architecture).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BaseKind {
    /// N(0, I).
    #[default]
    StandardNormal,
    /// N(μ, diag σ²) with learnable μ and log σ (starts at N(0, I)).
    DiagNormal,
    /// Σ_k π_k N(μ_k, diag σ_k²), all learnable; means start at N(0, I) draws, σ = 1, equal
    /// weights.
    GaussianMixture {
        /// Number of components K.
        components: usize,
    },
    /// Independent Student-t with `df` degrees of freedom in every feature (heavy tails).
    StudentT {
        /// Degrees of freedom ν > 0.
        df: f64,
    },
}

impl BaseKind {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        match self {
            BaseKind::GaussianMixture { components: 0 } => {
                Err(FlowError::InvalidConfig("a mixture needs at least one component".into()))
            }
            BaseKind::StudentT { df } if !(*df > 0.0 && df.is_finite()) => {
                Err(FlowError::InvalidConfig(format!("Student-t needs finite df > 0, got {df}")))
            }
            _ => Ok(()),
        }
    }

    /// Trainable parameters on `dim` features.
    pub fn parameter_count(&self, dim: usize) -> usize {
        match self {
            BaseKind::StandardNormal | BaseKind::StudentT { .. } => 0,
            BaseKind::DiagNormal => 2 * dim,
            BaseKind::GaussianMixture { components } => components * (1 + 2 * dim),
        }
    }
}

/// Configuration of a base density: its kind, its features and the seed of its random
/// initialisation (mixture means).
#[derive(Clone, Debug, PartialEq)]
pub struct BaseConfig {
    /// Features D.
    pub dim: usize,
    /// Which density.
    pub kind: BaseKind,
    /// Seed of the random initialisation.
    pub seed: u64,
}

impl BaseConfig {
    /// `kind` on `dim` features.
    pub fn new(dim: usize, kind: BaseKind) -> Self {
        Self { dim, kind, seed: 0 }
    }

    /// Sets the seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Builds the density.
    pub fn init(&self, device: &Device) -> Result<Base> {
        self.kind.validate()?;
        if self.dim == 0 {
            return Err(FlowError::InvalidConfig("a base density needs at least one feature".into()));
        }
        let (dim, seed) = (self.dim, self.seed);
        Ok(match &self.kind {
            BaseKind::StandardNormal => Base::StandardNormal(StandardNormal { dim }),
            BaseKind::DiagNormal => Base::DiagNormal(DiagNormal {
                loc: Param::from_tensor(Tensor::zeros([dim], device)),
                log_scale: Param::from_tensor(Tensor::zeros([dim], device)),
            }),
            BaseKind::GaussianMixture { components } => {
                let mut rng = StdRng::seed_from_u64(seed ^ 0xB45E);
                let k = *components;
                let locs: Vec<f64> = (0..k * dim).map(|_| rng.sample(StdNormalDist)).collect();
                Base::GaussianMixture(GaussianMixture {
                    logits: Param::from_tensor(Tensor::zeros([k], device)),
                    locs: Param::from_tensor(matrix(locs, k, dim, device)),
                    log_scales: Param::from_tensor(Tensor::zeros([k, dim], device)),
                })
            }
            BaseKind::StudentT { df } => Base::StudentT(StudentT { dim, df: *df }),
        })
    }
}

/// N(0, I).
#[derive(Module, Debug)]
pub struct StandardNormal {
    /// Features.
    pub dim: usize,
}

/// N(μ, diag σ²), learnable.
#[derive(Module, Debug)]
pub struct DiagNormal {
    /// Mean `[D]`.
    pub loc: Param<Tensor<1>>,
    /// log σ `[D]`.
    pub log_scale: Param<Tensor<1>>,
}

/// Diagonal Gaussian mixture, learnable.
#[derive(Module, Debug)]
pub struct GaussianMixture {
    /// Unnormalised log-weights `[K]`.
    pub logits: Param<Tensor<1>>,
    /// Means `[K, D]`.
    pub locs: Param<Tensor<2>>,
    /// log σ `[K, D]`.
    pub log_scales: Param<Tensor<2>>,
}

/// Independent Student-t in every feature.
#[derive(Module, Debug)]
pub struct StudentT {
    /// Features.
    pub dim: usize,
    /// Degrees of freedom.
    pub df: f64,
}

/// A base density.
#[derive(Module, Debug)]
pub enum Base {
    /// See [`StandardNormal`].
    StandardNormal(StandardNormal),
    /// See [`DiagNormal`].
    DiagNormal(DiagNormal),
    /// See [`GaussianMixture`].
    GaussianMixture(GaussianMixture),
    /// See [`StudentT`].
    StudentT(StudentT),
}

fn normal_noise(n: usize, d: usize, rng: &mut StdRng, device: &Device) -> Tensor<2> {
    let v: Vec<f64> = (0..n * d).map(|_| rng.sample(StdNormalDist)).collect();
    matrix(v, n, d, device)
}

/// log Γ(x) for x > 0 (Lanczos, |error| < 1e−14).
pub fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + G + 0.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

impl Base {
    /// Features.
    pub fn dim(&self) -> usize {
        match self {
            Base::StandardNormal(b) => b.dim,
            Base::DiagNormal(b) => b.loc.val().dims()[0],
            Base::GaussianMixture(b) => b.locs.val().dims()[1],
            Base::StudentT(b) => b.dim,
        }
    }

    /// log p_u(z) per row, `[N]`.
    pub fn log_prob(&self, z: Tensor<2>) -> Tensor<1> {
        let (n, d) = dims2(&z);
        match self {
            Base::StandardNormal(_) => sum_rows(z.square()).mul_scalar(-0.5).sub_scalar(0.5 * d as f64 * LN_2PI),
            Base::DiagNormal(b) => {
                let ls = b.log_scale.val();
                let e = z.sub(b.loc.val().unsqueeze()).mul(ls.clone().neg().exp().unsqueeze());
                sum_rows(e.square())
                    .mul_scalar(-0.5)
                    .sub(ls.sum().expand([n]))
                    .sub_scalar(0.5 * d as f64 * LN_2PI)
            }
            Base::GaussianMixture(b) => {
                let locs = b.locs.val(); // [K, D]
                let ls = b.log_scales.val(); // [K, D]
                let k = locs.dims()[0];
                let diff = z.unsqueeze_dim::<3>(1).sub(locs.unsqueeze_dim::<3>(0)); // [N, K, D]
                let e = diff.mul(ls.clone().neg().exp().unsqueeze_dim::<3>(0));
                let comp = e
                    .square()
                    .mul_scalar(-0.5)
                    .sub(ls.unsqueeze_dim::<3>(0))
                    .sum_dim(2)
                    .reshape([n, k])
                    .sub_scalar(0.5 * d as f64 * LN_2PI);
                let log_w = burn::tensor::activation::log_softmax(b.logits.val(), 0);
                logsumexp_rows(comp.add(log_w.unsqueeze()))
            }
            Base::StudentT(b) => {
                let nu = b.df;
                let c = ln_gamma((nu + 1.0) / 2.0) - ln_gamma(nu / 2.0) - 0.5 * (nu * std::f64::consts::PI).ln();
                let body = z.square().div_scalar(nu).log1p().mul_scalar(-(nu + 1.0) / 2.0);
                sum_rows(body).add_scalar(c * d as f64)
            }
        }
    }

    /// `n` samples `[n, D]`.
    pub fn sample(&self, n: usize, rng: &mut StdRng, device: &Device) -> Result<Tensor<2>> {
        let d = self.dim();
        Ok(match self {
            Base::StandardNormal(_) => normal_noise(n, d, rng, device),
            Base::DiagNormal(b) => normal_noise(n, d, rng, device)
                .mul(b.log_scale.val().exp().unsqueeze())
                .add(b.loc.val().unsqueeze()),
            Base::GaussianMixture(b) => {
                let logits = to_vec(b.logits.val())?;
                let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let w: Vec<f64> = logits.iter().map(|l| (l - m).exp()).collect();
                let total: f64 = w.iter().sum();
                let comps: Vec<usize> = (0..n)
                    .map(|_| {
                        let mut r = rng.random::<f64>() * total;
                        for (i, wi) in w.iter().enumerate() {
                            if r < *wi {
                                return i;
                            }
                            r -= wi;
                        }
                        w.len() - 1
                    })
                    .collect();
                let idx = indices(&comps, device);
                let loc = b.locs.val().select(0, idx.clone());
                let scale = b.log_scales.val().select(0, idx).exp();
                normal_noise(n, d, rng, device).mul(scale).add(loc)
            }
            Base::StudentT(b) => {
                let dist = StudentTDist::new(b.df).map_err(|e| FlowError::InvalidConfig(e.to_string()))?;
                let v: Vec<f64> = (0..n * d).map(|_| dist.sample(rng)).collect();
                matrix(v, n, d, device)
            }
        })
    }
}


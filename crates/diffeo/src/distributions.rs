//! Base densities `p_u`: standard normal, learnable diagonal normal, Gaussian mixture
//! (learnable, diagonal), Student-t and the resampled base (LARS).
//!
//! Sampling draws its randomness from the caller's RNG, so results are reproducible.
//! Normal and diagonal-normal samples are reparameterised (differentiable in the parameters).

use burn::module::{Module, Param, RunningState};
use burn::tensor::{Device, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution as _, StandardNormal as StdNormalDist, StudentT as StudentTDist};
use serde::{Deserialize, Serialize};

use crate::error::{FlowError, Result};
use crate::nn::{Mlp, NetworkConfig};
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
    /// Resampled base (LARS, Stimper et al. 2022): `p(u) ∝ N(u)·a(u)` with a learned acceptance
    /// `a = σ(MLP(u)) ∈ (0, 1)`, truncated rejection sampling; see [`Resampled`].
    Resampled {
        /// Hidden widths of the acceptance network.
        hidden: Vec<usize>,
        /// Proposals per sample before the last is accepted unconditionally (T).
        truncation: usize,
        /// Monte Carlo draws estimating the normalizer in each training pass.
        samples: usize,
    },
}

impl BaseKind {
    /// The resampled base with Stimper et al.'s truncation (T = 100), a 64×2 acceptance network
    /// and 1,024 draws per training estimate of the normalizer.
    pub fn resampled() -> Self {
        BaseKind::Resampled { hidden: vec![64, 64], truncation: 100, samples: 1024 }
    }
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
            BaseKind::Resampled { hidden, truncation, samples } => {
                if hidden.is_empty() || hidden.contains(&0) {
                    return Err(FlowError::InvalidConfig("the acceptance network needs hidden layers of at least one unit".into()));
                }
                if *truncation == 0 || *samples == 0 {
                    return Err(FlowError::InvalidConfig("a resampled base needs a truncation and a sample count of at least 1".into()));
                }
                Ok(())
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
            BaseKind::Resampled { hidden, .. } => NetworkConfig::new(hidden.clone()).mlp(dim, 1, 0).parameter_count(),
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
            BaseKind::Resampled { hidden, truncation, samples } => Base::Resampled(Resampled {
                // Zero last layer: a = 1/2 everywhere, Z = 1/2, p(u) = N(u) at the start.
                acceptance: NetworkConfig::new(hidden.clone()).mlp(dim, 1, seed ^ 0x1A25).init(device)?,
                log_z: RunningState::new(Tensor::from_data(TensorData::new(vec![0.5f64.ln()], [1]), device)),
                dim,
                truncation: *truncation,
                samples: *samples,
            }),
        })
    }
}

/// Draws of the normalizer estimate stored in a model (evaluation uses it).
pub const RESAMPLED_NORMALIZER_DRAWS: usize = 100_000;

/// Resampled base (LARS, Stimper et al. 2022): `p(u) = N(u)·((1 − α)·a(u)/Z + α)` with
/// `a(u) = σ(MLP(u))`, `Z = E_N[a]` and `α = (1 − Z)^{T−1}` — the exact density of truncated
/// rejection sampling (propose from N, accept with probability `a`, accept the T-th proposal
/// always). Training estimates Z from fresh draws in each pass (in the graph, so its gradient
/// reaches `a`); evaluation uses the Z stored in the model, estimated with
/// [`RESAMPLED_NORMALIZER_DRAWS`] draws whenever the model is settled (validation, the
/// returned model).
#[derive(Module, Debug)]
pub struct Resampled {
    /// The acceptance network `u ↦ logit a(u)`.
    pub acceptance: Mlp,
    /// The stored `log Z`.
    pub log_z: RunningState<Tensor<1>>,
    /// Features.
    pub dim: usize,
    /// Truncation T.
    pub truncation: usize,
    /// Draws per training estimate of Z.
    pub samples: usize,
}

impl Resampled {
    /// `log a(u)` `[N]`.
    fn log_acceptance(&self, u: Tensor<2>) -> Tensor<1> {
        let n = dims2(&u).0;
        crate::tensor::log_sigmoid(self.acceptance.forward(u)).reshape([n])
    }

    /// `log p(u)` with `log Z` `[1]`.
    fn log_prob_given(&self, u: Tensor<2>, log_z: Tensor<1>) -> Tensor<1> {
        let (n, d) = dims2(&u);
        let gaussian = sum_rows(u.clone().square()).mul_scalar(-0.5).sub_scalar(0.5 * d as f64 * LN_2PI);
        let log_a = self.log_acceptance(u);
        // log α = (T − 1)·log(1 − Z); log((1 − α)·a/Z + α) by log-sum-exp of the two terms.
        let z = log_z.clone().exp();
        let log_alpha = z.clone().neg().add_scalar(1.0).clamp_min(1e-30).log().mul_scalar((self.truncation - 1) as f64);
        let log_keep = log_alpha.clone().exp().neg().add_scalar(1.0).clamp_min(1e-30).log();
        let first = log_a.add(log_keep.sub(log_z).expand([n]));
        let second = log_alpha.expand([n]);
        gaussian.add(logsumexp_rows(Tensor::stack(vec![first, second], 1)))
    }

    /// `log Z` from `draws` standard-normal draws `[n, D]` (in the graph).
    fn log_normalizer(&self, draws: Tensor<2>) -> Tensor<1> {
        let n = dims2(&draws).0;
        let log_a = self.log_acceptance(draws).reshape([n, 1]);
        logsumexp_rows(log_a.transpose()).sub_scalar((n as f64).ln())
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
    /// See [`Resampled`].
    Resampled(Resampled),
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
            Base::Resampled(b) => b.dim,
        }
    }

    /// `log p_u(z)` under a call: a resampled base in a training call estimates its normalizer
    /// from fresh draws of the call's random source; otherwise [`log_prob`](Self::log_prob).
    pub fn log_prob_with(&self, z: Tensor<2>, call: &crate::event::Call) -> Tensor<1> {
        match self {
            Base::Resampled(b) if call.mode == crate::event::Mode::Training => {
                let draws = call.standard_normal(b.samples, b.dim, &z.device());
                b.log_prob_given(z, b.log_normalizer(draws))
            }
            _ => self.log_prob(z),
        }
    }

    /// Stores what evaluation needs from training: a resampled base's normalizer, estimated
    /// with [`RESAMPLED_NORMALIZER_DRAWS`] draws (a fixed seed: the same weights give the same Z).
    pub fn settle(&self) -> Result<()> {
        if let Base::Resampled(b) = self {
            let mut rng = StdRng::seed_from_u64(0x2A25);
            let device = b.log_z.value_sync().device();
            let mut total = 0.0;
            let chunk = 10_000;
            for _ in 0..RESAMPLED_NORMALIZER_DRAWS / chunk {
                let draws = normal_noise(chunk, b.dim, &mut rng, &device);
                let a = to_vec(b.log_acceptance(draws).detach().exp())?;
                total += a.iter().sum::<f64>();
            }
            let z = total / RESAMPLED_NORMALIZER_DRAWS as f64;
            if !(z > 0.0 && z.is_finite()) {
                return Err(FlowError::InvalidConfig(format!("the resampled base's normalizer estimate is {z}: its acceptance network is broken")));
            }
            b.log_z.update(Tensor::from_data(TensorData::new(vec![z.ln()], [1]), &device));
        }
        Ok(())
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
            Base::Resampled(b) => b.log_prob_given(z, b.log_z.value_sync().detach()),
        }
    }

    /// `n` samples `[n, D]` at temperature `t`: the Gaussian bases' spread scaled by `t`
    /// (`N(μ, t²σ²)`; Glow's reduced-temperature sampling). Other bases only at `t = 1`.
    pub fn sample_at_temperature(&self, n: usize, rng: &mut StdRng, device: &Device, t: f64) -> Result<Tensor<2>> {
        if t == 1.0 {
            return self.sample(n, rng, device);
        }
        let d = self.dim();
        match self {
            Base::StandardNormal(_) => Ok(normal_noise(n, d, rng, device).mul_scalar(t)),
            Base::DiagNormal(b) => Ok(normal_noise(n, d, rng, device)
                .mul(b.log_scale.val().exp().mul_scalar(t).unsqueeze())
                .add(b.loc.val().unsqueeze())),
            _ => Err(FlowError::InvalidConfig("sampling at a temperature needs a Gaussian base (standard or diagonal)".into())),
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
            Base::Resampled(b) => {
                // Truncated rejection: each open slot proposes once per round and accepts with
                // probability a(u); round T accepts whatever it proposes.
                let mut out = vec![0.0; n * d];
                let mut open: Vec<usize> = (0..n).collect();
                for round in 1..=b.truncation {
                    if open.is_empty() {
                        break;
                    }
                    let proposals = normal_noise(open.len(), d, rng, device);
                    let a = to_vec(b.log_acceptance(proposals.clone()).detach().exp())?;
                    let values = to_vec(proposals)?;
                    let mut still = Vec::with_capacity(open.len());
                    for (k, &slot) in open.iter().enumerate() {
                        if round == b.truncation || rng.random::<f64>() < a[k] {
                            out[slot * d..(slot + 1) * d].copy_from_slice(&values[k * d..(k + 1) * d]);
                        } else {
                            still.push(slot);
                        }
                    }
                    open = still;
                }
                matrix(out, n, d, device)
            }
        })
    }
}


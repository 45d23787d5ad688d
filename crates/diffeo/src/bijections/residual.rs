//! Residual flows (§3.3.1 of Papamakarios et al. 2021; i-ResNet, Behrmann et al. 2019; Residual
//! Flows, Chen et al. 2019): the contractive residual map `x ↦ z = x + g(x; c)` with
//! `Lip(g) < 1`, data → base.
//!
//! `g` is an MLP whose weights on `x` are spectrally normalized, `W̃ = W / max(1, σ̂(W)/k)` with
//! `σ̂` from power iteration (the vectors are stored with the weights, advanced only while
//! training, so evaluation is deterministic), and whose nonlinearity is LipSwish
//! `h(a) = a·sigmoid(βa)/1.1` (Lip ≤ 1, learnable `β > 0`); so `Lip(g) ≤ k^L < 1`. The context
//! enters the first layer unnormalized (it does not move the contraction in `x`).
//!
//! - **Data → base** (closed form): `z = x + g(x)`, `log|det J| = log det(I + J_g(x))`, by
//!   [`ResidualLogDet`]: exact (the D×D Jacobian from D forward tangents, its log-determinant by
//!   elimination, differentiable), the truncated power series `Σ_{k≤n} (−1)^{k+1} tr(J_g^k)/k`
//!   with a Hutchinson probe (i-ResNet; biased), or the Russian-roulette estimator (Residual Flows;
//!   unbiased): `n₀` terms always and a geometric number more, each reweighted by the probability
//!   of reaching it. Evaluation uses the exact value up to [`ResidualConfig::exact_max_dim`]
//!   features.
//! - **Base → data** (iterative): the fixed point `x ← z − g(x)` from `x = z`, converging since
//!   `g` is a contraction, until `|Δx| ≤ atol + rtol·|z|` elementwise, or an error after the
//!   iteration limit. Gradients by the implicit function theorem: `x*` enters the graph as one
//!   step whose backward pass solves `bᵀ(I + J_g) = aᵀ` by the iteration `b ← a − J_gᵀ b` (a
//!   contraction too) and gives `∂L/∂z = b`, `∂L/∂θ = −bᵀ∂g/∂θ`, `∂L/∂c = −bᵀ∂g/∂c`.

use burn::module::{Module, Param, RunningState};
use burn::tensor::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Flex;

use super::{Bijection, Call, Cost, Directions, LayerSpec, LogDet, Mapped, Mode};
use crate::custom_op::{autodiff_primitive, flex_of, from_autodiff_primitive, plain, record_backward_failure};
use crate::error::{FlowError, Result};
use crate::nn::affine;
use crate::tensor::{dims2, matrix, scalar, vector};

/// How the log-determinant `log det(I + J_g)` is computed while training.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ResidualLogDet {
    /// The full Jacobian (D forward tangents) and its log-determinant: exact, O(D³) per row.
    Exact,
    /// The power series truncated after `series_terms` terms, Hutchinson traces (biased).
    Series,
    /// The Russian-roulette estimator (unbiased): `series_terms` terms always, then a geometric
    /// number (stopping probability ½) more.
    #[default]
    Roulette,
}

impl ResidualLogDet {
    /// Parses `exact`, `series` or `roulette`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "exact" => Ok(Self::Exact),
            "series" => Ok(Self::Series),
            "roulette" => Ok(Self::Roulette),
            other => Err(FlowError::InvalidConfig(format!("unknown residual log-det {other:?}: expected exact, series or roulette"))),
        }
    }
}

/// Configuration of a [`Residual`] block.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResidualConfig {
    /// Features D.
    pub dim: usize,
    /// Context width C.
    #[serde(default)]
    pub context_dim: usize,
    /// Hidden widths of `g`.
    pub hidden: Vec<usize>,
    /// The spectral-norm bound k of every weight on x, in (0, 1).
    pub lipschitz: f64,
    /// Power iterations per training pass (from the stored vectors).
    pub power_iterations: usize,
    /// LipSwish's initial β (learnable afterwards). Spectral normalization keeps each unit's
    /// pre-activation near `‖x‖/√H`, where a β of 1 leaves `g` almost linear — and an almost
    /// linear `g` has no gradient at the identity on standardized data (docs/residual.md).
    #[serde(default = "default_beta")]
    pub beta: f64,
    /// The training log-determinant.
    pub logdet: ResidualLogDet,
    /// Series terms (series: all; roulette: those always computed).
    pub series_terms: usize,
    /// Gradients of the series estimators by the Neumann series (one Jacobian–vector product
    /// in the graph, memory independent of the terms) instead of through every term.
    #[serde(default = "yes")]
    pub neumann_gradient: bool,
    /// Features up to which evaluation (and the exact estimator) uses the exact log-det.
    pub exact_max_dim: usize,
    /// Fixed-point inverse: absolute tolerance.
    pub inverse_atol: f64,
    /// Fixed-point inverse: relative tolerance (of |z|).
    pub inverse_rtol: f64,
    /// Fixed-point inverse: iteration limit.
    pub max_iterations: usize,
    /// Seed of the initial weights (set by the chain; not stored).
    #[serde(skip)]
    pub seed: u64,
}

fn yes() -> bool {
    true
}

fn default_beta() -> f64 {
    DEFAULT_LIPSWISH_BETA
}

/// LipSwish's default initial β (measured: docs/residual.md).
pub const DEFAULT_LIPSWISH_BETA: f64 = 64.0;

/// The stopping probability of the roulette's geometric number of extra terms.
const ROULETTE_STOP: f64 = 0.5;
/// LipSwish's divisor: `sup |d/da a·sigmoid(βa)| ≈ 1.0998` for every β.
const LIPSWISH_SCALE: f64 = 1.1;

impl ResidualConfig {
    /// A block of two hidden layers of 128, coefficient 0.97, 5 power iterations per step, the
    /// roulette estimator with 2 terms always, exact log-dets up to 64 features, fixed-point
    /// inverse to 1e−5 + 1e−5·|z| within 1000 iterations.
    pub fn new(dim: usize) -> Self {
        Self {
            dim,
            context_dim: 0,
            hidden: vec![128, 128],
            lipschitz: 0.97,
            power_iterations: 5,
            beta: DEFAULT_LIPSWISH_BETA,
            logdet: ResidualLogDet::Roulette,
            series_terms: 2,
            neumann_gradient: true,
            exact_max_dim: 64,
            inverse_atol: 1e-5,
            inverse_rtol: 1e-5,
            max_iterations: 1000,
            seed: 0,
        }
    }

    /// Conditions on a context of width `context_dim`.
    pub fn with_context_dim(mut self, context_dim: usize) -> Self {
        self.context_dim = context_dim;
        self
    }

    /// Sets the hidden widths.
    pub fn with_hidden(mut self, hidden: Vec<usize>) -> Self {
        self.hidden = hidden;
        self
    }

    /// Sets the spectral-norm bound k.
    pub fn with_lipschitz(mut self, k: f64) -> Self {
        self.lipschitz = k;
        self
    }

    /// Sets the training log-determinant and its series terms.
    pub fn with_logdet(mut self, logdet: ResidualLogDet, terms: usize) -> Self {
        self.logdet = logdet;
        self.series_terms = terms;
        self
    }

    /// Chooses the Neumann-series gradient (default) or backpropagation through every term.
    pub fn with_neumann_gradient(mut self, on: bool) -> Self {
        self.neumann_gradient = on;
        self
    }

    /// Sets LipSwish's initial β (> 0).
    pub fn with_beta(mut self, beta: f64) -> Self {
        self.beta = beta;
        self
    }

    /// Sets the power iterations per training pass.
    pub fn with_power_iterations(mut self, n: usize) -> Self {
        self.power_iterations = n;
        self
    }

    /// Sets the feature count up to which evaluation uses the exact log-det.
    pub fn with_exact_max_dim(mut self, d: usize) -> Self {
        self.exact_max_dim = d;
        self
    }

    /// Sets the seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Builds the block: uniform hidden weights, a zero last layer (the identity map), β = β₀ (64),
    /// random unit power-iteration vectors.
    pub fn init(&self, device: &Device) -> Result<Residual> {
        self.validate()?;
        let rng = &mut StdRng::seed_from_u64(self.seed);
        let mut widths = vec![self.dim + self.context_dim];
        widths.extend(&self.hidden);
        widths.push(self.dim);
        let last = widths.len() - 2;
        let unit = |n: usize, rng: &mut StdRng| {
            let v: Vec<f64> = (0..n).map(|_| rng.sample::<f64, _>(StandardNormal)).collect();
            let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
            v.into_iter().map(|x| x / norm).collect::<Vec<f64>>()
        };
        let mut layers = Vec::with_capacity(widths.len() - 1);
        for (i, w) in widths.windows(2).enumerate() {
            let (fan_in, fan_out) = (w[0], w[1]);
            let in_x = if i == 0 { self.dim } else { fan_in };
            let bound = 1.0 / (fan_in as f64).sqrt();
            let weight: Vec<f64> = if i == last { vec![0.0; fan_in * fan_out] } else { (0..fan_in * fan_out).map(|_| bound * (2.0 * rng.random::<f64>() - 1.0)).collect() };
            let bias: Vec<f64> = if i == last { vec![0.0; fan_out] } else { (0..fan_out).map(|_| bound * (2.0 * rng.random::<f64>() - 1.0)).collect() };
            layers.push(SpectralDense {
                weight: Param::from_tensor(matrix(weight, fan_in, fan_out, device)),
                bias: Param::from_tensor(vector(bias, device)),
                u: RunningState::new(vector(unit(fan_out, rng), device)),
                v: RunningState::new(vector(unit(in_x, rng), device)),
                in_x,
            });
        }
        // softplus(raw) = β₀.
        let raw_beta = self.beta.exp_m1().ln();
        let betas = self.hidden.iter().map(|_| Param::from_tensor(vector(vec![raw_beta], device))).collect();
        Ok(Residual {
            layers,
            betas,
            dim: self.dim,
            context_dim: self.context_dim,
            lipschitz: self.lipschitz,
            power_iterations: self.power_iterations,
            logdet: self.logdet,
            series_terms: self.series_terms,
            neumann_gradient: self.neumann_gradient,
            exact_max_dim: self.exact_max_dim,
            inverse_atol: self.inverse_atol,
            inverse_rtol: self.inverse_rtol,
            max_iterations: self.max_iterations,
        })
    }
}

impl LayerSpec for ResidualConfig {
    fn dim(&self) -> usize {
        self.dim
    }

    fn validate(&self) -> Result<()> {
        super::require_features(self.dim, "a residual block")?;
        let bad = |m: String| Err(FlowError::InvalidConfig(m));
        if !(self.lipschitz > 0.0 && self.lipschitz < 1.0) {
            return bad(format!("the Lipschitz coefficient must be in (0, 1), got {}", self.lipschitz));
        }
        if self.hidden.is_empty() || self.hidden.contains(&0) {
            return bad("a residual block needs at least one hidden layer, every width ≥ 1".into());
        }
        if !(self.beta > 0.0 && self.beta.is_finite()) {
            return bad(format!("LipSwish's initial β must be positive and finite, got {}", self.beta));
        }
        if self.series_terms == 0 {
            return bad("a residual block's log-det series needs at least 1 term".into());
        }
        if self.power_iterations == 0 {
            return bad("spectral normalization needs at least 1 power iteration per step".into());
        }
        if !(self.inverse_atol > 0.0 && self.inverse_atol.is_finite() && self.inverse_rtol >= 0.0 && self.inverse_rtol.is_finite()) {
            return bad(format!("fixed-point tolerances must be positive and finite, got {} and {}", self.inverse_atol, self.inverse_rtol));
        }
        if self.max_iterations == 0 {
            return bad("the fixed-point inverse needs at least 1 iteration".into());
        }
        Ok(())
    }

    fn context_dim(&self) -> usize {
        self.context_dim
    }

    fn parameter_count(&self) -> usize {
        let mut widths = vec![self.dim + self.context_dim];
        widths.extend(&self.hidden);
        widths.push(self.dim);
        widths.windows(2).map(|w| (w[0] + 1) * w[1]).sum::<usize>() + self.hidden.len()
    }

    fn set_seed(&mut self, seed: u64) {
        self.seed = seed;
    }
    /// Training updates state stored with the weights (first-batch statistics, power-iteration
    /// vectors), which gradient shards on model copies would lose: one shard per step.
    fn batch_dependent(&self) -> bool {
        true
    }
}

/// An affine layer whose weights on `x` (the first `in_x` rows) are spectrally normalized.
#[derive(Module, Debug)]
pub struct SpectralDense {
    /// `W` `[in, out]`, unnormalized.
    pub weight: Param<Tensor<2>>,
    /// `b` `[out]`.
    pub bias: Param<Tensor<1>>,
    /// Power-iteration vector on the output side `[out]`.
    pub u: RunningState<Tensor<1>>,
    /// Power-iteration vector on the input side `[in_x]`.
    pub v: RunningState<Tensor<1>>,
    /// Rows of `W` acting on `x` (the rest act on the context).
    pub in_x: usize,
}

/// One power iteration on `W_x` `[in_x, out]`: `u ← v W_x / ‖·‖`, `v ← u W_xᵀ / ‖·‖`.
fn power_step(w_x: &Tensor<2>, u: Tensor<2>, v: Tensor<2>) -> (Tensor<2>, Tensor<2>) {
    let u = unit_row(v.clone().matmul(w_x.clone()), u);
    let v = unit_row(u.clone().matmul(w_x.clone().transpose()), v);
    (u, v)
}

/// `v / ‖v‖` for a `[1, n]` row, keeping `fallback` where `v` vanishes.
fn unit_row(v: Tensor<2>, fallback: Tensor<2>) -> Tensor<2> {
    let v = v.add(fallback.mul_scalar(1e-12));
    let norm = v.clone().square().sum().sqrt().reshape([1, 1]);
    v.div(norm)
}

impl SpectralDense {
    /// The stored power-iteration vectors as unit rows `([1, out], [1, in_x])`, detached.
    fn stored_vectors(&self) -> (Tensor<2>, Tensor<2>) {
        let out = self.weight.val().dims()[1];
        let u = self.u.value_sync().reshape([1, out]).detach();
        let v = self.v.value_sync().reshape([1, self.in_x]).detach();
        (unit_row(u.clone(), u), unit_row(v.clone(), v))
    }

    /// The weight with its `x` rows divided by `max(1, σ̂/k)`; while training, `iterations` power
    /// iterations advance the stored vectors first. `σ̂ = v W_x uᵀ` is differentiable in W.
    pub fn normalized(&self, k: f64, iterations: usize) -> Tensor<2> {
        let w = self.weight.val();
        let out = w.dims()[1];
        let frozen = w.clone().narrow(0, 0, self.in_x).detach();
        let (mut u, mut v) = self.stored_vectors();
        if iterations > 0 {
            for _ in 0..iterations {
                (u, v) = power_step(&frozen, u, v);
            }
            self.u.update(u.clone().reshape([out]).detach());
            self.v.update(v.clone().reshape([self.in_x]).detach());
        }
        spectrally_normalized(w, self.in_x, &u.detach(), &v.detach(), k)
    }
}

/// `W` with its first `in_x` rows divided by `max(1, σ̂/k)`, `σ̂ = v W_x uᵀ` (u `[1, out]`, v
/// `[1, in_x]` fixed; differentiable in W).
fn spectrally_normalized(w: Tensor<2>, in_x: usize, u: &Tensor<2>, v: &Tensor<2>, k: f64) -> Tensor<2> {
    let rows = w.dims()[0];
    let w_x = w.clone().narrow(0, 0, in_x);
    let sigma = v.clone().matmul(w_x.clone()).matmul(u.clone().transpose()).reshape([1, 1]);
    let factor = sigma.div_scalar(k).clamp_min(1.0);
    let w_x = w_x.div(factor);
    if rows > in_x { Tensor::cat(vec![w_x, w.narrow(0, in_x, rows - in_x)], 0) } else { w_x }
}

impl SpectralDense {
    /// Runs power iterations on the current weights until `σ̂` changes by less than `tol`
    /// (relative) or `max_iterations` pass; returns `σ̂` of the unnormalized weights on x.
    pub fn settle(&self, max_iterations: usize, tol: f64) -> Result<f64> {
        let w_x = self.weight.val().narrow(0, 0, self.in_x).detach();
        let out = w_x.dims()[1];
        let (mut u, mut v) = self.stored_vectors();
        let mut sigma = 0.0;
        for _ in 0..max_iterations {
            (u, v) = power_step(&w_x, u, v);
            let next = scalar(v.clone().matmul(w_x.clone()).matmul(u.clone().transpose()).sum())?;
            let done = (next - sigma).abs() <= tol * next.abs().max(1e-12);
            sigma = next;
            if done {
                break;
            }
        }
        self.u.update(u.reshape([out]));
        self.v.update(v.reshape([self.in_x]));
        Ok(sigma)
    }
}

/// A contractive residual block (see the module documentation).
#[derive(Module, Debug)]
pub struct Residual {
    /// The layers of `g`; the first takes `[x, context]`.
    pub layers: Vec<SpectralDense>,
    /// LipSwish's `softplus⁻¹(β)` per hidden layer, `[1]` each.
    pub betas: Vec<Param<Tensor<1>>>,
    /// Features D.
    pub dim: usize,
    /// Context width C.
    pub context_dim: usize,
    /// Spectral-norm bound k.
    #[module(skip)]
    pub lipschitz: f64,
    /// Power iterations per training pass.
    #[module(skip)]
    pub power_iterations: usize,
    /// Training log-determinant.
    #[module(skip)]
    pub logdet: ResidualLogDet,
    /// Series terms.
    #[module(skip)]
    pub series_terms: usize,
    /// Neumann-series gradients for the series estimators.
    #[module(skip)]
    pub neumann_gradient: bool,
    /// Exact log-dets up to this many features.
    #[module(skip)]
    pub exact_max_dim: usize,
    /// Fixed-point absolute tolerance.
    #[module(skip)]
    pub inverse_atol: f64,
    /// Fixed-point relative tolerance.
    #[module(skip)]
    pub inverse_rtol: f64,
    /// Fixed-point iteration limit.
    #[module(skip)]
    pub max_iterations: usize,
}

/// g's weights as one pass uses them: normalized `W` (all rows), `b` and the rows on x per
/// layer, and LipSwish's β per hidden layer.
#[derive(Clone, Debug)]
struct Weights {
    layers: Vec<(Tensor<2>, Tensor<1>, usize)>,
    betas: Vec<Tensor<1>>,
}

impl Weights {
    /// `g(x; c)` and its slopes.
    fn pass(&self, x: Tensor<2>, context: Option<&Tensor<2>>) -> Pass {
        let mut hidden = match context {
            Some(c) => Tensor::cat(vec![x, c.clone()], 1),
            None => x,
        };
        let n = self.layers.len();
        let (mut weights, mut slopes) = (Vec::with_capacity(n), Vec::with_capacity(n));
        // Every layer but the last is followed by LipSwish, h(a) = a·σ(βa)/1.1. The hidden
        // values and slopes are kept without the 1/1.1, which goes into the next layer's
        // (small) weight instead: the same map with fewer [N, H] operations.
        let mut scale = 1.0;
        for (i, (w, b, in_x)) in self.layers.iter().enumerate().take(n.saturating_sub(1)) {
            let w = w.clone().mul_scalar(scale);
            let a = affine(hidden, w.clone(), b.clone(), None);
            weights.push(w.narrow(0, 0, *in_x));
            let z = a.clone().mul(self.betas[i].clone().reshape([1, 1]));
            let sig = burn::tensor::activation::sigmoid(z.clone());
            // 1.1·h'(a) = σ + βa·σ(1 − σ) = σ·(1 + z·(1 − σ)).
            slopes.push(sig.clone().neg().add_scalar(1.0).mul(z).add_scalar(1.0).mul(sig.clone()));
            hidden = a.mul(sig);
            scale = 1.0 / LIPSWISH_SCALE;
        }
        let out = match self.layers.last() {
            Some((w, b, in_x)) => {
                let w = w.clone().mul_scalar(scale);
                weights.push(w.clone().narrow(0, 0, *in_x));
                affine(hidden, w, b.clone(), None)
            }
            None => hidden,
        };
        Pass { out, weights, slopes }
    }
}

/// How a flat parameter row maps back to g's weights: `(in, out, in_x, u, v)` per layer (the
/// power-iteration vectors fixed), and the spectral bound.
#[derive(Clone, Debug)]
struct FlatLayout {
    layers: Vec<(usize, usize, usize, Tensor<2>, Tensor<2>)>,
    lipschitz: f64,
}

impl FlatLayout {
    /// The weights read from `params` `[1, P]` (differentiable in them).
    fn weights(&self, params: &Tensor<2>) -> Weights {
        let mut offset = 0;
        let mut layers = Vec::with_capacity(self.layers.len());
        for (i, o, in_x, u, v) in &self.layers {
            let w = params.clone().narrow(1, offset, i * o).reshape([*i, *o]);
            let b = params.clone().narrow(1, offset + i * o, *o).reshape([*o]);
            offset += (i + 1) * o;
            layers.push((spectrally_normalized(w, *in_x, u, v, self.lipschitz), b, *in_x));
        }
        let betas = (0..self.layers.len() - 1)
            .map(|k| crate::tensor::softplus(params.clone().narrow(1, offset + k, 1).reshape([1])))
            .collect();
        Weights { layers, betas }
    }
}

/// `g` at one point, with what the Jacobian–vector products need.
struct Pass {
    /// `g(x)` `[N, D]`.
    out: Tensor<2>,
    /// The normalized weights on x `[in_x, out]` per layer (after the first, divided by 1.1).
    weights: Vec<Tensor<2>>,
    /// LipSwish slopes `1.1·h'(a)` `[N, H]` per hidden layer (the 1/1.1 is in the next weight).
    slopes: Vec<Tensor<2>>,
}

impl Pass {
    /// The same pass outside the autodiff graph.
    fn detached(&self) -> Self {
        Self {
            out: self.out.clone().detach(),
            weights: self.weights.iter().map(|w| w.clone().detach()).collect(),
            slopes: self.slopes.iter().map(|s| s.clone().detach()).collect(),
        }
    }

    /// `J_g V` for `M` vectors per row, `V` `[N, M, D]` → `[N, M, D]`.
    fn jvp(&self, v: Tensor<3>) -> Tensor<3> {
        let [n, m, d] = v.dims();
        let mut t = v.reshape([n * m, d]);
        for (w, s) in self.weights.iter().zip(&self.slopes) {
            let h = dims2(s).1;
            t = t.matmul(w.clone()).reshape([n, m, h]).mul(s.clone().unsqueeze_dim::<3>(1)).reshape([n * m, h]);
        }
        let last = self.weights.last().cloned().unwrap_or_else(|| Tensor::zeros([d, d], &self.out.device()));
        t.matmul(last).reshape([n, m, d])
    }
}

/// `log det A` for a batch `[N, D, D]` of matrices whose leading minors are positive (here
/// `I + J_g` with `‖J_g‖ < 1`): Gaussian elimination without pivoting, `Σ log uᵢᵢ`;
/// differentiable.
fn log_det_batch(mut a: Tensor<3>) -> Tensor<1> {
    let [n, d, _] = a.dims();
    let mut total: Tensor<1> = Tensor::zeros([n], &a.device());
    for k in 0..d {
        let row = a.clone().narrow(1, k, 1); // [N, 1, D]
        let pivot = row.clone().narrow(2, k, 1); // [N, 1, 1]
        total = total.add(pivot.clone().abs().log().reshape([n]));
        if k + 1 < d {
            let below = a.clone().narrow(1, k + 1, d - k - 1); // [N, D−k−1, D]
            let factors = below.clone().narrow(2, k, 1).div(pivot); // [N, D−k−1, 1]
            let reduced = below.sub(factors.mul(row));
            a = Tensor::cat(vec![a.narrow(1, 0, k + 1), reduced], 1);
        }
    }
    total
}

impl Residual {
    /// Runs every layer's power iteration to convergence (relative change of σ̂ below `tol`):
    /// after loading or changing weights by hand, so that the normalization is exact.
    pub fn settle_spectral_norms(&self, max_iterations: usize, tol: f64) -> Result<()> {
        self.layers.iter().try_for_each(|l| l.settle(max_iterations, tol).map(|_| ()))
    }

    /// The normalized weights on x, as evaluation uses them.
    pub fn normalized_weights(&self) -> Vec<Tensor<2>> {
        self.layers.iter().map(|l| l.normalized(self.lipschitz, 0).narrow(0, 0, l.in_x)).collect()
    }

    fn beta(&self, i: usize) -> Tensor<1> {
        crate::tensor::softplus(self.betas[i].val())
    }

    /// g's weights as a pass uses them; `iterations` power iterations advance the stored
    /// vectors first (training).
    fn weights(&self, iterations: usize) -> Weights {
        Weights {
            layers: self.layers.iter().map(|l| (l.normalized(self.lipschitz, iterations), l.bias.val(), l.in_x)).collect(),
            betas: (0..self.betas.len()).map(|i| self.beta(i)).collect(),
        }
    }

    /// `g(x; c)` and its slopes. Training passes advance the power iterations.
    fn pass(&self, x: Tensor<2>, call: &Call) -> Pass {
        let iterations = if call.mode == Mode::Training && x.is_autodiff() { self.power_iterations } else { 0 };
        let context = call.context().filter(|_| self.context_dim > 0);
        self.weights(iterations).pass(x, context)
    }

    /// The weights as one row `[1, P]` (per layer `W` row-major then `b`, then every raw β) and
    /// the layout that reads them back with this block's stored power-iteration vectors.
    fn flat_parameters(&self) -> (Tensor<2>, FlatLayout) {
        let mut parts = Vec::new();
        let mut layers = Vec::new();
        for l in &self.layers {
            let w = l.weight.val();
            let [i, o] = w.dims();
            parts.push(w.reshape([1, i * o]));
            parts.push(l.bias.val().reshape([1, o]));
            let (u, v) = l.stored_vectors();
            layers.push((i, o, l.in_x, u.inner(), v.inner()));
        }
        for b in &self.betas {
            parts.push(b.val().reshape([1, 1]));
        }
        (Tensor::cat(parts, 1), FlatLayout { layers, lipschitz: self.lipschitz })
    }

    /// Whether a call's log-dets are exact: evaluation up to `exact_max_dim` features, or the
    /// exact estimator.
    fn exact_in(&self, mode: Mode) -> bool {
        self.dim <= self.exact_max_dim && (mode == Mode::Evaluation || self.logdet == ResidualLogDet::Exact)
    }

    /// `log det(I + J_g)` `[N]` at the pass's point, as the call asks.
    fn log_det_of(&self, pass: &Pass, n: usize, call: &Call) -> Tensor<1> {
        let d = self.dim;
        let device = pass.out.device();
        if self.exact_in(call.mode) {
            let eye: Tensor<2> = Tensor::eye(d, &device);
            let jac = pass.jvp(eye.clone().unsqueeze_dim::<3>(0).repeat_dim(0, n)); // rows: (J eᵢ)ᵀ
            return log_det_batch(jac.add(eye.unsqueeze_dim::<3>(0)));
        }
        // Σ_k c_k (−1)^{k+1}/k · εᵀ J^k ε with one Rademacher probe per row.
        let eps = call.rademacher(n, d, &device);
        let (terms, weights): (usize, Vec<f64>) = match self.logdet {
            ResidualLogDet::Series | ResidualLogDet::Exact => (self.series_terms, vec![1.0; self.series_terms]),
            ResidualLogDet::Roulette => {
                let extra = call.with_rng(|rng| {
                    let mut k = 0usize;
                    while rng.random::<f64>() >= ROULETTE_STOP && k < 10_000 {
                        k += 1;
                    }
                    k
                });
                let n0 = self.series_terms;
                let w = (1..=n0 + extra).map(|k| if k <= n0 { 1.0 } else { (1.0 - ROULETTE_STOP).powi(-((k - n0) as i32)) }).collect();
                (n0 + extra, w)
            }
        };
        let probe = eps.clone().unsqueeze_dim::<3>(1);
        let dot = |w: &Tensor<3>| w.clone().reshape([n, d]).mul(eps.clone()).sum_dim(1).reshape([n]);
        if !self.neumann_gradient {
            let mut w = probe;
            let mut total: Tensor<1> = Tensor::zeros([n], &device);
            for (k, c) in (1..=terms).zip(weights) {
                w = pass.jvp(w);
                let sign = if k % 2 == 1 { 1.0 } else { -1.0 };
                total = total.add(dot(&w).mul_scalar(sign * c / k as f64));
            }
            return total;
        }
        // The value from a detached series; the gradient from one product in the graph:
        // ∂/∂θ Σ c_k (−1)^{k+1} tr(J^k)/k = Σ c_k (−1)^{k−1} tr(∂J·J^{k−1}) ≈ εᵀ ∂J (Σ c_k (−J)^{k−1} ε).
        let frozen = pass.detached();
        let mut w = probe.clone();
        let mut combination = probe.clone().mul_scalar(0.0);
        let mut value: Tensor<1> = Tensor::zeros([n], &device);
        for (k, c) in (1..=terms).zip(weights) {
            let sign = if k % 2 == 1 { 1.0 } else { -1.0 };
            combination = combination.add(w.clone().mul_scalar(sign * c));
            w = frozen.jvp(w);
            value = value.add(dot(&w).mul_scalar(sign * c / k as f64));
        }
        let surrogate = dot(&pass.jvp(combination));
        value.add(surrogate.clone().sub(surrogate.detach()))
    }
}

impl Residual {
    /// `x*` (computed outside the graph) as one autodiff step on `z`, the weights and the
    /// context, whose backward pass solves `bᵀ(I + J_g) = aᵀ` by the fixed-point iteration
    /// `b ← a − J_gᵀ b` and returns `∂L/∂z = b`, `∂L/∂θ = −bᵀ ∂g/∂θ`, `∂L/∂c = −bᵀ ∂g/∂c` (the
    /// implicit function theorem; CPU only).
    fn attach_fixed_point(&self, x: Tensor<2>, z: Tensor<2>, context: Option<Tensor<2>>, tol: f64, limit: usize) -> Result<Tensor<2>> {
        let not_cpu = || FlowError::InvalidConfig("gradients through a residual block's fixed-point inverse need the CPU device".into());
        let (params, layout) = self.flat_parameters();
        let device = x.device();
        let (z_ad, strategy) = autodiff_primitive(z).ok_or_else(not_cpu)?;
        let (p_ad, _) = autodiff_primitive(params.clone()).ok_or_else(not_cpu)?;
        let has_context = context.is_some();
        let c_plain = context.clone().map(Tensor::inner);
        let (c_ad, _) = autodiff_primitive(context.unwrap_or_else(|| Tensor::zeros([1, 1], &device))).ok_or_else(not_cpu)?;
        let x_plain = x.inner();
        let out = flex_of(x_plain.clone()).ok_or_else(not_cpu)?;
        let saved = FixedPointSaved { x: x_plain, params: params.inner(), context: c_plain.filter(|_| has_context), layout, tol, limit };
        let guards = [z_ad.node(), p_ad.node(), c_ad.node()];
        let out = match FixedPointStep.prepare::<NoCheckpointing>(guards).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(saved, out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        };
        Ok(from_autodiff_primitive(out, strategy))
    }
}

/// What the implicit backward pass needs (tensors without autodiff).
#[derive(Clone, Debug)]
struct FixedPointSaved {
    x: Tensor<2>,
    params: Tensor<2>,
    context: Option<Tensor<2>>,
    layout: FlatLayout,
    tol: f64,
    limit: usize,
}

#[derive(Debug)]
struct FixedPointStep;

impl Backward<Flex, 3> for FixedPointStep {
    type State = FixedPointSaved;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_z, node_p, node_c] = ops.parents;
        let a = plain(grads.consume::<Flex>(&ops.node));
        let want_c = node_c.is_some() && ops.state.context.is_some();
        match implicit_gradients(&ops.state, a, node_p.is_some(), want_c) {
            Ok((gz, gp, gc)) => {
                for (node, grad) in [(node_z, Some(gz)), (node_p, gp), (node_c, gc)] {
                    if let (Some(node), Some(grad)) = (node, grad.and_then(flex_of)) {
                        grads.register::<Flex>(node.id, grad);
                    }
                }
            }
            Err(e) => record_backward_failure(e),
        }
    }
}

/// `(∂L/∂z, ∂L/∂θ, ∂L/∂c)` at the fixed point from `a = ∂L/∂x*`.
fn implicit_gradients(saved: &FixedPointSaved, a: Tensor<2>, want_p: bool, want_c: bool) -> Result<(Tensor<2>, Option<Tensor<2>>, Option<Tensor<2>>)> {
    let frozen = saved.layout.weights(&saved.params.clone().autodiff());
    let context = saved.context.clone().map(Tensor::autodiff);
    let bound = saved.tol * (1.0 + scalar(a.clone().abs().max())?);
    let mut b = a.clone();
    let mut converged = false;
    let mut change = f64::INFINITY;
    for _ in 0..saved.limit {
        let x = saved.x.clone().autodiff().require_grad();
        let grads = frozen.pass(x.clone(), context.as_ref()).out.mul(b.clone()).sum().backward();
        let jtb = x.grad(&grads).unwrap_or_else(|| b.clone().zeros_like());
        let next = a.clone().sub(jtb);
        change = scalar(next.clone().sub(b).abs().max())?;
        b = next;
        if !change.is_finite() {
            break;
        }
        if change <= bound {
            converged = true;
            break;
        }
    }
    if !converged {
        return Err(FlowError::NotConverged { what: "the implicit gradient of a residual block's fixed point".into(), iterations: saved.limit, residual: change });
    }
    if !(want_p || want_c) {
        return Ok((b, None, None));
    }
    let p = saved.params.clone().autodiff();
    let p = if want_p { p.require_grad() } else { p };
    let c = saved.context.clone().map(|c| if want_c { c.autodiff().require_grad() } else { c.autodiff() });
    let out = saved.layout.weights(&p).pass(saved.x.clone().autodiff(), c.as_ref()).out;
    let grads = out.mul(b.clone()).sum().backward();
    let gp = if want_p { p.grad(&grads).map(Tensor::neg) } else { None };
    let gc = match c.filter(|_| want_c) {
        Some(c) => c.grad(&grads).map(Tensor::neg),
        None => None,
    };
    Ok((b, gp, gc))
}

impl Bijection for Residual {
    fn dim(&self) -> usize {
        self.dim
    }

    fn context_dim(&self) -> usize {
        self.context_dim
    }

    fn directions(&self) -> Directions {
        Directions { forward: Cost::Iterative, inverse: Cost::ClosedForm }
    }

    fn log_det(&self, mode: Mode) -> LogDet {
        if self.exact_in(mode) { LogDet::Exact } else { LogDet::Estimated }
    }

    /// Power iterations to convergence (relative change of σ̂ below 1e−7, at most 2000), so that
    /// evaluation normalizes by the weights' spectral norms, not by the last training step's
    /// estimate of them.
    fn settle(&self) -> Result<()> {
        self.settle_spectral_norms(2000, 1e-7)
    }

    fn name(&self) -> String {
        let logdet = match self.logdet {
            ResidualLogDet::Exact => "exact log-det".to_string(),
            ResidualLogDet::Series => format!("series of {} terms", self.series_terms),
            ResidualLogDet::Roulette => format!("roulette, {} terms always", self.series_terms),
        };
        format!("Residual(k = {}, {logdet})", self.lipschitz)
    }

    /// Base → data: the fixed point of `x = z − g(x)`.
    fn forward_unchecked(&self, z: Tensor<2>, call: &Call) -> Result<Mapped> {
        let (n, _) = dims2(&z);
        let (atol, rtol, limit) = match call.given_tolerance() {
            Some(t) => (t.absolute, t.relative, t.max_iterations),
            None => (self.inverse_atol, self.inverse_rtol, self.max_iterations),
        };
        let plain = Call::new().with_optional_context(call.context().map(|c| c.clone().detach()));
        let target = z.clone().detach();
        let scale = target.clone().abs().mul_scalar(rtol).add_scalar(atol);
        let mut x = target.clone();
        let mut converged = false;
        let mut change = f64::INFINITY;
        for _ in 0..limit {
            let next = target.clone().sub(self.pass(x.clone(), &plain).out.detach());
            let ratio = scalar(next.clone().sub(x).div(scale.clone()).abs().max())?;
            x = next;
            change = ratio;
            if !ratio.is_finite() {
                break;
            }
            if ratio <= 1.0 {
                converged = true;
                break;
            }
        }
        if !converged {
            return Err(FlowError::NotConverged { what: format!("{}'s fixed-point inverse", self.name()), iterations: limit, residual: change });
        }
        // The fixed point in the graph, with gradients by the implicit function theorem.
        let context = call.context().filter(|_| self.context_dim > 0).cloned();
        let tracked = z.is_autodiff() || context.as_ref().is_some_and(Tensor::is_tracked);
        let x = if tracked { self.attach_fixed_point(x, z, context, atol, limit)? } else { x };
        let ld = if call.needs_log_det() { self.log_det_of(&self.pass(x.clone(), call), n, call).neg() } else { Tensor::zeros([n], &x.device()) };
        Ok((x, ld))
    }

    /// Data → base: `z = x + g(x)`, `log det(I + J_g(x))`.
    fn inverse_unchecked(&self, x: Tensor<2>, call: &Call) -> Result<Mapped> {
        let (n, _) = dims2(&x);
        let pass = self.pass(x.clone(), call);
        let ld = self.log_det_of(&pass, n, call);
        Ok((x.add(pass.out.clone()), ld))
    }
}

//! Variational inference (Papamakarios et al. 2021, §2.3.2): fit a flow `q` to a target known up
//! to a constant, `p*(x) ∝ exp(−U(x))`, by minimising the reverse KL divergence
//!
//! `KL(q‖p*) = E_q[log q(x) − log p̃(x)] + log Z = log Z − ELBO`
//!
//! with reparameterized samples `x = T(u)`, `u ~ p_u` (the flow's fast-sampling direction: IAF,
//! coupling flows, planar/radial/Sylvester, or any flow whose forward pass exists).
//!
//! - [`Target`]: an unnormalized log-density of a batch (gradients through burn's autodiff),
//!   implemented by closures ([`FnTarget`]) and the built-in [`StandardTarget`]s.
//! - [`fit_reverse_kl`]: Adam on the Monte-Carlo ELBO, with optional sticking-the-landing
//!   gradients and annealing; samples where the target is not finite are dropped and counted.
//! - [`diagnostics`]: ELBO, importance-sampling log Z with its standard error, Kish effective
//!   sample size, Pareto k̂ of the log-weights (PSIS), and KL(q‖p) when log Z is known.

use std::sync::atomic::{AtomicBool, Ordering};

use burn::config::Config;
use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::Tensor;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::bijections::Cost;
use crate::error::{FlowError, Result};
use crate::event::{Call, Mode};
use crate::fit::mean_and_stderr;
use crate::flow::Flow;
use crate::tensor::{dims2, indices, matrix, scalar, to_vec, vector, LN_2PI};
use crate::train::{train, Batch, FitEvent, Objective, Schedule, StepLoss, TrainConfig};

/// An unnormalized log-density `log p̃(x) = −U(x)` of a batch `[N, D]` → `[N]`.
///
/// It is evaluated on the flow's device (an autodiff device during fitting), so it must be
/// written with tensor operations for its gradient to reach the flow.
pub trait Target: Sync {
    /// Dimension D.
    fn dim(&self) -> usize;
    /// `log p̃(x)` per row.
    fn log_density(&self, x: Tensor<2>) -> Tensor<1>;
    /// [`log_density`](Self::log_density) for targets that can fail (a host function, a
    /// program): what the fits and diagnostics call.
    fn try_log_density(&self, x: Tensor<2>) -> Result<Tensor<1>> {
        Ok(self.log_density(x))
    }
    /// `log Z = log ∫ p̃`, when known (enables KL(q‖p) in the diagnostics).
    fn log_normalizer(&self) -> Option<f64> {
        None
    }
    /// A short name.
    fn name(&self) -> String {
        "target".into()
    }
    /// A box `[low, high]^D` outside which the target is zero: the flow must map onto it (e.g.
    /// end with an [`ElementwiseKind::Box`](crate::bijections::ElementwiseKind::Box) layer).
    fn support(&self) -> Option<(f64, f64)> {
        None
    }
}

/// A [`Target`] from a closure.
pub struct FnTarget<F> {
    dim: usize,
    f: F,
    log_z: Option<f64>,
}

impl<F: Fn(Tensor<2>) -> Tensor<1>> FnTarget<F> {
    /// `log p̃ = f(x)` on `dim` features.
    pub fn new(dim: usize, f: F) -> Self {
        Self { dim, f, log_z: None }
    }

    /// Declares the exact log normalizer.
    pub fn with_log_normalizer(mut self, log_z: f64) -> Self {
        self.log_z = Some(log_z);
        self
    }
}

impl<F: Fn(Tensor<2>) -> Tensor<1> + Sync> Target for FnTarget<F> {
    fn dim(&self) -> usize {
        self.dim
    }
    fn log_density(&self, x: Tensor<2>) -> Tensor<1> {
        (self.f)(x)
    }
    fn log_normalizer(&self) -> Option<f64> {
        self.log_z
    }
}

/// What a host function returns for a batch of points: `log p̃` per row and, when it knows it,
/// the gradient `∇ log p̃` per row (row-major `[N, D]`).
pub type HostDensity = (Vec<f64>, Option<Vec<f64>>);

/// A target evaluated off the tensor graph by a host function of row-major points `[N·D]` (a
/// Python callable, a program): `f(points, n) → (log p̃ [N], ∇ log p̃ [N·D] if known)`.
///
/// Its gradient reaches the flow through the first-order surrogate
/// `log p̃(x₀) + ∇log p̃(x₀)·(x − x₀)`, whose value and gradient at the drawn points x₀ are exact.
/// When `f` gives no gradient and one is needed (during a fit), it comes from central differences
/// `(log p̃(x₀ + h eⱼ) − log p̃(x₀ − h eⱼ)) / 2h`, `h = 10⁻⁵·max(1, |x₀ⱼ|)`: once the first call
/// has shown that, each step makes one call, with the N points followed by their 2·D·N shifted
/// copies.
pub struct HostTarget<F> {
    dim: usize,
    f: F,
    log_z: Option<f64>,
    name: String,
    /// Whether `f` was seen to give no gradient (then differences are taken).
    differences: AtomicBool,
}

impl<F: Fn(&[f64], usize) -> Result<HostDensity> + Sync> HostTarget<F> {
    /// The target `f` on `dim` features.
    pub fn new(dim: usize, f: F) -> Self {
        Self { dim, f, log_z: None, name: "host function".into(), differences: AtomicBool::new(false) }
    }

    /// Declares the exact log normalizer.
    pub fn with_log_normalizer(mut self, log_z: f64) -> Self {
        self.log_z = Some(log_z);
        self
    }

    /// Names the target in messages.
    pub fn with_name(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }

    /// `f` at `n` points, its output checked: `n` values and, if given, `n·D` gradients.
    fn call(&self, points: &[f64], n: usize) -> Result<HostDensity> {
        let (values, gradient) = (self.f)(points, n)?;
        if values.len() != n {
            return Err(FlowError::InvalidConfig(format!("the target {} returned {} values for {n} points", self.name, values.len())));
        }
        if let Some(g) = &gradient {
            if g.len() != n * self.dim {
                return Err(FlowError::InvalidConfig(format!(
                    "the target {} returned a gradient of {} values for {n} points of {} features",
                    self.name,
                    g.len(),
                    self.dim
                )));
            }
        }
        Ok((values, gradient))
    }

    /// Values and gradients at `points` (`n` rows), the gradient by central differences when
    /// `f` gives none: after a first call shows that, the points and their shifted copies go in
    /// one call.
    fn values_and_gradient(&self, points: &[f64], n: usize) -> Result<(Vec<f64>, Vec<f64>)> {
        let d = self.dim;
        if !self.differences.load(Ordering::Relaxed) {
            let (values, gradient) = self.call(points, n)?;
            if let Some(g) = gradient {
                return Ok((values, g));
            }
            self.differences.store(true, Ordering::Relaxed);
            let (shifted, h) = shifted_copies(points, n, d);
            let (plus_minus, _) = self.call(&shifted, 2 * d * n)?;
            return Ok((values, central_differences(&plus_minus, &h, n, d)));
        }
        let (shifted, h) = shifted_copies(points, n, d);
        let mut all = points.to_vec();
        all.extend_from_slice(&shifted);
        let (out, _) = self.call(&all, (2 * d + 1) * n)?;
        Ok((out[..n].to_vec(), central_differences(&out[n..], &h, n, d)))
    }
}

/// The 2·D copies of `n` points shifted by `±h eⱼ` (all `+h e₀` rows, then `+h e₁`, …, then
/// the `−h eⱼ` blocks), and the steps `h = 10⁻⁵·max(1, |x|)` per coordinate.
fn shifted_copies(points: &[f64], n: usize, d: usize) -> (Vec<f64>, Vec<f64>) {
    let h: Vec<f64> = points.iter().map(|v| 1e-5 * v.abs().max(1.0)).collect();
    let mut out = Vec::with_capacity(2 * d * points.len());
    for sign in [1.0, -1.0] {
        for j in 0..d {
            for i in 0..n {
                let row = &points[i * d..(i + 1) * d];
                out.extend(row.iter().enumerate().map(|(k, v)| if k == j { v + sign * h[i * d + k] } else { *v }));
            }
        }
    }
    (out, h)
}

/// Gradients `[N, D]` from the values at [`shifted_copies`].
fn central_differences(values: &[f64], h: &[f64], n: usize, d: usize) -> Vec<f64> {
    let mut g = vec![0.0; n * d];
    for j in 0..d {
        for i in 0..n {
            g[i * d + j] = (values[j * n + i] - values[(d + j) * n + i]) / (2.0 * h[i * d + j]);
        }
    }
    g
}

impl<F: Fn(&[f64], usize) -> Result<HostDensity> + Sync> Target for HostTarget<F> {
    fn dim(&self) -> usize {
        self.dim
    }
    fn log_density(&self, x: Tensor<2>) -> Tensor<1> {
        let (n, device) = (dims2(&x).0, x.device());
        self.try_log_density(x).unwrap_or_else(|_| vector(vec![f64::NAN; n], &device))
    }
    fn try_log_density(&self, x: Tensor<2>) -> Result<Tensor<1>> {
        let (n, d) = dims2(&x);
        let device = x.device();
        let x0 = x.clone().detach();
        let points = to_vec(x0.clone())?;
        if !x.is_autodiff() {
            return Ok(vector(self.call(&points, n)?.0, &device));
        }
        let (values, gradient) = self.values_and_gradient(&points, n)?;
        let slope = matrix(gradient, n, d, &device);
        Ok(vector(values, &device).add(x.sub(x0).mul(slope).sum_dim(1).reshape([n])))
    }
    fn log_normalizer(&self) -> Option<f64> {
        self.log_z
    }
    fn name(&self) -> String {
        self.name.clone()
    }
}

/// Built-in targets with exact formulas.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case")]
pub enum StandardTarget {
    /// Rezende & Mohamed's U₁ (a ring with two modes) on ℝ²: log Z = 1.8775.
    U1,
    /// U₂ (a sine band) on the box [−4, 4]²: log Z = 2.0823.
    U2,
    /// U₃ (a split sine band) on [−4, 4]²: log Z = 2.6420.
    U3,
    /// U₄ (a sine band with a step) on [−4, 4]²: log Z = 2.6849.
    U4,
    /// Neal's funnel: `x₀ ~ N(0, 3²)`, `x_i | x₀ ~ N(0, e^{x₀})`; normalized (log Z = 0).
    Funnel {
        /// Dimension (10 in the literature).
        dim: usize,
    },
    /// The twisted Gaussian ("banana") of Haario et al.: `x₀ ~ N(0, 10²)`,
    /// `x₁ ~ N(b(x₀² − 100), 1)`; normalized (log Z = 0).
    Banana {
        /// Curvature b (0.03; 0.1 is the strongly twisted variant).
        curvature: f64,
    },
    /// Rosenbrock density `log p̃ = −[100(x₂ − x₁²)² + (1 − x₁)²]/20`: log Z = ln 2π.
    Rosenbrock,
    /// `N(mean, covariance)` written unnormalized, `−½(x − μ)ᵀΣ⁻¹(x − μ)`:
    /// log Z = (D/2)·ln 2π + ½·ln det Σ.
    Gaussian {
        /// Mean `[D]`.
        mean: Vec<f64>,
        /// Covariance `[D·D]`, row-major, symmetric positive definite.
        covariance: Vec<f64>,
    },
}

/// Half-width of the box of U₂–U₄.
pub const ENERGY_BOX: f64 = 4.0;

impl StandardTarget {
    /// By name: `u1`…`u4`, `funnel` (d = 10), `banana` (b = 0.03), `banana-strong` (b = 0.1),
    /// `rosenbrock`.
    pub fn from_name(name: &str) -> Result<Self> {
        Ok(match name.to_ascii_lowercase().as_str() {
            "u1" => StandardTarget::U1,
            "u2" => StandardTarget::U2,
            "u3" => StandardTarget::U3,
            "u4" => StandardTarget::U4,
            "funnel" => StandardTarget::Funnel { dim: 10 },
            "banana" => StandardTarget::Banana { curvature: 0.03 },
            "banana-strong" => StandardTarget::Banana { curvature: 0.1 },
            "rosenbrock" => StandardTarget::Rosenbrock,
            other => {
                return Err(FlowError::InvalidConfig(format!(
                    "unknown target '{other}' (expected u1, u2, u3, u4, funnel, banana, banana-strong or rosenbrock)"
                )))
            }
        })
    }

    /// Names accepted by [`from_name`](Self::from_name).
    pub const NAMES: [&'static str; 8] = ["u1", "u2", "u3", "u4", "funnel", "banana", "banana-strong", "rosenbrock"];

    /// Checks the parameters.
    pub fn validate(&self) -> Result<()> {
        match self {
            StandardTarget::Funnel { dim } if *dim < 2 => Err(FlowError::InvalidConfig("the funnel needs d ≥ 2".into())),
            StandardTarget::Banana { curvature } if !curvature.is_finite() => {
                Err(FlowError::InvalidConfig("the banana's curvature must be finite".into()))
            }
            StandardTarget::Gaussian { mean, covariance } => {
                let d = mean.len();
                if d == 0 || covariance.len() != d * d || mean.iter().chain(covariance).any(|v| !v.is_finite()) {
                    return Err(FlowError::InvalidConfig(format!("a Gaussian target needs a finite mean and a {d}×{d} covariance")));
                }
                cholesky(covariance, d).map(|_| ())
            }
            _ => Ok(()),
        }
    }
}

/// Lower Cholesky factor of a row-major symmetric positive-definite matrix.
fn cholesky(a: &[f64], d: usize) -> Result<Vec<f64>> {
    let symmetric = (0..d).all(|i| (0..i).all(|j| (a[i * d + j] - a[j * d + i]).abs() <= 1e-9 * a[i * d + j].abs().max(1.0)));
    crate::datasets::cholesky(a, d)
        .filter(|_| symmetric)
        .ok_or_else(|| FlowError::InvalidConfig("the covariance must be symmetric positive definite".into()))
}

/// `log(e^a + e^b)`, stable.
fn log_add_exp(a: Tensor<1>, b: Tensor<1>) -> Tensor<1> {
    let m = a.clone().max_pair(b.clone());
    m.clone().add(a.sub(m.clone()).exp().add(b.sub(m).exp()).log())
}

fn column(x: &Tensor<2>, j: usize) -> Tensor<1> {
    x.clone().narrow(1, j, 1).squeeze_dim::<1>(1)
}

impl Target for StandardTarget {
    fn dim(&self) -> usize {
        match self {
            StandardTarget::Funnel { dim } => *dim,
            StandardTarget::Gaussian { mean, .. } => mean.len(),
            _ => 2,
        }
    }

    fn log_density(&self, x: Tensor<2>) -> Tensor<1> {
        let gauss = |v: Tensor<1>, scale: f64| v.div_scalar(scale).square().mul_scalar(-0.5);
        let (z1, z2) = (column(&x, 0), if self.dim() > 1 { column(&x, 1) } else { column(&x, 0) });
        let w1 = || z1.clone().mul_scalar(std::f64::consts::PI / 2.0).sin();
        match self {
            StandardTarget::U1 => {
                let r = x.clone().square().sum_dim(1).squeeze_dim::<1>(1).sqrt();
                let ring = gauss(r.sub_scalar(2.0), 0.4);
                let modes = log_add_exp(gauss(z1.clone().sub_scalar(2.0), 0.6), gauss(z1.add_scalar(2.0), 0.6));
                ring.add(modes)
            }
            StandardTarget::U2 => gauss(z2.sub(w1()), 0.4),
            StandardTarget::U3 => {
                let w2 = gauss(z1.clone().sub_scalar(1.0), 0.6).exp().mul_scalar(3.0);
                let a = z2.sub(w1());
                log_add_exp(gauss(a.clone(), 0.35), gauss(a.add(w2), 0.35))
            }
            StandardTarget::U4 => {
                let w3 = burn::tensor::activation::sigmoid(z1.clone().sub_scalar(1.0).div_scalar(0.3)).mul_scalar(3.0);
                let a = z2.sub(w1());
                log_add_exp(gauss(a.clone(), 0.4), gauss(a.add(w3), 0.35))
            }
            StandardTarget::Funnel { dim } => {
                let head = gauss(z1.clone(), 3.0).sub_scalar(0.5 * LN_2PI + 3f64.ln());
                let rest = x.clone().narrow(1, 1, dim - 1);
                // x_i ~ N(0, e^{x₀}): −½x_i²e^{−x₀} − x₀/2 − ½ln 2π.
                let var_inv = z1.clone().neg().exp().unsqueeze_dim::<2>(1);
                let tail = rest.square().mul(var_inv).sum_dim(1).squeeze_dim::<1>(1).mul_scalar(-0.5);
                let norm = z1.mul_scalar(-0.5 * (*dim - 1) as f64).sub_scalar(0.5 * LN_2PI * (*dim - 1) as f64);
                head.add(tail).add(norm)
            }
            StandardTarget::Banana { curvature } => {
                let head = gauss(z1.clone(), 10.0).sub_scalar(0.5 * LN_2PI + 10f64.ln());
                let mean = z1.square().sub_scalar(100.0).mul_scalar(*curvature);
                head.add(gauss(z2.sub(mean), 1.0)).sub_scalar(0.5 * LN_2PI)
            }
            StandardTarget::Rosenbrock => {
                let a = z2.sub(z1.clone().square()).square().mul_scalar(100.0);
                let b = z1.neg().add_scalar(1.0).square();
                a.add(b).div_scalar(-20.0)
            }
            StandardTarget::Gaussian { mean, covariance } => {
                let d = mean.len();
                let device = x.device();
                let precision = inverse_spd(covariance, d);
                let diff = x.sub(Tensor::<1>::from_data(burn::tensor::TensorData::new(mean.clone(), [d]), &device).unsqueeze());
                let p = matrix(precision, d, d, &device);
                diff.clone().matmul(p).mul(diff).sum_dim(1).squeeze_dim::<1>(1).mul_scalar(-0.5)
            }
        }
    }

    fn log_normalizer(&self) -> Option<f64> {
        Some(match self {
            StandardTarget::U1 => 1.8775,
            StandardTarget::U2 => 2.0823,
            StandardTarget::U3 => 2.6420,
            StandardTarget::U4 => 2.6849,
            StandardTarget::Funnel { .. } | StandardTarget::Banana { .. } => 0.0,
            StandardTarget::Rosenbrock => LN_2PI,
            StandardTarget::Gaussian { mean, covariance } => {
                let d = mean.len();
                let l = cholesky(covariance, d).ok()?;
                0.5 * d as f64 * LN_2PI + (0..d).map(|i| l[i * d + i].ln()).sum::<f64>()
            }
        })
    }

    fn name(&self) -> String {
        match self {
            StandardTarget::U1 => "u1".into(),
            StandardTarget::U2 => "u2".into(),
            StandardTarget::U3 => "u3".into(),
            StandardTarget::U4 => "u4".into(),
            StandardTarget::Funnel { dim } => format!("funnel (d = {dim})"),
            StandardTarget::Banana { curvature } => format!("banana (b = {curvature})"),
            StandardTarget::Rosenbrock => "rosenbrock".into(),
            StandardTarget::Gaussian { mean, .. } => format!("gaussian (d = {})", mean.len()),
        }
    }

    fn support(&self) -> Option<(f64, f64)> {
        matches!(self, StandardTarget::U2 | StandardTarget::U3 | StandardTarget::U4).then_some((-ENERGY_BOX, ENERGY_BOX))
    }
}

/// Inverse of an SPD matrix through its Cholesky factor (validated targets only).
fn inverse_spd(a: &[f64], d: usize) -> Vec<f64> {
    let l = cholesky(a, d).unwrap_or_else(|_| (0..d * d).map(|k| if k / d == k % d { 1.0 } else { 0.0 }).collect());
    let mut inv = vec![0.0; d * d];
    for c in 0..d {
        // Solve L y = e_c, then Lᵀ x = y.
        let mut y = vec![0.0; d];
        for i in 0..d {
            let s: f64 = (if i == c { 1.0 } else { 0.0 }) - (0..i).map(|k| l[i * d + k] * y[k]).sum::<f64>();
            y[i] = s / l[i * d + i];
        }
        for i in (0..d).rev() {
            let s: f64 = y[i] - (i + 1..d).map(|k| l[k * d + i] * inv[k * d + c]).sum::<f64>();
            inv[i * d + c] = s / l[i * d + i];
        }
    }
    inv
}

/// Settings of [`fit_reverse_kl`]. Defaults: Adam at 1e−3, 2000 steps of 256 Monte-Carlo
/// samples, constant rate, plain reparameterization gradients, no annealing, seed 0.
#[derive(Config, Debug)]
pub struct ReverseKlConfig {
    /// Base learning rate.
    #[config(default = 1e-3)]
    pub learning_rate: f64,
    /// Optimisation steps.
    #[config(default = 2000)]
    pub steps: usize,
    /// Monte-Carlo samples per step.
    #[config(default = 256)]
    pub batch_size: usize,
    /// Learning-rate schedule.
    #[config(default = "Schedule::Constant")]
    pub schedule: Schedule,
    /// Sticking-the-landing gradients (Roeder et al. 2017): `log q` is evaluated with the
    /// parameters held fixed, which removes the score term whose expectation is zero. Needs the
    /// flow's inverse.
    #[config(default = false)]
    pub sticking_the_landing: bool,
    /// Anneal the target as `p̃^β`, β rising linearly from `initial_beta` to 1 over this many steps
    /// (0: no annealing).
    #[config(default = 0)]
    pub annealing_steps: usize,
    /// β at the first step when annealing.
    #[config(default = 0.01)]
    pub initial_beta: f64,
    /// Clip the global gradient norm to this value.
    #[config(default = "None")]
    pub grad_clip_norm: Option<f64>,
    /// Report progress (mean ELBO) every this many steps.
    #[config(default = 100)]
    pub eval_every: usize,
    /// Seed of the Monte-Carlo draws.
    #[config(default = 0)]
    pub seed: u64,
    /// Samples for the [`diagnostics`] of the fitted flow stored in the report (0: none).
    #[config(default = 10000)]
    pub diagnostic_samples: usize,
}

impl ReverseKlConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(FlowError::InvalidConfig(m.into()));
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return bad("the learning rate must be positive");
        }
        if self.steps == 0 || self.batch_size == 0 || self.eval_every == 0 {
            return bad("steps, batch size and the reporting interval must be ≥ 1");
        }
        if !(self.initial_beta > 0.0 && self.initial_beta <= 1.0) {
            return bad("the initial β must be in (0, 1]");
        }
        if self.grad_clip_norm.is_some_and(|c| !(c.is_finite() && c > 0.0)) {
            return bad("the gradient clipping norm must be positive");
        }
        Ok(())
    }

    fn beta_at(&self, step: usize) -> f64 {
        if self.annealing_steps == 0 {
            return 1.0;
        }
        let t = (step as f64 / self.annealing_steps as f64).min(1.0);
        self.initial_beta + (1.0 - self.initial_beta) * t
    }
}

/// Progress of [`fit_reverse_kl`].
#[derive(Clone, Debug)]
pub struct ReverseKlProgress {
    /// Steps done.
    pub step: usize,
    /// Total steps.
    pub total: usize,
    /// Mean ELBO estimate (β = 1) over the steps since the last report.
    pub elbo: f64,
    /// Current annealing β.
    pub beta: f64,
    /// Samples dropped so far because the target was not finite there.
    pub dropped: usize,
}

/// What [`fit_reverse_kl`] did.
#[derive(Clone, Debug, Default)]
pub struct ReverseKlReport {
    /// Steps done.
    pub steps: usize,
    /// `(step, mean ELBO over the interval)` at each report.
    pub history: Vec<(usize, f64)>,
    /// Samples dropped because the target was not finite there.
    pub dropped: usize,
    /// Wall-clock seconds (fit only).
    pub seconds: f64,
    /// [`diagnostics`] of the fitted flow (`diagnostic_samples` draws, seed + 1).
    pub diagnostics: Option<ViDiagnostics>,
    /// Whether [`crate::train::stop_current_fit`] ended the fit early.
    pub interrupted: bool,
}

struct Detach;

impl ModuleMapper for Detach {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        param.map(|t| t.detach())
    }
}

/// Keeps the rows where both values are finite; returns them and how many were dropped.
fn drop_nonfinite(log_q: Tensor<1>, log_p: Tensor<1>) -> Result<(Tensor<1>, Tensor<1>, usize)> {
    let (q, p) = (to_vec(log_q.clone())?, to_vec(log_p.clone())?);
    let keep: Vec<usize> = (0..q.len()).filter(|&i| q[i].is_finite() && p[i].is_finite()).collect();
    let dropped = q.len() - keep.len();
    if keep.is_empty() {
        return Err(FlowError::InvalidConfig(format!(
            "the target's log-density is not finite at any of the {} samples",
            q.len()
        )));
    }
    if dropped == 0 {
        return Ok((log_q, log_p, 0));
    }
    let idx = indices(&keep, &log_q.device());
    Ok((log_q.select(0, idx.clone()), log_p.select(0, idx), dropped))
}

/// Checks that `flow` can be fitted to `target` by reverse KL.
fn check_flow(flow: &Flow, target: &dyn Target, stl: bool) -> Result<()> {
    if flow.dim() != target.dim() {
        return Err(FlowError::DimensionMismatch { what: "target".into(), expected: flow.dim(), got: target.dim() });
    }
    if flow.context_dim() > 0 {
        return Err(FlowError::InvalidConfig("reverse-KL fitting needs an unconditional flow".into()));
    }
    let dirs = flow.directions();
    if dirs.forward == Cost::Unavailable {
        return Err(FlowError::InvalidConfig("reverse-KL fitting samples the flow: it needs a forward (sampling) pass".into()));
    }
    if stl && dirs.inverse == Cost::Unavailable {
        return Err(FlowError::InvalidConfig(
            "sticking-the-landing gradients evaluate log q(x) and need the flow's inverse; this flow has none".into(),
        ));
    }
    Ok(())
}

/// Reverse KL to an unnormalized target: the loss of a batch of Monte-Carlo draws
/// `x = T(u)` is `mean(log q(x) − β·log p̃(x))` (β from the annealing schedule), with
/// sticking-the-landing gradients if asked; draws where either log-density is not finite are
/// dropped and counted (metric `dropped`); the metric `elbo` is the batch's ELBO at β = 1.
pub struct ReverseKl<'a> {
    target: &'a dyn Target,
    config: &'a ReverseKlConfig,
}

impl<'a> ReverseKl<'a> {
    /// The objective for `target` with the VI settings of `config`.
    pub fn new(target: &'a dyn Target, config: &'a ReverseKlConfig) -> Self {
        Self { target, config }
    }
}

impl Objective for ReverseKl<'_> {
    fn check(&self, flow: &Flow) -> Result<()> {
        check_flow(flow, self.target, self.config.sticking_the_landing)
    }

    fn next_batch(&mut self, batch_size: usize, _rng: &mut StdRng) -> Batch {
        Batch::Draws(batch_size)
    }

    fn loss(&self, model: &Flow, part: &Batch, _whole: usize, step: usize, rng: &mut StdRng) -> Result<StepLoss> {
        let Batch::Draws(n) = *part else {
            return Err(FlowError::InvalidConfig("reverse KL trains on Monte-Carlo draws".into()));
        };
        let (x, log_q) = model.sample_and_log_prob_with(n, None, rng, Mode::Training)?;
        let log_q = if self.config.sticking_the_landing {
            model.clone().map(&mut Detach).log_prob_with(x.clone(), Call::training())?
        } else {
            log_q
        };
        let log_p = self.target.try_log_density(x)?;
        let (log_q, log_p, dropped) = drop_nonfinite(log_q, log_p)?;
        let beta = self.config.beta_at(step);
        let elbo = scalar(log_p.clone().sub(log_q.clone()).mean())?;
        let loss = log_q.sub(log_p.mul_scalar(beta)).mean();
        let value = scalar(loss.clone())?;
        Ok(StepLoss { loss, value, metrics: vec![("elbo", elbo), ("dropped", dropped as f64)] })
    }
}

/// Fits `flow` to `target` by minimising KL(q‖p*) (maximising the ELBO) with Adam on
/// reparameterized Monte-Carlo samples: the [`ReverseKl`] objective in the one training loop.
/// Returns the fitted flow (inference device) and a report.
///
/// Samples where the target's log-density (or the flow's) is not finite are dropped and counted;
/// if none is finite, or the loss becomes non-finite, the fit stops with an error: no NaN model.
pub fn fit_reverse_kl(
    flow: Flow,
    target: &dyn Target,
    config: &ReverseKlConfig,
    observer: &mut dyn FnMut(&ReverseKlProgress),
) -> Result<(Flow, ReverseKlReport)> {
    config.validate()?;
    let train_config = TrainConfig::new()
        .with_learning_rate(config.learning_rate)
        .with_steps(config.steps)
        .with_batch_size(config.batch_size)
        .with_schedule(config.schedule)
        .with_grad_clip_norm(config.grad_clip_norm)
        .with_eval_every(config.eval_every)
        .with_seed(config.seed)
        .with_shards(1);
    let mut objective = ReverseKl::new(target, config);
    let mut report = ReverseKlReport::default();
    let mut previous = 0;
    let mut dropped = 0.0;
    let mut events = |e: &FitEvent| {
        if let FitEvent::Interval { step, total, metrics, .. } = e {
            let metric = |k: &str| metrics.iter().find(|(name, _)| *name == k).map_or(0.0, |m| m.1);
            let elbo = metric("elbo");
            dropped += metric("dropped") * (step - previous) as f64;
            previous = *step;
            report.history.push((*step, elbo));
            let beta = config.beta_at(step - 1);
            observer(&ReverseKlProgress { step: *step, total: *total, elbo, beta, dropped: dropped.round() as usize });
        }
    };
    let (fitted, trained) = train(flow, &mut objective, &train_config, &mut events, &mut |_, _, _| {})?;
    report.dropped = dropped.round() as usize;
    report.steps = trained.steps;
    report.seconds = trained.seconds;
    report.interrupted = trained.interrupted;
    if config.diagnostic_samples >= 2 {
        report.diagnostics = Some(diagnostics(&fitted, target, config.diagnostic_samples, config.seed.wrapping_add(1))?);
    }
    Ok((fitted, report))
}

/// Diagnostics of `q` against a target (see [`diagnostics`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ViDiagnostics {
    /// Samples drawn.
    pub samples: usize,
    /// Samples dropped because a log-density was not finite.
    pub dropped: usize,
    /// `E_q[log p̃ − log q]`.
    pub elbo: f64,
    /// Standard error of the ELBO estimate.
    pub elbo_stderr: f64,
    /// Importance-sampling estimate `log mean(p̃/q)` of log Z.
    pub log_z: f64,
    /// Its standard error (delta method); meaningless when `khat` > 0.7.
    pub log_z_stderr: f64,
    /// Kish effective sample size `(Σw)²/Σw²`.
    pub ess: f64,
    /// `ess / samples`.
    pub ess_fraction: f64,
    /// Pareto k̂ of the importance weights' tail (PSIS): < 0.5 good, 0.5–0.7 usable, > 0.7
    /// unreliable.
    pub khat: f64,
    /// The target's exact log Z, when known.
    pub true_log_z: Option<f64>,
    /// `KL(q‖p) = log Z − ELBO`, when log Z is known.
    pub kl: Option<f64>,
}

/// Draws `samples` points from `flow` (seeded) and compares `q` with the target through the
/// log-weights `log w = log p̃(x) − log q(x)`.
pub fn diagnostics(flow: &Flow, target: &dyn Target, samples: usize, seed: u64) -> Result<ViDiagnostics> {
    check_flow(flow, target, false)?;
    if samples < 2 {
        return Err(FlowError::InvalidConfig("diagnostics need at least 2 samples".into()));
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut log_w = Vec::with_capacity(samples);
    let mut dropped = 0;
    let mut left = samples;
    while left > 0 {
        let n = left.min(4096);
        left -= n;
        let (x, log_q) = flow.sample_and_log_prob(n, None, &mut rng)?;
        let log_p = to_vec(target.try_log_density(x)?)?;
        for (p, q) in log_p.iter().zip(to_vec(log_q)?) {
            let w = p - q;
            if w.is_finite() {
                log_w.push(w);
            } else {
                dropped += 1;
            }
        }
    }
    if log_w.len() < 2 {
        return Err(FlowError::InvalidConfig("the target's log-density is not finite at the flow's samples".into()));
    }
    Ok(weights_diagnostics(&log_w, dropped, target.log_normalizer()))
}

/// [`ViDiagnostics`] from log importance weights.
pub fn weights_diagnostics(log_w: &[f64], dropped: usize, true_log_z: Option<f64>) -> ViDiagnostics {
    let n = log_w.len();
    let (elbo, elbo_stderr) = mean_and_stderr(log_w);
    let max = log_w.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let w: Vec<f64> = log_w.iter().map(|v| (v - max).exp()).collect();
    let sum: f64 = w.iter().sum();
    let sum2: f64 = w.iter().map(|v| v * v).sum();
    let mean = sum / n as f64;
    let var = w.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let ess = sum * sum / sum2;
    ViDiagnostics {
        samples: n + dropped,
        dropped,
        elbo,
        elbo_stderr,
        log_z: max + mean.ln(),
        log_z_stderr: var.sqrt() / (mean * (n as f64).sqrt()),
        ess,
        ess_fraction: ess / n as f64,
        khat: pareto_khat(log_w),
        true_log_z,
        kl: true_log_z.map(|z| z - elbo),
    }
}

/// Pareto k̂ of the upper tail of the importance weights `exp(log_w)` (Vehtari et al., *Pareto
/// smoothed importance sampling*): a generalized Pareto fit (Zhang & Stephens 2009, with a weakly
/// informative prior on k) to the `M = ⌈min(n/5, 3√n)⌉` largest weights above the next one.
/// NaN for fewer than 10 weights; −∞ when the tail is flat (all weights equal).
pub fn pareto_khat(log_w: &[f64]) -> f64 {
    let n = log_w.len();
    if n < 10 {
        return f64::NAN;
    }
    let mut sorted = log_w.to_vec();
    sorted.sort_by(f64::total_cmp);
    let m = ((0.2 * n as f64).min(3.0 * (n as f64).sqrt())).ceil() as usize;
    let m = m.clamp(5, n - 1);
    let max = sorted[n - 1];
    let cutoff = (sorted[n - m - 1] - max).exp();
    let x: Vec<f64> = sorted[n - m..].iter().map(|v| (v - max).exp() - cutoff).collect();
    if x[m - 1] <= 0.0 {
        return f64::NEG_INFINITY;
    }
    gpd_shape(&x)
}

/// Shape k of a generalized Pareto fitted to ascending exceedances `x` (Zhang & Stephens 2009
/// empirical Bayes, grid of `30 + ⌊√n⌋` points, then the prior adjustment `(n·k + 5)/(n + 10)`).
fn gpd_shape(x: &[f64]) -> f64 {
    let n = x.len();
    let grid = 30 + (n as f64).sqrt() as usize;
    let quartile = x[((n as f64) / 4.0 + 0.5) as usize - 1].max(x[n - 1] * 1e-12);
    let x_max = x[n - 1];
    let shape_for = |b: f64| x.iter().map(|v| (-b * v).ln_1p()).sum::<f64>() / n as f64;
    let bs: Vec<f64> = (1..=grid)
        .map(|i| 1.0 / x_max + (1.0 - (grid as f64 / (i as f64 - 0.5)).sqrt()) / (3.0 * quartile))
        .collect();
    let profile: Vec<f64> = bs
        .iter()
        .map(|&b| {
            let k = shape_for(b);
            n as f64 * ((-b / k).ln() - k - 1.0)
        })
        .collect();
    // Posterior weights of the grid points: w_i = 1 / Σ_j exp(L_j − L_i).
    let weights: Vec<f64> = profile
        .iter()
        .map(|li| {
            let s: f64 = profile.iter().map(|lj| if lj.is_finite() { (lj - li).exp() } else { 0.0 }).sum();
            if li.is_finite() && s.is_finite() && s > 0.0 { 1.0 / s } else { 0.0 }
        })
        .collect();
    let total: f64 = weights.iter().filter(|w| **w >= 10.0 * f64::EPSILON).sum();
    if total.is_nan() || total <= 0.0 {
        return f64::NAN;
    }
    let b_post: f64 = bs.iter().zip(&weights).filter(|(_, w)| **w >= 10.0 * f64::EPSILON).map(|(b, w)| b * w).sum::<f64>() / total;
    let k = shape_for(b_post);
    (n as f64 * k + 10.0 * 0.5) / (n as f64 + 10.0)
}

/// The log-density of a target at host points `[N, D]` (row-major), evaluated on the CPU.
pub fn log_density_at(target: &dyn Target, points: &[f64]) -> Result<Vec<f64>> {
    let d = target.dim();
    let t = matrix(points.to_vec(), points.len() / d.max(1), d, &crate::cpu());
    to_vec(target.try_log_density(t)?)
}

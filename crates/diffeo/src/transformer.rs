//! Elementwise transformers: monotone scalar bijections `y = τ(x; θ)` applied to every
//! dimension, with parameters `θ` produced by a conditioner (MADE or a coupling network).
//!
//! Parameters arrive as a `[N, P·D]` tensor laid out as `P` blocks of `D` columns. Every
//! transformer maps all-zero parameters to the identity, so a conditioner whose last layer is
//! zero starts the flow at the identity.
//!
//! `forward` maps the base side to the data side of a layer, `inverse` the data side to the base
//! side. The affine, additive and spline transformers are closed-form both ways. The monotone
//! transformers without a closed-form inverse ([`monotone`]: NAF, UMNN, SOS) put their closed
//! form on the density side — their `inverse` *is* the network map `u = τ(x)` — and `forward`
//! solves it numerically to the call's tolerance, so an autoregressive layer with them evaluates
//! densities in one pass (MAF) and samples by a numerical inverse.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::event::Tolerance;
use crate::spline;
use crate::tensor::{dims2, soft_clip};

mod affine;
pub mod monotone;

/// Default tail bound of the monotone transformers (standardized data).
pub const DEFAULT_MONOTONE_BOUND: f64 = 5.0;

/// Bound of the soft-clipped log-scale of [`Transformer::Affine`]: scales stay in
/// (1e−3, 1e3), as in zuko.
pub const AFFINE_LOG_SCALE_BOUND: f64 = 6.907_755_278_982_137; // −ln 1e−3

/// An elementwise monotone bijection parameterised per dimension.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Transformer {
    /// `y = μ + exp(s)·x`, with `s = a / (1 + |a|/B)` soft-clipped (B = ln 1000), so the
    /// scale stays in (1e−3, 1e3) smoothly and `a = 0` is exactly scale 1.
    /// Parameters per dimension: (μ, a). log|dy/dx| = s.
    #[default]
    Affine,
    /// `y = x + μ` (NICE). Parameters per dimension: (μ). Volume preserving.
    Additive,
    /// FlowJAX's affine parameterization: data → base `x = σ·y + μ` with
    /// `σ = softplus(a + c) + 0.01`, `c = softplus⁻¹(0.99)`, evaluated as
    /// `σ = 1 + ln(1 + (eᵃ − 1)·s)`, `s = 1 − e^{−0.99}` (the same function, and `a = 0` is
    /// exactly scale 1 in floating point), base → data `y = (x − μ)/σ`. The density direction's scale grows linearly in `a` and
    /// never falls below 0.01. Parameters per dimension: (μ, a). log|dy/dx| = −log σ.
    SoftplusAffine,
    /// Glow's affine coupling scale (Kingma & Dhariwal 2018), a sigmoid: data → base
    /// `x = (y − μ)·s` with `s = σ(a + 2)/σ(2) ∈ (0, 1.135)` — the density direction can shrink
    /// freely but stretch by at most 13.5% per layer, which keeps deep image flows stable
    /// (normalized by σ(2) so that `a = 0` is exactly the identity). Base → data
    /// `y = x/s + μ`, log|dy/dx| = −log s. Parameters per dimension: (μ, a).
    SigmoidScale,
    /// Monotonic rational-quadratic spline on [−B, B] with `bins` bins (Durkan et al. 2019);
    /// see [`crate::spline`]. Parameters per dimension: `3·bins − 1`, then 2 for affine
    /// [`SplineTails`]. Defaults: 8 bins, B = 5, affine tails.
    RationalQuadratic {
        /// Number of bins K (≥ 2).
        bins: usize,
        /// Tail bound B: the spline acts on [−B, B].
        tail_bound: f64,
        /// What the map is beyond ±B. Model files written before affine tails existed have no
        /// such field and keep their identity tails.
        #[serde(default)]
        tails: SplineTails,
    },
    /// Deep sigmoidal flow (NAF, Huang et al. 2018), [`monotone::sigmoidal`]: a mixture of
    /// `components` positive-slope sigmoids under a logit, linear tails beyond ±B.
    /// Parameters per dimension: `3·components`.
    Sigmoidal {
        /// Sigmoid components M (≥ 1).
        components: usize,
        /// Tail bound B.
        tail_bound: f64,
    },
    /// Unconstrained monotonic network (UMNN, Wehenkel & Louppe 2019), [`monotone::umnn`]:
    /// the integral of a positive one-hidden-layer network by Clenshaw–Curtis quadrature.
    /// Parameters per dimension: `3·hidden + 2`.
    Umnn {
        /// Hidden units of the integrand H (≥ 1).
        hidden: usize,
        /// Quadrature intervals (nodes − 1, ≥ 2).
        nodes: usize,
        /// Tail bound B.
        tail_bound: f64,
    },
    /// Sum-of-squares polynomial (Jaini et al. 2019), [`monotone::sum_of_squares`].
    /// Parameters per dimension: `1 + polynomials·(degree + 1)`.
    SumOfSquares {
        /// Squared polynomials K (≥ 1).
        polynomials: usize,
        /// Degree r of each (≥ 1).
        degree: usize,
        /// Tail bound B.
        tail_bound: f64,
    },
}

/// What a rational-quadratic spline does beyond its interval [−B, B].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SplineTails {
    /// The identity beyond ±B with boundary derivatives pinned to 1 (Durkan et al. 2019): the
    /// spline maps [−B, B] onto itself, so a layer cannot move mass across ±B. The tails of
    /// every model saved before affine tails existed (the serde default).
    #[default]
    Identity,
    /// The spline inside an elementwise affine map, `y = μ + e^s·RQS(x)` with
    /// `s = a / (1 + |a|/ln 1000)` as in [`Transformer::Affine`]: linear tails of learned slope
    /// `e^s`, and the spline's image `[μ − e^s·B, μ + e^s·B]` moved and stretched per
    /// dimension, so samples can reach far beyond ±B (wide and curved VI targets).
    /// log|dy/dx| = log RQS′(x) + s. Parameters (μ, a) follow the spline's; zero is the
    /// identity. The default of new models.
    Affine,
}

impl SplineTails {
    /// Extra parameters per dimension.
    pub fn params_per_dim(self) -> usize {
        match self {
            SplineTails::Identity => 0,
            SplineTails::Affine => 2,
        }
    }
}

/// The floor of [`Transformer::SoftplusAffine`]'s scale (FlowJAX's `min_scale`).
const SOFTPLUS_MIN_SCALE: f64 = 0.01;

/// Where [`softplus_scale`] switches to its linear tail.
const SOFTPLUS_LINEAR_FROM: f64 = 30.0;

/// `s = σ(c) = 1 − e^{−0.99}` of [`softplus_scale`].
fn softplus_slope() -> f64 {
    1.0 - (-(1.0 - SOFTPLUS_MIN_SCALE)).exp()
}

/// `σ = softplus(a + c) + 0.01` of [`Transformer::SoftplusAffine`], `c = ln(e^0.99 − 1)`, as
/// `σ = 1 + ln(1 + (eᶻ − 1)·s) + (a − z)`, `z = min(a, 30)`, `s = σ(c)`: the same function
/// (`softplus(a + c) − softplus(c) = ln(1 + (eᵃ − 1)·s)`; beyond 30 it is linear to 10⁻¹³),
/// and exactly 1 at `a = 0` (`e⁰ − 1 = 0`), so that the zero-initialized conditioner starts at
/// the identity. Returns `(σ, log σ)`.
fn softplus_scale(a: Tensor<2>) -> (Tensor<2>, Tensor<2>) {
    let z = a.clone().clamp_max(SOFTPLUS_LINEAR_FROM);
    let tail = a.sub_scalar(SOFTPLUS_LINEAR_FROM).clamp_min(0.0);
    let sigma = z.exp().sub_scalar(1.0).mul_scalar(softplus_slope()).log1p().add(tail).add_scalar(1.0);
    let log_sigma = sigma.clone().log();
    (sigma, log_sigma)
}

/// `log s` of [`Transformer::SigmoidScale`]: `log σ(a + 2) − log σ(2)`, with
/// `log σ(z) = −softplus(−z)` computed stably.
fn sigmoid_log_scale(a: Tensor<2>) -> Tensor<2> {
    let log_sigmoid_2 = -(1.0 + (-2.0f64).exp()).ln();
    burn::tensor::activation::softplus(a.add_scalar(2.0).neg(), 1.0).neg().sub_scalar(log_sigmoid_2)
}

/// How an affine transformer's raw scale parameter `a` becomes its density-direction log-scale
/// (see [`affine::inverse`]).
#[derive(Clone, Copy)]
enum ScaleMap {
    /// [`Transformer::Affine`]: `x = (y − μ)·e^{−s}`, `s = a / (1 + |a|/B)`.
    SoftClippedExp,
    /// [`Transformer::SoftplusAffine`]: `x = y·σ + μ`, `σ = softplus(a + c) + 0.01`.
    Softplus,
}

fn block(params: &Tensor<2>, p: usize, d: usize) -> Tensor<2> {
    params.clone().narrow(1, p * d, d)
}

impl Transformer {
    /// The scale map of the affine transformers that [`affine::inverse`] serves.
    fn elementwise_scale(&self) -> Option<ScaleMap> {
        match self {
            Transformer::Affine => Some(ScaleMap::SoftClippedExp),
            Transformer::SoftplusAffine => Some(ScaleMap::Softplus),
            _ => None,
        }
    }

    /// Number of parameters per dimension.
    pub fn params_per_dim(&self) -> usize {
        match self {
            Transformer::Affine | Transformer::SoftplusAffine | Transformer::SigmoidScale => 2,
            Transformer::Additive => 1,
            Transformer::RationalQuadratic { bins, tails, .. } => spline::params_per_dim(*bins) + tails.params_per_dim(),
            Transformer::Sigmoidal { components, .. } => 3 * components,
            Transformer::Umnn { hidden, .. } => 3 * hidden + 2,
            Transformer::SumOfSquares { polynomials, degree, .. } => 1 + polynomials * (degree + 1),
        }
    }

    /// NAF's deep sigmoidal transformer with its defaults (8 components, B = 5).
    pub fn sigmoidal() -> Self {
        Transformer::Sigmoidal { components: monotone::defaults::COMPONENTS, tail_bound: DEFAULT_MONOTONE_BOUND }
    }

    /// UMNN's transformer with its defaults (16 hidden units, 32 quadrature intervals, B = 5).
    pub fn umnn() -> Self {
        Transformer::Umnn { hidden: monotone::defaults::INTEGRAND_HIDDEN, nodes: monotone::defaults::NODES, tail_bound: DEFAULT_MONOTONE_BOUND }
    }

    /// The sum-of-squares transformer with its defaults (3 polynomials of degree 4, B = 5).
    pub fn sum_of_squares() -> Self {
        Transformer::SumOfSquares { polynomials: monotone::defaults::POLYNOMIALS, degree: monotone::defaults::DEGREE, tail_bound: DEFAULT_MONOTONE_BOUND }
    }

    /// Whether the base → data direction is a numerical inverse (NAF, UMNN, SOS).
    pub fn is_numerical(&self) -> bool {
        matches!(self, Transformer::Sigmoidal { .. } | Transformer::Umnn { .. } | Transformer::SumOfSquares { .. })
    }

    /// The rational-quadratic spline with the default 8 bins, tail bound 5 and affine tails.
    pub fn spline() -> Self {
        Transformer::RationalQuadratic { bins: spline::DEFAULT_BINS, tail_bound: spline::DEFAULT_TAIL_BOUND, tails: SplineTails::Affine }
    }

    /// Checks the settings.
    pub fn validate(&self) -> crate::error::Result<()> {
        let invalid = |m: String| Err(crate::error::FlowError::InvalidConfig(m));
        match self {
            Transformer::RationalQuadratic { bins, .. } if *bins < 2 || *bins > 256 => {
                return invalid(format!("a spline needs 2 to 256 bins, got {bins}"));
            }
            Transformer::Sigmoidal { components, .. } if *components < 1 || *components > 1024 => {
                return invalid(format!("a sigmoidal transformer needs 1 to 1024 components, got {components}"));
            }
            Transformer::Umnn { hidden, .. } if *hidden < 1 || *hidden > 1024 => {
                return invalid(format!("a UMNN integrand needs 1 to 1024 hidden units, got {hidden}"));
            }
            Transformer::Umnn { nodes, .. } if *nodes < 2 || *nodes > 512 => {
                return invalid(format!("UMNN quadrature needs 2 to 512 intervals, got {nodes}"));
            }
            Transformer::SumOfSquares { polynomials, .. } if *polynomials < 1 || *polynomials > 64 => {
                return invalid(format!("a sum of squares needs 1 to 64 polynomials, got {polynomials}"));
            }
            Transformer::SumOfSquares { degree, .. } if *degree < 1 || *degree > 16 => {
                return invalid(format!("sum-of-squares polynomials need a degree of 1 to 16, got {degree}"));
            }
            _ => {}
        }
        match self.tail_bound() {
            Some(b) if !(b.is_finite() && b > 0.0) => invalid(format!("the tail bound must be positive, got {b}")),
            _ => Ok(()),
        }
    }

    /// The interval outside which the transformer is the identity, if any.
    pub fn tail_bound(&self) -> Option<f64> {
        match self {
            Transformer::RationalQuadratic { tail_bound, .. }
            | Transformer::Sigmoidal { tail_bound, .. }
            | Transformer::Umnn { tail_bound, .. }
            | Transformer::SumOfSquares { tail_bound, .. } => Some(*tail_bound),
            _ => None,
        }
    }

    /// Short name.
    pub fn name(&self) -> &'static str {
        match self {
            Transformer::Affine => "affine",
            Transformer::Additive => "additive",
            Transformer::SoftplusAffine => "softplus-affine",
            Transformer::SigmoidScale => "sigmoid-scale",
            Transformer::RationalQuadratic { .. } => "spline",
            Transformer::Sigmoidal { .. } => "sigmoidal",
            Transformer::Umnn { .. } => "umnn",
            Transformer::SumOfSquares { .. } => "sum-of-squares",
        }
    }

    /// The data → base map in closed form: a numerical transformer's monotone network `u = τ(x)`
    /// (with its tails), every other transformer's `inverse`.
    fn monotone(&self, x: Tensor<2>, params: &Tensor<2>) -> (Tensor<2>, Tensor<2>) {
        match self {
            Transformer::Sigmoidal { components, tail_bound } => {
                monotone::with_linear_tails(x, *tail_bound, |v| monotone::sigmoidal(v, params, *components))
            }
            Transformer::Umnn { hidden, nodes, tail_bound } => {
                monotone::with_linear_tails(x, *tail_bound, |v| monotone::umnn(v, params, *hidden, *nodes, *tail_bound))
            }
            Transformer::SumOfSquares { polynomials, degree, tail_bound } => {
                monotone::with_linear_tails(x, *tail_bound, |v| monotone::sum_of_squares(v, params, *polynomials, *degree, *tail_bound))
            }
            closed_form => closed_form.inverse(x, params),
        }
    }

    /// Base side → data side: `y = τ(x; θ)` and the elementwise `log|dy/dx|`, both `[N, D]`.
    /// Numerical transformers solve to `tolerance` and fail with `NotConverged` otherwise.
    pub fn forward(&self, x: Tensor<2>, params: &Tensor<2>, tolerance: &Tolerance) -> Result<(Tensor<2>, Tensor<2>)> {
        let (_, d) = dims2(&x);
        if let Some(scale) = self.elementwise_scale() {
            if let Some(result) = affine::forward(&x, params, scale) {
                return Ok(result);
            }
        }
        Ok(match self {
            Transformer::Affine => {
                let shift = block(params, 0, d);
                let log_scale = soft_clip(block(params, 1, d), AFFINE_LOG_SCALE_BOUND);
                let y = x.mul(log_scale.clone().exp()).add(shift);
                (y, log_scale)
            }
            Transformer::Additive => {
                let shift = block(params, 0, d);
                let ld = x.zeros_like();
                (x.add(shift), ld)
            }
            Transformer::SoftplusAffine => {
                let shift = block(params, 0, d);
                let (sigma, log_sigma) = softplus_scale(block(params, 1, d));
                (x.sub(shift).div(sigma), log_sigma.neg())
            }
            Transformer::SigmoidScale => {
                let shift = block(params, 0, d);
                let log_scale = sigmoid_log_scale(block(params, 1, d));
                let y = x.mul(log_scale.clone().neg().exp()).add(shift);
                (y, log_scale.neg())
            }
            Transformer::RationalQuadratic { bins, tail_bound, tails } => match tails {
                SplineTails::Identity => spline::rational_quadratic_packed(x, params, *bins, *tail_bound, false),
                SplineTails::Affine => {
                    let p = spline::params_per_dim(*bins);
                    let (v, ld) = spline::rational_quadratic_packed(x, &params.clone().narrow(1, 0, p * d), *bins, *tail_bound, false);
                    let (y, ld_affine) = Transformer::Affine.forward(v, &params.clone().narrow(1, p * d, 2 * d), tolerance)?;
                    (y, ld.add(ld_affine))
                }
            },
            numerical => {
                let bound = numerical.tail_bound().unwrap_or(DEFAULT_MONOTONE_BOUND);
                let what = format!("a {} transformer", numerical.name());
                return monotone::invert(x, bound, tolerance, &what, |v| numerical.monotone(v, params));
            }
        })
    }

    /// Data side → base side: `x = τ⁻¹(y; θ)` and the elementwise `log|dx/dy|`, both `[N, D]`
    /// (for numerical transformers, their closed-form map).
    pub fn inverse(&self, y: Tensor<2>, params: &Tensor<2>) -> (Tensor<2>, Tensor<2>) {
        let (_, d) = dims2(&y);
        if let Some(scale) = self.elementwise_scale() {
            if let Some(result) = affine::inverse(&y, params, scale) {
                return result;
            }
        }
        match self {
            Transformer::Affine => {
                let shift = block(params, 0, d);
                let log_scale = soft_clip(block(params, 1, d), AFFINE_LOG_SCALE_BOUND);
                let x = y.sub(shift).mul(log_scale.clone().neg().exp());
                (x, log_scale.neg())
            }
            Transformer::Additive => {
                let shift = block(params, 0, d);
                let ld = y.zeros_like();
                (y.sub(shift), ld)
            }
            Transformer::SoftplusAffine => {
                let shift = block(params, 0, d);
                let (sigma, log_sigma) = softplus_scale(block(params, 1, d));
                (y.mul(sigma).add(shift), log_sigma)
            }
            Transformer::SigmoidScale => {
                let shift = block(params, 0, d);
                let log_scale = sigmoid_log_scale(block(params, 1, d));
                (y.sub(shift).mul(log_scale.clone().exp()), log_scale)
            }
            Transformer::RationalQuadratic { bins, tail_bound, tails } => match tails {
                SplineTails::Identity => spline::rational_quadratic_packed(y, params, *bins, *tail_bound, true),
                SplineTails::Affine => {
                    let p = spline::params_per_dim(*bins);
                    let (v, ld_affine) = Transformer::Affine.inverse(y, &params.clone().narrow(1, p * d, 2 * d));
                    let (x, ld) = spline::rational_quadratic_packed(v, &params.clone().narrow(1, 0, p * d), *bins, *tail_bound, true);
                    (x, ld.add(ld_affine))
                }
            },
            numerical => numerical.monotone(y, params),
        }
    }
}

//! Elementwise transformers: monotone scalar bijections `y = τ(x; θ)` applied to every
//! dimension, with parameters `θ` produced by a conditioner (MADE or a coupling network).
//!
//! Parameters arrive as a `[N, P·D]` tensor laid out as `P` blocks of `D` columns. Every
//! transformer maps all-zero parameters to the exact identity, so a conditioner whose last layer
//! is zero starts the flow at the identity.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::spline;
use crate::tensor::{dims2, soft_clip};

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
    /// Monotonic rational-quadratic spline on [−B, B] with `bins` bins and identity tails
    /// (Durkan et al. 2019); see [`crate::spline`]. Parameters per dimension: `3·bins − 1`.
    /// Defaults: 8 bins, B = 5.
    RationalQuadratic {
        /// Number of bins K (≥ 2).
        bins: usize,
        /// Tail bound B: the spline acts on [−B, B], the identity outside.
        tail_bound: f64,
    },
}

fn block(params: &Tensor<2>, p: usize, d: usize) -> Tensor<2> {
    params.clone().narrow(1, p * d, d)
}

impl Transformer {
    /// Number of parameters per dimension.
    pub fn params_per_dim(&self) -> usize {
        match self {
            Transformer::Affine => 2,
            Transformer::Additive => 1,
            Transformer::RationalQuadratic { bins, .. } => spline::params_per_dim(*bins),
        }
    }

    /// The rational-quadratic spline with the default 8 bins and tail bound 5.
    pub fn spline() -> Self {
        Transformer::RationalQuadratic { bins: spline::DEFAULT_BINS, tail_bound: spline::DEFAULT_TAIL_BOUND }
    }

    /// Checks the settings.
    pub fn validate(&self) -> crate::error::Result<()> {
        if let Transformer::RationalQuadratic { bins, tail_bound } = self {
            if *bins < 2 || *bins > 256 {
                return Err(crate::error::FlowError::InvalidConfig(format!("a spline needs 2 to 256 bins, got {bins}")));
            }
            if !(tail_bound.is_finite() && *tail_bound > 0.0) {
                return Err(crate::error::FlowError::InvalidConfig(format!("the tail bound must be positive, got {tail_bound}")));
            }
        }
        Ok(())
    }

    /// The interval outside which the transformer is the identity, if any.
    pub fn tail_bound(&self) -> Option<f64> {
        match self {
            Transformer::RationalQuadratic { tail_bound, .. } => Some(*tail_bound),
            _ => None,
        }
    }

    /// Short name.
    pub fn name(&self) -> &'static str {
        match self {
            Transformer::Affine => "affine",
            Transformer::Additive => "additive",
            Transformer::RationalQuadratic { .. } => "spline",
        }
    }

    /// `y = τ(x; θ)` and the elementwise `log|dy/dx|`, both `[N, D]`.
    pub fn forward(&self, x: Tensor<2>, params: &Tensor<2>) -> (Tensor<2>, Tensor<2>) {
        let (_, d) = dims2(&x);
        match self {
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
            Transformer::RationalQuadratic { bins, tail_bound } => {
                spline::rational_quadratic_packed(x, params, *bins, *tail_bound, false)
            }
        }
    }

    /// `x = τ⁻¹(y; θ)` and the elementwise `log|dx/dy|`, both `[N, D]`.
    pub fn inverse(&self, y: Tensor<2>, params: &Tensor<2>) -> (Tensor<2>, Tensor<2>) {
        let (_, d) = dims2(&y);
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
            Transformer::RationalQuadratic { bins, tail_bound } => {
                spline::rational_quadratic_packed(y, params, *bins, *tail_bound, true)
            }
        }
    }
}

//! Elementwise transformers: monotone scalar bijections `y = τ(x; θ)` applied to every
//! dimension, with parameters `θ` produced by a conditioner (MADE or a coupling network).
//!
//! Parameters arrive as a `[N, P·D]` tensor laid out as `P` blocks of `D` columns. Every
//! transformer maps all-zero parameters to the exact identity, so a conditioner whose last layer
//! is zero starts the flow at the identity.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

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
        }
    }

    /// Short name.
    pub fn name(&self) -> &'static str {
        match self {
            Transformer::Affine => "affine",
            Transformer::Additive => "additive",
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
        }
    }
}

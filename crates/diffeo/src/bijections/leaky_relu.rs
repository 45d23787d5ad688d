//! Leaky ReLU, elementwise: `y = x` for `x ≥ 0`, `y = α·x` for `x < 0` (slope α > 0), so
//! `log|dy/dx|` is 0 or `ln α` and the inverse divides the negative part by α. Piecewise linear,
//! invertible in closed form in both directions; a worked example of adding a layer
//! (docs/architecture.md).

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::{Bijection, Call, LayerSpec, Mapped};
use crate::error::{FlowError, Result};
use crate::tensor::sum_rows;

/// Configuration of a [`LeakyRelu`] layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LeakyReluConfig {
    /// Features D.
    pub dim: usize,
    /// Slope α > 0 of the negative part (default 0.01).
    #[serde(default = "default_slope")]
    pub slope: f64,
}

fn default_slope() -> f64 {
    0.01
}

impl LeakyReluConfig {
    /// Slope 0.01 on `dim` features.
    pub fn new(dim: usize) -> Self {
        Self { dim, slope: default_slope() }
    }

    /// Sets the slope α of the negative part.
    pub fn with_slope(mut self, slope: f64) -> Self {
        self.slope = slope;
        self
    }

    /// Builds the layer.
    pub fn init(&self, _device: &Device) -> Result<LeakyRelu> {
        self.validate()?;
        Ok(LeakyRelu { dim: self.dim, slope: self.slope })
    }
}

impl LayerSpec for LeakyReluConfig {
    fn dim(&self) -> usize {
        self.dim
    }

    fn validate(&self) -> Result<()> {
        super::require_features(self.dim, "a leaky ReLU layer")?;
        if !(self.slope.is_finite() && self.slope > 0.0) {
            return Err(FlowError::InvalidConfig(format!("a leaky ReLU needs a finite slope > 0, got {}", self.slope)));
        }
        Ok(())
    }
}

/// `y = x` for `x ≥ 0`, `α·x` otherwise; `log|det J| = ln α · #{i : x_i < 0}`.
#[derive(Module, Debug)]
pub struct LeakyRelu {
    /// Features D.
    pub dim: usize,
    /// Slope α of the negative part.
    pub slope: f64,
}

impl LeakyRelu {
    /// Scales the negative entries of `v` by `factor`; the log-det adds `ln factor` per entry.
    fn scale_negative(&self, v: Tensor<2>, factor: f64) -> Mapped {
        let negative = v.clone().lower_elem(0.0);
        let ld = v.zeros_like().mask_fill(negative.clone(), factor.ln());
        let scaled = v.clone().mul_scalar(factor);
        (v.mask_where(negative, scaled), sum_rows(ld))
    }
}

impl Bijection for LeakyRelu {
    fn dim(&self) -> usize {
        self.dim
    }

    fn name(&self) -> String {
        format!("LeakyRelu({})", self.slope)
    }

    fn forward_unchecked(&self, x: Tensor<2>, _call: &Call) -> Result<Mapped> {
        Ok(self.scale_negative(x, self.slope))
    }

    fn inverse_unchecked(&self, y: Tensor<2>, _call: &Call) -> Result<Mapped> {
        Ok(self.scale_negative(y, 1.0 / self.slope))
    }
}

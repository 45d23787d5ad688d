//! A learnable diagonal affine map.

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::{Bijection, Call, LayerSpec, Mapped};
use crate::error::Result;
use crate::tensor::{dims2, soft_clip};
use crate::transformer::AFFINE_LOG_SCALE_BOUND;

/// Configuration of an [`ElementwiseAffine`] layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ElementwiseAffineConfig {
    /// Features.
    pub dim: usize,
}

impl ElementwiseAffineConfig {
    /// On `dim` features.
    pub fn new(dim: usize) -> Self {
        Self { dim }
    }

    /// The identity on `dim` features.
    pub fn init(&self, device: &Device) -> Result<ElementwiseAffine> {
        self.validate()?;
        Ok(ElementwiseAffine {
            shift: Param::from_tensor(Tensor::zeros([self.dim], device)),
            raw_scale: Param::from_tensor(Tensor::zeros([self.dim], device)),
        })
    }
}

impl LayerSpec for ElementwiseAffineConfig {
    fn dim(&self) -> usize {
        self.dim
    }

    fn validate(&self) -> Result<()> {
        super::require_features(self.dim, "an elementwise affine layer")
    }

    fn parameter_count(&self) -> usize {
        2 * self.dim
    }
}

/// Learnable diagonal affine map `y = μ + exp(s) ⊙ x`, `s = soft_clip(a)` as in
/// [`crate::transformer::Transformer::Affine`]. log|det J| = Σ s. Starts at the identity.
#[derive(Module, Debug)]
pub struct ElementwiseAffine {
    /// Shift μ `[D]`.
    pub shift: Param<Tensor<1>>,
    /// Unconstrained log-scale `a` `[D]`.
    pub raw_scale: Param<Tensor<1>>,
}

impl ElementwiseAffine {
    fn log_scale(&self) -> Tensor<1> {
        soft_clip(self.raw_scale.val(), AFFINE_LOG_SCALE_BOUND)
    }
}

impl Bijection for ElementwiseAffine {
    fn dim(&self) -> usize {
        self.shift.val().dims()[0]
    }

    fn name(&self) -> String {
        "ElementwiseAffine".into()
    }

    fn forward_unchecked(&self, x: Tensor<2>, _call: &Call) -> Result<Mapped> {
        let (n, _) = dims2(&x);
        let s = self.log_scale();
        let y = x.mul(s.clone().exp().unsqueeze()).add(self.shift.val().unsqueeze());
        let ld = s.sum().expand([n]);
        Ok((y, ld))
    }

    fn inverse_unchecked(&self, y: Tensor<2>, _call: &Call) -> Result<Mapped> {
        let (n, _) = dims2(&y);
        let s = self.log_scale();
        let x = y.sub(self.shift.val().unsqueeze()).mul(s.clone().neg().exp().unsqueeze());
        let ld = s.sum().neg().expand([n]);
        Ok((x, ld))
    }
}

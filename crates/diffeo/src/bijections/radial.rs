//! Radial flows (Rezende & Mohamed 2015): contractions and expansions around a centre, with an
//! O(D) log-determinant.

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

use super::{Bijection, Call, Cost, Directions, LayerSpec, Mapped};
use crate::error::{Direction, FlowError, Result};
use crate::tensor::{softplus, vector};

/// Configuration of a [`Radial`] layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RadialConfig {
    /// Features D.
    pub dim: usize,
    /// Seed of the random centre (set by the chain; not stored).
    #[serde(skip)]
    pub seed: u64,
}

impl RadialConfig {
    /// On `dim` features.
    pub fn new(dim: usize) -> Self {
        Self { dim, seed: 0 }
    }

    /// Sets the seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// An exact identity (β = 0) around a random centre `x₀ ~ N(0, I)`.
    pub fn init(&self, device: &Device) -> Result<Radial> {
        self.validate()?;
        let rng = &mut StdRng::seed_from_u64(self.seed);
        let x0: Vec<f64> = (0..self.dim).map(|_| rng.sample::<f64, _>(StandardNormal)).collect();
        Ok(Radial {
            center: Param::from_tensor(vector(x0, device)),
            alpha: Param::from_tensor(Tensor::zeros([1], device)),
            beta: Param::from_tensor(Tensor::zeros([1], device)),
        })
    }
}

impl LayerSpec for RadialConfig {
    fn dim(&self) -> usize {
        self.dim
    }

    fn validate(&self) -> Result<()> {
        super::require_features(self.dim, "a radial layer")
    }

    fn parameter_count(&self) -> usize {
        self.dim + 2
    }

    fn set_seed(&mut self, seed: u64) {
        self.seed = seed;
    }
}

/// Radial flow (Rezende & Mohamed 2015): `y = x + β·h(r)·(x − x₀)`, `r = ‖x − x₀‖`,
/// `h = 1/(α + r)`, with `α = softplus(α̃) > 0` and `β = −α + softplus(β̃) ≥ −α`, which makes the
/// map invertible. `log|det J| = (D − 1)·log(1 + βh) + log(1 + βαh²)`, O(D). Zero `α̃, β̃` give
/// β = 0: the identity.
///
/// The forward direction (sampling) is fast; the inverse has no closed form and is
/// [`Cost::Unavailable`]: radial layers suit variational inference.
#[derive(Module, Debug)]
pub struct Radial {
    /// Centre `x₀` `[D]`.
    pub center: Param<Tensor<1>>,
    /// `α̃` `[1]`.
    pub alpha: Param<Tensor<1>>,
    /// `β̃` `[1]`.
    pub beta: Param<Tensor<1>>,
}

impl Bijection for Radial {
    fn dim(&self) -> usize {
        self.center.val().dims()[0]
    }

    fn directions(&self) -> Directions {
        Directions { forward: Cost::ClosedForm, inverse: Cost::Unavailable }
    }

    fn name(&self) -> String {
        "Radial".into()
    }

    fn forward_unchecked(&self, x: Tensor<2>, _call: &Call) -> Result<Mapped> {
        let d = self.dim();
        let alpha = softplus(self.alpha.val());
        let beta = softplus(self.beta.val()).sub(alpha.clone());
        let diff = x.clone().sub(self.center.val().unsqueeze());
        // r > 0 before the square root so its gradient stays finite at x = x₀.
        let r = diff.clone().square().sum_dim(1).clamp_min(1e-300).sqrt(); // [N, 1]
        let (alpha, beta) = (alpha.unsqueeze::<2>(), beta.unsqueeze::<2>());
        let h = r.add(alpha.clone()).recip();
        let bh = h.clone().mul(beta.clone());
        let y = x.add(diff.mul(bh.clone()));
        let ld = bh.clone().log1p().mul_scalar((d - 1) as f64).add(h.square().mul(alpha).mul(beta).log1p());
        Ok((y, ld.squeeze_dim::<1>(1)))
    }

    fn inverse_unchecked(&self, _y: Tensor<2>, _call: &Call) -> Result<Mapped> {
        Err(FlowError::NotInvertible { bijection: self.name(), direction: Direction::Inverse })
    }
}


//! Planar flows (Rezende & Mohamed 2015), a residual flow `y = x + g(x)` whose log-determinant is
//! cheap by the matrix determinant lemma.

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

use super::{Bijection, Call, Cost, Directions, LayerSpec, Mapped};
use crate::error::{Direction, FlowError, Result};
use crate::tensor::{softplus, vector};

/// Configuration of a [`Planar`] layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanarConfig {
    /// Features D.
    pub dim: usize,
    /// Seed of the random direction (set by the chain; not stored).
    #[serde(skip)]
    pub seed: u64,
}

impl PlanarConfig {
    /// On `dim` features.
    pub fn new(dim: usize) -> Self {
        Self { dim, seed: 0 }
    }

    /// Sets the seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// An exact identity with a random direction `w` (`u` set so that `û = 0`).
    pub fn init(&self, device: &Device) -> Result<Planar> {
        self.validate()?;
        let rng = &mut StdRng::seed_from_u64(self.seed);
        let d = self.dim;
        let w: Vec<f64> = (0..d).map(|_| rng.sample::<f64, _>(StandardNormal) / (d as f64).sqrt()).collect();
        let norm2: f64 = w.iter().map(|v| v * v).sum::<f64>().max(1e-12);
        // m(wᵀu) = 0 ⇔ wᵀu = ln(e − 1); then û = u − wᵀu·w/‖w‖² = 0.
        let c = (std::f64::consts::E - 1.0).ln();
        let u: Vec<f64> = w.iter().map(|wi| c * wi / norm2).collect();
        Ok(Planar {
            u: Param::from_tensor(vector(u, device)),
            w: Param::from_tensor(vector(w, device)),
            b: Param::from_tensor(Tensor::zeros([1], device)),
        })
    }
}

impl LayerSpec for PlanarConfig {
    fn dim(&self) -> usize {
        self.dim
    }

    fn validate(&self) -> Result<()> {
        super::require_features(self.dim, "a planar layer")
    }

    fn parameter_count(&self) -> usize {
        2 * self.dim + 1
    }

    fn set_seed(&mut self, seed: u64) {
        self.seed = seed;
    }
}

/// Planar flow (Rezende & Mohamed 2015): `y = x + û·tanh(wᵀx + b)` with
/// `û = u + (m(wᵀu) − wᵀu)·w/‖w‖²`, `m(a) = softplus(a) − 1`, so `wᵀû = m(wᵀu) > −1` and the
/// map is invertible. `log|det J| = log(1 + (1 − tanh²(wᵀx + b))·wᵀû)`, O(D).
///
/// The forward direction (sampling) is fast; the inverse has no closed form and is
/// [`Cost::Unavailable`]: planar layers suit variational inference, not maximum likelihood.
#[derive(Module, Debug)]
pub struct Planar {
    /// `u` `[D]` (unconstrained; `û` is derived from it).
    pub u: Param<Tensor<1>>,
    /// `w` `[D]`.
    pub w: Param<Tensor<1>>,
    /// `b` `[1]`.
    pub b: Param<Tensor<1>>,
}

impl Planar {
    /// `û` `[D]` and `wᵀû` `[1]`.
    fn constrained(&self) -> (Tensor<1>, Tensor<1>) {
        let (u, w) = (self.u.val(), self.w.val());
        let d = w.dims()[0];
        let wu = w.clone().mul(u.clone()).sum();
        let m = softplus(wu.clone()).sub_scalar(1.0);
        let norm2 = w.clone().square().sum().clamp_min(1e-12);
        let factor = m.clone().sub(wu).div(norm2).expand([d]);
        (u.add(w.mul(factor)), m)
    }
}

impl Bijection for Planar {
    fn dim(&self) -> usize {
        self.w.val().dims()[0]
    }

    fn directions(&self) -> Directions {
        Directions { forward: Cost::ClosedForm, inverse: Cost::Unavailable }
    }

    fn name(&self) -> String {
        "Planar".into()
    }

    fn forward_unchecked(&self, x: Tensor<2>, _call: &Call) -> Result<Mapped> {
        let (u_hat, wu_hat) = self.constrained();
        let a = x.clone().matmul(self.w.val().unsqueeze_dim::<2>(1)).add(self.b.val().unsqueeze());
        let h = a.tanh();
        let y = x.add(h.clone().mul(u_hat.unsqueeze()));
        let psi = h.square().neg().add_scalar(1.0).mul(wu_hat.unsqueeze());
        let ld = psi.log1p().squeeze_dim::<1>(1);
        Ok((y, ld))
    }

    fn inverse_unchecked(&self, _y: Tensor<2>, _call: &Call) -> Result<Mapped> {
        Err(FlowError::NotInvertible { bijection: self.name(), direction: Direction::Inverse })
    }
}


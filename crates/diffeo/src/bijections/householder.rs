//! An orthogonal map as a product of Householder reflections.

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

use super::{Bijection, Call, LayerSpec, Mapped};
use crate::error::{FlowError, Result};
use crate::tensor::{dims2, matrix};

/// Configuration of a [`Householder`] layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HouseholderConfig {
    /// Features D.
    pub dim: usize,
    /// Number of reflections (D gives every orthogonal matrix of determinant ±1).
    pub reflections: usize,
    /// Seed of the reflection vectors (set by the chain; not stored).
    #[serde(skip)]
    pub seed: u64,
}

impl HouseholderConfig {
    /// `reflections` reflections of `dim` features.
    pub fn new(dim: usize, reflections: usize) -> Self {
        Self { dim, reflections, seed: 0 }
    }

    /// Sets the seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Random reflection vectors (a random orthogonal map).
    pub fn init(&self, device: &Device) -> Result<Householder> {
        self.validate()?;
        let rng = &mut StdRng::seed_from_u64(self.seed);
        let v: Vec<f64> = (0..self.reflections * self.dim).map(|_| rng.sample(StandardNormal)).collect();
        Ok(Householder { vectors: Param::from_tensor(matrix(v, self.reflections, self.dim, device)) })
    }
}

impl LayerSpec for HouseholderConfig {
    fn dim(&self) -> usize {
        self.dim
    }

    fn validate(&self) -> Result<()> {
        if self.dim == 0 || self.reflections == 0 {
            return Err(FlowError::InvalidConfig("a Householder layer needs D ≥ 1 and at least one reflection".into()));
        }
        Ok(())
    }

    fn parameter_count(&self) -> usize {
        self.dim * self.reflections
    }

    fn set_seed(&mut self, seed: u64) {
        self.seed = seed;
    }
}

/// Orthogonal map `y = x·H_1·…·H_K`, `H_k = I − 2 v_k v_kᵀ / ‖v_k‖²` (Tomczak & Welling 2016).
/// `log|det J| = 0`; both directions are exact and fast (K rank-one updates).
#[derive(Module, Debug)]
pub struct Householder {
    /// Reflection vectors `[K, D]`.
    pub vectors: Param<Tensor<2>>,
}

/// Rows of `x` `[N, D]` reflected by each of the vectors `[K, D]` in turn (`x·H₁⋯H_K`; with
/// `reverse`, `x·H_K⋯H₁`), `H = I − 2vvᵀ/‖v‖²`.
pub(crate) fn reflect_rows(x: Tensor<2>, vectors: &Tensor<2>, reverse: bool) -> Tensor<2> {
    let k = vectors.dims()[0];
    let mut h = x;
    let order: Vec<usize> = if reverse { (0..k).rev().collect() } else { (0..k).collect() };
    for i in order {
        let vi = vectors.clone().narrow(0, i, 1); // [1, D]
        let norm2 = vi.clone().square().sum().clamp_min(1e-30).unsqueeze_dim::<2>(0); // [1, 1]
        let proj = h.clone().matmul(vi.clone().transpose()).div(norm2).mul_scalar(2.0); // [N, 1]
        h = h.sub(proj.mul(vi));
    }
    h
}

impl Householder {
    fn reflect(&self, x: Tensor<2>, reverse: bool) -> Tensor<2> {
        reflect_rows(x, &self.vectors.val(), reverse)
    }
}

impl Bijection for Householder {
    fn dim(&self) -> usize {
        self.vectors.val().dims()[1]
    }

    fn name(&self) -> String {
        "Householder".into()
    }

    fn forward_unchecked(&self, x: Tensor<2>, _call: &Call) -> Result<Mapped> {
        let (n, _) = dims2(&x);
        let device = x.device();
        Ok((self.reflect(x, false), Tensor::zeros([n], &device)))
    }

    fn inverse_unchecked(&self, y: Tensor<2>, _call: &Call) -> Result<Mapped> {
        let (n, _) = dims2(&y);
        let device = y.device();
        Ok((self.reflect(y, true), Tensor::zeros([n], &device)))
    }
}


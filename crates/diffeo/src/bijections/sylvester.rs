//! Sylvester flows (van den Berg et al. 2018): planar flows with M hidden units, log-determinant
//! by Sylvester's determinant identity.

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

use super::{Bijection, Call, Cost, Directions, LayerSpec, Mapped};
use crate::error::{Direction, FlowError, Result};
use crate::tensor::matrix;

/// How a [`Sylvester`] layer builds its matrix `Q` with orthonormal columns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SylvesterBasis {
    /// Orthogonal Sylvester flow: `Q` from an unconstrained `[D, M]` matrix by Björck's iterative
    /// orthogonalization (`Q ← Q(3I − QᵀQ)/2`, after scaling by the Frobenius norm).
    Orthogonal,
    /// Householder Sylvester flow: `Q` = the first M columns of a product of reflections (M = D).
    Householder {
        /// Number of reflections.
        reflections: usize,
    },
}

/// Configuration of a [`Sylvester`] layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SylvesterConfig {
    /// Features D.
    pub dim: usize,
    /// Hidden units M ≤ D (the Householder basis uses M = D).
    pub hidden: usize,
    /// How `Q` is built.
    pub basis: SylvesterBasis,
    /// Seed of the random basis (set by the chain; not stored).
    #[serde(skip)]
    pub seed: u64,
}

/// Björck iterations of the orthogonal basis.
const BJORCK_STEPS: usize = 20;

impl SylvesterConfig {
    /// `hidden` = M ≤ D hidden units with the given basis.
    pub fn new(dim: usize, hidden: usize, basis: SylvesterBasis) -> Self {
        Self { dim, hidden, basis, seed: 0 }
    }

    /// Sets the seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
}

impl LayerSpec for SylvesterConfig {
    fn dim(&self) -> usize {
        self.dim
    }

    fn parameter_count(&self) -> usize {
        let (d, m) = (self.dim, self.hidden);
        let basis = match self.basis {
            SylvesterBasis::Orthogonal => d * m,
            SylvesterBasis::Householder { reflections } => reflections * d,
        };
        basis + 2 * m * m + m
    }

    fn set_seed(&mut self, seed: u64) {
        self.seed = seed;
    }

    fn validate(&self) -> Result<()> {
        let ok = match self.basis {
            SylvesterBasis::Orthogonal => self.hidden >= 1 && self.hidden <= self.dim,
            SylvesterBasis::Householder { reflections } => self.hidden == self.dim && reflections >= 1,
        };
        if self.dim == 0 || !ok {
            return Err(FlowError::InvalidConfig(format!(
                "a Sylvester layer needs 1 ≤ M ≤ D (M = D for Householder, with ≥ 1 reflection); got D = {}, M = {}",
                self.dim, self.hidden
            )));
        }
        Ok(())
    }
}

impl SylvesterConfig {
    /// An exact identity (`R = 0`) with a random basis and random `R̃`.
    pub fn init(&self, device: &Device) -> Result<Sylvester> {
        self.validate()?;
        let rng = &mut StdRng::seed_from_u64(self.seed);
        let (d, m) = (self.dim, self.hidden);
        let mut normal = |len: usize, scale: f64| -> Vec<f64> { (0..len).map(|_| scale * rng.sample::<f64, _>(StandardNormal)).collect() };
        let basis = match self.basis {
            SylvesterBasis::Orthogonal => {
                // Orthonormal columns to start with: Gram–Schmidt on a random matrix.
                let mut q = normal(d * m, 1.0);
                for j in 0..m {
                    for k in 0..j {
                        let dot: f64 = (0..d).map(|i| q[i * m + j] * q[i * m + k]).sum();
                        for i in 0..d {
                            q[i * m + j] -= dot * q[i * m + k];
                        }
                    }
                    let norm = (0..d).map(|i| q[i * m + j].powi(2)).sum::<f64>().sqrt().max(1e-12);
                    for i in 0..d {
                        q[i * m + j] /= norm;
                    }
                }
                matrix(q, d, m, device)
            }
            SylvesterBasis::Householder { reflections } => matrix(normal(reflections * d, 1.0), reflections, d, device),
        };
        let r_tilde = normal(m * m, 1.0 / (m as f64).sqrt());
        let strict: Vec<f64> = (0..m * m).map(|k| if k / m < k % m { 1.0 } else { 0.0 }).collect();
        let eye: Vec<f64> = (0..m * m).map(|k| if k / m == k % m { 1.0 } else { 0.0 }).collect();
        Ok(Sylvester {
            basis: Param::from_tensor(basis),
            r: Param::from_tensor(Tensor::zeros([m, m], device)),
            r_tilde: Param::from_tensor(matrix(r_tilde, m, m, device)),
            bias: Param::from_tensor(Tensor::zeros([m], device)),
            strict_upper: matrix(strict, m, m, device),
            eye: matrix(eye, m, m, device),
            householder: matches!(self.basis, SylvesterBasis::Householder { .. }),
        })
    }
}

/// Sylvester flow (van den Berg et al. 2018): `y = x + Q R·tanh(R̃ Qᵀ x + b)` with `Q` `[D, M]`
/// orthonormal columns and `R`, `R̃` upper triangular `M × M` whose diagonals pass through tanh,
/// so `R_mm R̃_mm ∈ (−1, 1)` and the map is invertible. By Sylvester's determinant identity
/// `log|det J| = Σ_m log(1 + tanh'(z_m)·R_mm R̃_mm)`, O(M) per point.
///
/// The forward direction (sampling) is fast; the inverse has no closed form and is
/// [`Cost::Unavailable`].
#[derive(Module, Debug)]
pub struct Sylvester {
    /// `[D, M]` (orthogonal basis) or reflection vectors `[K, D]` (Householder basis).
    pub basis: Param<Tensor<2>>,
    /// `R` (upper part and diagonal used) `[M, M]`.
    pub r: Param<Tensor<2>>,
    /// `R̃` (upper part and diagonal used) `[M, M]`.
    pub r_tilde: Param<Tensor<2>>,
    /// `b` `[M]`.
    pub bias: Param<Tensor<1>>,
    strict_upper: Tensor<2>,
    eye: Tensor<2>,
    householder: bool,
}

impl Sylvester {
    /// `Q` `[D, M]`.
    fn q(&self) -> Tensor<2> {
        let b = self.basis.val();
        if self.householder {
            // Rows of the identity reflected in turn: I·H₁⋯H_K.
            super::householder::reflect_rows(self.eye.clone(), &b, false)
        } else {
            let norm = b.clone().square().sum().clamp_min(1e-30).sqrt().unsqueeze_dim::<2>(0);
            let mut q = b.div(norm);
            for _ in 0..BJORCK_STEPS {
                let qtq = q.clone().transpose().matmul(q.clone());
                q = q.clone().mul_scalar(1.5).sub(q.matmul(qtq).mul_scalar(0.5));
            }
            q
        }
    }

    /// Upper triangular with a tanh diagonal.
    fn triangular(&self, raw: Tensor<2>) -> Tensor<2> {
        raw.clone().mul(self.strict_upper.clone()).add(raw.tanh().mul(self.eye.clone()))
    }
}

impl Bijection for Sylvester {
    fn dim(&self) -> usize {
        if self.householder {
            self.basis.val().dims()[1]
        } else {
            self.basis.val().dims()[0]
        }
    }

    fn directions(&self) -> Directions {
        Directions { forward: Cost::ClosedForm, inverse: Cost::Unavailable }
    }

    fn name(&self) -> String {
        if self.householder { "Sylvester(Householder)" } else { "Sylvester(orthogonal)" }.into()
    }

    fn forward_unchecked(&self, x: Tensor<2>, _call: &Call) -> Result<Mapped> {
        let q = self.q();
        let r = self.triangular(self.r.val());
        let rt = self.triangular(self.r_tilde.val());
        let z = x.clone().matmul(q.clone()).matmul(rt.clone().transpose()).add(self.bias.val().unsqueeze());
        let h = z.tanh();
        let y = x.add(h.clone().matmul(r.clone().transpose()).matmul(q.transpose()));
        // diag(R)∘diag(R̃) as a row [1, M].
        let diag = r.mul(rt).mul(self.eye.clone()).sum_dim(0);
        let ld = h.square().neg().add_scalar(1.0).mul(diag).log1p().sum_dim(1).squeeze_dim::<1>(1);
        Ok((y, ld))
    }

    fn inverse_unchecked(&self, _y: Tensor<2>, _call: &Call) -> Result<Mapped> {
        Err(FlowError::NotInvertible { bijection: self.name(), direction: Direction::Inverse })
    }
}

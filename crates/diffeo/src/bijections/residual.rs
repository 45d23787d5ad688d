//! Residual flows `y = x + g(x)`, whose log-determinant is cheap because of the structure of
//! `g`.

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};
use rand::rngs::StdRng;
use rand::Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

use super::{Bijection, Cost, Directions, Mapped};
use crate::error::{Direction, FlowError, Result};
use crate::tensor::{matrix, softplus, vector};

/// Configuration of a [`Planar`] layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanarConfig {
    /// Features D.
    pub dim: usize,
}

impl PlanarConfig {
    /// An exact identity with a random direction `w` (`u` set so that `û = 0`).
    pub fn init_with(&self, rng: &mut StdRng, device: &Device) -> Planar {
        let d = self.dim;
        let w: Vec<f64> = (0..d).map(|_| rng.sample::<f64, _>(StandardNormal) / (d as f64).sqrt()).collect();
        let norm2: f64 = w.iter().map(|v| v * v).sum::<f64>().max(1e-12);
        // m(wᵀu) = 0 ⇔ wᵀu = ln(e − 1); then û = u − wᵀu·w/‖w‖² = 0.
        let c = (std::f64::consts::E - 1.0).ln();
        let u: Vec<f64> = w.iter().map(|wi| c * wi / norm2).collect();
        Planar {
            u: Param::from_tensor(vector(u, device)),
            w: Param::from_tensor(vector(w, device)),
            b: Param::from_tensor(Tensor::zeros([1], device)),
        }
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
        Directions { forward: Cost::Fast, inverse: Cost::Unavailable }
    }

    fn name(&self) -> String {
        "Planar".into()
    }

    fn forward_unchecked(&self, x: Tensor<2>, _context: Option<&Tensor<2>>) -> Result<Mapped> {
        let (u_hat, wu_hat) = self.constrained();
        let a = x.clone().matmul(self.w.val().unsqueeze_dim::<2>(1)).add(self.b.val().unsqueeze());
        let h = a.tanh();
        let y = x.add(h.clone().mul(u_hat.unsqueeze()));
        let psi = h.square().neg().add_scalar(1.0).mul(wu_hat.unsqueeze());
        let ld = psi.log1p().squeeze_dim::<1>(1);
        Ok((y, ld))
    }

    fn inverse_unchecked(&self, _y: Tensor<2>, _context: Option<&Tensor<2>>) -> Result<Mapped> {
        Err(FlowError::NotInvertible { bijection: self.name(), direction: Direction::Inverse })
    }
}

/// Configuration of a [`Radial`] layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RadialConfig {
    /// Features D.
    pub dim: usize,
}

impl RadialConfig {
    /// An exact identity (β = 0) around a random centre `x₀ ~ N(0, I)`.
    pub fn init_with(&self, rng: &mut StdRng, device: &Device) -> Radial {
        let x0: Vec<f64> = (0..self.dim).map(|_| rng.sample::<f64, _>(StandardNormal)).collect();
        Radial {
            center: Param::from_tensor(vector(x0, device)),
            alpha: Param::from_tensor(Tensor::zeros([1], device)),
            beta: Param::from_tensor(Tensor::zeros([1], device)),
        }
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
        Directions { forward: Cost::Fast, inverse: Cost::Unavailable }
    }

    fn name(&self) -> String {
        "Radial".into()
    }

    fn forward_unchecked(&self, x: Tensor<2>, _context: Option<&Tensor<2>>) -> Result<Mapped> {
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

    fn inverse_unchecked(&self, _y: Tensor<2>, _context: Option<&Tensor<2>>) -> Result<Mapped> {
        Err(FlowError::NotInvertible { bijection: self.name(), direction: Direction::Inverse })
    }
}

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
}

/// Björck iterations of the orthogonal basis.
const BJORCK_STEPS: usize = 20;

impl SylvesterConfig {
    /// Checks the sizes.
    pub fn validate(&self) -> Result<()> {
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

    /// An exact identity (`R = 0`) with a random basis and random `R̃`.
    pub fn init_with(&self, rng: &mut StdRng, device: &Device) -> Sylvester {
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
        Sylvester {
            basis: Param::from_tensor(basis),
            r: Param::from_tensor(Tensor::zeros([m, m], device)),
            r_tilde: Param::from_tensor(matrix(r_tilde, m, m, device)),
            bias: Param::from_tensor(Tensor::zeros([m], device)),
            strict_upper: matrix(strict, m, m, device),
            eye: matrix(eye, m, m, device),
            householder: matches!(self.basis, SylvesterBasis::Householder { .. }),
        }
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
            super::linear::reflect_rows(self.eye.clone(), &b, false)
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
        Directions { forward: Cost::Fast, inverse: Cost::Unavailable }
    }

    fn name(&self) -> String {
        if self.householder { "Sylvester(Householder)" } else { "Sylvester(orthogonal)" }.into()
    }

    fn forward_unchecked(&self, x: Tensor<2>, _context: Option<&Tensor<2>>) -> Result<Mapped> {
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

    fn inverse_unchecked(&self, _y: Tensor<2>, _context: Option<&Tensor<2>>) -> Result<Mapped> {
        Err(FlowError::NotInvertible { bijection: self.name(), direction: Direction::Inverse })
    }
}

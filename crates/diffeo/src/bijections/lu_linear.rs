//! Linear flows: an LU-decomposed invertible matrix with a fixed permutation.

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::{Bijection, Call, LayerSpec, Mapped, Permutation};
use crate::error::{FlowError, Result};
use crate::tensor::{dims2, indices, matrix};

/// Configuration of an [`LuLinear`] layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LuLinearConfig {
    /// Features D.
    pub dim: usize,
    /// Fixed permutation of the data features applied before the matrix (`x_perm[i] = x[perm[i]]`).
    pub perm: Vec<usize>,
}

impl LuLinearConfig {
    /// With the identity permutation.
    pub fn new(dim: usize) -> Self {
        Self { dim, perm: (0..dim).collect() }
    }

    /// With a fixed permutation of the data features applied before the matrix.
    pub fn with_perm(mut self, perm: Vec<usize>) -> Self {
        self.perm = perm;
        self
    }

    /// The layer, starting at the identity matrix (up to the permutation) and zero bias.
    pub fn init(&self, device: &Device) -> Result<LuLinear> {
        self.validate()?;
        let d = self.dim;
        let lower: Vec<f64> = (0..d * d).map(|k| if k / d > k % d { 1.0 } else { 0.0 }).collect();
        let upper: Vec<f64> = (0..d * d).map(|k| if k / d < k % d { 1.0 } else { 0.0 }).collect();
        let inverse_perm = {
            let mut inv = vec![0; d];
            for (i, &p) in self.perm.iter().enumerate() {
                inv[p] = i;
            }
            inv
        };
        Ok(LuLinear {
            lower: Param::from_tensor(Tensor::zeros([d, d], device)),
            upper: Param::from_tensor(Tensor::zeros([d, d], device)),
            log_diag: Param::from_tensor(Tensor::zeros([d], device)),
            bias: Param::from_tensor(Tensor::zeros([d], device)),
            lower_mask: matrix(lower, d, d, device),
            upper_mask: matrix(upper, d, d, device),
            perm: self.perm.clone(),
            inverse_perm,
        })
    }
}

impl LayerSpec for LuLinearConfig {
    fn dim(&self) -> usize {
        self.dim
    }

    fn validate(&self) -> Result<()> {
        if self.dim == 0 || self.perm.len() != self.dim {
            return Err(FlowError::InvalidConfig("an LU layer needs D ≥ 1 and a permutation of D entries".into()));
        }
        Permutation::validate(&self.perm)
    }

    fn parameter_count(&self) -> usize {
        2 * self.dim * (self.dim + 1)
    }
}

/// `u = W·x_perm + b` with `W = L·U`, `L` unit lower-triangular and `U` upper-triangular with
/// diagonal `exp(s)` (Kingma & Dhariwal 2018; Durkan et al. 2019).
/// `log|det J_{T⁻¹}| = Σ s`, O(D). The density direction (inverse, data → base) is the matrix
/// product; the sampling direction solves the two triangular systems (D steps of O(N·D)).
/// Both are exact. Starts at the identity (up to the fixed permutation).
#[derive(Module, Debug)]
pub struct LuLinear {
    /// Strictly lower part of `L` (entries on and above the diagonal are ignored).
    pub lower: Param<Tensor<2>>,
    /// Strictly upper part of `U`.
    pub upper: Param<Tensor<2>>,
    /// `s`: log of `U`'s diagonal.
    pub log_diag: Param<Tensor<1>>,
    /// `b`.
    pub bias: Param<Tensor<1>>,
    lower_mask: Tensor<2>,
    upper_mask: Tensor<2>,
    perm: Vec<usize>,
    inverse_perm: Vec<usize>,
}

impl LuLinear {
    fn l(&self) -> Tensor<2> {
        let d = self.perm.len();
        self.lower.val().mul(self.lower_mask.clone()).add(Tensor::eye(d, &self.lower_mask.device()))
    }

    fn u(&self) -> Tensor<2> {
        let d = self.perm.len();
        let diag = Tensor::eye(d, &self.upper_mask.device()).mul(self.log_diag.val().exp().unsqueeze_dim::<2>(0));
        self.upper.val().mul(self.upper_mask.clone()).add(diag)
    }
}

/// Solves `a·Mᵀ = r` for the rows `a` of `[N, D]`, with `M` triangular (`lower`: forward
/// substitution), one column at a time.
pub(crate) fn solve_triangular(m: Tensor<2>, r: Tensor<2>, lower: bool) -> Tensor<2> {
    let (_, d) = dims2(&r);
    let mut cols: Vec<Option<Tensor<2>>> = vec![None; d];
    let order: Vec<usize> = if lower { (0..d).collect() } else { (0..d).rev().collect() };
    for (step, &i) in order.iter().enumerate() {
        let row = m.clone().narrow(0, i, 1); // [1, D]
        let diag = row.clone().narrow(1, i, 1); // [1, 1]
        let mut rhs = r.clone().narrow(1, i, 1);
        for &j in &order[..step] {
            let a_j = cols[j].clone().expect("solved earlier");
            rhs = rhs.sub(a_j.mul(row.clone().narrow(1, j, 1)));
        }
        cols[i] = Some(rhs.div(diag));
    }
    Tensor::cat(cols.into_iter().map(|c| c.expect("all solved")).collect(), 1)
}

impl Bijection for LuLinear {
    fn dim(&self) -> usize {
        self.perm.len()
    }

    fn name(&self) -> String {
        "LuLinear".into()
    }

    /// Sampling: `x_perm = W⁻¹(u − b)`, then undo the permutation.
    fn forward_unchecked(&self, u: Tensor<2>, _call: &Call) -> Result<Mapped> {
        let (n, _) = dims2(&u);
        let r = u.sub(self.bias.val().unsqueeze());
        let a = solve_triangular(self.l(), r, true);
        let xp = solve_triangular(self.u(), a, false);
        let device = xp.device();
        let x = xp.select(1, indices(&self.inverse_perm, &device));
        Ok((x, self.log_diag.val().sum().neg().expand([n])))
    }

    /// Density: `u = W·x_perm + b`.
    fn inverse_unchecked(&self, x: Tensor<2>, _call: &Call) -> Result<Mapped> {
        let (n, _) = dims2(&x);
        let device = x.device();
        let xp = x.select(1, indices(&self.perm, &device));
        let w = self.l().matmul(self.u());
        let u = xp.matmul(w.transpose()).add(self.bias.val().unsqueeze());
        Ok((u, self.log_diag.val().sum().expand([n])))
    }
}


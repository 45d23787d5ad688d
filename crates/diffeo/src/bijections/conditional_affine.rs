//! A fixed affine map whose shift is linear in the context: `y = b + W c + s ⊙ x` (s > 0).
//! log|det J| = Σ log s, the same for every context.
//!
//! It stores a standardization *given the context*: with `b + W c` the least-squares regression
//! of the data on the context and `s` the residuals' standard deviations, a conditional flow
//! models `(y − b − W c) / s`, which is already close to standard normal when the conditional
//! mean is nearly linear in the context (a Gaussian linear model is matched exactly), so the
//! flow's networks only learn what a linear model misses. [`ConditionalAffineConfig::regression`]
//! fits it.

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::{Bijection, Call, LayerSpec, Mapped};
use crate::error::{FlowError, Result};
use crate::tensor::{dims2, matrix, vector};

/// Configuration of a [`ConditionalAffine`] layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConditionalAffineConfig {
    /// Features D.
    pub dim: usize,
    /// Context width C (0: a plain fixed affine map).
    pub context_dim: usize,
    /// `b`, `[D]`.
    pub shift: Vec<f64>,
    /// `W`, `[D, C]` row-major.
    pub weight: Vec<f64>,
    /// `s`, `[D]`, positive.
    pub scale: Vec<f64>,
}

/// Rows needed per regression coefficient (context columns + 1) before a regression is fitted;
/// with fewer, [`ConditionalAffineConfig::regression`] keeps `W = 0`.
pub const REGRESSION_ROWS_PER_COEFFICIENT: usize = 10;

impl ConditionalAffineConfig {
    /// `y = shift + weight · c + scale ⊙ x`.
    pub fn new(dim: usize, context_dim: usize, shift: Vec<f64>, weight: Vec<f64>, scale: Vec<f64>) -> Self {
        Self { dim, context_dim, shift, weight, scale }
    }

    /// The least-squares regression of `values` (`[n, D]` row-major) on `context` (`[n, C]`),
    /// with a ridge of `1e-8·n` on `W` for a well-posed solve, and the residuals' standard
    /// deviations as scales (a constant residual gets scale 1). Fewer than
    /// [`REGRESSION_ROWS_PER_COEFFICIENT`] rows per coefficient, or a singular system: `W = 0`
    /// (the marginal standardization). Errors on an empty set or non-finite values.
    pub fn regression(values: &[f64], dim: usize, context: &[f64], context_dim: usize) -> Result<Self> {
        if dim == 0 || values.is_empty() || values.len() % dim != 0 {
            return Err(FlowError::Empty { what: "data to standardize".into() });
        }
        let n = values.len() / dim;
        if context.len() != n * context_dim {
            return Err(FlowError::Data(format!("{n} data rows but {} context values for {context_dim} columns", context.len())));
        }
        if values.iter().chain(context).any(|v| !v.is_finite()) {
            return Err(FlowError::InvalidConfig("data statistics are not finite".into()));
        }
        let k = context_dim + 1;
        let weights = if context_dim > 0 && n >= REGRESSION_ROWS_PER_COEFFICIENT * k {
            least_squares(values, dim, context, context_dim)
        } else {
            None
        };
        // [k, D]: intercept row, then one row per context column.
        let beta = weights.unwrap_or_else(|| {
            let mut b = vec![0.0; k * dim];
            for row in values.chunks_exact(dim) {
                for (m, v) in b[..dim].iter_mut().zip(row) {
                    *m += v / n as f64;
                }
            }
            b
        });
        let mut var = vec![0.0; dim];
        for (row, c) in values.chunks_exact(dim).zip(context.chunks_exact(context_dim.max(1)).chain(std::iter::repeat(&[][..]))) {
            for (j, v) in row.iter().enumerate() {
                let mut fit = beta[j];
                for (i, ci) in c.iter().enumerate().take(context_dim) {
                    fit += beta[(i + 1) * dim + j] * ci;
                }
                var[j] += (v - fit) * (v - fit) / n as f64;
            }
        }
        let scale: Vec<f64> = var
            .iter()
            .zip(&beta[..dim])
            .map(|(v, b)| {
                let sd = v.sqrt();
                if sd > 1e-12 * (1.0 + b.abs()) { sd } else { 1.0 }
            })
            .collect();
        let mut weight = vec![0.0; dim * context_dim];
        for j in 0..dim {
            for i in 0..context_dim {
                weight[j * context_dim + i] = beta[(i + 1) * dim + j];
            }
        }
        let config = Self::new(dim, context_dim, beta[..dim].to_vec(), weight, scale);
        config.validate()?;
        Ok(config)
    }

    /// Builds the layer.
    pub fn init(&self, device: &Device) -> Result<ConditionalAffine> {
        self.validate()?;
        // Stored transposed, `[C, D]`, so that the shift of a batch is `c · Wᵀ`.
        let mut wt = vec![0.0; self.weight.len()];
        for j in 0..self.dim {
            for i in 0..self.context_dim {
                wt[i * self.dim + j] = self.weight[j * self.context_dim + i];
            }
        }
        Ok(ConditionalAffine {
            dim: self.dim,
            context_dim: self.context_dim,
            shift: vector(self.shift.clone(), device),
            weight_t: (self.context_dim > 0).then(|| matrix(wt, self.context_dim, self.dim, device)),
            log_scale: vector(self.scale.iter().map(|s| s.ln()).collect(), device),
        })
    }
}

/// `(XᵀX + λI) β = XᵀY` for `X = [1, c]`, by Cholesky in f64; `None` when not positive definite.
fn least_squares(values: &[f64], dim: usize, context: &[f64], context_dim: usize) -> Option<Vec<f64>> {
    let k = context_dim + 1;
    let n = values.len() / dim;
    let mut a = vec![0.0; k * k];
    let mut b = vec![0.0; k * dim];
    let mut x = vec![1.0; k];
    for (row, c) in values.chunks_exact(dim).zip(context.chunks_exact(context_dim)) {
        x[1..].copy_from_slice(c);
        for i in 0..k {
            for j in 0..=i {
                a[i * k + j] += x[i] * x[j];
            }
            for (d, v) in row.iter().enumerate() {
                b[i * dim + d] += x[i] * v;
            }
        }
    }
    for i in 1..k {
        a[i * k + i] += 1e-8 * n as f64;
    }
    // Cholesky: a = L Lᵀ (lower triangle).
    for j in 0..k {
        let mut diag = a[j * k + j];
        for p in 0..j {
            diag -= a[j * k + p] * a[j * k + p];
        }
        if diag.is_nan() || diag <= 1e-12 * n as f64 {
            return None;
        }
        let l = diag.sqrt();
        a[j * k + j] = l;
        for i in j + 1..k {
            let mut v = a[i * k + j];
            for p in 0..j {
                v -= a[i * k + p] * a[j * k + p];
            }
            a[i * k + j] = v / l;
        }
    }
    for d in 0..dim {
        // L z = b, then Lᵀ β = z.
        let mut z = vec![0.0; k];
        for i in 0..k {
            let mut v = b[i * dim + d];
            for p in 0..i {
                v -= a[i * k + p] * z[p];
            }
            z[i] = v / a[i * k + i];
        }
        for i in (0..k).rev() {
            let mut v = z[i];
            for p in i + 1..k {
                v -= a[p * k + i] * b[p * dim + d];
            }
            b[i * dim + d] = v / a[i * k + i];
        }
    }
    b.iter().all(|v| v.is_finite()).then_some(b)
}

impl LayerSpec for ConditionalAffineConfig {
    fn dim(&self) -> usize {
        self.dim
    }

    fn context_dim(&self) -> usize {
        self.context_dim
    }

    fn validate(&self) -> Result<()> {
        super::require_features(self.dim, "a conditional affine layer")?;
        let (d, c) = (self.dim, self.context_dim);
        if self.shift.len() != d || self.scale.len() != d || self.weight.len() != d * c {
            return Err(FlowError::InvalidConfig(format!("a conditional affine layer on {d} features with {c} context columns needs {d} shifts, {d} scales and {} weights", d * c)));
        }
        if self.shift.iter().chain(&self.weight).any(|v| !v.is_finite()) || self.scale.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(FlowError::InvalidConfig("a conditional affine layer needs finite shifts and weights and positive finite scales".into()));
        }
        Ok(())
    }
}

/// `y = b + W c + s ⊙ x`; see the module documentation.
#[derive(Module, Debug)]
pub struct ConditionalAffine {
    dim: usize,
    context_dim: usize,
    shift: Tensor<1>,
    weight_t: Option<Tensor<2>>,
    log_scale: Tensor<1>,
}

impl ConditionalAffine {
    /// `b + W c` for each row, `[n, D]`.
    fn offset(&self, n: usize, call: &Call) -> Result<Tensor<2>> {
        let b: Tensor<2> = self.shift.clone().unsqueeze::<2>().expand([n, self.dim]);
        match &self.weight_t {
            None => Ok(b),
            Some(w) => {
                let c = call.context().ok_or(FlowError::MissingContext { expected: self.context_dim })?;
                Ok(c.clone().matmul(w.clone()).add(b))
            }
        }
    }
}

impl Bijection for ConditionalAffine {
    fn dim(&self) -> usize {
        self.dim
    }

    fn context_dim(&self) -> usize {
        self.context_dim
    }

    fn name(&self) -> String {
        "ConditionalAffine".into()
    }

    fn forward_unchecked(&self, x: Tensor<2>, call: &Call) -> Result<Mapped> {
        let (n, _) = dims2(&x);
        let y = x.mul(self.log_scale.clone().exp().unsqueeze()).add(self.offset(n, call)?);
        Ok((y, self.log_scale.clone().sum().expand([n])))
    }

    fn inverse_unchecked(&self, y: Tensor<2>, call: &Call) -> Result<Mapped> {
        let (n, _) = dims2(&y);
        let x = y.sub(self.offset(n, call)?).mul(self.log_scale.clone().neg().exp().unsqueeze());
        Ok((x, self.log_scale.clone().sum().neg().expand([n])))
    }
}

//! Fixed elementwise bijections: exp, softplus, sigmoid, tanh, a scaled sigmoid onto a box, a
//! per-feature map onto a prior's support, and a fixed affine map (a stored standardization).
//!
//! Inputs outside a map's domain (e.g. `y ≤ 0` for the inverse of `exp`) are replaced by safe
//! values *before* any arithmetic, and their log-determinant is set to −∞, so densities of
//! out-of-support points are 0 and gradients stay finite.

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::{Bijection, Call, LayerSpec, Mapped};
use crate::error::{FlowError, Result};
use crate::tensor::{dims2, log_sigmoid, log_tanh_slope, softplus, sum_rows, vector};

/// The fixed elementwise maps. Each is applied to every feature; both directions are fast.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ElementwiseKind {
    /// `y = exp(x)`, onto (0, ∞). log|dy/dx| = x.
    Exp,
    /// `y = log(1 + eˣ)`, onto (0, ∞). log|dy/dx| = log σ(x).
    Softplus,
    /// `y = σ(x) = 1/(1 + e⁻ˣ)`, onto (0, 1). log|dy/dx| = log σ(x) + log σ(−x).
    /// Its inverse is the logit.
    Sigmoid,
    /// `y = tanh(x)`, onto (−1, 1). log|dy/dx| = 2(ln 2 − x − softplus(−2x)).
    Tanh,
    /// `y = low + (high − low)·σ(x)`, onto the box (low, high) per feature, for bounded data
    /// and constrained targets.
    Box {
        /// Lower bounds, one per feature.
        low: Vec<f64>,
        /// Upper bounds, one per feature.
        high: Vec<f64>,
    },
    /// A map onto a support given per feature: `(low, high)` → `low + (high − low)·σ(x)`,
    /// `(low, ∞)` → `low + eˣ`, `(−∞, high)` → `high − e⁻ˣ`, `(−∞, ∞)` → `x` (a missing bound
    /// is `null`). Flows on a bounded prior are trained in the unconstrained space it maps from.
    Support {
        /// Lower bounds, one per feature (`None`: −∞).
        low: Vec<Option<f64>>,
        /// Upper bounds, one per feature (`None`: +∞).
        high: Vec<Option<f64>>,
    },
    /// A fixed affine map `y = shift + scale ⊙ x` (scale > 0), e.g. a data standardization
    /// stored with a model so that densities are in the data's original units.
    /// log|det J| = Σ log scale.
    Affine {
        /// Shifts, one per feature.
        shift: Vec<f64>,
        /// Positive scales, one per feature.
        scale: Vec<f64>,
    },
}

/// Configuration of an [`Elementwise`] layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ElementwiseConfig {
    /// Features.
    pub dim: usize,
    /// Which map.
    pub kind: ElementwiseKind,
}

impl ElementwiseConfig {
    /// The map `kind` on `dim` features.
    pub fn new(dim: usize, kind: ElementwiseKind) -> Self {
        Self { dim, kind }
    }

    /// Builds the layer.
    pub fn init(&self, device: &Device) -> Result<Elementwise> {
        self.validate()?;
        let (low, width) = match &self.kind {
            ElementwiseKind::Box { low, high } => (low.clone(), low.iter().zip(high).map(|(l, h)| h - l).collect()),
            ElementwiseKind::Affine { shift, scale } => (shift.clone(), scale.clone()),
            // low: the lower bound (or the upper one for upper-only features); width: the
            // interval's width; code: 0 unbounded, 1 interval, 2 lower only, 3 upper only.
            ElementwiseKind::Support { low, high } => {
                let lw = low.iter().zip(high).map(|b| match b {
                    (Some(l), Some(h)) => (*l, h - l),
                    (Some(l), None) => (*l, 1.0),
                    (None, Some(h)) => (*h, 1.0),
                    (None, None) => (0.0, 1.0),
                });
                lw.unzip()
            }
            _ => (vec![0.0; self.dim], vec![1.0; self.dim]),
        };
        let code = match &self.kind {
            ElementwiseKind::Support { low, high } => low
                .iter()
                .zip(high)
                .map(|b| match b {
                    (None, None) => 0.0,
                    (Some(_), Some(_)) => 1.0,
                    (Some(_), None) => 2.0,
                    (None, Some(_)) => 3.0,
                })
                .collect(),
            _ => vec![0.0; self.dim],
        };
        Ok(Elementwise {
            kind: self.kind.clone(),
            dim: self.dim,
            low: vector(low, device),
            width: vector(width, device),
            code: vector(code, device),
        })
    }
}

impl LayerSpec for ElementwiseConfig {
    fn dim(&self) -> usize {
        self.dim
    }

    fn validate(&self) -> Result<()> {
        super::require_features(self.dim, "an elementwise layer")?;
        let dim = self.dim;
        if let ElementwiseKind::Box { low, high } = &self.kind {
            if low.len() != dim || high.len() != dim {
                return Err(FlowError::InvalidConfig(format!("box bounds need {dim} entries each")));
            }
            if low.iter().zip(high).any(|(l, h)| l >= h || !l.is_finite() || !h.is_finite()) {
                return Err(FlowError::InvalidConfig("box bounds need finite low < high".into()));
            }
        }
        if let ElementwiseKind::Support { low, high } = &self.kind {
            if low.len() != dim || high.len() != dim {
                return Err(FlowError::InvalidConfig(format!("support bounds need {dim} entries each")));
            }
            let finite = |b: &Option<f64>| b.is_none_or(|v| v.is_finite());
            if !low.iter().chain(high).all(finite) || low.iter().zip(high).any(|(l, h)| matches!((l, h), (Some(l), Some(h)) if l >= h)) {
                return Err(FlowError::InvalidConfig("support bounds need finite values and low < high".into()));
            }
        }
        if let ElementwiseKind::Affine { shift, scale } = &self.kind {
            if shift.len() != dim || scale.len() != dim {
                return Err(FlowError::InvalidConfig(format!("affine shift and scale need {dim} entries each")));
            }
            if shift.iter().any(|s| !s.is_finite()) || scale.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
                return Err(FlowError::InvalidConfig("affine needs finite shifts and finite scales > 0".into()));
            }
        }
        Ok(())
    }
}

/// A fixed elementwise bijection (no trainable parameters).
#[derive(Module, Debug)]
pub struct Elementwise {
    /// The map.
    #[module(skip)]
    pub kind: ElementwiseKind,
    /// Features.
    pub dim: usize,
    /// Box lower bounds or affine shifts (zeros for other kinds).
    low: Tensor<1>,
    /// Box widths `high − low` or affine scales (ones for other kinds).
    width: Tensor<1>,
    /// Support: per-feature kind of bound (0 none, 1 interval, 2 lower, 3 upper); zeros for
    /// other kinds.
    code: Tensor<1>,
}

/// Which features of an `[n, d]` batch have support code `c`.
fn code_mask(code: &Tensor<1>, c: f64, n: usize) -> burn::tensor::Tensor<2, burn::tensor::Bool> {
    let d = code.dims()[0];
    code.clone().unsqueeze::<2>().expand([n, d]).equal_elem(c)
}

/// A support map's bounds as rows and the masks of its three bounded kinds, for a batch of `n`.
struct SupportBranches {
    /// Lower bound (upper bound for upper-only features), `[1, d]`.
    low: Tensor<2>,
    /// Interval width (1 elsewhere), `[1, d]`.
    w: Tensor<2>,
    /// Features bounded on both sides, `[n, d]`.
    interval: burn::tensor::Tensor<2, burn::tensor::Bool>,
    /// Features bounded below only.
    lower: burn::tensor::Tensor<2, burn::tensor::Bool>,
    /// Features bounded above only.
    upper: burn::tensor::Tensor<2, burn::tensor::Bool>,
}

impl Elementwise {
    fn support_branches(&self, n: usize) -> SupportBranches {
        SupportBranches {
            low: self.low.clone().unsqueeze(),
            w: self.width.clone().unsqueeze(),
            interval: code_mask(&self.code, 1.0, n),
            lower: code_mask(&self.code, 2.0, n),
            upper: code_mask(&self.code, 3.0, n),
        }
    }
}

/// Exponents beyond which `exp` of a support map would overflow f32 (the map is then flat,
/// which only samples ~e⁶⁰ standard deviations out reach).
const EXP_LIMIT: f64 = 60.0;

/// Replaces entries where `bad` holds by `safe`, returns the cleaned tensor and the mask.
fn sanitize(y: Tensor<2>, bad: burn::tensor::Tensor<2, burn::tensor::Bool>, safe: f64) -> Tensor<2> {
    y.mask_fill(bad, safe)
}

impl Bijection for Elementwise {
    fn dim(&self) -> usize {
        self.dim
    }

    fn name(&self) -> String {
        match self.kind {
            ElementwiseKind::Exp => "Exp".into(),
            ElementwiseKind::Softplus => "Softplus".into(),
            ElementwiseKind::Sigmoid => "Sigmoid".into(),
            ElementwiseKind::Tanh => "Tanh".into(),
            ElementwiseKind::Box { .. } => "Box".into(),
            ElementwiseKind::Support { .. } => "Support".into(),
            ElementwiseKind::Affine { .. } => "FixedAffine".into(),
        }
    }

    fn forward_unchecked(&self, x: Tensor<2>, _call: &Call) -> Result<Mapped> {
        let (y, ld) = match &self.kind {
            ElementwiseKind::Exp => (x.clone().exp(), x),
            ElementwiseKind::Softplus => (softplus(x.clone()), log_sigmoid(x)),
            ElementwiseKind::Sigmoid => {
                let ld = log_sigmoid(x.clone()).add(log_sigmoid(x.clone().neg()));
                (burn::tensor::activation::sigmoid(x), ld)
            }
            ElementwiseKind::Tanh => (x.clone().tanh(), log_tanh_slope(x)),
            ElementwiseKind::Box { .. } => {
                let w = self.width.clone().unsqueeze::<2>();
                let ld = log_sigmoid(x.clone())
                    .add(log_sigmoid(x.clone().neg()))
                    .add(w.clone().log());
                let y = burn::tensor::activation::sigmoid(x).mul(w).add(self.low.clone().unsqueeze());
                (y, ld)
            }
            ElementwiseKind::Support { .. } => {
                let SupportBranches { low, w, interval, lower, upper } = self.support_branches(dims2(&x).0);
                let xc = x.clone().clamp(-EXP_LIMIT, EXP_LIMIT);
                let y_interval = burn::tensor::activation::sigmoid(x.clone()).mul(w.clone()).add(low.clone());
                let ld_interval = log_sigmoid(x.clone()).add(log_sigmoid(x.clone().neg())).add(w.log());
                let y_lower = xc.clone().exp().add(low.clone());
                let y_upper = low.sub(xc.clone().neg().exp());
                let y = x.clone().mask_where(interval.clone(), y_interval).mask_where(lower.clone(), y_lower).mask_where(upper.clone(), y_upper);
                let ld = x
                    .zeros_like()
                    .mask_where(interval, ld_interval)
                    .mask_where(lower, xc.clone())
                    .mask_where(upper, xc.neg());
                (y, ld)
            }
            ElementwiseKind::Affine { .. } => {
                let (n, _) = dims2(&x);
                let w = self.width.clone();
                let ld = w.clone().log().sum().expand([n]);
                let y = x.mul(w.unsqueeze()).add(self.low.clone().unsqueeze());
                return Ok((y, ld));
            }
        };
        Ok((y, sum_rows(ld)))
    }

    fn inverse_unchecked(&self, y: Tensor<2>, _call: &Call) -> Result<Mapped> {
        let neg_inf = f64::NEG_INFINITY;
        let (x, ld) = match &self.kind {
            ElementwiseKind::Exp => {
                let bad = y.clone().lower_equal_elem(0.0);
                let ys = sanitize(y, bad.clone(), 1.0);
                let x = ys.log();
                (x.clone(), x.neg().mask_fill(bad, neg_inf))
            }
            ElementwiseKind::Softplus => {
                let bad = y.clone().lower_equal_elem(0.0);
                let ys = sanitize(y, bad.clone(), 1.0);
                // x = y + log(1 − e^{−y})
                let x = ys.clone().add(ys.neg().exp().neg().log1p());
                let ld = log_sigmoid(x.clone()).neg().mask_fill(bad, neg_inf);
                (x, ld)
            }
            ElementwiseKind::Sigmoid => {
                let bad = y.clone().lower_equal_elem(0.0).bool_or(y.clone().greater_equal_elem(1.0));
                let ys = sanitize(y, bad.clone(), 0.5);
                let log_y = ys.clone().log();
                let log_1my = ys.neg().log1p();
                let x = log_y.clone().sub(log_1my.clone());
                (x, log_y.add(log_1my).neg().mask_fill(bad, neg_inf))
            }
            ElementwiseKind::Tanh => {
                let bad = y.clone().lower_equal_elem(-1.0).bool_or(y.clone().greater_equal_elem(1.0));
                let ys = sanitize(y, bad.clone(), 0.0);
                let a = ys.clone().log1p();
                let b = ys.neg().log1p();
                let x = a.clone().sub(b.clone()).mul_scalar(0.5);
                (x, a.add(b).neg().mask_fill(bad, neg_inf))
            }
            ElementwiseKind::Box { .. } => {
                let w = self.width.clone().unsqueeze::<2>();
                let s = y.sub(self.low.clone().unsqueeze()).div(w.clone());
                let bad = s.clone().lower_equal_elem(0.0).bool_or(s.clone().greater_equal_elem(1.0));
                let ss = sanitize(s, bad.clone(), 0.5);
                let log_s = ss.clone().log();
                let log_1ms = ss.neg().log1p();
                let x = log_s.clone().sub(log_1ms.clone());
                let ld = log_s.add(log_1ms).add(w.log()).neg().mask_fill(bad, neg_inf);
                (x, ld)
            }
            ElementwiseKind::Support { .. } => {
                let SupportBranches { low, w, interval, lower, upper } = self.support_branches(dims2(&y).0);
                // Each branch's argument, replaced by a safe value wherever the branch does not
                // apply or the point is outside the support.
                let s = y.clone().sub(low.clone()).div(w.clone());
                let t_lower = y.clone().sub(low.clone());
                let t_upper = low.sub(y.clone());
                let bad_interval = s.clone().lower_equal_elem(0.0).bool_or(s.clone().greater_equal_elem(1.0)).bool_and(interval.clone());
                let bad_lower = t_lower.clone().lower_equal_elem(0.0).bool_and(lower.clone());
                let bad_upper = t_upper.clone().lower_equal_elem(0.0).bool_and(upper.clone());
                let bad = bad_interval.bool_or(bad_lower).bool_or(bad_upper);
                let ss = s.mask_fill(interval.clone().bool_not().bool_or(bad.clone()), 0.5);
                let tl = t_lower.mask_fill(lower.clone().bool_not().bool_or(bad.clone()), 1.0).log();
                let tu = t_upper.mask_fill(upper.clone().bool_not().bool_or(bad.clone()), 1.0).log();
                let (log_s, log_1ms) = (ss.clone().log(), ss.neg().log1p());
                let x_interval = log_s.clone().sub(log_1ms.clone());
                let ld_interval = log_s.add(log_1ms).add(w.log()).neg();
                let x = y.clone().mask_where(interval.clone(), x_interval).mask_where(lower.clone(), tl.clone()).mask_where(upper.clone(), tu.clone().neg());
                let ld = y
                    .zeros_like()
                    .mask_where(interval, ld_interval)
                    .mask_where(lower, tl.neg())
                    .mask_where(upper, tu.neg())
                    .mask_fill(bad.clone(), neg_inf);
                // Points outside the support map to 0 in the base (finite), with density 0.
                (x.mask_fill(bad, 0.0), ld)
            }
            ElementwiseKind::Affine { .. } => {
                let (n, _) = dims2(&y);
                let w = self.width.clone();
                let ld = w.clone().log().sum().neg().expand([n]);
                let x = y.sub(self.low.clone().unsqueeze()).div(w.unsqueeze());
                return Ok((x, ld));
            }
        };
        Ok((x, sum_rows(ld)))
    }
}


//! Coupling layers (NICE, Dinh et al. 2014; RealNVP, Dinh et al. 2017).
//!
//! Features are split by a binary mask into an identity part A and a transformed part B:
//! `x_A = u_A`, `x_B = τ(u_B; θ(u_A, c))`. The conditioner is an MLP on `[u_A, c]`. Both
//! directions take one pass, and log|det J| = Σ_B log|τ'|.

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor};
use serde::{Deserialize, Serialize};

use super::{Bijection, Call, Conditioner, ConditionerConfig, Cost, Directions, LayerSpec, Mapped};
use crate::error::{FlowError, Result};
use crate::nn::Mlp;
use crate::tensor::{indices, sum_rows};
use crate::transformer::Transformer;

/// Configuration of one coupling layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CouplingConfig {
    /// Features D (≥ 2).
    pub dim: usize,
    /// Context width C.
    #[serde(default)]
    pub context_dim: usize,
    /// The conditioner network (an MLP on the kept features and the context).
    #[serde(flatten)]
    pub conditioner: ConditionerConfig,
    /// `mask[i] = true`: feature `i` passes through unchanged and feeds the conditioner.
    pub mask: Vec<bool>,
    /// The elementwise transformer for the other features.
    #[serde(default)]
    pub transformer: Transformer,
    /// Seed of the weights (set by the chain; not stored).
    #[serde(skip)]
    pub seed: u64,
}

impl CouplingConfig {
    /// A coupling layer with the given mask (`true`: kept), affine transformer and a ReLU MLP.
    pub fn new(mask: Vec<bool>, hidden: Vec<usize>) -> Self {
        Self { dim: mask.len(), context_dim: 0, conditioner: ConditionerConfig::new(hidden), mask, transformer: Transformer::Affine, seed: 0 }
    }

    /// The first ⌈D/2⌉ features condition the rest (`flip` swaps the roles).
    pub fn half(dim: usize, hidden: Vec<usize>, flip: bool) -> Self {
        Self::new((0..dim).map(|i| (i < dim.div_ceil(2)) != flip).collect(), hidden)
    }

    fn split(&self) -> (Vec<usize>, Vec<usize>) {
        let kept: Vec<usize> = (0..self.dim).filter(|&i| self.mask[i]).collect();
        let changed: Vec<usize> = (0..self.dim).filter(|&i| !self.mask[i]).collect();
        (kept, changed)
    }

    super::conditioner::conditioned_layer_builders!();

    /// Builds the layer (last conditioner layer zero: identity start).
    pub fn init(&self, device: &Device) -> Result<Coupling> {
        self.validate()?;
        let (kept, changed) = self.split();
        let mut order = kept.clone();
        order.extend(&changed);
        let mut restore = vec![0; self.dim];
        for (pos, &i) in order.iter().enumerate() {
            restore[i] = pos;
        }
        let p = self.transformer.params_per_dim();
        let conditioner = self.conditioner.mlp(kept.len() + self.context_dim, p * changed.len(), self.seed).init(device)?;
        Ok(Coupling {
            conditioner,
            transformer: self.transformer.clone(),
            kept: indices(&kept, device),
            changed: indices(&changed, device),
            restore: indices(&restore, device),
            dim: self.dim,
            context_dim: self.context_dim,
        })
    }
}

impl LayerSpec for CouplingConfig {
    fn dim(&self) -> usize {
        self.dim
    }

    fn validate(&self) -> Result<()> {
        if self.mask.len() != self.dim {
            return Err(FlowError::InvalidConfig(format!(
                "coupling mask has {} entries for {} features",
                self.mask.len(),
                self.dim
            )));
        }
        let kept = self.mask.iter().filter(|m| **m).count();
        if kept == 0 || kept == self.dim {
            return Err(FlowError::InvalidConfig(
                "a coupling mask must keep at least one feature and transform at least one (D ≥ 2)".into(),
            ));
        }
        self.transformer.validate()?;
        self.conditioner.validate()
    }

    fn context_dim(&self) -> usize {
        self.context_dim
    }

    fn parameter_count(&self) -> usize {
        let (kept, changed) = self.split();
        self.conditioner.mlp(kept.len() + self.context_dim, self.transformer.params_per_dim() * changed.len(), 0).parameter_count()
    }

    fn batch_dependent(&self) -> bool {
        self.conditioner.random_in_training()
    }

    fn tail_bound(&self) -> Option<f64> {
        self.transformer.tail_bound()
    }

    fn set_seed(&mut self, seed: u64) {
        self.seed = seed;
    }
}

/// A coupling layer: MLP conditioner + elementwise transformer.
#[derive(Module, Debug)]
pub struct Coupling {
    /// The conditioner `[x_A, c] → θ`.
    pub conditioner: Mlp,
    /// The elementwise transformer.
    #[module(skip)]
    pub transformer: Transformer,
    kept: Tensor<1, Int>,
    changed: Tensor<1, Int>,
    restore: Tensor<1, Int>,
    /// Features D.
    pub dim: usize,
    /// Context width.
    pub context_dim: usize,
}

impl Coupling {
    fn apply(&self, x: Tensor<2>, call: &Call, inverse: bool) -> Result<Mapped> {
        let a = x.clone().select(1, self.kept.clone());
        let b = x.select(1, self.changed.clone());
        let context = if self.context_dim > 0 { call.context() } else { None };
        let params = self.conditioner.params(a.clone(), context);
        let (b2, ld) = if inverse { self.transformer.inverse(b, &params) } else { self.transformer.forward(b, &params, &call.tolerance())? };
        let y = Tensor::cat(vec![a, b2], 1).select(1, self.restore.clone());
        Ok((y, sum_rows(ld)))
    }
}

impl Bijection for Coupling {
    fn dim(&self) -> usize {
        self.dim
    }

    fn context_dim(&self) -> usize {
        self.context_dim
    }

    fn name(&self) -> String {
        format!("Coupling({})", self.transformer.name())
    }

    fn directions(&self) -> Directions {
        let forward = if self.transformer.is_numerical() { Cost::Iterative } else { Cost::ClosedForm };
        Directions { forward, inverse: Cost::ClosedForm }
    }

    fn forward_unchecked(&self, x: Tensor<2>, call: &Call) -> Result<Mapped> {
        self.apply(x, call, false)
    }

    fn inverse_unchecked(&self, y: Tensor<2>, call: &Call) -> Result<Mapped> {
        self.apply(y, call, true)
    }
}

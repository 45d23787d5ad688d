//! Coupling layers (NICE, Dinh et al. 2014; RealNVP, Dinh et al. 2017).
//!
//! Features are split by a binary mask into an identity part A and a transformed part B:
//! `x_A = u_A`, `x_B = τ(u_B; θ(u_A, c))`. The conditioner is an MLP on `[u_A, c]`. Both
//! directions take one pass, and log|det J| = Σ_B log|τ'|.

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor};
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use super::{Bijection, Mapped};
use crate::error::{FlowError, Result};
use crate::nn::{Activation, Mlp};
use crate::tensor::{dims2, indices, sum_rows};
use crate::transformer::Transformer;

/// Configuration of one coupling layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CouplingConfig {
    /// Features D (≥ 2).
    pub dim: usize,
    /// Context width C.
    #[serde(default)]
    pub context_dim: usize,
    /// Hidden widths of the conditioner MLP.
    pub hidden: Vec<usize>,
    /// `mask[i] = true`: feature `i` passes through unchanged and feeds the conditioner.
    pub mask: Vec<bool>,
    /// The elementwise transformer for the other features.
    #[serde(default)]
    pub transformer: Transformer,
    /// Hidden nonlinearity.
    #[serde(default)]
    pub activation: Activation,
    /// Residual blocks after the first hidden layer (0: plain MLP). With blocks, only
    /// `hidden[0]` is used, as the width of every block.
    #[serde(default)]
    pub residual_blocks: usize,
    /// Dropout probability inside the residual blocks (training only).
    #[serde(default)]
    pub dropout: f64,
}

impl CouplingConfig {
    /// The first ⌈D/2⌉ features condition the rest (`flip` swaps the roles).
    pub fn half(dim: usize, hidden: Vec<usize>, flip: bool) -> Self {
        let mask = (0..dim).map(|i| (i < dim.div_ceil(2)) != flip).collect();
        Self {
            dim,
            context_dim: 0,
            hidden,
            mask,
            transformer: Transformer::Affine,
            activation: Activation::Relu,
            residual_blocks: 0,
            dropout: 0.0,
        }
    }

    /// Checks the configuration.
    pub fn validate(&self) -> Result<()> {
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
        if self.hidden.contains(&0) {
            return Err(FlowError::InvalidConfig("hidden layers must have at least one unit".into()));
        }
        self.transformer.validate()?;
        crate::nn::validate_residual(&self.hidden, self.residual_blocks, self.dropout)?;
        Ok(())
    }

    /// Builds the layer (last conditioner layer zero: identity start).
    pub fn init_with(&self, rng: &mut StdRng, device: &Device) -> Coupling {
        let kept: Vec<usize> = (0..self.dim).filter(|&i| self.mask[i]).collect();
        let changed: Vec<usize> = (0..self.dim).filter(|&i| !self.mask[i]).collect();
        let mut order = kept.clone();
        order.extend(&changed);
        let mut restore = vec![0; self.dim];
        for (pos, &i) in order.iter().enumerate() {
            restore[i] = pos;
        }
        let p = self.transformer.params_per_dim();
        let d_in = kept.len() + self.context_dim;
        let conditioner = if self.residual_blocks > 0 {
            Mlp::residual(d_in, self.hidden[0], self.residual_blocks, p * changed.len(), self.dropout, self.activation, rng, device)
        } else {
            Mlp::new(d_in, &self.hidden, p * changed.len(), self.activation, true, rng, device)
        };
        Coupling {
            conditioner,
            transformer: self.transformer.clone(),
            kept: indices(&kept, device),
            changed: indices(&changed, device),
            restore: indices(&restore, device),
            dim: self.dim,
            context_dim: self.context_dim,
        }
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
    fn params(&self, a: &Tensor<2>, context: Option<&Tensor<2>>) -> Tensor<2> {
        let input = match (self.context_dim > 0, context) {
            (true, Some(c)) => Tensor::cat(vec![a.clone(), c.clone()], 1),
            _ => a.clone(),
        };
        self.conditioner.forward(input)
    }

    fn apply(&self, x: Tensor<2>, context: Option<&Tensor<2>>, inverse: bool) -> Result<Mapped> {
        let a = x.clone().select(1, self.kept.clone());
        let b = x.select(1, self.changed.clone());
        let params = self.params(&a, context);
        let (b2, ld) = if inverse {
            self.transformer.inverse(b, &params)
        } else {
            self.transformer.forward(b, &params)
        };
        let y = Tensor::cat(vec![a, b2], 1).select(1, self.restore.clone());
        let _ = dims2(&y);
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

    fn forward_unchecked(&self, x: Tensor<2>, context: Option<&Tensor<2>>) -> Result<Mapped> {
        self.apply(x, context, false)
    }

    fn inverse_unchecked(&self, y: Tensor<2>, context: Option<&Tensor<2>>) -> Result<Mapped> {
        self.apply(y, context, true)
    }
}

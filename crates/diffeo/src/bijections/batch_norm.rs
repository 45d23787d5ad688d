//! Batch normalisation as a bijection (as in the MAF paper, §3.4 of Papamakarios et al. 2017).
//!
//! In the density direction (data → base):
//! `u = (x − m) / √(v + ε) ⊙ exp(γ) + β`, log|det| = Σ (γ − ½ log(v + ε)).
//!
//! The mode comes with each call ([`Call::mode`]), never inferred from the device:
//! - [`Mode::Training`]: `m, v` are the statistics of the current batch in the density direction,
//!   and the running averages are updated (`r ← (1 − momentum)·r + momentum·batch`);
//! - [`Mode::Evaluation`]: `m, v` are the running averages, so the layer is an ordinary fixed
//!   bijection.
//!
//! The sampling direction always uses the running averages (the batch statistics of data that
//! have not been generated yet do not exist).

use burn::module::{Module, Param, RunningState};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::{Bijection, Call, LayerSpec, Mapped, Mode};
use crate::error::{FlowError, Result};
use crate::tensor::dims2;

/// Configuration of a [`BatchNorm`] layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchNormConfig {
    /// Features D.
    pub dim: usize,
    /// Weight of the current batch in the running averages.
    #[serde(default = "default_momentum")]
    pub momentum: f64,
    /// Added to the variance.
    #[serde(default = "default_eps")]
    pub eps: f64,
}

fn default_momentum() -> f64 {
    0.1
}
fn default_eps() -> f64 {
    1e-5
}

impl BatchNormConfig {
    /// Defaults: momentum 0.1, ε = 1e−5.
    pub fn new(dim: usize) -> Self {
        Self { dim, momentum: default_momentum(), eps: default_eps() }
    }

    /// Builds the layer: γ = β = 0, running mean 0, running variance 1 (the identity up to ε).
    pub fn init(&self, device: &Device) -> Result<BatchNorm> {
        self.validate()?;
        Ok(BatchNorm {
            log_gamma: Param::from_tensor(Tensor::zeros([self.dim], device)),
            beta: Param::from_tensor(Tensor::zeros([self.dim], device)),
            running_mean: RunningState::new(Tensor::zeros([self.dim], device)),
            running_var: RunningState::new(Tensor::ones([self.dim], device)),
            momentum: self.momentum,
            eps: self.eps,
            dim: self.dim,
        })
    }
}

impl LayerSpec for BatchNormConfig {
    fn dim(&self) -> usize {
        self.dim
    }

    fn validate(&self) -> Result<()> {
        if self.dim == 0 || self.eps.is_nan() || self.eps <= 0.0 || !(0.0..=1.0).contains(&self.momentum) {
            return Err(FlowError::InvalidConfig("batch norm needs D ≥ 1, ε > 0 and momentum in [0, 1]".into()));
        }
        Ok(())
    }

    /// γ and β, and the two running statistics (stored with the weights).
    fn parameter_count(&self) -> usize {
        4 * self.dim
    }

    fn batch_dependent(&self) -> bool {
        true
    }
}

/// Batch normalisation bijection; see the module documentation.
#[derive(Module, Debug)]
pub struct BatchNorm {
    /// Log-scale γ `[D]`.
    pub log_gamma: Param<Tensor<1>>,
    /// Shift β `[D]`.
    pub beta: Param<Tensor<1>>,
    /// Running mean `[D]`.
    pub running_mean: RunningState<Tensor<1>>,
    /// Running variance `[D]`.
    pub running_var: RunningState<Tensor<1>>,
    /// Weight of a batch in the running averages.
    pub momentum: f64,
    /// Variance offset.
    pub eps: f64,
    /// Features.
    pub dim: usize,
}

impl BatchNorm {
    fn stats(&self, x: &Tensor<2>, mode: Mode) -> (Tensor<1>, Tensor<1>) {
        match mode {
            Mode::Evaluation => (self.running_mean.value_sync(), self.running_var.value_sync()),
            Mode::Training => {
                let (n, d) = dims2(x);
                let mean = x.clone().mean_dim(0);
                let var = x.clone().sub(mean.clone()).square().mean_dim(0);
                let (mean, var) = (mean.reshape([d]), var.reshape([d]));
                let m = self.momentum;
                let unbiased = if n > 1 { n as f64 / (n as f64 - 1.0) } else { 1.0 };
                let rm = self.running_mean.value_sync().mul_scalar(1.0 - m).add(mean.clone().detach().mul_scalar(m));
                let rv = self
                    .running_var
                    .value_sync()
                    .mul_scalar(1.0 - m)
                    .add(var.clone().detach().mul_scalar(m * unbiased));
                self.running_mean.update(rm);
                self.running_var.update(rv);
                (mean, var)
            }
        }
    }
}

impl Bijection for BatchNorm {
    fn dim(&self) -> usize {
        self.dim
    }

    fn name(&self) -> String {
        "BatchNorm".into()
    }

    /// Base → data with the running averages: `x = (u − β) ⊙ exp(−γ) ⊙ √(v + ε) + m`.
    fn forward_unchecked(&self, u: Tensor<2>, _call: &Call) -> Result<Mapped> {
        let (n, _) = dims2(&u);
        let mean = self.running_mean.value_sync();
        let var = self.running_var.value_sync();
        let log_std = var.add_scalar(self.eps).log().mul_scalar(0.5);
        let log_scale = log_std.clone().sub(self.log_gamma.val());
        let x = u
            .sub(self.beta.val().unsqueeze())
            .mul(log_scale.clone().exp().unsqueeze())
            .add(mean.unsqueeze());
        Ok((x, log_scale.sum().expand([n])))
    }

    /// Data → base with batch statistics (training) or running averages (evaluation).
    fn inverse_unchecked(&self, x: Tensor<2>, call: &Call) -> Result<Mapped> {
        let (n, _) = dims2(&x);
        let (mean, var) = self.stats(&x, call.mode);
        let log_std = var.add_scalar(self.eps).log().mul_scalar(0.5);
        let log_scale = self.log_gamma.val().sub(log_std);
        let u = x
            .sub(mean.unsqueeze())
            .mul(log_scale.clone().exp().unsqueeze())
            .add(self.beta.val().unsqueeze());
        Ok((u, log_scale.sum().expand([n])))
    }
}

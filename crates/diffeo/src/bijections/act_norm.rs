//! Activation normalization (Kingma & Dhariwal 2018), per feature: data → base
//! `u = ((x − m) / σ) ⊙ exp(s) + b`, with `m` and `σ` the mean and standard deviation of the first
//! training batch that passes in that direction (stored with the weights; until then `m = 0`,
//! `σ = 1`), and `s`, `b` learnable from zero. So the layer starts as the identity, and after its
//! first training batch it maps that batch to zero mean and unit variance per feature — the
//! data-dependent initialization of ActNorm, written so that the learnable parameters themselves
//! are never overwritten. `log|det J| = Σ (s − log σ)`. A constant feature gets `σ` floored at
//! [`ACT_NORM_MIN_STD`], never an infinite scale.

use burn::module::{Module, Param, RunningState};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::{Bijection, Call, LayerSpec, Mapped, Mode};
use crate::error::Result;
use crate::tensor::dims2;

/// The floor of the initial standard deviation.
pub const ACT_NORM_MIN_STD: f64 = 1e-6;

/// Configuration of an [`ActNorm`] layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActNormConfig {
    /// Features.
    pub dim: usize,
}

impl ActNormConfig {
    /// On `dim` features.
    pub fn new(dim: usize) -> Self {
        Self { dim }
    }

    /// The identity, waiting for its first training batch.
    pub fn init(&self, device: &Device) -> Result<ActNorm> {
        self.validate()?;
        Ok(ActNorm {
            log_scale: Param::from_tensor(Tensor::zeros([self.dim], device)),
            shift: Param::from_tensor(Tensor::zeros([self.dim], device)),
            mean: RunningState::new(Tensor::zeros([self.dim], device)),
            log_std: RunningState::new(Tensor::zeros([self.dim], device)),
            initialized: RunningState::new(Tensor::zeros([1], device)),
            dim: self.dim,
        })
    }
}

impl LayerSpec for ActNormConfig {
    fn dim(&self) -> usize {
        self.dim
    }

    fn validate(&self) -> Result<()> {
        super::require_features(self.dim, "an ActNorm layer")
    }

    fn parameter_count(&self) -> usize {
        2 * self.dim
    }
    /// Training updates state stored with the weights (first-batch statistics, power-iteration
    /// vectors), which gradient shards on model copies would lose: one shard per step.
    fn batch_dependent(&self) -> bool {
        true
    }
}

/// Per-feature activation normalization (see the module documentation).
#[derive(Module, Debug)]
pub struct ActNorm {
    /// Learnable log-scale `s` `[D]`.
    pub log_scale: Param<Tensor<1>>,
    /// Learnable shift `b` `[D]`.
    pub shift: Param<Tensor<1>>,
    /// The first batch's mean `m` `[D]`.
    pub mean: RunningState<Tensor<1>>,
    /// The first batch's `log σ` `[D]`.
    pub log_std: RunningState<Tensor<1>>,
    /// 1 once the first batch has set `m` and `σ`, `[1]`.
    pub initialized: RunningState<Tensor<1>>,
    /// Features.
    pub dim: usize,
}

impl ActNorm {
    /// `(m, log σ)`, set from `x` when this is the first training batch.
    fn statistics(&self, x: &Tensor<2>, call: &Call) -> Result<(Tensor<1>, Tensor<1>)> {
        let ready = crate::tensor::scalar(self.initialized.value_sync().sum())? > 0.5;
        if !ready && call.mode == Mode::Training && x.is_autodiff() {
            let d = self.dim;
            let x = x.clone().detach();
            let mean = x.clone().mean_dim(0).reshape([d]);
            let var = x.sub(mean.clone().unsqueeze()).square().mean_dim(0).reshape([d]);
            let log_std = var.sqrt().clamp_min(ACT_NORM_MIN_STD).log();
            self.mean.update(mean.clone());
            self.log_std.update(log_std.clone());
            self.initialized.update(Tensor::ones([1], &mean.device()));
            return Ok((mean, log_std));
        }
        Ok((self.mean.value_sync(), self.log_std.value_sync()))
    }
}

impl Bijection for ActNorm {
    fn dim(&self) -> usize {
        self.dim
    }

    fn name(&self) -> String {
        "ActNorm".into()
    }

    /// Base → data: `x = (u − b) ⊙ exp(−s) ⊙ σ + m`.
    fn forward_unchecked(&self, u: Tensor<2>, _call: &Call) -> Result<Mapped> {
        let (n, _) = dims2(&u);
        let (mean, log_std) = (self.mean.value_sync(), self.log_std.value_sync());
        let log_scale = log_std.sub(self.log_scale.val());
        let x = u.sub(self.shift.val().unsqueeze()).mul(log_scale.clone().exp().unsqueeze()).add(mean.unsqueeze());
        Ok((x, log_scale.sum().expand([n])))
    }

    /// Data → base: `u = (x − m) ⊙ exp(s) / σ + b`.
    fn inverse_unchecked(&self, x: Tensor<2>, call: &Call) -> Result<Mapped> {
        let (n, _) = dims2(&x);
        let (mean, log_std) = self.statistics(&x, call)?;
        let log_scale = self.log_scale.val().sub(log_std);
        let u = x.sub(mean.unsqueeze()).mul(log_scale.clone().exp().unsqueeze()).add(self.shift.val().unsqueeze());
        Ok((u, log_scale.sum().expand([n])))
    }
}

//! Activation normalization (Kingma & Dhariwal 2018), per feature or per image channel: data → base
//! `u = ((x − m) / σ) ⊙ exp(s) + b`, with `m` and `σ` the mean and standard deviation of the first
//! training batch that passes in that direction (stored with the weights; until then `m = 0`,
//! `σ = 1`), and `s`, `b` learnable from zero. So the layer starts as the identity, and after its
//! first training batch it maps that batch to zero mean and unit variance per feature — the
//! data-dependent initialization of ActNorm, written so that the learnable parameters themselves
//! are never overwritten. `log|det J| = Σ (s − log σ)`. A constant feature gets `σ` floored at
//! [`ACT_NORM_MIN_STD`], never an infinite scale.
//!
//! On images (`channels` set: events `[C, H, W]`, see [`ActNormConfig::image`]) the statistics,
//! `s` and `b` are per channel, shared by the H·W pixels of a channel, and
//! `log|det J| = H·W·Σ_c (s_c − log σ_c)`.

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
    /// Image channels C sharing one scale and shift each (events `[C, H, W]` with H·W = D/C);
    /// `None`: one per feature (files written before image flows have no such field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<usize>,
}

impl ActNormConfig {
    /// On `dim` features.
    pub fn new(dim: usize) -> Self {
        Self { dim, channels: None }
    }

    /// On images of `channels × height × width`, one scale and shift per channel.
    pub fn image(channels: usize, height: usize, width: usize) -> Self {
        Self { dim: channels * height * width, channels: Some(channels) }
    }

    /// Groups sharing parameters (channels, or every feature) and the features in each.
    fn groups(&self) -> (usize, usize) {
        match self.channels {
            Some(c) if c > 0 => (c, self.dim / c),
            _ => (self.dim, 1),
        }
    }

    /// The identity, waiting for its first training batch.
    pub fn init(&self, device: &Device) -> Result<ActNorm> {
        self.validate()?;
        let (groups, pixels) = self.groups();
        Ok(ActNorm {
            log_scale: Param::from_tensor(Tensor::zeros([groups], device)),
            shift: Param::from_tensor(Tensor::zeros([groups], device)),
            mean: RunningState::new(Tensor::zeros([groups], device)),
            log_std: RunningState::new(Tensor::zeros([groups], device)),
            initialized: RunningState::new(Tensor::zeros([1], device)),
            dim: self.dim,
            pixels,
        })
    }
}

impl LayerSpec for ActNormConfig {
    fn dim(&self) -> usize {
        self.dim
    }

    fn validate(&self) -> Result<()> {
        super::require_features(self.dim, "an ActNorm layer")?;
        if let Some(c) = self.channels {
            if c == 0 || self.dim % c != 0 {
                return Err(crate::error::FlowError::InvalidConfig(format!(
                    "an ActNorm layer on {} features cannot have {c} channels",
                    self.dim
                )));
            }
        }
        Ok(())
    }

    fn parameter_count(&self) -> usize {
        2 * self.groups().0
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
    /// Learnable log-scale `s` `[G]` (G groups: features, or image channels).
    pub log_scale: Param<Tensor<1>>,
    /// Learnable shift `b` `[G]`.
    pub shift: Param<Tensor<1>>,
    /// The first batch's mean `m` `[G]`.
    pub mean: RunningState<Tensor<1>>,
    /// The first batch's `log σ` `[G]`.
    pub log_std: RunningState<Tensor<1>>,
    /// 1 once the first batch has set `m` and `σ`, `[1]`.
    pub initialized: RunningState<Tensor<1>>,
    /// Features.
    pub dim: usize,
    /// Features per group (H·W on images, else 1).
    pub pixels: usize,
}

impl ActNorm {
    /// `(m, log σ)`, set from `x` when this is the first training batch.
    fn statistics(&self, x: &Tensor<2>, call: &Call) -> Result<(Tensor<1>, Tensor<1>)> {
        let ready = crate::tensor::scalar(self.initialized.value_sync().sum())? > 0.5;
        if !ready && call.mode == Mode::Training && x.is_autodiff() {
            let (n, _) = dims2(x);
            let g = self.dim / self.pixels;
            let x = x.clone().detach().reshape([n, g, self.pixels]).swap_dims(0, 1).reshape([g, n * self.pixels]);
            let mean = x.clone().mean_dim(1).reshape([g]);
            let var = x.sub(mean.clone().unsqueeze_dim(1)).square().mean_dim(1).reshape([g]);
            let log_std = var.sqrt().clamp_min(ACT_NORM_MIN_STD).log();
            self.mean.update(mean.clone());
            self.log_std.update(log_std.clone());
            self.initialized.update(Tensor::ones([1], &mean.device()));
            return Ok((mean, log_std));
        }
        Ok((self.mean.value_sync(), self.log_std.value_sync()))
    }
}

impl ActNorm {
    /// `[G]` → `[1, G, 1]`, broadcast over rows and the features of a group.
    fn per_group(&self, v: Tensor<1>) -> Tensor<3> {
        v.unsqueeze_dim::<2>(0).unsqueeze_dim(2)
    }

    /// Applies `f` to the batch viewed as `[N, G, features per group]`.
    fn grouped(&self, x: Tensor<2>, f: impl FnOnce(Tensor<3>) -> Tensor<3>) -> Tensor<2> {
        let (n, d) = dims2(&x);
        f(x.reshape([n, d / self.pixels, self.pixels])).reshape([n, d])
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
        let x = self.grouped(u, |u| {
            u.sub(self.per_group(self.shift.val())).mul(self.per_group(log_scale.clone().exp())).add(self.per_group(mean))
        });
        Ok((x, log_scale.sum().mul_scalar(self.pixels as f64).expand([n])))
    }

    /// Data → base: `u = (x − m) ⊙ exp(s) / σ + b`.
    fn inverse_unchecked(&self, x: Tensor<2>, call: &Call) -> Result<Mapped> {
        let (n, _) = dims2(&x);
        let (mean, log_std) = self.statistics(&x, call)?;
        let log_scale = self.log_scale.val().sub(log_std);
        let u = self.grouped(x, |x| {
            x.sub(self.per_group(mean)).mul(self.per_group(log_scale.clone().exp())).add(self.per_group(self.shift.val()))
        });
        Ok((u, log_scale.sum().mul_scalar(self.pixels as f64).expand([n])))
    }
}

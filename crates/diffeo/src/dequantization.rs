//! Variational dequantization (Ho et al. 2019, Flow++): the probability of discrete data — 8-bit
//! pixels `k ∈ {0, …, L − 1}^D` — under a flow `p` on `y = (k + u)/L ∈ [0, 1]^D`, with the noise
//! `u ∈ (0, 1)^D` drawn from a learned conditional flow `q(u | k)` instead of the uniform:
//!
//! ```text
//! P(k) = ∫ p((k + u)/L)·L^−D du ≥ exp E_q[log p((k + u)/L) − log q(u | k)]·L^−D
//! ```
//!
//! With `S` draws the importance-weighted bound `log (1/S) Σ_s p(y_s)/q(u_s | k)` is tighter
//! (it reaches `log P(k) + D log L` as S grows, Burda et al. 2016); `S = 1` is the variational
//! bound (ELBO) training maximizes, jointly over `p` and `q`. With `q` uniform both are uniform
//! dequantization's bound. The values are in the units of a density of `y` (the `L^−D` left out),
//! so bits per dimension convert as for uniform dequantization ([`crate::fit::bits_per_dim`]).
//!
//! `q` is a flow from `ε ~ N(0, I)`: a fixed scale 1.75 (`σ(1.75 ε)` is within 0.0094 nats per
//! value of the uniform), then
//! `couplings` affine checkerboard couplings whose networks see the image `k/L − ½` as further
//! input channels ([`ConvCouplingConfig::with_image_context`]), then the sigmoid onto (0, 1).

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::bijections::{
    Bijection, Call, Chain, ChainConfig, ConvCouplingConfig, ElementwiseConfig, ElementwiseKind, EventShape, ImageMask, LayerConfig,
};
use crate::error::{FlowError, Result};
use crate::tensor::{dims2, repeat_rows};
use crate::transformer::Transformer;

/// Importance samples per row of the bound that evaluations report (validation during
/// training uses one: the variational bound).
pub const EVALUATION_SAMPLES: usize = 16;

/// The scale of `ε ~ N(0, I)` before the couplings: `KL(σ(s ε) ‖ U(0, 1))` is smallest near
/// s = 1.75 (0.0094 nats per value; 0.19 at s = 1), so an untrained `q` is close to uniform
/// dequantization.
const INITIAL_SCALE: f64 = 1.75;

/// Configuration of a [`Dequantizer`]: the noise flow `q(u | k)` of images `[C, H, W]` with `L`
/// levels per value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DequantizerConfig {
    /// Channels C.
    pub channels: usize,
    /// Height H.
    pub height: usize,
    /// Width W.
    pub width: usize,
    /// Levels L of a value (256 for 8-bit pixels): the data are `(k + u)/L`.
    pub levels: f64,
    /// Checkerboard couplings.
    pub couplings: usize,
    /// Hidden channels of the couplings' networks.
    pub hidden_channels: usize,
    /// Seed of the weights (set by the flow; not stored).
    #[serde(skip)]
    pub seed: u64,
}

impl DequantizerConfig {
    /// For images `channels × height × width` of 8-bit values: 4 couplings of 32 hidden channels.
    pub fn new(channels: usize, height: usize, width: usize) -> Self {
        Self { channels, height, width, levels: 256.0, couplings: 4, hidden_channels: 32, seed: 0 }
    }

    /// Levels L of a value.
    pub fn with_levels(mut self, levels: f64) -> Self {
        self.levels = levels;
        self
    }

    /// Number of couplings.
    pub fn with_couplings(mut self, couplings: usize) -> Self {
        self.couplings = couplings;
        self
    }

    /// Hidden channels of the couplings' networks.
    pub fn with_hidden_channels(mut self, hidden_channels: usize) -> Self {
        self.hidden_channels = hidden_channels;
        self
    }

    /// Seed of the weights.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Features D = C·H·W.
    pub fn dim(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// The image event `[C, H, W]`.
    pub fn event(&self) -> EventShape {
        EventShape::image(self.channels, self.height, self.width)
    }

    /// The layers from `ε` to `u`.
    fn chain(&self) -> ChainConfig {
        let (c, h, w, d) = (self.channels, self.height, self.width, self.dim());
        let mut layers = vec![LayerConfig::Elementwise(ElementwiseConfig::new(
            d,
            ElementwiseKind::Affine { shift: vec![0.0; d], scale: vec![INITIAL_SCALE; d] },
        ))];
        for k in 0..self.couplings {
            layers.push(LayerConfig::ConvCoupling(
                ConvCouplingConfig::new(c, h, w, ImageMask::Checkerboard)
                    .with_flip(k % 2 == 1)
                    .with_hidden_channels(self.hidden_channels)
                    .with_image_context(c)
                    .with_transformer(Transformer::Affine),
            ));
        }
        layers.push(LayerConfig::Elementwise(ElementwiseConfig::new(d, ElementwiseKind::Sigmoid)));
        ChainConfig::new(d, layers).with_event(self.event()).with_seed(self.seed)
    }

    /// Trainable parameters.
    pub fn parameter_count(&self) -> usize {
        self.chain().layers.iter().filter_map(LayerConfig::spec).map(|s| s.parameter_count()).sum()
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        if self.channels == 0 || self.height == 0 || self.width == 0 || self.height * self.width < 2 {
            return Err(FlowError::InvalidConfig(format!(
                "variational dequantization needs images of at least 2 pixels, got [{}, {}, {}]",
                self.channels, self.height, self.width
            )));
        }
        if self.couplings == 0 || self.hidden_channels == 0 {
            return Err(FlowError::InvalidConfig("the dequantization flow needs at least one coupling and one hidden channel".into()));
        }
        if !(self.levels.is_finite() && self.levels >= 1.0 && self.levels.fract() == 0.0) {
            return Err(FlowError::InvalidConfig(format!("dequantization levels must be a positive integer, got {}", self.levels)));
        }
        Ok(())
    }

    /// Builds the noise flow (the couplings start as the identity).
    pub fn init(&self, device: &Device) -> Result<Dequantizer> {
        self.validate()?;
        Ok(Dequantizer { transform: self.chain().init(device)?, config: self.clone() })
    }
}

/// The noise flow `q(u | k)` of variational dequantization (see the module documentation).
#[derive(Module, Debug)]
pub struct Dequantizer {
    /// `ε ↦ u`, conditioned on the image.
    pub transform: Chain,
    #[module(skip)]
    config: DequantizerConfig,
}

impl Dequantizer {
    /// The settings.
    pub fn config(&self) -> &DequantizerConfig {
        &self.config
    }

    /// Levels L of a value.
    pub fn levels(&self) -> f64 {
        self.config.levels
    }

    /// `samples` draws `u ~ q(u | k)` for each row of `quantized` (`k/L`, `[N, D]`; row j's
    /// draws are rows `j·S .. (j+1)·S`), from the call's random source, with `log q(u | k)`:
    /// `([N·S, D], [N·S])`. Reparameterized: gradients reach `q`'s weights through `u`.
    pub fn sample(&self, quantized: &Tensor<2>, samples: usize, call: &Call) -> Result<(Tensor<2>, Tensor<1>)> {
        let (n, d) = dims2(quantized);
        let rows = n * samples;
        let image = repeat_rows(quantized, samples).sub_scalar(0.5);
        let eps = call.standard_normal(rows, d, &quantized.device());
        let log_base = eps.clone().powf_scalar(2.0).sum_dim(1).reshape([rows]).mul_scalar(-0.5).sub_scalar(0.5 * d as f64 * (2.0 * std::f64::consts::PI).ln());
        let (u, log_det) = self.transform.forward_unchecked(eps, &call.clone().with_context(image))?;
        Ok((u, log_base.sub(log_det)))
    }
}

//! Multi-scale image flows (the paper's §3.4 and §6): Glow (Kingma & Dhariwal 2018) and RealNVP's
//! image architecture (Dinh et al. 2017), built from squeezes, ActNorm, 1×1 convolutions,
//! convolutional couplings and factor-out steps on image events `[C, H, W]`.

use burn::config::Config;
use burn::tensor::Device;

use crate::bijections::{ActNormConfig, ConvCouplingConfig, FactorOutConfig, ImageMask, InvertibleConv1x1Config, LayerConfig, PlainConv1x1Config, SqueezeConfig};
use crate::distributions::BaseKind;
use crate::error::{FlowError, Result};
use crate::event::EventShape;
use crate::flow::{Flow, FlowConfig};
use crate::transformer::Transformer;

/// Glow: `levels` levels of (squeeze, `steps` × (ActNorm → invertible 1×1 convolution → affine
/// coupling with a channel mask and Glow's sigmoid scale, [`Transformer::SigmoidScale`])), half of the channels factored out to the base after every
/// level but the last. Density direction (data → base) as listed.
///
/// Defaults: 2 levels, 8 steps per level, 64 hidden channels (normflows' Glow example's sizes),
/// a learned diagonal Gaussian base (as normflows' Glow: a mean and scale per latent pixel).
/// Height and width must be divisible by 2^levels.
#[derive(Config, Debug)]
pub struct GlowConfig {
    /// Channels C of the images.
    pub channels: usize,
    /// Height H.
    pub height: usize,
    /// Width W.
    pub width: usize,
    /// Levels L (each squeezes once).
    #[config(default = 2)]
    pub levels: usize,
    /// Steps K per level.
    #[config(default = 8)]
    pub steps: usize,
    /// Hidden channels of the couplings' networks.
    #[config(default = 64)]
    pub hidden_channels: usize,
    /// The 1×1 convolutions in LU form (`false`: Glow's plain variant with a full matrix,
    /// [`PlainConv1x1`](crate::bijections::PlainConv1x1), O(C³) per call).
    #[config(default = true)]
    pub lu: bool,
    /// Context width (class-conditional models).
    #[config(default = 0)]
    pub context_dim: usize,
    /// Base density.
    #[config(default = "BaseKind::DiagNormal")]
    pub base: BaseKind,
    /// Seed of the weights.
    #[config(default = 0)]
    pub seed: u64,
}

impl GlowConfig {
    /// The full architecture, or why the image cannot be squeezed `levels` times.
    pub fn flow_config(&self) -> Result<FlowConfig> {
        let mut data_side = Vec::new();
        let (mut c, mut h, mut w) = check_levels("glow", self.channels, self.height, self.width, self.levels)?;
        for level in 0..self.levels {
            data_side.push(LayerConfig::Squeeze(SqueezeConfig::new(c, h, w)));
            (c, h, w) = (4 * c, h / 2, w / 2);
            for _ in 0..self.steps {
                data_side.push(LayerConfig::ActNorm(ActNormConfig::image(c, h, w)));
                data_side.push(if self.lu {
                    LayerConfig::InvertibleConv1x1(InvertibleConv1x1Config::new(c, h, w))
                } else {
                    LayerConfig::PlainConv1x1(PlainConv1x1Config::new(c, h, w))
                });
                data_side.push(LayerConfig::ConvCoupling(
                    ConvCouplingConfig::new(c, h, w, ImageMask::Channel)
                        .with_transformer(Transformer::SigmoidScale)
                        .with_hidden_channels(self.hidden_channels)
                        .with_context_dim(self.context_dim),
                ));
            }
            if level + 1 < self.levels {
                let out = c / 2;
                data_side.push(LayerConfig::FactorOut(FactorOutConfig::new(out * h * w)));
                c -= out;
            }
        }
        Ok(image_flow(self.channels, self.height, self.width, data_side, self.context_dim, &self.base, self.seed))
    }

    /// Builds the flow.
    pub fn init(&self, device: &Device) -> Result<Flow> {
        self.flow_config()?.init(device)
    }
}

/// RealNVP's multi-scale image flow: every level but the last has `steps` affine couplings with
/// checkerboard masks (alternating), a squeeze, `steps` couplings with channel masks
/// (alternating) and factors out half of the channels; the last level has `steps + 1`
/// checkerboard couplings. An ActNorm precedes every coupling (in place of the paper's batch
/// normalization). Defaults: 2 levels, 3 steps, 64 hidden channels, a learned diagonal Gaussian
/// base.
#[derive(Config, Debug)]
pub struct RealNvpImageConfig {
    /// Channels C of the images.
    pub channels: usize,
    /// Height H.
    pub height: usize,
    /// Width W.
    pub width: usize,
    /// Levels L.
    #[config(default = 2)]
    pub levels: usize,
    /// Couplings of each kind per level.
    #[config(default = 3)]
    pub steps: usize,
    /// Hidden channels of the couplings' networks.
    #[config(default = 64)]
    pub hidden_channels: usize,
    /// Context width.
    #[config(default = 0)]
    pub context_dim: usize,
    /// Base density.
    #[config(default = "BaseKind::DiagNormal")]
    pub base: BaseKind,
    /// Seed of the weights.
    #[config(default = 0)]
    pub seed: u64,
}

impl RealNvpImageConfig {
    /// The full architecture, or why the image cannot be squeezed `levels − 1` times.
    pub fn flow_config(&self) -> Result<FlowConfig> {
        let squeezes = self.levels.saturating_sub(1);
        let (mut c, mut h, mut w) = check_levels("realnvp-image", self.channels, self.height, self.width, squeezes)?;
        let mut data_side = Vec::new();
        let coupling = |c: usize, h: usize, w: usize, mask: ImageMask, k: usize| -> [LayerConfig; 2] {
            [
                LayerConfig::ActNorm(ActNormConfig::image(c, h, w)),
                LayerConfig::ConvCoupling(
                    ConvCouplingConfig::new(c, h, w, mask)
                        .with_flip(k % 2 == 1)
                        .with_hidden_channels(self.hidden_channels)
                        .with_context_dim(self.context_dim),
                ),
            ]
        };
        for level in 0..self.levels {
            let last = level + 1 == self.levels;
            let checkerboard = if last { self.steps + 1 } else { self.steps };
            for k in 0..checkerboard {
                data_side.extend(coupling(c, h, w, ImageMask::Checkerboard, k));
            }
            if last {
                break;
            }
            data_side.push(LayerConfig::Squeeze(SqueezeConfig::new(c, h, w)));
            (c, h, w) = (4 * c, h / 2, w / 2);
            for k in 0..self.steps {
                data_side.extend(coupling(c, h, w, ImageMask::Channel, k));
            }
            let out = c / 2;
            data_side.push(LayerConfig::FactorOut(FactorOutConfig::new(out * h * w)));
            c -= out;
        }
        Ok(image_flow(self.channels, self.height, self.width, data_side, self.context_dim, &self.base, self.seed))
    }

    /// Builds the flow.
    pub fn init(&self, device: &Device) -> Result<Flow> {
        self.flow_config()?.init(device)
    }
}

/// `(C, H, W)` when H and W can be halved `squeezes` times.
fn check_levels(family: &str, c: usize, h: usize, w: usize, squeezes: usize) -> Result<(usize, usize, usize)> {
    if c == 0 || h == 0 || w == 0 {
        return Err(FlowError::InvalidConfig(format!("{family} needs images with C, H, W ≥ 1")));
    }
    if squeezes == 0 && family == "glow" {
        return Err(FlowError::InvalidConfig("glow needs at least one level".into()));
    }
    let factor = 1usize.checked_shl(squeezes as u32).filter(|f| *f <= h.min(w)).unwrap_or(0);
    if factor == 0 || h % factor != 0 || w % factor != 0 {
        return Err(FlowError::InvalidConfig(format!(
            "{family}: images of {h}×{w} cannot be squeezed {squeezes} time(s) (height and width must be divisible by {}); use fewer levels",
            1u64.checked_shl(squeezes as u32).unwrap_or(u64::MAX)
        )));
    }
    Ok((c, h, w))
}

/// A flow on images from its layers listed from the data side.
fn image_flow(c: usize, h: usize, w: usize, mut data_side: Vec<LayerConfig>, context_dim: usize, base: &BaseKind, seed: u64) -> FlowConfig {
    data_side.reverse();
    let mut config = FlowConfig::new(c * h * w, data_side).with_seed(seed);
    config.event = Some(EventShape::image(c, h, w));
    config.context_dim = context_dim;
    config.base = base.clone();
    config
}

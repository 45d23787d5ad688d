//! Coupling layers on images with a convolutional conditioner (RealNVP, Dinh et al. 2017; Glow,
//! Kingma & Dhariwal 2018).
//!
//! A mask splits the image `[C, H, W]` into a kept part A and a transformed part B:
//! `x_A = u_A`, `x_B = τ(u_B; θ(u_A, c))`, `log|det J| = Σ_B log|τ'|`, as in
//! [`Coupling`](super::Coupling), with any elementwise [`Transformer`] (affine by default, its
//! log-scale soft-clipped). The masks:
//! - [`ImageMask::Channel`]: A is the first ⌊C/2⌋ channels (with `flip`, the last ⌊C/2⌋); the
//!   network maps A `[|A|, H, W]` to the parameters of B.
//! - [`ImageMask::Checkerboard`]: A is the pixels with `h + w` even (odd with `flip`), in every
//!   channel; the network maps `x ⊙ mask` to parameters for every pixel, of which B's are used.
//!
//! The network: conv 3×3 → ReLU → conv 1×1 → ReLU → conv 3×3 (zero-initialised, so the layer
//! starts as the identity), `hidden_channels` wide; a context vector enters as a learned
//! per-channel bias after the first convolution (class-conditional models), and an image
//! context `[C_c, H, W]` ([`ConvCouplingConfig::with_image_context`]) as further input channels
//! of the first convolution (the noise flow of variational dequantization, conditioned on the
//! image it dequantizes).

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::{image_event, Bijection, Call, Cost, Directions, EventShape, LayerSpec, Mapped};
use crate::error::{FlowError, Result};
use crate::nn::{Dense, Init};
use crate::tensor::{dims2, sum_rows, vector};
use crate::transformer::Transformer;

/// Which pixels a [`ConvCoupling`] keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageMask {
    /// Half of the channels.
    Channel,
    /// Alternate pixels, in every channel.
    Checkerboard,
}

/// Configuration of a [`ConvCoupling`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConvCouplingConfig {
    /// Channels C.
    pub channels: usize,
    /// Height H.
    pub height: usize,
    /// Width W.
    pub width: usize,
    /// Channels of the network's hidden layers.
    pub hidden_channels: usize,
    /// The mask kind.
    pub mask: ImageMask,
    /// Swaps the kept and transformed parts.
    #[serde(default)]
    pub flip: bool,
    /// Context width.
    #[serde(default)]
    pub context_dim: usize,
    /// Channels of an image context `[C_c, H, W]` (0: the context is a vector).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub context_channels: usize,
    /// The elementwise transformer of the transformed part.
    #[serde(default)]
    pub transformer: Transformer,
    /// Seed of the weights (set by the chain; not stored).
    #[serde(skip)]
    pub seed: u64,
}

impl ConvCouplingConfig {
    /// An affine coupling on images `channels × height × width` with the given mask.
    pub fn new(channels: usize, height: usize, width: usize, mask: ImageMask) -> Self {
        Self {
            channels,
            height,
            width,
            hidden_channels: 64,
            mask,
            flip: false,
            context_dim: 0,
            context_channels: 0,
            transformer: Transformer::Affine,
            seed: 0,
        }
    }

    /// Channels of the hidden layers.
    pub fn with_hidden_channels(mut self, hidden_channels: usize) -> Self {
        self.hidden_channels = hidden_channels;
        self
    }

    /// Swaps the kept and transformed parts.
    pub fn with_flip(mut self, flip: bool) -> Self {
        self.flip = flip;
        self
    }

    /// Conditions on a context vector of width `context_dim`.
    pub fn with_context_dim(mut self, context_dim: usize) -> Self {
        self.context_dim = context_dim;
        self.context_channels = 0;
        self
    }

    /// Conditions on an image context of `channels × H × W` (flattened in C order, width
    /// `channels·H·W`), fed to the network beside the kept part.
    pub fn with_image_context(mut self, channels: usize) -> Self {
        self.context_channels = channels;
        self.context_dim = channels * self.height * self.width;
        self
    }

    /// Sets the elementwise transformer.
    pub fn with_transformer(mut self, transformer: Transformer) -> Self {
        self.transformer = transformer;
        self
    }

    /// Sets the seed of the weights.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Channels in and out of the network: (input, transformed), an image context included.
    fn network_channels(&self) -> (usize, usize) {
        let (c_in, c_out) = match self.mask {
            ImageMask::Channel => {
                let kept = self.channels / 2;
                (kept, self.channels - kept)
            }
            ImageMask::Checkerboard => (self.channels, self.channels),
        };
        (c_in + self.context_channels, c_out)
    }

    /// Whether the context is a vector (a per-channel bias) rather than an image.
    fn vector_context(&self) -> bool {
        self.context_dim > 0 && self.context_channels == 0
    }

    /// Builds the layer (identity at the start).
    pub fn init(&self, device: &Device) -> Result<ConvCoupling> {
        self.validate()?;
        let (c_in, c_out) = self.network_channels();
        let (h, p) = (self.hidden_channels, self.transformer.params_per_dim());
        let rng = &mut StdRng::seed_from_u64(self.seed);
        let hw = self.height * self.width;
        let kept_mask = match self.mask {
            ImageMask::Checkerboard => {
                let m: Vec<f64> = (0..self.channels * hw)
                    .map(|k| {
                        let (row, col) = ((k % hw) / self.width, k % self.width);
                        if ((row + col) % 2 == 0) != self.flip { 1.0 } else { 0.0 }
                    })
                    .collect();
                Some(vector(m, device).unsqueeze_dim(0))
            }
            ImageMask::Channel => None,
        };
        Ok(ConvCoupling {
            first: Conv::new(c_in, h, 3, Init::Uniform, rng, device),
            middle: Conv::new(h, h, 1, Init::Uniform, rng, device),
            last: Conv::new(h, p * c_out, 3, Init::Zeros, rng, device),
            context: self.vector_context().then(|| Dense::new(self.context_dim, h, Init::Uniform, rng, device)),
            transformer: self.transformer.clone(),
            kept_mask,
            mask: self.mask,
            flip: self.flip,
            channels: self.channels,
            height: self.height,
            width: self.width,
            context_dim: self.context_dim,
            context_channels: self.context_channels,
        })
    }
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl LayerSpec for ConvCouplingConfig {
    fn dim(&self) -> usize {
        self.channels * self.height * self.width
    }

    fn validate(&self) -> Result<()> {
        if self.channels == 0 || self.height == 0 || self.width == 0 || self.hidden_channels == 0 {
            return Err(FlowError::InvalidConfig(format!(
                "a convolutional coupling needs C, H, W and hidden channels ≥ 1, got [{}, {}, {}] and {}",
                self.channels, self.height, self.width, self.hidden_channels
            )));
        }
        match self.mask {
            ImageMask::Channel if self.channels < 2 => {
                return Err(FlowError::InvalidConfig("a channel mask needs at least 2 channels (squeeze first, or use a checkerboard mask)".into()));
            }
            ImageMask::Checkerboard if self.height * self.width < 2 => {
                return Err(FlowError::InvalidConfig("a checkerboard mask needs at least 2 pixels".into()));
            }
            _ => {}
        }
        if self.context_channels > 0 && self.context_dim != self.context_channels * self.height * self.width {
            return Err(FlowError::InvalidConfig(format!(
                "an image context of {} channels on {}×{} pixels has {} values, not {}",
                self.context_channels,
                self.height,
                self.width,
                self.context_channels * self.height * self.width,
                self.context_dim
            )));
        }
        self.transformer.validate()
    }

    fn context_dim(&self) -> usize {
        self.context_dim
    }

    fn parameter_count(&self) -> usize {
        let (c_in, c_out) = self.network_channels();
        let (h, p) = (self.hidden_channels, self.transformer.params_per_dim());
        let context = if self.vector_context() { (self.context_dim + 1) * h } else { 0 };
        (9 * c_in + 1) * h + (h + 1) * h + (9 * h + 1) * p * c_out + context
    }

    fn base_event(&self, data: &EventShape) -> Result<EventShape> {
        image_event(self.channels, self.height, self.width, data)
    }

    fn data_event(&self, base: &EventShape) -> Result<EventShape> {
        image_event(self.channels, self.height, self.width, base)
    }

    fn tail_bound(&self) -> Option<f64> {
        self.transformer.tail_bound()
    }

    fn set_seed(&mut self, seed: u64) {
        self.seed = seed;
    }
}

/// A 2-D convolution with a square kernel, stride 1 and "same" padding.
#[derive(Module, Debug)]
pub struct Conv {
    /// Weights `[out, in, k, k]`.
    pub weight: Param<Tensor<4>>,
    /// Bias `[out]`.
    pub bias: Param<Tensor<1>>,
}

impl Conv {
    fn new(c_in: usize, c_out: usize, kernel: usize, init: Init, rng: &mut StdRng, device: &Device) -> Self {
        let fan_in = c_in * kernel * kernel;
        let bound = 1.0 / (fan_in as f64).sqrt();
        let mut draw = |n: usize| -> Vec<f64> {
            match init {
                Init::Zeros => vec![0.0; n],
                Init::Uniform => (0..n).map(|_| rng.random_range(-bound..bound)).collect(),
            }
        };
        let w = draw(c_out * fan_in);
        let b = draw(c_out);
        let weight = vector(w, device).reshape([c_out, c_in, kernel, kernel]);
        Self { weight: Param::from_tensor(weight), bias: Param::from_tensor(vector(b, device)) }
    }

    /// `act(W ⋆ x + b)` (fused on the CPU, see [`crate::nn::conv`]).
    fn forward(&self, x: Tensor<4>, relu: bool) -> Tensor<4> {
        crate::nn::conv::conv_same(x, self.weight.val(), self.bias.val(), relu)
    }
}

/// A coupling layer on images with a convolutional conditioner (see the module documentation).
#[derive(Module, Debug)]
pub struct ConvCoupling {
    /// conv 3×3, input → hidden.
    pub first: Conv,
    /// conv 1×1, hidden → hidden.
    pub middle: Conv,
    /// conv 3×3, hidden → transformer parameters (zero at the start).
    pub last: Conv,
    /// Context → per-channel bias of the first hidden layer.
    pub context: Option<Dense>,
    /// The elementwise transformer.
    #[module(skip)]
    pub transformer: Transformer,
    kept_mask: Option<Tensor<2>>,
    /// The mask kind.
    #[module(skip)]
    pub mask: ImageMask,
    /// Whether kept and transformed parts are swapped.
    pub flip: bool,
    /// Channels C.
    pub channels: usize,
    /// Height H.
    pub height: usize,
    /// Width W.
    pub width: usize,
    /// Context width.
    pub context_dim: usize,
    /// Channels of an image context (0: a vector context).
    pub context_channels: usize,
}

impl ConvCoupling {
    /// The network on `[N, c_in·H·W]`: transformer parameters `[N, P·c_out·H·W]`.
    fn params(&self, input: Tensor<2>, call: &Call) -> Tensor<2> {
        let (n, d) = dims2(&input);
        let (h, w) = (self.height, self.width);
        let mut x = input.reshape([n, d / (h * w), h, w]);
        if let (true, Some(c)) = (self.context_channels > 0, call.context()) {
            x = Tensor::cat(vec![x, c.clone().reshape([n, self.context_channels, h, w])], 1);
        }
        let z = match (&self.context, call.context()) {
            (Some(dense), Some(c)) => {
                let z = self.first.forward(x, false);
                burn::tensor::activation::relu(z.add(dense.forward(c.clone()).unsqueeze_dim::<3>(2).unsqueeze_dim(3)))
            }
            _ => self.first.forward(x, true),
        };
        let z = self.middle.forward(z, true);
        let out = self.last.forward(z, false);
        let [_, c, _, _] = out.dims();
        out.reshape([n, c * h * w])
    }

    fn apply(&self, x: Tensor<2>, call: &Call, inverse: bool) -> Result<Mapped> {
        let (_, d) = dims2(&x);
        let transform = |b: Tensor<2>, params: &Tensor<2>| -> Result<(Tensor<2>, Tensor<2>)> {
            if inverse {
                Ok(self.transformer.inverse(b, params))
            } else {
                self.transformer.forward(b, params, &call.tolerance())
            }
        };
        match &self.kept_mask {
            None => {
                let hw = self.height * self.width;
                let kept = self.channels / 2;
                let (a_at, b_at, b_len) = if self.flip { ((self.channels - kept) * hw, 0, (self.channels - kept) * hw) } else { (0, kept * hw, d - kept * hw) };
                let a = x.clone().narrow(1, a_at, kept * hw);
                let b = x.narrow(1, b_at, b_len);
                let params = self.params(a.clone(), call);
                let (b2, ld) = transform(b, &params)?;
                let y = if self.flip { Tensor::cat(vec![b2, a], 1) } else { Tensor::cat(vec![a, b2], 1) };
                Ok((y, sum_rows(ld)))
            }
            Some(mask) => {
                let keep = mask.clone();
                let change = keep.clone().neg().add_scalar(1.0);
                let params = self.params(x.clone().mul(keep.clone()), call);
                let (moved, ld) = transform(x.clone(), &params)?;
                let y = x.mul(keep).add(moved.mul(change.clone()));
                Ok((y, sum_rows(ld.mul(change))))
            }
        }
    }
}

impl Bijection for ConvCoupling {
    fn dim(&self) -> usize {
        self.channels * self.height * self.width
    }

    fn event(&self) -> EventShape {
        EventShape::image(self.channels, self.height, self.width)
    }

    fn context_dim(&self) -> usize {
        self.context_dim
    }

    fn name(&self) -> String {
        let mask = match self.mask {
            ImageMask::Channel => "channel",
            ImageMask::Checkerboard => "checkerboard",
        };
        format!("ConvCoupling({}, {mask})", self.transformer.name())
    }

    fn directions(&self) -> Directions {
        let forward = if self.transformer.is_numerical() { Cost::Iterative } else { Cost::ClosedForm };
        Directions { forward, inverse: Cost::ClosedForm }
    }

    fn forward_unchecked(&self, u: Tensor<2>, call: &Call) -> Result<Mapped> {
        self.apply(u, call, false)
    }

    fn inverse_unchecked(&self, x: Tensor<2>, call: &Call) -> Result<Mapped> {
        self.apply(x, call, true)
    }
}

//! Squeeze (Dinh et al. 2017): each 2×2 block of pixels becomes 4 channels, so an image event
//! `[C, H, W]` on the data side is `[4C, H/2, W/2]` on the base side. Channel `4c + 2i + j` of the
//! squeezed image holds pixel `(2h + i, 2w + j)` of channel `c` (Glow's layout). A permutation of
//! the features: log|det J| = 0. The multi-scale architectures squeeze before each scale.

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::{Bijection, Call, EventShape, LayerSpec, Mapped};
use crate::error::{FlowError, Result};
use crate::tensor::dims2;

/// Configuration of a [`Squeeze`]: the image shape on its data side.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SqueezeConfig {
    /// Channels C of the data-side image.
    pub channels: usize,
    /// Height H (even).
    pub height: usize,
    /// Width W (even).
    pub width: usize,
}

impl SqueezeConfig {
    /// Squeezes images of `channels × height × width`.
    pub fn new(channels: usize, height: usize, width: usize) -> Self {
        Self { channels, height, width }
    }

    fn data_shape(&self) -> EventShape {
        EventShape::image(self.channels, self.height, self.width)
    }

    fn base_shape(&self) -> EventShape {
        EventShape::image(4 * self.channels, self.height / 2, self.width / 2)
    }

    /// Builds the layer.
    pub fn init(&self, _device: &Device) -> Result<Squeeze> {
        self.validate()?;
        Ok(Squeeze { channels: self.channels, height: self.height, width: self.width })
    }
}

impl LayerSpec for SqueezeConfig {
    fn dim(&self) -> usize {
        self.channels * self.height * self.width
    }

    fn validate(&self) -> Result<()> {
        if self.channels == 0 || self.height == 0 || self.width == 0 || self.height % 2 != 0 || self.width % 2 != 0 {
            return Err(FlowError::InvalidConfig(format!(
                "squeeze needs images with C ≥ 1 and even H and W, got {}",
                self.data_shape()
            )));
        }
        Ok(())
    }

    fn base_event(&self, data: &EventShape) -> Result<EventShape> {
        if *data != self.data_shape() {
            return Err(FlowError::InvalidConfig(format!("squeeze expects image events of shape {}, got {data}", self.data_shape())));
        }
        Ok(self.base_shape())
    }

    fn data_event(&self, base: &EventShape) -> Result<EventShape> {
        if *base != self.base_shape() {
            return Err(FlowError::InvalidConfig(format!("unsqueeze expects image events of shape {}, got {base}", self.base_shape())));
        }
        Ok(self.data_shape())
    }
}

/// `[C, H, W]` (data side) ↔ `[4C, H/2, W/2]` (base side).
#[derive(Module, Debug)]
pub struct Squeeze {
    /// Channels C of the data-side image.
    pub channels: usize,
    /// Height H.
    pub height: usize,
    /// Width W.
    pub width: usize,
}

impl Bijection for Squeeze {
    fn dim(&self) -> usize {
        self.channels * self.height * self.width
    }

    fn event(&self) -> EventShape {
        EventShape::image(self.channels, self.height, self.width)
    }

    fn base_event(&self) -> EventShape {
        EventShape::image(4 * self.channels, self.height / 2, self.width / 2)
    }

    fn name(&self) -> String {
        "Squeeze".into()
    }

    /// Unsqueeze: `[N, 4C, H/2, W/2]` → `[N, C, H, W]`.
    fn forward_unchecked(&self, u: Tensor<2>, _call: &Call) -> Result<Mapped> {
        let (n, d) = dims2(&u);
        let device = u.device();
        let (c, h, w) = (self.channels, self.height / 2, self.width / 2);
        let x = u.reshape([n, c, 2, 2, h, w]).permute([0, 1, 4, 2, 5, 3]).reshape([n, d]);
        Ok((x, Tensor::zeros([n], &device)))
    }

    /// Squeeze: `[N, C, H, W]` → `[N, 4C, H/2, W/2]`.
    fn inverse_unchecked(&self, x: Tensor<2>, _call: &Call) -> Result<Mapped> {
        let (n, d) = dims2(&x);
        let device = x.device();
        let (c, h, w) = (self.channels, self.height / 2, self.width / 2);
        let u = x.reshape([n, c, h, 2, w, 2]).permute([0, 1, 3, 5, 2, 4]).reshape([n, d]);
        Ok((u, Tensor::zeros([n], &device)))
    }
}


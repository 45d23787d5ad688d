//! Invertible 1×1 convolution with a full matrix: Glow's plain variant, kept beside the LU form
//! ([`InvertibleConv1x1`](super::InvertibleConv1x1)) for comparison. Data → base
//! `u[:, h, w] = W·x[:, h, w]` with `W` an unconstrained C×C matrix starting at a random
//! rotation, `log|det J_{T⁻¹}| = H·W·log|det W|`.
//!
//! `log|det W|` and `W⁻¹` come from an LU decomposition with partial pivoting of `W` in f64 on
//! the host, O(C³) per call (the LU form needs O(C) for the log-det). Their gradients,
//! `∂ log|det W| / ∂W = W⁻ᵀ` and `d(W⁻¹) = −W⁻¹·dW·W⁻¹`, enter as linear terms around the host
//! values (`value + ⟨G, W − stop(W)⟩`), exact to first order; second derivatives are not
//! available. A (numerically) singular `W` is an error, never an infinite log-det.

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::conv1x1::{check_image, lu_decompose, per_pixel, random_rotation};
use super::{image_event, Bijection, Call, EventShape, LayerSpec, Mapped};
use crate::error::{FlowError, Result};
use crate::tensor::{dims2, matrix, to_vec};

/// Configuration of a [`PlainConv1x1`] on images `[C, H, W]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlainConv1x1Config {
    /// Channels C.
    pub channels: usize,
    /// Height H.
    pub height: usize,
    /// Width W.
    pub width: usize,
    /// Seed of the initial rotation (set by the chain; not stored).
    #[serde(skip)]
    pub seed: u64,
}

impl PlainConv1x1Config {
    /// On images of `channels × height × width`.
    pub fn new(channels: usize, height: usize, width: usize) -> Self {
        Self { channels, height, width, seed: 0 }
    }

    /// Sets the seed of the initial rotation.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The layer, starting at the same random rotation as the LU form with this seed.
    pub fn init(&self, device: &Device) -> Result<PlainConv1x1> {
        self.validate()?;
        let c = self.channels;
        Ok(PlainConv1x1 {
            weight: Param::from_tensor(matrix(random_rotation(c, self.seed), c, c, device)),
            channels: c,
            height: self.height,
            width: self.width,
        })
    }
}

impl LayerSpec for PlainConv1x1Config {
    fn dim(&self) -> usize {
        self.channels * self.height * self.width
    }

    fn validate(&self) -> Result<()> {
        check_image(self.channels, self.height, self.width)
    }

    fn parameter_count(&self) -> usize {
        self.channels * self.channels
    }

    fn base_event(&self, data: &EventShape) -> Result<EventShape> {
        image_event(self.channels, self.height, self.width, data)
    }

    fn data_event(&self, base: &EventShape) -> Result<EventShape> {
        image_event(self.channels, self.height, self.width, base)
    }

    fn set_seed(&mut self, seed: u64) {
        self.seed = seed;
    }
}

/// The plain invertible 1×1 convolution (see the module documentation).
#[derive(Module, Debug)]
pub struct PlainConv1x1 {
    /// `W` `[C, C]`.
    pub weight: Param<Tensor<2>>,
    /// Channels C.
    pub channels: usize,
    /// Height H.
    pub height: usize,
    /// Width W.
    pub width: usize,
}

/// `log|det W|` and `W⁻¹` (row major) of a row-major `c × c` matrix, or why it is singular.
fn log_det_and_inverse(w: &[f64], c: usize) -> Result<(f64, Vec<f64>)> {
    let (perm, lower, upper) = lu_decompose(w);
    let scale = w.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let pivots: Vec<f64> = (0..c).map(|i| upper[i * c + i]).collect();
    if pivots.iter().any(|p| !p.is_finite() || p.abs() <= 1e-12 * scale) {
        return Err(FlowError::InvalidConfig(format!(
            "the plain 1×1 convolution's matrix is singular or not finite (pivots {pivots:?}); use the LU form, whose determinant cannot vanish"
        )));
    }
    let log_det = pivots.iter().map(|p| p.abs().ln()).sum();
    // W[perm[i], :] = (L·U)[i, :]: solve L·U·X = P⁻¹ column by column.
    let mut inverse = vec![0.0; c * c];
    for col in 0..c {
        let mut y: Vec<f64> = (0..c).map(|i| if perm[i] == col { 1.0 } else { 0.0 }).collect();
        for i in 0..c {
            let s: f64 = (0..i).map(|k| lower[i * c + k] * y[k]).sum();
            y[i] -= s;
        }
        for i in (0..c).rev() {
            let s: f64 = (i + 1..c).map(|k| upper[i * c + k] * y[k]).sum();
            y[i] = (y[i] - s) / upper[i * c + i];
        }
        (0..c).for_each(|i| inverse[i * c + col] = y[i]);
    }
    Ok((log_det, inverse))
}

impl PlainConv1x1 {
    /// `(log|det W|` as a `[1]` tensor, `W⁻¹)`, both carrying their first-order gradients.
    fn log_det_and_inverse(&self) -> Result<(Tensor<1>, Tensor<2>)> {
        let c = self.channels;
        let w = self.weight.val();
        let device = w.device();
        let (log_det, inverse) = log_det_and_inverse(&to_vec(w.clone())?, c)?;
        let inv = matrix(inverse, c, c, &device);
        let change = w.clone().sub(w.detach());
        // ∂ log|det W| / ∂W = W⁻ᵀ; d(W⁻¹) = −W⁻¹·dW·W⁻¹ (both zero-valued terms).
        let log_det = change.clone().mul(inv.clone().transpose()).sum().add_scalar(log_det);
        let inverse = inv.clone().sub(inv.clone().matmul(change).matmul(inv));
        Ok((log_det, inverse))
    }

    fn log_det(&self, log_det: Tensor<1>, n: usize) -> Tensor<1> {
        log_det.mul_scalar((self.height * self.width) as f64).expand([n])
    }
}

impl Bijection for PlainConv1x1 {
    fn dim(&self) -> usize {
        self.channels * self.height * self.width
    }

    fn event(&self) -> EventShape {
        EventShape::image(self.channels, self.height, self.width)
    }

    fn name(&self) -> String {
        "PlainConv1x1".into()
    }

    /// Sampling: `x = W⁻¹·u` per pixel.
    fn forward_unchecked(&self, u: Tensor<2>, _call: &Call) -> Result<Mapped> {
        let (n, _) = dims2(&u);
        let (log_det, inverse) = self.log_det_and_inverse()?;
        Ok((per_pixel(inverse, u, self.channels), self.log_det(log_det, n).neg()))
    }

    /// Density: `u = W·x` per pixel.
    fn inverse_unchecked(&self, x: Tensor<2>, _call: &Call) -> Result<Mapped> {
        let (n, _) = dims2(&x);
        let (log_det, _) = self.log_det_and_inverse()?;
        Ok((per_pixel(self.weight.val(), x, self.channels), self.log_det(log_det, n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverse_and_log_det_of_a_pivoted_matrix() {
        // det = 0·… − needs pivoting: [[0, 2, 1], [1, 1, 0], [3, 0, 1]], det = −5.
        let w = [0.0, 2.0, 1.0, 1.0, 1.0, 0.0, 3.0, 0.0, 1.0];
        let (ld, inv) = log_det_and_inverse(&w, 3).unwrap();
        assert!((ld - 5f64.ln()).abs() < 1e-12);
        for i in 0..3 {
            for j in 0..3 {
                let p: f64 = (0..3).map(|k| w[i * 3 + k] * inv[k * 3 + j]).sum();
                assert!((p - if i == j { 1.0 } else { 0.0 }).abs() < 1e-12);
            }
        }
        assert!(log_det_and_inverse(&[1.0, 2.0, 2.0, 4.0], 2).is_err());
    }
}

//! Invertible 1×1 convolution (Kingma & Dhariwal 2018, Glow): the same invertible C×C matrix
//! applied to the channel vector of every pixel of an image `[C, H, W]`, data → base
//! `u[:, h, w] = W·x[:, h, w]`.
//!
//! LU form: `W = P·L·(U + diag(sign ⊙ exp(s)))` with `P` a fixed permutation, `L` unit lower
//! triangular, `U` strictly upper triangular and `sign` fixed, so `log|det J_{T⁻¹}| = H·W·Σ s`
//! in O(C). Sampling solves the two triangular systems (C steps on a C×C matrix, then one
//! product per pixel). `W` starts as a random rotation (seeded): the layer mixes channels from
//! the first step with a log-det of zero. `P` and `sign` come from the LU decomposition of that
//! rotation and are stored with the weights (not trained).

use burn::module::{Module, Param, RunningState};
use burn::tensor::{Device, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use super::lu_linear::solve_triangular;
use super::{image_event, Bijection, Call, EventShape, LayerSpec, Mapped};
use crate::error::{FlowError, Result};
use crate::tensor::{dims2, matrix, vector};

/// Configuration of an [`InvertibleConv1x1`] on images `[C, H, W]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InvertibleConv1x1Config {
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

impl InvertibleConv1x1Config {
    /// On images of `channels × height × width`.
    pub fn new(channels: usize, height: usize, width: usize) -> Self {
        Self { channels, height, width, seed: 0 }
    }

    /// Sets the seed of the initial rotation.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The layer, starting at a random rotation.
    pub fn init(&self, device: &Device) -> Result<InvertibleConv1x1> {
        self.validate()?;
        let c = self.channels;
        let (perm, lower, upper) = lu_decompose(&random_rotation(c, self.seed));
        let strict = |m: &[f64], keep: fn(usize, usize) -> bool| -> Vec<f64> {
            (0..c * c).map(|k| if keep(k / c, k % c) { m[k] } else { 0.0 }).collect()
        };
        let diag: Vec<f64> = (0..c).map(|i| upper[i * c + i]).collect();
        // rotation[perm[i], :] = (L·U)[i, :], so rotation = P·L·U with P[perm[i], i] = 1.
        let mut p = vec![0.0; c * c];
        for (row, &source) in perm.iter().enumerate() {
            p[source * c + row] = 1.0;
        }
        let mask = |keep: fn(usize, usize) -> bool| -> Vec<f64> { (0..c * c).map(|k| if keep(k / c, k % c) { 1.0 } else { 0.0 }).collect() };
        Ok(InvertibleConv1x1 {
            lower: Param::from_tensor(matrix(strict(&lower, |i, j| i > j), c, c, device)),
            upper: Param::from_tensor(matrix(strict(&upper, |i, j| i < j), c, c, device)),
            log_diag: Param::from_tensor(vector(diag.iter().map(|v| v.abs().ln()).collect(), device)),
            sign: RunningState::new(vector(diag.iter().map(|v| v.signum()).collect(), device)),
            permutation: RunningState::new(matrix(p, c, c, device)),
            lower_mask: matrix(mask(|i, j| i > j), c, c, device),
            upper_mask: matrix(mask(|i, j| i < j), c, c, device),
            channels: c,
            height: self.height,
            width: self.width,
        })
    }
}

/// A Haar-random rotation `[C, C]` (row major): Gram–Schmidt on Gaussian columns, with
/// determinant +1.
pub(super) fn random_rotation(c: usize, seed: u64) -> Vec<f64> {
    let rng = &mut StdRng::seed_from_u64(seed);
    let mut q: Vec<Vec<f64>> = Vec::with_capacity(c);
    while q.len() < c {
        let mut v: Vec<f64> = (0..c).map(|_| StandardNormal.sample(rng)).collect();
        for u in &q {
            let dot: f64 = u.iter().zip(&v).map(|(a, b)| a * b).sum();
            v.iter_mut().zip(u).for_each(|(a, b)| *a -= dot * b);
        }
        let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
        if norm > 1e-6 {
            q.push(v.into_iter().map(|a| a / norm).collect());
        }
    }
    let mut m: Vec<f64> = (0..c * c).map(|k| q[k % c][k / c]).collect();
    if determinant_sign(&m, c) < 0.0 {
        (0..c).for_each(|i| m[i * c] = -m[i * c]);
    }
    m
}

fn determinant_sign(m: &[f64], c: usize) -> f64 {
    let (perm, _, upper) = lu_decompose(m);
    let mut sign: f64 = (0..c).map(|i| upper[i * c + i].signum()).product();
    let mut seen = vec![false; c];
    for start in 0..c {
        let (mut i, mut len) = (start, 0);
        while !seen[i] {
            seen[i] = true;
            i = perm[i];
            len += 1;
        }
        if len > 0 && len % 2 == 0 {
            sign = -sign;
        }
    }
    sign
}

/// LU decomposition with partial pivoting of a square row-major matrix `m`:
/// `(perm, L, U)` with `m[perm[i], :] = (L·U)[i, :]`, `L` unit lower triangular.
pub(super) fn lu_decompose(m: &[f64]) -> (Vec<usize>, Vec<f64>, Vec<f64>) {
    let c = (m.len() as f64).sqrt().round() as usize;
    let mut a = m.to_vec();
    let mut perm: Vec<usize> = (0..c).collect();
    let mut lower = vec![0.0; c * c];
    for k in 0..c {
        let pivot = (k..c).max_by(|&i, &j| a[i * c + k].abs().total_cmp(&a[j * c + k].abs())).unwrap_or(k);
        if pivot != k {
            for j in 0..c {
                a.swap(k * c + j, pivot * c + j);
                lower.swap(k * c + j, pivot * c + j);
            }
            perm.swap(k, pivot);
        }
        for i in k + 1..c {
            let f = a[i * c + k] / a[k * c + k];
            lower[i * c + k] = f;
            for j in k..c {
                a[i * c + j] -= f * a[k * c + j];
            }
        }
    }
    (0..c).for_each(|i| lower[i * c + i] = 1.0);
    (perm, lower, a)
}

/// `InvalidConfig` unless C, H, W ≥ 1 (both 1×1 convolutions).
pub(super) fn check_image(channels: usize, height: usize, width: usize) -> Result<()> {
    if channels == 0 || height == 0 || width == 0 {
        return Err(FlowError::InvalidConfig(format!("a 1×1 convolution needs images with C, H, W ≥ 1, got [{channels}, {height}, {width}]")));
    }
    Ok(())
}

/// `M·x[:, h, w]` for every pixel of the batch `[N, C·H·W]` (`M` `[C, C]`).
pub(super) fn per_pixel(m: Tensor<2>, x: Tensor<2>, c: usize) -> Tensor<2> {
    let (n, d) = dims2(&x);
    let x = x.reshape([n, c, d / c]);
    m.unsqueeze_dim::<3>(0).expand([n, c, c]).matmul(x).reshape([n, d])
}

impl LayerSpec for InvertibleConv1x1Config {
    fn dim(&self) -> usize {
        self.channels * self.height * self.width
    }

    fn validate(&self) -> Result<()> {
        check_image(self.channels, self.height, self.width)
    }

    fn parameter_count(&self) -> usize {
        self.channels * (2 * self.channels + 2)
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

/// The invertible 1×1 convolution (see the module documentation).
#[derive(Module, Debug)]
pub struct InvertibleConv1x1 {
    /// Strictly lower part of `L` `[C, C]`.
    pub lower: Param<Tensor<2>>,
    /// Strictly upper part of `U` `[C, C]`.
    pub upper: Param<Tensor<2>>,
    /// `s`: log of the magnitudes of `U`'s diagonal `[C]`.
    pub log_diag: Param<Tensor<1>>,
    /// Signs of `U`'s diagonal `[C]` (fixed).
    pub sign: RunningState<Tensor<1>>,
    /// The permutation matrix `P` `[C, C]` (fixed).
    pub permutation: RunningState<Tensor<2>>,
    lower_mask: Tensor<2>,
    upper_mask: Tensor<2>,
    /// Channels C.
    pub channels: usize,
    /// Height H.
    pub height: usize,
    /// Width W.
    pub width: usize,
}

impl InvertibleConv1x1 {
    fn l(&self) -> Tensor<2> {
        let device = self.lower_mask.device();
        self.lower.val().mul(self.lower_mask.clone()).add(Tensor::eye(self.channels, &device))
    }

    fn u(&self) -> Tensor<2> {
        let device = self.upper_mask.device();
        let diag = self.sign.value_sync().mul(self.log_diag.val().exp());
        let diag = Tensor::eye(self.channels, &device).mul(diag.unsqueeze_dim::<2>(0));
        self.upper.val().mul(self.upper_mask.clone()).add(diag)
    }

    fn log_det(&self, n: usize) -> Tensor<1> {
        self.log_diag.val().sum().mul_scalar((self.height * self.width) as f64).expand([n])
    }
}

impl Bijection for InvertibleConv1x1 {
    fn dim(&self) -> usize {
        self.channels * self.height * self.width
    }

    fn event(&self) -> EventShape {
        EventShape::image(self.channels, self.height, self.width)
    }

    fn name(&self) -> String {
        "InvertibleConv1x1".into()
    }

    /// Sampling: `x = W⁻¹·u` per pixel, `W⁻¹ = U⁻¹·L⁻¹·Pᵀ` by triangular solves.
    fn forward_unchecked(&self, u: Tensor<2>, _call: &Call) -> Result<Mapped> {
        let (n, _) = dims2(&u);
        let device = u.device();
        let eye = Tensor::eye(self.channels, &device);
        // Rows a with a·Mᵀ = I are the rows of M⁻ᵀ.
        let l_inv = solve_triangular(self.l(), eye.clone(), true).transpose();
        let u_inv = solve_triangular(self.u(), eye, false).transpose();
        let w_inv = u_inv.matmul(l_inv).matmul(self.permutation.value_sync().transpose());
        Ok((per_pixel(w_inv, u, self.channels), self.log_det(n).neg()))
    }

    /// Density: `u = W·x` per pixel.
    fn inverse_unchecked(&self, x: Tensor<2>, _call: &Call) -> Result<Mapped> {
        let (n, _) = dims2(&x);
        let w = self.permutation.value_sync().matmul(self.l()).matmul(self.u());
        Ok((per_pixel(w, x, self.channels), self.log_det(n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_initial_matrix_is_the_rotation() {
        for c in [1, 2, 3, 6] {
            let q = random_rotation(c, 7);
            let (perm, l, u) = lu_decompose(&q);
            // (L·U)[i, :] = q[perm[i], :]
            for i in 0..c {
                for j in 0..c {
                    let lu: f64 = (0..c).map(|k| l[i * c + k] * u[k * c + j]).sum();
                    assert!((lu - q[perm[i] * c + j]).abs() < 1e-12);
                }
            }
            // Orthogonal with determinant +1.
            for i in 0..c {
                for j in 0..c {
                    let dot: f64 = (0..c).map(|k| q[i * c + k] * q[j * c + k]).sum();
                    assert!((dot - if i == j { 1.0 } else { 0.0 }).abs() < 1e-12);
                }
            }
            assert_eq!(determinant_sign(&q, c), 1.0);
        }
    }
}

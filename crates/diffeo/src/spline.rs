//! Monotonic rational-quadratic splines (Durkan et al. 2019, *Neural Spline Flows*).
//!
//! On `[−B, B]` the map is a rational-quadratic spline with `K` bins; outside it is the identity
//! (linear tails), and the boundary derivatives are pinned to 1 so the tails join smoothly.
//! Unnormalised parameters per feature: `K` width logits, `K` height logits and `K − 1` interior
//! derivative logits:
//!
//! - widths  = `w_min + (1 − K·w_min)·softmax(w̃)` (times 2B), heights likewise;
//! - derivatives = `d_min + softplus(d̃ + c)`, with `c = ln(e^{1 − d_min} − 1)` so that `d̃ = 0`
//!   gives derivative 1.
//!
//! All-zero parameters give uniform bins with unit derivatives: the identity. Within bin `k`
//! (`ξ = (x − x_k)/w_k`, `s_k = h_k/w_k`):
//!
//! `y = y_k + h_k·(s_k ξ² + d_k ξ(1−ξ)) / (s_k + (d_{k+1} + d_k − 2s_k) ξ(1−ξ))`,
//!
//! `dy/dx = s_k²·(d_{k+1} ξ² + 2 s_k ξ(1−ξ) + d_k (1−ξ)²) / (s_k + (d_{k+1} + d_k − 2s_k) ξ(1−ξ))²`.
//!
//! The inverse solves the quadratic `a ξ² + b ξ + c = 0` in the stable form
//! `ξ = 2c / (−b − √(b² − 4ac))`, with the discriminant clamped at 0 and ξ clipped to [0, 1].
//! Inputs outside `[−B, B]` are replaced by 0 *before* any spline arithmetic, so their gradients
//! stay finite; the bin search counts knot comparisons.

use burn::tensor::activation::softmax;
use burn::tensor::{Int, Tensor};

use crate::tensor::{dims2, softplus};

pub mod fused;

/// Default number of bins (K = 8, as in zuko and the NSF paper's tabular models).
pub const DEFAULT_BINS: usize = 8;
/// Default tail bound B (data are standardized, so ±5 covers all but ~6e−7 of a Gaussian).
pub const DEFAULT_TAIL_BOUND: f64 = 5.0;
/// Minimum bin width, as a fraction of the interval (nflows' default).
pub const MIN_BIN_WIDTH: f64 = 1e-3;
/// Minimum bin height, as a fraction of the interval.
pub const MIN_BIN_HEIGHT: f64 = 1e-3;
/// Minimum derivative at the knots.
pub const MIN_DERIVATIVE: f64 = 1e-3;

/// `c = ln(e^{1 − d_min} − 1)`: derivatives are `d_min + softplus(d̃ + c)`, so `d̃ = 0` gives 1.
pub fn derivative_shift() -> f64 {
    ((1.0 - MIN_DERIVATIVE).exp() - 1.0).ln()
}

/// Parameters per feature: `3K − 1`.
pub fn params_per_dim(bins: usize) -> usize {
    3 * bins - 1
}

/// Width, height and derivative logits `[N, D, K]`, `[N, D, K]`, `[N, D, K−1]` from the packed
/// parameters `[N, (3K−1)·D]` (parameter `p` of feature `j` in column `p·D + j`).
pub fn unpack(params: &Tensor<2>, bins: usize, d: usize) -> (Tensor<3>, Tensor<3>, Tensor<3>) {
    let n = params.dims()[0];
    let block = |start: usize, count: usize| {
        params.clone().narrow(1, start * d, count * d).reshape([n, count, d]).swap_dims(1, 2)
    };
    (block(0, bins), block(bins, bins), block(2 * bins, bins - 1))
}

/// Whether `DIFFEO_COMPOSED_SPLINES` is set (to anything but `0`): every spline then runs as
/// composed tensor ops, the reference implementation, instead of the fused CPU kernel.
pub fn composed_forced() -> bool {
    static FORCED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FORCED.get_or_init(|| std::env::var("DIFFEO_COMPOSED_SPLINES").is_ok_and(|v| v != "0"))
}

/// The spline on packed parameters `[N, (3K−1)·D]`: `(output, log-det)`, both `[N, D]`.
///
/// On the CPU (Flex) backend this is one fused operation with a hand-written backward
/// ([`fused`]); elsewhere, or with `DIFFEO_COMPOSED_SPLINES=1`, it is [`rational_quadratic`]
/// composed from tensor ops. Both compute the same function and gradients.
pub fn rational_quadratic_packed(
    v: Tensor<2>,
    params: &Tensor<2>,
    bins: usize,
    bound: f64,
    inverse: bool,
) -> (Tensor<2>, Tensor<2>) {
    if fused::supported(&v.device()) && !composed_forced() {
        return fused::rational_quadratic(v, params.clone(), bins, bound, inverse);
    }
    let (w, h, dv) = unpack(params, bins, dims2(&v).1);
    rational_quadratic(v, w, h, dv, bound, inverse)
}

/// Knot positions `[N, D, K+1]` from `[N, D, K]` logits: `lo`, `lo + L·cumsum(sizes)`, `hi`
/// exactly at the ends; returns the knots and the bin sizes recomputed from them.
fn knots(logits: Tensor<3>, min: f64, bound: f64) -> (Tensor<3>, Tensor<3>) {
    let [n, d, k] = logits.dims();
    let device = logits.device();
    let sizes = softmax(logits, 2).mul_scalar(1.0 - min * k as f64).add_scalar(min);
    let cum = sizes.cumsum(2).mul_scalar(2.0 * bound).sub_scalar(bound);
    let lo = Tensor::<3>::full([n, d, 1], -bound, &device);
    let hi = Tensor::<3>::full([n, d, 1], bound, &device);
    let knots = Tensor::cat(vec![lo, cum.narrow(2, 0, k - 1), hi], 2);
    let sizes = knots.clone().narrow(2, 1, k).sub(knots.clone().narrow(2, 0, k));
    (knots, sizes)
}

/// Bin index `[N, D, 1]` of each value: the number of interior knots `≤ v`.
fn bin_index(v: &Tensor<2>, knots: &Tensor<3>) -> Tensor<3, Int> {
    let [n, d, k1] = knots.dims();
    let interior = knots.clone().narrow(2, 1, k1 - 2);
    v.clone().unsqueeze_dim::<3>(2).expand([n, d, k1 - 2]).greater_equal(interior).int().sum_dim(2)
}

fn pick(t: &Tensor<3>, idx: &Tensor<3, Int>) -> Tensor<2> {
    t.clone().gather(2, idx.clone()).squeeze_dim::<2>(2)
}

/// The spline elementwise: `y` and `log|dy/dx|` (or, with `inverse`, `x` and `log|dx/dy|`),
/// both `[N, D]`. `widths`, `heights`: `[N, D, K]` logits; `derivatives`: `[N, D, K−1]` logits.
pub fn rational_quadratic(
    v: Tensor<2>,
    widths: Tensor<3>,
    heights: Tensor<3>,
    derivatives: Tensor<3>,
    bound: f64,
    inverse: bool,
) -> (Tensor<2>, Tensor<2>) {
    let (n, d) = dims2(&v);
    let device = v.device();
    let (xk, w) = knots(widths, MIN_BIN_WIDTH, bound);
    let (yk, h) = knots(heights, MIN_BIN_HEIGHT, bound);
    let shift = derivative_shift();
    let ones = Tensor::<3>::ones([n, d, 1], &device);
    let inner = softplus(derivatives.add_scalar(shift)).add_scalar(MIN_DERIVATIVE);
    let dk = Tensor::cat(vec![ones.clone(), inner, ones], 2);
    let k = w.dims()[2];

    // Outside the interval: identity. Replace those inputs before any spline arithmetic.
    let outside = v.clone().lower_equal_elem(-bound).bool_or(v.clone().greater_equal_elem(bound));
    let vs = v.clone().mask_fill(outside.clone(), 0.0);

    let idx = bin_index(&vs, if inverse { &yk } else { &xk });
    let x_lo = pick(&xk, &idx);
    let y_lo = pick(&yk, &idx);
    let wk = pick(&w, &idx);
    let hk = pick(&h, &idx);
    let d0 = pick(&dk.clone().narrow(2, 0, k), &idx);
    let d1 = pick(&dk.narrow(2, 1, k), &idx);
    let s = hk.clone().div(wk.clone());
    let sum_d = d0.clone().add(d1.clone()).sub(s.clone().mul_scalar(2.0));

    let (out, ld) = if !inverse {
        let xi = vs.sub(x_lo).div(wk).clamp(0.0, 1.0);
        let xi1m = xi.clone().neg().add_scalar(1.0);
        let xx = xi.clone().mul(xi1m.clone());
        let denom = s.clone().add(sum_d.mul(xx.clone()));
        let numer = hk.mul(s.clone().mul(xi.clone().square()).add(d0.clone().mul(xx.clone())));
        let y = y_lo.add(numer.div(denom.clone())).clamp(-bound, bound);
        let dnum = s.clone().square().mul(d1.mul(xi.square()).add(s.mul(xx).mul_scalar(2.0)).add(d0.mul(xi1m.square())));
        let ld = dnum.log().sub(denom.log().mul_scalar(2.0));
        (y, ld)
    } else {
        let dy = vs.sub(y_lo);
        let a = hk.clone().mul(s.clone().sub(d0.clone())).add(dy.clone().mul(sum_d.clone()));
        let b = hk.mul(d0.clone()).sub(dy.clone().mul(sum_d.clone()));
        let c = s.clone().mul(dy).neg();
        let disc = b.clone().square().sub(a.mul(c.clone()).mul_scalar(4.0)).clamp_min(0.0);
        // −b − √disc is ≤ −|b| < 0 away from degenerate parameters; guard the division anyway.
        let root = b.neg().sub(disc.sqrt()).clamp_max(-1e-30);
        let xi = c.mul_scalar(2.0).div(root).clamp(0.0, 1.0);
        let x = xi.clone().mul(wk).add(x_lo).clamp(-bound, bound);
        let xi1m = xi.clone().neg().add_scalar(1.0);
        let xx = xi.clone().mul(xi1m.clone());
        let denom = s.clone().add(sum_d.mul(xx.clone()));
        let dnum = s.clone().square().mul(d1.mul(xi.square()).add(s.mul(xx).mul_scalar(2.0)).add(d0.mul(xi1m.square())));
        let ld = denom.log().mul_scalar(2.0).sub(dnum.log());
        (x, ld)
    };
    let out = out.mask_where(outside.clone(), v);
    let ld = ld.mask_fill(outside, 0.0);
    (out, ld)
}

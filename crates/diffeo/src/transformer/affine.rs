//! The affine transformers (both directions) as one CPU operation with a hand-written backward, instead of a dozen tensor operations and their backward steps per
//! layer (most of a MAF layer's graph nodes besides MADE; on small batches each costs more in
//! bookkeeping than in arithmetic). Registered as a burn backend extension (`Flex`, and
//! `Autodiff` with the backward step below); the per-element formulas are those of
//! [`Transformer::inverse`](super::Transformer::inverse)'s and
//! [`Transformer::forward`](super::Transformer::forward)'s composed operations, which stay the
//! reference (tests compare values and gradients in f64) and run on every other backend.
//!
//! For parameters `(μ, a)` per feature, `s = a/q`, `q = 1 + |a|/B` (`s′ = 1/q²`) and
//! `σ = 1 + ln(1 + (eᶻ − 1)·s) + (a − z)`, `z = min(a, L)` (`σ′ = eᶻ·s/(1 + (eᶻ − 1)·s)` below
//! `L`, 1 beyond):
//! - soft-clipped exp, density direction `x = (y − μ)·e^{−s}`, `log|dx/dy| = −s`; sampling
//!   direction `y = x·eˢ + μ`, `log|dy/dx| = s`.
//! - softplus, density direction `x = y·σ + μ`, `log|dx/dy| = ln σ`; sampling direction
//!   `y = (x − μ)/σ`, `log|dy/dx| = −ln σ`.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, Dispatch, Flex};
use burn::tensor::{DType, Tensor};
use rayon::prelude::*;

use super::{ScaleMap, AFFINE_LOG_SCALE_BOUND, SOFTPLUS_LINEAR_FROM};
use crate::nn::fused::{shape2, tensor, values};
use crate::tensor::dims2;

/// How [`AffineBackend::affine_transform`] maps the raw scale parameter (a plain code, so that the
/// operation's arguments stay simple): 0 soft-clipped exp, 1 softplus.
fn code(map: ScaleMap) -> u8 {
    match map {
        ScaleMap::SoftClippedExp => 0,
        ScaleMap::Softplus => 1,
    }
}

/// An affine transformer in one direction: `v` `[N, D]`, `params` `[N, 2D]` (`μ` then `a`) →
/// `[N, 2D]`, the output then the elementwise log-det.
#[backend_extension(Flex, Autodiff)]
pub trait AffineBackend: Backend {
    /// `map`: 0 soft-clipped exp, 1 softplus scale; `inverse`: the density direction.
    fn affine_transform(v: FloatTensor<Self>, params: FloatTensor<Self>, map: u8, inverse: bool) -> FloatTensor<Self>;
}

/// The training kernels of [`AffineBackend::affine_transform`]: the forward pass also keeps the
/// local derivatives, so that the backward pass is products only (no transcendental functions
/// computed a second time).
pub trait AffineGrad: Backend {
    /// `(out, derivatives)`: `out` as [`AffineBackend::affine_transform`], `derivatives` `[N, 4D]`:
    /// `∂out/∂v`, `∂out/∂μ`, `∂out/∂a`, `∂ld/∂a`.
    fn affine_transform_keeping(v: FloatTensor<Self>, params: FloatTensor<Self>, map: u8, inverse: bool) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// `(∂v, ∂params)` of `⟨g, affine_transform(v, params)⟩` from the kept derivatives.
    fn affine_transform_backward(derivatives: FloatTensor<Self>, g: FloatTensor<Self>) -> (FloatTensor<Self>, FloatTensor<Self>);
}

/// `(x, log|dx/dy|)` by the fused operation, or `None` where it does not serve (another device,
/// another float type, shapes that do not match): the caller composes the operations.
pub(super) fn inverse(y: &Tensor<2>, params: &Tensor<2>, map: ScaleMap) -> Option<(Tensor<2>, Tensor<2>)> {
    transform(y, params, map, true)
}

/// `(y, log|dy/dx|)` of the sampling direction, as [`inverse`].
pub(super) fn forward(x: &Tensor<2>, params: &Tensor<2>, map: ScaleMap) -> Option<(Tensor<2>, Tensor<2>)> {
    transform(x, params, map, false)
}

fn transform(y: &Tensor<2>, params: &Tensor<2>, map: ScaleMap, inverse: bool) -> Option<(Tensor<2>, Tensor<2>)> {
    if !crate::on_cpu(&y.device()) || !matches!(y.dtype(), DType::F32 | DType::F64) || params.dtype() != y.dtype() {
        return None;
    }
    let ((n, d), (pn, pw)) = (dims2(y), dims2(params));
    if pn != n || pw != 2 * d || n * d == 0 {
        return None;
    }
    let out = <Dispatch as AffineBackend>::affine_transform(y.clone().into_dispatch(), params.clone().into_dispatch(), code(map), inverse);
    let out = Tensor::<2>::from_dispatch(out);
    Some((out.clone().narrow(1, 0, d), out.narrow(1, d, d)))
}

/// What the kernels need of the float types, beyond [`crate::nn::fused::Real`].
trait Float: crate::nn::fused::Real + std::ops::Neg<Output = Self> {
    fn exp(self) -> Self;
    fn exp_m1_exact(self) -> Self;
    fn ln(self) -> Self;
    fn ln_1p(self) -> Self;
    fn abs(self) -> Self;
    fn min(self, other: Self) -> Self;
    fn max(self, other: Self) -> Self;
}

macro_rules! float {
    ($t:ty) => {
        impl Float for $t {
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            fn exp_m1_exact(self) -> Self {
                <$t>::exp_m1(self)
            }
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            fn ln_1p(self) -> Self {
                <$t>::ln_1p(self)
            }
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            fn min(self, other: Self) -> Self {
                <$t>::min(self, other)
            }
            fn max(self, other: Self) -> Self {
                <$t>::max(self, other)
            }
        }
    };
}
float!(f32);
float!(f64);

/// Rows per parallel task.
const ROWS: usize = 512;

/// One element of the density direction (`inverse`) or the sampling direction: `(output,
/// log-det, ∂out/∂v, ∂out/∂μ, ∂out/∂a, ∂ld/∂a)` for the input `v`.
#[inline(always)]
fn element<T: Float>(v: T, mu: T, a: T, map: u8, inverse: bool, consts: (T, T, T)) -> (T, T, T, T, T, T) {
    let (bound, slope, linear_from) = consts;
    if map == 0 {
        let q = T::ONE + a.abs() / bound;
        let s = a / q;
        let ds = T::ONE / (q * q);
        if inverse {
            let e = (-s).exp();
            ((v - mu) * e, -s, e, -e, -((v - mu) * e) * ds, -ds)
        } else {
            let e = s.exp();
            (v * e + mu, s, e, T::ONE, v * e * ds, ds)
        }
    } else {
        let z = a.min(linear_from);
        let em = z.exp_m1_exact();
        let w = em * slope;
        let sigma = T::ONE + w.ln_1p() + (a - linear_from).max(T::ZERO);
        let dsigma = if a < linear_from { (em + T::ONE) * slope / (T::ONE + w) } else { T::ONE };
        if inverse {
            (v * sigma + mu, sigma.ln(), sigma, T::ONE, v * dsigma, dsigma / sigma)
        } else {
            let r = T::ONE / sigma;
            ((v - mu) / sigma, -sigma.ln(), r, -r, -((v - mu) / sigma) * (dsigma / sigma), -(dsigma / sigma))
        }
    }
}

fn constants<T: Float>() -> (T, T, T) {
    (T::from_f64(AFFINE_LOG_SCALE_BOUND), T::from_f64(super::softplus_slope()), T::from_f64(SOFTPLUS_LINEAR_FROM))
}

/// Every element: the output and log-det `[N, 2D]`, and with `KEEP` each element's four
/// derivatives `[N, 4D]` (a block of `D` each: `∂out/∂v`, `∂out/∂μ`, `∂out/∂a`, `∂ld/∂a`;
/// without, an empty `[0, 4D]`).
fn kernel<T: Float, const KEEP: bool>(y: &FlexTensor, params: &FlexTensor, map: u8, inverse: bool) -> (FlexTensor, FlexTensor) {
    let (n, d) = shape2(y);
    let (yv, pv) = (values::<T>(y), values::<T>(params));
    let consts = constants::<T>();
    let mut out = vec![T::ZERO; n * 2 * d];
    let mut der = vec![T::ZERO; if KEEP { n * 4 * d } else { 0 }];
    // Each task's block of derivative rows (empty when they are not kept).
    let mut der_blocks: Vec<&mut [T]> = der.chunks_mut(ROWS * 4 * d).collect();
    der_blocks.resize_with(n.div_ceil(ROWS), || &mut []);
    out.par_chunks_mut(ROWS * 2 * d).zip(der_blocks).enumerate().for_each(|(c, (o, dv))| {
        for (local, orow) in o.chunks_exact_mut(2 * d).enumerate() {
            let r = c * ROWS + local;
            let (yr, pr) = (&yv[r * d..(r + 1) * d], &pv[r * 2 * d..(r + 1) * 2 * d]);
            let drow: &mut [T] = if KEEP { &mut dv[local * 4 * d..(local + 1) * 4 * d] } else { &mut [] };
            for j in 0..d {
                let (x, ld, dx_dy, dx_dmu, dx_da, dld_da) = element(yr[j], pr[j], pr[d + j], map, inverse, consts);
                orow[j] = x;
                orow[d + j] = ld;
                if KEEP {
                    (drow[j], drow[d + j], drow[2 * d + j], drow[3 * d + j]) = (dx_dy, dx_dmu, dx_da, dld_da);
                }
            }
        }
    });
    (tensor(out, vec![n, 2 * d]), tensor(der, vec![if KEEP { n } else { 0 }, 4 * d]))
}

fn kernel_backward<T: Float>(der: &FlexTensor, g: &FlexTensor) -> (FlexTensor, FlexTensor) {
    let (n, d4) = shape2(der);
    let d = d4 / 4;
    let (dv, gv) = (values::<T>(der), values::<T>(g));
    let (mut gy, mut gp) = (vec![T::ZERO; n * d], vec![T::ZERO; n * 2 * d]);
    gy.par_chunks_mut(ROWS * d).zip(gp.par_chunks_mut(ROWS * 2 * d)).enumerate().for_each(|(c, (gy, gp))| {
        for (local, (gyr, gpr)) in gy.chunks_exact_mut(d).zip(gp.chunks_exact_mut(2 * d)).enumerate() {
            let r = c * ROWS + local;
            let (dr, gr) = (&dv[r * 4 * d..(r + 1) * 4 * d], &gv[r * 2 * d..(r + 1) * 2 * d]);
            for j in 0..d {
                let (g_x, g_ld) = (gr[j], gr[d + j]);
                gyr[j] = g_x * dr[j];
                gpr[j] = g_x * dr[d + j];
                gpr[d + j] = g_x * dr[2 * d + j] + g_ld * dr[3 * d + j];
            }
        }
    });
    (tensor(gy, vec![n, d]), tensor(gp, vec![n, 2 * d]))
}

impl AffineBackend for Flex {
    fn affine_transform(y: FlexTensor, params: FlexTensor, map: u8, inverse: bool) -> FlexTensor {
        match y.dtype() {
            DType::F64 => kernel::<f64, false>(&y, &params, map, inverse).0,
            _ => kernel::<f32, false>(&y, &params, map, inverse).0,
        }
    }
}

impl AffineGrad for Flex {
    fn affine_transform_keeping(y: FlexTensor, params: FlexTensor, map: u8, inverse: bool) -> (FlexTensor, FlexTensor) {
        match y.dtype() {
            DType::F64 => kernel::<f64, true>(&y, &params, map, inverse),
            _ => kernel::<f32, true>(&y, &params, map, inverse),
        }
    }

    fn affine_transform_backward(der: FlexTensor, g: FlexTensor) -> (FlexTensor, FlexTensor) {
        match der.dtype() {
            DType::F64 => kernel_backward::<f64>(&der, &g),
            _ => kernel_backward::<f32>(&der, &g),
        }
    }
}

impl<B: Backend + AffineBackend + AffineGrad, C: CheckpointStrategy> AffineBackend for Autodiff<B, C> {
    fn affine_transform(y: FloatTensor<Self>, params: FloatTensor<Self>, map: u8, inverse: bool) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct AffineStep;

        impl<B: Backend + AffineGrad> Backward<B, 2> for AffineStep {
            type State = FloatTensor<B>;

            fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
                let [node_y, node_params] = ops.parents;
                let g = grads.consume::<B>(&ops.node);
                let (gy, gp) = B::affine_transform_backward(ops.state, g);
                if let Some(node) = node_y {
                    grads.register::<B>(node.id, gy);
                }
                if let Some(node) = node_params {
                    grads.register::<B>(node.id, gp);
                }
            }
        }

        let guards = [y.node(), params.node()];
        let (y, params) = (y.into_primitive(), params.into_primitive());
        match AffineStep.prepare::<C>(guards).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (out, derivatives) = B::affine_transform_keeping(y, params, map, inverse);
                prep.finish(derivatives, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::affine_transform(y, params, map, inverse)),
        }
    }
}

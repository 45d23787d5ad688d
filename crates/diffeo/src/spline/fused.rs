//! The fused rational-quadratic spline for the CPU (Flex) backend.
//!
//! One pass per element computes the bin widths/heights (softmax with floors), the knots, the
//! derivatives, a binary search for the bin and the spline (or its inverse) with its log-det; when
//! gradients are tracked the same pass also stores the element's local Jacobian (output and
//! log-det with respect to the input and the 3K − 1 parameters), and the backward step is a
//! product with it. Registered as a burn backend extension (`Flex`, and `Autodiff` with a
//! hand-written backward), so a spline layer is one graph node instead of ~100. Arithmetic is in
//! f64 whatever the tensor's dtype (f32 tensors are read and written
//! in place, converted per element).
//!
//! The composed-op version ([`rational_quadratic`](super::rational_quadratic)) is the reference the
//! tests compare against; it also runs on every other backend.
//!
//! Gradients follow the composed version's conventions: clamped quantities (ξ outside [0, 1], an
//! output beyond ±B) pass no gradient, inputs outside `[−B, B]` are the identity with no parameter
//! gradient, and the inverse is differentiated implicitly (`∂ξ/∂θ = −(∂y/∂θ)/(∂y/∂ξ)`), which is the
//! derivative of the exact root.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, Dispatch, Flex};
use burn::tensor::{DType, Device, Tensor};
use rayon::prelude::*;

use super::{MIN_BIN_HEIGHT, MIN_BIN_WIDTH, MIN_DERIVATIVE};
use crate::nn::fused::{shape2, tensor, values, Real};

/// The spline as one backend operation: `v` `[N, D]`, `params` `[N, (3K−1)·D]` (parameter-major:
/// parameter `p` of feature `j` in column `p·D + j`) → `[N, 2D]`, the output then the log-det.
#[backend_extension(Flex, Autodiff)]
pub trait RqSplineBackend: Backend {
    /// Forward (or, with `inverse`, inverse) spline and log-det, concatenated along columns.
    fn rq_spline(
        v: FloatTensor<Self>,
        params: FloatTensor<Self>,
        bins: usize,
        bound: f64,
        inverse: bool,
    ) -> FloatTensor<Self>;
}

/// The kernels behind the backward step: the forward pass also returns each element's local
/// Jacobian (two rows of `1 + P` partials: output and log-det with respect to the input and the
/// `P = 3K − 1` parameters), so the backward step is a cheap product instead of a second pass.
pub trait RqSplineGrad: Backend {
    /// `rq_spline` and the Jacobian rows `[N·D, 2(P + 1)]`.
    fn rq_spline_with_jacobian(
        v: FloatTensor<Self>,
        params: FloatTensor<Self>,
        bins: usize,
        bound: f64,
        inverse: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// `(∂/∂v, ∂/∂params)` of `⟨grad, rq_spline(v, params)⟩` from the Jacobian rows.
    fn rq_spline_vjp(jac: FloatTensor<Self>, grad: FloatTensor<Self>, bins: usize) -> (FloatTensor<Self>, FloatTensor<Self>);
}

/// Whether tensors on `device` can use the fused kernel.
pub fn supported(device: &Device) -> bool {
    crate::on_cpu(device)
}

/// The fused spline on a supported device: `(output, log-det)`, both `[N, D]`.
pub fn rational_quadratic(
    v: Tensor<2>,
    params: Tensor<2>,
    bins: usize,
    bound: f64,
    inverse: bool,
) -> (Tensor<2>, Tensor<2>) {
    let d = v.dims()[1];
    let out = <Dispatch as RqSplineBackend>::rq_spline(
        v.into_dispatch(),
        params.into_dispatch(),
        bins,
        bound,
        inverse,
    );
    let out = Tensor::<2>::from_dispatch(out);
    (out.clone().narrow(1, 0, d), out.narrow(1, d, d))
}

impl RqSplineBackend for Flex {
    fn rq_spline(v: FlexTensor, params: FlexTensor, bins: usize, bound: f64, inverse: bool) -> FlexTensor {
        fn typed<T: Real>(v: &FlexTensor, params: &FlexTensor, kernel: Kernel) -> FlexTensor {
            let (n, d) = shape2(v);
            let mut out = vec![T::ZERO; n * 2 * d];
            kernel.run(&values::<T>(v), &values::<T>(params), &mut out, None);
            tensor(out, vec![n, 2 * d])
        }
        let kernel = Kernel::new(bins, bound, inverse, shape2(&v).1);
        match v.dtype() {
            DType::F32 => typed::<f32>(&v, &as_dtype(params, DType::F32), kernel),
            DType::F64 => typed::<f64>(&v, &as_dtype(params, DType::F64), kernel),
            other => as_dtype(typed::<f64>(&as_dtype(v, DType::F64), &as_dtype(params, DType::F64), kernel), other),
        }
    }
}

impl RqSplineGrad for Flex {
    fn rq_spline_with_jacobian(
        v: FlexTensor,
        params: FlexTensor,
        bins: usize,
        bound: f64,
        inverse: bool,
    ) -> (FlexTensor, FlexTensor) {
        fn typed<T: Real>(v: &FlexTensor, params: &FlexTensor, kernel: Kernel) -> (FlexTensor, FlexTensor) {
            let (n, d) = shape2(v);
            let width = 2 * 3 * kernel.bins;
            let mut out = vec![T::ZERO; n * 2 * d];
            let mut jac = vec![T::ZERO; n * d * width];
            kernel.run(&values::<T>(v), &values::<T>(params), &mut out, Some(&mut jac));
            (tensor(out, vec![n, 2 * d]), tensor(jac, vec![n * d, width]))
        }
        let kernel = Kernel::new(bins, bound, inverse, shape2(&v).1);
        match v.dtype() {
            DType::F32 => typed::<f32>(&v, &as_dtype(params, DType::F32), kernel),
            DType::F64 => typed::<f64>(&v, &as_dtype(params, DType::F64), kernel),
            other => {
                let (out, jac) = typed::<f64>(&as_dtype(v, DType::F64), &as_dtype(params, DType::F64), kernel);
                (as_dtype(out, other), as_dtype(jac, other))
            }
        }
    }

    fn rq_spline_vjp(jac: FlexTensor, grad: FlexTensor, bins: usize) -> (FlexTensor, FlexTensor) {
        fn typed<T: Real>(jac: &FlexTensor, grad: &FlexTensor, bins: usize) -> (FlexTensor, FlexTensor) {
            let (n, d2) = shape2(grad);
            let d = d2 / 2;
            let p = super::params_per_dim(bins);
            let (jac, grad) = (values::<T>(jac), values::<T>(grad));
            let mut gv = vec![T::ZERO; n * d];
            let mut gp = vec![T::ZERO; n * p * d];
            gv.par_chunks_mut(d.max(1)).zip(gp.par_chunks_mut((p * d).max(1))).enumerate().for_each(|(row, (gv, gp))| {
                for j in 0..d {
                    let (g_out, g_ld) = (grad[row * 2 * d + j].to_f64(), grad[row * 2 * d + d + j].to_f64());
                    let e = &jac[(row * d + j) * 2 * (p + 1)..(row * d + j + 1) * 2 * (p + 1)];
                    let (r_out, r_ld) = e.split_at(p + 1);
                    gv[j] = T::from_f64(g_out * r_out[0].to_f64() + g_ld * r_ld[0].to_f64());
                    for q in 0..p {
                        gp[q * d + j] = T::from_f64(g_out * r_out[q + 1].to_f64() + g_ld * r_ld[q + 1].to_f64());
                    }
                }
            });
            (tensor(gv, vec![n, d]), tensor(gp, vec![n, p * d]))
        }
        match grad.dtype() {
            DType::F32 => typed::<f32>(&as_dtype(jac, DType::F32), &grad, bins),
            DType::F64 => typed::<f64>(&as_dtype(jac, DType::F64), &grad, bins),
            other => {
                let (gv, gp) = typed::<f64>(&as_dtype(jac, DType::F64), &as_dtype(grad, DType::F64), bins);
                (as_dtype(gv, other), as_dtype(gp, other))
            }
        }
    }
}

impl<B: Backend + RqSplineBackend + RqSplineGrad, C: CheckpointStrategy> RqSplineBackend for Autodiff<B, C> {
    fn rq_spline(
        v: FloatTensor<Self>,
        params: FloatTensor<Self>,
        bins: usize,
        bound: f64,
        inverse: bool,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct RqSplineStep;

        impl<B: Backend + RqSplineGrad> Backward<B, 2> for RqSplineStep {
            type State = (FloatTensor<B>, usize);

            fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
                let [node_v, node_params] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (jac, bins) = ops.state;
                let (gv, gp) = B::rq_spline_vjp(jac, grad, bins);
                if let Some(node) = node_v {
                    grads.register::<B>(node.id, gv);
                }
                if let Some(node) = node_params {
                    grads.register::<B>(node.id, gp);
                }
            }
        }

        let guards = [v.node(), params.node()];
        let (v, params) = (v.into_primitive(), params.into_primitive());
        match RqSplineStep.prepare::<C>(guards).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (out, jac) = B::rq_spline_with_jacobian(v, params, bins, bound, inverse);
                prep.finish((jac, bins), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::rq_spline(v, params, bins, bound, inverse)),
        }
    }
}

/// `t` in `dtype` (itself when it already is).
fn as_dtype(t: FlexTensor, dtype: DType) -> FlexTensor {
    if t.dtype() == dtype {
        t
    } else {
        FlexTensor::from_data(t.into_data().convert_dtype(dtype))
    }
}

/// `(ln(1 + eᶻ), σ(z))`, stable, from one exponential `e^{−|z|}`; the sigmoid only when asked.
fn softplus_sigmoid(z: f64, with_sigmoid: bool) -> (f64, f64) {
    let e = (-z.abs()).exp();
    let softplus = z.max(0.0) + e.ln_1p();
    let sigmoid = match (with_sigmoid, z >= 0.0) {
        (false, _) => 0.0,
        (true, true) => 1.0 / (1.0 + e),
        (true, false) => e / (1.0 + e),
    };
    (softplus, sigmoid)
}

/// Knots `[K+1]` from `K` logits: softmax, floor `min`, cumulative sum scaled to `[−B, B]`, ends
/// pinned; the softmax probabilities go to `probs`.
fn knots(logits: &[f64], min: f64, bound: f64, probs: &mut [f64], knots: &mut [f64]) {
    let k = logits.len();
    let max = logits.iter().fold(f64::NEG_INFINITY, |m, &z| m.max(z));
    let mut sum = 0.0;
    for (p, &z) in probs.iter_mut().zip(logits) {
        *p = (z - max).exp();
        sum += *p;
    }
    let scale = 1.0 - min * k as f64;
    knots[0] = -bound;
    let mut cum = 0.0;
    for i in 0..k {
        probs[i] /= sum;
        if i + 1 < k {
            cum += min + scale * probs[i];
            knots[i + 1] = cum * 2.0 * bound - bound;
        }
    }
    knots[k] = bound;
}

/// Gradient of the knots `g_knots` (only the interior ones count) pushed back to the logits:
/// `knot_j = −B + 2B·Σ_{i<j} (min + (1 − K·min)·softmax_i)`.
fn knots_backward(g_knots: &[f64], probs: &[f64], min: f64, bound: f64, g_logits: &mut [f64]) {
    let k = probs.len();
    let scale = 2.0 * bound * (1.0 - min * k as f64);
    // g_prob_i = scale · Σ_{j=i+1}^{K−1} g_knot_j (suffix sums), then the softmax backward.
    let mut suffix = 0.0;
    for i in (0..k).rev() {
        if i + 1 < k {
            suffix += g_knots[i + 1];
        }
        g_logits[i] = scale * suffix;
    }
    let dot: f64 = probs.iter().zip(g_logits.iter()).map(|(p, g)| p * g).sum();
    for (g, p) in g_logits.iter_mut().zip(probs) {
        *g = p * (*g - dot);
    }
}

/// One spline shape for a whole batch, with scratch space for one element.
struct Kernel {
    bins: usize,
    bound: f64,
    inverse: bool,
    dim: usize,
    shift: f64,
}

struct Scratch {
    theta: Vec<f64>,
    g_theta: Vec<f64>,
    pw: Vec<f64>,
    ph: Vec<f64>,
    xk: Vec<f64>,
    yk: Vec<f64>,
    gxk: Vec<f64>,
    gyk: Vec<f64>,
    jac: Vec<f64>,
}

impl Kernel {
    fn new(bins: usize, bound: f64, inverse: bool, dim: usize) -> Self {
        Kernel { bins, bound, inverse, dim, shift: super::derivative_shift() }
    }

    fn scratch(&self) -> Scratch {
        let k = self.bins;
        Scratch {
            theta: vec![0.0; super::params_per_dim(k)],
            g_theta: vec![0.0; super::params_per_dim(k)],
            pw: vec![0.0; k],
            ph: vec![0.0; k],
            xk: vec![0.0; k + 1],
            yk: vec![0.0; k + 1],
            gxk: vec![0.0; k + 1],
            gyk: vec![0.0; k + 1],
            jac: vec![0.0; 2 * 3 * k],
        }
    }

    /// Every element of the batch: outputs into `out` `[N, 2D]`; with `jac`, also each element's
    /// Jacobian rows `[N, D, 2, P + 1]` (see [`element`](Self::element)). Blocks of rows run in
    /// parallel.
    fn run<T: Real>(&self, v: &[T], params: &[T], out: &mut [T], jac: Option<&mut [T]>) {
        const ROWS: usize = 64;
        let d = self.dim.max(1);
        let p = super::params_per_dim(self.bins);
        match jac {
            None => out.par_chunks_mut(ROWS * 2 * d).enumerate().for_each(|(c, o)| {
                self.rows(c * ROWS, v, params, o, None);
            }),
            Some(jac) => out
                .par_chunks_mut(ROWS * 2 * d)
                .zip(jac.par_chunks_mut(ROWS * d * 2 * (p + 1)))
                .enumerate()
                .for_each(|(c, (o, jac))| self.rows(c * ROWS, v, params, o, Some(jac))),
        }
    }

    /// Rows `first ..` of the batch, as many as `out` holds.
    fn rows<T: Real>(&self, first: usize, v: &[T], params: &[T], out: &mut [T], mut jac: Option<&mut [T]>) {
        let d = self.dim;
        let p = super::params_per_dim(self.bins);
        let block = 2 * (p + 1);
        let mut s = self.scratch();
        for local in 0..out.len() / (2 * d) {
            let row = first + local;
            let prow = &params[row * p * d..(row + 1) * p * d];
            for j in 0..d {
                for (q, t) in s.theta.iter_mut().enumerate() {
                    *t = prow[q * d + j].to_f64();
                }
                let (o, ld) = self.element(v[row * d + j].to_f64(), jac.is_some(), &mut s);
                out[local * 2 * d + j] = T::from_f64(o);
                out[local * 2 * d + d + j] = T::from_f64(ld);
                if let Some(jac) = jac.as_mut() {
                    let dst = &mut jac[(local * d + j) * block..(local * d + j + 1) * block];
                    dst.iter_mut().zip(&s.jac).for_each(|(t, &v)| *t = T::from_f64(v));
                }
            }
        }
    }

    /// Derivative at knot `j` and (with `jacobian`; 0 otherwise) its derivative with respect to
    /// its logit.
    fn derivative(&self, theta: &[f64], j: usize, jacobian: bool) -> (f64, f64) {
        let k = self.bins;
        if j == 0 || j == k {
            (1.0, 0.0)
        } else {
            let (softplus, sigmoid) = softplus_sigmoid(theta[2 * k + j - 1] + self.shift, jacobian);
            (MIN_DERIVATIVE + softplus, sigmoid)
        }
    }

    /// One element: `(output, log-det)`. With `jacobian`, `s.jac` receives its two rows
    /// `[∂/∂v, ∂/∂θ_0, …, ∂/∂θ_{P−1}]` (output, then log-det).
    fn element(&self, v: f64, jacobian: bool, s: &mut Scratch) -> (f64, f64) {
        let (k, bound) = (self.bins, self.bound);
        let p = super::params_per_dim(k);
        if v <= -bound || v >= bound {
            if jacobian {
                s.jac.fill(0.0);
                s.jac[0] = 1.0;
            }
            return (v, 0.0);
        }
        knots(&s.theta[..k], MIN_BIN_WIDTH, bound, &mut s.pw, &mut s.xk);
        knots(&s.theta[k..2 * k], MIN_BIN_HEIGHT, bound, &mut s.ph, &mut s.yk);
        let search = if self.inverse { &s.yk } else { &s.xk };
        let idx = search[1..k].partition_point(|&z| z <= v);
        let (x0, w) = (s.xk[idx], s.xk[idx + 1] - s.xk[idx]);
        let (y0, h) = (s.yk[idx], s.yk[idx + 1] - s.yk[idx]);
        let (d0, dd0) = self.derivative(&s.theta, idx, jacobian);
        let (d1, dd1) = self.derivative(&s.theta, idx + 1, jacobian);
        let sl = h / w;
        let sd = d0 + d1 - 2.0 * sl;

        let (xi_raw, out_raw) = if !self.inverse {
            let xi_raw = (v - x0) / w;
            let xi = xi_raw.clamp(0.0, 1.0);
            let t = xi * (1.0 - xi);
            let y = y0 + h * (sl * xi * xi + d0 * t) / (sl + sd * t);
            (xi_raw, y)
        } else {
            let dy = v - y0;
            let a = h * (sl - d0) + dy * sd;
            let b = h * d0 - dy * sd;
            let c = -sl * dy;
            let disc = (b * b - 4.0 * a * c).max(0.0);
            let root = (-b - disc.sqrt()).min(-1e-30);
            let xi_raw = 2.0 * c / root;
            (xi_raw, xi_raw.clamp(0.0, 1.0) * w + x0)
        };
        let xi = xi_raw.clamp(0.0, 1.0);
        let out = out_raw.clamp(-bound, bound);
        let t = xi * (1.0 - xi);
        let den = sl + sd * t;
        let q = d1 * xi * xi + 2.0 * sl * t + d0 * (1.0 - xi) * (1.0 - xi);
        let ld_fwd = (sl * sl * q).ln() - 2.0 * den.ln();
        let ld = if self.inverse { -ld_fwd } else { ld_fwd };
        if !jacobian {
            return (out, ld);
        }

        // Partials of y = y0 + h·P/den and of the forward log-det at ξ.
        let pp = sl * xi * xi + d0 * t;
        let dt = 1.0 - 2.0 * xi;
        let den2 = den * den;
        let local = Local {
            idx,
            w,
            xi,
            sl,
            dd0,
            dd1,
            out_free: (-bound..=bound).contains(&out_raw),
            xi_free: (0.0..=1.0).contains(&xi_raw),
            f_xi: h * ((2.0 * sl * xi + d0 * dt) * den - pp * sd * dt) / den2,
            f_sl: h * (xi * xi * den - pp * (1.0 - 2.0 * t)) / den2,
            f_d0: h * t * (den - pp) / den2,
            f_d1: -h * pp * t / den2,
            f_h: pp / den,
            l_xi: (2.0 * d1 * xi + 2.0 * sl * dt - 2.0 * d0 * (1.0 - xi)) / q - 2.0 * sd * dt / den,
            l_sl: 2.0 / sl + 2.0 * t / q - 2.0 * (1.0 - 2.0 * t) / den,
            l_d0: (1.0 - xi) * (1.0 - xi) / q - 2.0 * t / den,
            l_d1: xi * xi / q - 2.0 * t / den,
        };
        for (r, (g_out, g_ld)) in [(1.0, 0.0), (0.0, 1.0)].into_iter().enumerate() {
            let g_v = self.pull(&local, g_out, g_ld, s);
            let row = &mut s.jac[r * (p + 1)..(r + 1) * (p + 1)];
            row[0] = g_v;
            row[1..].copy_from_slice(&s.g_theta);
        }
        (out, ld)
    }

    /// The vector-Jacobian product of one element for the upstream `(g_out, g_ld)`: returns the
    /// input gradient and leaves the parameter gradient in `s.g_theta`.
    fn pull(&self, l: &Local, g_out: f64, g_ld: f64, s: &mut Scratch) -> f64 {
        let (k, bound) = (self.bins, self.bound);
        let g_out = if l.out_free { g_out } else { 0.0 };
        let (g_v, g_x0, mut g_w, g_y0, mut g_h, g_sl, g_d0, g_d1) = if !self.inverse {
            let g_xi = if l.xi_free { g_out * l.f_xi + g_ld * l.l_xi } else { 0.0 };
            // ξ = (v − x0)/w
            (
                g_xi / l.w,
                -g_xi / l.w,
                -g_xi * l.xi / l.w,
                g_out,
                g_out * l.f_h,
                g_out * l.f_sl + g_ld * l.l_sl,
                g_out * l.f_d0 + g_ld * l.l_d0,
                g_out * l.f_d1 + g_ld * l.l_d1,
            )
        } else {
            // x = ξ·w + x0, log-det = −ld_fwd(ξ, s, d0, d1), ξ the root of y(ξ; θ) = v.
            let g_xi = if l.xi_free { g_out * l.w - g_ld * l.l_xi } else { 0.0 };
            let r = g_xi / l.f_xi;
            (
                r,
                g_out,
                g_out * l.xi,
                -r,
                -r * l.f_h,
                -g_ld * l.l_sl - r * l.f_sl,
                -g_ld * l.l_d0 - r * l.f_d0,
                -g_ld * l.l_d1 - r * l.f_d1,
            )
        };
        // s = h/w
        g_h += g_sl / l.w;
        g_w -= g_sl * l.sl / l.w;

        let idx = l.idx;
        s.gxk.fill(0.0);
        s.gyk.fill(0.0);
        s.gxk[idx] += g_x0 - g_w;
        s.gxk[idx + 1] += g_w;
        s.gyk[idx] += g_y0 - g_h;
        s.gyk[idx + 1] += g_h;
        let (gw, rest) = s.g_theta.split_at_mut(k);
        let (gh, gd) = rest.split_at_mut(k);
        knots_backward(&s.gxk, &s.pw, MIN_BIN_WIDTH, bound, gw);
        knots_backward(&s.gyk, &s.ph, MIN_BIN_HEIGHT, bound, gh);
        gd.fill(0.0);
        if idx >= 1 {
            gd[idx - 1] += g_d0 * l.dd0;
        }
        if idx + 1 < k {
            gd[idx] += g_d1 * l.dd1;
        }
        g_v
    }
}

/// What the backward step of one element needs from its forward pass.
struct Local {
    idx: usize,
    w: f64,
    xi: f64,
    sl: f64,
    dd0: f64,
    dd1: f64,
    out_free: bool,
    xi_free: bool,
    f_xi: f64,
    f_sl: f64,
    f_d0: f64,
    f_d1: f64,
    f_h: f64,
    l_xi: f64,
    l_sl: f64,
    l_d0: f64,
    l_d1: f64,
}


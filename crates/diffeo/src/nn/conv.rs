//! The fused convolution for the CPU (Flex) backend: a stride-1, "same"-padded square
//! convolution with bias and an optional ReLU, `y = act(W ⋆ x + b)`, as one backend operation with
//! a hand-written backward — the hot path of the image flows' coupling networks.
//!
//! Per image (images split across threads, each GEMM on one core): a 1×1 kernel is the GEMM
//! `y_n = W·x_n` on `[C_in, H·W]` directly. A k×k kernel unfolds the side with fewer channels
//! into k² shifted copies: the input (im2col, `[C_in·k², H·W]`, zero outside the image; then
//! `y = W·col`) or, when C_out < C_in (the last layer of a coupling network), the output:
//! `z = W'·x` with `W'` `[C_out·k², C_in]`, then `y[o]` sums the k² planes `z[(o, t)]` shifted
//! by tap `t`. Backward, from the saved input, weights and output: `g' = g ⊙ act′(y)`,
//! `∂b = Σ g'`; input side `∂W = Σ_n g'_n·col_nᵀ`, `∂x_n` the fold (col2im) of `Wᵀ·g'_n`; output
//! side `G` = `g'` unfolded with the opposite shifts, `∂W' = Σ_n G_n·x_nᵀ`, `∂x_n = W'ᵀ·G_n`
//! (per-thread sums of `∂W`; `∂x` skipped when `x` needs no gradient). f32 and f64.
//!
//! burn's composed `conv2d` (plus `relu`) is the reference the tests compare against, and what
//! other backends run.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, Dispatch, Flex};
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Tensor};
use rayon::prelude::*;

use super::fused::{register_input_weight_bias, serves, tensor, values, Real};

/// `act(W ⋆ x + b)`: `x` `[N, C_in, H, W]`, `w` `[C_out, C_in, k, k]` (k odd), `b` `[C_out]` →
/// `[N, C_out, H, W]`, stride 1, zero padding k/2.
#[backend_extension(Flex, Autodiff)]
pub trait ConvBackend: Backend {
    /// The convolution, with a ReLU when `relu`.
    fn conv_same(x: FloatTensor<Self>, w: FloatTensor<Self>, b: FloatTensor<Self>, relu: bool) -> FloatTensor<Self>;
}

/// The backward kernel of [`ConvBackend::conv_same`].
pub trait ConvGrad: Backend {
    /// `(∂x, ∂w, ∂b)` of `⟨g, y⟩`, from the saved `x`, `w` and `y`; `∂x` only when `want_x`.
    fn conv_same_backward(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        y: FloatTensor<Self>,
        g: FloatTensor<Self>,
        relu: bool,
        want_x: bool,
    ) -> (Option<FloatTensor<Self>>, FloatTensor<Self>, FloatTensor<Self>);
}

/// Whether the fused convolution serves tensors like `x` (the CPU device, f32 or f64) and has
/// not been switched off with `DIFFEO_COMPOSED_CONV=1`.
pub fn supported(x: &Tensor<4>) -> bool {
    static SWITCHED_OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    serves(&x.device(), x.dtype(), &SWITCHED_OFF, "DIFFEO_COMPOSED_CONV")
}

/// `act(W ⋆ x + b)`, fused on the CPU, composed (burn's `conv2d`, then `relu`) elsewhere.
pub fn conv_same(x: Tensor<4>, w: Tensor<4>, b: Tensor<1>, relu: bool) -> Tensor<4> {
    if supported(&x) {
        return Tensor::from_dispatch(<Dispatch as ConvBackend>::conv_same(x.into_dispatch(), w.into_dispatch(), b.into_dispatch(), relu));
    }
    composed(x, w, b, relu)
}

/// The composed reference: burn's `conv2d` and `relu`.
pub fn composed(x: Tensor<4>, w: Tensor<4>, b: Tensor<1>, relu: bool) -> Tensor<4> {
    let k = w.dims()[2];
    let y = conv2d(x, w, Some(b), ConvOptions::new([1, 1], [k / 2, k / 2], [1, 1], 1));
    if relu {
        burn::tensor::activation::relu(y)
    } else {
        y
    }
}

impl ConvBackend for Flex {
    fn conv_same(x: FlexTensor, w: FlexTensor, b: FlexTensor, relu: bool) -> FlexTensor {
        match x.dtype() {
            DType::F64 => forward::<f64>(&x, &w, &b, relu),
            _ => forward::<f32>(&x, &w, &b, relu),
        }
    }
}

impl ConvGrad for Flex {
    fn conv_same_backward(
        x: FlexTensor,
        w: FlexTensor,
        y: FlexTensor,
        g: FlexTensor,
        relu: bool,
        want_x: bool,
    ) -> (Option<FlexTensor>, FlexTensor, FlexTensor) {
        match x.dtype() {
            DType::F64 => backward::<f64>(&x, &w, &y, &g, relu, want_x),
            _ => backward::<f32>(&x, &w, &y, &g, relu, want_x),
        }
    }
}

impl<B: Backend + ConvBackend + ConvGrad, C: CheckpointStrategy> ConvBackend for Autodiff<B, C> {
    fn conv_same(x: FloatTensor<Self>, w: FloatTensor<Self>, b: FloatTensor<Self>, relu: bool) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct ConvStep;

        impl<B: Backend + ConvGrad> Backward<B, 3> for ConvStep {
            type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, bool);

            fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
                let ids = ops.parents.map(|p| p.map(|node| node.id));
                let g = grads.consume::<B>(&ops.node);
                let (x, w, y, relu) = ops.state;
                register_input_weight_bias::<B>(grads, ids, B::conv_same_backward(x, w, y, g, relu, ids[0].is_some()));
            }
        }

        let guards = [x.node(), w.node(), b.node()];
        let (x, w, b) = (x.into_primitive(), w.into_primitive(), b.into_primitive());
        match ConvStep.prepare::<C>(guards).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let y = B::conv_same(x.clone(), w.clone(), b, relu);
                prep.finish((x, w, y.clone(), relu), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::conv_same(x, w, b, relu)),
        }
    }
}

/// The sizes of one convolution.
#[derive(Clone, Copy)]
struct Sizes {
    n: usize,
    c_in: usize,
    c_out: usize,
    h: usize,
    w: usize,
    k: usize,
}

impl Sizes {
    fn of(x: &FlexTensor, w: &FlexTensor) -> Self {
        let (xs, ws) = (x.layout().shape(), w.layout().shape());
        Self { n: xs[0], c_in: xs[1], h: xs[2], w: xs[3], c_out: ws[0], k: ws[2] }
    }

    fn pixels(&self) -> usize {
        self.h * self.w
    }

    /// Rows of the unfolded image: `C_in·k²`.
    fn depth(&self) -> usize {
        self.c_in * self.k * self.k
    }
}

/// `dst[m×n] (+)= lhs[m×k] · rhs[k×n]` on this thread, with (column, row) strides per operand;
/// `accumulate` adds to `dst` instead of overwriting it.
#[allow(clippy::too_many_arguments)]
fn gemm<T: Real>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [T],
    lhs: &[T],
    (lhs_cs, lhs_rs): (usize, usize),
    rhs: &[T],
    (rhs_cs, rhs_rs): (usize, usize),
    accumulate: bool,
) {
    if m == 0 || n == 0 || k == 0 {
        if !accumulate {
            dst[..m * n].fill(T::ZERO);
        }
        return;
    }
    assert!(dst.len() >= m * n);
    assert!(lhs.len() > (m - 1) * lhs_rs + (k - 1) * lhs_cs);
    assert!(rhs.len() > (k - 1) * rhs_rs + (n - 1) * rhs_cs);
    // SAFETY: the asserts above bound every element the strides reach; dst does not alias the
    // inputs.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            T::ONE,
            T::ONE,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// `dst[i, j] (+)= src[i + di, j + dj]` on `h×w` planes, zero (or nothing added) where the
/// source pixel is outside the plane.
fn shift<T: Real>(src: &[T], dst: &mut [T], (h, w): (usize, usize), (di, dj): (isize, isize), accumulate: bool) {
    // Valid columns: 0 ≤ j + dj < w.
    let (lo, hi) = ((-dj).max(0) as usize, (w as isize - dj).clamp(0, w as isize) as usize);
    for i in 0..h {
        let out = &mut dst[i * w..(i + 1) * w];
        let row = i as isize + di;
        if row < 0 || row >= h as isize || hi <= lo {
            if !accumulate {
                out.fill(T::ZERO);
            }
            continue;
        }
        let line = &src[row as usize * w..(row as usize + 1) * w];
        let from = &line[(lo as isize + dj) as usize..(hi as isize + dj) as usize];
        if accumulate {
            out[lo..hi].iter_mut().zip(from).for_each(|(d, &v)| *d = *d + v);
        } else {
            out[..lo].fill(T::ZERO);
            out[lo..hi].copy_from_slice(from);
            out[hi..].fill(T::ZERO);
        }
    }
}

/// The offset of tap `t = a·k + b` of a k×k kernel: `(a − k/2, b − k/2)`.
fn offset(t: usize, k: usize) -> (isize, isize) {
    ((t / k) as isize - (k / 2) as isize, (t % k) as isize - (k / 2) as isize)
}

/// Unfolds `planes` images `[P, H, W]` into `col` `[P·k², H·W]`: row `p·k² + t` is plane `p`
/// shifted by tap `t`'s offset times `sign` (im2col with `sign` 1).
fn unfold<T: Real>(x: &[T], col: &mut [T], planes: usize, s: Sizes, sign: isize) {
    let (hw, taps) = (s.pixels(), s.k * s.k);
    for p in 0..planes {
        for t in 0..taps {
            let (di, dj) = offset(t, s.k);
            shift(&x[p * hw..(p + 1) * hw], &mut col[(p * taps + t) * hw..][..hw], (s.h, s.w), (sign * di, sign * dj), false);
        }
    }
}

/// The adjoint of [`unfold`]: adds each row `p·k² + t` of `col`, shifted back, onto plane `p` of
/// `out` (col2im with `sign` 1).
fn fold<T: Real>(col: &[T], out: &mut [T], planes: usize, s: Sizes, sign: isize) {
    let (hw, taps) = (s.pixels(), s.k * s.k);
    for p in 0..planes {
        for t in 0..taps {
            let (di, dj) = offset(t, s.k);
            shift(&col[(p * taps + t) * hw..][..hw], &mut out[p * hw..(p + 1) * hw], (s.h, s.w), (-sign * di, -sign * dj), true);
        }
    }
}

/// `w` `[C_out, C_in, k²]` rearranged as `[C_out·k², C_in]` (`output_major`) or `[C_in, C_out·k²]`.
fn rearranged<T: Real>(w: &[T], s: Sizes, output_major: bool) -> Vec<T> {
    let taps = s.k * s.k;
    let mut out = vec![T::ZERO; w.len()];
    for o in 0..s.c_out {
        for c in 0..s.c_in {
            for t in 0..taps {
                let v = w[(o * s.c_in + c) * taps + t];
                let at = if output_major { (o * taps + t) * s.c_in + c } else { c * s.c_out * taps + o * taps + t };
                out[at] = v;
            }
        }
    }
    out
}

/// Whether a k×k convolution unfolds its output side (fewer output than input channels: the
/// last layer of a coupling network) rather than its input (im2col).
fn unfolds_output(s: Sizes) -> bool {
    s.k > 1 && s.c_out < s.c_in
}

/// Images per parallel task: about as many tasks as threads (at least one image each).
fn chunk(n: usize) -> usize {
    n.div_ceil(rayon::current_num_threads().max(1)).max(1)
}

fn forward<T: Real>(x: &FlexTensor, w: &FlexTensor, b: &FlexTensor, relu: bool) -> FlexTensor {
    let s = Sizes::of(x, w);
    let (xv, wv, bv) = (values::<T>(x), values::<T>(w), values::<T>(b));
    let (p, depth, taps) = (s.pixels(), s.depth(), s.k * s.k);
    let output_side = unfolds_output(s);
    let w_out = if output_side { rearranged(&wv, s, true) } else { Vec::new() };
    let mut y = Vec::with_capacity(s.n * s.c_out * p);
    let per = chunk(s.n);
    y.spare_capacity_mut()[..s.n * s.c_out * p].par_chunks_mut(per * s.c_out * p).zip(xv.par_chunks(per * s.c_in * p)).for_each(|(y, x)| {
        let y = zeroed(y);
        let mut buffer = if s.k == 1 { Vec::new() } else { vec![T::ZERO; depth.max(s.c_out * taps) * p] };
        for (y, x) in y.chunks_mut(s.c_out * p).zip(x.chunks(s.c_in * p)) {
            if s.k == 1 {
                gemm((s.c_out, p, s.c_in), y, &wv, (1, s.c_in), x, (1, p), false);
            } else if output_side {
                // z[(o, t), :] = Σ_c W[o, c, t]·x[c, :], then y[o] = Σ_t z[(o, t)] shifted by t.
                let z = &mut buffer[..s.c_out * taps * p];
                gemm((s.c_out * taps, p, s.c_in), z, &w_out, (1, s.c_in), x, (1, p), false);
                y.fill(T::ZERO);
                for o in 0..s.c_out {
                    for t in 0..taps {
                        let (di, dj) = offset(t, s.k);
                        shift(&z[(o * taps + t) * p..][..p], &mut y[o * p..(o + 1) * p], (s.h, s.w), (di, dj), true);
                    }
                }
            } else {
                let col = &mut buffer[..depth * p];
                unfold(x, col, s.c_in, s, 1);
                gemm((s.c_out, p, depth), y, &wv, (1, depth), col, (1, p), false);
            }
            for (row, &bias) in y.chunks_mut(p).zip(bv.iter()) {
                if relu {
                    row.iter_mut().for_each(|v| {
                        let t = *v + bias;
                        *v = if t > T::ZERO { t } else { T::ZERO };
                    });
                } else {
                    row.iter_mut().for_each(|v| *v = *v + bias);
                }
            }
        }
    });
    // SAFETY: the tasks above initialized all `n·C_out·H·W` elements (`zeroed`): `y` and `x`
    // split into the same `⌈n/per⌉` chunks, so every chunk of `y` had a task.
    unsafe { y.set_len(s.n * s.c_out * p) };
    tensor(y, vec![s.n, s.c_out, s.h, s.w])
}

/// A chunk of a new buffer, zeroed by the task that fills it (not by the thread that allocated
/// the whole buffer).
fn zeroed<T: Real>(chunk: &mut [std::mem::MaybeUninit<T>]) -> &mut [T] {
    for v in chunk.iter_mut() {
        v.write(T::ZERO);
    }
    // SAFETY: every element was initialized just above, and `MaybeUninit<T>` has `T`'s layout.
    unsafe { &mut *(chunk as *mut [std::mem::MaybeUninit<T>] as *mut [T]) }
}

fn backward<T: Real>(
    x: &FlexTensor,
    w: &FlexTensor,
    y: &FlexTensor,
    g: &FlexTensor,
    relu: bool,
    want_x: bool,
) -> (Option<FlexTensor>, FlexTensor, FlexTensor) {
    let s = Sizes::of(x, w);
    let (xv, wv, yv, gv) = (values::<T>(x), values::<T>(w), values::<T>(y), values::<T>(g));
    let (p, depth, taps) = (s.pixels(), s.depth(), s.k * s.k);
    let output_side = unfolds_output(s);
    let w_in = if output_side && want_x { rearranged(&wv, s, false) } else { Vec::new() };
    let per = chunk(s.n);
    let image_in = s.c_in * p;
    let gx_len = if want_x { s.n * image_in } else { 0 };
    let mut gx = Vec::with_capacity(gx_len);
    let gx_parts: Vec<Option<&mut [std::mem::MaybeUninit<T>]>> = if want_x {
        gx.spare_capacity_mut()[..gx_len].chunks_mut(per * image_in).map(Some).collect()
    } else {
        (0..s.n.div_ceil(per)).map(|_| None).collect()
    };
    // Per task: g' = g ⊙ act′(y) for its images, their ∂x, and its sums of ∂W (output side: in
    // the [C_out·k², C_in] layout) and ∂b.
    let sums: Vec<(Vec<T>, Vec<T>)> = gv
        .par_chunks(per * s.c_out * p)
        .zip(yv.par_chunks(per * s.c_out * p))
        .zip(xv.par_chunks(per * image_in))
        .zip(gx_parts.into_par_iter())
        .map(|(((g, y), x), gx)| {
            let masked: Vec<T>;
            let g = if relu {
                masked = g.iter().zip(y).map(|(&g, &y)| if y > T::ZERO { g } else { T::ZERO }).collect();
                &masked[..]
            } else {
                g
            };
            let mut gx = gx.map(zeroed);
            let mut gw = vec![T::ZERO; s.c_out * depth];
            let mut gb = vec![T::ZERO; s.c_out];
            let rows = if output_side { s.c_out * taps } else { depth };
            let mut col = if s.k == 1 { Vec::new() } else { vec![T::ZERO; rows * p] };
            let mut dcol = if want_x && s.k != 1 && !output_side { vec![T::ZERO; depth * p] } else { Vec::new() };
            for (i, (g, x)) in g.chunks(s.c_out * p).zip(x.chunks(image_in)).enumerate() {
                for (sum, row) in gb.iter_mut().zip(g.chunks(p)) {
                    *sum = row.iter().fold(*sum, |a, &v| a + v);
                }
                let gx = gx.as_deref_mut().map(|gx| &mut gx[i * image_in..(i + 1) * image_in]);
                if s.k == 1 {
                    // ∂W += g'·xᵀ; ∂x = Wᵀ·g'.
                    gemm((s.c_out, s.c_in, p), &mut gw, g, (1, p), x, (p, 1), true);
                    if let Some(gx) = gx {
                        gemm((s.c_in, p, s.c_out), gx, &wv, (s.c_in, 1), g, (1, p), false);
                    }
                } else if output_side {
                    // G[(o, t), :] = g'[o] shifted by −t; ∂W[(o, t), c] += G·xᵀ; ∂x = W[c, (o, t)]·G.
                    unfold(g, &mut col, s.c_out, s, -1);
                    gemm((s.c_out * taps, s.c_in, p), &mut gw, &col, (1, p), x, (p, 1), true);
                    if let Some(gx) = gx {
                        gemm((s.c_in, p, s.c_out * taps), gx, &w_in, (1, s.c_out * taps), &col, (1, p), false);
                    }
                } else {
                    // ∂W += g'·colᵀ; ∂x = fold(Wᵀ·g').
                    unfold(x, &mut col, s.c_in, s, 1);
                    gemm((s.c_out, depth, p), &mut gw, g, (1, p), &col, (p, 1), true);
                    if let Some(gx) = gx {
                        gemm((depth, p, s.c_out), &mut dcol, &wv, (depth, 1), g, (1, p), false);
                        fold(&dcol, gx, s.c_in, s, 1);
                    }
                }
            }
            (gw, gb)
        })
        .collect();
    let (mut gw, mut gb) = (vec![T::ZERO; s.c_out * depth], vec![T::ZERO; s.c_out]);
    for (w_part, b_part) in sums {
        gw.iter_mut().zip(&w_part).for_each(|(a, &b)| *a = *a + b);
        gb.iter_mut().zip(&b_part).for_each(|(a, &b)| *a = *a + b);
    }
    if output_side {
        // [C_out·k², C_in] → [C_out, C_in, k²].
        let mut back = vec![T::ZERO; gw.len()];
        for o in 0..s.c_out {
            for c in 0..s.c_in {
                for t in 0..taps {
                    back[(o * s.c_in + c) * taps + t] = gw[(o * taps + t) * s.c_in + c];
                }
            }
        }
        gw = back;
    }
    // SAFETY: with `want_x` the tasks initialized all `n·C_in·H·W` elements (`zeroed`; `g`, `y`,
    // `x` and `∂x` split into the same `⌈n/per⌉` chunks); else the length is 0.
    unsafe { gx.set_len(gx_len) };
    let gx = want_x.then(|| tensor(gx, vec![s.n, s.c_in, s.h, s.w]));
    (gx, tensor(gw, vec![s.c_out, s.c_in, s.k, s.k]), tensor(gb, vec![s.c_out]))
}

//! The fused dense layer for the CPU (Flex) backend: `act(x·W + b)` as one backend operation with
//! a hand-written backward, instead of matmul, bias broadcast, activation and their backward
//! steps as separate graph nodes with their own allocations.
//!
//! Forward: one GEMM into the output buffer, then bias and activation in the same pass. Backward
//! (from the saved input, weights and output): `g' = g ⊙ act′(y)` (the activation's derivative is
//! a function of its output for ReLU, tanh and ELU), `∂x = g'·Wᵀ` (skipped when `x` needs no
//! gradient, e.g. the data entering the first layer), `∂W = xᵀ·g'`, `∂b = Σ_rows g'`. GEMMs run
//! single-threaded below ~8 M multiply-adds (the batch is then usually split across threads by the
//! fit already) and on all threads above. f32 and f64.
//!
//! The composed version ([`Dense`](super::Dense) / [`MaskedDense`](super::MaskedDense) with a
//! separate activation) is the reference the tests compare against, and what other backends run.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, Dispatch, Flex};
use burn::tensor::{DType, Tensor, TensorData};
use rayon::prelude::*;
use std::sync::OnceLock;

use super::Activation;

/// Multiply-adds above which a GEMM uses every thread.
const PARALLEL_GEMM: usize = 8 << 20;

/// How many leading inputs each output unit of a masked layer reads: `reach[j]` = 1 + the last
/// input row whose weight into unit `j` the mask keeps (0: none). The kernels skip the zero
/// blocks beyond it (a staircase when units are numbered in order of degree).
pub type Reach = std::sync::Arc<[usize]>;

/// `act(x·w + b)` as one backend operation: `x` `[N, I]`, `w` `[I, O]`, `b` `[O]` → `[N, O]`.
#[backend_extension(Flex, Autodiff)]
pub trait DenseBackend: Backend {
    /// The layer; `activation` `None` is the affine map alone; with `reach`, `w` must be zero
    /// beyond it (a masked weight), and those blocks are skipped.
    fn dense(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        b: FloatTensor<Self>,
        activation: Option<Activation>,
        reach: Option<Reach>,
    ) -> FloatTensor<Self>;
}

/// The backward kernel of [`DenseBackend::dense`].
pub trait DenseGrad: Backend {
    /// `(∂x, ∂w, ∂b)` of `⟨g, y⟩` for `y = act(x·w + b)`, from the saved `x`, `w` and `y`;
    /// `∂x` only when `want_x`.
    /// With `reach`, `∂w` is zero beyond it (the mask's product zeroes it there anyway).
    #[allow(clippy::too_many_arguments)]
    fn dense_backward(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        y: FloatTensor<Self>,
        g: FloatTensor<Self>,
        activation: Option<Activation>,
        reach: Option<&[usize]>,
        want_x: bool,
    ) -> (Option<FloatTensor<Self>>, FloatTensor<Self>, FloatTensor<Self>);
}

/// Whether the fused layer serves tensors like `x` (the CPU device, f32 or f64) and has not been
/// switched off with `DIFFEO_COMPOSED_DENSE=1`.
pub fn supported(x: &Tensor<2>) -> bool {
    static SWITCHED_OFF: OnceLock<bool> = OnceLock::new();
    serves(&x.device(), x.dtype(), &SWITCHED_OFF, "DIFFEO_COMPOSED_DENSE")
}

/// Whether a fused CPU kernel serves tensors on `device` of `dtype` (the CPU, f32 or f64), unless
/// the environment variable `off` — read once into `switched_off` — is set to anything but `0`.
pub(crate) fn serves(device: &burn::tensor::Device, dtype: DType, switched_off: &OnceLock<bool>, off: &str) -> bool {
    let composed = *switched_off.get_or_init(|| std::env::var(off).is_ok_and(|v| v != "0"));
    !composed && crate::on_cpu(device) && matches!(dtype, DType::F32 | DType::F64)
}

/// Registers the gradients a backward step computed for its parents `(x, w, b)`: `∂x` where `x`
/// is tracked (and it was computed), `∂w` and `∂b` where those are tracked.
pub(crate) fn register_input_weight_bias<B: Backend>(
    grads: &mut Gradients,
    [x, w, b]: [Option<NodeId>; 3],
    (gx, gw, gb): (Option<FloatTensor<B>>, FloatTensor<B>, FloatTensor<B>),
) {
    if let (Some(id), Some(gx)) = (x, gx) {
        grads.register::<B>(id, gx);
    }
    if let Some(id) = w {
        grads.register::<B>(id, gw);
    }
    if let Some(id) = b {
        grads.register::<B>(id, gb);
    }
}

/// The fused layer on a supported device (`reach`: see [`Reach`]).
pub fn dense(x: Tensor<2>, w: Tensor<2>, b: Tensor<1>, activation: Option<Activation>, reach: Option<Reach>) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as DenseBackend>::dense(x.into_dispatch(), w.into_dispatch(), b.into_dispatch(), activation, reach))
}

impl DenseBackend for Flex {
    fn dense(x: FlexTensor, w: FlexTensor, b: FlexTensor, activation: Option<Activation>, reach: Option<Reach>) -> FlexTensor {
        let reach = reach.as_deref();
        match x.dtype() {
            DType::F64 => forward::<f64>(&x, &w, &b, activation, reach),
            _ => forward::<f32>(&x, &w, &b, activation, reach),
        }
    }
}

impl DenseGrad for Flex {
    fn dense_backward(
        x: FlexTensor,
        w: FlexTensor,
        y: FlexTensor,
        g: FlexTensor,
        activation: Option<Activation>,
        reach: Option<&[usize]>,
        want_x: bool,
    ) -> (Option<FlexTensor>, FlexTensor, FlexTensor) {
        match x.dtype() {
            DType::F64 => backward::<f64>(&x, &w, &y, &g, activation, reach, want_x),
            _ => backward::<f32>(&x, &w, &y, &g, activation, reach, want_x),
        }
    }
}

impl<B: Backend + DenseBackend + DenseGrad, C: CheckpointStrategy> DenseBackend for Autodiff<B, C> {
    fn dense(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        b: FloatTensor<Self>,
        activation: Option<Activation>,
        reach: Option<Reach>,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct DenseStep;

        impl<B: Backend + DenseGrad> Backward<B, 3> for DenseStep {
            type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, Option<Activation>, Option<Reach>);

            fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
                let ids = ops.parents.map(|p| p.map(|node| node.id));
                let g = grads.consume::<B>(&ops.node);
                let (x, w, y, activation, reach) = ops.state;
                register_input_weight_bias::<B>(grads, ids, B::dense_backward(x, w, y, g, activation, reach.as_deref(), ids[0].is_some()));
            }
        }

        let guards = [x.node(), w.node(), b.node()];
        let (x, w, b) = (x.into_primitive(), w.into_primitive(), b.into_primitive());
        match DenseStep.prepare::<C>(guards).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let y = B::dense(x.clone(), w.clone(), b, activation, reach.clone());
                prep.finish((x, w, y.clone(), activation, reach), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::dense(x, w, b, activation, reach)),
        }
    }
}

/// What the kernels need of their float types (f32 and f64).
pub(crate) trait Real:
    Copy
    + Send
    + Sync
    + 'static
    + burn::tensor::Element
    + bytemuck::Pod
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + PartialOrd
{
    const ZERO: Self;
    const ONE: Self;
    fn tanh(self) -> Self;
    fn exp_m1(self) -> Self;
    fn sqrt(self) -> Self;
    /// The value in f64 (exact).
    fn to_f64(self) -> f64;
    /// `v` rounded to this type.
    fn from_f64(v: f64) -> Self;
}

impl Real for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn tanh(self) -> Self {
        f32::tanh(self)
    }
    /// `eˣ − 1` without a library call, so that loops over it vectorize: `x = n·ln 2 + r`,
    /// `|r| ≤ ln 2 / 2`, `eʳ − 1 = r + r²·P(r)` (Cephes' `expf` polynomial), then
    /// `eˣ − 1 = 2ⁿ·(eʳ − 1) + (2ⁿ − 1)` — relative accuracy near 0 kept. Within 2 ulp of
    /// `f32::exp_m1` for x ∈ [−87, 88] (`fast_exp_m1_matches_the_library`).
    fn exp_m1(self) -> Self {
        let x = self.clamp(-87.0, 88.0);
        // Round to nearest by the 1.5·2²³ trick: the low mantissa bits of `t` hold n (no call
        // to `round`, no float-to-integer conversion: the loop vectorizes).
        let t = x * std::f32::consts::LOG2_E + 12_582_912.0;
        let n = t - 12_582_912.0;
        let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
        let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 0.166_666_65) * r + 0.5;
        let q = r + r * r * p;
        let s = f32::from_bits(t.to_bits().wrapping_sub(0x4B40_0000).wrapping_add(127) << 23);
        s * q + (s - 1.0)
    }
}

impl Real for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
    fn to_f64(self) -> f64 {
        self
    }
    fn from_f64(v: f64) -> Self {
        v
    }
    fn tanh(self) -> Self {
        f64::tanh(self)
    }
    fn exp_m1(self) -> Self {
        f64::exp_m1(self)
    }
}

/// A contiguous row-major view of a 1-D or 2-D tensor (copied only if it is not contiguous).
pub(crate) fn values<T: Real>(t: &FlexTensor) -> std::borrow::Cow<'_, [T]> {
    match t.as_slice::<T>() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(t.to_contiguous().as_slice::<T>().map(<[T]>::to_vec).unwrap_or_default()),
    }
}

pub(crate) fn shape2(t: &FlexTensor) -> (usize, usize) {
    let s = t.layout().shape();
    (s[0], s[1])
}

pub(crate) fn tensor<T: Real>(v: Vec<T>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(v, shape))
}

/// [`gemm_with`] on every thread when the product is large, else on this one.
fn gemm<T: Real>(mnk: (usize, usize, usize), dst: &mut [T], lhs: &[T], ls: (usize, usize), rhs: &[T], rs: (usize, usize)) {
    let parallel = mnk.0 * mnk.1 * mnk.2 >= PARALLEL_GEMM;
    gemm_with(mnk, dst, mnk.1, lhs, ls, rhs, rs, parallel);
}

/// `dst[m×n] = lhs[m×k] · rhs[k×n]` with explicit (column, row) strides for each input and the
/// row stride `dst_rs` of the output (`k = 0`: zeros).
#[allow(clippy::too_many_arguments)]
fn gemm_with<T: Real>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [T],
    dst_rs: usize,
    lhs: &[T],
    (lhs_cs, lhs_rs): (usize, usize),
    rhs: &[T],
    (rhs_cs, rhs_rs): (usize, usize),
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(dst.len() >= (m - 1) * dst_rs + n && n <= dst_rs);
    if k == 0 {
        dst.chunks_mut(dst_rs).take(m).for_each(|row| row[..n].fill(T::ZERO));
        return;
    }
    assert!(lhs.len() > (m - 1) * lhs_rs + (k - 1) * lhs_cs);
    assert!(rhs.len() > (k - 1) * rhs_rs + (n - 1) * rhs_cs);
    let parallelism = if parallel { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
    // SAFETY: the asserts above bound every element the strides reach; dst is not read
    // (read_dst = false) and does not alias the inputs.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            false,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            T::ZERO,
            T::ONE,
            false,
            false,
            false,
            parallelism,
        );
    }
}

fn activate<T: Real>(v: T, activation: Option<Activation>) -> T {
    match activation {
        None => v,
        Some(Activation::Relu) => {
            if v > T::ZERO {
                v
            } else {
                T::ZERO
            }
        }
        Some(Activation::Tanh) => v.tanh(),
        Some(Activation::Elu) => {
            if v > T::ZERO {
                v
            } else {
                v.exp_m1()
            }
        }
    }
}

/// `act′` as a function of the activation's output `y`.
fn derivative<T: Real>(y: T, activation: Option<Activation>) -> T {
    match activation {
        None => T::ONE,
        Some(Activation::Relu) => {
            if y > T::ZERO {
                T::ONE
            } else {
                T::ZERO
            }
        }
        Some(Activation::Tanh) => T::ONE - y * y,
        Some(Activation::Elu) => {
            if y > T::ZERO {
                T::ONE
            } else {
                y + T::ONE
            }
        }
    }
}

/// `y += b` then `y = act(y)` over rows of width `b.len()`, one loop per activation so that each
/// vectorizes.
fn bias_activation<T: Real>(y: &mut [T], b: &[T], activation: Option<Activation>) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function is compiled for.
        unsafe { bias_activation_avx2(y, b, activation) };
        return;
    }
    bias_activation_portable(y, b, activation);
}

/// [`bias_activation_portable`] compiled for AVX2 and FMA (eight f32 lanes instead of SSE2's four;
/// the build targets baseline x86-64, so only code marked like this uses them). LLVM does not
/// contract `a·b + c` into an FMA on its own, so the results are the same.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn bias_activation_avx2<T: Real>(y: &mut [T], b: &[T], activation: Option<Activation>) {
    bias_activation_portable(y, b, activation)
}

/// `y ← act(y + b)` row by row.
#[inline(always)]
fn bias_activation_portable<T: Real>(y: &mut [T], b: &[T], activation: Option<Activation>) {
    macro_rules! each {
        ($f:expr) => {
            for row in y.chunks_exact_mut(b.len()) {
                for (v, &bias) in row.iter_mut().zip(b) {
                    *v = $f(*v + bias);
                }
            }
        };
    }
    match activation {
        None => each!(|v: T| v),
        Some(Activation::Relu) => each!(|v: T| if v > T::ZERO { v } else { T::ZERO }),
        Some(Activation::Elu) => each!(|v: T| {
            let negative = if v > T::ZERO { T::ZERO } else { v };
            let e = negative.exp_m1();
            if v > T::ZERO {
                v
            } else {
                e
            }
        }),
        Some(a) => each!(|v: T| activate(v, Some(a))),
    }
}

/// The GEMMs of a masked layer with `reach` ([`Reach`]): columns cut every
/// [`STAIRCASE_COLUMNS`], each group `(first column, end column, inputs read)` reading the
/// inputs its columns reach, merged while that stays the same. Without `reach`: one GEMM.
pub(crate) fn column_groups(reach: Option<&[usize]>, inputs: usize, outputs: usize) -> Vec<(usize, usize, usize)> {
    match reach.filter(|r| r.len() == outputs) {
        Some(reach) => staircase_groups(outputs, |c0, c1| reach[c0..c1].iter().copied().max().unwrap_or(0).min(inputs)),
        None => vec![(0, outputs, inputs)],
    }
}

/// Columns `0..outputs` cut every [`STAIRCASE_COLUMNS`] (a multiple of the GEMM kernels' 16 rows
/// of the transposed product) into groups `(first column, end column, inputs read)`, with
/// `reads(c0, c1)` the inputs columns `c0..c1` read; neighbours reading the same are merged.
fn staircase_groups(outputs: usize, reads: impl Fn(usize, usize) -> usize) -> Vec<(usize, usize, usize)> {
    let mut groups: Vec<(usize, usize, usize)> = Vec::new();
    for c0 in (0..outputs).step_by(STAIRCASE_COLUMNS) {
        let c1 = (c0 + STAIRCASE_COLUMNS).min(outputs);
        let k = reads(c0, c1);
        match groups.last_mut() {
            Some(g) if g.2 == k => g.1 = c1,
            _ => groups.push((c0, c1, k)),
        }
    }
    groups
}

/// `dst[m×o] = x[m×i] · w[i×o]` by column groups ([`column_groups`]).
fn grouped_gemm<T: Real>((m, i, o): (usize, usize, usize), dst: &mut [T], x: &[T], w: &[T], groups: &[(usize, usize, usize)], parallel: bool) {
    for &(c0, c1, k) in groups {
        gemm_with((m, c1 - c0, k), &mut dst[c0..], o, x, (1, i), &w[c0..], (1, o), parallel);
    }
}

fn forward<T: Real>(x: &FlexTensor, w: &FlexTensor, b: &FlexTensor, activation: Option<Activation>, reach: Option<&[usize]>) -> FlexTensor {
    let ((n, i), (_, o)) = (shape2(x), shape2(w));
    let (xv, wv, bv) = (values::<T>(x), values::<T>(w), values::<T>(b));
    let mut y = vec![T::ZERO; n * o];
    if o == 0 || n == 0 {
        return tensor(y, vec![n, o]);
    }
    let groups = column_groups(reach, i, o);
    let threads = rayon::current_num_threads();
    if n * o * i >= PARALLEL_GEMM && threads > 1 && n >= 2 * threads {
        // Rows split across threads: each chunk's GEMM, bias and activation stay on one core.
        let rows = n.div_ceil(threads);
        y.par_chunks_mut(rows * o).zip(xv.par_chunks(rows * i)).for_each(|(y, x)| {
            let m = y.len() / o;
            grouped_gemm((m, i, o), y, x, &wv, &groups, false);
            bias_activation(y, &bv, activation);
        });
    } else {
        grouped_gemm((n, i, o), &mut y, &xv, &wv, &groups, n * o * i >= PARALLEL_GEMM);
        bias_activation(&mut y, &bv, activation);
    }
    tensor(y, vec![n, o])
}

/// Rows each task of [`stack`] carries through every layer (its activations stay in cache).
const STACK_ROWS: usize = 256;

/// Columns of one GEMM of a [`Staircase`] layer.
const STAIRCASE_COLUMNS: usize = 32;

/// The degrees of MADE's units, layer by layer (inputs, each hidden layer, outputs): a weight
/// `i → j` can be non-zero only when `deg_in[i] ≤ deg_out[j]` (`<` into the outputs). With the
/// units sorted by degree, each layer's weight matrix is a staircase: the units of degree `m`
/// read only the first `upto(m)` inputs, and the network costs about half the multiply-adds of a
/// dense one for large D (`(D − 1) / 2` of `D − 1` degree blocks on average).
pub struct Staircase<'a> {
    /// `degrees[l]`: the degrees of layer `l`'s units (`l = 0`: the inputs; last: the outputs).
    pub degrees: &'a [Vec<usize>],
}

/// An inference network `act_L(… act_1(x·W₁ + b₁ [+ e]) … ·W_L + b_L)` with every layer run on one
/// block of rows at a time: each task takes [`STACK_ROWS`] rows through the whole stack, so the
/// hidden activations stay in the core's cache and are never allocated at full height. `extra`
/// `[N, O₁]` is added to the first layer's pre-activation (a context term); `staircase` skips the
/// weights a MADE mask holds at zero. Only for tensors without autodiff on the CPU in f32 or f64
/// (`None` otherwise: the caller composes the layers).
pub fn dense_stack(
    x: &Tensor<2>,
    layers: &[(Tensor<2>, Tensor<1>, Option<Activation>)],
    extra: Option<&Tensor<2>>,
    staircase: Option<&Staircase<'_>>,
) -> Option<Tensor<2>> {
    if !supported(x) || x.is_autodiff() || layers.is_empty() {
        return None;
    }
    let xf = crate::custom_op::flex_of(x.clone())?;
    let extra = match extra {
        Some(e) => Some(crate::custom_op::flex_of(e.clone())?),
        None => None,
    };
    let mut flex = Vec::with_capacity(layers.len());
    for (w, b, a) in layers {
        flex.push((crate::custom_op::flex_of(w.clone())?, crate::custom_op::flex_of(b.clone().unsqueeze::<2>())?, *a));
    }
    let y = match xf.dtype() {
        DType::F64 => stack::<f64>(&xf, &flex, extra.as_ref(), staircase)?,
        DType::F32 => stack::<f32>(&xf, &flex, extra.as_ref(), staircase)?,
        _ => return None,
    };
    Some(crate::custom_op::plain(y))
}

/// A layer's weights, bias and activation as slices.
type LayerValues<'a, T> = (std::borrow::Cow<'a, [T]>, std::borrow::Cow<'a, [T]>, Option<Activation>);

/// One layer of [`stack`] ready to run: weights `[i, o]` and bias with the units in the order
/// computed, the GEMMs that cover its columns: `(first column, end column, inputs read)`, and
/// which unit each computed column is (`None`: the units' own order).
struct StackLayer<'a, T: Clone> {
    weight: std::borrow::Cow<'a, [T]>,
    bias: std::borrow::Cow<'a, [T]>,
    activation: Option<Activation>,
    groups: Vec<(usize, usize, usize)>,
    order: Option<Vec<usize>>,
}

/// Sorts each layer's units by degree (inputs stay in their order) and splits the columns into
/// GEMMs of [`STAIRCASE_COLUMNS`] columns, each reading the inputs its last column needs.
fn staircase_layers<'a, T: Real>(
    weights: Vec<LayerValues<'a, T>>,
    widths: &[usize],
    degrees: &[Vec<usize>],
) -> Option<Vec<StackLayer<'a, T>>> {
    if degrees.len() != widths.len() || degrees.iter().zip(widths).any(|(d, &w)| d.len() != w) {
        return None;
    }
    let last = weights.len() - 1;
    let sorted = |deg: &[usize]| {
        let mut perm: Vec<usize> = (0..deg.len()).collect();
        perm.sort_by_key(|&u| (deg[u], u));
        perm
    };
    let mut rows: Vec<usize> = (0..widths[0]).collect();
    let mut out = Vec::with_capacity(weights.len());
    for (l, (w, b, activation)) in weights.into_iter().enumerate() {
        let (i, o) = (widths[l], widths[l + 1]);
        let cols = sorted(&degrees[l + 1]);
        // Units already in order of degree (MADE with sorted units) keep their weights in place.
        let identity = |p: &[usize]| p.iter().enumerate().all(|(i, &u)| i == u);
        let in_place = identity(&cols);
        let (weight, bias) = if in_place && identity(&rows) {
            (w, b)
        } else {
            let weight: Vec<T> = rows.iter().flat_map(|&r| cols.iter().map(move |&c| (r, c))).map(|(r, c)| w[r * o + c]).collect();
            (weight.into(), cols.iter().map(|&c| b[c]).collect::<Vec<T>>().into())
        };
        // Inputs (in the order they are computed) a unit of degree m reads.
        let reads = |m: usize| rows.iter().rposition(|&r| if l == last { degrees[l][r] < m } else { degrees[l][r] <= m }).map_or(0, |p| p + 1);
        // Columns in order of degree: a group reads what its last column reads.
        let groups = staircase_groups(o, |_, c1| if l == 0 { i } else { reads(degrees[l + 1][cols[c1 - 1]]) });
        out.push(StackLayer { weight, bias, activation, groups, order: (!in_place).then(|| cols.clone()) });
        rows = cols;
    }
    Some(out)
}

fn stack<T: Real>(
    x: &FlexTensor,
    layers: &[(FlexTensor, FlexTensor, Option<Activation>)],
    extra: Option<&FlexTensor>,
    staircase: Option<&Staircase<'_>>,
) -> Option<FlexTensor> {
    let (n, d_in) = shape2(x);
    let mut widths = vec![d_in];
    for (w, b, _) in layers {
        let (i, o) = shape2(w);
        if i != *widths.last()? || b.layout().shape().iter().product::<usize>() != o || w.dtype() != x.dtype() || b.dtype() != x.dtype() {
            return None;
        }
        widths.push(o);
    }
    if extra.is_some_and(|e| shape2(e) != (n, widths[1]) || e.dtype() != x.dtype()) {
        return None;
    }
    let out = *widths.last()?;
    let xv = values::<T>(x);
    let weights: Vec<_> = layers.iter().map(|(w, b, a)| (values::<T>(w), values::<T>(b), *a)).collect();
    let layers: Vec<StackLayer<'_, T>> = match staircase {
        Some(s) => staircase_layers(weights, &widths, s.degrees)?,
        None => weights
            .into_iter()
            .enumerate()
            .map(|(l, (weight, bias, activation))| StackLayer { weight, bias, activation, groups: vec![(0, widths[l + 1], widths[l])], order: None })
            .collect(),
    };
    // The context term follows the first layer's units into their computed order; the outputs
    // go back to theirs.
    let (first_order, out_order) = (&layers[0].order, &layers[layers.len() - 1].order);
    let ev = extra.map(values::<T>);
    let widest = widths[1..].iter().copied().max().unwrap_or(0);
    let zeros = vec![T::ZERO; widths[1]];
    let mut y = vec![T::ZERO; n * out];
    if n == 0 || out == 0 {
        return Some(tensor(y, vec![n, out]));
    }
    let block = |(chunk, y): (usize, &mut [T]), scratch: &mut (Vec<T>, Vec<T>)| {
        let rows = y.len() / out;
        let r0 = chunk * STACK_ROWS;
        let (a, b) = scratch;
        a.resize(rows * widest, T::ZERO);
        b.resize(rows * widest, T::ZERO);
        let last = layers.len() - 1;
        for (l, layer) in layers.iter().enumerate() {
            let (i, o) = (widths[l], widths[l + 1]);
            let input: &[T] = if l == 0 { &xv[r0 * i..(r0 + rows) * i] } else { &a[..rows * i] };
            let direct = l == last && out_order.is_none();
            let dst: &mut [T] = if direct { &mut *y } else { &mut b[..rows * o] };
            for &(c0, c1, k) in &layer.groups {
                assert!(k <= i && c1 <= o);
                gemm_with((rows, c1 - c0, k), &mut dst[c0..], o, input, (1, i), &layer.weight[c0..], (1, o), false);
            }
            match (l, &ev) {
                (0, Some(e)) => {
                    // (x·W + b) + e, then the activation: the layer-by-layer order of additions.
                    bias_activation(dst, &layer.bias, None);
                    let e = &e[r0 * o..(r0 + rows) * o];
                    for (row, erow) in dst.chunks_exact_mut(o).zip(e.chunks_exact(o)) {
                        match first_order {
                            Some(p) => row.iter_mut().zip(p).for_each(|(v, &c)| *v = *v + erow[c]),
                            None => row.iter_mut().zip(erow).for_each(|(v, &t)| *v = *v + t),
                        }
                    }
                    if layer.activation.is_some() {
                        bias_activation(dst, &zeros[..o], layer.activation);
                    }
                }
                _ => bias_activation(dst, &layer.bias, layer.activation),
            }
            if l == last {
                if let Some(order) = out_order {
                    for (yrow, row) in y.chunks_exact_mut(o).zip(b.chunks_exact(o)) {
                        for (&c, &v) in order.iter().zip(row) {
                            yrow[c] = v;
                        }
                    }
                }
            } else {
                std::mem::swap(a, b);
            }
        }
    };
    let threads = rayon::current_num_threads();
    if n > STACK_ROWS && threads > 1 {
        // A few tasks per thread, each with its scratch made once for its run of blocks
        // (`for_each_init` makes one per split of the job: zeroing it cost 5 % of the stack).
        let blocks = n.div_ceil(STACK_ROWS);
        let per_task = blocks.div_ceil(4 * threads);
        y.par_chunks_mut(per_task * STACK_ROWS * out).enumerate().for_each(|(t, run)| {
            let mut scratch = (Vec::new(), Vec::new());
            for (j, c) in run.chunks_mut(STACK_ROWS * out).enumerate() {
                block((t * per_task + j, c), &mut scratch);
            }
        });
    } else {
        let mut scratch = (Vec::new(), Vec::new());
        y.chunks_mut(STACK_ROWS * out).enumerate().for_each(|c| block(c, &mut scratch));
    }
    Some(tensor(y, vec![n, out]))
}

fn backward<T: Real>(
    x: &FlexTensor,
    w: &FlexTensor,
    y: &FlexTensor,
    g: &FlexTensor,
    activation: Option<Activation>,
    reach: Option<&[usize]>,
    want_x: bool,
) -> (Option<FlexTensor>, FlexTensor, FlexTensor) {
    let ((n, i), (_, o)) = (shape2(x), shape2(w));
    let parallel = n * i * o >= PARALLEL_GEMM;
    let reach = reach.filter(|r| r.len() == o);
    let (xv, wv, yv, gv) = (values::<T>(x), values::<T>(w), values::<T>(y), values::<T>(g));
    // g' = g ⊙ act′(y)
    let gp: std::borrow::Cow<'_, [T]> = match activation {
        None => gv,
        Some(Activation::Relu) => {
            gv.iter().zip(yv.iter()).map(|(&g, &y)| if y > T::ZERO { g } else { T::ZERO }).collect::<Vec<T>>().into()
        }
        Some(_) => gv.iter().zip(yv.iter()).map(|(&g, &y)| g * derivative(y, activation)).collect::<Vec<T>>().into(),
    };
    // ∂x = g'·Wᵀ: Wᵀ[k, j] = w[j·o + k], column stride o, row stride 1. With `reach`, inputs
    // r0..r1 take only the columns from the first one that reads r0 (the others' weights on
    // them are zero).
    let gx = want_x.then(|| {
        let mut gx = vec![T::ZERO; n * i];
        match reach {
            None => gemm((n, i, o), &mut gx, &gp, (1, o), &wv, (o, 1)),
            Some(reach) if n > 0 => {
                for r0 in (0..i).step_by(STAIRCASE_COLUMNS) {
                    let r1 = (r0 + STAIRCASE_COLUMNS).min(i);
                    let first = reach.iter().position(|&k| k > r0).unwrap_or(o);
                    gemm_with((n, r1 - r0, o - first), &mut gx[r0..], i, &gp[first..], (1, o), &wv[r0 * o + first..], (o, 1), parallel);
                }
            }
            Some(_) => {}
        }
        tensor(gx, vec![n, i])
    });
    // ∂W = xᵀ·g': xᵀ[r, k] = x[k·i + r], column stride i, row stride 1; with `reach`, only the
    // blocks the columns read (zero beyond).
    let mut gw = vec![T::ZERO; i * o];
    if n > 0 {
        for (c0, c1, k) in column_groups(reach, i, o) {
            gemm_with((k, c1 - c0, n), &mut gw[c0..], o, &xv, (i, 1), &gp[c0..], (1, o), parallel);
        }
    }
    let mut gb = vec![T::ZERO; o];
    for row in gp.chunks(o.max(1)) {
        for (s, &v) in gb.iter_mut().zip(row) {
            *s = *s + v;
        }
    }
    (gx, tensor(gw, vec![i, o]), tensor(gb, vec![o]))
}

#[cfg(test)]
mod tests {
    use super::Real;

    #[test]
    fn fast_exp_m1_matches_the_library() {
        let mut worst = 0.0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            for v in [x, x * 1e-3, x * 1e-7] {
                let (got, want) = (Real::exp_m1(v), v.exp_m1());
                let ulp = (want.abs() * f32::EPSILON).max(f32::MIN_POSITIVE);
                worst = worst.max((got - want).abs() / ulp);
            }
            x += 0.0137;
        }
        assert!(worst <= 2.0, "{worst} ulp");
    }
}

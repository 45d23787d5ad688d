//! Thin helpers between host data and burn tensors, and numerically safe elementwise functions.

use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::error::{FlowError, Result};

/// Natural log of 2π.
pub const LN_2PI: f64 = 1.837_877_066_409_345_3;

/// Builds a `[rows, cols]` float tensor from row-major host values.
pub fn matrix(values: Vec<f64>, rows: usize, cols: usize, device: &Device) -> Tensor<2> {
    debug_assert_eq!(values.len(), rows * cols);
    Tensor::from_data(TensorData::new(values, [rows, cols]), device)
}

/// Builds a rank-1 float tensor from host values.
pub fn vector(values: Vec<f64>, device: &Device) -> Tensor<1> {
    let n = values.len();
    Tensor::from_data(TensorData::new(values, [n]), device)
}

/// Builds a rank-1 integer index tensor.
pub fn indices(values: &[usize], device: &Device) -> Tensor<1, Int> {
    let v: Vec<i64> = values.iter().map(|&i| i as i64).collect();
    let n = v.len();
    Tensor::from_data(TensorData::new(v, [n]), device)
}

/// Reads any float tensor back to the host as `f64`, row-major.
pub fn to_vec<const D: usize>(t: Tensor<D>) -> Result<Vec<f64>> {
    t.try_into_vec_as::<f64>()
        .map_err(|e| FlowError::Backend(format!("{e:?}")))
}

/// Reads a one-element tensor as `f64`.
pub fn scalar<const D: usize>(t: Tensor<D>) -> Result<f64> {
    let v = to_vec(t)?;
    v.first()
        .copied()
        .ok_or_else(|| FlowError::Backend("expected a scalar".into()))
}

/// Rows and columns of a matrix.
pub fn dims2(t: &Tensor<2>) -> (usize, usize) {
    let [r, c] = t.dims();
    (r, c)
}

/// Checks that every value of `t` is finite; names the first offender.
pub fn check_finite(t: &Tensor<2>, what: &str) -> Result<()> {
    let (_, cols) = dims2(t);
    check_finite_values(&to_vec(t.clone())?, cols, what)
}

/// Checks that every value of a row-major `[_, cols]` array is finite; names the first
/// offender by row and column.
pub fn check_finite_values(values: &[f64], cols: usize, what: &str) -> Result<()> {
    if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(FlowError::NonFinite {
            what: what.to_string(),
            row: i / cols.max(1),
            col: i % cols.max(1),
            value: *v,
        });
    }
    Ok(())
}

/// Repeats each row `n` times in place: row `j` of `t` becomes rows `j·n .. (j+1)·n`.
pub fn repeat_rows(t: &Tensor<2>, n: usize) -> Tensor<2> {
    let (m, _) = dims2(t);
    let idx: Vec<usize> = (0..m).flat_map(|j| std::iter::repeat_n(j, n)).collect();
    t.clone().select(0, indices(&idx, &t.device()))
}

/// `log(1 + exp(x))`, stable for large |x|.
pub fn softplus<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    burn::tensor::activation::softplus(x, 1.0)
}

/// `log σ(x) = −softplus(−x)`.
pub fn log_sigmoid<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    softplus(x.neg()).neg()
}

/// Row-wise sum of a `[N, D]` tensor, as `[N]`.
pub fn sum_rows(t: Tensor<2>) -> Tensor<1> {
    let (n, _) = dims2(&t);
    t.sum_dim(1).reshape([n])
}

/// Log-sum-exp over dimension `dim` (kept, of size 1), shifted by the detached maximum.
pub fn logsumexp_dim<const D: usize>(t: Tensor<D>, dim: usize) -> Tensor<D> {
    let m = t.clone().max_dim(dim).detach();
    t.sub(m.clone()).exp().sum_dim(dim).log().add(m)
}

/// Row-wise log-sum-exp of a `[N, K]` tensor, as `[N]`.
pub fn logsumexp_rows(t: Tensor<2>) -> Tensor<1> {
    let (n, _) = dims2(&t);
    logsumexp_dim(t, 1).reshape([n])
}

/// `log(1 − tanh²(x)) = 2·(ln 2 − x − softplus(−2x))`, stable for large |x|.
pub fn log_tanh_slope<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    softplus(x.clone().mul_scalar(-2.0)).add(x).neg().add_scalar(std::f64::consts::LN_2).mul_scalar(2.0)
}

/// Soft clipping `a / (1 + |a| / bound)`: the identity near 0, smooth, and bounded by ±bound.
pub fn soft_clip<const D: usize>(a: Tensor<D>, bound: f64) -> Tensor<D> {
    let denom = a.clone().abs().div_scalar(bound).add_scalar(1.0);
    a.div(denom)
}

/// Zeros of shape `[n]` on the device.
pub fn zeros1(n: usize, device: &Device) -> Tensor<1> {
    Tensor::zeros([n], device)
}

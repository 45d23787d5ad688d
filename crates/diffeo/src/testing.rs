//! A correctness harness every bijection must pass (used by this crate's tests, and available
//! to anyone writing a new bijection).
//!
//! For each direction that exists it checks, in the device's float type (use f64):
//! - round trips: `inverse(forward(x)) ≈ x` and `forward(inverse(y)) ≈ y`;
//! - `log|det J|` against the log-determinant of the full Jacobian from central finite
//!   differences (D ≤ 6);
//! - `log|det J_T(x)| = −log|det J_{T⁻¹}(T(x))|`;
//! - finite gradients of `Σ y + Σ log|det J|` with respect to the parameters and the inputs.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;

use crate::bijections::{Bijection, Cost};
use crate::flow::Flow;
use crate::tensor::{matrix, repeat_rows, to_vec};

/// Harness settings.
#[derive(Clone, Debug)]
pub struct HarnessConfig {
    /// Points per check.
    pub n: usize,
    /// Inputs are `offset + scale·N(0, 1)`.
    pub scale: f64,
    /// See `scale`.
    pub offset: f64,
    /// Max |x − inverse(forward(x))| (relative to max(1, |x|)).
    pub roundtrip_tol: f64,
    /// Max |log-det − finite-difference log-det| (relative to max(1, |log-det|)).
    pub logdet_tol: f64,
    /// Finite-difference step.
    pub fd_step: f64,
    /// Whether to check gradients (needs the `autodiff` device support).
    pub gradients: bool,
    /// Seed of the test points.
    pub seed: u64,
    /// The Jacobian the log-dets are checked against.
    pub jacobian: JacobianReference,
}

/// How the harness builds the brute-force Jacobian for the log-det check (for `D ≤ 6`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum JacobianReference {
    /// Central finite differences with step `fd_step`: independent of the layer's gradients, but
    /// noisy where the map is very flat or bends sharply (spline knots).
    #[default]
    FiniteDifferences,
    /// Automatic differentiation (`D` backward passes): exact to rounding, and relies on the
    /// layer's gradients (checked separately for custom kernels).
    Autodiff,
}

impl Default for HarnessConfig {
    fn default() -> Self {
        Self {
            n: 16,
            scale: 1.0,
            offset: 0.0,
            roundtrip_tol: 1e-8,
            logdet_tol: 1e-6,
            fd_step: 1e-5,
            gradients: true,
            seed: 7,
            jacobian: JacobianReference::FiniteDifferences,
        }
    }
}

/// What the harness measured.
#[derive(Clone, Debug, Default)]
pub struct HarnessReport {
    /// Largest round-trip error.
    pub max_roundtrip_error: f64,
    /// Largest log-det error against finite differences.
    pub max_logdet_error: f64,
    /// Largest |ld_forward + ld_inverse|.
    pub max_consistency_error: f64,
    /// Directions checked ("forward", "inverse").
    pub directions: Vec<&'static str>,
}

/// log|det A| of a row-major `d×d` matrix by LU with partial pivoting.
pub fn log_abs_det(a: &[f64], d: usize) -> f64 {
    let mut m = a.to_vec();
    let mut total = 0.0;
    for c in 0..d {
        let p = (c..d).max_by(|&i, &j| m[i * d + c].abs().total_cmp(&m[j * d + c].abs())).unwrap_or(c);
        if m[p * d + c] == 0.0 {
            return f64::NEG_INFINITY;
        }
        if p != c {
            for k in 0..d {
                m.swap(c * d + k, p * d + k);
            }
        }
        let piv = m[c * d + c];
        total += piv.abs().ln();
        for r in c + 1..d {
            let f = m[r * d + c] / piv;
            for k in c..d {
                m[r * d + k] -= f * m[c * d + k];
            }
        }
    }
    total
}

fn random(n: usize, d: usize, scale: f64, offset: f64, rng: &mut StdRng) -> Vec<f64> {
    (0..n * d).map(|_| offset + scale * rng.sample::<f64, _>(StandardNormal)).collect()
}

fn apply<B: Bijection>(b: &B, forward: bool, x: Tensor<2>, c: Option<&Tensor<2>>) -> Result<(Vec<f64>, Vec<f64>), String> {
    let r = if forward { b.forward(x, c) } else { b.inverse(x, c) };
    let (y, ld) = r.map_err(|e| e.to_string())?;
    Ok((to_vec(y).map_err(|e| e.to_string())?, to_vec(ld).map_err(|e| e.to_string())?))
}

/// `b` with its parameters on the autodiff version of `device`.
fn on_autodiff<B: Bijection + Module>(b: &B, device: &Device) -> B {
    if device.is_autodiff() { b.clone() } else { b.clone().train() }
}

/// Brute-force log|det J| of one direction at each of the `n` points.
#[allow(clippy::too_many_arguments)]
fn fd_logdets<B: Bijection + Module>(
    b: &B,
    forward: bool,
    x: &[f64],
    ctx: Option<&[f64]>,
    d: usize,
    c: usize,
    cfg: &HarnessConfig,
    device: &Device,
) -> Result<Vec<f64>, String> {
    match cfg.jacobian {
        JacobianReference::FiniteDifferences => {
            let map = |x: Tensor<2>, c: Option<&Tensor<2>>| apply(b, forward, x, c).map(|r| r.0);
            fd_log_abs_det_jacobians(map, x, ctx.map(|v| (v, c)), d, cfg.fd_step, device)
        }
        JacobianReference::Autodiff => {
            let ad = device.clone().autodiff();
            let b_ad = on_autodiff(b, device);
            let n = x.len() / d.max(1);
            let ct = ctx.map(|v| matrix(v.to_vec(), n, c, &ad));
            let map = |x: Tensor<2>| {
                let r = if forward { b_ad.forward(x, ct.as_ref()) } else { b_ad.inverse(x, ct.as_ref()) };
                r.map(|(y, _)| y).map_err(|e| e.to_string())
            };
            autodiff_log_abs_det_jacobians(map, x, d, &ad)
        }
    }
}

/// log|det J| of `map` at each row of `x` (`[n, d]` row-major) by central finite differences
/// with step `h` (all `2·n·d` perturbed points in one batch); `context` is `(values, width)`,
/// one row per point. `map` returns its outputs row-major.
pub fn fd_log_abs_det_jacobians(
    map: impl Fn(Tensor<2>, Option<&Tensor<2>>) -> Result<Vec<f64>, String>,
    x: &[f64],
    context: Option<(&[f64], usize)>,
    d: usize,
    h: f64,
    device: &Device,
) -> Result<Vec<f64>, String> {
    let n = x.len() / d;
    let rows = n * 2 * d;
    let mut px = Vec::with_capacity(rows * d);
    let mut pc = Vec::new();
    for i in 0..n {
        for j in 0..d {
            for s in [1.0, -1.0] {
                let mut row = x[i * d..(i + 1) * d].to_vec();
                row[j] += s * h;
                px.extend(row);
                if let Some((cv, c)) = context {
                    pc.extend_from_slice(&cv[i * c..(i + 1) * c]);
                }
            }
        }
    }
    let ct = context.map(|(_, c)| matrix(pc, rows, c, device));
    let y = map(matrix(px, rows, d, device), ct.as_ref())?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let mut jac = vec![0.0; d * d];
        for j in 0..d {
            let plus = (i * d + j) * 2;
            let minus = plus + 1;
            for r in 0..d {
                jac[r * d + j] = (y[plus * d + r] - y[minus * d + r]) / (2.0 * h);
            }
        }
        out.push(log_abs_det(&jac, d));
    }
    Ok(out)
}

/// log|det J| of `map` at each row of `x` (`[n, d]` row-major) from the exact Jacobian, built
/// by automatic differentiation: `d` backward passes, one per output coordinate. `device` must
/// be an autodiff device and `map` must run on it (e.g. a module moved there with `train()`).
/// Unlike finite differences this is exact at ReLU kinks.
pub fn autodiff_log_abs_det_jacobians(
    map: impl Fn(Tensor<2>) -> Result<Tensor<2>, String>,
    x: &[f64],
    d: usize,
    device: &Device,
) -> Result<Vec<f64>, String> {
    let n = x.len() / d;
    let mut jac = vec![0.0; n * d * d];
    for i in 0..d {
        let xt = matrix(x.to_vec(), n, d, device).require_grad();
        let y = map(xt.clone())?;
        let grads = y.narrow(1, i, 1).sum().backward();
        let g = xt.grad(&grads).ok_or("no gradient reached the inputs")?;
        let g = to_vec(g).map_err(|e| e.to_string())?;
        for p in 0..n {
            for j in 0..d {
                jac[p * d * d + i * d + j] = g[p * d + j];
            }
        }
    }
    Ok(jac.chunks_exact(d * d).map(|m| log_abs_det(m, d)).collect())
}

/// Compares values elementwise with a relative tolerance, tracking the largest error.
fn compare(
    actual: &[f64],
    expected: &[f64],
    tol: f64,
    max_err: &mut f64,
    describe: impl Fn(f64, f64) -> String,
) -> Result<(), String> {
    for (a, e) in actual.iter().zip(expected) {
        let err = (a - e).abs() / 1f64.max(e.abs());
        *max_err = max_err.max(err);
        if err > tol {
            return Err(describe(*a, *e));
        }
    }
    Ok(())
}

struct GradCheck<'a> {
    grads: &'a burn::tensor::Gradients,
    bad: Vec<String>,
    count: usize,
}

impl ModuleVisitor for GradCheck<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = param.val().grad(self.grads) {
            self.count += 1;
            match g.try_into_vec_as::<f64>() {
                Ok(v) if v.iter().all(|x| x.is_finite()) => {}
                _ => self.bad.push(format!("parameter {:?}", param.id)),
            }
        }
    }
}

/// Runs the harness on `b` (its parameters on `device`); returns what was measured or a
/// description of the first failure.
pub fn check_bijection<B: Bijection + Module>(b: &B, device: &Device, cfg: &HarnessConfig) -> Result<HarnessReport, String> {
    let d = b.dim();
    let c = b.context_dim();
    let n = cfg.n;
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let x = random(n, d, cfg.scale, cfg.offset, &mut rng);
    let ctx = (c > 0).then(|| random(n, c, 1.0, 0.0, &mut rng));
    let ct = ctx.as_ref().map(|v| matrix(v.clone(), n, c, device));
    let dirs = b.directions();
    let mut report = HarnessReport::default();

    // Points on the data side: T(x) when the forward pass exists, else x itself.
    let mut y = x.clone();
    if dirs.forward != Cost::Unavailable {
        report.directions.push("forward");
        let (yv, ldf) = apply(b, true, matrix(x.clone(), n, d, device), ct.as_ref())?;
        if yv.iter().chain(&ldf).any(|v| !v.is_finite()) {
            return Err(format!("{}: forward produced non-finite values", b.name()));
        }
        if d <= 6 {
            let fd = fd_logdets(b, true, &x, ctx.as_deref(), d, c, cfg, device)?;
            compare(&ldf, &fd, cfg.logdet_tol, &mut report.max_logdet_error, |a, e| {
                format!("{}: forward log-det {a} but finite differences give {e}", b.name())
            })?;
        }
        if dirs.inverse != Cost::Unavailable {
            let (xr, ldi) = apply(b, false, matrix(yv.clone(), n, d, device), ct.as_ref())?;
            compare(&xr, &x, cfg.roundtrip_tol, &mut report.max_roundtrip_error, |a, e| {
                format!("{}: inverse(forward(x)) = {a}, expected {e}", b.name())
            })?;
            let neg_ldf: Vec<f64> = ldf.iter().map(|v| -v).collect();
            compare(&ldi, &neg_ldf, cfg.roundtrip_tol.max(1e-10) * 100.0, &mut report.max_consistency_error, |a, e| {
                format!("{}: inverse log-det {a} is not −(forward log-det) = {e}", b.name())
            })?;
        }
        y = yv;
    }
    if dirs.inverse != Cost::Unavailable {
        report.directions.push("inverse");
        let (xv, ldi) = apply(b, false, matrix(y.clone(), n, d, device), ct.as_ref())?;
        if xv.iter().chain(&ldi).any(|v| !v.is_finite()) {
            return Err(format!("{}: inverse produced non-finite values", b.name()));
        }
        if d <= 6 {
            let fd = fd_logdets(b, false, &y, ctx.as_deref(), d, c, cfg, device)?;
            compare(&ldi, &fd, cfg.logdet_tol, &mut report.max_logdet_error, |a, e| {
                format!("{}: inverse log-det {a} but finite differences give {e}", b.name())
            })?;
        }
        if dirs.forward != Cost::Unavailable {
            let (yr, _) = apply(b, true, matrix(xv, n, d, device), ct.as_ref())?;
            compare(&yr, &y, cfg.roundtrip_tol, &mut report.max_roundtrip_error, |a, e| {
                format!("{}: forward(inverse(y)) = {a}, expected {e}", b.name())
            })?;
        }
    }

    if cfg.gradients {
        let ad = device.clone().autodiff();
        let b_ad = on_autodiff(b, device);
        for (forward, pts) in [(true, &x), (false, &y)] {
            let cost = if forward { dirs.forward } else { dirs.inverse };
            if cost == Cost::Unavailable {
                continue;
            }
            let xt = matrix(pts.clone(), n, d, &ad).require_grad();
            let ctt = ctx.as_ref().map(|v| matrix(v.clone(), n, c, &ad));
            let r = if forward { b_ad.forward(xt.clone(), ctt.as_ref()) } else { b_ad.inverse(xt.clone(), ctt.as_ref()) };
            let (out, ld) = r.map_err(|e| e.to_string())?;
            let grads = out.sum().add(ld.sum()).backward();
            let mut check = GradCheck { grads: &grads, bad: Vec::new(), count: 0 };
            b_ad.visit(&mut check);
            if !check.bad.is_empty() {
                return Err(format!("{}: non-finite gradients for {:?}", b.name(), check.bad));
            }
            if check.count == 0 && b_ad.num_params() > 0 {
                return Err(format!("{}: no gradient reached the parameters", b.name()));
            }
            if let Some(g) = xt.grad(&grads) {
                let v = to_vec(g).map_err(|e| e.to_string())?;
                if v.iter().any(|x| !x.is_finite()) {
                    return Err(format!("{}: non-finite input gradients", b.name()));
                }
            }
        }
    }
    Ok(report)
}

struct Randomize {
    rng: StdRng,
    scale: f64,
}

impl burn::module::ModuleMapper for Randomize {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let rng = &mut self.rng;
        let scale = self.scale;
        param.map(|t| {
            let device = t.device();
            let shape = t.dims();
            let noise: Vec<f64> =
                (0..shape.iter().product::<usize>()).map(|_| scale * rng.sample::<f64, _>(StandardNormal)).collect();
            t.add(Tensor::<D>::from_data(burn::tensor::TensorData::new(noise, shape), &device))
        })
    }
}

/// Adds `scale·N(0, 1)` noise to every float parameter (and running statistic), so that
/// identity-initialised layers become generic maps for testing. Deterministic in `seed`.
pub fn randomize_parameters<M: Module>(module: M, seed: u64, scale: f64) -> M {
    module.map(&mut Randomize { rng: StdRng::seed_from_u64(seed), scale })
}

/// Checks that [`Flow::sample_and_log_prob`] agrees with [`Flow::log_prob`] on the samples it
/// drew (`n` per context row): `|log p − log q| ≤ tol·(1 + |log p|)`. Returns the largest
/// `|log p − log q| / (1 + |log p|)`, or a description of the first disagreement.
pub fn check_sample_and_log_prob(
    flow: &Flow,
    n: usize,
    context: Option<&Tensor<2>>,
    rng: &mut StdRng,
    tol: f64,
) -> Result<f64, String> {
    let (x, log_q) = flow.sample_and_log_prob(n, context, rng).map_err(|e| e.to_string())?;
    let repeated = context.map(|c| repeat_rows(c, n));
    let log_p = flow.log_prob(x, repeated.as_ref()).map_err(|e| e.to_string())?;
    let log_p = to_vec(log_p).map_err(|e| e.to_string())?;
    let log_q = to_vec(log_q).map_err(|e| e.to_string())?;
    let mut worst: f64 = 0.0;
    for (p, q) in log_p.iter().zip(&log_q) {
        let err = (p - q).abs() / (1.0 + p.abs());
        worst = worst.max(err);
        if err > tol {
            return Err(format!("log_prob {p} but sample_and_log_prob gave {q}"));
        }
    }
    Ok(worst)
}

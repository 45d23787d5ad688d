//! A correctness harness every bijection must pass (used by this crate's tests, and available
//! to anyone writing a new bijection).
//!
//! For each direction that exists it checks, in the device's float type (use f64):
//! - round trips: `inverse(forward(x)) ≈ x` and `forward(inverse(y)) ≈ y` (iterative directions
//!   run to [`HarnessConfig::tolerance`]);
//! - `log|det J|` against the log-determinant of the full Jacobian from central finite
//!   differences or autodiff (D ≤ 6) — for a layer whose log-det is an unbiased estimate
//!   ([`LogDet::Estimated`]), the mean over [`HarnessConfig::estimator_draws`] draws must match the
//!   exact value within [`HarnessConfig::estimator_sigmas`] standard errors;
//! - `log|det J_T(x)| = −log|det J_{T⁻¹}(T(x))|` (exact log-dets);
//! - finite gradients of `Σ y + Σ log|det J|` with respect to the parameters and the inputs.

use burn::module::{Module, ModuleVisitor, Param, RunningState};
use burn::tensor::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;

use crate::bijections::{Bijection, Call, Chain, Cost, Layer, LogDet, Mode, Tolerance};
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
    /// Tolerance of iterative directions.
    pub tolerance: Tolerance,
    /// Draws averaged for an estimated log-det.
    pub estimator_draws: usize,
    /// Standard errors an estimated log-det's mean may be from the exact value.
    pub estimator_sigmas: f64,
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
            tolerance: Tolerance { absolute: 1e-12, relative: 1e-12, max_iterations: 10_000 },
            estimator_draws: 200,
            estimator_sigmas: 4.0,
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

/// The call the harness makes: the context, evaluation mode, the harness's tolerance and a
/// random source seeded with `seed`.
fn call(c: Option<&Tensor<2>>, cfg: &HarnessConfig, seed: u64) -> Call {
    Call::new().with_optional_context(c.cloned()).with_tolerance(cfg.tolerance).with_seed(seed)
}

fn apply<B: Bijection>(b: &B, forward: bool, x: Tensor<2>, call: &Call) -> Result<(Vec<f64>, Vec<f64>), String> {
    let r = if forward { b.forward(x, call) } else { b.inverse(x, call) };
    let (y, ld) = r.map_err(|e| e.to_string())?;
    Ok((to_vec(y).map_err(|e| e.to_string())?, to_vec(ld).map_err(|e| e.to_string())?))
}

/// The log-dets of one direction at `x`: the values of one call for an exact log-det; for an
/// estimated one, the mean over `estimator_draws` calls with different random sources and its
/// standard error per point.
#[allow(clippy::too_many_arguments)]
fn log_dets<B: Bijection>(
    b: &B,
    forward: bool,
    x: &[f64],
    n: usize,
    d: usize,
    ct: Option<&Tensor<2>>,
    cfg: &HarnessConfig,
    device: &Device,
) -> Result<(Vec<f64>, Option<Vec<f64>>), String> {
    if b.log_det(Mode::Evaluation) == LogDet::Exact {
        return Ok((apply(b, forward, matrix(x.to_vec(), n, d, device), &call(ct, cfg, cfg.seed))?.1, None));
    }
    let draws = cfg.estimator_draws.max(2);
    let (mut sum, mut sum2) = (vec![0.0; n], vec![0.0; n]);
    for k in 0..draws {
        let (_, ld) = apply(b, forward, matrix(x.to_vec(), n, d, device), &call(ct, cfg, cfg.seed + 1 + k as u64))?;
        for i in 0..n {
            sum[i] += ld[i];
            sum2[i] += ld[i] * ld[i];
        }
    }
    let m = draws as f64;
    let mean: Vec<f64> = sum.iter().map(|s| s / m).collect();
    let se = (0..n).map(|i| ((sum2[i] / m - mean[i] * mean[i]).max(0.0) * m / (m - 1.0) / m).sqrt()).collect();
    Ok((mean, Some(se)))
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
            let map = |x: Tensor<2>, c: Option<&Tensor<2>>| apply(b, forward, x, &call(c, cfg, cfg.seed)).map(|r| r.0);
            fd_log_abs_det_jacobians(map, x, ctx.map(|v| (v, c)), d, cfg.fd_step, device)
        }
        JacobianReference::Autodiff => {
            let ad = device.clone().autodiff();
            let b_ad = on_autodiff(b, device);
            let n = x.len() / d.max(1);
            let ct = ctx.map(|v| matrix(v.to_vec(), n, c, &ad));
            let map = |x: Tensor<2>| {
                let c = call(ct.as_ref(), cfg, cfg.seed);
                let r = if forward { b_ad.forward(x, &c) } else { b_ad.inverse(x, &c) };
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

/// Compares log-dets with the brute-force ones: within `tol` (relative) when exact; when
/// estimated (`se` given), within `sigmas` standard errors plus `tol`.
#[allow(clippy::too_many_arguments)]
fn compare_log_dets(
    actual: &[f64],
    se: Option<&[f64]>,
    expected: &[f64],
    tol: f64,
    sigmas: f64,
    max_err: &mut f64,
    describe: impl Fn(f64, f64) -> String,
) -> Result<(), String> {
    match se {
        None => compare(actual, expected, tol, max_err, describe),
        Some(se) => {
            for ((a, e), s) in actual.iter().zip(expected).zip(se) {
                let err = (a - e).abs() / 1f64.max(e.abs());
                *max_err = max_err.max(err);
                if (a - e).abs() > sigmas * s + tol * 1f64.max(e.abs()) {
                    return Err(format!("{} (estimate's standard error {s:.3e})", describe(*a, *e)));
                }
            }
            Ok(())
        }
    }
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
    let exact = b.log_det(Mode::Evaluation) == LogDet::Exact;
    let mut report = HarnessReport::default();
    let one = |forward: bool, points: &[f64]| apply(b, forward, matrix(points.to_vec(), n, d, device), &call(ct.as_ref(), cfg, cfg.seed));

    // Points on the data side: T(x) when the forward pass exists, else x itself.
    let mut y = x.clone();
    if dirs.forward != Cost::Unavailable {
        report.directions.push("forward");
        let (yv, ldf) = one(true, &x)?;
        if yv.iter().chain(&ldf).any(|v| !v.is_finite()) {
            return Err(format!("{}: forward produced non-finite values", b.name()));
        }
        if d <= 6 {
            let fd = fd_logdets(b, true, &x, ctx.as_deref(), d, c, cfg, device)?;
            let (ld, se) = log_dets(b, true, &x, n, d, ct.as_ref(), cfg, device)?;
            compare_log_dets(&ld, se.as_deref(), &fd, cfg.logdet_tol, cfg.estimator_sigmas, &mut report.max_logdet_error, |a, e| {
                format!("{}: forward log-det {a} but the brute-force Jacobian gives {e}", b.name())
            })?;
        }
        if dirs.inverse != Cost::Unavailable {
            let (xr, ldi) = one(false, &yv)?;
            compare(&xr, &x, cfg.roundtrip_tol, &mut report.max_roundtrip_error, |a, e| {
                format!("{}: inverse(forward(x)) = {a}, expected {e}", b.name())
            })?;
            if exact {
                let neg_ldf: Vec<f64> = ldf.iter().map(|v| -v).collect();
                compare(&ldi, &neg_ldf, cfg.roundtrip_tol.max(1e-10) * 100.0, &mut report.max_consistency_error, |a, e| {
                    format!("{}: inverse log-det {a} is not −(forward log-det) = {e}", b.name())
                })?;
            }
        }
        y = yv;
    }
    if dirs.inverse != Cost::Unavailable {
        report.directions.push("inverse");
        let (xv, ldi) = one(false, &y)?;
        if xv.iter().chain(&ldi).any(|v| !v.is_finite()) {
            return Err(format!("{}: inverse produced non-finite values", b.name()));
        }
        if d <= 6 {
            let fd = fd_logdets(b, false, &y, ctx.as_deref(), d, c, cfg, device)?;
            let (ld, se) = log_dets(b, false, &y, n, d, ct.as_ref(), cfg, device)?;
            compare_log_dets(&ld, se.as_deref(), &fd, cfg.logdet_tol, cfg.estimator_sigmas, &mut report.max_logdet_error, |a, e| {
                format!("{}: inverse log-det {a} but the brute-force Jacobian gives {e}", b.name())
            })?;
        }
        if dirs.forward != Cost::Unavailable {
            let (yr, _) = one(true, &xv)?;
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
            let cl = call(ctt.as_ref(), cfg, cfg.seed);
            let r = if forward { b_ad.forward(xt.clone(), &cl) } else { b_ad.inverse(xt.clone(), &cl) };
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

/// [`randomize_parameters`] for a chain, keeping what is not a weight: the fixed permutations and
/// signs of its invertible 1×1 convolutions (read before the noise, since running states are
/// shared by clones), and its ActNorm layers marked as having seen their first batch.
pub fn randomize_chain(chain: Chain, seed: u64, scale: f64) -> Chain {
    let fixed: Vec<Option<(Tensor<1>, Tensor<2>)>> = chain
        .layers
        .iter()
        .map(|l| match &l.inner {
            Layer::InvertibleConv1x1(c) => Some((c.sign.value_sync(), c.permutation.value_sync())),
            _ => None,
        })
        .collect();
    let mut chain = randomize_parameters(chain, seed, scale);
    for (layer, fixed) in chain.layers.iter_mut().zip(fixed) {
        match (&mut layer.inner, fixed) {
            (Layer::InvertibleConv1x1(c), Some((sign, permutation))) => {
                c.sign = RunningState::new(sign);
                c.permutation = RunningState::new(permutation);
            }
            (Layer::ActNorm(a), _) => a.initialized = RunningState::new(Tensor::ones([1], &a.log_scale.val().device())),
            _ => {}
        }
    }
    chain
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

/// What [`self_check`] measured on a trained flow.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SelfCheck {
    /// Points checked.
    pub n: usize,
    /// Features.
    pub dim: usize,
    /// Largest |u − T⁻¹(T(u))| relative to max(1, |u|) (flows with both directions).
    pub max_reconstruction_error: Option<f64>,
    /// Largest |log|det J_T(u)| + log|det J_{T⁻¹}(T(u))||.
    pub max_logdet_consistency_error: Option<f64>,
    /// Largest relative difference between the log-dets and log|det| of the full autodiff
    /// Jacobian (D ≤ 64; `None` above).
    pub max_logdet_error: Option<f64>,
    /// Points of the Jacobian check.
    pub logdet_points: Option<usize>,
    /// The direction whose log-dets were checked (`"inverse"`, the density direction, where it
    /// exists).
    pub logdet_direction: Option<&'static str>,
    /// Whether the log-dets are exact or estimated (then their mean over draws is checked).
    pub log_det: &'static str,
    /// What failed (empty: passed).
    pub failures: Vec<String>,
}

impl SelfCheck {
    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// The tolerance the self-check runs iterative solvers to (ODE solves, fixed points), in f64:
/// it checks the map, not the solver settings saved with a model.
pub const SELF_CHECK_TOLERANCE: Tolerance = Tolerance { absolute: 1e-9, relative: 1e-9, max_iterations: 100_000 };

/// Checks a trained flow at `n` of its own samples (and contexts drawn around the training
/// contexts, standard normal in standardized units): inverse reconstruction, forward/inverse
/// log-det consistency, and the log-dets against log|det| of the full autodiff Jacobian (D ≤ 64),
/// in the device's float type (use f64). Estimated log-dets are averaged over 100 draws.
/// Iterative solvers run to [`SELF_CHECK_TOLERANCE`]; log-dets of such maps are checked to 1e−4.
pub fn self_check(flow: &Flow, n: usize, seed: u64) -> crate::error::Result<SelfCheck> {
    let device = flow.device();
    let (d, c) = (flow.dim(), flow.context_dim());
    let mut rng = StdRng::seed_from_u64(seed);
    let context = (c > 0).then(|| {
        let s = flow.config().context_standardization.clone();
        (0..n * c)
            .map(|k| {
                let z: f64 = rng.sample(StandardNormal);
                s.as_ref().map_or(z, |s| s.mean[k % c] + s.std[k % c] * z)
            })
            .collect::<Vec<f64>>()
    });
    let ct = context.as_ref().map(|v| matrix(v.clone(), n, c, &device));
    let dirs = flow.directions();
    let estimated = flow.log_det(Mode::Evaluation) == LogDet::Estimated;
    let u = flow.base.sample(n, &mut rng, &device)?;
    let u_vals = to_vec(u.clone())?;
    let mut report = SelfCheck { n, dim: d, log_det: if estimated { "estimated" } else { "exact" }, ..SelfCheck::default() };
    let scale = |v: &[f64]| v.iter().fold(1f64, |m, x| m.max(x.abs()));
    let values = |(y, ld): (Tensor<2>, Tensor<1>)| -> crate::error::Result<(Vec<f64>, Vec<f64>)> { Ok((to_vec(y)?, to_vec(ld)?)) };
    let draws = if estimated { 100 } else { 1 };
    // Log-dets of maps solved iteratively (ODE solves to SELF_CHECK_TOLERANCE) are checked to
    // 1e−4: the derivative of a numerical solution is less accurate than the solution.
    let iterative = dirs.forward == Cost::Iterative || dirs.inverse == Cost::Iterative;
    let exact_tol = if iterative { 1e-4 } else { 1e-6 };
    // log-dets of one direction, averaged over the draws of an estimator.
    let mean_logdet = |forward: bool, points: &Tensor<2>| -> crate::error::Result<(Vec<f64>, Vec<f64>)> {
        let mut out: Option<(Vec<f64>, Vec<f64>)> = None;
        for k in 0..draws {
            let call = Call::new().with_optional_context(ct.clone()).with_seed(seed.wrapping_add(k as u64)).with_tolerance(SELF_CHECK_TOLERANCE);
            let r = if forward { flow.from_base_with(points.clone(), call)? } else { flow.to_base_with(points.clone(), call)? };
            let (y, ld) = values(r)?;
            out = Some(match out {
                None => (y, ld),
                Some((y0, acc)) => (y0, acc.iter().zip(&ld).map(|(a, b)| a + b).collect()),
            });
        }
        let (y, sum) = out.expect("at least one draw");
        Ok((y, sum.iter().map(|s| s / draws as f64).collect()))
    };

    // Samples x = T(u) and log|det J_T(u)|.
    let forward = match dirs.forward {
        Cost::Unavailable => None,
        _ => Some(mean_logdet(true, &u)?),
    };
    if let Some((x, ld_f)) = &forward {
        if x.iter().chain(ld_f).any(|v| !v.is_finite()) {
            report.failures.push("non-finite samples or log-determinants".to_string());
        }
    }
    // T⁻¹ at the samples (or, without a forward pass, at the base draws).
    let inverse = match (dirs.inverse, &forward) {
        (Cost::Unavailable, _) => None,
        (_, Some((x, _))) => Some(mean_logdet(false, &matrix(x.clone(), n, d, &device))?),
        (_, None) => Some(mean_logdet(false, &u)?),
    };
    if let (Some((_, ld_f)), Some((u2, ld_i))) = (&forward, &inverse) {
        let rec = u2.iter().zip(&u_vals).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max) / scale(&u_vals);
        let cons = ld_i.iter().zip(ld_f).map(|(a, b)| (a + b).abs()).fold(0.0, f64::max);
        report.max_reconstruction_error = Some(rec);
        report.max_logdet_consistency_error = Some(cons);
        if rec.is_nan() || rec > 1e-6 {
            report.failures.push(format!("inverse reconstruction error {rec:.3e} > 1e-6"));
        }
        let tol = if estimated { 0.1 } else { exact_tol };
        if cons.is_nan() || cons > tol * scale(ld_f) {
            report.failures.push(format!("forward/inverse log-det mismatch {cons:.3e}"));
        }
    }
    // The log-dets against log|det| of the full Jacobian by autodiff: the density direction where
    // there is one, else the sampling direction.
    if d <= 64 {
        let (points, is_forward, ld) = match (&inverse, &forward) {
            (Some((_, ld_i)), Some((x, _))) => (x.clone(), false, ld_i),
            (Some((_, ld_i)), None) => (u_vals.clone(), false, ld_i),
            (None, Some((_, ld_f))) => (u_vals.clone(), true, ld_f),
            (None, None) => return Err(crate::error::FlowError::InvalidConfig("the model has neither direction".into())),
        };
        let ad = device.clone().autodiff();
        let flow_ad = flow.clone().without_dropout().train();
        let cx_ad = context.as_ref().map(|v| matrix(v.clone(), n, c, &ad));
        let map = |p: Tensor<2>| {
            let call = Call::new().with_optional_context(cx_ad.clone()).with_seed(seed).with_tolerance(SELF_CHECK_TOLERANCE).with_log_det(false);
            let r = if is_forward { flow_ad.from_base_with(p, call) } else { flow_ad.to_base_with(p, call) };
            r.map(|(y, _)| y).map_err(|e| e.to_string())
        };
        let exact = autodiff_log_abs_det_jacobians(map, &points, d, &ad).map_err(crate::error::FlowError::Backend)?;
        let err = ld.iter().zip(&exact).map(|(a, b)| (a - b).abs() / 1f64.max(b.abs())).fold(0.0, f64::max);
        report.max_logdet_error = Some(err);
        report.logdet_points = Some(n);
        report.logdet_direction = Some(if is_forward { "forward" } else { "inverse" });
        let tol = if estimated { 0.1 } else { exact_tol };
        if err.is_nan() || err > tol {
            report.failures.push(format!("log-det differs from log|det| of the autodiff Jacobian by {err:.3e} (relative) > {tol:e}"));
        }
    }
    Ok(report)
}

//! Ordinary differential equation solvers on burn tensors (continuous-time flows, §4 of
//! Papamakarios et al. 2021).
//!
//! `dy/dt = f(t, y)` from `t0` to `t1` (either order: `t1 < t0` integrates backwards), for a
//! state made of several `[N, K]` tensors (a CNF's `z` and its log-determinant):
//! - [`Solver::Dopri5`]: adaptive Dormand–Prince 5(4) with the first-same-as-last property (6
//!   evaluations per step), error control `‖err / (atol + rtol·max(|y₀|, |y₁|))‖_RMS ≤ 1` over every
//!   element of the state, Hairer's initial step selection, step factor `0.9·err^(−1/5)` clipped
//!   to [0.2, 10]; more than `max_steps` attempted steps, a step below the rounding of `t` or a
//!   non-finite state is an error, never a wrong answer or an endless loop.
//! - [`Solver::Rk4`] and [`Solver::Euler`]: `steps` equal steps (speed comparisons, cheap
//!   training solves).
//!
//! Every operation is an ordinary tensor operation, so on an autodiff device the solution is
//! differentiable by backpropagation through the solver steps (step sizes are constants of the
//! graph). Step sizes are chosen from detached values.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{FlowError, Result};
use crate::tensor::{check_finite, dims2, scalar};

pub mod adjoint;

/// The state of a system: one or more `[N, K]` tensors integrated together.
pub type State = Vec<Tensor<2>>;

/// The right-hand side `f(t, y)`.
pub type Field<'a> = dyn FnMut(f64, &[Tensor<2>]) -> Result<State> + 'a;

/// A solver method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Solver {
    /// Adaptive Dormand–Prince 5(4).
    #[default]
    Dopri5,
    /// Classical Runge–Kutta, fixed steps.
    Rk4,
    /// Explicit Euler, fixed steps.
    Euler,
}

impl Solver {
    /// The name used in flags and files.
    pub fn name(self) -> &'static str {
        match self {
            Solver::Dopri5 => "dopri5",
            Solver::Rk4 => "rk4",
            Solver::Euler => "euler",
        }
    }

    /// Parses `dopri5`, `rk4` or `euler`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "dopri5" => Ok(Solver::Dopri5),
            "rk4" => Ok(Solver::Rk4),
            "euler" => Ok(Solver::Euler),
            other => Err(FlowError::InvalidConfig(format!("unknown ODE solver {other:?}: expected dopri5, rk4 or euler"))),
        }
    }
}

/// How to solve: the method, tolerances and limits.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct OdeSettings {
    /// The method.
    pub solver: Solver,
    /// Absolute tolerance (adaptive solver).
    pub atol: f64,
    /// Relative tolerance (adaptive solver).
    pub rtol: f64,
    /// Most steps, accepted and rejected, an adaptive solve may attempt.
    pub max_steps: usize,
    /// Number of steps of a fixed-step solver.
    pub steps: usize,
}

impl Default for OdeSettings {
    /// Dormand–Prince, atol 1e−6, rtol 1e−5 (zuko's), at most 1000 steps; 20 fixed steps.
    fn default() -> Self {
        Self { solver: Solver::Dopri5, atol: 1e-6, rtol: 1e-5, max_steps: 1000, steps: 20 }
    }
}

impl OdeSettings {
    /// Checks the settings: positive finite tolerances, at least one step.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(FlowError::InvalidConfig(m));
        if !(self.atol.is_finite() && self.atol > 0.0) {
            return bad(format!("ODE absolute tolerance must be positive and finite, got {}", self.atol));
        }
        if !(self.rtol.is_finite() && self.rtol > 0.0) {
            return bad(format!("ODE relative tolerance must be positive and finite, got {}", self.rtol));
        }
        if self.max_steps == 0 {
            return bad("ODE step limit must be at least 1".into());
        }
        if self.steps == 0 {
            return bad("a fixed-step ODE solver needs at least 1 step".into());
        }
        Ok(())
    }
}

/// The solution at `t1` and what it cost.
#[derive(Debug)]
pub struct Solved {
    /// The state at `t1`.
    pub state: State,
    /// Evaluations of `f` (NFE).
    pub evaluations: usize,
    /// Accepted steps.
    pub accepted: usize,
    /// Rejected steps (adaptive solver).
    pub rejected: usize,
}

/// Integrates `dy/dt = f(t, y)` from `(t0, y0)` to `t1`.
pub fn solve(f: &mut Field<'_>, y0: State, t0: f64, t1: f64, settings: &OdeSettings) -> Result<Solved> {
    let parts = y0.len();
    solve_controlled(f, y0, t0, t1, settings, parts)
}

/// [`solve`] with the adaptive step controlled by the first `controlled` parts of the state
/// alone (a seminorm: the adjoint method's parameter gradients are integrals that never feed
/// back into the dynamics, so their error need not shorten the steps; Kidger et al. 2021).
pub fn solve_controlled(f: &mut Field<'_>, y0: State, t0: f64, t1: f64, settings: &OdeSettings, controlled: usize) -> Result<Solved> {
    settings.validate()?;
    if controlled == 0 || controlled > y0.len() {
        return Err(FlowError::InvalidConfig(format!("an ODE error norm over {controlled} of {} state parts", y0.len())));
    }
    if !(t0.is_finite() && t1.is_finite()) {
        return Err(FlowError::InvalidConfig(format!("ODE times must be finite, got {t0} and {t1}")));
    }
    if y0.is_empty() {
        return Err(FlowError::InvalidConfig("an ODE state needs at least one tensor".into()));
    }
    if t0 == t1 {
        return Ok(Solved { state: y0, evaluations: 0, accepted: 0, rejected: 0 });
    }
    let parts = y0.len();
    let solved = match settings.solver {
        Solver::Dopri5 => dopri5(f, y0, t0, t1, settings, controlled)?,
        Solver::Rk4 | Solver::Euler => fixed(f, y0, t0, t1, settings)?,
    };
    if controlled < parts {
        // Parts outside the error norm are checked once, at the end.
        check_state(&solved.state, t1)?;
    }
    Ok(solved)
}

/// `y + Σ cᵢ·kᵢ`, componentwise (terms with a zero coefficient skipped).
fn combine(y: &[Tensor<2>], terms: &[(f64, &State)]) -> State {
    y.iter()
        .enumerate()
        .map(|(i, yi)| {
            terms
                .iter()
                .filter(|(c, _)| *c != 0.0)
                .fold(yi.clone(), |acc, (c, k)| acc.add(k[i].clone().mul_scalar(*c)))
        })
        .collect()
}

/// Checks that `f` returned tensors shaped like the state.
fn checked(k: State, y: &[Tensor<2>]) -> Result<State> {
    if k.len() != y.len() || k.iter().zip(y).any(|(a, b)| a.dims() != b.dims()) {
        return Err(FlowError::InvalidConfig("the ODE right-hand side returned tensors of another shape than the state".into()));
    }
    Ok(k)
}

fn eval(f: &mut Field<'_>, t: f64, y: &[Tensor<2>], count: &mut usize) -> Result<State> {
    *count += 1;
    checked(f(t, y)?, y)
}

/// Errors on the first non-finite element of the state, naming it.
fn check_state(y: &[Tensor<2>], t: f64) -> Result<()> {
    let what = format!("the ODE state at t = {t:.6}");
    y.iter().try_for_each(|part| check_finite(&part.clone().detach(), &what))
}

/// The error of a solve whose error estimate is not finite: the state's first non-finite
/// element, or the estimate itself.
fn non_finite(y: &[Tensor<2>], t: f64) -> FlowError {
    match check_state(y, t) {
        Err(e) => e,
        Ok(()) => FlowError::NonFinite { what: format!("the ODE error estimate at t = {t:.6}"), row: 0, col: 0, value: f64::NAN },
    }
}

/// `‖v / scale‖_RMS` over every element of the state, from detached values.
fn rms(v: &[Tensor<2>], scale: &[Tensor<2>]) -> Result<f64> {
    let mut sum = 0.0;
    let mut count = 0usize;
    for (a, s) in v.iter().zip(scale) {
        let (r, c) = dims2(a);
        count += r * c;
        sum += scalar(a.clone().detach().div(s.clone()).square().sum())?;
    }
    Ok((sum / count.max(1) as f64).sqrt())
}

/// `atol + rtol·max(|a|, |b|)`, detached.
fn tolerance_scale(a: &[Tensor<2>], b: Option<&[Tensor<2>]>, settings: &OdeSettings) -> State {
    a.iter()
        .enumerate()
        .map(|(i, ai)| {
            let m = ai.clone().detach().abs();
            let m = match b {
                Some(b) => m.max_pair(b[i].clone().detach().abs()),
                None => m,
            };
            m.mul_scalar(settings.rtol).add_scalar(settings.atol)
        })
        .collect()
}

/// Hairer, Nørsett & Wanner (1993), II.4: a first step for a method of order 5 from `f0`.
#[allow(clippy::too_many_arguments)]
fn initial_step(
    f: &mut Field<'_>,
    y0: &[Tensor<2>],
    f0: &State,
    t0: f64,
    span: f64,
    settings: &OdeSettings,
    controlled: usize,
    count: &mut usize,
) -> Result<f64> {
    let scale = tolerance_scale(&y0[..controlled], None, settings);
    let d0 = rms(&y0[..controlled], &scale)?;
    let d1 = rms(&f0[..controlled], &scale)?;
    let h0 = if d0 < 1e-5 || d1 < 1e-5 { 1e-6 } else { 0.01 * d0 / d1 };
    let h0 = h0.min(span.abs());
    let y1: State = combine(&y0.iter().map(|y| y.clone().detach()).collect::<Vec<_>>(), &[(h0 * span.signum(), f0)]);
    let f1 = eval(f, t0 + h0 * span.signum(), &y1, count)?;
    let diff: State = f1.iter().zip(f0).take(controlled).map(|(a, b)| a.clone().detach().sub(b.clone().detach())).collect();
    let d2 = rms(&diff, &scale)? / h0;
    let h1 = if d1.max(d2) <= 1e-15 { (h0 * 1e-3).max(1e-6) } else { (0.01 / d1.max(d2)).powf(0.2) };
    let h = (100.0 * h0).min(h1).min(span.abs());
    if !h.is_finite() {
        return Err(non_finite(&f1, t0));
    }
    Ok(h)
}

// Dormand–Prince 5(4) tableau.
const C: [f64; 6] = [0.0, 1.0 / 5.0, 3.0 / 10.0, 4.0 / 5.0, 8.0 / 9.0, 1.0];
const A: [&[f64]; 6] = [
    &[],
    &[1.0 / 5.0],
    &[3.0 / 40.0, 9.0 / 40.0],
    &[44.0 / 45.0, -56.0 / 15.0, 32.0 / 9.0],
    &[19372.0 / 6561.0, -25360.0 / 2187.0, 64448.0 / 6561.0, -212.0 / 729.0],
    &[9017.0 / 3168.0, -355.0 / 33.0, 46732.0 / 5247.0, 49.0 / 176.0, -5103.0 / 18656.0],
];
/// Fifth-order weights (k₁…k₆).
const B: [f64; 6] = [35.0 / 384.0, 0.0, 500.0 / 1113.0, 125.0 / 192.0, -2187.0 / 6784.0, 11.0 / 84.0];
/// Fifth minus fourth order weights (k₁…k₇).
const E: [f64; 7] = [
    71.0 / 57600.0,
    0.0,
    -71.0 / 16695.0,
    71.0 / 1920.0,
    -17253.0 / 339200.0,
    22.0 / 525.0,
    -1.0 / 40.0,
];

fn dopri5(f: &mut Field<'_>, y0: State, t0: f64, t1: f64, settings: &OdeSettings, controlled: usize) -> Result<Solved> {
    let span = t1 - t0;
    let direction = span.signum();
    let mut count = 0usize;
    let mut y = y0;
    let mut k1 = eval(f, t0, &y, &mut count)?;
    let mut h = initial_step(f, &y, &k1, t0, span, settings, controlled, &mut count)?;
    let mut t = t0;
    let (mut accepted, mut rejected) = (0usize, 0usize);
    let describe = || format!("the Dormand–Prince solve from t = {t0} to {t1}");
    loop {
        let remaining = (t1 - t) * direction;
        if remaining <= 0.0 {
            break;
        }
        if accepted + rejected >= settings.max_steps {
            return Err(FlowError::NotConverged { what: describe() + " (step limit; the dynamics may be stiff)", iterations: accepted + rejected, residual: remaining });
        }
        let last = h >= remaining;
        let step = if last { remaining } else { h };
        if step <= 16.0 * f64::EPSILON * t.abs().max(1.0) {
            return Err(FlowError::NotConverged { what: describe() + " (the step size fell below the rounding of t)", iterations: accepted + rejected, residual: remaining });
        }
        let s = step * direction;
        let mut ks: Vec<State> = vec![k1.clone()];
        for stage in 1..6 {
            let terms: Vec<(f64, &State)> = A[stage].iter().zip(&ks).map(|(a, k)| (s * a, k)).collect();
            let ys = combine(&y, &terms);
            let k = eval(f, t + C[stage] * s, &ys, &mut count)?;
            ks.push(k);
        }
        let terms: Vec<(f64, &State)> = B.iter().zip(&ks).map(|(b, k)| (s * b, k)).collect();
        let y_next = combine(&y, &terms);
        let t_next = if last { t1 } else { t + s };
        let k7 = eval(f, t_next, &y_next, &mut count)?;
        ks.push(k7);
        let zero: State = y[..controlled].iter().map(|v| v.clone().detach().zeros_like()).collect();
        let error_terms: Vec<(f64, State)> = E
            .iter()
            .zip(&ks)
            .filter(|(e, _)| **e != 0.0)
            .map(|(e, k)| (s * e, k[..controlled].iter().map(|v| v.clone().detach()).collect::<State>()))
            .collect();
        let error_refs: Vec<(f64, &State)> = error_terms.iter().map(|(c, k)| (*c, k)).collect();
        let error = combine(&zero, &error_refs);
        let scale = tolerance_scale(&y[..controlled], Some(&y_next[..controlled]), settings);
        let norm = rms(&error, &scale)?;
        if !norm.is_finite() {
            return Err(non_finite(&y_next, t_next));
        }
        let factor = if norm == 0.0 { 10.0 } else { (0.9 * norm.powf(-0.2)).clamp(0.2, 10.0) };
        if norm <= 1.0 {
            accepted += 1;
            y = y_next;
            t = t_next;
            if let Some(k7) = ks.pop() {
                k1 = k7;
            }
            h = step * factor;
        } else {
            rejected += 1;
            h = step * factor.min(1.0);
        }
    }
    Ok(Solved { state: y, evaluations: count, accepted, rejected })
}

fn fixed(f: &mut Field<'_>, y0: State, t0: f64, t1: f64, settings: &OdeSettings) -> Result<Solved> {
    let n = settings.steps;
    let h = (t1 - t0) / n as f64;
    let mut count = 0usize;
    let mut y = y0;
    for i in 0..n {
        let t = t0 + i as f64 * h;
        y = match settings.solver {
            Solver::Euler => {
                let k = eval(f, t, &y, &mut count)?;
                combine(&y, &[(h, &k)])
            }
            _ => {
                let k1 = eval(f, t, &y, &mut count)?;
                let k2 = eval(f, t + h / 2.0, &combine(&y, &[(h / 2.0, &k1)]), &mut count)?;
                let k3 = eval(f, t + h / 2.0, &combine(&y, &[(h / 2.0, &k2)]), &mut count)?;
                let k4 = eval(f, t + h, &combine(&y, &[(h, &k3)]), &mut count)?;
                combine(&y, &[(h / 6.0, &k1), (h / 3.0, &k2), (h / 3.0, &k3), (h / 6.0, &k4)])
            }
        };
    }
    let norm = rms(&y, &y.iter().map(|v| v.clone().detach().ones_like()).collect::<Vec<_>>())?;
    if !norm.is_finite() {
        return Err(non_finite(&y, t1));
    }
    Ok(Solved { state: y, evaluations: count, accepted: n, rejected: 0 })
}

//! Gradients through an ODE solve by the adjoint method (Pontryagin; Chen et al. 2018), with
//! memory independent of the number of solver steps.
//!
//! The system is `dy/dt = f(t, y; θ, c)` with integrals `e_k(t₁) = ∫_{t₀}^{t₁} g_k(t, y; θ, c) dt`
//! alongside (a CNF's log-determinant and its RNODE penalties). The forward solve runs without an
//! autodiff graph and keeps only `y(t₁)`. Given the loss's cotangents `a(t₁) = ∂L/∂y(t₁)` and
//! `a_k = ∂L/∂e_k` (constants: the `g_k` do not depend on the `e_k`), the backward pass solves, from
//! `t₁` back to `t₀`,
//!
//! `dy/dt = f`, `da/dt = −aᵀ ∂f/∂y − Σ a_kᵀ ∂g_k/∂y`, `da_θ/dt = −aᵀ ∂f/∂θ − Σ a_kᵀ ∂g_k/∂θ`
//! (and the same for the context `c`), from `a_θ(t₁) = 0`,
//!
//! so that `∂L/∂y(t₀) = a(t₀)`, `∂L/∂θ = a_θ(t₀)`, `∂L/∂c = a_c(t₀)`. The vector–Jacobian products
//! come from a small autodiff graph per evaluation, and the steps are controlled by `(y, a)` alone
//! (the seminorm of Kidger et al. 2021). `y(t)` is recomputed backwards, so the gradients agree
//! with backpropagation through the solver to about the solver's tolerance.
//!
//! The operation is a custom autodiff step on the CPU backend. A backward pass cannot return an
//! error, so a failed backward solve registers no gradient and leaves its error for
//! [`take_backward_failure`], which the training loop calls after every backward pass.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Flex;
use burn::tensor::Tensor;

use super::{solve_controlled, OdeSettings, State};
use crate::custom_op::{autodiff_primitive, flex_of, from_autodiff_primitive, plain, record_backward_failure};
use crate::error::{FlowError, Result};
use crate::tensor::dims2;

/// The right-hand side at fixed parameters and context: `(t, y) ↦ [f, g_1, …, g_K]`.
pub type Dynamics<'a> = dyn Fn(f64, &Tensor<2>) -> Result<State> + 'a;

/// A parametrized system the adjoint method can differentiate.
pub trait AdjointSystem: Send + Sync + std::fmt::Debug {
    /// The widths of the integrals `g_k` (each `[N, width]`).
    fn integral_widths(&self) -> Vec<usize>;

    /// The dynamics at parameters `θ` `[1, P]` and context `[N, C]`; every operation on them
    /// must be differentiable (the backward pass takes vector–Jacobian products through it).
    fn dynamics<'a>(&'a self, params: &Tensor<2>, context: Option<&Tensor<2>>) -> Result<Box<Dynamics<'a>>>;
}

/// The result of [`solve`]: `[y(t₁), e_1, …, e_K]`, attached to the autodiff graph when an input
/// was, and the forward solve's evaluations.
#[derive(Debug)]
pub struct AdjointSolved {
    /// `y(t₁)` and the integrals.
    pub state: State,
    /// Evaluations of the dynamics in the forward solve.
    pub evaluations: usize,
}

pub use crate::custom_op::take_backward_failure;

/// Solves the system from `t0` to `t1` from `y0`, the integrals starting at zero. When `y0`,
/// `params` or `context` is tracked by autodiff, the result is one graph node whose backward
/// pass is the adjoint solve (CPU only).
pub fn solve(
    system: Arc<dyn AdjointSystem>,
    y0: Tensor<2>,
    params: Tensor<2>,
    context: Option<Tensor<2>>,
    t0: f64,
    t1: f64,
    settings: &OdeSettings,
) -> Result<AdjointSolved> {
    let tracked = y0.is_tracked() || params.is_tracked() || context.as_ref().is_some_and(Tensor::is_tracked);
    let (y_plain, p_plain, c_plain) = (y0.clone().inner(), params.clone().inner(), context.clone().map(Tensor::inner));
    let (n, _) = dims2(&y_plain);
    let widths = system.integral_widths();
    let (state, evaluations) = {
        let dynamics = system.dynamics(&p_plain, c_plain.as_ref())?;
        let mut rhs = |t: f64, s: &[Tensor<2>]| dynamics(t, &s[0]);
        let mut start = vec![y_plain.clone()];
        start.extend(widths.iter().map(|&w| Tensor::<2>::zeros([n, w], &y_plain.device())));
        let solved = solve_controlled(&mut rhs, start, t0, t1, settings, 1 + widths.len())?;
        (solved.state, solved.evaluations)
    };
    if !tracked {
        return Ok(AdjointSolved { state, evaluations });
    }
    let not_cpu = || FlowError::InvalidConfig("the adjoint method runs on the CPU device; use backpropagation through the solver elsewhere".into());
    let (y_ad, strategy) = autodiff_primitive(y0).ok_or_else(not_cpu)?;
    let (p_ad, _) = autodiff_primitive(params).ok_or_else(not_cpu)?;
    let dummy = || Tensor::<2>::zeros([1, 1], &y_plain.device());
    let has_context = context.is_some();
    let (c_ad, _) = autodiff_primitive(context.unwrap_or_else(dummy)).ok_or_else(not_cpu)?;
    let packed = flex_of(Tensor::cat(state, 1)).ok_or_else(not_cpu)?;
    let saved = Saved {
        system,
        y1: None,
        params: p_plain,
        context: c_plain.filter(|_| has_context),
        widths: widths.clone(),
        t0,
        t1,
        settings: *settings,
    };
    let guards = [y_ad.node(), p_ad.node(), c_ad.node()];
    let out = match AdjointStep.prepare::<NoCheckpointing>(guards).compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let y1 = plain(packed.clone()).narrow(1, 0, dims2(&y_plain).1);
            prep.finish(Saved { y1: Some(y1), ..saved }, packed)
        }
        OpsKind::UnTracked(prep) => prep.finish(packed),
    };
    let out = from_autodiff_primitive(out, strategy);
    let mut parts = Vec::with_capacity(1 + widths.len());
    let mut offset = 0;
    for w in std::iter::once(dims2(&y_plain).1).chain(widths) {
        parts.push(out.clone().narrow(1, offset, w));
        offset += w;
    }
    Ok(AdjointSolved { state: parts, evaluations })
}

/// What the backward pass needs (tensors without autodiff).
#[derive(Clone, Debug)]
struct Saved {
    system: Arc<dyn AdjointSystem>,
    y1: Option<Tensor<2>>,
    params: Tensor<2>,
    context: Option<Tensor<2>>,
    widths: Vec<usize>,
    t0: f64,
    t1: f64,
    settings: OdeSettings,
}

#[derive(Debug)]
struct AdjointStep;

impl Backward<Flex, 3> for AdjointStep {
    type State = Saved;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_y, node_p, node_c] = ops.parents;
        let g = plain(grads.consume::<Flex>(&ops.node));
        let want = (node_y.is_some(), node_p.is_some(), node_c.is_some() && ops.state.context.is_some());
        match adjoint_gradients(&ops.state, g, want) {
            Ok((gy, gp, gc)) => {
                for (node, grad) in [(node_y, gy), (node_p, gp), (node_c, gc)] {
                    if let (Some(node), Some(grad)) = (node, grad.and_then(flex_of)) {
                        grads.register::<Flex>(node.id, grad);
                    }
                }
            }
            Err(e) => record_backward_failure(e),
        }
    }
}

type Cotangents = (Option<Tensor<2>>, Option<Tensor<2>>, Option<Tensor<2>>);

/// The adjoint solve from `t₁` back to `t₀`: `(∂L/∂y₀, ∂L/∂θ, ∂L/∂c)` for those wanted.
fn adjoint_gradients(saved: &Saved, g: Tensor<2>, (want_y, want_p, want_c): (bool, bool, bool)) -> Result<Cotangents> {
    let y1 = saved.y1.clone().ok_or_else(|| FlowError::Backend("the adjoint step lost its end state".into()))?;
    let d = dims2(&y1).1;
    let a_y = g.clone().narrow(1, 0, d);
    let mut a_e = Vec::with_capacity(saved.widths.len());
    let mut offset = d;
    for &w in &saved.widths {
        a_e.push(g.clone().narrow(1, offset, w));
        offset += w;
    }
    let mut start = vec![y1, a_y];
    if want_p {
        start.push(saved.params.clone().zeros_like());
    }
    let context = saved.context.clone().filter(|_| want_c);
    if let Some(c) = &context {
        start.push(c.clone().zeros_like());
    }
    let mut rhs = |t: f64, s: &[Tensor<2>]| -> Result<State> {
        let y = s[0].clone().autodiff().require_grad();
        let p = saved.params.clone().autodiff();
        let p = if want_p { p.require_grad() } else { p };
        let c = saved.context.clone().map(|c| if want_c { c.autodiff().require_grad() } else { c.autodiff() });
        let dynamics = saved.system.dynamics(&p, c.as_ref())?;
        let out = dynamics(t, &y)?;
        let mut total = out[0].clone().mul(s[1].clone()).sum();
        for (e, a) in out[1..].iter().zip(&a_e) {
            total = total.add(e.clone().mul(a.clone()).sum());
        }
        let grads = total.backward();
        let mut derivative = vec![out[0].clone().inner()];
        let negated = |grad: Option<Tensor<2>>, like: &Tensor<2>| grad.map_or_else(|| like.clone().zeros_like(), Tensor::neg);
        derivative.push(negated(y.grad(&grads), &s[1]));
        if want_p {
            derivative.push(negated(p.grad(&grads), &s[2]));
        }
        if let Some(c) = c.filter(|_| want_c) {
            derivative.push(negated(c.grad(&grads), &s[s.len() - 1]));
        }
        Ok(derivative)
    };
    let solved = solve_controlled(&mut rhs, start, saved.t1, saved.t0, &saved.settings, 2)?;
    let mut state = solved.state.into_iter().skip(1);
    let gy = state.next().filter(|_| want_y);
    let gp = if want_p { state.next() } else { None };
    let gc = if want_c { state.next() } else { None };
    Ok((gy, gp, gc))
}

//! Monotone scalar transformers without a closed-form inverse (§3.1.2 of the paper): the
//! deep sigmoidal flow (NAF), the unconstrained monotonic network (UMNN) and the sum-of-squares
//! polynomial (SOS), with linear tails and a numerical inverse.
//!
//! Each **core** `τ(x; θ)` is defined on `[−B, B]`; outside, the map continues linearly with the
//! value and slope it has at the bound, `τ(x) = τ(±B) + τ'(±B)·(x ∓ B)`, so far inputs stay finite
//! and every real number has a preimage. The core is evaluated on the clamped input only (a safe
//! branch: out-of-domain inputs are replaced *before* computing).
//!
//! The inverse brackets by the tails (closed form outside `[τ(−B), τ(B)]`), then runs Newton steps
//! safeguarded by bisection inside `[−B, B]` until every element moves by less than
//! `atol + rtol·|x|` (or its bracket is that narrow); an element that does not is an error
//! ([`FlowError::NotConverged`], with how many did not). Its gradients follow the implicit
//! function theorem, `∂x/∂θ = −(∂τ/∂θ)/τ'(x)`, `∂x/∂y = 1/τ'(x)`: the solution enters the graph
//! as one Newton step from the detached root, `x = x* − (τ(x*; θ) − y)/sg[τ'(x*)]`, whose value
//! is the root and whose derivatives are exactly those — never through the iterations.
//!
//! All-zero parameters give the identity for every core.

use burn::tensor::activation::log_softmax;
use burn::tensor::Tensor;

use crate::error::{FlowError, Result};
use crate::event::Tolerance;
use crate::tensor::{dims2, log_sigmoid, logsumexp_dim, scalar, softplus, vector};

/// Default sizes.
pub mod defaults {
    /// NAF: sigmoid components.
    pub const COMPONENTS: usize = 8;
    /// UMNN: hidden units of the integrand.
    pub const INTEGRAND_HIDDEN: usize = 16;
    /// UMNN: quadrature intervals (33 nodes).
    pub const NODES: usize = 32;
    /// SOS: squared polynomials.
    pub const POLYNOMIALS: usize = 3;
    /// SOS: their degree.
    pub const DEGREE: usize = 4;
    /// BNAF: hidden units per feature (FlowJAX's default).
    pub const BLOCK_DIM: usize = 8;
    /// BNAF: hidden layers per transform (FlowJAX's default).
    pub const BLOCK_LAYERS: usize = 1;
}

/// Smallest slope of a sigmoid component (NAF) and smallest integrand (UMNN, SOS).
pub const MIN_SLOPE: f64 = 1e-3;

/// `c = ln(e^{1 − m} − 1)`: `m + softplus(a + c)` is 1 at `a = 0`.
fn unit_shift() -> f64 {
    ((1.0 - MIN_SLOPE).exp() - 1.0).ln()
}

/// `MIN_SLOPE + softplus(a + c)`: positive, 1 at `a = 0`.
fn positive(a: Tensor<3>) -> Tensor<3> {
    softplus(a.add_scalar(unit_shift())).add_scalar(MIN_SLOPE)
}

/// Log-sum-exp over dimension 1 of `[N, M, D]`, as `[N, D]`.
fn logsumexp_mid(t: Tensor<3>) -> Tensor<2> {
    let [n, _, d] = t.dims();
    logsumexp_dim(t, 1).reshape([n, d])
}

/// The `P` parameter blocks of `[N, P·D]` as `[N, P, D]` (parameter `p` of feature `j` in column
/// `p·D + j`).
fn blocks(params: &Tensor<2>, d: usize) -> Tensor<3> {
    let (n, cols) = dims2(params);
    params.clone().reshape([n, cols / d, d])
}

/// `[1, count, 1]` factors `(j + 1)/count`, j = 0..count: distinct per component.
fn component_factors(count: usize, device: &burn::tensor::Device) -> Tensor<3> {
    vector((0..count).map(|j| (j + 1) as f64 / count as f64).collect(), device).reshape([1, count, 1])
}

/// **Deep sigmoidal flow** (Huang et al. 2018) with M components:
/// `τ(x) = logit(Σ_j w_j σ(a_j x + b_j))`, `w = softmax(w̃)`, `a_j = m + softplus(ã_j + c) > 0`,
/// computed in log space: `log s = LSE_j(log w_j + log σ(z_j))`, `log(1 − s) = LSE_j(log w_j +
/// log σ(−z_j))`, `τ = log s − log(1 − s)`, `log τ' = LSE_j(log w_j + log a_j + log σ(z_j) +
/// log σ(−z_j)) − log s − log(1 − s)`. Parameters per dimension `3M`: (ã, b̃, w̃); zero gives
/// `a = 1`, `b = 0`, equal weights: `logit(σ(x)) = x`.
///
/// At that identity the M components are equal, and equal components get equal gradients: they
/// would stay one sigmoid. So `b_j = b̃_j·(j + 1)/M` — the components start equal (the identity)
/// and move apart from the first step.
pub fn sigmoidal(x: Tensor<2>, params: &Tensor<2>, components: usize) -> (Tensor<2>, Tensor<2>) {
    let (n, d) = dims2(&x);
    let p = blocks(params, d);
    let a = positive(p.clone().narrow(1, 0, components));
    let b = p.clone().narrow(1, components, components).mul(component_factors(components, &x.device()));
    let log_w = log_softmax(p.narrow(1, 2 * components, components), 1);
    let z = a.clone().mul(x.reshape([n, 1, d])).add(b);
    let (up, down) = (log_sigmoid(z.clone()), log_sigmoid(z.neg()));
    let log_s = logsumexp_mid(log_w.clone().add(up.clone()));
    let log_1s = logsumexp_mid(log_w.clone().add(down.clone()));
    let ld = logsumexp_mid(log_w.add(a.log()).add(up).add(down)).sub(log_s.clone()).sub(log_1s.clone());
    (log_s.sub(log_1s), ld)
}

/// Clenshaw–Curtis nodes and weights on `[−1, 1]` with `n + 1` points (exact for polynomials of
/// degree ≤ n; Trefethen's `clencurt`).
pub fn clenshaw_curtis(n: usize) -> (Vec<f64>, Vec<f64>) {
    let pi = std::f64::consts::PI;
    let theta: Vec<f64> = (0..=n).map(|k| pi * k as f64 / n as f64).collect();
    let nodes = theta.iter().map(|t| t.cos()).collect();
    let nf = n as f64;
    let mut w = vec![0.0; n + 1];
    let mut v = vec![1.0; n.saturating_sub(1)];
    if n % 2 == 0 {
        w[0] = 1.0 / (nf * nf - 1.0);
        w[n] = w[0];
        for k in 1..n / 2 {
            for (i, vi) in v.iter_mut().enumerate() {
                *vi -= 2.0 * (2.0 * k as f64 * theta[i + 1]).cos() / (4.0 * (k * k) as f64 - 1.0);
            }
        }
        for (i, vi) in v.iter_mut().enumerate() {
            *vi -= (nf * theta[i + 1]).cos() / (nf * nf - 1.0);
        }
    } else {
        w[0] = 1.0 / (nf * nf);
        w[n] = w[0];
        for k in 1..=(n - 1) / 2 {
            for (i, vi) in v.iter_mut().enumerate() {
                *vi -= 2.0 * (2.0 * k as f64 * theta[i + 1]).cos() / (4.0 * (k * k) as f64 - 1.0);
            }
        }
    }
    for (i, vi) in v.iter().enumerate() {
        w[i + 1] = 2.0 * vi / nf;
    }
    (nodes, w)
}

/// `τ(x) = β + ∫₀ˣ q(t) dt` by Clenshaw–Curtis on `n + 1` nodes, `log τ' = log q(x)`, for an
/// integrand `q(t; θ) > 0` evaluated on `[N, K, D]` points.
fn integral(x: Tensor<2>, shift: Tensor<2>, nodes: usize, integrand: impl Fn(Tensor<3>) -> Tensor<3>) -> (Tensor<2>, Tensor<2>) {
    let (n, d) = dims2(&x);
    let (t, w) = clenshaw_curtis(nodes);
    let device = x.device();
    let k = t.len();
    // Node points x·(t_k + 1)/2 and the value at x itself, in one evaluation: [N, K + 1, D].
    let mut scale: Vec<f64> = t.iter().map(|t| (t + 1.0) / 2.0).collect();
    scale.push(1.0);
    let scale = vector(scale, &device).reshape([1, k + 1, 1]);
    let q = integrand(x.clone().reshape([n, 1, d]).mul(scale));
    let weights = vector(w, &device).reshape([1, k, 1]);
    let area = q.clone().narrow(1, 0, k).mul(weights).sum_dim(1).reshape([n, d]).mul(x).div_scalar(2.0);
    (shift.add(area), q.narrow(1, k, 1).reshape([n, d]).log())
}

/// **UMNN** (Wehenkel & Louppe 2019): `τ(x) = β + ∫₀ˣ f(t) dt` with the integrand a one-hidden-
/// layer network whose weights come from the conditioner,
/// `f(t) = m + softplus(c + Σ_h α_h tanh(ω_h t + b_h) + c₀)` (`c₀` makes `f = 1` at zero),
/// Clenshaw–Curtis on `nodes + 1` points; `log τ' = log f(x)`. Parameters per dimension
/// `3H + 2`: (β, c, α, ω̃, b̃), with `ω_h = 1 + ω̃_h` and `b_h = b̃_h + o_h`, the offsets `o_h`
/// spread over `[−B, B]`: zero parameters give `α = 0`, so `f = 1` and the identity, while the
/// hidden units are distinct tanh steps across the interval (as with a zero output layer on a
/// random hidden layer), so every `α_h` gets its own gradient from the first step. `log τ'` is
/// the integrand itself, so it matches the slope of the quadrature map to the quadrature's
/// accuracy (spectral in the nodes; tested).
pub fn umnn(x: Tensor<2>, params: &Tensor<2>, hidden: usize, nodes: usize, bound: f64) -> (Tensor<2>, Tensor<2>) {
    let (n, d) = dims2(&x);
    let p = blocks(params, d);
    let device = x.device();
    let shift = p.clone().narrow(1, 0, 1).reshape([n, d]);
    let c = p.clone().narrow(1, 1, 1).reshape([n, 1, 1, d]);
    let alpha = p.clone().narrow(1, 2, hidden).reshape([n, 1, hidden, d]);
    let omega = p.clone().narrow(1, 2 + hidden, hidden).add_scalar(1.0).reshape([n, 1, hidden, d]);
    let spread = (0..hidden).map(|h| if hidden == 1 { 0.0 } else { bound * (2.0 * h as f64 / (hidden - 1) as f64 - 1.0) }).collect();
    let offsets = vector(spread, &device).reshape([1, hidden, 1]);
    let bias = p.narrow(1, 2 + 2 * hidden, hidden).add(offsets).reshape([n, 1, hidden, d]);
    integral(x, shift, nodes, |t: Tensor<3>| {
        let [n, k, d] = t.dims();
        let h = omega.clone().mul(t.reshape([n, k, 1, d])).add(bias.clone()).tanh();
        let pre = h.mul(alpha.clone()).sum_dim(2).add(c.clone()).reshape([n, k, d]);
        positive(pre)
    })
}

/// **Sum-of-squares polynomial** (Jaini et al. 2019): `τ(x) = β + ∫₀ˣ (m + Σ_k p_k(t)²) dt` with
/// `p_k(t) = Σ_{l ≤ r} a_{kl} (t/B)^l` (powers of `t/B` stay within ±1 on the interval); the
/// integral by Clenshaw–Curtis on `2r + 1` points is exact. Parameters per dimension
/// `1 + K(r + 1)`: (β, a). The constant coefficients are offset by `o_k ∝ k + 1` with
/// `Σ o_k² = 1 − m`: zero parameters give the integrand 1 (the identity), and the K polynomials
/// get distinct gradients from the first step (equal ones would stay equal).
pub fn sum_of_squares(x: Tensor<2>, params: &Tensor<2>, polynomials: usize, degree: usize, bound: f64) -> (Tensor<2>, Tensor<2>) {
    let (n, d) = dims2(&x);
    let p = blocks(params, d);
    let shift = p.clone().narrow(1, 0, 1).reshape([n, d]);
    let terms = degree + 1;
    let coefficients = p.narrow(1, 1, polynomials * terms).reshape([n, 1, polynomials, terms, d]);
    let norm = (0..polynomials).map(|k| ((k + 1) * (k + 1)) as f64).sum::<f64>();
    let mut unit = vec![0.0; polynomials * terms];
    for k in 0..polynomials {
        unit[k * terms] = (k + 1) as f64 * ((1.0 - MIN_SLOPE) / norm).sqrt();
    }
    let device = x.device();
    let unit = vector(unit, &device).reshape([1, 1, polynomials, terms, 1]);
    let coefficients = coefficients.add(unit);
    integral(x, shift, (2 * degree).max(2), |t: Tensor<3>| {
        let t = t.div_scalar(bound);
        let [n, k, d] = t.dims();
        let powers: Vec<Tensor<3>> = (0..terms).scan(t.ones_like(), |power, l| {
            let current = power.clone();
            if l + 1 < terms {
                *power = power.clone().mul(t.clone());
            }
            Some(current)
        })
        .collect();
        let powers = Tensor::stack::<4>(powers, 2).reshape([n, k, 1, terms, d]);
        let values = coefficients.clone().mul(powers).sum_dim(3).reshape([n, k, polynomials, d]);
        values.square().sum_dim(2).reshape([n, k, d]).add_scalar(MIN_SLOPE)
    })
}

/// `τ` with linear tails beyond `±bound`: the core on the clamped input, continued with its slope.
pub fn with_linear_tails(x: Tensor<2>, bound: f64, core: impl Fn(Tensor<2>) -> (Tensor<2>, Tensor<2>)) -> (Tensor<2>, Tensor<2>) {
    let inside = x.clone().clamp(-bound, bound);
    let (y, ld) = core(inside.clone());
    (y.add(ld.clone().exp().mul(x.sub(inside))), ld)
}

/// `x = τ⁻¹(y)` and `log|dx/dy| = −log τ'(x)` for a monotone `tau` (value and log-slope) that is
/// linear beyond `±bound`, as [`with_linear_tails`] makes it: closed form in the tails,
/// safeguarded Newton inside, implicit gradients (module documentation).
pub fn invert(
    y: Tensor<2>,
    bound: f64,
    tolerance: &Tolerance,
    what: &str,
    tau: impl Fn(Tensor<2>) -> (Tensor<2>, Tensor<2>),
) -> Result<(Tensor<2>, Tensor<2>)> {
    let target = y.clone().detach();
    let device = target.device();
    let (n, d) = dims2(&target);
    let mut lo = Tensor::<2>::full([n, d], -bound, &device);
    let mut hi = Tensor::<2>::full([n, d], bound, &device);
    let (y_lo, ld_lo) = tau(lo.clone());
    let (y_hi, ld_hi) = tau(hi.clone());
    let (y_lo, ld_lo, y_hi, ld_hi) = (y_lo.detach(), ld_lo.detach(), y_hi.detach(), ld_hi.detach());
    let below = target.clone().lower(y_lo.clone());
    let above = target.clone().greater(y_hi.clone());
    let tails = below.clone().bool_or(above.clone());
    // Start from the straight line between the bracket's ends.
    let span = y_hi.clone().sub(y_lo.clone());
    let mut x = target.clone().sub(y_lo.clone()).div(span).mul_scalar(2.0 * bound).sub_scalar(bound).clamp(-bound, bound);
    let mut unconverged = n * d;
    let mut last = f64::INFINITY;
    for _ in 0..tolerance.max_iterations {
        let (value, ld) = tau(x.clone());
        let f = value.detach().sub(target.clone());
        let positive = f.clone().greater_elem(0.0);
        hi = hi.mask_where(positive.clone(), x.clone());
        lo = lo.mask_where(positive.bool_not(), x.clone());
        let newton = x.clone().sub(f.div(ld.detach().exp()));
        let inside = newton.clone().greater(lo.clone()).bool_and(newton.clone().lower(hi.clone()));
        let middle = lo.clone().add(hi.clone()).div_scalar(2.0);
        let next = middle.mask_where(inside, newton);
        let scale = next.clone().abs().mul_scalar(tolerance.relative).add_scalar(tolerance.absolute);
        let moved = next.clone().sub(x).abs();
        let width = hi.clone().sub(lo.clone());
        // NaN compares false: an element with a NaN never counts as converged.
        let settled = moved.clone().lower_equal(scale.clone()).bool_or(width.lower_equal(scale));
        let open = settled.bool_not().bool_and(tails.clone().bool_not());
        x = next;
        unconverged = scalar(open.float().sum())? as usize;
        last = scalar(moved.max())?;
        if unconverged == 0 {
            break;
        }
    }
    if unconverged > 0 {
        return Err(FlowError::NotConverged {
            what: format!("the inverse of {what} ({unconverged} of {} elements)", n * d),
            iterations: tolerance.max_iterations,
            residual: last,
        });
    }
    // The tails in closed form.
    let left = target.clone().sub(y_lo).div(ld_lo.exp()).sub_scalar(bound);
    let right = target.sub(y_hi).div(ld_hi.exp()).add_scalar(bound);
    let root = x.mask_where(below, left).mask_where(above, right).detach();
    // Into the graph by one Newton step with a detached slope: value x*, implicit derivatives.
    let (value, ld) = tau(root.clone());
    let x = root.sub(value.sub(y).div(ld.detach().exp()));
    let (_, ld) = tau(x.clone());
    Ok((x, ld.neg()))
}

#[cfg(test)]
mod tests {
    use super::clenshaw_curtis;

    /// n + 1 Clenshaw–Curtis points integrate t^j over [−1, 1] exactly for j ≤ n.
    #[test]
    fn clenshaw_curtis_is_exact_for_polynomials() {
        for n in [2, 3, 8, 16, 21] {
            let (t, w) = clenshaw_curtis(n);
            for j in 0..=n {
                let exact = if j % 2 == 0 { 2.0 / (j as f64 + 1.0) } else { 0.0 };
                let q: f64 = t.iter().zip(&w).map(|(t, w)| w * t.powi(j as i32)).sum();
                assert!((q - exact).abs() < 1e-13, "n = {n}, t^{j}: {q} vs {exact}");
            }
        }
    }
}

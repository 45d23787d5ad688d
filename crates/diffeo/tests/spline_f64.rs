//! The rational-quadratic spline in f64: identity start, tails, knots, extreme parameters,
//! finite gradients everywhere, exact inverse, log-det, and the spline inside both conditioners.
//! Every robustness case runs on both implementations: the composed tensor ops (the reference) and
//! the fused CPU kernel, which must also agree with each other and with finite differences.

use diffeo::bijections::*;
use diffeo::prelude::*;
use diffeo::spline::{fused, rational_quadratic};
use diffeo::tensor::{matrix, to_vec};
use diffeo::testing::{check_bijection, randomize_parameters, HarnessConfig, JacobianReference};
use diffeo::transformer::SplineTails;
use rand::Rng;
use rand_distr::StandardNormal;

const B: f64 = 3.0;
const K: usize = 6;

fn device() -> Device {
    diffeo::cpu_f64().expect("f64 device")
}

fn tensor3(values: Vec<f64>, n: usize, d: usize, k: usize, device: &Device) -> Tensor<3> {
    Tensor::<3>::from_data(burn::tensor::TensorData::new(values, [n, d, k]), device)
}

/// Random logits `[n, d, K]`, `[n, d, K]`, `[n, d, K−1]` with the given scale.
fn params(n: usize, d: usize, scale: f64, seed: u64) -> [Vec<f64>; 3] {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut r = |len: usize| (0..len).map(|_| scale * rng.sample::<f64, _>(StandardNormal)).collect::<Vec<f64>>();
    [r(n * d * K), r(n * d * K), r(n * d * (K - 1))]
}

struct Run {
    y: Vec<f64>,
    ld: Vec<f64>,
    x_grad: Vec<f64>,
    param_grads: Vec<Vec<f64>>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Impl {
    Composed,
    Fused,
}

const IMPLS: [Impl; 2] = [Impl::Composed, Impl::Fused];

/// Packs `[n, d, K]`-layout logits into the `[n, (3K−1)·d]` layout (column `q·d + j`).
fn pack(p: &[Vec<f64>; 3], n: usize, d: usize) -> Vec<f64> {
    let counts = [K, K, K - 1];
    let per = 3 * K - 1;
    let mut out = vec![0.0; n * per * d];
    for row in 0..n {
        for j in 0..d {
            let mut q = 0;
            for (block, &c) in p.iter().zip(&counts) {
                for i in 0..c {
                    out[row * per * d + q * d + j] = block[(row * d + j) * c + i];
                    q += 1;
                }
            }
        }
    }
    out
}

/// The inverse of [`pack`].
fn unpack(packed: &[f64], n: usize, d: usize) -> Vec<Vec<f64>> {
    let counts = [K, K, K - 1];
    let per = 3 * K - 1;
    let mut out: Vec<Vec<f64>> = counts.iter().map(|c| vec![0.0; n * d * c]).collect();
    for row in 0..n {
        for j in 0..d {
            let mut q = 0;
            for (block, &c) in out.iter_mut().zip(&counts) {
                for i in 0..c {
                    block[(row * d + j) * c + i] = packed[row * per * d + q * d + j];
                    q += 1;
                }
            }
        }
    }
    out
}

/// Applies the spline to `x` (`[n, d]`) with the chosen implementation, with gradients of
/// `Σy + Σld` for the inputs and parameters.
fn run_with(imp: Impl, x: &[f64], d: usize, p: &[Vec<f64>; 3], inverse: bool) -> Run {
    let dev = device().autodiff();
    let n = x.len() / d;
    let xt = matrix(x.to_vec(), n, d, &dev).require_grad();
    let g2 = |t: &Tensor<2>, grads: &burn::tensor::Gradients| t.grad(grads).map(|g| to_vec(g).unwrap()).unwrap_or_default();
    match imp {
        Impl::Composed => {
            let w = tensor3(p[0].clone(), n, d, K, &dev).require_grad();
            let h = tensor3(p[1].clone(), n, d, K, &dev).require_grad();
            let dv = tensor3(p[2].clone(), n, d, K - 1, &dev).require_grad();
            let (y, ld) = rational_quadratic(xt.clone(), w.clone(), h.clone(), dv.clone(), B, inverse);
            let grads = y.clone().sum().add(ld.clone().sum()).backward();
            let g3 = |t: &Tensor<3>| t.grad(&grads).map(|g| g.try_into_vec_as::<f64>().unwrap()).unwrap_or_default();
            Run {
                y: to_vec(y).unwrap(),
                ld: to_vec(ld).unwrap(),
                x_grad: g2(&xt, &grads),
                param_grads: vec![g3(&w), g3(&h), g3(&dv)],
            }
        }
        Impl::Fused => {
            assert!(fused::supported(&dev));
            let packed = matrix(pack(p, n, d), n, (3 * K - 1) * d, &dev).require_grad();
            let (y, ld) = fused::rational_quadratic(xt.clone(), packed.clone(), K, B, inverse);
            let grads = y.clone().sum().add(ld.clone().sum()).backward();
            Run {
                y: to_vec(y).unwrap(),
                ld: to_vec(ld).unwrap(),
                x_grad: g2(&xt, &grads),
                param_grads: unpack(&g2(&packed, &grads), n, d),
            }
        }
    }
}

fn all_finite(r: &Run) -> bool {
    r.y.iter().chain(&r.ld).chain(&r.x_grad).chain(r.param_grads.iter().flatten()).all(|v| v.is_finite())
}

fn uniform(n: usize, lo: f64, hi: f64, seed: u64) -> Vec<f64> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(lo..hi)).collect()
}

fn max_rel_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs() / (1.0 + x.abs().max(y.abs()))).fold(0.0, f64::max)
}

#[test]
fn fused_kernel_matches_the_composed_reference() {
    let (n, d) = (400, 3);
    let mut x = uniform(n * d, -1.5 * B, 1.5 * B, 21);
    // Knots of zero-logit bins, the bounds, and far outside.
    for (i, v) in [-B, B, 0.0, B / 3.0, -B / 3.0, 1e4, -1e8].iter().enumerate() {
        x[i] = *v;
    }
    for scale in [0.5, 1.5, 4.0] {
        let p = params(n, d, scale, 22);
        for inverse in [false, true] {
            let c = run_with(Impl::Composed, &x, d, &p, inverse);
            let f = run_with(Impl::Fused, &x, d, &p, inverse);
            assert!(all_finite(&f));
            let tol = 1e-9;
            assert!(max_rel_diff(&c.y, &f.y) < tol, "outputs differ by {}", max_rel_diff(&c.y, &f.y));
            assert!(max_rel_diff(&c.ld, &f.ld) < tol, "log-dets differ by {}", max_rel_diff(&c.ld, &f.ld));
            let gx = max_rel_diff(&c.x_grad, &f.x_grad);
            assert!(gx < 1e-7, "input gradients differ by {gx} (scale {scale}, inverse {inverse})");
            for (a, b) in c.param_grads.iter().zip(&f.param_grads) {
                let gp = max_rel_diff(a, b);
                assert!(gp < 1e-7, "parameter gradients differ by {gp} (scale {scale}, inverse {inverse})");
            }
        }
    }
}

#[test]
fn fused_kernel_gradients_match_finite_differences() {
    let (n, d) = (12, 2);
    let x = uniform(n * d, -B, B, 31);
    let p = params(n, d, 1.5, 32);
    let loss = |x: &[f64], p: &[Vec<f64>; 3], inverse: bool| {
        let r = run_with(Impl::Fused, x, d, p, inverse);
        r.y.iter().chain(&r.ld).sum::<f64>()
    };
    // Central differences with one Richardson step (O(h⁴) truncation); where the inverse is very
    // steep (dx/dy ~ 1e4) higher derivatives still cost ~1e-5 relative.
    let h = 1e-5;
    let derivative = |f: &dyn Fn(f64) -> f64| {
        let central = |h: f64| (f(h) - f(-h)) / (2.0 * h);
        (4.0 * central(h / 2.0) - central(h)) / 3.0
    };
    for inverse in [false, true] {
        // Invert from points inside the image so both directions see interior values.
        let v = if inverse { run_with(Impl::Fused, &x, d, &p, false).y } else { x.clone() };
        let r = run_with(Impl::Fused, &v, d, &p, inverse);
        for k in 0..v.len() {
            let fd = derivative(&|e| {
                let mut vp = v.clone();
                vp[k] += e;
                loss(&vp, &p, inverse)
            });
            assert!((fd - r.x_grad[k]).abs() < 2e-5 * (1.0 + fd.abs()), "d/dv[{k}] (inverse {inverse}): {} vs fd {fd}", r.x_grad[k]);
        }
        for b in 0..3 {
            for k in 0..p[b].len() {
                let fd = derivative(&|e| {
                    let mut pp = p.clone();
                    pp[b][k] += e;
                    loss(&v, &pp, inverse)
                });
                let g = r.param_grads[b][k];
                assert!((fd - g).abs() < 2e-5 * (1.0 + fd.abs()), "d/dθ[{b}][{k}] (inverse {inverse}): {g} vs fd {fd}");
            }
        }
    }
}

#[test]
fn zero_parameters_are_the_identity() {
    for imp in IMPLS {
        zero_parameters_are_the_identity_case(imp);
    }
}

fn zero_parameters_are_the_identity_case(imp: Impl) {
    let x = uniform(200, -2.0 * B, 2.0 * B, 1);
    let zero = [vec![0.0; 200 * K], vec![0.0; 200 * K], vec![0.0; 200 * (K - 1)]];
    for inverse in [false, true] {
        let r = run_with(imp, &x, 1, &zero, inverse);
        for (a, b) in r.y.iter().zip(&x) {
            assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        }
        assert!(r.ld.iter().all(|v| v.abs() < 1e-12));
    }
}

#[test]
fn exact_inverse_and_log_det_for_ordinary_parameters() {
    for imp in IMPLS {
        exact_inverse_and_log_det_for_ordinary_parameters_case(imp);
    }
}

fn exact_inverse_and_log_det_for_ordinary_parameters_case(imp: Impl) {
    let (n, d) = (300, 2);
    let x = uniform(n * d, -B, B, 2);
    let p = params(n, d, 1.5, 3);
    let f = run_with(imp, &x, d, &p, false);
    let b = run_with(imp, &f.y, d, &p, true);
    let err = b.y.iter().zip(&x).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(err <= 1e-10, "round trip {err}");
    for i in 0..n {
        let ld_f = f.ld[i * d] + f.ld[i * d + 1];
        let ld_b = b.ld[i * d] + b.ld[i * d + 1];
        assert!((ld_f + ld_b).abs() < 1e-9, "log-dets {ld_f} {ld_b}");
    }
    // log|dy/dx| against central differences, elementwise.
    let h = 1e-6;
    let plus: Vec<f64> = x.iter().map(|v| v + h).collect();
    let minus: Vec<f64> = x.iter().map(|v| v - h).collect();
    let (yp, ym) = (run_with(imp, &plus, d, &p, false).y, run_with(imp, &minus, d, &p, false).y);
    for k in 0..n * d {
        let fd = ((yp[k] - ym[k]) / (2.0 * h)).ln();
        assert!((fd - f.ld[k]).abs() < 1e-6 * (1.0 + fd.abs()), "log-det {} vs fd {fd} at {}", f.ld[k], x[k]);
    }
    // Monotone: sorted inputs give sorted outputs (same parameters for every row).
    let mut xs = uniform(100, -1.5 * B, 1.5 * B, 9);
    xs.sort_by(f64::total_cmp);
    let p1 = params(1, 1, 1.5, 4);
    let rep = |v: &Vec<f64>| (0..100).flat_map(|_| v.iter().copied()).collect::<Vec<f64>>();
    let y = run_with(imp, &xs, 1, &[rep(&p1[0]), rep(&p1[1]), rep(&p1[2])], false).y;
    assert!(y.windows(2).all(|w| w[0] <= w[1]));
}

#[test]
fn a_batch_entirely_in_the_tails_and_far_outside() {
    for imp in IMPLS {
        a_batch_entirely_in_the_tails_and_far_outside_case(imp);
    }
}

fn a_batch_entirely_in_the_tails_and_far_outside_case(imp: Impl) {
    let mut x = uniform(50, B + 1e-9, 10.0 * B, 5);
    x.extend(uniform(50, -10.0 * B, -B - 1e-9, 6));
    x.extend([1e4, -1e4, 1e8, -1e8]);
    let n = x.len();
    let p = params(n, 1, 2.0, 7);
    for inverse in [false, true] {
        let r = run_with(imp, &x, 1, &p, inverse);
        assert!(all_finite(&r), "finite outputs and gradients in the tails");
        assert_eq!(r.y, x, "identity in the tails");
        assert!(r.ld.iter().all(|v| *v == 0.0));
        assert!(r.x_grad.iter().all(|g| (*g - 1.0).abs() < 1e-12), "dy/dx = 1 in the tails");
    }
}

#[test]
fn inputs_on_knots_and_on_the_bounds() {
    for imp in IMPLS {
        inputs_on_knots_and_on_the_bounds_case(imp);
    }
}

fn inputs_on_knots_and_on_the_bounds_case(imp: Impl) {
    // Zero width logits put the input knots at −B + 2B·k/K; the output knots are random.
    let mut x: Vec<f64> = (0..=K).map(|k| -B + 2.0 * B * k as f64 / K as f64).collect();
    x.extend([B, -B, B - 1e-15, -B + 1e-15, B + 1e-15]);
    let n = x.len();
    let mut p = params(n, 1, 1.5, 8);
    p[0] = vec![0.0; n * K];
    let f = run_with(imp, &x, 1, &p, false);
    assert!(all_finite(&f));
    let b = run_with(imp, &f.y, 1, &p, true);
    assert!(all_finite(&b));
    for (a, e) in b.y.iter().zip(&x) {
        assert!((a - e).abs() < 1e-10, "round trip at a knot: {a} vs {e}");
    }
    // Output knots are hit exactly by the knot inputs; invert from them too.
    let y_knots: Vec<f64> = f.y[..=K].to_vec();
    let p_k = [p[0][..(K + 1) * K].to_vec(), p[1][..(K + 1) * K].to_vec(), p[2][..(K + 1) * (K - 1)].to_vec()];
    let bk = run_with(imp, &y_knots, 1, &p_k, true);
    assert!(all_finite(&bk));
    // The map is continuous across ±B: just inside equals just outside.
    assert!((f.y[K + 1] - B).abs() < 1e-12 && (f.y[K + 2] + B).abs() < 1e-12);
}

#[test]
fn extreme_but_valid_parameters() {
    for imp in IMPLS {
        extreme_but_valid_parameters_case(imp);
    }
}

fn extreme_but_valid_parameters_case(imp: Impl) {
    // Very narrow bins (logits ±20) and derivatives at the floor (logits −40), in f64.
    let (n, d) = (400, 1);
    let mut rng = StdRng::seed_from_u64(11);
    let mut extreme = |len: usize, choices: &[f64]| (0..len).map(|_| choices[rng.random_range(0..choices.len())]).collect::<Vec<f64>>();
    let p = [extreme(n * K, &[-20.0, 0.0, 20.0]), extreme(n * K, &[-20.0, 0.0, 20.0]), extreme(n * (K - 1), &[-40.0, 0.0, 40.0])];
    let x = uniform(n, -B, B, 12);
    let f = run_with(imp, &x, d, &p, false);
    assert!(all_finite(&f), "finite outputs and gradients");
    let b = run_with(imp, &f.y, d, &p, true);
    assert!(all_finite(&b));
    for (((xi, yi), ld), back) in x.iter().zip(&f.y).zip(&f.ld).zip(&b.y) {
        // Tolerance scaled by the local slope: dx = dy / (dy/dx).
        let slope = ld.exp();
        let tol = 1e-10 * (1.0 + 1.0 / slope);
        assert!((back - xi).abs() <= tol, "x {xi} → {yi} → {back} (slope {slope})");
    }
}

#[test]
fn spline_layers_pass_the_harness() {
    for tails in [SplineTails::Identity, SplineTails::Affine] {
        spline_layers_pass_the_harness_with(Transformer::RationalQuadratic { bins: 5, tail_bound: 2.0, tails });
    }
}

fn spline_layers_pass_the_harness_with(spline: Transformer) {
    let dev = device();
    // Points spread over the interval and the tails.
    // Finite differences straddling a knot see the jump of the second derivative (O(h) error),
    // and where the map is very flat (slopes ~e⁻¹²) rounding of y costs ε|y|/(h·slope): check
    // against both finite differences (loose) and the autodiff Jacobian (tight).
    let fd = HarnessConfig { scale: 1.6, logdet_tol: 1e-4, fd_step: 1e-7, ..HarnessConfig::default() };
    let exact = HarnessConfig { logdet_tol: 1e-9, jacobian: JacobianReference::Autodiff, ..fd.clone() };
    for (dim, ctx) in [(1, 0), (2, 0), (3, 2), (5, 0)] {
        let order: Vec<usize> = (1..=dim).collect();
        let made = LayerConfig::MaskedAutoregressive(
            MaskedAutoregressiveConfig::new(dim, vec![16, 16])
                .with_context_dim(ctx)
                .with_order(order)
                .with_transformer(spline.clone())
                .with_activation(diffeo::nn::Activation::Tanh),
        );
        for layer in [made.clone(), made.inverted()] {
            let c = ChainConfig::new(dim, vec![layer]).with_seed(dim as u64).init(&dev).unwrap();
            let c = randomize_parameters(c, 40 + dim as u64, 0.5);
            for cfg in [&fd, &exact] {
                check_bijection(&c, &dev, cfg).unwrap_or_else(|e| panic!("{e}"));
            }
        }
        if dim >= 2 {
            let coupling = CouplingConfig::half(dim, vec![16], false)
                .with_context_dim(ctx)
                .with_transformer(spline.clone())
                .with_activation(diffeo::nn::Activation::Tanh);
            let c = ChainConfig::new(dim, vec![LayerConfig::Coupling(coupling)]).with_seed(3).init(&dev).unwrap();
            let c = randomize_parameters(c, 50 + dim as u64, 0.5);
            for cfg in [&fd, &exact] {
                check_bijection(&c, &dev, cfg).unwrap_or_else(|e| panic!("{e}"));
            }
        }
    }
}

#[test]
fn a_spline_flow_density_integrates_to_one() {
    let dev = device();
    for tails in [SplineTails::Identity, SplineTails::Affine] {
        let spline = Transformer::RationalQuadratic { bins: 8, tail_bound: 5.0, tails };
        let cfg = MafConfig::new(1).with_transforms(2).with_hidden(vec![8]).with_transformer(spline);
        // Moderate random parameters: a clearly non-linear map whose density a fine grid resolves.
        let flow = randomize_parameters(cfg.init(&dev).unwrap(), 3, 0.5);
        let (lo, hi, m) = (-20.0, 20.0, 160_001);
        let step = (hi - lo) / (m - 1) as f64;
        let xs: Vec<f64> = (0..m).map(|i| lo + step * i as f64).collect();
        let lp = to_vec(flow.log_prob(matrix(xs, m, 1, &dev), None).unwrap()).unwrap();
        let p: Vec<f64> = lp.iter().map(|v| v.exp()).collect();
        // Simpson's rule.
        let integral = step / 3.0 * (p[0] + p[m - 1] + (1..m - 1).map(|i| if i % 2 == 1 { 4.0 } else { 2.0 } * p[i]).sum::<f64>());
        assert!((integral - 1.0).abs() < 1e-4, "{tails:?} tails: ∫p = {integral}");
    }
}

/// Affine tails: zero parameters are the identity; a shift μ and log-scale s move the spline's
/// image to μ + e^s·[−B, B] and continue it linearly with slope e^s, so values land far beyond ±B;
/// the inverse undoes it. A configuration written before the tail kind existed reads as identity
/// tails; new splines are affine.
#[test]
fn affine_tails_reach_beyond_the_bound_and_old_configurations_keep_identity_tails() {
    let dev = device();
    let (bins, bound) = (4, 2.0);
    let t = Transformer::RationalQuadratic { bins, tail_bound: bound, tails: SplineTails::Affine };
    let p = t.params_per_dim();
    assert_eq!(p, 3 * bins - 1 + 2);
    let (n, d) = (5, 2);
    let xs = vec![-30.0, -2.0, -0.5, 0.0, 0.7, 1.9, 2.0, 9.0, 50.0, -1.0];
    let x = matrix(xs.clone(), n, d, &dev);
    let tol = diffeo::event::Tolerance::default();
    let (y, ld) = t.forward(x.clone(), &Tensor::zeros([n, p * d], &dev), &tol).unwrap();
    assert_eq!(to_vec(y).unwrap(), xs);
    assert!(to_vec(ld).unwrap().iter().all(|v| *v == 0.0));
    // Spline parameters zero (its identity), shift 10, scale 3: y = 10 + 3x everywhere.
    let s = 3f64.ln();
    let a = s / (1.0 - s / diffeo::transformer::AFFINE_LOG_SCALE_BOUND); // the soft clip's preimage of s
    let mut params = vec![0.0; n * p * d];
    for row in 0..n {
        for j in 0..d {
            params[row * p * d + (p - 2) * d + j] = 10.0;
            params[row * p * d + (p - 1) * d + j] = a;
        }
    }
    let params = matrix(params, n, p * d, &dev);
    let (y, ld) = t.forward(x.clone(), &params, &tol).unwrap();
    for (yv, xv) in to_vec(y.clone()).unwrap().iter().zip(&xs) {
        assert!((yv - (10.0 + 3.0 * xv)).abs() < 1e-12, "{xv} → {yv}");
    }
    assert!(to_vec(ld).unwrap().iter().all(|v| (v - s).abs() < 1e-12));
    let (back, ld_back) = t.inverse(y, &params);
    for (b, xv) in to_vec(back).unwrap().iter().zip(&xs) {
        assert!((b - xv).abs() < 1e-12);
    }
    assert!(to_vec(ld_back).unwrap().iter().all(|v| (v + s).abs() < 1e-12));

    let old: Transformer = serde_json::from_str(r#"{"rational_quadratic":{"bins":8,"tail_bound":5.0}}"#).unwrap();
    assert_eq!(old, Transformer::RationalQuadratic { bins: 8, tail_bound: 5.0, tails: SplineTails::Identity });
    assert!(serde_json::to_string(&Transformer::spline()).unwrap().contains(r#""tails":"affine""#));
}

#[test]
fn bad_spline_settings_are_rejected() {
    for t in [
        Transformer::RationalQuadratic { bins: 1, tail_bound: 5.0, tails: SplineTails::Affine },
        Transformer::RationalQuadratic { bins: 8, tail_bound: 0.0, tails: SplineTails::Identity },
        Transformer::RationalQuadratic { bins: 8, tail_bound: f64::NAN, tails: SplineTails::Affine },
    ] {
        let cfg = MafConfig::new(2).with_transformer(t).flow_config();
        assert!(matches!(cfg.init(&device()), Err(FlowError::InvalidConfig(_))));
    }
}


//! Variational inference: target formulas, diagnostics (ELBO, IS log Z, ESS, Pareto k̂), the
//! reverse-KL fit on U1 and Rosenbrock, sticking-the-landing, and targets that return NaN.

use diffeo::bijections::{ElementwiseAffineConfig, ElementwiseConfig, ElementwiseKind, LayerConfig};
use diffeo::prelude::*;
use diffeo::tensor::{matrix, to_vec, LN_2PI};
use diffeo::vi::*;
use rand::Rng;
use rand_distr::StandardNormal;

fn device() -> Device {
    diffeo::cpu()
}

fn at(target: &dyn Target, points: &[f64]) -> Vec<f64> {
    log_density_at(target, points).unwrap()
}

/// log ∫ p̃ over `[lo, hi]²` by the midpoint rule on a `g × g` grid.
fn log_z_2d(target: &dyn Target, lo: f64, hi: f64, g: usize) -> f64 {
    let h = (hi - lo) / g as f64;
    let mut pts = Vec::with_capacity(2 * g * g);
    for i in 0..g {
        for j in 0..g {
            pts.push(lo + (i as f64 + 0.5) * h);
            pts.push(lo + (j as f64 + 0.5) * h);
        }
    }
    let lp = at(target, &pts);
    let max = lp.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    max + (lp.iter().map(|v| (v - max).exp()).sum::<f64>() * h * h).ln()
}

#[test]
fn energy_normalizers_match_quadrature() {
    // U1 decays on ℝ²; U2–U4 live on the box [−4, 4]².
    for (t, lo, hi) in [
        (StandardTarget::U1, -6.0, 6.0),
        (StandardTarget::U2, -4.0, 4.0),
        (StandardTarget::U3, -4.0, 4.0),
        (StandardTarget::U4, -4.0, 4.0),
    ] {
        let z = log_z_2d(&t, lo, hi, 800);
        let expected = t.log_normalizer().unwrap();
        assert!((z - expected).abs() < 2e-3, "{}: quadrature {z} vs {expected}", t.name());
        assert_eq!(t.support().is_some(), t != StandardTarget::U1);
    }
    // The banana is volume-preserving: log Z = 0 (quadrature over its bulk).
    let banana = StandardTarget::Banana { curvature: 0.03 };
    let mut pts = Vec::new();
    let h = 0.1;
    for i in 0..1200 {
        for j in 0..1000 {
            pts.push(-60.0 + (i as f64 + 0.5) * h);
            pts.push(-15.0 + (j as f64 + 0.5) * h);
        }
    }
    let z: f64 = at(&banana, &pts).iter().map(|v| v.exp()).sum::<f64>() * h * h;
    assert!((z - 1.0).abs() < 1e-3, "banana ∫p = {z}");
}

#[test]
fn closed_form_targets_match_their_factorizations() {
    let mut rng = StdRng::seed_from_u64(1);
    let pts: Vec<f64> = (0..20 * 10).map(|_| 2.0 * rng.sample::<f64, _>(StandardNormal)).collect();
    let normal = |x: f64, mean: f64, var: f64| -0.5 * (x - mean).powi(2) / var - 0.5 * (LN_2PI + var.ln());
    // Rosenbrock: x₁ ~ N(1, 10), x₂ | x₁ ~ N(x₁², 0.1), so log p̃ = log p − ln 2π.
    let rb = StandardTarget::Rosenbrock;
    let two: Vec<f64> = pts[..40].to_vec();
    for (row, v) in two.chunks(2).zip(at(&rb, &two)) {
        let exact = normal(row[0], 1.0, 10.0) + normal(row[1], row[0] * row[0], 0.1) + LN_2PI;
        assert!((v - exact).abs() < 1e-4 * (1.0 + exact.abs()), "rosenbrock {v} vs {exact}");
    }
    assert!((rb.log_normalizer().unwrap() - LN_2PI).abs() < 1e-12);
    // Funnel, d = 10.
    let funnel = StandardTarget::Funnel { dim: 10 };
    for (row, v) in pts.chunks(10).zip(at(&funnel, &pts)) {
        let exact = normal(row[0], 0.0, 9.0) + row[1..].iter().map(|x| normal(*x, 0.0, row[0].exp())).sum::<f64>();
        assert!((v - exact).abs() < 1e-4 * (1.0 + exact.abs()), "funnel {v} vs {exact}");
    }
    // Banana.
    let banana = StandardTarget::Banana { curvature: 0.1 };
    for (row, v) in two.chunks(2).zip(at(&banana, &two)) {
        let exact = normal(row[0], 0.0, 100.0) + normal(row[1], 0.1 * (row[0] * row[0] - 100.0), 1.0);
        assert!((v - exact).abs() < 1e-4 * (1.0 + exact.abs()), "banana {v} vs {exact}");
    }
    // Gaussian with a full covariance: log p̃ + log Z is the normal log-density.
    let cov = vec![2.0, 0.6, 0.6, 0.5];
    let g = StandardTarget::Gaussian { mean: vec![1.0, -1.0], covariance: cov.clone() };
    g.validate().unwrap();
    let det: f64 = 2.0 * 0.5 - 0.36;
    for (row, v) in two.chunks(2).zip(at(&g, &two)) {
        let (a, b) = (row[0] - 1.0, row[1] + 1.0);
        let q = (0.5 * a * a - 2.0 * 0.6 * a * b + 2.0 * b * b) / det;
        let exact = -0.5 * q;
        assert!((v - exact).abs() < 1e-4 * (1.0 + exact.abs()), "gaussian {v} vs {exact}");
    }
    assert!((g.log_normalizer().unwrap() - (LN_2PI + 0.5 * det.ln())).abs() < 1e-12);
    assert!(StandardTarget::Gaussian { mean: vec![0.0; 2], covariance: vec![1.0, 2.0, 2.0, 1.0] }.validate().is_err());
    assert!(StandardTarget::from_name("u5").is_err());
    for name in StandardTarget::NAMES {
        StandardTarget::from_name(name).unwrap().validate().unwrap();
    }
}

#[test]
fn pareto_khat_recovers_known_tails() {
    let mut rng = StdRng::seed_from_u64(3);
    // w = U^(−ξ) has a Pareto tail of shape ξ: log w = −ξ·ln U.
    for xi in [0.2, 0.5, 0.9] {
        let lw: Vec<f64> = (0..20_000).map(|_| -xi * rng.random::<f64>().ln()).collect();
        let k = pareto_khat(&lw);
        assert!((k - xi).abs() < 0.1, "ξ = {xi}: k̂ = {k}");
    }
    // Light tails (log-normal weights with a small spread): k̂ well below 0.5.
    let lw: Vec<f64> = (0..20_000).map(|_| 0.1 * rng.sample::<f64, _>(StandardNormal)).collect();
    assert!(pareto_khat(&lw) < 0.3);
    // Bounded weights (uniform): a negative shape.
    let lw: Vec<f64> = (0..20_000).map(|_| rng.random::<f64>().ln()).collect();
    let k = pareto_khat(&lw);
    assert!(k < -0.5, "uniform weights: k̂ = {k}");
    assert!(pareto_khat(&[0.0; 5]).is_nan());
}

#[test]
fn diagnostics_of_an_exact_approximation() {
    // q = N(0, I) = p exactly: constant weights, ELBO = log Z, KL = 0, ESS = n.
    let d = 3;
    let target = StandardTarget::Gaussian { mean: vec![0.0; d], covariance: vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0] };
    let flow = FlowConfig::new(d, vec![LayerConfig::ElementwiseAffine(ElementwiseAffineConfig::new(d))]).init(&device()).unwrap();
    let diag = diagnostics(&flow, &target, 5000, 0).unwrap();
    let log_z = 1.5 * LN_2PI;
    assert!((diag.elbo - log_z).abs() < 1e-4 && (diag.log_z - log_z).abs() < 1e-4, "{diag:?}");
    assert!(diag.kl.unwrap().abs() < 1e-4);
    assert!((diag.ess_fraction - 1.0).abs() < 1e-6);
    assert_eq!(diag.samples, 5000);
    assert_eq!(diag.dropped, 0);
}

#[test]
fn sticking_the_landing_has_zero_gradient_at_the_optimum() {
    // At q = p the STL estimator is exactly zero for every sample, so the exact flow does not
    // move; the plain estimator has zero mean but not zero variance, so it does.
    let d = 2;
    let target = StandardTarget::Gaussian { mean: vec![0.0; d], covariance: vec![1.0, 0.0, 0.0, 1.0] };
    let probe = matrix(vec![0.3, -1.2, 2.0, 0.5], 2, d, &device());
    let exact = FlowConfig::new(d, vec![LayerConfig::ElementwiseAffine(ElementwiseAffineConfig::new(d))]).init(&device()).unwrap();
    let before = to_vec(exact.log_prob(probe.clone(), None).unwrap()).unwrap();
    for stl in [true, false] {
        let cfg = ReverseKlConfig::new().with_steps(20).with_batch_size(64).with_learning_rate(1e-2).with_sticking_the_landing(stl);
        let flow = FlowConfig::new(d, vec![LayerConfig::ElementwiseAffine(ElementwiseAffineConfig::new(d))]).init(&device()).unwrap();
        let (flow, _) = fit_reverse_kl(flow, &target, &cfg, &mut |_| {}).unwrap();
        let after = to_vec(flow.log_prob(probe.clone(), None).unwrap()).unwrap();
        let moved = before.iter().zip(&after).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        if stl {
            assert!(moved < 1e-5, "STL moved the exact flow by {moved}");
        } else {
            assert!(moved > 1e-4, "the plain estimator should be noisy at the optimum ({moved})");
        }
    }
    // STL needs an inverse: a planar flow is refused with a clear error.
    let planar = FlowConfig::new(d, vec![LayerConfig::Planar(diffeo::bijections::PlanarConfig::new(d))]).init(&device()).unwrap();
    let cfg = ReverseKlConfig::new().with_steps(5).with_sticking_the_landing(true);
    assert!(matches!(fit_reverse_kl(planar, &target, &cfg, &mut |_| {}), Err(FlowError::InvalidConfig(_))));
}

#[test]
fn non_finite_target_values_are_dropped_or_refused() {
    let d = 2;
    // NaN on half the plane: those samples are dropped and counted, the model stays finite.
    let half = FnTarget::new(d, |x: Tensor<2>| {
        let x0 = x.clone().narrow(1, 0, 1).squeeze_dim::<1>(1);
        let lp = x.square().sum_dim(1).squeeze_dim::<1>(1).mul_scalar(-0.5);
        lp.mask_fill(x0.greater_elem(0.0), f64::NAN)
    });
    let flow = FlowConfig::new(d, vec![LayerConfig::ElementwiseAffine(ElementwiseAffineConfig::new(d))]).init(&device()).unwrap();
    let cfg = ReverseKlConfig::new().with_steps(10).with_batch_size(64);
    let (flow, report) = fit_reverse_kl(flow, &half, &cfg, &mut |_| {}).unwrap();
    assert!(report.dropped > 100 && report.dropped < 540, "dropped {}", report.dropped);
    let diag = diagnostics(&flow, &half, 1000, 1).unwrap();
    assert!(diag.dropped > 0 && diag.elbo.is_finite());
    // NaN everywhere: a clear error, no model.
    let nan = FnTarget::new(d, |x: Tensor<2>| x.sum_dim(1).squeeze_dim::<1>(1).mul_scalar(f64::NAN));
    let flow = FlowConfig::new(d, vec![LayerConfig::ElementwiseAffine(ElementwiseAffineConfig::new(d))]).init(&device()).unwrap();
    assert!(matches!(fit_reverse_kl(flow, &nan, &cfg, &mut |_| {}), Err(FlowError::InvalidConfig(_))));
    // Wrong dimension.
    let flow = FlowConfig::new(3, vec![LayerConfig::ElementwiseAffine(ElementwiseAffineConfig::new(3))]).init(&device()).unwrap();
    assert!(matches!(fit_reverse_kl(flow, &StandardTarget::U1, &cfg, &mut |_| {}), Err(FlowError::DimensionMismatch { .. })));
}

#[test]
fn u1_is_fitted_within_0_05_nats() {
    // U1 has two lobes: reverse KL must balance their mass, and gradient noise can tip the
    // balance (KL ln 2 for a lost lobe). Sticking-the-landing gradients and 1024 draws per step
    // keep the fit stable across seeds (seeds 1–3: KL 0.030, 0.023, 0.002).
    let target = StandardTarget::U1;
    let mut config = nsf_coupling(2, 4, vec![64, 64]).with_seed(1).flow_config();
    config.layers.insert(0, LayerConfig::ElementwiseAffine(ElementwiseAffineConfig::new(2)));
    let flow = config.init(&device()).unwrap();
    let cfg = ReverseKlConfig::new()
        .with_steps(1500)
        .with_batch_size(1024)
        .with_learning_rate(2e-3)
        .with_schedule(Schedule::Cosine)
        .with_sticking_the_landing(true)
        .with_seed(2);
    let (flow, report) = fit_reverse_kl(flow, &target, &cfg, &mut |_| {}).unwrap();
    let diag = diagnostics(&flow, &target, 20_000, 3).unwrap();
    eprintln!("U1: {diag:?}");
    assert!(diag.kl.unwrap() <= 0.05, "KL(q‖p) = {:?}", diag.kl);
    assert!((diag.log_z - 1.8775).abs() < 3.0 * diag.log_z_stderr + 0.01);
    // The fit reports its own diagnostics (10,000 draws by default).
    let own = report.diagnostics.expect("diagnostics in the report");
    assert_eq!(own.samples, 10_000);
    assert!((own.elbo - diag.elbo).abs() < 5.0 * (own.elbo_stderr + diag.elbo_stderr));
}

#[test]
fn u2_on_its_box() {
    // The flow ends with a scaled sigmoid onto [−4, 4]², whose log-det is counted.
    let target = StandardTarget::U2;
    let (lo, hi) = target.support().unwrap();
    let mut config = nsf_coupling(2, 4, vec![64, 64]).with_seed(1).flow_config();
    config.layers.push(LayerConfig::Elementwise(ElementwiseConfig::new(2, ElementwiseKind::Box { low: vec![lo; 2], high: vec![hi; 2] })));
    let flow = config.init(&device()).unwrap();
    let cfg = ReverseKlConfig::new().with_steps(800).with_batch_size(256).with_learning_rate(3e-3).with_schedule(Schedule::Cosine);
    let (flow, _) = fit_reverse_kl(flow, &target, &cfg, &mut |_| {}).unwrap();
    let diag = diagnostics(&flow, &target, 10_000, 3).unwrap();
    eprintln!("U2: {diag:?}");
    assert!(diag.kl.unwrap() < 0.15, "KL(q‖p) = {:?}", diag.kl);
}

#[test]
fn rosenbrock_log_z_by_importance_sampling() {
    let target = StandardTarget::Rosenbrock;
    // x₁ ~ N(1, 10) and x₂ | x₁ ~ N(x₁², 0.1): an elementwise affine layer on the base, then an
    // IAF (affine, so unbounded: x₂ reaches ~100; sampling is its fast direction).
    let mut config = iaf(2, 4, vec![64, 64]).with_seed(4).flow_config();
    config.layers.insert(0, LayerConfig::ElementwiseAffine(ElementwiseAffineConfig::new(2)));
    let flow = config.init(&device()).unwrap();
    let cfg = ReverseKlConfig::new().with_steps(3000).with_batch_size(256).with_learning_rate(2e-3).with_schedule(Schedule::Cosine).with_seed(5);
    let (flow, _) = fit_reverse_kl(flow, &target, &cfg, &mut |_| {}).unwrap();
    let diag = diagnostics(&flow, &target, 20_000, 6).unwrap();
    eprintln!("Rosenbrock: {diag:?}");
    assert!(diag.khat < 0.7, "k̂ = {}", diag.khat);
    assert!((diag.log_z - LN_2PI).abs() < 3.0 * diag.log_z_stderr, "log Z {} ± {} vs ln 2π", diag.log_z, diag.log_z_stderr);
}


#[test]
fn annealing_and_seeds() {
    let target = StandardTarget::Banana { curvature: 0.03 };
    let run = |seed: u64| {
        let flow = FlowConfig::new(2, vec![LayerConfig::ElementwiseAffine(ElementwiseAffineConfig::new(2))]).init(&device()).unwrap();
        let cfg = ReverseKlConfig::new().with_steps(40).with_batch_size(32).with_annealing_steps(20).with_eval_every(10).with_seed(seed).with_diagnostic_samples(0);
        let mut betas = Vec::new();
        let (_, report) = fit_reverse_kl(flow, &target, &cfg, &mut |p| betas.push(p.beta)).unwrap();
        (betas, report)
    };
    let (betas, a) = run(7);
    // β rises linearly from 0.01 and stays at 1 after the annealing steps.
    assert!((betas[0] - (0.01 + 0.99 * 9.0 / 20.0)).abs() < 1e-12, "{betas:?}");
    assert!(betas.windows(2).all(|w| w[0] <= w[1]) && betas[2..].iter().all(|b| *b == 1.0));
    assert!(a.diagnostics.is_none());
    // Same seed, same fit; another seed, another.
    assert_eq!(a.history, run(7).1.history);
    assert_ne!(a.history, run(8).1.history);
}

#[test]
fn vi_conditioners_take_the_chosen_activation() {
    use diffeo::families::{vi_architecture, FamilySettings};
    use diffeo::nn::Activation;
    for family in ["iaf", "realnvp", "nsf-coupling"] {
        let mut s = FamilySettings::new(family);
        let relu = format!("{:?}", vi_architecture(&s, 3, None).unwrap());
        s.activation = Activation::Elu;
        let elu = format!("{:?}", vi_architecture(&s, 3, None).unwrap());
        assert!(relu.contains("Relu") && !relu.contains("Elu"), "{family}");
        assert!(elu.contains("Elu") && !elu.contains("Relu"), "{family}");
    }
    let mut s = FamilySettings::new("planar");
    s.activation = Activation::Tanh;
    let e = vi_architecture(&s, 3, None).unwrap_err().to_string();
    assert!(e.contains("--activation is a setting of the iaf, realnvp and nsf-coupling families"), "{e}");
}

/// A Gaussian `N(μ, diag σ²)` written unnormalized, as a host function: values and gradients.
fn host_gaussian(points: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let (mu, sigma) = ([1.0, -0.5], [0.5, 2.0]);
    let mut values = Vec::with_capacity(n);
    let mut grads = Vec::with_capacity(2 * n);
    for row in points.chunks_exact(2) {
        values.push(-0.5 * (0..2).map(|j| ((row[j] - mu[j]) / sigma[j]).powi(2)).sum::<f64>());
        grads.extend((0..2).map(|j| -(row[j] - mu[j]) / (sigma[j] * sigma[j])));
    }
    (values, grads)
}

#[test]
fn host_targets_reach_the_flow_with_exact_or_differenced_gradients() {
    use std::sync::Mutex;
    let ad = device().autodiff();
    let points: Vec<f64> = (0..12).map(|k| (k as f64 * 0.37).sin() * 2.0).collect();
    let (values, grads) = host_gaussian(&points, 6);
    for exact in [true, false] {
        let calls = Mutex::new(Vec::new());
        let target = HostTarget::new(2, |p: &[f64], n: usize| {
            calls.lock().unwrap().push(n);
            let (v, g) = host_gaussian(p, n);
            Ok((v, exact.then_some(g)))
        });
        for _ in 0..2 {
            let x = matrix(points.clone(), 6, 2, &ad).require_grad();
            let lp = target.try_log_density(x.clone()).unwrap();
            let got = to_vec(lp.clone()).unwrap();
            let g = to_vec(x.grad(&lp.sum().backward()).unwrap()).unwrap();
            for (a, e) in got.iter().zip(&values) {
                assert!((a - e).abs() < 1e-5 * e.abs().max(1.0), "values: {a} vs {e}");
            }
            for (a, e) in g.iter().zip(&grads) {
                assert!((a - e).abs() < 1e-4 * e.abs().max(1.0), "gradients ({}): {a} vs {e}", if exact { "given" } else { "differences" });
            }
        }
        // Given gradients: one call of 6 rows each time; differences: the 6 rows, then the 24
        // shifted ones, then (known by now) all 30 in one call.
        let expected = if exact { vec![6, 6] } else { vec![6, 24, 30] };
        assert_eq!(*calls.lock().unwrap(), expected);
        // Off the autodiff graph (diagnostics), values only.
        calls.lock().unwrap().clear();
        let plain = to_vec(target.try_log_density(matrix(points.clone(), 6, 2, &device())).unwrap()).unwrap();
        assert_eq!(*calls.lock().unwrap(), vec![6]);
        assert!(plain.iter().zip(&values).all(|(a, e)| (a - e).abs() < 1e-5 * e.abs().max(1.0)));
    }
    // A failing host function, or one returning the wrong number of values, is an error.
    let failing = HostTarget::new(2, |_: &[f64], _: usize| Err(FlowError::InvalidConfig("the target raised".into())));
    assert!(failing.try_log_density(matrix(points.clone(), 6, 2, &device())).is_err());
    let short = HostTarget::new(2, |_: &[f64], n: usize| Ok((vec![0.0; n - 1], None)));
    let e = short.try_log_density(matrix(points.clone(), 6, 2, &device())).unwrap_err().to_string();
    assert!(e.contains("returned 5 values for 6 points"), "{e}");
}

#[test]
fn reverse_kl_to_a_host_target_finds_its_normalizer() {
    let target = HostTarget::new(2, |p: &[f64], n: usize| Ok((host_gaussian(p, n).0, None))).with_log_normalizer((0.5f64 * 2.0).ln() + LN_2PI);
    let flow = FlowConfig::new(2, vec![LayerConfig::ElementwiseAffine(ElementwiseAffineConfig::new(2))]).init(&device()).unwrap();
    let cfg = ReverseKlConfig::new().with_steps(600).with_batch_size(64).with_learning_rate(2e-2).with_eval_every(100).with_diagnostic_samples(4000);
    let (_, report) = fit_reverse_kl(flow, &target, &cfg, &mut |_| {}).unwrap();
    let d = report.diagnostics.unwrap();
    // An affine flow holds the exact answer: KL → 0, log Z exact.
    assert!(d.kl.unwrap() < 0.01, "{d:?}");
    assert!((d.log_z - d.true_log_z.unwrap()).abs() < 0.01, "{d:?}");
}

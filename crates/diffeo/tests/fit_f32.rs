//! Statistical tests of maximum-likelihood fitting (f32, the default).

use diffeo::datasets::{two_moons, Gaussian, TWO_MOONS_EXPECTED_LOG_LIKELIHOOD};
use diffeo::fit::{log_likelihoods, mean_and_stderr, mean_log_likelihood};
use diffeo::prelude::*;
use diffeo::testing::check_sample_and_log_prob;
use diffeo::tensor::{matrix, to_vec};
use rand::Rng;
use rand_distr::StandardNormal;

fn quiet(_: &FitEvent) {}

/// Mean of (exact − model) log-density over the same test points, and its standard error.
fn paired_gap(model: &[f64], exact: &[f64]) -> (f64, f64) {
    let d: Vec<f64> = exact.iter().zip(model).map(|(e, m)| e - m).collect();
    mean_and_stderr(&d)
}

/// The settings of the statistical fits: batch 512, learning rate 3e−3 with a cosine
/// schedule, validation every 250 steps.
fn statistical_fit(steps: usize) -> FitConfig {
    FitConfig::new()
        .with_steps(steps)
        .with_batch_size(512)
        .with_learning_rate(3e-3)
        .with_schedule(Schedule::Cosine)
        .with_eval_every(250)
}

#[test]
fn correlated_gaussian_4d_reaches_the_analytic_likelihood() {
    let device = diffeo::cpu();
    // Σ = L Lᵀ with a dense lower-triangular L: strongly correlated, condition number ≈ 20.
    let l = [
        1.2, 0.0, 0.0, 0.0, //
        0.5, 0.8, 0.0, 0.0, //
        -0.4, 0.3, 0.9, 0.0, //
        0.2, -0.5, 0.4, 0.6,
    ];
    let mut cov = [0.0; 16];
    for i in 0..4 {
        for j in 0..4 {
            cov[i * 4 + j] = (0..4).map(|k| l[i * 4 + k] * l[j * 4 + k]).sum();
        }
    }
    let g = Gaussian::new(vec![1.0, -2.0, 0.5, 3.0], &cov).unwrap();
    let mut rng = StdRng::seed_from_u64(10);
    let train = Dataset::new(g.sample(20_000, &mut rng), 4);
    let val = Dataset::new(g.sample(4_000, &mut rng), 4);
    let test_x = g.sample(10_000, &mut rng);
    let test = Dataset::new(test_x.clone(), 4);
    let flow = maf(4, 3, vec![32, 32]).init(&device).unwrap();
    let config = statistical_fit(2500);
    let (flow, _) = fit(flow, &train, Some(&val), &config, &mut quiet).unwrap();
    let model = log_likelihoods(&flow, &test).unwrap();
    let exact: Vec<f64> = test_x.chunks_exact(4).map(|x| g.log_prob(x)).collect();
    let (gap, se) = paired_gap(&model, &exact);
    let exact_mean = exact.iter().sum::<f64>() / exact.len() as f64;
    eprintln!("4-D Gaussian: exact E[log p] {exact_mean:.4}, paired gap {gap:.4} ± {se:.4} nats");
    assert!(gap <= 0.02, "paired gap {gap} > 0.02 nats");
}

#[test]
fn two_moons_and_its_density_integrates_to_one() {
    let device = diffeo::cpu();
    let mut rng = StdRng::seed_from_u64(1);
    let train = Dataset::new(two_moons(20_000, &mut rng), 2);
    let val = Dataset::new(two_moons(4_000, &mut rng), 2);
    let test = Dataset::new(two_moons(10_000, &mut rng), 2);
    let flow = maf(2, 6, vec![64, 64]).init(&device).unwrap();
    let config = statistical_fit(2000);
    let (flow, report) = fit(flow, &train, Some(&val), &config, &mut quiet).unwrap();
    let (ll, se) = mean_log_likelihood(&flow, &test).unwrap();
    eprintln!(
        "two moons (MAF 6×[64,64], 2000 steps): test log-likelihood {ll:.4} ± {:.4}, bound {TWO_MOONS_EXPECTED_LOG_LIKELIHOOD}, {:.1} ms/step",
        2.0 * se,
        1e3 * report.seconds / report.steps as f64
    );
    assert!(ll > TWO_MOONS_EXPECTED_LOG_LIKELIHOOD - 0.1, "test log-likelihood {ll}");
    assert!(ll < TWO_MOONS_EXPECTED_LOG_LIKELIHOOD + 0.05, "above the entropy bound: {ll}");

    // ∫ p(x) dx over [−7, 7]² by the midpoint rule.
    let (lo, hi, k) = (-7.0, 7.0, 350usize);
    let h = (hi - lo) / k as f64;
    let mut pts = Vec::with_capacity(k * k * 2);
    for i in 0..k {
        for j in 0..k {
            pts.push(lo + (i as f64 + 0.5) * h);
            pts.push(lo + (j as f64 + 0.5) * h);
        }
    }
    let lp = to_vec(flow.log_prob(matrix(pts, k * k, 2, &device), None).unwrap()).unwrap();
    let mass: f64 = lp.iter().map(|v| v.exp()).sum::<f64>() * h * h;
    eprintln!("two moons: ∫p = {mass:.5}");
    assert!((mass - 1.0).abs() < 1e-2, "2-D density integrates to {mass}");
}

#[test]
fn one_dimensional_flow_integrates_to_one() {
    let device = diffeo::cpu();
    let mut rng = StdRng::seed_from_u64(2);
    let data: Vec<f64> = (0..8000)
        .map(|i| {
            let z: f64 = rng.sample(StandardNormal);
            if i % 3 == 0 { -2.0 + 0.5 * z } else { 1.5 + 0.8 * z }
        })
        .collect();
    let flow = MafConfig::new(1)
        .with_transforms(2)
        .with_hidden(vec![16])
        .with_base(BaseKind::GaussianMixture { components: 3 })
        .init(&device).unwrap();
    let config = FitConfig::new().with_steps(800).with_batch_size(256).with_learning_rate(1e-2);
    let (flow, _) = fit(flow, &Dataset::new(data, 1), None, &config, &mut quiet).unwrap();
    let (lo, hi, k) = (-20.0, 20.0, 8000usize);
    let h = (hi - lo) / k as f64;
    let pts: Vec<f64> = (0..k).map(|i| lo + (i as f64 + 0.5) * h).collect();
    let lp = to_vec(flow.log_prob(matrix(pts, k, 1, &device), None).unwrap()).unwrap();
    let mass: f64 = lp.iter().map(|v| v.exp()).sum::<f64>() * h;
    eprintln!("1-D mixture-base flow: ∫p = {mass:.6}");
    assert!((mass - 1.0).abs() < 1e-2);
}

#[test]
fn conditional_maf_matches_the_analytic_conditional() {
    // c ~ N(0, I₂), x | c ~ N(A c, Σ).
    let device = diffeo::cpu();
    let a = [1.5, -0.5, 0.3, 2.0];
    let cov = [0.5, 0.2, 0.2, 0.3];
    let noise = Gaussian::new(vec![0.0, 0.0], &cov).unwrap();
    let mut rng = StdRng::seed_from_u64(3);
    let mut make = |n: usize| {
        let c: Vec<f64> = (0..n * 2).map(|_| rng.sample(StandardNormal)).collect();
        let e = noise.sample(n, &mut rng);
        let x: Vec<f64> = (0..n)
            .flat_map(|i| {
                let (c0, c1) = (c[2 * i], c[2 * i + 1]);
                [a[0] * c0 + a[1] * c1 + e[2 * i], a[2] * c0 + a[3] * c1 + e[2 * i + 1]]
            })
            .collect();
        (x, c)
    };
    let (xt, ct) = make(20_000);
    let (xv, cv) = make(4_000);
    let (xs, cs) = make(10_000);
    let flow = maf(2, 3, vec![32, 32]).with_context_dim(2).init(&device).unwrap();
    let config = statistical_fit(2500);
    let train = Dataset::new(xt, 2).with_context(ct, 2);
    let val = Dataset::new(xv, 2).with_context(cv, 2);
    let (flow, _) = fit(flow, &train, Some(&val), &config, &mut quiet).unwrap();
    let test = Dataset::new(xs.clone(), 2).with_context(cs.clone(), 2);
    let model = log_likelihoods(&flow, &test).unwrap();
    let exact: Vec<f64> = (0..10_000)
        .map(|i| {
            let (c0, c1) = (cs[2 * i], cs[2 * i + 1]);
            let r = [xs[2 * i] - a[0] * c0 - a[1] * c1, xs[2 * i + 1] - a[2] * c0 - a[3] * c1];
            noise.log_prob(&r)
        })
        .collect();
    let (gap, se) = paired_gap(&model, &exact);
    eprintln!("conditional MAF: paired gap {gap:.4} ± {se:.4} nats");
    assert!(gap <= 0.03, "paired gap {gap} > 0.03");

    // One context row broadcast to many samples; several rows give n samples each.
    let one = matrix(vec![0.5, -1.0], 1, 2, &device);
    let s = flow.sample(7, Some(&one), &mut rng).unwrap();
    assert_eq!(s.dims(), [7, 2]);
    let three = matrix(vec![0.5, -1.0, 0.0, 0.0, 2.0, 1.0], 3, 2, &device);
    let (s, lq) = flow.sample_and_log_prob(5, Some(&three), &mut rng).unwrap();
    assert_eq!(s.dims(), [15, 2]);
    assert_eq!(lq.dims(), [15]);
}

#[test]
fn sample_and_log_prob_agree_with_log_prob() {
    let device = diffeo::cpu();
    let mut rng = StdRng::seed_from_u64(4);
    let train = Dataset::new(two_moons(4_000, &mut rng), 2);
    for cfg in [
        realnvp(2, 4, vec![32]).flow_config(),
        iaf(2, 3, vec![32]).flow_config(),
        maf(2, 3, vec![32]).with_base(BaseKind::StudentT { df: 5.0 }).flow_config(),
        maf(2, 3, vec![32]).with_base(BaseKind::DiagNormal).with_batch_norm(true).flow_config(),
    ] {
        let flow = cfg.init(&device).unwrap();
        let (flow, _) =
            fit(flow, &train, None, &FitConfig::new().with_steps(150).with_batch_size(256), &mut quiet).unwrap();
        check_sample_and_log_prob(&flow, 256, None, &mut rng, 2e-3).unwrap();
    }
}

#[test]
fn same_seed_gives_the_same_model() {
    let device = diffeo::cpu();
    let mut rng = StdRng::seed_from_u64(5);
    let train = Dataset::new(two_moons(2_000, &mut rng), 2);
    let probe = matrix(two_moons(64, &mut rng), 64, 2, &device);
    let run = |seed: u64| {
        let flow = realnvp(2, 3, vec![32]).with_seed(seed).init(&device).unwrap();
        let cfg = FitConfig::new().with_steps(100).with_batch_size(128).with_seed(seed).with_grad_clip_norm(Some(5.0));
        let (flow, _) = fit(flow, &train, None, &cfg, &mut quiet).unwrap();
        to_vec(flow.log_prob(probe.clone(), None).unwrap()).unwrap()
    };
    let a = run(1);
    assert_eq!(a, run(1));
    assert_ne!(a, run(2));
}

#[test]
fn early_stopping_restores_the_best_model() {
    let device = diffeo::cpu();
    let mut rng = StdRng::seed_from_u64(6);
    // 64 training points and a big network: it overfits, validation peaks, patience stops it.
    let train = Dataset::new(two_moons(64, &mut rng), 2);
    let val = Dataset::new(two_moons(2_000, &mut rng), 2);
    let flow = maf(2, 5, vec![128, 128]).init(&device).unwrap();
    let cfg = FitConfig::new()
        .with_steps(5000)
        .with_batch_size(64)
        .with_learning_rate(5e-3)
        .with_eval_every(25)
        .with_patience(Some(4))
        .with_weight_decay(1e-6);
    let mut events = 0;
    let (flow, report) = fit(flow, &train, Some(&val), &cfg, &mut |_| events += 1).unwrap();
    assert!(report.stopped_early, "expected early stopping, ran {} steps", report.steps);
    assert!(events > report.steps);
    let best = report.history.iter().filter_map(|r| r.val_log_likelihood).fold(f64::NEG_INFINITY, f64::max);
    assert_eq!(report.best_val_log_likelihood, Some(best));
    let (ll, _) = mean_log_likelihood(&flow, &val).unwrap();
    assert!((ll - best).abs() < 1e-6 * best.abs().max(1.0), "restored model scores {ll}, best was {best}");
    assert!(report.best_step < report.steps);
}

#[test]
fn a_stop_request_from_the_observer_ends_the_fit_with_the_best_model() {
    let device = diffeo::cpu();
    let mut rng = StdRng::seed_from_u64(6);
    let train = Dataset::new(two_moons(2_000, &mut rng), 2);
    let val = Dataset::new(two_moons(500, &mut rng), 2);
    let cfg = FitConfig::new().with_steps(100_000).with_batch_size(64).with_eval_every(10);
    let (flow, report) = fit(maf(2, 2, vec![16, 16]).init(&device).unwrap(), &train, Some(&val), &cfg, &mut |e| {
        if let FitEvent::Step { step: 35, .. } = e {
            diffeo::train::stop_current_fit();
        }
    })
    .unwrap();
    // The step that asked is the last, and a last validation scores it.
    assert_eq!(report.steps, 35);
    assert!(report.interrupted && report.stopped_early);
    assert_eq!(report.history.last().map(|h| h.step), Some(35));
    let best = report.history.iter().filter_map(|r| r.val_log_likelihood).fold(f64::NEG_INFINITY, f64::max);
    assert_eq!(report.best_val_log_likelihood, Some(best));
    assert!((mean_log_likelihood(&flow, &val).unwrap().0 - best).abs() < 1e-6 * best.abs().max(1.0));
    // The request does not outlive its fit: the next one runs to its end.
    let (_, again) = fit(maf(2, 2, vec![16, 16]).init(&device).unwrap(), &train, Some(&val), &cfg.clone().with_steps(40), &mut quiet).unwrap();
    assert!(!again.interrupted && again.steps == 40);
}

#[test]
fn the_pipeline_fits_rows_in_memory_and_continues_a_model_in_memory() {
    use diffeo::data::Table;
    use diffeo::pipeline::{fit_model, log_density, sample_and_log_density, untrained, DataSource, FitRequest};
    let mut rng = StdRng::seed_from_u64(9);
    // x | c ~ N(c, 0.1²) with c ~ U(−1, 1): rows [x, c].
    let rows: Vec<f64> = (0..3000)
        .flat_map(|_| {
            let c: f64 = rng.random_range(-1.0..1.0);
            let z: f64 = rng.sample(StandardNormal);
            [c + 0.1 * z, c]
        })
        .collect();
    let mut req = FitRequest::new(DataSource::Rows(Table::new(rows.clone(), 2, "arrays")), "maf");
    req.columns = Some("0".into());
    req.context_columns = Some("1".into());
    req.train = req.train.clone().with_steps(300).with_eval_every(100);
    let first = fit_model(&req, None, &mut |_| {}, &mut quiet).unwrap();
    assert_eq!((first.model.flow.dim(), first.model.flow.context_dim()), (1, 1));
    assert_eq!((first.train_rows, first.val_rows), (2700, 300));
    // Densities with one context row for all points, or one per point.
    let points = [0.4, 0.5, 0.6];
    let one = log_density(&first.model, &points, Some(&Table::new(vec![0.5], 1, "c"))).unwrap();
    let each = log_density(&first.model, &points, Some(&Table::new(vec![0.5; 3], 1, "c"))).unwrap();
    assert_eq!(one, each);
    assert!(one[1] > one[0] && one[1] > one[2] && one[1] > 0.5, "{one:?}");
    assert!(log_density(&first.model, &points, Some(&Table::new(vec![0.5; 2], 1, "c"))).is_err());
    let (x, lp) = sample_and_log_density(&first.model, 4, Some(&Table::new(vec![0.5], 1, "c")), 0).unwrap();
    let again = log_density(&first.model, &x.values, Some(&Table::new(vec![0.5], 1, "c"))).unwrap();
    assert!(lp.iter().zip(&again).all(|(a, b)| (a - b).abs() < 1e-3), "{lp:?} vs {again:?}");
    // Continuing: the totals add up, the architecture is kept.
    let mut more = req.clone();
    more.train = more.train.clone().with_steps(50);
    let second = fit_model(&more, Some(first.model.clone()), &mut |_| {}, &mut quiet).unwrap();
    let summary = second.model.summary.unwrap();
    assert_eq!((summary.steps_total, summary.runs), (350, 2));
    // An untrained model is the base density (identity initialization).
    let fresh = untrained(&diffeo::families::FamilySettings::new("maf"), EventShape::flat(2), 0).unwrap();
    let lp = log_density(&fresh, &[0.0, 0.0, 1.0, -2.0], None).unwrap();
    let exact = [-diffeo::tensor::LN_2PI, -diffeo::tensor::LN_2PI - 2.5];
    assert!(lp.iter().zip(exact).all(|(a, e)| (a - e).abs() < 1e-5), "{lp:?}");
}

#[test]
fn spline_round_trip_in_f32() {
    let device = diffeo::cpu();
    let (n, d, k, bound) = (2000, 3, 8, 5.0);
    let mut rng = StdRng::seed_from_u64(21);
    let mut r = |len: usize, s: f64| (0..len).map(|_| s * rng.sample::<f64, _>(StandardNormal)).collect::<Vec<f64>>();
    let x: Vec<f64> = r(n * d, 2.0).into_iter().map(|v| v.clamp(-bound, bound)).collect();
    let t3 = |v: Vec<f64>, kk: usize| Tensor::<3>::from_data(burn::tensor::TensorData::new(v, [n, d, kk]), &device);
    let (w, h, dv) = (r(n * d * k, 1.0), r(n * d * k, 1.0), r(n * d * (k - 1), 1.0));
    // Both implementations: the composed reference and the fused kernel (packed parameters).
    let packed = |v: Vec<f64>, kk: usize| t3(v, kk).swap_dims(1, 2).reshape([n, kk * d]);
    let params = Tensor::cat(vec![packed(w.clone(), k), packed(h.clone(), k), packed(dv.clone(), k - 1)], 1);
    for fused in [false, true] {
        let spline = |v: Tensor<2>, inverse: bool| {
            if fused {
                diffeo::spline::fused::rational_quadratic(v, params.clone(), k, bound, inverse)
            } else {
                diffeo::spline::rational_quadratic(v, t3(w.clone(), k), t3(h.clone(), k), t3(dv.clone(), k - 1), bound, inverse)
            }
        };
        let (y, ld) = spline(matrix(x.clone(), n, d, &device), false);
        let (back, ld_back) = spline(y, true);
        let back = to_vec(back).unwrap();
        let (ld, ld_back) = (to_vec(ld).unwrap(), to_vec(ld_back).unwrap());
        // 1e-4 where the map is well conditioned (slope ≥ 0.01); where it is flat, an f32 rounding
        // of y moves x by ε·|y|/slope, so the tolerance scales with 1/slope there.
        for (((xi, bi), l), yi) in x.iter().zip(&back).zip(&ld).zip(0..) {
            let slope = l.exp();
            let tol = 1e-4 * (0.01 / slope).max(1.0);
            assert!((xi - bi).abs() <= tol, "row {yi}: x {xi} → {bi} (slope {slope})");
        }
        let well = ld.iter().zip(&ld_back).filter(|(a, _)| a.exp() >= 0.01);
        assert!(well.into_iter().all(|(a, b)| (a + b).abs() < 1e-3));
    }
}

/// All weights of a model, in the order burn visits them.
fn weights(flow: &Flow) -> Vec<f64> {
    struct Collect(Vec<f64>);
    impl burn::module::ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<burn::tensor::Tensor<D>>) {
            self.0.extend(to_vec(p.val()).unwrap());
        }
    }
    let mut c = Collect(Vec::new());
    burn::module::Module::visit(flow, &mut c);
    c.0
}

#[test]
fn weight_averaging_returns_the_polyak_average_of_the_trajectory() {
    // Averaging does not change the trajectory (same seed, same steps), so the weights seen with
    // and without it give the expected average: w̄₁ = w₁, w̄ₜ₊₁ = dₜ·w̄ₜ + (1 − dₜ)·wₜ₊₁ with
    // dₜ = min(d, (1 + t)/(10 + t)).
    let device = diffeo::cpu();
    let mut rng = StdRng::seed_from_u64(7);
    let train = Dataset::new(two_moons(512, &mut rng), 2);
    let run = |average: Option<f64>| {
        let flow = maf(2, 2, vec![8]).init(&device).unwrap();
        let cfg = FitConfig::new().with_steps(40).with_batch_size(64).with_eval_every(1).with_average_decay(average);
        let mut seen = Vec::new();
        let (last, _) =
            diffeo::fit::fit_monitored(flow, &train, None, &cfg, &mut quiet, &mut |_, _, m| seen.push(weights(m)))
                .unwrap();
        (seen, weights(&last))
    };
    let (raw, raw_last) = run(None);
    let (averaged, averaged_last) = run(Some(0.8));
    assert_eq!(raw.len(), 40);
    assert_eq!(raw_last, raw[39]);
    let mut expected = raw[0].clone();
    for (t, (w, got)) in raw.iter().zip(&averaged).enumerate() {
        if t > 0 {
            let d = 0.8f64.min((1.0 + t as f64) / (10.0 + t as f64));
            expected = expected.iter().zip(w).map(|(a, w)| d * a + (1.0 - d) * w).collect();
        }
        for (e, g) in expected.iter().zip(got) {
            assert!((e - g).abs() < 1e-5 * (1.0 + e.abs()), "step {}: {e} vs {g}", t + 1);
        }
    }
    assert_eq!(averaged_last, averaged[39]);
    assert_ne!(averaged_last, raw_last);
    // Decay 0: the average is the last weights.
    assert_eq!(run(Some(0.0)).1, raw_last);
    let bad = FitConfig::new().with_average_decay(Some(1.0)).validate();
    assert!(bad.is_err());
}

#[test]
fn a_time_budget_stops_training() {
    let device = diffeo::cpu();
    let mut rng = StdRng::seed_from_u64(0);
    let train = Dataset::new(two_moons(2000, &mut rng), 2);
    let flow = maf(2, 2, vec![16]).init(&device).unwrap();
    let mut calls = 0;
    let cfg = FitConfig::new().with_steps(1_000_000).with_eval_every(10).with_time_budget(Some(0.5));
    let (_, report) =
        diffeo::fit::fit_monitored(flow, &train, None, &cfg, &mut |_| {}, &mut |_, _, _| calls += 1).unwrap();
    assert!(report.stopped_early && report.steps < 1_000_000);
    assert!(report.seconds < 5.0, "{}", report.seconds);
    assert!(calls >= 1 && calls == report.history.len());
}

/// The schedules' rates: constant, cosine from the rate to 0, and the cooldown (the full rate for
/// 80 % of the run, then half the rate at 90 % and 0 at the end); their names parse.
#[test]
fn learning_rate_schedules_follow_their_formulas() {
    for t in [0.0, 0.3, 0.8, 1.0] {
        assert_eq!(Schedule::Constant.rate(2.0, t), 2.0);
    }
    let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
    assert!(close(Schedule::Cosine.rate(2.0, 0.0), 2.0) && close(Schedule::Cosine.rate(2.0, 0.5), 1.0) && close(Schedule::Cosine.rate(2.0, 1.0), 0.0));
    for (t, r) in [(0.0, 2.0), (0.5, 2.0), (0.8, 2.0), (0.9, 1.0), (1.0, 0.0), (1.5, 0.0)] {
        assert!(close(Schedule::Cooldown.rate(2.0, t), r), "cooldown at {t}: {}", Schedule::Cooldown.rate(2.0, t));
    }
    for (name, s) in [("constant", Schedule::Constant), ("cosine", Schedule::Cosine), ("cooldown", Schedule::Cooldown)] {
        assert_eq!(name.parse::<Schedule>().unwrap(), s);
    }
    assert!("linear".parse::<Schedule>().is_err());
}

mod cnf {
    use super::*;
    use diffeo::bijections::{CnfConfig, LayerConfig};
    use diffeo::flow_matching::{assignment, FlowMatching, Pairing};
    use diffeo::train::train;

    fn correlated(n: usize, seed: u64) -> (Gaussian, Vec<f64>) {
        let g = Gaussian::new(vec![1.0, -0.5], &[1.0, 0.6, 0.6, 0.5]).unwrap();
        let x = g.sample(n, &mut StdRng::seed_from_u64(seed));
        (g, x)
    }

    fn cnf_flow(context_dim: usize) -> Flow {
        let layer = CnfConfig::new(2).with_context_dim(context_dim).with_hidden(vec![32, 32]);
        FlowConfig::new(2, vec![LayerConfig::Cnf(layer)]).with_context_dim(context_dim).init(&diffeo::cpu()).unwrap()
    }

    #[test]
    fn flow_matching_reaches_the_likelihood_of_a_gaussian() {
        let (g, x) = correlated(8_000, 1);
        let train_set = Dataset::new(x, 2);
        let (_, test_x) = correlated(2_000, 2);
        let config = FitConfig::new().with_steps(600).with_batch_size(128).with_learning_rate(3e-3).with_schedule(Schedule::Cosine).with_eval_every(600);
        for pairing in [Pairing::Independent, Pairing::OptimalTransport] {
            let mut objective = FlowMatching::new(&train_set, None, pairing);
            let (flow, report) = train(cnf_flow(0), &mut objective, &config, &mut quiet, &mut |_, _, _| {}).unwrap();
            let model = log_likelihoods(&flow, &Dataset::new(test_x.clone(), 2)).unwrap();
            let exact: Vec<f64> = test_x.chunks_exact(2).map(|x| g.log_prob(x)).collect();
            let (gap, se) = paired_gap(&model, &exact);
            eprintln!("flow matching ({pairing:?}): paired gap {gap:.4} ± {se:.4} nats, final loss {:.3}", report.final_train_loss);
            assert!(gap.abs() < 0.05, "{pairing:?}: paired gap {gap}");
        }
    }

    #[test]
    fn adjoint_training_follows_backpropagation() {
        use diffeo::bijections::GradientMethod;
        let (_, x) = correlated(2_000, 3);
        let data = Dataset::new(x, 2);
        let config = FitConfig::new().with_steps(30).with_batch_size(256).with_learning_rate(1e-2).with_eval_every(30);
        let fitted = |gradient| {
            let layer = CnfConfig::new(2).with_hidden(vec![32, 32]).with_gradient(gradient);
            let flow = FlowConfig::new(2, vec![LayerConfig::Cnf(layer)]).init(&diffeo::cpu()).unwrap();
            let (flow, _) = fit(flow, &data, None, &config, &mut quiet).unwrap();
            mean_log_likelihood(&flow, &data).unwrap().0
        };
        let (direct, adjoint) = (fitted(GradientMethod::Backprop), fitted(GradientMethod::Adjoint));
        let before = mean_log_likelihood(&cnf_flow(0), &data).unwrap().0;
        eprintln!("cnf, 30 steps: {before:.3} → backprop {direct:.3}, adjoint {adjoint:.3}");
        assert!(adjoint > before + 0.3 && (adjoint - direct).abs() < 0.05, "{before} → {direct} / {adjoint}");
    }

    #[test]
    fn likelihood_training_of_a_cnf_improves_it_and_it_survives_a_model_file() {
        let (_, x) = correlated(2_000, 3);
        let data = Dataset::new(x, 2);
        let before = mean_log_likelihood(&cnf_flow(0), &data).unwrap().0;
        let config = FitConfig::new().with_steps(40).with_batch_size(128).with_learning_rate(1e-2).with_eval_every(40);
        let (flow, _) = fit(cnf_flow(0), &data, None, &config, &mut quiet).unwrap();
        let after = mean_log_likelihood(&flow, &data).unwrap().0;
        eprintln!("cnf by likelihood: {before:.3} → {after:.3}");
        assert!(after > before + 0.3, "{before} → {after}");
        let bytes = diffeo::io::to_bytes(&flow, &Default::default()).unwrap();
        let back = diffeo::io::from_bytes(&bytes, "cnf", &diffeo::cpu()).unwrap().flow;
        let (a, b) = (log_likelihoods(&flow, &data).unwrap(), log_likelihoods(&back, &data).unwrap());
        assert_eq!(a, b);
    }

    #[test]
    fn flow_matching_refuses_flows_it_cannot_train() {
        let (_, x) = correlated(100, 4);
        let data = Dataset::new(x, 2);
        let config = FitConfig::new().with_steps(1);
        for flow in [maf(2, 1, vec![8]).init(&diffeo::cpu()).unwrap(), {
            let layer = LayerConfig::Cnf(CnfConfig::new(2).with_hidden(vec![8]));
            FlowConfig::new(2, vec![layer.clone(), layer]).init(&diffeo::cpu()).unwrap()
        }] {
            let mut objective = FlowMatching::new(&data, None, Pairing::Independent);
            let err = train(flow, &mut objective, &config, &mut quiet, &mut |_, _, _| {}).unwrap_err();
            assert!(err.to_string().contains("flow matching"), "{err}");
        }
    }

    #[test]
    fn the_assignment_is_optimal() {
        let mut rng = StdRng::seed_from_u64(5);
        for n in [1, 2, 5, 7] {
            let cost: Vec<f64> = (0..n * n).map(|_| rng.random::<f64>()).collect();
            let got = assignment(&cost, n);
            let total = |p: &[usize]| p.iter().enumerate().map(|(i, &j)| cost[i * n + j]).sum::<f64>();
            // Brute force over all permutations.
            let mut best = f64::INFINITY;
            let mut perm: Vec<usize> = (0..n).collect();
            permutations(&mut perm, 0, &mut |p| best = best.min(total(p)));
            let mut sorted = got.clone();
            sorted.sort();
            assert_eq!(sorted, (0..n).collect::<Vec<_>>());
            assert!((total(&got) - best).abs() < 1e-12, "n {n}: {} vs {best}", total(&got));
        }
    }

    fn permutations(p: &mut Vec<usize>, k: usize, f: &mut dyn FnMut(&[usize])) {
        if k == p.len() {
            return f(p);
        }
        for i in k..p.len() {
            p.swap(k, i);
            permutations(p, k + 1, f);
            p.swap(k, i);
        }
    }
}

mod residual_flows {
    use super::*;
    use diffeo::bijections::Layer;
    use diffeo::families::{architecture, FamilySettings};
    use diffeo::tensor::to_vec;

    /// The largest singular value of a row-major `[rows, cols]` matrix: power iteration on WᵀW.
    fn spectral_norm(w: &[f64], rows: usize, cols: usize) -> f64 {
        let apply = |v: &[f64]| -> Vec<f64> { (0..rows).map(|i| (0..cols).map(|j| w[i * cols + j] * v[j]).sum()).collect() };
        let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
        let mut v = vec![1.0 / (cols as f64).sqrt(); cols];
        for _ in 0..2000 {
            let u = apply(&v);
            let back: Vec<f64> = (0..cols).map(|j| (0..rows).map(|i| w[i * cols + j] * u[i]).sum()).collect();
            let n = norm(&back).max(1e-300);
            v = back.iter().map(|x| x / n).collect();
        }
        norm(&apply(&v))
    }

    #[test]
    fn a_residual_flow_learns_and_keeps_every_weight_within_its_bound() {
        let mut rng = StdRng::seed_from_u64(4);
        let rows: Vec<f64> = (0..4000)
            .flat_map(|_| {
                let a: f64 = rng.sample(rand_distr::StandardNormal);
                let e: f64 = rng.sample(rand_distr::StandardNormal);
                [a, a * a - 1.0 + 0.3 * e]
            })
            .collect();
        let data = Dataset::new(rows, 2);
        let settings = FamilySettings { hidden: vec![32, 32], transforms: Some(3), ..FamilySettings::new("residual") };
        let flow = architecture(&settings, 2, 0).unwrap().init(&diffeo::cpu()).unwrap();
        let before = mean_log_likelihood(&flow, &data).unwrap().0;
        let config = FitConfig::new().with_steps(300).with_batch_size(256).with_learning_rate(3e-3).with_eval_every(300);
        let (flow, _) = fit(flow, &data, None, &config, &mut quiet).unwrap();
        let after = mean_log_likelihood(&flow, &data).unwrap().0;
        eprintln!("residual flow: {before:.3} → {after:.3}");
        assert!(after > before + 0.3, "{before} → {after}");
        let mut checked = 0;
        for layer in &flow.transform.layers {
            if let Layer::Residual(block) = &layer.inner {
                for w in block.normalized_weights() {
                    let [r, c] = w.dims();
                    let sigma = spectral_norm(&to_vec(w).unwrap(), r, c);
                    assert!(sigma <= block.lipschitz + 1e-3, "σ = {sigma}");
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 9);
    }
}

/// The fused convolution in f32 at the sizes of a Glow on MNIST agrees with burn's composed
/// `conv2d` (values and gradients within f32 rounding).
#[test]
fn fused_convolution_matches_the_composed_reference_in_f32() {
    use diffeo::nn::conv::{composed, conv_same};
    let ad = diffeo::cpu().autodiff();
    let mut rng = StdRng::seed_from_u64(3);
    for (n, c_in, c_out, h, k, relu) in [(4, 2, 64, 14, 3, true), (4, 64, 64, 14, 1, true), (4, 64, 4, 14, 3, false), (3, 4, 64, 7, 3, true), (3, 64, 8, 7, 3, false)] {
        let mut random = |len: usize, scale: f32| -> Vec<f32> { (0..len).map(|_| scale * rng.random_range(-1.0f32..1.0)).collect() };
        let xs = random(n * c_in * h * h, 1.0);
        let ws = random(c_out * c_in * k * k, 1.0 / ((c_in * k * k) as f32).sqrt());
        let bs = random(c_out, 0.1);
        let rs = random(n * c_out * h * h, 1.0);
        let mut results = Vec::new();
        for fused in [true, false] {
            let x = Tensor::<1>::from_floats(xs.as_slice(), &ad).reshape([n, c_in, h, h]).require_grad();
            let w = Tensor::<1>::from_floats(ws.as_slice(), &ad).reshape([c_out, c_in, k, k]).require_grad();
            let b = Tensor::<1>::from_floats(bs.as_slice(), &ad).require_grad();
            let r = Tensor::<1>::from_floats(rs.as_slice(), &ad).reshape([n, c_out, h, h]);
            let y = if fused { conv_same(x.clone(), w.clone(), b.clone(), relu) } else { composed(x.clone(), w.clone(), b.clone(), relu) };
            let grads = y.clone().mul(r).sum().backward();
            let flat = |t: Tensor<1>| to_vec(t.unsqueeze_dim::<2>(0)).unwrap();
            results.push([
                flat(y.inner().reshape([-1])),
                flat(x.grad(&grads).unwrap().reshape([-1])),
                flat(w.grad(&grads).unwrap().reshape([-1])),
                flat(b.grad(&grads).unwrap()),
            ]);
        }
        for (what, (a, e)) in ["y", "∂x", "∂W", "∂b"].iter().zip(results[0].iter().zip(&results[1])) {
            let scale = e.iter().fold(1.0f64, |m, v| m.max(v.abs()));
            let worst = a.iter().zip(e).map(|(u, v)| (u - v).abs()).fold(0.0, f64::max);
            assert!(worst < 1e-4 * scale, "{what}: fused and composed differ by {worst} (scale {scale}; n {n}, {c_in}→{c_out}, {h}×{h}, k {k})");
        }
    }
}

/// A new MAF (softplus scale) starts exactly at the identity in f32 too, with and without
/// autodiff (the composed operations and the one-pass inverse), log-dets exactly zero.
#[test]
fn new_maf_starts_exactly_at_the_identity_in_f32() {
    let plain = diffeo::cpu();
    for device in [plain.clone(), plain.autodiff()] {
        let flow = MafConfig::new(3).with_hidden(vec![16]).init(&device).unwrap();
        let values = vec![0.3, -1.2, 2.5, 4.0, 0.0, -7.0, 1e-3, 30.0, -0.5];
        let x = matrix(values, 3, 3, &device);
        let (u, ld) = flow.to_base(x.clone(), None).unwrap();
        assert_eq!(to_vec(u).unwrap(), to_vec(x).unwrap());
        assert!(to_vec(ld).unwrap().iter().all(|v| *v == 0.0));
    }
}

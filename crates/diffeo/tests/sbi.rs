//! Simulation-based inference on tasks with known posteriors, small enough to train in seconds.

use diffeo::fit::FitEvent;
use diffeo::sbi::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;

/// θ ~ N(0, 1), x = θ + N(0, 0.5²): the posterior is N(0.8x, 0.2).
fn conjugate(n: usize, seed: u64) -> (Prior, Vec<f64>, Vec<f64>) {
    let prior = Prior::parse("normal:0:1").unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let theta = prior.sample(n, &mut rng);
    let x = theta.iter().map(|t| t + 0.5 * rng.sample::<f64, _>(StandardNormal)).collect();
    (prior, theta, x)
}

fn small() -> NpeConfig {
    let mut c = NpeConfig::default();
    c.family.family = "maf".into();
    c.family.hidden = vec![32, 32];
    c.family.transforms = Some(3);
    c.train.learning_rate = 3e-3;
    c.max_epochs = 40;
    c.ensemble = 1;
    c
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    (m, (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n).sqrt())
}

#[test]
fn npe_recovers_a_conjugate_posterior_and_is_calibrated() {
    let (prior, theta, x) = conjugate(4000, 1);
    let sims = Simulations::new(&prior, &theta, &x, 1).unwrap();
    let config = small();
    let flow = posterior_architecture(&config, &prior, &sims.data).unwrap().init(&diffeo::cpu()).unwrap();
    let (flow, report) = train_posterior(flow, &sims, &config, &mut |_: &FitEvent| {}).unwrap();
    assert!(report.best_val_log_likelihood.is_some());
    let record = PosteriorRecord::new(prior.clone(), SupportHandling::Transform, &sims);
    let post = Posterior { flow: &flow, members: &[], record: &record };
    for xo in [-1.5, 0.0, 1.0] {
        let s = post.sample(&[xo], 4000, 3, SamplingLimits::default()).unwrap();
        let (m, sd) = mean_std(&s.theta);
        let (m_true, sd_true) = (0.8 * xo, 0.2f64.sqrt());
        assert!((m - m_true).abs() < 0.08, "x = {xo}: mean {m} vs {m_true}");
        assert!((sd / sd_true - 1.0).abs() < 0.12, "x = {xo}: std {sd} vs {sd_true}");
        // The density matches the exact posterior's near its mode.
        let lp = post.log_prob(&[m_true], &[xo], 0).unwrap()[0];
        let exact = -0.5 * (2.0 * std::f64::consts::PI * 0.2).ln();
        assert!((lp - exact).abs() < 0.15, "x = {xo}: log q {lp} vs {exact}");
    }
    // Calibration on fresh pairs: coverage near the diagonal, ranks not far from uniform.
    let (_, t2, x2) = conjugate(200, 2);
    let c = calibration(&post, &t2, &x2, &CalibrationConfig { samples: 200, bins: 10, seed: 0 }).unwrap();
    for (level, cov) in c.levels.iter().zip(&c.coverage) {
        assert!((level - cov).abs() < 0.12, "coverage {cov} at {level}");
    }
    assert!(c.parameters[0].ks_p_value > 0.001, "KS {} p {}", c.parameters[0].ks, c.parameters[0].ks_p_value);
}

#[test]
fn standardizing_theta_given_x_makes_a_gaussian_linear_posterior_exact_before_training() {
    // The posterior N(0.8x, 0.2) is linear-Gaussian: the regression of θ on x is its mean and
    // the residual spread its standard deviation, so the flow at its identity initialization
    // is already the posterior (up to the regression's sampling error).
    let (prior, theta, x) = conjugate(20_000, 4);
    let sims = Simulations::new(&prior, &theta, &x, 1).unwrap();
    let flow = posterior_architecture(&small(), &prior, &sims.data)
        .unwrap()
        .init(&diffeo::cpu())
        .unwrap();
    let record = PosteriorRecord::new(prior.clone(), SupportHandling::Rejection, &sims);
    let post = Posterior {
        members: &[],
        flow: &flow,
        record: &record,
    };
    for xo in [-2.0, 0.5, 1.5] {
        for t in [0.8 * xo - 0.4, 0.8 * xo, 0.8 * xo + 0.3] {
            let lp = post.log_prob(&[t], &[xo], 0).unwrap()[0];
            let exact =
                -0.5 * (2.0 * std::f64::consts::PI * 0.2).ln() - (t - 0.8 * xo).powi(2) / 0.4;
            assert!(
                (lp - exact).abs() < 0.03,
                "x = {xo}, θ = {t}: log q {lp} vs {exact}"
            );
        }
    }
    // Training keeps what it cannot improve on: the initial flow is a candidate too.
    let config = NpeConfig { max_epochs: 5, ..small() };
    let (trained, report) = train_posterior(flow, &sims, &config, &mut |_: &FitEvent| {}).unwrap();
    let exact_val = -0.5 * (2.0 * std::f64::consts::PI * 0.2).ln() - 0.5;
    let best = report.best_val_log_likelihood.unwrap();
    assert!((best - exact_val).abs() < 0.05, "validation {best} vs {exact_val}");
    let post = Posterior {
        members: &[],
        flow: &trained,
        record: &record,
    };
    let lp = post.log_prob(&[0.8], &[1.0], 0).unwrap()[0];
    assert!((lp + 0.5 * (2.0 * std::f64::consts::PI * 0.2).ln()).abs() < 0.05, "{lp}");
    // The marginal standardization starts from the prior-width Gaussian instead.
    let mut marginal = small();
    marginal.standardize_given_x = false;
    let flow = posterior_architecture(&marginal, &prior, &sims.data)
        .unwrap()
        .init(&diffeo::cpu())
        .unwrap();
    let post = Posterior {
        members: &[],
        flow: &flow,
        record: &record,
    };
    let lp = post.log_prob(&[1.6], &[2.0], 0).unwrap()[0];
    assert!((lp + 0.5 * (2.0 * std::f64::consts::PI * 0.2).ln()).abs() > 0.3);
}

/// θ ~ U(0, 1)², x = θ + N(0, 0.3²): the posterior at the edge of the box leaks under an
/// unconstrained flow.
fn boxed(n: usize, seed: u64) -> (Prior, Vec<f64>, Vec<f64>) {
    let prior = Prior::parse("uniform:0:1x2").unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let theta = prior.sample(n, &mut rng);
    let x = theta.iter().map(|t| t + 0.3 * rng.sample::<f64, _>(StandardNormal)).collect();
    (prior, theta, x)
}

/// ∫∫ q(θ | x) over the box by the midpoint rule on a grid.
fn mass(post: &Posterior, xo: &[f64]) -> f64 {
    let g = 120;
    let h = 1.0 / g as f64;
    let mut pts = Vec::new();
    for i in 0..g {
        for j in 0..g {
            pts.extend([(i as f64 + 0.5) * h, (j as f64 + 0.5) * h]);
        }
    }
    let lp = post.log_prob(&pts, xo, 0).unwrap();
    lp.iter().map(|v| v.exp()).sum::<f64>() * h * h
}

#[test]
fn posteriors_on_a_box_keep_to_it_and_integrate_to_one() {
    let (prior, theta, x) = boxed(3000, 4);
    let sims = Simulations::new(&prior, &theta, &x, 2).unwrap();
    for support in [SupportHandling::Transform, SupportHandling::Rejection] {
        let config = NpeConfig { support, ..small() };
        let flow = posterior_architecture(&config, &prior, &sims.data).unwrap().init(&diffeo::cpu()).unwrap();
        let (flow, _) = train_posterior(flow, &sims, &config, &mut |_: &FitEvent| {}).unwrap();
        let record = PosteriorRecord::new(prior.clone(), support, &sims);
        let post = Posterior { flow: &flow, members: &[], record: &record };
        let xo = [0.95, 0.05];
        let s = post.sample(&xo, 2000, 1, SamplingLimits::default()).unwrap();
        assert!(s.theta.chunks_exact(2).all(|r| prior.contains(r)));
        match support {
            SupportHandling::Transform => assert!(s.acceptance > 0.999, "{}", s.acceptance),
            SupportHandling::Rejection => assert!(s.acceptance < 0.95, "an edge posterior leaks: {}", s.acceptance),
        }
        let m = mass(&post, &xo);
        assert!((m - 1.0).abs() < 0.04, "{support:?}: mass {m}");
        let outside = post.log_prob(&[1.2, 0.5, 0.5, -0.1], &xo, 0).unwrap();
        assert!(outside.iter().all(|v| *v == f64::NEG_INFINITY));
    }
}

#[test]
fn an_ensemble_is_the_mixture_of_its_members_and_survives_saving() {
    let (prior, theta, x) = boxed(2000, 6);
    let sims = Simulations::new(&prior, &theta, &x, 2).unwrap();
    let config = NpeConfig {
        support: SupportHandling::Rejection,
        ensemble: 3,
        max_epochs: 15,
        ..small()
    };
    let trained = train_ensemble(
        Vec::new(),
        &prior,
        &sims,
        &config,
        &mut |_, _: &FitEvent| {},
    )
    .unwrap();
    assert_eq!(trained.len(), 3);
    let flows: Vec<diffeo::flow::Flow> = trained.into_iter().map(|(f, _)| f).collect();
    let record = PosteriorRecord::new(prior.clone(), SupportHandling::Rejection, &sims);
    let post = Posterior {
        flow: &flows[0],
        members: &flows[1..],
        record: &record,
    };
    let xo = [0.9, 0.2];
    // Members differ (seeds), and the mixture's density is the mean of theirs.
    let pts = [0.8, 0.25, 0.6, 0.1, 0.95, 0.5];
    let each: Vec<Vec<f64>> = flows
        .iter()
        .map(|f| posterior_log_prob(f, &prior, &pts, &xo, 1.0).unwrap())
        .collect();
    assert!((each[0][0] - each[1][0]).abs() > 1e-4);
    let mix = post.unnormalized_log_prob(&pts, &xo).unwrap();
    for i in 0..3 {
        let mean = each.iter().map(|m| m[i].exp()).sum::<f64>() / 3.0;
        assert!(
            (mix[i] - mean.ln()).abs() < 1e-4,
            "{} vs {}",
            mix[i],
            mean.ln()
        );
    }
    // Normalized inside the box; samples inside it.
    let m = mass(&post, &xo);
    assert!((m - 1.0).abs() < 0.04, "mass {m}");
    let s = post
        .sample(&xo, 3000, 2, SamplingLimits::default())
        .unwrap();
    assert!(s.theta.chunks_exact(2).all(|r| prior.contains(r)));
    // Sample means agree with the mixture's (density-weighted grid means).
    let mean_sample: f64 = s.theta.chunks_exact(2).map(|r| r[0]).sum::<f64>() / 3000.0;
    let (g, h) = (100, 0.01);
    let grid: Vec<f64> = (0..g)
        .flat_map(|i| (0..g).flat_map(move |j| [(i as f64 + 0.5) * h, (j as f64 + 0.5) * h]))
        .collect();
    let w: Vec<f64> = post
        .unnormalized_log_prob(&grid, &xo)
        .unwrap()
        .iter()
        .map(|v| v.exp())
        .collect();
    let mean_grid = grid
        .chunks_exact(2)
        .zip(&w)
        .map(|(r, w)| r[0] * w)
        .sum::<f64>()
        / w.iter().sum::<f64>();
    assert!(
        (mean_sample - mean_grid).abs() < 0.02,
        "{mean_sample} vs {mean_grid}"
    );

    // Saved and loaded, the model keeps every member: the same densities.
    let dir = std::env::temp_dir().join(format!("diffeo-ensemble-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("post.dfo");
    let mut members = flows;
    let first = members.remove(0);
    let model = diffeo::model::Model {
        flow: first,
        members,
        meta: diffeo::model::ModelMeta::plain(2, 2),
        summary: None,
        vi: None,
        posterior: Some(record.clone()),
    };
    diffeo::model::save(&path, &model).unwrap();
    let back = diffeo::model::load(&path, &diffeo::cpu()).unwrap();
    assert_eq!(back.members.len(), 2);
    let reloaded = Posterior {
        flow: &back.flow,
        members: &back.members,
        record: &record,
    };
    let again = reloaded.unnormalized_log_prob(&pts, &xo).unwrap();
    for (a, b) in mix.iter().zip(&again) {
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }
    // A corrupted member is a clear error, not a partial model.
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x55;
    std::fs::write(&path, &bytes).unwrap();
    let err = diffeo::model::load(&path, &diffeo::cpu())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("checksum") || err.contains("non-finite"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn rejection_sampling_gives_up_loudly() {
    let (prior, theta, x) = boxed(400, 5);
    let sims = Simulations::new(&prior, &theta, &x, 2).unwrap();
    let config = NpeConfig { support: SupportHandling::Rejection, max_epochs: 2, ..small() };
    let flow = posterior_architecture(&config, &prior, &sims.data).unwrap().init(&diffeo::cpu()).unwrap();
    // A prior the flow barely reaches: a tiny box far from the simulations.
    let far = Prior::parse("uniform:5:5.001x2").unwrap();
    let limits = SamplingLimits { max_seconds: 5.0, max_draws_per_sample: 10 };
    let err = sample_posterior(&flow, &far, &[0.5, 0.5], 100, 0, limits).unwrap_err();
    assert!(matches!(err, diffeo::FlowError::SamplingLimit(_)), "{err}");
    assert!(err.to_string().contains("gave up"), "{err}");
}

#[test]
fn sequential_rounds_focus_on_the_observation() {
    let prior = Prior::parse("uniform:-3:3x2").unwrap();
    let simulator = FnSimulator::new(|t: &[f64]| {
        // A deterministic "noise" from θ itself keeps the test reproducible.
        let e = ((t[0] * 1e4).sin() * 0.05, (t[1] * 1e4).cos() * 0.05);
        vec![t[0] + e.0, t[1] + e.1]
    });
    let config = SequentialConfig { rounds: 3, simulations: 1500, simulation_batch: 200, workers: 2, ..SequentialConfig::default() };
    let mut log = SimulationLog::default();
    let mut kept = 0;
    let mut keep = |_: usize, t: &[f64], x: &Simulated| {
        assert_eq!(t.len() / 2, x.values.len() / 2);
        kept += t.len() / 2;
        Ok(())
    };
    let xo = [1.0, -2.0];
    // Two members: each round trains (and truncates with) the mixture.
    let (trained, record, acceptance) =
        sequential_npe(&prior, &simulator, Some(&xo), &NpeConfig { ensemble: 2, ..small() }, &config, &mut log, &mut keep, &mut |_| {})
            .unwrap();
    assert_eq!(kept, 1500);
    assert_eq!(log.round.iter().filter(|&&r| r == 2).count(), 500);
    assert_eq!(record.rounds, 3);
    assert_eq!(record.observation.as_deref(), Some(&xo[..]));
    assert_eq!(acceptance.len(), 2);
    // Later rounds propose near the observation only.
    let late: Vec<&[f64]> = log.theta.chunks_exact(2).zip(&log.round).filter(|(_, r)| **r == 2).map(|(t, _)| t).collect();
    assert!(late.iter().all(|t| (t[0] - 1.0).abs() < 1.5 && (t[1] + 2.0).abs() < 1.5), "round 3 proposals spread out");
    assert_eq!(trained.len(), 2);
    let post = Posterior { flow: &trained[0].0, members: std::slice::from_ref(&trained[1].0), record: &record };
    let s = post.sample(&xo, 1000, 0, SamplingLimits::default()).unwrap();
    let m0 = s.theta.chunks_exact(2).map(|r| r[0]).sum::<f64>() / 1000.0;
    assert!((m0 - 1.0).abs() < 0.15, "{m0}");
    // A resumed run reuses the log and simulates nothing.
    let mut again = 0;
    let mut keep2 = |_: usize, t: &[f64], _: &Simulated| {
        again += t.len();
        Ok(())
    };
    sequential_npe(&prior, &simulator, Some(&xo), &small(), &config, &mut log, &mut keep2, &mut |_| {}).unwrap();
    assert_eq!(again, 0);
}

#[test]
fn program_simulators_report_failures_by_batch() {
    let theta: Vec<f64> = (0..10).map(|i| i as f64 / 10.0).collect();
    let echo = ProgramSimulator::new("awk -F, '{print $1*2 \",\" $2}'");
    let mut batches = Vec::new();
    let x = simulate(&echo, &theta, 2, 2, 2, &mut |b, t, x| {
        batches.push((b, t.len(), x.values.len()));
        Ok(())
    })
    .unwrap();
    assert_eq!(x.cols, 2);
    assert_eq!(x.values.len(), 10);
    assert!((x.values[2] - 0.4).abs() < 1e-12);
    assert_eq!(batches.iter().map(|b| b.0).collect::<Vec<_>>(), vec![0, 1, 2]);
    for (cmd, expect) in [("exit 4", "status 4"), ("echo 1,2", "2 θ rows in, 1 x rows out"), ("cat > /dev/null; echo a,b; echo 1,2", "not a number")] {
        let err = ProgramSimulator::new(cmd).simulate(&theta[..4], 2, 7).unwrap_err();
        assert!(matches!(err, diffeo::FlowError::Simulation(_)));
        let msg = err.to_string();
        assert!(msg.contains("batch 7") && msg.contains(expect), "{cmd}: {msg}");
    }
    let slow = ProgramSimulator::new("sleep 20").with_timeout(Some(std::time::Duration::from_millis(300)));
    let start = std::time::Instant::now();
    let err = slow.simulate(&theta[..2], 2, 1).unwrap_err();
    assert!(err.to_string().contains("--simulator-timeout") && start.elapsed().as_secs() < 5, "{err}");
    // A failure in one batch of a wave keeps the other batches.
    let half = ProgramSimulator::new("read a; case $a in 0.4*) exit 9;; esac; echo $a; cat");
    let mut kept = 0;
    let err = simulate(&half, &theta, 1, 4, 2, &mut |_, t, _| {
        kept += t.len();
        Ok(())
    })
    .unwrap_err();
    assert!(err.to_string().contains("batch 2"), "{err}");
    assert_eq!(kept, 4, "batch 1 kept");
}

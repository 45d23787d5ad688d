//! The peer harness's fixed configurations (`../shared/peers/bench.py`: 5 MADE transforms, 2
//! hidden layers of 128 for 2-D data or 256, NSF with 8 bins and tail bound 5, Adam 1e−3, f32),
//! timed the same way and reported as one JSON object with the same keys, so the outputs can be
//! joined (`diffeo bench`, `scripts/compare-peers`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::json;

use crate::data::{self, bail, data_err, Dataset};
use crate::error::Result;
use crate::event::Call;
use crate::fit::{fit, FitConfig, FitEvent};
use crate::flow::{maf, Flow};
use crate::tensor::{matrix, to_vec};
use crate::transformer::{SplineTails, Transformer};

/// One benchmark run.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// `MODEL-DATA`: model `maf` or `nsf`, data a folder of `data_dir` holding
    /// `{train,val,test}.npy` (e.g. `maf-moons`, `nsf-gauss16`, `maf-digits`, `nsf-power`).
    pub config: String,
    /// Folder written by the peers' make_data.py.
    pub data_dir: PathBuf,
    /// Training steps (≥ 2).
    pub steps: usize,
    /// Batch size (default: 512 for 2-D data, 256 otherwise, as the peer figures were taken).
    pub batch: Option<usize>,
    /// Worker threads (default: all cores).
    pub threads: Option<usize>,
    /// Seed.
    pub seed: u64,
    /// Samples drawn for the sampling rate.
    pub n_sample: usize,
    /// Device: `cpu`, or `cuda` / `cuda:N`.
    pub device: String,
    /// cnf: how training gradients pass through the solves.
    pub gradient: crate::bijections::GradientMethod,
}

/// `(wall seconds, busy jiffies of the machine, own CPU seconds)`, for the contention accounting
/// the peer harness does.
fn cpu_snapshot() -> (Instant, f64, f64) {
    let busy = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let v: Vec<f64> = s.lines().next()?.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
            (v.len() >= 8).then(|| v[..8].iter().sum::<f64>() - v[3] - v[4])
        })
        .unwrap_or(0.0);
    let own = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?)
        })
        .unwrap_or(0.0);
    (Instant::now(), busy, own)
}

/// Own CPU seconds and mean cores used by other processes between two snapshots.
fn contention(a: &(Instant, f64, f64), b: &(Instant, f64, f64)) -> (f64, f64) {
    let hz = 100.0;
    let wall = b.0.duration_since(a.0).as_secs_f64().max(1e-9);
    let own = (b.2 - a.2) / hz;
    let busy = (b.1 - a.1) / hz;
    (own, ((busy - own) / wall).max(0.0))
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()))
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

fn load_split(dir: &Path, split: &str) -> Result<data::Table> {
    let path = dir.join(format!("{split}.npy"));
    if !path.exists() {
        bail!("{}: not found (make it with the peers' make_data.py)", path.display());
    }
    let t = data::read_file(&path)?;
    if t.values.is_empty() || t.cols == 0 {
        bail!("{}: empty", path.display());
    }
    if t.values.iter().any(|v| !v.is_finite()) {
        bail!("{}: holds NaN or infinite values", path.display());
    }
    Ok(t)
}

/// Items per second of `f` after one warm-up call: at least `min_repeats` calls and 1 s.
fn rate(items: usize, min_repeats: usize, mut f: impl FnMut() -> Result<()>) -> Result<(f64, usize)> {
    f()?;
    let (mut reps, mut total) = (0usize, 0.0);
    while reps < min_repeats || (total < 1.0 && reps < 200) {
        let t = Instant::now();
        f()?;
        total += t.elapsed().as_secs_f64();
        reps += 1;
    }
    Ok((items as f64 * reps as f64 / total, reps))
}

fn finite_mean(v: &[f64]) -> (f64, usize) {
    let finite: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    let mean = if finite.is_empty() { f64::NAN } else { finite.iter().sum::<f64>() / finite.len() as f64 };
    (mean, v.len() - finite.len())
}

fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    if s.len() % 2 == 1 { s[m] } else { 0.5 * (s[m - 1] + s[m]) }
}

fn round(v: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (v * p).round() / p
}

/// Trains, evaluates and samples one configuration; returns the JSON line's object.
pub fn run(a: &BenchConfig) -> Result<serde_json::Value> {
    let (model, data_name) = a
        .config
        .split_once('-')
        .filter(|(m, d)| matches!(*m, "maf" | "nsf" | "cnf") && !d.is_empty())
        .ok_or_else(|| data_err!("--config: expected MODEL-DATA with MODEL maf, nsf or cnf (e.g. maf-moons), got {:?}", a.config))?;
    if a.steps < 2 {
        bail!("a benchmark needs at least 2 steps");
    }
    if let Some(t) = a.threads {
        // Both burn's CPU kernels and the spline kernel run on rayon's global pool.
        rayon::ThreadPoolBuilder::new().num_threads(t).build_global().map_err(|e| data_err!("--threads: {e}"))?;
    }
    let dir = a.data_dir.join(data_name);
    if !dir.is_dir() {
        bail!("{}: no such data folder", dir.display());
    }
    let (train, val, test) = (load_split(&dir, "train")?, load_split(&dir, "val")?, load_split(&dir, "test")?);
    let d = train.cols;
    if val.cols != d || test.cols != d {
        bail!("{}: the splits have different column counts", dir.display());
    }
    let meta: Option<serde_json::Value> =
        std::fs::read_to_string(dir.join("meta.json")).ok().and_then(|s| serde_json::from_str(&s).ok());
    let hidden = if d <= 2 { 128 } else { 256 };
    let batch = a.batch.unwrap_or(if d <= 2 { 512 } else { 256 });
    let (transforms, layers, bins, tail) = (5usize, 2usize, 8usize, 5.0);
    let mut config = maf(d, transforms, vec![hidden; layers]).with_seed(a.seed);
    if model == "nsf" {
        // The peers' splines have identity tails: compare like with like.
        config = config.with_transformer(Transformer::RationalQuadratic { bins, tail_bound: tail, tails: SplineTails::Identity });
    }
    let device = crate::device(&a.device)?;
    // cnf: zuko's CNF — a 64×2 ELU field on (z, 3 time frequencies), exact trace, Dormand–Prince
    // with atol 1e−6 and rtol 1e−5.
    let cnf = crate::families::FamilySettings { seed: a.seed, gradient: a.gradient, ..crate::families::FamilySettings::new("cnf") };
    let flow: Flow = if model == "cnf" { crate::families::architecture(&cnf, d, 0)?.init(&device)? } else { config.init(&device)? };
    let n_params = flow.num_params();
    let load0 = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(f64::NAN);

    let train_set = Dataset::new(train.values, d);
    let fit_config = FitConfig::new()
        .with_steps(a.steps)
        .with_batch_size(batch)
        .with_learning_rate(1e-3)
        .with_eval_every(usize::MAX)
        .with_seed(a.seed);
    let mut losses = Vec::with_capacity(a.steps);
    let mut first_step: Option<f64> = None;
    let c0 = cpu_snapshot();
    let t0 = Instant::now();
    let (flow, _) = fit(flow, &train_set, None, &fit_config, &mut |e| {
        if let FitEvent::Step { loss, .. } = e {
            losses.push(*loss);
            first_step.get_or_insert_with(|| t0.elapsed().as_secs_f64());
        }
    })
    .map_err(|e| data_err!("training failed: {e}"))?;
    let train_s = t0.elapsed().as_secs_f64();
    let (train_cpu_s, other_cores) = contention(&c0, &cpu_snapshot());
    let rss_train = peak_rss_mib();
    let first_step = first_step.unwrap_or(0.0);

    let val_set = Dataset::new(val.values, d);
    let test_set = Dataset::new(test.values.clone(), d);
    let val_ll = crate::fit::log_likelihoods(&flow, &val_set)?;
    let test_ll = crate::fit::log_likelihoods(&flow, &test_set)?;
    // Density throughput on the whole test set, inputs already on the device (in chunks of 8192).
    let n_test = test_set.len();
    let chunks: Vec<_> = (0..n_test)
        .step_by(8192)
        .map(|s| {
            let e = (s + 8192).min(n_test);
            matrix(test.values[s * d..e * d].to_vec(), e - s, d, &device)
        })
        .collect();
    let evaluations = std::cell::Cell::new(0usize);
    let (logprob_per_s, logprob_reps) = rate(n_test, 3, || {
        let call = Call::new();
        for c in &chunks {
            let lp = flow.log_prob_with(c.clone(), call.clone())?;
            to_vec(lp)?;
        }
        evaluations.set(call.evaluations());
        Ok(())
    })?;
    let logprob_nfe = evaluations.get();
    let rss_logprob = peak_rss_mib();
    // Sampling inverts each autoregressive layer: D sequential passes.
    let n_sample = a.n_sample;
    let mut rng = StdRng::seed_from_u64(a.seed);
    let mut samples = Vec::new();
    let (sample_per_s, sample_reps) = {
        let warm = flow.sample(n_sample.min(1000), None, &mut rng)?;
        to_vec(warm)?;
        let mut reps = 0;
        let mut total = 0.0;
        while reps < 2 || (total < 1.0 && reps < 20) {
            let t = Instant::now();
            samples = to_vec(flow.sample(n_sample, None, &mut rng)?)?;
            total += t.elapsed().as_secs_f64();
            reps += 1;
            if total > 5.0 {
                break;
            }
        }
        (n_sample as f64 * reps as f64 / total, reps)
    };
    let finite_rows = samples.chunks_exact(d).filter(|r| r.iter().all(|v| v.is_finite())).count();

    let (test_mean, test_nonfinite) = finite_mean(&test_ll);
    let (val_mean, val_nonfinite) = finite_mean(&val_ll);
    let last = &losses[losses.len().saturating_sub(100)..];
    let mut result = json!({
        "lib": "diffeo", "model": model, "data": data_name, "dim": d,
        "steps": a.steps, "batch": batch, "seed": a.seed, "lr": 1e-3,
        "transforms": if model == "cnf" { 1 } else { transforms },
        "hidden": if model == "cnf" { cnf.hidden[0] } else { hidden }, "layers": layers, "variant": null,
        "transformer": if model == "cnf" { json!(null) } else { json!(config.transformer.name()) },
        "bins": if model == "nsf" { json!(bins) } else { json!(null) },
        "tail": if model == "nsf" { json!(tail) } else { json!(null) },
        "versions": { "diffeo": env!("CARGO_PKG_VERSION"), "burn": "0.22.1" },
        "n_params": n_params,
        "train_s": round(train_s, 3),
        "first_step_s": round(first_step, 4),
        "steps_per_s": round(a.steps as f64 / train_s, 2),
        "train_cpu_s": round(train_cpu_s, 2),
        "train_other_cores": round(other_cores, 2),
        "loadavg1_start": round(load0, 2),
        "steady_steps_per_s": round((a.steps - 1) as f64 / (train_s - first_step).max(1e-9), 2),
        "train_loss_last100": round(last.iter().sum::<f64>() / last.len().max(1) as f64, 4),
        "test_ll": round(test_mean, 4), "test_nonfinite": test_nonfinite,
        "test_ll_median": round(median(&test_ll), 4),
        "val_ll": round(val_mean, 4), "val_nonfinite": val_nonfinite,
        "logprob_per_s": round(logprob_per_s, 1), "logprob_reps": logprob_reps,
        "sample_n": n_sample, "sample_per_s": round(sample_per_s, 1), "sample_reps": sample_reps,
        "sample_compile_s": null,
        "sample_sequential_passes_per_transform": d,
        "logprob_nfe": if model == "cnf" { json!(logprob_nfe) } else { json!(null) },
        "ode": if model == "cnf" { json!({"solver": "dopri5", "atol": cnf.ode.atol, "rtol": cnf.ode.rtol, "trace": "exact", "hidden": cnf.hidden, "gradient": cnf.gradient}) } else { json!(null) },
        "logprob_sequential_passes_per_transform": 1,
        "sample_finite_frac": finite_rows as f64 / (samples.len() / d).max(1) as f64,
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "peak_rss_mib_checkpoints": { "after_train": round(rss_train, 1), "after_logprob": round(rss_logprob, 1), "after_sample": round(peak_rss_mib(), 1) },
        "device": a.device,
        "threads": a.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        "cpu_count": std::thread::available_parallelism().map_or(1, |n| n.get()),
    });
    if let Some(m) = &meta {
        if let Some(v) = m.get("true_loglik_test").or_else(|| m.get("true_loglik_per_example")).and_then(|v| v.as_f64()) {
            result["true_test_ll"] = json!(round(v, 4));
        }
    }
    Ok(result)
}

//! The subcommands other than `plot`.

use std::io::IsTerminal;
use std::path::Path;
use std::time::Instant;

use anyhow::{anyhow, bail, Result};
use diffeo::bijections::{Bijection, Cost, ElementwiseKind, LayerConfig, PlanarConfig};
use diffeo::burn::module::Module;
use diffeo::fit::{Dataset, FitConfig, FitEvent};
use diffeo::flow::{Flow, FlowConfig, MafConfig, RealNvpConfig, Standardization};
use diffeo::nn::Activation;
use diffeo::transformer::Transformer;
use diffeo::tensor::{matrix, to_vec};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::json;

use crate::data::{self, Split};
use crate::model::{self, Inputs, ModelMeta, TrainingSummary};
use crate::{ActivationArg, CheckArgs, DatasetsArgs, EvalArgs, Failed, Family, FitArgs, InfoArgs, LogProbArgs, SampleArgs};

fn lib<T>(r: diffeo::Result<T>) -> Result<T> {
    r.map_err(|e| anyhow!("{e}"))
}

pub(crate) fn model_output(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    if !dir.is_dir() {
        bail!("{}: folder {} does not exist", path.display(), dir.display());
    }
    if path.is_dir() {
        bail!("{}: is a folder", path.display());
    }
    Ok(())
}

/// The architecture for a new model on `dim` features with `context_dim` context columns.
fn architecture(a: &FitArgs, dim: usize, context_dim: usize) -> Result<FlowConfig> {
    let activation = match a.activation {
        ActivationArg::Relu => Activation::Relu,
        ActivationArg::Tanh => Activation::Tanh,
        ActivationArg::Elu => Activation::Elu,
    };
    if a.dropout > 0.0 && a.residual_blocks == 0 {
        bail!("--dropout acts inside residual blocks: add --residual-blocks N");
    }
    let k = a.transforms.map(|k| k as usize);
    let spline = Transformer::RationalQuadratic { bins: a.bins as usize, tail_bound: a.tail_bound };
    Ok(match a.flow {
        Family::Maf | Family::Iaf | Family::Nsf => {
            let mut c = MafConfig::new(dim)
                .with_hidden(a.hidden.0.clone())
                .with_context_dim(context_dim)
                .with_activation(activation)
                .with_batch_norm(a.batch_norm)
                .with_iaf(a.flow == Family::Iaf)
                .with_lu(a.lu || a.flow == Family::Nsf)
                .with_residual_blocks(a.residual_blocks as usize)
                .with_dropout(a.dropout)
                .with_seed(a.seed);
            if a.flow == Family::Nsf {
                c = c.with_transformer(spline);
            }
            if let Some(k) = k {
                c = c.with_transforms(k);
            }
            c.flow_config()
        }
        Family::Realnvp | Family::Nice | Family::NsfCoupling => {
            if dim < 2 {
                bail!("{} coupling layers need at least 2 data columns; use --flow maf for 1-D data", a.flow.name());
            }
            let mut c = RealNvpConfig::new(dim)
                .with_hidden(a.hidden.0.clone())
                .with_context_dim(context_dim)
                .with_activation(activation)
                .with_batch_norm(a.batch_norm)
                .with_additive(a.flow == Family::Nice)
                .with_lu(a.lu || a.flow == Family::NsfCoupling)
                .with_residual_blocks(a.residual_blocks as usize)
                .with_dropout(a.dropout)
                .with_seed(a.seed);
            if a.flow == Family::NsfCoupling {
                c = c.with_transformer(spline);
            }
            if let Some(k) = k {
                c = c.with_transforms(k);
            }
            c.flow_config()
        }
        Family::Planar => {
            if context_dim > 0 {
                bail!("planar layers are unconditional: drop --context-cols");
            }
            FlowConfig::new(dim, vec![LayerConfig::Planar(PlanarConfig { dim }); k.unwrap_or(16)]).with_seed(a.seed)
        }
    })
}

/// logit(α + (1 − 2α)x), elementwise.
fn logit_transform(x: &mut [f64], alpha: f64, source: &str) -> Result<()> {
    for v in x.iter_mut() {
        if !(0.0..=1.0).contains(v) {
            bail!("{source}: --logit needs data in [0, 1] (found {v}); image files are scaled to [0, 1] automatically");
        }
        let s = alpha + (1.0 - 2.0 * alpha) * *v;
        *v = (s / (1.0 - s)).ln();
    }
    Ok(())
}

/// The layers that map logit-space values back to [0, 1]: sigmoid, then (s − α)/(1 − 2α).
fn logit_layers(dim: usize, alpha: f64) -> Vec<LayerConfig> {
    let w = 1.0 - 2.0 * alpha;
    vec![
        LayerConfig::Elementwise { dim, kind: ElementwiseKind::Sigmoid },
        LayerConfig::Elementwise {
            dim,
            kind: ElementwiseKind::Affine { shift: vec![-alpha / w; dim], scale: vec![1.0 / w; dim] },
        },
    ]
}

/// Splines are the identity beyond their tail bound: say how much of the training data, as the
/// flow's layers see it (`z`: after any logit and standardization), lies there.
fn warn_beyond_tail_bound(config: &FlowConfig, z: &[f64]) {
    let bound = config.layers.iter().find_map(|l| match l {
        LayerConfig::MaskedAutoregressive(c) => c.transformer.tail_bound(),
        LayerConfig::Coupling(c) => c.transformer.tail_bound(),
        _ => None,
    });
    let Some(bound) = bound else { return };
    let beyond = z.iter().filter(|v| v.abs() > bound).count();
    if beyond > 0 {
        eprintln!(
            "warning: {beyond} of {} standardized training values ({:.3}%) lie beyond the spline tail bound ±{bound}, where the splines are the identity; consider a larger --tail-bound",
            z.len(),
            100.0 * beyond as f64 / z.len() as f64
        );
    }
}

fn dataset(inp: Inputs, dim: usize, context_dim: usize) -> Dataset {
    let d = Dataset::new(inp.x, dim);
    match inp.context {
        Some(c) => d.with_context(c, context_dim),
        None => d,
    }
}

fn split_rows(inp: &Inputs, dim: usize, cdim: usize, rows: &[usize]) -> Inputs {
    let mut x = Vec::with_capacity(rows.len() * dim);
    let mut c = inp.context.as_ref().map(|_| Vec::with_capacity(rows.len() * cdim));
    for &i in rows {
        x.extend_from_slice(&inp.x[i * dim..(i + 1) * dim]);
        if let (Some(c), Some(src)) = (c.as_mut(), inp.context.as_ref()) {
            c.extend_from_slice(&src[i * cdim..(i + 1) * cdim]);
        }
    }
    Inputs { x, context: c, n: rows.len(), dropped: 0 }
}

/// Progress: a bar on a terminal, plain lines otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    quiet: bool,
    start: Instant,
    last_loss: f64,
    every: usize,
    val: String,
    budget: Option<f64>,
}

/// A progress bar over `total` steps on a terminal (none when quiet or not a terminal).
pub(crate) fn progress_bar(total: usize, quiet: bool) -> Option<indicatif::ProgressBar> {
    (!quiet && std::io::stderr().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::new(total as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:30.cyan/blue} {pos}/{len} steps  {msg}  [{elapsed_precise}, ETA {eta}]")
                .expect("valid template"),
        );
        b
    })
}

impl Progress {
    fn new(total: usize, quiet: bool, every: usize) -> Self {
        let bar = progress_bar(total, quiet);
        Self { bar, quiet, start: Instant::now(), last_loss: f64::NAN, every, val: String::new(), budget: None }
    }

    fn event(&mut self, e: &FitEvent) {
        match *e {
            FitEvent::Step { step, total, loss, .. } => {
                self.last_loss = loss;
                if let Some(b) = &self.bar {
                    b.set_position(step as u64);
                    if step % 10 == 0 || step == total {
                        b.set_message(format!("loss {loss:.4}{}", self.val));
                    }
                } else if !self.quiet && (step % self.every == 0 || step == total) && self.val.is_empty() {
                    let el = self.start.elapsed().as_secs_f64();
                    let mut eta = el / step as f64 * (total - step) as f64;
                    if let Some(b) = self.budget {
                        eta = eta.min((b - el).max(0.0));
                    }
                    eprintln!("step {step}/{total}  loss {loss:.4}  {el:.1}s elapsed, ETA {eta:.0}s");
                }
            }
            FitEvent::Validation { step, log_likelihood, best } => {
                self.val = format!("  val {log_likelihood:.4} (best {best:.4})");
                if self.bar.is_none() && !self.quiet {
                    let el = self.start.elapsed().as_secs_f64();
                    eprintln!(
                        "step {step}  loss {:.4}  val log-likelihood {log_likelihood:.4}  best {best:.4}  {el:.1}s elapsed",
                        self.last_loss
                    );
                }
            }
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

pub fn fit(a: FitArgs) -> Result<()> {
    model_output(&a.out)?;
    if let Some(p) = &a.plot_loss {
        data::check_output(p, &["png"])?;
    }
    if let Some(p) = &a.curve {
        data::check_output(p, &["csv"])?;
    }
    let device = diffeo::cpu();
    let root = a.data.data_root.as_deref();
    let table = model::read_source(&a.data.data, Split::Train, root)?;

    // Columns and preprocessing: from the resumed model, or from the flags.
    let resumed = match &a.resume {
        Some(p) => Some(model::load(p, &device)?),
        None => None,
    };
    let meta = match &resumed {
        Some(m) => {
            if a.cols.is_some() || a.context_cols.is_some() || a.dequantize || a.logit.is_some() {
                eprintln!("warning: --resume keeps the model's columns and preprocessing; column and preprocessing flags are ignored");
            }
            m.meta.clone()
        }
        None => {
            let context_columns = match &a.context_cols {
                Some(s) => data::parse_columns(s, &table)?,
                None => Vec::new(),
            };
            let columns = match &a.cols {
                Some(s) => data::parse_columns(s, &table)?,
                None => (0..table.cols).filter(|c| !context_columns.contains(c)).collect(),
            };
            if let Some(c) = columns.iter().find(|c| context_columns.contains(c)) {
                bail!("column {c} is both a data and a context column");
            }
            if columns.is_empty() {
                bail!("{}: no data columns left besides the context columns", table.source);
            }
            if table.images && !a.dequantize {
                eprintln!("warning: 8-bit images without --dequantize: the density of discrete pixels is not a proper density");
            }
            ModelMeta {
                family: a.flow.name().into(),
                data_source: table.source.clone(),
                input_columns: table.cols,
                column_names: table.names.as_ref().map(|n| columns.iter().map(|&c| n[c].clone()).collect()),
                columns,
                context_columns,
                dequantize: a.dequantize,
                images: table.images,
                logit_alpha: a.logit,
                standardized: !a.no_standardize,
            }
        }
    };
    let dim = meta.columns.len();
    let cdim = meta.context_columns.len();

    let mut rng = StdRng::seed_from_u64(a.seed ^ 0x5EED_DA7A);
    let all = model::inputs(&table, &meta, a.data.drop_nonfinite, &mut rng)?;
    if all.dropped > 0 {
        eprintln!("note: dropped {} row(s) with non-finite values", all.dropped);
    }

    // Validation data: --val, else the data set's own split, else 10% held out.
    let builtin_val = a
        .data
        .data
        .strip_prefix("builtin:")
        .map(|s| s.split(':').next().unwrap_or_default())
        .filter(|name| data::BUILTINS.iter().any(|b| b.name == *name && b.file.is_some()));
    let (train, val) = if let Some(v) = &a.val {
        let t = model::read_source(v, Split::Val, root)?;
        (all, Some(model::inputs(&t, &meta, a.data.drop_nonfinite, &mut rng)?))
    } else if let Some(name) = builtin_val {
        let t = data::load_builtin(&format!("{name}:val"), Split::Val, root)?;
        (all, Some(model::inputs(&t, &meta, false, &mut rng)?))
    } else if all.n >= 20 {
        let mut order: Vec<usize> = (0..all.n).collect();
        order.shuffle(&mut rng);
        let n_val = all.n / 10;
        let (v, t) = order.split_at(n_val);
        (split_rows(&all, dim, cdim, t), Some(split_rows(&all, dim, cdim, v)))
    } else {
        eprintln!("warning: only {} rows: training on all of them without validation", all.n);
        (all, None)
    };

    // The flow.
    let (flow, prior) = match resumed {
        Some(m) => {
            if m.flow.dim() != dim || m.flow.context_dim() != cdim {
                bail!("the resumed model has {} data and {} context columns", m.flow.dim(), m.flow.context_dim());
            }
            (m.flow, m.summary.unwrap_or_default())
        }
        None => {
            let mut config = architecture(&a, dim, cdim)?;
            // z: the training data as the flow's layers see them.
            let mut z = train.x.clone();
            if let Some(alpha) = meta.logit_alpha {
                logit_transform(&mut z, alpha, &table.source)?;
            }
            if meta.standardized {
                let stats = lib(Standardization::of(&z, dim))?;
                config = config.standardized(&stats);
                stats.apply(&mut z);
            }
            if let Some(alpha) = meta.logit_alpha {
                config.layers.extend(logit_layers(dim, alpha));
            }
            warn_beyond_tail_bound(&config, &z);
            if let Some(c) = &train.context {
                config.context_standardization = Some(lib(Standardization::of(c, cdim))?);
            }
            (lib(config.try_init(&device))?, TrainingSummary::default())
        }
    };
    match flow.directions().inverse {
        Cost::Unavailable => bail!(
            "{} has no inverse, so it cannot evaluate densities of data: maximum-likelihood fitting needs a flow with an inverse (maf, iaf, realnvp, nice)",
            meta.family
        ),
        Cost::Sequential => eprintln!("note: {} evaluates densities in {dim} sequential passes; fitting is slower than with maf", meta.family),
        Cost::Fast => {}
    }

    let (train_rows, val_rows) = (train.n, val.as_ref().map_or(0, |v| v.n));
    let train_set = dataset(train, dim, cdim);
    let val_set = val.map(|v| dataset(v, dim, cdim));
    let mut cfg = FitConfig::new()
        .with_learning_rate(a.lr)
        .with_steps(a.steps as usize)
        .with_batch_size(a.batch as usize)
        .with_eval_every(a.eval_every as usize)
        .with_seed(a.seed)
        .with_schedule(a.schedule.into());
    cfg.epochs = a.epochs.map(|e| e as usize);
    cfg.patience = a.patience.map(|p| p as usize);
    cfg.grad_clip_norm = a.clip_grad;
    let total = match cfg.epochs {
        Some(e) => e * train_rows.div_ceil(cfg.batch_size.min(train_rows)),
        None => cfg.steps,
    };
    cfg.time_budget = a.time_budget;
    let test_set = match &a.test {
        Some(t) => {
            let table = model::read_source(t, Split::Test, root)?;
            Some(dataset(model::inputs(&table, &meta, a.data.drop_nonfinite, &mut rng)?, dim, cdim))
        }
        None => None,
    };
    let mut curve: Vec<(f64, usize, f64, f64)> = Vec::new();
    let mut monitor_error = None;
    let mut monitor = |step: usize, seconds: f64, flow: &Flow| {
        if let Some(t) = &test_set {
            match diffeo::fit::mean_log_likelihood(flow, t) {
                Ok((ll, se)) => curve.push((seconds, step, ll, se)),
                Err(e) => monitor_error = Some(e),
            }
        }
    };
    let mut progress = Progress::new(total, a.quiet, cfg.eval_every);
    progress.budget = a.time_budget;
    let result =
        diffeo::fit::fit_monitored(flow, &train_set, val_set.as_ref(), &cfg, &mut |e| progress.event(e), &mut monitor);
    progress.finish();
    if let Some(e) = monitor_error {
        bail!("evaluating the test data: {e}");
    }
    let (flow, report) = match result {
        Ok(r) => r,
        Err(e @ diffeo::FlowError::NonFiniteLoss { .. }) => {
            return Err(Failed(format!("training failed, no model written: {e}")).into())
        }
        Err(e) => bail!("{e}"),
    };
    let summary = TrainingSummary {
        steps_total: prior.steps_total + report.steps,
        runs: prior.runs + 1,
        seconds_total: prior.seconds_total + report.seconds,
        train_rows,
        val_rows,
        best_val_log_likelihood: report.best_val_log_likelihood,
        best_step: report.best_step,
        final_train_loss: report.final_train_loss,
        history: report.history.iter().map(|r| (r.step, r.train_loss, r.val_log_likelihood)).collect(),
    };
    model::save(&a.out, &flow, &meta, &summary)?;
    if let Some(p) = &a.plot_loss {
        crate::plot::loss_curve(&summary, p)?;
    }
    if let Some(p) = &a.curve {
        let values: Vec<f64> = curve.iter().flat_map(|c| [c.0, c.1 as f64, c.2, c.3]).collect();
        let names: Vec<String> = ["seconds", "step", "test_log_likelihood", "stderr"].iter().map(|s| s.to_string()).collect();
        data::write_table(p, &values, 4, Some(&names))?;
        crate::plot::test_curve(&curve, &p.with_extension("png"))?;
        if let Some(last) = curve.last() {
            println!("test log-likelihood {:.4} ± {:.4} (2 s.e.) at {:.0} s, step {}", last.2, 2.0 * last.3, last.0, last.1);
        }
    }
    if !a.quiet {
        let val = match report.best_val_log_likelihood {
            Some(v) => format!("validation log-likelihood {v:.4} nats at step {}", report.best_step),
            None => format!("final training loss {:.4}", report.final_train_loss),
        };
        println!(
            "saved {}: {} on {} rows, {val} ({} steps{}, {:.1} s)",
            a.out.display(),
            meta.family,
            train_rows,
            report.steps,
            if report.stopped_early { ", stopped early" } else { "" },
            report.seconds
        );
    }
    Ok(())
}

/// Per-row log-likelihoods of a data source under the model, and the rows dropped as non-finite.
fn log_likelihoods(m: &model::Model, a_data: &crate::DataArgs, seed: u64) -> Result<(Vec<f64>, usize)> {
    let table = model::read_source(&a_data.data, Split::Test, a_data.data_root.as_deref())?;
    let mut rng = StdRng::seed_from_u64(seed);
    let inp = model::inputs(&table, &m.meta, a_data.drop_nonfinite, &mut rng)?;
    if m.flow.directions().inverse == Cost::Unavailable {
        bail!("this {} model has no inverse, so it cannot evaluate densities of data", m.meta.family);
    }
    let dropped = inp.dropped;
    let set = dataset(inp, m.flow.dim(), m.flow.context_dim());
    let ll = lib(diffeo::fit::log_likelihoods(&m.flow, &set))?;
    Ok((ll, dropped))
}

pub fn eval(a: EvalArgs) -> Result<()> {
    let device = diffeo::cpu();
    let m = model::load(&a.model, &device)?;
    let (ll, dropped) = log_likelihoods(&m, &a.data, a.seed)?;
    let d = m.flow.dim() as f64;
    let n_bad = ll.iter().filter(|v| !v.is_finite()).count();
    let (mean, se) = diffeo::fit::mean_and_stderr(&ll);
    let bpd = a.bits_per_dim.then(|| {
        // log p is the density of x = (pixel + U)/256 in [0, 1]^D; the probability of the pixel
        // values is p·256^−D, so bits/dim = −(log p − D·ln 256)/(D·ln 2) (8 for uniform noise).
        let f = |v: f64| -(v - d * 256f64.ln()) / (d * std::f64::consts::LN_2);
        (f(mean), se / (d * std::f64::consts::LN_2))
    });
    if a.bits_per_dim && !m.meta.images {
        eprintln!("warning: bits/dim assumes 8-bit data modelled in [0, 1]; this model was not fit on image data");
    }
    if n_bad > 0 {
        eprintln!("warning: {n_bad} row(s) have zero density under the model (log-likelihood −inf)");
    }
    if a.json {
        let mut o = json!({"log_likelihood": mean, "stderr": se, "n": ll.len(), "dim": m.flow.dim(), "dropped": dropped});
        if let Some((b, s)) = bpd {
            o["bits_per_dim"] = json!(b);
            o["bits_per_dim_stderr"] = json!(s);
        }
        println!("{o}");
    } else {
        println!("log-likelihood: {mean:.4} ± {se:.4} nats (n = {}, dim = {})", ll.len(), m.flow.dim());
        if let Some((b, s)) = bpd {
            println!("bits/dim: {b:.4} ± {s:.4}");
        }
    }
    Ok(())
}

pub fn log_prob(a: LogProbArgs) -> Result<()> {
    data::check_output(&a.out, &["npy", "csv"])?;
    let device = diffeo::cpu();
    let m = model::load(&a.model, &device)?;
    let (ll, _) = log_likelihoods(&m, &a.data, a.seed)?;
    let csv = a.out.extension().is_some_and(|e| e == "csv");
    let header = ["log_prob".to_string()];
    data::write_table(&a.out, &ll, 1, csv.then_some(&header[..]))
}

pub fn sample(a: SampleArgs) -> Result<()> {
    data::check_output(&a.out, &["npy", "csv"])?;
    let device = diffeo::cpu();
    let m = model::load(&a.model, &device)?;
    let ctx = model::context_rows(a.context.as_deref(), &m.meta, m.flow.context_dim())?;
    if m.flow.directions().forward == Cost::Unavailable {
        bail!("this model cannot be sampled (its forward direction is unavailable)");
    }
    let mut rng = StdRng::seed_from_u64(a.seed);
    let n = a.n as usize;
    let rows = ctx.as_ref().map_or(1, |(_, r)| *r);
    if n.saturating_mul(rows) > 50_000_000 {
        bail!("{} samples requested; the limit is 50 million per call", n * rows);
    }
    let ct = ctx.map(|(v, r)| matrix(v, r, m.flow.context_dim(), &device));
    let x = lib(m.flow.sample(n, ct.as_ref(), &mut rng))?;
    let values = lib(to_vec(x))?;
    let names = m.meta.column_names.clone();
    let csv = a.out.extension().is_some_and(|e| e == "csv");
    data::write_table(&a.out, &values, m.flow.dim(), names.as_deref().filter(|_| csv))
}

/// Random points for `check`: samples of the model (so in its region of interest) and their
/// contexts.
pub fn check(a: CheckArgs) -> Result<()> {
    let device = lib(diffeo::cpu_f64())?;
    let m = model::load(&a.model, &device)?;
    let flow = &m.flow;
    let (d, c) = (flow.dim(), flow.context_dim());
    let n = a.n as usize;
    let mut rng = StdRng::seed_from_u64(a.seed);
    // Contexts drawn around the training contexts (standard normal in standardized units).
    let context = (c > 0).then(|| {
        let s = flow.config().context_standardization.clone();
        (0..n * c)
            .map(|k| {
                let z: f64 = rand::Rng::sample(&mut rng, rand_distr::StandardNormal);
                s.as_ref().map_or(z, |s| s.mean[k % c] + s.std[k % c] * z)
            })
            .collect::<Vec<f64>>()
    });
    let ct = context.as_ref().map(|v| matrix(v.clone(), n, c, &device));
    let dirs = flow.directions();
    let u = lib(flow.base.sample(n, &mut rng, &device))?;
    let u_vals = lib(to_vec(u.clone()))?;
    let mut report = serde_json::Map::new();
    let mut failures = Vec::new();
    let scale = |v: &[f64]| v.iter().fold(1f64, |m, x| m.max(x.abs()));
    let values = |(y, ld): (diffeo::burn::tensor::Tensor<2>, diffeo::burn::tensor::Tensor<1>)| -> Result<(Vec<f64>, Vec<f64>)> {
        Ok((lib(to_vec(y))?, lib(to_vec(ld))?))
    };

    // Samples x = T(u) and log|det J_T(u)|.
    let forward = match dirs.forward {
        Cost::Unavailable => None,
        _ => Some(values(lib(flow.from_base(u.clone(), ct.as_ref()))?)?),
    };
    if let Some((x, ld_f)) = &forward {
        if x.iter().chain(ld_f).any(|v| !v.is_finite()) {
            failures.push("non-finite samples or log-determinants".to_string());
        }
    }
    // T⁻¹ at the samples (or, without a forward pass, at the base draws).
    let inverse = match (dirs.inverse, &forward) {
        (Cost::Unavailable, _) => None,
        (_, Some((x, _))) => Some(values(lib(flow.to_base(matrix(x.clone(), n, d, &device), ct.as_ref()))?)?),
        (_, None) => Some(values(lib(flow.to_base(u.clone(), ct.as_ref()))?)?),
    };
    if let (Some((_, ld_f)), Some((u2, ld_i))) = (&forward, &inverse) {
        let rec = u2.iter().zip(&u_vals).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max) / scale(&u_vals);
        let cons = ld_i.iter().zip(ld_f).map(|(a, b)| (a + b).abs()).fold(0.0, f64::max);
        report.insert("max_reconstruction_error".into(), json!(rec));
        report.insert("max_logdet_consistency_error".into(), json!(cons));
        if rec.is_nan() || rec > 1e-6 {
            failures.push(format!("inverse reconstruction error {rec:.3e} > 1e-6"));
        }
        if cons.is_nan() || cons > 1e-6 * scale(ld_f) {
            failures.push(format!("forward/inverse log-det mismatch {cons:.3e}"));
        }
    }
    // The log-dets against log|det| of the full Jacobian by autodiff: the density direction where
    // there is one, else the sampling direction.
    if d <= 64 {
        let (points, is_forward, ld) = match (&inverse, &forward) {
            (Some((_, ld_i)), Some((x, _))) => (x.clone(), false, ld_i),
            (Some((_, ld_i)), None) => (u_vals.clone(), false, ld_i),
            (None, Some((_, ld_f))) => (u_vals.clone(), true, ld_f),
            (None, None) => bail!("the model has neither direction"),
        };
        let ad = device.clone().autodiff();
        let flow_ad = flow.clone().without_dropout().train();
        let cx_ad = context.as_ref().map(|v| matrix(v.clone(), n, c, &ad));
        let map = |p: diffeo::burn::tensor::Tensor<2>| {
            let r = if is_forward { flow_ad.from_base(p, cx_ad.as_ref()) } else { flow_ad.to_base(p, cx_ad.as_ref()) };
            r.map(|(y, _)| y).map_err(|e| e.to_string())
        };
        let exact = diffeo::testing::autodiff_log_abs_det_jacobians(map, &points, d, &ad).map_err(|e| anyhow!(e))?;
        let err = ld.iter().zip(&exact).map(|(a, b)| (a - b).abs() / 1f64.max(b.abs())).fold(0.0, f64::max);
        report.insert("max_logdet_error".into(), json!(err));
        report.insert("logdet_points".into(), json!(n));
        report.insert("logdet_direction".into(), json!(if is_forward { "forward" } else { "inverse" }));
        if err.is_nan() || err > 1e-6 {
            failures.push(format!("log-det differs from log|det| of the autodiff Jacobian by {err:.3e} (relative) > 1e-6"));
        }
    } else {
        report.insert("max_logdet_error".into(), json!(null));
    }
    report.insert("n".into(), json!(n));
    report.insert("dim".into(), json!(d));
    report.insert("pass".into(), json!(failures.is_empty()));
    if a.json {
        println!("{}", serde_json::Value::Object(report.clone()));
    } else {
        for (k, v) in &report {
            println!("{k}: {v}");
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(Failed(format!("check failed: {}", failures.join("; "))).into())
    }
}

pub fn info(a: InfoArgs) -> Result<()> {
    let device = diffeo::cpu();
    let m = model::load(&a.model, &device)?;
    let flow: &Flow = &m.flow;
    let layers: Vec<String> = flow.transform.links.iter().map(|l| l.name()).collect();
    let params = flow.num_params();
    let dirs = flow.directions();
    let cost = |c: Cost| match c {
        Cost::Fast => "fast (one pass)",
        Cost::Sequential => "exact, D sequential passes",
        Cost::Unavailable => "unavailable",
    };
    if a.json {
        let o = json!({
            "family": m.meta.family,
            "dim": flow.dim(),
            "context_dim": flow.context_dim(),
            "parameters": params,
            "layers": layers,
            "base": format!("{:?}", flow.config().base),
            "columns": m.meta.columns,
            "context_columns": m.meta.context_columns,
            "column_names": m.meta.column_names,
            "data_source": m.meta.data_source,
            "standardized": m.meta.standardized,
            "dequantize": m.meta.dequantize,
            "logit_alpha": m.meta.logit_alpha,
            "training": m.summary.as_ref().map(|s| json!({
                "steps": s.steps_total, "runs": s.runs, "seconds": s.seconds_total,
                "train_rows": s.train_rows, "val_rows": s.val_rows,
                "best_val_log_likelihood": s.best_val_log_likelihood, "final_train_loss": s.final_train_loss,
            })),
        });
        println!("{o}");
        return Ok(());
    }
    println!("model:        {}", a.model.display());
    println!("family:       {}", m.meta.family);
    println!("features:     {} (columns {:?}{})", flow.dim(), m.meta.columns, m.meta.column_names.as_ref().map(|n| format!(" = {n:?}")).unwrap_or_default());
    if flow.context_dim() > 0 {
        println!("context:      {} (columns {:?})", flow.context_dim(), m.meta.context_columns);
    }
    println!("parameters:   {params}");
    println!("base:         {:?}", flow.config().base);
    println!("layers:       {} ({})", layers.len(), layers.join(", "));
    println!("density:      {}", cost(dirs.inverse));
    println!("sampling:     {}", cost(dirs.forward));
    let mut pre = Vec::new();
    if m.meta.dequantize {
        pre.push("uniform dequantization".to_string());
    }
    if m.meta.images {
        pre.push("pixels/256".into());
    }
    if let Some(al) = m.meta.logit_alpha {
        pre.push(format!("logit (α = {al})"));
    }
    if m.meta.standardized {
        pre.push("standardization (in the model; densities in data units)".into());
    }
    println!("preprocessing: {}", if pre.is_empty() { "none".into() } else { pre.join(", ") });
    println!("trained on:   {}", m.meta.data_source);
    if let Some(s) = &m.summary {
        let val = s.best_val_log_likelihood.map(|v| format!("{v:.4} nats at step {}", s.best_step)).unwrap_or_else(|| "none".into());
        println!(
            "training:     {} steps in {} run(s), {:.1} s; {} train / {} validation rows; best validation log-likelihood {val}",
            s.steps_total, s.runs, s.seconds_total, s.train_rows, s.val_rows
        );
    }
    Ok(())
}

pub fn datasets(a: DatasetsArgs) -> Result<()> {
    let root = data::data_root(a.data_root.as_deref());
    println!("{:<22} {:>4}  {:<9}  description", "name", "dim", "available");
    for b in data::BUILTINS {
        let avail = match (b.file, &root) {
            (None, _) => "yes".to_string(),
            (Some(f), Some(r)) if r.join(f).exists() || (b.name == "power" && r.join("power/data.npy").exists()) => "yes".into(),
            (Some(_), _) => "no".into(),
        };
        println!("{:<22} {:>4}  {:<9}  {}", format!("builtin:{}", b.name), b.dim, avail, b.about);
    }
    println!();
    println!("Toys: {} train / {} val / {} test rows with fixed seeds; pick a split with builtin:NAME:test.",
        data::TOY_ROWS[0].1, data::TOY_ROWS[1].1, data::TOY_ROWS[2].1);
    println!("Real data sets read DIR/<file> from --data-root DIR or $DIFFEO_DATA (power: power/householdpower.csv.gz or MAF's power/data.npy; miniboone: miniboone/data.npy; hepmass: hepmass/1000_train.csv and 1000_test.csv).");
    Ok(())
}

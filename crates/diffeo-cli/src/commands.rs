//! The subcommands other than `plot`, `vi` and `bench`: parse, call the library, print.

use std::io::IsTerminal;
use std::path::Path;
use std::time::Instant;

use anyhow::{anyhow, bail, Result};
use diffeo::data::builtin;
use diffeo::data::Table;
use diffeo::families::FamilySettings;
use diffeo::fit::FitEvent;
use diffeo::pipeline::{self, FitRequest, Notice};
use serde_json::json;

use crate::{CheckArgs, DatasetsArgs, EvalArgs, Failed, FitArgs, InfoArgs, LogProbArgs, SampleArgs};

/// A library error as a command-line error (exit 2), or exit 1 for a diverging fit, a failed
/// simulation or a sampler that hit its limit.
pub(crate) fn lib<T>(r: diffeo::Result<T>) -> Result<T> {
    r.map_err(|e| match e {
        e @ diffeo::FlowError::NonFiniteLoss { .. } => Failed(format!("training failed, no model written: {e}")).into(),
        e @ (diffeo::FlowError::Simulation(_) | diffeo::FlowError::SamplingLimit(_) | diffeo::FlowError::NotConverged { .. }) => {
            Failed(e.to_string()).into()
        }
        e => anyhow!("{e}"),
    })
}

/// Prints a library notice.
pub(crate) fn print_notice(n: Notice) {
    match n {
        Notice::Warning(m) => eprintln!("warning: {m}"),
        Notice::Note(m) => eprintln!("note: {m}"),
    }
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

/// Progress: a bar on a terminal, plain lines otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    quiet: bool,
    start: Instant,
    last_loss: f64,
    every: usize,
    val: String,
    budget: Option<f64>,
    /// Features of 8-bit images: validation scores are shown in bits/dim.
    bits_per_dim: Option<usize>,
}

/// A progress bar over `total` steps on a terminal (none when quiet or not a terminal).
pub(crate) fn progress_bar(total: usize, quiet: bool) -> Option<indicatif::ProgressBar> {
    (!quiet && std::io::stderr().is_terminal() && total != usize::MAX).then(|| {
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
        Self { bar, quiet, start: Instant::now(), last_loss: f64::NAN, every, val: String::new(), budget: None, bits_per_dim: None }
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
                    let mut eta = if total == usize::MAX { f64::INFINITY } else { el / step as f64 * (total - step) as f64 };
                    if let Some(b) = self.budget {
                        eta = eta.min((b - el).max(0.0));
                    }
                    let of = if total == usize::MAX { String::new() } else { format!("/{total}") };
                    eprintln!("step {step}{of}  loss {loss:.4}  {el:.1}s elapsed, ETA {eta:.0}s");
                }
            }
            FitEvent::Interval { .. } | FitEvent::Begin { .. } => {}
            FitEvent::Validation { step, log_likelihood, best } => {
                let (score, unit) = match self.bits_per_dim {
                    Some(d) => ((diffeo::fit::bits_per_dim(log_likelihood, d), diffeo::fit::bits_per_dim(best, d)), " bits/dim"),
                    None => ((log_likelihood, best), ""),
                };
                self.val = format!("  val {:.4}{unit} (best {:.4})", score.0, score.1);
                if self.bar.is_none() && !self.quiet {
                    let el = self.start.elapsed().as_secs_f64();
                    let what = if self.bits_per_dim.is_some() { "val bits/dim" } else { "val log-likelihood" };
                    eprintln!("step {step}  loss {:.4}  {what} {:.4}  best {:.4}  {el:.1}s elapsed", self.last_loss, score.0, score.1);
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

fn request(a: &FitArgs, defaults: &str) -> FitRequest {
    let mut family = FamilySettings::new(&a.flow);
    family.transforms = a.transforms.map(|k| k as usize);
    if let Some(h) = &a.hidden {
        family.hidden = h.0.clone();
    }
    if let Some(act) = a.activation {
        family.activation = act.into();
    }
    a.cnf_settings(&mut family);
    family.batch_norm = a.batch_norm;
    family.lu = a.lu;
    family.residual_blocks = a.residual_blocks as usize;
    family.dropout = a.dropout;
    family.bins = a.bins as usize;
    family.tail_bound = a.tail_bound;
    family.spline_tails = a.spline_tails.into();
    family.seed = a.seed;
    // --time-budget alone: train until the budget is spent.
    let steps = match (a.steps, a.epochs, a.time_budget) {
        (Some(s), _, _) => s as usize,
        (None, None, Some(_)) => 0,
        _ => 2000,
    };
    let mut train = diffeo::families::default_fit_config(defaults).with_steps(steps).with_seed(a.seed);
    if let Some(schedule) = a.schedule {
        train.schedule = schedule.into();
    }
    if let Some(lr) = a.lr {
        train.learning_rate = lr;
    }
    if let Some(b) = a.batch {
        train.batch_size = b as usize;
    }
    if let Some(k) = a.eval_every {
        train.eval_every = k as usize;
    }
    train.epochs = a.epochs.map(|e| e as usize);
    train.patience = a.patience.map(|p| p as usize);
    train.grad_clip_norm = a.clip_grad;
    train.average_decay = a.average_decay.or(train.average_decay);
    train.time_budget = a.time_budget;
    FitRequest {
        data: a.data.data.as_str().into(),
        data_root: a.data.data_root.clone(),
        drop_nonfinite: a.data.drop_nonfinite,
        val: a.val.as_deref().map(Into::into),
        columns: a.cols.clone(),
        context_columns: a.context_cols.clone(),
        dequantize: a.dequantize,
        variational_dequantization: a.variational_dequantization,
        logit: a.logit,
        standardize: !a.no_standardize,
        drop_constant: a.drop_constant,
        family,
        train,
        objective: a.objective(),
        resume: a.resume.clone(),
        test: a.test.clone(),
        labels: a.data.labels.clone(),
        memory_check: !a.no_memory_check,
    }
}

pub fn fit(a: FitArgs) -> Result<()> {
    model_output(&a.out)?;
    if let Some(p) = &a.plot_loss {
        lib(diffeo::data::check_output(p, &["png"]))?;
    }
    if let Some(p) = &a.curve {
        lib(diffeo::data::check_output(p, &["csv"]))?;
    }
    // The resumed model, read once: its family gives the defaults (batch, learning rate,
    // validation interval). (With --labels the pipeline refuses the resume before any file.)
    let resumed = match &a.resume {
        Some(p) if a.data.labels.is_none() => Some(lib(pipeline::load_model(p))?),
        _ => None,
    };
    let (defaults, dequantized) = match &resumed {
        Some(m) => (m.meta.family_name().to_string(), m.meta.inputs.dequantize),
        None => (a.flow.clone(), a.dequantize),
    };
    let req = request(&a, &defaults);
    // The progress display starts with the first step, which knows the planned total.
    let mut progress: Option<Progress> = None;
    // Image families on dequantized pixels: validation in bits/dim.
    let images = dequantized && FamilySettings::new(&defaults).is_image();
    let mut dim = None;
    let mut observer = |e: &FitEvent| {
        if let FitEvent::Begin { dim: d } = e {
            dim = Some(*d);
            return;
        }
        let p = progress.get_or_insert_with(|| {
            let total = if let FitEvent::Step { total, .. } = e { *total } else { usize::MAX };
            let mut p = Progress::new(total, a.quiet, req.train.eval_every);
            p.budget = a.time_budget;
            p.bits_per_dim = dim.filter(|_| images);
            p
        });
        p.event(e);
    };
    let result = pipeline::fit_model(&req, resumed, &mut print_notice, &mut observer);
    if let Some(p) = &progress {
        p.finish();
    }
    let outcome = lib(result)?;
    lib(diffeo::model::save(&a.out, &outcome.model))?;
    let summary = outcome.model.summary.clone().unwrap_or_default();
    if let Some(p) = &a.plot_loss {
        crate::plot::loss_curve(&summary, p)?;
    }
    let curve = &outcome.curve;
    if let Some(p) = &a.curve {
        let values: Vec<f64> = curve.iter().flat_map(|c| [c.0, c.1 as f64, c.2, c.3]).collect();
        let names: Vec<String> = ["seconds", "step", "test_log_likelihood", "stderr"].iter().map(|s| s.to_string()).collect();
        lib(diffeo::data::write_table(p, &values, 4, Some(&names)))?;
        crate::plot::test_curve(curve, &p.with_extension("png"))?;
        if let Some(last) = curve.last() {
            println!("test log-likelihood {:.4} ± {:.4} (2 s.e.) at {:.0} s, step {}", last.2, 2.0 * last.3, last.0, last.1);
        }
    }
    if !a.quiet {
        let report = &outcome.report;
        let val = match report.best_val_log_likelihood {
            // 8-bit images modelled in [0, 1]: bits/dim beside the nats.
            Some(v) if outcome.model.meta.inputs.images && outcome.model.meta.inputs.dequantize => format!(
                "validation log-likelihood {v:.4} nats ({:.4} bits/dim{}) at step {}",
                diffeo::fit::bits_per_dim(v, outcome.model.flow.dim()),
                if outcome.model.flow.dequantizer.is_some() { ", variational bound" } else { "" },
                report.best_step
            ),
            Some(v) => format!("validation log-likelihood {v:.4} nats at step {}", report.best_step),
            None => format!("final training loss {:.4}", report.final_train_loss),
        };
        println!(
            "saved {}: {} on {} rows, {val} ({} steps{}, {:.1} s)",
            a.out.display(),
            outcome.model.meta.family,
            outcome.train_rows,
            report.steps,
            if report.stopped_early { ", stopped early" } else { "" },
            report.seconds
        );
    }
    Ok(())
}

pub fn eval(a: EvalArgs) -> Result<()> {
    let m = lib(pipeline::load_model(&a.model))?;
    let (ll, dropped, nfe) =
        lib(pipeline::log_likelihoods_labelled(&m, &a.data.data, a.data.labels.as_deref(), a.data.data_root.as_deref(), a.data.drop_nonfinite, a.seed))?;
    let d = m.flow.dim() as f64;
    let n_bad = ll.iter().filter(|v| !v.is_finite()).count();
    let (mean, se) = diffeo::fit::mean_and_stderr(&ll);
    let bpd = a.bits_per_dim.then(|| (diffeo::fit::bits_per_dim(mean, m.flow.dim()), se / (d * std::f64::consts::LN_2)));
    if a.bits_per_dim && !m.meta.inputs.images {
        eprintln!("warning: bits/dim assumes 8-bit data modelled in [0, 1]; this model was not fit on image data");
    }
    if n_bad > 0 {
        eprintln!("warning: {n_bad} row(s) have zero density under the model (log-likelihood −inf)");
    }
    let estimated = m.flow.log_det(diffeo::bijections::Mode::Evaluation) == diffeo::bijections::LogDet::Estimated;
    let dequantized = m.flow.dequantizer.is_some();
    if estimated && !a.json {
        eprintln!("note: this model's log-determinants are unbiased stochastic estimates; so is each log-density");
    }
    if a.json {
        let log_det = if estimated { "estimated" } else { "exact" };
        let mut o = json!({"log_likelihood": mean, "stderr": se, "n": ll.len(), "dim": m.flow.dim(), "dropped": dropped, "log_det": log_det});
        if let Some((b, s)) = bpd {
            o["bits_per_dim"] = json!(b);
            o["bits_per_dim_stderr"] = json!(s);
        }
        if nfe > 0 {
            o["nfe"] = json!(nfe);
        }
        if dequantized {
            o["importance_samples"] = json!(diffeo::dequantization::EVALUATION_SAMPLES);
        }
        println!("{o}");
    } else {
        let bound = if dequantized {
            format!(" (importance-weighted bound of the learned dequantization, {} draws per row)", diffeo::dequantization::EVALUATION_SAMPLES)
        } else {
            String::new()
        };
        println!("log-likelihood: {mean:.4} ± {se:.4} nats (n = {}, dim = {}){bound}", ll.len(), m.flow.dim());
        if let Some((b, s)) = bpd {
            println!("bits/dim: {b:.4} ± {s:.4}");
        }
        if nfe > 0 {
            println!("vector-field evaluations (NFE): {nfe}");
        }
    }
    Ok(())
}

pub fn log_prob(a: LogProbArgs) -> Result<()> {
    lib(diffeo::data::check_output(&a.out, &["npy", "csv"]))?;
    let m = lib(pipeline::load_model(&a.model))?;
    let ll = if m.posterior.is_some() {
        lib(pipeline::sbi::posterior_log_density(&m, &a.data.data, a.observation.as_deref(), a.data.data_root.as_deref(), a.seed))?
    } else {
        if a.observation.is_some() {
            bail!("--observation goes with posterior models (from diffeo npe); pass a conditional model's context as columns of --data");
        }
        let (ll, _, nfe) =
            lib(pipeline::log_likelihoods_labelled(&m, &a.data.data, a.data.labels.as_deref(), a.data.data_root.as_deref(), a.data.drop_nonfinite, a.seed))?;
        if nfe > 0 {
            eprintln!("vector-field evaluations (NFE): {nfe}");
        }
        ll
    };
    let csv = a.out.extension().is_some_and(|e| e == "csv");
    let header = ["log_prob".to_string()];
    lib(diffeo::data::write_table(&a.out, &ll, 1, csv.then_some(&header[..])))
}

pub fn sample(a: SampleArgs) -> Result<()> {
    let png = a.out.extension().is_some_and(|e| e.eq_ignore_ascii_case("png"));
    lib(diffeo::data::check_output(&a.out, if png { &["png"] } else { &["npy", "csv"] }))?;
    let m = lib(pipeline::load_model(&a.model))?;
    let image = match m.flow.event() {
        diffeo::bijections::EventShape::Image { channels, height, width } => Some((channels, height, width)),
        _ => None,
    };
    if png && image.is_none() {
        bail!("a .png output is an image grid, for models of images; write .npy or .csv (or use diffeo plot)");
    }
    let ctx: Option<Table> = match a.label {
        Some(label) => Some(lib(pipeline::label_context(&m, label as usize))?),
        None => lib(pipeline::context_rows(a.context.as_deref(), &m))?,
    };
    let (t, nfe) = lib(pipeline::sample_at_temperature(&m, a.n as usize, ctx.as_ref(), a.seed, a.temperature))?;
    if let (true, Some(shape)) = (png, image) {
        crate::plot::image_grid(&t.values, shape, &a.out)?;
    } else {
        let csv = a.out.extension().is_some_and(|e| e == "csv");
        lib(diffeo::data::write_table(&a.out, &t.values, t.cols, t.names.as_deref().filter(|_| csv)))?;
    }
    if nfe > 0 {
        eprintln!("vector-field evaluations (NFE): {nfe}");
    }
    Ok(())
}

/// Inverse reconstruction and log-determinants of a saved model, in f64.
pub fn check(a: CheckArgs) -> Result<()> {
    let r = lib(pipeline::check(&a.model, a.n as usize, a.seed))?;
    let mut report = serde_json::Map::new();
    if let (Some(rec), Some(cons)) = (r.max_reconstruction_error, r.max_logdet_consistency_error) {
        report.insert("max_reconstruction_error".into(), json!(rec));
        report.insert("max_logdet_consistency_error".into(), json!(cons));
    }
    report.insert("max_logdet_error".into(), json!(r.max_logdet_error));
    if let (Some(p), Some(d)) = (r.logdet_points, r.logdet_direction) {
        report.insert("logdet_points".into(), json!(p));
        report.insert("logdet_direction".into(), json!(d));
    }
    report.insert("log_det".into(), json!(r.log_det));
    report.insert("n".into(), json!(r.n));
    report.insert("dim".into(), json!(r.dim));
    report.insert("pass".into(), json!(r.passed()));
    if a.json {
        println!("{}", serde_json::Value::Object(report.clone()));
    } else {
        for (k, v) in &report {
            println!("{k}: {v}");
        }
    }
    if r.passed() {
        Ok(())
    } else {
        Err(Failed(format!("check failed: {}", r.failures.join("; "))).into())
    }
}

pub fn info(a: InfoArgs) -> Result<()> {
    let m = lib(pipeline::load_model(&a.model))?;
    let flow = &m.flow;
    let layers = flow.layer_names();
    let params = flow.parameter_count();
    let dirs = flow.directions();
    let inputs = &m.meta.inputs;
    if a.json {
        let o = pipeline::info(&m);
        println!("{o}");
        return Ok(());
    }
    println!("model:        {}", a.model.display());
    println!("family:       {}", m.meta.family);
    if let diffeo::bijections::EventShape::Image { .. } = flow.event() {
        println!("features:     {} (images {}, columns 0-{})", flow.dim(), flow.event(), flow.dim() - 1);
    } else {
        println!("features:     {} (columns {:?}{})", flow.dim(), inputs.columns, inputs.column_names.as_ref().map(|n| format!(" = {n:?}")).unwrap_or_default());
    }
    if flow.context_dim() > 0 {
        println!("context:      {} (columns {:?})", flow.context_dim(), inputs.context_columns);
    }
    println!("parameters:   {params}");
    println!("base:         {:?}", flow.config().base);
    println!("layers:       {} ({})", layers.len(), layers.join(", "));
    println!("density:      {}", dirs.inverse.describe());
    println!("sampling:     {}", dirs.forward.describe());
    println!("log-dets:     {}", format!("{:?}", flow.log_det(diffeo::bijections::Mode::Evaluation)).to_lowercase());
    let mut pre = Vec::new();
    match &flow.dequantizer {
        Some(q) => pre.push(format!(
            "variational dequantization ({} couplings, {} hidden channels, {} parameters)",
            q.config().couplings,
            q.config().hidden_channels,
            q.config().parameter_count()
        )),
        None if inputs.dequantize => pre.push("uniform dequantization".to_string()),
        None => {}
    }
    if inputs.images {
        pre.push("pixels/256".into());
    }
    if let Some(al) = inputs.logit_alpha {
        pre.push(format!("logit (α = {al})"));
    }
    if inputs.standardized {
        pre.push("standardization (in the model; densities in data units)".into());
    }
    println!("preprocessing: {}", if pre.is_empty() { "none".into() } else { pre.join(", ") });
    println!("trained on:   {}", m.meta.data_source);
    if let Some(p) = &m.posterior {
        let support = match p.support {
            diffeo::sbi::SupportHandling::Transform => "support map in the model",
            diffeo::sbi::SupportHandling::Rejection => "rejection outside the support",
        };
        let at = p.observation.as_ref().map(|o| format!(", focused on x_o = {o:?}")).unwrap_or_default();
        let ensemble = match m.members.len() {
            0 => String::new(),
            k => format!("; the mixture of {} flows", k + 1),
        };
        println!("posterior:    prior {} ({support}); {} simulation(s) in {} round(s){at}{ensemble}", p.prior.spec(), p.simulations, p.rounds);
    }
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
    let root = builtin::data_root(a.data_root.as_deref());
    println!("{:<22} {:>4}  {:<9}  description", "name", "dim", "available");
    for b in builtin::BUILTINS {
        let avail = match (b.file, &root) {
            (None, _) => "yes".to_string(),
            (Some(f), Some(r)) if r.join(f).exists() || (b.name == "power" && r.join("power/data.npy").exists()) => "yes".into(),
            (Some(_), _) => "no".into(),
        };
        println!("{:<22} {:>4}  {:<9}  {}", format!("builtin:{}", b.name), b.dim, avail, b.about);
    }
    println!();
    println!("Toys: {} train / {} val / {} test rows with fixed seeds; pick a split with builtin:NAME:test.",
        builtin::TOY_ROWS[0].1, builtin::TOY_ROWS[1].1, builtin::TOY_ROWS[2].1);
    println!("Real data sets read DIR/<file> from --data-root DIR or $DIFFEO_DATA (power: power/householdpower.csv.gz or MAF's power/data.npy; miniboone: miniboone/data.npy; hepmass: hepmass/1000_train.csv and 1000_test.csv).");
    Ok(())
}

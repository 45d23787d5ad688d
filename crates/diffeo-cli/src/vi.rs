//! `diffeo vi`: fit a flow to a built-in target density by variational inference.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use diffeo::families::FamilySettings;
use diffeo::pipeline::{self, ViRequest};
use diffeo::vi::{ReverseKlConfig, StandardTarget, Target};
use serde_json::json;

use crate::commands::{lib, model_output, progress_bar};
use crate::{families, positive_f64, widths, ActivationArg, ScheduleArg, SplineTailsArg, Widths};

#[derive(Args, Debug)]
pub struct ViArgs {
    /// Target: u1, u2, u3, u4 (Rezende & Mohamed; u2–u4 on the box [−4, 4]²), funnel (Neal,
    /// d = 10), banana (b = 0.03), banana-strong (b = 0.1), rosenbrock.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(StandardTarget::NAMES))]
    pub target: String,
    /// Dimension of the funnel.
    #[arg(long, value_parser = clap::value_parser!(u64).range(2..=1000))]
    pub dim: Option<u64>,
    /// Flow family.
    #[arg(long, value_parser = families(&diffeo::families::VI_FAMILIES), default_value = "nsf-coupling")]
    pub flow: String,
    /// Number of layers K.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub transforms: Option<u64>,
    /// Hidden widths of each conditioner network (iaf, realnvp, nsf-coupling).
    #[arg(long, value_parser = widths, default_value = "64,64")]
    pub hidden: Widths,
    /// Hidden nonlinearity of each conditioner network (iaf, realnvp, nsf-coupling).
    #[arg(long, value_enum, default_value = "relu")]
    pub activation: ActivationArg,
    /// Spline bins (nsf-coupling).
    #[arg(long, value_parser = clap::value_parser!(u64).range(2..=256), default_value = "8")]
    pub bins: u64,
    /// Spline tail bound B (nsf-coupling).
    #[arg(long, value_parser = positive_f64, default_value = "5")]
    pub tail_bound: f64,
    /// Spline tails (nsf-coupling): affine (learned per-dimension affine map around the spline)
    /// or identity.
    #[arg(long, value_enum, default_value = "affine")]
    pub spline_tails: SplineTailsArg,
    /// Optimisation steps.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..), default_value = "5000")]
    pub steps: u64,
    /// Monte-Carlo samples per step.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000), default_value = "256")]
    pub batch: u64,
    /// Adam learning rate.
    #[arg(long, value_parser = positive_f64, default_value = "0.002")]
    pub lr: f64,
    /// Learning-rate schedule.
    #[arg(long, value_enum, default_value = "cosine")]
    pub schedule: ScheduleArg,
    /// Sticking-the-landing gradients (needs a flow with an inverse: iaf, realnvp, nsf-coupling).
    #[arg(long)]
    pub stl: bool,
    /// Anneal the target as p̃^β, β from 0.01 to 1 over this many steps.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub anneal: Option<u64>,
    /// Clip the global gradient norm.
    #[arg(long, value_parser = positive_f64)]
    pub clip_grad: Option<f64>,
    /// Samples for the final diagnostics.
    #[arg(long, value_parser = clap::value_parser!(u64).range(100..=10_000_000), default_value = "20000")]
    pub samples: u64,
    /// Seed for weights and Monte-Carlo draws.
    #[arg(long, default_value = "0")]
    pub seed: u64,
    /// Print one JSON object (elbo, log_z, log_z_stderr, ess_fraction, khat, kl, …).
    #[arg(long)]
    pub json: bool,
    /// No progress output.
    #[arg(long, short)]
    pub quiet: bool,
    /// Where to save the model (written atomically).
    #[arg(long, value_name = "MODEL")]
    pub out: PathBuf,
}

fn target(a: &ViArgs) -> Result<StandardTarget> {
    let mut t = StandardTarget::from_name(&a.target).map_err(|e| anyhow::anyhow!("{e}"))?;
    match (&mut t, a.dim) {
        (StandardTarget::Funnel { dim }, Some(d)) => *dim = d as usize,
        (_, Some(_)) => bail!("--dim applies to the funnel only"),
        _ => {}
    }
    t.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(t)
}

pub fn vi(a: ViArgs) -> Result<()> {
    model_output(&a.out)?;
    let t = target(&a)?;
    let mut family = FamilySettings::new(&a.flow);
    family.transforms = a.transforms.map(|k| k as usize);
    family.hidden = a.hidden.0.clone();
    family.activation = a.activation.into();
    family.bins = a.bins as usize;
    family.tail_bound = a.tail_bound;
    family.spline_tails = a.spline_tails.into();
    family.seed = a.seed;
    let fit = ReverseKlConfig::new()
        .with_steps(a.steps as usize)
        .with_batch_size(a.batch as usize)
        .with_learning_rate(a.lr)
        .with_schedule(a.schedule.into())
        .with_sticking_the_landing(a.stl)
        .with_annealing_steps(a.anneal.unwrap_or(0) as usize)
        .with_grad_clip_norm(a.clip_grad)
        .with_eval_every((a.steps as usize / 100).clamp(1, 500))
        .with_diagnostic_samples(a.samples as usize)
        .with_seed(a.seed);
    let req = ViRequest { target: t.clone(), target_name: a.target.clone(), family, fit };
    let bar = progress_bar(a.steps as usize, a.quiet);
    let quiet = a.quiet;
    let report_every = (a.steps as usize / 10).max(1);
    let mut observer = |p: &diffeo::vi::ReverseKlProgress| {
        if let Some(b) = &bar {
            b.set_position(p.step as u64);
            b.set_message(format!("ELBO {:.4}  β {:.2}", p.elbo, p.beta));
        } else if !quiet && (p.step % report_every < (a.steps as usize / 100).clamp(1, 500) || p.step == p.total) {
            eprintln!("step {}  ELBO {:.4}  β {:.2}", p.step, p.elbo, p.beta);
        }
    };
    let fitted = pipeline::vi(&req, &mut observer);
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let outcome = lib(fitted)?;
    lib(diffeo::model::save(&a.out, &outcome.model))?;
    let report = &outcome.report;
    // `--samples` ≥ 100, so the fit always reports its diagnostics.
    let diag = report.diagnostics.clone().ok_or_else(|| anyhow::anyhow!("the fit reported no diagnostics"))?;
    let d = t.dim();
    if a.json {
        let v = json!({
            "target": a.target,
            "flow": a.flow,
            "dim": d,
            "steps": report.steps,
            "seconds": report.seconds,
            "samples": diag.samples,
            "dropped": diag.dropped,
            "dropped_training": report.dropped,
            "elbo": diag.elbo,
            "elbo_stderr": diag.elbo_stderr,
            "log_z": diag.log_z,
            "log_z_stderr": diag.log_z_stderr,
            "ess": diag.ess,
            "ess_fraction": diag.ess_fraction,
            "khat": diag.khat,
            "true_log_z": diag.true_log_z,
            "kl": diag.kl,
        });
        println!("{v}");
    } else {
        println!("{} on {} ({} steps, {:.1} s)", a.flow, t.name(), report.steps, report.seconds);
        println!("ELBO {:.4} ± {:.4}", diag.elbo, diag.elbo_stderr);
        println!("log Z (importance sampling) {:.4} ± {:.4}", diag.log_z, diag.log_z_stderr);
        if let (Some(z), Some(kl)) = (diag.true_log_z, diag.kl) {
            println!("true log Z {z:.4}: KL(q‖p) = {kl:.4} nats");
        }
        println!("ESS {:.0} of {} ({:.1}%), Pareto k̂ {:.2}", diag.ess, diag.samples - diag.dropped, 100.0 * diag.ess_fraction, diag.khat);
        if diag.khat > 0.7 {
            println!("warning: k̂ > 0.7: the importance weights are heavy-tailed; the log Z estimate and its error are unreliable");
        }
        if diag.dropped + report.dropped > 0 {
            println!("dropped {} samples where the target was not finite", diag.dropped + report.dropped);
        }
        println!("saved {}", a.out.display());
    }
    Ok(())
}

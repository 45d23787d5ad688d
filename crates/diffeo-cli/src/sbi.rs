//! `diffeo npe`, `posterior` and `sbc`: simulation-based inference from the command line.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use diffeo::fit::FitEvent;
use diffeo::pipeline::sbi::{self as sbi_pipeline, NpeRequest, SbcRequest, SimulatorRequest};
use diffeo::sbi::{CalibrationConfig, NpeConfig, RoundEvent, SamplingLimits, SequentialConfig, SupportHandling, XEmbedding};
use serde_json::json;

use crate::commands::{lib, model_output, print_notice};
use crate::{families, positive_f64, widths, ActivationArg, SplineTailsArg, Widths};

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmbeddingArg {
    /// x reaches the flow as it is (standardized).
    None,
    /// An MLP embedding.
    Mlp,
    /// DeepSets over --iid-groups exchangeable draws in x.
    Deepsets,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SupportArg {
    /// Train on θ directly and reject samples outside the support (as sbi does).
    Reject,
    /// Train in the unconstrained space of the prior's support (no sample leaves it).
    Transform,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StandardizeArg {
    /// Subtract θ's least-squares regression on x and divide by the residuals' spread.
    GivenX,
    /// θ's own mean and standard deviation.
    Marginal,
}

#[derive(Args, Debug)]
pub struct NpeArgs {
    /// Simulations: CSV (with or without a header) or NPY holding θ and x columns.
    #[arg(long, value_name = "FILE")]
    pub data: Option<String>,
    /// θ columns of --data (indices, ranges a-b or header names).
    #[arg(long, value_name = "COLS")]
    pub theta_cols: Option<String>,
    /// x columns of --data.
    #[arg(long, value_name = "COLS")]
    pub x_cols: Option<String>,
    /// The prior: `;`-separated uniform:LO:HI, normal:MEAN:STD, lognormal:MU:SIGMA, each
    /// optionally followed by xN (uniform:-1:1x2), or a .json file with the same.
    #[arg(long, value_name = "SPEC|FILE.json", allow_hyphen_values = true)]
    pub prior: String,
    /// Run this program as the simulator: θ rows as CSV on its stdin, x rows on its stdout.
    #[arg(long, value_name = "COMMAND")]
    pub simulator: Option<String>,
    /// The observation x_o sequential rounds focus on: comma-separated values or a one-row file.
    #[arg(long, value_name = "VALUES|FILE", allow_hyphen_values = true)]
    pub observation: Option<String>,
    /// Rounds of simulations (> 1: truncated sequential NPE at --observation).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100), default_value = "1")]
    pub rounds: u64,
    /// Simulations over all rounds (with --simulator).
    #[arg(long, value_parser = clap::value_parser!(u64).range(2..), default_value = "10000")]
    pub simulations: u64,
    /// θ rows per simulator call.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..), default_value = "1000")]
    pub simulation_batch: u64,
    /// Simulator processes at a time.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=256), default_value = "1")]
    pub workers: u64,
    /// Kill a simulator call after this many seconds (exit 1).
    #[arg(long, value_parser = positive_f64, value_name = "SECONDS")]
    pub simulator_timeout: Option<f64>,
    /// Where every simulation is appended as it arrives (default: MODEL.sims.csv).
    #[arg(long, value_name = "FILE.csv")]
    pub simulations_out: Option<PathBuf>,
    /// Continue from the simulations file (skip what it already holds).
    #[arg(long)]
    pub resume: bool,
    /// Flow family of q(θ | x).
    #[arg(long, value_parser = families(&diffeo::families::FAMILIES), default_value = "nsf")]
    pub flow: String,
    /// Layers (default: the family's).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub transforms: Option<u64>,
    /// Hidden widths of the conditioners (default 64,64).
    #[arg(long, value_parser = widths)]
    pub hidden: Option<Widths>,
    /// Hidden nonlinearity.
    #[arg(long, value_enum)]
    pub activation: Option<ActivationArg>,
    /// Spline bins (default 10).
    #[arg(long, value_parser = clap::value_parser!(u64).range(2..=256))]
    pub bins: Option<u64>,
    /// Spline tail bound (default 4).
    #[arg(long, value_parser = positive_f64)]
    pub tail_bound: Option<f64>,
    /// Spline tails: identity (default) or affine (a learned per-dimension affine map around
    /// the spline).
    #[arg(long, value_enum)]
    pub spline_tails: Option<SplineTailsArg>,
    /// Embedding network of x.
    #[arg(long, value_enum, default_value = "none")]
    pub embedding: EmbeddingArg,
    /// Exchangeable draws making up x (for --embedding deepsets).
    #[arg(long, value_parser = clap::value_parser!(u64).range(2..))]
    pub iid_groups: Option<u64>,
    /// Hidden widths of the embedding.
    #[arg(long, value_parser = widths, default_value = "64,64")]
    pub embedding_hidden: Widths,
    /// Output width of the embedding.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..), default_value = "16")]
    pub embedding_dim: u64,
    /// How posterior samples keep to the prior's support.
    #[arg(long, value_enum, default_value = "reject")]
    pub support: SupportArg,
    /// Flows trained with seeds seed, seed+1, …; the posterior is their equal-weight mixture.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=64), default_value = "5")]
    pub ensemble: u64,
    /// How θ is standardized inside the model (given-x needs no embedding; with one, marginal).
    #[arg(long, value_enum, default_value = "given-x")]
    pub standardize_theta: StandardizeArg,
    /// Minibatch size (default 200).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch: Option<u64>,
    /// Learning rate (default 5e-4).
    #[arg(long, value_parser = positive_f64)]
    pub lr: Option<f64>,
    /// Stop after this many epochs without a better validation score (default 20).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub patience: Option<u64>,
    /// Times the learning rate is reduced (by --lr-decay-factor) when --patience runs out,
    /// before training stops.
    #[arg(long)]
    pub lr_decays: Option<u64>,
    /// The factor of each reduction, in (0, 1).
    #[arg(long, value_parser = positive_f64)]
    pub lr_decay_factor: Option<f64>,
    /// Dropout inside the residual blocks (with --residual-blocks; default 0).
    #[arg(long, value_parser = crate::probability)]
    pub dropout: Option<f64>,
    /// L2 weight decay (default 0).
    #[arg(long, value_parser = crate::nonnegative_f64)]
    pub weight_decay: Option<f64>,
    /// Residual blocks in the conditioner networks instead of a plain MLP (default 0).
    #[arg(long)]
    pub residual_blocks: Option<u64>,
    /// The most epochs per round (default 2000).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_epochs: Option<u64>,
    /// Clip the gradient norm (default 5).
    #[arg(long, value_parser = positive_f64)]
    pub clip_grad: Option<f64>,
    /// Seed of the weights, the training and the proposals.
    #[arg(long, default_value = "0")]
    pub seed: u64,
    /// No progress output.
    #[arg(long, short)]
    pub quiet: bool,
    /// Where to save the posterior model.
    #[arg(long, value_name = "MODEL")]
    pub out: PathBuf,
}

fn npe_config(a: &NpeArgs) -> Result<NpeConfig> {
    let mut c = NpeConfig::default();
    c.family.family = a.flow.clone();
    c.family.transforms = a.transforms.map(|k| k as usize);
    if let Some(h) = &a.hidden {
        c.family.hidden = h.0.clone();
    }
    if let Some(act) = a.activation {
        c.family.activation = act.into();
    }
    if let Some(b) = a.bins {
        c.family.bins = b as usize;
    }
    if let Some(t) = a.tail_bound {
        c.family.tail_bound = t;
    }
    if let Some(t) = a.spline_tails {
        c.family.spline_tails = t.into();
    }
    c.family.seed = a.seed;
    c.embedding = match (a.embedding, a.iid_groups) {
        (EmbeddingArg::None, None) => XEmbedding::None,
        (EmbeddingArg::Mlp, None) => XEmbedding::Mlp { hidden: a.embedding_hidden.0.clone(), output: a.embedding_dim as usize },
        (EmbeddingArg::Deepsets, Some(g)) => {
            XEmbedding::DeepSets { groups: g as usize, hidden: a.embedding_hidden.0.clone(), output: a.embedding_dim as usize }
        }
        (EmbeddingArg::Deepsets, None) => bail!("--embedding deepsets needs --iid-groups G (the draws making up x)"),
        (_, Some(_)) => bail!("--iid-groups goes with --embedding deepsets"),
    };
    c.support = match a.support {
        SupportArg::Transform => SupportHandling::Transform,
        SupportArg::Reject => SupportHandling::Rejection,
    };
    c.standardize_given_x = a.standardize_theta == StandardizeArg::GivenX;
    c.ensemble = a.ensemble as usize;
    c.train.seed = a.seed;
    if let Some(b) = a.batch {
        c.train.batch_size = b as usize;
    }
    if let Some(lr) = a.lr {
        c.train.learning_rate = lr;
    }
    if let Some(p) = a.patience {
        c.patience_epochs = p as usize;
    }
    if let Some(d) = a.dropout {
        c.family.dropout = d;
    }
    if let Some(w) = a.weight_decay {
        c.train.weight_decay = w;
    }
    if let Some(r) = a.residual_blocks {
        c.family.residual_blocks = r as usize;
    }
    if let Some(d) = a.lr_decays {
        c.train.lr_decays = d as usize;
    }
    if let Some(f) = a.lr_decay_factor {
        c.train.lr_decay_factor = f;
    }
    if let Some(m) = a.max_epochs {
        c.max_epochs = m as usize;
    }
    if let Some(g) = a.clip_grad {
        c.train.grad_clip_norm = Some(g);
    }
    Ok(c)
}

pub fn npe(a: NpeArgs) -> Result<()> {
    model_output(&a.out)?;
    let simulator = a.simulator.as_ref().map(|command| SimulatorRequest {
        command: command.clone(),
        timeout: a.simulator_timeout,
        rounds: SequentialConfig {
            rounds: a.rounds as usize,
            simulations: a.simulations as usize,
            simulation_batch: a.simulation_batch as usize,
            workers: a.workers as usize,
            seed: a.seed,
            ..SequentialConfig::default()
        },
        simulations_out: a.simulations_out.clone(),
        resume: a.resume,
    });
    if simulator.is_none() && (a.rounds > 1 || a.resume || a.simulations_out.is_some()) {
        bail!("--rounds, --resume and --simulations-out go with --simulator");
    }
    if let Some(p) = &a.simulations_out {
        lib(diffeo::data::check_output(p, &["csv"]))?;
    }
    let req = NpeRequest {
        data: a.data.as_deref().map(Into::into),
        theta_columns: a.theta_cols.clone(),
        x_columns: a.x_cols.clone(),
        prior: a.prior.clone(),
        observation: a.observation.clone(),
        simulator,
        npe: npe_config(&a)?,
        out: a.out.clone(),
    };
    let start = Instant::now();
    let quiet = a.quiet;
    let mut epoch = 0usize;
    let mut events = |e: RoundEvent| {
        if quiet {
            return;
        }
        match e {
            RoundEvent::Simulating { round, rows, reused, acceptance } => {
                epoch = 0;
                let from = match acceptance {
                    Some(a) => format!("the truncated prior (region acceptance {:.1}%)", 100.0 * a),
                    None => "the prior".into(),
                };
                let kept = if reused > 0 { format!(" ({reused} kept from the simulations file)") } else { String::new() };
                eprintln!("round {}: simulating {rows} from {from}{kept}", round + 1);
            }
            RoundEvent::Batch { done, of } => eprintln!("  {done}/{of} simulations  {:.1}s", start.elapsed().as_secs_f64()),
            RoundEvent::Training { round, rows } => eprintln!("round {}: training on {rows} simulations", round + 1),
            RoundEvent::Fit(FitEvent::Validation { log_likelihood, best, .. }) => {
                epoch += 1;
                if epoch % 10 == 0 {
                    eprintln!("  epoch {epoch}  val log q {log_likelihood:.4}  best {best:.4}  {:.1}s", start.elapsed().as_secs_f64());
                }
            }
            RoundEvent::Fit(_) => {}
        }
    };
    let outcome = lib(sbi_pipeline::npe(&req, &mut print_notice, &mut events))?;
    lib(diffeo::model::save(&a.out, &outcome.model))?;
    if !a.quiet {
        let r = &outcome.report;
        let rec = outcome.model.posterior.as_ref().expect("a posterior record");
        let val = r.best_val_log_likelihood.map_or(String::new(), |v| format!(", validation log q {v:.4}"));
        println!(
            "saved {}: {} posterior on {} simulations ({} round(s)){val} ({} steps{}, {:.1} s in all)",
            a.out.display(),
            outcome.model.meta.family,
            rec.simulations,
            rec.rounds,
            r.steps,
            if r.stopped_early { ", stopped early" } else { "" },
            start.elapsed().as_secs_f64()
        );
        if let Some(p) = &outcome.simulations_file {
            println!("simulations: {}", p.display());
        }
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct PosteriorArgs {
    /// The posterior model (from diffeo npe).
    #[arg(long)]
    pub model: PathBuf,
    /// The observation: comma-separated values or a one-row file (default: the observation of
    /// sequential rounds).
    #[arg(long, value_name = "VALUES|FILE", allow_hyphen_values = true)]
    pub observation: Option<String>,
    /// Samples.
    #[arg(short, long, value_parser = clap::value_parser!(u64).range(1..=50_000_000))]
    pub n: u64,
    /// Seed.
    #[arg(long, default_value = "0")]
    pub seed: u64,
    /// Give up sampling after this many seconds (exit 1).
    #[arg(long, value_parser = positive_f64, default_value = "300")]
    pub max_seconds: f64,
    /// Give up after this many proposals per sample (acceptance below its inverse; exit 1).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..), default_value = "1000")]
    pub max_proposals: u64,
    /// Output file (.npy or .csv).
    #[arg(long)]
    pub out: PathBuf,
    /// Print one JSON object (samples, acceptance).
    #[arg(long)]
    pub json: bool,
}

pub fn posterior(a: PosteriorArgs) -> Result<()> {
    lib(diffeo::data::check_output(&a.out, &["npy", "csv"]))?;
    let m = lib(diffeo::pipeline::load_model(&a.model))?;
    let o = lib(sbi_pipeline::observation_for(&m, a.observation.as_deref()))?;
    let limits = SamplingLimits { max_seconds: a.max_seconds, max_draws_per_sample: a.max_proposals as usize };
    let (t, acceptance) = lib(sbi_pipeline::posterior_samples(&m, &o, a.n as usize, a.seed, limits, &mut print_notice))?;
    let csv = a.out.extension().is_some_and(|e| e == "csv");
    lib(diffeo::data::write_table(&a.out, &t.values, t.cols, t.names.as_deref().filter(|_| csv)))?;
    if a.json {
        println!("{}", json!({"samples": t.rows(), "dim": t.cols, "acceptance": acceptance, "out": a.out.display().to_string()}));
    } else {
        println!("wrote {} posterior samples to {} (acceptance {:.2}%)", t.rows(), a.out.display(), 100.0 * acceptance);
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct SbcArgs {
    /// The posterior model.
    #[arg(long)]
    pub model: PathBuf,
    /// Held-out simulations (pairs θ, x not used in training).
    #[arg(long, value_name = "FILE")]
    pub data: String,
    /// θ columns (default: the layout of the model's simulations).
    #[arg(long, value_name = "COLS")]
    pub theta_cols: Option<String>,
    /// x columns.
    #[arg(long, value_name = "COLS")]
    pub x_cols: Option<String>,
    /// Pairs to use (the first ones).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..), default_value = "200")]
    pub pairs: u64,
    /// Posterior samples per pair.
    #[arg(long, value_parser = clap::value_parser!(u64).range(2..=1_000_000), default_value = "1000")]
    pub samples: u64,
    /// Rank histogram bins.
    #[arg(long, value_parser = clap::value_parser!(u64).range(2..=1000), default_value = "20")]
    pub bins: u64,
    /// Seed.
    #[arg(long, default_value = "0")]
    pub seed: u64,
    /// Folder for the figures: ranks-<parameter>.png and coverage.png.
    #[arg(long, value_name = "DIR")]
    pub plots: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn sbc(a: SbcArgs) -> Result<()> {
    if let Some(dir) = &a.plots {
        if !dir.is_dir() {
            bail!("{}: --plots needs an existing folder", dir.display());
        }
    }
    let m = lib(diffeo::pipeline::load_model(&a.model))?;
    let req = SbcRequest {
        data: a.data.clone(),
        theta_columns: a.theta_cols.clone(),
        x_columns: a.x_cols.clone(),
        pairs: a.pairs as usize,
        config: CalibrationConfig { samples: a.samples as usize, bins: a.bins as usize, seed: a.seed },
    };
    let c = lib(sbi_pipeline::sbc(&m, &req))?;
    let names: Vec<String> = match &m.meta.inputs.column_names {
        Some(n) if n.len() == c.parameters.len() => n.clone(),
        _ => (1..=c.parameters.len()).map(|i| format!("theta{i}")).collect(),
    };
    if let Some(dir) = &a.plots {
        for (p, name) in c.parameters.iter().zip(&names) {
            let safe: String = name.chars().map(|ch| if ch.is_ascii_alphanumeric() || ch == '_' || ch == '-' { ch } else { '_' }).collect();
            crate::plot::rank_histogram(&p.histogram, c.samples, name, &dir.join(format!("ranks-{safe}.png")))?;
        }
        crate::plot::coverage(&c.levels, &c.coverage, c.pairs, &dir.join("coverage.png"))?;
    }
    if a.json {
        let params: Vec<_> = c
            .parameters
            .iter()
            .zip(&names)
            .map(|(p, n)| json!({"name": n, "ks": p.ks, "ks_p_value": p.ks_p_value, "chi2": p.chi2, "chi2_dof": c.bins - 1}))
            .collect();
        println!(
            "{}",
            json!({"pairs": c.pairs, "samples": c.samples, "parameters": params, "levels": c.levels, "coverage": c.coverage, "acceptance": c.acceptance})
        );
    } else {
        println!("simulation-based calibration on {} pairs, {} posterior samples each", c.pairs, c.samples);
        for (p, n) in c.parameters.iter().zip(&names) {
            println!("  {n}: KS {:.4} (p = {:.3}), χ² {:.1} on {} degrees of freedom", p.ks, p.ks_p_value, p.chi2, c.bins - 1);
        }
        let show: Vec<String> = c.levels.iter().zip(&c.coverage).filter(|(l, _)| [0.1, 0.5, 0.9].iter().any(|x| (*l - x).abs() < 1e-9)).map(|(l, v)| format!("{l:.2} → {v:.3}")).collect();
        println!("  HPD coverage: {}", show.join(", "));
    }
    Ok(())
}

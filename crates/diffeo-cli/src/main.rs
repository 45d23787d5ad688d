//! `diffeo`: fit, evaluate, sample and plot normalizing flows on data files.
//!
//! Exit codes: 0 success; 1 a check or a training run failed; 2 bad input (usage, files, data).

#![recursion_limit = "256"]

/// mimalloc keeps freed tensor buffers for reuse instead of returning them to the kernel (glibc maps
/// and unmaps large blocks, so every op paid for page faults).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (its v3 `mimalloc.h`; the crate exports no constant).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed memory with the process instead of returning it to the system 10 ms later
/// (mimalloc's default): a training step frees and reallocates the same large buffers, and
/// memory handed back is handed out again as fresh pages the kernel must zero (Glow on 28×28
/// images: 7 % of a step). `MIMALLOC_PURGE_DELAY` in the environment still decides.
fn keep_freed_memory() {
    // SAFETY: called first thing in `main`, before any other thread exists.
    unsafe { libmimalloc_sys::mi_option_set_default(MI_OPTION_PURGE_DELAY, -1) }
}

mod bench;
mod commands;
mod plot;
mod sbi;
mod vi;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Normalizing flows from the command line.
#[derive(Parser, Debug)]
#[command(name = "diffeo", version, about, long_about = None, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Fit a flow to data by maximum likelihood and save it.
    Fit(Box<FitArgs>),
    /// Fit a flow to a target density by variational inference (reverse KL) and save it.
    Vi(Box<vi::ViArgs>),
    /// Mean log-likelihood (± standard error) of a model on data.
    Eval(EvalArgs),
    /// Per-row log density of data under a model.
    LogProb(LogProbArgs),
    /// Draw samples from a model.
    Sample(SampleArgs),
    /// Plot a model: density heat map (2-D) or pairwise scatter (D > 2) beside data.
    Plot(PlotArgs),
    /// Self-check a saved model: inverse reconstruction and log-determinants.
    Check(CheckArgs),
    /// Describe a saved model.
    Info(InfoArgs),
    /// List the built-in data sets.
    Datasets(DatasetsArgs),
    /// Neural posterior estimation: a conditional flow q(θ | x) from simulations or a simulator.
    Npe(Box<sbi::NpeArgs>),
    /// Draw samples of a posterior model at an observation (inside the prior's support).
    Posterior(sbi::PosteriorArgs),
    /// Simulation-based calibration and expected coverage of a posterior model.
    Sbc(sbi::SbcArgs),
    /// Time a fixed configuration of the peer benchmark harness; prints one JSON line.
    Bench(bench::BenchArgs),
}

/// Where data come from.
#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// Data file (.csv/.txt, .npy, MNIST idx; optionally .gz) or builtin:NAME[:train|val|test].
    #[arg(long, value_name = "FILE|builtin:NAME")]
    pub data: String,
    /// Folder holding the real data sets (power/, miniboone/, hepmass/); default $DIFFEO_DATA.
    #[arg(long, value_name = "DIR")]
    pub data_root: Option<PathBuf>,
    /// Drop rows holding NaN/inf instead of refusing the file.
    #[arg(long)]
    pub drop_nonfinite: bool,
    /// Class labels of the rows (IDX, .npy or .csv; one integer per row): the context of a
    /// class-conditional model, one-hot.
    #[arg(long, value_name = "FILE")]
    pub labels: Option<String>,
}

/// The names (and descriptions) of the library's families, for `--flow`.
pub(crate) fn families(list: &'static [diffeo::families::Family]) -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(list.iter().map(|f| clap::builder::PossibleValue::new(f.name).help(f.about)))
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActivationArg {
    Relu,
    Tanh,
    Elu,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectiveArg {
    Likelihood,
    FlowMatching,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PairingArg {
    Independent,
    Ot,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceArg {
    Exact,
    Hutchinson,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeArg {
    Rademacher,
    Gaussian,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SolverArg {
    Dopri5,
    Rk4,
    Euler,
}

impl FitArgs {
    /// The objective of the flags.
    pub fn objective(&self) -> diffeo::pipeline::FitObjective {
        use diffeo::flow_matching::Pairing;
        match self.objective {
            ObjectiveArg::Likelihood => diffeo::pipeline::FitObjective::Likelihood,
            ObjectiveArg::FlowMatching => diffeo::pipeline::FitObjective::FlowMatching(match self.pairing {
                PairingArg::Independent => Pairing::Independent,
                PairingArg::Ot => Pairing::OptimalTransport,
            }),
        }
    }

    /// The CNF settings of the flags.
    pub fn cnf_settings(&self, family: &mut diffeo::families::FamilySettings) {
        use diffeo::bijections::{Probe, Trace};
        use diffeo::ode::Solver;
        family.trace = self.trace.map(|t| match t {
            TraceArg::Exact => Trace::Exact,
            TraceArg::Hutchinson => Trace::Hutchinson,
        });
        family.probe = match self.probe {
            ProbeArg::Rademacher => Probe::Rademacher,
            ProbeArg::Gaussian => Probe::Gaussian,
        };
        family.ode.solver = match self.solver {
            SolverArg::Dopri5 => Solver::Dopri5,
            SolverArg::Rk4 => Solver::Rk4,
            SolverArg::Euler => Solver::Euler,
        };
        family.ode.atol = self.atol;
        family.ode.rtol = self.rtol;
        family.ode.max_steps = self.max_ode_steps as usize;
        family.ode.steps = self.ode_steps as usize;
        family.regularization = self.regularize.unwrap_or((0.0, 0.0));
        family.gradient = match self.gradient {
            GradientArg::Backprop => diffeo::bijections::GradientMethod::Backprop,
            GradientArg::Adjoint => diffeo::bijections::GradientMethod::Adjoint,
        };
        // Residual flows.
        if let Some(k) = self.lipschitz {
            family.lipschitz = k;
        }
        if let Some(l) = self.logdet {
            family.logdet = match l {
                LogDetArg::Exact => diffeo::bijections::ResidualLogDet::Exact,
                LogDetArg::Series => diffeo::bijections::ResidualLogDet::Series,
                LogDetArg::Roulette => diffeo::bijections::ResidualLogDet::Roulette,
            };
        }
        if let Some(n) = self.series_terms {
            family.series_terms = n as usize;
        }
        if self.base == BaseArg::Resampled {
            family.base = diffeo::distributions::BaseKind::resampled();
        }
        // Image families.
        family.levels = self.levels.map(|l| l as usize);
        family.steps_per_level = self.steps_per_level.map(|k| k as usize);
        if let Some(c) = self.hidden_channels {
            family.hidden_channels = c as usize;
        }
        family.plain_conv1x1 = self.plain_conv1x1;
        // Monotone transformers.
        let m = &mut family.monotone;
        for (value, field) in [
            (self.components, &mut m.components),
            (self.integrand_hidden, &mut m.integrand_hidden),
            (self.nodes, &mut m.nodes),
            (self.polynomials, &mut m.polynomials),
            (self.degree, &mut m.degree),
            (self.block_dim, &mut m.block_dim),
            (self.block_layers, &mut m.block_layers),
        ] {
            if let Some(v) = value {
                *field = v as usize;
            }
        }
    }
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplineTailsArg {
    Affine,
    Identity,
}

impl From<SplineTailsArg> for diffeo::transformer::SplineTails {
    fn from(t: SplineTailsArg) -> Self {
        match t {
            SplineTailsArg::Affine => Self::Affine,
            SplineTailsArg::Identity => Self::Identity,
        }
    }
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BaseArg {
    Gaussian,
    Resampled,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogDetArg {
    Exact,
    Series,
    Roulette,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum GradientArg {
    Backprop,
    Adjoint,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScheduleArg {
    Constant,
    Cosine,
    Cooldown,
}

impl From<ScheduleArg> for diffeo::fit::Schedule {
    fn from(s: ScheduleArg) -> Self {
        match s {
            ScheduleArg::Constant => diffeo::fit::Schedule::Constant,
            ScheduleArg::Cosine => diffeo::fit::Schedule::Cosine,
            ScheduleArg::Cooldown => diffeo::fit::Schedule::Cooldown,
        }
    }
}

impl From<ActivationArg> for diffeo::nn::Activation {
    fn from(a: ActivationArg) -> Self {
        match a {
            ActivationArg::Relu => diffeo::nn::Activation::Relu,
            ActivationArg::Tanh => diffeo::nn::Activation::Tanh,
            ActivationArg::Elu => diffeo::nn::Activation::Elu,
        }
    }
}

pub(crate) fn positive_f64(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("{s:?} is not a positive number")),
    }
}

pub(crate) fn unit_interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v < 1.0 => Ok(v),
        _ => Err(format!("{s:?} is not a number in (0, 1)")),
    }
}

/// A decay in [0, 1) (0: off).
fn decay_or_zero(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..1.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a number in [0, 1)")),
    }
}

pub(crate) fn nonnegative_f64(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("{s:?} is not a number ≥ 0")),
    }
}

pub(crate) fn probability(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..1.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not in [0, 1)")),
    }
}

fn logit_alpha(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v < 0.5 => Ok(v),
        _ => Err(format!("{s:?} is not in (0, 0.5)")),
    }
}

/// `kinetic=λ,jacobian=λ` (either or both).
pub(crate) fn regularization(s: &str) -> Result<(f64, f64), String> {
    let mut out = (0.0, 0.0);
    for part in s.split(',') {
        let (name, value) = part.split_once('=').ok_or_else(|| format!("{part:?}: expected kinetic=λ or jacobian=λ"))?;
        let v = nonnegative_f64(value.trim())?;
        match name.trim() {
            "kinetic" => out.0 = v,
            "jacobian" => out.1 = v,
            other => return Err(format!("{other:?}: expected kinetic or jacobian")),
        }
    }
    Ok(out)
}

/// Hidden-layer widths, `128,128`.
#[derive(Clone, Debug)]
pub struct Widths(pub Vec<usize>);

pub(crate) fn widths(s: &str) -> Result<Widths, String> {
    let w: Result<Vec<usize>, _> = s.split(',').map(|p| p.trim().parse::<usize>()).collect();
    match w {
        Ok(w) if !w.is_empty() && w.iter().all(|&v| v > 0) => Ok(Widths(w)),
        _ => Err(format!("{s:?} is not a list of positive widths like 128,128")),
    }
}

#[derive(Args, Debug)]
pub struct FitArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Validation file (same columns); default: the data set's own split, else 10% held out.
    #[arg(long, value_name = "FILE")]
    pub val: Option<String>,
    /// Flow family.
    #[arg(long, value_parser = families(&diffeo::families::FAMILIES), default_value = "maf")]
    pub flow: String,
    /// Number of layers K (default: 5 for maf/iaf/nsf, 6 for realnvp/nice/nsf-coupling, 16 for
    /// planar).
    #[arg(long, allow_negative_numbers = true, value_parser = clap::value_parser!(u64).range(1..))]
    pub transforms: Option<u64>,
    /// Hidden widths of each conditioner network (default 128,128; cnf: the vector field's,
    /// 64,64).
    #[arg(long, value_parser = widths)]
    pub hidden: Option<Widths>,
    /// Hidden nonlinearity (default relu; cnf: elu).
    #[arg(long, value_enum)]
    pub activation: Option<ActivationArg>,
    /// cnf: the trace of the vector field's Jacobian (default: exact up to 10 columns,
    /// hutchinson above).
    #[arg(long, value_enum)]
    pub trace: Option<TraceArg>,
    /// cnf: Hutchinson probe distribution.
    #[arg(long, value_enum, default_value = "rademacher")]
    pub probe: ProbeArg,
    /// cnf: ODE solver (dopri5 adaptive; rk4 and euler take --ode-steps equal steps).
    #[arg(long, value_enum, default_value = "dopri5")]
    pub solver: SolverArg,
    /// cnf: absolute tolerance of the adaptive solver.
    #[arg(long, allow_hyphen_values = true, value_parser = positive_f64, default_value = "1e-6")]
    pub atol: f64,
    /// cnf: relative tolerance of the adaptive solver.
    #[arg(long, allow_hyphen_values = true, value_parser = positive_f64, default_value = "1e-5")]
    pub rtol: f64,
    /// cnf: most steps an adaptive solve may take before it fails.
    #[arg(long, allow_negative_numbers = true, value_parser = clap::value_parser!(u64).range(1..), default_value = "1000")]
    pub max_ode_steps: u64,
    /// cnf: RNODE regularization of the training loss, `kinetic=λ` and/or `jacobian=λ`
    /// (comma-separated): the kinetic energy ∫‖f‖² and the Jacobian norm ∫‖∂f/∂z‖²_F, which keep
    /// the dynamics cheap to solve.
    #[arg(long, value_parser = regularization, value_name = "kinetic=λ,jacobian=λ")]
    pub regularize: Option<(f64, f64)>,
    /// cnf: training gradients by backpropagation through the solver's steps (memory grows with
    /// the steps) or by the adjoint method (a second solve backwards in time; memory independent
    /// of the steps).
    #[arg(long, value_enum, default_value = "backprop")]
    pub gradient: GradientArg,
    /// residual: the spectral-norm bound k of every weight on x, in (0, 1) (default 0.97).
    #[arg(long, allow_hyphen_values = true, value_parser = unit_interval)]
    pub lipschitz: Option<f64>,
    /// residual: the training log-determinant (default roulette: unbiased; series: truncated,
    /// biased; exact: the full Jacobian). Evaluation is exact up to 64 columns.
    #[arg(long, value_enum)]
    pub logdet: Option<LogDetArg>,
    /// residual: series terms (series: all of them; roulette: those always computed; default 2).
    #[arg(long, allow_negative_numbers = true, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub series_terms: Option<u64>,
    /// naf: sigmoid components per transformer (default 8).
    #[arg(long, allow_negative_numbers = true, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub components: Option<u64>,
    /// umnn: hidden units of the integrand network (default 16).
    #[arg(long, allow_negative_numbers = true, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub integrand_hidden: Option<u64>,
    /// umnn: Clenshaw-Curtis quadrature intervals (nodes − 1; default 32).
    #[arg(long, allow_negative_numbers = true, value_parser = clap::value_parser!(u64).range(2..=512))]
    pub nodes: Option<u64>,
    /// sos: squared polynomials per transformer (default 3).
    #[arg(long, allow_negative_numbers = true, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub polynomials: Option<u64>,
    /// sos: degree of each polynomial (default 4).
    #[arg(long, allow_negative_numbers = true, value_parser = clap::value_parser!(u64).range(1..=16))]
    pub degree: Option<u64>,
    /// Base density: gaussian (N(0, I); for glow and realnvp-image a learned diagonal Gaussian)
    /// or resampled (LARS: N(0, I) reweighted by a learned
    /// acceptance network, truncated rejection sampling; fits multimodal and holed data).
    #[arg(long, value_enum, default_value = "gaussian")]
    pub base: BaseArg,
    /// bnaf: hidden units per feature in each block-triangular layer (default 8).
    #[arg(long, allow_negative_numbers = true, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub block_dim: Option<u64>,
    /// bnaf: hidden layers per transform (default 1).
    #[arg(long, allow_negative_numbers = true, value_parser = clap::value_parser!(u64).range(1..=16))]
    pub block_layers: Option<u64>,
    /// glow, realnvp-image: levels (each squeezes 2×2 pixel blocks into channels; default 2).
    #[arg(long, allow_negative_numbers = true, value_parser = clap::value_parser!(u64).range(1..=8))]
    pub levels: Option<u64>,
    /// glow, realnvp-image: flow steps (couplings of each kind) per level (default 8 for glow, 3
    /// for realnvp-image).
    #[arg(long, allow_negative_numbers = true, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub steps_per_level: Option<u64>,
    /// glow, realnvp-image: hidden channels of the couplings' convolutional networks (default 64).
    #[arg(long, allow_negative_numbers = true, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub hidden_channels: Option<u64>,
    /// glow: plain 1×1 convolutions (a full C×C matrix whose log-determinant costs O(C³)) instead
    /// of the LU form (for comparison).
    #[arg(long)]
    pub plain_conv1x1: bool,
    /// cnf: steps of the fixed-step solvers (rk4, euler).
    #[arg(long, allow_negative_numbers = true, value_parser = clap::value_parser!(u64).range(1..), default_value = "20")]
    pub ode_steps: u64,
    /// What training minimizes: the likelihood (every family) or, for cnf, flow matching (no ODE
    /// solves while training).
    #[arg(long, value_enum, default_value = "likelihood")]
    pub objective: ObjectiveArg,
    /// Flow matching: pair each minibatch's base draws with its rows independently or by
    /// minibatch optimal transport.
    #[arg(long, value_enum, default_value = "independent")]
    pub pairing: PairingArg,
    /// Batch normalisation between layers.
    #[arg(long)]
    pub batch_norm: bool,
    /// LU-decomposed linear layers (random fixed permutations) between transforms; always on for
    /// the nsf families.
    #[arg(long)]
    pub lu: bool,
    /// Residual blocks in each conditioner (ResMADE / residual MLP of width hidden[0]); 0: plain.
    #[arg(long, allow_negative_numbers = true, value_parser = clap::value_parser!(u64).range(0..=64), default_value = "0")]
    pub residual_blocks: u64,
    /// Dropout probability inside the residual blocks (training only).
    #[arg(long, allow_hyphen_values = true, value_parser = probability, default_value = "0")]
    pub dropout: f64,
    /// Spline bins (nsf families).
    #[arg(long, allow_negative_numbers = true, value_parser = clap::value_parser!(u64).range(2..=256), default_value = "8")]
    pub bins: u64,
    /// Tail bound B: splines act on [−B, B] of the standardized data; outside, the splines and
    /// the naf, umnn and sos transformers continue linearly.
    #[arg(long, allow_hyphen_values = true, value_parser = positive_f64, default_value = "5")]
    pub tail_bound: f64,
    /// Spline tails (nsf families): affine (the spline inside a learned per-dimension affine map:
    /// linear tails of learned slope, mass can reach beyond ±B) or identity (Durkan et al.).
    #[arg(long, value_enum, default_value = "affine")]
    pub spline_tails: SplineTailsArg,
    /// Optimisation steps (default 2000; with --time-budget alone, until the budget is spent).
    #[arg(long, allow_negative_numbers = true, value_parser = clap::value_parser!(u64).range(1..), conflicts_with = "epochs")]
    pub steps: Option<u64>,
    /// Passes over the training data (instead of --steps).
    #[arg(long, allow_negative_numbers = true, value_parser = clap::value_parser!(u64).range(1..))]
    pub epochs: Option<u64>,
    /// Minibatch size (default 256; image families 64).
    #[arg(long, allow_negative_numbers = true, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch: Option<u64>,
    /// Adam learning rate (default 1e-3; bnaf 1e-2).
    #[arg(long, allow_hyphen_values = true, value_parser = positive_f64)]
    pub lr: Option<f64>,
    /// Learning-rate schedule: cosine (from the rate to 0 over the run, or over the time budget),
    /// constant, or cooldown (constant for 80 % of the run, then a cosine to 0). Default cosine;
    /// image families cooldown.
    #[arg(long, value_enum)]
    pub schedule: Option<ScheduleArg>,
    /// Stop after this many validations without improvement (default: never).
    #[arg(long, allow_negative_numbers = true, value_parser = clap::value_parser!(u64).range(1..))]
    pub patience: Option<u64>,
    /// Validate every this many steps (default 100; image families 1000: a validation of 6,000
    /// images costs about 30 training steps).
    #[arg(long, allow_negative_numbers = true, value_parser = clap::value_parser!(u64).range(1..))]
    pub eval_every: Option<u64>,
    /// Clip the global gradient norm.
    #[arg(long, allow_hyphen_values = true, value_parser = positive_f64)]
    pub clip_grad: Option<f64>,
    /// Validate and keep the Polyak average of the weights, w̄ ← d·w̄ + (1 − d)·w after every
    /// step, with this decay d (e.g. 0.999; image families 0.999 by default, 0 turns it off).
    #[arg(long, value_name = "D", allow_hyphen_values = true, value_parser = decay_or_zero)]
    pub average_decay: Option<f64>,
    /// Seed for weights, data order, hold-out split and dequantization.
    #[arg(long, default_value = "0")]
    pub seed: u64,
    /// Data columns (0-based indices, ranges a-b, or header names); default: all but context.
    #[arg(long, value_name = "LIST")]
    pub cols: Option<String>,
    /// Columns to condition on: the model is p(x | c).
    #[arg(long, value_name = "LIST")]
    pub context_cols: Option<String>,
    /// Add U[0, 1) noise to integer data (images: (pixel + U)/256).
    #[arg(long)]
    pub dequantize: bool,
    /// glow, realnvp-image with --dequantize: learn the noise with a conditional flow q(u | x)
    /// trained with the model (Flow++'s variational dequantization); eval reports the
    /// importance-weighted bound (16 draws per image).
    #[arg(long)]
    pub variational_dequantization: bool,
    /// Model logit(α + (1 − 2α)x) of data in [0, 1] (images); densities stay in data units.
    #[arg(long, value_parser = logit_alpha, value_name = "ALPHA")]
    pub logit: Option<f64>,
    /// Do not standardize the data (the flow sees raw values).
    #[arg(long)]
    pub no_standardize: bool,
    /// Leave out data columns whose values are all equal (otherwise: a warning).
    #[arg(long)]
    pub drop_constant: bool,
    /// Train even when the model's estimated memory exceeds what the machine has available.
    #[arg(long)]
    pub no_memory_check: bool,
    /// Continue training this saved model (its architecture and preprocessing are kept).
    #[arg(long, value_name = "MODEL")]
    pub resume: Option<PathBuf>,
    /// Wall-clock budget in seconds: stop (after a last validation) when it is spent; a cosine
    /// schedule then follows time. Without --steps/--epochs, train until it is spent.
    #[arg(long, allow_hyphen_values = true, value_parser = positive_f64, value_name = "SECONDS")]
    pub time_budget: Option<f64>,
    /// Test data (file or builtin:NAME:test) evaluated at every validation, for --curve.
    #[arg(long, value_name = "FILE|builtin:NAME")]
    pub test: Option<String>,
    /// Write the test log-likelihood against wall-clock time (CSV, and a PNG beside it).
    #[arg(long, value_name = "CURVE.csv", requires = "test")]
    pub curve: Option<PathBuf>,
    /// Save the training curve as a PNG.
    #[arg(long, value_name = "FIG.png")]
    pub plot_loss: Option<PathBuf>,
    /// No progress output.
    #[arg(long, short)]
    pub quiet: bool,
    /// Where to save the model (written atomically).
    #[arg(long, value_name = "MODEL")]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// The model file.
    #[arg(long)]
    pub model: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    /// Also report bits per dimension, −(log p − D·ln 256)/(D·ln 2), for 8-bit data modelled
    /// in [0, 1] as (pixel + U)/256.
    #[arg(long)]
    pub bits_per_dim: bool,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Seed for dequantization noise.
    #[arg(long, default_value = "0")]
    pub seed: u64,
}

#[derive(Args, Debug)]
pub struct LogProbArgs {
    /// The model file.
    #[arg(long)]
    pub model: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    /// Output file (.npy or .csv), one log density per row.
    #[arg(long)]
    pub out: PathBuf,
    /// For a posterior model: the observation x (values or a one-row file) every θ row of
    /// --data is conditioned on (default: the x columns of a file laid out like the
    /// simulations, else the observation of sequential rounds).
    #[arg(long, value_name = "VALUES|FILE", allow_hyphen_values = true)]
    pub observation: Option<String>,
    /// Seed for dequantization noise.
    #[arg(long, default_value = "0")]
    pub seed: u64,
}

#[derive(Args, Debug)]
pub struct SampleArgs {
    /// The model file.
    #[arg(long)]
    pub model: PathBuf,
    /// Samples (per context row).
    #[arg(short, long, allow_negative_numbers = true, value_parser = clap::value_parser!(u64).range(1..))]
    pub n: u64,
    /// Context: comma-separated values (one row) or a file (n samples per row).
    #[arg(long, value_name = "FILE|VALUES", allow_hyphen_values = true)]
    pub context: Option<String>,
    /// Seed.
    #[arg(long, default_value = "0")]
    pub seed: u64,
    /// A class-conditional model (fit with --labels): sample this class.
    #[arg(long, conflicts_with = "context")]
    pub label: Option<u64>,
    /// Base draws at this temperature, u ~ N(0, T²I) (Glow samples images at 0.7; Gaussian base
    /// only).
    #[arg(long, allow_hyphen_values = true, value_parser = positive_f64, default_value = "1")]
    pub temperature: f64,
    /// Output file (.npy or .csv; .png for an image model: a grid of the samples).
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct PlotArgs {
    /// The model file.
    #[arg(long)]
    pub model: PathBuf,
    /// Data to show beside the model (file or builtin:NAME).
    #[arg(long)]
    pub data: Option<String>,
    /// Folder of the real data sets; default $DIFFEO_DATA.
    #[arg(long, value_name = "DIR")]
    pub data_root: Option<PathBuf>,
    /// Context values for a conditional model (comma-separated).
    #[arg(long, value_name = "VALUES", allow_hyphen_values = true)]
    pub context: Option<String>,
    /// Samples to draw.
    #[arg(short, long, allow_negative_numbers = true, value_parser = clap::value_parser!(u64).range(1..), default_value = "5000")]
    pub n: u64,
    /// Seed.
    #[arg(long, default_value = "0")]
    pub seed: u64,
    /// Output PNG.
    #[arg(long, value_name = "FIG.png")]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// The model file.
    #[arg(long)]
    pub model: PathBuf,
    /// Random points to check.
    #[arg(long, allow_negative_numbers = true, value_parser = clap::value_parser!(u64).range(1..), default_value = "1000")]
    pub n: u64,
    /// Seed.
    #[arg(long, default_value = "0")]
    pub seed: u64,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// The model file.
    #[arg(long)]
    pub model: PathBuf,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct DatasetsArgs {
    /// Folder of the real data sets; default $DIFFEO_DATA.
    #[arg(long, value_name = "DIR")]
    pub data_root: Option<PathBuf>,
}

/// A failure that is not bad input: exit code 1.
#[derive(Debug)]
pub struct Failed(pub String);

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Failed {}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Fit(a) => commands::fit(*a),
        Command::Vi(a) => vi::vi(*a),
        Command::Eval(a) => commands::eval(a),
        Command::LogProb(a) => commands::log_prob(a),
        Command::Sample(a) => commands::sample(a),
        Command::Plot(a) => plot::plot(a),
        Command::Check(a) => commands::check(a),
        Command::Info(a) => commands::info(a),
        Command::Datasets(a) => commands::datasets(a),
        Command::Npe(a) => sbi::npe(*a),
        Command::Posterior(a) => sbi::posterior(a),
        Command::Sbc(a) => sbi::sbc(a),
        Command::Bench(a) => bench::bench(a),
    }
}

/// The command line, with every option that takes a value accepting a leading minus sign when
/// the value is a number (`--seed -1` reaches the value check; lists like `--context -0.6,0.1`
/// take `allow_hyphen_values` on their own options).
fn command() -> clap::Command {
    use clap::CommandFactory;
    fn negative(cmd: clap::Command) -> clap::Command {
        cmd.mut_args(|a| if a.get_action().takes_values() { a.allow_negative_numbers(true) } else { a }).mut_subcommands(negative)
    }
    negative(Cli::command())
}

fn main() -> ExitCode {
    keep_freed_memory();
    use clap::FromArgMatches;
    let cli = match command().try_get_matches().and_then(|m| Cli::from_arg_matches(&m)) {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                let _ = e.print();
                return ExitCode::from(2);
            }
            // One line: clap's first line, without its usage block.
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("error: bad arguments");
            eprintln!("{first} (see diffeo --help)");
            return ExitCode::from(2);
        }
    };
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown".into());
        eprintln!("error: internal failure: {msg}");
    }));
    match std::panic::catch_unwind(|| run(cli)) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            let line = format!("{e:#}").replace('\n', " ");
            eprintln!("error: {line}");
            if e.downcast_ref::<Failed>().is_some() {
                ExitCode::from(1)
            } else {
                ExitCode::from(2)
            }
        }
        Err(_) => ExitCode::from(1),
    }
}

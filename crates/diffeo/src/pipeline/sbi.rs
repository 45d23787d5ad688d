//! Simulation-based inference from files and programs: the steps behind `diffeo npe`,
//! `posterior`, `sbc` and `log-prob` of a posterior model.
//!
//! The simulations file written by `npe --simulator` is a CSV with a header
//! `theta1,…,thetaD,x1,…,xK,round`, one row per simulation, appended (and synced) batch by batch
//! as the simulator returns them, so a crash loses nothing and `--resume` continues from it.
//!
//! Rows of a simulations file whose θ lies outside the prior's support are dropped with a
//! warning (their prior density is 0: no posterior can explain them); rows with non-finite x are
//! dropped and counted, as sbi does.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{context_rows_named, read_source, DataSource, Notice};
use crate::data::prepare::InputSpec;
use crate::data::{self, Split, Table};
use crate::error::{FlowError, Result};
use crate::fit::{FitEvent, FitReport};
use crate::flow::Flow;
use crate::model::{Model, ModelMeta, TrainingSummary};
use crate::sbi::simulator::KeepBatch;
use crate::sbi::{
    calibration, sequential_npe, train_ensemble, Calibration, CalibrationConfig, NpeConfig, Posterior, PosteriorRecord, Prior, ProgramSimulator,
    RoundEvent, SamplingLimits, SequentialConfig, Simulated, SimulationLog, Simulations, Simulator, TrainedFlow,
};

/// The simulator of a request.
#[derive(Clone, Debug)]
pub struct SimulatorRequest {
    /// Shell command: θ rows as CSV on its stdin, x rows on its stdout.
    pub command: String,
    /// Kill a batch after this many seconds.
    pub timeout: Option<f64>,
    /// Sequential settings (rounds, simulations, batch, workers, seed).
    pub rounds: SequentialConfig,
    /// Where every simulation is appended (default: the model path with `.sims.csv`).
    pub simulations_out: Option<PathBuf>,
    /// Continue from the simulations file instead of refusing to overwrite it.
    pub resume: bool,
}

/// What `diffeo npe` asks for.
#[derive(Clone, Debug)]
pub struct NpeRequest {
    /// Simulations: a file, `builtin:NAME` or rows in memory (without a simulator).
    pub data: Option<DataSource>,
    /// θ columns of the file.
    pub theta_columns: Option<String>,
    /// x columns of the file.
    pub x_columns: Option<String>,
    /// The prior: a spec or a JSON file.
    pub prior: String,
    /// The observation of sequential rounds: values or a file.
    pub observation: Option<String>,
    /// Run this simulator instead of reading simulations.
    pub simulator: Option<SimulatorRequest>,
    /// Architecture and training.
    pub npe: NpeConfig,
    /// The model path (for the default simulations file).
    pub out: PathBuf,
}

/// What `diffeo npe` produced.
pub struct NpeOutcome {
    /// The posterior model, ready to save.
    pub model: Model,
    /// The last round's training.
    pub report: FitReport,
    /// Acceptance of the truncated proposals, per round after the first.
    pub truncation_acceptance: Vec<f64>,
    /// The simulations file of a simulator run.
    pub simulations_file: Option<PathBuf>,
}

/// Parses an observation: comma-separated values or a file of one row (`k` columns).
pub fn parse_observation(spec: &str, k: Option<usize>) -> Result<Vec<f64>> {
    let v = match super::parse_values(spec) {
        Some(v) => v,
        None => {
            let t = data::read_file(Path::new(spec)).map_err(|e| FlowError::Data(format!("reading --observation: {e}")))?;
            if t.rows() != 1 {
                return Err(FlowError::Data(format!("{}: an observation file holds one row, found {}", t.source, t.rows())));
            }
            t.values
        }
    };
    if let Some(k) = k {
        if v.len() != k {
            return Err(FlowError::Data(format!("--observation has {} value(s), the simulations have {k} x columns", v.len())));
        }
    }
    if let Some(bad) = v.iter().find(|x| !x.is_finite()) {
        return Err(FlowError::Data(format!("--observation holds a non-finite value ({bad})")));
    }
    Ok(v)
}

/// θ and x columns of a simulations table.
fn pair_columns(table: &Table, theta: Option<&str>, x: Option<&str>) -> Result<InputSpec> {
    let (Some(theta), Some(x)) = (theta, x) else {
        return Err(FlowError::Data("name the θ and x columns of the simulations (--theta-cols, --x-cols)".into()));
    };
    let mut spec = InputSpec::select(table, Some(theta), Some(x))?;
    spec.images = false;
    Ok(spec)
}

fn split_pairs(table: &Table, spec: &InputSpec) -> (Vec<f64>, Vec<f64>) {
    (table.select(&spec.columns).values, table.select(&spec.context_columns).values)
}

fn drop_notices(prior: &Prior, sims: &Simulations, total: usize, notice: &mut dyn FnMut(Notice)) {
    if sims.dropped_outside > 0 {
        notice(Notice::Warning(format!(
            "dropped {} of {total} simulation(s) whose θ lies outside the prior {} (their prior density is 0)",
            sims.dropped_outside,
            prior.spec()
        )));
    }
    if sims.dropped_nonfinite > 0 {
        notice(Notice::Note(format!("dropped {} of {total} simulation(s) with non-finite x", sims.dropped_nonfinite)));
    }
}

/// The default simulations file of a model path: `MODEL.sims.csv`.
pub fn default_simulations_file(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".sims.csv");
    PathBuf::from(s)
}

/// Trains a posterior: from a simulations file, or by running a simulator for one or more
/// rounds (every simulation appended to the simulations file as it arrives).
pub fn npe(req: &NpeRequest, notice: &mut dyn FnMut(Notice), events: &mut dyn FnMut(RoundEvent)) -> Result<NpeOutcome> {
    let prior = Prior::from_arg(&req.prior)?;
    let d = prior.dim();
    match (&req.data, &req.simulator) {
        (Some(_), Some(_)) => Err(FlowError::Data("give either --data (simulations made) or --simulator (simulations to make), not both".into())),
        (None, None) => Err(FlowError::Data("give --data with simulations or --simulator to make them".into())),
        (Some(source), None) => {
            if req.observation.is_some() {
                notice(Notice::Warning("--observation only focuses sequential rounds (with --simulator); the posterior from --data is amortized".into()));
            }
            let table = source.read(Split::Train, None)?;
            let spec = pair_columns(&table, req.theta_columns.as_deref(), req.x_columns.as_deref())?;
            if spec.dim() != d {
                return Err(FlowError::Data(format!(
                    "the prior {} has {d} parameter(s), --theta-cols names {} column(s)",
                    prior.spec(),
                    spec.dim()
                )));
            }
            let (theta, x) = split_pairs(&table, &spec);
            let sims = Simulations::new(&prior, &theta, &x, spec.context_dim())?;
            drop_notices(&prior, &sims, table.rows(), notice);
            let trained = train_ensemble(Vec::new(), &prior, &sims, &req.npe, &mut |_, e: &FitEvent| events(RoundEvent::Fit(e)))?;
            let (flow, members, report) = ensemble_parts(trained)?;
            let record = PosteriorRecord::new(prior, req.npe.support, &sims);
            let meta = ModelMeta { family: format!("{} (npe)", req.npe.family.family), data_source: table.source.clone(), inputs: spec };
            let model = Model {
                flow,
                members,
                meta,
                summary: Some(summary_of(&report, &req.npe, sims.data.len())),
                vi: None,
                posterior: Some(record),
            };
            Ok(NpeOutcome { model, report, truncation_acceptance: Vec::new(), simulations_file: None })
        }
        (None, Some(sim)) => {
            let observation = req.observation.as_deref().map(|o| parse_observation(o, None)).transpose()?;
            if sim.rounds.rounds > 1 && observation.is_none() {
                return Err(FlowError::Data("sequential rounds (--rounds > 1) need the --observation they focus on".into()));
            }
            let path = sim.simulations_out.clone().unwrap_or_else(|| default_simulations_file(&req.out));
            let mut log = SimulationLog::default();
            if path.exists() {
                if !sim.resume {
                    return Err(FlowError::Data(format!(
                        "{}: the simulations file exists; pass --resume to continue from it (or choose another --simulations-out)",
                        path.display()
                    )));
                }
                log = read_simulation_log(&path, d)?;
                if let (Some(o), true) = (&observation, log.x_dim != 0) {
                    if o.len() != log.x_dim {
                        return Err(FlowError::Data(format!("--observation has {} value(s), the simulations {} x columns", o.len(), log.x_dim)));
                    }
                }
                notice(Notice::Note(format!("resuming from {} simulation(s) in {}", log.round.len(), path.display())));
            } else if sim.resume {
                notice(Notice::Note(format!("{}: no simulations yet; starting from the first round", path.display())));
            }
            let program = ProgramSimulator::new(&sim.command)
                .with_timeout(sim.timeout.map(Duration::from_secs_f64))
                .with_x_dim(observation.as_ref().map(Vec::len).or((log.x_dim > 0).then_some(log.x_dim)));
            let mut file = SimulationFile { path: path.clone(), theta_dim: d };
            let mut keep = |round: usize, theta: &[f64], x: &Simulated| file.append(round, theta, x);
            let source = path.display().to_string();
            let rounds = &sim.rounds;
            let outcome = npe_simulated(&prior, &program, observation.as_deref(), &req.npe, rounds, &mut log, &mut keep, &source, notice, events)?;
            Ok(NpeOutcome { simulations_file: Some(path), ..outcome })
        }
    }
}

/// Trains a posterior on simulations of `simulator` for one round or sequential rounds at
/// `observation`: `log` holds the simulations of a resumed run and receives every new batch,
/// which also goes to `keep` before the next starts (so a failure loses nothing). The model
/// records `source` as its data source.
#[allow(clippy::too_many_arguments)]
pub fn npe_simulated(
    prior: &Prior,
    simulator: &dyn Simulator,
    observation: Option<&[f64]>,
    npe: &NpeConfig,
    rounds: &SequentialConfig,
    log: &mut SimulationLog,
    keep: &mut KeepBatch,
    source: &str,
    notice: &mut dyn FnMut(Notice),
    events: &mut dyn FnMut(RoundEvent),
) -> Result<NpeOutcome> {
    let d = prior.dim();
    let (trained, record, acceptance) = sequential_npe(prior, simulator, observation, npe, rounds, log, keep, events)?;
    let (flow, members, report) = ensemble_parts(trained)?;
    let total = record.simulations + record.dropped_nonfinite + record.dropped_outside;
    if record.dropped_nonfinite > 0 {
        notice(Notice::Note(format!("dropped {} of {total} simulation(s) with non-finite x", record.dropped_nonfinite)));
    }
    let k = log.x_dim;
    let inputs = InputSpec {
        input_columns: d + k + 1,
        columns: (0..d).collect(),
        context_columns: (d..d + k).collect(),
        column_names: Some(simulation_columns(d, 0)),
        dequantize: false,
        images: false,
        logit_alpha: None,
        standardized: true,
        classes: None,
    };
    let meta = ModelMeta { family: format!("{} (npe)", npe.family.family), data_source: source.to_string(), inputs };
    let model = Model { flow, members, meta, summary: Some(summary_of(&report, npe, record.simulations)), vi: None, posterior: Some(record) };
    Ok(NpeOutcome { model, report, truncation_acceptance: acceptance, simulations_file: None })
}

/// The first flow, the other members, and one report for all: steps and seconds summed, the
/// mean of the members' best validation scores (each on its own split), the first member's
/// history.
fn ensemble_parts(trained: Vec<TrainedFlow>) -> Result<(Flow, Vec<Flow>, FitReport)> {
    let k = trained.len() as f64;
    let mut it = trained.into_iter();
    let (flow, mut report) = it.next().ok_or_else(|| FlowError::InvalidConfig("no posterior was trained".into()))?;
    let mut best_sum = report.best_val_log_likelihood;
    let mut members = Vec::new();
    for (f, r) in it {
        report.steps += r.steps;
        report.seconds += r.seconds;
        report.stopped_early &= r.stopped_early;
        best_sum = best_sum.zip(r.best_val_log_likelihood).map(|(a, b)| a + b);
        members.push(f);
    }
    report.best_val_log_likelihood = best_sum.map(|v| v / k);
    Ok((flow, members, report))
}

/// The training summary of a posterior trained on `n` simulations (each member held out its own
/// validation rows).
fn summary_of(report: &FitReport, npe: &NpeConfig, n: usize) -> TrainingSummary {
    let val = crate::sbi::npe::validation_rows(npe, n);
    TrainingSummary::after(&TrainingSummary::default(), report, n - val, val)
}

/// The names of a simulations file's θ and x columns: `theta1…thetaD, x1…xK`.
fn simulation_columns(theta_dim: usize, x_dim: usize) -> Vec<String> {
    (1..=theta_dim).map(|i| format!("theta{i}")).chain((1..=x_dim).map(|i| format!("x{i}"))).collect()
}

/// The simulations file: created with its header at the first batch, then appended and synced
/// after every batch.
struct SimulationFile {
    path: PathBuf,
    theta_dim: usize,
}

impl SimulationFile {
    fn append(&mut self, round: usize, theta: &[f64], x: &Simulated) -> Result<()> {
        let io = |e: std::io::Error, path: &Path| FlowError::Io { path: path.display().to_string(), source: e };
        let new = !self.path.exists();
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&self.path).map_err(|e| io(e, &self.path))?;
        let mut s = String::new();
        if new {
            let mut names = simulation_columns(self.theta_dim, x.cols);
            names.push("round".into());
            s.push_str(&names.join(","));
            s.push('\n');
        }
        for (t, xr) in theta.chunks_exact(self.theta_dim).zip(x.values.chunks_exact(x.cols.max(1))) {
            let cells: Vec<String> = t.iter().chain(xr).map(|v| format!("{v}")).collect();
            s.push_str(&cells.join(","));
            s.push_str(&format!(",{}\n", round + 1));
        }
        f.write_all(s.as_bytes()).map_err(|e| io(e, &self.path))?;
        f.sync_data().map_err(|e| io(e, &self.path))
    }
}

/// Reads a simulations file written by [`npe`] (`θ…, x…, round`).
pub fn read_simulation_log(path: &Path, theta_dim: usize) -> Result<SimulationLog> {
    let t = data::read_file(path)?;
    if t.cols < theta_dim + 2 {
        return Err(FlowError::Data(format!(
            "{}: {} columns; a simulations file has the {theta_dim} θ columns, the x columns and the round",
            t.source, t.cols
        )));
    }
    let k = t.cols - theta_dim - 1;
    let mut log = SimulationLog { x_dim: k, ..SimulationLog::default() };
    for i in 0..t.rows() {
        let r = t.row(i);
        let round = r[t.cols - 1];
        if !(round >= 1.0 && round.fract() == 0.0) {
            return Err(FlowError::Data(format!("{}: {}: the round column holds {round}, not a round number", t.source, t.where_row(i))));
        }
        log.theta.extend_from_slice(&r[..theta_dim]);
        log.x.extend_from_slice(&r[theta_dim..theta_dim + k]);
        log.round.push(round as usize - 1);
    }
    Ok(log)
}

/// The posterior record of a model, or an error naming the file.
pub fn posterior_record(model: &Model) -> Result<&PosteriorRecord> {
    model.posterior.as_ref().ok_or_else(|| FlowError::Data("this model is not a posterior (train one with diffeo npe)".into()))
}

/// The observation of a request for a posterior model: values, a one-row file, or the model's
/// own observation (sequential rounds).
pub fn observation_for(model: &Model, spec: Option<&str>) -> Result<Vec<f64>> {
    let record = posterior_record(model)?;
    match spec {
        Some(s) => {
            let t = context_rows_named(Some(s), model, "--observation")?;
            let t = t.ok_or_else(|| FlowError::Data("the posterior needs an observation".into()))?;
            if t.rows() != 1 {
                return Err(FlowError::Data(format!("--observation: expected one row, found {}", t.rows())));
            }
            Ok(t.values)
        }
        None => record.observation.clone().ok_or_else(|| FlowError::Data("pass --observation (values or a file)".into())),
    }
}

/// Posterior samples at an observation, their column names and the acceptance rate (a warning
/// below 1 %: the flow puts most of its mass outside the prior's support).
pub fn posterior_samples(
    model: &Model,
    observation: &[f64],
    n: usize,
    seed: u64,
    limits: SamplingLimits,
    notice: &mut dyn FnMut(Notice),
) -> Result<(Table, f64)> {
    let record = posterior_record(model)?;
    let s = Posterior { flow: &model.flow, members: &model.members, record }.sample(observation, n, seed, limits)?;
    if s.acceptance < 0.01 {
        notice(Notice::Warning(format!(
            "only {:.3}% of the flow's samples fell inside the prior's support (leakage); sampling is slow and the flow is poor there",
            100.0 * s.acceptance
        )));
    }
    let mut t = Table::new(s.theta, model.flow.dim(), "posterior samples");
    t.names = model.meta.inputs.column_names.clone();
    Ok((t, s.acceptance))
}

/// θ rows and, when the file is laid out like the simulations, their x rows.
fn theta_rows(model: &Model, table: &Table) -> Result<(Vec<f64>, Option<Vec<f64>>)> {
    let (d, spec) = (model.flow.dim(), &model.meta.inputs);
    if table.cols == spec.input_columns && table.cols != d {
        let (t, x) = split_pairs(table, spec);
        Ok((t, Some(x)))
    } else if table.cols == d {
        Ok((table.values.clone(), None))
    } else {
        Err(FlowError::Data(format!(
            "{}: {} columns; expected the {d} θ columns or the {} columns of the simulations",
            table.source, table.cols, spec.input_columns
        )))
    }
}

/// `log q(θ | x)` of θ rows of a data source: with `observation`, one x for every row; else the
/// x columns of a file laid out like the simulations. −∞ outside the prior's support.
pub fn posterior_log_density(model: &Model, data: &str, observation: Option<&str>, root: Option<&Path>, seed: u64) -> Result<Vec<f64>> {
    let record = posterior_record(model)?;
    let table = read_source(data, Split::Test, root)?;
    let (theta, x) = theta_rows(model, &table)?;
    if theta.iter().any(|v| v.is_nan()) {
        return Err(FlowError::Data(format!("{}: θ holds NaN", table.source)));
    }
    let posterior = Posterior { flow: &model.flow, members: &model.members, record };
    match (observation, x) {
        (Some(_), _) | (None, None) => {
            let o = observation_for(model, observation)?;
            posterior.log_prob(&theta, &o, seed)
        }
        (None, Some(x)) => {
            if x.iter().any(|v| !v.is_finite()) {
                return Err(FlowError::Data(format!("{}: x holds a non-finite value", table.source)));
            }
            if record.support == crate::sbi::SupportHandling::Transform {
                crate::sbi::mixture_log_prob(&posterior.flows(), &record.prior, &theta, &x, 1.0)
            } else {
                // The acceptance differs per observation.
                let (d, k) = (model.flow.dim(), model.flow.context_dim());
                let mut out = Vec::with_capacity(theta.len() / d);
                for (t, o) in theta.chunks_exact(d).zip(x.chunks_exact(k)) {
                    out.extend(posterior.log_prob(t, o, seed)?);
                }
                Ok(out)
            }
        }
    }
}

/// What `diffeo sbc` asks for.
#[derive(Clone, Debug)]
pub struct SbcRequest {
    /// Simulations file (pairs not used in training).
    pub data: String,
    /// θ columns (default: the model's own layout).
    pub theta_columns: Option<String>,
    /// x columns.
    pub x_columns: Option<String>,
    /// Use at most this many pairs (the first ones).
    pub pairs: usize,
    /// Samples and bins.
    pub config: CalibrationConfig,
}

/// SBC ranks and HPD coverage of a posterior model on pairs of a simulations file.
pub fn sbc(model: &Model, req: &SbcRequest) -> Result<Calibration> {
    let record = posterior_record(model)?;
    let table = read_source(&req.data, Split::Test, None)?;
    let spec = match (&req.theta_columns, &req.x_columns) {
        (None, None) if table.cols == model.meta.inputs.input_columns => model.meta.inputs.clone(),
        (None, None) => {
            return Err(FlowError::Data(format!(
                "{}: {} columns, not laid out like the model's simulations ({}); name --theta-cols and --x-cols",
                table.source,
                table.cols,
                model.meta.inputs.input_columns
            )))
        }
        (t, x) => pair_columns(&table, t.as_deref(), x.as_deref())?,
    };
    if spec.dim() != model.flow.dim() || spec.context_dim() != model.flow.context_dim() {
        return Err(FlowError::Data(format!(
            "the posterior has {} θ and {} x columns; the columns named have {} and {}",
            model.flow.dim(),
            model.flow.context_dim(),
            spec.dim(),
            spec.context_dim()
        )));
    }
    let (theta, x) = split_pairs(&table, &spec);
    let sims = Simulations::new(&record.prior, &theta, &x, spec.context_dim())?;
    let n = sims.data.len().min(req.pairs.max(1));
    let (d, k) = (spec.dim(), spec.context_dim());
    let ctx = sims.data.context.as_ref().map_or(&[][..], |c| &c.values[..]);
    calibration(&Posterior { flow: &model.flow, members: &model.members, record }, &sims.data.x.values[..n * d], &ctx[..n * k], &req.config)
}

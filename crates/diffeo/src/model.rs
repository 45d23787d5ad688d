//! A model as the command line and the Python package save it: the flow, how data files map onto
//! its inputs ([`ModelMeta`]), its training summary and, for variational fits, the target and
//! diagnostics. All of it lives in one model file ([`crate::io`]); the extra records sit in the
//! file's metadata under the keys `cli`, `training` and `vi`.

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::data::prepare::InputSpec;
use crate::error::{FlowError, Result};
use crate::flow::Flow;

/// Key of [`ModelMeta`] in the model file's extra metadata.
pub const META_KEY: &str = "cli";
/// Key of the training summary.
pub const REPORT_KEY: &str = "training";
/// Key of the variational-inference record (target and diagnostics).
pub const VI_KEY: &str = "vi";
/// Key of the posterior record (prior, support handling, simulations).
pub const POSTERIOR_KEY: &str = "posterior";

/// What a variational fit stores with its model.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ViRecord {
    /// The target the flow approximates.
    pub target: crate::vi::StandardTarget,
    /// Diagnostics at the end of the fit.
    pub diagnostics: crate::vi::ViDiagnostics,
}

/// Where a model came from and how data files map onto its inputs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    /// Flow family name.
    pub family: String,
    /// Where the training data came from.
    pub data_source: String,
    /// Columns and preprocessing.
    #[serde(flatten)]
    pub inputs: InputSpec,
}

impl ModelMeta {
    /// The metadata of a model saved from code: every column is data, then the context.
    pub fn plain(dim: usize, context_dim: usize) -> Self {
        Self { family: "custom".into(), data_source: "unknown".into(), inputs: InputSpec::plain(dim, context_dim) }
    }

    /// The family's name without its settings (`family` reads e.g. `"nsf (8 bins)"`): the key of
    /// [`crate::families::family`] and of its training defaults.
    pub fn family_name(&self) -> &str {
        self.family.split_whitespace().next().unwrap_or("custom")
    }
}

/// Training summary stored with a model.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TrainingSummary {
    /// Steps over all runs (including resumed ones).
    pub steps_total: usize,
    /// Runs (1 + resumes).
    pub runs: usize,
    /// Seconds over all runs.
    pub seconds_total: f64,
    /// Training rows of the last run.
    pub train_rows: usize,
    /// Validation rows of the last run.
    pub val_rows: usize,
    /// Best validation log-likelihood of the last run.
    pub best_val_log_likelihood: Option<f64>,
    /// Step of the saved weights in the last run.
    pub best_step: usize,
    /// Mean training loss at the end of the last run.
    pub final_train_loss: f64,
    /// Loss curve of the last run: (step, train loss, validation log-likelihood).
    pub history: Vec<(usize, f64, Option<f64>)>,
}

impl TrainingSummary {
    /// The summary after a run that produced `report`, adding it to the totals of `previous` (the
    /// default for a first run).
    pub fn after(previous: &TrainingSummary, report: &crate::train::FitReport, train_rows: usize, val_rows: usize) -> Self {
        Self {
            steps_total: previous.steps_total + report.steps,
            runs: previous.runs + 1,
            seconds_total: previous.seconds_total + report.seconds,
            train_rows,
            val_rows,
            best_val_log_likelihood: report.best_val_log_likelihood,
            best_step: report.best_step,
            final_train_loss: report.final_train_loss,
            history: report.history.iter().map(|r| (r.step, r.train_loss, r.val_log_likelihood)).collect(),
        }
    }
}

/// A flow with its metadata.
#[derive(Clone, Debug)]
pub struct Model {
    /// The flow.
    pub flow: Flow,
    /// Columns and preprocessing.
    pub meta: ModelMeta,
    /// Training summary, if trained by the command line or the Python package.
    pub summary: Option<TrainingSummary>,
    /// Target and diagnostics of a variational fit.
    pub vi: Option<ViRecord>,
    /// Prior and simulations of a posterior estimate `q(θ | x)`.
    pub posterior: Option<crate::sbi::PosteriorRecord>,
    /// An ensemble's further members (empty for one flow): a posterior is then the
    /// equal-weight mixture of `flow` and these.
    pub members: Vec<Flow>,
}

/// Loads a model; every failure is a one-line error naming the file.
pub fn load(path: &Path, device: &Device) -> Result<Model> {
    if !path.exists() {
        return Err(FlowError::Data(format!("{}: model file not found", path.display())));
    }
    let loaded = crate::io::load(path, device)?;
    let meta = match loaded.extra.get(META_KEY) {
        Some(m) => serde_json::from_str(m)
            .map_err(|e| FlowError::BadModelFile { path: path.display().to_string(), reason: format!("bad command-line metadata ({e})") })?,
        None => ModelMeta::plain(loaded.flow.dim(), loaded.flow.context_dim()),
    };
    let summary = loaded.extra.get(REPORT_KEY).and_then(|s| serde_json::from_str(s).ok());
    let vi = loaded.extra.get(VI_KEY).and_then(|s| serde_json::from_str(s).ok());
    // A posterior without its prior would sample outside the support: a bad record is an error.
    let posterior = match loaded.extra.get(POSTERIOR_KEY) {
        Some(s) => Some(serde_json::from_str(s).map_err(|e| FlowError::BadModelFile {
            path: path.display().to_string(),
            reason: format!("bad posterior record ({e})"),
        })?),
        None => None,
    };
    Ok(Model { flow: loaded.flow, members: loaded.members, meta, summary, vi, posterior })
}

/// Saves a model atomically with its metadata.
pub fn save(path: &Path, model: &Model) -> Result<()> {
    let mut extra = BTreeMap::new();
    extra.insert(META_KEY.to_string(), json(&model.meta)?);
    extra.insert(REPORT_KEY.to_string(), json(&model.summary.clone().unwrap_or_default())?);
    if let Some(v) = &model.vi {
        extra.insert(VI_KEY.to_string(), json(v)?);
    }
    if let Some(p) = &model.posterior {
        extra.insert(POSTERIOR_KEY.to_string(), json(p)?);
    }
    crate::io::save_with_members(&model.flow, &model.members, path, &extra).map_err(|e| match e {
        FlowError::Io { .. } | FlowError::NonFinite { .. } => e,
        other => FlowError::Data(format!("cannot save {}: {other}", path.display())),
    })
}

fn json<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| FlowError::Backend(e.to_string()))
}

//! What the command line stores with a model besides the flow (columns, preprocessing,
//! training summary), and turning data files into the model's inputs.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use diffeo::burn::tensor::Device;
use diffeo::flow::Flow;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::data::{self, Split, Table};

/// Key of [`ModelMeta`] in the model file's extra metadata.
pub const META_KEY: &str = "cli";
/// Key of the training summary.
pub const REPORT_KEY: &str = "training";
/// Key of the variational-inference record (target and diagnostics) of a `diffeo vi` model.
pub const VI_KEY: &str = "vi";

/// What `diffeo vi` stores with its model.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ViRecord {
    /// The target the flow approximates.
    pub target: diffeo::vi::StandardTarget,
    /// Diagnostics at the end of the fit.
    pub diagnostics: diffeo::vi::ViDiagnostics,
}

/// How data files map onto the model's inputs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelMeta {
    /// Flow family name.
    pub family: String,
    /// Where the training data came from.
    pub data_source: String,
    /// Columns of the data file at fit time.
    pub input_columns: usize,
    /// Data columns (0-based).
    pub columns: Vec<usize>,
    /// Context columns (0-based).
    pub context_columns: Vec<usize>,
    /// Column names, if the file had a header.
    pub column_names: Option<Vec<String>>,
    /// Uniform dequantization was applied.
    pub dequantize: bool,
    /// 8-bit images, modelled in [0, 1] as pixel/256.
    pub images: bool,
    /// Logit preprocessing parameter, if any.
    pub logit_alpha: Option<f64>,
    /// Data standardization is part of the model.
    pub standardized: bool,
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

/// A loaded model with its metadata.
pub struct Model {
    pub flow: Flow,
    pub meta: ModelMeta,
    pub summary: Option<TrainingSummary>,
    pub vi: Option<ViRecord>,
}

/// Loads a model; every failure is a one-line error naming the file.
pub fn load(path: &Path, device: &Device) -> Result<Model> {
    if !path.exists() {
        bail!("{}: model file not found", path.display());
    }
    let loaded = diffeo::io::load(path, device).map_err(|e| anyhow!("{e}"))?;
    let meta = match loaded.extra.get(META_KEY) {
        Some(m) => serde_json::from_str(m).map_err(|e| anyhow!("{}: bad command-line metadata ({e})", path.display()))?,
        None => {
            // A model saved from Rust code: every column is data.
            let d = loaded.flow.dim();
            let c = loaded.flow.context_dim();
            ModelMeta {
                family: "custom".into(),
                data_source: "unknown".into(),
                input_columns: d + c,
                columns: (0..d).collect(),
                context_columns: (d..d + c).collect(),
                column_names: None,
                dequantize: false,
                images: false,
                logit_alpha: None,
                standardized: false,
            }
        }
    };
    let summary = loaded.extra.get(REPORT_KEY).and_then(|s| serde_json::from_str(s).ok());
    let vi = loaded.extra.get(VI_KEY).and_then(|s| serde_json::from_str(s).ok());
    Ok(Model { flow: loaded.flow, meta, summary, vi })
}

/// Saves a model atomically with its metadata.
pub fn save(path: &Path, flow: &Flow, meta: &ModelMeta, summary: &TrainingSummary) -> Result<()> {
    save_with(path, flow, meta, summary, None)
}

/// [`save`], with the record of a variational fit.
pub fn save_with(path: &Path, flow: &Flow, meta: &ModelMeta, summary: &TrainingSummary, vi: Option<&ViRecord>) -> Result<()> {
    let mut extra = BTreeMap::new();
    extra.insert(META_KEY.to_string(), serde_json::to_string(meta)?);
    extra.insert(REPORT_KEY.to_string(), serde_json::to_string(summary)?);
    if let Some(v) = vi {
        extra.insert(VI_KEY.to_string(), serde_json::to_string(v)?);
    }
    diffeo::io::save(flow, path, &extra).map_err(|e| anyhow!("cannot save {}: {e}", path.display()))
}

/// Reads a file or built-in data set (`builtin:NAME[:SPLIT]`).
pub fn read_source(spec: &str, default_split: Split, root: Option<&Path>) -> Result<Table> {
    match spec.strip_prefix("builtin:") {
        Some(name) => data::load_builtin(name, default_split, root),
        None => data::read_file(Path::new(spec)),
    }
}

/// Model inputs built from a table.
pub struct Inputs {
    /// Data rows `[n, dim]`.
    pub x: Vec<f64>,
    /// Context rows `[n, context_dim]`, if conditional.
    pub context: Option<Vec<f64>>,
    /// Rows.
    pub n: usize,
    /// Rows dropped for non-finite values.
    pub dropped: usize,
}

/// Applies the model's column selection, the non-finite policy and the preprocessing.
pub fn inputs(table: &Table, meta: &ModelMeta, drop_nonfinite: bool, rng: &mut StdRng) -> Result<Inputs> {
    if table.cols != meta.input_columns {
        let ctx = if meta.context_columns.is_empty() {
            String::new()
        } else {
            format!(", context columns {:?}", meta.context_columns)
        };
        bail!(
            "{}: has {} columns, the model was fit on files with {} (data columns {:?}{ctx})",
            table.source,
            table.cols,
            meta.input_columns,
            meta.columns
        );
    }
    let mut all: Vec<usize> = meta.columns.clone();
    all.extend(&meta.context_columns);
    let rows = if drop_nonfinite {
        table.finite_rows(&all)
    } else {
        // Report the first non-finite value by its row and column in the file.
        table.select_finite_check(&all)?;
        (0..table.rows()).collect()
    };
    if rows.is_empty() {
        bail!("{}: no rows left after dropping non-finite values", table.source);
    }
    let (d, c, n) = (meta.columns.len(), meta.context_columns.len(), rows.len());
    let mut x = Vec::with_capacity(n * d);
    let mut ctx = Vec::with_capacity(n * c);
    for &i in &rows {
        let r = table.row(i);
        x.extend(meta.columns.iter().map(|&j| r[j]));
        ctx.extend(meta.context_columns.iter().map(|&j| r[j]));
    }
    let dropped = table.rows() - n;
    if meta.dequantize {
        data::dequantize(&mut x, rng);
    }
    if meta.images {
        x.iter_mut().for_each(|v| *v /= 256.0);
    }
    Ok(Inputs { x, context: if c > 0 { Some(ctx) } else { None }, n, dropped })
}

/// Parses `1.5,2,-3` as one row of numbers.
pub fn parse_values(s: &str) -> Option<Vec<f64>> {
    let v: Option<Vec<f64>> = s.split(',').map(|p| p.trim().parse::<f64>().ok()).collect();
    v.filter(|v| !v.is_empty())
}

/// A context for `n` rows: comma-separated values (one row) or a file.
pub fn context_rows(spec: Option<&str>, meta: &ModelMeta, context_dim: usize) -> Result<Option<(Vec<f64>, usize)>> {
    match (spec, context_dim) {
        (None, 0) => Ok(None),
        (None, c) => bail!("the model is conditional on {c} context value(s): pass --context"),
        (Some(_), 0) => bail!("the model is unconditional: --context is not accepted"),
        (Some(s), c) => {
            let (values, rows) = if let Some(v) = parse_values(s) {
                let k = v.len();
                if k != c {
                    bail!("--context has {k} value(s), the model needs {c}");
                }
                (v, 1)
            } else {
                let t = data::read_file(Path::new(s)).context("reading --context")?;
                let t = if t.cols == c {
                    t
                } else if t.cols == meta.input_columns {
                    t.select(&meta.context_columns)
                } else {
                    bail!("{}: has {} columns; the context has {c} (or pass a file laid out like the training data)", t.source, t.cols);
                };
                t.check_finite()?;
                let rows = t.rows();
                (t.values, rows)
            };
            if values.iter().any(|v| !v.is_finite()) {
                bail!("--context holds a non-finite value");
            }
            Ok(Some((values, rows)))
        }
    }
}

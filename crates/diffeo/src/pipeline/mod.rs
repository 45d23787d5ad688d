//! From files to models and back: the steps behind `diffeo fit`, `vi`, `eval`, `log-prob`,
//! `sample` and `check`, shared by the command line and the Python package. Front ends parse their
//! arguments into a request, call one function here and print what comes back; warnings and notes
//! reach them through a [`Notice`] callback, progress through the training loop's observer.
//! [`sbi`] holds the steps behind `npe`, `posterior` and `sbc`.

pub mod sbi;

use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::bijections::{Bijection, Cost};
use crate::data::prepare::{constant_columns, hold_out, logit_layers, logit_transform, minimum_rows, InputSpec};
use crate::data::{self, builtin, Dataset, Split, Table};
use crate::dequantization::{DequantizerConfig, EVALUATION_SAMPLES};
use crate::error::{FlowError, Result};
use crate::event::{Call, EventShape};
use crate::families::{architecture, architecture_for, vi_architecture, FamilySettings};
use crate::flow_matching::{FlowMatching, Pairing};
use crate::fit::{fit_monitored, mean_log_likelihood, FitEvent, FitReport, MaximumLikelihood, TrainConfig};
use crate::flow::{Flow, FlowConfig, Standardization};
use crate::model::{Model, ModelMeta, TrainingSummary, ViRecord};
use crate::tensor::{matrix, to_vec};
use crate::transformer::SplineTails;
use crate::vi::{fit_reverse_kl, ReverseKlConfig, ReverseKlProgress, ReverseKlReport, StandardTarget, Target};

/// A message for the user that does not stop the work.
#[derive(Clone, Debug, PartialEq)]
pub enum Notice {
    /// Something the user probably did not intend.
    Warning(String),
    /// Information.
    Note(String),
}

/// Reads a file or a built-in data set (`builtin:NAME[:SPLIT]`, `default_split` when none is
/// named; real data sets under `root` or `$DIFFEO_DATA`).
pub fn read_source(spec: &str, default_split: Split, root: Option<&Path>) -> Result<Table> {
    match spec.strip_prefix("builtin:") {
        Some(name) => builtin::load_builtin(name, default_split, root),
        None => data::read_file(Path::new(spec)),
    }
}

/// Where rows come from: a file or built-in data set, or rows already in memory (the Python
/// package's arrays).
#[derive(Clone, Debug)]
pub enum DataSource {
    /// A file or `builtin:NAME[:SPLIT]`.
    Spec(String),
    /// Rows in memory.
    Rows(Table),
}

impl DataSource {
    /// The rows (a file is read; `default_split` for a built-in set named without one).
    pub fn read(&self, default_split: Split, root: Option<&Path>) -> Result<Table> {
        match self {
            DataSource::Spec(spec) => read_source(spec, default_split, root),
            DataSource::Rows(table) => Ok(table.clone()),
        }
    }

    /// The name of a built-in data set with its own validation split, if this is one.
    fn builtin_with_validation(&self) -> Option<&str> {
        let DataSource::Spec(spec) = self else { return None };
        spec.strip_prefix("builtin:")
            .map(|s| s.split(':').next().unwrap_or_default())
            .filter(|name| builtin::BUILTINS.iter().any(|b| b.name == *name && b.file.is_some()))
    }
}

impl From<&str> for DataSource {
    fn from(spec: &str) -> Self {
        DataSource::Spec(spec.to_string())
    }
}

/// Loads a model on the CPU.
pub fn load_model(path: &Path) -> Result<Model> {
    crate::model::load(path, &crate::cpu())
}

/// What `diffeo fit` asks for.
#[derive(Clone, Debug)]
pub struct FitRequest {
    /// Data: a file, `builtin:NAME`, or rows in memory.
    pub data: DataSource,
    /// Folder of the real data sets.
    pub data_root: Option<PathBuf>,
    /// Drop rows with NaN/inf instead of refusing them.
    pub drop_nonfinite: bool,
    /// Validation rows (default: the data set's own split, else 10% held out).
    pub val: Option<DataSource>,
    /// Data columns (default: all but the context).
    pub columns: Option<String>,
    /// Context columns.
    pub context_columns: Option<String>,
    /// Add U[0, 1) noise to integer data (images: (pixel + U)/256).
    pub dequantize: bool,
    /// Learn the dequantization noise (images, with `dequantize`): a conditional noise flow
    /// trained with the model ([`crate::dequantization`]).
    pub variational_dequantization: bool,
    /// Model `logit(α + (1 − 2α)x)` of data in [0, 1].
    pub logit: Option<f64>,
    /// Standardize the data inside the model.
    pub standardize: bool,
    /// Drop constant data columns instead of warning about them.
    pub drop_constant: bool,
    /// The architecture.
    pub family: FamilySettings,
    /// The training loop's settings.
    pub train: TrainConfig,
    /// What training minimizes.
    pub objective: FitObjective,
    /// Continue training this model (its columns, preprocessing and architecture are kept).
    pub resume: Option<PathBuf>,
    /// Test data evaluated at every validation (the test curve).
    pub test: Option<String>,
    /// Class labels of the data rows (a file of one integer per row): the context of a
    /// class-conditional model, one-hot; validation is then held out of the labelled rows.
    pub labels: Option<String>,
    /// Refuse models whose estimated memory exceeds what the machine has available.
    pub memory_check: bool,
}

/// The objective of `diffeo fit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FitObjective {
    /// Maximum likelihood (forward KL), every family.
    #[default]
    Likelihood,
    /// Flow matching of a CNF's vector field ([`crate::flow_matching`]).
    FlowMatching(Pairing),
}

impl FitRequest {
    /// A request with `diffeo fit`'s defaults for the data `data` (a file or `builtin:NAME`, or
    /// a [`DataSource`]).
    pub fn new(data: impl Into<DataSource>, family: &str) -> Self {
        Self {
            data: data.into(),
            data_root: None,
            drop_nonfinite: false,
            val: None,
            columns: None,
            context_columns: None,
            dequantize: false,
            variational_dequantization: false,
            logit: None,
            standardize: true,
            drop_constant: false,
            family: FamilySettings::new(family),
            train: TrainConfig::new().with_steps(2000).with_schedule(crate::train::Schedule::Cosine),
            objective: FitObjective::Likelihood,
            resume: None,
            test: None,
            labels: None,
            memory_check: true,
        }
    }
}

/// What a fit produced.
pub struct FitOutcome {
    /// The model, ready to save.
    pub model: Model,
    /// What the training loop did.
    pub report: FitReport,
    /// Training rows.
    pub train_rows: usize,
    /// Validation rows.
    pub val_rows: usize,
    /// Test log-likelihood at each validation: `(seconds, step, mean, standard error)`.
    pub curve: Vec<(f64, usize, f64, f64)>,
}

/// Memory a fit of `config` needs, in bytes (an estimate from the parameter count: weights,
/// gradients, Adam's two moments, the best model kept and one copy per gradient shard, in f32; and
/// the activations of a batch through every layer, forward and backward).
pub fn memory_estimate(config: &FlowConfig, batch_size: usize) -> (usize, f64) {
    let params = config.parameter_count();
    let copies = 5.0 + rayon::current_num_threads() as f64;
    let widths: usize = config
        .layers
        .iter()
        .map(|l| match l.spec() {
            Some(s) => s.parameter_count() / s.dim().max(1) + s.dim(),
            None => 0,
        })
        .sum();
    let activations = 3.0 * 4.0 * batch_size as f64 * widths as f64;
    (params, 4.0 * params as f64 * copies + activations)
}

/// Memory available to new work, in bytes (`MemAvailable` of /proc/meminfo), if known.
pub fn available_memory() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: f64 = s.lines().find(|l| l.starts_with("MemAvailable:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024.0)
}

fn gib(bytes: f64) -> String {
    format!("{:.1} GiB", bytes / (1u64 << 30) as f64)
}

/// Refuses configurations that cannot fit in memory (the estimate above the available memory).
pub fn check_memory(config: &FlowConfig, batch_size: usize) -> Result<()> {
    let (params, need) = memory_estimate(config, batch_size);
    if let Some(have) = available_memory() {
        if need > have {
            return Err(FlowError::TooLarge(format!(
                "this model has {params} parameters and needs about {} to train (batch {batch_size}); the machine has {} available. Use fewer or narrower layers, or pass --no-memory-check to try anyway",
                gib(need),
                gib(have)
            )));
        }
    }
    Ok(())
}

/// Fits a model to the data of a request: reads and prepares the data (columns, non-finite rows,
/// dequantization, logit), splits off validation data, builds the family's architecture (with
/// the data standardization inside the model) or resumes a saved model, and trains it.
pub fn fit(req: &FitRequest, notice: &mut dyn FnMut(Notice), observer: &mut dyn FnMut(&FitEvent)) -> Result<FitOutcome> {
    // (With labels, `fit_model` refuses the resume before the file is read.)
    let resumed = req.resume.as_ref().filter(|_| req.labels.is_none()).map(|p| crate::model::load(p, &crate::cpu())).transpose()?;
    fit_model(req, resumed, notice, observer)
}

/// [`fit`], continuing the training of `resumed` when given (a model in memory: its columns,
/// preprocessing and architecture are kept, `req.resume` is not read).
pub fn fit_model(req: &FitRequest, resumed: Option<Model>, notice: &mut dyn FnMut(Notice), observer: &mut dyn FnMut(&FitEvent)) -> Result<FitOutcome> {
    let device = crate::cpu();
    let root = req.data_root.as_deref();
    let mut table = req.data.read(Split::Train, root)?;
    let mut context_columns = req.context_columns.clone();
    let mut classes = None;
    if let Some(labels) = &req.labels {
        if resumed.is_some() || req.resume.is_some() || req.context_columns.is_some() || req.val.is_some() || req.test.is_some() {
            return Err(FlowError::InvalidConfig(
                "--labels makes the labels the context: it takes no --context-cols, --val, --test or --resume (validation is held out of the labelled rows)".into(),
            ));
        }
        let k;
        (table, k) = data::with_labels(&table, &read_source(labels, Split::Train, root)?, None)?;
        context_columns = Some(format!("{}-{}", table.cols - k, table.cols - 1));
        classes = Some(k);
    }

    // Columns and preprocessing: from the resumed model, or from the request.
    let mut meta = match &resumed {
        Some(m) => {
            if req.columns.is_some() || req.context_columns.is_some() || req.dequantize || req.variational_dequantization || req.logit.is_some() {
                notice(Notice::Warning(
                    "--resume keeps the model's columns and preprocessing; column and preprocessing flags are ignored".into(),
                ));
            }
            m.meta.clone()
        }
        None => {
            if req.variational_dequantization && !(req.dequantize && table.images && req.family.is_image()) {
                let not_image = if req.family.is_image() { String::new() } else { format!("; {} is not one", req.family.family) };
                return Err(FlowError::InvalidConfig(format!(
                    "variational dequantization learns the noise of 8-bit images: it needs --dequantize, image data and an image family (glow, realnvp-image){not_image}"
                )));
            }
            let mut inputs = InputSpec::select(&table, req.columns.as_deref(), context_columns.as_deref())?;
            inputs.classes = classes;
            inputs.dequantize = req.dequantize;
            inputs.logit_alpha = req.logit;
            inputs.standardized = req.standardize;
            if table.images && !req.dequantize {
                notice(Notice::Warning("8-bit images without --dequantize: the density of discrete pixels is not a proper density".into()));
            }
            ModelMeta { family: req.family.family.clone(), data_source: table.source.clone(), inputs }
        }
    };

    let mut rng = StdRng::seed_from_u64(req.train.seed ^ 0x5EED_DA7A);
    let (all, dropped) = meta.inputs.inputs(&table, req.drop_nonfinite, &mut rng)?;
    if dropped > 0 {
        notice(Notice::Note(format!("dropped {dropped} row(s) with non-finite values")));
    }
    let mut all = all;
    // Constant columns (with at least two rows): dropped when asked, else a warning once the data
    // are known to be enough for a fit.
    let constant = if resumed.is_none() && all.len() >= 2 { constant_columns(&all.x.values, all.dim()) } else { Vec::new() };
    let constant_names: Vec<String> = constant
        .iter()
        .map(|&j| {
            let col = meta.inputs.columns[j];
            match &meta.inputs.column_names {
                Some(n) => format!("{col} ({:?})", n[j]),
                None => col.to_string(),
            }
        })
        .collect();
    if req.drop_constant && !constant.is_empty() {
        if constant.len() == all.dim() {
            return Err(FlowError::Data(format!("{}: every data column is constant; nothing is left to model", table.source)));
        }
        let keep: Vec<usize> = (0..all.dim()).filter(|j| !constant.contains(j)).collect();
        meta.inputs.columns = keep.iter().map(|&j| meta.inputs.columns[j]).collect();
        meta.inputs.column_names = meta.inputs.column_names.map(|n| keep.iter().map(|&j| n[j].clone()).collect());
        all = Dataset { x: all.x.select(&keep), context: all.context };
    }
    let (dim, cdim) = (meta.inputs.dim(), meta.inputs.context_dim());
    let min = minimum_rows(dim);
    if all.len() < min {
        return Err(FlowError::Data(format!(
            "{}: {} row(s) for {dim} data column(s); a fit needs at least {min}: with n ≤ D points the data lie in a subspace of dimension n − 1 < D, where the likelihood has no maximum",
            table.source,
            all.len()
        )));
    }
    if !constant.is_empty() {
        if req.drop_constant {
            notice(Notice::Note(format!("dropped constant column(s) {}", constant_names.join(", "))));
        } else {
            notice(Notice::Warning(format!(
                "constant data column(s) {}: a density of constant values is degenerate (the fit drives its scale to zero); pass --drop-constant to leave them out",
                constant_names.join(", ")
            )));
        }
    }

    // Validation data: `val`, else the data set's own split, else 10% held out.
    let (train_set, val_set) = if let Some(v) = &req.val {
        let t = v.read(Split::Val, root)?;
        (all, Some(meta.inputs.inputs(&t, req.drop_nonfinite, &mut rng)?.0))
    } else if let Some(name) = req.data.builtin_with_validation() {
        let t = builtin::load_builtin(&format!("{name}:val"), Split::Val, root)?;
        (all, Some(meta.inputs.inputs(&t, false, &mut rng)?.0))
    } else if all.len() >= 20 {
        let (t, v) = hold_out(&all, 10, &mut rng);
        (t, Some(v))
    } else {
        notice(Notice::Warning(format!("only {} rows: training on all of them without validation", all.len())));
        (all, None)
    };

    // The flow.
    let (flow, prior) = match resumed {
        Some(m) => {
            if m.flow.dim() != dim || m.flow.context_dim() != cdim {
                return Err(FlowError::Data(format!(
                    "the resumed model has {} data and {} context columns",
                    m.flow.dim(),
                    m.flow.context_dim()
                )));
            }
            (m.flow, m.summary.unwrap_or_default())
        }
        None => {
            let mut config = if req.family.is_image() {
                let shape = table.image_shape.filter(|s| s.size() == dim && meta.inputs.columns.iter().copied().eq(0..dim)).ok_or_else(|| {
                    FlowError::Data(format!(
                        "{}: {} models images, and these data are not images of one shape (IDX image files, .npy arrays [N, H, W] or [N, C, H, W]; no --columns or --drop-constant)",
                        table.source, req.family.family
                    ))
                })?;
                // Pixels in [0, 1] go in as they are: ActNorm normalizes per channel.
                meta.inputs.standardized = false;
                let mut config = architecture_for(&req.family, shape, cdim)?;
                if let (true, EventShape::Image { channels, height, width }) = (req.variational_dequantization, shape) {
                    config.dequantizer = Some(DequantizerConfig::new(channels, height, width));
                }
                config
            } else {
                architecture(&req.family, dim, cdim)?
            };
            // z: the training data as the flow's layers see them.
            let mut z = train_set.x.values.clone();
            if let Some(alpha) = meta.inputs.logit_alpha {
                logit_transform(&mut z, alpha, &table.source)?;
            }
            if meta.inputs.standardized {
                let stats = Standardization::of(&z, dim)?;
                config = config.standardized(&stats);
                stats.apply(&mut z);
            }
            if let Some(alpha) = meta.inputs.logit_alpha {
                config.layers.extend(logit_layers(dim, alpha));
            }
            if let Some(bound) = config.tail_bound() {
                let beyond = z.iter().filter(|v| v.abs() > bound).count();
                if beyond > 0 {
                    let (what, outside) = match (req.family.has_splines(), req.family.spline_tails) {
                        (true, SplineTails::Identity) => ("spline", "the splines are the identity"),
                        (true, SplineTails::Affine) => ("spline", "the splines continue linearly"),
                        _ => ("transformers'", "the transformers continue linearly"),
                    };
                    notice(Notice::Warning(format!(
                        "{beyond} of {} standardized training values ({:.3}%) lie beyond the {what} tail bound ±{bound}, where {outside}; consider a larger --tail-bound",
                        z.len(),
                        100.0 * beyond as f64 / z.len() as f64
                    )));
                }
            }
            if let Some(c) = &train_set.context {
                config.context_standardization = Some(Standardization::of(&c.values, cdim)?);
            }
            config.validate()?;
            if req.memory_check {
                check_memory(&config, req.train.batch_size.min(train_set.len()))?;
            }
            (config.init(&device)?, TrainingSummary::default())
        }
    };
    match flow.directions().inverse {
        Cost::Unavailable => {
            return Err(FlowError::InvalidConfig(format!(
                "{} has no inverse, so it cannot evaluate densities of data: maximum-likelihood fitting needs a flow with an inverse (maf, iaf, realnvp, nice)",
                meta.family
            )))
        }
        Cost::Sequential => notice(Notice::Note(format!(
            "{} evaluates densities in {dim} sequential passes; fitting is slower than with maf",
            meta.family
        ))),
        Cost::Iterative => notice(Notice::Note(format!("{} evaluates densities by an iterative solver", meta.family))),
        Cost::ClosedForm => {}
    }

    let (train_rows, val_rows) = (train_set.len(), val_set.as_ref().map_or(0, Dataset::len));
    let test_set = match &req.test {
        Some(t) => {
            let table = read_source(t, Split::Test, root)?;
            Some(meta.inputs.inputs(&table, req.drop_nonfinite, &mut rng)?.0)
        }
        None => None,
    };
    let mut curve: Vec<(f64, usize, f64, f64)> = Vec::new();
    let mut monitor_error = None;
    let mut monitor = |step: usize, seconds: f64, flow: &Flow| {
        if let Some(t) = &test_set {
            match mean_log_likelihood(flow, t) {
                Ok((ll, se)) => curve.push((seconds, step, ll, se)),
                Err(e) => monitor_error = Some(e),
            }
        }
    };
    let result = match req.objective {
        // Dequantized data without a logit: fresh noise at every batch.
        FitObjective::Likelihood if meta.inputs.dequantize && meta.inputs.logit_alpha.is_none() => {
            let scale = if meta.inputs.images { 256.0 } else { 1.0 };
            let mut objective = MaximumLikelihood::new(&train_set, val_set.as_ref()).with_fresh_dequantization(scale);
            crate::train::train(flow, &mut objective, &req.train, observer, &mut monitor)
        }
        FitObjective::Likelihood => fit_monitored(flow, &train_set, val_set.as_ref(), &req.train, observer, &mut monitor),
        FitObjective::FlowMatching(pairing) => {
            let mut objective = FlowMatching::new(&train_set, val_set.as_ref(), pairing);
            crate::train::train(flow, &mut objective, &req.train, observer, &mut monitor)
        }
    };
    if let Some(e) = monitor_error {
        return Err(FlowError::Data(format!("evaluating the test data: {e}")));
    }
    let (flow, report) = result?;
    let summary = TrainingSummary::after(&prior, &report, train_rows, val_rows);
    Ok(FitOutcome { model: Model { flow, members: Vec::new(), meta, summary: Some(summary), vi: None, posterior: None }, report, train_rows, val_rows, curve })
}

/// A model of family `family` before any fit, on events of `shape` with `context_dim` context
/// values: its architecture with the family's initialization and no preprocessing (a fit from
/// data builds its own, with the data's standardization).
pub fn untrained(family: &FamilySettings, shape: EventShape, context_dim: usize) -> Result<Model> {
    let config = architecture_for(family, shape, context_dim)?;
    config.validate()?;
    let flow = config.init(&crate::cpu())?;
    let meta = ModelMeta { family: family.family.clone(), data_source: "untrained".into(), inputs: InputSpec::plain(shape.size(), context_dim) };
    Ok(Model { flow, members: Vec::new(), meta, summary: None, vi: None, posterior: None })
}

/// Per-row log-likelihoods of a data source under a model (its columns and preprocessing, the
/// dequantization noise seeded by `seed`), and the number of rows dropped as non-finite.
pub fn log_likelihoods(model: &Model, data: &str, root: Option<&Path>, drop_nonfinite: bool, seed: u64) -> Result<(Vec<f64>, usize)> {
    log_likelihoods_counted(model, data, root, drop_nonfinite, seed).map(|(ll, dropped, _)| (ll, dropped))
}

/// [`log_likelihoods`], and the vector-field evaluations (NFE) its ODE solves took (0 for a
/// model without continuous-time layers).
pub fn log_likelihoods_counted(model: &Model, data: &str, root: Option<&Path>, drop_nonfinite: bool, seed: u64) -> Result<(Vec<f64>, usize, usize)> {
    log_likelihoods_labelled(model, data, None, root, drop_nonfinite, seed)
}

/// [`log_likelihoods_counted`] of a class-conditional model, with the rows' class labels (a file
/// of one integer per row; required by such a model, refused by others).
pub fn log_likelihoods_labelled(
    model: &Model,
    data: &str,
    labels: Option<&str>,
    root: Option<&Path>,
    drop_nonfinite: bool,
    seed: u64,
) -> Result<(Vec<f64>, usize, usize)> {
    let (set, dropped) = model_inputs_labelled(model, data, labels, root, drop_nonfinite, seed)?;
    if model.flow.directions().inverse == Cost::Unavailable {
        return Err(FlowError::InvalidConfig(format!(
            "this {} model has no inverse, so it cannot evaluate densities of data",
            model.meta.family
        )));
    }
    let call = Call::new();
    let ll = crate::fit::log_likelihoods_drawn(&model.flow, &set, EVALUATION_SAMPLES, &call)?;
    Ok((ll, dropped, call.evaluations()))
}

/// The inputs of a data source (its test split by default) as a model sees them — its columns
/// and preprocessing, dequantization noise seeded by `seed` — and the rows dropped as non-finite.
pub fn model_inputs(model: &Model, data: &str, root: Option<&Path>, drop_nonfinite: bool, seed: u64) -> Result<(Dataset, usize)> {
    model_inputs_labelled(model, data, None, root, drop_nonfinite, seed)
}

/// [`model_inputs`] with the rows' class labels for a class-conditional model.
pub fn model_inputs_labelled(model: &Model, data: &str, labels: Option<&str>, root: Option<&Path>, drop_nonfinite: bool, seed: u64) -> Result<(Dataset, usize)> {
    let mut table = read_source(data, Split::Test, root)?;
    match (labels, model.meta.inputs.classes) {
        (Some(l), Some(k)) => table = data::with_labels(&table, &read_source(l, Split::Test, root)?, Some(k))?.0,
        (None, Some(k)) => return Err(FlowError::Data(format!("the model is conditional on class labels ({k} classes): pass --labels"))),
        (Some(_), None) => return Err(FlowError::Data("the model was not fit with class labels: --labels is not accepted".into())),
        (None, None) => {}
    }
    let mut rng = StdRng::seed_from_u64(seed);
    model.meta.inputs.inputs(&table, drop_nonfinite, &mut rng)
}

/// The first `n` data rows of a source as a model sees them (its columns and preprocessing,
/// without any context): the data panel of a plot.
pub fn data_images(model: &Model, data: &str, root: Option<&Path>, n: usize, seed: u64) -> Result<Vec<f64>> {
    let table = read_source(data, Split::Test, root)?;
    let table = table.take_rows(&(0..n.min(table.rows())).collect::<Vec<_>>());
    let mut spec = model.meta.inputs.clone();
    (spec.context_columns, spec.classes) = (Vec::new(), None);
    let mut rng = StdRng::seed_from_u64(seed);
    Ok(spec.inputs(&table, true, &mut rng)?.0.x.values)
}

/// The context row of class `label` for a class-conditional model (fit with labels): its one-hot
/// vector.
pub fn label_context(model: &Model, label: usize) -> Result<Table> {
    let Some(k) = model.meta.inputs.classes else {
        return Err(FlowError::Data("the model was not fit with class labels: --label is not accepted".into()));
    };
    if label >= k {
        return Err(FlowError::Data(format!("class {label} is beyond the model's {k} classes (0 to {})", k - 1)));
    }
    Ok(Table::new((0..k).map(|c| if c == label { 1.0 } else { 0.0 }).collect(), k, "--label"))
}

/// Parses `1.5,2,-3` as one row of numbers.
pub fn parse_values(s: &str) -> Option<Vec<f64>> {
    let v: Option<Vec<f64>> = s.split(',').map(|p| p.trim().parse::<f64>().ok()).collect();
    v.filter(|v| !v.is_empty())
}

/// The context rows of a request: comma-separated values (one row) or a file with the context's
/// columns (or laid out like the training data). `None` for an unconditional model.
pub fn context_rows(spec: Option<&str>, model: &Model) -> Result<Option<Table>> {
    context_rows_named(spec, model, "--context")
}

/// [`context_rows`], its messages naming the option the rows came from (`--observation`).
pub fn context_rows_named(spec: Option<&str>, model: &Model, flag: &str) -> Result<Option<Table>> {
    let c = model.flow.context_dim();
    match (spec, c) {
        (None, 0) => Ok(None),
        (None, c) => Err(FlowError::Data(format!("the model is conditional on {c} context value(s): pass {flag}"))),
        (Some(_), 0) => Err(FlowError::Data(format!("the model is unconditional: {flag} is not accepted"))),
        (Some(s), c) => {
            let table = if let Some(v) = parse_values(s) {
                if v.len() != c {
                    return Err(FlowError::Data(format!("{flag} has {} value(s), the model needs {c}", v.len())));
                }
                Table::new(v, c, flag)
            } else {
                let t = data::read_file(Path::new(s)).map_err(|e| FlowError::Data(format!("reading {flag}: {e}")))?;
                let t = if t.cols == c {
                    t
                } else if t.cols == model.meta.inputs.input_columns {
                    t.select(&model.meta.inputs.context_columns)
                } else {
                    return Err(FlowError::Data(format!(
                        "{}: has {} columns; the context has {c} (or pass a file laid out like the training data)",
                        t.source, t.cols
                    )));
                };
                t.check_finite()?;
                t
            };
            if table.values.iter().any(|v| !v.is_finite()) {
                return Err(FlowError::Data(format!("{flag} holds a non-finite value")));
            }
            Ok(Some(table))
        }
    }
}

/// The most samples one call draws.
pub const MAX_SAMPLES: usize = 50_000_000;

/// `n` samples of a model per context row (in row order), with its column names.
pub fn sample(model: &Model, n: usize, context: Option<&Table>, seed: u64) -> Result<Table> {
    sample_counted(model, n, context, seed).map(|(t, _)| t)
}

/// [`sample`], and the vector-field evaluations (NFE) its ODE solves took.
pub fn sample_counted(model: &Model, n: usize, context: Option<&Table>, seed: u64) -> Result<(Table, usize)> {
    sample_at_temperature(model, n, context, seed, 1.0)
}

/// [`sample_counted`] with base draws at temperature `t` (`u ~ N(0, t²I)`; Gaussian base only).
pub fn sample_at_temperature(model: &Model, n: usize, context: Option<&Table>, seed: u64, temperature: f64) -> Result<(Table, usize)> {
    let ct = sample_context(model, n, context)?;
    let mut rng = StdRng::seed_from_u64(seed);
    let call = Call::new();
    let x = model.flow.sample_at_temperature(n, ct.as_ref(), &mut rng, temperature, call.clone())?;
    Ok((samples_table(model, to_vec(x)?), call.evaluations()))
}

/// The context rows of a request for `n` samples per row, on the model's device, or why the
/// request cannot be met: a model without a base-to-data direction, or too many samples.
fn sample_context(model: &Model, n: usize, context: Option<&Table>) -> Result<Option<burn::tensor::Tensor<2>>> {
    if model.flow.directions().forward == Cost::Unavailable {
        let layer = model.flow.transform.layers.iter().find(|l| l.directions().forward == Cost::Unavailable).map(|l| l.name());
        let layer = layer.unwrap_or_else(|| "a layer".into());
        return Err(FlowError::InvalidConfig(format!(
            "this model cannot be sampled: {layer} has no base-to-data direction (such a model can evaluate densities only)"
        )));
    }
    let rows = context.map_or(1, Table::rows);
    if n.saturating_mul(rows) > MAX_SAMPLES {
        return Err(FlowError::InvalidConfig(format!("{} samples requested; the limit is 50 million per call", n.saturating_mul(rows))));
    }
    let device = model.flow.device();
    Ok(context.map(|c| matrix(c.values.clone(), c.rows(), c.cols, &device)))
}

/// Samples as a table: the model's column names, and its image shape for an image model.
fn samples_table(model: &Model, values: Vec<f64>) -> Table {
    let mut t = Table::new(values, model.flow.dim(), "samples");
    if let EventShape::Image { .. } = model.flow.event() {
        t.image_shape = Some(model.flow.event());
        t.images = model.meta.inputs.images;
    }
    t.names = model.meta.inputs.column_names.clone();
    t
}

/// `n` samples of a model per context row (in row order) and their log-densities, in one pass:
/// `log q(x) = log p_u(u) − log|det J_T(u)|`.
pub fn sample_and_log_density(model: &Model, n: usize, context: Option<&Table>, seed: u64) -> Result<(Table, Vec<f64>)> {
    let ct = sample_context(model, n, context)?;
    let mut rng = StdRng::seed_from_u64(seed);
    let (x, lp) = model.flow.sample_and_log_prob(n, ct.as_ref(), &mut rng)?;
    Ok((samples_table(model, to_vec(x)?), to_vec(lp)?))
}

/// Log-densities of a model at points `[N, D]` (row-major), with one context row for all or one
/// per point.
pub fn log_density(model: &Model, points: &[f64], context: Option<&Table>) -> Result<Vec<f64>> {
    let d = model.flow.dim();
    let n = points.len() / d.max(1);
    let device = model.flow.device();
    let ct = match context {
        Some(c) if c.rows() == 1 => Some(crate::tensor::repeat_rows(&matrix(c.values.clone(), 1, c.cols, &device), n)),
        Some(c) if c.rows() == n => Some(matrix(c.values.clone(), n, c.cols, &device)),
        Some(c) => return Err(FlowError::Data(format!("{} context rows for {n} points: give one row, or one per point", c.rows()))),
        None => None,
    };
    to_vec(model.flow.log_prob(matrix(points.to_vec(), n, d, &device), ct.as_ref())?)
}

/// What `diffeo info --json` prints of a model (and `Flow.info()` returns in Python): family,
/// sizes, layers, base, event, log-det kind, columns, preprocessing, training totals, and for a
/// posterior its prior and simulations.
pub fn info(m: &Model) -> serde_json::Value {
    let flow = &m.flow;
    let inputs = &m.meta.inputs;
    let mut o = serde_json::json!({
        "family": m.meta.family,
        "dim": flow.dim(),
        "context_dim": flow.context_dim(),
        "parameters": flow.parameter_count(),
        "layers": flow.layer_names(),
        "base": format!("{:?}", flow.config().base),
        "event": flow.event().to_string(),
        "log_det": format!("{:?}", flow.log_det(crate::bijections::Mode::Evaluation)).to_lowercase(),
        "columns": inputs.columns,
        "context_columns": inputs.context_columns,
        "column_names": inputs.column_names,
        "data_source": m.meta.data_source,
        "standardized": inputs.standardized,
        "dequantize": inputs.dequantize,
        "logit_alpha": inputs.logit_alpha,
        "training": m.summary.as_ref().map(|s| serde_json::json!({
            "steps": s.steps_total, "runs": s.runs, "seconds": s.seconds_total,
            "train_rows": s.train_rows, "val_rows": s.val_rows,
            "best_val_log_likelihood": s.best_val_log_likelihood, "final_train_loss": s.final_train_loss,
        })),
    });
    // Keys only for posterior models (JSON outputs keep their keys).
    if let Some(p) = &m.posterior {
        o["posterior"] = serde_json::json!({
            "prior": p.prior.spec(), "support": p.support, "observation": p.observation, "rounds": p.rounds,
            "simulations": p.simulations, "dropped_nonfinite": p.dropped_nonfinite, "dropped_outside": p.dropped_outside,
            "ensemble": 1 + m.members.len(),
        });
    }
    o
}

/// Self-checks a saved model in f64 (see [`crate::testing::self_check`]).
pub fn check(path: &Path, n: usize, seed: u64) -> Result<crate::testing::SelfCheck> {
    let device = crate::cpu_f64()?;
    let model = crate::model::load(path, &device)?;
    crate::testing::self_check(&model.flow, n, seed)
}

/// What `diffeo vi` asks for.
#[derive(Clone, Debug)]
pub struct ViRequest {
    /// The target.
    pub target: StandardTarget,
    /// Its name as the user gave it.
    pub target_name: String,
    /// The architecture (a family of [`crate::families::VI_FAMILIES`]).
    pub family: FamilySettings,
    /// The fit's settings.
    pub fit: ReverseKlConfig,
}

/// What a variational fit produced.
pub struct ViOutcome {
    /// The model, ready to save.
    pub model: Model,
    /// The fit's report (its diagnostics always present).
    pub report: ReverseKlReport,
}

/// Fits a flow to a built-in target by reverse KL; the model records the target and diagnostics.
pub fn vi(req: &ViRequest, observer: &mut dyn FnMut(&ReverseKlProgress)) -> Result<ViOutcome> {
    req.target.validate()?;
    vi_to(&req.target, Some(&req.target), &req.target_name, &req.family, &req.fit, observer)
}

/// Fits a flow of `family` to any target (a host function, say) by reverse KL; the model records
/// `builtin` and the diagnostics when the target is a built-in one.
pub fn vi_to(
    target: &dyn Target,
    builtin: Option<&StandardTarget>,
    target_name: &str,
    family: &FamilySettings,
    fit: &ReverseKlConfig,
    observer: &mut dyn FnMut(&ReverseKlProgress),
) -> Result<ViOutcome> {
    let config = vi_architecture(family, target.dim(), target.support())?;
    let flow = config.init(&crate::cpu())?;
    let (flow, report) = fit_reverse_kl(flow, target, fit, observer)?;
    let diagnostics = report.diagnostics.clone().ok_or_else(|| FlowError::InvalidConfig("the fit reported no diagnostics".into()))?;
    let d = target.dim();
    let meta = ModelMeta { family: format!("{} (vi)", family.family), data_source: format!("target:{target_name}"), inputs: InputSpec::plain(d, 0) };
    let summary = TrainingSummary {
        steps_total: report.steps,
        runs: 1,
        seconds_total: report.seconds,
        best_step: report.steps,
        final_train_loss: -report.history.last().map_or(f64::NAN, |h| h.1),
        history: report.history.iter().map(|(s, elbo)| (*s, -elbo, None)).collect(),
        ..TrainingSummary::default()
    };
    let vi = builtin.map(|t| ViRecord { target: t.clone(), diagnostics });
    Ok(ViOutcome { model: Model { flow, members: Vec::new(), meta, summary: Some(summary), vi, posterior: None }, report })
}

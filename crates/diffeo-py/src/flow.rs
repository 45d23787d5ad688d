//! `diffeo.Flow`: build a family, fit it to arrays, evaluate, sample, save and load — the same
//! model files as the command line.

use std::path::PathBuf;

use diffeo::data::Table;
use diffeo::event::EventShape;
use diffeo::families::{default_fit_config, FamilySettings};
use diffeo::fit::FitEvent;
use diffeo::model::Model;
use diffeo::pipeline::{self, DataSource, FitRequest, Notice};
use pyo3::exceptions::{PyFileNotFoundError, PyRuntimeError, PyUserWarning, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::arrays::{self, Array};
use crate::progress::Watch;
use crate::IntoPy;

/// What a fit did.
#[pyclass(module = "diffeo", frozen, get_all)]
pub struct FitReport {
    /// Optimisation steps taken.
    pub steps: usize,
    /// Step of the returned weights (the best validation score).
    pub best_step: usize,
    /// Mean validation log-likelihood of the returned weights (nats), if validating.
    pub best_val_log_likelihood: Option<f64>,
    /// Mean training loss over the last reporting interval.
    pub final_train_loss: f64,
    /// Whether patience, the time budget or Ctrl-C ended the fit.
    pub stopped_early: bool,
    /// Whether Ctrl-C ended the fit.
    pub interrupted: bool,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Training rows.
    pub train_rows: usize,
    /// Validation rows.
    pub val_rows: usize,
    /// `(step, mean training loss, validation log-likelihood or None)` per reporting interval.
    pub history: Vec<(usize, f64, Option<f64>)>,
}

#[pymethods]
impl FitReport {
    fn __repr__(&self) -> String {
        let val = self.best_val_log_likelihood.map_or("None".to_string(), |v| format!("{v:.4}"));
        format!(
            "FitReport(steps={}, best_step={}, best_val_log_likelihood={val}, seconds={:.1}, stopped_early={}, interrupted={})",
            self.steps,
            self.best_step,
            self.seconds,
            if self.stopped_early { "True" } else { "False" },
            if self.interrupted { "True" } else { "False" }
        )
    }
}

/// A normalizing flow: a family's architecture, fit by maximum likelihood to arrays.
#[pyclass(module = "diffeo")]
pub struct Flow {
    settings: FamilySettings,
    event: EventShape,
    context_dim: usize,
    /// The model: built at the first evaluation of an unfitted flow, replaced by each fit.
    model: Option<Model>,
    /// Whether `model` was fit or loaded (a fit then continues it; else a fit builds the model
    /// from the data, with their standardization).
    trained: bool,
}

/// The event of `dim`: an int (flat) or an image shape `(C, H, W)` / `(H, W)`.
fn event_of(dim: &Bound<'_, PyAny>, image_family: bool, family: &str) -> PyResult<EventShape> {
    let event = if let Ok(d) = dim.extract::<usize>() {
        if d == 0 {
            return Err(PyValueError::new_err("dim must be at least 1"));
        }
        EventShape::flat(d)
    } else if let Ok((c, h, w)) = dim.extract::<(usize, usize, usize)>() {
        EventShape::image(c, h, w)
    } else if let Ok((h, w)) = dim.extract::<(usize, usize)>() {
        EventShape::image(1, h, w)
    } else {
        return Err(PyValueError::new_err("dim: expected a number of features or an image shape (C, H, W)"));
    };
    match (image_family, event) {
        (true, EventShape::Flat(_)) => Err(PyValueError::new_err(format!("{family} models images: pass dim=(C, H, W)"))),
        (false, EventShape::Image { .. }) => Err(PyValueError::new_err(format!("{family} models vectors: pass dim as a number of features"))),
        _ => Ok(event),
    }
}

/// Columns `a..b` as a column list.
fn column_list(a: usize, b: usize) -> String {
    (a..b).map(|c| c.to_string()).collect::<Vec<_>>().join(",")
}

/// The table of a fit: the rows of `x` followed by their context columns.
fn data_table(x: Array, n: usize, context: Option<Table>, event: EventShape, images: bool, what: &str) -> PyResult<Table> {
    let d = event.size();
    let c = context.as_ref().map_or(0, |t| t.cols);
    let mut values = Vec::with_capacity(n * (d + c));
    for i in 0..n {
        values.extend_from_slice(&x.values[i * d..(i + 1) * d]);
        if let Some(t) = &context {
            values.extend_from_slice(t.row(i));
        }
    }
    let mut table = Table::new(values, d + c, what);
    if let EventShape::Image { .. } = event {
        table.image_shape = Some(event);
        table.images = images;
    }
    Ok(table)
}

/// Python warnings for the library's warnings (notes are dropped: they narrate).
fn warn_all(py: Python<'_>, notices: Vec<Notice>) -> PyResult<()> {
    for n in notices {
        if let Notice::Warning(m) = n {
            PyErr::warn(py, &py.get_type::<PyUserWarning>(), &std::ffi::CString::new(m).unwrap_or_default(), 1)?;
        }
    }
    Ok(())
}

impl Flow {
    fn new(settings: FamilySettings, event: EventShape, context_dim: usize) -> Self {
        Self { settings, event, context_dim, model: None, trained: false }
    }

    /// A flow around a model read from a file.
    pub(crate) fn of_model(model: Model) -> Self {
        let family = model.meta.family_name().to_string();
        let (event, context_dim) = (model.flow.event(), model.flow.context_dim());
        Self { settings: FamilySettings::new(&family), event, context_dim, model: Some(model), trained: true }
    }

    /// The model, built untrained on first use.
    fn model(&mut self) -> PyResult<&Model> {
        if self.model.is_none() {
            self.model = Some(pipeline::untrained(&self.settings, self.event, self.context_dim).py()?);
        }
        Ok(self.model.as_ref().expect("just built"))
    }

    fn construct(family: &str, dim: &Bound<'_, PyAny>, context_dim: usize, options: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let settings = crate::options::family_settings(family, options)?;
        let event = event_of(dim, settings.is_image(), family)?;
        Ok(Self::new(settings, event, context_dim))
    }
}

#[pymethods]
impl Flow {
    /// A flow of `family` (see `diffeo.families()`) on `dim` features (an int; image
    /// families: `(C, H, W)`), conditional on `context_dim` values; `options` are the command
    /// line's architecture flags by their Python names (`transforms=5`, `hidden=(128, 128)`,
    /// `bins=8`, `levels=2`, …).
    #[staticmethod]
    #[pyo3(signature = (family, dim, *, context_dim=0, **options))]
    fn build(family: &str, dim: &Bound<'_, PyAny>, context_dim: usize, options: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        Self::construct(family, dim, context_dim, options)
    }

    /// Masked autoregressive flow (affine, MADE conditioners): fast densities, D-pass sampling.
    #[staticmethod]
    #[pyo3(signature = (dim, *, context_dim=0, **options))]
    fn maf(dim: &Bound<'_, PyAny>, context_dim: usize, options: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        Self::construct("maf", dim, context_dim, options)
    }

    /// Neural spline flow, autoregressive (rational-quadratic splines, LU layers between).
    #[staticmethod]
    #[pyo3(signature = (dim, *, context_dim=0, **options))]
    fn nsf(dim: &Bound<'_, PyAny>, context_dim: usize, options: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        Self::construct("nsf", dim, context_dim, options)
    }

    /// Neural spline flow with coupling layers: fast in both directions.
    #[staticmethod]
    #[pyo3(signature = (dim, *, context_dim=0, **options))]
    fn nsf_coupling(dim: &Bound<'_, PyAny>, context_dim: usize, options: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        Self::construct("nsf-coupling", dim, context_dim, options)
    }

    /// RealNVP affine coupling: fast in both directions.
    #[staticmethod]
    #[pyo3(signature = (dim, *, context_dim=0, **options))]
    fn realnvp(dim: &Bound<'_, PyAny>, context_dim: usize, options: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        Self::construct("realnvp", dim, context_dim, options)
    }

    /// Glow on images `dim=(C, H, W)`: multi-scale ActNorm, 1×1 convolutions, affine couplings.
    #[staticmethod]
    #[pyo3(signature = (dim, *, context_dim=0, **options))]
    fn glow(dim: &Bound<'_, PyAny>, context_dim: usize, options: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        Self::construct("glow", dim, context_dim, options)
    }

    /// Reads a model file written by `save` or by the command line.
    #[staticmethod]
    fn load(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        if !path.exists() {
            return Err(PyFileNotFoundError::new_err(format!("{}: model file not found", path.display())));
        }
        let model = py.allow_threads(|| pipeline::load_model(&path)).py()?;
        Ok(Self::of_model(model))
    }

    /// Writes the model (atomically; the command line reads it too).
    fn save(&mut self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        let model = self.model()?;
        py.allow_threads(|| diffeo::model::save(&path, model)).py()
    }

    /// Fits the flow by maximum likelihood to the rows of `x` (`[N, D]`; images `[N, C, H, W]`),
    /// with their `context` rows (`[N, C]`) for a conditional flow. Validation: `val` (and
    /// `val_context`), else 10 % of the rows held out; the returned weights are the best
    /// validation score's. A first fit builds the model from the data (standardized inside the
    /// model, as on the command line); later fits continue training it. Defaults as on the
    /// command line: 2000 steps (with `time_budget` alone: until it is spent), batch 256 (image
    /// families 64), Adam at 1e-3 with a cosine schedule (`schedule="cosine"`, `"constant"` or
    /// `"cooldown"`: the full rate for 80 % of the run, then a cosine to 0). `average_decay`
    /// (e.g. 0.999) validates and keeps the Polyak average of the weights (0: off). Image families default
    /// to the cooldown, averaging at 0.999 and validation every 1,000 steps. Ctrl-C stops after the current step, keeps
    /// the best model so far and raises `KeyboardInterrupt`.
    #[pyo3(signature = (x, *, context=None, val=None, val_context=None, steps=None, epochs=None, batch=None, lr=None,
        schedule=None, patience=None, eval_every=None, clip_grad=None, average_decay=None, time_budget=None, dequantize=false, seed=None, progress=true))]
    #[allow(clippy::too_many_arguments)]
    fn fit(
        &mut self,
        py: Python<'_>,
        x: &Bound<'_, PyAny>,
        context: Option<&Bound<'_, PyAny>>,
        val: Option<&Bound<'_, PyAny>>,
        val_context: Option<&Bound<'_, PyAny>>,
        steps: Option<usize>,
        epochs: Option<usize>,
        batch: Option<usize>,
        lr: Option<f64>,
        schedule: Option<&str>,
        patience: Option<usize>,
        eval_every: Option<usize>,
        clip_grad: Option<f64>,
        average_decay: Option<f64>,
        time_budget: Option<f64>,
        dequantize: bool,
        seed: Option<u64>,
        progress: bool,
    ) -> PyResult<FitReport> {
        let x_array = arrays::read(py, x, "x", dequantize)?;
        let n = arrays::rows(&x_array, self.event, "x")?;
        let ctx = arrays::context(py, context, self.context_dim, Some(n), "context")?;
        if ctx.as_ref().is_some_and(|c| c.table.rows() != n) {
            return Err(PyValueError::new_err(format!("context: a fit needs one context row per row of x ({n})")));
        }
        let images = dequantize && matches!(self.event, EventShape::Image { .. });
        let table = data_table(x_array, n, ctx.map(|c| c.table), self.event, images, "x")?;
        let val_table = match (val, val_context) {
            (Some(v), vc) if !v.is_none() => {
                let a = arrays::read(py, v, "val", dequantize)?;
                let m = arrays::rows(&a, self.event, "val")?;
                let c = arrays::context(py, vc, self.context_dim, Some(m), "val_context")?;
                if c.as_ref().is_some_and(|c| c.table.rows() != m) {
                    return Err(PyValueError::new_err(format!("val_context: one context row per row of val ({m})")));
                }
                Some(data_table(a, m, c.map(|c| c.table), self.event, images, "val")?)
            }
            (_, Some(vc)) if !vc.is_none() => return Err(PyValueError::new_err("val_context= goes with val=")),
            _ => None,
        };
        let schedule = schedule.map(crate::schedule_of).transpose()?;
        if lr.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
            return Err(PyValueError::new_err("lr must be positive"));
        }
        if average_decay.is_some_and(|d| !(0.0..1.0).contains(&d)) {
            return Err(PyValueError::new_err("average_decay must lie in [0, 1)"));
        }
        if time_budget.is_some_and(|b| !(b.is_finite() && b > 0.0)) {
            return Err(PyValueError::new_err("time_budget must be a positive number of seconds"));
        }
        if steps == Some(0) || epochs == Some(0) || batch == Some(0) || eval_every == Some(0) || patience == Some(0) {
            return Err(PyValueError::new_err("steps, epochs, batch, eval_every and patience must be at least 1"));
        }
        let family = self.settings.family.clone();
        let mut settings = self.settings.clone();
        if let Some(s) = seed {
            settings.seed = s;
        }
        let seed = settings.seed;
        // --time-budget alone: train until the budget is spent.
        let steps = match (steps, epochs, time_budget) {
            (Some(s), _, _) => s,
            (None, None, Some(_)) => 0,
            _ => 2000,
        };
        let mut train = default_fit_config(&family).with_steps(steps).with_seed(seed);
        train.schedule = schedule.unwrap_or(train.schedule);
        train.learning_rate = lr.unwrap_or(train.learning_rate);
        train.batch_size = batch.unwrap_or(train.batch_size);
        train.eval_every = eval_every.unwrap_or(train.eval_every);
        train.average_decay = average_decay.or(train.average_decay);
        train.epochs = epochs;
        train.patience = patience;
        train.grad_clip_norm = clip_grad;
        train.time_budget = time_budget;

        let (d, c) = (self.event.size(), self.context_dim);
        let mut req = FitRequest::new(DataSource::Rows(table), &family);
        req.val = val_table.map(DataSource::Rows);
        req.family = settings;
        req.train = train;
        req.dequantize = dequantize;
        // A continued fit keeps the model's preprocessing; the arrays are laid out [x | context].
        let resumed = if self.trained {
            let mut m = self.model.clone().expect("a trained flow has a model");
            m.meta.inputs.input_columns = d + c;
            m.meta.inputs.columns = (0..d).collect();
            m.meta.inputs.context_columns = (d..d + c).collect();
            Some(m)
        } else {
            req.columns = Some(column_list(0, d));
            req.context_columns = (c > 0).then(|| column_list(d, d + c));
            None
        };

        let mut watch = Watch::new(py, progress, &family)?;
        let mut notices = Vec::new();
        let result = py.allow_threads(|| {
            let (mut last_total, mut last_loss) = (None, f64::NAN);
            let mut observer = |e: &FitEvent| match *e {
                FitEvent::Step { step, total, loss, .. } => {
                    (last_total, last_loss) = ((total != usize::MAX).then_some(total), loss);
                    watch.tick(step, last_total, loss, None, false);
                }
                FitEvent::Validation { step, log_likelihood, best } => watch.tick(step, last_total, last_loss, Some((log_likelihood, best)), true),
                _ => {}
            };
            pipeline::fit_model(&req, resumed, &mut |n| notices.push(n), &mut observer)
        });
        watch.close(py);
        warn_all(py, notices)?;
        let outcome = result.py()?;
        let r = &outcome.report;
        let report = FitReport {
            steps: r.steps,
            best_step: r.best_step,
            best_val_log_likelihood: r.best_val_log_likelihood,
            final_train_loss: r.final_train_loss,
            stopped_early: r.stopped_early,
            interrupted: r.interrupted,
            seconds: r.seconds,
            train_rows: outcome.train_rows,
            val_rows: outcome.val_rows,
            history: r.history.iter().map(|h| (h.step, h.train_loss, h.val_log_likelihood)).collect(),
        };
        self.model = Some(outcome.model);
        self.trained = true;
        match watch.interrupt {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }

    /// `log p(x | context)` per row, shape `(N,)`: `x` is `[N, D]` (images `[N, C, H, W]`) in the
    /// units the flow was fit in; `context` one row `[C]` for all or `[N, C]`.
    #[pyo3(signature = (x, context=None, *, dtype=None))]
    fn log_prob<'py>(&mut self, py: Python<'py>, x: &Bound<'py, PyAny>, context: Option<&Bound<'py, PyAny>>, dtype: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
        let a = arrays::read(py, x, "x", false)?;
        let n = arrays::rows(&a, self.event, "x")?;
        let ctx = arrays::context(py, context, self.context_dim, Some(n), "context")?;
        let model = self.model()?;
        let lp = py.allow_threads(|| pipeline::log_density(model, &a.values, ctx.as_ref().map(|c| &c.table))).py()?;
        arrays::output(py, lp, &[n], dtype)
    }

    /// `n` samples: `[n, D]` (images `[n, C, H, W]`), or `[M, n, D]` for a context matrix
    /// `[M, C]`; `temperature` scales the base draws (Gaussian bases); `seed=None` draws a fresh
    /// one.
    #[pyo3(signature = (n, context=None, *, seed=None, temperature=1.0, dtype=None))]
    fn sample<'py>(
        &mut self,
        py: Python<'py>,
        n: usize,
        context: Option<&Bound<'py, PyAny>>,
        seed: Option<u64>,
        temperature: f64,
        dtype: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let ctx = arrays::context(py, context, self.context_dim, None, "context")?;
        let groups = ctx.as_ref().filter(|c| c.batched).map(|c| c.table.rows());
        let seed = seed.unwrap_or_else(crate::fresh_seed);
        let event = self.event;
        let model = self.model()?;
        let (t, _) = py.allow_threads(|| pipeline::sample_at_temperature(model, n, ctx.as_ref().map(|c| &c.table), seed, temperature)).py()?;
        arrays::output(py, t.values, &arrays::event_shape(n, event, groups), dtype)
    }

    /// Samples and their log-densities in one pass: `(x, log_prob)`, shapes as in `sample` and
    /// `x.shape[:-1]` (images: without the image axes).
    #[pyo3(signature = (n, context=None, *, seed=None, dtype=None))]
    fn sample_and_log_prob<'py>(
        &mut self,
        py: Python<'py>,
        n: usize,
        context: Option<&Bound<'py, PyAny>>,
        seed: Option<u64>,
        dtype: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        if n == 0 {
            return Err(PyValueError::new_err("n must be at least 1"));
        }
        let ctx = arrays::context(py, context, self.context_dim, None, "context")?;
        let groups = ctx.as_ref().filter(|c| c.batched).map(|c| c.table.rows());
        let seed = seed.unwrap_or_else(crate::fresh_seed);
        let event = self.event;
        let model = self.model()?;
        let (x, lp) = py.allow_threads(|| pipeline::sample_and_log_density(model, n, ctx.as_ref().map(|c| &c.table), seed)).py()?;
        let x = x.values;
        let lp_shape: Vec<usize> = groups.into_iter().chain([n]).collect();
        let x = arrays::output(py, x, &arrays::event_shape(n, event, groups), dtype)?;
        let lp = arrays::output(py, lp, &lp_shape, dtype)?;
        PyTuple::new(py, [x, lp])
    }

    /// The model's description (what `diffeo info --json` prints).
    fn info<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let text = pipeline::info(self.model()?).to_string();
        py.import("json")?.call_method1("loads", (text,))
    }

    /// The self-check of `diffeo check` (inverse reconstruction and log-dets against the
    /// Jacobian, in f64, at `n` of the flow's samples), run in a fresh interpreter: a dict with
    /// `passed` and the largest errors.
    #[pyo3(signature = (n=1000, seed=0))]
    fn check<'py>(&mut self, py: Python<'py>, n: usize, seed: u64) -> PyResult<Bound<'py, PyAny>> {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let k = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("diffeo-check-{}-{k}.dfo", std::process::id()));
        let model = self.model()?;
        py.allow_threads(|| diffeo::model::save(&path, model)).py()?;
        let code = "import sys\nfrom diffeo import _diffeo\nprint(_diffeo._check_file(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))";
        let executable = py.import("sys")?.getattr("executable")?;
        let kwargs = PyDict::new(py);
        kwargs.set_item("capture_output", true)?;
        kwargs.set_item("text", true)?;
        let args = (executable, "-c", code, path.display().to_string(), n.to_string(), seed.to_string());
        let done = py.import("subprocess")?.call_method("run", (args,), Some(&kwargs));
        let _ = std::fs::remove_file(&path);
        let done = done?;
        let code: i32 = done.getattr("returncode")?.extract()?;
        if code != 0 {
            let err: String = done.getattr("stderr")?.extract()?;
            let line = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no message").to_string();
            return Err(PyRuntimeError::new_err(format!("the self-check failed to run: {line}")));
        }
        let out: String = done.getattr("stdout")?.extract()?;
        py.import("json")?.call_method1("loads", (out,))
    }

    /// Features D.
    #[getter]
    fn dim(&self) -> usize {
        self.event.size()
    }

    /// Context values C (0: unconditional).
    #[getter]
    fn context_dim(&self) -> usize {
        self.context_dim
    }

    /// The shape of one event: `(D,)`, or `(C, H, W)` for images.
    #[getter]
    fn event_shape(&self) -> Vec<usize> {
        arrays::event_shape(1, self.event, None)[1..].to_vec()
    }

    /// The family's name.
    #[getter]
    fn family(&self) -> String {
        self.settings.family.clone()
    }

    /// Whether the flow was fit (or loaded from a file).
    #[getter]
    fn trained(&self) -> bool {
        self.trained
    }

    /// Trainable parameters.
    #[getter]
    fn parameters(&mut self) -> PyResult<usize> {
        Ok(self.model()?.flow.parameter_count())
    }

    fn __repr__(&self) -> String {
        let shape = match self.event {
            EventShape::Image { channels, height, width } => format!("({channels}, {height}, {width})"),
            e => e.size().to_string(),
        };
        let context = if self.context_dim > 0 { format!(", context_dim={}", self.context_dim) } else { String::new() };
        format!("Flow({}, dim={shape}{context}{})", self.settings.family, if self.trained { ", trained" } else { "" })
    }
}

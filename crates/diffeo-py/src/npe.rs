//! `diffeo.npe` and `diffeo.Posterior`: neural posterior estimation from simulated pairs
//! (θ, x), as `diffeo npe --data` does from a file.

use std::path::PathBuf;
use std::sync::Mutex;

use diffeo::data::Table;
use diffeo::fit::FitEvent;
use diffeo::model::Model;
use diffeo::pipeline::sbi::{self as sbi_pipeline, NpeRequest};
use diffeo::pipeline::{DataSource, Notice};
use diffeo::sbi::{
    NpeConfig, Posterior as PosteriorOf, Prior, RoundEvent, SamplingLimits, SequentialConfig, Simulated, SimulationLog, Simulator, SupportHandling,
    XEmbedding,
};
use diffeo::FlowError;
use numpy::{PyArray1, PyArrayMethods};
use pyo3::exceptions::{PyFileNotFoundError, PyUserWarning, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::arrays;
use crate::progress::Watch;
use crate::IntoPy;

/// The rows of a 2-D (or, for one column, 1-D) float array: `(values, rows, columns)`.
fn matrix_of(py: Python<'_>, obj: &Bound<'_, PyAny>, what: &str) -> PyResult<(Vec<f64>, usize, usize)> {
    let a = arrays::read(py, obj, what, false)?;
    let (n, k) = match a.shape.as_slice() {
        [n, k] => (*n, *k),
        [n] => (*n, 1),
        s => return Err(PyValueError::new_err(format!("{what} has shape {s:?}; expected [N, columns]"))),
    };
    if n == 0 || k == 0 {
        return Err(PyValueError::new_err(format!("{what} is empty")));
    }
    Ok((a.values, n, k))
}

fn widths(v: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<usize>> {
    let w: Vec<usize> = v.extract().map_err(|_| PyValueError::new_err(format!("{what}: expected a sequence of positive widths")))?;
    if w.is_empty() || w.contains(&0) {
        return Err(PyValueError::new_err(format!("{what}: expected a sequence of positive widths")));
    }
    Ok(w)
}

/// Trains a posterior `q(θ | x)` on simulated pairs: `theta` `[N, D]` drawn from `prior` (a spec
/// such as `"uniform:-1:1x2"`, as on the command line) and `x` `[N, K]` simulated from them.
/// Defaults as `diffeo npe`: an ensemble of 5 neural spline flows (hidden 64×2, 10 bins), batch
/// 200, Adam 5e-4, stop after 20 epochs without improvement; θ standardized given x; samples
/// kept to the prior's support by rejection (`support="transform"`: by a bijection onto it).
/// `embedding="mlp"` (or `"deepsets"` with `iid_groups=`) learns a summary of x.
#[pyfunction]
#[pyo3(signature = (theta=None, x=None, *, prior, simulator=None, observation=None, rounds=1, simulations=10000, simulation_batch=1000,
    flow="nsf", ensemble=5, support="reject", embedding=None, embedding_hidden=None, embedding_dim=16, iid_groups=None, batch=None, lr=None,
    patience=None, max_epochs=None, clip_grad=None, seed=0, progress=true, **options))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn npe(
    py: Python<'_>,
    theta: Option<&Bound<'_, PyAny>>,
    x: Option<&Bound<'_, PyAny>>,
    prior: &str,
    simulator: Option<&Bound<'_, PyAny>>,
    observation: Option<&Bound<'_, PyAny>>,
    rounds: usize,
    simulations: usize,
    simulation_batch: usize,
    flow: &str,
    ensemble: usize,
    support: &str,
    embedding: Option<&str>,
    embedding_hidden: Option<&Bound<'_, PyAny>>,
    embedding_dim: usize,
    iid_groups: Option<usize>,
    batch: Option<usize>,
    lr: Option<f64>,
    patience: Option<usize>,
    max_epochs: Option<usize>,
    clip_grad: Option<f64>,
    seed: u64,
    progress: bool,
    options: Option<&Bound<'_, PyDict>>,
) -> PyResult<Posterior> {
    diffeo::families::family(flow).py()?;
    let mut c = NpeConfig::default();
    c.family.family = flow.to_string();
    if let Some(o) = options {
        crate::options::apply(&mut c.family, o)?;
    }
    c.family.seed = seed;
    if ensemble == 0 {
        return Err(PyValueError::new_err("ensemble must be at least 1"));
    }
    c.ensemble = ensemble;
    c.support = match support {
        "reject" => SupportHandling::Rejection,
        "transform" => SupportHandling::Transform,
        other => return Err(PyValueError::new_err(format!("support={other:?}: expected \"reject\" or \"transform\""))),
    };
    let hidden = match embedding_hidden {
        Some(h) => widths(h, "embedding_hidden")?,
        None => vec![64, 64],
    };
    c.embedding = match (embedding, iid_groups) {
        (None | Some("none"), None) => XEmbedding::None,
        (Some("mlp"), None) => XEmbedding::Mlp { hidden, output: embedding_dim },
        (Some("deepsets"), Some(g)) if g >= 2 => XEmbedding::DeepSets { groups: g, hidden, output: embedding_dim },
        (Some("deepsets"), _) => return Err(PyValueError::new_err("embedding=\"deepsets\" needs iid_groups ≥ 2 (the draws making up x)")),
        (Some(other), None) if !matches!(other, "none" | "mlp") => {
            return Err(PyValueError::new_err(format!("embedding={other:?}: expected None, \"mlp\" or \"deepsets\"")))
        }
        _ => return Err(PyValueError::new_err("iid_groups= goes with embedding=\"deepsets\"")),
    };
    c.train.seed = seed;
    if let Some(b) = batch {
        c.train.batch_size = b;
    }
    if let Some(r) = lr {
        c.train.learning_rate = r;
    }
    if let Some(p) = patience {
        c.patience_epochs = p;
    }
    if let Some(e) = max_epochs {
        c.max_epochs = e;
    }
    if clip_grad.is_some() {
        c.train.grad_clip_norm = clip_grad;
    }
    let simulator = simulator.filter(|f| !f.is_none());
    let observation = observation.filter(|o| !o.is_none()).map(|o| arrays::read(py, o, "observation", false)).transpose()?;
    if let Some(o) = &observation {
        if o.shape.len() != 1 {
            return Err(PyValueError::new_err(format!("observation has shape {:?}; expected one row [K]", o.shape)));
        }
    }
    let mut watch = Watch::new(py, progress, "npe")?;
    let mut notices = Vec::new();
    let (mut total, mut last_loss) = (None, f64::NAN);
    let mut events = |e: RoundEvent| match e {
        RoundEvent::Fit(FitEvent::Step { step, total: t, loss, .. }) => {
            (total, last_loss) = ((*t != usize::MAX).then_some(*t), *loss);
            watch.tick(*step, total, *loss, None, false);
        }
        RoundEvent::Fit(FitEvent::Validation { step, log_likelihood, best }) => watch.tick(*step, total, last_loss, Some((*log_likelihood, *best)), true),
        _ => {}
    };
    let (result, simulated) = match (theta.filter(|t| !t.is_none()), x.filter(|x| !x.is_none()), simulator) {
        (Some(theta), Some(x), None) => {
            if observation.is_some() || rounds > 1 {
                return Err(PyValueError::new_err("observation= and rounds= go with simulator= (sequential rounds); a posterior from simulations is amortized"));
            }
            let (t, n, d) = matrix_of(py, theta, "theta")?;
            let (xs, m, k) = matrix_of(py, x, "x")?;
            if n != m {
                return Err(PyValueError::new_err(format!("theta has {n} rows and x {m}: one x per θ")));
            }
            let mut values = Vec::with_capacity(n * (d + k));
            for i in 0..n {
                values.extend_from_slice(&t[i * d..(i + 1) * d]);
                values.extend_from_slice(&xs[i * k..(i + 1) * k]);
            }
            let req = NpeRequest {
                data: Some(DataSource::Rows(Table::new(values, d + k, "arrays"))),
                theta_columns: Some((0..d).map(|i| i.to_string()).collect::<Vec<_>>().join(",")),
                x_columns: Some((d..d + k).map(|i| i.to_string()).collect::<Vec<_>>().join(",")),
                prior: prior.to_string(),
                observation: None,
                simulator: None,
                npe: c,
                out: PathBuf::from("posterior.dfo"),
            };
            (py.allow_threads(|| sbi_pipeline::npe(&req, &mut |n| notices.push(n), &mut events)), None)
        }
        (None, None, Some(f)) => {
            let prior = Prior::from_arg(prior).py()?;
            let rounds = SequentialConfig { rounds, simulations, simulation_batch, seed, ..SequentialConfig::default() };
            let sim = PySimulator { f: f.clone().unbind(), raised: Mutex::new(None) };
            let mut log = SimulationLog::default();
            let o = observation.as_ref().map(|o| o.values.clone());
            let result = py.allow_threads(|| {
                sbi_pipeline::npe_simulated(&prior, &sim, o.as_deref(), &c, &rounds, &mut log, &mut |_, _, _| Ok(()), "simulator", &mut |n| notices.push(n), &mut events)
            });
            let result = match (result, sim.raised.into_inner().unwrap_or_else(|p| p.into_inner())) {
                (Err(_), Some(raised)) => Err(Raised::Python(raised)),
                (r, _) => r.map_err(Raised::Library),
            };
            let d = prior.dim();
            let arrays = (log.theta, log.x, d, log.x_dim);
            match result {
                Ok(outcome) => (Ok(outcome), Some(arrays)),
                Err(e) => {
                    watch.close(py);
                    let err = match e {
                        Raised::Python(e) => e,
                        Raised::Library(e) => crate::py_err(e),
                    };
                    // Nothing simulated is lost: the simulations so far travel with the error.
                    let (theta, x) = simulations_arrays(py, arrays)?;
                    err.value(py).setattr("simulations", (theta, x))?;
                    return Err(err);
                }
            }
        }
        (_, _, Some(_)) => return Err(PyValueError::new_err("give either theta and x (simulations made) or simulator= (simulations to make), not both")),
        _ => return Err(PyValueError::new_err("give theta and x (simulations), or simulator=")),
    };
    watch.close(py);
    for n in notices {
        if let Notice::Warning(m) = n {
            PyErr::warn(py, &py.get_type::<PyUserWarning>(), &std::ffi::CString::new(m).unwrap_or_default(), 1)?;
        }
    }
    let outcome = result.py()?;
    let posterior = Posterior { model: outcome.model, simulations: simulated };
    match watch.interrupt {
        Some(e) => Err(e),
        None => Ok(posterior),
    }
}

/// A failure of a simulator run: the Python exception the simulator raised, or the library's.
enum Raised {
    Python(PyErr),
    Library(diffeo::FlowError),
}

/// θ `[M, D]` and x `[M, K]` arrays of simulations.
fn simulations_arrays<'py>(py: Python<'py>, (theta, x, d, k): Simulated4) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    let m = theta.len() / d.max(1);
    Ok((arrays::output(py, theta, &[m, d], None)?, arrays::output(py, x, &[m, k], None)?))
}

/// Simulations as `(θ values, x values, D, K)`.
type Simulated4 = (Vec<f64>, Vec<f64>, usize, usize);

/// A Python simulator: a callable from θ rows `[M, D]` to x rows `[M, K]` (NaN rows are
/// dropped), called once per batch.
struct PySimulator {
    f: Py<PyAny>,
    raised: Mutex<Option<PyErr>>,
}

impl Simulator for PySimulator {
    fn simulate(&self, theta: &[f64], theta_dim: usize, batch: usize) -> diffeo::Result<Simulated> {
        let n = theta.len() / theta_dim.max(1);
        Python::with_gil(|py| {
            let out = PyArray1::from_slice(py, theta).reshape([n, theta_dim]).and_then(|t| self.f.call1(py, (t,))).and_then(|out| {
                let a = arrays::read(py, out.bind(py), "the simulator's x", false)?;
                match a.shape.as_slice() {
                    [m, k] if *m == n && *k > 0 => Ok(Simulated { values: a.values, cols: *k }),
                    [m] if *m == n => Ok(Simulated { values: a.values, cols: 1 }),
                    s => Err(PyValueError::new_err(format!("the simulator returned x of shape {s:?} for {n} θ rows"))),
                }
            });
            out.map_err(|e| {
                let message = e.to_string();
                *self.raised.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                FlowError::Simulation(format!("batch {batch}: the simulator raised {message}"))
            })
        })
    }
}

/// A posterior `q(θ | x)` trained by `diffeo.npe` (or `diffeo npe`): sampling keeps to the
/// prior's support; densities are −inf outside it.
#[pyclass(module = "diffeo")]
pub struct Posterior {
    model: Model,
    /// The simulations a simulator made (`simulator=`).
    simulations: Option<Simulated4>,
}

impl Posterior {
    fn observation(&self, py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<Vec<f64>> {
        let a = arrays::read(py, obj, "observation", false)?;
        let k = self.model.flow.context_dim();
        if a.values.len() != k || a.shape.len() > 2 || (a.shape.len() == 2 && a.shape[0] != 1) {
            return Err(PyValueError::new_err(format!("observation has shape {:?}; expected ({k},)", a.shape)));
        }
        if let Some(bad) = a.values.iter().find(|v| !v.is_finite()) {
            return Err(PyValueError::new_err(format!("observation holds a non-finite value ({bad})")));
        }
        Ok(a.values)
    }
}

#[pymethods]
impl Posterior {
    /// `n` samples of θ given one observation x (`[K]`): `[n, D]`.
    #[pyo3(signature = (n, observation, *, seed=None, dtype=None))]
    fn sample<'py>(&self, py: Python<'py>, n: usize, observation: &Bound<'py, PyAny>, seed: Option<u64>, dtype: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
        if n == 0 {
            return Err(PyValueError::new_err("n must be at least 1"));
        }
        let o = self.observation(py, observation)?;
        let seed = seed.unwrap_or_else(crate::fresh_seed);
        let mut notices = Vec::new();
        let (t, _) = py
            .allow_threads(|| sbi_pipeline::posterior_samples(&self.model, &o, n, seed, SamplingLimits::default(), &mut |m| notices.push(m)))
            .py()?;
        for m in notices {
            if let Notice::Warning(m) = m {
                PyErr::warn(py, &py.get_type::<PyUserWarning>(), &std::ffi::CString::new(m).unwrap_or_default(), 1)?;
            }
        }
        arrays::output(py, t.values, &[n, self.model.flow.dim()], dtype)
    }

    /// `log q(θ | x)` of θ rows `[N, D]` at one observation (`[K]`): `(N,)`, −inf outside the
    /// prior's support (normalized by the acceptance of the support, estimated with `seed`).
    #[pyo3(signature = (theta, observation, *, seed=0, dtype=None))]
    fn log_prob<'py>(&self, py: Python<'py>, theta: &Bound<'py, PyAny>, observation: &Bound<'py, PyAny>, seed: u64, dtype: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
        let d = self.model.flow.dim();
        let (t, n, k) = matrix_of(py, theta, "theta")?;
        if k != d {
            return Err(PyValueError::new_err(format!("theta has {k} columns; the posterior has {d} parameters")));
        }
        if t.iter().any(|v| v.is_nan()) {
            return Err(PyValueError::new_err("theta holds NaN"));
        }
        let o = self.observation(py, observation)?;
        let record = sbi_pipeline::posterior_record(&self.model).py()?;
        let lp = py.allow_threads(|| PosteriorOf { flow: &self.model.flow, members: &self.model.members, record }.log_prob(&t, &o, seed)).py()?;
        arrays::output(py, lp, &[n], dtype)
    }

    /// Writes the posterior model (the command line's `posterior` and `sbc` read it).
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        py.allow_threads(|| diffeo::model::save(&path, &self.model)).py()
    }

    /// Reads a posterior model file.
    #[staticmethod]
    fn load(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        if !path.exists() {
            return Err(PyFileNotFoundError::new_err(format!("{}: model file not found", path.display())));
        }
        let model = py.allow_threads(|| diffeo::pipeline::load_model(&path)).py()?;
        sbi_pipeline::posterior_record(&model).py()?;
        Ok(Self { model, simulations: None })
    }

    /// The model's description (what `diffeo info --json` prints).
    fn info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        py.import("json")?.call_method1("loads", (diffeo::pipeline::info(&self.model).to_string(),))
    }

    /// `(theta [M, D], x [M, K])`: the simulations a `simulator=` made (`None` otherwise).
    #[getter]
    fn simulations<'py>(&self, py: Python<'py>) -> PyResult<Option<(Bound<'py, PyAny>, Bound<'py, PyAny>)>> {
        self.simulations.clone().map(|s| simulations_arrays(py, s)).transpose()
    }

    /// Parameters D.
    #[getter]
    fn dim(&self) -> usize {
        self.model.flow.dim()
    }

    /// Observation values K.
    #[getter]
    fn x_dim(&self) -> usize {
        self.model.flow.context_dim()
    }

    /// The prior's spec.
    #[getter]
    fn prior(&self) -> PyResult<String> {
        Ok(sbi_pipeline::posterior_record(&self.model).py()?.prior.spec())
    }

    fn __repr__(&self) -> String {
        let prior = sbi_pipeline::posterior_record(&self.model).map(|r| r.prior.spec()).unwrap_or_default();
        format!("Posterior({}, dim={}, x_dim={}, prior={prior:?}, ensemble={})", self.model.meta.family, self.dim(), self.x_dim(), 1 + self.model.members.len())
    }
}

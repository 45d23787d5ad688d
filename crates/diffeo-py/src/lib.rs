//! `diffeo._diffeo`: the native module of the Python package `diffeo`.
//!
//! It parses Python arguments, calls the library ([`diffeo::pipeline`] above all, the same steps
//! as the command line) and converts the results to numpy arrays and Python objects: no
//! modelling logic of its own. Fits, sampling and density evaluation release the GIL; a fit
//! takes the GIL back a few times a second to draw its progress and to notice Ctrl-C, which
//! stops it after the current step with the best model so far.

mod arrays;
mod flow;
mod npe;
mod options;
mod progress;
mod vi;

use diffeo::FlowError;
use pyo3::exceptions::{PyIOError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;

// The command line's allocator: small tensors are allocated on every layer call.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A library error as the Python exception a user expects: `IOError` for files that cannot be
/// read or written, `RuntimeError` for a fit, simulation or sampler that failed, `ValueError`
/// for everything the caller passed.
pub(crate) fn py_err(e: FlowError) -> PyErr {
    match e {
        FlowError::Io { .. } | FlowError::BadModelFile { .. } | FlowError::UnsupportedVersion { .. } => PyIOError::new_err(e.to_string()),
        FlowError::NonFiniteLoss { .. }
        | FlowError::Simulation(_)
        | FlowError::SamplingLimit(_)
        | FlowError::NotConverged { .. }
        | FlowError::Backend(_)
        | FlowError::TooLarge(_) => PyRuntimeError::new_err(e.to_string()),
        e => PyValueError::new_err(e.to_string()),
    }
}

/// `diffeo::Result` into `PyResult`.
pub(crate) trait IntoPy<T> {
    fn py(self) -> PyResult<T>;
}

impl<T> IntoPy<T> for diffeo::Result<T> {
    fn py(self) -> PyResult<T> {
        self.map_err(py_err)
    }
}

/// A seed for calls given none: fresh per call (std's randomly keyed hasher).
pub(crate) fn fresh_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new().build_hasher().finish()
}

/// A learning-rate schedule by its Python name (`schedule=` of `Flow.fit` and `vi`).
pub(crate) fn schedule_of(name: &str) -> PyResult<diffeo::train::Schedule> {
    name.parse().map_err(|_: FlowError| PyValueError::new_err(format!("schedule={name:?}: expected \"cosine\", \"constant\" or \"cooldown\"")))
}

/// The flow families as `(name, description)` pairs.
#[pyfunction]
fn families() -> Vec<(String, String)> {
    diffeo::families::FAMILIES.iter().map(|f| (f.name.to_string(), f.about.to_string())).collect()
}

/// The self-check of a model file in f64, as JSON (what `Flow.check` runs in a fresh
/// interpreter: burn fixes the CPU's float type at the first tensor of a process).
#[pyfunction]
fn _check_file(py: Python<'_>, path: std::path::PathBuf, n: usize, seed: u64) -> PyResult<String> {
    let c = py.allow_threads(|| diffeo::pipeline::check(&path, n, seed)).py()?;
    let o = serde_json::json!({
        "passed": c.passed(),
        "n": c.n,
        "dim": c.dim,
        "max_reconstruction_error": c.max_reconstruction_error,
        "max_logdet_consistency_error": c.max_logdet_consistency_error,
        "max_logdet_error": c.max_logdet_error,
        "logdet_points": c.logdet_points,
        "logdet_direction": c.logdet_direction,
        "log_det": c.log_det,
        "failures": c.failures,
    });
    Ok(o.to_string())
}

#[pymodule]
fn _diffeo(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<flow::Flow>()?;
    m.add_class::<flow::FitReport>()?;
    m.add_class::<npe::Posterior>()?;
    m.add_function(wrap_pyfunction!(vi::vi, m)?)?;
    m.add_function(wrap_pyfunction!(npe::npe, m)?)?;
    m.add_function(wrap_pyfunction!(families, m)?)?;
    m.add_function(wrap_pyfunction!(_check_file, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}

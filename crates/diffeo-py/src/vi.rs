//! `diffeo.vi`: fit a flow to an unnormalized density by reverse KL — a Python callable on a
//! numpy batch, or a built-in target by name.

use std::sync::Mutex;

use diffeo::families::FamilySettings;
use diffeo::pipeline::{self, ViOutcome, ViRequest};
use diffeo::vi::{HostDensity, HostTarget, ReverseKlConfig, ReverseKlProgress, StandardTarget};
use diffeo::FlowError;
use numpy::{PyArray1, PyArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::flow::Flow;
use crate::progress::Watch;
use crate::IntoPy;

/// The values (and gradients) a target callable returned for `n` points of `d` features.
fn host_density(py: Python<'_>, out: &Bound<'_, PyAny>, n: usize, d: usize) -> PyResult<HostDensity> {
    let (values, gradient) = match out.downcast::<PyTuple>() {
        Ok(t) if t.len() == 2 => (t.get_item(0)?, Some(t.get_item(1)?)),
        _ => (out.clone(), None),
    };
    let v = crate::arrays::read(py, &values, "the target's log-densities", false)?;
    if v.values.len() != n || v.shape.len() > 1 {
        return Err(PyValueError::new_err(format!("the target returned log-densities of shape {:?} for {n} points; expected ({n},)", v.shape)));
    }
    let g = match gradient {
        Some(g) => {
            let g = crate::arrays::read(py, &g, "the target's gradients", false)?;
            if g.shape != [n, d] {
                return Err(PyValueError::new_err(format!("the target returned gradients of shape {:?} for {n} points; expected ({n}, {d})", g.shape)));
            }
            Some(g.values)
        }
        None => None,
    };
    Ok((v.values, g))
}

/// The diagnostics of a fit as a dict.
fn diagnostics<'py>(py: Python<'py>, outcome: &ViOutcome) -> PyResult<Bound<'py, PyAny>> {
    let r = &outcome.report;
    let mut o = match &r.diagnostics {
        Some(d) => serde_json::to_value(d).map_err(|e| PyValueError::new_err(e.to_string()))?,
        None => serde_json::json!({}),
    };
    o["steps"] = r.steps.into();
    o["seconds"] = r.seconds.into();
    o["dropped_training"] = r.dropped.into();
    o["interrupted"] = r.interrupted.into();
    py.import("json")?.call_method1("loads", (o.to_string(),))
}

/// Fits a flow `q` to the unnormalized density `target` by maximizing the ELBO (reverse KL) and
/// returns `(flow, diagnostics)`: ELBO, importance-sampled log Z ± s.e., effective sample size,
/// Pareto k̂ (and KL when log Z is known).
///
/// `target` is a callable `f(x: ndarray [N, D]) -> log p̃ [N]`, called once per step with the
/// step's Monte-Carlo batch (or returning `(log p̃ [N], ∇ log p̃ [N, D])` for exact gradients;
/// without them, central differences over 2·D shifted copies of the batch, in the same call),
/// or the name of a built-in target (`"u1"`…`"u4"`, `"funnel"`, `"banana"`, `"rosenbrock"`).
#[pyfunction]
#[pyo3(signature = (target, dim=None, *, flow="nsf-coupling", steps=5000, samples=256, lr=2e-3, schedule="cosine",
    stl=false, anneal=None, clip_grad=None, log_z=None, diagnostic_samples=20000, seed=0, progress=true, **options))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn vi<'py>(
    py: Python<'py>,
    target: &Bound<'py, PyAny>,
    dim: Option<usize>,
    flow: &str,
    steps: usize,
    samples: usize,
    lr: f64,
    schedule: &str,
    stl: bool,
    anneal: Option<usize>,
    clip_grad: Option<f64>,
    log_z: Option<f64>,
    diagnostic_samples: usize,
    seed: u64,
    progress: bool,
    options: Option<&Bound<'py, PyDict>>,
) -> PyResult<(Flow, Bound<'py, PyAny>)> {
    if !diffeo::families::VI_FAMILIES.iter().any(|f| f.name == flow) {
        let names: Vec<&str> = diffeo::families::VI_FAMILIES.iter().map(|f| f.name).collect();
        return Err(PyValueError::new_err(format!("flow={flow:?}: expected one of {}", names.join(", "))));
    }
    let mut family = FamilySettings::new(flow);
    family.hidden = vec![64, 64];
    if let Some(o) = options {
        crate::options::apply(&mut family, o)?;
    }
    family.seed = seed;
    let fit = ReverseKlConfig::new()
        .with_steps(steps)
        .with_batch_size(samples)
        .with_learning_rate(lr)
        .with_schedule(crate::schedule_of(schedule)?)
        .with_sticking_the_landing(stl)
        .with_annealing_steps(anneal.unwrap_or(0))
        .with_grad_clip_norm(clip_grad)
        .with_eval_every((steps / 100).clamp(1, 500))
        .with_diagnostic_samples(diagnostic_samples)
        .with_seed(seed);
    fit.validate().py()?;
    if diagnostic_samples < 2 {
        return Err(PyValueError::new_err("diagnostic_samples must be at least 2"));
    }
    let mut watch = Watch::new(py, progress, "vi")?;
    let outcome = if let Ok(name) = target.extract::<String>() {
        let mut t = StandardTarget::from_name(&name).py()?;
        match (&mut t, dim) {
            (StandardTarget::Funnel { dim }, Some(d)) => *dim = d,
            (_, Some(_)) => return Err(PyValueError::new_err("dim applies to the funnel only among the built-in targets")),
            _ => {}
        }
        let req = ViRequest { target: t, target_name: name, family, fit };
        py.allow_threads(|| pipeline::vi(&req, &mut |p: &ReverseKlProgress| watch.tick(p.step, Some(p.total), -p.elbo, None, false)))
    } else {
        if !target.is_callable() {
            return Err(PyValueError::new_err("target: expected a callable log-density or the name of a built-in target"));
        }
        let d = dim.ok_or_else(|| PyValueError::new_err("a callable target needs dim="))?;
        if d == 0 {
            return Err(PyValueError::new_err("dim must be at least 1"));
        }
        let callable = target.clone().unbind();
        let raised: Mutex<Option<PyErr>> = Mutex::new(None);
        let f = |points: &[f64], n: usize| -> diffeo::Result<HostDensity> {
            Python::with_gil(|py| {
                let result = PyArray1::from_slice(py, points).reshape([n, d]).and_then(|x| callable.call1(py, (x,))).and_then(|out| host_density(py, out.bind(py), n, d));
                result.map_err(|e| {
                    let message = e.to_string();
                    *raised.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    FlowError::InvalidConfig(format!("the target raised {message}"))
                })
            })
        };
        let mut host = HostTarget::new(d, f).with_name("callable");
        if let Some(z) = log_z {
            host = host.with_log_normalizer(z);
        }
        let name = target.getattr("__name__").and_then(|n| n.extract::<String>()).unwrap_or_else(|_| "callable".into());
        let result =
            py.allow_threads(|| pipeline::vi_to(&host, None, &name, &family, &fit, &mut |p: &ReverseKlProgress| watch.tick(p.step, Some(p.total), -p.elbo, None, false)));
        if let Some(e) = raised.lock().unwrap_or_else(|p| p.into_inner()).take() {
            watch.close(py);
            return Err(e);
        }
        result
    };
    watch.close(py);
    let outcome = outcome.py()?;
    let diag = diagnostics(py, &outcome)?;
    let flow = Flow::of_model(outcome.model);
    match watch.interrupt {
        Some(e) => Err(e),
        None => Ok((flow, diag)),
    }
}

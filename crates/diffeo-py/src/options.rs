//! Keyword options of `Flow.build` → the library's [`FamilySettings`]: the command line's
//! architecture flags under their Python names (`hidden=(128, 128)` for `--hidden 128,128`).

use diffeo::bijections::{GradientMethod, Probe, ResidualLogDet, Trace};
use diffeo::distributions::BaseKind;
use diffeo::families::FamilySettings;
use diffeo::nn::Activation;
use diffeo::ode::Solver;
use diffeo::transformer::SplineTails;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// Every option `Flow.build` accepts.
pub(crate) const OPTIONS: [&str; 31] = [
    "transforms",
    "hidden",
    "activation",
    "batch_norm",
    "lu",
    "residual_blocks",
    "dropout",
    "bins",
    "tail_bound",
    "spline_tails",
    "seed",
    "base",
    "trace",
    "probe",
    "solver",
    "atol",
    "rtol",
    "max_ode_steps",
    "ode_steps",
    "gradient",
    "lipschitz",
    "logdet",
    "series_terms",
    "components",
    "integrand_hidden",
    "nodes",
    "polynomials",
    "degree",
    "levels",
    "steps_per_level",
    "hidden_channels",
];

fn bad(key: &str, value: &Bound<'_, PyAny>, expected: &str) -> PyErr {
    let shown = value.repr().map(|r| r.to_string()).unwrap_or_else(|_| "?".into());
    PyValueError::new_err(format!("{key}={shown}: expected {expected}"))
}

fn positive(key: &str, v: &Bound<'_, PyAny>) -> PyResult<usize> {
    match v.extract::<usize>() {
        Ok(k) if k > 0 => Ok(k),
        _ => Err(bad(key, v, "a positive integer")),
    }
}

fn number(key: &str, v: &Bound<'_, PyAny>) -> PyResult<f64> {
    match v.extract::<f64>() {
        Ok(x) if x.is_finite() => Ok(x),
        _ => Err(bad(key, v, "a finite number")),
    }
}

fn choice<'a>(key: &str, v: &Bound<'_, PyAny>, names: &[&'a str]) -> PyResult<&'a str> {
    let s: String = v.extract().map_err(|_| bad(key, v, &format!("one of {}", names.join(", "))))?;
    names.iter().copied().find(|n| n.eq_ignore_ascii_case(&s)).ok_or_else(|| bad(key, v, &format!("one of {}", names.join(", "))))
}

/// The settings of `family` with `options` applied.
pub(crate) fn family_settings(family: &str, options: Option<&Bound<'_, PyDict>>) -> PyResult<FamilySettings> {
    diffeo::families::family(family).map_err(crate::py_err)?;
    let mut s = FamilySettings::new(family);
    if let Some(options) = options {
        apply(&mut s, options)?;
    }
    Ok(s)
}

/// Applies keyword `options` (the command line's architecture flags by their Python names) to
/// `s`.
pub(crate) fn apply(s: &mut FamilySettings, options: &Bound<'_, PyDict>) -> PyResult<()> {
    for (key, v) in options.iter() {
        let key: String = key.extract()?;
        let k = key.as_str();
        match k {
            "transforms" => s.transforms = Some(positive(k, &v)?),
            "hidden" => {
                let widths: Vec<usize> = match v.extract::<usize>() {
                    Ok(w) => vec![w],
                    Err(_) => v.extract().map_err(|_| bad(k, &v, "a sequence of positive widths like (128, 128)"))?,
                };
                if widths.is_empty() || widths.contains(&0) {
                    return Err(bad(k, &v, "a sequence of positive widths like (128, 128)"));
                }
                s.hidden = widths;
            }
            "activation" => {
                s.activation = match choice(k, &v, &["relu", "tanh", "elu"])? {
                    "tanh" => Activation::Tanh,
                    "elu" => Activation::Elu,
                    _ => Activation::Relu,
                }
            }
            "batch_norm" => s.batch_norm = v.extract().map_err(|_| bad(k, &v, "True or False"))?,
            "lu" => s.lu = v.extract().map_err(|_| bad(k, &v, "True or False"))?,
            "plain_conv1x1" => s.plain_conv1x1 = v.extract().map_err(|_| bad(k, &v, "True or False"))?,
            "residual_blocks" => s.residual_blocks = v.extract().map_err(|_| bad(k, &v, "a non-negative integer"))?,
            "dropout" => {
                s.dropout = number(k, &v)?;
                if !(0.0..1.0).contains(&s.dropout) {
                    return Err(bad(k, &v, "a probability in [0, 1)"));
                }
            }
            "bins" => s.bins = positive(k, &v)?,
            "tail_bound" => s.tail_bound = number(k, &v)?,
            "spline_tails" => {
                s.spline_tails = if choice(k, &v, &["affine", "identity"])? == "identity" { SplineTails::Identity } else { SplineTails::Affine }
            }
            "seed" => s.seed = v.extract().map_err(|_| bad(k, &v, "a non-negative integer"))?,
            "base" => {
                if choice(k, &v, &["gaussian", "resampled"])? == "resampled" {
                    s.base = BaseKind::resampled();
                }
            }
            "trace" => s.trace = Some(if choice(k, &v, &["exact", "hutchinson"])? == "exact" { Trace::Exact } else { Trace::Hutchinson }),
            "probe" => s.probe = if choice(k, &v, &["rademacher", "gaussian"])? == "gaussian" { Probe::Gaussian } else { Probe::Rademacher },
            "solver" => {
                s.ode.solver = match choice(k, &v, &["dopri5", "rk4", "euler"])? {
                    "rk4" => Solver::Rk4,
                    "euler" => Solver::Euler,
                    _ => Solver::Dopri5,
                }
            }
            "atol" => s.ode.atol = number(k, &v)?,
            "rtol" => s.ode.rtol = number(k, &v)?,
            "max_ode_steps" => s.ode.max_steps = positive(k, &v)?,
            "ode_steps" => s.ode.steps = positive(k, &v)?,
            "gradient" => {
                s.gradient = if choice(k, &v, &["backprop", "adjoint"])? == "adjoint" { GradientMethod::Adjoint } else { GradientMethod::Backprop }
            }
            "lipschitz" => s.lipschitz = number(k, &v)?,
            "logdet" => {
                s.logdet = match choice(k, &v, &["roulette", "series", "exact"])? {
                    "series" => ResidualLogDet::Series,
                    "exact" => ResidualLogDet::Exact,
                    _ => ResidualLogDet::Roulette,
                }
            }
            "series_terms" => s.series_terms = positive(k, &v)?,
            "components" => s.monotone.components = positive(k, &v)?,
            "integrand_hidden" => s.monotone.integrand_hidden = positive(k, &v)?,
            "nodes" => s.monotone.nodes = positive(k, &v)?,
            "polynomials" => s.monotone.polynomials = positive(k, &v)?,
            "degree" => s.monotone.degree = positive(k, &v)?,
            "block_dim" => s.monotone.block_dim = positive(k, &v)?,
            "block_layers" => s.monotone.block_layers = positive(k, &v)?,
            "levels" => s.levels = Some(positive(k, &v)?),
            "steps_per_level" => s.steps_per_level = Some(positive(k, &v)?),
            "hidden_channels" => s.hidden_channels = positive(k, &v)?,
            other => {
                return Err(PyValueError::new_err(format!(
                    "unknown option {other:?} (accepted: {}, plain_conv1x1, block_dim, block_layers)",
                    OPTIONS.join(", ")
                )))
            }
        }
    }
    Ok(())
}

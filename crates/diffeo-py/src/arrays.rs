//! numpy in and out: array-likes of floats (C or Fortran order, float16/32/64) read once into
//! row-major f64 values; results returned as float64 arrays (or the `dtype` asked for).

use diffeo::data::Table;
use diffeo::event::EventShape;
use numpy::{PyArray1, PyArrayDyn, PyArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// An array's values (row-major, f64) and shape.
pub(crate) struct Array {
    pub values: Vec<f64>,
    pub shape: Vec<usize>,
}

/// The values of an array-like. Floating-point dtypes only, unless `integers` (8-bit images to
/// dequantize): anything else is a `ValueError` naming `what`.
pub(crate) fn read(py: Python<'_>, obj: &Bound<'_, PyAny>, what: &str, integers: bool) -> PyResult<Array> {
    let np = py.import("numpy")?;
    let arr = np.call_method1("asarray", (obj,)).map_err(|e| PyValueError::new_err(format!("{what}: not an array of numbers ({e})")))?;
    let dtype = arr.getattr("dtype")?;
    let kind: String = dtype.getattr("kind")?.extract()?;
    let accepted = kind == "f" || (integers && (kind == "u" || kind == "i"));
    if !accepted {
        let wanted = if integers { "floating-point or integer" } else { "floating-point" };
        return Err(PyValueError::new_err(format!("{what}: expected {wanted} values, got an array of dtype {}", dtype.str()?)));
    }
    let shape: Vec<usize> = arr.getattr("shape")?.extract()?;
    // f64 and f32 are read in place, whatever their strides; other types through one conversion.
    let values: Vec<f64> = if let Ok(a) = arr.downcast::<PyArrayDyn<f64>>() {
        a.try_readonly().map_err(|e| PyValueError::new_err(format!("{what}: {e}")))?.as_array().iter().copied().collect()
    } else if let Ok(a) = arr.downcast::<PyArrayDyn<f32>>() {
        a.try_readonly().map_err(|e| PyValueError::new_err(format!("{what}: {e}")))?.as_array().iter().map(|&v| f64::from(v)).collect()
    } else {
        let converted = arr.call_method1("astype", ("float64",))?;
        let a = converted.downcast::<PyArrayDyn<f64>>()?;
        let out: Vec<f64> = a.try_readonly().map_err(|e| PyValueError::new_err(format!("{what}: {e}")))?.as_array().iter().copied().collect();
        out
    };
    Ok(Array { values, shape })
}

/// How a flow on `event` wants its rows, for messages.
fn expected(event: EventShape) -> String {
    match event {
        EventShape::Image { channels, height, width } if channels == 1 => {
            format!("[N, {channels}, {height}, {width}] or [N, {height}, {width}] (or [N, {}])", event.size())
        }
        EventShape::Image { channels, height, width } => format!("[N, {channels}, {height}, {width}] (or [N, {}])", event.size()),
        _ if event.size() == 1 => "[N, 1] or [N]".into(),
        _ => format!("[N, {}]", event.size()),
    }
}

/// The rows of `a` for events of `event`: `[N, D]`, `[N]` when D = 1, images `[N, C, H, W]`
/// (or `[N, H, W]` for one channel). Empty arrays are refused.
pub(crate) fn rows(a: &Array, event: EventShape, what: &str) -> PyResult<usize> {
    let d = event.size();
    let n = match (a.shape.as_slice(), event) {
        ([n, k], _) if *k == d => *n,
        ([n], _) if d == 1 => *n,
        ([n, c, h, w], EventShape::Image { channels, height, width }) if (*c, *h, *w) == (channels, height, width) => *n,
        ([n, h, w], EventShape::Image { channels: 1, height, width }) if (*h, *w) == (height, width) => *n,
        (s, _) => return Err(PyValueError::new_err(format!("{what} has shape {s:?}; the flow takes {}", expected(event)))),
    };
    if n == 0 {
        return Err(PyValueError::new_err(format!("{what} is empty")));
    }
    Ok(n)
}

/// Context rows as the caller gave them.
pub(crate) struct Context {
    /// The rows.
    pub table: Table,
    /// Whether they came as a matrix `[M, C]` (sampling then returns `[M, n, …]`) rather than
    /// one vector `[C]`.
    pub batched: bool,
}

/// Context rows: `None` for an unconditional flow; one row `[C]` for all points, or a matrix
/// `[M, C]` (`[N]` when C = 1 and the points are known): with `n` points, M must be 1 or n.
pub(crate) fn context(py: Python<'_>, obj: Option<&Bound<'_, PyAny>>, context_dim: usize, n: Option<usize>, what: &str) -> PyResult<Option<Context>> {
    let obj = match (obj.filter(|o| !o.is_none()), context_dim) {
        (None, 0) => return Ok(None),
        (None, c) => return Err(PyValueError::new_err(format!("the flow is conditional on {c} context value(s): pass {what}="))),
        (Some(_), 0) => return Err(PyValueError::new_err(format!("the flow is unconditional: {what}= is not accepted"))),
        (Some(o), _) => o,
    };
    let a = read(py, obj, what, false)?;
    let c = context_dim;
    let (rows, batched) = match a.shape.as_slice() {
        [k] if *k == c => (1, false),
        [m, k] if *k == c => (*m, true),
        [m] if c == 1 && Some(*m) == n => (*m, true),
        s => {
            let per = n.map_or(format!(" or [M, {c}]"), |n| format!(" or [{n}, {c}]"));
            return Err(PyValueError::new_err(format!("{what} has shape {s:?}; expected [{c}]{per}")));
        }
    };
    if rows == 0 {
        return Err(PyValueError::new_err(format!("{what} is empty")));
    }
    if let Some(n) = n {
        if rows != 1 && rows != n {
            return Err(PyValueError::new_err(format!("{what} has {rows} rows for {n} points: give one row, or one per point")));
        }
    }
    if let Some(bad) = a.values.iter().find(|v| !v.is_finite()) {
        return Err(PyValueError::new_err(format!("{what} holds a non-finite value ({bad})")));
    }
    Ok(Some(Context { table: Table::new(a.values, c, what), batched }))
}

/// A float64 array of `values` with `shape`, converted to `dtype` when one is given.
pub(crate) fn output<'py>(py: Python<'py>, values: Vec<f64>, shape: &[usize], dtype: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
    let flat = PyArray1::from_vec(py, values);
    let shaped = flat.reshape(shape.to_vec())?.into_any();
    match dtype.filter(|d| !d.is_none()) {
        Some(d) => shaped.call_method1("astype", (d,)),
        None => Ok(shaped),
    }
}

/// The shape of `n` events of `event` (a leading `groups` axis when given).
pub(crate) fn event_shape(n: usize, event: EventShape, groups: Option<usize>) -> Vec<usize> {
    let mut shape: Vec<usize> = groups.into_iter().collect();
    shape.push(n);
    match event {
        EventShape::Image { channels, height, width } => shape.extend([channels, height, width]),
        _ => shape.push(event.size()),
    }
    shape
}

//! Event shapes and the context of a call.
//!
//! **Events.** A batch is always a `[N, D]` tensor, one event per row, flattened in C order; the
//! event's shape travels beside it as an [`EventShape`]: flat `[D]` or an image `[C, H, W]` (a row
//! is channel 0's H·W pixels row by row, then channel 1's, …). Layers that need the image
//! structure (squeeze, convolutions) reshape to `[N, C, H, W]` inside and flatten again on the way
//! out; in C order both are free views. Every other layer — elementwise maps, autoregressive and
//! coupling layers, permutations — sees D features and works on any shape. So base densities, the
//! training loop, host tables and model files are one code path for tabular data and images.
//!
//! **Calls.** Every pass of a bijection receives a [`Call`]: the conditioning context, a seeded
//! random source (for stochastic estimators such as Hutchinson probes), the train/eval [`Mode`]
//! and the [`Tolerance`] of iterative solvers (fixed points, bisection, ODE solves).

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use burn::tensor::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

use crate::error::{FlowError, Result};
use crate::tensor::matrix;

/// The shape of one event (one row of a batch).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventShape {
    /// A vector of D features.
    Flat(usize),
    /// An image of `channels × height × width`, flattened in C order.
    Image {
        /// Channels C.
        channels: usize,
        /// Height H.
        height: usize,
        /// Width W.
        width: usize,
    },
}

impl EventShape {
    /// `[D]`.
    pub fn flat(dim: usize) -> Self {
        EventShape::Flat(dim)
    }

    /// `[C, H, W]`.
    pub fn image(channels: usize, height: usize, width: usize) -> Self {
        EventShape::Image { channels, height, width }
    }

    /// Number of features (the row width of a batch).
    pub fn size(&self) -> usize {
        match *self {
            EventShape::Flat(d) => d,
            EventShape::Image { channels, height, width } => channels * height * width,
        }
    }

    /// The same kind of shape with `features` fewer features at the end: for an image, whole
    /// channels (the last `features / (H·W)`); for a vector, the last `features`.
    pub fn without_last(&self, features: usize) -> Result<Self> {
        match *self {
            EventShape::Flat(d) if features < d => Ok(EventShape::Flat(d - features)),
            EventShape::Image { channels, height, width }
                if features % (height * width) == 0 && features / (height * width) < channels =>
            {
                Ok(EventShape::image(channels - features / (height * width), height, width))
            }
            _ => Err(FlowError::InvalidConfig(format!(
                "cannot factor {features} features out of an event of shape {self}: keep at least one feature (whole channels of an image)"
            ))),
        }
    }

}

impl std::fmt::Display for EventShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EventShape::Flat(d) => write!(f, "[{d}]"),
            EventShape::Image { channels, height, width } => write!(f, "[{channels}, {height}, {width}]"),
        }
    }
}

/// Checks a context of shape `(rows, cols)` (or none) against the width `expected` a model needs
/// (0: unconditional) and, when given, the number of data rows: a missing or surplus context, a
/// wrong width, a row mismatch or an empty context is an error. `ignore_surplus`: an unconditional
/// layer inside a conditional chain ignores the context it is handed.
pub fn check_context_shape(expected: usize, context: Option<(usize, usize)>, rows: Option<usize>, what: &str, ignore_surplus: bool) -> Result<()> {
    match (expected, context) {
        (0, None) => Ok(()),
        (0, Some(_)) if ignore_surplus => Ok(()),
        (0, Some((_, cols))) => Err(FlowError::UnexpectedContext { got: cols }),
        (k, None) => Err(FlowError::MissingContext { expected: k }),
        (k, Some((n, cols))) => {
            if cols != k {
                return Err(FlowError::DimensionMismatch { what: what.into(), expected: k, got: cols });
            }
            if let Some(r) = rows {
                if n != r {
                    return Err(FlowError::RowMismatch { data_rows: r, context_rows: n });
                }
            }
            if n == 0 {
                return Err(FlowError::Empty { what: what.into() });
            }
            Ok(())
        }
    }
}

/// Whether a pass is part of training.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Mode {
    /// Training: batch statistics (and updates of running averages) in batch norm, cheap
    /// stochastic estimators where a layer offers them.
    Training,
    /// Evaluation: a fixed bijection.
    #[default]
    Evaluation,
}

/// Stopping rule of an iterative solver: stop when the change (or residual) is at most
/// `absolute + relative·|value|`; fail with [`FlowError::NotConverged`] after `max_iterations`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tolerance {
    /// Absolute tolerance.
    pub absolute: f64,
    /// Relative tolerance.
    pub relative: f64,
    /// Iteration limit (or, for adaptive ODE solvers, step limit).
    pub max_iterations: usize,
}

impl Default for Tolerance {
    /// 1e−6 absolute and relative, at most 1000 iterations.
    fn default() -> Self {
        Self { absolute: 1e-6, relative: 1e-6, max_iterations: 1000 }
    }
}

impl Tolerance {
    /// Whether `change` is within tolerance of `value`.
    pub fn met(&self, change: f64, value: f64) -> bool {
        change <= self.absolute + self.relative * value.abs()
    }
}

/// Everything a pass of a bijection receives besides its input.
#[derive(Debug)]
pub struct Call {
    context: Option<Tensor<2>>,
    /// Training or evaluation.
    pub mode: Mode,
    /// Stopping rule of iterative solvers.
    pub tolerance: Tolerance,
    rng: RefCell<StdRng>,
    evaluations: Arc<AtomicUsize>,
    log_det: bool,
    tolerance_given: bool,
    penalty: Arc<Mutex<Option<Tensor<1>>>>,
}

impl Default for Call {
    fn default() -> Self {
        Self::new()
    }
}

impl Clone for Call {
    /// A copy with the same context, mode, tolerance and random state, counting evaluations
    /// into the same counter.
    fn clone(&self) -> Self {
        Self {
            context: self.context.clone(),
            mode: self.mode,
            tolerance: self.tolerance,
            rng: RefCell::new(self.rng.borrow().clone()),
            evaluations: self.evaluations.clone(),
            log_det: self.log_det,
            tolerance_given: self.tolerance_given,
            penalty: self.penalty.clone(),
        }
    }
}

impl Call {
    /// No context, evaluation mode, default tolerance, random source seeded with 0.
    pub fn new() -> Self {
        Self {
            context: None,
            mode: Mode::Evaluation,
            tolerance: Tolerance::default(),
            rng: RefCell::new(StdRng::seed_from_u64(0)),
            evaluations: Arc::new(AtomicUsize::new(0)),
            log_det: true,
            tolerance_given: false,
            penalty: Arc::new(Mutex::new(None)),
        }
    }

    /// A training call (see [`Mode::Training`]).
    pub fn training() -> Self {
        Self::new().with_mode(Mode::Training)
    }

    /// Conditions on `context` `[N, C]`.
    pub fn with_context(mut self, context: Tensor<2>) -> Self {
        self.context = Some(context);
        self
    }

    /// Conditions on `context` when given (and on none otherwise; the mode, tolerance and random
    /// source stay).
    pub fn with_optional_context(mut self, context: Option<Tensor<2>>) -> Self {
        self.context = context;
        self
    }

    /// Sets the mode.
    pub fn with_mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Sets the tolerance of iterative solvers. Layers whose solver settings are part of the
    /// model (a CNF's ODE tolerances) use it instead of their own only when it is set here
    /// ([`given_tolerance`](Self::given_tolerance)): checks tighten them to test the map.
    pub fn with_tolerance(mut self, tolerance: Tolerance) -> Self {
        self.tolerance = tolerance;
        self.tolerance_given = true;
        self
    }

    /// The tolerance of iterative solvers: the one set, else [`Tolerance::default`].
    pub fn tolerance(&self) -> Tolerance {
        self.tolerance
    }

    /// The tolerance set by [`with_tolerance`](Self::with_tolerance), if any.
    pub fn given_tolerance(&self) -> Option<Tolerance> {
        self.tolerance_given.then_some(self.tolerance)
    }

    /// Says whether the caller uses the log-determinants (sampling does not): a layer whose
    /// log-det costs extra work (a CNF's trace) may then skip it and return zeros.
    pub fn with_log_det(mut self, needed: bool) -> Self {
        self.log_det = needed;
        self
    }

    /// Whether the log-determinants are used (see [`with_log_det`](Self::with_log_det)).
    pub fn needs_log_det(&self) -> bool {
        self.log_det
    }

    /// Seeds the random source.
    pub fn with_seed(self, seed: u64) -> Self {
        self.rng.replace(StdRng::seed_from_u64(seed));
        self
    }

    /// The context `[N, C]`, if any.
    pub fn context(&self) -> Option<&Tensor<2>> {
        self.context.as_ref()
    }

    /// Draws from the random source.
    pub fn with_rng<T>(&self, f: impl FnOnce(&mut StdRng) -> T) -> T {
        f(&mut self.rng.borrow_mut())
    }

    /// Adds `n` evaluations of a vector field (ODE solves) to the call's count, which the
    /// call's copies share.
    pub fn count_evaluations(&self, n: usize) {
        self.evaluations.fetch_add(n, Ordering::Relaxed);
    }

    /// Vector-field evaluations (NFE) counted by the passes made with this call and its copies.
    pub fn evaluations(&self) -> usize {
        self.evaluations.load(Ordering::Relaxed)
    }

    /// Adds a per-row training penalty `[N]` (a CNF's kinetic-energy and Jacobian-norm
    /// regularization) that the objective adds to its loss; shared by the call's copies.
    pub fn add_penalty(&self, penalty: Tensor<1>) {
        if let Ok(mut slot) = self.penalty.lock() {
            *slot = Some(match slot.take() {
                Some(p) => p.add(penalty),
                None => penalty,
            });
        }
    }

    /// The penalties added by the passes made with this call and its copies (taken out).
    pub fn take_penalty(&self) -> Option<Tensor<1>> {
        self.penalty.lock().ok().and_then(|mut slot| slot.take())
    }

    /// `[n, d]` standard-normal draws from the random source (e.g. Hutchinson probes).
    pub fn standard_normal(&self, n: usize, d: usize, device: &Device) -> Tensor<2> {
        let values: Vec<f64> = self.with_rng(|rng| (0..n * d).map(|_| rng.sample(StandardNormal)).collect());
        matrix(values, n, d, device)
    }

    /// `[n, d]` Rademacher draws (±1 with equal probability) from the random source.
    pub fn rademacher(&self, n: usize, d: usize, device: &Device) -> Tensor<2> {
        let values: Vec<f64> = self.with_rng(|rng| (0..n * d).map(|_| if rng.random::<bool>() { 1.0 } else { -1.0 }).collect());
        matrix(values, n, d, device)
    }
}

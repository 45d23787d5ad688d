//! Typed errors. Library code reports bad input through [`FlowError`], never by panicking.

use thiserror::Error;

/// Which way a bijection is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// `T`: base → data (sampling).
    Forward,
    /// `T⁻¹`: data → base (density evaluation).
    Inverse,
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Direction::Forward => write!(f, "forward (base → data)"),
            Direction::Inverse => write!(f, "inverse (data → base)"),
        }
    }
}

/// Everything that can go wrong when building, evaluating, fitting, saving or loading a flow.
#[derive(Debug, Error)]
pub enum FlowError {
    /// An input had the wrong number of columns.
    #[error("{what}: expected {expected} columns, got {got}")]
    DimensionMismatch {
        /// What was being checked ("data", "context", ...).
        what: String,
        /// The width the flow expects.
        expected: usize,
        /// The width that was given.
        got: usize,
    },
    /// Context and data have different numbers of rows.
    #[error("context has {context_rows} rows but the data has {data_rows}; give one context row per data row (or one row to broadcast when sampling)")]
    RowMismatch {
        /// Rows of the data.
        data_rows: usize,
        /// Rows of the context.
        context_rows: usize,
    },
    /// A conditional flow was called without a context.
    #[error("this flow is conditional: a context with {expected} columns is required")]
    MissingContext {
        /// Expected context width.
        expected: usize,
    },
    /// An unconditional flow was given a context.
    #[error("this flow is unconditional but a context with {got} columns was given")]
    UnexpectedContext {
        /// Width of the context that was given.
        got: usize,
    },
    /// The direction has no closed form for this bijection.
    #[error("{bijection} has no {direction} pass in closed form")]
    NotInvertible {
        /// Name of the bijection.
        bijection: String,
        /// The missing direction.
        direction: Direction,
    },
    /// NaN or infinity in user data.
    #[error("{what} contains a non-finite value ({value}) at row {row}, column {col}")]
    NonFinite {
        /// What was being checked.
        what: String,
        /// Zero-based row.
        row: usize,
        /// Zero-based column.
        col: usize,
        /// The offending value.
        value: f64,
    },
    /// No rows where some are needed.
    #[error("{what} is empty: at least one row is required")]
    Empty {
        /// What was empty.
        what: String,
    },
    /// A configuration that cannot be built or trained.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// Training produced a NaN or infinite loss.
    #[error("training diverged: the loss became non-finite ({loss}) at step {step}; try a smaller learning rate or gradient clipping")]
    NonFiniteLoss {
        /// Step at which it happened.
        step: usize,
        /// The loss value.
        loss: f64,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A model file could not be understood.
    #[error("{path}: not a valid model file: {reason}")]
    BadModelFile {
        /// The path involved.
        path: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A model file written by a newer or unknown format version.
    #[error("{path}: model format version {found} is not supported (this build reads version {supported})")]
    UnsupportedVersion {
        /// The path involved.
        path: String,
        /// Version in the file.
        found: String,
        /// Version this build understands.
        supported: u32,
    },
    /// An iterative solver (fixed point, bisection, ODE) did not reach its tolerance.
    #[error("{what} did not converge in {iterations} iterations (remaining error {residual:.3e}); raise the iteration limit or loosen the tolerance")]
    NotConverged {
        /// What was being solved.
        what: String,
        /// Iterations spent.
        iterations: usize,
        /// The error left.
        residual: f64,
    },
    /// Bad input data or files (the message names the file, row and column where it can).
    #[error("{0}")]
    Data(String),
    /// A configuration that would not fit in memory.
    #[error("{0}")]
    TooLarge(String),
    /// A simulator failed (non-zero exit, wrong output, timeout); the message names the batch.
    #[error("{0}")]
    Simulation(String),
    /// Rejection sampling hit its time or attempt limit.
    #[error("{0}")]
    SamplingLimit(String),
    /// The tensor backend failed.
    #[error("tensor backend error: {0}")]
    Backend(String),
}

/// Result alias used across the crate.
pub type Result<T, E = FlowError> = std::result::Result<T, E>;

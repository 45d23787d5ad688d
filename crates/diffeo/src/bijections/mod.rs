//! Bijections: invertible, differentiable maps with tractable log-determinants.
//!
//! Conventions (as in Papamakarios et al. 2021):
//! - [`Bijection::forward`] is `T`: base → data. Sampling uses it.
//! - [`Bijection::inverse`] is `T⁻¹`: data → base. Density evaluation uses it.
//! - Both take a batch `[N, D]`, an optional context `[N, C]`, and return the output together
//!   with the per-sample `log|det J|` of the map that was applied, shape `[N]`. So for any
//!   point, `log|det J_T(u)| = −log|det J_{T⁻¹}(T(u))|`.
//! - [`Bijection::directions`] says which directions exist and which are fast. A direction with no
//!   closed form returns [`FlowError::NotInvertible`], never a panic or a silent approximation.
//!
//! Every log-determinant costs O(D) per sample: no layer ever forms a D×D determinant.

mod autoregressive;
mod batchnorm;
mod chain;
mod coupling;
mod elementwise;
mod linear;
mod permutation;
mod residual;

pub use autoregressive::{MaskedAutoregressive, MaskedAutoregressiveConfig};
pub use batchnorm::{BatchNorm, BatchNormConfig, NormMode};
pub use chain::{Chain, Invert, Layer, LayerConfig, Link};
pub use coupling::{Coupling, CouplingConfig};
pub use elementwise::{Elementwise, ElementwiseAffine, ElementwiseKind};
pub use linear::{Householder, HouseholderConfig, LuLinear, LuLinearConfig};
pub use permutation::Permutation;
pub use residual::{Planar, PlanarConfig, Radial, RadialConfig, Sylvester, SylvesterBasis, SylvesterConfig};

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{Direction, FlowError, Result};
use crate::tensor::dims2;

/// Output and per-sample log|det J|.
pub type Mapped = (Tensor<2>, Tensor<1>);

/// How a direction of a bijection is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cost {
    /// One pass, closed form.
    Fast,
    /// Exact, but by D sequential passes (autoregressive inversion).
    Sequential,
    /// Not available in closed form.
    Unavailable,
}

/// Which directions a bijection offers, and at what cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Directions {
    /// Cost of `forward` (base → data, sampling).
    pub forward: Cost,
    /// Cost of `inverse` (data → base, density).
    pub inverse: Cost,
}

impl Directions {
    /// Both directions in one pass.
    pub const BOTH_FAST: Directions = Directions { forward: Cost::Fast, inverse: Cost::Fast };

    /// The same capabilities for the inverted map.
    pub fn swapped(self) -> Self {
        Directions { forward: self.inverse, inverse: self.forward }
    }

    /// Combines the capabilities of two maps applied in sequence (the slower of each direction).
    pub fn and(self, other: Directions) -> Self {
        fn worst(a: Cost, b: Cost) -> Cost {
            use Cost::*;
            match (a, b) {
                (Unavailable, _) | (_, Unavailable) => Unavailable,
                (Sequential, _) | (_, Sequential) => Sequential,
                _ => Fast,
            }
        }
        Directions { forward: worst(self.forward, other.forward), inverse: worst(self.inverse, other.inverse) }
    }

    /// The cost of one direction.
    pub fn cost(&self, direction: Direction) -> Cost {
        match direction {
            Direction::Forward => self.forward,
            Direction::Inverse => self.inverse,
        }
    }
}

/// An invertible map with its log-determinant, batched and optionally conditioned.
///
/// Implementors provide the `*_unchecked` passes; callers use [`forward`](Bijection::forward)
/// and [`inverse`](Bijection::inverse), which validate shapes and context first.
pub trait Bijection {
    /// Number of features D.
    fn dim(&self) -> usize;

    /// Context width C (0 for an unconditional bijection, which ignores any context).
    fn context_dim(&self) -> usize {
        0
    }

    /// Which directions exist and how fast they are.
    fn directions(&self) -> Directions {
        Directions::BOTH_FAST
    }

    /// A short human-readable name.
    fn name(&self) -> String;

    /// `T(x)` and `log|det J_T(x)|`, without input validation.
    fn forward_unchecked(&self, x: Tensor<2>, context: Option<&Tensor<2>>) -> Result<Mapped>;

    /// `T⁻¹(y)` and `log|det J_{T⁻¹}(y)|`, without input validation.
    fn inverse_unchecked(&self, y: Tensor<2>, context: Option<&Tensor<2>>) -> Result<Mapped>;

    /// `T(x)` and `log|det J_T(x)|` (base → data).
    fn forward(&self, x: Tensor<2>, context: Option<&Tensor<2>>) -> Result<Mapped> {
        validate_io(self.dim(), self.context_dim(), &x, context)?;
        if self.directions().forward == Cost::Unavailable {
            return Err(FlowError::NotInvertible { bijection: self.name(), direction: Direction::Forward });
        }
        self.forward_unchecked(x, context)
    }

    /// `T⁻¹(y)` and `log|det J_{T⁻¹}(y)|` (data → base).
    fn inverse(&self, y: Tensor<2>, context: Option<&Tensor<2>>) -> Result<Mapped> {
        validate_io(self.dim(), self.context_dim(), &y, context)?;
        if self.directions().inverse == Cost::Unavailable {
            return Err(FlowError::NotInvertible { bijection: self.name(), direction: Direction::Inverse });
        }
        self.inverse_unchecked(y, context)
    }

    /// Applies the given direction.
    fn apply(&self, direction: Direction, x: Tensor<2>, context: Option<&Tensor<2>>) -> Result<Mapped> {
        match direction {
            Direction::Forward => self.forward(x, context),
            Direction::Inverse => self.inverse(x, context),
        }
    }
}

/// Checks a batch `[N, dim]` and its context `[N, context_dim]`.
pub fn validate_io(dim: usize, context_dim: usize, x: &Tensor<2>, context: Option<&Tensor<2>>) -> Result<()> {
    let (n, d) = dims2(x);
    if d != dim {
        return Err(FlowError::DimensionMismatch { what: "input".into(), expected: dim, got: d });
    }
    if context_dim > 0 {
        let c = context.ok_or(FlowError::MissingContext { expected: context_dim })?;
        let (cn, cd) = dims2(c);
        if cd != context_dim {
            return Err(FlowError::DimensionMismatch { what: "context".into(), expected: context_dim, got: cd });
        }
        if cn != n {
            return Err(FlowError::RowMismatch { data_rows: n, context_rows: cn });
        }
    }
    Ok(())
}

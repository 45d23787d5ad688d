//! Bijections: invertible, differentiable maps with tractable log-determinants — the one contract
//! every family of Papamakarios et al. 2021 implements.
//!
//! Conventions:
//! - [`Bijection::forward`] is `T`: base → data. Sampling uses it.
//! - [`Bijection::inverse`] is `T⁻¹`: data → base. Density evaluation uses it.
//! - Both take a batch `[N, D]` (one event per row, flattened in C order; its shape is
//!   [`Bijection::event`] on the data side and [`Bijection::base_event`] on the base side, see
//!   [`crate::event`]) and a [`Call`] (context, random source, mode, tolerances), and return the
//!   output together with the per-sample `log|det J|` of the map that was applied, shape `[N]`. So
//!   for any point, `log|det J_T(u)| = −log|det J_{T⁻¹}(T(u))|`.
//! - [`Bijection::directions`] says how each direction is computed ([`Cost`]); a direction that
//!   does not exist returns [`FlowError::NotInvertible`], never a panic or a silent approximation.
//!   [`Bijection::log_det`] says whether the log-determinant is exact or an unbiased estimate.
//!
//! **An open set of layers.** A layer is one file in this folder holding its configuration (a
//! serde struct implementing [`LayerSpec`], with `new`, `with_…` builders and
//! `init(&device) -> Result<Layer>`) and its module (implementing [`Bijection`]), plus one
//! registration line in the `registry!` list below. Registration makes it a [`LayerConfig`]
//! variant (so flows and model files can hold it) and a [`Layer`] variant.

mod chain;
mod conditioner;

pub use chain::{invert, Chain, ChainConfig, FactorOutConfig, Oriented};
pub use conditioner::{Conditioner, ConditionerConfig};

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

pub use crate::event::{Call, EventShape, Mode, Tolerance};
use crate::error::{Direction, FlowError, Result};
use crate::tensor::dims2;

/// Output and per-sample log|det J|.
pub type Mapped = (Tensor<2>, Tensor<1>);

/// How a direction of a bijection is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Cost {
    /// One pass in closed form.
    ClosedForm,
    /// Exact, but by D sequential passes (autoregressive inversion).
    Sequential,
    /// By an iterative solver run to the call's [`Tolerance`] (fixed point, bisection, ODE
    /// solve); fails with [`FlowError::NotConverged`] rather than return an inaccurate answer.
    Iterative,
    /// Not available.
    Unavailable,
}

impl Cost {
    /// Words for messages.
    pub fn describe(self) -> &'static str {
        match self {
            Cost::ClosedForm => "fast (one pass)",
            Cost::Sequential => "exact, D sequential passes",
            Cost::Iterative => "iterative, to a tolerance",
            Cost::Unavailable => "unavailable",
        }
    }
}

/// Whether a log-determinant is exact or an unbiased stochastic estimate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum LogDet {
    /// Exact (up to rounding, and to the solver tolerance of an iterative direction).
    Exact,
    /// An unbiased estimate drawn with the call's random source (Hutchinson traces, Russian
    /// roulette series): compare its mean over draws with the exact value.
    Estimated,
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
    /// Both directions in closed form.
    pub const CLOSED_FORM: Directions = Directions { forward: Cost::ClosedForm, inverse: Cost::ClosedForm };

    /// The same capabilities for the inverted map.
    pub fn swapped(self) -> Self {
        Directions { forward: self.inverse, inverse: self.forward }
    }

    /// Combines the capabilities of two maps applied in sequence (the costlier of each
    /// direction).
    pub fn and(self, other: Directions) -> Self {
        Directions { forward: self.forward.max(other.forward), inverse: self.inverse.max(other.inverse) }
    }

    /// The cost of one direction.
    pub fn cost(&self, direction: Direction) -> Cost {
        match direction {
            Direction::Forward => self.forward,
            Direction::Inverse => self.inverse,
        }
    }
}

/// An invertible map with its log-determinant, batched, with a call context.
///
/// Implementors provide the `*_unchecked` passes; callers use [`forward`](Bijection::forward)
/// and [`inverse`](Bijection::inverse), which validate shapes, context and availability first.
pub trait Bijection {
    /// Number of features D of an event (the same on both sides: bijections keep the size).
    fn dim(&self) -> usize;

    /// Event shape on the data side (output of `forward`). Default: flat `[D]` — the layer
    /// treats its input as D features, whatever shape the events have.
    fn event(&self) -> EventShape {
        EventShape::flat(self.dim())
    }

    /// Event shape on the base side (input of `forward`); differs from [`event`](Self::event)
    /// for reshaping layers (squeeze).
    fn base_event(&self) -> EventShape {
        self.event()
    }

    /// Context width C (0 for an unconditional bijection, which ignores any context).
    fn context_dim(&self) -> usize {
        0
    }

    /// How each direction is computed.
    fn directions(&self) -> Directions {
        Directions::CLOSED_FORM
    }

    /// Whether the log-determinants returned in `mode` are exact or estimated.
    fn log_det(&self, mode: Mode) -> LogDet {
        let _ = mode;
        LogDet::Exact
    }

    /// A short human-readable name.
    fn name(&self) -> String;

    /// Brings state kept with the weights up to date with them before evaluation (a residual
    /// block's power iterations run to convergence). Default: nothing to do.
    fn settle(&self) -> Result<()> {
        Ok(())
    }

    /// `T(x)` and `log|det J_T(x)|`, without input validation.
    fn forward_unchecked(&self, x: Tensor<2>, call: &Call) -> Result<Mapped>;

    /// `T⁻¹(y)` and `log|det J_{T⁻¹}(y)|`, without input validation.
    fn inverse_unchecked(&self, y: Tensor<2>, call: &Call) -> Result<Mapped>;

    /// `T(x)` and `log|det J_T(x)|` (base → data).
    fn forward(&self, x: Tensor<2>, call: &Call) -> Result<Mapped> {
        validate_io(self.dim(), self.context_dim(), &x, call.context())?;
        if self.directions().forward == Cost::Unavailable {
            return Err(FlowError::NotInvertible { bijection: self.name(), direction: Direction::Forward });
        }
        self.forward_unchecked(x, call)
    }

    /// `T⁻¹(y)` and `log|det J_{T⁻¹}(y)|` (data → base).
    fn inverse(&self, y: Tensor<2>, call: &Call) -> Result<Mapped> {
        validate_io(self.dim(), self.context_dim(), &y, call.context())?;
        if self.directions().inverse == Cost::Unavailable {
            return Err(FlowError::NotInvertible { bijection: self.name(), direction: Direction::Inverse });
        }
        self.inverse_unchecked(y, call)
    }

    /// Applies the given direction.
    fn apply(&self, direction: Direction, x: Tensor<2>, call: &Call) -> Result<Mapped> {
        match direction {
            Direction::Forward => self.forward(x, call),
            Direction::Inverse => self.inverse(x, call),
        }
    }
}

/// Checks a batch `[N, dim]` and its context `[N, context_dim]` (an unconditional bijection
/// ignores any context).
pub fn validate_io(dim: usize, context_dim: usize, x: &Tensor<2>, context: Option<&Tensor<2>>) -> Result<()> {
    let (n, d) = dims2(x);
    if d != dim {
        return Err(FlowError::DimensionMismatch { what: "input".into(), expected: dim, got: d });
    }
    crate::event::check_context_shape(context_dim, context.map(dims2), Some(n), "context", true)
}

/// The configuration of a layer: what [`LayerConfig`], chains and model files need to know
/// without building it. Every registered layer's configuration implements it (and has an inherent
/// `init(&self, device: &Device) -> Result<TheLayer>`, which the registry calls).
pub trait LayerSpec {
    /// Features D.
    fn dim(&self) -> usize;

    /// Checks the settings; a configuration that passes must build.
    fn validate(&self) -> Result<()>;

    /// Context width (0: unconditional).
    fn context_dim(&self) -> usize {
        0
    }

    /// Parameters stored with the weights (trainable ones and running statistics), computed from
    /// the settings: memory estimates before anything is built.
    fn parameter_count(&self) -> usize {
        0
    }

    /// The event shape on the base side given the shape on the data side (default: the same
    /// shape, whose size must be D).
    fn base_event(&self, data: &EventShape) -> Result<EventShape> {
        same_size(self.dim(), data)
    }

    /// The event shape on the data side given the shape on the base side.
    fn data_event(&self, base: &EventShape) -> Result<EventShape> {
        same_size(self.dim(), base)
    }

    /// Whether a training pass depends on the whole batch (batch statistics) or draws random
    /// numbers (dropout), so that splitting a batch into shards would change the result.
    fn batch_dependent(&self) -> bool {
        false
    }

    /// The bound outside which the layer's transformer is the identity (splines), if any.
    fn tail_bound(&self) -> Option<f64> {
        None
    }

    /// Sets the seed `init` draws random weights from (layers without random weights ignore
    /// it). A chain seeds layer `i` from the flow's seed and `i`.
    fn set_seed(&mut self, seed: u64) {
        let _ = seed;
    }
}

/// `shape` when its size is `dim`.
pub fn same_size(dim: usize, shape: &EventShape) -> Result<EventShape> {
    if shape.size() != dim {
        return Err(FlowError::InvalidConfig(format!("a layer on {dim} features cannot act on events of shape {shape}")));
    }
    Ok(*shape)
}

/// `shape` when it is the image `[C, H, W]` (a flat event of that size is read as the image).
pub fn image_event(channels: usize, height: usize, width: usize, shape: &EventShape) -> Result<EventShape> {
    let image = EventShape::image(channels, height, width);
    if *shape != image && *shape != EventShape::flat(image.size()) {
        return Err(FlowError::InvalidConfig(format!("a layer on images {image} cannot act on events of shape {shape}")));
    }
    Ok(image)
}

/// `InvalidConfig` unless `dim ≥ 1`.
pub(crate) fn require_features(dim: usize, what: &str) -> Result<()> {
    if dim == 0 {
        return Err(FlowError::InvalidConfig(format!("{what} with 0 features")));
    }
    Ok(())
}

/// The registry: each line declares a layer's file (module), its [`Layer`] variant (named like
/// its module type) and its configuration type. It generates [`LayerConfig`] and [`Layer`].
macro_rules! registry {
    ($( $(#[$doc:meta])* $module:ident => $variant:ident($config:ident), )*) => {
        $( mod $module; pub use $module::*; )*

        /// Serializable description of one layer (`{"type": "snake_case_name", …settings}`): every
        /// registered layer, plus the inversion of a layer and the factoring out of features
        /// (multi-scale flows).
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "type", rename_all = "snake_case")]
        pub enum LayerConfig {
            $( $(#[$doc])* $variant($config), )*
            /// The inverse of another layer.
            Invert {
                /// The inverted layer.
                layer: Box<LayerConfig>,
            },
            /// Features leaving the chain for the base density (multi-scale flows; see [`Chain`]).
            FactorOut(FactorOutConfig),
        }

        impl LayerConfig {
            /// The inverse of this layer.
            pub fn inverted(self) -> LayerConfig {
                match self {
                    LayerConfig::Invert { layer } => *layer,
                    other => LayerConfig::Invert { layer: Box::new(other) },
                }
            }

            /// The layer's description (`None` for [`LayerConfig::FactorOut`]; an inverted
            /// layer's own description).
            pub fn spec(&self) -> Option<&dyn LayerSpec> {
                match self {
                    $( LayerConfig::$variant(c) => Some(c), )*
                    LayerConfig::Invert { layer } => layer.spec(),
                    LayerConfig::FactorOut(_) => None,
                }
            }

            /// Builds the layer with weights seeded by `seed` (inverted: `inverted` is flipped).
            pub(crate) fn build(&self, seed: u64, device: &Device, inverted: bool) -> Result<Oriented<Layer>> {
                let layer = match self {
                    $( LayerConfig::$variant(c) => {
                        let mut c = c.clone();
                        c.set_seed(seed);
                        Layer::$variant(c.init(device)?)
                    } )*
                    LayerConfig::Invert { layer } => return layer.build(seed, device, !inverted),
                    LayerConfig::FactorOut(_) => {
                        return Err(FlowError::InvalidConfig("a factor-out step is not a layer".into()))
                    }
                };
                Ok(Oriented { inner: layer, inverted })
            }
        }

        /// Every registered bijection: what a [`Chain`] (and so a saved model) holds.
        #[derive(Module, Debug)]
        #[allow(clippy::large_enum_variant)]
        pub enum Layer {
            $( $(#[$doc])* $variant($variant), )*
        }

        impl Bijection for Layer {
            fn dim(&self) -> usize {
                match self { $( Layer::$variant(l) => l.dim(), )* }
            }
            fn event(&self) -> EventShape {
                match self { $( Layer::$variant(l) => l.event(), )* }
            }
            fn base_event(&self) -> EventShape {
                match self { $( Layer::$variant(l) => l.base_event(), )* }
            }
            fn context_dim(&self) -> usize {
                match self { $( Layer::$variant(l) => l.context_dim(), )* }
            }
            fn directions(&self) -> Directions {
                match self { $( Layer::$variant(l) => l.directions(), )* }
            }
            fn log_det(&self, mode: Mode) -> LogDet {
                match self { $( Layer::$variant(l) => l.log_det(mode), )* }
            }
            fn name(&self) -> String {
                match self { $( Layer::$variant(l) => l.name(), )* }
            }
            fn settle(&self) -> Result<()> {
                match self { $( Layer::$variant(l) => l.settle(), )* }
            }
            fn forward_unchecked(&self, x: Tensor<2>, call: &Call) -> Result<Mapped> {
                match self { $( Layer::$variant(l) => l.forward_unchecked(x, call), )* }
            }
            fn inverse_unchecked(&self, y: Tensor<2>, call: &Call) -> Result<Mapped> {
                match self { $( Layer::$variant(l) => l.inverse_unchecked(y, call), )* }
            }
        }
    };
}

registry! {
    /// Learnable diagonal affine map.
    elementwise_affine => ElementwiseAffine(ElementwiseAffineConfig),
    /// A fixed elementwise map (exp, softplus, sigmoid, tanh, box, fixed affine).
    elementwise => Elementwise(ElementwiseConfig),
    /// MADE + transformer (a MAF layer; inverted, an IAF layer).
    autoregressive => MaskedAutoregressive(MaskedAutoregressiveConfig),
    /// Coupling layer (RealNVP, NICE, spline coupling).
    coupling => Coupling(CouplingConfig),
    /// Feature permutation.
    permutation => Permutation(PermutationConfig),
    /// Batch normalisation.
    batch_norm => BatchNorm(BatchNormConfig),
    /// LU-decomposed invertible linear map.
    lu_linear => LuLinear(LuLinearConfig),
    /// Product of Householder reflections.
    householder => Householder(HouseholderConfig),
    /// Planar flow (matrix determinant lemma; no inverse).
    planar => Planar(PlanarConfig),
    /// Radial flow (no inverse).
    radial => Radial(RadialConfig),
    /// Sylvester flow (no inverse).
    sylvester => Sylvester(SylvesterConfig),
    /// Leaky ReLU, elementwise.
    leaky_relu => LeakyRelu(LeakyReluConfig),
    /// Squeeze: 2×2 pixel blocks into channels (image events).
    squeeze => Squeeze(SqueezeConfig),
    /// A fixed affine map with a shift linear in the context (a standardization given x).
    conditional_affine => ConditionalAffine(ConditionalAffineConfig),
    /// Continuous normalizing flow: an ODE solve with the trace of the field's Jacobian.
    cnf => Cnf(CnfConfig),
    /// Contractive residual block (i-ResNet, Residual Flows): fixed-point inverse, series log-dets.
    residual => Residual(ResidualConfig),
    /// Activation normalization: per-feature affine initialized from the first training batch.
    act_norm => ActNorm(ActNormConfig),
    /// Block neural autoregressive flow: a block-triangular monotone network (density only).
    bnaf => Bnaf(BnafConfig),
    /// Invertible 1×1 convolution in LU form (Glow): one C×C matrix on every pixel.
    conv1x1 => InvertibleConv1x1(InvertibleConv1x1Config),
    /// Invertible 1×1 convolution with a full matrix (Glow's plain variant, for comparison).
    conv1x1_plain => PlainConv1x1(PlainConv1x1Config),
    /// Coupling on images with a convolutional conditioner (channel or checkerboard mask).
    conv_coupling => ConvCoupling(ConvCouplingConfig),
}

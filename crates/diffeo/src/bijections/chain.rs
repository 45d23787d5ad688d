//! Composition and inversion.
//!
//! [`Chain`] applies `T = T_K ∘ … ∘ T_1`: `forward` runs `T_1` first, `inverse` runs `T_K⁻¹`
//! first; log-determinants add up, so the cost is O(K). [`Invert`] swaps directions. A chain
//! holds [`Layer`]s, the closed set of bijections that can be saved to a model file; each
//! [`Link`] may be inverted.

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::{
    BatchNorm, BatchNormConfig, Bijection, Coupling, CouplingConfig, Directions, Elementwise, ElementwiseAffine,
    ElementwiseKind, Householder, HouseholderConfig, LuLinear, LuLinearConfig, Mapped, MaskedAutoregressive, MaskedAutoregressiveConfig, NormMode, Permutation, Planar,
    PlanarConfig, Radial, RadialConfig, Sylvester, SylvesterConfig,
};
use crate::error::{FlowError, Result};

/// The inverse of a bijection: `forward` is the wrapped `inverse` and vice versa.
#[derive(Module, Debug)]
pub struct Invert<T: Module> {
    /// The wrapped bijection.
    pub inner: T,
}

impl<T: Module + Bijection> Invert<T> {
    /// Wraps `inner`.
    pub fn new(inner: T) -> Self {
        Self { inner }
    }
}

impl<T: Module + Bijection> Bijection for Invert<T> {
    fn dim(&self) -> usize {
        self.inner.dim()
    }
    fn context_dim(&self) -> usize {
        self.inner.context_dim()
    }
    fn directions(&self) -> Directions {
        self.inner.directions().swapped()
    }
    fn name(&self) -> String {
        format!("Invert({})", self.inner.name())
    }
    fn forward_unchecked(&self, x: Tensor<2>, context: Option<&Tensor<2>>) -> Result<Mapped> {
        self.inner.inverse_unchecked(x, context)
    }
    fn inverse_unchecked(&self, y: Tensor<2>, context: Option<&Tensor<2>>) -> Result<Mapped> {
        self.inner.forward_unchecked(y, context)
    }
}

/// Serializable description of one layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LayerConfig {
    /// Learnable diagonal affine map.
    ElementwiseAffine {
        /// Features.
        dim: usize,
    },
    /// A fixed elementwise map.
    Elementwise {
        /// Features.
        dim: usize,
        /// Which map.
        kind: ElementwiseKind,
    },
    /// MADE + transformer (MAF layer; inverted, an IAF layer).
    MaskedAutoregressive(MaskedAutoregressiveConfig),
    /// Coupling layer.
    Coupling(CouplingConfig),
    /// Feature permutation.
    Permutation {
        /// `y_i = x_{perm[i]}`.
        perm: Vec<usize>,
    },
    /// Batch normalisation.
    BatchNorm(BatchNormConfig),
    /// Planar residual layer (no inverse).
    Planar(PlanarConfig),
    /// Radial residual layer (no inverse).
    Radial(RadialConfig),
    /// Sylvester residual layer (no inverse).
    Sylvester(SylvesterConfig),
    /// LU-decomposed invertible linear map.
    LuLinear(LuLinearConfig),
    /// Product of Householder reflections.
    Householder(HouseholderConfig),
    /// The inverse of another layer.
    Invert {
        /// The inverted layer.
        layer: Box<LayerConfig>,
    },
}

impl LayerConfig {
    /// Features.
    pub fn dim(&self) -> usize {
        match self {
            LayerConfig::ElementwiseAffine { dim } | LayerConfig::Elementwise { dim, .. } => *dim,
            LayerConfig::MaskedAutoregressive(c) => c.dim,
            LayerConfig::Coupling(c) => c.dim,
            LayerConfig::Permutation { perm } => perm.len(),
            LayerConfig::BatchNorm(c) => c.dim,
            LayerConfig::Planar(c) => c.dim,
            LayerConfig::Radial(c) => c.dim,
            LayerConfig::Sylvester(c) => c.dim,
            LayerConfig::LuLinear(c) => c.dim,
            LayerConfig::Householder(c) => c.dim,
            LayerConfig::Invert { layer } => layer.dim(),
        }
    }

    /// Context width.
    pub fn context_dim(&self) -> usize {
        match self {
            LayerConfig::MaskedAutoregressive(c) => c.context_dim,
            LayerConfig::Coupling(c) => c.context_dim,
            LayerConfig::Invert { layer } => layer.context_dim(),
            _ => 0,
        }
    }

    /// The inverse of this layer.
    pub fn inverted(self) -> LayerConfig {
        match self {
            LayerConfig::Invert { layer } => *layer,
            other => LayerConfig::Invert { layer: Box::new(other) },
        }
    }

    /// Checks the configuration.
    pub fn validate(&self) -> Result<()> {
        match self {
            LayerConfig::ElementwiseAffine { dim } if *dim == 0 => {
                Err(FlowError::InvalidConfig("layer with 0 features".into()))
            }
            LayerConfig::Elementwise { dim, kind } => {
                if *dim == 0 {
                    return Err(FlowError::InvalidConfig("layer with 0 features".into()));
                }
                if let ElementwiseKind::Box { low, high } = kind {
                    if low.len() != *dim || high.len() != *dim {
                        return Err(FlowError::InvalidConfig(format!("box bounds need {dim} entries each")));
                    }
                    if low.iter().zip(high).any(|(l, h)| l >= h || !l.is_finite() || !h.is_finite()) {
                        return Err(FlowError::InvalidConfig("box bounds need finite low < high".into()));
                    }
                }
                if let ElementwiseKind::Affine { shift, scale } = kind {
                    if shift.len() != *dim || scale.len() != *dim {
                        return Err(FlowError::InvalidConfig(format!("affine shift and scale need {dim} entries each")));
                    }
                    if shift.iter().any(|s| !s.is_finite()) || scale.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
                        return Err(FlowError::InvalidConfig("affine needs finite shifts and finite scales > 0".into()));
                    }
                }
                Ok(())
            }
            LayerConfig::MaskedAutoregressive(c) => c.validate(),
            LayerConfig::Coupling(c) => c.validate(),
            LayerConfig::Permutation { perm } => Permutation::validate(perm),
            LayerConfig::BatchNorm(c) if c.dim == 0 || c.eps.is_nan() || c.eps <= 0.0 || !(0.0..=1.0).contains(&c.momentum) => {
                Err(FlowError::InvalidConfig("batch norm needs D ≥ 1, ε > 0 and momentum in [0, 1]".into()))
            }
            LayerConfig::Planar(c) if c.dim == 0 => Err(FlowError::InvalidConfig("layer with 0 features".into())),
            LayerConfig::Radial(c) if c.dim == 0 => Err(FlowError::InvalidConfig("layer with 0 features".into())),
            LayerConfig::Sylvester(c) => c.validate(),
            LayerConfig::LuLinear(c) => c.validate(),
            LayerConfig::Householder(c) => c.validate(),
            LayerConfig::Invert { layer } => layer.validate(),
            _ => Ok(()),
        }
    }

    fn build(&self, rng: &mut StdRng, device: &Device, inverted: bool) -> Link {
        let layer = match self {
            LayerConfig::ElementwiseAffine { dim } => Layer::ElementwiseAffine(ElementwiseAffine::new(*dim, device)),
            LayerConfig::Elementwise { dim, kind } => Layer::Elementwise(Elementwise::new(kind.clone(), *dim, device)),
            LayerConfig::MaskedAutoregressive(c) => Layer::MaskedAutoregressive(c.init_with(rng, device)),
            LayerConfig::Coupling(c) => Layer::Coupling(c.init_with(rng, device)),
            LayerConfig::Permutation { perm } => Layer::Permutation(Permutation::new(perm.clone(), device)),
            LayerConfig::BatchNorm(c) => Layer::BatchNorm(c.init(device)),
            LayerConfig::Planar(c) => Layer::Planar(c.init_with(rng, device)),
            LayerConfig::Radial(c) => Layer::Radial(c.init_with(rng, device)),
            LayerConfig::Sylvester(c) => Layer::Sylvester(c.init_with(rng, device)),
            LayerConfig::LuLinear(c) => Layer::LuLinear(c.init(device)),
            LayerConfig::Householder(c) => Layer::Householder(c.init_with(rng, device)),
            LayerConfig::Invert { layer } => return layer.build(rng, device, !inverted),
        };
        Link { layer, inverted }
    }
}

/// Every bijection a [`Chain`] (and so a saved model) can hold.
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Layer {
    /// See [`ElementwiseAffine`].
    ElementwiseAffine(ElementwiseAffine),
    /// See [`Elementwise`].
    Elementwise(Elementwise),
    /// See [`MaskedAutoregressive`].
    MaskedAutoregressive(MaskedAutoregressive),
    /// See [`Coupling`].
    Coupling(Coupling),
    /// See [`Permutation`].
    Permutation(Permutation),
    /// See [`BatchNorm`].
    BatchNorm(BatchNorm),
    /// See [`Planar`].
    Planar(Planar),
    /// See [`Radial`].
    Radial(Radial),
    /// See [`Sylvester`].
    Sylvester(Sylvester),
    /// See [`LuLinear`].
    LuLinear(LuLinear),
    /// See [`Householder`].
    Householder(Householder),
}

macro_rules! dispatch {
    ($self:expr, $l:ident => $e:expr) => {
        match $self {
            Layer::ElementwiseAffine($l) => $e,
            Layer::Elementwise($l) => $e,
            Layer::MaskedAutoregressive($l) => $e,
            Layer::Coupling($l) => $e,
            Layer::Permutation($l) => $e,
            Layer::BatchNorm($l) => $e,
            Layer::Planar($l) => $e,
            Layer::Radial($l) => $e,
            Layer::Sylvester($l) => $e,
            Layer::LuLinear($l) => $e,
            Layer::Householder($l) => $e,
        }
    };
}

impl Bijection for Layer {
    fn dim(&self) -> usize {
        dispatch!(self, l => l.dim())
    }
    fn context_dim(&self) -> usize {
        dispatch!(self, l => l.context_dim())
    }
    fn directions(&self) -> Directions {
        dispatch!(self, l => l.directions())
    }
    fn name(&self) -> String {
        dispatch!(self, l => l.name())
    }
    fn forward_unchecked(&self, x: Tensor<2>, context: Option<&Tensor<2>>) -> Result<Mapped> {
        dispatch!(self, l => l.forward_unchecked(x, context))
    }
    fn inverse_unchecked(&self, y: Tensor<2>, context: Option<&Tensor<2>>) -> Result<Mapped> {
        dispatch!(self, l => l.inverse_unchecked(y, context))
    }
}

/// One element of a [`Chain`]: a layer, possibly inverted.
#[derive(Module, Debug)]
pub struct Link {
    /// The layer.
    pub layer: Layer,
    /// Whether the layer is applied inverted.
    pub inverted: bool,
}

impl Bijection for Link {
    fn dim(&self) -> usize {
        self.layer.dim()
    }
    fn context_dim(&self) -> usize {
        self.layer.context_dim()
    }
    fn directions(&self) -> Directions {
        let d = self.layer.directions();
        if self.inverted { d.swapped() } else { d }
    }
    fn name(&self) -> String {
        if self.inverted { format!("Invert({})", self.layer.name()) } else { self.layer.name() }
    }
    fn forward_unchecked(&self, x: Tensor<2>, context: Option<&Tensor<2>>) -> Result<Mapped> {
        if self.inverted { self.layer.inverse_unchecked(x, context) } else { self.layer.forward_unchecked(x, context) }
    }
    fn inverse_unchecked(&self, y: Tensor<2>, context: Option<&Tensor<2>>) -> Result<Mapped> {
        if self.inverted { self.layer.forward_unchecked(y, context) } else { self.layer.inverse_unchecked(y, context) }
    }
}

/// `T = T_K ∘ … ∘ T_1` over [`Link`]s.
#[derive(Module, Debug)]
pub struct Chain {
    /// The links, `T_1` first.
    pub links: Vec<Link>,
    /// Features D.
    pub dim: usize,
}

impl Chain {
    /// Builds a chain from layer configurations; layer `i` draws its weights from a generator
    /// seeded by `(seed, i)`. All layers must share the feature count `dim`.
    pub fn from_configs(dim: usize, configs: &[LayerConfig], seed: u64, device: &Device) -> Result<Self> {
        for (i, c) in configs.iter().enumerate() {
            c.validate().map_err(|e| FlowError::InvalidConfig(format!("layer {i}: {e}")))?;
            if c.dim() != dim {
                return Err(FlowError::InvalidConfig(format!(
                    "layer {i} has {} features, the flow has {dim}",
                    c.dim()
                )));
            }
        }
        let links = configs
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut rng = StdRng::seed_from_u64(seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                c.build(&mut rng, device, false)
            })
            .collect();
        Ok(Self { links, dim })
    }

    /// Sets the mode of every [`BatchNorm`] in the chain.
    pub fn set_norm_mode(&mut self, mode: NormMode) {
        for link in &mut self.links {
            if let Layer::BatchNorm(b) = &mut link.layer {
                b.set_mode(mode);
            }
        }
    }
}

impl Bijection for Chain {
    fn dim(&self) -> usize {
        self.dim
    }
    fn context_dim(&self) -> usize {
        self.links.iter().map(|l| l.context_dim()).max().unwrap_or(0)
    }
    fn directions(&self) -> Directions {
        self.links.iter().fold(Directions::BOTH_FAST, |acc, l| acc.and(l.directions()))
    }
    fn name(&self) -> String {
        format!("Chain[{}]", self.links.iter().map(|l| l.name()).collect::<Vec<_>>().join(", "))
    }
    fn forward_unchecked(&self, x: Tensor<2>, context: Option<&Tensor<2>>) -> Result<Mapped> {
        compose(self.links.iter(), x, |l, h| l.forward_unchecked(h, context))
    }
    fn inverse_unchecked(&self, y: Tensor<2>, context: Option<&Tensor<2>>) -> Result<Mapped> {
        compose(self.links.iter().rev(), y, |l, h| l.inverse_unchecked(h, context))
    }
}

/// Applies `step` along `links`, summing the log-determinants.
fn compose<'a>(
    links: impl Iterator<Item = &'a Link>,
    x: Tensor<2>,
    step: impl Fn(&'a Link, Tensor<2>) -> Result<Mapped>,
) -> Result<Mapped> {
    let mut total = Tensor::zeros([x.dims()[0]], &x.device());
    let mut h = x;
    for link in links {
        let (y, ld) = step(link, h)?;
        h = y;
        total = total.add(ld);
    }
    Ok((h, total))
}

//! Composition, inversion and multi-scale factoring.
//!
//! [`Chain`] applies `T = T_K ∘ … ∘ T_1`: `forward` runs `T_1` first, `inverse` runs `T_K⁻¹`
//! first; log-determinants add up, so the cost is O(K). Inversion has one representation,
//! [`Oriented`]: a bijection used as given or inverted (in configurations,
//! `{"type": "invert", "layer": …}`).
//!
//! **Multi-scale.** A [`FactorOutConfig`] step between layers sends features to the base density
//! (RealNVP's and Glow's factoring out of half the channels). In the density direction the step
//! sets the last `features` features of the current event aside (for an image in C order: its last
//! channels) and the layers before it (closer to the base) act on the rest; the base vector is the
//! innermost event followed by the parts set aside, innermost first. In the sampling direction each
//! step appends the next part of the base vector to the event. Every layer keeps one event size;
//! the chain maps `[N, D]` base vectors to `[N, D]` data.

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::{Bijection, Call, Directions, EventShape, Layer, LayerConfig, LogDet, Mapped, Mode};
use crate::error::{FlowError, Result};
use crate::tensor::dims2;

/// A bijection used as given (`inverted: false`) or inverted: `forward` is then the wrapped
/// `inverse` and vice versa. The one representation of inversion.
#[derive(Module, Debug)]
pub struct Oriented<T: Module> {
    /// The wrapped bijection.
    pub inner: T,
    /// Whether it is applied inverted.
    pub inverted: bool,
}

impl<T: Module + Bijection> Oriented<T> {
    /// `inner` as given.
    pub fn new(inner: T) -> Self {
        Self { inner, inverted: false }
    }

    /// The inverse of `inner`.
    pub fn inverse_of(inner: T) -> Self {
        Self { inner, inverted: true }
    }
}

/// The inverse of a bijection (an [`Oriented`] with `inverted: true`).
pub fn invert<T: Module + Bijection>(inner: T) -> Oriented<T> {
    Oriented::inverse_of(inner)
}

impl<T: Module + Bijection> Bijection for Oriented<T> {
    fn dim(&self) -> usize {
        self.inner.dim()
    }
    fn event(&self) -> EventShape {
        if self.inverted { self.inner.base_event() } else { self.inner.event() }
    }
    fn base_event(&self) -> EventShape {
        if self.inverted { self.inner.event() } else { self.inner.base_event() }
    }
    fn context_dim(&self) -> usize {
        self.inner.context_dim()
    }
    fn directions(&self) -> Directions {
        let d = self.inner.directions();
        if self.inverted { d.swapped() } else { d }
    }
    fn log_det(&self, mode: Mode) -> LogDet {
        self.inner.log_det(mode)
    }
    fn name(&self) -> String {
        if self.inverted { format!("Invert({})", self.inner.name()) } else { self.inner.name() }
    }
    fn settle(&self) -> Result<()> {
        self.inner.settle()
    }
    fn forward_unchecked(&self, x: Tensor<2>, call: &Call) -> Result<Mapped> {
        if self.inverted { self.inner.inverse_unchecked(x, call) } else { self.inner.forward_unchecked(x, call) }
    }
    fn inverse_unchecked(&self, y: Tensor<2>, call: &Call) -> Result<Mapped> {
        if self.inverted { self.inner.forward_unchecked(y, call) } else { self.inner.inverse_unchecked(y, call) }
    }
}

/// A multi-scale step: `features` features leave the chain for the base (see the module
/// documentation). For image events they must be whole channels.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FactorOutConfig {
    /// Features set aside (for an image, a multiple of H·W).
    pub features: usize,
}

impl FactorOutConfig {
    /// Sets `features` features aside.
    pub fn new(features: usize) -> Self {
        Self { features }
    }
}

/// Description of a [`Chain`]: its data-side event shape and its layers, `T_1` (base side) first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChainConfig {
    /// Event shape on the data side.
    pub event: EventShape,
    /// The layers and factor-out steps, `T_1` first.
    pub layers: Vec<LayerConfig>,
    /// Seed of the weights: layer `i` draws from a generator seeded by `(seed, i)`.
    #[serde(default)]
    pub seed: u64,
}

/// `seed` mixed with a layer's position (the seeding every chain has used since the first
/// release, so that a configuration always builds the same weights).
pub(crate) fn layer_seed(seed: u64, index: usize) -> u64 {
    seed ^ (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

impl ChainConfig {
    /// A chain of `layers` on flat events of `dim` features.
    pub fn new(dim: usize, layers: Vec<LayerConfig>) -> Self {
        Self { event: EventShape::flat(dim), layers, seed: 0 }
    }

    /// A chain on events of the given shape.
    pub fn with_event(mut self, event: EventShape) -> Self {
        self.event = event;
        self
    }

    /// Sets the seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Checks every layer's settings and that the event shapes fit together, walking from the
    /// data side; returns the shape on the base side of `T_1` (without the factored-out parts).
    pub fn base_event(&self) -> Result<EventShape> {
        if self.event.size() == 0 {
            return Err(FlowError::InvalidConfig("a flow needs at least one feature".into()));
        }
        let mut shape = self.event;
        for (i, layer) in self.layers.iter().enumerate().rev() {
            let at = |e: FlowError| FlowError::InvalidConfig(format!("layer {i}: {}", strip_invalid(&e)));
            shape = match layer {
                LayerConfig::FactorOut(f) => {
                    if f.features == 0 {
                        return Err(at(FlowError::InvalidConfig("a factor-out step needs at least one feature".into())));
                    }
                    shape.without_last(f.features).map_err(at)?
                }
                other => {
                    let spec = other
                        .spec()
                        .ok_or_else(|| at(FlowError::InvalidConfig("a factor-out step cannot be inverted".into())))?;
                    spec.validate().map_err(at)?;
                    let inverted = is_inverted(other);
                    if spec.dim() != shape.size() {
                        return Err(FlowError::InvalidConfig(format!(
                            "layer {i} has {} features, the events there have {} (shape {shape})",
                            spec.dim(),
                            shape.size()
                        )));
                    }
                    if inverted { spec.data_event(&shape) } else { spec.base_event(&shape) }.map_err(at)?
                }
            };
        }
        Ok(shape)
    }

    /// Builds the chain.
    pub fn init(&self, device: &Device) -> Result<Chain> {
        let base = self.base_event()?;
        let mut layers = Vec::new();
        let mut join = Vec::new();
        let mut pending = 0;
        for (i, c) in self.layers.iter().enumerate() {
            match c {
                LayerConfig::FactorOut(f) => pending += f.features,
                other => {
                    layers.push(other.build(layer_seed(self.seed, i), device, false)?);
                    join.push(pending);
                    pending = 0;
                }
            }
        }
        let trailing = pending;
        Ok(Chain { layers, dim: self.event.size(), initial: base.size(), join, trailing })
    }
}

/// Whether an `Invert` nesting ends up inverted (an odd number of `Invert`s).
fn is_inverted(c: &LayerConfig) -> bool {
    match c {
        LayerConfig::Invert { layer } => !is_inverted(layer),
        _ => false,
    }
}

fn strip_invalid(e: &FlowError) -> String {
    match e {
        FlowError::InvalidConfig(m) => m.clone(),
        other => other.to_string(),
    }
}

/// `T = T_K ∘ … ∘ T_1` over [`Oriented`] [`Layer`]s, with optional factor-out steps.
#[derive(Module, Debug)]
pub struct Chain {
    /// The layers, `T_1` first.
    pub layers: Vec<Oriented<Layer>>,
    /// Features D of the data (and base) vectors.
    pub dim: usize,
    /// Features `T_1` acts on (D without multi-scale steps).
    pub initial: usize,
    /// Features of the base vector joining the event before layer `i` (sampling direction).
    #[module(skip)]
    pub join: Vec<usize>,
    /// Features joining after the last layer.
    pub trailing: usize,
}

impl Chain {
    /// Whether the chain has multi-scale steps.
    fn factored(&self) -> bool {
        self.initial != self.dim
    }
}

impl Bijection for Chain {
    fn dim(&self) -> usize {
        self.dim
    }
    fn event(&self) -> EventShape {
        match self.layers.last() {
            Some(l) if !self.factored() && self.trailing == 0 => l.event(),
            _ => EventShape::flat(self.dim),
        }
    }
    fn base_event(&self) -> EventShape {
        match self.layers.first() {
            Some(l) if !self.factored() => l.base_event(),
            _ => EventShape::flat(self.dim),
        }
    }
    fn context_dim(&self) -> usize {
        self.layers.iter().map(|l| l.context_dim()).max().unwrap_or(0)
    }
    fn directions(&self) -> Directions {
        self.layers.iter().fold(Directions::CLOSED_FORM, |acc, l| acc.and(l.directions()))
    }
    fn log_det(&self, mode: Mode) -> LogDet {
        self.layers.iter().map(|l| l.log_det(mode)).max().unwrap_or(LogDet::Exact)
    }
    fn name(&self) -> String {
        format!("Chain[{}]", self.layers.iter().map(|l| l.name()).collect::<Vec<_>>().join(", "))
    }
    fn settle(&self) -> Result<()> {
        self.layers.iter().try_for_each(|l| l.settle())
    }

    fn forward_unchecked(&self, u: Tensor<2>, call: &Call) -> Result<Mapped> {
        let (n, _) = dims2(&u);
        let mut total: Tensor<1> = Tensor::zeros([n], &u.device());
        if !self.factored() {
            let mut h = u;
            for layer in &self.layers {
                let (y, ld) = layer.forward_unchecked(h, call)?;
                h = y;
                total = total.add(ld);
            }
            return Ok((h, total));
        }
        let mut offset = self.initial;
        let mut h = u.clone().narrow(1, 0, offset);
        for (layer, &join) in self.layers.iter().zip(&self.join) {
            if join > 0 {
                h = Tensor::cat(vec![h, u.clone().narrow(1, offset, join)], 1);
                offset += join;
            }
            let (y, ld) = layer.forward_unchecked(h, call)?;
            h = y;
            total = total.add(ld);
        }
        if self.trailing > 0 {
            h = Tensor::cat(vec![h, u.narrow(1, offset, self.trailing)], 1);
        }
        Ok((h, total))
    }

    fn inverse_unchecked(&self, x: Tensor<2>, call: &Call) -> Result<Mapped> {
        let (n, _) = dims2(&x);
        let mut total: Tensor<1> = Tensor::zeros([n], &x.device());
        if !self.factored() {
            let mut h = x;
            for layer in self.layers.iter().rev() {
                let (y, ld) = layer.inverse_unchecked(h, call)?;
                h = y;
                total = total.add(ld);
            }
            return Ok((h, total));
        }
        // Parts set aside, outermost first; the base vector lists them innermost first.
        let mut parts = Vec::new();
        let mut h = x;
        let split = |h: Tensor<2>, features: usize, parts: &mut Vec<Tensor<2>>| {
            let width = dims2(&h).1;
            parts.push(h.clone().narrow(1, width - features, features));
            h.narrow(1, 0, width - features)
        };
        if self.trailing > 0 {
            h = split(h, self.trailing, &mut parts);
        }
        for (layer, &join) in self.layers.iter().zip(&self.join).rev() {
            let (y, ld) = layer.inverse_unchecked(h, call)?;
            h = y;
            total = total.add(ld);
            if join > 0 {
                h = split(h, join, &mut parts);
            }
        }
        parts.push(h);
        parts.reverse();
        Ok((Tensor::cat(parts, 1), total))
    }
}

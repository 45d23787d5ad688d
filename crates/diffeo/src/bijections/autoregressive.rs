//! Masked autoregressive layers (MAF, Papamakarios et al. 2017; IAF, Kingma et al. 2016).
//!
//! The layer defines `x_i = τ(u_i; θ_i(x_{<i}, c))` with θ from MADE: the conditioner reads
//! the *data* side. Hence:
//! - `inverse` (data → base) is one pass: `u = τ⁻¹(x; θ(x, c))` (fast: MAF's density).
//! - `forward` (base → data) needs D sequential passes (exact).
//!
//! IAF is the same layer inverted ([`crate::bijections::Invert`], or `inverted: true` in a
//! [`crate::bijections::LayerConfig`]): fast sampling, sequential density.

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::{Bijection, Call, ConditionerConfig, Conditioner, Cost, Directions, LayerSpec, Mapped};
use crate::error::{FlowError, Result};
use crate::event::Tolerance;
use crate::nn::Made;
use crate::tensor::{dims2, indices, sum_rows};
use crate::transformer::Transformer;

/// Configuration of one masked autoregressive layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MaskedAutoregressiveConfig {
    /// Features D.
    pub dim: usize,
    /// Context width C (0: unconditional).
    #[serde(default)]
    pub context_dim: usize,
    /// The conditioner network (MADE).
    #[serde(flatten)]
    pub conditioner: ConditionerConfig,
    /// Autoregressive order: `order[i]` ∈ 1..=D is the position of feature `i`
    /// (a permutation of 1..=D).
    pub order: Vec<usize>,
    /// The elementwise transformer.
    #[serde(default)]
    pub transformer: Transformer,
    /// MADE's hidden units numbered in order of degree (new layers; files without the field keep
    /// the cyclic numbering they were trained with). The same masks up to a relabeling of the
    /// units, but each weight matrix is then a staircase whose zero blocks the CPU kernels skip.
    #[serde(default)]
    pub sorted_units: bool,
    /// Seed of the weights (set by the chain; not stored).
    #[serde(skip)]
    pub seed: u64,
}

impl MaskedAutoregressiveConfig {
    /// Natural order 1..=D, affine transformer, ReLU MADE with the given hidden widths.
    pub fn new(dim: usize, hidden: Vec<usize>) -> Self {
        Self {
            dim,
            context_dim: 0,
            conditioner: ConditionerConfig::new(hidden),
            order: (1..=dim).collect(),
            transformer: Transformer::Affine,
            sorted_units: true,
            seed: 0,
        }
    }

    super::conditioner::conditioned_layer_builders!();

    /// Sets the autoregressive order (a permutation of 1..=D).
    pub fn with_order(mut self, order: Vec<usize>) -> Self {
        self.order = order;
        self
    }

    /// Builds the layer (last conditioner layer zero: identity start).
    pub fn init(&self, device: &Device) -> Result<MaskedAutoregressive> {
        self.validate()?;
        let made = self
            .conditioner
            .made(&self.order, self.context_dim, self.transformer.params_per_dim(), self.seed)
            .with_sorted_units(self.sorted_units)
            .init(device)?;
        Ok(MaskedAutoregressive {
            made,
            transformer: self.transformer.clone(),
            dim: self.dim,
            context_dim: self.context_dim,
            order: self.order.clone(),
        })
    }
}

impl LayerSpec for MaskedAutoregressiveConfig {
    fn dim(&self) -> usize {
        self.dim
    }

    fn validate(&self) -> Result<()> {
        super::require_features(self.dim, "an autoregressive layer")?;
        let mut sorted = self.order.clone();
        sorted.sort_unstable();
        if sorted != (1..=self.dim).collect::<Vec<_>>() {
            return Err(FlowError::InvalidConfig(format!(
                "autoregressive order must be a permutation of 1..={}, got {:?}",
                self.dim, self.order
            )));
        }
        self.transformer.validate()?;
        self.conditioner.validate()
    }

    fn context_dim(&self) -> usize {
        self.context_dim
    }

    fn parameter_count(&self) -> usize {
        self.conditioner.made(&self.order, self.context_dim, self.transformer.params_per_dim(), 0).parameter_count()
    }

    fn batch_dependent(&self) -> bool {
        self.conditioner.random_in_training()
    }

    fn tail_bound(&self) -> Option<f64> {
        self.transformer.tail_bound()
    }

    fn set_seed(&mut self, seed: u64) {
        self.seed = seed;
    }
}

/// A masked autoregressive layer: MADE conditioner + elementwise transformer.
#[derive(Module, Debug)]
pub struct MaskedAutoregressive {
    /// The conditioner.
    pub made: Made,
    /// The elementwise transformer.
    #[module(skip)]
    pub transformer: Transformer,
    /// Features D.
    pub dim: usize,
    /// Context width.
    pub context_dim: usize,
    /// Autoregressive order (`order[i]`: the position of feature `i`, 1-based).
    #[module(skip)]
    pub order: Vec<usize>,
}

impl Bijection for MaskedAutoregressive {
    fn dim(&self) -> usize {
        self.dim
    }

    fn context_dim(&self) -> usize {
        self.context_dim
    }

    fn directions(&self) -> Directions {
        let forward = if self.transformer.is_numerical() {
            Cost::Iterative
        } else if self.dim <= 1 {
            Cost::ClosedForm
        } else {
            Cost::Sequential
        };
        Directions { forward, inverse: Cost::ClosedForm }
    }

    fn name(&self) -> String {
        format!("MaskedAutoregressive({})", self.transformer.name())
    }

    /// Sequential: D passes, each fixing the next feature of the order (the transformer runs on
    /// that feature's column only). MADE is evaluated in order of degree ([`Made::sweep`]), so
    /// the passes together cost about one network evaluation; ResMADE takes D full passes.
    fn forward_unchecked(&self, u: Tensor<2>, call: &Call) -> Result<Mapped> {
        let ctx = if self.context_dim > 0 { call.context() } else { None };
        let (n, d) = dims2(&u);
        if d <= 1 {
            let params = self.made.forward(u.zeros_like(), ctx);
            let (x, ld) = self.transformer.forward(u, &params, &call.tolerance())?;
            return Ok((x, sum_rows(ld)));
        }
        let tolerance = call.tolerance();
        let mut ld: Option<Tensor<2>> = None;
        let swept = self.made.sweep(&self.order, n, ctx, |feature, theta| {
            let (xc, lc) = self.transformer.forward(u.clone().narrow(1, feature, 1), &theta, &tolerance)?;
            ld = Some(match ld.take() {
                Some(total) => total.add(lc),
                None => lc,
            });
            Ok(xc)
        })?;
        if let Some(columns) = swept {
            return Ok((Tensor::cat(columns, 1), sum_rows(ld.expect("at least one pass"))));
        }
        self.forward_full_passes(u, ctx, &tolerance)
    }

    /// One pass.
    fn inverse_unchecked(&self, x: Tensor<2>, call: &Call) -> Result<Mapped> {
        let ctx = if self.context_dim > 0 { call.context() } else { None };
        let params = self.made.params(x.clone(), ctx);
        let (u, ld) = self.transformer.inverse(x, &params);
        Ok((u, sum_rows(ld)))
    }
}

impl MaskedAutoregressive {
    /// The sampling direction by D full passes of MADE (the reference for [`Made::sweep`], and
    /// the method for ResMADE).
    pub fn forward_full_passes(&self, u: Tensor<2>, context: Option<&Tensor<2>>, tolerance: &Tolerance) -> Result<Mapped> {
        let ctx = if self.context_dim > 0 { context } else { None };
        let (n, d) = dims2(&u);
        let p = self.transformer.params_per_dim();
        let mut by_position = vec![0; d];
        for (feature, &position) in self.order.iter().enumerate() {
            by_position[position - 1] = feature;
        }
        let device = u.device();
        let mut x = u.zeros_like();
        let mut ld: Option<Tensor<2>> = None;
        for &c in &by_position {
            let params = self.made.forward(x.clone(), ctx);
            let cols: Vec<usize> = (0..p).map(|q| q * d + c).collect();
            let params_c = params.select(1, indices(&cols, &device));
            let (xc, lc) = self.transformer.forward(u.clone().narrow(1, c, 1), &params_c, tolerance)?;
            x = x.slice_assign([0..n, c..c + 1], xc);
            ld = Some(match ld {
                Some(total) => total.add(lc),
                None => lc,
            });
        }
        Ok((x, sum_rows(ld.expect("at least one pass"))))
    }
}

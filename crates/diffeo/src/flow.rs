//! Normalizing flows: a base density pushed through a bijection,
//! `log p_x(x | c) = log p_u(T⁻¹(x; c)) + log|det J_{T⁻¹}(x; c)|`.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Device, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::bijections::{
    Bijection, Chain, Cost, CouplingConfig, Directions, ElementwiseKind, LayerConfig, MaskedAutoregressiveConfig, NormMode, Permutation,
};
use crate::distributions::{Base, BaseConfig};
use crate::error::{Direction, FlowError, Result};
use crate::nn::{Activation, Mlp};
use crate::tensor::{check_finite, dims2, repeat_rows, vector};
use crate::transformer::Transformer;

/// An MLP applied to the context before it reaches the conditioners.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingConfig {
    /// Hidden widths.
    pub hidden: Vec<usize>,
    /// Width of the embedding the conditioners see.
    pub output_dim: usize,
    /// Nonlinearity.
    #[serde(default)]
    pub activation: Activation,
}

/// Per-feature mean and standard deviation of a data set, for standardizing data and context.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Standardization {
    /// Means.
    pub mean: Vec<f64>,
    /// Standard deviations (constant columns get 1, so they are only centred).
    pub std: Vec<f64>,
}

impl Standardization {
    /// Statistics of `values` (row-major, `dim` columns). Errors on an empty set or on
    /// non-finite values.
    pub fn of(values: &[f64], dim: usize) -> Result<Self> {
        if dim == 0 || values.is_empty() || values.len() % dim != 0 {
            return Err(FlowError::Empty { what: "data to standardize".into() });
        }
        let n = (values.len() / dim) as f64;
        let mut mean = vec![0.0; dim];
        for row in values.chunks_exact(dim) {
            for (m, v) in mean.iter_mut().zip(row) {
                *m += v;
            }
        }
        mean.iter_mut().for_each(|m| *m /= n);
        let mut var = vec![0.0; dim];
        for row in values.chunks_exact(dim) {
            for ((s, v), m) in var.iter_mut().zip(row).zip(&mean) {
                *s += (v - m) * (v - m);
            }
        }
        let std: Vec<f64> = var
            .iter()
            .zip(&mean)
            .map(|(s, m)| {
                let sd = (s / n).sqrt();
                if sd > 1e-12 * (1.0 + m.abs()) { sd } else { 1.0 }
            })
            .collect();
        if mean.iter().chain(&std).any(|v| !v.is_finite()) {
            return Err(FlowError::InvalidConfig("data statistics are not finite".into()));
        }
        Ok(Self { mean, std })
    }

    /// Features.
    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// `(x − mean) / std`, row-major in place.
    pub fn apply(&self, values: &mut [f64]) {
        let d = self.dim();
        for row in values.chunks_exact_mut(d) {
            for ((v, m), s) in row.iter_mut().zip(&self.mean).zip(&self.std) {
                *v = (*v - m) / s;
            }
        }
    }

    /// The layer `x = mean + std ⊙ z` (standardized → original units), to end a flow with.
    pub fn layer(&self) -> LayerConfig {
        LayerConfig::Elementwise {
            dim: self.dim(),
            kind: ElementwiseKind::Affine { shift: self.mean.clone(), scale: self.std.clone() },
        }
    }
}

/// Architecture of a [`Flow`]: everything needed to rebuild it (weights aside).
#[derive(Config, Debug, PartialEq)]
pub struct FlowConfig {
    /// Features D.
    pub dim: usize,
    /// The layers `T_1, …, T_K` (`T_1` acts on base samples first).
    pub layers: Vec<LayerConfig>,
    /// Raw context width C (0: unconditional).
    #[config(default = 0)]
    pub context_dim: usize,
    /// Base density.
    #[config(default = "BaseConfig::StandardNormal")]
    pub base: BaseConfig,
    /// Optional context embedding network.
    #[config(default = "None")]
    pub embedding: Option<EmbeddingConfig>,
    /// Seed of the weight initialisation.
    #[config(default = 0)]
    pub seed: u64,
    /// Standardization applied to the raw context before the embedding and conditioners.
    #[config(default = "None")]
    pub context_standardization: Option<Standardization>,
}

impl FlowConfig {
    /// Whether a training pass depends on the whole batch at once (batch norm's statistics) or
    /// draws random numbers (dropout), so that splitting a batch would change the result.
    pub fn batch_dependent(&self) -> bool {
        fn dependent(layer: &LayerConfig) -> bool {
            match layer {
                LayerConfig::BatchNorm(_) => true,
                LayerConfig::MaskedAutoregressive(c) => c.dropout > 0.0,
                LayerConfig::Coupling(c) => c.dropout > 0.0,
                LayerConfig::Invert { layer } => dependent(layer),
                _ => false,
            }
        }
        self.layers.iter().any(dependent)
    }

    /// Appends a fixed affine layer mapping standardized values to the data's units, so that
    /// the flow models standardized data while its densities and samples are in the original
    /// units (the layer's log-det is part of every density).
    pub fn standardized(mut self, data: &Standardization) -> Self {
        self.layers.push(data.layer());
        self
    }

    /// Width of the context as the conditioners see it.
    pub fn conditioner_context_dim(&self) -> usize {
        match &self.embedding {
            Some(e) => e.output_dim,
            None => self.context_dim,
        }
    }

    /// Checks that the configuration describes a valid flow.
    pub fn validate(&self) -> Result<()> {
        if self.dim == 0 {
            return Err(FlowError::InvalidConfig("a flow needs at least one feature".into()));
        }
        self.base.validate()?;
        if let Some(s) = &self.context_standardization {
            if s.mean.len() != self.context_dim || s.std.len() != self.context_dim {
                return Err(FlowError::InvalidConfig("context standardization needs one entry per context column".into()));
            }
            if s.mean.iter().any(|v| !v.is_finite()) || s.std.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
                return Err(FlowError::InvalidConfig("context standardization needs finite means and stds > 0".into()));
            }
        }
        if let Some(e) = &self.embedding {
            if self.context_dim == 0 {
                return Err(FlowError::InvalidConfig("a context embedding needs context_dim > 0".into()));
            }
            if e.output_dim == 0 || e.hidden.contains(&0) {
                return Err(FlowError::InvalidConfig("embedding widths must be positive".into()));
            }
        }
        let cc = self.conditioner_context_dim();
        for (i, l) in self.layers.iter().enumerate() {
            l.validate().map_err(|e| FlowError::InvalidConfig(format!("layer {i}: {e}")))?;
            if l.dim() != self.dim {
                return Err(FlowError::InvalidConfig(format!(
                    "layer {i} has {} features, the flow has {}",
                    l.dim(),
                    self.dim
                )));
            }
            if l.context_dim() != 0 && l.context_dim() != cc {
                return Err(FlowError::InvalidConfig(format!(
                    "layer {i} expects a context of width {}, the flow provides {cc}",
                    l.context_dim()
                )));
            }
        }
        Ok(())
    }

    /// Builds the flow, or explains why the configuration is invalid.
    pub fn try_init(&self, device: &Device) -> Result<Flow> {
        self.validate()?;
        let transform = Chain::from_configs(self.dim, &self.layers, self.seed, device)?;
        let base = self.base.init(self.dim, self.seed, device);
        let embedding = self.embedding.as_ref().map(|e| {
            let mut rng = StdRng::seed_from_u64(self.seed ^ 0xE3B0_C442);
            Mlp::new(self.context_dim, &e.hidden, e.output_dim, e.activation, false, &mut rng, device)
        });
        Ok(Flow { base, transform, embedding, config: self.clone() })
    }

    /// Builds the flow.
    ///
    /// # Panics
    /// If the configuration is invalid; use [`FlowConfig::try_init`] for configurations that
    /// come from users or files.
    pub fn init(&self, device: &Device) -> Flow {
        self.try_init(device).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// A normalizing flow `x = T(u; c)`, `u ~ p_u`.
#[derive(Module, Debug)]
pub struct Flow {
    /// Base density p_u.
    pub base: Base,
    /// The bijection T (base → data).
    pub transform: Chain,
    /// Optional context embedding.
    pub embedding: Option<Mlp>,
    #[module(skip)]
    config: FlowConfig,
}

impl Flow {
    /// Features D.
    pub fn dim(&self) -> usize {
        self.config.dim
    }

    /// Raw context width C (0: unconditional).
    pub fn context_dim(&self) -> usize {
        self.config.context_dim
    }

    /// The architecture.
    pub fn config(&self) -> &FlowConfig {
        &self.config
    }

    /// Directions of T: `inverse` is used by densities, `forward` by sampling.
    pub fn directions(&self) -> Directions {
        self.transform.directions()
    }

    /// The device holding the parameters.
    pub fn device(&self) -> Device {
        self.devices().into_iter().next().unwrap_or_default()
    }

    /// The same flow with dropout switched off everywhere, so that it is a deterministic map
    /// even on an autodiff device (e.g. to differentiate the trained map exactly).
    pub fn without_dropout(self) -> Self {
        struct Off;
        impl burn::module::ModuleMapper for Off {
            fn map_flag(
                &mut self,
                _flag: burn::module::Param<burn::module::Flag>,
            ) -> burn::module::Param<burn::module::Flag> {
                burn::module::Param::from_bool(false)
            }
        }
        self.map(&mut Off)
    }

    /// Sets the mode of every batch-norm layer ([`NormMode::Evaluation`] for inference).
    pub fn set_norm_mode(&mut self, mode: NormMode) {
        self.transform.set_norm_mode(mode);
    }

    /// Validates a data batch and its context: widths, rows, presence of context, finiteness.
    pub fn check_inputs(&self, x: &Tensor<2>, context: Option<&Tensor<2>>) -> Result<()> {
        let (n, d) = dims2(x);
        if d != self.dim() {
            return Err(FlowError::DimensionMismatch { what: "data".into(), expected: self.dim(), got: d });
        }
        if n == 0 {
            return Err(FlowError::Empty { what: "data".into() });
        }
        check_finite(x, "data")?;
        self.check_context(context, Some(n))
    }

    fn check_context(&self, context: Option<&Tensor<2>>, rows: Option<usize>) -> Result<()> {
        match (self.context_dim(), context) {
            (0, None) => Ok(()),
            (0, Some(c)) => Err(FlowError::UnexpectedContext { got: dims2(c).1 }),
            (k, None) => Err(FlowError::MissingContext { expected: k }),
            (k, Some(c)) => {
                let (cn, cd) = dims2(c);
                if cd != k {
                    return Err(FlowError::DimensionMismatch { what: "context".into(), expected: k, got: cd });
                }
                if let Some(n) = rows {
                    if cn != n {
                        return Err(FlowError::RowMismatch { data_rows: n, context_rows: cn });
                    }
                }
                if cn == 0 {
                    return Err(FlowError::Empty { what: "context".into() });
                }
                check_finite(c, "context")
            }
        }
    }

    fn embed(&self, context: Option<&Tensor<2>>) -> Option<Tensor<2>> {
        let mut c = context?.clone();
        if let Some(s) = &self.config.context_standardization {
            let device = c.device();
            c = c.sub(vector(s.mean.clone(), &device).unsqueeze()).div(vector(s.std.clone(), &device).unsqueeze());
        }
        Some(match &self.embedding {
            Some(mlp) => mlp.forward(c),
            None => c,
        })
    }

    /// `T⁻¹(x; c)` and `log|det J_{T⁻¹}|` (data → base), context embedding included, inputs
    /// validated.
    pub fn to_base(&self, x: Tensor<2>, context: Option<&Tensor<2>>) -> Result<(Tensor<2>, Tensor<1>)> {
        self.check_inputs(&x, context)?;
        self.require(Direction::Inverse)?;
        let ctx = self.embed(context);
        self.transform.inverse_unchecked(x, ctx.as_ref())
    }

    /// `T(u; c)` and `log|det J_T|` (base → data), context embedding included, inputs
    /// validated.
    pub fn from_base(&self, u: Tensor<2>, context: Option<&Tensor<2>>) -> Result<(Tensor<2>, Tensor<1>)> {
        self.check_inputs(&u, context)?;
        self.require(Direction::Forward)?;
        let ctx = self.embed(context);
        self.transform.forward_unchecked(u, ctx.as_ref())
    }

    fn require(&self, direction: Direction) -> Result<()> {
        if self.directions().cost(direction) == Cost::Unavailable {
            return Err(FlowError::NotInvertible { bijection: self.transform.name(), direction });
        }
        Ok(())
    }

    /// `log p(x | c)` per row, `[N]`. Validates the inputs (including finiteness).
    pub fn log_prob(&self, x: Tensor<2>, context: Option<&Tensor<2>>) -> Result<Tensor<1>> {
        self.check_inputs(&x, context)?;
        self.log_prob_unchecked(x, context)
    }

    /// `log p(x | c)` without validating the inputs (for training loops that validated the
    /// whole data set once).
    pub fn log_prob_unchecked(&self, x: Tensor<2>, context: Option<&Tensor<2>>) -> Result<Tensor<1>> {
        self.require(Direction::Inverse)?;
        let ctx = self.embed(context);
        let (u, ld) = self.transform.inverse_unchecked(x, ctx.as_ref())?;
        Ok(self.base.log_prob(u).add(ld))
    }

    /// Repeats each context row `n` times (row `j` covers output rows `j·n .. (j+1)·n`).
    fn expand_context(&self, n: usize, context: Option<&Tensor<2>>) -> Result<(usize, Option<Tensor<2>>)> {
        if n == 0 {
            return Err(FlowError::Empty { what: "sample request (n = 0)".into() });
        }
        self.check_context(context, None)?;
        Ok(match context {
            None => (n, None),
            Some(c) => (n * dims2(c).0, Some(repeat_rows(c, n))),
        })
    }

    /// Draws `n` samples per context row (`[n·M, D]` for a context of M rows; `[n, D]` for an
    /// unconditional flow or a single context row).
    pub fn sample(&self, n: usize, context: Option<&Tensor<2>>, rng: &mut StdRng) -> Result<Tensor<2>> {
        self.require(Direction::Forward)?;
        let (total, ctx) = self.expand_context(n, context)?;
        let u = self.base.sample(total, rng, &self.device())?;
        let ctx = self.embed(ctx.as_ref());
        Ok(self.transform.forward_unchecked(u, ctx.as_ref())?.0)
    }

    /// Samples and their log-densities in one pass: `log q(x) = log p_u(u) − log|det J_T(u)|`.
    pub fn sample_and_log_prob(
        &self,
        n: usize,
        context: Option<&Tensor<2>>,
        rng: &mut StdRng,
    ) -> Result<(Tensor<2>, Tensor<1>)> {
        self.require(Direction::Forward)?;
        let (total, ctx) = self.expand_context(n, context)?;
        let u = self.base.sample(total, rng, &self.device())?;
        let lp = self.base.log_prob(u.clone());
        let ctx = self.embed(ctx.as_ref());
        let (x, ld) = self.transform.forward_unchecked(u, ctx.as_ref())?;
        Ok((x, lp.sub(ld)))
    }
}

fn lu_layer(dim: usize, rng: &mut StdRng) -> LayerConfig {
    LayerConfig::LuLinear(crate::bijections::LuLinearConfig { dim, perm: Permutation::random_order(dim, rng) })
}

fn embedding_or_none(context_dim: usize, embedding: &Option<EmbeddingConfig>) -> usize {
    match embedding {
        Some(e) => e.output_dim,
        None => context_dim,
    }
}

/// Masked autoregressive flow (Papamakarios et al. 2017), or with `iaf` set, inverse
/// autoregressive flow (Kingma et al. 2016).
///
/// Defaults: 5 transforms, MADE with 2 hidden layers of 128 ReLU units, affine transformer
/// (soft-clipped log-scale), orders alternating natural/reversed between layers (as zuko),
/// standard-normal base, no batch norm. MAF evaluates densities in one pass and samples in D
/// passes; IAF the opposite.
#[derive(Config, Debug)]
pub struct MafConfig {
    /// Features D.
    pub dim: usize,
    /// Number of autoregressive layers K.
    #[config(default = 5)]
    pub transforms: usize,
    /// Hidden widths of each MADE.
    #[config(default = "vec![128, 128]")]
    pub hidden: Vec<usize>,
    /// Raw context width C.
    #[config(default = 0)]
    pub context_dim: usize,
    /// Optional context embedding.
    #[config(default = "None")]
    pub embedding: Option<EmbeddingConfig>,
    /// Random orders per layer instead of alternating natural/reversed.
    #[config(default = false)]
    pub random_orders: bool,
    /// Batch normalisation after each autoregressive layer (density direction), as in the MAF
    /// paper.
    #[config(default = false)]
    pub batch_norm: bool,
    /// Invert every layer: IAF (fast sampling, D-pass densities).
    #[config(default = false)]
    pub iaf: bool,
    /// An LU-decomposed linear layer (with a random fixed permutation) before every transform
    /// but the first, as in the NSF paper.
    #[config(default = false)]
    pub lu: bool,
    /// Residual blocks in each MADE (ResMADE; 0: plain MADE, `hidden` widths as given).
    #[config(default = 0)]
    pub residual_blocks: usize,
    /// Dropout inside the residual blocks.
    #[config(default = 0.0)]
    pub dropout: f64,
    /// Elementwise transformer.
    #[config(default = "Transformer::Affine")]
    pub transformer: Transformer,
    /// Hidden nonlinearity.
    #[config(default = "Activation::Relu")]
    pub activation: Activation,
    /// Base density.
    #[config(default = "BaseConfig::StandardNormal")]
    pub base: BaseConfig,
    /// Seed for orders and weights.
    #[config(default = 0)]
    pub seed: u64,
}

impl MafConfig {
    /// The full architecture.
    pub fn flow_config(&self) -> FlowConfig {
        let cc = embedding_or_none(self.context_dim, &self.embedding);
        let mut rng = StdRng::seed_from_u64(self.seed ^ 0x0DE5);
        let mut layers = Vec::new();
        for k in 0..self.transforms {
            let order: Vec<usize> = if self.random_orders {
                Permutation::random_order(self.dim, &mut rng).into_iter().map(|i| i + 1).collect()
            } else if k % 2 == 0 {
                (1..=self.dim).collect()
            } else {
                (1..=self.dim).rev().collect()
            };
            let mut layer = LayerConfig::MaskedAutoregressive(MaskedAutoregressiveConfig {
                dim: self.dim,
                context_dim: cc,
                hidden: self.hidden.clone(),
                order,
                transformer: self.transformer.clone(),
                activation: self.activation,
                residual_blocks: self.residual_blocks,
                dropout: self.dropout,
            });
            if self.iaf {
                layer = layer.inverted();
            }
            if self.batch_norm && k > 0 {
                layers.push(LayerConfig::BatchNorm(crate::bijections::BatchNormConfig::new(self.dim)));
            }
            if self.lu && k > 0 {
                layers.push(lu_layer(self.dim, &mut rng));
            }
            layers.push(layer);
        }
        FlowConfig {
            dim: self.dim,
            layers,
            context_dim: self.context_dim,
            base: self.base.clone(),
            embedding: self.embedding.clone(),
            seed: self.seed,
            context_standardization: None,
        }
    }

    /// Builds the flow (panics on an invalid configuration; see [`FlowConfig::try_init`]).
    pub fn init(&self, device: &Device) -> Flow {
        self.flow_config().init(device)
    }
}

/// Coupling flow: RealNVP (affine, Dinh et al. 2017) or NICE (additive, Dinh et al. 2014).
///
/// Defaults: 6 coupling layers with checkerboard masks alternating parity (as zuko), an MLP
/// conditioner with 2 hidden layers of 128 ReLU units, affine transformer, standard-normal base.
/// Both directions are one pass. Needs D ≥ 2.
#[derive(Config, Debug)]
pub struct RealNvpConfig {
    /// Features D (≥ 2).
    pub dim: usize,
    /// Number of coupling layers.
    #[config(default = 6)]
    pub transforms: usize,
    /// Hidden widths of each conditioner.
    #[config(default = "vec![128, 128]")]
    pub hidden: Vec<usize>,
    /// Raw context width C.
    #[config(default = 0)]
    pub context_dim: usize,
    /// Optional context embedding.
    #[config(default = "None")]
    pub embedding: Option<EmbeddingConfig>,
    /// Additive coupling (NICE) instead of affine; NICE ends with a learnable diagonal scale.
    /// Overrides `transformer`.
    #[config(default = false)]
    pub additive: bool,
    /// Elementwise transformer (affine: RealNVP; spline: NSF coupling).
    #[config(default = "Transformer::Affine")]
    pub transformer: Transformer,
    /// An LU-decomposed linear layer (with a random fixed permutation) before every coupling
    /// layer but the first, as in the NSF paper.
    #[config(default = false)]
    pub lu: bool,
    /// Residual blocks in each conditioner (0: plain MLP).
    #[config(default = 0)]
    pub residual_blocks: usize,
    /// Dropout inside the residual blocks.
    #[config(default = 0.0)]
    pub dropout: f64,
    /// A random permutation before each coupling layer (instead of alternating masks only).
    #[config(default = false)]
    pub random_permutations: bool,
    /// Batch normalisation between coupling layers.
    #[config(default = false)]
    pub batch_norm: bool,
    /// Hidden nonlinearity.
    #[config(default = "Activation::Relu")]
    pub activation: Activation,
    /// Base density.
    #[config(default = "BaseConfig::StandardNormal")]
    pub base: BaseConfig,
    /// Seed for permutations and weights.
    #[config(default = 0)]
    pub seed: u64,
}

impl RealNvpConfig {
    /// The full architecture.
    pub fn flow_config(&self) -> FlowConfig {
        let cc = embedding_or_none(self.context_dim, &self.embedding);
        let mut rng = StdRng::seed_from_u64(self.seed ^ 0x4EA1);
        let mut layers = Vec::new();
        let transformer = if self.additive { Transformer::Additive } else { self.transformer.clone() };
        for k in 0..self.transforms {
            if self.random_permutations && k > 0 {
                layers.push(LayerConfig::Permutation { perm: Permutation::random_order(self.dim, &mut rng) });
            }
            if self.batch_norm && k > 0 {
                layers.push(LayerConfig::BatchNorm(crate::bijections::BatchNormConfig::new(self.dim)));
            }
            if self.lu && k > 0 {
                layers.push(lu_layer(self.dim, &mut rng));
            }
            let mask = (0..self.dim).map(|i| (i + k) % 2 == 0).collect();
            layers.push(LayerConfig::Coupling(CouplingConfig {
                dim: self.dim,
                context_dim: cc,
                hidden: self.hidden.clone(),
                mask,
                transformer: transformer.clone(),
                activation: self.activation,
                residual_blocks: self.residual_blocks,
                dropout: self.dropout,
            }));
        }
        if self.additive {
            layers.push(LayerConfig::ElementwiseAffine { dim: self.dim });
        }
        FlowConfig {
            dim: self.dim,
            layers,
            context_dim: self.context_dim,
            base: self.base.clone(),
            embedding: self.embedding.clone(),
            seed: self.seed,
            context_standardization: None,
        }
    }

    /// Builds the flow (panics on an invalid configuration; see [`FlowConfig::try_init`]).
    pub fn init(&self, device: &Device) -> Flow {
        self.flow_config().init(device)
    }
}

/// A MAF with `transforms` layers and the given hidden widths (other settings default).
pub fn maf(dim: usize, transforms: usize, hidden: Vec<usize>) -> MafConfig {
    MafConfig::new(dim).with_transforms(transforms).with_hidden(hidden)
}

/// An IAF: [`maf`] with every layer inverted.
pub fn iaf(dim: usize, transforms: usize, hidden: Vec<usize>) -> MafConfig {
    maf(dim, transforms, hidden).with_iaf(true)
}

/// A RealNVP with `transforms` coupling layers and the given hidden widths.
pub fn realnvp(dim: usize, transforms: usize, hidden: Vec<usize>) -> RealNvpConfig {
    RealNvpConfig::new(dim).with_transforms(transforms).with_hidden(hidden)
}

/// Neural spline flow, autoregressive (RQ-NSF (AR), Durkan et al. 2019): a MAF whose layers use
/// the rational-quadratic spline transformer (8 bins, tail bound 5), with LU layers between them.
pub fn nsf(dim: usize, transforms: usize, hidden: Vec<usize>) -> MafConfig {
    maf(dim, transforms, hidden).with_transformer(Transformer::spline()).with_lu(true)
}

/// Neural spline flow with coupling layers (RQ-NSF (C)): spline couplings with LU layers
/// between them.
pub fn nsf_coupling(dim: usize, transforms: usize, hidden: Vec<usize>) -> RealNvpConfig {
    realnvp(dim, transforms, hidden).with_transformer(Transformer::spline()).with_lu(true)
}

/// NICE: additive coupling layers and a final learnable diagonal scale.
pub fn nice(dim: usize, transforms: usize, hidden: Vec<usize>) -> RealNvpConfig {
    realnvp(dim, transforms, hidden).with_additive(true)
}

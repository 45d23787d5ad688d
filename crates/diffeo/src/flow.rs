//! Normalizing flows: a base density pushed through a bijection,
//! `log p_x(x | c) = log p_u(T⁻¹(x; c)) + log|det J_{T⁻¹}(x; c)|`.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Device, Tensor};
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::bijections::{
    Bijection, Call, Chain, ChainConfig, Cost, Directions, ElementwiseConfig, ElementwiseKind, EventShape, LayerConfig, LogDet, Mode,
};
use crate::dequantization::{Dequantizer, DequantizerConfig};
use crate::distributions::{Base, BaseConfig, BaseKind};
use crate::error::{Direction, FlowError, Result};
use crate::nn::{Activation, Mlp, MlpConfig, NetworkConfig};
use crate::tensor::{check_finite, dims2, logsumexp_rows, repeat_rows, vector};

pub use crate::families::{iaf, maf, nice, nsf, nsf_coupling, realnvp, MafConfig, RealNvpConfig};

/// A network applied to the context before it reaches the conditioners: an MLP `e(c)`, or — for
/// a context made of `groups` exchangeable draws `c = (c_1, …, c_G)` — DeepSets,
/// `e(c) = (1/G) Σ_g φ(c_g)` with an MLP φ (permutation invariant; the conditioners act as ρ).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingConfig {
    /// Hidden widths.
    pub hidden: Vec<usize>,
    /// Width of the embedding the conditioners see.
    pub output_dim: usize,
    /// Nonlinearity.
    #[serde(default)]
    pub activation: Activation,
    /// Exchangeable draws in the context (0 or 1: a plain MLP on the whole context).
    #[serde(default)]
    pub groups: usize,
}

impl EmbeddingConfig {
    /// An MLP embedding.
    pub fn mlp(hidden: Vec<usize>, output_dim: usize) -> Self {
        Self { hidden, output_dim, activation: Activation::Relu, groups: 0 }
    }

    /// A DeepSets embedding of a context made of `groups` draws.
    pub fn deep_sets(groups: usize, hidden: Vec<usize>, output_dim: usize) -> Self {
        Self { hidden, output_dim, activation: Activation::Relu, groups }
    }

    /// Draws the context is split into (1 for an MLP embedding).
    pub fn group_count(&self) -> usize {
        self.groups.max(1)
    }
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
        LayerConfig::Elementwise(ElementwiseConfig::new(
            self.dim(),
            ElementwiseKind::Affine { shift: self.mean.clone(), scale: self.std.clone() },
        ))
    }
}

/// Architecture of a [`Flow`]: everything needed to rebuild it (weights aside).
#[derive(Config, Debug, PartialEq)]
pub struct FlowConfig {
    /// Features D.
    pub dim: usize,
    /// The layers `T_1, …, T_K` (`T_1` acts on base samples first), possibly with factor-out
    /// steps (multi-scale).
    pub layers: Vec<LayerConfig>,
    /// Raw context width C (0: unconditional).
    #[config(default = 0)]
    pub context_dim: usize,
    /// Base density.
    #[config(default = "BaseKind::StandardNormal")]
    pub base: BaseKind,
    /// Optional context embedding network.
    #[config(default = "None")]
    pub embedding: Option<EmbeddingConfig>,
    /// Seed of the weight initialisation.
    #[config(default = 0)]
    pub seed: u64,
    /// Standardization applied to the raw context before the embedding and conditioners.
    #[config(default = "None")]
    pub context_standardization: Option<Standardization>,
    /// Shape of a data event (default, and in files written before it existed: flat `[dim]`).
    #[config(default = "None")]
    pub event: Option<EventShape>,
    /// The noise flow of variational dequantization, trained with the flow (images of discrete
    /// values; `None`: uniform or no dequantization).
    #[config(default = "None")]
    pub dequantizer: Option<DequantizerConfig>,
}

/// Seed of a flow's context embedding, from the flow's seed.
const EMBEDDING_SEED: u64 = 0xE3B0_C442;
/// Seed of a flow's dequantization noise flow, from the flow's seed.
const DEQUANTIZER_SEED: u64 = 0xDE0A_7152;

/// Fewest rows per part when a density batch is split across threads ([`Flow::log_prob_with`]).
const SHARD_ROWS: usize = 1024;

impl FlowConfig {
    /// The data event shape.
    pub fn event_shape(&self) -> EventShape {
        self.event.unwrap_or(EventShape::flat(self.dim))
    }

    /// The transform's description.
    pub fn chain(&self) -> ChainConfig {
        ChainConfig::new(self.dim, self.layers.clone()).with_event(self.event_shape()).with_seed(self.seed)
    }

    /// Whether a training pass depends on the whole batch at once (batch norm's statistics) or
    /// draws random numbers (dropout), so that splitting a batch would change the result.
    pub fn batch_dependent(&self) -> bool {
        self.layers.iter().filter_map(LayerConfig::spec).any(|s| s.batch_dependent())
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

    fn embedding_network(&self, e: &EmbeddingConfig) -> MlpConfig {
        MlpConfig::new(self.context_dim / e.group_count(), NetworkConfig::new(e.hidden.clone()).with_activation(e.activation), e.output_dim).with_seed(self.seed ^ EMBEDDING_SEED)
    }

    /// Parameters stored with the weights, computed from the configuration (before building
    /// anything).
    pub fn parameter_count(&self) -> usize {
        let layers: usize = self.layers.iter().filter_map(LayerConfig::spec).map(|s| s.parameter_count()).sum();
        let embedding = self.embedding.as_ref().map_or(0, |e| self.embedding_network(e).parameter_count());
        let dequantizer = self.dequantizer.as_ref().map_or(0, DequantizerConfig::parameter_count);
        layers + embedding + dequantizer + self.base.parameter_count(self.dim)
    }

    /// The spline tail bound of the first layer that has one.
    pub fn tail_bound(&self) -> Option<f64> {
        self.layers.iter().filter_map(LayerConfig::spec).find_map(|s| s.tail_bound())
    }

    /// Checks that the configuration describes a valid flow.
    pub fn validate(&self) -> Result<()> {
        if self.dim == 0 {
            return Err(FlowError::InvalidConfig("a flow needs at least one feature".into()));
        }
        if self.event_shape().size() != self.dim {
            return Err(FlowError::InvalidConfig(format!("the event shape {} does not have {} features", self.event_shape(), self.dim)));
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
            if self.context_dim % e.group_count() != 0 {
                return Err(FlowError::InvalidConfig(format!(
                    "a context of {} values cannot be split into {} equal draws",
                    self.context_dim,
                    e.group_count()
                )));
            }
        }
        if let Some(q) = &self.dequantizer {
            q.validate()?;
            if q.event() != self.event_shape() {
                return Err(FlowError::InvalidConfig(format!(
                    "the dequantization flow acts on events {}, the flow's are {}",
                    q.event(),
                    self.event_shape()
                )));
            }
        }
        self.chain().base_event()?;
        let cc = self.conditioner_context_dim();
        for (i, l) in self.layers.iter().enumerate() {
            let Some(spec) = l.spec() else { continue };
            if spec.context_dim() != 0 && spec.context_dim() != cc {
                return Err(FlowError::InvalidConfig(format!(
                    "layer {i} expects a context of width {}, the flow provides {cc}",
                    spec.context_dim()
                )));
            }
        }
        Ok(())
    }

    /// Builds the flow, or explains why the configuration is invalid.
    pub fn init(&self, device: &Device) -> Result<Flow> {
        self.validate()?;
        let transform = self.chain().init(device)?;
        let base = BaseConfig::new(self.dim, self.base.clone()).with_seed(self.seed).init(device)?;
        let embedding = self.embedding.as_ref().map(|e| self.embedding_network(e).init(device)).transpose()?;
        let dequantizer = self.dequantizer.as_ref().map(|q| q.clone().with_seed(self.seed ^ DEQUANTIZER_SEED).init(device)).transpose()?;
        Ok(Flow { base, transform, embedding, dequantizer, config: self.clone() })
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
    /// The noise flow of variational dequantization, if the flow was built with one.
    pub dequantizer: Option<Dequantizer>,
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

    /// The data event shape.
    pub fn event(&self) -> EventShape {
        self.config.event_shape()
    }

    /// Whether log-densities evaluated in `mode` are exact or estimated.
    pub fn log_det(&self, mode: Mode) -> LogDet {
        self.transform.log_det(mode)
    }

    /// Trainable parameters.
    pub fn parameter_count(&self) -> usize {
        self.num_params()
    }

    /// The names of the transform's layers, `T_1` first.
    pub fn layer_names(&self) -> Vec<String> {
        self.transform.layers.iter().map(|l| l.name()).collect()
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
        crate::event::check_context_shape(self.context_dim(), context.map(dims2), rows, "context", false)?;
        match context {
            Some(c) => check_finite(c, "context"),
            None => Ok(()),
        }
    }

    /// The context as the layers see it: standardized and embedded.
    pub fn embedded_context(&self, context: Option<&Tensor<2>>) -> Option<Tensor<2>> {
        self.embed(context)
    }

    fn embed(&self, context: Option<&Tensor<2>>) -> Option<Tensor<2>> {
        let mut c = context?.clone();
        if let Some(s) = &self.config.context_standardization {
            let device = c.device();
            c = c.sub(vector(s.mean.clone(), &device).unsqueeze()).div(vector(s.std.clone(), &device).unsqueeze());
        }
        let groups = self.config.embedding.as_ref().map_or(1, EmbeddingConfig::group_count);
        Some(match &self.embedding {
            Some(mlp) if groups > 1 => {
                // DeepSets: φ on every draw, averaged over the draws.
                let (n, width) = dims2(&c);
                let phi = mlp.forward(c.reshape([n * groups, width / groups]));
                let out = dims2(&phi).1;
                phi.reshape([n, groups, out]).mean_dim(1).reshape([n, out])
            }
            Some(mlp) => mlp.forward(c),
            None => c,
        })
    }

    /// The call the transform sees: the flow's context embedded.
    fn inner_call(&self, call: Call) -> Call {
        let embedded = self.embed(call.context());
        call.with_optional_context(embedded)
    }

    /// `T⁻¹(x; c)` and `log|det J_{T⁻¹}|` (data → base), context embedding included, inputs
    /// validated.
    pub fn to_base(&self, x: Tensor<2>, context: Option<&Tensor<2>>) -> Result<(Tensor<2>, Tensor<1>)> {
        self.check_inputs(&x, context)?;
        self.to_base_with(x, Call::new().with_optional_context(context.cloned()))
    }

    /// [`to_base`](Self::to_base) under a given call (context, mode, random source, tolerance),
    /// without validating the inputs.
    pub fn to_base_with(&self, x: Tensor<2>, call: Call) -> Result<(Tensor<2>, Tensor<1>)> {
        self.require(Direction::Inverse)?;
        self.transform.inverse_unchecked(x, &self.inner_call(call))
    }

    /// `T(u; c)` and `log|det J_T|` (base → data), context embedding included, inputs
    /// validated.
    pub fn from_base(&self, u: Tensor<2>, context: Option<&Tensor<2>>) -> Result<(Tensor<2>, Tensor<1>)> {
        self.check_inputs(&u, context)?;
        self.from_base_with(u, Call::new().with_optional_context(context.cloned()))
    }

    /// [`from_base`](Self::from_base) under a given call, without validating the inputs.
    pub fn from_base_with(&self, u: Tensor<2>, call: Call) -> Result<(Tensor<2>, Tensor<1>)> {
        self.require(Direction::Forward)?;
        self.transform.forward_unchecked(u, &self.inner_call(call))
    }

    fn require(&self, direction: Direction) -> Result<()> {
        if self.directions().cost(direction) == Cost::Unavailable {
            return Err(FlowError::NotInvertible { bijection: self.transform.name(), direction });
        }
        Ok(())
    }

    /// `log p(x | c)` per row, `[N]` (evaluation mode). Validates the inputs (including
    /// finiteness).
    pub fn log_prob(&self, x: Tensor<2>, context: Option<&Tensor<2>>) -> Result<Tensor<1>> {
        self.check_inputs(&x, context)?;
        self.log_prob_with(x, Call::new().with_optional_context(context.cloned()))
    }

    /// `log p(x | c)` under a given call (its context, mode, random source and tolerance), without
    /// validating the inputs (training loops validate whole data sets once).
    pub fn log_prob_with(&self, x: Tensor<2>, call: Call) -> Result<Tensor<1>> {
        self.require(Direction::Inverse)?;
        let call = self.inner_call(call);
        let shards = self.density_shards(&x, &call);
        if shards > 1 {
            use rayon::prelude::*;
            let n = dims2(&x).0;
            let per = n.div_ceil(shards);
            let work: Vec<(Tensor<2>, Call)> = (0..shards)
                .map(|s| {
                    let (r0, rows) = (s * per, per.min(n - s * per));
                    let context = call.context().map(|c| c.clone().narrow(0, r0, rows));
                    (x.clone().narrow(0, r0, rows), call.clone().with_optional_context(context))
                })
                .collect();
            let parts: Vec<Result<Tensor<1>>> = work.into_par_iter().map(|(x, call)| self.log_prob_rows(x, &call)).collect();
            return Ok(Tensor::cat(parts.into_iter().collect::<Result<Vec<_>>>()?, 0));
        }
        self.log_prob_rows(x, &call)
    }

    /// `log p(x | c)` of rows under an inner call (context embedded).
    fn log_prob_rows(&self, x: Tensor<2>, call: &Call) -> Result<Tensor<1>> {
        let (u, ld) = self.transform.inverse_unchecked(x, call)?;
        Ok(self.base.log_prob_with(u, call).add(ld))
    }

    /// Parts of a batch whose densities are computed in parallel, one chain of layers per thread
    /// (each layer's own kernels are parallel too, but the small operations between them are
    /// not): on the CPU without autodiff, for batches of at least [`SHARD_ROWS`] rows per part,
    /// when every layer's density direction is closed-form and exact and the base draws nothing
    /// (the parts then compute the same rows with the same arithmetic). 1: no split.
    fn density_shards(&self, x: &Tensor<2>, call: &Call) -> usize {
        let threads = rayon::current_num_threads();
        let n = dims2(x).0;
        if threads < 2 || n < 2 * SHARD_ROWS || x.is_autodiff() || !crate::on_cpu(&x.device()) {
            return 1;
        }
        let plain = self.directions().cost(Direction::Inverse) == Cost::ClosedForm
            && self.transform.log_det(call.mode) == LogDet::Exact
            && !matches!(self.base, Base::Resampled(_));
        if plain { threads.min(n / SHARD_ROWS) } else { 1 }
    }

    /// The variational-dequantization bound of discrete rows `quantized` (`k/L`, see
    /// [`crate::dequantization`]) with `samples` draws `u_s ~ q(u | k)` each:
    /// `log (1/S) Σ_s exp(log p(k/L + u_s/L | c) − log q(u_s | k))`, `[N]` (S = 1: the variational
    /// bound training maximizes), in the units of `log p`. Needs a flow built with a
    /// dequantizer; inputs not validated.
    pub fn dequantized_log_prob_with(&self, quantized: Tensor<2>, samples: usize, call: Call) -> Result<Tensor<1>> {
        let Some(q) = &self.dequantizer else {
            return Err(FlowError::InvalidConfig("this flow has no variational dequantization".into()));
        };
        if samples == 0 {
            return Err(FlowError::InvalidConfig("the dequantization bound needs at least one sample".into()));
        }
        let (n, _) = dims2(&quantized);
        let (u, log_q) = q.sample(&quantized, samples, &call)?;
        let y = repeat_rows(&quantized, samples).add(u.div_scalar(q.levels()));
        let context = call.context().map(|c| repeat_rows(c, samples));
        let weights = self.log_prob_with(y, call.with_optional_context(context))?.sub(log_q);
        Ok(if samples == 1 { weights } else { logsumexp_rows(weights.reshape([n, samples])).sub_scalar((samples as f64).ln()) })
    }

    /// `log p(x | c)` in evaluation mode without validating the inputs.
    pub fn log_prob_unchecked(&self, x: Tensor<2>, context: Option<&Tensor<2>>) -> Result<Tensor<1>> {
        self.log_prob_with(x, Call::new().with_optional_context(context.cloned()))
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
        self.sample_with(n, context, rng, Call::new())
    }

    /// [`sample`](Self::sample) under a given call (mode, tolerance, random source, evaluation
    /// count); its context is replaced by `context`, and layers are told that no log-det is
    /// needed.
    pub fn sample_with(&self, n: usize, context: Option<&Tensor<2>>, rng: &mut StdRng, call: Call) -> Result<Tensor<2>> {
        self.sample_at_temperature(n, context, rng, 1.0, call)
    }

    /// Samples at temperature `t`: base draws with their spread scaled by `t` (`N(μ, t²σ²)`)
    /// pushed through `T` (Glow's reduced-temperature samples, `t < 1`, trade diversity for
    /// quality). Needs a Gaussian base unless `t = 1` ([`Base::sample_at_temperature`]).
    pub fn sample_at_temperature(&self, n: usize, context: Option<&Tensor<2>>, rng: &mut StdRng, temperature: f64, call: Call) -> Result<Tensor<2>> {
        if !(temperature.is_finite() && temperature > 0.0) {
            return Err(FlowError::InvalidConfig(format!("the temperature must be positive and finite, got {temperature}")));
        }
        self.require(Direction::Forward)?;
        let (total, ctx) = self.expand_context(n, context)?;
        let u = self.base.sample_at_temperature(total, rng, &self.device(), temperature)?;
        Ok(self.transform.forward_unchecked(u, &self.inner_call(call.with_optional_context(ctx).with_log_det(false)))?.0)
    }

    /// Samples and their log-densities in one pass: `log q(x) = log p_u(u) − log|det J_T(u)|`.
    pub fn sample_and_log_prob(&self, n: usize, context: Option<&Tensor<2>>, rng: &mut StdRng) -> Result<(Tensor<2>, Tensor<1>)> {
        self.sample_and_log_prob_with(n, context, rng, Mode::Evaluation)
    }

    /// [`sample_and_log_prob`](Self::sample_and_log_prob) with the transform in `mode`.
    pub fn sample_and_log_prob_with(
        &self,
        n: usize,
        context: Option<&Tensor<2>>,
        rng: &mut StdRng,
        mode: Mode,
    ) -> Result<(Tensor<2>, Tensor<1>)> {
        self.require(Direction::Forward)?;
        let (total, ctx) = self.expand_context(n, context)?;
        let u = self.base.sample(total, rng, &self.device())?;
        let mut call = Call::new().with_optional_context(ctx).with_mode(mode);
        if matches!(self.base, Base::Resampled(_)) {
            // Fresh normalizer draws per call (other layers keep the call's default source).
            call = call.with_seed(rand::Rng::random(rng));
        }
        let call = self.inner_call(call);
        let lp = self.base.log_prob_with(u.clone(), &call);
        let (x, ld) = self.transform.forward_unchecked(u, &call)?;
        Ok((x, lp.sub(ld)))
    }
}

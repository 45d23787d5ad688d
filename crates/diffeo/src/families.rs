//! The paper's families as ready-made architectures: the builders ([`MafConfig`],
//! [`RealNvpConfig`] and the shortcuts [`maf`], [`iaf`], [`realnvp`], [`nice`], [`nsf`],
//! [`nsf_coupling`]) and the table from family names to architectures that the command line and
//! the Python package share ([`FAMILIES`], [`architecture`], [`VI_FAMILIES`],
//! [`vi_architecture`]). A new family is one entry here; front ends list the names.

use burn::config::Config;
use burn::tensor::Device;
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::bijections::{
    ActNormConfig, BnafConfig, BatchNormConfig, CnfConfig, GradientMethod, Probe, ResidualConfig, ResidualLogDet, Trace, CouplingConfig, ElementwiseAffineConfig, ElementwiseConfig, ElementwiseKind, LayerConfig, LuLinearConfig,
    MaskedAutoregressiveConfig, Permutation, PermutationConfig, PlanarConfig, RadialConfig, SylvesterBasis, SylvesterConfig,
};
use crate::distributions::BaseKind;
use crate::error::{FlowError, Result};
use crate::event::EventShape;
use crate::flow::{EmbeddingConfig, Flow, FlowConfig};
use crate::nn::Activation;
use crate::ode::OdeSettings;
use crate::transformer::{SplineTails, Transformer};

mod images;
pub use images::{GlowConfig, RealNvpImageConfig};

fn lu_layer(dim: usize, rng: &mut StdRng) -> LayerConfig {
    LayerConfig::LuLinear(LuLinearConfig::new(dim).with_perm(Permutation::random_order(dim, rng)))
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
/// Defaults: 5 transforms, MADE with 2 hidden layers of 128 ReLU units (numbered in order of
/// degree), affine transformer with the softplus scale `σ = softplus(a + c) + 0.01`
/// ([`Transformer::SoftplusAffine`], FlowJAX's: better per step than the soft-clipped log-scale on
/// POWER in every seed and no worse on moons and gauss16, `docs/performance.md`; [`iaf`] keeps the
/// soft-clipped log-scale), orders alternating natural/reversed between layers (as zuko),
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
    #[config(default = "Transformer::SoftplusAffine")]
    pub transformer: Transformer,
    /// Hidden nonlinearity.
    #[config(default = "Activation::Relu")]
    pub activation: Activation,
    /// Base density.
    #[config(default = "BaseKind::StandardNormal")]
    pub base: BaseKind,
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
            let mut layer = LayerConfig::MaskedAutoregressive(
                MaskedAutoregressiveConfig::new(self.dim, self.hidden.clone())
                    .with_context_dim(cc)
                    .with_order(order)
                    .with_transformer(self.transformer.clone())
                    .with_activation(self.activation)
                    .with_residual_blocks(self.residual_blocks, self.dropout),
            );
            if self.iaf {
                layer = layer.inverted();
            }
            if self.batch_norm && k > 0 {
                layers.push(LayerConfig::BatchNorm(BatchNormConfig::new(self.dim)));
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
            event: None,
            dequantizer: None,
        }
    }

    /// Builds the flow, or explains why the settings are invalid.
    pub fn init(&self, device: &Device) -> Result<Flow> {
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
    #[config(default = "BaseKind::StandardNormal")]
    pub base: BaseKind,
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
                layers.push(LayerConfig::Permutation(PermutationConfig::new(Permutation::random_order(self.dim, &mut rng))));
            }
            if self.batch_norm && k > 0 {
                layers.push(LayerConfig::BatchNorm(BatchNormConfig::new(self.dim)));
            }
            if self.lu && k > 0 {
                layers.push(lu_layer(self.dim, &mut rng));
            }
            let mask = (0..self.dim).map(|i| (i + k) % 2 == 0).collect();
            layers.push(LayerConfig::Coupling(
                CouplingConfig::new(mask, self.hidden.clone())
                    .with_context_dim(cc)
                    .with_transformer(transformer.clone())
                    .with_activation(self.activation)
                    .with_residual_blocks(self.residual_blocks, self.dropout),
            ));
        }
        if self.additive {
            layers.push(LayerConfig::ElementwiseAffine(ElementwiseAffineConfig::new(self.dim)));
        }
        FlowConfig {
            dim: self.dim,
            layers,
            context_dim: self.context_dim,
            base: self.base.clone(),
            embedding: self.embedding.clone(),
            seed: self.seed,
            context_standardization: None,
            event: None,
            dequantizer: None,
        }
    }

    /// Builds the flow, or explains why the settings are invalid.
    pub fn init(&self, device: &Device) -> Result<Flow> {
        self.flow_config().init(device)
    }
}

/// A MAF with `transforms` layers and the given hidden widths (other settings default).
pub fn maf(dim: usize, transforms: usize, hidden: Vec<usize>) -> MafConfig {
    MafConfig::new(dim).with_transforms(transforms).with_hidden(hidden)
}

/// An IAF: [`maf`] with every layer inverted, affine with the soft-clipped log-scale.
pub fn iaf(dim: usize, transforms: usize, hidden: Vec<usize>) -> MafConfig {
    maf(dim, transforms, hidden).with_iaf(true).with_transformer(Transformer::Affine)
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

/// A family the command line and the Python package can fit by maximum likelihood.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Family {
    /// Name (`maf`, `nsf-coupling`, …).
    pub name: &'static str,
    /// What it is.
    pub about: &'static str,
    /// Layers when none are asked for.
    pub default_transforms: usize,
}

/// The maximum-likelihood families, by name.
pub const FAMILIES: [Family; 15] = [
    Family { name: "maf", about: "masked autoregressive flow (fast density, D-pass sampling)", default_transforms: 5 },
    Family { name: "iaf", about: "inverse autoregressive flow (fast sampling, D-pass density)", default_transforms: 5 },
    Family { name: "realnvp", about: "RealNVP affine coupling (both directions fast)", default_transforms: 6 },
    Family { name: "nice", about: "NICE additive coupling with a final diagonal scale", default_transforms: 6 },
    Family { name: "nsf", about: "neural spline flow, autoregressive: rational-quadratic splines in MADE, LU layers between", default_transforms: 5 },
    Family { name: "nsf-coupling", about: "neural spline flow with spline coupling layers and LU layers between", default_transforms: 6 },
    Family { name: "planar", about: "planar flow (sampling only: no inverse, so no maximum-likelihood fit)", default_transforms: 16 },
    Family { name: "cnf", about: "continuous normalizing flow (FFJORD): ODE solves both ways, exact or Hutchinson traces", default_transforms: 1 },
    Family { name: "residual", about: "residual flow (i-ResNet / Residual Flows): contractive blocks with ActNorm between, fixed-point sampling", default_transforms: 8 },
    Family { name: "naf", about: "neural autoregressive flow: deep sigmoidal transformers in MADE (one-pass density, numerical sampling)", default_transforms: 5 },
    Family { name: "umnn", about: "unconstrained monotonic neural networks in MADE: integrals by Clenshaw-Curtis (one-pass density, numerical sampling)", default_transforms: 5 },
    Family { name: "sos", about: "sum-of-squares polynomial transformers in MADE (one-pass density, numerical sampling)", default_transforms: 5 },
    Family { name: "bnaf", about: "block neural autoregressive flow: block-triangular monotone networks (density only, no sampling)", default_transforms: 1 },
    Family { name: "glow", about: "Glow on images: squeeze, ActNorm, 1x1 convolutions, convolutional affine couplings, multi-scale", default_transforms: 2 },
    Family { name: "realnvp-image", about: "RealNVP's multi-scale image flow: checkerboard and channel convolutional couplings", default_transforms: 2 },
];

/// The families that model images (their events are `[C, H, W]`; `transforms` counts levels).
pub const IMAGE_FAMILIES: [&str; 2] = ["glow", "realnvp-image"];

/// The settings of a family's architecture (what the command line's `fit` flags set).
#[derive(Clone, Debug, PartialEq)]
pub struct FamilySettings {
    /// Family name (see [`FAMILIES`]).
    pub family: String,
    /// Layers (`None`: the family's default).
    pub transforms: Option<usize>,
    /// Hidden widths of the conditioners.
    pub hidden: Vec<usize>,
    /// Hidden nonlinearity.
    pub activation: Activation,
    /// Batch normalisation between layers.
    pub batch_norm: bool,
    /// LU layers between transforms (always on for the spline families).
    pub lu: bool,
    /// Residual blocks in each conditioner.
    pub residual_blocks: usize,
    /// Dropout inside the residual blocks.
    pub dropout: f64,
    /// Spline bins.
    pub bins: usize,
    /// Spline tail bound.
    pub tail_bound: f64,
    /// What the splines are beyond the tail bound (affine for new models).
    pub spline_tails: SplineTails,
    /// Seed of the weights.
    pub seed: u64,
    /// CNF: the trace of the field's Jacobian (`None`: exact up to 10 features, Hutchinson
    /// above).
    pub trace: Option<Trace>,
    /// CNF: Hutchinson probes.
    pub probe: Probe,
    /// CNF: the ODE solver and its tolerances.
    pub ode: OdeSettings,
    /// CNF: RNODE weights of the kinetic energy and of the Jacobian norm (training only).
    pub regularization: (f64, f64),
    /// CNF: gradients through the solves by backpropagation or by the adjoint method.
    pub gradient: GradientMethod,
    /// Residual: the spectral-norm bound of every weight on x, in (0, 1).
    pub lipschitz: f64,
    /// Residual: the training log-determinant.
    pub logdet: ResidualLogDet,
    /// Residual: series terms (series: all; roulette: always computed).
    pub series_terms: usize,
    /// The sizes of the non-affine autoregressive families (naf, umnn, sos, bnaf); the
    /// transformers' tail bound is `tail_bound`.
    pub monotone: MonotoneSizes,
    /// The base density (every family).
    pub base: BaseKind,
    /// The image families: levels (`None`: the family's default).
    pub levels: Option<usize>,
    /// The image families: steps per level (`None`: the family's default).
    pub steps_per_level: Option<usize>,
    /// The image families: hidden channels of the coupling networks.
    pub hidden_channels: usize,
    /// Glow: plain 1×1 convolutions (a full matrix, O(C³) log-det) instead of the LU form.
    pub plain_conv1x1: bool,
}

/// Sizes of the non-affine autoregressive families: the monotone transformers without a
/// closed-form inverse and BNAF's block layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MonotoneSizes {
    /// naf: sigmoid components per transformer.
    pub components: usize,
    /// umnn: hidden units of the integrand.
    pub integrand_hidden: usize,
    /// umnn: quadrature intervals.
    pub nodes: usize,
    /// sos: squared polynomials.
    pub polynomials: usize,
    /// sos: their degree.
    pub degree: usize,
    /// bnaf: hidden units per feature.
    pub block_dim: usize,
    /// bnaf: hidden layers per transform.
    pub block_layers: usize,
}

impl Default for MonotoneSizes {
    /// 8 components; a 16-unit integrand on 32 intervals; 3 polynomials of degree 4; BNAF blocks
    /// of 8 units per feature, 1 hidden layer.
    fn default() -> Self {
        use crate::transformer::monotone::defaults;
        Self {
            components: defaults::COMPONENTS,
            integrand_hidden: defaults::INTEGRAND_HIDDEN,
            nodes: defaults::NODES,
            polynomials: defaults::POLYNOMIALS,
            degree: defaults::DEGREE,
            block_dim: defaults::BLOCK_DIM,
            block_layers: defaults::BLOCK_LAYERS,
        }
    }
}

impl FamilySettings {
    /// Whether the family's transformer is the rational-quadratic spline (`nsf`, `nsf-coupling`):
    /// the families that `bins`, the spline meaning of `tail_bound` and `spline_tails` apply to.
    pub fn has_splines(&self) -> bool {
        matches!(self.family.as_str(), "nsf" | "nsf-coupling")
    }

    /// The defaults of `diffeo fit`: 128×2 ReLU conditioners, 8 bins, tail bound 5; for `cnf`,
    /// zuko's vector field (64×2 ELU) and solver (Dormand–Prince, atol 1e−6, rtol 1e−5).
    pub fn new(family: &str) -> Self {
        let cnf = family == "cnf";
        Self {
            family: family.to_string(),
            transforms: None,
            hidden: if cnf { vec![64, 64] } else { vec![128, 128] },
            activation: if cnf { Activation::Elu } else { Activation::Relu },
            batch_norm: false,
            lu: false,
            residual_blocks: 0,
            dropout: 0.0,
            bins: crate::spline::DEFAULT_BINS,
            tail_bound: crate::spline::DEFAULT_TAIL_BOUND,
            spline_tails: SplineTails::Affine,
            seed: 0,
            trace: None,
            probe: Probe::Rademacher,
            ode: OdeSettings::default(),
            regularization: (0.0, 0.0),
            gradient: GradientMethod::Backprop,
            lipschitz: 0.97,
            logdet: ResidualLogDet::Roulette,
            series_terms: 2,
            monotone: MonotoneSizes::default(),
            base: BaseKind::StandardNormal,
            levels: None,
            steps_per_level: None,
            hidden_channels: 64,
            plain_conv1x1: false,
        }
    }

    /// Whether the family models images.
    pub fn is_image(&self) -> bool {
        IMAGE_FAMILIES.contains(&self.family.as_str())
    }
}

/// The learning rate a fit of family `name` starts from when none is given: 1e−3, and 1e−2
/// for bnaf, whose weight-normalized block layers learn slowly at 1e−3 (FlowJAX's BNAF too: on
/// moons after 1,000 steps test −2.11 at 5e−4, −0.96 at 1e−2).
pub fn default_learning_rate(name: &str) -> f64 {
    if name == "bnaf" {
        1e-2
    } else {
        1e-3
    }
}

/// The minibatch a fit of family `name` uses when none is given: 256, and 64 for the image
/// families (normflows' Glow example's batch; a step on 784-pixel images costs ~100× a tabular one).
pub fn default_batch_size(name: &str) -> usize {
    if IMAGE_FAMILIES.contains(&name) {
        64
    } else {
        256
    }
}

/// The validation interval (steps) of a fit of family `name` when none is given: 100, and 1,000
/// for the image families, whose validation (6,000 MNIST images by default) costs as much as ~30
/// training steps.
pub fn default_eval_every(name: &str) -> usize {
    if IMAGE_FAMILIES.contains(&name) {
        1000
    } else {
        100
    }
}

/// The training settings of a fit of family `name` where none are given: its
/// [`default_learning_rate`], [`default_batch_size`] and [`default_eval_every`], a cosine
/// schedule, the other settings [`FitConfig`](crate::fit::FitConfig)'s defaults. The image
/// families instead keep the full rate for 80 % of the run with a cosine cooldown at the end
/// ([`Schedule::Cooldown`](crate::fit::Schedule::Cooldown)) and validate and return the Polyak
/// average of the weights (decay 0.999): on Fashion-MNIST at 30 minutes 3.453 bits/dim against
/// the cosine's 3.495 (docs/images.md).
pub fn default_fit_config(name: &str) -> crate::fit::FitConfig {
    let config = crate::fit::FitConfig::new()
        .with_learning_rate(default_learning_rate(name))
        .with_batch_size(default_batch_size(name))
        .with_eval_every(default_eval_every(name));
    if IMAGE_FAMILIES.contains(&name) {
        config.with_schedule(crate::fit::Schedule::Cooldown).with_average_decay(Some(0.999))
    } else {
        config.with_schedule(crate::fit::Schedule::Cosine)
    }
}

/// The family called `name`.
pub fn family(name: &str) -> Result<&'static Family> {
    FAMILIES.iter().find(|f| f.name == name).ok_or_else(|| {
        let names: Vec<&str> = FAMILIES.iter().map(|f| f.name).collect();
        FlowError::InvalidConfig(format!("unknown flow family '{name}' (expected one of {})", names.join(", ")))
    })
}

/// The architecture of a new model of `settings.family` on `dim` features with `context_dim`
/// context columns.
pub fn architecture(s: &FamilySettings, dim: usize, context_dim: usize) -> Result<FlowConfig> {
    architecture_for(s, EventShape::flat(dim), context_dim)
}

/// The architecture of a new model of `settings.family` on events of the given shape (the image
/// families need image events) with `context_dim` context columns.
pub fn architecture_for(s: &FamilySettings, event: EventShape, context_dim: usize) -> Result<FlowConfig> {
    let mut config = if s.is_image() { image_layers(s, event, context_dim)? } else { family_layers(s, event.size(), context_dim)? };
    if s.base != BaseKind::StandardNormal {
        s.base.validate()?;
        config.base = s.base.clone();
    }
    Ok(config)
}

/// The layers of an image family.
fn image_layers(s: &FamilySettings, event: EventShape, context_dim: usize) -> Result<FlowConfig> {
    let EventShape::Image { channels, height, width } = event else {
        return Err(FlowError::InvalidConfig(format!(
            "{} models images: fit it on image data (IDX files, .npy arrays [N, C, H, W] or [N, H, W] of 8-bit pixels)",
            s.family
        )));
    };
    let defaults = FamilySettings::new(&s.family);
    if s.hidden != defaults.hidden || s.batch_norm || s.lu || s.residual_blocks > 0 || s.activation != defaults.activation {
        return Err(FlowError::InvalidConfig(format!(
            "{} takes no --hidden, batch norm, LU layers, residual blocks or activation (its sizes: --levels, --steps-per-level, --hidden-channels)",
            s.family
        )));
    }
    if s.transforms.is_some() {
        return Err(FlowError::InvalidConfig(format!("{} is sized by --levels and --steps-per-level, not --transforms", s.family)));
    }
    if s.hidden_channels == 0 || s.steps_per_level == Some(0) || s.levels == Some(0) {
        return Err(FlowError::InvalidConfig("--levels, --hidden-channels and --steps-per-level must be at least 1".into()));
    }
    let levels = s.levels.unwrap_or(family(&s.family)?.default_transforms);
    if s.family == "glow" {
        let mut c = GlowConfig::new(channels, height, width)
            .with_levels(levels)
            .with_hidden_channels(s.hidden_channels)
            .with_lu(!s.plain_conv1x1)
            .with_context_dim(context_dim)
            .with_seed(s.seed);
        if let Some(k) = s.steps_per_level {
            c = c.with_steps(k);
        }
        c.flow_config()
    } else {
        if s.plain_conv1x1 {
            return Err(FlowError::InvalidConfig(format!("{} has no 1×1 convolutions (--plain-conv1x1 is a setting of glow)", s.family)));
        }
        let mut c = RealNvpImageConfig::new(channels, height, width).with_levels(levels).with_hidden_channels(s.hidden_channels).with_context_dim(context_dim).with_seed(s.seed);
        if let Some(k) = s.steps_per_level {
            c = c.with_steps(k);
        }
        c.flow_config()
    }
}

/// The layers of `s.family` (with the standard normal base).
fn family_layers(s: &FamilySettings, dim: usize, context_dim: usize) -> Result<FlowConfig> {
    let f = family(&s.family)?;
    let defaults = FamilySettings::new(f.name);
    if s.levels.is_some() || s.steps_per_level.is_some() || s.hidden_channels != defaults.hidden_channels || s.plain_conv1x1 {
        return Err(FlowError::InvalidConfig("--levels, --steps-per-level, --hidden-channels and --plain-conv1x1 are settings of the image families (glow, realnvp-image)".into()));
    }
    if s.dropout > 0.0 && s.residual_blocks == 0 {
        return Err(FlowError::InvalidConfig("dropout acts inside residual blocks: add residual blocks".into()));
    }
    if f.name != "cnf" && (s.trace.is_some() || s.regularization != (0.0, 0.0) || s.gradient != GradientMethod::Backprop) {
        return Err(FlowError::InvalidConfig("traces, RNODE regularization and the adjoint method are settings of the cnf family".into()));
    }
    if f.name != "residual" && (s.lipschitz != defaults.lipschitz || s.logdet != defaults.logdet || s.series_terms != defaults.series_terms) {
        return Err(FlowError::InvalidConfig("--lipschitz, --logdet and --series-terms are settings of the residual family".into()));
    }
    let m = s.monotone;
    let d = defaults.monotone;
    for (flag, set, owner) in [
        ("--components", m.components != d.components, "naf"),
        ("--integrand-hidden", m.integrand_hidden != d.integrand_hidden, "umnn"),
        ("--nodes", m.nodes != d.nodes, "umnn"),
        ("--polynomials", m.polynomials != d.polynomials, "sos"),
        ("--degree", m.degree != d.degree, "sos"),
        ("--block-dim", m.block_dim != d.block_dim, "bnaf"),
        ("--block-layers", m.block_layers != d.block_layers, "bnaf"),
    ] {
        if set && f.name != owner {
            return Err(FlowError::InvalidConfig(format!("{flag} is a setting of the {owner} family")));
        }
    }
    if s.spline_tails != defaults.spline_tails && !s.has_splines() {
        return Err(FlowError::InvalidConfig("--spline-tails is a setting of the nsf families".into()));
    }
    let k = s.transforms.unwrap_or(f.default_transforms);
    let transformer = match f.name {
        "nsf" | "nsf-coupling" => Transformer::RationalQuadratic { bins: s.bins, tail_bound: s.tail_bound, tails: s.spline_tails },
        "naf" => Transformer::Sigmoidal { components: m.components, tail_bound: s.tail_bound },
        "umnn" => Transformer::Umnn { hidden: m.integrand_hidden, nodes: m.nodes, tail_bound: s.tail_bound },
        "sos" => Transformer::SumOfSquares { polynomials: m.polynomials, degree: m.degree, tail_bound: s.tail_bound },
        "maf" => Transformer::SoftplusAffine,
        _ => Transformer::Affine,
    };
    // The settings every conditioned family shares.
    macro_rules! shared {
        ($config:expr) => {
            $config
                .with_transforms(k)
                .with_hidden(s.hidden.clone())
                .with_context_dim(context_dim)
                .with_activation(s.activation)
                .with_batch_norm(s.batch_norm)
                .with_residual_blocks(s.residual_blocks)
                .with_dropout(s.dropout)
                .with_transformer(transformer)
                .with_seed(s.seed)
        };
    }
    Ok(match f.name {
        "maf" | "iaf" | "nsf" | "naf" | "umnn" | "sos" => {
            shared!(MafConfig::new(dim)).with_iaf(f.name == "iaf").with_lu(s.lu || f.name == "nsf").flow_config()
        }
        "realnvp" | "nice" | "nsf-coupling" => {
            if dim < 2 {
                return Err(FlowError::InvalidConfig(format!(
                    "{} coupling layers need at least 2 data columns; use the maf family for 1-D data",
                    f.name
                )));
            }
            shared!(RealNvpConfig::new(dim)).with_additive(f.name == "nice").with_lu(s.lu || f.name == "nsf-coupling").flow_config()
        }
        "residual" => {
            if s.batch_norm || s.lu || s.residual_blocks > 0 || s.activation != Activation::Relu {
                return Err(FlowError::InvalidConfig(
                    "residual takes no batch norm, LU layers, residual conditioner blocks or activation (its blocks use LipSwish)".into(),
                ));
            }
            let block = ResidualConfig::new(dim)
                .with_context_dim(context_dim)
                .with_hidden(s.hidden.clone())
                .with_lipschitz(s.lipschitz)
                .with_logdet(s.logdet, s.series_terms);
            let mut layers = Vec::with_capacity(2 * k);
            for _ in 0..k {
                layers.push(LayerConfig::ActNorm(ActNormConfig::new(dim)));
                layers.push(LayerConfig::Residual(block.clone()));
            }
            FlowConfig::new(dim, layers).with_seed(s.seed)
        }
        "bnaf" => {
            if s.batch_norm || s.lu || s.residual_blocks > 0 || s.activation != Activation::Relu || s.hidden != defaults.hidden {
                return Err(FlowError::InvalidConfig(
                    "bnaf takes no batch norm, LU layers, residual blocks, activation or --hidden (its sizes: --block-dim, --block-layers)".into(),
                ));
            }
            let block = BnafConfig::new(dim).with_context_dim(context_dim).with_block_dim(m.block_dim).with_hidden_layers(m.block_layers);
            let mut layers = Vec::with_capacity(2 * k);
            for i in 0..k {
                if i > 0 {
                    layers.push(LayerConfig::Permutation(PermutationConfig::reverse(dim)));
                }
                layers.push(LayerConfig::Bnaf(block.clone()));
            }
            FlowConfig::new(dim, layers).with_seed(s.seed)
        }
        "cnf" => {
            if s.batch_norm || s.lu || s.residual_blocks > 0 {
                return Err(FlowError::InvalidConfig("cnf takes no batch norm, LU layers or residual blocks".into()));
            }
            let mut layer = CnfConfig::new(dim)
                .with_context_dim(context_dim)
                .with_hidden(s.hidden.clone())
                .with_activation(s.activation)
                .with_probe(s.probe)
                .with_ode(s.ode)
                .with_regularization(s.regularization.0, s.regularization.1)
                .with_gradient(s.gradient);
            if let Some(trace) = s.trace {
                layer = layer.with_trace(trace);
            }
            FlowConfig::new(dim, vec![LayerConfig::Cnf(layer); k]).with_seed(s.seed)
        }
        _ => {
            if context_dim > 0 {
                return Err(FlowError::InvalidConfig("planar layers are unconditional: fit without context columns".into()));
            }
            FlowConfig::new(dim, vec![LayerConfig::Planar(PlanarConfig::new(dim)); k]).with_seed(s.seed)
        }
    })
}

/// The families for variational inference (all sample in one pass).
pub const VI_FAMILIES: [Family; 7] = [
    Family { name: "planar", about: "planar layers", default_transforms: 32 },
    Family { name: "radial", about: "radial layers", default_transforms: 32 },
    Family { name: "sylvester", about: "orthogonal Sylvester layers (Björck-orthogonalized basis, M = D)", default_transforms: 8 },
    Family { name: "sylvester-householder", about: "Householder Sylvester layers (M = D, D reflections)", default_transforms: 8 },
    Family { name: "iaf", about: "inverse autoregressive flow, affine", default_transforms: 5 },
    Family { name: "realnvp", about: "RealNVP affine coupling", default_transforms: 6 },
    Family { name: "nsf-coupling", about: "rational-quadratic spline coupling with LU layers", default_transforms: 8 },
];

/// The flow `diffeo vi` fits to a target on `dim` features: a learnable elementwise affine layer
/// on the base (targets far from N(0, I) start closer), the family's layers, then — for targets
/// on a box `[low, high]^D` — the scaled sigmoid onto the box.
pub fn vi_architecture(s: &FamilySettings, dim: usize, support: Option<(f64, f64)>) -> Result<FlowConfig> {
    let f = VI_FAMILIES.iter().find(|f| f.name == s.family).ok_or_else(|| {
        let names: Vec<&str> = VI_FAMILIES.iter().map(|f| f.name).collect();
        FlowError::InvalidConfig(format!("unknown variational family '{}' (expected one of {})", s.family, names.join(", ")))
    })?;
    if s.spline_tails != SplineTails::Affine && !s.has_splines() {
        return Err(FlowError::InvalidConfig("--spline-tails is a setting of the nsf-coupling family".into()));
    }
    if s.activation != Activation::Relu && !matches!(f.name, "iaf" | "realnvp" | "nsf-coupling") {
        return Err(FlowError::InvalidConfig("--activation is a setting of the iaf, realnvp and nsf-coupling families".into()));
    }
    let spline = Transformer::RationalQuadratic { bins: s.bins, tail_bound: s.tail_bound, tails: s.spline_tails };
    let k = s.transforms.unwrap_or(f.default_transforms);
    let d = dim;
    let mut config = match f.name {
        "planar" => FlowConfig::new(d, vec![LayerConfig::Planar(PlanarConfig::new(d)); k]),
        "radial" => FlowConfig::new(d, vec![LayerConfig::Radial(RadialConfig::new(d)); k]),
        "sylvester" | "sylvester-householder" => {
            let basis = if f.name == "sylvester" { SylvesterBasis::Orthogonal } else { SylvesterBasis::Householder { reflections: d } };
            FlowConfig::new(d, vec![LayerConfig::Sylvester(SylvesterConfig::new(d, d, basis)); k])
        }
        "iaf" => iaf(d, k, s.hidden.clone()).with_activation(s.activation).flow_config(),
        "realnvp" => realnvp(d, k, s.hidden.clone()).with_activation(s.activation).flow_config(),
        _ => nsf_coupling(d, k, s.hidden.clone()).with_transformer(spline).with_activation(s.activation).flow_config(),
    }
    .with_seed(s.seed);
    config.layers.insert(0, LayerConfig::ElementwiseAffine(ElementwiseAffineConfig::new(d)));
    if let Some((lo, hi)) = support {
        config.layers.push(LayerConfig::Elementwise(ElementwiseConfig::new(d, ElementwiseKind::Box { low: vec![lo; d], high: vec![hi; d] })));
    }
    config.validate()?;
    Ok(config)
}

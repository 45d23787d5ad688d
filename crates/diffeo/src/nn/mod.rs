//! Conditioner networks: a plain MLP (coupling layers, context embeddings) and MADE
//! (masked autoregressive networks, Germain et al. 2015).
//!
//! Weights are initialised from the caller's seeded RNG, never from a process-wide one, so that
//! building the same configuration twice gives identical parameters.

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::tensor::{matrix, vector};

pub mod conv;
pub mod fused;

/// Hidden-layer nonlinearity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// max(0, x) (the default, as in zuko and the peer benchmarks).
    #[default]
    Relu,
    /// tanh(x).
    Tanh,
    /// ELU with α = 1.
    Elu,
}

impl Activation {
    /// Applies the nonlinearity.
    pub fn apply<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Activation::Relu => burn::tensor::activation::relu(x),
            Activation::Tanh => x.tanh(),
            Activation::Elu => burn::tensor::activation::elu(x, 1.0),
        }
    }
}

/// How a layer's weights start.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// Uniform(−1/√fan_in, 1/√fan_in) (PyTorch's default for linear layers).
    Uniform,
    /// All zeros: used for the last layer of a conditioner so that the flow starts at the
    /// identity.
    Zeros,
}

fn init_values(rows: usize, cols: usize, fan_in: usize, init: Init, rng: &mut StdRng) -> Vec<f64> {
    match init {
        Init::Zeros => vec![0.0; rows * cols],
        Init::Uniform => {
            let k = 1.0 / (fan_in.max(1) as f64).sqrt();
            (0..rows * cols).map(|_| rng.random_range(-k..k)).collect()
        }
    }
}

/// Affine layer `y = x W + b`, with `W` of shape `[in, out]`.
#[derive(Module, Debug)]
pub struct Dense {
    /// Weights `[in, out]`.
    pub weight: Param<Tensor<2>>,
    /// Bias `[out]`.
    pub bias: Param<Tensor<1>>,
}

impl Dense {
    /// A new layer with weights from `rng`.
    pub fn new(d_in: usize, d_out: usize, init: Init, rng: &mut StdRng, device: &Device) -> Self {
        let w = init_values(d_in, d_out, d_in, init, rng);
        let b = init_values(1, d_out, d_in, init, rng);
        Self {
            weight: Param::from_tensor(matrix(w, d_in, d_out, device)),
            bias: Param::from_tensor(vector(b, device)),
        }
    }

    /// `x W + b`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.forward_activated(x, None)
    }

    /// `act(x W + b)`: one fused operation on the CPU ([`fused`]).
    pub fn forward_activated(&self, x: Tensor<2>, activation: Option<Activation>) -> Tensor<2> {
        affine(x, self.weight.val(), self.bias.val(), activation)
    }
}

/// `layers` in order, each followed by `activation` except the last. When given, `after_first`
/// runs on the first layer's output before its activation (context, residual blocks), so that
/// layer applies its activation separately; every other layer fuses it (`forward`).
fn layer_stack<L>(
    layers: &[L],
    x: Tensor<2>,
    activation: Activation,
    forward: impl Fn(&L, Tensor<2>, Option<Activation>) -> Tensor<2>,
    after_first: Option<&dyn Fn(Tensor<2>) -> Tensor<2>>,
) -> Tensor<2> {
    let n = layers.len();
    let mut h = x;
    for (i, layer) in layers.iter().enumerate() {
        let act = (i + 1 < n).then_some(activation);
        h = match after_first.filter(|_| i == 0) {
            Some(extra) => {
                let pre = extra(forward(layer, h, None));
                match act {
                    Some(a) => a.apply(pre),
                    None => pre,
                }
            }
            None => forward(layer, h, act),
        };
    }
    h
}

/// `act(x W + b)`, fused on the CPU, composed elsewhere.
pub fn affine(x: Tensor<2>, w: Tensor<2>, b: Tensor<1>, activation: Option<Activation>) -> Tensor<2> {
    masked_affine(x, w, b, activation, None)
}

/// [`affine`] for a masked weight `w` that is zero beyond `reach` ([`fused::Reach`]): the fused
/// kernel skips those blocks.
pub fn masked_affine(x: Tensor<2>, w: Tensor<2>, b: Tensor<1>, activation: Option<Activation>, reach: Option<fused::Reach>) -> Tensor<2> {
    if fused::supported(&x) {
        return fused::dense(x, w, b, activation, reach);
    }
    let h = x.matmul(w).add(b.unsqueeze());
    match activation {
        Some(a) => a.apply(h),
        None => h,
    }
}

/// Checks residual-conditioner settings: blocks need a hidden width, dropout is in [0, 1).
pub fn validate_residual(hidden: &[usize], blocks: usize, dropout: f64) -> crate::error::Result<()> {
    if blocks > 0 && hidden.is_empty() {
        return Err(crate::error::FlowError::InvalidConfig("residual blocks need a hidden width".into()));
    }
    if !(0.0..1.0).contains(&dropout) {
        return Err(crate::error::FlowError::InvalidConfig(format!("dropout must be in [0, 1), got {dropout}")));
    }
    Ok(())
}

/// Residual blocks of constant width (Durkan et al. 2019's tabular conditioners; masked, the
/// ResMADE of Nash & Durkan 2019): `h ← h + W₂·dropout(act(W₁·act(h)))`. Each block's second
/// layer starts at zero, so a block starts as the identity. Dropout is active only while
/// training (on an autodiff device) and draws from burn's generator, which `fit` seeds.
#[derive(Module, Debug)]
pub struct ResidualBlocks {
    /// First layer of each block.
    pub first: Vec<MaskedDense>,
    /// Second layer of each block (zero at the start).
    pub second: Vec<MaskedDense>,
    /// Dropout between the two layers.
    pub dropout: burn::nn::Dropout,
    /// Nonlinearity.
    #[module(skip)]
    pub activation: Activation,
}

impl ResidualBlocks {
    /// `blocks` blocks of width `mask_width`, with the fixed mask `mask` (`[width, width]`).
    fn new(blocks: usize, mask: &[f64], width: usize, dropout: f64, activation: Activation, rng: &mut StdRng, device: &Device) -> Self {
        let mut first = Vec::new();
        let mut second = Vec::new();
        for _ in 0..blocks {
            first.push(MaskedDense::new(mask.to_vec(), width, width, Init::Uniform, rng, device));
            second.push(MaskedDense::new(mask.to_vec(), width, width, Init::Zeros, rng, device));
        }
        Self { first, second, dropout: burn::nn::DropoutConfig::new(dropout).init(), activation }
    }

    /// Applies the blocks.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let mut h = x;
        for (a, b) in self.first.iter().zip(&self.second) {
            let t = a.forward(self.activation.apply(h.clone()));
            let t = b.forward(self.dropout.forward(self.activation.apply(t)));
            h = h.add(t);
        }
        h
    }
}

/// A multilayer perceptron `in → hidden… → out`. The last layer starts at zero when
/// `zero_last` is set.
#[derive(Module, Debug)]
pub struct Mlp {
    /// The affine layers, in order.
    pub layers: Vec<Dense>,
    /// Residual blocks after the first layer (then `layers` is `[in → H, H → out]`).
    pub residual: Option<ResidualBlocks>,
    /// Nonlinearity between layers.
    #[module(skip)]
    pub activation: Activation,
}

/// The shape of a feed-forward network: hidden widths, nonlinearity, and optional residual blocks
/// (of width `hidden[0]`, after the first layer) with dropout inside. Shared by [`MlpConfig`] and
/// [`MadeConfig`], and by every conditioner (serialized flat inside a layer's configuration).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NetworkConfig {
    /// Hidden layer widths.
    pub hidden: Vec<usize>,
    /// Hidden nonlinearity.
    #[serde(default)]
    pub activation: Activation,
    /// Residual blocks after the first hidden layer (0: plain). With blocks, only `hidden[0]` is
    /// used, as the width of every block.
    #[serde(default)]
    pub residual_blocks: usize,
    /// Dropout probability inside the residual blocks (training only).
    #[serde(default)]
    pub dropout: f64,
}

impl NetworkConfig {
    /// A ReLU network with the given hidden widths, no residual blocks.
    pub fn new(hidden: Vec<usize>) -> Self {
        Self { hidden, activation: Activation::Relu, residual_blocks: 0, dropout: 0.0 }
    }

    /// Sets the nonlinearity.
    pub fn with_activation(mut self, activation: Activation) -> Self {
        self.activation = activation;
        self
    }

    /// Residual blocks (width `hidden[0]`) with dropout inside.
    pub fn with_residual_blocks(mut self, blocks: usize, dropout: f64) -> Self {
        self.residual_blocks = blocks;
        self.dropout = dropout;
        self
    }

    /// Checks the settings.
    pub fn validate(&self) -> crate::error::Result<()> {
        if self.hidden.contains(&0) {
            return Err(crate::error::FlowError::InvalidConfig("hidden layers must have at least one unit".into()));
        }
        validate_residual(&self.hidden, self.residual_blocks, self.dropout)
    }

    /// Whether the network draws random numbers while training (dropout).
    pub fn random_in_training(&self) -> bool {
        self.residual_blocks > 0 && self.dropout > 0.0
    }

    /// The hidden widths used (with residual blocks, the first only).
    fn hidden_used(&self) -> &[usize] {
        if self.residual_blocks > 0 { &self.hidden[..1.min(self.hidden.len())] } else { &self.hidden }
    }

    /// MADE with this shape over inputs of degrees `order` with `params_per_dim` outputs each.
    pub fn made(&self, order: &[usize], context_dim: usize, params_per_dim: usize, seed: u64) -> MadeConfig {
        MadeConfig::new(order.to_vec(), self.clone(), params_per_dim).with_context_dim(context_dim).with_seed(seed)
    }

    /// An MLP with this shape `d_in → d_out`, last layer zero (a conditioner's identity start).
    pub fn mlp(&self, d_in: usize, d_out: usize, seed: u64) -> MlpConfig {
        MlpConfig::new(d_in, self.clone(), d_out).with_zero_last(true).with_seed(seed)
    }
}

/// Configuration of an [`Mlp`]: `d_in → hidden… → d_out`, or with residual blocks
/// `d_in → H → blocks → d_out` (H = `hidden[0]`).
#[derive(Clone, Debug, PartialEq)]
pub struct MlpConfig {
    /// Input width.
    pub d_in: usize,
    /// Hidden widths, nonlinearity, residual blocks.
    pub network: NetworkConfig,
    /// Output width.
    pub d_out: usize,
    /// Zero last layer (a conditioner's identity start).
    pub zero_last: bool,
    /// Seed of the weights.
    pub seed: u64,
}

impl MlpConfig {
    /// An MLP of the given shape with a uniformly initialised last layer.
    pub fn new(d_in: usize, network: NetworkConfig, d_out: usize) -> Self {
        Self { d_in, network, d_out, zero_last: false, seed: 0 }
    }

    /// Starts the last layer at zero.
    pub fn with_zero_last(mut self, zero_last: bool) -> Self {
        self.zero_last = zero_last;
        self
    }

    /// Sets the seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Checks the settings.
    pub fn validate(&self) -> crate::error::Result<()> {
        if self.d_in == 0 || self.d_out == 0 {
            return Err(crate::error::FlowError::InvalidConfig("network widths must be positive".into()));
        }
        self.network.validate()
    }

    /// Trainable parameters.
    pub fn parameter_count(&self) -> usize {
        let net = &self.network;
        if net.residual_blocks > 0 {
            let h = net.hidden[0];
            (self.d_in + 1) * h + net.residual_blocks * 2 * (h + 1) * h + (h + 1) * self.d_out
        } else {
            let mut sizes = vec![self.d_in];
            sizes.extend(&net.hidden);
            sizes.push(self.d_out);
            sizes.windows(2).map(|w| (w[0] + 1) * w[1]).sum()
        }
    }

    /// Builds the network (the last layer zero when `zero_last`; always zero with residual blocks).
    pub fn init(&self, device: &Device) -> crate::error::Result<Mlp> {
        self.validate()?;
        let net = &self.network;
        let rng = &mut StdRng::seed_from_u64(self.seed);
        if net.residual_blocks > 0 {
            let width = net.hidden[0];
            let first = Dense::new(self.d_in, width, Init::Uniform, rng, device);
            let residual = ResidualBlocks::new(net.residual_blocks, &vec![1.0; width * width], width, net.dropout, net.activation, rng, device);
            let last = Dense::new(width, self.d_out, Init::Zeros, rng, device);
            return Ok(Mlp { layers: vec![first, last], residual: Some(residual), activation: net.activation });
        }
        let mut sizes = vec![self.d_in];
        sizes.extend_from_slice(&net.hidden);
        sizes.push(self.d_out);
        let n = sizes.len() - 1;
        let layers = (0..n)
            .map(|i| {
                let init = if self.zero_last && i == n - 1 { Init::Zeros } else { Init::Uniform };
                Dense::new(sizes[i], sizes[i + 1], init, rng, device)
            })
            .collect();
        Ok(Mlp { layers, residual: None, activation: net.activation })
    }
}

impl Mlp {
    /// Applies the network.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        if self.residual.is_none() && !self.layers.is_empty() && !x.is_autodiff() && fused::supported(&x) {
            // Inference on the CPU: the whole network per block of rows ([`fused::dense_stack`]).
            let last = self.layers.len() - 1;
            let layers: Vec<_> =
                self.layers.iter().enumerate().map(|(i, l)| (l.weight.val(), l.bias.val(), (i < last).then_some(self.activation))).collect();
            if let Some(y) = fused::dense_stack(&x, &layers, None, None) {
                return y;
            }
        }
        let residual = self.residual.as_ref().map(|r| move |h| r.forward(h));
        let after_first = residual.as_ref().map(|f| f as &dyn Fn(Tensor<2>) -> Tensor<2>);
        layer_stack(&self.layers, x, self.activation, Dense::forward_activated, after_first)
    }
}

/// A linear layer whose weights are multiplied by a fixed binary mask.
#[derive(Module, Debug)]
pub struct MaskedDense {
    /// Weights `[in, out]`.
    pub weight: Param<Tensor<2>>,
    /// Bias `[out]`.
    pub bias: Param<Tensor<1>>,
    /// Fixed 0/1 mask `[in, out]` (rebuilt from the configuration, not stored in files).
    pub mask: Tensor<2>,
    /// Inputs each unit reads (see [`fused::Reach`]), from the mask; `None` when skipping the
    /// zero blocks would save little.
    #[module(skip)]
    pub reach: Option<fused::Reach>,
}

impl MaskedDense {
    fn new(mask: Vec<f64>, d_in: usize, d_out: usize, init: Init, rng: &mut StdRng, device: &Device) -> Self {
        // Fan-in counts the connections each unit actually has.
        let fan_in = (0..d_out)
            .map(|j| (0..d_in).filter(|&i| mask[i * d_out + j] > 0.0).count())
            .max()
            .unwrap_or(1)
            .max(1);
        let mut w = init_values(d_in, d_out, fan_in, init, rng);
        for (wi, mi) in w.iter_mut().zip(&mask) {
            *wi *= mi;
        }
        let b = init_values(1, d_out, fan_in, init, rng);
        let reach: Vec<usize> = (0..d_out).map(|j| (0..d_in).rposition(|i| mask[i * d_out + j] > 0.0).map_or(0, |i| i + 1)).collect();
        // Worth it when the column groups read at most ~90 % of the dense products.
        let read: usize = fused::column_groups(Some(&reach), d_in, d_out).iter().map(|&(c0, c1, k)| (c1 - c0) * k).sum();
        Self {
            weight: Param::from_tensor(matrix(w, d_in, d_out, device)),
            bias: Param::from_tensor(vector(b, device)),
            mask: matrix(mask, d_in, d_out, device),
            reach: (10 * read <= 9 * d_in * d_out).then(|| reach.into()),
        }
    }

    /// `x (W ⊙ M) + b`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.forward_activated(x, None)
    }

    /// `act(x (W ⊙ M) + b)`: one fused operation on the CPU ([`fused`]).
    pub fn forward_activated(&self, x: Tensor<2>, activation: Option<Activation>) -> Tensor<2> {
        masked_affine(x, self.weight.val().mul(self.mask.clone()), self.bias.val(), activation, self.reach.clone())
    }
}

/// Degrees of `width` hidden units for `d` inputs: cycling through 1..=D−1 (all 0 when D = 1),
/// or with `sorted` the same degrees in increasing order.
fn hidden_degrees(width: usize, d: usize, sorted: bool) -> Vec<usize> {
    let mut degrees: Vec<usize> = (0..width).map(|k| if d <= 1 { 0 } else { k % (d - 1) + 1 }).collect();
    if sorted {
        degrees.sort_unstable();
    }
    degrees
}

/// One layer of MADE with its units sorted by degree (see [`Made::sweep`]).
struct SortedLayer {
    /// `(W ⊙ M)` with rows in the previous layer's sorted order and columns in this layer's.
    weight: Tensor<2>,
    /// Bias in sorted order.
    bias: Tensor<1>,
    /// Context weights with columns in sorted order (first hidden layer only).
    context: Option<Tensor<2>>,
    /// `upto[m]`: units of degree ≤ m.
    upto: Vec<usize>,
}

/// MADE: a masked MLP whose output block for input `i` depends only on inputs that come before
/// `i` in the autoregressive order (and on the context, which feeds the first hidden layer
/// unmasked).
///
/// Degrees: input `i` has degree `order[i]` ∈ 1..=D; hidden units cycle through 1..=D−1
/// (all 0 when D = 1, so the conditioner then sees only the context and its biases); a
/// connection into a hidden unit of degree `m` is allowed from degree ≤ `m`, and into an output of
/// degree `d` from degree < `d`. Outputs are laid out as `params_per_dim` blocks of `D`
/// columns: column `p·D + i` is parameter `p` of dimension `i`.
#[derive(Module, Debug)]
pub struct Made {
    /// Hidden and output layers.
    pub layers: Vec<MaskedDense>,
    /// Unmasked context weights `[C, first layer width]` (absent when unconditional).
    pub context: Option<Param<Tensor<2>>>,
    /// Masked residual blocks after the first layer (ResMADE); then `layers` is
    /// `[in → H, H → out]`.
    pub residual: Option<ResidualBlocks>,
    /// Nonlinearity.
    #[module(skip)]
    pub activation: Activation,
    /// The degrees of the inputs, of each hidden layer's units and of the outputs (they define
    /// the masks; rebuilt from the configuration, not stored in files).
    #[module(skip)]
    pub degrees: Vec<Vec<usize>>,
}

/// Configuration of [`Made`].
#[derive(Clone, Debug, PartialEq)]
pub struct MadeConfig {
    /// Degrees of the inputs: `order[i]` ∈ 1..=D is the position of feature `i`.
    pub order: Vec<usize>,
    /// Hidden widths, nonlinearity, masked residual blocks (ResMADE).
    pub network: NetworkConfig,
    /// Outputs per input.
    pub params_per_dim: usize,
    /// Context width (0: unconditional).
    pub context_dim: usize,
    /// Seed of the weights.
    pub seed: u64,
    /// Hidden units numbered in order of degree (see
    /// [`MaskedAutoregressiveConfig::sorted_units`](crate::bijections::MaskedAutoregressiveConfig)).
    pub sorted_units: bool,
}

impl MadeConfig {
    /// MADE of the given shape for inputs of degrees `order` with `params_per_dim` outputs each,
    /// unconditional.
    pub fn new(order: Vec<usize>, network: NetworkConfig, params_per_dim: usize) -> Self {
        Self { order, network, params_per_dim, context_dim: 0, seed: 0, sorted_units: false }
    }

    /// Numbers the hidden units in order of degree (`true`) or cyclically.
    pub fn with_sorted_units(mut self, sorted: bool) -> Self {
        self.sorted_units = sorted;
        self
    }

    /// Conditions on a context of width `context_dim`.
    pub fn with_context_dim(mut self, context_dim: usize) -> Self {
        self.context_dim = context_dim;
        self
    }

    /// Sets the seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Trainable parameters.
    pub fn parameter_count(&self) -> usize {
        let d = self.order.len();
        let hidden = self.network.hidden_used();
        let mut sizes = vec![d];
        sizes.extend(hidden);
        sizes.push(self.params_per_dim * d);
        let dense: usize = sizes.windows(2).map(|w| (w[0] + 1) * w[1]).sum();
        let context = self.context_dim * sizes[1];
        let blocks = hidden.first().map_or(0, |h| self.network.residual_blocks * 2 * (h + 1) * h);
        dense + context + blocks
    }

    /// Builds MADE with a zero last layer (identity start).
    pub fn init(&self, device: &Device) -> crate::error::Result<Made> {
        self.network.validate()?;
        if self.order.is_empty() || self.params_per_dim == 0 {
            return Err(crate::error::FlowError::InvalidConfig("MADE needs inputs and outputs".into()));
        }
        let rng = &mut StdRng::seed_from_u64(self.seed);
        let net = &self.network;
        let (order, context_dim, params_per_dim, activation) = (&self.order[..], self.context_dim, self.params_per_dim, net.activation);
        let (blocks, dropout) = (net.residual_blocks, net.dropout);
        let hidden = net.hidden_used();
        let d = order.len();
        let mut degrees: Vec<Vec<usize>> = vec![order.to_vec()];
        for &h in hidden {
            degrees.push(hidden_degrees(h, d, self.sorted_units));
        }
        let out_deg: Vec<usize> = (0..params_per_dim).flat_map(|_| order.iter().copied()).collect();
        let mut layers = Vec::new();
        for l in 0..degrees.len() {
            let din = &degrees[l];
            let last = l + 1 == degrees.len();
            let dout: &[usize] = if last { &out_deg } else { &degrees[l + 1] };
            let mut mask = vec![0.0; din.len() * dout.len()];
            for (i, &di) in din.iter().enumerate() {
                for (j, &dj) in dout.iter().enumerate() {
                    let ok = if last { di < dj } else { di <= dj };
                    if ok {
                        mask[i * dout.len() + j] = 1.0;
                    }
                }
            }
            let init = if last { Init::Zeros } else { Init::Uniform };
            layers.push(MaskedDense::new(mask, din.len(), dout.len(), init, rng, device));
        }
        let first_out = if hidden.is_empty() { out_deg.len() } else { hidden[0] };
        let context = (context_dim > 0).then(|| {
            let init = if hidden.is_empty() { Init::Zeros } else { Init::Uniform };
            let w = init_values(context_dim, first_out, context_dim, init, rng);
            Param::from_tensor(matrix(w, context_dim, first_out, device))
        });
        let residual = (blocks > 0 && !hidden.is_empty()).then(|| {
            // Hidden units keep their degrees through the blocks: m_in ≤ m_out.
            let deg = &degrees[1];
            let h = deg.len();
            let mask: Vec<f64> = (0..h * h).map(|k| if deg[k / h] <= deg[k % h] { 1.0 } else { 0.0 }).collect();
            ResidualBlocks::new(blocks, &mask, h, dropout, activation, rng, device)
        });
        degrees.push(out_deg);
        Ok(Made { layers, context, residual, activation, degrees })
    }
}

impl Made {
    /// Autoregressive evaluation in order of degree, for inverting MADE's layer (sampling MAF,
    /// density of IAF): position `k = 1..=D` of `order` is fixed by `fix(feature, θ)` from its
    /// parameters `θ` `[N, params_per_dim]` and returns that feature's column `[N, 1]`.
    ///
    /// Instead of D full passes of the network, each pass computes only the hidden units whose
    /// degree has just become final (degree k − 1: their inputs, of degree ≤ k − 1, are fixed),
    /// then the output block of position k from the units of degree < k. Every unit is computed
    /// once, so the D passes together cost about one forward pass instead of D. Returns the
    /// columns in feature order, or `None` for ResMADE (residual blocks), which needs full passes.
    pub fn sweep(
        &self,
        order: &[usize],
        n: usize,
        context: Option<&Tensor<2>>,
        mut fix: impl FnMut(usize, Tensor<2>) -> crate::error::Result<Tensor<2>>,
    ) -> crate::error::Result<Option<Vec<Tensor<2>>>> {
        let d = order.len();
        let (Some(output), None, true) = (self.layers.last(), &self.residual, d >= 2) else {
            return Ok(None);
        };
        let device = output.weight.device();
        let p = output.weight.dims()[1] / d;
        let mut by_position = vec![0; d];
        for (feature, &position) in order.iter().enumerate() {
            by_position[position - 1] = feature;
        }
        let sorted_by = |degrees: &[usize]| {
            let mut perm: Vec<usize> = (0..degrees.len()).collect();
            perm.sort_by_key(|&u| (degrees[u], u));
            let upto: Vec<usize> = (0..=d).map(|m| degrees.iter().filter(|&&g| g <= m).count()).collect();
            (perm, upto)
        };
        // Layer 0 is the input, in order of position; then the hidden layers.
        let mut prev_perm = by_position.clone();
        let input_upto: Vec<usize> = (0..=d).collect();
        let mut hidden = Vec::new();
        let ctx = self.context.as_ref().zip(context);
        for (l, layer) in self.layers[..self.layers.len() - 1].iter().enumerate() {
            let (perm, upto) = sorted_by(&self.degrees[l + 1]);
            let cols = crate::tensor::indices(&perm, &device);
            let weight = layer.weight.val().mul(layer.mask.clone()).select(0, crate::tensor::indices(&prev_perm, &device)).select(1, cols.clone());
            let context = if l == 0 { ctx.map(|(w, _)| w.val().select(1, cols.clone())) } else { None };
            hidden.push(SortedLayer { weight, bias: layer.bias.val().select(0, cols), context, upto });
            prev_perm = perm;
        }
        let out_weight = output.weight.val().mul(output.mask.clone()).select(0, crate::tensor::indices(&prev_perm, &device));
        let out_context = if hidden.is_empty() { ctx.map(|(w, _)| w.val()) } else { None };
        let ctx_rows = ctx.map(|(_, c)| c.clone());

        // Values computed so far, layer by layer, in sorted order (blocks of increasing degree).
        let mut values: Vec<Vec<Tensor<2>>> = vec![Vec::new(); hidden.len() + 1];
        let mut columns: Vec<Option<Tensor<2>>> = vec![None; d];
        let width_of = |blocks: &[Tensor<2>]| blocks.iter().map(|t| t.dims()[1]).sum::<usize>();
        for k in 1..=d {
            // Hidden units of degree k − 1 (none at k = 1: degrees start at 1).
            for l in 0..hidden.len() {
                let layer = &hidden[l];
                let (lo, hi) = (layer.upto[k - 1 - usize::from(k >= 2)], layer.upto[k - 1]);
                if k < 2 || hi == lo {
                    continue;
                }
                let inputs = if l == 0 { input_upto[k - 1] } else { hidden[l - 1].upto[k - 1] };
                debug_assert_eq!(inputs, width_of(&values[l]));
                let bias = layer.bias.clone().narrow(0, lo, hi - lo);
                let pre_context = layer.context.as_ref().zip(ctx_rows.as_ref());
                let block = if inputs == 0 || pre_context.is_some() {
                    let mut h = bias.unsqueeze::<2>().repeat_dim(0, n);
                    if inputs > 0 {
                        let w = layer.weight.clone().slice([0..inputs, lo..hi]);
                        h = h.add(Tensor::cat(values[l].clone(), 1).matmul(w));
                    }
                    if let Some((wc, c)) = pre_context {
                        h = h.add(c.clone().matmul(wc.clone().narrow(1, lo, hi - lo)));
                    }
                    self.activation.apply(h)
                } else {
                    let w = layer.weight.clone().slice([0..inputs, lo..hi]);
                    affine(Tensor::cat(values[l].clone(), 1), w, bias, Some(self.activation))
                };
                values[l + 1].push(block);
            }
            // Position k's parameters from the last layer's units of degree < k.
            let feature = by_position[k - 1];
            let cols = crate::tensor::indices(&(0..p).map(|q| q * d + feature).collect::<Vec<_>>(), &device);
            let last = values.len() - 1;
            let inputs = if hidden.is_empty() { k - 1 } else { hidden[hidden.len() - 1].upto[k - 1] };
            let bias = output.bias.val().select(0, cols.clone());
            let mut theta = if inputs == 0 {
                bias.unsqueeze::<2>().repeat_dim(0, n)
            } else {
                let w = out_weight.clone().narrow(0, 0, inputs).select(1, cols.clone());
                affine(Tensor::cat(values[last].clone(), 1), w, bias, None)
            };
            if let (Some(wc), Some(c)) = (&out_context, &ctx_rows) {
                theta = theta.add(c.clone().matmul(wc.clone().select(1, cols)));
            }
            let x = fix(feature, theta)?;
            values[0].push(x.clone());
            columns[feature] = Some(x);
        }
        Ok(Some(columns.into_iter().map(|c| c.expect("every feature is fixed")).collect()))
    }

    /// Conditioner outputs `[N, params_per_dim · D]` for inputs `[N, D]` and optional context.
    pub fn forward(&self, x: Tensor<2>, context: Option<&Tensor<2>>) -> Tensor<2> {
        let ctx = self.context.as_ref().zip(context);
        if self.residual.is_none() && !self.layers.is_empty() && !x.is_autodiff() && fused::supported(&x) {
            // Inference on the CPU: the whole network per block of rows ([`fused::dense_stack`]).
            let last = self.layers.len() - 1;
            let layers: Vec<_> = self
                .layers
                .iter()
                .enumerate()
                .map(|(i, l)| (l.weight.val().mul(l.mask.clone()), l.bias.val(), (i < last).then_some(self.activation)))
                .collect();
            let extra = ctx.map(|(c, rows)| rows.clone().matmul(c.val()));
            let staircase = fused::Staircase { degrees: &self.degrees };
            if let Some(y) = fused::dense_stack(&x, &layers, extra.as_ref(), Some(&staircase)) {
                return y;
            }
        }
        let extra = |mut h: Tensor<2>| {
            if let Some((c, rows)) = ctx {
                h = h.add(rows.clone().matmul(c.val()));
            }
            if let Some(r) = &self.residual {
                h = r.forward(h);
            }
            h
        };
        let after_first = (ctx.is_some() || self.residual.is_some()).then_some(&extra as &dyn Fn(Tensor<2>) -> Tensor<2>);
        layer_stack(&self.layers, x, self.activation, MaskedDense::forward_activated, after_first)
    }
}

//! Block neural autoregressive flow (BNAF, De Cao et al. 2019): one monotone-in-its-own-input
//! network `u = f(x; c)` whose layers are block-triangular matrices.
//!
//! With widths `[1, a, …, a, 1]·D`, layer `l` maps `h ∈ R^{a_{l−1}·D}` to `W_l h + b_l` where `W_l`
//! is `D × D` blocks of `a_l × a_{l−1}`: blocks above the diagonal are zero (output `i` reads
//! inputs `≤ i` only), blocks below are free, diagonal blocks are positive (`exp` of the raw
//! weights); each row is weight-normalized, `W_r = e^{g_r} V_r/‖V_r‖`. Hidden layers apply a leaky
//! tanh (tanh on [−3, 3], linear beyond with the same slope), so the map is onto R^D — with a
//! plain tanh the outputs are bounded and the density integrates to less than one (FlowJAX uses
//! `tanh(x) + 0.01x` for the same reason).
//! The context enters the first layer unconstrained. Then `∂u_i/∂x_i` is the chain product of
//! the diagonal blocks and tanh slopes, positive, and `log|det J| = Σ_i log ∂u_i/∂x_i` is computed
//! in log space: `log J_l[o] = LSE_k(log W_l[o, k] + log J_{l−1}[k])` per feature, plus the
//! activation's log-slope after hidden layers.
//!
//! The density direction (data → base, `inverse`) is this network; the sampling direction has
//! no closed form and is [`Cost::Unavailable`], as in the paper: a BNAF model evaluates
//! densities and cannot sample. It does not start at the identity (tanh layers cannot be), but
//! at a random monotone map, as in the paper and FlowJAX.

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::{Bijection, Call, Cost, Directions, LayerSpec, Mapped};
use crate::error::{Direction, FlowError, Result};
use crate::tensor::{dims2, log_tanh_slope, logsumexp_dim, matrix, sum_rows, vector};

/// Configuration of a [`Bnaf`] layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BnafConfig {
    /// Features D.
    pub dim: usize,
    /// Context width C (0: unconditional).
    #[serde(default)]
    pub context_dim: usize,
    /// Hidden units per feature `a` (each hidden layer is `a·D` wide).
    pub block_dim: usize,
    /// Hidden layers (≥ 1).
    pub hidden_layers: usize,
    /// Seed of the weights (set by the chain; not stored).
    #[serde(skip)]
    pub seed: u64,
}

impl BnafConfig {
    /// FlowJAX's defaults: one hidden layer of 8 units per feature.
    pub fn new(dim: usize) -> Self {
        Self { dim, context_dim: 0, block_dim: 8, hidden_layers: 1, seed: 0 }
    }

    /// Sets the context width.
    pub fn with_context_dim(mut self, context_dim: usize) -> Self {
        self.context_dim = context_dim;
        self
    }

    /// Sets the hidden units per feature.
    pub fn with_block_dim(mut self, block_dim: usize) -> Self {
        self.block_dim = block_dim;
        self
    }

    /// Sets the number of hidden layers.
    pub fn with_hidden_layers(mut self, hidden_layers: usize) -> Self {
        self.hidden_layers = hidden_layers;
        self
    }

    /// Sets the seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Units per feature of every layer's input and output.
    fn widths(&self) -> Vec<usize> {
        let mut w = vec![1];
        w.extend(std::iter::repeat_n(self.block_dim, self.hidden_layers));
        w.push(1);
        w
    }

    /// Builds the layer: raw weights and biases `U(±1/√fan-in)`, row gains `1/√a_in`, zero
    /// context weights.
    pub fn init(&self, device: &Device) -> Result<Bnaf> {
        self.validate()?;
        let d = self.dim;
        let rng = &mut StdRng::seed_from_u64(self.seed);
        let widths = self.widths();
        let mut layers = Vec::with_capacity(widths.len() - 1);
        for (l, w) in widths.windows(2).enumerate() {
            let (a_in, a_out) = (w[0], w[1]);
            let (rows, cols) = (a_out * d, a_in * d);
            let masks = BlockMasks::new(d, a_in, a_out);
            let bound = 1.0 / ((a_in * d) as f64).sqrt();
            let raw: Vec<f64> = (0..rows * cols).map(|_| rng.random_range(-bound..bound)).collect();
            // Random biases spread the units of a block over the input's range (with zero biases
            // a block's units start as near copies of one another).
            let bias: Vec<f64> = (0..rows).map(|_| rng.random_range(-bound..bound)).collect();
            // Row gains e^g = 1/√a_in: a diagonal block of near-equal entries then averages its
            // inputs, so each feature's own path starts with slope ≈ 1 at the origin.
            let gains = vec![-0.5 * (a_in as f64).ln(); rows];
            let context = (l == 0 && self.context_dim > 0).then(|| Param::from_tensor(Tensor::zeros([self.context_dim, rows], device)));
            let selector = masks.selector(device);
            layers.push(BlockLinear {
                raw: Param::from_tensor(matrix(raw, rows, cols, device)),
                log_gain: Param::from_tensor(vector(gains, device)),
                bias: Param::from_tensor(vector(bias, device)),
                context,
                diagonal: matrix(masks.diagonal, rows, cols, device),
                lower: matrix(masks.lower, rows, cols, device),
                selector,
                a_in,
                a_out,
            });
        }
        Ok(Bnaf { layers, dim: d, context_dim: self.context_dim })
    }
}

impl LayerSpec for BnafConfig {
    fn dim(&self) -> usize {
        self.dim
    }

    fn validate(&self) -> Result<()> {
        super::require_features(self.dim, "a BNAF layer")?;
        if self.block_dim == 0 || self.block_dim > 1024 {
            return Err(FlowError::InvalidConfig(format!("BNAF needs 1 to 1024 hidden units per feature, got {}", self.block_dim)));
        }
        if self.hidden_layers == 0 || self.hidden_layers > 16 {
            return Err(FlowError::InvalidConfig(format!("BNAF needs 1 to 16 hidden layers, got {}", self.hidden_layers)));
        }
        Ok(())
    }

    fn context_dim(&self) -> usize {
        self.context_dim
    }

    fn parameter_count(&self) -> usize {
        let d = self.dim;
        let mut count = 0;
        for (l, w) in self.widths().windows(2).enumerate() {
            let (a_in, a_out) = (w[0], w[1]);
            // Blocks on and below the diagonal, gains, biases, the context's weights.
            count += a_out * a_in * d * (d + 1) / 2 + 2 * a_out * d + if l == 0 { self.context_dim * a_out * d } else { 0 };
        }
        count
    }

    fn set_seed(&mut self, seed: u64) {
        self.seed = seed;
    }
}

/// Where a block-triangular `[a_out·D, a_in·D]` weight is positive (diagonal blocks) and free
/// (below them); feature `i` owns rows `i·a_out..(i+1)·a_out` and columns `i·a_in..(i+1)·a_in`.
struct BlockMasks {
    diagonal: Vec<f64>,
    lower: Vec<f64>,
    d: usize,
}

impl BlockMasks {
    fn new(d: usize, a_in: usize, a_out: usize) -> Self {
        let (rows, cols) = (a_out * d, a_in * d);
        let mut diagonal = vec![0.0; rows * cols];
        let mut lower = vec![0.0; rows * cols];
        for r in 0..rows {
            for c in 0..cols {
                let (i, j) = (r / a_out, c / a_in);
                if i == j {
                    diagonal[r * cols + c] = 1.0;
                } else if j < i {
                    lower[r * cols + c] = 1.0;
                }
            }
        }
        Self { diagonal, lower, d }
    }

    /// `[D, 1, D, 1]` identity: picks feature i's diagonal block out of `[D, a_out, D, a_in]`.
    fn selector(&self, device: &Device) -> Tensor<4> {
        let d = self.d;
        let eye: Vec<f64> = (0..d * d).map(|k| if k / d == k % d { 1.0 } else { 0.0 }).collect();
        matrix(eye, d, d, device).reshape([d, 1, d, 1])
    }
}

/// One block-triangular, weight-normalized linear layer.
#[derive(Module, Debug)]
pub struct BlockLinear {
    /// Raw weights `[a_out·D, a_in·D]` (diagonal blocks enter as `exp`).
    pub raw: Param<Tensor<2>>,
    /// Row gains `g` `[a_out·D]` (log scale).
    pub log_gain: Param<Tensor<1>>,
    /// Biases `[a_out·D]`.
    pub bias: Param<Tensor<1>>,
    /// Context weights `[C, a_out·D]` (first layer only).
    pub context: Option<Param<Tensor<2>>>,
    diagonal: Tensor<2>,
    lower: Tensor<2>,
    selector: Tensor<4>,
    a_in: usize,
    a_out: usize,
}

impl BlockLinear {
    /// The normalized weight `[a_out·D, a_in·D]` and the log of its diagonal blocks
    /// `[D, a_out, a_in]`.
    fn weights(&self) -> (Tensor<2>, Tensor<3>) {
        let raw = self.raw.val();
        let [rows, cols] = raw.dims();
        let d = rows / self.a_out;
        let v = raw.clone().exp().mul(self.diagonal.clone()).add(raw.clone().mul(self.lower.clone()));
        let log_norm = v.clone().square().sum_dim(1).clamp_min(1e-30).log().mul_scalar(0.5); // [rows, 1]
        let log_scale = self.log_gain.val().reshape([rows, 1]).sub(log_norm);
        let w = v.mul(log_scale.clone().exp());
        // log W on the diagonal blocks: g − log‖V‖ + raw (finite everywhere; the selector keeps the diagonal).
        let log_w = raw.add(log_scale).reshape([d, self.a_out, d, self.a_in]).mul(self.selector.clone()).sum_dim(2);
        debug_assert_eq!(cols, self.a_in * d);
        (w, log_w.reshape([d, self.a_out, self.a_in]))
    }
}

/// A BNAF layer (see the module documentation).
#[derive(Module, Debug)]
pub struct Bnaf {
    /// The block-triangular layers.
    pub layers: Vec<BlockLinear>,
    /// Features D.
    pub dim: usize,
    /// Context width C.
    pub context_dim: usize,
}

/// Where the leaky tanh turns linear.
const LEAKY_TANH_BOUND: f64 = 3.0;

/// Leaky tanh: `tanh` on `[−3, 3]`, continued linearly with its slope there, so the network is
/// onto R (a plain tanh layer bounds the output, and the density would not integrate to one);
/// returns the value and the log-slope.
fn leaky_tanh(a: Tensor<2>) -> (Tensor<2>, Tensor<2>) {
    let inside = a.clone().clamp(-LEAKY_TANH_BOUND, LEAKY_TANH_BOUND);
    let log_slope = log_tanh_slope(inside.clone());
    let value = inside.clone().tanh().add(a.sub(inside).mul(log_slope.clone().exp()));
    (value, log_slope)
}

impl Bijection for Bnaf {
    fn dim(&self) -> usize {
        self.dim
    }

    fn context_dim(&self) -> usize {
        self.context_dim
    }

    fn directions(&self) -> Directions {
        Directions { forward: Cost::Unavailable, inverse: Cost::ClosedForm }
    }

    fn name(&self) -> String {
        let hidden = self.layers.len() - 1;
        format!("Bnaf({hidden} hidden × {} per feature)", self.layers.first().map_or(0, |l| l.a_out))
    }

    fn forward_unchecked(&self, _u: Tensor<2>, _call: &Call) -> Result<Mapped> {
        Err(FlowError::NotInvertible { bijection: self.name(), direction: Direction::Forward })
    }

    /// Data → base: the network and its log-det.
    fn inverse_unchecked(&self, x: Tensor<2>, call: &Call) -> Result<Mapped> {
        let (n, d) = dims2(&x);
        let last = self.layers.len() - 1;
        let mut h = x;
        let mut log_j: Option<Tensor<3>> = None; // [N, D, a] (the input side has one unit per feature)
        for (l, layer) in self.layers.iter().enumerate() {
            let (w, log_w) = layer.weights();
            let mut pre = h.matmul(w.transpose()).add(layer.bias.val().unsqueeze());
            if let (Some(cw), Some(c)) = (&layer.context, call.context().filter(|_| self.context_dim > 0)) {
                pre = pre.add(c.clone().matmul(cw.val()));
            }
            let (a_out, a_in) = (layer.a_out, layer.a_in);
            // log J_l[n, i, o] = LSE_k(log W[i, o, k] + log J_{l−1}[n, i, k]).
            let chained = match log_j {
                None => log_w.reshape([1, d, a_out]).expand([n, d, a_out]),
                Some(prev) => logsumexp_dim(log_w.reshape([1, d, a_out, a_in]).add(prev.reshape([n, d, 1, a_in])), 3).reshape([n, d, a_out]),
            };
            if l < last {
                let (value, log_slope) = leaky_tanh(pre);
                log_j = Some(chained.add(log_slope.reshape([n, d, a_out])));
                h = value;
            } else {
                log_j = Some(chained);
                h = pre;
            }
        }
        let ld = log_j.map(|j| sum_rows(j.reshape([n, d]))).unwrap_or_else(|| Tensor::zeros([n], &h.device()));
        Ok((h, ld))
    }
}

//! The conditioner half of the transformer/conditioner split (FlowJAX, zuko): a network mapping
//! the features a layer may depend on (and the context) to the parameters of an elementwise
//! [`Transformer`](crate::transformer::Transformer). The autoregressive layer uses MADE, whose
//! outputs for feature `i` see only the features before `i`; the coupling layer an MLP on the
//! features it keeps. Both share one configuration of the network, [`ConditionerConfig`].

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{FlowError, Result};
use crate::nn::{Activation, Made, MadeConfig, Mlp, MlpConfig};

/// The network of a conditioner: hidden widths, nonlinearity, optional residual blocks with
/// dropout. Serialized flat inside each layer's configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConditionerConfig {
    /// Hidden layer widths.
    pub hidden: Vec<usize>,
    /// Hidden nonlinearity.
    #[serde(default)]
    pub activation: Activation,
    /// Residual blocks after the first hidden layer (ResMADE / residual MLP; 0: plain). With
    /// blocks, only `hidden[0]` is used, as the width of every block.
    #[serde(default)]
    pub residual_blocks: usize,
    /// Dropout probability inside the residual blocks (training only).
    #[serde(default)]
    pub dropout: f64,
}

impl ConditionerConfig {
    /// ReLU network with the given hidden widths, no residual blocks.
    pub fn new(hidden: Vec<usize>) -> Self {
        Self { hidden, activation: Activation::Relu, residual_blocks: 0, dropout: 0.0 }
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        if self.hidden.contains(&0) {
            return Err(FlowError::InvalidConfig("hidden layers must have at least one unit".into()));
        }
        crate::nn::validate_residual(&self.hidden, self.residual_blocks, self.dropout)
    }

    /// Whether the network draws random numbers while training (dropout).
    pub fn random_in_training(&self) -> bool {
        self.residual_blocks > 0 && self.dropout > 0.0
    }

    /// MADE over inputs of degrees `order` with `params_per_dim` outputs each (last layer zero).
    pub fn made(&self, order: &[usize], context_dim: usize, params_per_dim: usize, seed: u64) -> MadeConfig {
        MadeConfig::new(order.to_vec(), self.hidden.clone(), params_per_dim)
            .with_context_dim(context_dim)
            .with_activation(self.activation)
            .with_residual_blocks(self.residual_blocks, self.dropout)
            .with_seed(seed)
    }

    /// An MLP `d_in → d_out` (last layer zero).
    pub fn mlp(&self, d_in: usize, d_out: usize, seed: u64) -> MlpConfig {
        MlpConfig::new(d_in, self.hidden.clone(), d_out)
            .with_activation(self.activation)
            .with_zero_last(true)
            .with_residual_blocks(self.residual_blocks, self.dropout)
            .with_seed(seed)
    }
}

/// A network producing transformer parameters `[N, P·D_out]` from its input `[N, D_in]` and an
/// optional context `[N, C]`.
pub trait Conditioner {
    /// The parameters.
    fn params(&self, input: Tensor<2>, context: Option<&Tensor<2>>) -> Tensor<2>;
}

impl Conditioner for Made {
    fn params(&self, input: Tensor<2>, context: Option<&Tensor<2>>) -> Tensor<2> {
        self.forward(input, context)
    }
}

impl Conditioner for Mlp {
    /// The MLP on `[input, context]`.
    fn params(&self, input: Tensor<2>, context: Option<&Tensor<2>>) -> Tensor<2> {
        let input = match context {
            Some(c) => Tensor::cat(vec![input, c.clone()], 1),
            None => input,
        };
        self.forward(input)
    }
}

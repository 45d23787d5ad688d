//! The conditioner half of the transformer/conditioner split (FlowJAX, zuko): a network mapping
//! the features a layer may depend on (and the context) to the parameters of an elementwise
//! [`Transformer`](crate::transformer::Transformer). The autoregressive layer uses MADE, whose
//! outputs for feature `i` see only the features before `i`; the coupling layer an MLP on the
//! features it keeps. Both share one description of the network, [`ConditionerConfig`], and the
//! same builder methods ([`conditioned_layer_builders`]).

use burn::tensor::Tensor;

use crate::nn::{Made, Mlp};

/// The network of a conditioner: hidden widths, nonlinearity, optional residual blocks with
/// dropout. Serialized flat inside each layer's configuration.
pub type ConditionerConfig = crate::nn::NetworkConfig;

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

/// The builder methods of a layer configuration with fields `context_dim`, `conditioner`,
/// `transformer` and `seed` (autoregressive and coupling layers).
macro_rules! conditioned_layer_builders {
    () => {
        /// Conditions on a context of width `context_dim`.
        pub fn with_context_dim(mut self, context_dim: usize) -> Self {
            self.context_dim = context_dim;
            self
        }

        /// Sets the elementwise transformer.
        pub fn with_transformer(mut self, transformer: crate::transformer::Transformer) -> Self {
            self.transformer = transformer;
            self
        }

        /// Sets the conditioner's hidden nonlinearity.
        pub fn with_activation(mut self, activation: crate::nn::Activation) -> Self {
            self.conditioner.activation = activation;
            self
        }

        /// Residual blocks in the conditioner, with dropout inside.
        pub fn with_residual_blocks(mut self, blocks: usize, dropout: f64) -> Self {
            self.conditioner.residual_blocks = blocks;
            self.conditioner.dropout = dropout;
            self
        }

        /// Sets the conditioner network.
        pub fn with_conditioner(mut self, conditioner: crate::bijections::ConditionerConfig) -> Self {
            self.conditioner = conditioner;
            self
        }

        /// Sets the seed of the weights.
        pub fn with_seed(mut self, seed: u64) -> Self {
            self.seed = seed;
            self
        }
    };
}
pub(crate) use conditioned_layer_builders;

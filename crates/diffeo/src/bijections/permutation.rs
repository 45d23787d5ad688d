//! Feature permutations (reverse, random, fixed). Volume preserving: log|det J| = 0.

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use super::{Bijection, Call, LayerSpec, Mapped};
use crate::error::{FlowError, Result};
use crate::tensor::{dims2, indices};

/// Configuration of a [`Permutation`]: `y_i = x_{perm[i]}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PermutationConfig {
    /// The permutation of `0..D`.
    pub perm: Vec<usize>,
}

impl PermutationConfig {
    /// The permutation `perm`.
    pub fn new(perm: Vec<usize>) -> Self {
        Self { perm }
    }

    /// Reverses the order of `dim` features.
    pub fn reverse(dim: usize) -> Self {
        Self::new(Permutation::reverse_order(dim))
    }

    /// Builds the layer.
    pub fn init(&self, device: &Device) -> Result<Permutation> {
        self.validate()?;
        let mut inv = vec![0; self.perm.len()];
        for (i, &p) in self.perm.iter().enumerate() {
            inv[p] = i;
        }
        Ok(Permutation { forward_index: indices(&self.perm, device), inverse_index: indices(&inv, device), perm: self.perm.clone() })
    }
}

impl LayerSpec for PermutationConfig {
    fn dim(&self) -> usize {
        self.perm.len()
    }

    fn validate(&self) -> Result<()> {
        Permutation::validate(&self.perm)
    }
}

/// `y_i = x_{perm[i]}`.
#[derive(Module, Debug)]
pub struct Permutation {
    /// The permutation, as given.
    pub perm: Vec<usize>,
    forward_index: Tensor<1, Int>,
    inverse_index: Tensor<1, Int>,
}

impl Permutation {
    /// Checks that `perm` is a permutation of 0..D.
    pub fn validate(perm: &[usize]) -> Result<()> {
        let mut sorted = perm.to_vec();
        sorted.sort_unstable();
        if sorted != (0..perm.len()).collect::<Vec<_>>() || perm.is_empty() {
            return Err(FlowError::InvalidConfig(format!("not a permutation of 0..{}: {perm:?}", perm.len())));
        }
        Ok(())
    }

    /// Reverses the feature order.
    pub fn reverse_order(dim: usize) -> Vec<usize> {
        (0..dim).rev().collect()
    }

    /// A uniformly random order.
    pub fn random_order(dim: usize, rng: &mut StdRng) -> Vec<usize> {
        let mut p: Vec<usize> = (0..dim).collect();
        p.shuffle(rng);
        p
    }
}

impl Bijection for Permutation {
    fn dim(&self) -> usize {
        self.perm.len()
    }

    fn name(&self) -> String {
        "Permutation".into()
    }

    fn forward_unchecked(&self, x: Tensor<2>, _call: &Call) -> Result<Mapped> {
        let (n, _) = dims2(&x);
        let device = x.device();
        Ok((x.select(1, self.forward_index.clone()), Tensor::zeros([n], &device)))
    }

    fn inverse_unchecked(&self, y: Tensor<2>, _call: &Call) -> Result<Mapped> {
        let (n, _) = dims2(&y);
        let device = y.device();
        Ok((y.select(1, self.inverse_index.clone()), Tensor::zeros([n], &device)))
    }
}

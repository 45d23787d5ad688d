//! Flow matching (Lipman et al. 2023; rectified flows, Liu et al. 2023): trains a continuous
//! normalizing flow's vector field without solving an ODE during training — an objective of the
//! one training loop ([`crate::train`]).
//!
//! On the straight path `x_t = (1 − t)·x₀ + t·x₁` from a base draw `x₀` (t = 0) to a data row
//! `x₁` (t = 1), the conditional velocity is `x₁ − x₀`; regressing the field on it,
//!
//! `L = E_{t ~ U(0,1), x₀ ~ p_u, x₁ ~ data} ‖f(x_t, t; c) − (x₁ − x₀)‖²`,
//!
//! makes the ODE `dz/dt = f` carry the base to the data distribution. With
//! [`Pairing::OptimalTransport`], each minibatch's base draws are first matched to its rows by
//! the assignment minimizing `Σ ‖x₀ − x₁‖²` (minibatch OT: straighter paths, fewer solver steps).
//! Densities and samples then use the ODE with its trace, as for maximum-likelihood CNFs; the
//! validation score is the same mean log-likelihood.

use burn::module::Module;
use burn::tensor::Tensor;
use rand::rngs::StdRng;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::bijections::{Bijection, Call, Layer};
use crate::data::Dataset;
use crate::error::{FlowError, Result};
use crate::fit::DataRows;
use crate::flow::Flow;
use crate::tensor::{dims2, indices, matrix, scalar, to_vec};
use crate::train::{Batch, Objective, StepLoss};

/// How base draws are paired with data rows in a minibatch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Pairing {
    /// Independent draws (conditional flow matching).
    #[default]
    Independent,
    /// The minibatch assignment of least total squared distance (OT-CFM).
    OptimalTransport,
}

/// The flow-matching objective on a data set.
pub struct FlowMatching<'a> {
    data: DataRows<'a>,
    pairing: Pairing,
}

impl<'a> FlowMatching<'a> {
    /// On `train`, validated (mean log-likelihood) on `validation` when given.
    pub fn new(train: &'a Dataset, validation: Option<&'a Dataset>, pairing: Pairing) -> Self {
        Self { data: DataRows::new(train, validation), pairing }
    }
}

/// Checks that `flow` is a CNF flow matching can train: its base-side layer is a (not inverted)
/// CNF and every layer after it is fixed (no parameters; standardization) with an inverse, and
/// no features are factored out.
pub fn check_flow(flow: &Flow) -> Result<()> {
    let chain = &flow.transform;
    let bad = |m: &str| Err(FlowError::InvalidConfig(format!("flow matching trains a continuous normalizing flow (--flow cnf): {m}")));
    let Some(first) = chain.layers.first() else {
        return bad("the flow has no layers");
    };
    if first.inverted || !matches!(first.inner, Layer::Cnf(_)) {
        return bad("its first layer (base side) is not a CNF");
    }
    if chain.initial != chain.dim || chain.trailing != 0 || chain.join.iter().any(|&j| j > 0) {
        return bad("multi-scale flows are not supported");
    }
    for layer in &chain.layers[1..] {
        if layer.num_params() > 0 || matches!(layer.inner, Layer::Cnf(_)) {
            return bad(&format!("a trainable layer ({}) follows the CNF; use one CNF block (--transforms 1)", layer.name()));
        }
        if layer.directions().inverse == crate::bijections::Cost::Unavailable {
            return bad(&format!("{} has no inverse", layer.name()));
        }
    }
    Ok(())
}

/// The row-to-column assignment of least total cost for a square `n × n` cost matrix
/// (row-major): the Hungarian method with potentials, O(n³).
pub fn assignment(cost: &[f64], n: usize) -> Vec<usize> {
    let inf = f64::INFINITY;
    let (mut u, mut v) = (vec![0.0; n + 1], vec![0.0; n + 1]);
    let (mut p, mut way) = (vec![0usize; n + 1], vec![0usize; n + 1]);
    for i in 1..=n {
        p[0] = i;
        let mut j0 = 0;
        let mut minv = vec![inf; n + 1];
        let mut used = vec![false; n + 1];
        loop {
            used[j0] = true;
            let i0 = p[j0];
            let (mut delta, mut j1) = (inf, 0);
            for j in 1..=n {
                if !used[j] {
                    let cur = cost[(i0 - 1) * n + j - 1] - u[i0] - v[j];
                    if cur < minv[j] {
                        minv[j] = cur;
                        way[j] = j0;
                    }
                    if minv[j] < delta {
                        delta = minv[j];
                        j1 = j;
                    }
                }
            }
            for j in 0..=n {
                if used[j] {
                    u[p[j]] += delta;
                    v[j] -= delta;
                } else {
                    minv[j] -= delta;
                }
            }
            j0 = j1;
            if p[j0] == 0 || j1 == 0 {
                break;
            }
        }
        loop {
            let j1 = way[j0];
            p[j0] = p[j1];
            j0 = j1;
            if j0 == 0 {
                break;
            }
        }
    }
    let mut rows = vec![0; n];
    for j in 1..=n {
        if p[j] > 0 {
            rows[p[j] - 1] = j - 1;
        }
    }
    rows
}

impl Objective for FlowMatching<'_> {
    fn check(&self, flow: &Flow) -> Result<()> {
        check_flow(flow)?;
        self.data.check(flow)
    }

    fn epoch_steps(&self, batch_size: usize) -> Option<usize> {
        Some(self.data.epoch_steps(batch_size))
    }

    fn next_batch(&mut self, batch_size: usize, rng: &mut StdRng) -> Batch {
        self.data.next_batch(batch_size, rng)
    }

    fn loss(&self, model: &Flow, part: &Batch, whole: usize, _step: usize, rng: &mut StdRng) -> Result<StepLoss> {
        let Batch::Rows(rows) = part else {
            return Err(FlowError::InvalidConfig("flow matching trains on data rows".into()));
        };
        let Layer::Cnf(cnf) = &model.transform.layers[0].inner else {
            return Err(FlowError::InvalidConfig("flow matching needs a CNF as the first layer".into()));
        };
        let device = model.device();
        let (x, c) = self.data.train().batch(rows, &device);
        let n = rows.len();
        // The data in the CNF's coordinates: through the fixed layers after it, backwards.
        let call = Call::new();
        let mut x1 = x;
        for layer in model.transform.layers[1..].iter().rev() {
            x1 = layer.inverse_unchecked(x1, &call)?.0;
        }
        let mut x0 = model.base.sample(n, rng, &device)?;
        if self.pairing == Pairing::OptimalTransport && n > 1 {
            let d = dims2(&x1).1;
            let (a, b) = (to_vec(x1.clone().detach())?, to_vec(x0.clone())?);
            let cost: Vec<f64> = (0..n * n)
                .map(|k| {
                    let (i, j) = (k / n, k % n);
                    (0..d).map(|q| (a[i * d + q] - b[j * d + q]).powi(2)).sum()
                })
                .collect();
            x0 = x0.select(0, indices(&assignment(&cost, n), &device));
        }
        let t_values: Vec<f64> = (0..n).map(|_| rng.random::<f64>()).collect();
        let t = matrix(t_values, n, 1, &device);
        let xt = x0.clone().mul(t.clone().neg().add_scalar(1.0)).add(x1.clone().mul(t.clone()));
        let target = x1.sub(x0);
        let context = model.embedded_context(c.as_ref());
        let v = cnf.velocity(xt, t, context.as_ref());
        let squared = v.sub(target).square().sum_dim(1);
        let loss = if n == whole { squared.mean() } else { squared.sum().div_scalar(whole as f64) };
        let loss: Tensor<1> = loss.reshape([1]);
        let value = scalar(loss.clone())?;
        Ok(StepLoss { loss, value, metrics: Vec::new() })
    }

    fn shardable(&self) -> bool {
        self.pairing == Pairing::Independent
    }

    fn validate(&self, model: &Flow) -> Result<Option<f64>> {
        self.data.validate(model)
    }
}

//! Fitting flows to data by maximum likelihood (forward KL): minimise `−E_data[log p(x | c)]`
//! with Adam over minibatches — the [`MaximumLikelihood`] objective of the one training loop
//! ([`crate::train`]), and the [`fit`] wrappers around it.

use rand::rngs::StdRng;
use rand::Rng;
use rand::seq::SliceRandom;

pub use crate::data::Dataset;
use crate::data::gather_rows;
use crate::error::{FlowError, Result};
use crate::event::Call;
use crate::flow::Flow;
pub use crate::train::{EvalRecord, FitEvent, FitReport, Schedule, TrainConfig};
use crate::train::{train, Batch, Objective, StepLoss};
use crate::tensor::{scalar, to_vec};

/// Settings of [`fit`]: the training loop's settings.
pub type FitConfig = TrainConfig;

/// Maximum likelihood on a data set: the loss of a batch is `−mean log p(x | c)` (evaluated in
/// training mode), batches walk through the data in a fresh random order each epoch, and the
/// validation score is the mean log-likelihood of the validation set.
///
/// With [`with_fresh_dequantization`](Self::with_fresh_dequantization), every batch draws new
/// uniform dequantization noise: rows holding `(k + u₀)/s` (an integer k, the noise u₀ drawn
/// once when the data were read) are trained on as `(k + u)/s` with a fresh `u ~ U[0, 1)`, so
/// the flow never fits one fixed draw of the noise over many epochs (as Glow and RealNVP train).
///
/// A flow with a variational dequantizer ([`crate::dequantization`]) is trained on the rows'
/// integer parts `k/L` (`L` the dequantizer's levels) with the noise drawn from `q(u | k)`: the loss
/// is `−mean[log p((k + u)/L) − log q(u | k)]`, minimized over the flow and `q` together, and the
/// validation score is that bound with one draw per row.
pub struct MaximumLikelihood<'a> {
    data: DataRows<'a>,
    dequantization: Option<f64>,
}

impl<'a> MaximumLikelihood<'a> {
    /// On `train`, validated on `validation` when given.
    pub fn new(train: &'a Dataset, validation: Option<&'a Dataset>) -> Self {
        Self { data: DataRows::new(train, validation), dequantization: None }
    }

    /// Redraws the dequantization noise of rows `(k + u₀)/scale` at every batch (`scale` 256
    /// for 8-bit images in [0, 1], 1 for integer data).
    pub fn with_fresh_dequantization(mut self, scale: f64) -> Self {
        self.dequantization = Some(scale);
        self
    }
}

/// What every objective with data shares: the training rows, walked in minibatches in a fresh
/// random order each epoch, and the validation rows, scored by their mean log-likelihood.
#[derive(Clone, Debug)]
pub struct DataRows<'a> {
    train: &'a Dataset,
    validation: Option<&'a Dataset>,
    order: Vec<usize>,
    cursor: usize,
}

impl<'a> DataRows<'a> {
    /// Over `train`, validated on `validation` when given.
    pub fn new(train: &'a Dataset, validation: Option<&'a Dataset>) -> Self {
        let n = train.len();
        // The cursor at the end forces a shuffle at the first step.
        Self { train, validation, order: (0..n).collect(), cursor: n }
    }

    /// The training rows.
    pub fn train(&self) -> &'a Dataset {
        self.train
    }

    /// Checks both sets against the flow's width and context.
    pub fn check(&self, flow: &Flow) -> Result<()> {
        self.train.validate_for(flow.dim(), flow.context_dim(), "training data")?;
        if let Some(v) = self.validation {
            v.validate_for(flow.dim(), flow.context_dim(), "validation data")?;
        }
        Ok(())
    }

    /// Steps in one epoch for `batch_size`.
    pub fn epoch_steps(&self, batch_size: usize) -> usize {
        let n = self.order.len();
        n.div_ceil(batch_size.min(n).max(1))
    }

    /// The next batch of at most `batch_size` rows (the rest of the epoch at its end).
    pub fn next_batch(&mut self, batch_size: usize, rng: &mut StdRng) -> Batch {
        let n = self.order.len();
        if self.cursor >= n {
            self.order.shuffle(rng);
            self.cursor = 0;
        }
        let end = (self.cursor + batch_size.min(n)).min(n);
        let rows = self.order[self.cursor..end].to_vec();
        self.cursor = end;
        Batch::Rows(rows)
    }

    /// The mean log-likelihood of the validation rows, if there are any.
    pub fn validate(&self, model: &Flow) -> Result<Option<f64>> {
        self.validation.map(|v| mean_log_likelihood(model, v).map(|(ll, _)| ll)).transpose()
    }
}

impl Objective for MaximumLikelihood<'_> {
    fn check(&self, flow: &Flow) -> Result<()> {
        self.data.check(flow)
    }

    fn epoch_steps(&self, batch_size: usize) -> Option<usize> {
        Some(self.data.epoch_steps(batch_size))
    }

    fn next_batch(&mut self, batch_size: usize, rng: &mut StdRng) -> Batch {
        self.data.next_batch(batch_size, rng)
    }

    fn loss(&self, model: &Flow, part: &Batch, whole: usize, step: usize, rng: &mut StdRng) -> Result<StepLoss> {
        let Batch::Rows(rows) = part else {
            return Err(FlowError::InvalidConfig("maximum likelihood trains on data rows".into()));
        };
        let device = model.device();
        let train = self.data.train();
        let (n, d) = (rows.len(), train.dim());
        let values = &train.x.values;
        let c = train.context_batch(rows, &device);
        // Stochastic log-dets (Hutchinson probes) and dequantization noise draw new numbers at
        // every step and part.
        let seed = (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ rows.first().map_or(0, |&r| r as u64);
        let call = Call::training().with_optional_context(c).with_seed(seed);
        let penalties = call.clone();
        let log_p = match (&model.dequantizer, self.dequantization) {
            (Some(q), _) => {
                let k = crate::tensor::matrix(quantized(values, d, rows, q.levels()), n, d, &device);
                model.dequantized_log_prob_with(k, 1, call)?
            }
            (None, Some(scale)) => model.log_prob_with(crate::tensor::matrix(redequantized(values, d, rows, scale, rng), n, d, &device), call)?,
            (None, None) => model.log_prob_with(train.x.rows_tensor(rows, &device), call)?,
        };
        // Regularized layers (a CNF's RNODE terms) add a per-row penalty to −log p.
        let log_p = match penalties.take_penalty() {
            Some(p) => log_p.sub(p),
            None => log_p,
        };
        let loss = if rows.len() == whole { log_p.mean().neg() } else { log_p.sum().neg().div_scalar(whole as f64) };
        let value = scalar(loss.clone())?;
        Ok(StepLoss { loss, value, metrics: Vec::new() })
    }

    fn shardable(&self) -> bool {
        true
    }

    fn validate(&self, model: &Flow) -> Result<Option<f64>> {
        self.data.validate(model)
    }
}

/// The rows `rows` of a row-major table of width `d` holding `(k + u₀)/scale` (k an integer,
/// `u₀ ∈ [0, 1)`), with fresh noise: `(k + u)/scale`, `u ~ U[0, 1)`. (`scale` is a power of two or
/// 1, so `v·scale` recovers `k + u₀` exactly and its floor is k.)
pub fn redequantized(values: &[f64], d: usize, rows: &[usize], scale: f64, rng: &mut StdRng) -> Vec<f64> {
    gather_rows(values, d, rows, |v| ((v * scale).floor() + rng.random::<f64>()) / scale)
}

/// The rows `rows` of a row-major table of width `d` holding `(k + u₀)/scale` reduced to their
/// integer parts, `k/scale` (exact in f32 and f64 for 8-bit data).
pub fn quantized(values: &[f64], d: usize, rows: &[usize], scale: f64) -> Vec<f64> {
    gather_rows(values, d, rows, |v| (v * scale).floor() / scale)
}

/// Bits per dimension of 8-bit data modelled in [0, 1] as `x = (pixel + U)/256`: `log p` is the
/// density of x, the probability of the pixel values `p·256^−D`, so
/// bits/dim = −(log p − D·ln 256)/(D·ln 2) (8 for uniform noise). A standard error of `log p`
/// converts with the same scale, `se/(D·ln 2)`.
pub fn bits_per_dim(log_likelihood: f64, dim: usize) -> f64 {
    let d = dim as f64;
    -(log_likelihood - d * 256f64.ln()) / (d * std::f64::consts::LN_2)
}

/// Fits `flow` to `train` by maximum likelihood; returns the fitted flow (on the inference
/// device) and a report.
///
/// With `validation`, the returned model is the one with the best validation log-likelihood
/// (checked every `eval_every` steps), and `patience` stops early. `observer` sees every step
/// and validation.
pub fn fit(
    flow: Flow,
    train_set: &Dataset,
    validation: Option<&Dataset>,
    config: &FitConfig,
    observer: &mut dyn FnMut(&FitEvent),
) -> Result<(Flow, FitReport)> {
    fit_monitored(flow, train_set, validation, config, observer, &mut |_, _, _| {})
}

/// [`fit`], with `monitor(step, seconds, model)` called at every validation point with the
/// current model (inference copy), e.g. to record a test curve against wall-clock time. The
/// monitor's own time is not counted in `seconds` nor against the time budget.
pub fn fit_monitored(
    flow: Flow,
    train_set: &Dataset,
    validation: Option<&Dataset>,
    config: &FitConfig,
    observer: &mut dyn FnMut(&FitEvent),
    monitor: &mut dyn FnMut(usize, f64, &Flow),
) -> Result<(Flow, FitReport)> {
    let mut objective = MaximumLikelihood::new(train_set, validation);
    train(flow, &mut objective, config, observer, monitor)
}

/// Mean log-likelihood of a data set and its standard error, evaluated in chunks.
pub fn mean_log_likelihood(flow: &Flow, data: &Dataset) -> Result<(f64, f64)> {
    Ok(mean_and_stderr(&log_likelihoods(flow, data)?))
}

/// Mean of the values and its standard error (sample standard deviation / √n; 0 for one value).
pub fn mean_and_stderr(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var =
        if values.len() > 1 { values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (mean, (var / n).sqrt())
}

/// Per-row log-likelihoods of a data set (validated first), evaluated in chunks.
pub fn log_likelihoods(flow: &Flow, data: &Dataset) -> Result<Vec<f64>> {
    log_likelihoods_with(flow, data, &Call::new())
}

/// [`log_likelihoods`] with the calls of every chunk copied from `call` (its tolerance, random
/// source and evaluation count: `call.evaluations()` then holds the ODE evaluations). A flow with
/// a variational dequantizer gives its bound with one draw per row
/// ([`log_likelihoods_drawn`] with one draw).
pub fn log_likelihoods_with(flow: &Flow, data: &Dataset, call: &Call) -> Result<Vec<f64>> {
    log_likelihoods_drawn(flow, data, 1, call)
}

/// [`log_likelihoods_with`], with `draws` importance samples per row for a flow with a
/// variational dequantizer: the bound of [`Flow::dequantized_log_prob_with`] on rows holding
/// `(k + u₀)/L`, of which only the integer parts `k` count. Other flows' log-likelihoods are
/// exact and draw nothing (`draws` is unused).
pub fn log_likelihoods_drawn(flow: &Flow, data: &Dataset, draws: usize, call: &Call) -> Result<Vec<f64>> {
    data.validate_for(flow.dim(), flow.context_dim(), "data")?;
    let device = flow.device();
    match &flow.dequantizer {
        None => in_chunks(data.len(), 8192, |idx| {
            let (x, c) = data.batch(idx, &device);
            to_vec(flow.log_prob_with(x, call.clone().with_optional_context(c))?)
        }),
        Some(q) => in_chunks(data.len(), (8192 / draws.max(1)).max(1), |idx| {
            let d = flow.dim();
            let k = crate::tensor::matrix(quantized(&data.x.values, d, idx, q.levels()), idx.len(), d, &device);
            // Fresh noise for every chunk (a copied call would repeat the same draws).
            let seed = call.with_rng(|r| r.random::<u64>());
            let call = call.clone().with_optional_context(data.context_batch(idx, &device)).with_seed(seed);
            to_vec(flow.dequantized_log_prob_with(k, draws, call)?)
        }),
    }
}

/// `f` on the row indices `0..n` in chunks of at most `chunk`, its values concatenated.
fn in_chunks(n: usize, chunk: usize, mut f: impl FnMut(&[usize]) -> Result<Vec<f64>>) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(n);
    let mut start = 0;
    while start < n {
        let end = (start + chunk).min(n);
        out.extend(f(&(start..end).collect::<Vec<usize>>())?);
        start = end;
    }
    Ok(out)
}

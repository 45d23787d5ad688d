//! Fitting flows to data by maximum likelihood (forward KL): minimise `−E_data[log p(x | c)]`
//! with Adam over minibatches.
//!
//! Reproducible: the data order comes from a generator seeded by [`FitConfig::seed`] and the
//! weights from the flow's own seed, so the same inputs give the same model. A non-finite loss
//! stops the fit with [`FlowError::NonFiniteLoss`]; no NaN model is ever returned.

use std::time::Instant;

use burn::config::Config;
use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::{decay::WeightDecayConfig, AdamConfig, GradientsParams};
use burn::tensor::{Device, Tensor};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::bijections::NormMode;
use crate::error::{FlowError, Result};
use crate::flow::Flow;
use crate::tensor::{check_finite_values, dims2, matrix, scalar, to_vec};

/// Learning-rate schedule.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// The base rate throughout.
    #[default]
    Constant,
    /// `lr · ½(1 + cos(π t / T))`, from the base rate to 0 (as in the NSF paper).
    Cosine,
}

impl Schedule {
    /// The rate at progress `t ∈ [0, 1]` of the run (clamped), for base rate `base`.
    pub fn rate(self, base: f64, t: f64) -> f64 {
        match self {
            Schedule::Constant => base,
            Schedule::Cosine => base * 0.5 * (1.0 + (std::f64::consts::PI * t.clamp(0.0, 1.0)).cos()),
        }
    }
}

/// Settings of [`fit`]. Defaults: Adam (β = 0.9, 0.999, ε = 1e−8) at 1e−3, 1000 steps of
/// batch 256, constant rate, validation every 100 steps, no early stopping, no clipping, seed 0.
#[derive(Config, Debug)]
pub struct FitConfig {
    /// Base learning rate.
    #[config(default = 1e-3)]
    pub learning_rate: f64,
    /// Optimisation steps (ignored when `epochs` is set).
    #[config(default = 1000)]
    pub steps: usize,
    /// Passes over the training data (overrides `steps`).
    #[config(default = "None")]
    pub epochs: Option<usize>,
    /// Minibatch size (the last batch of an epoch may be smaller).
    #[config(default = 256)]
    pub batch_size: usize,
    /// L2 weight decay added to the gradients (0: none).
    #[config(default = 0.0)]
    pub weight_decay: f64,
    /// Learning-rate schedule.
    #[config(default = "Schedule::Constant")]
    pub schedule: Schedule,
    /// Stop after this many validations without improvement, restoring the best model.
    #[config(default = "None")]
    pub patience: Option<usize>,
    /// Validate every this many steps (and after the last one).
    #[config(default = 100)]
    pub eval_every: usize,
    /// Clip the global gradient norm to this value.
    #[config(default = "None")]
    pub grad_clip_norm: Option<f64>,
    /// Seed of the data order.
    #[config(default = 0)]
    pub seed: u64,
    /// Wall-clock budget in seconds: training stops (after a last validation) once it is spent.
    /// With a cosine schedule, the schedule then follows the larger of the step and time
    /// fractions, so the rate reaches 0 when either runs out.
    #[config(default = "None")]
    pub time_budget: Option<f64>,
    /// Gradient shards per step: the batch is split into this many parts whose gradients are
    /// computed in parallel and summed (the gradient of the whole batch, up to rounding). `0`
    /// (the default): one shard per thread of the CPU's pool, for batches of at least 256 rows and
    /// flows without batch norm or dropout (whose batch statistics or random draws would change);
    /// other devices and `1`: one pass over the whole batch.
    #[config(default = 0)]
    pub shards: usize,
}

impl FitConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(FlowError::InvalidConfig(m.to_string()));
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return bad("learning rate must be positive and finite");
        }
        if self.batch_size == 0 {
            return bad("batch size must be at least 1");
        }
        if self.epochs == Some(0) || (self.epochs.is_none() && self.steps == 0) {
            return bad("steps / epochs must be at least 1");
        }
        if self.eval_every == 0 {
            return bad("eval_every must be at least 1");
        }
        if self.weight_decay < 0.0 || !self.weight_decay.is_finite() {
            return bad("weight decay must be ≥ 0");
        }
        if let Some(c) = self.grad_clip_norm {
            if !(c > 0.0 && c.is_finite()) {
                return bad("gradient clipping norm must be positive");
            }
        }
        if self.patience == Some(0) {
            return bad("patience must be at least 1");
        }
        if let Some(b) = self.time_budget {
            if !(b > 0.0 && b.is_finite()) {
                return bad("time budget must be positive");
            }
        }
        Ok(())
    }

    /// The rate at `step`: the schedule follows the larger of the step and time fractions.
    fn lr_at(&self, step: usize, total: usize, seconds: f64) -> f64 {
        let by_time = self.time_budget.map_or(0.0, |b| seconds / b);
        self.schedule.rate(self.learning_rate, (step as f64 / total.max(1) as f64).max(by_time))
    }
}

/// A data set held on the host: rows of `x` and, for conditional flows, of the context.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// Row-major values `[n, dim]`.
    pub x: Vec<f64>,
    /// Features.
    pub dim: usize,
    /// Row-major context `[n, context_dim]`, if any.
    pub context: Option<Vec<f64>>,
    /// Context width.
    pub context_dim: usize,
}

impl Dataset {
    /// From row-major values.
    pub fn new(x: Vec<f64>, dim: usize) -> Self {
        Self { x, dim, context: None, context_dim: 0 }
    }

    /// Adds a row-major context.
    pub fn with_context(mut self, context: Vec<f64>, context_dim: usize) -> Self {
        self.context = Some(context);
        self.context_dim = context_dim;
        self
    }

    /// From tensors.
    pub fn from_tensors(x: Tensor<2>, context: Option<Tensor<2>>) -> Result<Self> {
        let (_, d) = dims2(&x);
        let mut data = Self::new(to_vec(x)?, d);
        if let Some(c) = context {
            let (_, k) = dims2(&c);
            data = data.with_context(to_vec(c)?, k);
        }
        Ok(data)
    }

    /// Rows.
    pub fn len(&self) -> usize {
        self.x.len() / self.dim.max(1)
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks shapes against a flow and that every value is finite.
    pub fn validate(&self, flow: &Flow, what: &str) -> Result<()> {
        if self.dim != flow.dim() {
            return Err(FlowError::DimensionMismatch { what: what.into(), expected: flow.dim(), got: self.dim });
        }
        if self.x.len() % self.dim.max(1) != 0 {
            return Err(FlowError::InvalidConfig(format!("{what}: value count is not a multiple of {}", self.dim)));
        }
        if self.is_empty() {
            return Err(FlowError::Empty { what: what.into() });
        }
        check_finite_values(&self.x, self.dim, what)?;
        match (flow.context_dim(), &self.context) {
            (0, None) => Ok(()),
            (0, Some(_)) => Err(FlowError::UnexpectedContext { got: self.context_dim }),
            (k, None) => Err(FlowError::MissingContext { expected: k }),
            (k, Some(c)) => {
                if self.context_dim != k {
                    return Err(FlowError::DimensionMismatch {
                        what: format!("{what} context"),
                        expected: k,
                        got: self.context_dim,
                    });
                }
                if c.len() != self.len() * k {
                    return Err(FlowError::RowMismatch { data_rows: self.len(), context_rows: c.len() / k });
                }
                check_finite_values(c, k, &format!("{what} context"))
            }
        }
    }

    /// Rows `idx` as tensors on `device`.
    pub fn batch(&self, idx: &[usize], device: &Device) -> (Tensor<2>, Option<Tensor<2>>) {
        let gather = |v: &[f64], d: usize| {
            let mut out = Vec::with_capacity(idx.len() * d);
            for &i in idx {
                out.extend_from_slice(&v[i * d..(i + 1) * d]);
            }
            matrix(out, idx.len(), d, device)
        };
        let x = gather(&self.x, self.dim);
        let c = self.context.as_ref().map(|c| gather(c, self.context_dim));
        (x, c)
    }
}

/// Progress reported to the observer.
#[derive(Clone, Debug)]
pub enum FitEvent {
    /// After each optimisation step.
    Step {
        /// Step number (1-based).
        step: usize,
        /// Total steps planned.
        total: usize,
        /// Minibatch loss (negative mean log-likelihood).
        loss: f64,
        /// Learning rate used.
        learning_rate: f64,
    },
    /// After each validation.
    Validation {
        /// Step number.
        step: usize,
        /// Mean validation log-likelihood.
        log_likelihood: f64,
        /// Best so far.
        best: f64,
    },
}

/// One validation record.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalRecord {
    /// Step.
    pub step: usize,
    /// Mean training loss since the previous record.
    pub train_loss: f64,
    /// Mean validation log-likelihood, if validating.
    pub val_log_likelihood: Option<f64>,
}

/// What a fit did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FitReport {
    /// Steps taken.
    pub steps: usize,
    /// Step of the returned model.
    pub best_step: usize,
    /// Validation log-likelihood of the returned model, if validating.
    pub best_val_log_likelihood: Option<f64>,
    /// Mean training loss over the last validation interval.
    pub final_train_loss: f64,
    /// Whether early stopping (patience or the time budget) ended the fit.
    pub stopped_early: bool,
    /// Loss curve.
    pub history: Vec<EvalRecord>,
    /// Wall-clock seconds.
    pub seconds: f64,
}

pub(crate) struct ParamIds(pub(crate) Vec<(ParamId, usize)>);

impl ModuleVisitor for ParamIds {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.push((param.id, D));
    }
}

/// Shards per step for [`FitConfig::shards`] (`requested`, 0 = automatic).
fn shard_count(requested: usize, flow: &Flow, batch: usize) -> usize {
    if requested > 0 {
        return requested.min(batch).max(1);
    }
    let threads = rayon::current_num_threads();
    if threads < 2 || batch < 256 || !crate::on_cpu(&flow.device()) || flow.config().batch_dependent() {
        return 1;
    }
    threads.min(batch / 128)
}

/// The mean loss over rows `idx` and its gradients, computed in `shards` parts in parallel and
/// summed. Each part runs on its own copy of the model with fresh autodiff leaves, so that the
/// parts' graphs stay separate (burn merges the graphs of tensors that share a leaf); gradients
/// are matched by parameter id.
fn sharded_gradients(
    model: &Flow,
    train: &Dataset,
    idx: &[usize],
    shards: usize,
    device: &Device,
    ids: &[(ParamId, usize)],
) -> Result<(f64, GradientsParams)> {
    use rayon::prelude::*;
    let n = idx.len() as f64;
    let copies: Vec<Flow> = (0..shards).map(|_| model.clone().valid().train()).collect();
    let parts: Vec<Result<(f64, GradientsParams)>> = copies
        .into_par_iter()
        .zip(idx.par_chunks(idx.len().div_ceil(shards)))
        .map(|(copy, rows)| {
            let (xb, cb) = train.batch(rows, device);
            let loss = copy.log_prob_unchecked(xb, cb.as_ref())?.sum().neg().div_scalar(n);
            let value = scalar(loss.clone())?;
            Ok((value, GradientsParams::from_grads(loss.backward(), &copy)))
        })
        .collect();
    let mut total = 0.0;
    let mut sum: Option<GradientsParams> = None;
    for part in parts {
        let (value, grads) = part?;
        total += value;
        sum = Some(match sum {
            None => grads,
            Some(mut acc) => {
                add_gradients(&mut acc, grads, ids);
                acc
            }
        });
    }
    Ok((total, sum.unwrap_or_default()))
}

/// `acc += other`, parameter by parameter.
fn add_gradients(acc: &mut GradientsParams, mut other: GradientsParams, ids: &[(ParamId, usize)]) {
    fn add<const D: usize>(acc: &mut GradientsParams, other: &mut GradientsParams, id: ParamId) {
        if let Some(g) = other.remove::<D>(id) {
            let g = match acc.remove::<D>(id) {
                Some(a) => a.add(g),
                None => g,
            };
            acc.register(id, g);
        }
    }
    for &(id, rank) in ids {
        match rank {
            1 => add::<1>(acc, &mut other, id),
            2 => add::<2>(acc, &mut other, id),
            3 => add::<3>(acc, &mut other, id),
            _ => {}
        }
    }
}

pub(crate) fn clip_global_norm(grads: &mut GradientsParams, ids: &[(ParamId, usize)], max_norm: f64) -> Result<()> {
    let mut total: Option<Tensor<1>> = None;
    let mut add = |t: Tensor<1>| {
        total = Some(match total.take() {
            Some(a) => a.add(t),
            None => t,
        })
    };
    for &(id, rank) in ids {
        match rank {
            1 => {
                if let Some(g) = grads.get::<1>(id) {
                    add(g.square().sum());
                }
            }
            2 => {
                if let Some(g) = grads.get::<2>(id) {
                    add(g.square().sum());
                }
            }
            _ => {}
        }
    }
    let Some(total) = total else { return Ok(()) };
    let norm = scalar(total)?.sqrt();
    if norm > max_norm && norm.is_finite() {
        let f = max_norm / norm;
        for &(id, rank) in ids {
            match rank {
                1 => {
                    if let Some(g) = grads.remove::<1>(id) {
                        grads.register(id, g.mul_scalar(f));
                    }
                }
                2 => {
                    if let Some(g) = grads.remove::<2>(id) {
                        grads.register(id, g.mul_scalar(f));
                    }
                }
                _ => {}
            }
        }
    }
    Ok(())
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
    data.validate(flow, "data")?;
    let device = flow.device();
    let n = data.len();
    let mut out = Vec::with_capacity(n);
    let chunk = 8192;
    let mut start = 0;
    while start < n {
        let end = (start + chunk).min(n);
        let idx: Vec<usize> = (start..end).collect();
        let (x, c) = data.batch(&idx, &device);
        out.extend(to_vec(flow.log_prob_unchecked(x, c.as_ref())?)?);
        start = end;
    }
    Ok(out)
}

pub(crate) fn inference_copy(model: &Flow) -> Flow {
    let mut v = model.valid();
    v.set_norm_mode(NormMode::Evaluation);
    v
}

/// Fits `flow` to `train` by maximum likelihood; returns the fitted flow (on the inference
/// device, batch norm in evaluation mode) and a report.
///
/// With `validation`, the returned model is the one with the best validation log-likelihood
/// (checked every `eval_every` steps), and `patience` stops early. `observer` sees every step
/// and validation.
pub fn fit(
    flow: Flow,
    train: &Dataset,
    validation: Option<&Dataset>,
    config: &FitConfig,
    observer: &mut dyn FnMut(&FitEvent),
) -> Result<(Flow, FitReport)> {
    fit_monitored(flow, train, validation, config, observer, &mut |_, _, _| {})
}

/// [`fit`], with `monitor(step, seconds, model)` called at every validation point with the
/// current model (inference copy), e.g. to record a test curve against wall-clock time. The
/// monitor's own time is not counted in `seconds` nor against the time budget.
pub fn fit_monitored(
    flow: Flow,
    train: &Dataset,
    validation: Option<&Dataset>,
    config: &FitConfig,
    observer: &mut dyn FnMut(&FitEvent),
    monitor: &mut dyn FnMut(usize, f64, &Flow),
) -> Result<(Flow, FitReport)> {
    let start = Instant::now();
    config.validate()?;
    train.validate(&flow, "training data")?;
    if let Some(v) = validation {
        v.validate(&flow, "validation data")?;
    }
    let device = flow.device();
    let ad_device = device.clone().autodiff();
    // Dropout draws from burn's generator: seed it so that a fit is reproducible.
    ad_device.seed(config.seed);
    let mut model = if device.is_autodiff() { flow } else { flow.train() };
    model.set_norm_mode(NormMode::Training);

    let n = train.len();
    let batch = config.batch_size.min(n);
    let steps_per_epoch = n.div_ceil(batch);
    let total = match config.epochs {
        Some(e) => e * steps_per_epoch,
        None => config.steps,
    };

    let mut adam = AdamConfig::new().with_epsilon(1e-8);
    if config.weight_decay > 0.0 {
        adam = adam.with_weight_decay(Some(WeightDecayConfig::new(config.weight_decay as f32)));
    }
    let mut optim = adam.init();
    let mut ids = ParamIds(Vec::new());
    model.visit(&mut ids);

    let shards = shard_count(config.shards, &model, batch);

    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut order: Vec<usize> = (0..n).collect();
    let mut cursor = n; // forces a shuffle at the first step

    let mut history = Vec::new();
    let mut best: Option<(f64, usize, Flow)> = None;
    let mut since_best = 0;
    let mut interval_loss = 0.0;
    let mut interval_count = 0usize;
    let mut last_interval_loss = f64::NAN;
    let mut stopped_early = false;
    let mut steps_done = 0;
    let mut paused = 0.0;

    for step in 1..=total {
        if cursor >= n {
            order.shuffle(&mut rng);
            cursor = 0;
        }
        let end = (cursor + batch).min(n);
        let idx = &order[cursor..end];
        cursor = end;
        let (loss_value, mut grads) = if shards > 1 {
            sharded_gradients(&model, train, idx, shards, &ad_device, &ids.0)?
        } else {
            let (xb, cb) = train.batch(idx, &ad_device);
            let loss = model.log_prob_unchecked(xb, cb.as_ref())?.mean().neg();
            let loss_value = scalar(loss.clone())?;
            (loss_value, GradientsParams::from_grads(loss.backward(), &model))
        };
        if !loss_value.is_finite() {
            return Err(FlowError::NonFiniteLoss { step, loss: loss_value });
        }
        if let Some(max_norm) = config.grad_clip_norm {
            clip_global_norm(&mut grads, &ids.0, max_norm)?;
        }
        let lr = config.lr_at(step - 1, total, start.elapsed().as_secs_f64() - paused);
        model = optim.step(lr, model, grads);
        steps_done = step;
        interval_loss += loss_value;
        interval_count += 1;
        observer(&FitEvent::Step { step, total, loss: loss_value, learning_rate: lr });

        let out_of_time = config.time_budget.is_some_and(|b| start.elapsed().as_secs_f64() - paused >= b);
        if step % config.eval_every == 0 || step == total || out_of_time {
            let train_loss = interval_loss / interval_count.max(1) as f64;
            last_interval_loss = train_loss;
            interval_loss = 0.0;
            interval_count = 0;
            let candidate = inference_copy(&model);
            let val_ll = validation.map(|val| mean_log_likelihood(&candidate, val)).transpose()?.map(|(ll, _)| ll);
            let t0 = Instant::now();
            monitor(step, start.elapsed().as_secs_f64() - paused, &candidate);
            paused += t0.elapsed().as_secs_f64();
            history.push(EvalRecord { step, train_loss, val_log_likelihood: val_ll });
            if let Some(ll) = val_ll {
                let improved = ll.is_finite() && best.as_ref().is_none_or(|(b, _, _)| ll > *b);
                if improved {
                    best = Some((ll, step, candidate));
                    since_best = 0;
                } else {
                    since_best += 1;
                }
                let best_ll = best.as_ref().map(|b| b.0).unwrap_or(f64::NAN);
                observer(&FitEvent::Validation { step, log_likelihood: ll, best: best_ll });
                if config.patience.is_some_and(|p| since_best >= p) {
                    stopped_early = true;
                    break;
                }
            }
        }
        if out_of_time {
            stopped_early = true;
            break;
        }
    }

    let (flow, best_step, best_ll) = match best {
        Some((ll, s, f)) => (f, s, Some(ll)),
        None => (inference_copy(&model), steps_done, None),
    };
    let report = FitReport {
        steps: steps_done,
        best_step,
        best_val_log_likelihood: best_ll,
        final_train_loss: last_interval_loss,
        stopped_early,
        history,
        seconds: start.elapsed().as_secs_f64() - paused,
    };
    Ok((flow, report))
}

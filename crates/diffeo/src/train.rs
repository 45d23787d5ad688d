//! The one training loop. An [`Objective`] — maximum likelihood on data
//! ([`crate::fit::MaximumLikelihood`]), reverse KL on a target ([`crate::vi::ReverseKl`]), and
//! later objectives (posterior estimation, flow matching, regularized CNFs) — is a value that says
//! how to draw a batch, what its loss is and how to score a model; [`train`] owns everything else:
//! the device and seeding, Adam, the learning-rate schedule, gradient clipping, data-parallel
//! gradient shards, validation, early stopping, the time budget and the observer.
//!
//! Reproducible: the loop's generator (seeded by [`TrainConfig::seed`]) orders the data or draws
//! the Monte-Carlo samples, burn's generator (seeded too) drives dropout, and the weights come from
//! the flow's own seed. A non-finite loss stops training with [`FlowError::NonFiniteLoss`]; no NaN
//! model is ever returned.

mod adam;

use std::cell::Cell;
use std::time::Instant;

use burn::config::Config;
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::error::{FlowError, Result};
use crate::flow::Flow;
use crate::tensor::scalar;

/// Learning-rate schedule.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// The base rate throughout.
    #[default]
    Constant,
    /// `lr · ½(1 + cos(π t / T))`, from the base rate to 0 (as in the NSF paper).
    Cosine,
    /// The base rate for the first 80 % of the run, then a cosine from it to 0 over the last 20 %
    /// (warmup-free "warmup–stable–decay": the annealing of [`Schedule::Cosine`] at the end, the
    /// full rate for longer).
    Cooldown,
}

/// The fraction of a [`Schedule::Cooldown`] run spent decaying.
pub const COOLDOWN_FRACTION: f64 = 0.2;

impl std::str::FromStr for Schedule {
    type Err = FlowError;

    /// `constant`, `cosine` or `cooldown` (front ends' spelling).
    fn from_str(name: &str) -> Result<Schedule> {
        match name {
            "constant" => Ok(Schedule::Constant),
            "cosine" => Ok(Schedule::Cosine),
            "cooldown" => Ok(Schedule::Cooldown),
            other => Err(FlowError::InvalidConfig(format!("unknown schedule {other:?} (expected constant, cosine or cooldown)"))),
        }
    }
}

impl Schedule {
    /// The rate at progress `t ∈ [0, 1]` of the run (clamped), for base rate `base`.
    pub fn rate(self, base: f64, t: f64) -> f64 {
        match self {
            Schedule::Constant => base,
            Schedule::Cosine => base * 0.5 * (1.0 + (std::f64::consts::PI * t.clamp(0.0, 1.0)).cos()),
            Schedule::Cooldown => {
                let into = ((t - (1.0 - COOLDOWN_FRACTION)) / COOLDOWN_FRACTION).clamp(0.0, 1.0);
                base * 0.5 * (1.0 + (std::f64::consts::PI * into).cos())
            }
        }
    }
}

/// Settings of [`train`]. Defaults: Adam (β = 0.9, 0.999, ε = 1e−8) at 1e−3, 1000 steps of
/// batch 256, constant rate, validation every 100 steps, no early stopping, no clipping, seed 0.
#[derive(Config, Debug)]
pub struct TrainConfig {
    /// Base learning rate.
    #[config(default = 1e-3)]
    pub learning_rate: f64,
    /// Optimisation steps (ignored when `epochs` is set). 0: no step limit — train until the
    /// time budget is spent (needs `time_budget`).
    #[config(default = 1000)]
    pub steps: usize,
    /// Passes over the training data (overrides `steps`; objectives with data only).
    #[config(default = "None")]
    pub epochs: Option<usize>,
    /// Minibatch size (data rows, or Monte-Carlo draws); the last batch of an epoch may be
    /// smaller.
    #[config(default = 256)]
    pub batch_size: usize,
    /// L2 weight decay added to the gradients (0: none).
    #[config(default = 0.0)]
    pub weight_decay: f64,
    /// Learning-rate schedule.
    #[config(default = "Schedule::Constant")]
    pub schedule: Schedule,
    /// Stop after this many validations without improvement, restoring the best model (after
    /// `lr_decays` reductions of the rate, when set).
    #[config(default = "None")]
    pub patience: Option<usize>,
    /// Times the rate is multiplied by `lr_decay_factor` when `patience` runs out, before
    /// training stops (0: stop at the first plateau). Each reduction resets the count.
    #[config(default = 0)]
    pub lr_decays: usize,
    /// The factor of each reduction on a plateau, in (0, 1).
    #[config(default = 0.5)]
    pub lr_decay_factor: f64,
    /// Validate (and report the interval's mean loss) every this many steps, and after the last.
    #[config(default = 100)]
    pub eval_every: usize,
    /// Clip the global gradient norm to this value.
    #[config(default = "None")]
    pub grad_clip_norm: Option<f64>,
    /// Seed of the loop's generator (data order, Monte-Carlo draws) and of burn's (dropout).
    #[config(default = 0)]
    pub seed: u64,
    /// Wall-clock budget in seconds: training stops (after a last validation) once it is spent.
    /// With a cosine schedule, the schedule then follows the larger of the step and time
    /// fractions, so the rate reaches 0 when either runs out.
    #[config(default = "None")]
    pub time_budget: Option<f64>,
    /// Gradient shards per step: the batch is split into this many parts whose gradients are
    /// computed in parallel and summed (the gradient of the whole batch, up to rounding). `0`
    /// (the default): one shard per thread of the CPU's pool, for batches of at least 256 rows,
    /// objectives that allow it and flows without batch norm, ActNorm or dropout (whose batch
    /// statistics or random draws would change); other devices and `1`: one pass over the whole
    /// batch. Such flows take one pass whatever is asked.
    #[config(default = 0)]
    pub shards: usize,
    /// Polyak averaging of the weights: `w̄` starts at the weights after the first step, then
    /// after step `t + 1` becomes `d·w̄ + (1 − d)·w` with `d = min(decay, (1 + t)/(10 + t))`
    /// (early averages do not cling to the first steps); validation, the best model and the
    /// returned model use `w̄` (as Glow's code evaluates with its Polyak average). `None` or
    /// `Some(0.0)` (`w̄ = w`): the last weights.
    #[config(default = "None")]
    pub average_decay: Option<f64>,
}

impl TrainConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(FlowError::InvalidConfig(m.to_string()));
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return bad("learning rate must be positive and finite");
        }
        if self.batch_size == 0 {
            return bad("batch size must be at least 1");
        }
        if self.epochs == Some(0) || (self.epochs.is_none() && self.steps == 0 && self.time_budget.is_none()) {
            return bad("steps / epochs must be at least 1 (or give a time budget)");
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
        if !(self.lr_decay_factor > 0.0 && self.lr_decay_factor < 1.0) {
            return bad("the learning-rate decay factor must lie in (0, 1)");
        }
        if let Some(b) = self.time_budget {
            if !(b > 0.0 && b.is_finite()) {
                return bad("time budget must be positive");
            }
        }
        if let Some(d) = self.average_decay {
            if !(0.0..1.0).contains(&d) {
                return bad("the weight-averaging decay must lie in [0, 1)");
            }
        }
        Ok(())
    }

    /// The rate at `step` of `total` (`None`: no step limit): the schedule follows the larger of
    /// the step and time fractions.
    fn lr_at(&self, step: usize, total: Option<usize>, seconds: f64) -> f64 {
        let by_time = self.time_budget.map_or(0.0, |b| seconds / b);
        let by_steps = total.map_or(0.0, |t| step as f64 / t.max(1) as f64);
        self.schedule.rate(self.learning_rate, by_steps.max(by_time))
    }
}

/// A batch an objective drew.
#[derive(Clone, Debug, PartialEq)]
pub enum Batch {
    /// Rows of a data set.
    Rows(Vec<usize>),
    /// Monte-Carlo draws from the flow.
    Draws(usize),
}

impl Batch {
    /// Rows or draws.
    pub fn len(&self) -> usize {
        match self {
            Batch::Rows(r) => r.len(),
            Batch::Draws(n) => *n,
        }
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Splits the batch into at most `parts` contiguous parts.
    fn split(&self, parts: usize) -> Vec<Batch> {
        match self {
            Batch::Rows(r) => r.chunks(r.len().div_ceil(parts.max(1)).max(1)).map(|c| Batch::Rows(c.to_vec())).collect(),
            Batch::Draws(n) => {
                let per = n.div_ceil(parts.max(1)).max(1);
                (0..*n).step_by(per).map(|s| Batch::Draws(per.min(n - s))).collect()
            }
        }
    }
}

/// Loss value, metrics and gradients of a batch.
type BatchGradients = (f64, Vec<(&'static str, f64)>, Vec<GradientsParams>);

/// The loss of (part of) a batch.
pub struct StepLoss {
    /// A scalar `[1]` on the autodiff device: the part's share of the batch loss (the batch loss
    /// is the sum over its parts).
    pub loss: Tensor<1>,
    /// Its value.
    pub value: f64,
    /// Values to report (e.g. `("elbo", …)`), summed over parts weighted by their size.
    pub metrics: Vec<(&'static str, f64)>,
}

/// What a training objective provides to [`train`].
pub trait Objective {
    /// Checks that `flow` suits the objective (shapes, context, directions) before training.
    fn check(&self, flow: &Flow) -> Result<()>;

    /// Steps in one pass over the data for `batch_size`, for objectives with data.
    fn epoch_steps(&self, batch_size: usize) -> Option<usize> {
        let _ = batch_size;
        None
    }

    /// The next batch; `rng` is the loop's seeded generator.
    fn next_batch(&mut self, batch_size: usize, rng: &mut StdRng) -> Batch;

    /// The loss of `part`, a part of a batch of `whole` rows or draws, at step `step` (0-based),
    /// evaluated with `model` (on the autodiff device) in training mode; `rng` draws any
    /// randomness the objective needs.
    fn loss(&self, model: &Flow, part: &Batch, whole: usize, step: usize, rng: &mut StdRng) -> Result<StepLoss>;

    /// Whether a batch may be split into parts whose losses are computed in parallel.
    fn shardable(&self) -> bool {
        false
    }

    /// A score to maximize on held-out data (mean log-likelihood), if the objective has any; the
    /// model is an inference copy.
    fn validate(&self, model: &Flow) -> Result<Option<f64>> {
        let _ = model;
        Ok(None)
    }
}

/// Progress reported to the observer.
#[derive(Clone, Debug)]
pub enum FitEvent {
    /// Before the first step: the flow's features D (front ends convert the validation
    /// log-likelihoods of image models to bits per dimension with it).
    Begin {
        /// Features D.
        dim: usize,
    },
    /// After each optimisation step.
    Step {
        /// Step number (1-based).
        step: usize,
        /// Total steps planned (`usize::MAX`: until the time budget is spent).
        total: usize,
        /// Minibatch loss.
        loss: f64,
        /// Learning rate used.
        learning_rate: f64,
    },
    /// At the end of each reporting interval (every `eval_every` steps and after the last).
    Interval {
        /// Step number.
        step: usize,
        /// Total steps planned.
        total: usize,
        /// Mean loss over the interval.
        train_loss: f64,
        /// Mean of each objective metric over the interval.
        metrics: Vec<(&'static str, f64)>,
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

/// One reporting interval.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalRecord {
    /// Step.
    pub step: usize,
    /// Mean training loss since the previous record.
    pub train_loss: f64,
    /// Mean validation log-likelihood, if validating.
    pub val_log_likelihood: Option<f64>,
    /// Mean of each objective metric over the interval.
    #[serde(default)]
    pub metrics: Vec<(String, f64)>,
}

/// What a training run did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FitReport {
    /// Steps taken.
    pub steps: usize,
    /// Step of the returned model.
    pub best_step: usize,
    /// Validation log-likelihood of the returned model, if validating.
    pub best_val_log_likelihood: Option<f64>,
    /// Mean training loss over the last interval.
    pub final_train_loss: f64,
    /// Whether early stopping (patience, the time budget or an interruption) ended the fit.
    pub stopped_early: bool,
    /// Whether [`stop_current_fit`] ended the fit.
    #[serde(default)]
    pub interrupted: bool,
    /// Loss curve.
    pub history: Vec<EvalRecord>,
    /// Wall-clock seconds (without the monitor's time).
    pub seconds: f64,
}

thread_local! {
    /// Set by [`stop_current_fit`]; cleared when a fit starts on this thread.
    static STOP_REQUESTED: Cell<bool> = const { Cell::new(false) };
}

/// Asks the fit running on this thread (called from its observer, e.g. when a front end's user
/// presses Ctrl-C) to stop after the current step as if its time budget were spent: a last
/// validation, then the best model so far, with [`FitReport::interrupted`] set.
pub fn stop_current_fit() {
    STOP_REQUESTED.with(|s| s.set(true));
}

pub(crate) struct ParamIds(pub(crate) Vec<(ParamId, usize)>);

impl ModuleVisitor for ParamIds {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.push((param.id, D));
    }
}

/// The Polyak average `w̄` of a model's weights ([`TrainConfig::average_decay`]), one flat tensor
/// per parameter in the order burn visits them, on the inference device.
struct WeightAverage {
    decay: f64,
    updates: usize,
    weights: Vec<Tensor<1>>,
}

impl WeightAverage {
    /// `w̄ ← d·w̄ + (1 − d)·w` with the weights `w` of `model` (autodiff or not).
    fn update(&mut self, model: &Flow) {
        let d = self.decay.min((1.0 + self.updates as f64) / (10.0 + self.updates as f64));
        let mut visit = AverageUpdate { average: self, decay: d, next: 0 };
        model.valid().visit(&mut visit);
        self.updates += 1;
    }

    /// An inference copy of `model` carrying the averaged weights.
    fn apply(&self, model: &Flow) -> Result<Flow> {
        let mut map = AverageApply { weights: &self.weights, next: 0 };
        settled(model.valid().map(&mut map))
    }
}

struct AverageUpdate<'a> {
    average: &'a mut WeightAverage,
    decay: f64,
    next: usize,
}

impl ModuleVisitor for AverageUpdate<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let w = param.val();
        let flat: Tensor<1> = w.clone().reshape([w.shape().num_elements()]);
        let weights = &mut self.average.weights;
        match weights.get_mut(self.next) {
            Some(avg) => *avg = avg.clone().mul_scalar(self.decay).add(flat.mul_scalar(1.0 - self.decay)),
            None => weights.push(flat),
        }
        self.next += 1;
    }
}

struct AverageApply<'a> {
    weights: &'a [Tensor<1>],
    next: usize,
}

impl ModuleMapper for AverageApply<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let avg = self.weights.get(self.next).cloned();
        self.next += 1;
        match avg {
            Some(avg) => param.map(|t| avg.reshape(t.shape())),
            None => param,
        }
    }
}

/// Shards per step for [`TrainConfig::shards`] (`requested`, 0 = automatic).
fn shard_count(requested: usize, flow: &Flow, batch: usize, shardable: bool) -> usize {
    if !shardable || flow.config().batch_dependent() {
        return 1;
    }
    if requested > 0 {
        return requested.min(batch).max(1);
    }
    let threads = rayon::current_num_threads();
    if threads < 2 || batch < 256 || !crate::on_cpu(&flow.device()) {
        return 1;
    }
    threads.min(batch / 128)
}

/// The gradients of a loss; an error when a step of the backward pass failed (an adjoint ODE
/// solve, which cannot return its error through burn's backward pass).
fn backward(loss: Tensor<1>) -> Result<burn::tensor::Gradients> {
    let grads = loss.backward();
    crate::custom_op::take_backward_failure()?;
    Ok(grads)
}

/// Loss and gradients of a batch: in one pass, or in `shards` parts in parallel whose gradients
/// are summed. Each part runs on its own copy of the model with fresh autodiff leaves, so that the
/// parts' graphs stay separate (burn merges the graphs of tensors that share a leaf); gradients are
/// matched by parameter id.
fn batch_gradients(
    objective: &(dyn Objective + Sync),
    model: &Flow,
    batch: &Batch,
    step: usize,
    shards: usize,
    rng: &mut StdRng,
) -> Result<BatchGradients> {
    if shards <= 1 {
        let l = objective.loss(model, batch, batch.len(), step, rng)?;
        return Ok((l.value, l.metrics, vec![GradientsParams::from_grads(backward(l.loss)?, model)]));
    }
    use rayon::prelude::*;
    let _ = rng; // shards draw nothing from the loop's generator, so the data order stays the same
    let whole = batch.len();
    let parts = batch.split(shards);
    let copies: Vec<Flow> = parts.iter().map(|_| model.clone().valid().train()).collect();
    let results: Vec<Result<BatchGradients>> = copies
        .into_par_iter()
        .zip(parts.par_iter())
        .enumerate()
        .map(|(i, (copy, part))| {
            let mut part_rng = StdRng::seed_from_u64((step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i as u64);
            let l = objective.loss(&copy, part, whole, step, &mut part_rng)?;
            let grads = GradientsParams::from_grads(backward(l.loss)?, &copy);
            Ok((l.value, l.metrics, vec![grads]))
        })
        .collect();
    let mut total = 0.0;
    let mut metrics: Vec<(&'static str, f64)> = Vec::new();
    let mut parts = Vec::with_capacity(shards);
    for part in results {
        let (value, part_metrics, grads) = part?;
        total += value;
        add_metrics(&mut metrics, part_metrics);
        parts.extend(grads);
    }
    Ok((total, metrics, parts))
}

/// Adds metrics to running sums, by name.
fn add_metrics(sums: &mut Vec<(&'static str, f64)>, metrics: Vec<(&'static str, f64)>) {
    for (k, v) in metrics {
        match sums.iter_mut().find(|(name, _)| *name == k) {
            Some(m) => m.1 += v,
            None => sums.push((k, v)),
        }
    }
}

/// `f::<D>(args…)` for a parameter of rank `D` (as [`ParamIds`] records it), else `otherwise`:
/// the one dispatch from a recorded rank to burn's typed gradient access, so that every
/// per-parameter pass (summing shards, clipping) reaches the same parameters.
macro_rules! by_rank {
    ($rank:expr, $f:ident($($arg:expr),*), $otherwise:expr) => {
        match $rank {
            1 => $f::<1>($($arg),*),
            2 => $f::<2>($($arg),*),
            3 => $f::<3>($($arg),*),
            4 => $f::<4>($($arg),*),
            5 => $f::<5>($($arg),*),
            _ => $otherwise,
        }
    };
}

/// The sum of gradient parts, matched by parameter id (in order: `((g₀ + g₁) + g₂) …`).
fn sum_gradients(parts: Vec<GradientsParams>, ids: &[(ParamId, usize)]) -> GradientsParams {
    let mut parts = parts.into_iter();
    let mut acc = parts.next().unwrap_or_default();
    for part in parts {
        add_gradients(&mut acc, part, ids);
    }
    acc
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
        by_rank!(rank, add(acc, &mut other, id), ());
    }
}

/// Scales the gradients so that their global norm `‖g‖ = √(Σ_p Σ g_p²)`, over the parameters of
/// every rank (vectors, matrices, convolution kernels), is at most `max_norm`.
pub(crate) fn clip_global_norm(grads: &mut GradientsParams, ids: &[(ParamId, usize)], max_norm: f64) -> Result<()> {
    fn squares<const D: usize>(grads: &GradientsParams, id: ParamId) -> Option<Tensor<1>> {
        grads.get::<D>(id).map(|g| g.square().sum())
    }
    fn scale<const D: usize>(grads: &mut GradientsParams, id: ParamId, f: f64) {
        if let Some(g) = grads.remove::<D>(id) {
            grads.register(id, g.mul_scalar(f));
        }
    }
    let mut total: Option<Tensor<1>> = None;
    for &(id, rank) in ids {
        if let Some(part) = by_rank!(rank, squares(grads, id), None) {
            total = Some(match total.take() {
                Some(a) => a.add(part),
                None => part,
            });
        }
    }
    let Some(total) = total else { return Ok(()) };
    let norm = scalar(total)?.sqrt();
    if norm > max_norm && norm.is_finite() {
        let f = max_norm / norm;
        for &(id, rank) in ids {
            by_rank!(rank, scale(grads, id, f), ());
        }
    }
    Ok(())
}

/// An inference copy of a model: no autodiff, dropout off, state kept with the weights settled
/// ([`Bijection::settle`](crate::bijections::Bijection::settle)).
pub(crate) fn inference_copy(model: &Flow) -> Result<Flow> {
    settled(model.valid())
}

/// `copy` (an inference copy) with its state settled.
fn settled(copy: Flow) -> Result<Flow> {
    crate::bijections::Bijection::settle(&copy.transform)?;
    copy.base.settle()?;
    Ok(copy)
}

/// Trains `flow` on `objective`; returns the trained flow (on the inference device) and a report.
///
/// Each step draws a batch, computes its loss and gradients (in parallel shards where allowed),
/// clips them, and takes an Adam step at the scheduled rate. Every `eval_every` steps (and after
/// the last) the interval's mean loss is recorded, and objectives with held-out data are
/// validated: the returned model is then the one with the best validation score, and `patience`
/// stops early. `observer` sees every step, interval and validation; `monitor(step, seconds,
/// model)` is called at every interval with an inference copy (its own time is not counted).
pub fn train(
    flow: Flow,
    objective: &mut (dyn Objective + Sync),
    config: &TrainConfig,
    observer: &mut dyn FnMut(&FitEvent),
    monitor: &mut dyn FnMut(usize, f64, &Flow),
) -> Result<(Flow, FitReport)> {
    let start = Instant::now();
    STOP_REQUESTED.with(|s| s.set(false));
    config.validate()?;
    objective.check(&flow)?;
    let device = flow.device();
    let ad_device = device.clone().autodiff();
    // Dropout draws from burn's generator: seed it so that a run is reproducible.
    ad_device.seed(config.seed);
    let mut model = if device.is_autodiff() { flow } else { flow.train() };

    let batch_size = config.batch_size;
    let total: Option<usize> = match (config.epochs, objective.epoch_steps(batch_size)) {
        (Some(e), Some(per_epoch)) => Some(e * per_epoch),
        (Some(_), None) => return Err(FlowError::InvalidConfig("epochs need an objective with training data; give steps".into())),
        (None, _) if config.steps == 0 => None,
        (None, _) => Some(config.steps),
    };
    let total_reported = total.unwrap_or(usize::MAX);
    observer(&FitEvent::Begin { dim: model.dim() });

    let mut optim = adam::Adam::new(1e-8, config.weight_decay as f32, &ad_device);
    let mut ids = ParamIds(Vec::new());
    model.visit(&mut ids);
    let mut rng = StdRng::seed_from_u64(config.seed);

    let mut history = Vec::new();
    let mut best: Option<(f64, usize, Flow)> = None;
    let mut since_best = 0;
    // Reductions of the rate on plateaus so far.
    let mut decays = 0usize;
    let (mut interval_loss, mut interval_count) = (0.0, 0usize);
    let mut interval_metrics: Vec<(&'static str, f64)> = Vec::new();
    let mut last_interval_loss = f64::NAN;
    let mut stopped_early = false;
    let mut interrupted = false;
    let mut steps_done = 0;
    let mut paused = 0.0;
    let mut shards = None;
    let mut average = config.average_decay.filter(|d| *d > 0.0).map(|decay| WeightAverage { decay, updates: 0, weights: Vec::new() });

    let mut step = 0;
    while total.is_none_or(|t| step < t) {
        step += 1;
        let batch = objective.next_batch(batch_size, &mut rng);
        let shard_n = *shards.get_or_insert_with(|| shard_count(config.shards, &model, batch.len(), objective.shardable()));
        let (loss_value, metrics, mut grads) = batch_gradients(&*objective, &model, &batch, step - 1, shard_n, &mut rng)?;
        if !loss_value.is_finite() {
            return Err(FlowError::NonFiniteLoss { step, loss: loss_value });
        }
        if let Some(max_norm) = config.grad_clip_norm {
            let mut summed = sum_gradients(grads, &ids.0);
            clip_global_norm(&mut summed, &ids.0, max_norm)?;
            grads = vec![summed];
        }
        let lr = config.lr_decay_factor.powi(decays as i32) * config.lr_at(step - 1, total, start.elapsed().as_secs_f64() - paused);
        model = optim.step(lr, model, grads, &ids.0)?;
        if let Some(avg) = average.as_mut() {
            avg.update(&model);
        }
        steps_done = step;
        interval_loss += loss_value;
        interval_count += 1;
        add_metrics(&mut interval_metrics, metrics);
        observer(&FitEvent::Step { step, total: total_reported, loss: loss_value, learning_rate: lr });

        interrupted = STOP_REQUESTED.with(Cell::get);
        let out_of_time = interrupted || config.time_budget.is_some_and(|b| start.elapsed().as_secs_f64() - paused >= b);
        if step % config.eval_every == 0 || Some(step) == total || out_of_time {
            let count = interval_count.max(1) as f64;
            let train_loss = interval_loss / count;
            let means: Vec<(&'static str, f64)> = interval_metrics.iter().map(|(k, v)| (*k, v / count)).collect();
            last_interval_loss = train_loss;
            interval_loss = 0.0;
            interval_count = 0;
            interval_metrics.clear();
            observer(&FitEvent::Interval { step, total: total_reported, train_loss, metrics: means.clone() });
            let candidate = match &average {
                Some(avg) => avg.apply(&model)?,
                None => inference_copy(&model)?,
            };
            let score = objective.validate(&candidate)?;
            let t0 = Instant::now();
            monitor(step, start.elapsed().as_secs_f64() - paused, &candidate);
            paused += t0.elapsed().as_secs_f64();
            history.push(EvalRecord {
                step,
                train_loss,
                val_log_likelihood: score,
                metrics: means.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            });
            if let Some(ll) = score {
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
                    if decays < config.lr_decays {
                        decays += 1;
                        since_best = 0;
                    } else {
                        stopped_early = true;
                        break;
                    }
                }
            }
        }
        if out_of_time {
            stopped_early = total.is_some() || interrupted;
            break;
        }
    }

    let (flow, best_step, best_ll) = match best {
        Some((ll, s, f)) => (f, s, Some(ll)),
        None => (
            match &average {
                Some(avg) => avg.apply(&model)?,
                None => inference_copy(&model)?,
            },
            steps_done,
            None,
        ),
    };
    let report = FitReport {
        steps: steps_done,
        best_step,
        best_val_log_likelihood: best_ll,
        final_train_loss: last_interval_loss,
        stopped_early,
        interrupted,
        history,
        seconds: start.elapsed().as_secs_f64() - paused,
    };
    Ok((flow, report))
}

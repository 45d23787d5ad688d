//! Neural posterior estimation (Papamakarios et al. 2021, §6.2): a conditional flow `q(θ | x)`
//! trained by maximum likelihood on simulated pairs `θ ~ p(θ)`, `x ~ p(x | θ)` minimizes
//! `E_x KL(p(θ | x) ‖ q(θ | x))`, so it is an amortized posterior: one network for every
//! observation. x is standardized inside the model, and θ (in the unconstrained space of the
//! prior's support) is standardized given x: the model's last layer is `θ = b + W x + s ⊙ z`
//! with `b + W x` the least-squares regression of θ on x, so the flow models the residual `z`,
//! which a Gaussian linear model already makes standard normal (on gaussian_linear this cut
//! `KL(p ‖ q)` from 0.28 to 0.02 nats at 10,000 simulations; docs/sbi-benchmark.md). The
//! default posterior is an ensemble: the equal-weight mixture of flows trained with
//! consecutive seeds ([`train_ensemble`]).
//!
//! The prior's support is kept either by [`SupportHandling::Rejection`] (the default, as in sbi):
//! the flow models θ directly, samples outside the support are rejected, and densities are
//! divided by the acceptance rate — or by [`SupportHandling::Transform`]: the flow models
//! `z = s⁻¹(θ)` with `s` mapping ℝᴰ onto the support (`logit` for a box, `log` for (0, ∞)) and
//! the log-det of `s` counted, so every sample is inside the support and densities need no
//! correction.

use std::time::Instant;

use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::prior::Prior;
use crate::bijections::{ConditionalAffineConfig, LayerConfig};
use crate::data::prepare::hold_out;
use crate::data::Dataset;
use crate::error::{FlowError, Result};
use crate::families::{architecture, FamilySettings};
use crate::fit::{fit, mean_log_likelihood, FitEvent, FitReport, TrainConfig};
use crate::flow::{EmbeddingConfig, Flow, FlowConfig, Standardization};
use crate::nn::Activation;
use crate::tensor::{matrix, repeat_rows, to_vec};

/// How a posterior keeps to the prior's support.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SupportHandling {
    /// Model θ in the unconstrained space of the support (no sample leaves it).
    Transform,
    /// Model θ directly; reject samples outside the support (sbi's default, and ours: on
    /// two_moons and slcp at 10k simulations its mean log q of the reference posterior samples
    /// was 0.2–0.3 nats higher than the transform's, with 72–100 % acceptance; see
    /// docs/sbi-benchmark.md).
    #[default]
    Rejection,
}

/// What a posterior model records besides its flow (model-file key `posterior`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PosteriorRecord {
    /// The prior.
    pub prior: Prior,
    /// How samples keep to its support.
    pub support: SupportHandling,
    /// The observation sequential rounds focused on (`None`: amortized).
    pub observation: Option<Vec<f64>>,
    /// Rounds of simulations (1: amortized).
    pub rounds: usize,
    /// Simulations the model was trained on.
    pub simulations: usize,
    /// Rows dropped because x was not finite.
    pub dropped_nonfinite: usize,
    /// Rows dropped because θ lay outside the prior's support.
    pub dropped_outside: usize,
}

impl PosteriorRecord {
    /// The record of an amortized posterior trained on `sims` (one round, no observation).
    pub fn new(prior: Prior, support: SupportHandling, sims: &Simulations) -> Self {
        Self {
            prior,
            support,
            observation: None,
            rounds: 1,
            simulations: sims.data.len(),
            dropped_nonfinite: sims.dropped_nonfinite,
            dropped_outside: sims.dropped_outside,
        }
    }
}

/// The embedding of x.
#[derive(Clone, Debug, PartialEq)]
pub enum XEmbedding {
    /// x reaches the conditioners as it is (standardized).
    None,
    /// An MLP of the given hidden widths and output width.
    Mlp {
        /// Hidden widths.
        hidden: Vec<usize>,
        /// Output width.
        output: usize,
    },
    /// DeepSets over `groups` iid draws making up x.
    DeepSets {
        /// Draws in x.
        groups: usize,
        /// Hidden widths of φ.
        hidden: Vec<usize>,
        /// Output width.
        output: usize,
    },
}

/// Settings of neural posterior estimation. The defaults are what `diffeo npe` uses.
#[derive(Clone, Debug)]
pub struct NpeConfig {
    /// The conditional flow's architecture (default: `nsf`, 5 transforms, hidden 64×2, 10
    /// bins, tail bound 4).
    pub family: FamilySettings,
    /// The embedding of x.
    pub embedding: XEmbedding,
    /// How samples keep to the prior's support (default: rejection).
    pub support: SupportHandling,
    /// The training loop's settings (default: batch 200, Adam 5e-4, gradient norm clipped at 5,
    /// validation every epoch, stop after 20 epochs without improvement, at most 2000 epochs).
    pub train: TrainConfig,
    /// Epochs without improvement before stopping.
    pub patience_epochs: usize,
    /// The most epochs.
    pub max_epochs: usize,
    /// One in this many rows is held out for validation.
    pub validation_parts: usize,
    /// Standardize θ given x — subtract its least-squares regression on x and divide by the
    /// residuals' standard deviations ([`ConditionalAffineConfig::regression`]) — rather than by
    /// its marginal mean and standard deviation (default: true; without an embedding only, as
    /// the layers see the embedded x).
    pub standardize_given_x: bool,
    /// Flows trained (seeds `seed`, `seed + 1`, …, each on its own validation split) whose
    /// equal-weight mixture is the posterior (default 5; see [`train_ensemble`]).
    pub ensemble: usize,
}

impl Default for NpeConfig {
    fn default() -> Self {
        let mut family = FamilySettings::new("nsf");
        family.hidden = vec![64, 64];
        family.bins = 10;
        family.tail_bound = 4.0;
        // θ is standardized (given x) before the flow, and affine tails measured worse on slcp
        // (mean log q of the reference −5.56 vs −5.22 and −5.03, seeds 0 and 1; docs/sbi-benchmark.md).
        family.spline_tails = crate::transformer::SplineTails::Identity;
        family.activation = Activation::Relu;
        Self {
            family,
            embedding: XEmbedding::None,
            support: SupportHandling::Rejection,
            train: TrainConfig::new().with_batch_size(200).with_learning_rate(5e-4).with_grad_clip_norm(Some(5.0)),
            patience_epochs: 20,
            max_epochs: 2000,
            validation_parts: 10,
            standardize_given_x: true,
            ensemble: 5,
        }
    }
}

/// Simulated pairs ready for training: rows with non-finite x and rows with θ outside the
/// prior removed (and counted).
#[derive(Clone, Debug)]
pub struct Simulations {
    /// θ rows `[n, D]` and x rows `[n, K]` as context.
    pub data: Dataset,
    /// Rows dropped because x was not finite.
    pub dropped_nonfinite: usize,
    /// Rows dropped because θ lay outside the prior's support (or was not finite).
    pub dropped_outside: usize,
}

impl Simulations {
    /// Cleans `theta` (`[n, D]`) and `x` (`[n, K]`) rows for `prior`.
    pub fn new(prior: &Prior, theta: &[f64], x: &[f64], x_dim: usize) -> Result<Self> {
        let d = prior.dim();
        if x_dim == 0 || theta.len() % d != 0 || x.len() % x_dim != 0 || theta.len() / d != x.len() / x_dim {
            return Err(FlowError::Data(format!(
                "simulations: θ has {} values for {d} parameters, x has {} for {x_dim} columns; they must make the same number of rows",
                theta.len(),
                x.len()
            )));
        }
        let (mut t, mut c) = (Vec::with_capacity(theta.len()), Vec::with_capacity(x.len()));
        let (mut nonfinite, mut outside) = (0, 0);
        for (tr, xr) in theta.chunks_exact(d).zip(x.chunks_exact(x_dim)) {
            if !prior.contains(tr) {
                outside += 1;
            } else if xr.iter().any(|v| !v.is_finite()) {
                nonfinite += 1;
            } else {
                t.extend_from_slice(tr);
                c.extend_from_slice(xr);
            }
        }
        if t.is_empty() {
            return Err(FlowError::Data(format!(
                "no usable simulations: {outside} row(s) with θ outside the prior {}, {nonfinite} with non-finite x",
                prior.spec()
            )));
        }
        Ok(Self { data: Dataset::new(t, d).with_context(c, x_dim), dropped_nonfinite: nonfinite, dropped_outside: outside })
    }
}

/// The architecture of a posterior `q(θ | x)` for `prior`, standardized on `data` (θ in the
/// support's unconstrained space for [`SupportHandling::Transform`], and x).
pub fn posterior_architecture(config: &NpeConfig, prior: &Prior, data: &Dataset) -> Result<FlowConfig> {
    let (d, k) = (data.dim(), data.context_dim());
    if d != prior.dim() {
        return Err(FlowError::Data(format!("the prior has {} parameters, the simulations {d} θ columns", prior.dim())));
    }
    if k == 0 {
        return Err(FlowError::Data("posterior estimation needs x columns".into()));
    }
    let embedding = match &config.embedding {
        XEmbedding::None => None,
        XEmbedding::Mlp { hidden, output } => Some(EmbeddingConfig::mlp(hidden.clone(), *output)),
        XEmbedding::DeepSets { groups, hidden, output } => {
            if *groups < 2 || k % groups != 0 {
                return Err(FlowError::InvalidConfig(format!("DeepSets needs x made of at least 2 equal draws; {k} x columns cannot be split into {groups}")));
            }
            Some(EmbeddingConfig::deep_sets(*groups, hidden.clone(), *output))
        }
    };
    let conditioner_context = embedding.as_ref().map_or(k, |e| e.output_dim);
    // The posterior's identity spline tails are a setting of the spline families only.
    let mut family = config.family.clone();
    if !family.has_splines() {
        family.spline_tails = FamilySettings::new(&family.family).spline_tails;
    }
    let mut flow = architecture(&family, d, conditioner_context)?;
    flow.context_dim = k;
    flow.embedding = embedding;
    let transform = config.support == SupportHandling::Transform && prior.is_constrained();
    let mut z = data.x.values.clone();
    if transform {
        prior.unconstrain(&mut z)?;
    }
    let x_standardization = Standardization::of(data.context.as_ref().map_or(&[][..], |c| &c.values[..]), k)?;
    if config.standardize_given_x && flow.embedding.is_none() {
        let mut x = data.context.as_ref().map_or_else(Vec::new, |c| c.values.clone());
        x_standardization.apply(&mut x);
        flow.layers.push(LayerConfig::ConditionalAffine(ConditionalAffineConfig::regression(&z, d, &x, k)?));
    } else {
        flow = flow.standardized(&Standardization::of(&z, d)?);
    }
    if transform {
        flow.layers.push(prior.support_layer());
    }
    flow.context_standardization = Some(x_standardization);
    flow.validate()?;
    Ok(flow)
}

/// The training settings of `config` for `train_rows` rows: validation every epoch, patience
/// and epoch limit in epochs.
pub fn training_settings(config: &NpeConfig, train_rows: usize) -> TrainConfig {
    let epoch = train_rows.div_ceil(config.train.batch_size.min(train_rows).max(1)).max(1);
    config
        .train
        .clone()
        .with_epochs(Some(config.max_epochs))
        .with_eval_every(epoch)
        .with_patience(Some(config.patience_epochs))
}

/// Trains `flow` (new or from an earlier round) on the simulations, with 1 row in
/// `validation_parts` held out. Returns the flow with the best validation score — the flow as
/// it came in counts too: a posterior the regression standardization already makes exact (a
/// Gaussian linear model) or an earlier round's that training does not improve is kept.
pub fn train_posterior(
    flow: Flow,
    sims: &Simulations,
    config: &NpeConfig,
    observer: &mut dyn FnMut(&FitEvent),
) -> Result<(Flow, FitReport)> {
    let mut rng = StdRng::seed_from_u64(config.train.seed ^ 0x5B1_5EED);
    let (train_set, val_set) = if validation_rows(config, sims.data.len()) > 0 {
        let (t, v) = hold_out(&sims.data, config.validation_parts.max(2), &mut rng);
        (t, Some(v))
    } else {
        (sims.data.clone(), None)
    };
    let settings = training_settings(config, train_set.len());
    let before = match &val_set {
        Some(v) => Some((mean_log_likelihood(&flow, v)?.0, flow.clone())),
        None => None,
    };
    let (trained, mut report) = fit(flow, &train_set, val_set.as_ref(), &settings, observer)?;
    match (before, report.best_val_log_likelihood) {
        (Some((initial, flow)), Some(best)) if initial.is_finite() && initial > best => {
            report.best_val_log_likelihood = Some(initial);
            report.best_step = 0;
            Ok((flow, report))
        }
        _ => Ok((trained, report)),
    }
}

/// Rows of `n` simulations that [`train_posterior`] holds out for validation (none below 20).
pub fn validation_rows(config: &NpeConfig, n: usize) -> usize {
    if n >= 20 {
        n / config.validation_parts.max(2)
    } else {
        0
    }
}

/// A trained member of an ensemble and the report of its training.
pub type TrainedFlow = (Flow, FitReport);

/// The config of ensemble member `i`: the flow's weights and the training loop (data order,
/// validation split) seeded `i` further on.
pub fn member_config(config: &NpeConfig, i: usize) -> NpeConfig {
    let mut c = config.clone();
    c.family.seed = config.family.seed.wrapping_add(i as u64);
    c.train.seed = config.train.seed.wrapping_add(i as u64);
    c
}

/// Trains `config.ensemble` posteriors (at least one) on the simulations — member `i` from
/// `flows[i]` when given (an earlier round's), else new — with [`member_config`]. The posterior
/// is their equal-weight mixture `q(θ | x) = (1/K) Σ q_k(θ | x)`: independently trained flows
/// err in different places, and the mixture's mean log density of the sbibm reference
/// posteriors was 0.7 nats above its members' on slcp (0.06 on two_moons) at 10,000
/// simulations (docs/sbi-benchmark.md). `observer` sees each member's events in turn.
pub fn train_ensemble(
    flows: Vec<Flow>,
    prior: &Prior,
    sims: &Simulations,
    config: &NpeConfig,
    observer: &mut dyn FnMut(usize, &FitEvent),
) -> Result<Vec<TrainedFlow>> {
    let k = config.ensemble.max(1);
    let mut start = flows.into_iter();
    let mut out = Vec::with_capacity(k);
    for i in 0..k {
        let member = member_config(config, i);
        let flow = match start.next() {
            Some(f) => f,
            None => posterior_architecture(&member, prior, &sims.data)?.init(&crate::cpu())?,
        };
        out.push(train_posterior(flow, sims, &member, &mut |e: &FitEvent| observer(i, e))?);
    }
    Ok(out)
}

/// Limits of rejection sampling.
#[derive(Clone, Copy, Debug)]
pub struct SamplingLimits {
    /// Give up after this many seconds.
    pub max_seconds: f64,
    /// Give up after this many proposals per requested sample.
    pub max_draws_per_sample: usize,
}

impl Default for SamplingLimits {
    fn default() -> Self {
        Self { max_seconds: 300.0, max_draws_per_sample: 1000 }
    }
}

/// Posterior samples and how many proposals they took.
#[derive(Clone, Debug)]
pub struct PosteriorSamples {
    /// `[n, D]` rows, every one inside the prior's support.
    pub theta: Vec<f64>,
    /// Proposals drawn from the flow.
    pub proposals: usize,
    /// Accepted fraction.
    pub acceptance: f64,
}

fn observation_tensor(flow: &Flow, observation: &[f64]) -> Result<burn::tensor::Tensor<2>> {
    let k = flow.context_dim();
    if observation.len() != k {
        return Err(FlowError::Data(format!("the observation has {} value(s), the posterior needs {k}", observation.len())));
    }
    if let Some(v) = observation.iter().find(|v| !v.is_finite()) {
        return Err(FlowError::Data(format!("the observation holds a non-finite value ({v})")));
    }
    Ok(matrix(observation.to_vec(), 1, k, &flow.device()))
}

/// `n` samples of `q(θ | x_o)` inside the prior's support, by rejection of those outside (rare
/// with [`SupportHandling::Transform`]: only rounding onto a bound), within `limits`.
pub fn sample_posterior(flow: &Flow, prior: &Prior, observation: &[f64], n: usize, seed: u64, limits: SamplingLimits) -> Result<PosteriorSamples> {
    sample_mixture(&[flow], prior, observation, n, seed, limits)
}

/// The first flow of a mixture (its shapes are every member's); an error for none.
fn first_flow<'a>(flows: &[&'a Flow]) -> Result<&'a Flow> {
    flows.first().copied().ok_or_else(|| FlowError::InvalidConfig("a posterior needs at least one flow".into()))
}

/// `n` draws of the equal-weight mixture of `flows` at context `c` (`[1, K]`), rows in random
/// order: each draw picks its flow uniformly.
fn mixture_draws(flows: &[&Flow], n: usize, c: &burn::tensor::Tensor<2>, rng: &mut StdRng) -> Result<Vec<f64>> {
    use rand::seq::SliceRandom;
    use rand::Rng;
    let d = flows[0].dim();
    if flows.len() == 1 {
        return to_vec(flows[0].sample(n, Some(c), rng)?);
    }
    let mut counts = vec![0usize; flows.len()];
    for _ in 0..n {
        counts[rng.random_range(0..flows.len())] += 1;
    }
    let mut rows = Vec::with_capacity(n * d);
    for (flow, &m) in flows.iter().zip(&counts) {
        if m > 0 {
            rows.extend(to_vec(flow.sample(m, Some(c), rng)?)?);
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(rng);
    Ok(order.iter().flat_map(|&i| rows[i * d..(i + 1) * d].iter().copied()).collect())
}

/// `n` samples of the equal-weight mixture of `flows` at `x_o`, restricted to the prior's
/// support by rejection, within `limits` (see [`sample_posterior`]).
pub fn sample_mixture(flows: &[&Flow], prior: &Prior, observation: &[f64], n: usize, seed: u64, limits: SamplingLimits) -> Result<PosteriorSamples> {
    let first = first_flow(flows)?;
    let c = observation_tensor(first, observation)?;
    let d = first.dim();
    let mut rng = StdRng::seed_from_u64(seed);
    let start = Instant::now();
    let mut theta = Vec::with_capacity(n * d);
    let (mut proposals, mut inside) = (0usize, 0usize);
    let max = n.saturating_mul(limits.max_draws_per_sample).max(10_000);
    while theta.len() < n * d {
        let have = theta.len() / d;
        // Propose what the acceptance so far says is needed, in chunks of at most 100k.
        let rate = if proposals == 0 { 1.0 } else { (inside as f64 / proposals as f64).max(1e-3) };
        let want = (((n - have) as f64 / rate * 1.1).ceil() as usize).clamp(64, 100_000);
        let x = mixture_draws(flows, want, &c, &mut rng)?;
        proposals += want;
        for row in x.chunks_exact(d) {
            if prior.contains(row) {
                inside += 1;
                if theta.len() < n * d {
                    theta.extend_from_slice(row);
                }
            }
        }
        let elapsed = start.elapsed().as_secs_f64();
        if theta.len() < n * d && (proposals >= max || elapsed > limits.max_seconds) {
            return Err(FlowError::SamplingLimit(format!(
                "posterior sampling accepted {} of {proposals} proposals ({:.3}%) in {elapsed:.0} s and gave up: the posterior puts most of its mass outside the prior's support (raise the limits, train with the support transform, or check the observation)",
                theta.len() / d,
                100.0 * (theta.len() / d) as f64 / proposals as f64
            )));
        }
    }
    let acceptance = inside as f64 / proposals as f64;
    Ok(PosteriorSamples { theta, proposals, acceptance })
}

/// The fraction of `q(θ | x_o)` (the equal-weight mixture of `flows`) inside the prior's
/// support, from `draws` samples (1 for [`SupportHandling::Transform`] up to rounding).
pub fn acceptance_rate(flows: &[&Flow], prior: &Prior, observation: &[f64], draws: usize, seed: u64) -> Result<f64> {
    let first = first_flow(flows)?;
    let c = observation_tensor(first, observation)?;
    let mut rng = StdRng::seed_from_u64(seed);
    let x = mixture_draws(flows, draws, &c, &mut rng)?;
    let inside = x.chunks_exact(first.dim()).filter(|r| prior.contains(r)).count();
    Ok(inside as f64 / draws as f64)
}

/// `log q(θ | x)` for rows of θ (`[n, D]`) with one x row each (`x`: `[n, K]`) or one x for
/// all (`[1, K]`): −∞ outside the prior's support; inside, the flow's density divided by its
/// mass inside the support (`acceptance`, 1 for the transform).
pub fn posterior_log_prob(flow: &Flow, prior: &Prior, theta: &[f64], x: &[f64], acceptance: f64) -> Result<Vec<f64>> {
    mixture_log_prob(&[flow], prior, theta, x, acceptance)
}

/// [`posterior_log_prob`] of the equal-weight mixture of `flows`:
/// `log((1/K) Σ_k q_k(θ | x)) − log(acceptance)` inside the support, −∞ outside.
pub fn mixture_log_prob(flows: &[&Flow], prior: &Prior, theta: &[f64], x: &[f64], acceptance: f64) -> Result<Vec<f64>> {
    let flow = first_flow(flows)?;
    let (d, k) = (flow.dim(), flow.context_dim());
    let n = theta.len() / d.max(1);
    if theta.len() != n * d || n == 0 {
        return Err(FlowError::Data(format!("θ rows need {d} values each")));
    }
    let device = flow.device();
    let m = x.len() / k.max(1);
    let c = matrix(x.to_vec(), m, k, &device);
    let c = match m {
        1 => repeat_rows(&c, n),
        m if m == n => c,
        m => return Err(FlowError::Data(format!("{m} x rows for {n} θ rows"))),
    };
    // Points outside the support are replaced before the flow sees them (their density is 0).
    let inside: Vec<bool> = theta.chunks_exact(d).map(|r| prior.contains(r)).collect();
    let mut safe = theta.to_vec();
    let centre: Vec<f64> = prior.components.iter().map(|p| match p.bounds() {
        (Some(l), Some(h)) => 0.5 * (l + h),
        (Some(l), None) => l + 1.0,
        (None, Some(h)) => h - 1.0,
        (None, None) => 0.0,
    }).collect();
    for (row, ok) in safe.chunks_exact_mut(d).zip(&inside) {
        if !ok {
            row.copy_from_slice(&centre);
        }
    }
    let mut out = Vec::with_capacity(n);
    let chunk = 8192;
    for start in (0..n).step_by(chunk) {
        let end = (start + chunk).min(n);
        let t = matrix(safe[start * d..end * d].to_vec(), end - start, d, &device);
        let cc = c.clone().slice([start..end, 0..k]);
        let mut members = Vec::with_capacity(flows.len());
        for f in flows {
            members.push(to_vec(f.log_prob(t.clone(), Some(&cc))?)?);
        }
        out.extend((0..end - start).map(|i| {
            let top = members.iter().map(|m| m[i]).fold(f64::NEG_INFINITY, f64::max);
            if top == f64::NEG_INFINITY {
                return top;
            }
            top + (members.iter().map(|m| (m[i] - top).exp()).sum::<f64>() / flows.len() as f64).ln()
        }));
    }
    let correction = acceptance.max(f64::MIN_POSITIVE).ln();
    Ok(out.into_iter().zip(inside).map(|(lp, ok)| if ok { lp - correction } else { f64::NEG_INFINITY }).collect())
}

/// A trained posterior with its record: what [`super::sequential`] and the diagnostics use.
pub struct Posterior<'a> {
    /// The flow `q(θ | x)` (an ensemble's first member).
    pub flow: &'a Flow,
    /// An ensemble's other members (empty for one flow): the posterior is the equal-weight
    /// mixture of `flow` and these.
    pub members: &'a [Flow],
    /// The prior and support handling.
    pub record: &'a PosteriorRecord,
}

impl Posterior<'_> {
    /// Every flow of the mixture.
    pub fn flows(&self) -> Vec<&Flow> {
        std::iter::once(self.flow).chain(self.members).collect()
    }

    /// See [`sample_mixture`].
    pub fn sample(&self, observation: &[f64], n: usize, seed: u64, limits: SamplingLimits) -> Result<PosteriorSamples> {
        sample_mixture(&self.flows(), &self.record.prior, observation, n, seed, limits)
    }

    /// `log q(θ | x)` up to the acceptance rate (a constant at one observation), −∞ outside
    /// the support: what comparisons of densities at one observation need.
    pub fn unnormalized_log_prob(&self, theta: &[f64], observation: &[f64]) -> Result<Vec<f64>> {
        mixture_log_prob(&self.flows(), &self.record.prior, theta, observation, 1.0)
    }

    /// See [`mixture_log_prob`]; the acceptance rate is estimated from 10,000 draws per
    /// observation for [`SupportHandling::Rejection`].
    pub fn log_prob(&self, theta: &[f64], observation: &[f64], seed: u64) -> Result<Vec<f64>> {
        let flows = self.flows();
        let acceptance = match self.record.support {
            SupportHandling::Transform => 1.0,
            SupportHandling::Rejection => acceptance_rate(&flows, &self.record.prior, observation, 10_000, seed)?,
        };
        mixture_log_prob(&flows, &self.record.prior, theta, observation, acceptance)
    }
}

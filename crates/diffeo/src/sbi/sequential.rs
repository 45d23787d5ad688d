//! Sequential neural posterior estimation by truncation (TSNPE, Deistler et al. 2022): round 1
//! simulates from the prior; every later round simulates from the prior truncated to the
//! highest-probability region of the current posterior at the observation `x_o`,
//! `{θ : q(θ | x_o) ≥ τ}` with `τ` the `ε`-quantile of `log q` under q (the region holding
//! `1 − ε` of its mass). All rounds' pairs are pooled and trained with the plain NPE loss: inside
//! the region the truncated prior is proportional to the prior, so the loss keeps its optimum at
//! the true posterior there — no proposal correction, no atoms, no leakage.

use rand::rngs::StdRng;
use rand::SeedableRng;

use super::npe::{mixture_log_prob, sample_mixture, train_ensemble, NpeConfig, PosteriorRecord, SamplingLimits, Simulations, TrainedFlow};
use super::prior::Prior;
use super::simulator::{simulate, KeepBatch, Simulated, Simulator};
use crate::error::{FlowError, Result};
use crate::fit::FitEvent;
use crate::flow::Flow;

/// Settings of sequential rounds.
#[derive(Clone, Debug)]
pub struct SequentialConfig {
    /// Rounds (1: amortized NPE on prior simulations).
    pub rounds: usize,
    /// Simulations over all rounds, split evenly (the first round takes the remainder).
    pub simulations: usize,
    /// θ rows per simulator call.
    pub simulation_batch: usize,
    /// Simulator calls at a time.
    pub workers: usize,
    /// Mass outside the truncation region (TSNPE's ε).
    pub epsilon: f64,
    /// Posterior samples that locate the region.
    pub region_samples: usize,
    /// Seed of the proposals (the training seed is the NPE configuration's).
    pub seed: u64,
}

impl Default for SequentialConfig {
    fn default() -> Self {
        Self { rounds: 1, simulations: 10_000, simulation_batch: 1000, workers: 1, epsilon: 1e-4, region_samples: 10_000, seed: 0 }
    }
}

impl SequentialConfig {
    /// Simulations of round `r` (0-based).
    pub fn round_size(&self, r: usize) -> usize {
        let each = self.simulations / self.rounds.max(1);
        if r == 0 {
            self.simulations - each * (self.rounds.max(1) - 1)
        } else {
            each
        }
    }
}

/// The simulations already made: θ and x rows and the round of each.
#[derive(Clone, Debug, Default)]
pub struct SimulationLog {
    /// θ rows, row-major.
    pub theta: Vec<f64>,
    /// x rows, row-major.
    pub x: Vec<f64>,
    /// Columns of x (0 before the first simulation).
    pub x_dim: usize,
    /// Round of each row (0-based).
    pub round: Vec<usize>,
}

/// What happens between rounds.
pub enum RoundEvent<'a> {
    /// Round `round` starts simulating `rows` rows (`reused` already in the log).
    Simulating {
        /// 0-based round.
        round: usize,
        /// Rows to simulate.
        rows: usize,
        /// Rows of this round found in the log.
        reused: usize,
        /// Fraction of the truncated-prior proposals the region accepted (`None`: the prior).
        acceptance: Option<f64>,
    },
    /// A batch of simulations arrived (already kept by the caller).
    Batch {
        /// Rows so far in this round.
        done: usize,
        /// Rows of this round.
        of: usize,
    },
    /// Round `round` trains on `rows` pooled rows.
    Training {
        /// 0-based round.
        round: usize,
        /// Pooled rows.
        rows: usize,
    },
    /// A training event.
    Fit(&'a FitEvent),
}

/// Runs sequential rounds at `observation`, reusing the rows of `log` (a resumed run) and
/// simulating the rest; every new batch goes to `keep(round, θ, x)` before the next starts.
/// Returns the flows of the last round (an ensemble's members, each with the report of its
/// training), its record, and the acceptance rate of each truncated round.
#[allow(clippy::too_many_arguments)]
pub fn sequential_npe(
    prior: &Prior,
    simulator: &dyn Simulator,
    observation: Option<&[f64]>,
    npe: &NpeConfig,
    config: &SequentialConfig,
    log: &mut SimulationLog,
    keep: &mut KeepBatch,
    events: &mut dyn FnMut(RoundEvent),
) -> Result<(Vec<TrainedFlow>, PosteriorRecord, Vec<f64>)> {
    let d = prior.dim();
    if config.rounds == 0 || config.simulations < config.rounds * 2 {
        return Err(FlowError::InvalidConfig(format!(
            "{} simulations cannot fill {} round(s)",
            config.simulations, config.rounds
        )));
    }
    if config.rounds > 1 && observation.is_none() {
        return Err(FlowError::InvalidConfig("sequential rounds focus on one observation: pass it".into()));
    }
    if let Some(o) = observation {
        if log.x_dim != 0 && o.len() != log.x_dim {
            return Err(FlowError::Data(format!("the observation has {} values, the simulations {}", o.len(), log.x_dim)));
        }
        if let Some(v) = o.iter().find(|v| !v.is_finite()) {
            return Err(FlowError::Data(format!("the observation holds a non-finite value ({v})")));
        }
    }
    let mut members: Vec<TrainedFlow> = Vec::new();
    let mut acceptances = Vec::new();
    let mut record = None;
    for r in 0..config.rounds {
        let want = config.round_size(r);
        let reused = log.round.iter().filter(|&&k| k == r).count();
        let need = want.saturating_sub(reused);
        let mut rng = StdRng::seed_from_u64(config.seed ^ (0x7_5EED + r as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let (theta, acceptance) = match observation {
            Some(o) if need > 0 && !members.is_empty() => {
                let flows: Vec<&Flow> = members.iter().map(|(f, _)| f).collect();
                let (t, a) = truncated_prior_sample(&flows, prior, o, need, config, &mut rng)?;
                (t, Some(a))
            }
            _ => (prior.sample(need, &mut rng), None),
        };
        if let Some(a) = acceptance {
            acceptances.push(a);
        }
        events(RoundEvent::Simulating { round: r, rows: need, reused, acceptance });
        if need > 0 {
            let mut done = 0;
            let mut keep_round = |_: usize, t: &[f64], x: &Simulated| -> Result<()> {
                if log.x_dim != 0 && x.cols != log.x_dim {
                    return Err(FlowError::Simulation(format!("the simulator returned {} x values per row, earlier simulations have {}", x.cols, log.x_dim)));
                }
                if let Some(o) = observation {
                    if x.cols != o.len() {
                        return Err(FlowError::Simulation(format!("the simulator returned {} x values per row, the observation has {}", x.cols, o.len())));
                    }
                }
                keep(r, t, x)?;
                log.x_dim = x.cols;
                log.theta.extend_from_slice(t);
                log.x.extend_from_slice(&x.values);
                log.round.extend(std::iter::repeat_n(r, t.len() / d));
                done += t.len() / d;
                events(RoundEvent::Batch { done: done + reused, of: want });
                Ok(())
            };
            simulate(simulator, &theta, d, config.simulation_batch, config.workers, &mut keep_round)?;
        }
        // Train on every row of rounds ≤ r (the log may hold later rounds of a resumed run).
        let rows: Vec<usize> = (0..log.round.len()).filter(|&i| log.round[i] <= r).collect();
        let theta_rows: Vec<f64> = rows.iter().flat_map(|&i| log.theta[i * d..(i + 1) * d].iter().copied()).collect();
        let x_rows: Vec<f64> = rows.iter().flat_map(|&i| log.x[i * log.x_dim..(i + 1) * log.x_dim].iter().copied()).collect();
        let sims = Simulations::new(prior, &theta_rows, &x_rows, log.x_dim)?;
        events(RoundEvent::Training { round: r, rows: sims.data.len() });
        let start = std::mem::take(&mut members).into_iter().map(|(f, _)| f).collect();
        members = train_ensemble(start, prior, &sims, npe, &mut |_, e| events(RoundEvent::Fit(e)))?;
        record = Some(PosteriorRecord {
            observation: observation.filter(|_| config.rounds > 1).map(<[f64]>::to_vec),
            rounds: r + 1,
            ..PosteriorRecord::new(prior.clone(), npe.support, &sims)
        });
    }
    match record {
        Some(rec) if !members.is_empty() => Ok((members, rec, acceptances)),
        _ => Err(FlowError::InvalidConfig("no rounds ran".into())),
    }
}

/// `n` draws of the prior truncated to `{θ : log q(θ | x_o) ≥ τ}` (q: the equal-weight mixture
/// of `flows`): the region's bounding box from posterior samples, then rejection on the
/// threshold. Returns the draws and the fraction of box proposals accepted.
pub fn truncated_prior_sample(flows: &[&Flow], prior: &Prior, observation: &[f64], n: usize, config: &SequentialConfig, rng: &mut StdRng) -> Result<(Vec<f64>, f64)> {
    let d = prior.dim();
    let m = config.region_samples.max(100);
    let samples = sample_mixture(flows, prior, observation, m, rand::Rng::random(rng), SamplingLimits::default())?;
    // Densities up to the acceptance rate, a constant at one observation: −∞ outside the prior.
    let log_q = |rows: &[f64]| mixture_log_prob(flows, prior, rows, observation, 1.0);
    let mut lq = log_q(&samples.theta)?;
    lq.sort_by(f64::total_cmp);
    let tau = lq[((config.epsilon * m as f64).floor() as usize).min(m - 1)];
    // The box around the samples, widened by 10% of its width per side.
    let (mut low, mut high) = (vec![f64::INFINITY; d], vec![f64::NEG_INFINITY; d]);
    for row in samples.theta.chunks_exact(d) {
        for j in 0..d {
            low[j] = low[j].min(row[j]);
            high[j] = high[j].max(row[j]);
        }
    }
    for j in 0..d {
        let w = (high[j] - low[j]).max(1e-9);
        low[j] -= 0.1 * w;
        high[j] += 0.1 * w;
    }
    let mut accept = |rows: &[f64]| -> Result<Vec<bool>> { Ok(log_q(rows)?.iter().map(|v| *v >= tau).collect()) };
    let (theta, attempts) = prior.sample_restricted(n, &low, &high, rng, n.saturating_mul(10_000).max(1_000_000), &mut accept)?;
    Ok((theta, n as f64 / attempts as f64))
}

//! Calibration diagnostics of a posterior on simulated pairs `(θ*, x)`:
//! - **Simulation-based calibration** (Talts et al. 2018): the rank of θ*_i among L posterior
//!   samples of `q(θ | x)` is uniform on {0, …, L} for every parameter when q is the true
//!   posterior; reported per parameter with the Kolmogorov–Smirnov distance to uniform and its
//!   p-value, and a χ² statistic over bins.
//! - **Expected coverage of highest-density regions**: θ* lies in the HPD region of credibility
//!   α iff the fraction of samples with a higher density than θ* is below α; for a calibrated
//!   posterior that happens with probability α at every level.

use serde::{Deserialize, Serialize};

use super::npe::{Posterior, SamplingLimits};
use crate::error::{FlowError, Result};

/// Settings of [`calibration`].
#[derive(Clone, Debug)]
pub struct CalibrationConfig {
    /// Posterior samples per pair (L).
    pub samples: usize,
    /// Histogram bins of the ranks (for χ²).
    pub bins: usize,
    /// Seed.
    pub seed: u64,
}

impl Default for CalibrationConfig {
    fn default() -> Self {
        Self { samples: 1000, bins: 20, seed: 0 }
    }
}

/// The ranks and uniformity statistics of one parameter.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RankStatistics {
    /// Ranks of θ* among the samples, one per pair (0..=L).
    pub ranks: Vec<usize>,
    /// KS distance between the normalized ranks and U(0, 1).
    pub ks: f64,
    /// Its asymptotic p-value (small: not uniform).
    pub ks_p_value: f64,
    /// χ² statistic of the rank histogram against a flat one (bins − 1 degrees of freedom).
    pub chi2: f64,
    /// The rank histogram: pairs per bin, the ranks 0..=L split into equal runs.
    pub histogram: Vec<usize>,
}

/// Calibration of a posterior on N pairs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Calibration {
    /// Pairs used.
    pub pairs: usize,
    /// Posterior samples per pair.
    pub samples: usize,
    /// Histogram bins for χ².
    pub bins: usize,
    /// Per parameter.
    pub parameters: Vec<RankStatistics>,
    /// Credibility levels 0.05, 0.10, …, 0.95.
    pub levels: Vec<f64>,
    /// Fraction of pairs whose θ* lies in the HPD region of each level.
    pub coverage: Vec<f64>,
    /// Mean proposal acceptance of the posterior sampler.
    pub acceptance: f64,
}

/// SBC ranks and HPD coverage of `posterior` on pairs (`theta`: `[N, D]`, `x`: `[N, K]`).
pub fn calibration(posterior: &Posterior, theta: &[f64], x: &[f64], config: &CalibrationConfig) -> Result<Calibration> {
    let (d, k) = (posterior.flow.dim(), posterior.flow.context_dim());
    let n = theta.len() / d.max(1);
    if n == 0 || theta.len() != n * d || x.len() != n * k {
        return Err(FlowError::Data(format!("calibration needs pairs: {} θ values for {d} parameters and {} x values for {k}", theta.len(), x.len())));
    }
    let l = config.samples.max(2);
    let mut ranks = vec![Vec::with_capacity(n); d];
    let mut levels_hit = Vec::with_capacity(n);
    let mut acceptance = 0.0;
    for i in 0..n {
        let (t, xo) = (&theta[i * d..(i + 1) * d], &x[i * k..(i + 1) * k]);
        let s = posterior.sample(xo, l, config.seed.wrapping_add(i as u64), SamplingLimits::default())?;
        acceptance += s.acceptance;
        for j in 0..d {
            ranks[j].push(s.theta.chunks_exact(d).filter(|r| r[j] < t[j]).count());
        }
        let mut rows = s.theta.clone();
        rows.extend_from_slice(t);
        // The acceptance rate that scales a rejection posterior's density is one constant at this
        // observation, so comparing densities needs none.
        let lp = posterior.unnormalized_log_prob(&rows, xo)?;
        let (lp_samples, lp_true) = (&lp[..l], lp[l]);
        // Level at which θ* enters the HPD region: the mass of samples denser than it.
        let level = lp_samples.iter().filter(|&&v| v > lp_true).count() as f64 / l as f64;
        levels_hit.push(level);
    }
    let levels: Vec<f64> = (1..=19).map(|i| i as f64 * 0.05).collect();
    let coverage = levels.iter().map(|a| levels_hit.iter().filter(|&&v| v < *a).count() as f64 / n as f64).collect();
    let bins = config.bins.clamp(2, l + 1);
    let parameters = ranks.into_iter().map(|r| rank_statistics(r, l, bins)).collect();
    Ok(Calibration { pairs: n, samples: l, bins, parameters, levels, coverage, acceptance: acceptance / n as f64 })
}

/// KS and χ² statistics of ranks in 0..=L.
pub fn rank_statistics(ranks: Vec<usize>, l: usize, bins: usize) -> RankStatistics {
    let n = ranks.len();
    // Normalized ranks, jittered to the middle of their cell: (r + 0.5)/(L + 1).
    let mut u: Vec<f64> = ranks.iter().map(|&r| (r as f64 + 0.5) / (l as f64 + 1.0)).collect();
    u.sort_by(f64::total_cmp);
    let ks = u
        .iter()
        .enumerate()
        .map(|(i, v)| ((i + 1) as f64 / n as f64 - v).max(v - i as f64 / n as f64))
        .fold(0.0, f64::max);
    let bin = |r: usize| (r * bins / (l + 1)).min(bins - 1);
    let (mut histogram, mut cells) = (vec![0usize; bins], vec![0usize; bins]);
    for &r in &ranks {
        histogram[bin(r)] += 1;
    }
    // Expected count per bin: the cells 0..=L spread over the bins.
    for r in 0..=l {
        cells[bin(r)] += 1;
    }
    let chi2 = histogram
        .iter()
        .zip(&cells)
        .map(|(&count, &c)| {
            let e = n as f64 * c as f64 / (l + 1) as f64;
            if e > 0.0 { (count as f64 - e).powi(2) / e } else { 0.0 }
        })
        .sum();
    RankStatistics { ks, ks_p_value: kolmogorov_p_value(ks, n), chi2, ranks, histogram }
}

/// `P(D_n ≥ d)` for the KS distance of n uniform draws (asymptotic, with Stephens' correction).
pub fn kolmogorov_p_value(d: f64, n: usize) -> f64 {
    let sn = (n as f64).sqrt();
    let t = (sn + 0.12 + 0.11 / sn) * d;
    if t < 0.2 {
        return 1.0;
    }
    let mut p = 0.0;
    for j in 1..=100 {
        let term = 2.0 * (-1f64).powi(j - 1) * (-2.0 * (j as f64 * t).powi(2)).exp();
        p += term;
        if term.abs() < 1e-12 {
            break;
        }
    }
    p.clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_ranks_pass_and_skewed_ones_fail() {
        let l = 99;
        let uniform: Vec<usize> = (0..1000).map(|i| (i * 37) % (l + 1)).collect();
        let s = rank_statistics(uniform, l, 10);
        assert!(s.ks < 0.02 && s.ks_p_value > 0.5, "{} {}", s.ks, s.ks_p_value);
        assert!(s.chi2 < 5.0, "{}", s.chi2);
        let skewed: Vec<usize> = (0..1000).map(|i| ((i * 37) % (l + 1)) / 2).collect();
        let s = rank_statistics(skewed, l, 10);
        assert!(s.ks > 0.4 && s.ks_p_value < 1e-6, "{} {}", s.ks, s.ks_p_value);
        // Known values of the Kolmogorov distribution: P(K ≥ 1.36) ≈ 0.05.
        let p = kolmogorov_p_value(1.36 / 1000.0, 1_000_000);
        assert!((p - 0.049).abs() < 0.003, "{p}");
    }
}

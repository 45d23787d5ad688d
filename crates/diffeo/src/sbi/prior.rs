//! Priors for simulation-based inference: independent per-parameter uniform, normal and
//! log-normal densities, with their support, sampling and log density.
//!
//! Spec: a `;`-separated list of `uniform:LO:HI`, `normal:MEAN:STD` and `lognormal:MU:SIGMA`,
//! each optionally followed by `xN` to repeat it (`uniform:-1:1x2;normal:0:0.3162x10`); a JSON
//! file holds the same spec as a string, a list of such strings, or a list of objects
//! `{"type": "uniform", "low": -1, "high": 1, "repeat": 2}`.

use rand::rngs::StdRng;
use rand::Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

use crate::bijections::{ElementwiseConfig, ElementwiseKind, LayerConfig};
use crate::error::{FlowError, Result};

const LN_SQRT_2PI: f64 = 0.918_938_533_204_672_8;

/// One parameter's prior.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PriorComponent {
    /// `U(low, high)`: density `1/(high − low)` on `(low, high)`.
    Uniform {
        /// Lower bound.
        low: f64,
        /// Upper bound.
        high: f64,
    },
    /// `N(mean, std²)`.
    Normal {
        /// Mean.
        mean: f64,
        /// Standard deviation (> 0).
        std: f64,
    },
    /// `log θ ~ N(mu, sigma²)`, on `(0, ∞)`: density `N(log θ; mu, sigma²)/θ`.
    #[serde(rename = "lognormal")]
    LogNormal {
        /// Mean of `log θ`.
        mu: f64,
        /// Standard deviation of `log θ` (> 0).
        sigma: f64,
    },
}

impl PriorComponent {
    fn validate(&self) -> Result<()> {
        let ok = match *self {
            PriorComponent::Uniform { low, high } => low.is_finite() && high.is_finite() && low < high,
            PriorComponent::Normal { mean, std } => mean.is_finite() && std.is_finite() && std > 0.0,
            PriorComponent::LogNormal { mu, sigma } => mu.is_finite() && sigma.is_finite() && sigma > 0.0,
        };
        if ok {
            Ok(())
        } else {
            Err(FlowError::InvalidConfig(format!(
                "prior {}: needs finite values, low < high and positive scales",
                self.spec()
            )))
        }
    }

    /// The support `(low, high)` (`None`: unbounded).
    pub fn bounds(&self) -> (Option<f64>, Option<f64>) {
        match *self {
            PriorComponent::Uniform { low, high } => (Some(low), Some(high)),
            PriorComponent::Normal { .. } => (None, None),
            PriorComponent::LogNormal { .. } => (Some(0.0), None),
        }
    }

    /// Whether `v` lies in the support (open bounds).
    pub fn contains(&self, v: f64) -> bool {
        let (lo, hi) = self.bounds();
        v.is_finite() && lo.is_none_or(|l| v > l) && hi.is_none_or(|h| v < h)
    }

    /// Log density at `v` (−∞ outside the support).
    pub fn log_prob(&self, v: f64) -> f64 {
        if !self.contains(v) {
            return f64::NEG_INFINITY;
        }
        match *self {
            PriorComponent::Uniform { low, high } => -(high - low).ln(),
            PriorComponent::Normal { mean, std } => -0.5 * ((v - mean) / std).powi(2) - std.ln() - LN_SQRT_2PI,
            PriorComponent::LogNormal { mu, sigma } => {
                let l = v.ln();
                -0.5 * ((l - mu) / sigma).powi(2) - sigma.ln() - LN_SQRT_2PI - l
            }
        }
    }

    /// One draw.
    pub fn sample(&self, rng: &mut StdRng) -> f64 {
        match *self {
            PriorComponent::Uniform { low, high } => low + (high - low) * rng.random::<f64>(),
            PriorComponent::Normal { mean, std } => mean + std * rng.sample::<f64, _>(StandardNormal),
            PriorComponent::LogNormal { mu, sigma } => (mu + sigma * rng.sample::<f64, _>(StandardNormal)).exp(),
        }
    }

    /// The spec of this component (`uniform:-1:1`).
    pub fn spec(&self) -> String {
        match *self {
            PriorComponent::Uniform { low, high } => format!("uniform:{low}:{high}"),
            PriorComponent::Normal { mean, std } => format!("normal:{mean}:{std}"),
            PriorComponent::LogNormal { mu, sigma } => format!("lognormal:{mu}:{sigma}"),
        }
    }
}

/// A prior of independent parameters `θ = (θ₁, …, θ_D)`, `p(θ) = Π p_i(θ_i)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Prior {
    /// One component per parameter.
    pub components: Vec<PriorComponent>,
}

/// The JSON forms of a prior file.
#[derive(Deserialize)]
#[serde(untagged)]
enum PriorFile {
    Spec(String),
    List(Vec<PriorEntry>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum PriorEntry {
    Spec(String),
    Component {
        #[serde(flatten)]
        component: PriorComponent,
        #[serde(default)]
        repeat: Option<usize>,
    },
}

impl Prior {
    /// A prior of the given components (validated).
    pub fn new(components: Vec<PriorComponent>) -> Result<Self> {
        if components.is_empty() {
            return Err(FlowError::InvalidConfig("a prior needs at least one parameter".into()));
        }
        for c in &components {
            c.validate()?;
        }
        Ok(Self { components })
    }

    /// Parses a spec (`uniform:-1:1x2;normal:0:0.3162`).
    pub fn parse(spec: &str) -> Result<Self> {
        let mut components = Vec::new();
        for part in spec.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            components.extend(parse_part(part)?);
        }
        if components.is_empty() {
            return Err(bad_spec(spec, "no parameters"));
        }
        Self::new(components)
    }

    /// Reads a prior from JSON text (a spec string, a list of spec strings, or a list of
    /// components with an optional `repeat`).
    pub fn from_json(text: &str) -> Result<Self> {
        let file: PriorFile = serde_json::from_str(text).map_err(|e| FlowError::Data(format!("prior JSON: {e}")))?;
        match file {
            PriorFile::Spec(s) => Self::parse(&s),
            PriorFile::List(entries) => {
                let mut components = Vec::new();
                for e in entries {
                    match e {
                        PriorEntry::Spec(s) => components.extend(Self::parse(&s)?.components),
                        PriorEntry::Component { component, repeat } => {
                            let n = repeat.unwrap_or(1);
                            if n == 0 {
                                return Err(FlowError::Data("prior JSON: repeat must be at least 1".into()));
                            }
                            components.extend(std::iter::repeat_n(component, n));
                        }
                    }
                }
                Self::new(components)
            }
        }
    }

    /// A spec, or the path of a `.json` file holding one.
    pub fn from_arg(arg: &str) -> Result<Self> {
        let path = std::path::Path::new(arg);
        if arg.ends_with(".json") || (path.is_file() && !arg.contains(':')) {
            let text = std::fs::read_to_string(path).map_err(|e| FlowError::Data(format!("{arg}: cannot read the prior file ({e})")))?;
            Self::from_json(&text).map_err(|e| FlowError::Data(format!("{arg}: {e}")))
        } else {
            Self::parse(arg)
        }
    }

    /// Parameters D.
    pub fn dim(&self) -> usize {
        self.components.len()
    }

    /// The canonical spec, with runs of equal components written `xN`.
    pub fn spec(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        let mut i = 0;
        while i < self.components.len() {
            let mut j = i + 1;
            while j < self.components.len() && self.components[j] == self.components[i] {
                j += 1;
            }
            let s = self.components[i].spec();
            parts.push(if j - i > 1 { format!("{s}x{}", j - i) } else { s });
            i = j;
        }
        parts.join(";")
    }

    /// Whether every component has a bounded or half-bounded support (something to map).
    pub fn is_constrained(&self) -> bool {
        self.components.iter().any(|c| c.bounds() != (None, None))
    }

    /// Whether the row `theta` lies in the support.
    pub fn contains(&self, theta: &[f64]) -> bool {
        theta.len() == self.dim() && self.components.iter().zip(theta).all(|(c, v)| c.contains(*v))
    }

    /// Log density of one row (−∞ outside the support).
    pub fn log_prob(&self, theta: &[f64]) -> f64 {
        self.components.iter().zip(theta).map(|(c, v)| c.log_prob(*v)).sum()
    }

    /// `n` draws, row-major `[n, D]`.
    pub fn sample(&self, n: usize, rng: &mut StdRng) -> Vec<f64> {
        let mut out = Vec::with_capacity(n * self.dim());
        for _ in 0..n {
            out.extend(self.components.iter().map(|c| c.sample(rng)));
        }
        out
    }

    /// The layer mapping the unconstrained space onto the support (identity features for
    /// unbounded components).
    pub fn support_layer(&self) -> LayerConfig {
        let (low, high) = self.components.iter().map(PriorComponent::bounds).unzip();
        LayerConfig::Elementwise(ElementwiseConfig::new(self.dim(), ElementwiseKind::Support { low, high }))
    }

    /// The inverse of [`Prior::support_layer`] on host rows: `logit((θ − lo)/(hi − lo))`,
    /// `log(θ − lo)`, `−log(hi − θ)` or `θ`. Errors on a value outside the support.
    pub fn unconstrain(&self, theta: &mut [f64]) -> Result<()> {
        let d = self.dim();
        for row in theta.chunks_exact_mut(d) {
            for (v, c) in row.iter_mut().zip(&self.components) {
                if !c.contains(*v) {
                    return Err(FlowError::Data(format!("θ = {v} lies outside the prior support of {}", c.spec())));
                }
                *v = match c.bounds() {
                    (Some(lo), Some(hi)) => {
                        let s = (*v - lo) / (hi - lo);
                        s.ln() - (-s).ln_1p()
                    }
                    (Some(lo), None) => (*v - lo).ln(),
                    (None, Some(hi)) => -(hi - *v).ln(),
                    (None, None) => *v,
                };
            }
        }
        Ok(())
    }

    /// `n` draws of the prior restricted to the box `[low, high]` (intersected with the support)
    /// and to the rows `accept` keeps, by rejection. Gives up with an error after
    /// `max_attempts` proposals.
    pub fn sample_restricted(
        &self,
        n: usize,
        low: &[f64],
        high: &[f64],
        rng: &mut StdRng,
        max_attempts: usize,
        accept: &mut dyn FnMut(&[f64]) -> Result<Vec<bool>>,
    ) -> Result<(Vec<f64>, usize)> {
        let d = self.dim();
        let mut out = Vec::with_capacity(n * d);
        let mut attempts = 0usize;
        while out.len() < n * d {
            let have = out.len() / d;
            let rate = if attempts == 0 { 1.0 } else { (have as f64 / attempts as f64).max(1e-3) };
            let want = (((n - have) as f64 / rate * 1.2).ceil() as usize).clamp(64, 200_000);
            let mut batch = Vec::with_capacity(want * d);
            for _ in 0..want {
                for (j, c) in self.components.iter().enumerate() {
                    batch.push(sample_in_box(c, low[j], high[j], rng, max_attempts)?);
                }
            }
            attempts += want;
            let keep = accept(&batch)?;
            for (row, k) in batch.chunks_exact(d).zip(keep) {
                if k && out.len() < n * d {
                    out.extend_from_slice(row);
                }
            }
            if attempts >= max_attempts && out.len() < n * d {
                return Err(FlowError::SamplingLimit(format!(
                    "the restricted prior accepted {} of {attempts} proposals; gave up after {max_attempts}",
                    out.len() / d
                )));
            }
        }
        Ok((out, attempts))
    }
}

/// One draw of `c` restricted to `[low, high]` (uniform: exactly; others: by rejection).
fn sample_in_box(c: &PriorComponent, low: f64, high: f64, rng: &mut StdRng, max_attempts: usize) -> Result<f64> {
    if let PriorComponent::Uniform { low: a, high: b } = *c {
        let (lo, hi) = (low.max(a), high.min(b));
        if lo < hi {
            return Ok(lo + (hi - lo) * rng.random::<f64>());
        }
    }
    for _ in 0..max_attempts.max(1) {
        let v = c.sample(rng);
        if v >= low && v <= high {
            return Ok(v);
        }
    }
    Err(FlowError::SamplingLimit(format!("the prior {} has almost no mass in [{low}, {high}]", c.spec())))
}

fn bad_spec(part: &str, why: &str) -> FlowError {
    FlowError::Data(format!(
        "prior {part:?}: {why} (expected `;`-separated uniform:LO:HI, normal:MEAN:STD or lognormal:MU:SIGMA, each optionally followed by xN)"
    ))
}

fn parse_part(part: &str) -> Result<Vec<PriorComponent>> {
    let fields: Vec<&str> = part.split(':').map(str::trim).collect();
    if fields.len() != 3 {
        return Err(bad_spec(part, "needs a kind and two numbers"));
    }
    // The repeat count follows the last number: `1x2`, `0.3162x10`.
    let (last, repeat) = match fields[2].rsplit_once(['x', 'X']) {
        Some((v, n)) => (v, n.parse::<usize>().ok().filter(|&n| n > 0).ok_or_else(|| bad_spec(part, "the repeat count must be a positive integer"))?),
        None => (fields[2], 1),
    };
    let num = |s: &str| s.parse::<f64>().ok().filter(|v| v.is_finite()).ok_or_else(|| bad_spec(part, &format!("{s:?} is not a finite number")));
    let (a, b) = (num(fields[1])?, num(last)?);
    let c = match fields[0].to_ascii_lowercase().as_str() {
        "uniform" | "u" => PriorComponent::Uniform { low: a, high: b },
        "normal" | "n" | "gaussian" => PriorComponent::Normal { mean: a, std: b },
        "lognormal" | "log-normal" => PriorComponent::LogNormal { mu: a, sigma: b },
        k => return Err(bad_spec(part, &format!("unknown kind {k:?}"))),
    };
    c.validate().map_err(|_| bad_spec(part, "needs low < high and positive scales"))?;
    Ok(vec![c; repeat])
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn specs_parse_and_print() {
        let p = Prior::parse("uniform:-1:1x2; normal:0:0.3162x3;lognormal:0:0.5").unwrap();
        assert_eq!(p.dim(), 6);
        assert_eq!(p.spec(), "uniform:-1:1x2;normal:0:0.3162x3;lognormal:0:0.5");
        assert_eq!(Prior::parse(&p.spec()).unwrap(), p);
        for bad in ["", "uniform:1:-1", "uniform:0", "beta:1:2", "normal:0:-1", "uniform:0:1x0", "uniform:a:1", "normal:0:1xq"] {
            assert!(Prior::parse(bad).is_err(), "{bad}");
        }
        let j = Prior::from_json(r#"[{"type":"uniform","low":-3,"high":3,"repeat":5}]"#).unwrap();
        assert_eq!(j.spec(), "uniform:-3:3x5");
        assert_eq!(Prior::from_json(r#""normal:0:1x2""#).unwrap().dim(), 2);
        assert_eq!(Prior::from_json(r#"["normal:0:1", "uniform:0:1"]"#).unwrap().dim(), 2);
    }

    #[test]
    fn densities_and_support() {
        let p = Prior::parse("uniform:-1:3;normal:1:2;lognormal:0:1").unwrap();
        assert!(p.contains(&[0.0, 5.0, 0.1]));
        assert!(!p.contains(&[3.0, 5.0, 0.1]));
        assert!(!p.contains(&[0.0, 5.0, -0.1]));
        assert_eq!(p.log_prob(&[4.0, 0.0, 1.0]), f64::NEG_INFINITY);
        let lp = p.log_prob(&[0.0, 1.0, 1.0]);
        let expect = -(4f64).ln() + (-(2f64).ln() - LN_SQRT_2PI) + (-LN_SQRT_2PI);
        assert!((lp - expect).abs() < 1e-12);
        let mut rng = StdRng::seed_from_u64(0);
        let s = p.sample(20_000, &mut rng);
        assert!(s.chunks_exact(3).all(|r| p.contains(r)));
        let mean1: f64 = s.chunks_exact(3).map(|r| r[1]).sum::<f64>() / 20_000.0;
        assert!((mean1 - 1.0).abs() < 0.06, "{mean1}");
        let mut z = s.clone();
        p.unconstrain(&mut z).unwrap();
        assert!(z.iter().all(|v| v.is_finite()));
        assert!(p.unconstrain(&mut [5.0, 0.0, 1.0]).is_err());
    }
}

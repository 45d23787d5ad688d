//! Continuous normalizing flows (Chen et al. 2018; FFJORD, Grathwohl et al. 2019): the map from
//! base to data is the solution of `dz/dt = f(z, t; c)` from `t = 0` (base) to `t = 1` (data),
//! and its log-determinant the integral of the trace of `∂f/∂z`:
//!
//! `log|det J_T(u)| = ∫₀¹ tr(∂f/∂z(z(t), t; c)) dt`.
//!
//! `f` is an MLP on `(z, cos(πk t), sin(πk t) for k = 1…F, c)`. The trace is exact (D
//! Jacobian–vector products propagated in forward mode through the network, one batched pass)
//! or Hutchinson's unbiased estimate `εᵀ (∂f/∂z) ε` with one probe ε (Rademacher or Gaussian) held
//! fixed through a solve. Both directions are ODE solves ([`crate::ode`]) of the state
//! `(z, ℓ)`, `dℓ/dt = tr(∂f/∂z)`, so both are [`Cost::Iterative`]; the last layer of `f` starts at
//! zero, so a new CNF is exactly the identity. Gradients flow by backpropagation through the
//! solver's steps.

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::{Bijection, Call, Cost, Directions, LayerSpec, LogDet, Mapped, Mode};
use crate::error::{FlowError, Result};
use crate::nn::{Activation, Dense, Init};
use crate::ode::{self, OdeSettings, Solver};
use crate::tensor::{dims2, matrix};

/// How the trace of `∂f/∂z` is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trace {
    /// Exactly, by D Jacobian–vector products (one batched pass of width D·N).
    Exact,
    /// Hutchinson's estimator `εᵀ (∂f/∂z) ε`: unbiased, one product per evaluation.
    Hutchinson,
}

/// The distribution of Hutchinson probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Probe {
    /// ±1 with equal probability (lower variance).
    #[default]
    Rademacher,
    /// Standard normal.
    Gaussian,
}

/// Features up to which [`CnfConfig::new`] chooses the exact trace.
pub const EXACT_TRACE_MAX_DIM: usize = 10;

/// Configuration of a [`Cnf`] layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CnfConfig {
    /// Features D.
    pub dim: usize,
    /// Context width C.
    #[serde(default)]
    pub context_dim: usize,
    /// Hidden widths of the vector field.
    pub hidden: Vec<usize>,
    /// Nonlinearity of the vector field (smooth: ELU or tanh).
    pub activation: Activation,
    /// Time-embedding frequencies F (features `cos(πk t), sin(πk t)`, k = 1…F).
    pub frequencies: usize,
    /// The trace of `∂f/∂z`.
    pub trace: Trace,
    /// Hutchinson probe distribution.
    #[serde(default)]
    pub probe: Probe,
    /// The ODE solver, tolerances and limits.
    pub ode: OdeSettings,
    /// Seed of the initial weights (set by the chain; not stored).
    #[serde(skip)]
    pub seed: u64,
}

impl CnfConfig {
    /// zuko's defaults: an ELU network of 64 × 2, 3 frequencies, Dormand–Prince with atol 1e−6
    /// and rtol 1e−5; the exact trace up to [`EXACT_TRACE_MAX_DIM`] features, Hutchinson above.
    pub fn new(dim: usize) -> Self {
        let trace = if dim <= EXACT_TRACE_MAX_DIM { Trace::Exact } else { Trace::Hutchinson };
        Self {
            dim,
            context_dim: 0,
            hidden: vec![64, 64],
            activation: Activation::Elu,
            frequencies: 3,
            trace,
            probe: Probe::Rademacher,
            ode: OdeSettings::default(),
            seed: 0,
        }
    }

    /// Conditions on a context of width `context_dim`.
    pub fn with_context_dim(mut self, context_dim: usize) -> Self {
        self.context_dim = context_dim;
        self
    }

    /// Sets the hidden widths.
    pub fn with_hidden(mut self, hidden: Vec<usize>) -> Self {
        self.hidden = hidden;
        self
    }

    /// Sets the nonlinearity.
    pub fn with_activation(mut self, activation: Activation) -> Self {
        self.activation = activation;
        self
    }

    /// Sets the number of time frequencies.
    pub fn with_frequencies(mut self, frequencies: usize) -> Self {
        self.frequencies = frequencies;
        self
    }

    /// Sets the trace computation.
    pub fn with_trace(mut self, trace: Trace) -> Self {
        self.trace = trace;
        self
    }

    /// Sets the Hutchinson probe distribution.
    pub fn with_probe(mut self, probe: Probe) -> Self {
        self.probe = probe;
        self
    }

    /// Sets the solver settings.
    pub fn with_ode(mut self, ode: OdeSettings) -> Self {
        self.ode = ode;
        self
    }

    /// Sets the seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    fn input_width(&self) -> usize {
        self.dim + 2 * self.frequencies + self.context_dim
    }

    /// Builds the layer: random hidden layers, a zero last layer (the identity map).
    pub fn init(&self, device: &Device) -> Result<Cnf> {
        self.validate()?;
        let rng = &mut StdRng::seed_from_u64(self.seed);
        let mut widths = vec![self.input_width()];
        widths.extend(&self.hidden);
        let mut layers: Vec<Dense> = widths.windows(2).map(|w| Dense::new(w[0], w[1], Init::Uniform, rng, device)).collect();
        layers.push(Dense::new(*widths.last().unwrap_or(&self.dim), self.dim, Init::Zeros, rng, device));
        Ok(Cnf {
            layers,
            dim: self.dim,
            context_dim: self.context_dim,
            frequencies: self.frequencies,
            activation: self.activation,
            trace: self.trace,
            probe: self.probe,
            ode: self.ode,
        })
    }
}

impl LayerSpec for CnfConfig {
    fn dim(&self) -> usize {
        self.dim
    }

    fn validate(&self) -> Result<()> {
        super::require_features(self.dim, "a continuous normalizing flow")?;
        if self.hidden.is_empty() || self.hidden.contains(&0) {
            return Err(FlowError::InvalidConfig("a CNF vector field needs at least one hidden layer, every width ≥ 1".into()));
        }
        if self.activation == Activation::Relu {
            return Err(FlowError::InvalidConfig("a CNF vector field needs a smooth nonlinearity (elu or tanh), not relu".into()));
        }
        self.ode.validate()
    }

    fn context_dim(&self) -> usize {
        self.context_dim
    }

    fn parameter_count(&self) -> usize {
        let mut widths = vec![self.input_width()];
        widths.extend(&self.hidden);
        widths.push(self.dim);
        widths.windows(2).map(|w| (w[0] + 1) * w[1]).sum()
    }

    fn set_seed(&mut self, seed: u64) {
        self.seed = seed;
    }
}

/// A continuous normalizing flow layer (see the module documentation).
#[derive(Module, Debug)]
pub struct Cnf {
    /// The vector field's affine layers; the first takes `[z, time features, context]`.
    pub layers: Vec<Dense>,
    /// Features D.
    pub dim: usize,
    /// Context width C.
    pub context_dim: usize,
    /// Time frequencies F.
    pub frequencies: usize,
    /// Nonlinearity.
    #[module(skip)]
    pub activation: Activation,
    /// Trace computation.
    #[module(skip)]
    pub trace: Trace,
    /// Hutchinson probe distribution.
    #[module(skip)]
    pub probe: Probe,
    /// Solver settings.
    #[module(skip)]
    pub ode: OdeSettings,
}

/// The derivative of the nonlinearity at pre-activations `a`.
fn activation_derivative(activation: Activation, a: Tensor<2>) -> Tensor<2> {
    match activation {
        // ELU: 1 for a > 0, eᵃ below: e^min(a, 0).
        Activation::Elu => a.clamp_max(0.0).exp(),
        Activation::Tanh => a.tanh().square().neg().add_scalar(1.0),
        Activation::Relu => a.greater_elem(0.0).float(),
    }
}

/// The parts of the vector field that stay fixed through a solve: the first layer split by
/// input, the context's contribution plus the bias.
struct FieldParts {
    /// First-layer weights on z, `[D, H]`.
    w_z: Tensor<2>,
    /// First-layer weights on the time features, `[2F, H]`.
    w_t: Tensor<2>,
    /// Context contribution plus bias, `[N, H]` or `[1, H]`.
    offset: Tensor<2>,
    /// Hutchinson probe `[N, D]` (none: exact trace).
    probe: Option<Tensor<2>>,
}

impl Cnf {
    fn parts(&self, n: usize, call: &Call, device: &Device) -> FieldParts {
        let (d, f2) = (self.dim, 2 * self.frequencies);
        let w = self.layers[0].weight.val();
        let w_z = w.clone().narrow(0, 0, d);
        let w_t = w.clone().narrow(0, d, f2);
        let bias = self.layers[0].bias.val().unsqueeze::<2>();
        let offset = match (self.context_dim, call.context()) {
            (c, Some(ctx)) if c > 0 => ctx.clone().matmul(w.narrow(0, d + f2, c)).add(bias),
            _ => bias,
        };
        let probe = match self.trace {
            Trace::Exact => None,
            Trace::Hutchinson => Some(match self.probe {
                Probe::Rademacher => call.rademacher(n, d, device),
                Probe::Gaussian => call.standard_normal(n, d, device),
            }),
        };
        FieldParts { w_z, w_t, offset, probe }
    }

    /// `[cos(πk t), sin(πk t)]`, k = 1…F, as a `[1, 2F]` row.
    fn time_features(&self, t: f64, device: &Device) -> Tensor<2> {
        let f = self.frequencies;
        let mut v = Vec::with_capacity(2 * f);
        v.extend((1..=f).map(|k| (std::f64::consts::PI * k as f64 * t).cos()));
        v.extend((1..=f).map(|k| (std::f64::consts::PI * k as f64 * t).sin()));
        matrix(v, 1, 2 * f, device)
    }

    /// The vector field `f(z, t; c)` `[N, D]` at a time per row (`t` `[N, 1]`), without the
    /// trace: what flow matching regresses.
    pub fn velocity(&self, z: Tensor<2>, t: Tensor<2>, context: Option<&Tensor<2>>) -> Tensor<2> {
        let (d, f) = (self.dim, self.frequencies);
        let w = self.layers[0].weight.val();
        let mut a = z.matmul(w.clone().narrow(0, 0, d)).add(self.layers[0].bias.val().unsqueeze());
        if f > 0 {
            let device = t.device();
            let k: Vec<f64> = (1..=f).map(|k| std::f64::consts::PI * k as f64).collect();
            let phase = t.matmul(matrix(k, 1, f, &device));
            let features = Tensor::cat(vec![phase.clone().cos(), phase.sin()], 1);
            a = a.add(features.matmul(w.clone().narrow(0, d, 2 * f)));
        }
        if let (c, Some(ctx)) = (self.context_dim, context) {
            if c > 0 {
                a = a.add(ctx.clone().matmul(w.narrow(0, d + 2 * f, c)));
            }
        }
        let mut hidden = self.activation.apply(a);
        let last = self.layers.len() - 1;
        for layer in &self.layers[1..last] {
            hidden = layer.forward_activated(hidden, Some(self.activation));
        }
        self.layers[last].forward(hidden)
    }

    /// `f(z, t)` `[N, D]` and `tr(∂f/∂z)` (exact or Hutchinson) `[N, 1]`.
    fn field(&self, z: Tensor<2>, t: f64, parts: &FieldParts) -> (Tensor<2>, Tensor<2>) {
        let (n, d) = dims2(&z);
        let device = z.device();
        let mut a = z.matmul(parts.w_z.clone()).add(parts.offset.clone());
        if self.frequencies > 0 {
            a = a.add(self.time_features(t, &device).matmul(parts.w_t.clone()));
        }
        // Tangents: exact, one per input direction ([N·D, H], row n·D + i for direction eᵢ);
        // Hutchinson, the probe's ([N, H]).
        let mut tangent = match &parts.probe {
            None => {
                let h = dims2(&a).1;
                let slope = activation_derivative(self.activation, a.clone()).unsqueeze_dim::<3>(1);
                slope.mul(parts.w_z.clone().unsqueeze_dim::<3>(0)).reshape([n * d, h])
            }
            Some(eps) => eps.clone().matmul(parts.w_z.clone()).mul(activation_derivative(self.activation, a.clone())),
        };
        let mut hidden = self.activation.apply(a);
        let last = self.layers.len() - 1;
        for layer in &self.layers[1..last] {
            let a = layer.forward(hidden);
            let slope = activation_derivative(self.activation, a.clone());
            tangent = tangent.matmul(layer.weight.val());
            tangent = match &parts.probe {
                None => {
                    let h = dims2(&a).1;
                    tangent.reshape([n, d, h]).mul(slope.unsqueeze_dim::<3>(1)).reshape([n * d, h])
                }
                Some(_) => tangent.mul(slope),
            };
            hidden = self.activation.apply(a);
        }
        let out = &self.layers[last];
        let dz = out.forward(hidden);
        let w_out = out.weight.val();
        let trace = match &parts.probe {
            None => {
                // diag of J: row i of direction i against column i of the last weights.
                let h = dims2(&w_out).0;
                tangent.reshape([n, d, h]).mul(w_out.transpose().unsqueeze_dim::<3>(0)).sum_dim(2).sum_dim(1).reshape([n, 1])
            }
            Some(eps) => tangent.matmul(w_out).mul(eps.clone()).sum_dim(1),
        };
        (dz, trace)
    }

    /// Solves from `t0` to `t1`: the end point and `∫ tr dt` along the way.
    fn solve(&self, z: Tensor<2>, t0: f64, t1: f64, call: &Call) -> Result<Mapped> {
        let (n, _) = dims2(&z);
        let device = z.device();
        let parts = self.parts(n, call, &device);
        let log_det = Tensor::<2>::zeros([n, 1], &device);
        let mut rhs = |t: f64, y: &[Tensor<2>]| -> Result<ode::State> {
            let (dz, tr) = self.field(y[0].clone(), t, &parts);
            Ok(vec![dz, tr])
        };
        let solved = ode::solve(&mut rhs, vec![z, log_det], t0, t1, &self.ode)?;
        call.count_evaluations(solved.evaluations);
        let mut state = solved.state.into_iter();
        match (state.next(), state.next()) {
            (Some(z), Some(ld)) => Ok((z, ld.reshape([n]))),
            _ => Err(FlowError::Backend("the ODE solve lost its state".into())),
        }
    }
}

impl Cnf {
    /// The same layer with another Hutchinson probe distribution.
    pub fn with_probe(mut self, probe: Probe) -> Self {
        self.probe = probe;
        self
    }
}

impl Bijection for Cnf {
    fn dim(&self) -> usize {
        self.dim
    }

    fn context_dim(&self) -> usize {
        self.context_dim
    }

    fn directions(&self) -> Directions {
        Directions { forward: Cost::Iterative, inverse: Cost::Iterative }
    }

    fn log_det(&self, _mode: Mode) -> LogDet {
        match self.trace {
            Trace::Exact => LogDet::Exact,
            Trace::Hutchinson => LogDet::Estimated,
        }
    }

    fn name(&self) -> String {
        let solver = match self.ode.solver {
            Solver::Dopri5 => format!("dopri5, atol {:e}, rtol {:e}", self.ode.atol, self.ode.rtol),
            s => format!("{}, {} steps", s.name(), self.ode.steps),
        };
        let trace = match self.trace {
            Trace::Exact => "exact trace",
            Trace::Hutchinson => "Hutchinson trace",
        };
        format!("Cnf({solver}, {trace})")
    }

    /// Base → data: t from 0 to 1.
    fn forward_unchecked(&self, u: Tensor<2>, call: &Call) -> Result<Mapped> {
        self.solve(u, 0.0, 1.0, call)
    }

    /// Data → base: t from 1 to 0 (`∫₁⁰ tr dt = −∫₀¹ tr dt`).
    fn inverse_unchecked(&self, x: Tensor<2>, call: &Call) -> Result<Mapped> {
        self.solve(x, 1.0, 0.0, call)
    }
}

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

use std::sync::Arc;

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::{Bijection, Call, Cost, Directions, LayerSpec, LogDet, Mapped, Mode};
use crate::error::{FlowError, Result};
use crate::nn::{affine, Activation, Dense, Init};
use crate::ode::adjoint::{self, AdjointSystem, Dynamics};
use crate::ode::{self, OdeSettings, Solver, State};
use crate::tensor::{dims2, indices, matrix};

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

/// How training gradients pass through a solve.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum GradientMethod {
    /// Backpropagation through the solver's steps: exact gradients of the computed solution,
    /// memory growing with the number of steps.
    #[default]
    Backprop,
    /// The adjoint method ([`crate::ode::adjoint`]): a second solve backwards in time, memory
    /// independent of the number of steps, gradients accurate to the solver's tolerance.
    Adjoint,
}

impl GradientMethod {
    /// Parses `backprop` or `adjoint`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "backprop" => Ok(Self::Backprop),
            "adjoint" => Ok(Self::Adjoint),
            other => Err(FlowError::InvalidConfig(format!("unknown CNF gradient method {other:?}: expected backprop or adjoint"))),
        }
    }
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
    /// Time-embedding frequencies F ≥ 1 (features `cos(πk t), sin(πk t)`, k = 1…F).
    pub frequencies: usize,
    /// The trace of `∂f/∂z`.
    pub trace: Trace,
    /// Hutchinson probe distribution.
    #[serde(default)]
    pub probe: Probe,
    /// The ODE solver, tolerances and limits.
    pub ode: OdeSettings,
    /// RNODE (Finlay et al. 2020): weight λ_K of the kinetic energy `∫ ‖f‖² dt` added to the
    /// training loss per row (0: none).
    #[serde(default)]
    pub kinetic: f64,
    /// RNODE: weight λ_J of the Jacobian's Frobenius norm `∫ ‖∂f/∂z‖²_F dt` (exact with the exact
    /// trace, `‖(∂f/∂z) ε‖²` with Hutchinson probes).
    #[serde(default)]
    pub jacobian: f64,
    /// How training gradients pass through the solves.
    #[serde(default)]
    pub gradient: GradientMethod,
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
            kinetic: 0.0,
            jacobian: 0.0,
            gradient: GradientMethod::Backprop,
            seed: 0,
        }
    }

    /// Sets how training gradients pass through the solves.
    pub fn with_gradient(mut self, gradient: GradientMethod) -> Self {
        self.gradient = gradient;
        self
    }

    /// Sets the RNODE weights of the kinetic energy and the Jacobian norm (training only).
    pub fn with_regularization(mut self, kinetic: f64, jacobian: f64) -> Self {
        self.kinetic = kinetic;
        self.jacobian = jacobian;
        self
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
            kinetic: self.kinetic,
            jacobian: self.jacobian,
            gradient: self.gradient,
        })
    }
}

impl LayerSpec for CnfConfig {
    fn dim(&self) -> usize {
        self.dim
    }

    fn validate(&self) -> Result<()> {
        super::require_features(self.dim, "a continuous normalizing flow")?;
        if self.frequencies == 0 {
            return Err(FlowError::InvalidConfig("a CNF vector field needs at least one time frequency".into()));
        }
        if self.hidden.is_empty() || self.hidden.contains(&0) {
            return Err(FlowError::InvalidConfig("a CNF vector field needs at least one hidden layer, every width ≥ 1".into()));
        }
        for (name, w) in [("kinetic", self.kinetic), ("jacobian", self.jacobian)] {
            if !(w.is_finite() && w >= 0.0) {
                return Err(FlowError::InvalidConfig(format!("the CNF's {name} regularization weight must be ≥ 0, got {w}")));
            }
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
    /// RNODE weight of the kinetic energy.
    #[module(skip)]
    pub kinetic: f64,
    /// RNODE weight of the Jacobian norm.
    #[module(skip)]
    pub jacobian: f64,
    /// How training gradients pass through the solves.
    #[module(skip)]
    pub gradient: GradientMethod,
}

/// The derivative of the nonlinearity from its output `h = act(a)` (no transcendental
/// function: ELU's is `min(h, 0) + 1`, tanh's `1 − h²`).
fn slope_from_output(activation: Activation, h: Tensor<2>) -> Tensor<2> {
    match activation {
        Activation::Elu => h.clamp_max(0.0).add_scalar(1.0),
        Activation::Tanh => h.square().neg().add_scalar(1.0),
        Activation::Relu => h.greater_elem(0.0).float(),
    }
}

/// What a vector field is, apart from its weights.
#[derive(Clone, Copy, Debug)]
struct FieldShape {
    dim: usize,
    context_dim: usize,
    frequencies: usize,
    activation: Activation,
}

/// The vector field as one solve sees it: weights, context and probe fixed.
#[derive(Clone, Debug)]
struct Field {
    shape: FieldShape,
    /// `(W, b)` per affine layer, `W` `[in, out]`.
    layers: Vec<(Tensor<2>, Tensor<1>)>,
    /// First-layer weights on z, then on the context: `[D + C, H]`.
    w_in: Tensor<2>,
    /// First-layer weights on z alone, `[D, H]` (tangents).
    w_z: Tensor<2>,
    /// First-layer weights on the time features, `[2F, H]`.
    w_t: Tensor<2>,
    /// The context (embedded), when the layer takes one.
    context: Option<Tensor<2>>,
    /// Hutchinson probe `[N, D]` (none: exact trace).
    probe: Option<Tensor<2>>,
}

/// The regularization integrals a solve carries (RNODE, training only).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Integrals {
    /// Also `∫ ‖f‖² dt` and `∫ ‖∂f/∂z‖²_F dt` (weights applied by the caller).
    regularize: bool,
    /// Whether the Frobenius norm is wanted (else that integral stays zero).
    jacobian: bool,
    /// `sign(t₁ − t₀)`: integrals accumulate forward in time whichever way the solve runs.
    sign: f64,
}

impl Field {
    fn new(shape: FieldShape, layers: Vec<(Tensor<2>, Tensor<1>)>, context: Option<Tensor<2>>, probe: Option<Tensor<2>>) -> Self {
        let (d, f2, c) = (shape.dim, 2 * shape.frequencies, shape.context_dim);
        let w = layers[0].0.clone();
        let w_z = w.clone().narrow(0, 0, d);
        let context = context.filter(|_| c > 0);
        let w_in = match &context {
            Some(_) => Tensor::cat(vec![w_z.clone(), w.clone().narrow(0, d + f2, c)], 0),
            None => w_z.clone(),
        };
        let w_t = w.narrow(0, d, f2);
        Self { shape, layers, w_in, w_z, w_t, context, probe }
    }

    /// `[cos(πk t), sin(πk t)]`, k = 1…F, as a `[1, 2F]` row.
    fn time_features(&self, t: f64, device: &Device) -> Tensor<2> {
        let f = self.shape.frequencies;
        let mut v = Vec::with_capacity(2 * f);
        v.extend((1..=f).map(|k| (std::f64::consts::PI * k as f64 * t).cos()));
        v.extend((1..=f).map(|k| (std::f64::consts::PI * k as f64 * t).sin()));
        matrix(v, 1, 2 * f, device)
    }

    /// The first hidden layer's output at one time for every row: `act([z, c] W + b + e(t) W_t)`,
    /// one fused dense pass (the time enters through the bias).
    fn first_hidden(&self, z: Tensor<2>, t: f64) -> Tensor<2> {
        let bias = self.layers[0].1.clone();
        let h = bias.dims()[0];
        let bias = bias.add(self.time_features(t, &z.device()).matmul(self.w_t.clone()).reshape([h]));
        let input = match &self.context {
            Some(c) => Tensor::cat(vec![z, c.clone()], 1),
            None => z,
        };
        affine(input, self.w_in.clone(), bias, Some(self.shape.activation))
    }

    /// The layers after the first, from its output.
    fn rest(&self, mut hidden: Tensor<2>) -> Tensor<2> {
        let last = self.layers.len() - 1;
        for (w, b) in &self.layers[1..last] {
            hidden = affine(hidden, w.clone(), b.clone(), Some(self.shape.activation));
        }
        let (w, b) = &self.layers[last];
        affine(hidden, w.clone(), b.clone(), None)
    }

    /// `f(z, t)` `[N, D]` alone, at one time for every row.
    fn velocity_at(&self, z: Tensor<2>, t: f64) -> Tensor<2> {
        self.rest(self.first_hidden(z, t))
    }

    /// `f(z, t)` `[N, D]`, `tr(∂f/∂z)` (exact or Hutchinson) `[N, 1]` and with `norm` the squared
    /// Frobenius norm of `∂f/∂z` `[N, 1]` (exact from the D tangents, or `‖(∂f/∂z) ε‖²` for a
    /// probe): tangents propagated forward through the network, `∂h₁ = act'(a₁) ⊙ (v W_z)`,
    /// `∂h_k = act'(a_k) ⊙ (∂h_{k−1} W_k)`, `∂f = ∂h_L W_out` — for the D unit vectors at once
    /// (exact) or for the probe.
    fn with_trace(&self, z: Tensor<2>, t: f64, norm: bool) -> (Tensor<2>, Tensor<2>, Option<Tensor<2>>) {
        let (n, d) = dims2(&z);
        let activation = self.shape.activation;
        let mut hidden = self.first_hidden(z, t);
        let slope = slope_from_output(activation, hidden.clone());
        let h = dims2(&hidden).1;
        // Exact: one tangent per input direction, rows n·D + i for eᵢ ([N·D, H]); Hutchinson: the
        // probe's ([N, H]).
        let mut tangent = match &self.probe {
            None => slope.unsqueeze_dim::<3>(1).mul(self.w_z.clone().unsqueeze_dim::<3>(0)).reshape([n * d, h]),
            Some(eps) => eps.clone().matmul(self.w_z.clone()).mul(slope),
        };
        let last = self.layers.len() - 1;
        for (w, b) in &self.layers[1..last] {
            hidden = affine(hidden, w.clone(), b.clone(), Some(activation));
            let slope = slope_from_output(activation, hidden.clone());
            let h = dims2(&hidden).1;
            tangent = tangent.matmul(w.clone());
            tangent = match &self.probe {
                None => tangent.reshape([n, d, h]).mul(slope.unsqueeze_dim::<3>(1)).reshape([n * d, h]),
                Some(_) => tangent.mul(slope),
            };
        }
        let (w_out, b_out) = &self.layers[last];
        let dz = affine(hidden, w_out.clone(), b_out.clone(), None);
        let products = tangent.matmul(w_out.clone());
        let frobenius = norm.then(|| match &self.probe {
            None => products.clone().square().reshape([n, d * d]).sum_dim(1),
            Some(_) => products.clone().square().sum_dim(1),
        });
        let trace = match &self.probe {
            None => {
                // Row n·D + i of ∂f is direction i: its entry i is J_ii.
                let diagonal: Vec<usize> = (0..d).map(|i| i * d + i).collect();
                products.reshape([n, d * d]).select(1, indices(&diagonal, &dz.device())).sum_dim(1)
            }
            Some(eps) => products.mul(eps.clone()).sum_dim(1),
        };
        (dz, trace, frobenius)
    }

    /// The derivatives of the solve's state `[z, ℓ]` (and with regularization the kinetic
    /// energy and Frobenius norm integrals).
    fn derivatives(&self, z: Tensor<2>, t: f64, integrals: Integrals) -> State {
        if !integrals.regularize {
            let (dz, tr, _) = self.with_trace(z, t, false);
            return vec![dz, tr];
        }
        let (dz, tr, frobenius) = self.with_trace(z, t, integrals.jacobian);
        let kinetic = dz.clone().square().sum_dim(1).mul_scalar(integrals.sign);
        let frobenius = frobenius.map_or_else(|| kinetic.clone().zeros_like(), |f| f.mul_scalar(integrals.sign));
        vec![dz, tr, kinetic, frobenius]
    }
}

/// A CNF's solve as a system for the adjoint method: the weights arrive as one row.
#[derive(Debug)]
struct CnfSystem {
    shape: FieldShape,
    /// `(in, out)` per affine layer, in the order of the flat parameter row.
    widths: Vec<(usize, usize)>,
    probe: Option<Tensor<2>>,
    integrals: Integrals,
}

impl AdjointSystem for CnfSystem {
    fn integral_widths(&self) -> Vec<usize> {
        if self.integrals.regularize { vec![1, 1, 1] } else { vec![1] }
    }

    fn dynamics<'a>(&'a self, params: &Tensor<2>, context: Option<&Tensor<2>>) -> Result<Box<Dynamics<'a>>> {
        let mut layers = Vec::with_capacity(self.widths.len());
        let mut offset = 0;
        for &(i, o) in &self.widths {
            let w = params.clone().narrow(1, offset, i * o).reshape([i, o]);
            let b = params.clone().narrow(1, offset + i * o, o).reshape([o]);
            layers.push((w, b));
            offset += (i + 1) * o;
        }
        let field = Field::new(self.shape, layers, context.cloned(), self.probe.clone());
        let integrals = self.integrals;
        Ok(Box::new(move |t, z| {
            let state = field.derivatives(z.clone(), t, integrals);
            Ok(state)
        }))
    }
}

impl Cnf {
    fn shape(&self) -> FieldShape {
        FieldShape { dim: self.dim, context_dim: self.context_dim, frequencies: self.frequencies, activation: self.activation }
    }

    /// The Hutchinson probe of a solve (none with the exact trace).
    fn probe(&self, n: usize, call: &Call, device: &Device) -> Option<Tensor<2>> {
        match self.trace {
            Trace::Exact => None,
            Trace::Hutchinson => Some(match self.probe {
                Probe::Rademacher => call.rademacher(n, self.dim, device),
                Probe::Gaussian => call.standard_normal(n, self.dim, device),
            }),
        }
    }

    /// The field with this layer's weights.
    fn field_for(&self, n: usize, call: &Call, device: &Device) -> Field {
        let layers = self.layers.iter().map(|l| (l.weight.val(), l.bias.val())).collect();
        Field::new(self.shape(), layers, call.context().cloned(), self.probe(n, call, device))
    }

    /// The vector field `f(z, t; c)` `[N, D]` at a time per row (`t` `[N, 1]`), without the
    /// trace: what flow matching regresses.
    pub fn velocity(&self, z: Tensor<2>, t: Tensor<2>, context: Option<&Tensor<2>>) -> Tensor<2> {
        let f = self.frequencies;
        let k: Vec<f64> = (1..=f).map(|k| std::f64::consts::PI * k as f64).collect();
        let phase = t.clone().matmul(matrix(k, 1, f, &t.device()));
        let mut inputs = vec![z, phase.clone().cos(), phase.sin()];
        if let Some(ctx) = context.filter(|_| self.context_dim > 0) {
            inputs.push(ctx.clone());
        }
        let first = &self.layers[0];
        let hidden = affine(Tensor::cat(inputs, 1), first.weight.val(), first.bias.val(), Some(self.activation));
        let last = self.layers.len() - 1;
        let hidden = self.layers[1..last].iter().fold(hidden, |h, layer| layer.forward_activated(h, Some(self.activation)));
        self.layers[last].forward(hidden)
    }

    /// The solver settings of a call: the layer's own, or the call's tolerance when it sets
    /// one (a check testing the map).
    fn settings(&self, call: &Call) -> OdeSettings {
        match call.given_tolerance() {
            Some(t) => OdeSettings { atol: t.absolute, rtol: t.relative, max_steps: t.max_iterations, ..self.ode },
            None => self.ode,
        }
    }

    /// The weights as one `[1, P]` row (each layer's `W` row-major, then `b`) and their widths.
    fn flat_parameters(&self) -> (Tensor<2>, Vec<(usize, usize)>) {
        let mut parts = Vec::with_capacity(2 * self.layers.len());
        let mut widths = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let [i, o] = layer.weight.val().dims();
            parts.push(layer.weight.val().reshape([1, i * o]));
            parts.push(layer.bias.val().reshape([1, o]));
            widths.push((i, o));
        }
        (Tensor::cat(parts, 1), widths)
    }

    /// Solves from `t0` to `t1`: the end point and `∫ tr dt` along the way.
    fn solve(&self, z: Tensor<2>, t0: f64, t1: f64, call: &Call) -> Result<Mapped> {
        let (n, _) = dims2(&z);
        let device = z.device();
        let settings = self.settings(call);
        if !call.needs_log_det() {
            // Samples only: the state is z alone, no trace.
            let field = self.field_for(n, call, &device);
            let mut rhs = |t: f64, y: &[Tensor<2>]| -> Result<ode::State> { Ok(vec![field.velocity_at(y[0].clone(), t)]) };
            let solved = ode::solve(&mut rhs, vec![z], t0, t1, &settings)?;
            call.count_evaluations(solved.evaluations);
            let z = solved.state.into_iter().next().ok_or_else(|| FlowError::Backend("the ODE solve lost its state".into()))?;
            return Ok((z, Tensor::zeros([n], &device)));
        }
        let regularize = call.mode == Mode::Training && (self.kinetic > 0.0 || self.jacobian > 0.0);
        let integrals = Integrals { regularize, jacobian: self.jacobian > 0.0, sign: (t1 - t0).signum() };
        let (state, evaluations) = if self.gradient == GradientMethod::Adjoint && z.is_autodiff() {
            let (params, widths) = self.flat_parameters();
            let system = CnfSystem { shape: self.shape(), widths, probe: self.probe(n, call, &device), integrals };
            let context = call.context().filter(|_| self.context_dim > 0).cloned();
            let solved = adjoint::solve(Arc::new(system), z, params, context, t0, t1, &settings)?;
            (solved.state, solved.evaluations)
        } else {
            let field = self.field_for(n, call, &device);
            let mut rhs = |t: f64, y: &[Tensor<2>]| -> Result<ode::State> { Ok(field.derivatives(y[0].clone(), t, integrals)) };
            let mut start = vec![z];
            let parts = if regularize { 3 } else { 1 };
            start.extend((0..parts).map(|_| Tensor::<2>::zeros([n, 1], &device)));
            let solved = ode::solve(&mut rhs, start, t0, t1, &settings)?;
            (solved.state, solved.evaluations)
        };
        call.count_evaluations(evaluations);
        let mut state = state.into_iter();
        let (z, ld) = match (state.next(), state.next()) {
            (Some(z), Some(ld)) => (z, ld.reshape([n])),
            _ => return Err(FlowError::Backend("the ODE solve lost its state".into())),
        };
        if let (Some(kinetic), Some(frobenius)) = (state.next(), state.next()) {
            let penalty = kinetic.mul_scalar(self.kinetic).add(frobenius.mul_scalar(self.jacobian));
            call.add_penalty(penalty.reshape([n]));
        }
        Ok((z, ld))
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

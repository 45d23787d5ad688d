//! The open core in f64: a layer added in one file (leaky ReLU), image events (squeeze),
//! multi-scale chains (factor-out), iterative inverses that fail loudly, estimated log-dets checked
//! in mean by the harness, and parameter counts computed from configurations.

use burn::module::Module;
use diffeo::bijections::*;
use diffeo::prelude::*;
use diffeo::tensor::{matrix, sum_rows, to_vec};
use diffeo::testing::{check_bijection, randomize_parameters, HarnessConfig, JacobianReference};
use diffeo::transformer::Transformer;

fn device() -> Device {
    diffeo::cpu_f64().expect("f64 device")
}

fn check<B: Bijection + Module>(b: &B, cfg: &HarnessConfig) {
    let report = check_bijection(b, &device(), cfg).unwrap_or_else(|e| panic!("{e}"));
    assert!(!report.directions.is_empty());
}

fn made(dim: usize, context_dim: usize) -> LayerConfig {
    LayerConfig::MaskedAutoregressive(
        MaskedAutoregressiveConfig::new(dim, vec![12]).with_context_dim(context_dim).with_activation(diffeo::nn::Activation::Tanh),
    )
}

fn chain(event: EventShape, layers: Vec<LayerConfig>, seed: u64) -> Chain {
    let c = ChainConfig::new(event.size(), layers).with_event(event).with_seed(seed).init(&device()).expect("valid chain");
    randomize_parameters(c, seed + 100, 0.3)
}

#[test]
fn leaky_relu_passes_the_harness_with_and_without_context() {
    let d = device();
    for slope in [0.01, 0.5, 3.0] {
        let layer = LeakyReluConfig::new(3).with_slope(slope).init(&d).unwrap();
        check(&layer, &HarnessConfig::default());
        check(&invert(layer), &HarnessConfig::default());
        // Between conditional layers, so the chain takes a context.
        let relu = LayerConfig::LeakyRelu(LeakyReluConfig::new(3).with_slope(slope));
        let c = chain(EventShape::flat(3), vec![made(3, 2), relu.clone(), made(3, 2), relu.inverted()], 5);
        assert_eq!(c.context_dim(), 2);
        check(&c, &HarnessConfig::default());
        check(&c, &HarnessConfig { jacobian: JacobianReference::Autodiff, logdet_tol: 1e-10, ..HarnessConfig::default() });
    }
    // Values: y = x for x ≥ 0, αx below; log-det counts the negative entries.
    let layer = LeakyReluConfig::new(2).with_slope(0.25).init(&d).unwrap();
    let (y, ld) = layer.forward(matrix(vec![2.0, -4.0, -1.0, -8.0], 2, 2, &d), &Call::new()).unwrap();
    assert_eq!(to_vec(y).unwrap(), vec![2.0, -1.0, -0.25, -2.0]);
    let ld = to_vec(ld).unwrap();
    assert!((ld[0] - 0.25f64.ln()).abs() < 1e-15 && (ld[1] - 2.0 * 0.25f64.ln()).abs() < 1e-15);
    // Bad slopes are configuration errors, not panics.
    for slope in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        assert!(matches!(LeakyReluConfig::new(2).with_slope(slope).init(&d), Err(FlowError::InvalidConfig(_))));
    }
    // Saved and loaded through a flow's configuration (the registry made it a layer type).
    let json = serde_json::to_string(&LayerConfig::LeakyRelu(LeakyReluConfig::new(2))).unwrap();
    assert_eq!(json, r#"{"type":"leaky_relu","dim":2,"slope":0.01}"#);
}

#[test]
fn squeeze_moves_2x2_blocks_into_channels() {
    let d = device();
    let sq = SqueezeConfig::new(2, 4, 6).init(&d).unwrap();
    assert_eq!(sq.event(), EventShape::image(2, 4, 6));
    assert_eq!(sq.base_event(), EventShape::image(8, 2, 3));
    let x: Vec<f64> = (0..48).map(|v| v as f64).collect();
    let (u, ld) = sq.inverse(matrix(x.clone(), 1, 48, &d), &Call::new()).unwrap();
    let u = to_vec(u).unwrap();
    assert!(to_vec(ld).unwrap().iter().all(|v| *v == 0.0));
    // Channel 4c + 2i + j, pixel (h, w) of the squeezed image = pixel (2h + i, 2w + j) of channel c.
    for c in 0..2 {
        for i in 0..2 {
            for j in 0..2 {
                for h in 0..2 {
                    for w in 0..3 {
                        let squeezed = u[((4 * c + 2 * i + j) * 2 + h) * 3 + w];
                        let original = x[(c * 4 + 2 * h + i) * 6 + 2 * w + j];
                        assert_eq!(squeezed, original);
                    }
                }
            }
        }
    }
    check(&sq, &HarnessConfig::default());
    check(&SqueezeConfig::new(1, 2, 2).init(&d).unwrap(), &HarnessConfig::default());
    assert!(SqueezeConfig::new(1, 3, 2).init(&d).is_err());
    // A squeeze must see the image shape it was configured for.
    let wrong = ChainConfig::new(16, vec![LayerConfig::Squeeze(SqueezeConfig::new(1, 4, 4))]);
    assert!(matches!(wrong.init(&d), Err(FlowError::InvalidConfig(_))), "flat events are not images");
    assert!(wrong.with_event(EventShape::image(1, 4, 4)).init(&d).is_ok());
}

#[test]
fn multi_scale_chains_factor_features_out_to_the_base() {
    // Data [1, 2, 2]: squeeze to [4, 1, 1], a coupling layer, then half the channels leave for the
    // base and an autoregressive layer acts on the other half.
    let layers = vec![
        made(2, 0),
        LayerConfig::FactorOut(FactorOutConfig::new(2)),
        LayerConfig::Coupling(CouplingConfig::half(4, vec![12], false).with_activation(diffeo::nn::Activation::Tanh)),
        LayerConfig::Squeeze(SqueezeConfig::new(1, 2, 2)),
    ];
    let c = chain(EventShape::image(1, 2, 2), layers.clone(), 3);
    check(&c, &HarnessConfig::default());
    check(&c, &HarnessConfig { jacobian: JacobianReference::Autodiff, logdet_tol: 1e-10, ..HarnessConfig::default() });
    // With a context for the inner layer (squeeze and factor-out pass it through).
    let mut conditional = layers.clone();
    conditional[0] = made(2, 3);
    let cc = chain(EventShape::image(1, 2, 2), conditional, 6);
    assert_eq!(cc.context_dim(), 3);
    check(&cc, &HarnessConfig::default());
    // The parts set aside go to the base unchanged: the last two base features are the last two
    // channels of the squeezed, coupled event; the first two went through the inner layer.
    let d = device();
    let x = matrix(vec![0.3, -0.7, 1.1, 0.2], 1, 4, &d);
    let (u, _) = c.inverse(x.clone(), &Call::new()).unwrap();
    let outer = ChainConfig::new(4, layers[2..].to_vec()).with_event(EventShape::image(1, 2, 2)).with_seed(3).init(&d).unwrap();
    // Rebuild the same outer layers with the same weights: copy them from the chain.
    let outer = Chain { layers: c.layers[1..].to_vec(), ..outer };
    let (h, _) = outer.inverse(x, &Call::new()).unwrap();
    let (u, h) = (to_vec(u).unwrap(), to_vec(h).unwrap());
    assert_eq!(&u[2..], &h[2..]);
    assert_ne!(&u[..2], &h[..2]);
    // A flow with a factored chain has a density that the harness's Jacobian check confirms; its
    // samples and densities agree.
    let flow = randomize_parameters(FlowConfig::new(4, layers).with_event(Some(EventShape::image(1, 2, 2))).init(&d).unwrap(), 4, 0.3);
    let mut rng = StdRng::seed_from_u64(1);
    diffeo::testing::check_sample_and_log_prob(&flow, 50, None, &mut rng, 1e-10).unwrap();
    // A factor-out step cannot be inverted.
    let inverted = FlowConfig::new(4, vec![made(2, 0), LayerConfig::FactorOut(FactorOutConfig::new(2)).inverted()]);
    assert!(matches!(inverted.init(&d), Err(FlowError::InvalidConfig(_))));
    // Factoring out part of a channel is refused.
    let bad = FlowConfig::new(8, vec![made(5, 0), LayerConfig::FactorOut(FactorOutConfig::new(3))])
        .with_event(Some(EventShape::image(2, 2, 2)));
    assert!(matches!(bad.init(&d), Err(FlowError::InvalidConfig(_))));
}

/// `y = x + ½tanh(x)` elementwise, whose inverse is found by the fixed-point iteration
/// `x ← y − ½tanh(x)` (a contraction), and whose log-det is reported as an unbiased but noisy
/// estimate: the exact value times `1 + 0.1·z`, `z ~ N(0, 1)` from the call's random source (plus
/// `bias`, to show that the harness catches a biased estimator).
#[derive(Module, Debug)]
struct NoisyResidual {
    dim: usize,
    bias: f64,
}

impl NoisyResidual {
    fn noisy_log_det(&self, x: &Tensor<2>, call: &Call) -> Tensor<1> {
        let t = x.clone().tanh();
        let exact = sum_rows(t.clone().mul(t).neg().add_scalar(1.0).mul_scalar(0.5).log1p());
        let n = x.dims()[0];
        let z = call.standard_normal(n, 1, &x.device()).reshape([n]);
        exact.clone().add(exact.mul(z).mul_scalar(0.1)).add_scalar(self.bias)
    }
}

impl Bijection for NoisyResidual {
    fn dim(&self) -> usize {
        self.dim
    }
    fn directions(&self) -> Directions {
        Directions { forward: Cost::ClosedForm, inverse: Cost::Iterative }
    }
    fn log_det(&self, _mode: Mode) -> LogDet {
        LogDet::Estimated
    }
    fn name(&self) -> String {
        "NoisyResidual".into()
    }
    fn forward_unchecked(&self, x: Tensor<2>, call: &Call) -> diffeo::Result<(Tensor<2>, Tensor<1>)> {
        let ld = self.noisy_log_det(&x, call);
        Ok((x.clone().add(x.tanh().mul_scalar(0.5)), ld))
    }
    fn inverse_unchecked(&self, y: Tensor<2>, call: &Call) -> diffeo::Result<(Tensor<2>, Tensor<1>)> {
        let tol = call.tolerance;
        let mut x = y.clone();
        for iteration in 1..=tol.max_iterations {
            let next = y.clone().sub(x.clone().tanh().mul_scalar(0.5));
            let change = to_vec(next.clone().sub(x).abs().max()).unwrap()[0];
            let scale = to_vec(y.clone().abs().max()).unwrap()[0];
            x = next;
            if tol.met(change, scale) {
                let ld = self.noisy_log_det(&x, call).neg();
                return Ok((x, ld));
            }
            if iteration == tol.max_iterations {
                return Err(FlowError::NotConverged { what: "the fixed-point inverse".into(), iterations: iteration, residual: change });
            }
        }
        Err(FlowError::NotConverged { what: "the fixed-point inverse".into(), iterations: 0, residual: f64::INFINITY })
    }
}

#[test]
fn iterative_inverses_and_estimated_log_dets_in_the_harness() {
    let layer = NoisyResidual { dim: 3, bias: 0.0 };
    // Round trips to the harness's tolerance; log-dets right in mean (200 draws, 4 s.e.).
    let report = check_bijection(&layer, &device(), &HarnessConfig { gradients: false, ..HarnessConfig::default() }).unwrap();
    assert_eq!(report.directions, vec!["forward", "inverse"]);
    assert!(report.max_roundtrip_error < 1e-10);
    // A biased estimator fails.
    let biased = NoisyResidual { dim: 3, bias: 0.05 };
    let err = check_bijection(&biased, &device(), &HarnessConfig { gradients: false, ..HarnessConfig::default() }).unwrap_err();
    assert!(err.contains("standard error"), "{err}");
    // An iteration limit that cannot be met is an error, not a wrong answer.
    let d = device();
    let call = Call::new().with_tolerance(Tolerance { absolute: 1e-14, relative: 0.0, max_iterations: 3 });
    match layer.inverse(matrix(vec![2.0, -1.0, 0.5], 1, 3, &d), &call) {
        Err(FlowError::NotConverged { iterations: 3, .. }) => {}
        other => panic!("expected NotConverged, got {other:?}"),
    }
    // A chain reports the costliest direction and an estimated log-det.
    assert_eq!(Directions::CLOSED_FORM.and(layer.directions()).inverse, Cost::Iterative);
    assert_eq!(Cost::Sequential.max(Cost::Iterative), Cost::Iterative);
}

#[test]
fn parameter_counts_come_from_the_configuration() {
    let d = device();
    let configs = vec![
        maf(3, 2, vec![8, 8]).flow_config(),
        maf(3, 2, vec![8]).with_context_dim(2).with_residual_blocks(2).flow_config(),
        nsf(4, 2, vec![8]).with_base(BaseKind::GaussianMixture { components: 3 }).flow_config(),
        nsf_coupling(5, 3, vec![8, 4]).with_context_dim(1).flow_config(),
        realnvp(3, 2, vec![6]).with_residual_blocks(1).with_batch_norm(true).flow_config(),
        nice(4, 2, vec![8]).with_base(BaseKind::DiagNormal).flow_config(),
        maf(2, 2, vec![8])
            .with_context_dim(3)
            .with_embedding(Some(diffeo::flow::EmbeddingConfig { hidden: vec![5], output_dim: 4, activation: diffeo::nn::Activation::Tanh, groups: 0 }))
            .flow_config(),
        FlowConfig::new(
            3,
            vec![
                LayerConfig::Planar(PlanarConfig::new(3)),
                LayerConfig::Radial(RadialConfig::new(3)),
                LayerConfig::Sylvester(SylvesterConfig::new(3, 2, SylvesterBasis::Orthogonal)),
                LayerConfig::Sylvester(SylvesterConfig::new(3, 3, SylvesterBasis::Householder { reflections: 2 })),
                LayerConfig::Householder(HouseholderConfig::new(3, 2)),
                LayerConfig::LuLinear(LuLinearConfig::new(3)),
                LayerConfig::ElementwiseAffine(ElementwiseAffineConfig::new(3)),
                LayerConfig::LeakyRelu(LeakyReluConfig::new(3)),
            ],
        ),
    ];
    for config in configs {
        let flow = config.init(&d).unwrap();
        assert_eq!(config.parameter_count(), flow.parameter_count(), "{:?}", flow.layer_names());
    }
    // The default spline transformer in both conditioners: 3K − 1 = 23 spline parameters and
    // the affine tails' shift and log-scale.
    let spline = Transformer::spline();
    assert_eq!(spline.params_per_dim(), 25);
}

/// A large density batch is split across threads (one chain of layers per part): the densities
/// are those of the same rows evaluated in small batches, with and without context.
#[test]
fn split_density_batches_match_small_batches() {
    let d = device();
    let n = 2500;
    let x: Vec<f64> = (0..n * 3).map(|i| ((i * 7919) % 1000) as f64 / 250.0 - 2.0).collect();
    let ctx: Vec<f64> = (0..n * 2).map(|i| ((i * 104_729) % 997) as f64 / 500.0 - 1.0).collect();
    for (config, context) in [
        (MafConfig::new(3).with_hidden(vec![16]), None),
        (nsf(3, 2, vec![16]).with_context_dim(2), Some(ctx)),
    ] {
        let flow = randomize_parameters(config.init(&d).unwrap(), 7, 0.3);
        let c = context.as_ref().map(|c| matrix(c.clone(), n, 2, &d));
        let whole = to_vec(flow.log_prob(matrix(x.clone(), n, 3, &d), c.as_ref()).unwrap()).unwrap();
        let mut pieces = Vec::new();
        for r0 in (0..n).step_by(500) {
            let c = context.as_ref().map(|c| matrix(c[r0 * 2..(r0 + 500) * 2].to_vec(), 500, 2, &d));
            pieces.extend(to_vec(flow.log_prob(matrix(x[r0 * 3..(r0 + 500) * 3].to_vec(), 500, 3, &d), c.as_ref()).unwrap()).unwrap());
        }
        assert_eq!(whole.len(), n);
        for (k, (a, b)) in whole.iter().zip(&pieces).enumerate() {
            assert!(a.is_finite() && (a - b).abs() <= 1e-12 * (1.0 + b.abs()), "row {k}: {a} vs {b}");
        }
    }
}

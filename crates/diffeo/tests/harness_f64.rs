//! The correctness harness on every bijection, in f64 (this test binary configures the CPU
//! device for f64 before any tensor exists).

use diffeo::bijections::*;
use diffeo::distributions::BaseKind;
use diffeo::prelude::*;
use diffeo::testing::{check_bijection, randomize_parameters, HarnessConfig, JacobianReference};
use diffeo::transformer::{SplineTails, Transformer};

fn device() -> Device {
    diffeo::cpu_f64().expect("f64 device")
}

fn check<B: Bijection + Module>(b: &B, cfg: &HarnessConfig) {
    let report = check_bijection(b, &device(), cfg).unwrap_or_else(|e| panic!("{e}"));
    assert!(!report.directions.is_empty());
    eprintln!("{}: {report:?}", b.name());
}

/// Every float parameter's gradient in `grads`, flattened in visiting order, and how many float
/// tensors (stored statistics included) got none.
fn parameter_gradients<M: Module>(module: &M, grads: &burn::tensor::Gradients) -> (Vec<f64>, usize) {
    use burn::module::{ModuleVisitor, Param};
    struct Collect<'a>(&'a burn::tensor::Gradients, Vec<f64>, usize);
    impl ModuleVisitor for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            match param.val().grad(self.0) {
                Some(g) => self.1.extend(g.try_into_vec_as::<f64>().unwrap()),
                None => self.2 += 1,
            }
        }
    }
    let mut c = Collect(grads, Vec::new(), 0);
    module.visit(&mut c);
    (c.1, c.2)
}

fn chain(dim: usize, layers: Vec<LayerConfig>, seed: u64) -> Chain {
    let c = ChainConfig::new(dim, layers).with_seed(seed).init(&device()).expect("valid chain");
    randomize_parameters(c, seed + 100, 0.3)
}

#[test]
fn elementwise_maps() {
    let d = device();
    for kind in [ElementwiseKind::Exp, ElementwiseKind::Softplus, ElementwiseKind::Sigmoid, ElementwiseKind::Tanh] {
        check(&ElementwiseConfig::new(3, kind).init(&d).unwrap(), &HarnessConfig::default());
    }
    let boxed = ElementwiseKind::Box { low: vec![-4.0, 0.0, 1.0], high: vec![4.0, 1.0, 5.0] };
    check(&ElementwiseConfig::new(3, boxed).init(&d).unwrap(), &HarnessConfig::default());
    let support = ElementwiseKind::Support { low: vec![Some(-1.0), None, Some(0.0), None], high: vec![Some(2.0), None, None, Some(3.0)] };
    check(&ElementwiseConfig::new(4, support).init(&d).unwrap(), &HarnessConfig::default());
    let fixed = ElementwiseKind::Affine { shift: vec![3.0, -1.0, 0.5], scale: vec![0.2, 4.0, 1.0] };
    check(&ElementwiseConfig::new(3, fixed).init(&d).unwrap(), &HarnessConfig::default());
    let affine = randomize_parameters(ElementwiseAffineConfig::new(4).init(&d).unwrap(), 1, 0.5);
    check(&affine, &HarnessConfig::default());
    // The logit needs inputs in (0, 1).
    let logit_points = HarnessConfig { offset: 0.5, scale: 0.15, ..HarnessConfig::default() };
    check(&invert(ElementwiseConfig::new(2, ElementwiseKind::Sigmoid).init(&d).unwrap()), &logit_points);
}

#[test]
fn conditional_affine_with_and_without_context() {
    let d = device();
    let with = ConditionalAffineConfig::new(
        3,
        2,
        vec![0.5, -1.0, 2.0],
        vec![1.0, -0.5, 0.0, 2.0, 0.3, 0.3],
        vec![0.4, 1.5, 1.0],
    );
    check(&with.init(&d).unwrap(), &HarnessConfig::default());
    let without = ConditionalAffineConfig::new(2, 0, vec![1.0, -2.0], vec![], vec![3.0, 0.25]);
    check(&without.init(&d).unwrap(), &HarnessConfig::default());
    // Wrong sizes and non-positive scales are refused.
    assert!(
        ConditionalAffineConfig::new(2, 1, vec![0.0; 2], vec![0.0; 1], vec![1.0; 2])
            .init(&d)
            .is_err()
    );
    assert!(
        ConditionalAffineConfig::new(1, 0, vec![0.0], vec![], vec![0.0])
            .init(&d)
            .is_err()
    );
}

#[test]
fn conditional_affine_regression_recovers_a_linear_model() {
    use rand::{Rng, SeedableRng};
    // y = 1 + 2 c₁ − c₂ + 0.5 ε (first feature), y₂ = −3 + 0.1 ε (second): the regression finds
    // the coefficients and the residual spreads.
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let n = 20_000;
    let (mut y, mut c) = (Vec::new(), Vec::new());
    let normal = |rng: &mut rand::rngs::StdRng| -> f64 { rng.sample(rand_distr::StandardNormal) };
    for _ in 0..n {
        let (c1, c2) = (normal(&mut rng), normal(&mut rng));
        c.extend([c1, c2]);
        y.extend([
            1.0 + 2.0 * c1 - c2 + 0.5 * normal(&mut rng),
            -3.0 + 0.1 * normal(&mut rng),
        ]);
    }
    let r = ConditionalAffineConfig::regression(&y, 2, &c, 2).unwrap();
    let close = |a: f64, b: f64, tol: f64| assert!((a - b).abs() < tol, "{a} vs {b}");
    close(r.shift[0], 1.0, 0.02);
    close(r.shift[1], -3.0, 0.005);
    close(r.weight[0], 2.0, 0.02);
    close(r.weight[1], -1.0, 0.02);
    close(r.weight[2], 0.0, 0.005);
    close(r.weight[3], 0.0, 0.005);
    close(r.scale[0], 0.5, 0.02);
    close(r.scale[1], 0.1, 0.005);
    // Too few rows per coefficient: the marginal standardization (W = 0).
    let few = ConditionalAffineConfig::regression(&y[..40], 2, &c[..40], 2).unwrap();
    assert!(few.weight.iter().all(|w| *w == 0.0));
    // Non-finite values are refused.
    let mut bad = y[..200].to_vec();
    bad[3] = f64::NAN;
    assert!(ConditionalAffineConfig::regression(&bad, 2, &c[..200], 2).is_err());
}

#[test]
fn elementwise_out_of_domain_is_minus_infinity() {
    let d = device();
    let b = ElementwiseConfig::new(1, ElementwiseKind::Exp).init(&d).unwrap();
    let y = diffeo::tensor::matrix(vec![-1.0, 0.0, 2.0], 3, 1, &d);
    let (x, ld) = b.inverse(y, &Call::new()).unwrap();
    let x = diffeo::tensor::to_vec(x).unwrap();
    let ld = diffeo::tensor::to_vec(ld).unwrap();
    assert!(x.iter().all(|v| v.is_finite()));
    assert_eq!(ld[0], f64::NEG_INFINITY);
    assert_eq!(ld[1], f64::NEG_INFINITY);
    assert!((ld[2] + 2f64.ln()).abs() < 1e-12);
}

#[test]
fn support_map_outside_the_support_is_minus_infinity() {
    let d = device();
    let kind = ElementwiseKind::Support { low: vec![Some(-1.0), Some(0.0), None], high: vec![Some(1.0), None, Some(3.0)] };
    let b = ElementwiseConfig::new(3, kind).init(&d).unwrap();
    // Rows: inside; first feature at its bound; second below 0; third above 3.
    let y = diffeo::tensor::matrix(vec![0.5, 2.0, -7.0, 1.0, 2.0, 0.0, 0.0, -0.1, 0.0, 0.0, 1.0, 3.5], 4, 3, &d);
    let (x, ld) = b.inverse(y, &Call::new()).unwrap();
    let x = diffeo::tensor::to_vec(x).unwrap();
    let ld = diffeo::tensor::to_vec(ld).unwrap();
    assert!(x.iter().all(|v| v.is_finite()));
    assert!(ld[0].is_finite());
    assert!(ld[1..].iter().all(|v| *v == f64::NEG_INFINITY), "{ld:?}");
    // Inside: log|dx/dy| of logit((y+1)/2), log y and −log(3 − y).
    let expect = -(0.75f64 * 0.25 * 2.0).ln() - 2f64.ln() - 10f64.ln();
    assert!((ld[0] - expect).abs() < 1e-12, "{} vs {expect}", ld[0]);
}

fn made_layer(dim: usize, context_dim: usize, transformer: Transformer, order: Vec<usize>) -> LayerConfig {
    LayerConfig::MaskedAutoregressive(
        MaskedAutoregressiveConfig::new(dim, vec![16, 16])
            .with_context_dim(context_dim)
            .with_order(order)
            .with_transformer(transformer)
            .with_activation(diffeo::nn::Activation::Tanh),
    )
}

#[test]
fn masked_autoregressive_maf_and_iaf() {
    for (dim, ctx) in [(1, 0), (1, 2), (2, 0), (3, 2), (5, 0), (6, 3)] {
        for transformer in [Transformer::Affine, Transformer::SoftplusAffine, Transformer::Additive] {
            let order: Vec<usize> = (1..=dim).rev().collect();
            let maf = chain(dim, vec![made_layer(dim, ctx, transformer.clone(), order.clone())], dim as u64);
            check(&maf, &HarnessConfig::default());
            let iaf = chain(dim, vec![made_layer(dim, ctx, transformer.clone(), order).inverted()], dim as u64);
            check(&iaf, &HarnessConfig::default());
        }
    }
}

#[test]
fn made_is_autoregressive() {
    // Perturbing feature k changes outputs only at positions later in the order: plain MADE and
    // ResMADE (residual blocks keep the degrees).
    for blocks in [0, 2] {
    let d = device();
    let dim = 4;
    let order = vec![3, 1, 4, 2];
    let mut layer = made_layer(dim, 0, Transformer::Affine, order.clone());
    if let LayerConfig::MaskedAutoregressive(c) = &mut layer {
        c.conditioner.residual_blocks = blocks;
        c.conditioner.hidden = vec![12];
    }
    let c = chain(dim, vec![layer], 5);
    let base = vec![0.1, -0.4, 0.7, 0.2];
    let (u0, _) = c.inverse(diffeo::tensor::matrix(base.clone(), 1, dim, &d), &Call::new()).unwrap();
    let u0 = diffeo::tensor::to_vec(u0).unwrap();
    for k in 0..dim {
        let mut x = base.clone();
        x[k] += 0.5;
        let (u, _) = c.inverse(diffeo::tensor::matrix(x, 1, dim, &d), &Call::new()).unwrap();
        let u = diffeo::tensor::to_vec(u).unwrap();
        for i in 0..dim {
            let changed = (u[i] - u0[i]).abs() > 1e-12;
            let allowed = i == k || order[k] < order[i];
            assert!(allowed || !changed, "output {i} depends on input {k}");
            if order[k] < order[i] {
                assert!(changed, "output {i} ignores earlier input {k}");
            }
        }
    }
    }
}

#[test]
fn residual_conditioners_with_dropout() {
    for (dim, ctx) in [(1, 0), (3, 2), (4, 0)] {
        let made = MaskedAutoregressiveConfig::new(dim, vec![16])
            .with_context_dim(ctx)
            .with_residual_blocks(2, 0.2)
            .with_transformer(Transformer::spline());
        // Splines are steep in places: small finite-difference steps.
        let fine = HarnessConfig { logdet_tol: 1e-5, fd_step: 1e-7, ..HarnessConfig::default() };
        check(&chain(dim, vec![LayerConfig::MaskedAutoregressive(made)], 21), &fine);
        if dim >= 2 {
            let coupling = CouplingConfig::half(dim, vec![16], true).with_context_dim(ctx).with_residual_blocks(2, 0.2);
            check(&chain(dim, vec![LayerConfig::Coupling(coupling)], 22), &HarnessConfig::default());
        }
    }
    // A new residual conditioner still starts the flow at the identity.
    let d = device();
    let flow = MafConfig::new(3).with_residual_blocks(2).with_hidden(vec![8]).with_transformer(Transformer::spline()).init(&d).unwrap();
    let x = diffeo::tensor::matrix(vec![0.3, -2.0, 7.0], 1, 3, &d);
    let (u, ld) = flow.to_base(x.clone(), None).unwrap();
    assert_eq!(diffeo::tensor::to_vec(u).unwrap(), diffeo::tensor::to_vec(x).unwrap());
    assert_eq!(diffeo::tensor::to_vec(ld).unwrap(), vec![0.0]);
    let bad = MafConfig::new(2).with_residual_blocks(1).with_dropout(1.0).flow_config();
    assert!(bad.init(&d).is_err());
}

#[test]
fn identity_initialisation_is_exact() {
    let d = device();
    let layers = MafConfig::new(3).with_context_dim(2).flow_config().layers;
    let c = ChainConfig::new(3, layers).init(&d).unwrap();
    let x = diffeo::tensor::matrix(vec![0.3, -1.2, 2.5, 4.0, 0.0, -7.0], 2, 3, &d);
    let ctx = diffeo::tensor::matrix(vec![1.0, 2.0, -3.0, 0.5], 2, 2, &d);
    let (u, ld) = c.inverse(x.clone(), &Call::new().with_context(ctx)).unwrap();
    assert_eq!(diffeo::tensor::to_vec(u).unwrap(), diffeo::tensor::to_vec(x).unwrap());
    assert!(diffeo::tensor::to_vec(ld).unwrap().iter().all(|v| *v == 0.0));
    let layers = RealNvpConfig::new(3).flow_config().layers;
    let c = ChainConfig::new(3, layers).init(&d).unwrap();
    let x = diffeo::tensor::matrix(vec![0.3, -1.2, 2.5], 1, 3, &d);
    let (u, ld) = c.inverse(x.clone(), &Call::new()).unwrap();
    assert_eq!(diffeo::tensor::to_vec(u).unwrap(), diffeo::tensor::to_vec(x).unwrap());
    assert_eq!(diffeo::tensor::to_vec(ld).unwrap(), vec![0.0]);
}

/// FlowJAX's affine scale: data → base `x = σ·y + μ`, `σ = softplus(a + c) + 0.01` — scale 1 at
/// `a = 0`, the 0.01 floor far below, linear growth far above; base → data inverts it.
#[test]
fn softplus_affine_follows_its_formula() {
    let d = device();
    let a = [0.0, -40.0, 30.0, 1.5];
    let mu = [0.3, -0.2, 0.0, 1.0];
    let y = [0.7, 2.0, -1.0, 0.25];
    // params [1, 2·D]: μ block then a block.
    let params = diffeo::tensor::matrix(mu.iter().chain(&a).copied().collect(), 1, 8, &d);
    let (x, ld) = Transformer::SoftplusAffine.inverse(diffeo::tensor::matrix(y.to_vec(), 1, 4, &d), &params);
    let (x, ld) = (diffeo::tensor::to_vec(x).unwrap(), diffeo::tensor::to_vec(ld).unwrap());
    let c = (0.99f64.exp() - 1.0).ln();
    for k in 0..4 {
        let sigma = (1.0 + (a[k] + c).exp()).ln() + 0.01;
        assert!((x[k] - (sigma * y[k] + mu[k])).abs() < 1e-12, "x[{k}] = {}", x[k]);
        assert!((ld[k] - sigma.ln()).abs() < 1e-12, "log σ[{k}] = {}", ld[k]);
    }
    assert!((ld[0]).abs() < 1e-12, "a = 0 is scale 1");
    assert!((ld[1] - 0.01f64.ln()).abs() < 1e-9, "the floor: {}", ld[1]);
    let (back, ld_back) = Transformer::SoftplusAffine.forward(diffeo::tensor::matrix(x.clone(), 1, 4, &d), &params, &Tolerance::default()).unwrap();
    let (back, ld_back) = (diffeo::tensor::to_vec(back).unwrap(), diffeo::tensor::to_vec(ld_back).unwrap());
    for k in 0..4 {
        assert!((back[k] - y[k]).abs() < 1e-12 && (ld_back[k] + ld[k]).abs() < 1e-12);
    }
    assert_eq!(Transformer::SoftplusAffine.name(), "softplus-affine");
    assert_eq!(Transformer::SoftplusAffine.params_per_dim(), 2);
}

#[test]
fn coupling_layers() {
    for (dim, ctx) in [(2, 0), (2, 3), (4, 0), (5, 2)] {
        for transformer in [Transformer::Affine, Transformer::SoftplusAffine, Transformer::Additive] {
            for flip in [false, true] {
                let cfg = CouplingConfig::half(dim, vec![16, 16], flip)
                    .with_context_dim(ctx)
                    .with_transformer(transformer.clone())
                    .with_activation(diffeo::nn::Activation::Tanh);
                let c = chain(dim, vec![LayerConfig::Coupling(cfg.clone())], 3);
                check(&c, &HarnessConfig::default());
                let c = chain(dim, vec![LayerConfig::Coupling(cfg).inverted()], 4);
                check(&c, &HarnessConfig::default());
            }
        }
    }
}

#[test]
fn permutations() {
    let d = device();
    check(&PermutationConfig::reverse(5).init(&d).unwrap(), &HarnessConfig::default());
    let mut rng = StdRng::seed_from_u64(3);
    check(&PermutationConfig::new(Permutation::random_order(6, &mut rng)).init(&d).unwrap(), &HarnessConfig::default());
}

#[test]
fn batch_norm_evaluation_mode() {
    let d = device();
    let bn = randomize_parameters(BatchNormConfig::new(4).init(&d).unwrap(), 9, 0.2);
    check(&bn, &HarnessConfig::default());
}

#[test]
fn batch_norm_training_mode_uses_batch_statistics() {
    let d = device();
    let bn = BatchNormConfig::new(2).init(&d).unwrap();
    let x = vec![1.0, 10.0, 3.0, 20.0, 5.0, 60.0, 7.0, 30.0];
    let (u, ld) = bn.inverse(diffeo::tensor::matrix(x.clone(), 4, 2, &d), &Call::training()).unwrap();
    let u = diffeo::tensor::to_vec(u).unwrap();
    for j in 0..2 {
        let col: Vec<f64> = (0..4).map(|i| u[i * 2 + j]).collect();
        let mean = col.iter().sum::<f64>() / 4.0;
        let var = col.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 4.0;
        assert!(mean.abs() < 1e-12);
        assert!((var - 1.0).abs() < 1e-5);
    }
    // log|det| = −½ Σ log(var + ε) with the biased batch variances 5 and 350.
    let expected = -0.5 * ((5.0f64 + 1e-5).ln() + (350.0f64 + 1e-5).ln());
    for v in diffeo::tensor::to_vec(ld).unwrap() {
        assert!((v - expected).abs() < 1e-10);
    }
    // The running averages moved towards the batch statistics (momentum 0.1, unbiased variance).
    let rm = diffeo::tensor::to_vec(bn.running_mean.value_sync()).unwrap();
    assert!((rm[0] - 0.4).abs() < 1e-12 && (rm[1] - 3.0).abs() < 1e-12);
    let rv = diffeo::tensor::to_vec(bn.running_var.value_sync()).unwrap();
    assert!((rv[0] - (0.9 + 0.1 * 5.0 * 4.0 / 3.0)).abs() < 1e-10);
}

#[test]
fn composite_flows_with_context() {
    let d = device();
    let flows = [
        MafConfig::new(3).with_transforms(3).with_hidden(vec![8]).with_context_dim(2).with_batch_norm(true).flow_config(),
        MafConfig::new(4).with_transforms(2).with_hidden(vec![8]).with_iaf(true).with_random_orders(true).flow_config(),
        RealNvpConfig::new(4)
            .with_transforms(3)
            .with_hidden(vec![8])
            .with_context_dim(1)
            .with_random_permutations(true)
            .flow_config(),
        diffeo::flow::nice(3, 3, vec![8]).flow_config(),
    ];
    for cfg in flows {
        let flow = cfg.init(&d).unwrap();
        let t = randomize_parameters(flow.transform, 11, 0.2);
        check(&t, &HarnessConfig::default());
    }
}

struct ForwardOnly;

impl Bijection for ForwardOnly {
    fn dim(&self) -> usize {
        1
    }
    fn directions(&self) -> Directions {
        Directions { forward: Cost::ClosedForm, inverse: Cost::Unavailable }
    }
    fn name(&self) -> String {
        "ForwardOnly".into()
    }
    fn forward_unchecked(&self, x: Tensor<2>, _: &Call) -> diffeo::Result<(Tensor<2>, Tensor<1>)> {
        let n = x.dims()[0];
        let device = x.device();
        Ok((x, Tensor::zeros([n], &device)))
    }
    fn inverse_unchecked(&self, _: Tensor<2>, _: &Call) -> diffeo::Result<(Tensor<2>, Tensor<1>)> {
        unreachable!("guarded by directions()")
    }
}

#[test]
fn missing_direction_is_a_typed_error() {
    let d = device();
    let y = diffeo::tensor::matrix(vec![1.0], 1, 1, &d);
    match ForwardOnly.inverse(y, &Call::new()) {
        Err(FlowError::NotInvertible { direction: Direction::Inverse, .. }) => {}
        other => panic!("expected NotInvertible, got {other:?}"),
    }
}

#[test]
fn base_densities_integrate_to_one() {
    let d = device();
    let (lo, hi, k) = (-60.0, 60.0, 120_000usize);
    let h = (hi - lo) / k as f64;
    let pts: Vec<f64> = (0..k).map(|i| lo + (i as f64 + 0.5) * h).collect();
    let x = diffeo::tensor::matrix(pts, k, 1, &d);
    for (i, cfg) in [
        BaseKind::StandardNormal,
        BaseKind::DiagNormal,
        BaseKind::GaussianMixture { components: 3 },
        BaseKind::StudentT { df: 3.0 },
    ]
    .into_iter()
    .enumerate()
    {
        let base = randomize_parameters(BaseConfig::new(1, cfg.clone()).with_seed(i as u64).init(&d).unwrap(), i as u64, 0.3);
        let lp = diffeo::tensor::to_vec(base.log_prob(x.clone())).unwrap();
        let mass: f64 = lp.iter().map(|v| v.exp()).sum::<f64>() * h;
        // Student-t(3) puts ~1.4e−4 of its mass beyond ±60.
        assert!((mass - 1.0).abs() < 5e-4, "{cfg:?} integrates to {mass}");
    }
}

#[test]
fn context_embedding_feeds_the_conditioners() {
    let d = device();
    let cfg = MafConfig::new(2)
        .with_transforms(2)
        .with_hidden(vec![8])
        .with_context_dim(3)
        .with_embedding(Some(diffeo::flow::EmbeddingConfig {
            hidden: vec![8],
            output_dim: 4,
            activation: diffeo::nn::Activation::Tanh,
            groups: 0,
        }));
    let flow = randomize_parameters(cfg.init(&d).unwrap(), 1, 0.3);
    let x = diffeo::tensor::matrix(vec![0.2, -0.3, 0.2, -0.3], 2, 2, &d);
    let c = diffeo::tensor::matrix(vec![1.0, 0.0, -1.0, 0.5, 0.5, 2.0], 2, 3, &d);
    let lp = diffeo::tensor::to_vec(flow.log_prob(x, Some(&c)).unwrap()).unwrap();
    assert!(lp.iter().all(|v| v.is_finite()));
    assert!((lp[0] - lp[1]).abs() > 1e-6, "the context must change the density");
    let mut rng = StdRng::seed_from_u64(0);
    // Relative to 1 + |log p|: tighter than an absolute 1e−9 for any |log p| < 1000.
    diffeo::testing::check_sample_and_log_prob(&flow, 3, Some(&c), &mut rng, 1e-12).unwrap();
}

#[test]
fn deep_sets_embedding_is_permutation_invariant() {
    let d = device();
    // A context of 3 draws of 2 values each.
    let cfg = MafConfig::new(2)
        .with_transforms(2)
        .with_hidden(vec![8])
        .with_context_dim(6)
        .with_embedding(Some(diffeo::flow::EmbeddingConfig::deep_sets(3, vec![8], 4)));
    let flow = randomize_parameters(cfg.init(&d).unwrap(), 2, 0.3);
    let x = diffeo::tensor::matrix(vec![0.2, -0.3, 0.2, -0.3, 0.2, -0.3], 3, 2, &d);
    // The same three draws in two orders, then different draws.
    let c = diffeo::tensor::matrix(
        vec![1.0, 0.0, -1.0, 0.5, 0.5, 2.0, 0.5, 2.0, 1.0, 0.0, -1.0, 0.5, 0.5, 2.0, 1.0, 0.0, 1.0, 0.5],
        3,
        6,
        &d,
    );
    let lp = diffeo::tensor::to_vec(flow.log_prob(x, Some(&c)).unwrap()).unwrap();
    assert!((lp[0] - lp[1]).abs() < 1e-12, "{lp:?}");
    assert!((lp[0] - lp[2]).abs() > 1e-6, "{lp:?}");
    assert!(MafConfig::new(2).with_context_dim(5).with_embedding(Some(diffeo::flow::EmbeddingConfig::deep_sets(3, vec![8], 4))).init(&d).is_err());
}

#[test]
fn fitting_works_in_f64() {
    let d = device();
    let mut rng = StdRng::seed_from_u64(8);
    let data = diffeo::fit::Dataset::new(diffeo::datasets::two_moons(2_000, &mut rng), 2);
    let flow = realnvp(2, 3, vec![16]).init(&d).unwrap();
    let cfg = FitConfig::new().with_steps(100).with_batch_size(256).with_learning_rate(3e-3);
    let (flow, report) = fit(flow, &data, Some(&data), &cfg, &mut |_| {}).unwrap();
    let before = report.history.first().and_then(|r| r.val_log_likelihood).unwrap();
    assert!(report.best_val_log_likelihood.unwrap() >= before);
    let x = diffeo::tensor::matrix(vec![0.1, 0.2], 1, 2, &d);
    let lp = flow.log_prob(x, None).unwrap();
    assert_eq!(lp.dtype(), diffeo::burn::tensor::DType::F64);
}

#[test]
fn planar_forward_only() {
    for dim in [1, 2, 5] {
        let c = chain(dim, vec![LayerConfig::Planar(PlanarConfig::new(dim)); 2], 7 + dim as u64);
        assert_eq!(c.directions().inverse, Cost::Unavailable);
        check(&c, &HarnessConfig::default());
        assert!(matches!(
            c.inverse(diffeo::tensor::matrix(vec![0.0; dim], 1, dim, &device()), &Call::new()),
            Err(FlowError::NotInvertible { .. })
        ));
    }
    // A new planar layer is exactly the identity.
    let d = device();
    let p = PlanarConfig::new(3).with_seed(1).init(&d).unwrap();
    let x = diffeo::tensor::matrix(vec![0.5, -1.0, 2.0, 3.0, 0.0, -0.25], 2, 3, &d);
    let (y, ld) = p.forward(x.clone(), &Call::new()).unwrap();
    let (y, x, ld) = (diffeo::tensor::to_vec(y).unwrap(), diffeo::tensor::to_vec(x).unwrap(), diffeo::tensor::to_vec(ld).unwrap());
    assert!(y.iter().zip(&x).all(|(a, b)| (a - b).abs() < 1e-12), "{y:?} vs {x:?}");
    assert!(ld.iter().all(|v| v.abs() < 1e-12));
}

fn assert_identity<B: Bijection>(b: &B, dim: usize) {
    let d = device();
    let values: Vec<f64> = (0..2 * dim).map(|k| 0.7 * k as f64 - 1.3).collect();
    let x = diffeo::tensor::matrix(values.clone(), 2, dim, &d);
    let (y, ld) = b.forward(x, &Call::new()).unwrap();
    let (y, ld) = (diffeo::tensor::to_vec(y).unwrap(), diffeo::tensor::to_vec(ld).unwrap());
    assert!(y.iter().zip(&values).all(|(a, b)| (a - b).abs() < 1e-12), "{}: {y:?} vs {values:?}", b.name());
    assert!(ld.iter().all(|v| v.abs() < 1e-12), "{}: log-dets {ld:?}", b.name());
}

#[test]
fn radial_and_sylvester_forward_only() {
    let d = device();
    for dim in [1, 2, 5] {
        let mut layers = vec![vec![LayerConfig::Radial(RadialConfig::new(dim)); 2]];
        let orth = SylvesterConfig::new(dim, dim.div_ceil(2), SylvesterBasis::Orthogonal);
        let hh = SylvesterConfig::new(dim, dim, SylvesterBasis::Householder { reflections: dim.max(2) });
        layers.push(vec![LayerConfig::Sylvester(orth.clone()); 2]);
        layers.push(vec![LayerConfig::Sylvester(hh.clone()); 2]);
        for l in layers {
            let c = chain(dim, l, 11 + dim as u64);
            assert_eq!(c.directions().inverse, Cost::Unavailable);
            check(&c, &HarnessConfig::default());
            check(&c, &HarnessConfig { logdet_tol: 1e-10, jacobian: JacobianReference::Autodiff, ..HarnessConfig::default() });
        }
        // New layers are exactly the identity.
        let seed = dim as u64;
        assert_identity(&RadialConfig::new(dim).with_seed(seed).init(&d).unwrap(), dim);
        assert_identity(&orth.with_seed(seed + 1).init(&d).unwrap(), dim);
        assert_identity(&hh.with_seed(seed + 2).init(&d).unwrap(), dim);
    }
    // Björck orthogonalization: a trained-looking (non-orthogonal) basis still gives orthonormal
    // columns, so the log-det formula stays exact (checked above against the Jacobian).
    assert!(SylvesterConfig::new(3, 4, SylvesterBasis::Orthogonal).validate().is_err());
    assert!(SylvesterConfig::new(3, 2, SylvesterBasis::Householder { reflections: 2 }).validate().is_err());
}

#[test]
fn standardization_layer_reports_densities_in_data_units() {
    let d = device();
    let values = vec![1.0, 10.0, 3.0, 30.0, 2.0, 50.0, 6.0, 20.0];
    let s = Standardization::of(&values, 2).unwrap();
    assert!((s.mean[0] - 3.0).abs() < 1e-12 && (s.mean[1] - 27.5).abs() < 1e-12);
    // An identity flow on standardized values: log p(x) = Σ log N((x − m)/s) − Σ log s.
    let flow = FlowConfig::new(2, vec![]).standardized(&s).init(&d).unwrap();
    let lp = diffeo::tensor::to_vec(flow.log_prob(diffeo::tensor::matrix(values.clone(), 4, 2, &d), None).unwrap()).unwrap();
    for (i, row) in values.chunks(2).enumerate() {
        let expected: f64 = (0..2)
            .map(|j| {
                let z = (row[j] - s.mean[j]) / s.std[j];
                -0.5 * z * z - 0.5 * diffeo::tensor::LN_2PI - s.std[j].ln()
            })
            .sum();
        assert!((lp[i] - expected).abs() < 1e-12, "{} vs {expected}", lp[i]);
    }
    // A constant column is centred, not divided by zero.
    let c = Standardization::of(&[1.0, 5.0, 2.0, 5.0], 2).unwrap();
    assert_eq!(c.std[1], 1.0);
    assert!(FlowConfig::new(2, vec![]).standardized(&c).init(&d).is_ok());
}

#[test]
fn linear_flows_lu_and_householder() {
    for dim in [1, 2, 4, 6] {
        let mut perm: Vec<usize> = (0..dim).collect();
        perm.reverse();
        let lu = LayerConfig::LuLinear(LuLinearConfig::new(dim).with_perm(perm));
        check(&chain(dim, vec![lu.clone()], 11 + dim as u64), &HarnessConfig::default());
        check(&chain(dim, vec![lu.inverted()], 12), &HarnessConfig::default());
        let hh = LayerConfig::Householder(HouseholderConfig::new(dim, dim.max(2)));
        check(&chain(dim, vec![hh], 13), &HarnessConfig::default());
    }
    let d = device();
    // A new LU layer with the identity permutation is exactly the identity.
    let lu = LuLinearConfig::new(3).init(&d).unwrap();
    let x = diffeo::tensor::matrix(vec![0.5, -1.0, 2.0, 3.0, 0.0, -0.25], 2, 3, &d);
    for r in [lu.forward(x.clone(), &Call::new()).unwrap(), lu.inverse(x.clone(), &Call::new()).unwrap()] {
        assert_eq!(diffeo::tensor::to_vec(r.0).unwrap(), diffeo::tensor::to_vec(x.clone()).unwrap());
        assert!(diffeo::tensor::to_vec(r.1).unwrap().iter().all(|v| *v == 0.0));
    }
    // Householder maps preserve norms.
    let hh = HouseholderConfig::new(3, 3).with_seed(2).init(&d).unwrap();
    let y = diffeo::tensor::to_vec(hh.forward(x.clone(), &Call::new()).unwrap().0).unwrap();
    let xv = diffeo::tensor::to_vec(x).unwrap();
    for (a, b) in y.chunks(3).zip(xv.chunks(3)) {
        let (na, nb): (f64, f64) = (a.iter().map(|v| v * v).sum(), b.iter().map(|v| v * v).sum());
        assert!((na - nb).abs() < 1e-12);
    }
    assert!(LuLinearConfig::new(2).with_perm(vec![0, 0]).validate().is_err());
}

/// MADE's degree-ordered sweep (each hidden unit computed once) inverts a MAF layer exactly as D
/// full passes do: every hidden shape (wider and narrower than D − 1, none), context or not, any
/// order, affine and spline transformers.
#[test]
fn made_sweep_matches_full_passes() {
    let dev = device();
    let mut case = 0;
    for (dim, ctx, hidden) in [(2, 0, vec![8]), (3, 2, vec![16, 16]), (5, 0, vec![3, 2]), (6, 3, vec![]), (7, 1, vec![20, 9, 12]), (4, 0, vec![1])] {
        for transformer in [
            Transformer::Affine,
            Transformer::SoftplusAffine,
            Transformer::RationalQuadratic { bins: 5, tail_bound: 3.0, tails: SplineTails::Identity },
            Transformer::RationalQuadratic { bins: 5, tail_bound: 3.0, tails: SplineTails::Affine },
        ] {
            case += 1;
            let mut rng = StdRng::seed_from_u64(case);
            let mut order: Vec<usize> = (1..=dim).collect();
            rand::seq::SliceRandom::shuffle(&mut order[..], &mut rng);
            let config = MaskedAutoregressiveConfig::new(dim, hidden.clone())
                .with_context_dim(ctx)
                .with_order(order)
                .with_transformer(transformer.clone())
                .with_seed(case);
            let layer = randomize_parameters(config.init(&dev).unwrap(), case + 50, 0.5);
            let n = 37;
            let u: Vec<f64> = (0..n * dim).map(|k| ((k * 7919 % 1000) as f64 / 250.0) - 2.0).collect();
            let u = diffeo::tensor::matrix(u, n, dim, &dev);
            let c = (ctx > 0).then(|| diffeo::tensor::matrix((0..n * ctx).map(|k| (k as f64 * 0.37).sin()).collect(), n, ctx, &dev));
            let (x, ld) = layer.forward_unchecked(u.clone(), &Call::new().with_optional_context(c.clone())).unwrap();
            let (x_ref, ld_ref) = layer.forward_full_passes(u, c.as_ref(), &Tolerance::default()).unwrap();
            let (x, x_ref) = (diffeo::tensor::to_vec(x).unwrap(), diffeo::tensor::to_vec(x_ref).unwrap());
            let (ld, ld_ref) = (diffeo::tensor::to_vec(ld).unwrap(), diffeo::tensor::to_vec(ld_ref).unwrap());
            for (a, b) in x.iter().zip(&x_ref).chain(ld.iter().zip(&ld_ref)) {
                assert!((a - b).abs() < 1e-10 * (1.0 + b.abs()), "D={dim} hidden={hidden:?} {transformer:?}: {a} vs {b}");
            }
            assert!(x.iter().any(|v| v.abs() > 1e-3), "a non-trivial map");
        }
    }
}

mod ode_and_cnf {
    use super::*;
    use diffeo::nn::Activation;
    use diffeo::ode::{solve, OdeSettings, Solver, State};
    use diffeo::tensor::{matrix, to_vec};

    /// `dy/dt = y Aᵀ` with `A = [[−a, −w], [w, −a]]`: `y(t) = e^{−at} R(wt) y₀` per row.
    fn spiral(t: f64, y0: &[f64]) -> Vec<f64> {
        let (a, w) = (0.5, 2.0);
        let (c, s, e) = ((w * t).cos(), (w * t).sin(), (-a * t).exp());
        y0.chunks(2).flat_map(|r| [e * (c * r[0] - s * r[1]), e * (s * r[0] + c * r[1])]).collect()
    }

    fn spiral_field(_t: f64, y: &[Tensor<2>]) -> diffeo::Result<State> {
        let a_t = matrix(vec![-0.5, 2.0, -2.0, -0.5], 2, 2, &y[0].device());
        Ok(vec![y[0].clone().matmul(a_t)])
    }

    fn settings(solver: Solver, tol: f64, steps: usize) -> OdeSettings {
        OdeSettings { solver, atol: tol, rtol: tol, max_steps: 100_000, steps }
    }

    fn max_error(solver: Solver, tol: f64, steps: usize, t1: f64) -> (f64, usize) {
        let y0 = vec![1.0, 0.5, -0.3, 2.0];
        let solved = solve(&mut spiral_field, vec![matrix(y0.clone(), 2, 2, &device())], 0.0, t1, &settings(solver, tol, steps)).unwrap();
        let got = to_vec(solved.state[0].clone()).unwrap();
        let want = spiral(t1, &y0);
        (got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max), solved.evaluations)
    }

    #[test]
    fn dormand_prince_meets_its_tolerance_on_a_linear_ode_both_ways() {
        for tol in [1e-6, 1e-10] {
            let (err, nfe) = max_error(Solver::Dopri5, tol, 1, 3.0);
            assert!(err < 100.0 * tol, "tol {tol}: error {err}");
            eprintln!("dopri5 tol {tol}: error {err:.2e}, {nfe} evaluations");
        }
        // Backwards from the closed-form end point returns to the start.
        let y0 = vec![1.0, 0.5, -0.3, 2.0];
        let end = matrix(spiral(2.0, &y0), 2, 2, &device());
        let back = solve(&mut spiral_field, vec![end], 2.0, 0.0, &settings(Solver::Dopri5, 1e-10, 1)).unwrap();
        let got = to_vec(back.state[0].clone()).unwrap();
        assert!(got.iter().zip(&y0).all(|(a, b)| (a - b).abs() < 1e-8), "{got:?}");
        // Six evaluations per attempted step, two to start (k₁ and the initial-step probe).
        assert_eq!(back.evaluations, 2 + 6 * (back.accepted + back.rejected));
    }

    #[test]
    fn fixed_step_solvers_converge_at_their_order() {
        let (e1, n1) = max_error(Solver::Rk4, 1.0, 40, 2.0);
        let (e2, _) = max_error(Solver::Rk4, 1.0, 80, 2.0);
        assert_eq!(n1, 160);
        assert!((12.0..20.0).contains(&(e1 / e2)), "rk4 error ratio {}", e1 / e2);
        let (e1, n1) = max_error(Solver::Euler, 1.0, 400, 2.0);
        let (e2, _) = max_error(Solver::Euler, 1.0, 800, 2.0);
        assert_eq!(n1, 400);
        assert!((1.8..2.2).contains(&(e1 / e2)), "euler error ratio {}", e1 / e2);
    }

    #[test]
    fn solver_failures_are_errors() {
        let y0 = || vec![matrix(vec![1.0], 1, 1, &device())];
        // dy/dt = y²: y = 1/(1 − t) blows up at t = 1.
        let mut blow_up = |_t: f64, y: &[Tensor<2>]| -> diffeo::Result<State> { Ok(vec![y[0].clone().square()]) };
        let err = solve(&mut blow_up, y0(), 0.0, 2.0, &settings(Solver::Dopri5, 1e-8, 1)).unwrap_err();
        assert!(matches!(err, FlowError::NotConverged { .. } | FlowError::NonFinite { .. }), "{err}");
        let err = solve(&mut blow_up, y0(), 0.0, 2.0, &settings(Solver::Rk4, 1.0, 4)).unwrap_err();
        assert!(matches!(err, FlowError::NonFinite { .. }), "{err}");
        // A step limit.
        let limited = OdeSettings { max_steps: 3, ..settings(Solver::Dopri5, 1e-12, 1) };
        let err = solve(&mut spiral_field, vec![matrix(vec![1.0, 0.0], 1, 2, &device())], 0.0, 50.0, &limited).unwrap_err();
        assert!(matches!(err, FlowError::NotConverged { iterations: 3, .. }), "{err}");
        assert!(err.to_string().contains("step limit"), "{err}");
        // Bad settings.
        for (atol, rtol) in [(0.0, 1e-6), (1e-6, f64::NAN), (-1.0, 1e-6)] {
            let bad = OdeSettings { atol, rtol, ..OdeSettings::default() };
            assert!(matches!(solve(&mut spiral_field, y0(), 0.0, 1.0, &bad), Err(FlowError::InvalidConfig(_))));
        }
        // The right-hand side's errors come through; a wrong shape is refused.
        let mut wrong = |_t: f64, y: &[Tensor<2>]| -> diffeo::Result<State> { Ok(vec![y[0].clone(), y[0].clone()]) };
        assert!(solve(&mut wrong, y0(), 0.0, 1.0, &OdeSettings::default()).is_err());
    }

    fn cnf(dim: usize, context: usize, trace: Trace, activation: Activation) -> Cnf {
        let ode = OdeSettings { atol: 1e-7, rtol: 1e-7, max_steps: 10_000, ..OdeSettings::default() };
        let config = CnfConfig::new(dim)
            .with_context_dim(context)
            .with_hidden(vec![8, 8])
            .with_activation(activation)
            .with_trace(trace)
            .with_ode(ode)
            .with_seed(3);
        randomize_parameters(config.init(&device()).unwrap(), 11, 0.3)
    }

    fn cnf_harness() -> HarnessConfig {
        let tolerance = Tolerance { absolute: 1e-7, relative: 1e-7, max_iterations: 10_000 };
        HarnessConfig { n: 4, jacobian: JacobianReference::Autodiff, roundtrip_tol: 1e-5, logdet_tol: 1e-6, tolerance, ..HarnessConfig::default() }
    }

    #[test]
    fn cnf_exact_trace_passes_the_harness_with_and_without_context() {
        check(&cnf(3, 0, Trace::Exact, Activation::Elu), &cnf_harness());
        check(&cnf(2, 2, Trace::Exact, Activation::Tanh), &cnf_harness());
    }

    #[test]
    fn cnf_hutchinson_trace_is_unbiased() {
        let cfg = HarnessConfig { estimator_draws: 30, ..cnf_harness() };
        let b = cnf(3, 2, Trace::Hutchinson, Activation::Elu);
        assert_eq!(b.log_det(Mode::Training), LogDet::Estimated);
        check(&b, &cfg);
        check(&cnf(2, 0, Trace::Hutchinson, Activation::Tanh).with_probe(Probe::Gaussian), &cfg);
    }

    /// Gradients of `Σ wᵢ·xᵢ + Σ log|det| (+ penalties)` for the parameters, the input and the
    /// context, through the CNF's inverse.
    fn cnf_gradients(b: &Cnf, x: &[f64], ctx: Option<&[f64]>, gradient: GradientMethod) -> Vec<f64> {
        let ad = device().autodiff();
        let mut b = b.clone().train();
        b.gradient = gradient;
        let (n, d) = (x.len() / b.dim, b.dim);
        let xt = matrix(x.to_vec(), n, d, &ad).require_grad();
        let ct = ctx.map(|c| matrix(c.to_vec(), n, c.len() / n, &ad).require_grad());
        let call = ct.as_ref().map_or_else(Call::training, |c| Call::training().with_context(c.clone())).with_seed(5);
        let (u, ld) = b.inverse(xt.clone(), &call).unwrap();
        let weights = matrix((0..n * d).map(|i| 0.3 + 0.1 * i as f64).collect(), n, d, &ad);
        let mut loss = u.mul(weights).sum().add(ld.sum());
        if let Some(p) = call.take_penalty() {
            loss = loss.add(p.sum());
        }
        let grads = loss.backward();
        diffeo::ode::adjoint::take_backward_failure().unwrap();
        let (mut all, missing) = parameter_gradients(&b, &grads);
        assert_eq!(missing, 0, "every parameter gets a gradient");
        all.extend(xt.grad(&grads).unwrap().try_into_vec_as::<f64>().unwrap());
        if let Some(c) = ct {
            all.extend(c.grad(&grads).unwrap().try_into_vec_as::<f64>().unwrap());
        }
        all
    }

    /// Adaptive solves at a tight tolerance with tanh fields (smooth: the gradients converge with
    /// the tolerance), and ELU with fixed RK4 steps (ELU's second derivative jumps at 0, and the
    /// gradient of the trace contains it, so with adaptive steps both methods' gradients converge
    /// only like √tol: 3e−4 at tol 1e−10, docs/cnf.md).
    #[test]
    fn adjoint_gradients_agree_with_backpropagation_through_the_solver() {
        let x = [0.3, -1.1, 0.8, 0.4, -0.2, 1.5];
        let ctx = [0.5, -0.5, 1.0, 0.2, -0.7, 0.1];
        let tight = OdeSettings { atol: 1e-10, rtol: 1e-10, max_steps: 100_000, ..OdeSettings::default() };
        let rk4 = OdeSettings { solver: Solver::Rk4, steps: 200, ..tight };
        let with = |mut b: Cnf, ode: OdeSettings, kinetic: f64, jacobian: f64| {
            (b.ode, b.kinetic, b.jacobian) = (ode, kinetic, jacobian);
            b
        };
        let cases = [
            (with(cnf(2, 0, Trace::Exact, Activation::Tanh), tight, 0.0, 0.0), None),
            (with(cnf(2, 2, Trace::Exact, Activation::Tanh), tight, 0.0, 0.0), Some(&ctx[..])),
            (with(cnf(2, 2, Trace::Hutchinson, Activation::Tanh), tight, 0.5, 0.2), Some(&ctx[..])),
            (with(cnf(2, 2, Trace::Exact, Activation::Elu), rk4, 0.5, 0.2), Some(&ctx[..])),
        ];
        for (b, c) in cases {
            let direct = cnf_gradients(&b, &x, c, GradientMethod::Backprop);
            let adjoint = cnf_gradients(&b, &x, c, GradientMethod::Adjoint);
            assert_eq!(direct.len(), adjoint.len());
            let scale = direct.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            let worst = direct.iter().zip(&adjoint).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            eprintln!("{}: {} gradients, largest {scale:.3}, largest difference {worst:.2e}", b.name(), direct.len());
            assert!(scale > 0.1 && worst < 1e-8 * scale, "{}: adjoint and backpropagation differ by {worst}", b.name());
        }
    }

    /// `dy/dt = θ y` on plain tensors; its vector–Jacobian products (autodiff tensors) fail.
    #[derive(Debug)]
    struct FailsBackwards;

    impl diffeo::ode::adjoint::AdjointSystem for FailsBackwards {
        fn integral_widths(&self) -> Vec<usize> {
            vec![]
        }

        fn dynamics<'a>(&'a self, params: &Tensor<2>, _: Option<&Tensor<2>>) -> diffeo::Result<Box<diffeo::ode::adjoint::Dynamics<'a>>> {
            let theta = params.clone();
            Ok(Box::new(move |_t, y| {
                if y.is_autodiff() {
                    return Err(FlowError::NotConverged { what: "a test backward solve".into(), iterations: 1, residual: 1.0 });
                }
                Ok(vec![y.clone().mul(theta.clone())])
            }))
        }
    }

    #[test]
    fn a_failed_adjoint_solve_is_an_error_after_the_backward_pass() {
        use std::sync::Arc;
        let ad = device().autodiff();
        let y0 = matrix(vec![1.0, 2.0], 2, 1, &ad).require_grad();
        let theta = matrix(vec![0.5], 1, 1, &ad).require_grad();
        let solved = diffeo::ode::adjoint::solve(Arc::new(FailsBackwards), y0.clone(), theta, None, 0.0, 1.0, &OdeSettings::default()).unwrap();
        // The forward solve is right: y₀ e^{θ}.
        let y1 = to_vec(solved.state[0].clone()).unwrap();
        assert!((y1[1] - 2.0 * 0.5f64.exp()).abs() < 1e-5, "{y1:?}");
        let grads = solved.state[0].clone().sum().backward();
        assert!(y0.grad(&grads).is_none(), "a failed backward solve registers no gradient");
        let err = diffeo::ode::adjoint::take_backward_failure().unwrap_err();
        assert!(err.to_string().contains("a test backward solve"), "{err}");
        assert!(diffeo::ode::adjoint::take_backward_failure().is_ok(), "the failure is taken once");
    }

    #[test]
    fn a_new_cnf_is_the_identity_and_counts_its_evaluations() {
        let b = CnfConfig::new(2).init(&device()).unwrap();
        let x = matrix(vec![0.3, -1.2, 2.0, 0.1], 2, 2, &device());
        let call = Call::new();
        let (y, ld) = b.inverse(x.clone(), &call).unwrap();
        assert_eq!(to_vec(y).unwrap(), to_vec(x).unwrap());
        assert_eq!(to_vec(ld).unwrap(), vec![0.0, 0.0]);
        assert!(call.evaluations() > 0);
        // Settings are checked.
        assert!(CnfConfig::new(2).with_activation(Activation::Relu).init(&device()).is_err());
        assert!(CnfConfig::new(2).with_hidden(vec![]).init(&device()).is_err());
        assert!(CnfConfig::new(2).with_frequencies(0).init(&device()).is_err());
        assert!(CnfConfig::new(2).with_regularization(-1.0, 0.0).init(&device()).is_err());
        let bad = OdeSettings { rtol: 0.0, ..OdeSettings::default() };
        assert!(CnfConfig::new(2).with_ode(bad).init(&device()).is_err());
    }
}

#[test]
fn cnf_rnode_penalties_are_the_kinetic_energy_and_the_jacobian_norm() {
    use burn::module::Param;
    use diffeo::ode::OdeSettings;
    use diffeo::tensor::{matrix, to_vec, vector};
    let d = device();
    let ode = OdeSettings { atol: 1e-9, rtol: 1e-9, ..OdeSettings::default() };
    // A constant field f = v: kinetic energy ‖v‖² over unit time, Jacobian 0.
    let mut b = CnfConfig::new(2).with_hidden(vec![4]).with_ode(ode).with_regularization(2.0, 5.0).init(&d).unwrap();
    b.layers[1].bias = Param::from_tensor(vector(vec![0.3, -0.4], &d));
    let x = matrix(vec![0.1, 0.2, -1.0, 0.5], 2, 2, &d);
    let call = Call::training();
    let (u, _) = b.inverse(x.clone(), &call).unwrap();
    let penalty = to_vec(call.take_penalty().expect("a training pass adds its penalty")).unwrap();
    assert!(penalty.iter().all(|p| (p - 2.0 * 0.25).abs() < 1e-9), "{penalty:?}");
    let (u, x) = (to_vec(u).unwrap(), to_vec(x).unwrap());
    assert!((u[0] - (x[0] - 0.3)).abs() < 1e-9 && (u[1] - (x[1] + 0.4)).abs() < 1e-9);
    // Evaluation adds none; a random field's penalties are positive, the exact Jacobian norm
    // is the mean of Hutchinson's.
    let eval = Call::new();
    b.inverse(matrix(vec![0.1, 0.2], 1, 2, &d), &eval).unwrap();
    assert!(eval.take_penalty().is_none());
    let random = |trace| {
        let c = CnfConfig::new(2).with_hidden(vec![8]).with_trace(trace).with_regularization(0.0, 1.0).with_seed(2);
        randomize_parameters(c.init(&d).unwrap(), 4, 0.5)
    };
    let p = matrix(vec![0.3, -0.7], 1, 2, &d);
    let exact_call = Call::training();
    random(Trace::Exact).inverse(p.clone(), &exact_call).unwrap();
    let exact = to_vec(exact_call.take_penalty().unwrap()).unwrap()[0];
    let draws: Vec<f64> = (0..150)
        .map(|k| {
            let call = Call::training().with_seed(k);
            random(Trace::Hutchinson).with_probe(Probe::Gaussian).inverse(p.clone(), &call).unwrap();
            to_vec(call.take_penalty().unwrap()).unwrap()[0]
        })
        .collect();
    let mean = draws.iter().sum::<f64>() / draws.len() as f64;
    let se = (draws.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (draws.len() as f64 - 1.0) / draws.len() as f64).sqrt();
    assert!(exact > 0.0 && (mean - exact).abs() < 4.0 * se, "exact {exact}, Hutchinson {mean} ± {se}");
}

mod residual {
    use super::*;
    use diffeo::tensor::{matrix, to_vec};

    /// A random contractive block (spectral norms settled after the random weights).
    fn block(dim: usize, context: usize, logdet: ResidualLogDet, k: f64, seed: u64) -> Residual {
        let config = ResidualConfig::new(dim).with_context_dim(context).with_hidden(vec![16, 16]).with_lipschitz(k).with_logdet(logdet, 2).with_seed(seed);
        let b = randomize_parameters(config.init(&device()).unwrap(), seed + 10, 1.0);
        b.settle_spectral_norms(100_000, 1e-14).unwrap();
        b
    }

    fn harness() -> HarnessConfig {
        let tolerance = Tolerance { absolute: 1e-13, relative: 1e-13, max_iterations: 100_000 };
        HarnessConfig { n: 6, roundtrip_tol: 1e-10, logdet_tol: 1e-7, tolerance, ..HarnessConfig::default() }
    }

    #[test]
    fn an_exact_block_passes_the_harness_with_and_without_context() {
        check(&block(3, 0, ResidualLogDet::Exact, 0.97, 1), &harness());
        check(&block(2, 3, ResidualLogDet::Exact, 0.9, 2), &harness());
        // Evaluation of a roulette-trained block is exact too (D ≤ 64).
        check(&block(4, 0, ResidualLogDet::Roulette, 0.97, 3), &harness());
        // The sampling direction's autodiff Jacobian is (I + J_g)⁻¹ by the implicit step.
        let by_autodiff = HarnessConfig { jacobian: JacobianReference::Autodiff, ..harness() };
        check(&block(3, 2, ResidualLogDet::Exact, 0.97, 4), &by_autodiff);
    }

    /// Gradients through the fixed-point inverse (implicit function theorem) match finite
    /// differences of the sampled point, for the input, the context and the parameters.
    #[test]
    fn implicit_gradients_of_the_fixed_point_match_finite_differences() {
        let ad = device().autodiff();
        let b = block(3, 2, ResidualLogDet::Exact, 0.9, 5).train();
        let tol = Tolerance { absolute: 1e-13, relative: 1e-13, max_iterations: 100_000 };
        let weights = [0.7, -1.3, 0.4];
        // L(z, c) = Σ w ⊙ x*(z, c): the sampled point alone (no log-det).
        let value = |b: &Residual, z: &[f64], c: &[f64]| -> f64 {
            let call = Call::new().with_tolerance(tol).with_context(matrix(c.to_vec(), 1, 2, &ad)).with_log_det(false);
            let x = to_vec(b.forward(matrix(z.to_vec(), 1, 3, &ad), &call).unwrap().0).unwrap();
            x.iter().zip(&weights).map(|(a, w)| a * w).sum()
        };
        let (z, c) = ([0.5, -0.2, 1.1], [0.3, -0.8]);
        let zt = matrix(z.to_vec(), 1, 3, &ad).require_grad();
        let ct = matrix(c.to_vec(), 1, 2, &ad).require_grad();
        let call = Call::training().with_tolerance(tol).with_context(ct.clone()).with_log_det(false);
        let (x, _) = b.forward(zt.clone(), &call).unwrap();
        let grads = x.mul(matrix(weights.to_vec(), 1, 3, &ad)).sum().backward();
        diffeo::custom_op::take_backward_failure().unwrap();
        let gz = to_vec(zt.grad(&grads).unwrap()).unwrap();
        let gc = to_vec(ct.grad(&grads).unwrap()).unwrap();
        let h = 1e-6;
        for i in 0..3 {
            let (mut up, mut down) = (z, z);
            up[i] += h;
            down[i] -= h;
            let fd = (value(&b, &up, &c) - value(&b, &down, &c)) / (2.0 * h);
            assert!((fd - gz[i]).abs() < 1e-6, "∂/∂z{i}: {} vs {fd}", gz[i]);
        }
        for i in 0..2 {
            let (mut up, mut down) = (c, c);
            up[i] += h;
            down[i] -= h;
            let fd = (value(&b, &z, &up) - value(&b, &z, &down)) / (2.0 * h);
            assert!((fd - gc[i]).abs() < 1e-6, "∂/∂c{i}: {} vs {fd}", gc[i]);
        }
        // A parameter: the first bias of the last layer.
        let collect = parameter_gradients(&b, &grads);
        assert!(collect.0.iter().all(|g| g.is_finite()) && collect.0.iter().any(|g| g.abs() > 1e-6));
        let shifted = |delta: f64| {
            let mut m = b.clone();
            let last = m.layers.len() - 1;
            let bias = m.layers[last].bias.val();
            let bump = matrix(vec![delta, 0.0, 0.0], 1, 3, &ad).reshape([3]);
            m.layers[last].bias = burn::module::Param::from_tensor(bias.add(bump).detach());
            value(&m, &z, &c)
        };
        let fd = (shifted(h) - shifted(-h)) / (2.0 * h);
        let (mut exact, mut offset) = (f64::NAN, 0);
        for (i, l) in b.layers.iter().enumerate() {
            let [r, o] = l.weight.val().dims();
            if i == b.layers.len() - 1 {
                exact = collect.0[offset + r * o];
            }
            offset += (r + 1) * o;
        }
        assert!((fd - exact).abs() < 1e-6, "∂/∂b: {exact} vs {fd}");
    }

    #[test]
    fn a_new_block_is_the_identity_and_settings_are_checked() {
        let b = ResidualConfig::new(2).init(&device()).unwrap();
        let x = matrix(vec![0.3, -1.2, 2.0, 0.1], 2, 2, &device());
        let (z, ld) = b.inverse(x.clone(), &Call::new()).unwrap();
        assert_eq!(to_vec(z).unwrap(), to_vec(x).unwrap());
        assert_eq!(to_vec(ld).unwrap(), vec![0.0, 0.0]);
        for k in [0.0, 1.0, 1.5, -0.2, f64::NAN] {
            assert!(ResidualConfig::new(2).with_lipschitz(k).init(&device()).is_err(), "k = {k}");
        }
        assert!(ResidualConfig::new(2).with_logdet(ResidualLogDet::Series, 0).init(&device()).is_err());
        assert!(ResidualConfig::new(2).with_hidden(vec![]).init(&device()).is_err());
    }

    /// log p(x) = log N(z) + log det(I + J_g) of two random blocks (k = 0.5, so the tails stay
    /// within a factor 2 of the base's) integrates to one on a 2-D grid.
    #[test]
    fn a_two_block_density_integrates_to_one_on_a_grid() {
        let blocks = [block(2, 0, ResidualLogDet::Exact, 0.5, 31), block(2, 0, ResidualLogDet::Exact, 0.5, 32)];
        let (lo, hi, k) = (-14.0, 14.0, 400usize);
        let h = (hi - lo) / k as f64;
        let points: Vec<f64> = (0..k * k).flat_map(|i| [lo + ((i / k) as f64 + 0.5) * h, lo + ((i % k) as f64 + 0.5) * h]).collect();
        let mut z = matrix(points, k * k, 2, &device());
        let mut log_det = vec![0.0; k * k];
        for b in &blocks {
            let (next, ld) = b.inverse(z, &Call::new()).unwrap();
            log_det.iter_mut().zip(to_vec(ld).unwrap()).for_each(|(a, l)| *a += l);
            z = next;
        }
        let z = to_vec(z).unwrap();
        let mass: f64 = log_det
            .iter()
            .enumerate()
            .map(|(i, ld)| (ld - 0.5 * (z[2 * i].powi(2) + z[2 * i + 1].powi(2)) - (2.0 * std::f64::consts::PI).ln()).exp())
            .sum::<f64>()
            * h
            * h;
        eprintln!("two residual blocks: the density integrates to {mass:.6}");
        assert!((mass - 1.0).abs() < 1e-3, "the density integrates to {mass}");
    }

    /// The fixed-point inverse fails loudly: an iteration limit too small for the tolerance is
    /// an error naming the block, never the last iterate.
    #[test]
    fn a_fixed_point_that_does_not_converge_is_an_error() {
        let b = block(3, 0, ResidualLogDet::Exact, 0.97, 33);
        let z = matrix(vec![0.5, -1.0, 2.0, 1.5, 0.2, -0.7], 2, 3, &device());
        let call = Call::new().with_tolerance(Tolerance { absolute: 1e-14, relative: 0.0, max_iterations: 3 });
        match b.forward(z.clone(), &call) {
            Err(e @ FlowError::NotConverged { iterations: 3, .. }) => assert!(e.to_string().contains("fixed-point inverse"), "{e}"),
            other => panic!("expected NotConverged, got {other:?}"),
        }
        let mut limited = b.clone();
        limited.max_iterations = 1;
        assert!(matches!(limited.forward(z, &Call::new()), Err(FlowError::NotConverged { iterations: 1, .. })));
    }

    /// The roulette estimate's mean over independent calls is the exact log-det (3 standard
    /// errors), in D = 2, 5 and 10; the truncated series is biased and its bias shrinks with terms.
    #[test]
    fn the_roulette_estimator_is_unbiased_and_the_series_converges() {
        for (dim, seed) in [(2, 21), (5, 22), (10, 23)] {
            let b = block(dim, 0, ResidualLogDet::Roulette, 0.8, seed);
            let x = matrix((0..dim).map(|i| 0.4 - 0.15 * i as f64).collect(), 1, dim, &device());
            let exact = to_vec(b.inverse(x.clone(), &Call::new()).unwrap().1).unwrap()[0];
            let rows = 64;
            let xs = x.repeat_dim(0, rows);
            let draws: Vec<f64> = (0..300)
                .map(|s| {
                    let v = to_vec(b.inverse(xs.clone(), &Call::training().with_seed(s)).unwrap().1).unwrap();
                    v.iter().sum::<f64>() / rows as f64
                })
                .collect();
            let mean = draws.iter().sum::<f64>() / draws.len() as f64;
            let se = (draws.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (draws.len() as f64 - 1.0) / draws.len() as f64).sqrt();
            eprintln!("D = {dim}: exact {exact:.5}, roulette {mean:.5} ± {se:.5}");
            assert!((mean - exact).abs() < 3.0 * se.max(1e-9), "D = {dim}: exact {exact}, roulette {mean} ± {se}");
            // The series with n terms, on common probes: its distance to 40 terms shrinks with n.
            let series = |terms: usize| {
                let mut s = b.clone();
                (s.logdet, s.series_terms) = (ResidualLogDet::Series, terms);
                let v: Vec<f64> = (0..20).flat_map(|k| to_vec(s.inverse(xs.clone(), &Call::training().with_seed(1000 + k)).unwrap().1).unwrap()).collect();
                v.iter().sum::<f64>() / v.len() as f64
            };
            let limit = series(40);
            let gaps: Vec<f64> = [1, 2, 4, 8].iter().map(|&n| (series(n) - limit).abs()).collect();
            eprintln!("D = {dim}: series distance to 40 terms at 1, 2, 4, 8 terms: {gaps:?}");
            assert!(gaps.windows(2).all(|w| w[1] < w[0]) && gaps[3] < 1e-2 * gaps[0], "D = {dim}: {gaps:?}");
        }
    }

    #[test]
    fn act_norm_starts_from_its_first_batch_and_passes_the_harness() {
        let d = device();
        let ad = d.clone().autodiff();
        // One feature constant: its σ is floored, never an infinite scale.
        let x = matrix(vec![1.0, 5.0, 3.0, 5.0, 8.0, 5.0, -2.0, 5.0], 4, 2, &ad);
        let layer = ActNormConfig::new(2).init(&ad).unwrap();
        let (u, ld) = layer.inverse(x.clone(), &Call::training()).unwrap();
        let u = to_vec(u).unwrap();
        let first: Vec<f64> = u.iter().step_by(2).copied().collect();
        let mean = first.iter().sum::<f64>() / 4.0;
        let var = first.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 4.0;
        assert!(mean.abs() < 1e-12 && (var - 1.0).abs() < 1e-12, "{mean} {var}");
        assert!(u.iter().chain(to_vec(ld).unwrap().iter()).all(|v| v.is_finite()));
        // The statistics stay: a second batch does not reset them.
        layer.inverse(x.clone().mul_scalar(2.0), &Call::training()).unwrap();
        assert_eq!(to_vec(layer.mean.value_sync()).unwrap(), vec![2.5, 5.0]);
        let mut b = randomize_parameters(ActNormConfig::new(3).init(&d).unwrap(), 5, 0.5);
        b.initialized = burn::module::RunningState::new(Tensor::ones([1], &d));
        check(&b, &HarnessConfig::default());
    }

    /// Parameter gradients of the mean log-det over the rows of `x` (training call, `seed`).
    fn log_det_gradients(b: &Residual, x: &Tensor<2>, seed: u64) -> Vec<f64> {
        let (_, ld) = b.inverse(x.clone(), &Call::training().with_seed(seed)).unwrap();
        let grads = ld.mean().backward();
        parameter_gradients(b, &grads).0
    }

    /// The Neumann-series gradient of the roulette estimator (and backpropagation through its
    /// terms) average to the exact log-det's gradient.
    #[test]
    fn series_gradients_are_unbiased() {
        let ad = device().autodiff();
        let base = block(3, 0, ResidualLogDet::Exact, 0.8, 31);
        let exact_block = base.clone().train();
        exact_block.settle_spectral_norms(100_000, 1e-15).unwrap();
        let x = matrix(vec![0.3, -0.5, 0.8], 1, 3, &ad).repeat_dim(0, 16);
        let exact = log_det_gradients(&exact_block, &x, 0);
        for neumann in [true, false] {
            let mut b = exact_block.clone();
            (b.logdet, b.neumann_gradient) = (ResidualLogDet::Roulette, neumann);
            let draws: Vec<Vec<f64>> = (0..400).map(|s| log_det_gradients(&b, &x, s)).collect();
            let m = draws.len() as f64;
            let mut worst: f64 = 0.0;
            let (mut err2, mut norm2) = (0.0, 0.0);
            for (i, e) in exact.iter().enumerate() {
                let mean = draws.iter().map(|d| d[i]).sum::<f64>() / m;
                let se = (draws.iter().map(|d| (d[i] - mean).powi(2)).sum::<f64>() / (m - 1.0) / m).sqrt();
                if se > 1e-12 {
                    worst = worst.max((mean - e).abs() / se);
                }
                err2 += (mean - e).powi(2);
                norm2 += e * e;
            }
            eprintln!("neumann {neumann}: {} gradients, largest z {worst:.2}, relative error {:.4}", exact.len(), (err2 / norm2).sqrt());
            assert!(worst < 5.0 && (err2 / norm2).sqrt() < 0.02, "neumann {neumann}: z {worst}, relative error {}", (err2 / norm2).sqrt());
        }
        // They are different estimators: one draw differs, the log-det value does not.
        let mut a = exact_block.clone();
        (a.logdet, a.neumann_gradient) = (ResidualLogDet::Roulette, true);
        let mut b = a.clone();
        b.neumann_gradient = false;
        let (ga, gb) = (log_det_gradients(&a, &x, 7), log_det_gradients(&b, &x, 7));
        assert!(ga.iter().zip(&gb).any(|(p, q)| (p - q).abs() > 1e-9));
        let value = |b: &Residual| to_vec(b.inverse(x.clone(), &Call::training().with_seed(7)).unwrap().1).unwrap();
        let (va, vb) = (value(&a), value(&b));
        assert!(va.iter().zip(&vb).all(|(p, q)| (p - q).abs() < 1e-12));
    }
}

mod monotone_transformers {
    use super::*;
    use diffeo::tensor::{matrix, to_vec};
    use rand::{rngs::StdRng, Rng, SeedableRng};

    fn kinds(bound: f64) -> Vec<Transformer> {
        vec![
            Transformer::Sigmoidal { components: 4, tail_bound: bound },
            Transformer::Umnn { hidden: 6, nodes: 64, tail_bound: bound },
            Transformer::SumOfSquares { polynomials: 2, degree: 3, tail_bound: bound },
        ]
    }

    /// Random parameters `[n, P·d]` with entries `scale·N(0, 1)`.
    fn random_params(t: &Transformer, n: usize, d: usize, scale: f64, seed: u64) -> Tensor<2> {
        let mut rng = StdRng::seed_from_u64(seed);
        let p = t.params_per_dim() * d;
        matrix((0..n * p).map(|_| scale * rng.sample::<f64, _>(rand_distr::StandardNormal)).collect(), n, p, &device())
    }

    fn harness() -> HarnessConfig {
        HarnessConfig { scale: 2.0, roundtrip_tol: 1e-9, logdet_tol: 1e-6, ..HarnessConfig::default() }
    }

    /// MAF and coupling layers with each transformer, with and without context, inputs reaching
    /// the tails (B = 3, inputs 2·N(0, 1)); the sampling direction is the numerical inverse.
    #[test]
    fn layers_pass_the_harness_with_and_without_context() {
        for (i, t) in kinds(3.0).into_iter().enumerate() {
            // UMNN's log-det is log f(x), the integrand, while the map is its quadrature: they
            // differ by the quadrature error (below).
            let cfg = if matches!(t, Transformer::Umnn { .. }) { HarnessConfig { logdet_tol: 2e-5, ..harness() } } else { harness() };
            for context in [0, 2] {
                let seed = 10 * i as u64 + context as u64;
                let maf = MaskedAutoregressiveConfig::new(3, vec![12]).with_context_dim(context).with_transformer(t.clone()).with_seed(seed);
                let maf = randomize_parameters(maf.init(&device()).unwrap(), seed + 1, 0.4);
                assert_eq!(maf.directions().forward, Cost::Iterative);
                check(&maf, &cfg);
                let coupling = CouplingConfig::new(vec![true, false, true], vec![12]).with_context_dim(context).with_transformer(t.clone()).with_seed(seed);
                let coupling = randomize_parameters(coupling.init(&device()).unwrap(), seed + 2, 0.4);
                check(&coupling, &cfg);
            }
        }
        // The sampling direction's autodiff Jacobian (implicit gradients) against the density's.
        let maf = MaskedAutoregressiveConfig::new(3, vec![12]).with_context_dim(2).with_transformer(Transformer::sigmoidal()).with_seed(5);
        let maf = randomize_parameters(maf.init(&device()).unwrap(), 6, 0.4);
        check(&maf, &HarnessConfig { jacobian: JacobianReference::Autodiff, ..harness() });
        // The corresponding IAF: one-pass sampling, density by the sequential numerical inverse.
        let iaf = invert(maf);
        assert_eq!((iaf.directions().forward, iaf.directions().inverse), (Cost::ClosedForm, Cost::Iterative));
        check(&iaf, &harness());
    }

    /// Zero parameters are the identity; random ones give a strictly increasing map whose
    /// log-slope matches finite differences, finite at ±1e6.
    #[test]
    fn maps_are_monotone_start_at_the_identity_and_stay_finite() {
        let n = 401;
        let grid: Vec<f64> = (0..n).map(|i| -6.0 + 12.0 * i as f64 / (n - 1) as f64).collect();
        let x = matrix(grid.clone(), n, 1, &device());
        for t in kinds(4.0) {
            let zeros = Tensor::<2>::zeros([n, t.params_per_dim()], &device());
            let (y, ld) = t.inverse(x.clone(), &zeros);
            let identity = to_vec(y).unwrap().iter().zip(&grid).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            let flat = to_vec(ld).unwrap().iter().map(|v| v.abs()).fold(0.0, f64::max);
            assert!(identity < 1e-12 && flat < 1e-12, "{t:?}: identity off by {identity}, log-slope {flat}");
            for seed in 0..5 {
                let one = random_params(&t, 1, 1, 1.5, seed);
                let params = one.clone().repeat_dim(0, n);
                let (y, ld) = t.inverse(x.clone(), &params);
                let (y, ld) = (to_vec(y).unwrap(), to_vec(ld).unwrap());
                assert!(y.windows(2).all(|w| w[1] > w[0]), "{t:?} seed {seed}: not increasing");
                let h = 1e-6;
                let up = to_vec(t.inverse(x.clone().add_scalar(h), &params).0).unwrap();
                let down = to_vec(t.inverse(x.clone().sub_scalar(h), &params).0).unwrap();
                for i in 0..n {
                    let fd = ((up[i] - down[i]) / (2.0 * h)).ln();
                    let tol = if matches!(t, Transformer::Umnn { .. }) { 1e-3 } else { 1e-5 };
                    assert!((fd - ld[i]).abs() < tol * (1.0 + ld[i].abs()), "{t:?} seed {seed} at {}: {} vs {fd}", grid[i], ld[i]);
                }
                let far = matrix(vec![-1e6, 1e6], 2, 1, &device());
                let tol = Tolerance::default();
                let (u, lu) = t.inverse(far.clone(), &one.clone().repeat_dim(0, 2));
                let (z, lz) = t.forward(far, &one.repeat_dim(0, 2), &tol).unwrap();
                assert!([u, lu, z, lz].into_iter().flat_map(|v| to_vec(v).unwrap()).all(f64::is_finite), "{t:?}: far inputs");
            }
        }
    }

    /// UMNN's slope, the integrand f(x), and the slope of its quadrature map converge together
    /// as the quadrature refines.
    #[test]
    fn umnn_quadrature_converges_to_its_integrand() {
        let n = 200;
        // Inside the tail bound: at ±B the slope is continuous but not smooth.
        let grid: Vec<f64> = (0..n).map(|i| -3.9 + 7.8 * i as f64 / (n - 1) as f64).collect();
        let x = matrix(grid, n, 1, &device());
        let gaps: Vec<f64> = [4, 8, 16, 32, 64]
            .iter()
            .map(|&nodes| {
                let t = Transformer::Umnn { hidden: 6, nodes, tail_bound: 4.0 };
                let params = random_params(&t, 1, 1, 1.5, 9).repeat_dim(0, n);
                let h = 1e-5;
                let (_, ld) = t.inverse(x.clone(), &params);
                let up = to_vec(t.inverse(x.clone().add_scalar(h), &params).0).unwrap();
                let down = to_vec(t.inverse(x.clone().sub_scalar(h), &params).0).unwrap();
                let ld = to_vec(ld).unwrap();
                (0..n).map(|i| (((up[i] - down[i]) / (2.0 * h)).ln() - ld[i]).abs()).fold(0.0, f64::max)
            })
            .collect();
        eprintln!("UMNN: max |log slope − log f| at 4, 8, 16, 32, 64 intervals: {gaps:?}");
        // Spectral convergence (e.g. 4.0, 0.16, 7e−4, 1.4e−7, 2.7e−9).
        assert!(gaps.windows(2).all(|w| w[1] < w[0]) && gaps[3] < 1e-6 && gaps[4] < 1e-8, "{gaps:?}");
    }

    /// A 2-D MAF layer's density `N(u(x))·|du/dx|` integrates to one on a grid (the class of bug
    /// that gives NAF log-likelihoods above the truth).
    #[test]
    fn densities_integrate_to_one_on_a_grid() {
        for (i, t) in kinds(3.0).into_iter().enumerate() {
            let maf = MaskedAutoregressiveConfig::new(2, vec![8]).with_transformer(t.clone()).with_seed(i as u64);
            let maf = randomize_parameters(maf.init(&device()).unwrap(), 40 + i as u64, 0.3);
            let (lo, hi, k) = (-12.0, 12.0, 480usize);
            let h = (hi - lo) / k as f64;
            let points: Vec<f64> = (0..k * k).flat_map(|j| [lo + ((j / k) as f64 + 0.5) * h, lo + ((j % k) as f64 + 0.5) * h]).collect();
            let (u, ld) = maf.inverse(matrix(points, k * k, 2, &device()), &Call::new()).unwrap();
            let (u, ld) = (to_vec(u).unwrap(), to_vec(ld).unwrap());
            let mass: f64 = ld
                .iter()
                .enumerate()
                .map(|(j, l)| (l - 0.5 * (u[2 * j].powi(2) + u[2 * j + 1].powi(2)) - (2.0 * std::f64::consts::PI).ln()).exp())
                .sum::<f64>()
                * h
                * h;
            eprintln!("{}: the density integrates to {mass:.6}", t.name());
            assert!((mass - 1.0).abs() < 2e-3, "{t:?}: the density integrates to {mass}");
        }
    }

    /// Gradients of the numerical inverse (implicit function theorem) match central finite
    /// differences for the input and every parameter.
    #[test]
    fn inverse_gradients_match_finite_differences() {
        let ad = device().autodiff();
        let tol = Tolerance { absolute: 1e-13, relative: 1e-13, max_iterations: 200 };
        for (i, t) in kinds(3.0).into_iter().enumerate() {
            let params = to_vec(random_params(&t, 1, 2, 1.0, 70 + i as u64)).unwrap();
            let z = vec![0.7, -3.5]; // the second reaches the tail
            let weights = [1.3, -0.6];
            let value = |z: &[f64], p: &[f64]| -> f64 {
                let (x, ld) = t.forward(matrix(z.to_vec(), 1, 2, &ad), &matrix(p.to_vec(), 1, p.len(), &ad), &tol).unwrap();
                let (x, ld) = (to_vec(x).unwrap(), to_vec(ld).unwrap());
                x.iter().zip(&weights).map(|(a, w)| a * w).sum::<f64>() + ld.iter().sum::<f64>()
            };
            let zt = matrix(z.clone(), 1, 2, &ad).require_grad();
            let pt = matrix(params.clone(), 1, params.len(), &ad).require_grad();
            let (x, ld) = t.forward(zt.clone(), &pt, &tol).unwrap();
            let loss = x.mul(matrix(weights.to_vec(), 1, 2, &ad)).sum().add(ld.sum());
            let grads = loss.backward();
            let gz = to_vec(zt.grad(&grads).unwrap()).unwrap();
            let gp = to_vec(pt.grad(&grads).unwrap()).unwrap();
            let h = 1e-6;
            for j in 0..2 {
                let (mut up, mut down) = (z.clone(), z.clone());
                up[j] += h;
                down[j] -= h;
                let fd = (value(&up, &params) - value(&down, &params)) / (2.0 * h);
                assert!((fd - gz[j]).abs() < 1e-6 * (1.0 + fd.abs()), "{t:?} ∂/∂z{j}: {} vs {fd}", gz[j]);
            }
            for j in 0..params.len() {
                let (mut up, mut down) = (params.clone(), params.clone());
                up[j] += h;
                down[j] -= h;
                let fd = (value(&z, &up) - value(&z, &down)) / (2.0 * h);
                assert!((fd - gp[j]).abs() < 1e-6 * (1.0 + fd.abs()), "{t:?} ∂/∂θ{j}: {} vs {fd}", gp[j]);
            }
        }
    }

    /// An iteration limit too small for the tolerance is an error naming the transformer and
    /// counting the elements left; invalid sizes are refused.
    #[test]
    fn an_inverse_that_does_not_converge_is_an_error_and_sizes_are_checked() {
        for t in kinds(3.0) {
            let params = random_params(&t, 4, 1, 1.0, 3);
            let y = matrix(vec![0.3, -1.1, 2.0, 0.05], 4, 1, &device());
            let tol = Tolerance { absolute: 1e-14, relative: 0.0, max_iterations: 2 };
            match t.forward(y, &params, &tol) {
                Err(e @ FlowError::NotConverged { iterations: 2, .. }) => {
                    assert!(e.to_string().contains(t.name()) && e.to_string().contains("of 4 elements"), "{e}")
                }
                other => panic!("{t:?}: expected NotConverged, got {other:?}"),
            }
        }
        for bad in [
            Transformer::Sigmoidal { components: 0, tail_bound: 3.0 },
            Transformer::Umnn { hidden: 0, nodes: 10, tail_bound: 3.0 },
            Transformer::Umnn { hidden: 4, nodes: 1, tail_bound: 3.0 },
            Transformer::SumOfSquares { polynomials: 0, degree: 2, tail_bound: 3.0 },
            Transformer::SumOfSquares { polynomials: 2, degree: 0, tail_bound: 3.0 },
            Transformer::Sigmoidal { components: 4, tail_bound: -1.0 },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}

mod block_neural {
    use super::*;
    use diffeo::tensor::{matrix, to_vec};

    /// The density direction's log-det against the brute-force Jacobian (which also proves the
    /// Jacobian triangular: the determinant is the product of the diagonal the layer chains),
    /// with and without context; no sampling direction; inputs far into the leaky tanh's tails.
    #[test]
    fn bnaf_passes_the_harness_and_refuses_to_sample() {
        for (context, hidden_layers, seed) in [(0, 1, 1), (2, 2, 2)] {
            let layer = BnafConfig::new(3).with_context_dim(context).with_block_dim(4).with_hidden_layers(hidden_layers).with_seed(seed);
            let layer = randomize_parameters(layer.init(&device()).unwrap(), seed + 10, 0.5);
            assert_eq!(layer.directions().forward, Cost::Unavailable);
            check(&layer, &HarnessConfig { scale: 3.0, ..HarnessConfig::default() });
            let far = matrix(vec![1e4, -1e4, 3.0], 1, 3, &device());
            let call = Call::new().with_optional_context((context > 0).then(|| matrix(vec![0.5; context], 1, context, &device())));
            let (u, ld) = layer.inverse(far, &call).unwrap();
            assert!(to_vec(u).unwrap().iter().chain(&to_vec(ld).unwrap()).all(|v| v.is_finite()));
            let err = layer.forward(matrix(vec![0.0; 3], 1, 3, &device()), &call).unwrap_err();
            assert!(err.to_string().contains("Bnaf") && err.to_string().contains("no forward"), "{err}");
        }
        assert!(BnafConfig::new(3).with_block_dim(0).init(&device()).is_err());
        assert!(BnafConfig::new(3).with_hidden_layers(0).init(&device()).is_err());
    }
}

mod resampled_base {
    use super::*;
    use diffeo::tensor::{matrix, to_vec};
    use rand::{rngs::StdRng, SeedableRng};

    /// A resampled base with a random acceptance network: its density (normalizer from the stored
    /// estimate) integrates to one on a grid, its truncated rejection samples have the density's
    /// moments, and a training call's density differs only by the fresh normalizer estimate.
    #[test]
    fn the_resampled_base_integrates_to_one_and_samples_its_density() {
        let kind = BaseKind::Resampled { hidden: vec![16, 16], truncation: 20, samples: 4096 };
        let base = randomize_parameters(BaseConfig::new(2, kind).with_seed(3).init(&device()).unwrap(), 5, 1.5);
        base.settle().unwrap();
        let (lo, hi, k) = (-8.0, 8.0, 400usize);
        let h = (hi - lo) / k as f64;
        let points: Vec<f64> = (0..k * k).flat_map(|j| [lo + ((j / k) as f64 + 0.5) * h, lo + ((j % k) as f64 + 0.5) * h]).collect();
        let lp = to_vec(base.log_prob(matrix(points.clone(), k * k, 2, &device()))).unwrap();
        let p: Vec<f64> = lp.iter().map(|l| l.exp() * h * h).collect();
        let mass: f64 = p.iter().sum();
        let mean0: f64 = p.iter().enumerate().map(|(j, w)| w * points[2 * j]).sum();
        let square1: f64 = p.iter().enumerate().map(|(j, w)| w * points[2 * j + 1].powi(2)).sum();
        eprintln!("resampled base: mass {mass:.5}, E[u0] {mean0:.4}, E[u1²] {square1:.4}");
        // The stored normalizer comes from 1e5 draws: a relative error of a few 1e−3.
        assert!((mass - 1.0).abs() < 5e-3, "mass {mass}");
        let n = 40_000;
        let s = to_vec(base.sample(n, &mut StdRng::seed_from_u64(9), &device()).unwrap()).unwrap();
        let m0 = s.iter().step_by(2).sum::<f64>() / n as f64;
        let q1 = s.iter().skip(1).step_by(2).map(|v| v * v).sum::<f64>() / n as f64;
        eprintln!("samples: E[u0] {m0:.4}, E[u1²] {q1:.4}");
        assert!((m0 - mean0).abs() < 0.03 && (q1 - square1).abs() < 0.05, "{m0} vs {mean0}, {q1} vs {square1}");
        let x = matrix(vec![0.3, -0.2, 1.5, 0.7], 2, 2, &device());
        let eval = to_vec(base.log_prob(x.clone())).unwrap();
        let train = to_vec(base.log_prob_with(x, &Call::training().with_seed(1))).unwrap();
        assert!(eval.iter().zip(&train).all(|(a, b)| (a - b).abs() < 0.05 && (a - b).abs() > 0.0), "{eval:?} vs {train:?}");
        assert!(BaseKind::Resampled { hidden: vec![], truncation: 10, samples: 10 }.validate().is_err());
        assert!(BaseKind::Resampled { hidden: vec![4], truncation: 0, samples: 10 }.validate().is_err());
    }
}

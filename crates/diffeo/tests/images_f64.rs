//! Image flows in f64: per-channel ActNorm, the invertible 1×1 convolution, convolutional
//! couplings (channel and checkerboard masks, with and without context) and the multi-scale
//! Glow and RealNVP builders, each through the shared harness (both directions, log-dets against
//! the brute-force Jacobian) on small images.

use burn::module::{Module, RunningState};
use diffeo::bijections::*;
use diffeo::families::{architecture_for, FamilySettings, GlowConfig, RealNvpImageConfig};
use diffeo::prelude::*;
use diffeo::tensor::{matrix, to_vec};
use diffeo::testing::{check_bijection, check_sample_and_log_prob, randomize_chain, randomize_parameters, HarnessConfig};
use diffeo::transformer::Transformer;

fn device() -> Device {
    diffeo::cpu_f64().expect("f64 device")
}

fn check<B: Bijection + Module>(b: &B) {
    let report = check_bijection(b, &device(), &HarnessConfig { n: 4, ..HarnessConfig::default() }).unwrap_or_else(|e| panic!("{}: {e}", b.name()));
    assert_eq!(report.directions.len(), 2, "{}", b.name());
}

/// A 1×1 convolution with random weights around its rotation (its fixed permutation and signs
/// kept: they are not weights).
fn random_conv1x1(c: usize, h: usize, w: usize, seed: u64) -> InvertibleConv1x1 {
    let d = device();
    let layer = InvertibleConv1x1Config::new(c, h, w).with_seed(seed).init(&d).unwrap();
    let (sign, permutation) = (layer.sign.value_sync(), layer.permutation.value_sync());
    let mut layer = randomize_parameters(layer, seed + 1, 0.3);
    layer.sign = RunningState::new(sign);
    layer.permutation = RunningState::new(permutation);
    layer
}

#[test]
fn act_norm_on_images_normalizes_each_channel() {
    let d = device();
    let ad = d.clone().autodiff();
    // Two channels of 2×2 pixels, three images; channel 1 constant (σ floored, finite).
    let x: Vec<f64> = vec![1.0, 2.0, 3.0, 4.0, 7.0, 7.0, 7.0, 7.0, -1.0, 0.0, 5.0, 2.0, 7.0, 7.0, 7.0, 7.0, 0.5, 1.5, 2.5, 3.5, 7.0, 7.0, 7.0, 7.0];
    let layer = ActNormConfig::image(2, 2, 2).init(&ad).unwrap();
    assert_eq!(to_vec(layer.log_scale.val()).unwrap().len(), 2);
    let (u, ld) = layer.inverse(matrix(x, 3, 8, &ad), &Call::training()).unwrap();
    let u = to_vec(u).unwrap();
    let first: Vec<f64> = u.chunks(4).step_by(2).flatten().copied().collect();
    let mean = first.iter().sum::<f64>() / 12.0;
    let var = first.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 12.0;
    assert!(mean.abs() < 1e-12 && (var - 1.0).abs() < 1e-12, "{mean} {var}");
    assert!(u.iter().chain(to_vec(ld).unwrap().iter()).all(|v| v.is_finite()));
    // log-det = H·W·Σ_c (s_c − log σ_c).
    let mut b = randomize_parameters(ActNormConfig::image(3, 2, 2).init(&d).unwrap(), 5, 0.5);
    b.initialized = RunningState::new(Tensor::ones([1], &d));
    check(&b);
    // Files written before image flows (no `channels`) read as per-feature ActNorm.
    let old: ActNormConfig = serde_json::from_str(r#"{"dim":3}"#).unwrap();
    assert_eq!(old, ActNormConfig::new(3));
    assert!(ActNormConfig { dim: 6, channels: Some(4) }.init(&d).is_err());
}

#[test]
fn invertible_1x1_convolution_passes_the_harness() {
    let d = device();
    // At the start: a rotation, log-det 0, yet not the identity.
    let layer = InvertibleConv1x1Config::new(3, 2, 2).with_seed(4).init(&d).unwrap();
    let x = matrix((0..24).map(|v| (v as f64 * 0.37).sin()).collect(), 2, 12, &d);
    let (u, ld) = layer.inverse(x.clone(), &Call::new()).unwrap();
    assert!(to_vec(ld).unwrap().iter().all(|v| v.abs() < 1e-12));
    let (u, x) = (to_vec(u).unwrap(), to_vec(x).unwrap());
    assert!(u.iter().zip(&x).any(|(a, b)| (a - b).abs() > 1e-3));
    // Norms of every pixel's channel vector are kept.
    for n in 0..2 {
        for p in 0..4 {
            let norm = |v: &[f64]| (0..3).map(|c| v[n * 12 + c * 4 + p].powi(2)).sum::<f64>();
            assert!((norm(&u) - norm(&x)).abs() < 1e-12);
        }
    }
    for (c, seed) in [(1, 1), (2, 2), (4, 3), (6, 9)] {
        check(&random_conv1x1(c, 2, 3, seed));
    }
    check(&invert(random_conv1x1(3, 2, 2, 5)));
}

#[test]
fn convolutional_couplings_pass_the_harness_with_and_without_context() {
    let d = device();
    for mask in [ImageMask::Channel, ImageMask::Checkerboard] {
        for flip in [false, true] {
            for (context, transformer) in [(0, Transformer::Affine), (3, Transformer::Affine), (0, Transformer::spline()), (2, Transformer::Additive)] {
                let config = ConvCouplingConfig::new(3, 4, 4, mask)
                    .with_hidden_channels(4)
                    .with_flip(flip)
                    .with_context_dim(context)
                    .with_transformer(transformer.clone())
                    .with_seed(7);
                // Zero last layer: the identity.
                let layer = config.init(&d).unwrap();
                let x = matrix((0..96).map(|v| (v as f64 * 0.61).cos()).collect(), 2, 48, &d);
                let call = if context > 0 { Call::new().with_context(Tensor::ones([2, context], &d)) } else { Call::new() };
                let (u, ld) = layer.inverse(x.clone(), &call).unwrap();
                let (u, x) = (to_vec(u).unwrap(), to_vec(x).unwrap());
                assert!(u.iter().zip(&x).all(|(a, b)| (a - b).abs() < 1e-12), "{mask:?} starts as the identity");
                assert!(to_vec(ld).unwrap().iter().all(|v| v.abs() < 1e-12));
                let layer = randomize_parameters(layer, 11, 0.3);
                assert_eq!(layer.context_dim(), context);
                check(&layer);
            }
        }
    }
    // One channel: only the checkerboard mask.
    check(&randomize_parameters(ConvCouplingConfig::new(1, 2, 4, ImageMask::Checkerboard).with_hidden_channels(3).init(&d).unwrap(), 2, 0.3));
    assert!(matches!(ConvCouplingConfig::new(1, 4, 4, ImageMask::Channel).init(&d), Err(FlowError::InvalidConfig(_))));
}

#[test]
fn glow_and_realnvp_image_flows_are_densities_of_their_samples() {
    let d = device();
    let glow = GlowConfig::new(2, 4, 4).with_levels(2).with_steps(2).with_hidden_channels(4).with_seed(3).flow_config().unwrap();
    let realnvp = RealNvpImageConfig::new(1, 4, 4).with_levels(2).with_steps(1).with_hidden_channels(4).with_seed(5).flow_config().unwrap();
    let conditional = GlowConfig::new(1, 4, 4).with_levels(1).with_steps(2).with_hidden_channels(3).with_context_dim(2).flow_config().unwrap();
    for (config, context) in [(glow, 0), (realnvp, 0), (conditional, 2)] {
        assert_eq!(config.event, Some(match config.dim { 32 => EventShape::image(2, 4, 4), _ => EventShape::image(1, 4, 4) }));
        let mut flow = config.init(&d).unwrap();
        // Generic weights (ActNorm as if it had seen a batch; 1×1 permutations and signs kept).
        let chain = randomize_chain(flow.transform.clone(), 9, 0.2);
        check(&chain);
        flow.transform = chain;
        let mut rng = StdRng::seed_from_u64(1);
        let ctx = (context > 0).then(|| matrix(vec![0.5, -1.0], 1, 2, &d));
        check_sample_and_log_prob(&flow, 20, ctx.as_ref(), &mut rng, 1e-10).unwrap();
    }
}

#[test]
fn image_families_need_images_they_can_squeeze() {
    let mut s = FamilySettings::new("glow");
    s.hidden_channels = 4;
    s.steps_per_level = Some(1);
    let ok = architecture_for(&s, EventShape::image(1, 28, 28), 0).unwrap();
    assert_eq!(ok.dim, 784);
    let err = |r: Result<FlowConfig, FlowError>| match r {
        Err(FlowError::InvalidConfig(m)) => m,
        other => panic!("expected an error, got {other:?}"),
    };
    assert!(err(architecture_for(&s, EventShape::flat(784), 0)).contains("models images"));
    s.levels = Some(3);
    assert!(err(architecture_for(&s, EventShape::image(1, 28, 28), 0)).contains("cannot be squeezed 3 time(s)"));
    let mut maf = FamilySettings::new("maf");
    maf.hidden_channels = 8;
    assert!(err(architecture_for(&maf, EventShape::flat(4), 0)).contains("settings of the image families"));
    let mut glow = FamilySettings::new("glow");
    glow.transforms = Some(2);
    assert!(err(architecture_for(&glow, EventShape::image(1, 8, 8), 0)).contains("--levels"));
}


/// The fused convolution (CPU) against burn's composed `conv2d` + `relu`: values and the
/// gradients of `Σ y ⊙ r` with respect to input, weights and bias.
#[test]
fn fused_convolution_matches_the_composed_reference() {
    use diffeo::nn::conv::{composed, conv_same};
    let ad = device().autodiff();
    let mut rng = StdRng::seed_from_u64(5);
    let mut random = |shape: Vec<usize>| -> Vec<f64> { (0..shape.iter().product::<usize>()).map(|_| rand::Rng::random_range(&mut rng, -1.0..1.0)).collect() };
    for (n, c_in, c_out, h, w, k) in [(3, 2, 4, 5, 4, 3), (2, 3, 2, 3, 3, 1), (1, 1, 3, 4, 6, 3), (4, 5, 3, 2, 2, 3), (2, 2, 2, 1, 1, 3)] {
        for relu in [false, true] {
            let tensors = |seed_values: &[Vec<f64>]| {
                let x = Tensor::<1>::from_floats(seed_values[0].as_slice(), &ad).reshape([n, c_in, h, w]).require_grad();
                let wt = Tensor::<1>::from_floats(seed_values[1].as_slice(), &ad).reshape([c_out, c_in, k, k]).require_grad();
                let b = Tensor::<1>::from_floats(seed_values[2].as_slice(), &ad).require_grad();
                (x, wt, b)
            };
            let values = vec![random(vec![n, c_in, h, w]), random(vec![c_out, c_in, k, k]), random(vec![c_out]), random(vec![n, c_out, h, w])];
            let r = Tensor::<1>::from_floats(values[3].as_slice(), &ad).reshape([n, c_out, h, w]);
            let mut results = Vec::new();
            for fused in [true, false] {
                let (x, wt, b) = tensors(&values);
                assert!(diffeo::nn::conv::supported(&x), "the fused convolution serves the f64 CPU device");
                let y = if fused { conv_same(x.clone(), wt.clone(), b.clone(), relu) } else { composed(x.clone(), wt.clone(), b.clone(), relu) };
                let grads = y.clone().mul(r.clone()).sum().backward();
                let flat = |t: Tensor<4>| to_vec(t.reshape([-1]).unsqueeze_dim::<2>(0)).unwrap();
                let gx = to_vec(x.grad(&grads).unwrap().reshape([1, n * c_in * h * w])).unwrap();
                let gw = to_vec(wt.grad(&grads).unwrap().reshape([1, c_out * c_in * k * k])).unwrap();
                let gb = to_vec(b.grad(&grads).unwrap().unsqueeze_dim::<2>(0)).unwrap();
                results.push([flat(y.inner()), gx, gw, gb]);
            }
            for (what, (a, b)) in ["y", "∂x", "∂W", "∂b"].iter().zip(results[0].iter().zip(&results[1])) {
                assert_eq!(a.len(), b.len());
                let worst = a.iter().zip(b).map(|(u, v)| (u - v).abs()).fold(0.0, f64::max);
                assert!(worst < 1e-12, "{what} differs by {worst} (n {n}, c {c_in}→{c_out}, {h}×{w}, k {k}, relu {relu})");
            }
        }
    }
}

/// Fresh dequantization keeps every pixel's integer and redraws its noise.
#[test]
fn dequantization_noise_is_redrawn_per_batch() {
    use diffeo::fit::redequantized;
    let mut rng = StdRng::seed_from_u64(2);
    let pixels: Vec<f64> = (0..40).map(|i| ((i * 37) % 256) as f64).collect();
    let values: Vec<f64> = pixels.iter().map(|k| (k + rand::Rng::random::<f64>(&mut rng)) / 256.0).collect();
    let rows = [3, 0, 7];
    let a = redequantized(&values, 4, &rows, 256.0, &mut rng);
    let b = redequantized(&values, 4, &rows, 256.0, &mut rng);
    for (j, &r) in rows.iter().enumerate() {
        for c in 0..4 {
            let k = pixels[r * 4 + c];
            for v in [a[j * 4 + c], b[j * 4 + c]] {
                assert!(v >= k / 256.0 && v < (k + 1.0) / 256.0, "{v} outside pixel {k}'s bin");
            }
            assert_ne!(a[j * 4 + c], b[j * 4 + c]);
        }
    }
    // Pixel 0 with noise 0 and pixel 255 with noise near 1 stay in their bins.
    let edge = [0.0, (255.0 + 0.999_999) / 256.0];
    let e = redequantized(&edge, 2, &[0], 256.0, &mut rng);
    assert!(e[0] < 1.0 / 256.0 && e[1] >= 255.0 / 256.0 && e[1] < 1.0);
}

/// The plain 1×1 convolution: the harness, the LU form's rotation at the start, and gradients
/// of both directions (its log-det and inverse enter as first-order terms) against central
/// differences.
#[test]
fn plain_1x1_convolution_passes_the_harness_with_exact_gradients() {
    use burn::module::Param;
    let d = device();
    for (c, seed) in [(1, 1), (2, 2), (4, 3)] {
        check(&randomize_parameters(PlainConv1x1Config::new(c, 2, 3).with_seed(seed).init(&d).unwrap(), seed + 7, 0.3));
    }
    check(&invert(randomize_parameters(PlainConv1x1Config::new(3, 2, 2).with_seed(5).init(&d).unwrap(), 6, 0.3)));
    // The same rotation as the LU form with the same seed.
    let x = matrix((0..36).map(|v| (v as f64 * 0.43).sin()).collect(), 3, 12, &d);
    let plain = PlainConv1x1Config::new(3, 2, 2).with_seed(8).init(&d).unwrap();
    let lu = InvertibleConv1x1Config::new(3, 2, 2).with_seed(8).init(&d).unwrap();
    let (a, b) = (to_vec(plain.inverse(x.clone(), &Call::new()).unwrap().0).unwrap(), to_vec(lu.inverse(x.clone(), &Call::new()).unwrap().0).unwrap());
    assert!(a.iter().zip(&b).all(|(u, v)| (u - v).abs() < 1e-12));
    // ∂/∂W of Σ r ⊙ y + Σ log|det| in both directions.
    let ad = d.clone().autodiff();
    let (c, h, w) = (3, 2, 2);
    let w0: Vec<f64> = to_vec(randomize_parameters(plain, 3, 0.4).weight.val().reshape([1, 9])).unwrap();
    let r: Vec<f64> = (0..36).map(|v| (v as f64 * 0.29).cos()).collect();
    let objective = |weights: &[f64], device: &Device, inverse: bool| -> Tensor<1> {
        let mut layer = PlainConv1x1Config::new(c, h, w).init(device).unwrap();
        layer.weight = Param::from_tensor(matrix(weights.to_vec(), c, c, device));
        let input = matrix(to_vec(x.clone()).unwrap(), 3, 12, device);
        let (y, ld) = if inverse { layer.inverse(input, &Call::new()) } else { layer.forward(input, &Call::new()) }.unwrap();
        y.mul(matrix(r.clone(), 3, 12, device)).sum().add(ld.sum())
    };
    for inverse in [true, false] {
        let mut layer = PlainConv1x1Config::new(c, h, w).init(&ad).unwrap();
        layer.weight = Param::from_tensor(matrix(w0.clone(), c, c, &ad).require_grad());
        let input = matrix(to_vec(x.clone()).unwrap(), 3, 12, &ad);
        let (y, ld) = if inverse { layer.inverse(input, &Call::new()) } else { layer.forward(input, &Call::new()) }.unwrap();
        let grads = y.mul(matrix(r.clone(), 3, 12, &ad)).sum().add(ld.sum()).backward();
        let g = to_vec(layer.weight.val().grad(&grads).unwrap().reshape([1, 9])).unwrap();
        for k in 0..9 {
            let at = |delta: f64| {
                let mut v = w0.clone();
                v[k] += delta;
                to_vec(objective(&v, &d, inverse).unsqueeze_dim::<2>(0)).unwrap()[0]
            };
            let fd = (at(1e-6) - at(-1e-6)) / 2e-6;
            assert!((g[k] - fd).abs() < 1e-6 * (1.0 + fd.abs()), "inverse {inverse}, ∂W[{k}]: autodiff {} vs differences {fd}", g[k]);
        }
    }
    // A singular matrix is an error, not an infinite log-det.
    let mut singular = PlainConv1x1Config::new(2, 1, 2).init(&d).unwrap();
    singular.weight = Param::from_tensor(matrix(vec![1.0, 2.0, 2.0, 4.0], 2, 2, &d));
    assert!(matches!(singular.inverse(matrix(vec![1.0; 4], 1, 4, &d), &Call::new()), Err(FlowError::InvalidConfig(_))));
}

/// Couplings conditioned on an image (the noise flow's conditioner): the harness with both
/// masks, identity at the start, and the context's size checked.
#[test]
fn couplings_conditioned_on_an_image_pass_the_harness() {
    let d = device();
    for (mask, c) in [(ImageMask::Checkerboard, 1), (ImageMask::Checkerboard, 2), (ImageMask::Channel, 2)] {
        for flip in [false, true] {
            let config = ConvCouplingConfig::new(c, 2, 4, mask).with_hidden_channels(3).with_flip(flip).with_image_context(c).with_seed(4);
            assert_eq!(config.context_dim, c * 8);
            let layer = config.init(&d).unwrap();
            let x = matrix((0..c * 16).map(|v| (v as f64 * 0.7).sin()).collect(), 2, c * 8, &d);
            let call = Call::new().with_context(Tensor::ones([2, c * 8], &d));
            let (u, _) = layer.inverse(x.clone(), &call).unwrap();
            assert!(to_vec(u).unwrap().iter().zip(to_vec(x).unwrap()).all(|(a, b)| (a - b).abs() < 1e-12));
            check(&randomize_parameters(layer, 5, 0.3));
        }
    }
    let wrong = ConvCouplingConfig { context_dim: 5, ..ConvCouplingConfig::new(1, 2, 4, ImageMask::Checkerboard).with_image_context(1) };
    assert!(matches!(wrong.init(&d), Err(FlowError::InvalidConfig(_))));
}

/// Variational dequantization on two 4-level pixels, where the exact probability of a pixel
/// pair is a grid integral: q(u | k) is a density on the unit square that `sample` reports
/// correctly; the one-draw bound lies below the exact value on average and the
/// importance-weighted bound approaches it; a model file keeps the noise flow; training moves it.
#[test]
fn variational_dequantization_bounds_the_probability_of_discrete_data() {
    use diffeo::dequantization::DequantizerConfig;
    let d = device();
    let mut config = maf(2, 2, vec![8]).with_seed(1).flow_config();
    config.event = Some(EventShape::image(1, 1, 2));
    config.dequantizer = Some(DequantizerConfig::new(1, 1, 2).with_levels(4.0).with_couplings(2).with_hidden_channels(3));
    let flow = randomize_parameters(config.init(&d).unwrap(), 3, 0.3);
    let q = flow.dequantizer.as_ref().unwrap();
    let k = [1.0, 2.0];
    let quantized = matrix(vec![k[0] / 4.0, k[1] / 4.0], 1, 2, &d);
    // The exact value: log of the mean of p over the cell (units of a density of y).
    let g = 200;
    let grid: Vec<f64> = (0..g * g).flat_map(|i| [((i / g) as f64 + 0.5) / g as f64, ((i % g) as f64 + 0.5) / g as f64]).collect();
    let y: Vec<f64> = grid.chunks(2).flat_map(|u| [(k[0] + u[0]) / 4.0, (k[1] + u[1]) / 4.0]).collect();
    let lp = to_vec(flow.log_prob(matrix(y, g * g, 2, &d), None).unwrap()).unwrap();
    let exact = (lp.iter().map(|v| v.exp()).sum::<f64>() / (g * g) as f64).ln();
    // q integrates to one over the square, and `sample` reports its log-density.
    let image = Tensor::ones([g * g, 2], &d).mul(quantized.clone()).sub_scalar(0.5);
    let (eps, ld) = q.transform.inverse_unchecked(matrix(grid, g * g, 2, &d), &Call::new().with_context(image)).unwrap();
    let log_q: Vec<f64> = to_vec(eps).unwrap().chunks(2).zip(to_vec(ld).unwrap()).map(|(e, l)| -0.5 * (e[0] * e[0] + e[1] * e[1]) - (2.0 * std::f64::consts::PI).ln() + l).collect();
    let mass = log_q.iter().map(|v| v.exp()).sum::<f64>() / (g * g) as f64;
    assert!((mass - 1.0).abs() < 5e-3, "q integrates to {mass}");
    let (u, lq) = q.sample(&quantized, 50, &Call::new().with_seed(4)).unwrap();
    let u_values = to_vec(u.clone()).unwrap();
    assert!(u_values.iter().all(|v| *v > 0.0 && *v < 1.0));
    let image = Tensor::ones([50, 2], &d).mul(quantized.clone()).sub_scalar(0.5);
    let (eps, ld) = q.transform.inverse_unchecked(u, &Call::new().with_context(image)).unwrap();
    let again: Vec<f64> = to_vec(eps).unwrap().chunks(2).zip(to_vec(ld).unwrap()).map(|(e, l)| -0.5 * (e[0] * e[0] + e[1] * e[1]) - (2.0 * std::f64::consts::PI).ln() + l).collect();
    assert!(to_vec(lq).unwrap().iter().zip(&again).all(|(a, b)| (a - b).abs() < 1e-10));
    // The one-draw bound: below the exact value on average (Jensen), within a few standard
    // errors; 4,000 draws importance-weighted close most of the gap (not all: p/q is heavy-tailed
    // where q thins out near the square's edges).
    let n = 4000;
    let rows = matrix([k[0] / 4.0, k[1] / 4.0].repeat(n), n, 2, &d);
    let elbo = to_vec(flow.dequantized_log_prob_with(rows, 1, Call::new().with_seed(7)).unwrap()).unwrap();
    let (mean, se) = diffeo::fit::mean_and_stderr(&elbo);
    let iw = to_vec(flow.dequantized_log_prob_with(quantized.clone(), n, Call::new().with_seed(8)).unwrap()).unwrap()[0];
    assert!(mean < exact + 3.0 * se, "bound {mean} ± {se} above the exact {exact}");
    assert!(iw > mean && iw < exact + 0.01 && exact - iw < 0.15 * (exact - mean), "importance-weighted {iw}, one draw {mean}, exact {exact}");
    // A model file keeps the noise flow.
    let bytes = diffeo::io::to_bytes(&flow, &Default::default()).unwrap();
    let loaded = diffeo::io::from_bytes(&bytes, "memory", &d).unwrap().flow;
    let bound = |f: &Flow| to_vec(f.dequantized_log_prob_with(quantized.clone(), 8, Call::new().with_seed(9)).unwrap()).unwrap();
    assert_eq!(bound(&flow), bound(&loaded));
    assert_eq!(loaded.config().dequantizer, flow.config().dequantizer);
    // Training reaches the noise flow (its couplings' last layers start at zero).
    let last_weights = |f: &Flow| match &f.dequantizer.as_ref().unwrap().transform.layers[1].inner {
        Layer::ConvCoupling(c) => to_vec(c.last.weight.val().reshape([1, -1])).unwrap(),
        _ => panic!("the noise flow's second layer is a coupling"),
    };
    let fresh = config.init(&d).unwrap();
    assert!(last_weights(&fresh).iter().all(|v| *v == 0.0));
    let pixels: Vec<f64> = (0..200).flat_map(|i| [((i % 4) as f64 + 0.3) / 4.0, ((i * 7 % 4) as f64 + 0.6) / 4.0]).collect();
    let (trained, report) = fit(fresh, &Dataset::new(pixels, 2), None, &FitConfig::new().with_steps(30).with_batch_size(50), &mut |_| {}).unwrap();
    assert!(report.final_train_loss.is_finite());
    assert!(last_weights(&trained).iter().any(|v| *v != 0.0));
    assert!(diffeo::io::tensor_names(&trained).iter().any(|n| n.starts_with("dequantizer.")));
}

/// Data-parallel gradient shards and gradient-norm clipping reach the convolution kernels
/// (rank-4 weights): two shards give the one-pass fit, and a vanishing clipping norm leaves every
/// weight where it was (Adam's step is then ~ lr·1e-15/ε).
#[test]
fn gradient_shards_and_clipping_reach_the_convolution_kernels() {
    let d = device();
    let mut rng = StdRng::seed_from_u64(6);
    let data: Vec<f64> = (0..256 * 16).map(|_| rand::Rng::random::<f64>(&mut rng)).collect();
    let train_set = Dataset::new(data, 16);
    let coupling = |flip: bool| LayerConfig::ConvCoupling(ConvCouplingConfig::new(1, 4, 4, ImageMask::Checkerboard).with_hidden_channels(3).with_flip(flip));
    let config = FlowConfig::new(16, vec![coupling(false), coupling(true)]).with_event(Some(EventShape::image(1, 4, 4))).with_seed(4);
    let x = matrix((0..48).map(|v| 0.5 + 0.4 * (v as f64 * 0.37).sin()).collect(), 3, 16, &d);
    let log_p = |flow: &Flow| to_vec(flow.log_prob(x.clone(), None).unwrap()).unwrap();
    let fitted = |train: FitConfig| {
        let (flow, _) = fit(config.init(&d).unwrap(), &train_set, None, &train.with_batch_size(256).with_seed(2), &mut |_| {}).unwrap();
        log_p(&flow)
    };
    let one = fitted(FitConfig::new().with_steps(10).with_shards(1));
    let two = fitted(FitConfig::new().with_steps(10).with_shards(2));
    let start = log_p(&config.init(&d).unwrap());
    assert!(one.iter().zip(&start).any(|(a, b)| (a - b).abs() > 1e-3), "training moved the model");
    for (a, b) in two.iter().zip(&one) {
        assert!((a - b).abs() < 1e-8, "two shards: log p {a} vs {b}");
    }
    let clipped = fitted(FitConfig::new().with_steps(5).with_grad_clip_norm(Some(1e-15)));
    for (a, b) in clipped.iter().zip(&start) {
        assert!((a - b).abs() < 1e-6, "clipped to 1e-15: log p {a} vs {b} at the start");
    }
}

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

//! The fused dense layer (`act(x·W + b)` as one CPU operation with a hand-written backward)
//! against the composed tensor ops, in f64: values and the gradients of a weighted sum for the
//! input, weights and bias, for every activation, with and without a MADE mask, on the serial and
//! the row-parallel paths; and data-parallel gradient shards in `fit` against one pass.

use diffeo::fit::{fit, Dataset, FitConfig};
use diffeo::nn::fused;
use diffeo::nn::Activation;
use diffeo::prelude::*;
use diffeo::tensor::{matrix, to_vec, vector};
use rand::Rng;
use rand_distr::StandardNormal;

fn device() -> Device {
    diffeo::cpu_f64().expect("f64 device")
}

fn normal(len: usize, scale: f64, rng: &mut StdRng) -> Vec<f64> {
    (0..len).map(|_| scale * rng.sample::<f64, _>(StandardNormal)).collect()
}

struct Run {
    y: Vec<f64>,
    gx: Vec<f64>,
    gw: Vec<f64>,
    gb: Vec<f64>,
}

/// How many leading inputs each column of `mask` `[i, o]` reads (`fused::Reach`).
fn reach_of(mask: &[f64], i: usize, o: usize) -> fused::Reach {
    (0..o).map(|j| (0..i).rposition(|r| mask[r * o + j] > 0.0).map_or(0, |r| r + 1)).collect::<Vec<_>>().into()
}

/// `act(x·(W ⊙ M) + b)` fused (skipping the mask's zero blocks with `reach`) or composed, with
/// gradients of `Σ c ⊙ y` (fixed random `c`).
#[allow(clippy::too_many_arguments)]
fn run(fused_layer: bool, reach: bool, x: &[f64], w: &[f64], mask: &[f64], b: &[f64], c: &[f64], (n, i, o): (usize, usize, usize), act: Option<Activation>, x_grad: bool) -> Run {
    let dev = device().autodiff();
    let mut xt = matrix(x.to_vec(), n, i, &dev);
    if x_grad {
        xt = xt.require_grad();
    }
    let wt = matrix(w.to_vec(), i, o, &dev).require_grad();
    let bt = vector(b.to_vec(), &dev).require_grad();
    let masked = wt.clone().mul(matrix(mask.to_vec(), i, o, &dev));
    let y = if fused_layer {
        assert!(fused::supported(&xt));
        fused::dense(xt.clone(), masked, bt.clone(), act, reach.then(|| reach_of(mask, i, o)))
    } else {
        let h = xt.clone().matmul(masked).add(bt.clone().unsqueeze());
        match act {
            Some(a) => a.apply(h),
            None => h,
        }
    };
    let grads = y.clone().mul(matrix(c.to_vec(), n, o, &dev)).sum().backward();
    let g2 = |t: &Tensor<2>| t.grad(&grads).map(|g| to_vec(g).unwrap()).unwrap_or_default();
    Run {
        y: to_vec(y).unwrap(),
        gx: g2(&xt),
        gw: g2(&wt),
        gb: bt.grad(&grads).map(|g| to_vec(g).unwrap()).unwrap_or_default(),
    }
}

fn assert_close(a: &[f64], b: &[f64], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let scale = b.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    for (k, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= 1e-10 * scale, "{what}[{k}]: fused {x} vs composed {y}");
    }
}

#[test]
fn fused_dense_matches_composed_values_and_gradients() {
    let mut rng = StdRng::seed_from_u64(3);
    // (rows, in, out): small (serial path) and large enough for the row-parallel path.
    for (n, i, o) in [(7, 3, 5), (33, 16, 48), (600, 128, 128)] {
        let x = normal(n * i, 1.0, &mut rng);
        let w = normal(i * o, 0.5, &mut rng);
        let b = normal(o, 0.5, &mut rng);
        let c = normal(n * o, 1.0, &mut rng);
        let triangular: Vec<f64> = (0..i * o).map(|k| if k / o <= k % o { 1.0 } else { 0.0 }).collect();
        // MADE's hidden → hidden masks for 6 inputs (degrees 1..=5): units numbered in order of
        // degree (a staircase) and cyclically.
        let degrees = |u: usize, width: usize, sorted: bool| if sorted { 1 + u * 5 / width } else { 1 + u % 5 };
        let made = |sorted: bool| -> Vec<f64> {
            (0..i * o).map(|k| if degrees(k / o, i, sorted) <= degrees(k % o, o, sorted) { 1.0 } else { 0.0 }).collect()
        };
        for (mask, reach) in [(vec![1.0; i * o], false), (triangular, false), (made(true), false)]
            .into_iter()
            .flat_map(|(m, _)| [(m.clone(), false), (m, true)])
            .chain([(made(false), true)])
        {
            for act in [None, Some(Activation::Relu), Some(Activation::Tanh), Some(Activation::Elu)] {
                for x_grad in [true, false] {
                    let f = run(true, reach, &x, &w, &mask, &b, &c, (n, i, o), act, x_grad);
                    let r = run(false, false, &x, &w, &mask, &b, &c, (n, i, o), act, x_grad);
                    let what = format!("{n}×{i}→{o} {act:?} x_grad={x_grad} reach={reach}");
                    assert_close(&f.y, &r.y, &format!("{what} y"));
                    assert_close(&f.gx, &r.gx, &format!("{what} ∂x"));
                    assert_close(&f.gw, &r.gw, &format!("{what} ∂W"));
                    assert_close(&f.gb, &r.gb, &format!("{what} ∂b"));
                    assert_eq!(f.gx.is_empty(), !x_grad);
                    // Masked weights get no gradient.
                    for (k, (&g, &m)) in f.gw.iter().zip(&mask).enumerate() {
                        assert!(m > 0.0 || g == 0.0, "{what}: masked weight {k} has gradient {g}");
                    }
                }
            }
        }
    }
}

#[test]
fn fused_dense_without_grad_is_the_plain_layer() {
    let dev = device();
    let mut rng = StdRng::seed_from_u64(4);
    let (n, i, o) = (9, 4, 6);
    let (x, w, b) = (normal(n * i, 1.0, &mut rng), normal(i * o, 1.0, &mut rng), normal(o, 1.0, &mut rng));
    let y = to_vec(fused::dense(matrix(x.clone(), n, i, &dev), matrix(w.clone(), i, o, &dev), vector(b.clone(), &dev), Some(Activation::Relu), None)).unwrap();
    for r in 0..n {
        for j in 0..o {
            let v: f64 = (0..i).map(|k| x[r * i + k] * w[k * o + j]).sum::<f64>() + b[j];
            assert!((y[r * o + j] - v.max(0.0)).abs() < 1e-12);
        }
    }
}

/// Two shards (the batch split across threads) give the same fit as one pass, up to rounding.
#[test]
fn sharded_gradients_match_one_pass() {
    let dev = device();
    let mut rng = StdRng::seed_from_u64(5);
    let data: Vec<f64> = (0..2048).map(|k| if k % 2 == 0 { rng.random_range(-1.0..1.0) } else { rng.sample::<f64, _>(StandardNormal) }).collect();
    let train = Dataset::new(data, 2);
    let fitted = |shards: usize| {
        let flow = maf(2, 2, vec![16, 16]).with_seed(1).init(&dev).unwrap();
        let config = FitConfig::new().with_steps(20).with_batch_size(512).with_shards(shards).with_seed(2);
        let (flow, report) = fit(flow, &train, None, &config, &mut |_| {}).unwrap();
        let x = matrix(vec![0.3, -0.2, -1.0, 0.5, 0.0, 1.5], 3, 2, &dev);
        (to_vec(flow.log_prob(x, None).unwrap()).unwrap(), report.final_train_loss)
    };
    let (one, loss_one) = fitted(1);
    for shards in [2, 3] {
        let (split, loss_split) = fitted(shards);
        assert!((loss_one - loss_split).abs() < 1e-9, "{shards} shards: loss {loss_split} vs {loss_one}");
        for (a, b) in split.iter().zip(&one) {
            assert!((a - b).abs() < 1e-8, "{shards} shards: log p {a} vs {b}");
        }
    }
}

/// MADE (and a plain MLP) evaluated without autodiff — the whole network per block of rows, the
/// MADE masks' zero blocks skipped (`fused::dense_stack`) — against the same networks on the
/// autodiff device, which compose one layer at a time: with and without a context, for one, two,
/// five and sixteen inputs, on fewer rows than one block and on several blocks with a partial one.
#[test]
fn inference_stack_matches_the_layer_by_layer_network() {
    use burn::module::Param;
    use diffeo::nn::{MlpConfig, NetworkConfig};
    let plain = device();
    let tracked = plain.clone().autodiff();
    let mut rng = StdRng::seed_from_u64(11);
    for (d, hidden, context) in [(1, vec![8], 0), (2, vec![40, 40], 0), (5, vec![64, 48], 3), (16, vec![100, 100], 0), (16, vec![70], 2)] {
        let order: Vec<usize> = (1..=d).rev().collect();
        let network = NetworkConfig::new(hidden.clone());
        let config = network.made(&order, context, 2, 7);
        let (mut a, mut b) = (config.init(&plain).unwrap(), config.init(&tracked).unwrap());
        // A random last layer (MADE starts with a zero one).
        let last = a.layers.len() - 1;
        let [i, o] = a.layers[last].weight.dims();
        let w = normal(i * o, 0.3, &mut rng);
        let bias = normal(o, 0.3, &mut rng);
        a.layers[last].weight = Param::from_tensor(matrix(w.clone(), i, o, &plain));
        a.layers[last].bias = Param::from_tensor(vector(bias.clone(), &plain));
        b.layers[last].weight = Param::from_tensor(matrix(w, i, o, &tracked));
        b.layers[last].bias = Param::from_tensor(vector(bias, &tracked));
        for n in [3, 700] {
            let x = normal(n * d, 1.0, &mut rng);
            let c = normal(n * context.max(1), 1.0, &mut rng);
            let ctx = |dev: &Device| (context > 0).then(|| matrix(c.clone(), n, context, dev));
            let got = to_vec(a.forward(matrix(x.clone(), n, d, &plain), ctx(&plain).as_ref())).unwrap();
            let want = to_vec(b.forward(matrix(x.clone(), n, d, &tracked), ctx(&tracked).as_ref())).unwrap();
            assert_close(&got, &want, &format!("MADE D={d} hidden={hidden:?} context={context} n={n}"));
        }
    }
    let config = MlpConfig::new(3, NetworkConfig::new(vec![33, 17]), 5).with_zero_last(false).with_seed(2);
    let (a, b) = (config.init(&plain).unwrap(), config.init(&tracked).unwrap());
    let x = normal(600 * 3, 1.0, &mut rng);
    let got = to_vec(a.forward(matrix(x.clone(), 600, 3, &plain))).unwrap();
    let want = to_vec(b.forward(matrix(x.clone(), 600, 3, &tracked))).unwrap();
    assert_close(&got, &want, "MLP");
    // The plain device is served by the stack (the comparisons above test it, not a fallback).
    let (w, bias) = (matrix(normal(12, 1.0, &mut rng), 3, 4, &plain), vector(normal(4, 1.0, &mut rng), &plain));
    assert!(fused::dense_stack(&matrix(x[..30].to_vec(), 10, 3, &plain), &[(w.clone(), bias.clone(), None)], None, None).is_some());
    assert!(fused::dense_stack(&matrix(x[..30].to_vec(), 10, 3, &tracked), &[(w, bias, None)], None, None).is_none());
}

/// The affine transformers' inverse without autodiff (one pass over the rows) against the
/// composed tensor operations on the autodiff device, including large raw scales (the soft clip
/// and softplus tails).
#[test]
fn affine_inverse_without_autodiff_matches_the_composed_operations() {
    let plain = device();
    let tracked = plain.clone().autodiff();
    let mut rng = StdRng::seed_from_u64(12);
    let (n, d) = (37, 3);
    let y = normal(n * d, 2.0, &mut rng);
    let mut p = normal(n * 2 * d, 3.0, &mut rng);
    p[d] = 60.0;
    p[d + 1] = -60.0;
    for t in [Transformer::Affine, Transformer::SoftplusAffine] {
        let run = |dev: &Device| {
            let (x, ld) = t.inverse(matrix(y.clone(), n, d, dev), &matrix(p.clone(), n, 2 * d, dev));
            (to_vec(x).unwrap(), to_vec(ld).unwrap())
        };
        let ((x, ld), (xr, ldr)) = (run(&plain), run(&tracked));
        assert_close(&x, &xr, &format!("{t:?} x"));
        assert_close(&ld, &ldr, &format!("{t:?} log-det"));
    }
}

/// The softplus scale, evaluated as `1 + ln(1 + (eᵃ − 1)·s)` with a linear tail beyond 30, is
/// FlowJAX's `softplus(a + c) + 0.01` (c = softplus⁻¹(0.99)) on both paths, tails included, and
/// exactly 1 at `a = 0`.
#[test]
fn softplus_scale_is_flowjax_function() {
    let plain = device();
    let a = [-80.0, -20.0, -3.0, -1e-9, 0.0, 1e-9, 0.7, 5.0, 29.9, 30.0, 30.1, 45.0, 1e4];
    let c = (0.99f64.exp() - 1.0).ln();
    let softplus = |z: f64| z.max(0.0) + (-z.abs()).exp().ln_1p();
    for dev in [plain.clone(), plain.autodiff()] {
        let n = a.len();
        let params: Vec<f64> = a.iter().flat_map(|&a| [0.0, a]).collect();
        // x = y·σ + μ with y = 1, μ = 0 (one feature, the rows are the values of a).
        let (x, ld) = Transformer::SoftplusAffine.inverse(matrix(vec![1.0; n], n, 1, &dev), &matrix(params, n, 2, &dev));
        let (x, ld) = (to_vec(x).unwrap(), to_vec(ld).unwrap());
        for (k, &a) in a.iter().enumerate() {
            let sigma = softplus(a + c) + 0.01;
            assert!((x[k] - sigma).abs() <= 1e-12 * sigma, "a = {a}: σ {} vs {sigma}", x[k]);
            assert!((ld[k] - sigma.ln()).abs() <= 1e-12 * (1.0 + sigma.ln().abs()), "a = {a}: log σ");
        }
        assert_eq!((x[4], ld[4]), (1.0, 0.0), "exactly the identity at a = 0");
    }
}

/// The affine transformers in both directions (one fused operation on the CPU) against their
/// formulas composed of tensor operations here: values, log-dets and the gradients of a weighted
/// sum for the input and the parameters, saturated scales included.
#[test]
fn fused_affine_inverse_matches_composed_values_and_gradients() {
    use diffeo::transformer::AFFINE_LOG_SCALE_BOUND;
    let dev = device().autodiff();
    let mut rng = StdRng::seed_from_u64(5);
    let (n, d) = (600, 3);
    let y = normal(n * d, 2.0, &mut rng);
    let mut p = normal(n * 2 * d, 3.0, &mut rng);
    (p[d], p[d + 1], p[2 * d + d], p[4 * d + d]) = (60.0, -60.0, 0.0, 31.0);
    let (cx, cl) = (normal(n * d, 1.0, &mut rng), normal(n * d, 1.0, &mut rng));
    let c = (0.99f64.exp() - 1.0).ln();
    for (t, inverse) in [Transformer::Affine, Transformer::SoftplusAffine].into_iter().flat_map(|t| [(t.clone(), true), (t, false)]) {
        let run = |fused_op: bool| {
            let (yt, pt) = (matrix(y.clone(), n, d, &dev).require_grad(), matrix(p.clone(), n, 2 * d, &dev).require_grad());
            let (x, ld) = if fused_op {
                if inverse { t.inverse(yt.clone(), &pt) } else { t.forward(yt.clone(), &pt, &Default::default()).unwrap() }
            } else {
                let (mu, a) = (pt.clone().narrow(1, 0, d), pt.clone().narrow(1, d, d));
                match (&t, inverse) {
                    (Transformer::Affine, true) => {
                        let s = diffeo::tensor::soft_clip(a, AFFINE_LOG_SCALE_BOUND);
                        (yt.clone().sub(mu).mul(s.clone().neg().exp()), s.neg())
                    }
                    (Transformer::Affine, false) => {
                        let s = diffeo::tensor::soft_clip(a, AFFINE_LOG_SCALE_BOUND);
                        (yt.clone().mul(s.clone().exp()).add(mu), s)
                    }
                    (_, true) => {
                        let sigma = diffeo::tensor::softplus(a.add_scalar(c)).add_scalar(0.01);
                        (yt.clone().mul(sigma.clone()).add(mu), sigma.log())
                    }
                    (_, false) => {
                        let sigma = diffeo::tensor::softplus(a.add_scalar(c)).add_scalar(0.01);
                        (yt.clone().sub(mu).div(sigma.clone()), sigma.log().neg())
                    }
                }
            };
            let loss = x.clone().mul(matrix(cx.clone(), n, d, &dev)).sum().add(ld.clone().mul(matrix(cl.clone(), n, d, &dev)).sum());
            let grads = loss.backward();
            let g = |t: &Tensor<2>| to_vec(t.grad(&grads).unwrap()).unwrap();
            [to_vec(x).unwrap(), to_vec(ld).unwrap(), g(&yt), g(&pt)]
        };
        let (fused_run, composed) = (run(true), run(false));
        for (k, (what, (a, b))) in ["x", "log-det", "∂y", "∂params"].iter().zip(fused_run.iter().zip(&composed)).enumerate() {
            // The composed backward through the soft clip's division strays from the exact
            // derivative by up to 1e−7 relative at a = −60 (the fused value agrees with 40-digit
            // arithmetic there: −15.93217556383239 against the composed −15.93217709); values
            // agree to rounding.
            let tolerance = if k < 2 { 1e-10 } else { 1e-6 };
            let scale = b.iter().fold(1.0f64, |m, v| m.max(v.abs()));
            for (i, (u, v)) in a.iter().zip(b.iter()).enumerate() {
                assert!((u - v).abs() <= tolerance * scale.max(v.abs()), "{t:?} inverse={inverse} {what}[{i}]: fused {u} vs composed {v}");
            }
        }
    }
}

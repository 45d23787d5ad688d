//! Model files across format versions: the version-1 fixtures (written by the release before
//! version 2, `tests/fixtures/v1/`) load and give the same log-densities, samples and forward maps
//! they gave when saved; version-2 files name every tensor by its path in the architecture.

use std::path::PathBuf;

use diffeo::bijections::{FactorOutConfig, LayerConfig, MaskedAutoregressiveConfig};
use diffeo::io::{from_bytes, load, tensor_names, to_bytes};
use diffeo::prelude::*;
use diffeo::tensor::{matrix, to_vec};
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1")
}

fn numbers(v: &Value) -> Vec<f64> {
    v.as_array().expect("an array").iter().map(|x| x.as_f64().expect("a number")).collect()
}

/// Equal up to f32 rounding: kernels may sum in another order than when the file was saved (the
/// inference stack skips MADE's masked zeros and blocks its GEMMs differently; in f64 the two
/// orders agree to 1e−10, `tests/dense_f64.rs`), which moves a log-density through five spline
/// layers by up to 1.4e−6 relative (the context term keeps the layer-by-layer order of additions).
fn assert_close(what: &str, actual: &[f64], expected: &[f64]) {
    assert_eq!(actual.len(), expected.len(), "{what}: lengths");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!((a - e).abs() <= 3e-6 * e.abs().max(1.0), "{what}[{i}]: {a} now, {e} when saved");
    }
}

/// The numbers a fixture's flow gives now, checked against those it gave when it was saved.
fn check_case(name: &str, flow: &Flow, case: &Value) {
    let device = flow.device();
    let (d, c) = (flow.dim(), flow.context_dim());
    let context = case["context"].as_array().map(|_| numbers(&case["context"]));
    let ct = context.as_ref().map(|v| matrix(v.clone(), v.len() / c, c, &device));
    if case["kind"] == "density" {
        let x = numbers(&case["x"]);
        let lp = to_vec(flow.log_prob(matrix(x.clone(), x.len() / d, d, &device), ct.as_ref()).unwrap()).unwrap();
        assert_close(&format!("{name} log_prob"), &lp, &numbers(&case["log_prob"]));
        let seed = case["sample_seed"].as_u64().unwrap();
        let n = if c > 0 { 2 } else { x.len() / d };
        let (s, sl) = flow.sample_and_log_prob(n, ct.as_ref(), &mut StdRng::seed_from_u64(seed)).unwrap();
        assert_close(&format!("{name} samples"), &to_vec(s).unwrap(), &numbers(&case["samples"]));
        assert_close(&format!("{name} sample log_prob"), &to_vec(sl).unwrap(), &numbers(&case["sample_log_prob"]));
    } else {
        let u = numbers(&case["u"]);
        let (y, ld) = flow.from_base(matrix(u.clone(), u.len() / d, d, &device), ct.as_ref()).unwrap();
        assert_close(&format!("{name} forward"), &to_vec(y).unwrap(), &numbers(&case["forward"]));
        assert_close(&format!("{name} forward log-det"), &to_vec(ld).unwrap(), &numbers(&case["forward_log_det"]));
    }
}

#[test]
fn version_1_files_keep_their_behaviour() {
    let device = diffeo::cpu();
    let expected: Value = serde_json::from_str(&std::fs::read_to_string(fixtures().join("expected.json")).unwrap()).unwrap();
    let cases = expected.as_object().unwrap();
    assert!(cases.len() >= 10, "every layer type has a fixture");
    for (name, case) in cases {
        let loaded = load(fixtures().join(format!("{name}.dfo")), &device).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(loaded.extra.get("fixture").map(String::as_str), Some(name.as_str()));
        check_case(name, &loaded.flow, case);
        // Saved again, in the current version, it gives the same numbers.
        let again = from_bytes(&to_bytes(&loaded.flow, &loaded.extra).unwrap(), name, &device).unwrap();
        check_case(&format!("{name} (resaved)"), &again.flow, case);
    }
}

#[test]
fn version_2_names_tensors_by_their_path_in_the_architecture() {
    let device = diffeo::cpu();
    let made = |dim| LayerConfig::MaskedAutoregressive(MaskedAutoregressiveConfig::new(dim, vec![8]));
    // A multi-scale chain: entry 1 is a factor-out step, so the second layer is entry 2.
    let config = FlowConfig::new(4, vec![made(2), LayerConfig::FactorOut(FactorOutConfig::new(2)), made(4)])
        .with_base(BaseKind::DiagNormal)
        .with_context_dim(0);
    let flow = config.init(&device).unwrap();
    let names = tensor_names(&flow);
    for expected in ["base.loc", "base.log_scale", "layers.0.made.layers.0.weight", "layers.2.made.layers.1.bias"] {
        assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
    }
    // Every tensor maps back to an entry of the architecture's layers (or the base / embedding).
    for n in &names {
        if let Some(rest) = n.strip_prefix("layers.") {
            let i: usize = rest.split('.').next().unwrap().parse().unwrap();
            assert!(matches!(config.layers[i], LayerConfig::MaskedAutoregressive(_)), "{n}");
        } else {
            assert!(n.starts_with("base.") || n.starts_with("embedding."), "{n}");
        }
    }
    // Any safetensors reader lists the same names.
    let bytes = to_bytes(&flow, &Default::default()).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut stored: Vec<String> = st.names().into_iter().map(|s| s.to_string()).collect();
    stored.sort();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(stored, sorted);
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(meta.metadata().as_ref().unwrap()["version"], "2");
    // Round trip.
    let back = from_bytes(&bytes, "m", &device).unwrap().flow;
    let x = matrix(vec![0.3, -1.0, 2.0, 0.5, 1.5, 0.1, -0.2, -3.0], 2, 4, &device);
    assert_eq!(to_vec(flow.log_prob(x.clone(), None).unwrap()).unwrap(), to_vec(back.log_prob(x, None).unwrap()).unwrap());
}

#[test]
fn version_2_files_with_missing_or_renamed_tensors_are_refused() {
    let device = diffeo::cpu();
    let flow = maf(2, 2, vec![8]).init(&device).unwrap();
    let bytes = to_bytes(&flow, &Default::default()).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = header.metadata().clone().unwrap();
    // Rename one tensor: the architecture's tensor is missing (and the checksum, which covers the
    // tensors in name order, no longer matches).
    let mut views: Vec<(String, safetensors::tensor::TensorView)> =
        st.names().into_iter().map(|n| (n.to_string(), st.tensor(n).unwrap())).collect();
    views[0].0 = "layers.9.made.layers.0.weight".into();
    let renamed = safetensors::serialize(views, Some(meta)).unwrap();
    let err = from_bytes(&renamed, "m", &device).unwrap_err();
    assert!(matches!(err, FlowError::BadModelFile { .. }), "{err}");
}

fn fixtures_v2() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v2")
}

/// A class-conditional Glow on 4×4 images with generic weights (1×1 permutations and signs and
/// ActNorm's readiness kept): the image layers' fixture.
fn image_fixture_flow(device: &Device) -> Flow {
    let mut flow = GlowConfig::new(1, 4, 4).with_levels(2).with_steps(1).with_hidden_channels(3).with_context_dim(2).with_seed(7).init(device).unwrap();
    flow.transform = diffeo::testing::randomize_chain(flow.transform.clone(), 11, 0.2);
    flow
}

/// Writes `tests/fixtures/v2/` (run once, when the fixture is made):
/// `cargo test --workspace --test model_files_f32 write_image_fixture -- --ignored`.
#[test]
#[ignore]
fn write_image_fixture() {
    let device = diffeo::cpu();
    let flow = image_fixture_flow(&device);
    std::fs::create_dir_all(fixtures_v2()).unwrap();
    let extra = [("fixture".to_string(), "glow_conditional".to_string())].into_iter().collect();
    diffeo::io::save(&flow, fixtures_v2().join("glow_conditional.dfo"), &extra).unwrap();
    let x: Vec<f64> = (0..32).map(|i| ((i * 37 % 256) as f64 + 0.5) / 256.0).collect();
    // One context row per image (classes 0 and 1 one-hot); two samples per row.
    let context = vec![1.0, 0.0, 0.0, 1.0];
    let ct = matrix(context.clone(), 2, 2, &device);
    let lp = to_vec(flow.log_prob(matrix(x.clone(), 2, 16, &device), Some(&ct)).unwrap()).unwrap();
    let (s, sl) = flow.sample_and_log_prob(2, Some(&ct), &mut StdRng::seed_from_u64(5)).unwrap();
    let case = serde_json::json!({"kind": "density", "x": x, "context": context, "log_prob": lp, "sample_seed": 5,
        "samples": to_vec(s).unwrap(), "sample_log_prob": to_vec(sl).unwrap()});
    let all = serde_json::json!({ "glow_conditional": case });
    std::fs::write(fixtures_v2().join("expected.json"), serde_json::to_string_pretty(&all).unwrap()).unwrap();
}

/// The image layers' model file (squeeze, per-channel ActNorm, 1×1 convolutions with stored
/// permutations and signs, convolutional couplings with Glow's scale, factor-out, a diagonal
/// Gaussian base, a context) gives the numbers it gave when it was saved.
#[test]
fn image_model_files_keep_their_behaviour() {
    let device = diffeo::cpu();
    let expected: Value = serde_json::from_str(&std::fs::read_to_string(fixtures_v2().join("expected.json")).unwrap()).unwrap();
    for (name, case) in expected.as_object().unwrap() {
        let loaded = load(fixtures_v2().join(format!("{name}.dfo")), &device).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(loaded.extra.get("fixture").map(String::as_str), Some(name.as_str()));
        check_case(name, &loaded.flow, case);
    }
}

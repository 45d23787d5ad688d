//! Model files (round trip, corruption, versions) and bad input: typed errors, never panics.

use std::collections::BTreeMap;

use diffeo::datasets::two_moons;
use diffeo::io::{from_bytes, load, save, to_bytes};
use diffeo::prelude::*;
use diffeo::tensor::{matrix, to_vec};

fn quiet(_: &FitEvent) {}

fn tmpdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("diffeo-test-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn trained(context_dim: usize) -> Flow {
    let device = diffeo::cpu();
    let mut rng = StdRng::seed_from_u64(1);
    let mut data = Dataset::new(two_moons(1_000, &mut rng), 2);
    if context_dim > 0 {
        data = data.with_context((0..1_000 * context_dim).map(|i| (i % 7) as f64 * 0.1).collect(), context_dim);
    }
    let flow = MafConfig::new(2)
        .with_transforms(3)
        .with_hidden(vec![16, 16])
        .with_context_dim(context_dim)
        .with_batch_norm(true)
        .with_base(BaseKind::GaussianMixture { components: 2 })
        .init(&device).unwrap();
    fit(flow, &data, None, &FitConfig::new().with_steps(60).with_batch_size(128), &mut quiet).unwrap().0
}

#[test]
fn save_then_load_gives_identical_densities() {
    let device = diffeo::cpu();
    let flow = trained(3);
    let dir = tmpdir("roundtrip");
    let path = dir.join("model.safetensors");
    let mut extra = BTreeMap::new();
    extra.insert("note".to_string(), "hello".to_string());
    save(&flow, &path, &extra).unwrap();
    let loaded = load(&path, &device).unwrap();
    assert_eq!(loaded.extra.get("note").map(String::as_str), Some("hello"));
    assert_eq!(loaded.flow.config(), flow.config());
    let mut rng = StdRng::seed_from_u64(9);
    let x = matrix(two_moons(100, &mut rng), 100, 2, &device);
    let c = matrix((0..300).map(|i| (i % 5) as f64 * 0.2).collect(), 100, 3, &device);
    let a = to_vec(flow.log_prob(x.clone(), Some(&c)).unwrap()).unwrap();
    let b = to_vec(loaded.flow.log_prob(x, Some(&c)).unwrap()).unwrap();
    assert_eq!(a, b);
    // Saving over an existing file replaces it atomically and leaves no temporary behind.
    save(&loaded.flow, &path, &BTreeMap::new()).unwrap();
    let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 1, "{names:?}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn corrupted_truncated_and_foreign_files_are_errors() {
    let device = diffeo::cpu();
    let flow = trained(0);
    let bytes = to_bytes(&flow, &BTreeMap::new()).unwrap();
    // A flipped byte in the weights.
    let mut tampered = bytes.clone();
    let last = tampered.len() - 3;
    tampered[last] ^= 0x40;
    let err = from_bytes(&tampered, "m", &device).unwrap_err();
    assert!(matches!(err, FlowError::BadModelFile { .. }), "{err}");
    assert!(err.to_string().contains("checksum"), "{err}");
    // Truncations anywhere.
    for cut in [0, 4, 8, 50, bytes.len() / 2, bytes.len() - 1] {
        let err = from_bytes(&bytes[..cut], "m", &device).unwrap_err();
        assert!(matches!(err, FlowError::BadModelFile { .. }), "cut {cut}: {err}");
    }
    // Not a model at all.
    assert!(from_bytes(b"hello world, not a model", "m", &device).is_err());
    // A missing file.
    let err = load("/nonexistent/dir/model.safetensors", &device).unwrap_err();
    assert!(matches!(err, FlowError::Io { .. }), "{err}");
}

#[test]
fn newer_format_versions_are_refused() {
    let device = diffeo::cpu();
    let flow = trained(0);
    let bytes = to_bytes(&flow, &BTreeMap::new()).unwrap();
    // Rewrite the version field in the JSON header (same length keeps the offsets valid).
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + header_len]).unwrap();
    let current = format!("\"version\":\"{}\"", diffeo::io::FORMAT_VERSION);
    let patched = header.replace(&current, "\"version\":\"9\"");
    assert_ne!(patched, header);
    let mut out = bytes[..8].to_vec();
    out.extend_from_slice(patched.as_bytes());
    out.extend_from_slice(&bytes[8 + header_len..]);
    match from_bytes(&out, "m", &device) {
        Err(FlowError::UnsupportedVersion { found, .. }) => assert_eq!(found, "9"),
        other => panic!("expected UnsupportedVersion, got {other:?}"),
    }
}

#[test]
fn saving_into_a_missing_folder_is_an_error() {
    let flow = trained(0);
    let err = save(&flow, "/nonexistent-diffeo-dir/model.safetensors", &BTreeMap::new()).unwrap_err();
    assert!(matches!(err, FlowError::Io { .. }), "{err}");
}

#[test]
fn bad_inputs_are_typed_errors() {
    let device = diffeo::cpu();
    let mut rng = StdRng::seed_from_u64(2);
    let plain = maf(2, 2, vec![8]).init(&device).unwrap();
    let cond = maf(2, 2, vec![8]).with_context_dim(3).init(&device).unwrap();
    let x = matrix(vec![0.1, 0.2, 0.3, 0.4], 2, 2, &device);

    // Wrong feature count.
    let x3 = matrix(vec![0.0; 6], 2, 3, &device);
    assert!(matches!(plain.log_prob(x3, None), Err(FlowError::DimensionMismatch { expected: 2, got: 3, .. })));
    // Missing, unexpected, wrong-width and wrong-row-count context.
    assert!(matches!(cond.log_prob(x.clone(), None), Err(FlowError::MissingContext { expected: 3 })));
    let c2 = matrix(vec![0.0; 4], 2, 2, &device);
    assert!(matches!(plain.log_prob(x.clone(), Some(&c2)), Err(FlowError::UnexpectedContext { got: 2 })));
    assert!(matches!(
        cond.log_prob(x.clone(), Some(&c2)),
        Err(FlowError::DimensionMismatch { expected: 3, got: 2, .. })
    ));
    let c3 = matrix(vec![0.0; 9], 3, 3, &device);
    assert!(matches!(cond.log_prob(x.clone(), Some(&c3)), Err(FlowError::RowMismatch { .. })));
    assert!(matches!(cond.sample(4, None, &mut rng), Err(FlowError::MissingContext { .. })));
    // NaN and infinity, with their position.
    let bad = matrix(vec![0.0, 1.0, f64::NAN, 2.0], 2, 2, &device);
    match plain.log_prob(bad, None) {
        Err(FlowError::NonFinite { row: 1, col: 0, .. }) => {}
        other => panic!("expected NonFinite at (1, 0), got {other:?}"),
    }
    let bad_ctx = matrix(vec![0.0, f64::INFINITY, 0.0, 0.0, 0.0, 0.0], 2, 3, &device);
    assert!(matches!(cond.log_prob(x.clone(), Some(&bad_ctx)), Err(FlowError::NonFinite { .. })));
    // Empty data and a zero-sample request.
    let empty = Tensor::<2>::zeros([0, 2], &device);
    assert!(matches!(plain.log_prob(empty, None), Err(FlowError::Empty { .. })));
    assert!(matches!(plain.sample(0, None, &mut rng), Err(FlowError::Empty { .. })));

    // Fitting: bad data and bad settings.
    let cfg = FitConfig::new().with_steps(5);
    let nan_data = Dataset::new(vec![0.0, f64::NAN, 1.0, 1.0], 2);
    assert!(matches!(fit(plain.clone(), &nan_data, None, &cfg, &mut quiet), Err(FlowError::NonFinite { .. })));
    let empty = Dataset::new(vec![], 2);
    assert!(matches!(fit(plain.clone(), &empty, None, &cfg, &mut quiet), Err(FlowError::Empty { .. })));
    let wrong = Dataset::new(vec![0.0; 9], 3);
    assert!(matches!(fit(plain.clone(), &wrong, None, &cfg, &mut quiet), Err(FlowError::DimensionMismatch { .. })));
    let ok = Dataset::new(vec![0.0, 1.0, 1.0, 0.0], 2);
    assert!(matches!(fit(cond.clone(), &ok, None, &cfg, &mut quiet), Err(FlowError::MissingContext { .. })));
    for bad_cfg in [
        FitConfig::new().with_batch_size(0),
        FitConfig::new().with_learning_rate(-1.0),
        FitConfig::new().with_learning_rate(f64::NAN),
        FitConfig::new().with_steps(0),
        FitConfig::new().with_epochs(Some(0)),
        FitConfig::new().with_patience(Some(0)),
    ] {
        assert!(matches!(fit(plain.clone(), &ok, None, &bad_cfg, &mut quiet), Err(FlowError::InvalidConfig(_))));
    }
    // Invalid architectures are errors from init.
    assert!(RealNvpConfig::new(1).flow_config().init(&device).is_err());
    let mut cfg = maf(3, 1, vec![4]).flow_config();
    if let LayerConfig::MaskedAutoregressive(m) = &mut cfg.layers[0] {
        m.order = vec![1, 1, 2];
    }
    assert!(matches!(cfg.init(&device), Err(FlowError::InvalidConfig(_))));
}

#[test]
fn divergence_stops_with_an_error_instead_of_a_nan_model() {
    let device = diffeo::cpu();
    let flow = maf(2, 2, vec![8]).init(&device).unwrap();
    // Values so large that their log-density overflows f32.
    let data = Dataset::new(vec![1e30, -1e30, 3e30, 2e30], 2);
    match fit(flow, &data, None, &FitConfig::new().with_steps(10), &mut quiet) {
        Err(FlowError::NonFiniteLoss { step: 1, .. }) => {}
        other => panic!("expected NonFiniteLoss, got {:?}", other.map(|r| r.1)),
    }
}

#[test]
fn iaf_density_and_maf_sampling_take_d_passes_but_are_exact() {
    let device = diffeo::cpu();
    let mut rng = StdRng::seed_from_u64(3);
    let flow = diffeo::testing::randomize_parameters(iaf(4, 2, vec![16]).init(&device).unwrap(), 3, 0.2);
    assert_eq!(flow.directions().forward, Cost::ClosedForm);
    assert_eq!(flow.directions().inverse, Cost::Sequential);
    diffeo::testing::check_sample_and_log_prob(&flow, 64, None, &mut rng, 1e-3).unwrap();
}

#[test]
fn epochs_count_passes_over_the_data() {
    let device = diffeo::cpu();
    let mut rng = StdRng::seed_from_u64(4);
    let data = Dataset::new(two_moons(1_000, &mut rng), 2);
    let cfg = FitConfig::new().with_epochs(Some(3)).with_batch_size(300).with_steps(1);
    let mut steps = 0;
    let (_, report) = fit(realnvp(2, 2, vec![8]).init(&device).unwrap(), &data, None, &cfg, &mut |e| {
        if let FitEvent::Step { .. } = e {
            steps += 1;
        }
    })
    .unwrap();
    // ⌈1000 / 300⌉ = 4 batches per epoch.
    assert_eq!(report.steps, 12);
    assert_eq!(steps, 12);
    assert_eq!(report.history.len(), 1);
}

#[test]
fn toy_generators_follow_their_formulas() {
    use diffeo::datasets::{toy, TOYS};
    let mut rng = StdRng::seed_from_u64(11);
    for (name, _) in TOYS {
        let v = toy(name, 1001, &mut rng).unwrap();
        assert_eq!(v.len(), 2002, "{name}");
        assert!(v.iter().all(|x| x.is_finite() && x.abs() < 12.0), "{name}");
    }
    assert!(toy("nope", 10, &mut rng).is_none());
    // Checkerboard: uniform on the 8 dark squares of side 2 in [−4, 4]².
    let v = toy("checkerboard", 4000, &mut rng).unwrap();
    for p in v.chunks_exact(2) {
        assert!(p[0].abs() <= 4.0 && p[1].abs() <= 4.0);
        let parity = ((p[0] / 2.0).floor() + (p[1] / 2.0).floor()).rem_euclid(2.0);
        assert_eq!(parity, 0.0, "point {p:?} on a light square");
    }
    // Rings: radii 3, 2.25, 1.5, 0.75 (noise 0.08).
    let v = toy("rings", 4000, &mut rng).unwrap();
    for p in v.chunks_exact(2) {
        let r = (p[0] * p[0] + p[1] * p[1]).sqrt();
        let nearest = [3.0, 2.25, 1.5, 0.75].iter().map(|c| (r - c).abs()).fold(f64::INFINITY, f64::min);
        assert!(nearest < 0.5, "radius {r}");
    }
}

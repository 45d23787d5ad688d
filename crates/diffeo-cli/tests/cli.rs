//! End-to-end tests of the `diffeo` binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn diffeo(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_diffeo")).args(args).output().expect("the binary runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

/// Runs and asserts success; returns stdout.
fn ok(args: &[&str]) -> String {
    let out = diffeo(args);
    assert!(out.status.success(), "diffeo {args:?} failed:\n{}\n{}", text(&out.stdout), text(&out.stderr));
    text(&out.stdout)
}

/// Runs and asserts a clean bad-input failure: exit 2, one error line, no panic.
fn bad(args: &[&str], expect: &str) {
    let out = diffeo(args);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "diffeo {args:?}: expected exit 2, got {:?}; stderr: {err}", out.status.code());
    assert!(!err.contains("panicked"), "diffeo {args:?} panicked: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "diffeo {args:?}: expected one error line, got {err:?}");
    assert!(lines[0].to_lowercase().contains(&expect.to_lowercase()), "diffeo {args:?}: {err:?} lacks {expect:?}");
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn p(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

fn write(dir: &Path, name: &str, content: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path.display().to_string()
}

/// A small model on a 2-column CSV, for the tests that need any model.
fn small_model(dir: &Path) -> (String, String) {
    let mut csv = String::from("a,b\n");
    for i in 0..200 {
        let t = i as f64 / 20.0;
        csv.push_str(&format!("{},{}\n", t.sin() * 2.0, t.cos() + 0.1 * t));
    }
    let data = write(dir, "small.csv", &csv);
    let model = p(dir, "small.dfo");
    ok(&["fit", "--data", &data, "--steps", "30", "--hidden", "8", "--transforms", "2", "--out", &model, "-q"]);
    (data, model)
}

#[test]
fn moons_walkthrough_reaches_the_entropy_bound() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = p(d, "moons.dfo");
    let stdout = ok(&[
        "fit", "--data", "builtin:moons", "--steps", "3000", "--batch", "512", "--out", &model, "--plot-loss", &p(d, "loss.png"),
    ]);
    assert!(stdout.contains("saved"), "{stdout}");
    let e = json(&ok(&["eval", "--model", &model, "--data", "builtin:moons", "--json"]));
    let ll = e["log_likelihood"].as_f64().unwrap();
    let se = e["stderr"].as_f64().unwrap();
    eprintln!("moons test log-likelihood {ll:.4} ± {se:.4} (entropy bound −2.393)");
    assert_eq!(e["n"], 10_000);
    assert_eq!(e["dim"], 2);
    assert!(ll > -2.45 && ll < -2.393 + 3.0 * se, "log-likelihood {ll} ± {se}");

    // Per-row densities agree with the mean.
    ok(&["log-prob", "--model", &model, "--data", "builtin:moons", "--out", &p(d, "lp.csv")]);
    let lp: Vec<f64> = std::fs::read_to_string(d.join("lp.csv")).unwrap().lines().skip(1).map(|l| l.parse().unwrap()).collect();
    assert_eq!(lp.len(), 10_000);
    assert!((lp.iter().sum::<f64>() / 1e4 - ll).abs() < 1e-9);

    ok(&["sample", "--model", &model, "-n", "500", "--seed", "3", "--out", &p(d, "s.npy")]);
    assert!(d.join("s.npy").metadata().unwrap().len() > 500 * 2 * 8);
    ok(&["plot", "--model", &model, "--data", "builtin:moons", "--out", &p(d, "fig.png")]);
    for f in ["fig.png", "loss.png"] {
        let bytes = std::fs::read(d.join(f)).unwrap();
        assert_eq!(&bytes[1..4], b"PNG", "{f} is a PNG");
    }
    let c = json(&ok(&["check", "--model", &model, "--json"]));
    assert_eq!(c["pass"], true, "{c}");
    assert!(c["max_logdet_error"].as_f64().unwrap() < 1e-6);
    let info = json(&ok(&["info", "--model", &model, "--json"]));
    assert_eq!(info["family"], "maf");
    assert_eq!(info["training"]["steps"], 3000);
}

#[test]
fn resume_continues_training() {
    let dir = tempfile::tempdir().unwrap();
    let (data, model) = small_model(dir.path());
    let before = json(&ok(&["eval", "--model", &model, "--data", &data, "--json"]))["log_likelihood"].as_f64().unwrap();
    ok(&["fit", "--data", &data, "--resume", &model, "--steps", "300", "--out", &model, "-q"]);
    let after = json(&ok(&["eval", "--model", &model, "--data", &data, "--json"]))["log_likelihood"].as_f64().unwrap();
    assert!(after > before, "resumed training improved {before} → {after}");
    let info = json(&ok(&["info", "--model", &model, "--json"]));
    assert_eq!(info["training"]["steps"], 330);
    assert_eq!(info["training"]["runs"], 2);
    // Epochs and an explicit validation file.
    let e = p(dir.path(), "epochs.dfo");
    ok(&["fit", "--data", &data, "--val", &data, "--epochs", "3", "--batch", "50", "--eval-every", "4", "--out", &e, "-q"]);
    let info = json(&ok(&["info", "--model", &e, "--json"]));
    assert_eq!(info["training"]["steps"], 12);
    assert_eq!(info["training"]["val_rows"], 200);
}

#[test]
fn a_diverging_fit_exits_1_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = small_model(dir.path());
    let out = p(dir.path(), "nan.dfo");
    let r = diffeo(&["fit", "--data", &data, "--lr", "1e6", "--steps", "300", "--out", &out, "-q"]);
    assert_eq!(r.status.code(), Some(1), "{}", text(&r.stderr));
    assert!(text(&r.stderr).contains("no model written"));
    assert!(!Path::new(&out).exists());
}

#[test]
fn every_family_fits_and_passes_the_self_check() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = small_model(dir.path());
    // A residual spline flow with dropout, as in the NSF paper's tabular models.
    let res = p(dir.path(), "res.dfo");
    ok(&["fit", "--data", &data, "--flow", "nsf", "--residual-blocks", "2", "--dropout", "0.1", "--hidden", "16", "--steps", "30", "--out", &res, "-q"]);
    assert_eq!(json(&ok(&["check", "--model", &res, "--n", "200", "--json"]))["pass"], true);
    bad(&["fit", "--data", &data, "--dropout", "0.1", "--out", &res], "residual");
    bad(&["fit", "--data", &data, "--residual-blocks", "1", "--dropout", "1.5", "--out", &res], "--dropout");
    for flow in ["maf", "iaf", "realnvp", "nice", "nsf", "nsf-coupling"] {
        let model = p(dir.path(), &format!("{flow}.dfo"));
        ok(&["fit", "--data", &data, "--flow", flow, "--steps", "40", "--hidden", "8", "--batch-norm", "--lu", "--bins", "4", "--out", &model, "-q"]);
        let c = json(&ok(&["check", "--model", &model, "--n", "200", "--json"]));
        assert_eq!(c["pass"], true, "{flow}: {c}");
        ok(&["sample", "--model", &model, "-n", "10", "--out", &p(dir.path(), "s.csv")]);
    }
}

#[test]
fn splines_warn_about_data_beyond_the_tail_bound() {
    let dir = tempfile::tempdir().unwrap();
    let mut csv = String::new();
    for i in 0..300 {
        let outlier = if i == 7 { 1e3 } else { 0.0 };
        csv.push_str(&format!("{},{}\n", (i % 17) as f64 + outlier, (i % 5) as f64));
    }
    let data = write(dir.path(), "outlier.csv", &csv);
    let model = p(dir.path(), "s.dfo");
    let out = diffeo(&["fit", "--data", &data, "--flow", "nsf", "--steps", "5", "--hidden", "8", "--out", &model, "-q"]);
    assert!(out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("beyond the spline tail bound ±5, where the splines continue linearly"), "{err}");
    let out = diffeo(&["fit", "--data", &data, "--flow", "nsf", "--spline-tails", "identity", "--steps", "5", "--hidden", "8", "--out", &model, "-q"]);
    assert!(out.status.success());
    assert!(text(&out.stderr).contains("where the splines are the identity"), "{}", text(&out.stderr));
    let out = diffeo(&["fit", "--data", &data, "--flow", "nsf", "--tail-bound", "20", "--steps", "5", "--hidden", "8", "--out", &model, "-q"]);
    assert!(!text(&out.stderr).contains("tail bound"), "{}", text(&out.stderr));
    bad(&["fit", "--data", &data, "--flow", "nsf", "--bins", "1", "--out", &model], "--bins");
}

#[test]
fn conditional_models_use_their_context_columns() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // x | c ~ N((c, −c), 0.5²), with a label column to skip.
    let mut csv = String::from("label,c,x,y\n");
    for i in 0..600 {
        let c = (i % 13) as f64 / 6.0 - 1.0;
        let (e1, e2) = (((i * 7919) % 101) as f64 / 101.0 - 0.5, ((i * 104_729) % 97) as f64 / 97.0 - 0.5);
        csv.push_str(&format!("{},{c},{},{}\n", i % 2, c + e1, -c + e2));
    }
    let data = write(d, "cond.csv", &csv);
    let model = p(d, "cond.dfo");
    ok(&["fit", "--data", &data, "--cols", "x,y", "--context-cols", "c", "--steps", "200", "--hidden", "16", "--out", &model, "-q"]);
    let info = json(&ok(&["info", "--model", &model, "--json"]));
    assert_eq!(info["context_dim"], 1);
    assert_eq!(info["columns"], serde_json::json!([2, 3]));
    ok(&["eval", "--model", &model, "--data", &data]);
    ok(&["log-prob", "--model", &model, "--data", &data, "--out", &p(d, "lp.npy")]);
    ok(&["sample", "--model", &model, "-n", "50", "--context", "0.5", "--out", &p(d, "s1.csv")]);
    // Values starting with a minus sign are values, not flags.
    ok(&["sample", "--model", &model, "-n", "5", "--context", "-0.64", "--out", &p(d, "s0.csv")]);
    ok(&["plot", "--model", &model, "--context", "-0.2", "--n", "200", "--out", &p(d, "c0.png")]);
    bad(&["sample", "--model", &model, "-n", "5", "--context", "-0.6,0.1", "--out", &p(d, "x.csv")], "context has 2 value(s)");
    bad(&["sample", "--model", &model, "-n", "-5", "--context", "0.1", "--out", &p(d, "x.csv")], "-5");
    let rows = std::fs::read_to_string(d.join("s1.csv")).unwrap().lines().count();
    assert_eq!(rows, 51, "header + 50 samples");
    let ctx = write(d, "ctx.csv", "0.1\n-0.4\n0.9\n");
    ok(&["sample", "--model", &model, "-n", "20", "--context", &ctx, "--out", &p(d, "s2.csv")]);
    assert_eq!(std::fs::read_to_string(d.join("s2.csv")).unwrap().lines().count(), 61);
    ok(&["plot", "--model", &model, "--data", &data, "--context", "0.2", "--out", &p(d, "c.png")]);
    assert_eq!(json(&ok(&["check", "--model", &model, "--n", "100", "--json"]))["pass"], true);
    bad(&["sample", "--model", &model, "-n", "5", "--out", &p(d, "x.csv")], "context");
    bad(&["sample", "--model", &model, "-n", "5", "--context", "1,2", "--out", &p(d, "x.csv")], "context");
    bad(&["eval", "--model", &model, "--data", &write(d, "two.csv", "1,2\n3,4\n")], "columns");
    assert!(!d.join("x.csv").exists());
}

#[test]
fn file_formats_images_and_bits_per_dim() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Whitespace-separated text and NPY give the same model inputs.
    let mut txt = String::new();
    let mut vals = Vec::new();
    for i in 0..100 {
        let (a, b, c) = ((i % 10) as f64, (i / 10) as f64, (i % 7) as f64);
        txt.push_str(&format!("{a} {b}   {c}\n"));
        vals.extend([a, b, c]);
    }
    let t = write(d, "x.txt", &txt);
    let model = p(d, "x.dfo");
    ok(&["fit", "--data", &t, "--steps", "20", "--hidden", "8", "--dequantize", "--out", &model, "-q"]);
    // An NPY file with the same layout.
    let npy = d.join("x.npy");
    {
        use npyz::WriterBuilder;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&npy).unwrap());
        let mut w = npyz::WriteOptions::new().default_dtype().shape(&[100, 3]).writer(&mut f).begin_nd().unwrap();
        w.extend(vals.iter().map(|v| *v as f32)).unwrap();
        w.finish().unwrap();
    }
    ok(&["eval", "--model", &model, "--data", &npy.display().to_string()]);

    // 8-bit images in IDX (gzip), dequantized, logit preprocessing, bits/dim.
    let (n, side) = (64usize, 4usize);
    let mut idx = vec![0u8, 0, 8, 3];
    for v in [n, side, side] {
        idx.extend((v as u32).to_be_bytes());
    }
    for i in 0..n * side * side {
        idx.push(((i * 37) % 256) as u8);
    }
    let gz = d.join("img-idx3-ubyte.gz");
    {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(std::fs::File::create(&gz).unwrap(), flate2::Compression::default());
        e.write_all(&idx).unwrap();
        e.finish().unwrap();
    }
    let gzs = gz.display().to_string();
    let img = p(d, "img.dfo");
    ok(&["fit", "--data", &gzs, "--dequantize", "--logit", "0.05", "--steps", "20", "--hidden", "16", "--out", &img, "-q"]);
    let e = json(&ok(&["eval", "--model", &img, "--data", &gzs, "--bits-per-dim", "--json"]));
    let (ll, bpd) = (e["log_likelihood"].as_f64().unwrap(), e["bits_per_dim"].as_f64().unwrap());
    let dd = (side * side) as f64;
    assert!((bpd + (ll - dd * 256f64.ln()) / (dd * std::f64::consts::LN_2)).abs() < 1e-9);
    assert!(bpd > 0.0 && bpd < 12.0, "bits/dim {bpd}");
    assert_eq!(json(&ok(&["check", "--model", &img, "--n", "50", "--json"]))["pass"], true);
    ok(&["plot", "--model", &img, "--data", &gzs, "--out", &p(d, "pairs.png")]);
}

#[test]
fn power_loader_on_a_fixture() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir(root.join("power")).unwrap();
    let mut csv = String::from("date_time,Global_active_power,Global_reactive_power,Voltage,Global_intensity,Sub_metering_1,Sub_metering_2,Sub_metering_3\n");
    for k in 0..400 {
        csv.push_str(&format!(
            "2007-01-01 {:02}:{:02}:00,{},{},{},{},{},{},{}\n",
            k / 60 % 24,
            k % 60,
            1.0 + (k % 17) as f64 * 0.1,
            0.1,
            240.0 + (k % 7) as f64,
            4.0,
            k % 3,
            1,
            (k % 11) as f64
        ));
    }
    {
        use std::io::Write;
        let f = std::fs::File::create(root.join("power/householdpower.csv.gz")).unwrap();
        let mut e = flate2::write::GzEncoder::new(f, flate2::Compression::default());
        e.write_all(csv.as_bytes()).unwrap();
        e.finish().unwrap();
    }
    let r = root.display().to_string();
    let listing = ok(&["datasets", "--data-root", &r]);
    assert!(listing.lines().any(|l| l.starts_with("builtin:power") && l.contains("yes")), "{listing}");
    let model = p(root, "power.dfo");
    ok(&["fit", "--data", "builtin:power", "--data-root", &r, "--steps", "20", "--hidden", "8", "--out", &model, "-q"]);
    let e = json(&ok(&["eval", "--model", &model, "--data", "builtin:power", "--data-root", &r, "--json"]));
    assert_eq!(e["n"], 40);
    assert_eq!(e["dim"], 6);
    bad(&["fit", "--data", "builtin:power", "--out", &model], "data-root");
}

#[test]
fn bad_input_is_refused_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (data, model) = small_model(d);
    let out = p(d, "new.dfo");
    let fit = |data: &str, expect: &str| bad(&["fit", "--data", data, "--steps", "5", "--out", &out], expect);

    fit(&p(d, "missing.csv"), "no such file");
    fit(&write(d, "empty.csv", ""), "no data rows");
    fit(&write(d, "header-only.csv", "a,b\n"), "no data rows");
    fit(&write(d, "ragged.csv", "1,2\n3,4\n5\n"), "line 3 has 1 columns");
    fit(&write(d, "text.csv", "1,2\n3,abc\n"), "line 2, column 1");
    fit(&write(d, "nan.csv", "a,b\n1,2\n3,nan\n4,5\n6,1\n2,8\n"), "line 3, column 1");
    fit(&write(d, "inf.csv", "1,2\ninf,4\n"), "non-finite");
    bad(&["fit", "--data", &write(d, "nan3.csv", "a,b,c\n1,2,3\n4,5,nan\n"), "--cols", "1,2", "--out", &out], "line 3, column 2 (\"c\")");
    fit(&write(d, "garbage.npy", "not numpy"), "not a valid .npy");
    fit("builtin:nosuch", "unknown built-in");
    // --drop-nonfinite accepts the NaN file.
    let nan = p(d, "nan.csv");
    let fitted = diffeo(&["fit", "--data", &nan, "--drop-nonfinite", "--steps", "2", "--out", &out, "-q"]);
    assert!(fitted.status.success(), "{}", text(&fitted.stderr));
    std::fs::remove_file(&out).unwrap();

    bad(&["fit", "--data", &data, "--flow", "flow++", "--out", &out], "invalid value 'flow++'");
    bad(&["fit", "--data", &data, "--flow", "planar", "--out", &out], "no inverse");
    bad(&["fit", "--data", &data, "--steps", "0", "--out", &out], "--steps");
    bad(&["fit", "--data", &data, "--steps", "-5", "--out", &out], "--steps");
    bad(&["fit", "--data", &data, "--batch", "0", "--out", &out], "--batch");
    bad(&["fit", "--data", &data, "--lr", "0", "--out", &out], "--lr");
    bad(&["fit", "--data", &data, "--lr", "-1e-3", "--out", &out], "--lr");
    bad(&["fit", "--data", &data, "--hidden", "0,4", "--out", &out], "--hidden");
    bad(&["fit", "--data", &data, "--context-cols", "7", "--out", &out], "column 7 does not exist");
    bad(&["fit", "--data", &data, "--cols", "0", "--context-cols", "0", "--out", &out], "both");
    bad(&["fit", "--data", &data, "--out", &p(d, "no/such/dir/m.dfo")], "does not exist");
    // Models too large for the machine are refused before anything is allocated, with the
    // estimate and the memory available.
    bad(&["fit", "--data", &data, "--hidden", "1000000000", "--out", &out], "available");
    let started = std::time::Instant::now();
    bad(&["fit", "--data", &data, "--transforms", "100000", "--out", &out], "parameters");
    assert!(started.elapsed().as_secs() < 30, "refused without building the layers");
    // Dequantization needs integer data; a fit needs more rows than dimensions.
    bad(&["fit", "--data", &data, "--dequantize", "--out", &out], "data values are not integers");
    fit(&write(d, "one-row.csv", "a,b\n1,2\n"), "at least 3");
    fit(&write(d, "two-rows.csv", "1,2,3\n4,5,6\n"), "at least 4");
    assert!(!Path::new(&out).exists(), "no model written by failed fits");

    // Models.
    bad(&["eval", "--model", &p(d, "none.dfo"), "--data", &data], "not found");
    let corrupt = d.join("corrupt.dfo");
    let mut bytes = std::fs::read(&model).unwrap();
    let k = bytes.len() - 10;
    bytes[k] ^= 0xFF;
    std::fs::write(&corrupt, &bytes).unwrap();
    bad(&["eval", "--model", &corrupt.display().to_string(), "--data", &data], "corrupt");
    let truncated = d.join("truncated.dfo");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    bad(&["info", "--model", &truncated.display().to_string()], "truncated.dfo");
    bad(&["check", "--model", &write(d, "text.dfo", "hello")], "text.dfo");
    bad(&["eval", "--model", &model, "--data", &write(d, "three.csv", "1,2,3\n4,5,6\n")], "has 3 columns");
    bad(&["eval", "--model", &model, "--data", &data, "--bogus"], "--bogus");

    // Outputs.
    let missing_dir = p(d, "nodir/s.csv");
    bad(&["sample", "--model", &model, "-n", "5", "--out", &missing_dir], "does not exist");
    bad(&["sample", "--model", &model, "-n", "0", "--out", &p(d, "s.csv")], "-n");
    bad(&["sample", "--model", &model, "-n", "5", "--out", &p(d, "s.xlsx")], "output format");
    bad(&["sample", "--model", &model, "-n", "5", "--context", "1", "--out", &p(d, "s.csv")], "unconditional");
    bad(&["log-prob", "--model", &model, "--data", &data, "--out", &missing_dir], "does not exist");
    bad(&["plot", "--model", &model, "--out", &p(d, "fig.jpg")], "output format");
    assert!(!d.join("s.csv").exists() && !d.join("nodir").exists());
    let leftovers: Vec<PathBuf> = std::fs::read_dir(d).unwrap().map(|e| e.unwrap().path()).filter(|p| p.to_string_lossy().contains(".tmp-")).collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[test]
fn constant_columns_are_named_and_can_be_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut csv = String::from("a,flat,b\n");
    for i in 0..100 {
        csv.push_str(&format!("{},7,{}\n", (i as f64 * 0.37).sin(), (i as f64 * 0.11).cos()));
    }
    let data = write(d, "flat.csv", &csv);
    let model = p(d, "flat.dfo");
    let out = diffeo(&["fit", "--data", &data, "--steps", "5", "--hidden", "8", "--out", &model, "-q"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("constant data column(s) 1 (\"flat\")") && err.contains("--drop-constant"), "{err}");
    let out = diffeo(&["fit", "--data", &data, "--steps", "5", "--hidden", "8", "--drop-constant", "--out", &model, "-q"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let info = json(&ok(&["info", "--model", &model, "--json"]));
    assert_eq!(info["dim"], 2);
    assert_eq!(info["columns"], serde_json::json!([0, 2]));
    // The dropped column is skipped when evaluating files laid out like the training data.
    ok(&["eval", "--model", &model, "--data", &data]);
}

#[test]
fn a_time_budget_alone_trains_until_it_is_spent() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = small_model(dir.path());
    let model = p(dir.path(), "budget.dfo");
    ok(&["fit", "--data", &data, "--time-budget", "2", "--hidden", "4", "--transforms", "1", "--batch", "8", "--eval-every", "500", "--out", &model, "-q"]);
    let t = &json(&ok(&["info", "--model", &model, "--json"]))["training"];
    let (steps, seconds) = (t["steps"].as_u64().unwrap(), t["seconds"].as_f64().unwrap());
    // Not stopped at the default 2000 steps before the budget ran out.
    assert!(steps > 2000 || seconds >= 1.9, "{steps} steps in {seconds} s");
    // With --steps, whichever ends first.
    ok(&["fit", "--data", &data, "--time-budget", "60", "--steps", "7", "--hidden", "4", "--out", &model, "-q"]);
    assert_eq!(json(&ok(&["info", "--model", &model, "--json"]))["training"]["steps"], 7);
}

/// Numbers in a CSV file (header lines skipped).
fn csv_numbers(path: &Path) -> Vec<f64> {
    std::fs::read_to_string(path).unwrap().lines().flat_map(|l| l.split(',').map(str::to_string).collect::<Vec<_>>()).filter_map(|x| x.parse().ok()).collect()
}

fn assert_close(what: &str, a: &[f64], e: &[f64]) {
    assert_eq!(a.len(), e.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(e).enumerate() {
        // f32 models: reductions vectorized for another CPU round differently (2.3e−6 seen).
        assert!((x - y).abs() <= 1e-5 * y.abs().max(1.0), "{what}[{i}]: {x} now, {y} when saved");
    }
}

/// Models written by the command line in format version 1 give today the outputs they gave then
/// (`tests/fixtures/v1/README.md` lists the commands).
#[test]
fn version_1_model_files_keep_their_behaviour() {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1");
    let f = |name: &str| fixtures.join(name).display().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = |name: &str| p(dir.path(), name);
    let same_json = |model: &str, args: &[&str], expected: &str| {
        let now = json(&ok(args));
        let then = json(&std::fs::read_to_string(fixtures.join(expected)).unwrap());
        for (k, v) in then.as_object().unwrap() {
            match v.as_f64() {
                Some(e) => assert_close(&format!("{model} {k}"), &[now[k].as_f64().unwrap_or(f64::NAN)], &[e]),
                None => assert_eq!(&now[k], v, "{model} {k}"),
            }
        }
    };
    for m in ["moons-maf", "moons-nsf-coupling"] {
        let model = f(&format!("{m}.dfo"));
        same_json(m, &["eval", "--model", &model, "--data", "builtin:moons", "--json"], &format!("{m}.eval.json"));
        ok(&["log-prob", "--model", &model, "--data", &f("moons-points.csv"), "--out", &out("lp.csv")]);
        assert_close(m, &csv_numbers(dir.path().join("lp.csv").as_path()), &csv_numbers(&fixtures.join(format!("{m}.logprob.csv"))));
        ok(&["sample", "--model", &model, "-n", "20", "--seed", "1", "--out", &out("s.csv")]);
        assert_close(m, &csv_numbers(dir.path().join("s.csv").as_path()), &csv_numbers(&fixtures.join(format!("{m}.samples.csv"))));
    }
    let cond = f("conditional-nsf.dfo");
    same_json("conditional-nsf", &["eval", "--model", &cond, "--data", &f("conditional.csv"), "--json"], "conditional-nsf.eval.json");
    ok(&["log-prob", "--model", &cond, "--data", &f("conditional.csv"), "--out", &out("c.csv")]);
    assert_close("conditional", &csv_numbers(dir.path().join("c.csv").as_path()), &csv_numbers(&fixtures.join("conditional-nsf.logprob.csv")));
    ok(&["sample", "--model", &cond, "-n", "10", "--context", "0.5", "--seed", "2", "--out", &out("cs.csv")]);
    assert_close("conditional", &csv_numbers(dir.path().join("cs.csv").as_path()), &csv_numbers(&fixtures.join("conditional-nsf.samples.csv")));
    let img = f("images-realnvp.dfo");
    let idx = f("tiny-images-idx3-ubyte");
    same_json("images", &["eval", "--model", &img, "--data", &idx, "--bits-per-dim", "--json", "--seed", "3"], "images-realnvp.eval.json");
    ok(&["log-prob", "--model", &img, "--data", &idx, "--seed", "3", "--out", &out("i.csv")]);
    assert_close("images", &csv_numbers(dir.path().join("i.csv").as_path()), &csv_numbers(&fixtures.join("images-realnvp.logprob.csv")));
    ok(&["sample", "--model", &img, "-n", "5", "--seed", "4", "--out", &out("is.csv")]);
    assert_close("images", &csv_numbers(dir.path().join("is.csv").as_path()), &csv_numbers(&fixtures.join("images-realnvp.samples.csv")));
    let vi = f("u2-planar.dfo");
    ok(&["sample", "--model", &vi, "-n", "20", "--seed", "5", "--out", &out("v.csv")]);
    assert_close("u2-planar", &csv_numbers(dir.path().join("v.csv").as_path()), &csv_numbers(&fixtures.join("u2-planar.samples.csv")));
    // `info --json` keeps its keys and values.
    for m in ["moons-maf", "moons-nsf-coupling", "conditional-nsf", "images-realnvp", "u2-planar"] {
        same_json(m, &["info", "--model", &f(&format!("{m}.dfo")), "--json"], &format!("{m}.info.json"));
    }
}

#[test]
fn help_version_and_datasets() {
    assert!(ok(&["--version"]).starts_with("diffeo "));
    let help = ok(&["--help"]);
    for cmd in ["fit", "eval", "log-prob", "sample", "plot", "check", "info", "datasets"] {
        assert!(help.contains(cmd), "help lists {cmd}");
    }
    let list = ok(&["datasets"]);
    for name in ["moons", "circles", "8gaussians", "pinwheel", "2spirals", "checkerboard", "rings", "swissroll", "power"] {
        assert!(list.contains(&format!("builtin:{name}")), "{name} listed");
    }
    bad(&["frobnicate"], "frobnicate");
}

#[test]
fn vi_fits_targets_reports_diagnostics_and_plots() {
    let dir = tempfile::tempdir().unwrap();
    for (target, flow) in [("u1", "nsf-coupling"), ("u3", "planar"), ("rosenbrock", "iaf"), ("banana", "radial"), ("u4", "sylvester-householder"), ("banana-strong", "nsf-coupling")] {
        let model = p(dir.path(), &format!("{target}-{flow}.dfo"));
        let v = json(&ok(&["vi", "--target", target, "--flow", flow, "--steps", "60", "--samples", "2000", "--json", "--out", &model]));
        for key in ["elbo", "log_z", "log_z_stderr", "ess_fraction", "khat", "kl"] {
            assert!(v[key].is_number(), "{target}/{flow}: {key} missing in {v}");
        }
        assert!(v["kl"].as_f64().unwrap() > -0.05, "KL(q‖p) ≥ 0 up to noise: {v}");
        // The model samples, and for a box target every sample lies in the box.
        let samples = p(dir.path(), "s.csv");
        ok(&["sample", "--model", &model, "-n", "500", "--out", &samples]);
        if target.starts_with('u') && target != "u1" {
            let text = std::fs::read_to_string(&samples).unwrap();
            let inside = text.lines().flat_map(|l| l.split(',')).filter_map(|x| x.parse::<f64>().ok()).all(|x| x.abs() <= 4.0);
            assert!(inside, "{target}: samples outside the box");
        }
        let fig = p(dir.path(), &format!("{target}.png"));
        ok(&["plot", "--model", &model, "--out", &fig, "-n", "500"]);
        assert!(std::fs::metadata(&fig).unwrap().len() > 1000);
    }
    // The funnel in 10-D with an affine flow: pairwise figure.
    let funnel = p(dir.path(), "funnel.dfo");
    let v = json(&ok(&["vi", "--target", "funnel", "--flow", "iaf", "--steps", "40", "--samples", "1000", "--stl", "--json", "--out", &funnel]));
    assert_eq!(v["dim"], 10);
    ok(&["plot", "--model", &funnel, "--out", &p(dir.path(), "funnel.png"), "-n", "300"]);
    // Bad input: one line, exit 2, nothing written.
    let out = p(dir.path(), "bad.dfo");
    bad(&["vi", "--target", "u9", "--out", &out], "u9");
    bad(&["vi", "--target", "u1", "--dim", "5", "--out", &out], "funnel");
    bad(&["vi", "--target", "u1", "--flow", "planar", "--stl", "--out", &out], "inverse");
    bad(&["vi", "--target", "u1", "--steps", "0", "--out", &out], "steps");
    bad(&["vi", "--target", "u1", "--flow", "iaf", "--spline-tails", "identity", "--out", &out], "--spline-tails is a setting of the nsf-coupling family");
    bad(&["vi", "--target", "u1", "--flow", "planar", "--activation", "elu", "--out", &out], "--activation is a setting of the iaf, realnvp and nsf-coupling families");
    bad(&["vi", "--target", "u1", "--out", &p(dir.path(), "missing/m.dfo")], "does not exist");
    assert!(!Path::new(&out).exists());
}

#[test]
fn bench_prints_the_peer_harness_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (_, model) = small_model(dir.path());
    let data = dir.path().join("toy");
    std::fs::create_dir(&data).unwrap();
    for (k, split) in ["train", "val", "test"].iter().enumerate() {
        ok(&["sample", "--model", &model, "-n", "600", "--seed", &k.to_string(), "--out", &p(&data, &format!("{split}.npy"))]);
    }
    std::fs::write(data.join("meta.json"), r#"{"true_loglik_test": -2.5}"#).unwrap();
    let root = dir.path().display().to_string();
    let results = p(dir.path(), "r.jsonl");
    for config in ["maf-toy", "nsf-toy"] {
        let v = json(&ok(&["bench", "--config", config, "--data-dir", &root, "--steps", "5", "--n-sample", "200", "--threads", "1", "--out", &results]));
        for key in ["steps_per_s", "steady_steps_per_s", "test_ll", "logprob_per_s", "sample_per_s", "peak_rss_mib", "n_params", "first_step_s", "val_ll"] {
            assert!(v[key].is_number(), "{config}: {key} missing in {v}");
        }
        assert_eq!(v["lib"], "diffeo");
        assert_eq!(v["batch"], 512);
        assert_eq!(v["hidden"], 128);
        assert_eq!(v["true_test_ll"], -2.5);
    }
    assert_eq!(std::fs::read_to_string(&results).unwrap().lines().count(), 2);
    bad(&["bench", "--config", "glow-toy", "--data-dir", &root], "maf, nsf or cnf");
    bad(&["bench", "--config", "maf-nothing", "--data-dir", &root], "no such data folder");
}

/// Simulations of θ ~ U(−1, 1)², x = θ + small deterministic noise (a sharp posterior near x).
fn toy_simulations(n: usize) -> String {
    let mut csv = String::from("t1,t2,x1,x2\n");
    for i in 0..n {
        let t1 = ((i * 7919) % 1000) as f64 / 500.0 - 0.999;
        let t2 = ((i * 104_729) % 997) as f64 / 498.5 - 0.999;
        let (e1, e2) = (((i * 31) % 17) as f64 / 170.0 - 0.05, ((i * 37) % 19) as f64 / 190.0 - 0.05);
        csv.push_str(&format!("{t1},{t2},{},{}\n", t1 + e1, t2 + e2));
    }
    csv
}

/// The simulator of `toy_simulations` as a program: x = θ + noise, via awk.
const TOY_SIMULATOR: &str = "awk -F, '{ srand(NR + $1 * 1000); print $1 + (rand() - 0.5) * 0.1 \",\" $2 + (rand() - 0.5) * 0.1 }'";

#[test]
fn posterior_estimation_from_a_simulations_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut csv = toy_simulations(600);
    csv.push_str("2.5,0,2.5,0\n"); // θ outside the prior: dropped with a warning
    csv.push_str("0.5,0.5,nan,0.5\n"); // x not finite: dropped and counted
    let data = write(d, "sims.csv", &csv);
    let model = p(d, "post.dfo");
    let args = ["npe", "--data", &data, "--theta-cols", "t1,t2", "--x-cols", "2-3", "--prior", "uniform:-1:1x2", "--max-epochs", "30", "--batch", "50", "--lr", "3e-3"];
    let out = diffeo(&[&args[..], &["--hidden", "16", "--transforms", "2", "--support", "transform", "--out", &model, "-q"]].concat());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("dropped 1 of 602 simulation(s) whose θ lies outside the prior"), "{err}");
    assert!(err.contains("dropped 1 of 602 simulation(s) with non-finite x"), "{err}");
    // Samples lie inside the prior's support; the observation may start with a minus sign.
    let s = json(&ok(&["posterior", "--model", &model, "--observation", "-0.5,0.3", "-n", "500", "--out", &p(d, "s.csv"), "--json"]));
    assert_eq!(s["samples"], 500);
    assert!(s["acceptance"].as_f64().unwrap() > 0.99, "{s}");
    let samples = std::fs::read_to_string(d.join("s.csv")).unwrap();
    let rows: Vec<Vec<f64>> = samples.lines().skip(1).map(|l| l.split(',').map(|v| v.parse().unwrap()).collect()).collect();
    assert_eq!(rows.len(), 500);
    assert!(rows.iter().all(|r| r.iter().all(|v| v.abs() < 1.0)));
    let mean0 = rows.iter().map(|r| r[0]).sum::<f64>() / 500.0;
    assert!((mean0 + 0.5).abs() < 0.25, "posterior mean {mean0}");
    // Densities: −inf outside the support, finite inside; per-row x from a simulations file.
    let theta = write(d, "theta.csv", "-0.5,0.3\n1.5,0\n");
    ok(&["log-prob", "--model", &model, "--data", &theta, "--observation", "-0.5,0.3", "--out", &p(d, "lp.csv")]);
    let lp: Vec<f64> = std::fs::read_to_string(d.join("lp.csv")).unwrap().lines().skip(1).map(|l| l.parse().unwrap()).collect();
    assert!(lp[0].is_finite(), "{lp:?}");
    assert_eq!(lp[1], f64::NEG_INFINITY);
    let held_out = write(d, "held.csv", &toy_simulations(60));
    ok(&["log-prob", "--model", &model, "--data", &held_out, "--out", &p(d, "lp2.npy")]);
    // The posterior's identity spline tails do not get in the way of a family without splines.
    let maf_args = ["--flow", "maf", "--hidden", "8", "--transforms", "1", "--ensemble", "1", "--max-epochs", "2", "-q"];
    ok(&[&args[..9], &maf_args[..], &["--out", &p(d, "maf.dfo")]].concat());
    // Calibration: ranks, KS, coverage, figures.
    let plots = d.join("figs");
    std::fs::create_dir(&plots).unwrap();
    let c = json(&ok(&["sbc", "--model", &model, "--data", &held_out, "--theta-cols", "0,1", "--x-cols", "2,3", "--samples", "50", "--plots", &plots.display().to_string(), "--json"]));
    assert_eq!(c["pairs"], 60);
    assert_eq!(c["parameters"].as_array().unwrap().len(), 2);
    assert_eq!(c["coverage"].as_array().unwrap().len(), 19);
    assert!(plots.join("ranks-t1.png").exists() && plots.join("coverage.png").exists());
    let info = json(&ok(&["info", "--model", &model, "--json"]));
    assert_eq!(info["posterior"]["prior"], "uniform:-1:1x2");
    assert_eq!(info["posterior"]["dropped_outside"], 1);
    assert_eq!(info["posterior"]["ensemble"], 5);
    assert_eq!((info["training"]["train_rows"].as_u64(), info["training"]["val_rows"].as_u64()), (Some(540), Some(60)));
    let described = ok(&["info", "--model", &model]);
    assert!(described.contains("prior uniform:-1:1x2") && described.contains("the mixture of 5 flows"), "{described}");
    // Rejection (the default) instead of the transform: same interface, acceptance reported.
    let rejected = p(d, "rej.dfo");
    ok(&[&args[..], &["--hidden", "16", "--transforms", "2", "--ensemble", "1", "--standardize-theta", "marginal", "--out", &rejected, "-q"]].concat());
    assert_eq!(json(&ok(&["info", "--model", &rejected, "--json"]))["posterior"]["ensemble"], 1);
    let s = json(&ok(&["posterior", "--model", &rejected, "--observation", "0.9,0.9", "-n", "200", "--out", &p(d, "r.npy"), "--json"]));
    assert!(s["acceptance"].as_f64().unwrap() > 0.0 && s["acceptance"].as_f64().unwrap() <= 1.0);
    // Bad input: one line, exit 2, nothing written.
    let out = p(d, "bad.dfo");
    bad(&["npe", "--data", &data, "--theta-cols", "0,1", "--x-cols", "2,3", "--prior", "uniform:-1:1", "--out", &out], "1 parameter(s)");
    bad(&["npe", "--data", &data, "--theta-cols", "0,1", "--x-cols", "2,3", "--prior", "uniform:1:-1x2", "--out", &out], "prior");
    bad(&["npe", "--data", &data, "--theta-cols", "0,1", "--x-cols", "2,3", "--prior", "beta:1:2x2", "--out", &out], "unknown kind");
    bad(&["npe", "--data", &data, "--prior", "uniform:-1:1x2", "--out", &out], "--theta-cols");
    bad(&["npe", "--data", &data, "--theta-cols", "0,1", "--x-cols", "2,3", "--prior", "uniform:-1:1x2", "--embedding", "deepsets", "--out", &out], "--iid-groups");
    bad(&["npe", "--data", &data, "--theta-cols", "0,1", "--x-cols", "2,3", "--prior", &write(d, "p.json", "{\"bad\": 1}"), "--out", &out], "prior");
    assert!(!d.join("bad.dfo").exists());
    bad(&["posterior", "--model", &model, "--observation", "0.1", "-n", "5", "--out", &p(d, "x.csv")], "1 value(s)");
    bad(&["posterior", "--model", &model, "--observation", "0.1,nan", "-n", "5", "--out", &p(d, "x.csv")], "non-finite");
    bad(&["posterior", "--model", &model, "-n", "5", "--out", &p(d, "x.csv")], "--observation");
    let (_, plain) = small_model(d);
    bad(&["posterior", "--model", &plain, "--observation", "0.1", "-n", "5", "--out", &p(d, "x.csv")], "not a posterior");
    assert!(!d.join("x.csv").exists());
}

#[test]
fn sequential_rounds_run_any_simulator_program_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = p(d, "seq.dfo");
    let sims = p(d, "sims.csv");
    let common = ["npe", "--simulator", TOY_SIMULATOR, "--prior", "uniform:-1:1x2", "--observation", "0.3,-0.4", "--simulations", "600"];
    let small = ["--simulation-batch", "100", "--workers", "2", "--hidden", "16", "--transforms", "2", "--max-epochs", "10", "--simulations-out", &sims];
    let out = diffeo(&[&common[..], &["--rounds", "2"], &small[..], &["--out", &model]].concat());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("round 2: simulating 300 from the truncated prior"), "{err}");
    let file = std::fs::read_to_string(&sims).unwrap();
    assert!(file.starts_with("theta1,theta2,x1,x2,round\n"), "{file}");
    assert_eq!(file.lines().count(), 601);
    assert_eq!(file.lines().filter(|l| l.ends_with(",2")).count(), 300);
    // The posterior remembers its observation.
    let s = json(&ok(&["posterior", "--model", &model, "-n", "100", "--out", &p(d, "s.csv"), "--json"]));
    assert_eq!(s["samples"], 100);
    // The file exists: refuse to overwrite, continue with --resume (nothing is simulated again).
    bad(&[&common[..], &small[..], &["--out", &model]].concat(), "--resume");
    let out = diffeo(&[&common[..], &["--rounds", "2", "--resume"], &small[..], &["--out", &model]].concat());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("resuming from 600 simulation(s)"));
    assert_eq!(std::fs::read_to_string(&sims).unwrap().lines().count(), 601);
    // A simulator that fails on its third batch: exit 1 naming the batch; the first batches stay.
    let failing = p(d, "failing.sims.csv");
    // The script counts its calls in a file next to it.
    let script = write(d, "sim.sh", &format!(
        "n=$(wc -l)\nb=$(cat {dir}/count 2>/dev/null || echo 0)\necho $((b+1)) > {dir}/count\nif [ \"$b\" -ge 2 ]; then echo boom >&2; exit 3; fi\ni=0; while [ $i -lt $n ]; do echo 0.1,0.2; i=$((i+1)); done\n",
        dir = d.display()
    ));
    let fail_third = format!("sh {script}");
    let out = diffeo(&["npe", "--simulator", &fail_third, "--prior", "uniform:-1:1x2", "--simulations", "500", "--simulation-batch", "100", "--simulations-out", &failing, "--out", &p(d, "f.dfo"), "-q"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("simulator batch 3") && err.contains("status 3") && err.contains("boom"), "{err}");
    assert_eq!(std::fs::read_to_string(&failing).unwrap().lines().count(), 201, "two batches kept");
    assert!(!d.join("f.dfo").exists());
    // Garbage, wrong widths, too few rows, a missing program, a hang.
    for (cmd, expect) in [
        ("cat > /dev/null; echo hello,world", "not a number"),
        ("awk -F, '{print $1}'", "1 values"),
        ("head -n 3 | awk '{print 1\",\"2}'", "100 θ rows in, 3 x rows out"),
        ("no-such-simulator-program", "status 127"),
        ("sleep 30", "--simulator-timeout"),
    ] {
        let f = p(d, "g.sims.csv");
        let _ = std::fs::remove_file(&f);
        let out = diffeo(&[
            "npe", "--simulator", cmd, "--prior", "uniform:-1:1x2", "--observation", "0,0", "--simulations", "100", "--simulation-batch", "100",
            "--simulator-timeout", "1", "--simulations-out", &f, "--out", &p(d, "g.dfo"), "-q",
        ]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{cmd}: {err}");
        assert!(err.contains(expect) && err.contains("batch 1"), "{cmd}: {err}");
        assert_eq!(err.lines().count(), 1, "{cmd}: {err}");
    }
    bad(
        &["npe", "--simulator", TOY_SIMULATOR, "--prior", "uniform:-1:1x2", "--observation", "0.3", "--rounds", "2", "--resume", "--simulations-out", &sims, "--out", &model],
        "--observation has 1 value(s)",
    );
    bad(&["npe", "--simulator", "cat", "--prior", "uniform:-1:1x2", "--rounds", "3", "--out", &p(d, "h.dfo")], "--observation");
}

#[test]
fn cnf_fits_by_likelihood_and_flow_matching_reports_nfe_and_refuses_bad_settings() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = small_model(dir.path());
    let ml = p(dir.path(), "cnf.dfo");
    ok(&["fit", "--data", &data, "--flow", "cnf", "--hidden", "16,16", "--steps", "5", "--regularize", "kinetic=0.01,jacobian=0.01", "--gradient", "adjoint", "--out", &ml, "-q"]);
    let fm = p(dir.path(), "cnf-fm.dfo");
    ok(&["fit", "--data", &data, "--flow", "cnf", "--hidden", "16,16", "--trace", "hutchinson", "--objective", "flow-matching", "--pairing", "ot", "--steps", "30", "--out", &fm, "-q"]);
    let e = json(&ok(&["eval", "--model", &ml, "--data", &data, "--json"]));
    assert!(e["nfe"].as_u64().unwrap() > 0, "{e}");
    assert_eq!(json(&ok(&["eval", "--model", &fm, "--data", &data, "--json"]))["log_det"], "estimated");
    let c = json(&ok(&["check", "--model", &ml, "--n", "100", "--json"]));
    assert_eq!(c["pass"], true, "{c}");
    let s = diffeo(&["sample", "--model", &ml, "-n", "10", "--out", &p(dir.path(), "s.csv")]);
    assert!(s.status.success() && text(&s.stderr).contains("NFE"), "{}", text(&s.stderr));
    // Bad settings: exit 2; a solve that hits its step limit: exit 1, no model.
    let out = p(dir.path(), "bad.dfo");
    bad(&["fit", "--data", &data, "--flow", "cnf", "--atol", "0", "--out", &out], "--atol");
    bad(&["fit", "--data", &data, "--flow", "cnf", "--rtol", "nan", "--out", &out], "--rtol");
    bad(&["fit", "--data", &data, "--flow", "cnf", "--regularize", "speed=1", "--out", &out], "kinetic");
    bad(&["fit", "--data", &data, "--flow", "maf", "--regularize", "kinetic=1", "--out", &out], "cnf");
    bad(&["fit", "--data", &data, "--flow", "maf", "--objective", "flow-matching", "--out", &out], "flow matching");
    bad(&["fit", "--data", &data, "--flow", "maf", "--gradient", "adjoint", "--out", &out], "cnf");
    let r = diffeo(&["fit", "--data", &data, "--flow", "cnf", "--max-ode-steps", "2", "--steps", "2", "--out", &out, "-q"]);
    assert_eq!(r.status.code(), Some(1), "{}", text(&r.stderr));
    assert!(text(&r.stderr).contains("step limit"));
    assert!(!Path::new(&out).exists());
}

#[test]
fn residual_flows_fit_check_sample_and_refuse_bad_settings() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = small_model(dir.path());
    let model = p(dir.path(), "res.dfo");
    ok(&["fit", "--data", &data, "--flow", "residual", "--hidden", "16,16", "--transforms", "2", "--steps", "5", "--out", &model, "-q"]);
    let c = json(&ok(&["check", "--model", &model, "--n", "100", "--json"]));
    assert_eq!(c["pass"], true, "{c}");
    assert_eq!(json(&ok(&["eval", "--model", &model, "--data", &data, "--json"]))["log_det"], "exact");
    ok(&["sample", "--model", &model, "-n", "10", "--out", &p(dir.path(), "s.csv")]);
    let series = p(dir.path(), "series.dfo");
    ok(&["fit", "--data", &data, "--flow", "residual", "--hidden", "8", "--transforms", "1", "--logdet", "series", "--series-terms", "4", "--lipschitz", "0.9", "--steps", "3", "--out", &series, "-q"]);
    let out = p(dir.path(), "bad.dfo");
    bad(&["fit", "--data", &data, "--flow", "residual", "--lipschitz", "1.5", "--out", &out], "--lipschitz");
    bad(&["fit", "--data", &data, "--flow", "residual", "--lipschitz", "0", "--out", &out], "--lipschitz");
    bad(&["fit", "--data", &data, "--flow", "residual", "--series-terms", "0", "--out", &out], "--series-terms");
    bad(&["fit", "--data", &data, "--flow", "maf", "--logdet", "series", "--out", &out], "residual");
    bad(&["fit", "--data", &data, "--flow", "residual", "--activation", "tanh", "--out", &out], "LipSwish");
    assert!(!Path::new(&out).exists());

    // A model whose stored architecture was edited to allow one fixed-point iteration (the
    // checksum covers the weights, not the architecture): sampling fails with one clear line
    // (exit 1, as every solver that does not converge) and writes nothing; `check` solves to its
    // own tolerance and limit, so it still passes.
    let mut bytes = std::fs::read(&model).unwrap();
    let (from, to) = (b"max_iterations\\\":1000".as_slice(), b"max_iterations\\\":1   ".as_slice());
    let mut edited = 0;
    while let Some(i) = bytes.windows(from.len()).position(|w| w == from) {
        bytes[i..i + to.len()].copy_from_slice(to);
        edited += 1;
    }
    assert_eq!(edited, 2, "one iteration limit per residual block");
    let forced = p(dir.path(), "forced.dfo");
    std::fs::write(&forced, &bytes).unwrap();
    let samples = p(dir.path(), "forced.csv");
    let r = diffeo(&["sample", "--model", &forced, "-n", "10", "--out", &samples]);
    let err = text(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{err}");
    assert!(err.contains("fixed-point inverse did not converge in 1 iterations") && err.trim().lines().count() == 1, "{err}");
    assert!(!Path::new(&samples).exists());
    assert_eq!(json(&ok(&["check", "--model", &forced, "--n", "20", "--json"]))["pass"], true);
}

#[test]
fn non_affine_autoregressive_flows_fit_check_sample_and_refuse_bad_settings() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = small_model(dir.path());
    for (flow, sizes) in [("naf", ["--components", "3"]), ("umnn", ["--integrand-hidden", "4"]), ("sos", ["--polynomials", "2"])] {
        let model = p(dir.path(), &format!("{flow}.dfo"));
        ok(&["fit", "--data", &data, "--flow", flow, sizes[0], sizes[1], "--hidden", "16", "--transforms", "2", "--steps", "5", "--out", &model, "-q"]);
        let c = json(&ok(&["check", "--model", &model, "--n", "100", "--json"]));
        assert_eq!(c["pass"], true, "{flow}: {c}");
        assert!(json(&ok(&["eval", "--model", &model, "--data", &data, "--json"]))["log_likelihood"].as_f64().unwrap().is_finite());
        ok(&["sample", "--model", &model, "-n", "20", "--out", &p(dir.path(), &format!("{flow}.csv"))]);
    }
    let bnaf = p(dir.path(), "bnaf.dfo");
    ok(&["fit", "--data", &data, "--flow", "bnaf", "--block-dim", "4", "--steps", "5", "--out", &bnaf, "-q"]);
    assert_eq!(json(&ok(&["check", "--model", &bnaf, "--n", "100", "--json"]))["pass"], true);
    let samples = p(dir.path(), "bnaf.csv");
    bad(&["sample", "--model", &bnaf, "-n", "10", "--out", &samples], "evaluate densities only");
    assert!(!Path::new(&samples).exists());
    // A resampled base on any family: fit, evaluate, sample, check.
    let lars = p(dir.path(), "lars.dfo");
    ok(&["fit", "--data", &data, "--flow", "nsf", "--base", "resampled", "--hidden", "8", "--transforms", "1", "--steps", "5", "--out", &lars, "-q"]);
    assert!(json(&ok(&["eval", "--model", &lars, "--data", &data, "--json"]))["log_likelihood"].as_f64().unwrap().is_finite());
    ok(&["sample", "--model", &lars, "-n", "20", "--out", &p(dir.path(), "lars.csv")]);
    assert_eq!(json(&ok(&["check", "--model", &lars, "--n", "50", "--json"]))["pass"], true);
    let out = p(dir.path(), "bad.dfo");
    bad(&["fit", "--data", &data, "--base", "uniform", "--out", &out], "--base");
    bad(&["fit", "--data", &data, "--flow", "maf", "--components", "4", "--out", &out], "--components is a setting of the naf family");
    bad(&["fit", "--data", &data, "--flow", "naf", "--spline-tails", "identity", "--out", &out], "--spline-tails is a setting of the nsf families");
    bad(&["fit", "--data", &data, "--flow", "naf", "--nodes", "8", "--out", &out], "--nodes is a setting of the umnn family");
    bad(&["fit", "--data", &data, "--flow", "umnn", "--nodes", "1", "--out", &out], "--nodes");
    bad(&["fit", "--data", &data, "--flow", "sos", "--degree", "0", "--out", &out], "--degree");
    bad(&["fit", "--data", &data, "--flow", "bnaf", "--hidden", "8", "--out", &out], "bnaf takes no");
    assert!(!Path::new(&out).exists());
}

/// An IDX file (gzip) of `n` images `side`×`side` (or of `n` labels when `side` is 0).
fn idx_file(d: &Path, name: &str, n: usize, side: usize, value: impl Fn(usize) -> u8) -> String {
    let mut idx = vec![0u8, 0, 8, if side > 0 { 3 } else { 1 }];
    idx.extend((n as u32).to_be_bytes());
    if side > 0 {
        for _ in 0..2 {
            idx.extend((side as u32).to_be_bytes());
        }
    }
    idx.extend((0..n * side.max(1) * side.max(1)).map(value));
    let path = d.join(name);
    {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(std::fs::File::create(&path).unwrap(), flate2::Compression::default());
        e.write_all(&idx).unwrap();
        e.finish().unwrap();
    }
    path.display().to_string()
}

#[test]
fn image_flows_fit_sample_plot_and_refuse_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 8×8 "images": a bright square whose place depends on the class.
    let n = 96;
    let class = |i: usize| i % 3;
    let images = idx_file(d, "train-images-idx3-ubyte.gz", n, 8, |k| {
        let (i, pix) = (k / 64, k % 64);
        let (r, c) = (pix / 8, pix % 8);
        let at = 2 * class(i);
        if (at..at + 3).contains(&r) && (at..at + 3).contains(&c) { 200 + (k % 50) as u8 } else { (k * 7 % 20) as u8 }
    });
    let labels = idx_file(d, "train-labels-idx1-ubyte.gz", n, 0, |i| class(i) as u8);
    let sizes = ["--levels", "2", "--steps-per-level", "1", "--hidden-channels", "4", "--steps", "5", "--dequantize", "-q"];
    for flow in ["glow", "realnvp-image"] {
        let model = p(d, &format!("{flow}.dfo"));
        let mut args = vec!["fit", "--data", &images, "--flow", flow, "--out", &model];
        args.extend(sizes);
        ok(&args);
        let e = json(&ok(&["eval", "--model", &model, "--data", &images, "--bits-per-dim", "--json"]));
        for key in ["bits_per_dim", "bits_per_dim_stderr", "log_likelihood", "n"] {
            assert!(e.get(key).is_some(), "{flow}: eval lacks {key}: {e}");
        }
        let bpd = e["bits_per_dim"].as_f64().unwrap();
        assert!(bpd > 0.0 && bpd < 12.0, "{flow}: bits/dim {bpd}");
        assert_eq!(json(&ok(&["check", "--model", &model, "--n", "50", "--json"]))["pass"], true, "{flow}");
        let info = json(&ok(&["info", "--model", &model, "--json"]));
        assert_eq!(info["event"], "[1, 8, 8]");
        // Samples: a PNG grid, raw arrays, at a temperature.
        let grid = p(d, &format!("{flow}.png"));
        ok(&["sample", "--model", &model, "-n", "9", "--temperature", "0.7", "--out", &grid]);
        assert!(std::fs::metadata(&grid).unwrap().len() > 100);
        ok(&["sample", "--model", &model, "-n", "3", "--out", &p(d, "s.npy")]);
        ok(&["plot", "--model", &model, "--data", &images, "--n", "9", "--out", &p(d, &format!("{flow}-plot.png"))]);
    }
    // A resumed image model keeps its family's defaults (not --flow's): validation in bits/dim.
    let resumed = p(d, "resumed.dfo");
    // `--average-decay 0` turns the family's averaging off (1 is no decay).
    let out = diffeo(&["fit", "--data", &images, "--resume", &p(d, "glow.dfo"), "--steps", "4", "--average-decay", "0", "--out", &resumed]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("val bits/dim"), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("bits/dim"), "{}", text(&out.stdout));
    bad(&["fit", "--data", &images, "--resume", &p(d, "glow.dfo"), "--average-decay", "1", "--out", &p(d, "no.dfo")], "[0, 1)");
    // Learned dequantization noise, plain 1×1 convolutions: the bound with 16 draws per image.
    let vd = p(d, "vd.dfo");
    let mut args = vec!["fit", "--data", &images, "--flow", "glow", "--variational-dequantization", "--plain-conv1x1", "--out", &vd];
    args.extend(sizes);
    ok(&args);
    let e = json(&ok(&["eval", "--model", &vd, "--data", &images, "--bits-per-dim", "--json"]));
    assert_eq!(e["importance_samples"], 16, "{e}");
    let bpd = e["bits_per_dim"].as_f64().unwrap();
    assert!(bpd > 0.0 && bpd < 12.0, "variational dequantization: bits/dim {bpd}");
    assert!(ok(&["info", "--model", &vd]).contains("variational dequantization (4 couplings"));
    assert!(ok(&["info", "--model", &vd]).contains("PlainConv1x1"));
    assert_eq!(json(&ok(&["check", "--model", &vd, "--n", "50", "--json"]))["pass"], true);
    let none = p(d, "none.dfo");
    bad(&["fit", "--data", &images, "--flow", "glow", "--variational-dequantization", "--out", &none], "--dequantize");
    let mut args = vec!["fit", "--data", &images, "--flow", "realnvp-image", "--plain-conv1x1", "--out", &none];
    args.extend(sizes);
    bad(&args, "no 1×1 convolutions");
    assert!(!Path::new(&none).exists());
    // Class-conditional: the labels are the context.
    let cond = p(d, "cond.dfo");
    let mut args = vec!["fit", "--data", &images, "--labels", &labels, "--flow", "glow", "--out", &cond];
    args.extend(sizes);
    ok(&args);
    let e = json(&ok(&["eval", "--model", &cond, "--data", &images, "--labels", &labels, "--bits-per-dim", "--json"]));
    assert_eq!(e["n"], n);
    ok(&["sample", "--model", &cond, "-n", "4", "--label", "2", "--out", &p(d, "c.png")]);
    bad(&["eval", "--model", &cond, "--data", &images], "--labels");
    bad(&["sample", "--model", &cond, "-n", "4", "--label", "3", "--out", &p(d, "c.png")], "beyond");
    let short = idx_file(d, "short-labels-idx1-ubyte.gz", n - 1, 0, |i| class(i) as u8);
    let none = p(d, "none.dfo");
    let mut args = vec!["fit", "--data", &images, "--labels", &short, "--flow", "glow", "--out", &none];
    args.extend(sizes);
    bad(&args, "labels for the");
    assert!(!Path::new(&none).exists());
    // Image families need images they can squeeze; their sizes are their own flags.
    let (csv, _) = small_model(d);
    bad(&["fit", "--data", &csv, "--flow", "glow", "--out", &none], "models images");
    bad(&["fit", "--data", &images, "--flow", "glow", "--levels", "4", "--dequantize", "--out", &none], "cannot be squeezed");
    bad(&["fit", "--data", &images, "--flow", "glow", "--transforms", "2", "--dequantize", "--out", &none], "--levels");
    bad(&["fit", "--data", &csv, "--flow", "maf", "--hidden-channels", "8", "--out", &none], "image families");
    bad(&["sample", "--model", &p(d, "small.dfo"), "-n", "4", "--out", &p(d, "x.png")], "image grid");
    // A model of 8×8 images refuses 4×4 ones.
    let small = idx_file(d, "small-images-idx3-ubyte.gz", 10, 4, |k| k as u8);
    bad(&["eval", "--model", &p(d, "glow.dfo"), "--data", &small], "column");
    assert!(!Path::new(&none).exists());
}

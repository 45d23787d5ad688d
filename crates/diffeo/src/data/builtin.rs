//! Built-in data sets: the 2-D toys of the FFJORD and NSF papers (fixed seeds, fixed rows) and
//! the real UCI data sets with MAF's preprocessing and splits, read from a data folder.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{bail, data_err, open, read_file, read_npy, Table};
use crate::error::Result;

/// Which part of a built-in data set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Val,
    Test,
}

impl Split {
    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "train" => Split::Train,
            "val" | "validation" => Split::Val,
            "test" => Split::Test,
            other => bail!("unknown split {other:?} (train, val, test)"),
        })
    }
}

/// A built-in data set.
pub struct Builtin {
    pub name: &'static str,
    pub dim: usize,
    pub about: &'static str,
    /// Relative path under the data root, for the real data sets.
    pub file: Option<&'static str>,
}

/// Every built-in data set.
pub const BUILTINS: &[Builtin] = &[
    Builtin { name: "moons", dim: 2, about: "FFJORD two moons: make_moons(noise 0.1)·2 − (1, 0.2)", file: None },
    Builtin { name: "circles", dim: 2, about: "FFJORD circles: make_circles(factor 0.5, noise 0.08)·3", file: None },
    Builtin { name: "8gaussians", dim: 2, about: "FFJORD eight Gaussians: centres 4·(cos, sin)(kπ/4), σ 0.5, all /1.414", file: None },
    Builtin { name: "pinwheel", dim: 2, about: "FFJORD pinwheel, 5 arms", file: None },
    Builtin { name: "2spirals", dim: 2, about: "FFJORD two spirals", file: None },
    Builtin { name: "checkerboard", dim: 2, about: "FFJORD checkerboard on [−4, 4]²", file: None },
    Builtin { name: "rings", dim: 2, about: "four concentric rings of radii 3, 2.25, 1.5, 0.75, noise 0.08", file: None },
    Builtin { name: "swissroll", dim: 2, about: "FFJORD swiss roll: t = 1.5π(1 + 2U), (t cos t, t sin t) + N(0, 1), /5", file: None },
    Builtin {
        name: "power",
        dim: 6,
        about: "UCI household power, MAF preprocessing (standardized units)",
        file: Some("power/householdpower.csv.gz"),
    },
    Builtin { name: "miniboone", dim: 43, about: "MINIBOONE from MAF's data.npy, MAF splits", file: Some("miniboone/data.npy") },
    Builtin { name: "hepmass", dim: 21, about: "HEPMASS from the UCI 1000_train/1000_test CSVs, MAF preprocessing", file: Some("hepmass/1000_train.csv") },
];

/// Number of rows of each split of a 2-D toy.
pub const TOY_ROWS: [(Split, usize, u64); 3] = [(Split::Train, 50_000, 1), (Split::Val, 5_000, 2), (Split::Test, 10_000, 3)];

/// The data folder: `--data-root`, else `DIFFEO_DATA`.
pub fn data_root(flag: Option<&Path>) -> Option<PathBuf> {
    flag.map(Path::to_path_buf).or_else(|| std::env::var_os("DIFFEO_DATA").map(PathBuf::from))
}

/// `builtin:NAME[:SPLIT]` → the table of that split (`default_split` when none is named).
pub fn load_builtin(spec: &str, default_split: Split, root: Option<&Path>) -> Result<Table> {
    let mut parts = spec.splitn(2, ':');
    let name = parts.next().unwrap_or_default();
    let split = match parts.next() {
        Some(s) => Split::parse(s)?,
        None => default_split,
    };
    let Some(b) = BUILTINS.iter().find(|b| b.name == name) else {
        bail!("unknown built-in data set {name:?}; `diffeo datasets` lists them");
    };
    let source = format!("builtin:{name}:{}", match split {
        Split::Train => "train",
        Split::Val => "val",
        Split::Test => "test",
    });
    let Some(file) = b.file else {
        let (_, n, seed) = TOY_ROWS.iter().copied().find(|(s, _, _)| *s == split).expect("all splits");
        let mut rng = StdRng::seed_from_u64(seed);
        let values = crate::datasets::toy(name, n, &mut rng).ok_or_else(|| data_err!("unknown toy {name}"))?;
        return Ok(Table::new(values, 2, source));
    };
    let root = data_root(root).ok_or_else(|| {
        data_err!("builtin:{name} needs the data folder: pass --data-root DIR or set DIFFEO_DATA (DIR/{file})")
    })?;
    let [train, val, test] = match name {
        "power" => power_splits(&root)?,
        "miniboone" => miniboone_splits(&root)?,
        _ => hepmass_splits(&root)?,
    };
    let t = match split {
        Split::Train => train,
        Split::Val => val,
        Split::Test => test,
    };
    Ok(Table::new(t.values, t.cols, source))
}

/// Statistics of the rows of several tables (population std; a constant column is only
/// centred).
fn stats(tables: &[&Table]) -> crate::flow::Standardization {
    let rows: Vec<f64> = tables.iter().flat_map(|t| t.values.iter().copied()).collect();
    crate::flow::Standardization::of(&rows, tables[0].cols).unwrap_or_else(|_| crate::flow::Standardization {
        mean: vec![0.0; tables[0].cols],
        std: vec![1.0; tables[0].cols],
    })
}

/// Last 10% test, last 10% of the rest validation (MAF's splits, after any shuffle).
fn split_tail(t: &Table) -> [Table; 3] {
    let n = t.rows();
    let n_test = n / 10;
    let rest = n - n_test;
    let n_val = rest / 10;
    let idx = |a: usize, b: usize| t.take_rows(&(a..b).collect::<Vec<_>>());
    [idx(0, rest - n_val), idx(rest - n_val, rest), idx(rest, n)]
}

/// Reads the UCI table `date_time,active,reactive,voltage,intensity,sub1,sub2,sub3` into
/// `[active, reactive, voltage, intensity, sub1, sub2, sub3, minute-of-day]`.
pub fn read_power_csv(reader: impl Read, source: &str) -> Result<Table> {
    let reader = BufReader::new(reader);
    let mut values = Vec::new();
    for (k, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| data_err!("{source}: cannot read line {}: {e}", k + 1))?;
        if k == 0 || line.trim().is_empty() {
            continue;
        }
        let p: Vec<&str> = line.split(',').collect();
        if p.len() != 8 || p[0].len() < 16 {
            bail!("{source}: line {} is not `date_time,<7 numbers>`", k + 1);
        }
        let (hh, mm) = (p[0].get(11..13), p[0].get(14..16));
        let minute = match (hh.and_then(|h| h.parse::<f64>().ok()), mm.and_then(|m| m.parse::<f64>().ok())) {
            (Some(h), Some(m)) => h * 60.0 + m,
            _ => bail!("{source}: line {}: bad time {:?}", k + 1, p[0]),
        };
        for c in &p[1..8] {
            values.push(c.trim().parse::<f64>().map_err(|_| data_err!("{source}: line {}: {c:?} is not a number", k + 1))?);
        }
        values.push(minute);
    }
    Ok(Table::new(values, 8, source))
}

/// MAF's POWER pipeline on the 8-column table: shuffle; drop intensity and reactive power;
/// uniform noise (active 0.001, voltage 0.01, sub-meterings 1, time 0); split; standardize by
/// train+validation statistics. The shuffle and noise use our generator (seed 42).
pub fn power_pipeline(raw: &Table) -> [Table; 3] {
    let mut rng = StdRng::seed_from_u64(42);
    let mut order: Vec<usize> = (0..raw.rows()).collect();
    rand::seq::SliceRandom::shuffle(order.as_mut_slice(), &mut rng);
    let kept = [0usize, 2, 4, 5, 6, 7];
    let noise = [0.001, 0.01, 1.0, 1.0, 1.0, 0.0];
    let mut values = Vec::with_capacity(order.len() * 6);
    for &i in &order {
        let r = raw.row(i);
        for (c, s) in kept.iter().zip(noise) {
            values.push(r[*c] + s * rng.random::<f64>());
        }
    }
    let t = Table::new(values, 6, raw.source.clone());
    let [mut train, mut val, mut test] = split_tail(&t);
    let s = stats(&[&train, &val]);
    for t in [&mut train, &mut val, &mut test] {
        s.apply(&mut t.values);
    }
    [train, val, test]
}

fn power_splits(root: &Path) -> Result<[Table; 3]> {
    let npy = root.join("power/data.npy");
    let raw = if npy.exists() {
        read_npy(open(&npy)?, &npy.display().to_string())?
    } else {
        let csv = root.join("power/householdpower.csv.gz");
        let plain = root.join("power/householdpower.csv");
        let path = if csv.exists() { csv } else { plain };
        if !path.exists() {
            bail!("builtin:power: {} not found", root.join("power/householdpower.csv.gz").display());
        }
        read_power_csv(open(&path)?, &path.display().to_string())?
    };
    if raw.cols != 8 {
        bail!("{}: POWER needs 8 columns (7 measurements and the minute of day), found {}", raw.source, raw.cols);
    }
    let (raw, _) = raw.drop_nonfinite();
    Ok(power_pipeline(&raw))
}

/// Drops features whose most frequent value occurs more than 5 times (MAF's filter).
fn too_many_repeats(t: &Table) -> Vec<usize> {
    (0..t.cols)
        .filter(|&j| {
            let mut counts = std::collections::HashMap::new();
            for i in 0..t.rows() {
                *counts.entry(t.row(i)[j].to_bits()).or_insert(0usize) += 1;
            }
            counts.values().copied().max().unwrap_or(0) <= 5
        })
        .collect()
}

/// MAF's MINIBOONE pipeline on its `data.npy` (43 columns, already filtered): no shuffle, MAF's
/// splits, standardized by train+validation statistics.
pub fn miniboone_pipeline(raw: &Table) -> [Table; 3] {
    let [mut train, mut val, mut test] = split_tail(raw);
    let s = stats(&[&train, &val]);
    for t in [&mut train, &mut val, &mut test] {
        s.apply(&mut t.values);
    }
    [train, val, test]
}

fn miniboone_splits(root: &Path) -> Result<[Table; 3]> {
    let path = root.join("miniboone/data.npy");
    if !path.exists() {
        bail!("builtin:miniboone: {} not found", path.display());
    }
    let raw = read_npy(open(&path)?, &path.display().to_string())?;
    let keep: Vec<usize> = (0..raw.rows()).filter(|&i| raw.row(i)[0] >= -100.0).collect();
    Ok(miniboone_pipeline(&raw.take_rows(&keep)))
}

/// MAF's HEPMASS pipeline: positive class (label column 0 equal to 1) without the label; the
/// test file's last column dropped; standardized by train statistics; features with a value
/// repeated more than 5 times (in train) removed; validation = last 10% of train.
pub fn hepmass_pipeline(train_raw: &Table, test_raw: &Table) -> Result<[Table; 3]> {
    let positive = |t: &Table, drop_last: bool| {
        let rows: Vec<usize> = (0..t.rows()).filter(|&i| t.row(i)[0] == 1.0).collect();
        let end = if drop_last { t.cols - 1 } else { t.cols };
        t.take_rows(&rows).select(&(1..end).collect::<Vec<_>>())
    };
    let mut train = positive(train_raw, false);
    let mut test = positive(test_raw, true);
    if train.cols != test.cols {
        bail!("HEPMASS: train has {} features, test {} after dropping its last column", train.cols, test.cols);
    }
    if train.rows() < 10 || test.rows() == 0 {
        bail!("HEPMASS: too few positive rows");
    }
    let s = stats(&[&train]);
    s.apply(&mut train.values);
    s.apply(&mut test.values);
    let keep = too_many_repeats(&train);
    let train = train.select(&keep);
    let test = test.select(&keep);
    let n_val = train.rows() / 10;
    let n = train.rows();
    let val = train.take_rows(&(n - n_val..n).collect::<Vec<_>>());
    let train = train.take_rows(&(0..n - n_val).collect::<Vec<_>>());
    Ok([train, val, test])
}

fn hepmass_splits(root: &Path) -> Result<[Table; 3]> {
    let find = |name: &str| {
        let p = root.join("hepmass").join(name);
        let gz = root.join("hepmass").join(format!("{name}.gz"));
        if p.exists() { Ok(p) } else if gz.exists() { Ok(gz) } else { Err(data_err!("builtin:hepmass: {} not found", p.display())) }
    };
    let train = read_file(&find("1000_train.csv")?)?;
    let test = read_file(&find("1000_test.csv")?)?;
    hepmass_pipeline(&train, &test)
}


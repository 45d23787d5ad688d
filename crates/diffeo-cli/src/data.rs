//! Reading and writing data tables: CSV (comma or whitespace, optional header), NPY (C order),
//! MNIST IDX, each optionally gzip-compressed; built-in data sets; column selection.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A numeric table, row-major.
#[derive(Clone, Debug)]
pub struct Table {
    /// Row-major values.
    pub values: Vec<f64>,
    /// Columns.
    pub cols: usize,
    /// Column names, when the file had a header.
    pub names: Option<Vec<String>>,
    /// Where the rows came from (for messages).
    pub source: String,
    /// Line number in the file of each row (1-based; for CSV messages), if known.
    pub lines: Option<Vec<usize>>,
    /// The file held 8-bit images (IDX), values are raw pixels.
    pub images: bool,
}

impl Table {
    /// A table from values.
    pub fn new(values: Vec<f64>, cols: usize, source: impl Into<String>) -> Self {
        Self { values, cols, names: None, source: source.into(), lines: None, images: false }
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.values.len().checked_div(self.cols).unwrap_or(0)
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f64] {
        &self.values[i * self.cols..(i + 1) * self.cols]
    }

    /// Describes row `i` for messages ("line 12" for text files, "row 11" otherwise).
    pub fn where_row(&self, i: usize) -> String {
        match &self.lines {
            Some(l) => format!("line {}", l[i]),
            None => format!("row {}", i + 1),
        }
    }

    /// The given columns, in that order.
    pub fn select(&self, cols: &[usize]) -> Table {
        let n = self.rows();
        let mut values = Vec::with_capacity(n * cols.len());
        for i in 0..n {
            let r = self.row(i);
            values.extend(cols.iter().map(|&c| r[c]));
        }
        Table {
            values,
            cols: cols.len(),
            names: self.names.as_ref().map(|names| cols.iter().map(|&c| names[c].clone()).collect()),
            source: self.source.clone(),
            lines: self.lines.clone(),
            images: self.images,
        }
    }

    /// The given rows.
    pub fn take_rows(&self, rows: &[usize]) -> Table {
        let mut values = Vec::with_capacity(rows.len() * self.cols);
        for &i in rows {
            values.extend_from_slice(self.row(i));
        }
        Table {
            values,
            cols: self.cols,
            names: self.names.clone(),
            source: self.source.clone(),
            lines: self.lines.as_ref().map(|l| rows.iter().map(|&i| l[i]).collect()),
            images: self.images,
        }
    }

    /// Fails on the first non-finite value, naming its row and column.
    pub fn check_finite(&self) -> Result<()> {
        self.select_finite_check(&(0..self.cols).collect::<Vec<_>>())
    }

    /// Fails on the first non-finite value among the given columns, naming its row and its
    /// column in the file.
    pub fn select_finite_check(&self, cols: &[usize]) -> Result<()> {
        for i in 0..self.rows() {
            let r = self.row(i);
            if let Some(&j) = cols.iter().find(|&&j| !r[j].is_finite()) {
                bail!(
                    "{}: {}, column {} holds a non-finite value ({}); remove it or pass --drop-nonfinite",
                    self.source,
                    self.where_row(i),
                    self.column_label(j),
                    r[j]
                );
            }
        }
        Ok(())
    }

    /// Indices of the rows whose values in `cols` are all finite.
    pub fn finite_rows(&self, cols: &[usize]) -> Vec<usize> {
        (0..self.rows()).filter(|&i| cols.iter().all(|&c| self.row(i)[c].is_finite())).collect()
    }

    /// Rows whose values are all finite; returns the table and the number dropped.
    pub fn drop_nonfinite(&self) -> (Table, usize) {
        let keep = self.finite_rows(&(0..self.cols).collect::<Vec<_>>());
        let dropped = self.rows() - keep.len();
        (self.take_rows(&keep), dropped)
    }

    fn column_label(&self, j: usize) -> String {
        match &self.names {
            Some(n) => format!("{} ({:?})", j, n[j]),
            None => j.to_string(),
        }
    }
}

fn open(path: &Path) -> Result<Box<dyn Read>> {
    let file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    if path.extension().is_some_and(|e| e == "gz") {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(file))))
    } else {
        Ok(Box::new(BufReader::new(file)))
    }
}

/// The extension that decides the format (`csv` for `x.csv.gz`).
fn format_extension(path: &Path) -> String {
    let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
    let name = name.strip_suffix(".gz").unwrap_or(&name);
    if name.contains("idx") && name.contains("ubyte") {
        return "idx".into();
    }
    Path::new(name).extension().map(|e| e.to_string_lossy().to_string()).unwrap_or_default()
}

/// Reads a table from a file; the format follows the extension (`.npy`, `.csv`/`.txt`/`.tsv`/
/// `.dat`, MNIST `*idx*-ubyte`), with an optional `.gz`.
pub fn read_file(path: &Path) -> Result<Table> {
    if !path.exists() {
        bail!("{}: no such file", path.display());
    }
    if path.is_dir() {
        bail!("{}: is a folder, not a data file", path.display());
    }
    let source = path.display().to_string();
    let table = match format_extension(path).as_str() {
        "npy" => read_npy(open(path)?, &source)?,
        "idx" => read_idx(open(path)?, &source)?,
        _ => read_text(open(path)?, &source)?,
    };
    if table.rows() == 0 || table.cols == 0 {
        bail!("{source}: no data rows");
    }
    Ok(table)
}

/// CSV or whitespace-separated text; a first line that is not all numbers is a header.
pub fn read_text(reader: impl Read, source: &str) -> Result<Table> {
    let reader = BufReader::new(reader);
    let mut values = Vec::new();
    let mut lines = Vec::new();
    let mut cols = 0usize;
    let mut names = None;
    let mut delimiter: Option<Option<char>> = None; // Some(None): whitespace
    for (k, line) in reader.lines().enumerate() {
        let line_no = k + 1;
        let line = line.with_context(|| format!("{source}: cannot read line {line_no} (not a text file?)"))?;
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') && !(lines.is_empty() && names.is_none()) {
            continue;
        }
        let delim = *delimiter.get_or_insert_with(|| {
            if trimmed.contains(',') {
                Some(',')
            } else if trimmed.contains(';') {
                Some(';')
            } else if trimmed.contains('\t') {
                Some('\t')
            } else {
                None
            }
        });
        let cells: Vec<&str> = match delim {
            Some(c) => trimmed.split(c).map(|s| s.trim().trim_matches('"')).collect(),
            None => trimmed.split_whitespace().collect(),
        };
        let parsed: Vec<Option<f64>> = cells.iter().map(|c| parse_cell(c)).collect();
        if lines.is_empty() && names.is_none() && parsed.iter().any(Option::is_none) {
            names = Some(cells.iter().map(|c| c.trim_start_matches('#').trim().to_string()).collect::<Vec<_>>());
            cols = cells.len();
            continue;
        }
        if cols == 0 {
            cols = cells.len();
        }
        if cells.len() != cols {
            bail!("{source}: line {line_no} has {} columns, expected {cols} (ragged rows)", cells.len());
        }
        for (j, (p, c)) in parsed.iter().zip(&cells).enumerate() {
            match p {
                Some(v) => values.push(*v),
                None => bail!("{source}: line {line_no}, column {j}: {c:?} is not a number"),
            }
        }
        lines.push(line_no);
    }
    Ok(Table { values, cols, names, source: source.to_string(), lines: Some(lines), images: false })
}

/// A number, or NaN for an empty cell / NA marker; `None` if not numeric.
fn parse_cell(c: &str) -> Option<f64> {
    if c.is_empty() || c.eq_ignore_ascii_case("na") || c.eq_ignore_ascii_case("nan") || c == "?" {
        return Some(f64::NAN);
    }
    c.parse::<f64>().ok()
}

/// NPY: f32, f64 or integer arrays of rank 1 (one column) or 2, C order.
pub fn read_npy(mut reader: impl Read, source: &str) -> Result<Table> {
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes).with_context(|| format!("cannot read {source}"))?;
    let npy = npyz::NpyFile::new(&bytes[..]).map_err(|e| anyhow!("{source}: not a valid .npy file ({e})"))?;
    let shape = npy.shape().to_vec();
    if npy.order() == npyz::Order::Fortran && shape.len() > 1 {
        bail!("{source}: Fortran-order arrays are not supported; save with numpy.ascontiguousarray");
    }
    let (rows, cols) = match shape.as_slice() {
        [n] => (*n as usize, 1),
        [n, d] => (*n as usize, *d as usize),
        other => bail!("{source}: expected a 1-D or 2-D array, found shape {other:?}"),
    };
    let npyz::DType::Plain(ts) = npy.dtype() else {
        bail!("{source}: structured arrays are not supported");
    };
    let descr = ts.to_string();
    let err = |e: std::io::Error| anyhow!("{source}: cannot read the array ({e})");
    let values: Vec<f64> = match (ts.type_char(), ts.size_field()) {
        (npyz::TypeChar::Float, 8) => npy.into_vec::<f64>().map_err(err)?,
        (npyz::TypeChar::Float, 4) => npy.into_vec::<f32>().map_err(err)?.into_iter().map(f64::from).collect(),
        (npyz::TypeChar::Int, 8) => npy.into_vec::<i64>().map_err(err)?.into_iter().map(|v| v as f64).collect(),
        (npyz::TypeChar::Int, 4) => npy.into_vec::<i32>().map_err(err)?.into_iter().map(f64::from).collect(),
        (npyz::TypeChar::Uint, 1) => npy.into_vec::<u8>().map_err(err)?.into_iter().map(f64::from).collect(),
        _ => bail!("{source}: unsupported dtype {descr} (use float32 or float64)"),
    };
    if values.len() != rows * cols {
        bail!("{source}: truncated array ({} of {} values)", values.len(), rows * cols);
    }
    Ok(Table::new(values, cols, source))
}

/// MNIST IDX: `[n, rows, cols]` images flattened to `rows·cols` columns (raw pixel values), or
/// `[n]` labels.
pub fn read_idx(mut reader: impl Read, source: &str) -> Result<Table> {
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes).with_context(|| format!("cannot read {source}"))?;
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        bail!("{source}: not an IDX file (bad magic number)");
    }
    let (ty, rank) = (bytes[2], bytes[3] as usize);
    let size = match ty {
        0x08 | 0x09 => 1,
        0x0B => 2,
        0x0C | 0x0D => 4,
        0x0E => 8,
        _ => bail!("{source}: unknown IDX element type {ty:#04x}"),
    };
    if rank == 0 || bytes.len() < 4 + 4 * rank {
        bail!("{source}: truncated IDX header");
    }
    let dims: Vec<usize> = (0..rank)
        .map(|k| u32::from_be_bytes(bytes[4 + 4 * k..8 + 4 * k].try_into().expect("4 bytes")) as usize)
        .collect();
    let count: usize = dims.iter().product();
    let body = &bytes[4 + 4 * rank..];
    if body.len() < count * size {
        bail!("{source}: truncated IDX data ({} of {} bytes)", body.len(), count * size);
    }
    let values: Vec<f64> = match ty {
        0x08 => body[..count].iter().map(|&b| b as f64).collect(),
        0x09 => body[..count].iter().map(|&b| b as i8 as f64).collect(),
        0x0B => body.chunks_exact(2).take(count).map(|c| i16::from_be_bytes([c[0], c[1]]) as f64).collect(),
        0x0C => body.chunks_exact(4).take(count).map(|c| i32::from_be_bytes(c.try_into().expect("4")) as f64).collect(),
        0x0D => body.chunks_exact(4).take(count).map(|c| f32::from_be_bytes(c.try_into().expect("4")) as f64).collect(),
        _ => body.chunks_exact(8).take(count).map(|c| f64::from_be_bytes(c.try_into().expect("8"))).collect(),
    };
    let cols = if rank == 1 { 1 } else { dims[1..].iter().product() };
    let mut t = Table::new(values, cols, source);
    t.images = rank >= 3 && ty == 0x08;
    Ok(t)
}

/// Checks that `path` can be written (its folder exists) and that its format is known.
pub fn check_output(path: &Path, allowed: &[&str]) -> Result<()> {
    let ext = path.extension().map(|e| e.to_string_lossy().to_lowercase()).unwrap_or_default();
    if !allowed.contains(&ext.as_str()) {
        bail!("{}: unknown output format (use {})", path.display(), allowed.iter().map(|e| format!(".{e}")).collect::<Vec<_>>().join(" or "));
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        bail!("{}: folder {} does not exist", path.display(), dir.display());
    }
    Ok(())
}

/// Writes a table atomically as `.npy` (f64) or `.csv` (with a header if names are given).
pub fn write_table(path: &Path, values: &[f64], cols: usize, names: Option<&[String]>) -> Result<()> {
    check_output(path, &["npy", "csv"])?;
    let ext = path.extension().map(|e| e.to_string_lossy().to_lowercase()).unwrap_or_default();
    let rows = values.len().checked_div(cols).unwrap_or(0);
    let bytes = if ext == "npy" {
        use npyz::WriterBuilder;
        let mut buf = Vec::new();
        let shape = if cols == 1 && names.is_none() { vec![rows as u64] } else { vec![rows as u64, cols as u64] };
        let mut w = npyz::WriteOptions::new().default_dtype().shape(&shape).writer(&mut buf).begin_nd()?;
        w.extend(values.iter().copied())?;
        w.finish()?;
        buf
    } else {
        let mut s = String::new();
        if let Some(names) = names {
            s.push_str(&names.join(","));
            s.push('\n');
        }
        for r in values.chunks(cols.max(1)) {
            let cells: Vec<String> = r.iter().map(|v| format!("{v}")).collect();
            s.push_str(&cells.join(","));
            s.push('\n');
        }
        s.into_bytes()
    };
    diffeo::io::write_atomic(path, &bytes).map_err(|e| anyhow!("{e}"))
}

/// Parses a column list: `0,2,5-7` (0-based, ranges inclusive) or header names.
pub fn parse_columns(spec: &str, table: &Table) -> Result<Vec<usize>> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some(names) = &table.names {
            if let Some(j) = names.iter().position(|n| n == part) {
                out.push(j);
                continue;
            }
        }
        let idx = |s: &str| -> Result<usize> {
            s.trim().parse::<usize>().map_err(|_| anyhow!("bad column {s:?} in {spec:?} (use 0-based indices, ranges a-b, or header names)"))
        };
        if let Some((a, b)) = part.split_once('-') {
            let (a, b) = (idx(a)?, idx(b)?);
            if a > b {
                bail!("bad column range {part:?}");
            }
            out.extend(a..=b);
        } else {
            out.push(idx(part)?);
        }
    }
    if out.is_empty() {
        bail!("empty column list {spec:?}");
    }
    if let Some(&bad) = out.iter().find(|&&c| c >= table.cols) {
        bail!("{}: has {} columns, column {bad} does not exist", table.source, table.cols);
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(d) = out.iter().find(|c| !seen.insert(**c)) {
        bail!("column {d} is listed twice");
    }
    Ok(out)
}

/// Uniform dequantization `x + U[0, 1)`.
pub fn dequantize(values: &mut [f64], rng: &mut StdRng) {
    for v in values {
        *v += rng.random::<f64>();
    }
}

// ---------------------------------------------------------------------------------------------
// Built-in data sets

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
        let values = diffeo::datasets::toy(name, n, &mut rng).ok_or_else(|| anyhow!("unknown toy {name}"))?;
        return Ok(Table::new(values, 2, source));
    };
    let root = data_root(root).ok_or_else(|| {
        anyhow!("builtin:{name} needs the data folder: pass --data-root DIR or set DIFFEO_DATA (DIR/{file})")
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
fn stats(tables: &[&Table]) -> diffeo::flow::Standardization {
    let rows: Vec<f64> = tables.iter().flat_map(|t| t.values.iter().copied()).collect();
    diffeo::flow::Standardization::of(&rows, tables[0].cols).unwrap_or_else(|_| diffeo::flow::Standardization {
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
        let line = line.with_context(|| format!("{source}: cannot read line {}", k + 1))?;
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
            values.push(c.trim().parse::<f64>().map_err(|_| anyhow!("{source}: line {}: {c:?} is not a number", k + 1))?);
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
        if p.exists() { Ok(p) } else if gz.exists() { Ok(gz) } else { Err(anyhow!("builtin:hepmass: {} not found", p.display())) }
    };
    let train = read_file(&find("1000_train.csv")?)?;
    let test = read_file(&find("1000_test.csv")?)?;
    hepmass_pipeline(&train, &test)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_with_and_without_header() {
        let t = read_text("a,b\n1,2\n3,4.5\n".as_bytes(), "t").unwrap();
        assert_eq!(t.names.as_deref(), Some(&["a".to_string(), "b".to_string()][..]));
        assert_eq!(t.values, vec![1.0, 2.0, 3.0, 4.5]);
        let t = read_text("1 2 3\n4 5 6\n".as_bytes(), "t").unwrap();
        assert_eq!((t.rows(), t.cols), (2, 3));
        assert!(read_text("1,2\n3\n".as_bytes(), "t").unwrap_err().to_string().contains("ragged"));
        assert!(read_text("1,2\n3,x\n".as_bytes(), "t").unwrap_err().to_string().contains("line 2, column 1"));
        let t = read_text("1,nan\n".as_bytes(), "t").unwrap();
        assert!(t.check_finite().unwrap_err().to_string().contains("line 1, column 1"));
    }

    #[test]
    fn npy_round_trip_and_idx() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.npy");
        write_table(&p, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 3, None).unwrap();
        let t = read_file(&p).unwrap();
        assert_eq!((t.rows(), t.cols), (2, 3));
        assert_eq!(t.values[5], 6.0);
        // A 2-image IDX file of 2×2 pixels.
        let mut idx = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2];
        idx.extend([0u8, 255, 1, 2, 3, 4, 5, 6]);
        let t = read_idx(&idx[..], "m").unwrap();
        assert_eq!((t.rows(), t.cols, t.images), (2, 4, true));
        assert_eq!(t.values[1], 255.0);
        assert!(read_idx(&idx[..10], "m").is_err());
    }

    #[test]
    fn columns() {
        let t = read_text("a,b,c,d\n1,2,3,4\n".as_bytes(), "t").unwrap();
        assert_eq!(parse_columns("0,2-3", &t).unwrap(), vec![0, 2, 3]);
        assert_eq!(parse_columns("c,a", &t).unwrap(), vec![2, 0]);
        assert!(parse_columns("7", &t).is_err());
        assert!(parse_columns("1,1", &t).is_err());
    }

    #[test]
    fn power_fixture() {
        let mut csv = String::from("date_time,a,r,v,i,s1,s2,s3\n");
        for k in 0..200 {
            csv.push_str(&format!("2007-01-01 {:02}:{:02}:00,{},{},{},{},{},{},{}\n", k / 60 % 24, k % 60, k as f64 * 0.01, 0.1, 240.0 + (k % 7) as f64, 5.0, k % 3, 1, k % 5));
        }
        let raw = read_power_csv(csv.as_bytes(), "p").unwrap();
        assert_eq!((raw.rows(), raw.cols), (200, 8));
        assert_eq!(raw.row(61)[7], 61.0);
        let [train, val, test] = power_pipeline(&raw);
        assert_eq!((train.rows(), val.rows(), test.rows(), train.cols), (162, 18, 20, 6));
        let both: Vec<f64> = train.values.iter().chain(&val.values).copied().collect();
        let s = diffeo::flow::Standardization::of(&both, 6).unwrap();
        assert!(s.mean.iter().all(|v| v.abs() < 1e-9) && s.std.iter().all(|v| (v - 1.0).abs() < 1e-9));
    }

    #[test]
    fn miniboone_and_hepmass_fixtures() {
        let mut rng = StdRng::seed_from_u64(0);
        let raw = Table::new((0..100 * 3).map(|_| rng.random::<f64>()).collect(), 3, "m");
        let [a, b, c] = miniboone_pipeline(&raw);
        assert_eq!((a.rows(), b.rows(), c.rows()), (81, 9, 10));
        // label, f1, f2 (f2 repeats a value: dropped); the test file has an extra last column.
        let mut train = Vec::new();
        for i in 0..60 {
            train.extend([(i % 2) as f64, rng.random::<f64>(), (i % 3) as f64]);
        }
        let mut test = Vec::new();
        for i in 0..20 {
            test.extend([1.0, rng.random::<f64>(), (i % 3) as f64, 9.0]);
        }
        let [tr, va, te] = hepmass_pipeline(&Table::new(train, 3, "tr"), &Table::new(test, 4, "te")).unwrap();
        assert_eq!((tr.cols, te.cols), (1, 1));
        assert_eq!((tr.rows(), va.rows(), te.rows()), (27, 3, 20));
    }
}

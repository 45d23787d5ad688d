//! Host data: the one table type ([`Table`]), data sets for training ([`Dataset`]: data rows and
//! their context rows), reading and writing files (CSV or whitespace-separated text with an
//! optional header, NPY in C order, MNIST IDX, each optionally gzip-compressed), column selection,
//! the built-in data sets ([`builtin`]) and the preprocessing of a model's inputs ([`prepare`]).
//! The command line and the Python package read and prepare data only through this module.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor};
use rand::rngs::StdRng;
use rand::Rng;

use crate::error::{FlowError, Result};
use crate::event::EventShape;
use crate::tensor::{check_finite_values, dims2, matrix, to_vec};

pub mod builtin;
pub mod prepare;

pub use builtin::{load_builtin, Split};

/// `Err(FlowError::Data(format!(…)))`.
macro_rules! bail {
    ($($t:tt)*) => { return Err(crate::error::FlowError::Data(format!($($t)*))) };
}
/// `FlowError::Data(format!(…))`.
macro_rules! data_err {
    ($($t:tt)*) => { crate::error::FlowError::Data(format!($($t)*)) };
}
pub(crate) use {bail, data_err};

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
    /// The shape of each row's first C·H·W values as an image `[C, H, W]` (IDX images, `.npy`
    /// arrays of rank 3 or 4), flattened in C order.
    pub image_shape: Option<EventShape>,
}

impl Table {
    /// A table from values.
    pub fn new(values: Vec<f64>, cols: usize, source: impl Into<String>) -> Self {
        Self { values, cols, names: None, source: source.into(), lines: None, images: false, image_shape: None }
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.values.len().checked_div(self.cols).unwrap_or(0)
    }

    /// Rows `idx` as a tensor `[idx.len(), cols]` on `device`.
    pub fn rows_tensor(&self, idx: &[usize], device: &Device) -> Tensor<2> {
        matrix(gather_rows(&self.values, self.cols, idx, |v| v), idx.len(), self.cols, device)
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
            image_shape: self.image_shape.filter(|_| cols.iter().copied().eq(0..self.cols)),
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
            image_shape: self.image_shape,
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

/// A data set for training and evaluation: data rows `[n, D]` and, for conditional flows, their
/// context rows `[n, C]`.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// The data rows.
    pub x: Table,
    /// The context rows, one per data row.
    pub context: Option<Table>,
}

impl Dataset {
    /// From row-major values with `dim` columns.
    pub fn new(x: Vec<f64>, dim: usize) -> Self {
        Self { x: Table::new(x, dim, "data"), context: None }
    }

    /// Adds row-major context values with `context_dim` columns.
    pub fn with_context(mut self, context: Vec<f64>, context_dim: usize) -> Self {
        self.context = Some(Table::new(context, context_dim, "context"));
        self
    }

    /// From tensors.
    pub fn from_tensors(x: Tensor<2>, context: Option<Tensor<2>>) -> Result<Self> {
        let (_, d) = dims2(&x);
        let mut data = Self::new(to_vec(x)?, d);
        if let Some(c) = context {
            let (_, k) = dims2(&c);
            data = data.with_context(to_vec(c)?, k);
        }
        Ok(data)
    }

    /// Features D.
    pub fn dim(&self) -> usize {
        self.x.cols
    }

    /// Context width (0 without context).
    pub fn context_dim(&self) -> usize {
        self.context.as_ref().map_or(0, |c| c.cols)
    }

    /// Rows.
    pub fn len(&self) -> usize {
        self.x.rows()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The given rows.
    pub fn take_rows(&self, rows: &[usize]) -> Dataset {
        Dataset { x: self.x.take_rows(rows), context: self.context.as_ref().map(|c| c.take_rows(rows)) }
    }

    /// Checks the shapes against a flow's `dim` and `context_dim`, and that every value is
    /// finite.
    pub fn validate_for(&self, dim: usize, context_dim: usize, what: &str) -> Result<()> {
        if self.dim() != dim {
            return Err(FlowError::DimensionMismatch { what: what.into(), expected: dim, got: self.dim() });
        }
        if self.x.values.len() % self.dim().max(1) != 0 {
            return Err(FlowError::InvalidConfig(format!("{what}: value count is not a multiple of {}", self.dim())));
        }
        if self.is_empty() {
            return Err(FlowError::Empty { what: what.into() });
        }
        check_finite_values(&self.x.values, self.dim(), what)?;
        let shape = self.context.as_ref().map(|c| (c.values.len() / c.cols.max(1), c.cols));
        crate::event::check_context_shape(context_dim, shape, Some(self.len()), &format!("{what} context"), false)?;
        match &self.context {
            Some(c) => check_finite_values(&c.values, c.cols, &format!("{what} context")),
            None => Ok(()),
        }
    }

    /// Rows `idx` as tensors on `device`.
    pub fn batch(&self, idx: &[usize], device: &Device) -> (Tensor<2>, Option<Tensor<2>>) {
        (self.x.rows_tensor(idx, device), self.context_batch(idx, device))
    }

    /// The context of rows `idx` as a tensor on `device`, if the set has one.
    pub fn context_batch(&self, idx: &[usize], device: &Device) -> Option<Tensor<2>> {
        self.context.as_ref().map(|c| c.rows_tensor(idx, device))
    }
}

/// Rows `idx` of a row-major table of `cols` columns, with `f` applied to every value.
pub fn gather_rows(values: &[f64], cols: usize, idx: &[usize], mut f: impl FnMut(f64) -> f64) -> Vec<f64> {
    let mut out = Vec::with_capacity(idx.len() * cols);
    for &i in idx {
        out.extend(values[i * cols..(i + 1) * cols].iter().map(|&v| f(v)));
    }
    out
}

pub(crate) fn open(path: &Path) -> Result<Box<dyn Read>> {
    let file = File::open(path).map_err(|e| data_err!("cannot read {}: {e}", path.display()))?;
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
        let line = line.map_err(|e| data_err!("{source}: cannot read line {line_no} (not a text file?): {e}"))?;
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
    Ok(Table { values, cols, names, source: source.to_string(), lines: Some(lines), images: false, image_shape: None })
}

/// A number, or NaN for an empty cell / NA marker; `None` if not numeric.
fn parse_cell(c: &str) -> Option<f64> {
    if c.is_empty() || c.eq_ignore_ascii_case("na") || c.eq_ignore_ascii_case("nan") || c == "?" {
        return Some(f64::NAN);
    }
    c.parse::<f64>().ok()
}

/// NPY: f32, f64 or integer arrays of rank 1 (one column) or 2, C order; images as arrays
/// `[N, H, W]` or `[N, C, H, W]` (8-bit pixels: `uint8`, or any dtype holding only integers in
/// 0..=255).
pub fn read_npy(mut reader: impl Read, source: &str) -> Result<Table> {
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes).map_err(|e| data_err!("cannot read {source}: {e}"))?;
    let npy = npyz::NpyFile::new(&bytes[..]).map_err(|e| data_err!("{source}: not a valid .npy file ({e})"))?;
    let shape = npy.shape().to_vec();
    if npy.order() == npyz::Order::Fortran && shape.len() > 1 {
        bail!("{source}: Fortran-order arrays are not supported; save with numpy.ascontiguousarray");
    }
    let (rows, cols, image) = match shape.as_slice() {
        [n] => (*n as usize, 1, None),
        [n, d] => (*n as usize, *d as usize, None),
        [n, h, w] => (*n as usize, (*h * *w) as usize, Some(EventShape::image(1, *h as usize, *w as usize))),
        [n, c, h, w] => (*n as usize, (*c * *h * *w) as usize, Some(EventShape::image(*c as usize, *h as usize, *w as usize))),
        other => bail!("{source}: expected an array of rank 1 or 2 (rows of features), 3 ([N, H, W] images) or 4 ([N, C, H, W] images), found shape {other:?}"),
    };
    let npyz::DType::Plain(ts) = npy.dtype() else {
        bail!("{source}: structured arrays are not supported");
    };
    let descr = ts.to_string();
    let err = |e: std::io::Error| data_err!("{source}: cannot read the array ({e})");
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
    let mut table = Table::new(values, cols, source);
    if image.is_some() {
        table.image_shape = image;
        table.images = table.values.iter().all(|v| v.fract() == 0.0 && (0.0..=255.0).contains(v));
    }
    Ok(table)
}

/// MNIST IDX: `[n, rows, cols]` images flattened to `rows·cols` columns (raw pixel values), or
/// `[n]` labels.
pub fn read_idx(mut reader: impl Read, source: &str) -> Result<Table> {
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes).map_err(|e| data_err!("cannot read {source}: {e}"))?;
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
    if rank == 3 {
        t.image_shape = Some(EventShape::image(1, dims[1], dims[2]));
    }
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
        let io = |e: std::io::Error| FlowError::Io { path: path.display().to_string(), source: e };
        let mut w = npyz::WriteOptions::new().default_dtype().shape(&shape).writer(&mut buf).begin_nd().map_err(io)?;
        w.extend(values.iter().copied()).map_err(io)?;
        w.finish().map_err(io)?;
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
    crate::io::write_atomic(path, &bytes)
}

/// `table` with one-hot columns of the class labels in `labels` appended (one label per row, an
/// integer in `0..classes`; `classes`: one more than the largest label when `None`), and the
/// number of classes. The labels of class-conditional image models.
pub fn with_labels(table: &Table, labels: &Table, classes: Option<usize>) -> Result<(Table, usize)> {
    if labels.cols != 1 {
        bail!("{}: a label file has one value per row, found {} columns", labels.source, labels.cols);
    }
    if labels.rows() != table.rows() {
        bail!("{}: {} labels for the {} rows of {}", labels.source, labels.rows(), table.rows(), table.source);
    }
    if let Some((i, v)) = labels.values.iter().enumerate().find(|(_, v)| !(v.fract() == 0.0 && **v >= 0.0 && **v < 1e6)) {
        bail!("{}: label {v} ({}) is not a class number (an integer ≥ 0)", labels.source, labels.where_row(i));
    }
    let largest = labels.values.iter().fold(0.0f64, |a, &b| a.max(b)) as usize;
    let k = classes.unwrap_or(largest + 1);
    if largest >= k {
        bail!("{}: label {largest} is beyond the model's {k} classes (0 to {})", labels.source, k - 1);
    }
    let d = table.cols;
    let mut values = Vec::with_capacity(table.rows() * (d + k));
    for (i, &label) in labels.values.iter().enumerate() {
        values.extend_from_slice(table.row(i));
        values.extend((0..k).map(|c| if c == label as usize { 1.0 } else { 0.0 }));
    }
    let out = Table {
        values,
        cols: d + k,
        names: table.names.as_ref().map(|n| n.iter().cloned().chain((0..k).map(|c| format!("class{c}"))).collect()),
        source: table.source.clone(),
        lines: table.lines.clone(),
        images: table.images,
        image_shape: table.image_shape,
    };
    Ok((out, k))
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
            s.trim().parse::<usize>().map_err(|_| data_err!("bad column {s:?} in {spec:?} (use 0-based indices, ranges a-b, or header names)"))
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

#[cfg(test)]
mod tests {
    use super::builtin::{hepmass_pipeline, miniboone_pipeline, power_pipeline, read_power_csv};
    use super::*;
    use rand::SeedableRng;

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
        let s = crate::flow::Standardization::of(&both, 6).unwrap();
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

//! From a table to a model's inputs: which columns are data and which context, the non-finite
//! policy, dequantization and the scaling of 8-bit images, the logit transform, the hold-out
//! split, and the checks a new fit needs (enough rows, integer data to dequantize, constant
//! columns, data beyond a spline's tail bound).

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use super::{bail, Dataset, Table};
use crate::bijections::{ElementwiseConfig, ElementwiseKind, LayerConfig};
use crate::error::Result;

/// How the columns of a data file map onto a model's inputs, and the preprocessing applied to
/// them. Stored with every model fit from files, so evaluating and sampling read files the same
/// way.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InputSpec {
    /// Columns of the data file at fit time.
    pub input_columns: usize,
    /// Data columns (0-based).
    pub columns: Vec<usize>,
    /// Context columns (0-based).
    pub context_columns: Vec<usize>,
    /// Column names, if the file had a header.
    pub column_names: Option<Vec<String>>,
    /// Uniform dequantization was applied.
    pub dequantize: bool,
    /// 8-bit images, modelled in [0, 1] as pixel/256.
    pub images: bool,
    /// Logit preprocessing parameter, if any.
    pub logit_alpha: Option<f64>,
    /// Data standardization is part of the model.
    pub standardized: bool,
    /// The context is a class label from a separate file, one-hot over this many classes (the
    /// last columns of the table, see [`super::with_labels`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<usize>,
}

impl InputSpec {
    /// Every column is data (`dim`), then `context_dim` context columns: the layout of a model
    /// saved from code.
    pub fn plain(dim: usize, context_dim: usize) -> Self {
        Self {
            input_columns: dim + context_dim,
            columns: (0..dim).collect(),
            context_columns: (dim..dim + context_dim).collect(),
            column_names: None,
            dequantize: false,
            images: false,
            logit_alpha: None,
            standardized: false,
            classes: None,
        }
    }

    /// Data and context columns of `table` chosen by column lists (`0,2,5-7` or header names;
    /// data default: every column that is not context).
    pub fn select(table: &Table, columns: Option<&str>, context_columns: Option<&str>) -> Result<Self> {
        let context_columns = match context_columns {
            Some(s) => super::parse_columns(s, table)?,
            None => Vec::new(),
        };
        let columns = match columns {
            Some(s) => super::parse_columns(s, table)?,
            None => (0..table.cols).filter(|c| !context_columns.contains(c)).collect(),
        };
        if let Some(c) = columns.iter().find(|c| context_columns.contains(c)) {
            bail!("column {c} is both a data and a context column");
        }
        if columns.is_empty() {
            bail!("{}: no data columns left besides the context columns", table.source);
        }
        Ok(Self {
            input_columns: table.cols,
            column_names: table.names.as_ref().map(|n| columns.iter().map(|&c| n[c].clone()).collect()),
            columns,
            context_columns,
            dequantize: false,
            images: table.images,
            logit_alpha: None,
            standardized: true,
            classes: None,
        })
    }

    /// Features D of the model.
    pub fn dim(&self) -> usize {
        self.columns.len()
    }

    /// Context width C of the model.
    pub fn context_dim(&self) -> usize {
        self.context_columns.len()
    }

    /// Applies the column selection, the non-finite policy (refuse, or drop the rows) and the
    /// preprocessing (dequantization noise from `rng`, images to [0, 1]). Returns the data set
    /// and the number of rows dropped.
    pub fn inputs(&self, table: &Table, drop_nonfinite: bool, rng: &mut StdRng) -> Result<(Dataset, usize)> {
        if table.cols != self.input_columns {
            let ctx = if self.context_columns.is_empty() {
                String::new()
            } else {
                format!(", context columns {:?}", self.context_columns)
            };
            bail!(
                "{}: has {} columns, the model was fit on files with {} (data columns {:?}{ctx})",
                table.source,
                table.cols,
                self.input_columns,
                self.columns
            );
        }
        let mut all: Vec<usize> = self.columns.clone();
        all.extend(&self.context_columns);
        let rows = if drop_nonfinite {
            table.finite_rows(&all)
        } else {
            // Report the first non-finite value by its row and column in the file.
            table.select_finite_check(&all)?;
            (0..table.rows()).collect()
        };
        if rows.is_empty() {
            bail!("{}: no rows left after dropping non-finite values", table.source);
        }
        let (d, c, n) = (self.columns.len(), self.context_columns.len(), rows.len());
        let mut x = Vec::with_capacity(n * d);
        let mut ctx = Vec::with_capacity(n * c);
        for &i in &rows {
            let r = table.row(i);
            x.extend(self.columns.iter().map(|&j| r[j]));
            ctx.extend(self.context_columns.iter().map(|&j| r[j]));
        }
        let dropped = table.rows() - n;
        if self.dequantize {
            let bad = non_integer_count(&x);
            if bad > 0 {
                bail!(
                    "{}: dequantization adds U[0, 1) noise to integer data, but {bad} of the {} data values are not integers; drop the dequantization",
                    table.source,
                    x.len()
                );
            }
            super::dequantize(&mut x, rng);
        }
        if self.images {
            x.iter_mut().for_each(|v| *v /= 256.0);
        }
        let mut data = Dataset::new(x, d);
        data.x.names = self.column_names.clone();
        data.x.source = table.source.clone();
        if c > 0 {
            data = data.with_context(ctx, c);
        }
        Ok((data, dropped))
    }
}

/// How many values are not integers.
pub fn non_integer_count(values: &[f64]) -> usize {
    values.iter().filter(|v| v.fract() != 0.0).count()
}

/// Columns of a row-major table whose values are all equal (a degenerate density).
pub fn constant_columns(values: &[f64], cols: usize) -> Vec<usize> {
    if cols == 0 || values.len() < cols {
        return Vec::new();
    }
    (0..cols).filter(|&j| values.chunks_exact(cols).all(|r| r[j] == values[j])).collect()
}

/// The fewest training rows a fit accepts on `dim` features: with n ≤ D points the data lie in an
/// affine subspace of dimension n − 1 < D, where the likelihood is unbounded.
pub fn minimum_rows(dim: usize) -> usize {
    (dim + 1).max(2)
}

/// `logit(α + (1 − 2α)x)` elementwise, for data in [0, 1].
pub fn logit_transform(x: &mut [f64], alpha: f64, source: &str) -> Result<()> {
    for v in x.iter_mut() {
        if !(0.0..=1.0).contains(v) {
            bail!("{source}: the logit transform needs data in [0, 1] (found {v}); image files are scaled to [0, 1] automatically");
        }
        let s = alpha + (1.0 - 2.0 * alpha) * *v;
        *v = (s / (1.0 - s)).ln();
    }
    Ok(())
}

/// The layers that map logit-space values back to [0, 1]: sigmoid, then (s − α)/(1 − 2α). A flow
/// ending with them models `logit(α + (1 − 2α)x)` with the log-det of the transform included, so
/// its densities are those of the data in [0, 1].
pub fn logit_layers(dim: usize, alpha: f64) -> Vec<LayerConfig> {
    let w = 1.0 - 2.0 * alpha;
    vec![
        LayerConfig::Elementwise(ElementwiseConfig::new(dim, ElementwiseKind::Sigmoid)),
        LayerConfig::Elementwise(ElementwiseConfig::new(
            dim,
            ElementwiseKind::Affine { shift: vec![-alpha / w; dim], scale: vec![1.0 / w; dim] },
        )),
    ]
}

/// Splits off `1/parts` of the rows (⌊n/parts⌋, at random) as validation data:
/// `(train, validation)`.
pub fn hold_out(data: &Dataset, parts: usize, rng: &mut StdRng) -> (Dataset, Dataset) {
    let n = data.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(rng);
    let n_val = n / parts.max(1);
    let (v, t) = order.split_at(n_val);
    (data.take_rows(t), data.take_rows(v))
}

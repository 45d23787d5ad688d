//! PNG figures: 2-D density heat maps beside data and samples, pairwise scatter for D > 2, and
//! training curves.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use diffeo::bijections::Cost;
use diffeo::model::TrainingSummary;
use diffeo::pipeline;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::commands::lib;
use crate::PlotArgs;

const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
/// Colour of data (and of training curves).
const DATA_COLOR: RGBColor = RGBColor(31, 119, 180);
/// Colour of the model (and of validation curves).
const MODEL_COLOR: RGBColor = RGBColor(214, 39, 40);

fn fonts() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

fn perr<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing failed: {e:?}")
}

/// Renders into a temporary PNG next to `out`, then renames it over `out`.
fn render(out: &Path, size: (u32, u32), draw: impl FnOnce(&DrawingArea<BitMapBackend, plotters::coord::Shift>) -> Result<()>) -> Result<()> {
    lib(diffeo::data::check_output(out, &["png"]))?;
    fonts();
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = out.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "figure".into());
    let tmp = dir.join(format!(".{name}.tmp-{}.png", std::process::id()));
    let result = (|| {
        let root = BitMapBackend::new(&tmp, size).into_drawing_area();
        root.fill(&WHITE).map_err(perr)?;
        draw(&root)?;
        root.present().map_err(perr)?;
        Ok(())
    })();
    match result.and_then(|_| std::fs::rename(&tmp, out).map_err(|e| anyhow!("cannot write {}: {e}", out.display()))) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

type Area<'b> = DrawingArea<BitMapBackend<'b>, plotters::coord::Shift>;
type Chart<'a, 'b> = ChartContext<
    'a,
    BitMapBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// One 2-D panel with labelled axes.
fn panel<'a, 'b>(area: &'a Area<'b>, label: &str, xr: (f64, f64), yr: (f64, f64), names: &[String]) -> Result<Chart<'a, 'b>> {
    let mut chart = ChartBuilder::on(area)
        .caption(label, ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(36)
        .build_cartesian_2d(xr.0..xr.1, yr.0..yr.1)
        .map_err(perr)?;
    chart.configure_mesh().disable_mesh().x_desc(&names[0]).y_desc(&names[1]).draw().map_err(perr)?;
    Ok(chart)
}

/// A perceptual colour map (viridis anchors, linearly interpolated), `t` in [0, 1].
fn viridis(t: f64) -> RGBColor {
    const A: [(f64, f64, f64); 5] =
        [(68.0, 1.0, 84.0), (59.0, 82.0, 139.0), (33.0, 145.0, 140.0), (94.0, 201.0, 98.0), (253.0, 231.0, 37.0)];
    let t = t.clamp(0.0, 1.0) * 4.0;
    let i = (t.floor() as usize).min(3);
    let f = t - i as f64;
    let (a, b) = (A[i], A[i + 1]);
    let m = |x: f64, y: f64| (x + (y - x) * f).round() as u8;
    RGBColor(m(a.0, b.0), m(a.1, b.1), m(a.2, b.2))
}

/// Range covering the 0.5–99.5% quantiles of the values, with a margin.
fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let mut v: Vec<f64> = values.filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return (-1.0, 1.0);
    }
    v.sort_by(f64::total_cmp);
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    let (lo, hi) = (q(0.005), q(0.995));
    let m = 0.1 * (hi - lo).max(1e-9);
    (lo - m, hi + m)
}

fn column(values: &[f64], d: usize, j: usize) -> impl Iterator<Item = f64> + '_ {
    values.chunks_exact(d).map(move |r| r[j])
}

pub fn plot(a: PlotArgs) -> Result<()> {
    lib(diffeo::data::check_output(&a.out, &["png"]))?;
    let m = lib(pipeline::load_model(&a.model))?;
    let d = m.flow.dim();
    let ctx = lib(pipeline::context_rows(a.context.as_deref(), &m))?;
    if ctx.as_ref().is_some_and(|c| c.rows() != 1) {
        bail!("plot takes one context row (comma-separated values)");
    }
    let data = match &a.data {
        Some(spec) => Some(lib(pipeline::model_inputs(&m, spec, a.data_root.as_deref(), true, a.seed))?.0.x.values),
        None => None,
    };
    if m.flow.directions().forward == Cost::Unavailable {
        bail!("this model cannot be sampled");
    }
    if let diffeo::bijections::EventShape::Image { channels, height, width } = m.flow.event() {
        // Images: data | samples | samples at temperature 0.7, 36 of each.
        let shape = (channels, height, width);
        let n = (a.n as usize).min(36);
        let mut panels = Vec::new();
        if let Some(spec) = &a.data {
            panels.push(("data".to_string(), lib(pipeline::data_images(&m, spec, a.data_root.as_deref(), n, a.seed))?));
        }
        for t in [1.0, 0.7] {
            let (s, _) = lib(pipeline::sample_at_temperature(&m, n, ctx.as_ref(), a.seed, t))?;
            panels.push((format!("samples, T = {t}"), s.values));
        }
        return image_panels(&panels, shape, &a.out);
    }
    let samples = lib(pipeline::sample(&m, a.n as usize, ctx.as_ref(), a.seed))?.values;
    let names: Vec<String> =
        m.meta.inputs.column_names.clone().unwrap_or_else(|| m.meta.inputs.columns.iter().map(|c| format!("x{c}")).collect());
    let title = format!("{} on {}", m.meta.family, m.meta.data_source);

    if d == 1 || d > 2 {
        return pairwise(&a.out, &samples, data.as_deref(), d, &names, &title);
    }

    // 2-D: heat maps of the densities on a grid (the target's, for a variational model), beside
    // data and samples.
    let energy = m.vi.as_ref().is_some_and(|v| {
        use diffeo::vi::StandardTarget::*;
        matches!(v.target, U1 | U2 | U3 | U4)
    });
    let reference = data.as_deref().unwrap_or(&samples);
    let ((x0, x1), (y0, y1)) = if energy {
        ((-diffeo::vi::ENERGY_BOX, diffeo::vi::ENERGY_BOX), (-diffeo::vi::ENERGY_BOX, diffeo::vi::ENERGY_BOX))
    } else {
        (range(column(reference, 2, 0)), range(column(reference, 2, 1)))
    };
    let grid = 160usize;
    let mut pts = Vec::with_capacity(grid * grid * 2);
    for i in 0..grid {
        for j in 0..grid {
            pts.push(x0 + (x1 - x0) * (j as f64 + 0.5) / grid as f64);
            pts.push(y0 + (y1 - y0) * (i as f64 + 0.5) / grid as f64);
        }
    }
    let target_density = match &m.vi {
        Some(v) => {
            let lp = lib(diffeo::vi::log_density_at(&v.target, &pts))?;
            Some(lp.into_iter().map(f64::exp).collect::<Vec<f64>>())
        }
        None => None,
    };
    let density = if m.flow.directions().inverse != Cost::Unavailable {
        let lp = lib(pipeline::log_density(&m, &pts, ctx.as_ref()))?;
        Some(lp.into_iter().map(f64::exp).collect::<Vec<f64>>())
    } else {
        None
    };
    let panels = 1 + usize::from(data.is_some()) + usize::from(density.is_some()) + usize::from(target_density.is_some());
    render(&a.out, (420 * panels as u32, 460), |root| {
        let (top, body) = root.split_vertically(36);
        top.titled(&title, ("sans-serif", 20)).map_err(perr)?;
        let areas = body.split_evenly((1, panels));
        let mut k = 0;
        let (xr, yr) = ((x0, x1), (y0, y1));
        let scatter = |area: &Area, pts: &[f64], label: &str, color: RGBColor| -> Result<()> {
            let shown = pts.chunks_exact(2).take(5000).map(|p| Circle::new((p[0], p[1]), 1, color.mix(0.35).filled()));
            panel(area, label, xr, yr, &names)?.draw_series(shown).map_err(perr)?;
            Ok(())
        };
        let heat = |area: &Area, p: &[f64], label: &str| -> Result<()> {
            let max = p.iter().copied().filter(|v| v.is_finite()).fold(0.0, f64::max).max(1e-300);
            let mut chart = panel(area, label, xr, yr, &names)?;
            let (dx, dy) = ((x1 - x0) / grid as f64, (y1 - y0) / grid as f64);
            chart
                .draw_series((0..grid * grid).map(|q| {
                    let (i, j) = (q / grid, q % grid);
                    let (cx, cy) = (x0 + dx * j as f64, y0 + dy * i as f64);
                    let v = if p[q].is_finite() { p[q] / max } else { 0.0 };
                    Rectangle::new([(cx, cy), (cx + dx, cy + dy)], viridis(v).filled())
                }))
                .map_err(perr)?;
            Ok(())
        };
        if let Some(dx) = &data {
            scatter(&areas[k], dx, "data", DATA_COLOR)?;
            k += 1;
        }
        if let Some(p) = &target_density {
            heat(&areas[k], p, "target density")?;
            k += 1;
        }
        if let Some(p) = &density {
            heat(&areas[k], p, "model density")?;
            k += 1;
        }
        scatter(&areas[k], &samples, "model samples", MODEL_COLOR)?;
        Ok(())
    })
}

/// Pairwise scatter (first 6 features) of samples over data; histograms on the diagonal.
fn pairwise(out: &Path, samples: &[f64], data: Option<&[f64]>, d: usize, names: &[String], title: &str) -> Result<()> {
    let k = d.min(6);
    let (blue, red) = (DATA_COLOR, MODEL_COLOR);
    let ranges: Vec<(f64, f64)> =
        (0..k).map(|j| range(column(data.unwrap_or(samples), d, j).chain(column(samples, d, j)))).collect();
    render(out, (220 * k as u32 + 40, 220 * k as u32 + 70), |root| {
        let (top, body) = root.split_vertically(40);
        let legend = if data.is_some() { "  (blue: data, red: model samples)" } else { "  (model samples)" };
        top.titled(&format!("{title}{legend}"), ("sans-serif", 18)).map_err(perr)?;
        let cells = body.split_evenly((k, k));
        for i in 0..k {
            for j in 0..k {
                let area = &cells[i * k + j];
                let (xr, yr) = (ranges[j], ranges[i]);
                if i == j {
                    let bins = 40;
                    let hist = |v: &[f64]| {
                        let mut h = vec![0f64; bins];
                        let mut total = 0f64;
                        for x in column(v, d, j) {
                            let b = ((x - xr.0) / (xr.1 - xr.0) * bins as f64).floor();
                            if b >= 0.0 && (b as usize) < bins {
                                h[b as usize] += 1.0;
                                total += 1.0;
                            }
                        }
                        h.iter_mut().for_each(|c| *c /= total.max(1.0));
                        h
                    };
                    let hs = hist(samples);
                    let hd = data.map(hist);
                    let top = hs.iter().chain(hd.iter().flatten()).copied().fold(1e-9, f64::max) * 1.1;
                    let mut chart = ChartBuilder::on(area)
                        .margin(4)
                        .x_label_area_size(if i == k - 1 { 22 } else { 0 })
                        .caption(&names[j], ("sans-serif", 13))
                        .build_cartesian_2d(xr.0..xr.1, 0.0..top)
                        .map_err(perr)?;
                    chart.configure_mesh().disable_mesh().disable_y_axis().x_labels(4).draw().map_err(perr)?;
                    let w = (xr.1 - xr.0) / bins as f64;
                    let line = |h: &[f64]| h.iter().enumerate().map(|(b, c)| (xr.0 + w * (b as f64 + 0.5), *c)).collect::<Vec<_>>();
                    if let Some(hd) = &hd {
                        chart.draw_series(LineSeries::new(line(hd), blue.stroke_width(2))).map_err(perr)?;
                    }
                    chart.draw_series(LineSeries::new(line(&hs), red.stroke_width(2))).map_err(perr)?;
                } else {
                    let mut chart = ChartBuilder::on(area)
                        .margin(4)
                        .x_label_area_size(if i == k - 1 { 22 } else { 0 })
                        .y_label_area_size(if j == 0 { 32 } else { 0 })
                        .build_cartesian_2d(xr.0..xr.1, yr.0..yr.1)
                        .map_err(perr)?;
                    chart.configure_mesh().disable_mesh().x_labels(4).y_labels(4).draw().map_err(perr)?;
                    let pts = |v: &[f64], c: RGBColor| {
                        v.chunks_exact(d).take(2000).map(move |r| Circle::new((r[j], r[i]), 1, c.mix(0.3).filled())).collect::<Vec<_>>()
                    };
                    if let Some(dv) = data {
                        chart.draw_series(pts(dv, blue)).map_err(perr)?;
                    }
                    chart.draw_series(pts(samples, red)).map_err(perr)?;
                }
            }
        }
        Ok(())
    })
}

/// A chart for curves over `[0, xmax]`, its vertical range fitted to `ys` with a 5% margin.
fn curve_chart<'a, 'b>(
    root: &'a Area<'b>,
    title: &str,
    xmax: f64,
    ys: &[f64],
    x_desc: &str,
    y_desc: &str,
) -> Result<Chart<'a, 'b>> {
    let (ylo, yhi) = ys.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &y| (a.min(y), b.max(y)));
    let pad = 0.05 * (yhi - ylo).max(1e-6);
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..xmax, (ylo - pad)..(yhi + pad))
        .map_err(perr)?;
    chart.configure_mesh().x_label_formatter(&|v| format!("{v:.0}")).x_desc(x_desc).y_desc(y_desc).draw().map_err(perr)?;
    Ok(chart)
}

/// The training curve: minibatch loss (negative log-likelihood) and validation
/// negative log-likelihood against steps.
pub fn loss_curve(s: &TrainingSummary, out: &Path) -> Result<()> {
    let train: Vec<(f64, f64)> = s.history.iter().filter(|h| h.1.is_finite()).map(|h| (h.0 as f64, h.1)).collect();
    let val: Vec<(f64, f64)> =
        s.history.iter().filter_map(|h| h.2.filter(|v| v.is_finite()).map(|v| (h.0 as f64, -v))).collect();
    if train.is_empty() {
        bail!("no training history to plot");
    }
    let xmax = train.last().map(|p| p.0).unwrap_or(1.0).max(1.0);
    // Skip the first 5% of the curve when choosing the vertical range: early losses dwarf the rest.
    let skip = train.len() / 20;
    let ys: Vec<f64> = train.iter().skip(skip).chain(val.iter().skip(skip)).map(|p| p.1).collect();
    render(out, (720, 440), |root| {
        let mut chart = curve_chart(root, "training curve", xmax, &ys, "step", "negative log-likelihood (nats)")?;
        let (blue, red) = (DATA_COLOR, MODEL_COLOR);
        chart
            .draw_series(LineSeries::new(train.clone(), blue.stroke_width(2)))
            .map_err(perr)?
            .label("training (minibatch mean)")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], blue.stroke_width(2)));
        if !val.is_empty() {
            chart
                .draw_series(LineSeries::new(val.clone(), red.stroke_width(2)))
                .map_err(perr)?
                .label("validation")
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], red.stroke_width(2)));
        }
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(perr)?;
        Ok(())
    })
}

/// Test log-likelihood (± 2 standard errors) against wall-clock seconds.
pub fn test_curve(points: &[(f64, usize, f64, f64)], out: &Path) -> Result<()> {
    if points.is_empty() {
        bail!("no test evaluations to plot");
    }
    let xmax = points.iter().map(|p| p.0).fold(1.0, f64::max);
    let skip = points.len() / 10;
    let ys: Vec<f64> = points.iter().skip(skip).flat_map(|p| [p.2 - 2.0 * p.3, p.2 + 2.0 * p.3]).collect();
    render(out, (720, 440), |root| {
        let title = "test log-likelihood against wall-clock time";
        let mut chart = curve_chart(root, title, xmax, &ys, "seconds", "nats")?;
        let blue = DATA_COLOR;
        chart
            .draw_series(points.iter().map(|p| {
                PathElement::new(vec![(p.0, p.2 - 2.0 * p.3), (p.0, p.2 + 2.0 * p.3)], blue.mix(0.4).stroke_width(1))
            }))
            .map_err(perr)?;
        chart.draw_series(LineSeries::new(points.iter().map(|p| (p.0, p.2)), blue.stroke_width(2))).map_err(perr)?;
        Ok(())
    })
}

/// SBC rank histogram of one parameter, with the flat line a calibrated posterior gives and its
/// 99% band (binomial).
pub fn rank_histogram(counts: &[usize], samples: usize, name: &str, out: &Path) -> Result<()> {
    let (n, bins) = (counts.iter().sum::<usize>(), counts.len());
    let expect = n as f64 / bins as f64;
    let band = 2.576 * (expect * (1.0 - 1.0 / bins as f64)).sqrt();
    let ymax = (counts.iter().copied().max().unwrap_or(1) as f64).max(expect + band) * 1.1;
    render(out, (560, 380), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(format!("SBC ranks of {name} ({n} pairs, {samples} samples)"), ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(32)
            .y_label_area_size(44)
            .build_cartesian_2d(0.0..samples as f64 + 1.0, 0.0..ymax)
            .map_err(perr)?;
        chart.configure_mesh().disable_mesh().x_desc("rank").y_desc("pairs").draw().map_err(perr)?;
        let w = (samples as f64 + 1.0) / bins as f64;
        chart
            .draw_series(
                (0..bins).map(|b| Rectangle::new([(b as f64 * w, 0.0), ((b + 1) as f64 * w, counts[b] as f64)], DATA_COLOR.mix(0.7).filled())),
            )
            .map_err(perr)?;
        let top = samples as f64 + 1.0;
        chart
            .draw_series([Rectangle::new([(0.0, (expect - band).max(0.0)), (top, expect + band)], MODEL_COLOR.mix(0.12).filled())])
            .map_err(perr)?;
        chart.draw_series(LineSeries::new([(0.0, expect), (top, expect)], MODEL_COLOR.stroke_width(2))).map_err(perr)?;
        Ok(())
    })
}

/// Expected coverage of HPD regions against the credibility level, with the diagonal.
pub fn coverage(levels: &[f64], coverage: &[f64], pairs: usize, out: &Path) -> Result<()> {
    render(out, (480, 480), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(format!("expected coverage ({pairs} pairs)"), ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(44)
            .build_cartesian_2d(0.0..1.0, 0.0..1.0)
            .map_err(perr)?;
        chart.configure_mesh().x_desc("credibility level").y_desc("empirical coverage").draw().map_err(perr)?;
        chart.draw_series(LineSeries::new([(0.0, 0.0), (1.0, 1.0)], BLACK.mix(0.5).stroke_width(1))).map_err(perr)?;
        let pts: Vec<(f64, f64)> = std::iter::once((0.0, 0.0)).chain(levels.iter().copied().zip(coverage.iter().copied())).chain([(1.0, 1.0)]).collect();
        chart.draw_series(LineSeries::new(pts.clone(), DATA_COLOR.stroke_width(2))).map_err(perr)?;
        chart.draw_series(pts.iter().map(|p| Circle::new(*p, 3, DATA_COLOR.filled()))).map_err(perr)?;
        Ok(())
    })
}

/// A grid of images (rows of `[C, H, W]` values in [0, 1], C order) as a PNG (see
/// [`draw_images`]).
pub fn image_grid(values: &[f64], shape: (usize, usize, usize), out: &Path) -> Result<()> {
    let n = values.len() / (shape.0 * shape.1 * shape.2).max(1);
    if n == 0 {
        bail!("no images to draw");
    }
    let size = grid_size(n, shape);
    render(out, size, |root| draw_images(root, values, shape))
}

/// Panels of image grids side by side, each under its title (`diffeo plot` of an image model).
pub fn image_panels(panels: &[(String, Vec<f64>)], shape: (usize, usize, usize), out: &Path) -> Result<()> {
    let per = shape.0 * shape.1 * shape.2;
    let n = panels.iter().map(|(_, v)| v.len() / per.max(1)).max().unwrap_or(0);
    if n == 0 {
        bail!("no images to draw");
    }
    let (w, h) = grid_size(n, shape);
    let title_h = 30;
    render(out, (w * panels.len() as u32, h + title_h), |root| {
        for (area, (title, values)) in root.split_evenly((1, panels.len())).iter().zip(panels) {
            let (top, grid) = area.split_vertically(title_h);
            top.titled(title, ("sans-serif", 18)).map_err(perr)?;
            draw_images(&grid, values, shape)?;
        }
        Ok(())
    })
}

/// Pixel size of a grid of `n` images: ⌈√n⌉ columns, each pixel a `zoom`×`zoom` block.
fn grid_size(n: usize, (_, h, w): (usize, usize, usize)) -> (u32, u32) {
    let cols = (n as f64).sqrt().ceil() as usize;
    let rows = n.div_ceil(cols);
    let zoom = (192 / h.max(w)).clamp(1, 4);
    ((cols * (w * zoom + 2) + 2) as u32, (rows * (h * zoom + 2) + 2) as u32)
}

/// Draws images as a grid into `area`: grey for one channel, colour for three (other channel
/// counts show their first channel), a 2-pixel white gap between images.
fn draw_images(area: &Area, values: &[f64], (c, h, w): (usize, usize, usize)) -> Result<()> {
    let per = c * h * w;
    let n = values.len() / per.max(1);
    if n == 0 {
        return Ok(());
    }
    let cols = (n as f64).sqrt().ceil() as usize;
    let zoom = (192 / h.max(w)).clamp(1, 4);
    let (cell_w, cell_h) = (w * zoom + 2, h * zoom + 2);
    let byte = |v: f64| (v.clamp(0.0, 1.0) * 255.0).round() as u8;
    for k in 0..n {
        let img = &values[k * per..(k + 1) * per];
        let (x0, y0) = (2 + (k % cols) * cell_w, 2 + (k / cols) * cell_h);
        for i in 0..h {
            for j in 0..w {
                let colour = if c == 3 {
                    RGBColor(byte(img[i * w + j]), byte(img[h * w + i * w + j]), byte(img[2 * h * w + i * w + j]))
                } else {
                    let g = byte(img[i * w + j]);
                    RGBColor(g, g, g)
                };
                for a in 0..zoom {
                    for b in 0..zoom {
                        area.draw_pixel(((x0 + j * zoom + b) as i32, (y0 + i * zoom + a) as i32), &colour).map_err(perr)?;
                    }
                }
            }
        }
    }
    Ok(())
}

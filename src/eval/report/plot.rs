//! Charts of a metric against diffusion evaluations per token, as SVG or PNG.
//!
//! Text is laid out and rasterised with a font compiled into the binary
//! (plotters' `ab_glyph` backend), so charts draw the same on machines
//! without fonts installed.

use anyhow::{anyhow, Result};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use std::ops::Range;
use std::path::Path;

use super::{MetricValue, Report, TaskResult};
use crate::error::usage;

/// DejaVu Sans, cut down to Latin (see assets/fonts/LICENSE-DejaVu.txt).
const FONT: &[u8] = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/fonts/DejaVuSans-subset.ttf"));

/// The family name plotters asks for by default.
const FAMILY: &str = "sans-serif";

/// Width and height in pixels (SVG user units).
const SIZE: (u32, u32) = (960, 600);

/// Series colours (matplotlib's "tab10"): distinguishable, and none too pale on white.
const COLORS: [RGBColor; 10] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x7f, 0x7f, 0x7f),
    RGBColor(0xbc, 0xbd, 0x22),
    RGBColor(0x17, 0xbe, 0xcf),
];

/// The metrics plotted without `--metric`: answer tasks have accuracy, code tasks pass@1.
const DEFAULT_METRICS: [&str; 2] = ["accuracy", "pass@1"];

/// Image formats, chosen by the output file's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Scalable vector graphics.
    Svg,
    /// Portable network graphics, 8-bit RGB.
    Png,
}

impl Format {
    /// The format named by `path`'s extension (`.svg` or `.png`, any case).
    pub fn of(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "svg" => Some(Format::Svg),
            "png" => Some(Format::Png),
            _ => None,
        }
    }
}

/// How a series is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// The base LM without diffusion: a point at 0 and a dashed horizontal reference line.
    Base,
    /// A solver on fixed grids: points joined by a line.
    FixedGrid,
    /// An adaptive solver: distinct markers at the measured evaluations.
    Adaptive,
    /// A baseline from another report (e.g. weight finetuning): a dotted horizontal line
    /// across the chart, its 95% interval a pale band.
    Reference,
}

/// A metric value at some diffusion evaluations per token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Diffusion evaluations per token.
    pub x: f64,
    /// The metric.
    pub y: f64,
    /// Its 95% interval.
    pub ci95: [f64; 2],
}

/// The points of one task and solver, drawn alike under one legend entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend text, e.g. `gsm8k midpoint`.
    pub label: String,
    /// How it is drawn.
    pub style: Style,
    /// In order of x.
    pub points: Vec<Point>,
}

/// Everything a chart shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    /// Caption.
    pub title: String,
    /// The metric's name(s), for the y axis.
    pub y_label: String,
    /// In order of first appearance in the report.
    pub series: Vec<Series>,
}

/// The chart of `report`: one `task` or all, `metric` or accuracy / pass@1.
pub fn chart(report: &Report, task: Option<&str>, metric: Option<&str>) -> Result<Chart> {
    if let Some(task) = task {
        report.require_task(task, "--task")?;
    }
    let selected: Vec<&TaskResult> = report.results.iter().filter(|r| task.is_none_or(|t| r.task == t)).collect();
    let mut series: Vec<Series> = Vec::new();
    let mut metrics: Vec<&str> = Vec::new();
    for r in &selected {
        // Completions scored without a model have no cost to plot them at.
        let Some(x) = r.setting.evals_per_token else { continue };
        let m = pick_metric(report, r, metric)?;
        if !metrics.contains(&m.name.as_str()) {
            metrics.push(&m.name);
        }
        let (label, style) = series_of(r);
        let point = Point { x, y: m.value, ci95: m.ci95 };
        match series.iter_mut().find(|s| s.label == label) {
            Some(s) => s.points.push(point),
            None => series.push(Series { label, style, points: vec![point] }),
        }
    }
    if series.is_empty() {
        let settings: Vec<String> = selected.iter().map(|r| format!("{}/{}", r.task, r.setting.label)).collect();
        crate::bail_usage!(
            "{}: nothing to plot: no result has diffusion evaluations per token (results: {})",
            report.source,
            settings.join(", ")
        );
    }
    for s in &mut series {
        s.points.sort_by(|a, b| a.x.total_cmp(&b.x));
    }
    let y_label = metrics.join(" / ");
    let what = match task {
        Some(task) => format!("{task}: {y_label}"),
        None => y_label.clone(),
    };
    let title = format!("{what} vs diffusion evaluations per token — {}", provenance(report, &selected));
    Ok(Chart { title, y_label, series })
}

/// Adds the base-decoding results (0 diffusion evaluations per token) of `report`, one task
/// or all, as reference lines labelled `TASK NAME`: a model trained another way on the same
/// data (weight LoRA, full finetuning), decoded as the chart's base LM.
pub fn add_baseline(chart: &mut Chart, name: &str, report: &Report, task: Option<&str>, metric: Option<&str>) -> Result<()> {
    if let Some(task) = task {
        report.require_task(task, &format!("--baseline {name}: --task"))?;
    }
    let mut added = 0;
    for r in report.results.iter().filter(|r| task.is_none_or(|t| r.task == t)) {
        if r.setting.evals_per_token != Some(0.0) {
            continue;
        }
        let m = pick_metric(report, r, metric)?;
        let point = Point { x: 0.0, y: m.value, ci95: m.ci95 };
        chart.series.push(Series { label: format!("{} {name}", r.task), style: Style::Reference, points: vec![point] });
        added += 1;
    }
    if added == 0 {
        crate::bail_usage!(
            "--baseline {name}={}: no result decoded without diffusion (0 evaluations per token){}",
            report.source,
            task.map(|t| format!(" for task {t}")).unwrap_or_default()
        );
    }
    Ok(())
}

/// `model M, checkpoint C, n = N`: what a reader needs to place the chart.
fn provenance(report: &Report, selected: &[&TaskResult]) -> String {
    // The paths as the run was given them: a directory's last name alone ("model") says little.
    let name = |identity: &Option<serde_json::Value>| identity.as_ref().and_then(|v| v["path"].as_str()).map(str::to_owned);
    let model = name(&report.model).unwrap_or_else(|| "model unknown".into());
    let checkpoint = name(&report.l2d).unwrap_or_else(|| "no checkpoint".into());
    let sizes: Vec<usize> = selected.iter().map(|r| r.per_item.len()).collect();
    let (lo, hi) = (sizes.iter().copied().min().unwrap_or(0), sizes.iter().copied().max().unwrap_or(0));
    let n = if lo == hi { format!("n = {lo}") } else { format!("n = {lo}–{hi}") };
    format!("{model}, {checkpoint}, {n}")
}

/// `--metric`, or the first of the default metrics the result has.
fn pick_metric<'r>(report: &Report, r: &'r TaskResult, metric: Option<&str>) -> Result<&'r MetricValue> {
    let wanted: Vec<&str> = metric.map_or(DEFAULT_METRICS.to_vec(), |m| vec![m]);
    let found = wanted.iter().find_map(|w| r.metrics.iter().find(|m| m.name == *w));
    found.ok_or_else(|| {
        let have: Vec<&str> = r.metrics.iter().map(|m| m.name.as_str()).collect();
        let place = format!("{} ({}) in {}", r.task, r.setting.label, report.source);
        match metric {
            Some(m) => usage(format!("--metric {m}: not reported for {place} (metrics: {})", have.join(", "))),
            None => usage(format!(
                "{place} has neither accuracy nor pass@1; pick one with --metric (metrics: {})",
                have.join(", ")
            )),
        }
    })
}

/// The legend entry a result belongs to and how that series is drawn.
fn series_of(r: &TaskResult) -> (String, Style) {
    let s = &r.setting;
    let solver = s.solver.as_deref().unwrap_or(&s.label);
    if s.steps == Some(0) || s.evals_per_token == Some(0.0) {
        (format!("{} {}", r.task, s.label), Style::Base)
    } else if s.steps.is_some() {
        (format!("{} {solver}", r.task), Style::FixedGrid)
    } else {
        (format!("{} {solver} (adaptive)", r.task), Style::Adaptive)
    }
}

/// Draws `chart` in memory: the SVG document or the PNG file's bytes.
pub fn render(chart: &Chart, format: Format) -> Result<Vec<u8>> {
    plotters::style::register_font(FAMILY, FontStyle::Normal, FONT)
        .map_err(|_| anyhow!("the font compiled into l2d cannot be read"))?;
    let failed = |e: String| anyhow!("cannot draw the chart: {e}");
    match format {
        Format::Svg => {
            let mut svg = String::new();
            draw(SVGBackend::with_string(&mut svg, SIZE).into_drawing_area(), chart)
                .map_err(|e| failed(e.to_string()))?;
            Ok(svg.into_bytes())
        }
        Format::Png => {
            let mut rgb = vec![0u8; SIZE.0 as usize * SIZE.1 as usize * 3];
            draw(BitMapBackend::with_buffer(&mut rgb, SIZE).into_drawing_area(), chart)
                .map_err(|e| failed(e.to_string()))?;
            encode_png(&rgb, SIZE)
        }
    }
}

type DrawResult<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// Width of the legend column right of the plot, so that it never covers data.
const LEGEND_WIDTH: u32 = 250;

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, chart: &Chart) -> DrawResult<DB> {
    root.fill(&WHITE)?;
    let root = root.titled(&chart.title, (FAMILY, 20))?;
    let (plot_area, legend_area) = root.split_horizontally(SIZE.0 - LEGEND_WIDTH);
    let (xs, ys) = axis_ranges(chart);
    let mut ctx = ChartBuilder::on(&plot_area)
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(xs.clone().log_scale(), ys)?;
    ctx.configure_mesh()
        .x_desc("diffusion evaluations per token (log scale; the base LM at the left edge)")
        .y_desc(&chart.y_label)
        .x_label_formatter(&|x| format!("{}", (x * 100.0).round() / 100.0))
        .y_label_formatter(&|y| format!("{y:.2}"))
        .light_line_style(TRANSPARENT)
        .bold_line_style(BLACK.mix(0.12))
        .label_style((FAMILY, 14))
        .axis_desc_style((FAMILY, 15))
        .draw()?;
    for (i, s) in chart.series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()].to_rgba();
        draw_series(&mut ctx, s, color, &xs)?;
        draw_legend_entry(&legend_area, i, s, color)?;
    }
    root.present()
}

/// Entry `i` of the legend column: the series' line or marker and its label.
fn draw_legend_entry<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, i: usize, s: &Series, color: RGBAColor) -> DrawResult<DB> {
    let y = 40 + 26 * i as i32;
    let line = color.stroke_width(2);
    match s.style {
        Style::Base => area.draw(&DashedPathElement::new([(8, y), (34, y)], 5, 3, line))?,
        Style::FixedGrid => {
            area.draw(&PathElement::new([(8, y), (34, y)], line))?;
            area.draw(&Circle::new((21, y), 4, color.filled()))?
        }
        Style::Adaptive => area.draw(&TriangleMarker::new((21, y), 6, color.filled()))?,
        Style::Reference => area.draw(&DashedPathElement::new([(8, y), (34, y)], REFERENCE_DASH.0, REFERENCE_DASH.1, line))?,
    }
    area.draw(&Text::new(s.label.clone(), (42, y - 8), (FAMILY, 14)))
}

/// Dash and gap of a baseline's line: shorter than the base LM's (8, 6), so the two differ
/// in grey too.
const REFERENCE_DASH: (u32, u32) = (3, 4);

type Ctx<'a, DB> = ChartContext<'a, DB, Cartesian2d<LogCoord<f64>, RangedCoordf64>>;

/// One series with its error bars; `xs` spans the base LM's reference line.
fn draw_series<DB: DrawingBackend>(
    ctx: &mut Ctx<'_, DB>,
    s: &Series,
    color: RGBAColor,
    xs: &Range<f64>,
) -> DrawResult<DB> {
    let line = color.stroke_width(2);
    // A log axis has no 0: the base LM (0 evaluations) stands at its left edge.
    let x_of = |p: &Point| if p.x > 0.0 { p.x } else { xs.start };
    // A baseline shows its interval as a band instead.
    if s.style != Style::Reference {
        let bar = |p: &Point| ErrorBar::new_vertical(x_of(p), p.ci95[0], p.y, p.ci95[1], color.stroke_width(1), 8);
        ctx.draw_series(s.points.iter().map(bar))?;
    }
    let at = |p: &Point| (x_of(p), p.y);
    match s.style {
        Style::Base => {
            ctx.draw_series(s.points.iter().map(|p| Circle::new(at(p), 5, color.filled())))?;
            let reference =
                s.points.iter().flat_map(|p| DashedLineSeries::new([(xs.start, p.y), (xs.end, p.y)], 8, 6, line));
            ctx.draw_series(reference)?;
        }
        Style::FixedGrid => {
            ctx.draw_series(s.points.iter().map(|p| Circle::new(at(p), 4, color.filled())))?;
            ctx.draw_series(LineSeries::new(s.points.iter().map(at), line))?;
        }
        Style::Adaptive => {
            ctx.draw_series(s.points.iter().map(|p| TriangleMarker::new(at(p), 7, color.filled())))?;
        }
        Style::Reference => draw_reference(ctx, s, color, xs)?,
    }
    Ok(())
}

/// A baseline across the whole x range: its interval as a band, its value as a dotted line.
fn draw_reference<DB: DrawingBackend>(
    ctx: &mut Ctx<'_, DB>,
    s: &Series,
    color: RGBAColor,
    xs: &Range<f64>,
) -> DrawResult<DB> {
    let band = |p: &Point| Rectangle::new([(xs.start, p.ci95[0]), (xs.end, p.ci95[1])], color.mix(0.12).filled());
    ctx.draw_series(s.points.iter().map(band))?;
    let (dash, gap) = REFERENCE_DASH;
    let line = color.stroke_width(2);
    ctx.draw_series(s.points.iter().flat_map(|p| DashedLineSeries::new([(xs.start, p.y), (xs.end, p.y)], dash, gap, line)))?;
    Ok(())
}

/// The narrowest accuracy axis drawn.
const MIN_Y_SPAN: f64 = 0.1;

/// x on a log scale from below the smallest cost (where the base LM stands) past the
/// largest; y around every point and interval with a margin, so that a series at 0
/// or 1 and its error bars stay clear of the frame.
fn axis_ranges(chart: &Chart) -> (Range<f64>, Range<f64>) {
    let points = || chart.series.iter().flat_map(|s| &s.points);
    let costs = || points().map(|p| p.x).filter(|&x| x > 0.0);
    let x_min = costs().fold(f64::INFINITY, f64::min);
    let x_max = costs().fold(0.0, f64::max);
    let xs = if x_max > 0.0 { x_min / 1.6..x_max * 1.6 } else { 0.5..2.0 };
    let lo = points().map(|p| p.ci95[0].min(p.y)).fold(f64::INFINITY, f64::min);
    let hi = points().map(|p| p.ci95[1].max(p.y)).fold(f64::NEG_INFINITY, f64::max);
    // Equal values everywhere (e.g. all 1.0) would leave a sliver of an axis whose
    // two-decimal labels repeat: widen it around them.
    let pad = ((hi - lo) * 0.08).max(0.03).max((MIN_Y_SPAN - (hi - lo)) / 2.0);
    (xs, lo - pad..hi + pad)
}

fn encode_png(rgb: &[u8], (width, height): (u32, u32)) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(rgb)?;
    writer.finish()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart(ys: &[f64]) -> Chart {
        let points = ys.iter().enumerate().map(|(i, &y)| Point { x: i as f64, y, ci95: [y, y] }).collect();
        let series = vec![Series { label: "s".into(), style: Style::FixedGrid, points }];
        Chart { title: "t".into(), y_label: "accuracy".into(), series }
    }

    #[test]
    fn axes_leave_a_margin_around_every_value() {
        let (_, y) = axis_ranges(&chart(&[1.0, 1.0]));
        assert!(y.end > 1.0 && y.start < 1.0 && y.end - y.start >= MIN_Y_SPAN - 1e-12, "{y:?}");
        let (_, y) = axis_ranges(&chart(&[0.0, 0.0]));
        assert!(y.start < 0.0 && y.end > 0.0, "a series at 0 is drawn inside the frame: {y:?}");
        let (_, y) = axis_ranges(&chart(&[0.2, 0.6]));
        assert!(y.start < 0.2 && y.end > 0.6 && y.end - y.start < 0.5, "{y:?}");
        // Costs 0 (the base), 1, 2: a log axis below the smallest cost and past the largest.
        let (x, _) = axis_ranges(&chart(&[0.3, 0.4, 0.5]));
        assert!(x.start > 0.0 && x.start < 1.0 && x.end > 2.0, "{x:?}");
    }
}

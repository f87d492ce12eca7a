//! `l2d report`: reading back the report.json files `l2d eval` writes.
//! `report compare` pairs two reports item by item; `report plot` charts a
//! metric against diffusion evaluations per token.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

use crate::eval::report::plot::{self, Format};
use crate::eval::report::{self, Selection};
use crate::eval::stats;

/// Flags of `l2d report`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to do with the reports.
    #[command(subcommand)]
    pub command: ReportCommand,
}

/// The report commands.
#[derive(Debug, clap::Subcommand)]
pub enum ReportCommand {
    /// Paired per-item differences B − A of two reports: standard error, 95% intervals (normal and
    /// bootstrap), and the items only A or only B gets right.
    Compare(CompareArgs),
    /// Chart a metric against diffusion evaluations per token, with 95% intervals (SVG or PNG).
    Plot(PlotArgs),
}

/// Flags of `l2d report compare A.json B.json`.
#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    /// The first report (A).
    #[arg(value_name = "A.json")]
    pub a: PathBuf,
    /// The second report (B); may be A again, to compare two of its settings with --a and --b.
    #[arg(value_name = "B.json")]
    pub b: PathBuf,
    /// Setting (label) of A to compare; default: the --b label, or every label both reports have.
    #[arg(long = "a", value_name = "LABEL")]
    pub label_a: Option<String>,
    /// Setting (label) of B to compare; default: the --a label, or every label both reports have.
    #[arg(long = "b", value_name = "LABEL")]
    pub label_b: Option<String>,
    /// Only this task; default: every task both reports have.
    #[arg(long, value_name = "NAME")]
    pub task: Option<String>,
    /// One JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Flags of `l2d report plot REPORT.json --out FILE`.
#[derive(Debug, clap::Args)]
pub struct PlotArgs {
    /// The report to chart.
    #[arg(value_name = "REPORT.json")]
    pub report: PathBuf,
    /// The chart: .svg or .png.
    #[arg(long, value_name = "FILE.svg|FILE.png")]
    pub out: PathBuf,
    /// Only this task; default: every task, one series per task and solver.
    #[arg(long, value_name = "NAME")]
    pub task: Option<String>,
    /// Metric on the y axis, e.g. pass@5; default: accuracy, or pass@1 for code tasks.
    #[arg(long, value_name = "NAME")]
    pub metric: Option<String>,
    /// Another report's result without diffusion (e.g. a weight-finetuned model), drawn as a
    /// horizontal line labelled `TASK NAME` with its 95% interval; repeatable.
    #[arg(long = "baseline", value_name = "NAME=REPORT.json")]
    pub baselines: Vec<String>,
}

/// Runs the chosen report command.
pub fn run(args: Args) -> Result<()> {
    match args.command {
        ReportCommand::Compare(a) => compare(a),
        ReportCommand::Plot(a) => plot(a),
    }
}

fn compare(args: CompareArgs) -> Result<()> {
    let a = report::load(&args.a)?;
    let b = report::load(&args.b)?;
    let sel =
        Selection { task: args.task.as_deref(), label_a: args.label_a.as_deref(), label_b: args.label_b.as_deref() };
    let comparisons = report::compare(&a, &b, sel)?;
    if args.json {
        let out = serde_json::json!({
            "a": a.source,
            "b": b.source,
            "bootstrap": {"resamples": stats::BOOTSTRAP_RESAMPLES, "seed": stats::BOOTSTRAP_SEED},
            "comparisons": comparisons,
        });
        println!("{out}");
    } else {
        println!("A = {}, B = {}", a.source, b.source);
        print!("{}", report::comparison_table(&comparisons));
    }
    Ok(())
}

fn plot(args: PlotArgs) -> Result<()> {
    let Some(format) = Format::of(&args.out) else {
        crate::bail_usage!("--out {}: unsupported extension; use .svg or .png", args.out.display());
    };
    let report = report::load(&args.report)?;
    let mut chart = plot::chart(&report, args.task.as_deref(), args.metric.as_deref())?;
    for baseline in &args.baselines {
        let Some((name, path)) = baseline.split_once('=').filter(|(n, p)| !n.is_empty() && !p.is_empty()) else {
            crate::bail_usage!("--baseline {baseline}: expected NAME=REPORT.json");
        };
        let other = report::load(Path::new(path))?;
        plot::add_baseline(&mut chart, name, &other, args.task.as_deref(), args.metric.as_deref())?;
    }
    let bytes = plot::render(&chart, format)?;
    create_parent(&args.out)?;
    crate::io::write_atomic(&args.out, &bytes)?;
    let points: usize = chart.series.iter().map(|s| s.points.len()).sum();
    println!("wrote {} ({} series, {points} points)", args.out.display(), chart.series.len());
    Ok(())
}

fn create_parent(path: &Path) -> Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => {
            crate::io::create_output_dir(dir).context("--out")?;
            Ok(())
        }
        _ => Ok(()),
    }
}

//! `l2d report compare` and `l2d report plot` through the binary, on
//! report.json files built here and on one written by `l2d eval`.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A setting as `l2d eval` records it.
fn setting(label: &str, steps: Option<u64>, solver: Option<&str>, evals_per_token: Option<f64>) -> Value {
    json!({"label": label, "steps": steps, "solver": solver, "evals_per_token": evals_per_token})
}

/// One result: `items` are (task_id, n, correct); its one metric is the mean of correct/n
/// with a made-up interval of ±0.1 inside [0, 1].
fn result(task: &str, setting: Value, metric: &str, items: &[(&str, usize, usize)]) -> Value {
    let mean = items.iter().map(|&(_, n, c)| c as f64 / n as f64).sum::<f64>() / items.len() as f64;
    let per_item: Vec<Value> =
        items.iter().map(|&(id, n, correct)| json!({"task_id": id, "n": n, "correct": correct})).collect();
    let ci95 = [(mean - 0.1).max(0.0), (mean + 0.1).min(1.0)];
    json!({
        "task": task, "setting": setting,
        "generation": {"tokens": 100, "tokens_per_s": 10.0, "wall_s": 10.0},
        "data": "data.jsonl", "items": items.len(), "dataset_items": items.len(), "samples": items.len(),
        "samples_per_item": [1, 1],
        "metrics": [{"name": metric, "value": mean, "n": items.len(), "stderr": 0.05, "ci95": ci95}],
        "bootstrap": {"resamples": 1000, "seed": 24301},
        "per_item": per_item,
    })
}

/// 0/1 items with ids "0", "1", ... from `correct`.
fn binary(correct: &[usize]) -> Vec<(String, usize, usize)> {
    correct.iter().enumerate().map(|(i, &c)| (i.to_string(), 1, c)).collect()
}

fn items(v: &[(String, usize, usize)]) -> Vec<(&str, usize, usize)> {
    v.iter().map(|(id, n, c)| (id.as_str(), *n, *c)).collect()
}

fn write_report(dir: &Path, name: &str, results: Vec<Value>) -> PathBuf {
    let report = json!({
        "format": "l2d-eval-report", "version": 1,
        "model": {"path": "m"}, "l2d": null, "config": null, "extra_field_from_a_later_writer": true,
        "results": results,
    });
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    path
}

fn compare_json(args: &[&str]) -> Value {
    let mut all = vec!["report", "compare"];
    all.extend_from_slice(args);
    all.push("--json");
    serde_json::from_str(ok(l2d(&all)).trim()).unwrap()
}

fn close(a: &Value, b: f64) -> bool {
    (a.as_f64().unwrap() - b).abs() < 1e-12
}

/// A (10 paired 0/1 items plus 2 of its own) against B (the same 10 in another order plus 1 of its own).
fn gsm8k_pair(dir: &Path) -> (PathBuf, PathBuf) {
    let a_scores = [1, 0, 1, 1, 0, 0, 1, 0, 1, 0];
    let b_scores = [1, 1, 1, 0, 1, 0, 1, 1, 1, 0];
    let mut a_items = binary(&a_scores);
    a_items.extend([("a-only-1".to_string(), 1, 1), ("a-only-2".to_string(), 1, 0)]);
    let mut b_items = binary(&b_scores);
    b_items.reverse();
    b_items.push(("b-only".to_string(), 1, 1));
    // A second task whose items have 2 samples each: scores 0.5 are not 0/1.
    let code_a = [("h0", 2, 1), ("h1", 2, 2), ("h2", 2, 0)];
    let code_b = [("h0", 2, 2), ("h1", 2, 2), ("h2", 2, 1)];
    let base = || setting("base", Some(0), None, Some(0.0));
    let a = write_report(
        dir,
        "a.json",
        vec![result("gsm8k", base(), "accuracy", &items(&a_items)), result("humaneval", base(), "pass@1", &code_a)],
    );
    let b = write_report(
        dir,
        "b.json",
        vec![result("humaneval", base(), "pass@1", &code_b), result("gsm8k", base(), "accuracy", &items(&b_items))],
    );
    (a, b)
}

#[test]
fn compare_matches_hand_computed_paired_statistics() {
    let dir = scratch("report-compare");
    let (a, b) = gsm8k_pair(&dir);
    let out = compare_json(&[s(&a), s(&b)]);
    assert_eq!(out["a"], s(&a));
    assert_eq!(out["bootstrap"]["resamples"], 1000);
    let cs = out["comparisons"].as_array().unwrap();
    assert_eq!(cs.len(), 2, "{out}");
    let g = &cs[0];
    assert_eq!(
        (g["task"].as_str(), g["label_a"].as_str(), g["label_b"].as_str()),
        (Some("gsm8k"), Some("base"), Some("base"))
    );
    assert_eq!(
        (g["paired"].as_u64(), g["unpaired_a"].as_u64(), g["unpaired_b"].as_u64()),
        (Some(10), Some(2), Some(1))
    );
    // By hand: A right on 5 of the 10, B on 7; differences B - A = [0, 1, 0, -1, 1, 0, 0, 1, 0, 0].
    assert!(close(&g["mean_a"], 0.5) && close(&g["mean_b"], 0.7) && close(&g["diff"], 0.2), "{g}");
    // Sample variance: (3 * 0.8^2 + 1.2^2 + 6 * 0.2^2) / 9 = 3.6 / 9 = 0.4; se = sqrt(0.4 / 10) = 0.2.
    assert!(close(&g["stderr"], 0.2), "{g}");
    assert!(close(&g["ci95_normal"][0], 0.2 - 1.96 * 0.2) && close(&g["ci95_normal"][1], 0.2 + 1.96 * 0.2), "{g}");
    assert_eq!((g["only_a_right"].as_u64(), g["only_b_right"].as_u64()), (Some(1), Some(3)));
    // The bootstrap interval holds the mean, is made of means of 10 differences (multiples of
    // 0.1) and is about as wide as the normal one.
    let (lo, hi) = (g["ci95_bootstrap"][0].as_f64().unwrap(), g["ci95_bootstrap"][1].as_f64().unwrap());
    assert!(lo <= 0.2 && 0.2 <= hi, "{g}");
    assert!(((lo * 10.0).round() - lo * 10.0).abs() < 1e-9 && ((hi * 10.0).round() - hi * 10.0).abs() < 1e-9, "{g}");
    assert!((lo - (0.2 - 0.392)).abs() <= 0.15 && (hi - (0.2 + 0.392)).abs() <= 0.15, "{g}");

    // humaneval: scores A = [0.5, 1, 0], B = [1, 1, 0.5]; differences [0.5, 0, 0.5].
    let h = &cs[1];
    assert_eq!(h["task"], "humaneval");
    assert!(close(&h["mean_a"], 0.5) && close(&h["mean_b"], 2.5 / 3.0) && close(&h["diff"], 1.0 / 3.0), "{h}");
    // Deviations 1/6, -1/3, 1/6: variance (1/36 + 1/9 + 1/36) / 2 = 1/12; se = sqrt(1/36) = 1/6.
    assert!(close(&h["stderr"], 1.0 / 6.0), "{h}");
    assert!(h["only_a_right"].is_null() && h["only_b_right"].is_null(), "scores of 0.5 are not 0/1: {h}");

    // Fixed seed: the same numbers again; the table shows them and the items left out.
    assert_eq!(compare_json(&[s(&a), s(&b)]), out);
    let table = ok(l2d(&["report", "compare", s(&a), s(&b), "--task", "gsm8k"]));
    assert!(table.contains("+0.2000") && table.contains("[-0.1920, +0.5920]"), "{table}");
    assert!(table.contains("paired 10 items, left out 2 only in A and 1 only in B"), "{table}");
    assert!(!table.contains("humaneval"), "--task gsm8k: {table}");
}

#[test]
fn compare_pairs_common_labels_or_the_settings_picked() {
    let dir = scratch("report-labels");
    let ids = |c: &[usize]| binary(c);
    let (base, mid, dopri) = (ids(&[0, 0, 1, 1]), ids(&[0, 1, 1, 1]), ids(&[1, 1, 1, 1]));
    let r = |label: &str, steps, solver, evals, v: &[(String, usize, usize)]| {
        result("gsm8k", setting(label, steps, solver, evals), "accuracy", &items(v))
    };
    let a = write_report(
        &dir,
        "a.json",
        vec![r("base", Some(0), None, Some(0.0), &base), r("midpoint-8", Some(8), Some("midpoint"), Some(15.0), &mid)],
    );
    let b = write_report(
        &dir,
        "b.json",
        vec![
            r("dopri5", None, Some("dopri5"), Some(12.5), &dopri),
            r("midpoint-8", Some(8), Some("midpoint"), Some(15.0), &dopri),
            r("base", Some(0), None, Some(0.0), &base),
        ],
    );
    // Every label both have, in A's order; dopri5 has no partner.
    let labels = |out: &Value| -> Vec<(String, String)> {
        out["comparisons"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["label_a"].as_str().unwrap().to_string(), c["label_b"].as_str().unwrap().to_string()))
            .collect()
    };
    let both = compare_json(&[s(&a), s(&b)]);
    assert_eq!(labels(&both), [("base".into(), "base".into()), ("midpoint-8".into(), "midpoint-8".into())]);
    assert!(close(&both["comparisons"][0]["diff"], 0.0) && close(&both["comparisons"][1]["diff"], 0.25));

    // Two settings of one report.
    let one = compare_json(&[s(&a), s(&a), "--a", "base", "--b", "midpoint-8"]);
    assert_eq!(labels(&one), [("base".into(), "midpoint-8".into())]);
    assert!(close(&one["comparisons"][0]["diff"], 0.25) && one["comparisons"][0]["only_b_right"] == 1);
    // One flag names the same setting on both sides.
    assert_eq!(
        labels(&compare_json(&[s(&a), s(&b), "--b", "midpoint-8"])),
        [("midpoint-8".into(), "midpoint-8".into())]
    );
    let cross = compare_json(&[s(&a), s(&b), "--a", "base", "--b", "dopri5"]);
    assert!(close(&cross["comparisons"][0]["diff"], 0.5), "{cross}");
}

/// The text of an SVG file's `<text>` elements, read by Python's XML parser.
fn svg_texts(path: &Path) -> Vec<String> {
    let script = "import sys, xml.etree.ElementTree as E\n\
                  root = E.parse(sys.argv[1]).getroot()\n\
                  assert root.tag == '{http://www.w3.org/2000/svg}svg', root.tag\n\
                  for t in root.iter('{http://www.w3.org/2000/svg}text'): print((t.text or '').strip())\n";
    let out = Command::new(python()).args(["-c", script, s(path)]).output().unwrap();
    assert!(out.status.success(), "not SVG: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_string).collect()
}

/// Width, height and RGB pixels of a PNG, decoded by the `png` crate (CRCs checked).
fn decode_png(path: &Path) -> (u32, u32, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    let mut reader = png::Decoder::new(std::io::Cursor::new(bytes)).read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let frame = reader.next_frame(&mut buf).unwrap();
    assert_eq!(frame.color_type, png::ColorType::Rgb);
    buf.truncate(frame.buffer_size());
    (frame.width, frame.height, buf)
}

/// A sweep over settings of gsm8k and math; each result is right on `k` of its 4 items.
fn sweep_report(dir: &Path) -> PathBuf {
    let r = |task: &str, label: &str, steps, solver, evals, k: usize| {
        let correct: Vec<usize> = (0..4).map(|i| (i < k) as usize).collect();
        result(task, setting(label, steps, solver, evals), "accuracy", &items(&binary(&correct)))
    };
    write_report(
        dir,
        "sweep.json",
        vec![
            r("gsm8k", "base", Some(0), None, Some(0.0), 1),
            r("gsm8k", "midpoint-8", Some(8), Some("midpoint"), Some(15.0), 3),
            r("gsm8k", "midpoint-2", Some(2), Some("midpoint"), Some(3.0), 2),
            r("gsm8k", "dopri5", None, Some("dopri5"), Some(11.25), 4),
            r("gsm8k", "samples", None, None, None, 2),
            r("math", "base", Some(0), None, Some(0.0), 0),
            r("math", "euler-4", Some(4), Some("euler"), Some(4.0), 2),
        ],
    )
}

#[test]
fn plot_writes_svg_and_png_with_every_series() {
    let dir = scratch("report-plot");
    let report = sweep_report(&dir);
    let svg = dir.join("charts/sweep.svg");
    let printed = ok(l2d(&["report", "plot", s(&report), "--out", s(&svg)]));
    assert!(printed.contains("5 series, 6 points"), "{printed}");
    assert!(std::fs::read_to_string(&svg).unwrap().starts_with("<svg"));
    let texts = svg_texts(&svg);
    for label in ["gsm8k base", "gsm8k midpoint", "gsm8k dopri5 (adaptive)", "math base", "math euler"] {
        assert!(texts.iter().any(|t| t == label), "legend lacks {label:?}: {texts:?}");
    }
    // The title names the model, the checkpoint and n; the x axis is logarithmic.
    for axis in [
        "diffusion evaluations per token (log scale; the base LM at the left edge)",
        "accuracy",
        "accuracy vs diffusion evaluations per token — m, no checkpoint, n = 4",
        "10",
    ] {
        assert!(texts.iter().any(|t| t == axis), "lacks {axis:?}: {texts:?}");
    }
    assert!(!texts.iter().any(|t| t.contains("samples")), "the samples setting has no cost to plot at");

    let only_math = dir.join("math.svg");
    ok(l2d(&["report", "plot", s(&report), "--out", s(&only_math), "--task", "math"]));
    let texts = svg_texts(&only_math);
    assert!(texts.iter().any(|t| t == "math euler") && !texts.iter().any(|t| t.contains("gsm8k")), "{texts:?}");

    let png = dir.join("charts/sweep.PNG");
    ok(l2d(&["report", "plot", s(&report), "--out", s(&png)]));
    let (w, h, rgb) = decode_png(&png);
    assert_eq!((w, h), (960, 600));
    assert_eq!(rgb.len(), 960 * 600 * 3);
    let pixels: Vec<&[u8]> = rgb.chunks(3).collect();
    assert_eq!(pixels[0], [255, 255, 255], "white background");
    // The first series' colour (the base line of gsm8k, #1f77b4) is drawn, and text is rasterised:
    // pixels of grey levels, which only antialiased glyph edges make.
    assert!(pixels.iter().filter(|p| **p == [0x1f, 0x77, 0xb4]).count() > 100);
    let greys = pixels.iter().filter(|p| p[0] == p[1] && p[1] == p[2] && p[0] > 40 && p[0] < 200).count();
    assert!(greys > 1000, "{greys} grey pixels: no text drawn?");
    // Written through a temporary file and a rename: nothing else is left beside the charts.
    let mut names: Vec<String> =
        std::fs::read_dir(dir.join("charts")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["sweep.PNG", "sweep.svg"]);
}

#[test]
fn plot_picks_the_metric() {
    let dir = scratch("report-metric");
    let mut r = result("mbpp", setting("midpoint-8", Some(8), Some("midpoint"), Some(15.0)), "pass@1", &[("1", 10, 3)]);
    r["metrics"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "pass@5", "value": 0.9, "n": 1, "stderr": 0.0, "ci95": [0.9, 0.9]}));
    let report = write_report(&dir, "code.json", vec![r]);
    let out = dir.join("p.svg");
    ok(l2d(&["report", "plot", s(&report), "--out", s(&out)]));
    assert!(svg_texts(&out).iter().any(|t| t == "pass@1 vs diffusion evaluations per token — m, no checkpoint, n = 1"));
    ok(l2d(&["report", "plot", s(&report), "--out", s(&out), "--metric", "pass@5"]));
    assert!(svg_texts(&out).iter().any(|t| t == "pass@5"));
}

/// Two reports written by `l2d eval` from given completions: the first 20 GSM8K items, all
/// right in A and right on the even items in B.
#[test]
fn compare_reads_reports_written_by_eval() {
    let dir = scratch("report-from-eval");
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/gsm8k/test.jsonl");
    let records: Vec<Value> =
        std::fs::read_to_string(&data).unwrap().lines().take(20).map(|l| serde_json::from_str(l).unwrap()).collect();
    let run = |name: &str, right: &dyn Fn(usize) -> bool| -> PathBuf {
        let lines: String = records
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let completion = if right(i) { r["answer"].as_str().unwrap().to_string() } else { "No idea.".into() };
                format!("{}\n", json!({"task_id": i, "completion": completion}))
            })
            .collect();
        let samples = dir.join(format!("{name}.jsonl"));
        std::fs::write(&samples, lines).unwrap();
        let out = dir.join(name);
        ok(l2d(&["eval", "--task", "gsm8k", "--data", s(&data), "--samples", s(&samples), "--out", s(&out)]));
        out.join("report.json")
    };
    let a = run("all", &|_| true);
    let b = run("even", &|i| i % 2 == 0);
    let out = compare_json(&[s(&a), s(&b)]);
    let c = &out["comparisons"][0];
    assert_eq!(
        (c["task"].as_str(), c["label_a"].as_str(), c["paired"].as_u64()),
        (Some("gsm8k"), Some("samples"), Some(20))
    );
    assert!(close(&c["mean_a"], 1.0) && close(&c["mean_b"], 0.5) && close(&c["diff"], -0.5), "{c}");
    assert_eq!((c["only_a_right"].as_u64(), c["only_b_right"].as_u64()), (Some(10), Some(0)));
    // Scored completions have no diffusion cost: nothing to plot.
    let err = l2d(&["report", "plot", s(&a), "--out", s(&dir.join("p.svg"))]);
    assert_error(&err, 2, &["nothing to plot", "gsm8k/samples"]);
}

#[test]
fn bad_reports_and_flags_are_usage_errors() {
    let dir = scratch("report-errors");
    let (a, b) = gsm8k_pair(&dir);
    let compare = |args: &[&str]| {
        let mut all = vec!["report", "compare"];
        all.extend_from_slice(args);
        l2d(&all)
    };
    let missing = dir.join("missing.json");
    assert_error(&compare(&[s(&missing), s(&b)]), 2, &["missing.json", "cannot read"]);
    let text = dir.join("text.json");
    std::fs::write(&text, "accuracy: 0.4\n").unwrap();
    assert_error(&compare(&[s(&a), s(&text)]), 2, &["text.json", "not JSON"]);
    // The layout before "results": a top-level "tasks" array.
    let old = dir.join("old.json");
    std::fs::write(&old, r#"{"tasks": [{"task": "gsm8k", "metrics": [], "per_item": []}]}"#).unwrap();
    assert_error(&compare(&[s(&old), s(&b)]), 2, &["old.json", "not an l2d eval report", "\"results\"", "\"format\""]);
    let other = dir.join("other.json");
    std::fs::write(&other, r#"{"format": "something-else", "version": 1, "results": []}"#).unwrap();
    assert_error(&compare(&[s(&a), s(&other)]), 2, &["other.json", "something-else", "l2d-eval-report"]);
    let bad_item = write_report(
        &dir,
        "bad-item.json",
        vec![result("gsm8k", setting("base", Some(0), None, Some(0.0)), "accuracy", &[("1", 1, 2)])],
    );
    assert_error(&compare(&[s(&bad_item), s(&b)]), 2, &["bad-item.json", "results[0].per_item[0]", "correct 2 of n 1"]);

    let math = write_report(
        &dir,
        "math.json",
        vec![result("math", setting("base", Some(0), None, Some(0.0)), "accuracy", &[("1", 1, 1)])],
    );
    assert_error(&compare(&[s(&a), s(&math)]), 2, &["no task in common", "gsm8k, humaneval", "math"]);
    let other_label = write_report(
        &dir,
        "dopri.json",
        vec![result("gsm8k", setting("dopri5", None, Some("dopri5"), Some(9.0)), "accuracy", &[("0", 1, 1)])],
    );
    assert_error(&compare(&[s(&a), s(&other_label)]), 2, &["task gsm8k", "no setting label in common", "--a LABEL"]);
    assert_error(&compare(&[s(&a), s(&b), "--a", "dopri5"]), 2, &["--a dopri5", "a.json", "labels: base"]);
    assert_error(&compare(&[s(&a), s(&other_label), "--b", "base"]), 2, &["--b base", "dopri.json", "labels: dopri5"]);
    assert_error(&compare(&[s(&a), s(&b), "--task", "mbpp"]), 2, &["--task mbpp", "tasks: gsm8k, humaneval"]);
    let disjoint = write_report(
        &dir,
        "disjoint.json",
        vec![result("gsm8k", setting("base", Some(0), None, Some(0.0)), "accuracy", &[("x", 1, 1)])],
    );
    assert_error(&compare(&[s(&a), s(&disjoint), "--task", "gsm8k"]), 2, &["no task_id in common"]);

    let report = sweep_report(&dir);
    let plot = |args: &[&str]| {
        let mut all = vec!["report", "plot", s(&report)];
        all.extend_from_slice(args);
        l2d(&all)
    };
    let jpg = dir.join("chart.jpg");
    assert_error(&plot(&["--out", s(&jpg)]), 2, &["--out", "chart.jpg", "unsupported extension", ".svg or .png"]);
    assert!(!jpg.exists());
    let svg = dir.join("chart.svg");
    assert_error(&plot(&["--out", s(&svg), "--task", "mmlu"]), 2, &["--task mmlu", "tasks: gsm8k, math"]);
    assert_error(&plot(&["--out", s(&svg), "--metric", "pass@5"]), 2, &["--metric pass@5", "metrics: accuracy"]);
    let samples_only = write_report(
        &dir,
        "samples.json",
        vec![result("gsm8k", setting("samples", None, None, None), "accuracy", &[("0", 1, 1)])],
    );
    let out = l2d(&["report", "plot", s(&samples_only), "--out", s(&svg)]);
    assert_error(&out, 2, &["samples.json", "nothing to plot", "gsm8k/samples"]);
    assert!(!svg.exists());
}

/// The `stroke`d segments of an SVG inside the plot (left of the legend column) in `color`,
/// as (x1, y1, x2, y2), read by Python's XML parser from `<line>` and `<polyline>` elements.
fn svg_segments(path: &Path, color: &str) -> Vec<[f64; 4]> {
    let script = "import sys, xml.etree.ElementTree as E\n\
                  ns = '{http://www.w3.org/2000/svg}'\n\
                  for e in E.parse(sys.argv[1]).getroot().iter():\n\
                  \x20   if (e.get('stroke') or '').lower() != sys.argv[2]: continue\n\
                  \x20   if e.tag == ns + 'line': xy = [e.get(k) for k in ('x1', 'y1', 'x2', 'y2')]\n\
                  \x20   elif e.tag == ns + 'polyline':\n\
                  \x20       p = e.get('points').split()\n\
                  \x20       xy = p[0].split(',') + p[-1].split(',')\n\
                  \x20   else: continue\n\
                  \x20   print(' '.join(xy))\n";
    let out = Command::new(python()).args(["-c", script, s(path), color]).output().unwrap();
    assert!(out.status.success(), "not SVG: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let segments = text.lines().map(|l| {
        let v: Vec<f64> = l.split(' ').map(|x| x.parse().unwrap()).collect();
        [v[0], v[1], v[2], v[3]]
    });
    // The legend column starts at 960 - 250 pixels.
    segments.filter(|s| s[0] < 700.0 && s[2] < 700.0).collect()
}

/// A report of one base-LM result on gsm8k, right on `k` of 4 items.
fn baseline_report(dir: &Path, name: &str, k: usize) -> PathBuf {
    let correct: Vec<usize> = (0..4).map(|i| (i < k) as usize).collect();
    let r = result("gsm8k", setting("base", Some(0), None, Some(0.0)), "accuracy", &items(&binary(&correct)));
    write_report(dir, name, vec![r])
}

#[test]
fn plot_draws_baselines_as_labelled_horizontal_lines() {
    let dir = scratch("report-baseline");
    let report = sweep_report(&dir);
    let (lora, full) = (baseline_report(&dir, "lora.json", 4), baseline_report(&dir, "full.json", 2));
    let svg = dir.join("b.svg");
    let args = ["--baseline", &format!("lora={}", s(&lora)), "--baseline", &format!("full={}", s(&full))];
    let mut all = vec!["report", "plot", s(&report), "--task", "gsm8k", "--out", s(&svg)];
    all.extend_from_slice(&args);
    let printed = ok(l2d(&all));
    // gsm8k base, midpoint, dopri5, and the two baselines.
    assert!(printed.contains("5 series, 6 points"), "{printed}");
    let texts = svg_texts(&svg);
    for label in ["gsm8k base", "gsm8k midpoint", "gsm8k lora", "gsm8k full"] {
        assert!(texts.iter().any(|t| t == label), "legend lacks {label:?}: {texts:?}");
    }
    // Series 4 and 5 (tab10 red and purple): each a dotted horizontal line across the plot,
    // lora's (accuracy 1.0) above full's (0.5), with the base LM's (0.25) below both.
    let line = |color: &str| {
        let segs = svg_segments(&svg, color);
        assert!(segs.len() > 10, "{color}: {segs:?} is not a dotted line");
        let y = segs[0][1];
        assert!(segs.iter().all(|s| s[1] == y && s[3] == y), "{color}: not horizontal: {segs:?}");
        let (x0, x1) = segs.iter().fold((f64::MAX, 0f64), |(lo, hi), s| (lo.min(s[0]), hi.max(s[2])));
        assert!(x0 < 120.0 && x1 > 650.0, "{color}: spans only {x0}..{x1}");
        y
    };
    let (y_lora, y_full) = (line("#d62728"), line("#9467bd"));
    // The base LM's dashed line: the y most of its horizontal segments share (its error
    // bar's caps are two more).
    let base: Vec<f64> = svg_segments(&svg, "#1f77b4").iter().filter(|s| s[1] == s[3]).map(|s| s[1]).collect();
    let y_base = *base.iter().max_by_key(|&&y| base.iter().filter(|&&v| v == y).count()).unwrap();
    assert!(y_lora < y_full && y_full < y_base, "lora {y_lora}, full {y_full}, base {y_base} (SVG y grows down)");

    let bad_svg = dir.join("bad.svg");
    let bad = |extra: &[&str], parts: &[&str]| {
        let mut all = vec!["report", "plot", s(&report), "--out", s(&bad_svg)];
        all.extend_from_slice(extra);
        assert_error(&l2d(&all), 2, parts);
    };
    bad(&["--baseline", s(&lora)], &["--baseline", "expected NAME=REPORT.json"]);
    bad(&["--baseline", "x=missing.json"], &["missing.json", "cannot read"]);
    // A report of L2D settings only has nothing decoded as the base LM.
    let l2d_only = write_report(
        &dir,
        "l2d-only.json",
        vec![result("gsm8k", setting("midpoint-2", Some(2), Some("midpoint"), Some(3.0)), "accuracy", &[("0", 1, 1)])],
    );
    bad(&["--baseline", &format!("x={}", s(&l2d_only))], &["--baseline x=", "l2d-only.json", "no result decoded without diffusion"]);
    bad(
        &["--task", "math", "--baseline", &format!("lora={}", s(&lora))],
        &["--baseline lora: --task math", "lora.json", "tasks: gsm8k"],
    );
    assert!(!bad_svg.exists());
}

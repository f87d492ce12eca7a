//! `l2d eval --task NAME --data FILE --samples FILE.jsonl`: scoring given
//! completions through the binary, with no model.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::{json, Value};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The records of a JSONL file (gzip-compressed if named .gz).
fn jsonl(path: &Path) -> Vec<Value> {
    let bytes = std::fs::read(path).unwrap();
    let text = if path.extension().is_some_and(|e| e == "gz") {
        use std::io::Read;
        let mut t = String::new();
        flate2::read::GzDecoder::new(&bytes[..]).read_to_string(&mut t).unwrap();
        t
    } else {
        String::from_utf8(bytes).unwrap()
    };
    text.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn write_samples(dir: &Path, name: &str, samples: &[Value]) -> PathBuf {
    let path = dir.join(name);
    let text: String = samples.iter().map(|v| format!("{v}\n")).collect();
    std::fs::write(&path, text).unwrap();
    path
}

fn eval(task: &str, data: &Path, samples: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["eval", "--task", task, "--data", s(data), "--samples", s(samples)];
    args.extend_from_slice(extra);
    l2d(&args)
}

/// The metrics of a `--json` run, by name.
fn metrics(out: Output) -> Value {
    let v: Value = serde_json::from_str(ok(out).trim()).unwrap();
    let mut m = serde_json::Map::new();
    for metric in v["metrics"].as_array().unwrap() {
        m.insert(metric["name"].as_str().unwrap().to_string(), metric.clone());
    }
    Value::Object(m)
}

#[test]
fn gsm8k_own_answers_score_one_and_wrong_ones_zero() {
    let dir = scratch("eval-gsm8k");
    let data = shared("gsm8k/test.jsonl");
    let records = jsonl(&data);
    // Ids as the 0-based line index, as integers and as strings.
    let right: Vec<Value> = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let id = if i % 2 == 0 { json!(i) } else { json!(i.to_string()) };
            json!({"task_id": id, "completion": r["answer"]})
        })
        .collect();
    let samples = write_samples(&dir, "right.jsonl", &right);
    let out_dir = dir.join("report");
    let m = metrics(eval("gsm8k", &data, &samples, &["--json", "--out", s(&out_dir)]));
    assert_eq!(m["accuracy"]["value"], 1.0);
    assert_eq!(m["accuracy"]["n"], 1319);
    assert_eq!(m["accuracy"]["stderr"], 0.0);
    assert_eq!(m["accuracy"]["ci95"], json!([1.0, 1.0]));

    let report: Value = serde_json::from_str(&std::fs::read_to_string(out_dir.join("report.json")).unwrap()).unwrap();
    assert_eq!((report["format"].as_str(), report["version"].as_u64()), (Some("l2d-eval-report"), Some(1)));
    let task = &report["results"][0];
    assert_eq!(task["task"], "gsm8k");
    assert_eq!(task["setting"]["label"], "samples");
    assert!(task["generation"].is_null());
    assert_eq!((task["items"].as_u64(), task["samples"].as_u64()), (Some(1319), Some(1319)));
    assert_eq!(task["per_item"].as_array().unwrap().len(), 1319);
    assert_eq!(task["per_item"][7], json!({"task_id": "7", "n": 1, "correct": 1}));
    assert!(task["bootstrap"]["seed"].is_u64());
    let examples = jsonl(&out_dir.join("examples.jsonl"));
    assert_eq!(examples.len(), 1319);
    assert_eq!(examples[0]["extracted"], "18");
    assert_eq!(examples[0]["reference"], "18");
    assert!(examples.iter().all(|e| e["correct"] == true));

    // One more than the reference, everywhere: accuracy 0.
    let wrong: Vec<Value> = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let n: i64 =
                r["answer"].as_str().unwrap().rsplit("####").next().unwrap().trim().replace(',', "").parse().unwrap();
            json!({"task_id": i, "completion": format!("The answer is {}.", n + 1)})
        })
        .collect();
    let m = metrics(eval("gsm8k", &data, &write_samples(&dir, "wrong.jsonl", &wrong), &["--json"]));
    assert_eq!(m["accuracy"]["value"], 0.0);
}

#[test]
fn humaneval_canonical_solutions_pass() {
    let dir = scratch("eval-humaneval");
    let data = shared("humaneval/HumanEval.jsonl.gz");
    let records = jsonl(&data);
    let right: Vec<Value> =
        records.iter().map(|r| json!({"task_id": r["task_id"], "completion": r["canonical_solution"]})).collect();
    let out_dir = dir.join("report");
    let m = metrics(eval(
        "humaneval",
        &data,
        &write_samples(&dir, "right.jsonl", &right),
        &["--json", "--out", s(&out_dir)],
    ));
    let failed: Vec<Value> = jsonl(&out_dir.join("examples.jsonl"))
        .into_iter()
        .filter(|e| e["correct"] != true)
        .map(|e| json!([e["task_id"], e["status"], e["detail"]]))
        .collect();
    assert!(failed.is_empty(), "canonical solutions failed: {failed:?}");
    assert_eq!(m["pass@1"]["value"], 1.0);
    // The paper protocol (the default) scores 159: HumanEval/0-4 are its shots.
    assert_eq!(m["pass@1"]["n"], 159);
    assert!(m.get("pass@5").is_none(), "one sample per item allows pass@1 only");

    // A body that returns None fails every test; a few items suffice.
    let wrong: Vec<Value> =
        records[5..13].iter().map(|r| json!({"task_id": r["task_id"], "completion": "    return None\n"})).collect();
    let m = metrics(eval("humaneval", &data, &write_samples(&dir, "wrong.jsonl", &wrong), &["--json"]));
    assert_eq!(m["pass@1"]["value"], 0.0);
    assert_eq!(m["pass@1"]["n"], 8);
}

#[test]
fn mbpp_code_passes_and_pass_at_k_counts_samples() {
    let dir = scratch("eval-mbpp");
    let data = fixture("mbpp/mbpp.jsonl");
    let records = jsonl(&data);
    let right: Vec<Value> = records.iter().map(|r| json!({"task_id": r["task_id"], "completion": r["code"]})).collect();
    // The clean protocol: setup code first, the first fenced block of a chat answer.
    let out = eval("mbpp", &data, &write_samples(&dir, "right.jsonl", &right), &["--protocol", "clean"]);
    let table = ok(out);
    assert!(table.contains("mbpp") && table.contains("pass@1") && table.contains("1.0000"), "{table}");

    // Five samples per item: the code (once inside a chat answer's fence), then three wrong answers.
    let mut five = Vec::new();
    for r in &records {
        let code = r["code"].as_str().unwrap();
        five.push(json!({"task_id": r["task_id"], "completion": format!("Here is the function:\n```python\n{code}\n```\nIt works.")}));
        five.push(json!({"task_id": r["task_id"], "completion": code}));
        five.push(json!({"task_id": r["task_id"], "completion": "def nothing():\n    pass\n"}));
        five.push(json!({"task_id": r["task_id"], "completion": "raise SystemExit(3)\n"}));
        five.push(json!({"task_id": r["task_id"], "completion": "this is not python"}));
    }
    let out_dir = dir.join("five");
    let five = write_samples(&dir, "five.jsonl", &five);
    let m = metrics(eval("mbpp", &data, &five, &["--json", "--out", s(&out_dir), "--protocol", "clean"]));
    // pass@1 = c/n = 2/5; pass@5 = 1 - C(3,5)/C(5,5) = 1.
    assert!((m["pass@1"]["value"].as_f64().unwrap() - 0.4).abs() < 1e-12, "{m}");
    assert_eq!(m["pass@5"]["value"], 1.0);
    assert!(m.get("pass@10").is_none());
    let examples = jsonl(&out_dir.join("examples.jsonl"));
    let statuses: Vec<&str> = examples[..5].iter().map(|e| e["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["passed", "passed", "failed", "failed", "failed"]);
    assert_eq!(examples[0]["extracted"], records[0]["code"].as_str().unwrap().to_string() + "\n");
}

#[test]
fn answer_tasks_score_their_own_solutions() {
    let dir = scratch("eval-answers");
    // MATH in the official directory layout: ids are record indices.
    let math: Vec<Value> = (0..7).map(|i| json!({"task_id": i, "completion": ""})).collect();
    let data = fixture("math/test");
    let m = metrics(eval("math", &data, &write_samples(&dir, "empty.jsonl", &math), &["--json"]));
    assert_eq!(m["accuracy"]["value"], 0.0);
    let solutions: Vec<String> =
        ["algebra/1", "algebra/2", "algebra/3", "geometry/1", "geometry/2", "prealgebra/1", "prealgebra/2"]
            .iter()
            .map(|f| {
                let v: Value =
                    serde_json::from_str(&std::fs::read_to_string(data.join(format!("{f}.json"))).unwrap()).unwrap();
                v["solution"].as_str().unwrap().to_string()
            })
            .collect();
    let math: Vec<Value> =
        solutions.iter().enumerate().map(|(i, sol)| json!({"task_id": i, "completion": sol})).collect();
    let m = metrics(eval("math", &data, &write_samples(&dir, "math.jsonl", &math), &["--json"]));
    assert_eq!(m["accuracy"]["value"], 1.0);

    // MMLU from the CSV release and from Parquet; half right, half wrong.
    for data in [fixture("mmlu/data/test"), fixture("mmlu/hf/test-00000-of-00001.parquet")] {
        let answers = ["B", "C", "B", "D", "A"];
        let samples: Vec<Value> = answers
            .iter()
            .enumerate()
            .flat_map(|(i, a)| {
                [
                    json!({"task_id": i, "completion": format!("The answer is ({a}).")}),
                    json!({"task_id": i, "completion": "I don't know"}),
                ]
            })
            .collect();
        let m = metrics(eval("mmlu", &data, &write_samples(&dir, "mmlu.jsonl", &samples), &["--json"]));
        assert_eq!(m["accuracy"]["value"], 0.5, "{}", data.display());
        assert_eq!(m["accuracy"]["n"], 5);
    }

    // MMLU-Pro: ids are question_id; letters run to J.
    let data = fixture("mmlu_pro/data/test-00000-of-00001.parquet");
    let samples = vec![
        json!({"task_id": 5, "completion": "The answer is (C)."}),
        json!({"task_id": "6", "completion": "**J**"}),
        json!({"task_id": 12, "completion": "The answer is (A)."}),
    ];
    let m = metrics(eval("mmlu_pro", &data, &write_samples(&dir, "pro.jsonl", &samples), &["--json"]));
    assert!((m["accuracy"]["value"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-12, "{m}");
}

#[test]
fn bad_input_is_one_clear_line() {
    let dir = scratch("eval-bad");
    let gsm = shared("gsm8k/test.jsonl");
    let good = write_samples(&dir, "good.jsonl", &[json!({"task_id": 0, "completion": "#### 18"})]);

    let missing = dir.join("nope.jsonl");
    assert_error(&eval("gsm8k", &missing, &good, &[]), 2, &["--data", "nope.jsonl", "no such file"]);
    assert_error(&eval("gsm8k", &gsm, &missing, &[]), 2, &["--samples", "nope.jsonl"]);

    // GSM8K records read as HumanEval: the first line lacks task_id; the expected fields are named.
    assert_error(
        &eval("humaneval", &gsm, &good, &[]),
        2,
        &["test.jsonl:1", "missing fields `task_id`, `prompt`, `canonical_solution`, `test`, `entry_point`"],
    );
    let bad = dir.join("bad.jsonl");
    std::fs::write(&bad, "{\"question\": \"q\", \"answer\": \"#### 1\"}\n{\"question\": \"q2\", \"answer\": 3}\n")
        .unwrap();
    assert_error(&eval("gsm8k", &bad, &good, &[]), 2, &["bad.jsonl:2", "`answer`", "question, answer"]);
    std::fs::write(&bad, "{\"question\": \"q\", \"answer\": \"no marker\"}\n").unwrap();
    assert_error(&eval("gsm8k", &bad, &good, &[]), 2, &["bad.jsonl:1", "#### N"]);
    let csv = dir.join("anatomy_test.csv");
    std::fs::write(&csv, "q1,a,b,c,d,A\nq2,a,b,c,d\n").unwrap();
    assert_error(&eval("mmlu", &csv, &good, &[]), 2, &["anatomy_test.csv:2", "5 columns"]);

    let empty = dir.join("empty.jsonl");
    std::fs::write(&empty, "\n").unwrap();
    assert_error(&eval("gsm8k", &empty, &good, &[]), 2, &["empty.jsonl", "empty dataset"]);
    assert_error(&eval("gsm8k", &gsm, &empty, &[]), 2, &["empty.jsonl", "no samples"]);

    let unknown = write_samples(
        &dir,
        "unknown.jsonl",
        &[json!({"task_id": 0, "completion": "x"}), json!({"task_id": 5000, "completion": "x"})],
    );
    assert_error(&eval("gsm8k", &gsm, &unknown, &[]), 2, &["unknown.jsonl:2", "unknown task_id \"5000\""]);
    let he = shared("humaneval/HumanEval.jsonl.gz");
    let unknown = write_samples(&dir, "he.jsonl", &[json!({"task_id": "HumanEval/999", "completion": "x"})]);
    assert_error(&eval("humaneval", &he, &unknown, &[]), 2, &["he.jsonl:1", "HumanEval/999"]);
    let no_completion = write_samples(&dir, "nc.jsonl", &[json!({"task_id": 0, "text": "x"})]);
    assert_error(&eval("gsm8k", &gsm, &no_completion, &[]), 2, &["nc.jsonl:1", "completion"]);

    assert_clap_error(&eval("gsm9k", &gsm, &good, &[]), &["gsm9k", "gsm8k, math, mmlu, mmlu_pro, humaneval, mbpp"]);
    assert_error(&l2d(&["eval", "--task", "gsm8k", "--data", s(&gsm)]), 2, &["--samples"]);
    assert_error(&l2d(&["eval"]), 2, &["--task NAME", "eval loss"]);
    // A subcommand and the scoring flags do not mix.
    assert_clap_error(&l2d(&["eval", "--task", "gsm8k", "loss"]), &["loss", "--task"]);
}

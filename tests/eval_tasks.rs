//! Benchmark loading, shots, prompts and answer checks on the real GSM8K and
//! HumanEval files and on fixtures in the MATH, MMLU, MMLU-Pro and MBPP layouts.

use l2d::eval::score::{judge_answer, program};
use l2d::eval::Protocol;
use l2d::eval::tasks::prompts::{build_messages, select_shots};
use l2d::eval::tasks::{Check, Dataset, Item, Task};

mod common;
use common::{fixture, load, shared};

fn correct(item: &Item, completion: &str) -> bool {
    judge_answer(Protocol::Clean, item, completion).expect("an answer task").correct
}

#[test]
fn every_gsm8k_answer_scores_correct_against_itself() {
    for (split, expected) in [("test", 1319), ("train", 7473)] {
        let ds = load(Task::Gsm8k, &shared(&format!("gsm8k/{split}.jsonl")));
        assert_eq!(ds.items.len(), expected);
        let ok = ds.items.iter().filter(|i| correct(i, &i.solution)).count();
        assert_eq!(ok, expected, "{split}: {ok}/{expected} references score correct");
        // Ids are 0-based line indices.
        assert_eq!(ds.items[5].id, "5");
    }
    let test = load(Task::Gsm8k, &shared("gsm8k/test.jsonl"));
    let janet = &test.items[0];
    assert_eq!(janet.reference, "18");
    assert!(correct(janet, "She makes $18.00 a day."));
    assert!(correct(janet, "9 eggs * $2 = $18\n#### 18"));
    assert!(!correct(janet, "#### 19"));
    // `####` wins over a later number; without it the last number counts.
    assert!(correct(janet, "#### 18 (that is 9 * 2)"));
    assert!(!correct(janet, "18 dollars, or 1800 cents"));
    // Every reference is an integer, negative ones included.
    assert!(test.items.iter().all(|i| i.reference.trim_start_matches('-').bytes().all(|b| b.is_ascii_digit())));
}

#[test]
fn gsm8k_prompts_use_the_first_five_training_items() {
    let train = load(Task::Gsm8k, &shared("gsm8k/train.jsonl"));
    let test = load(Task::Gsm8k, &shared("gsm8k/test.jsonl"));
    let shots = select_shots(Protocol::Clean, Task::Gsm8k, &test.items[0], &train.items, Task::Gsm8k.num_shots(Protocol::Clean));
    let ids: Vec<&str> = shots.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["0", "1", "2", "3", "4"]);
    let m = build_messages(Protocol::Clean, Task::Gsm8k, &test.items[0], &shots);
    assert_eq!(m.len(), 11);
    assert!(m.iter().all(|m| m.role != "system"));
    assert_eq!(m[0].content, train.items[0].question);
    // Calculator annotations are dropped, the `#### N` line kept.
    assert!(!m[1].content.contains("<<") && m[1].content.ends_with("#### 72"), "{}", m[1].content);
    assert_eq!(m[10].content, test.items[0].question);
    assert_eq!((Task::Gsm8k.max_new_tokens(), Task::HumanEval.max_new_tokens()), (256, 512));
}

#[test]
fn humaneval_loads_from_gzip() {
    let ds = load(Task::HumanEval, &shared("humaneval/HumanEval.jsonl.gz"));
    assert_eq!(ds.items.len(), 164);
    assert_eq!(ds.items[0].id, "HumanEval/0");
    assert_eq!(ds.items[163].id, "HumanEval/163");
    let Check::HumanEval { entry_point, .. } = &ds.items[0].check else { panic!("not a HumanEval check") };
    assert_eq!(entry_point, "has_close_elements");
    assert!(select_shots(Protocol::Clean, Task::HumanEval, &ds.items[0], &ds.items, Task::HumanEval.num_shots(Protocol::Clean)).is_empty());
    let p = program(Protocol::Clean, &ds.items[0], &ds.items[0].solution, "M").unwrap();
    assert!(p.starts_with("from typing import List") && p.contains("check(has_close_elements)\n"));
    let m = build_messages(Protocol::Clean, Task::HumanEval, &ds.items[0], &[]);
    assert_eq!(m.len(), 1);
    assert!(m[0].content.contains("def has_close_elements"));
}

#[test]
fn math_in_the_official_and_hugging_face_layouts() {
    // The official release: one JSON object per problem file, in subject directories.
    let test = load(Task::Math, &fixture("math/test"));
    assert_eq!(test.items.len(), 7);
    assert!(test.items.iter().all(|i| correct(i, &i.solution)));
    let refs: Vec<&str> = test.items.iter().map(|i| i.reference.as_str()).collect();
    assert_eq!(refs[0], "1");
    assert_eq!(refs[1], "\\left(1, 2\\right)");
    assert_eq!(refs[2], "\\dfrac{\\sqrt{3}}{3}");
    let by_ref = |r: &str| test.items.iter().find(|i| i.reference == r).unwrap();
    // Written differently, the same answer.
    assert!(correct(by_ref("\\left(1, 2\\right)"), "so the vertex is \\boxed{(1,2)}."));
    assert!(correct(by_ref("\\dfrac{\\sqrt{3}}{3}"), "$\\boxed{\\frac{\\sqrt3}{3}}$"));
    assert!(correct(by_ref("6.25\\text{ cm}"), "\\boxed{6.25}"));
    assert!(correct(by_ref("60^\\circ"), "The answer is \\boxed{60}."));
    assert!(correct(by_ref("\\frac{7}{8}"), "\\boxed{7/8}"));
    assert!(correct(by_ref("\\frac{3}{2}"), "Each side is 1.5"));
    assert!(!correct(by_ref("\\frac{3}{2}"), "\\boxed{\\frac{2}{3}}"));
    assert!(!correct(by_ref("1"), "no answer"));

    // Hugging Face's JSONL: shots are five evenly spaced training items.
    let train = load(Task::Math, &fixture("math/train.jsonl"));
    assert_eq!(train.items.len(), 10);
    let shots = select_shots(Protocol::Clean, Task::Math, &test.items[0], &train.items, Task::Math.num_shots(Protocol::Clean));
    let ids: Vec<&str> = shots.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["0", "2", "4", "6", "8"]);
    let m = build_messages(Protocol::Clean, Task::Math, &test.items[0], &shots);
    assert_eq!(m[1].content, train.items[0].solution);
}

/// The fields that define a multiple-choice item, ids aside.
fn choice_view(ds: &Dataset) -> Vec<(String, Vec<String>, String, Option<String>)> {
    ds.items.iter().map(|i| (i.question.clone(), i.options.clone(), i.reference.clone(), i.group.clone())).collect()
}

#[test]
fn mmlu_csv_and_parquet_agree() {
    let csv = load(Task::Mmlu, &fixture("mmlu/data/test"));
    let parquet = load(Task::Mmlu, &fixture("mmlu/hf/test-00000-of-00001.parquet"));
    assert_eq!(csv.items.len(), 5);
    assert_eq!(choice_view(&csv), choice_view(&parquet));
    let geo = &csv.items[4];
    assert_eq!(geo.group.as_deref(), Some("high_school_geography"));
    assert!(
        geo.question.contains("\"megalopolis\"") && geo.question.contains('\n'),
        "quoted CSV field: {:?}",
        geo.question
    );
    assert_eq!(geo.reference, "A");

    // Shots: the dev split of the same subject.
    let dev = load(Task::Mmlu, &fixture("mmlu/data/dev"));
    for item in &csv.items {
        let shots = select_shots(Protocol::Clean, Task::Mmlu, item, &dev.items, Task::Mmlu.num_shots(Protocol::Clean));
        assert_eq!(shots.len(), 5);
        assert!(shots.iter().all(|s| s.group == item.group));
    }
    let item = &csv.items[0];
    let m = build_messages(Protocol::Clean, Task::Mmlu, item, &select_shots(Protocol::Clean, Task::Mmlu, item, &dev.items, Task::Mmlu.num_shots(Protocol::Clean)));
    assert_eq!(m[0].content, format!("{}\n\nA. 0\nB. 1\nC. 2\nD. 3", dev.items[0].question));
    assert_eq!(m[1].content, "The answer is (B).");
    assert!(m[10].content.ends_with("D. 6"));
    assert!(correct(item, "The answer is (B)."));
    assert!(correct(item, "**B**"));
    assert!(!correct(item, "C. 2"));
}

#[test]
fn mmlu_pro_letters_and_category_shots() {
    let test = load(Task::MmluPro, &fixture("mmlu_pro/data/test-00000-of-00001.parquet"));
    let val = load(Task::MmluPro, &fixture("mmlu_pro/data/validation-00000-of-00001.parquet"));
    assert_eq!((test.items.len(), val.items.len()), (3, 10));
    // Ids are question_id.
    assert_eq!(test.items[0].id, "5");
    let ten = test.items.iter().find(|i| i.options.len() == 10).unwrap();
    assert_eq!(ten.reference, "J");
    assert!(correct(ten, "Let's think step by step. The answer is (J)."));
    assert!(!correct(ten, "The answer is (I)."));
    for item in &test.items {
        let shots = select_shots(Protocol::Clean, Task::MmluPro, item, &val.items, Task::MmluPro.num_shots(Protocol::Clean));
        assert_eq!(shots.len(), 5);
        assert!(shots.iter().all(|s| s.group == item.group));
        // A shot answers with its chain of thought, without the dataset's "A: " prefix.
        let m = build_messages(Protocol::Clean, Task::MmluPro, item, &shots);
        assert!(
            m[1].content.starts_with("Let's think step by step.") && m[1].content.ends_with("The answer is (B)."),
            "{}",
            m[1].content
        );
        assert!(m[10].content.contains("\nA. "));
    }
}

#[test]
fn mbpp_shots_prompts_and_programs() {
    let ds = load(Task::Mbpp, &fixture("mbpp/mbpp.jsonl"));
    assert_eq!(ds.items.len(), 14);
    let item = ds.get("11").unwrap();
    let shots = select_shots(Protocol::Clean, Task::Mbpp, item, &ds.items, Task::Mbpp.num_shots(Protocol::Clean));
    let ids: Vec<&str> = shots.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["1", "2", "3", "4", "5"]);
    let m = build_messages(Protocol::Clean, Task::Mbpp, item, &shots);
    assert_eq!(
        m[0].content,
        "Write a function to find the minimum of two numbers.\nYour code should pass this test:\nassert min_of_two(1, 2) == 1"
    );
    assert!(m[1].content.starts_with("```python\ndef min_of_two"));
    // Setup code runs before the completion.
    let hyp = ds.get("13").unwrap();
    let p = program(Protocol::Clean, hyp, &hyp.solution, "M").unwrap();
    assert!(p.starts_with("import math\ndef hypotenuse") && p.contains("assert hypotenuse(1, 1) == 1.41\n"), "{p}");
}

#[test]
fn json_arrays_load_and_name_the_bad_element_line() {
    let dir = common::scratch("eval-json");
    let path = dir.join("gsm8k.json");
    std::fs::write(&path, "[\n  {\"question\": \"q0\", \"answer\": \"#### 1,000\"},\n  {\"question\": \"q1\", \"answer\": \"#### -3\"}\n]\n")
        .unwrap();
    let ds = load(Task::Gsm8k, &path);
    let refs: Vec<&str> = ds.items.iter().map(|i| i.reference.as_str()).collect();
    assert_eq!(refs, ["1000", "-3"]);
    std::fs::write(&path, "[\n  {\"question\": \"q0\", \"answer\": \"#### 1\"},\n  {\"question\": \"q1\",\n   \"solution\": \"#### 2\"}\n]")
        .unwrap();
    let err = Dataset::load(Task::Gsm8k, &path, "--data").unwrap_err().to_string();
    assert!(err.contains("gsm8k.json:3: missing field `answer`"), "{err}");
}

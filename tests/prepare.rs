//! `l2d prepare` through the binary: inputs, one example per assistant turn,
//! labels, filters, length policy, determinism, split, malformed records,
//! atomic output, and the shard reader's checks.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{assert_error, l2d, ok, scratch, stderr, tiny_model};
use l2d::data::chat::Message;
use l2d::data::prepare::chat_template;
use l2d::data::shards::{self, check_tokenizer, read_manifest, Manifest, ShardExample, Split};
use l2d::data::tokenizer::Tokenizer;

// ---------------------------------------------------------------- helpers

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/prepare")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs `l2d prepare --model MODEL --out OUT ARGS...` with no validation split by default.
fn prepare(model: &Path, out: &Path, args: &[&str]) -> Output {
    let mut all = vec!["prepare", "--model", s(model), "--out", s(out), "--set", "data.valid_fraction=0"];
    all.extend_from_slice(args);
    l2d(&all)
}

/// Same, with a given rayon thread count.
fn prepare_threads(model: &Path, out: &Path, args: &[&str], threads: usize) -> Output {
    Command::new(env!("CARGO_BIN_EXE_l2d"))
        .args(["prepare", "--model", s(model), "--out", s(out)])
        .args(args)
        .env("RAYON_NUM_THREADS", threads.to_string())
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn msg(role: &str, content: &str) -> serde_json::Value {
    serde_json::json!({"role": role, "content": content})
}

fn chat_line(messages: &[serde_json::Value], category: Option<&str>) -> String {
    let mut rec = serde_json::json!({ "messages": messages });
    if let Some(c) = category {
        rec["category"] = c.into();
    }
    rec.to_string() + "\n"
}

fn all_examples(split: &Split) -> Vec<ShardExample> {
    (0..split.len()).map(|i| split.get(i)).collect()
}

/// The loss-carrying tokens of an example.
fn loss_tokens(ex: &ShardExample) -> Vec<i64> {
    ex.labels.iter().copied().filter(|&l| l != -100).collect()
}

fn prompt_len(ex: &ShardExample) -> usize {
    ex.labels.iter().take_while(|&&l| l == -100).count()
}

fn eot_token(arch: &str) -> &'static str {
    if arch == "llama" {
        "<|eot_id|>"
    } else {
        "<|im_end|>"
    }
}

fn dir_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().into_string().unwrap(), std::fs::read(e.path()).unwrap())
        })
        .collect();
    v.sort();
    v
}

/// Many small conversations, each with a unique marker word in every message.
fn many_conversations(n: usize, turns: usize) -> String {
    let mut text = String::new();
    for c in 0..n {
        let mut messages = Vec::new();
        for t in 0..turns {
            messages.push(msg("user", &format!("question zq{c}q number {t}")));
            messages.push(msg("assistant", &format!("answer zq{c}q is {}", c * 7 + t)));
        }
        text += &chat_line(&messages, None);
    }
    text
}

// ---------------------------------------------------------------- examples and labels

/// Each assistant turn is one example: context = the template's rendering of
/// the history with the generation prompt (what generation sees), loss = the
/// response tokens plus the end-of-turn token, nothing after it.
fn check_turns(arch: &str) {
    let model = tiny_model(arch);
    let dir = scratch(&format!("prepare-turns-{arch}"));
    let conversation = [
        msg("system", "You are terse."),
        msg("user", "What is the capital of France?"),
        msg("assistant", "Paris is the capital."),
        msg("user", "And of Italy?"),
        msg("assistant", "Rome, of course."),
    ];
    let input = write(&dir, "chat.jsonl", &chat_line(&conversation, None));
    let out = dir.join("shards");
    ok(prepare(&model, &out, &["--input", s(&input)]));

    let split = Split::open(&out, "train").unwrap();
    assert_eq!(split.len(), 2);
    let tok = Tokenizer::load(&model).unwrap();
    let template = chat_template(&model).unwrap().unwrap();
    let eot = tok.encode(eot_token(arch), false).unwrap();
    assert_eq!(eot.len(), 1, "the end-of-turn marker is one special token");
    let mut examples = all_examples(&split);
    examples.sort_by_key(|e| e.input_ids.len());
    for (ex, upto) in examples.iter().zip([3, 5]) {
        let history: Vec<Message> = conversation[..upto - 1]
            .iter()
            .map(|m| Message::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
            .collect();
        let response = conversation[upto - 1]["content"].as_str().unwrap();
        let context = tok.encode(&template.render(&history, true).unwrap(), false).unwrap();
        let n = prompt_len(ex);
        assert_eq!(&ex.input_ids[..n], &context[..], "{arch}: context = rendered history + generation prompt");
        let loss = loss_tokens(ex);
        assert_eq!(loss.len(), ex.input_ids.len() - n, "loss covers everything after the context");
        assert_eq!(loss.last(), eot.last(), "{arch}: the last loss token is end-of-turn");
        assert_eq!(tok.decode(&loss).unwrap(), response, "{arch}: loss tokens decode to the response");
        let mut expected = tok.encode(response, false).unwrap();
        expected.push(eot[0]);
        assert_eq!(loss, expected, "{arch}: response tokens + eot, nothing after");
        assert_eq!(ex.class_id, -1);
    }
}

#[test]
fn one_example_per_assistant_turn_llama() {
    check_turns("llama");
}

#[test]
fn one_example_per_assistant_turn_qwen2() {
    check_turns("qwen2");
}

/// With the generation-time template (wall-clock date) the context equals
/// `encode_chat` exactly for Qwen, whose template has no date in it.
#[test]
fn context_equals_encode_chat_qwen2() {
    let model = tiny_model("qwen2");
    let dir = scratch("prepare-encode-chat");
    let conversation = [msg("user", "Hello there"), msg("assistant", "Hi!")];
    let input = write(&dir, "chat.jsonl", &chat_line(&conversation, None));
    let out = dir.join("shards");
    ok(prepare(&model, &out, &["--input", s(&input)]));
    let ex = Split::open(&out, "train").unwrap().get(0);
    let tok = Tokenizer::load(&model).unwrap();
    let context = tok.encode_chat(&[Message::new("user", "Hello there")]).unwrap();
    assert_eq!(&ex.input_ids[..prompt_len(&ex)], &context[..]);
}

// ---------------------------------------------------------------- input formats

#[test]
fn jsonl_json_and_parquet_give_the_same_examples() {
    let model = tiny_model("llama");
    let dir = scratch("prepare-formats");
    let jsonl = fixtures().join("smoltalk.jsonl");
    let records: Vec<serde_json::Value> =
        std::fs::read_to_string(&jsonl).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let json = write(&dir, "smoltalk.json", &serde_json::to_string_pretty(&records).unwrap());
    let glob = fixtures().join("smoltalk/data/*/train-*.parquet");

    let mut shas = Vec::new();
    for (name, input) in [("jsonl", jsonl), ("json", json), ("parquet", glob)] {
        let out = dir.join(name);
        ok(prepare(&model, &out, &["--input", s(&input)]));
        let m = read_manifest(&out).unwrap();
        let train = &m.splits["train"];
        // 5 conversations with 7 assistant turns in all.
        assert_eq!((m.records.read, m.records.chat, train.examples, train.conversations), (5, 5, 7, 5), "{name}");
        assert_eq!(m.inputs["train"][0].format, name);
        shas.push(train.shards[0].tokens_sha256.clone());
    }
    assert!(shas.iter().all(|s| s == &shas[0]), "same records, same shards: {shas:?}");
}

#[test]
fn parquet_subsets_map_to_classes() {
    let model = tiny_model("llama");
    let dir = scratch("prepare-parquet-classes");
    let out = dir.join("shards");
    let glob = fixtures().join("smoltalk/data/*/train-*.parquet");
    ok(prepare(
        &model,
        &out,
        &["--input", s(&glob), "--set", "l2d.num_classes=3", "--set", "data.class_map.beta=1", "--set", "data.class_map.math=2"],
    ));
    let m = read_manifest(&out).unwrap();
    // alpha: "math" (1 turn) -> 2, "chat" (2 turns) and no category (1 turn) -> -1; beta: 3 turns -> 1.
    let expected: std::collections::BTreeMap<String, u64> =
        [("-1".to_string(), 3), ("1".to_string(), 3), ("2".to_string(), 1)].into_iter().collect();
    assert_eq!(m.classes, expected);
    let split = Split::open(&out, "train").unwrap();
    let classes: Vec<i64> = all_examples(&split).iter().map(|e| e.class_id).collect();
    assert_eq!(classes.iter().filter(|&&c| c == 1).count(), 3);
}

#[test]
fn several_inputs_and_globs_at_once() {
    let model = tiny_model("qwen2");
    let dir = scratch("prepare-several");
    let a = write(&dir, "a.jsonl", &many_conversations(3, 1));
    let b = write(&dir, "b.jsonl", &many_conversations(4, 2));
    let out = dir.join("shards");
    let pattern = dir.join("*.jsonl");
    // The glob and an explicit file name overlap: each file is read once.
    ok(prepare(&model, &out, &["--input", s(&pattern), "--input", s(&a)]));
    let m = read_manifest(&out).unwrap();
    assert_eq!(m.inputs["train"].len(), 2);
    assert_eq!(m.inputs["train"][1].path, s(&b));
    assert_eq!(m.splits["train"].examples, 3 + 8);
}

#[test]
fn pretokenized_lines_pass_through_unchanged() {
    let model = tiny_model("llama");
    let dir = scratch("prepare-pretok");
    let input = write(
        &dir,
        "tok.jsonl",
        "{\"input_ids\": [5, 6, 7, 8], \"labels\": [-100, -100, 7, 8]}\n\
         {\"input_ids\": [9, 10, 11]}\n\
         {\"input_ids\": [9, 10, 11], \"labels\": [-100, 10, -100]}\n\
         {\"input_ids\": [9, 10, 11], \"labels\": [-100, -100, -100]}\n",
    );
    let out = dir.join("shards");
    ok(prepare(&model, &out, &["--input", s(&input)]));
    let m = read_manifest(&out).unwrap();
    assert_eq!(m.records.pretokenized, 3);
    assert_eq!(m.malformed.by_reason["labels_not_prefix_mask"], 1);
    assert_eq!(m.dropped["no_loss_tokens"], 1);
    let mut got = all_examples(&Split::open(&out, "train").unwrap());
    got.sort_by_key(|e| e.input_ids.clone());
    assert_eq!(got[0].input_ids, [5, 6, 7, 8]);
    assert_eq!(got[0].labels, [-100, -100, 7, 8]);
    assert_eq!(got[1].input_ids, [9, 10, 11]);
    assert_eq!(got[1].labels, [9, 10, 11]);
}

// ---------------------------------------------------------------- filters and length

#[test]
fn category_filters_and_class_map() {
    let model = tiny_model("llama");
    let dir = scratch("prepare-categories");
    let turn = [msg("user", "hi"), msg("assistant", "hello")];
    let text = [Some("math"), Some("code"), Some("editing"), None, Some("math")]
        .iter()
        .map(|c| chat_line(&turn, *c))
        .collect::<String>();
    let input = write(&dir, "mixed.jsonl", &text);

    let out = dir.join("exclude");
    ok(prepare(
        &model,
        &out,
        &[
            "--input",
            s(&input),
            "--set",
            "data.exclude_categories=editing",
            "--set",
            "l2d.num_classes=2",
            "--set",
            "data.class_map.code=0",
            "--set",
            "data.class_map.mixed=1",
        ],
    ));
    let m = read_manifest(&out).unwrap();
    assert_eq!(m.filtered["category_excluded"], 1);
    assert_eq!(m.splits["train"].examples, 4);
    // "code" by category; the rest fall back to the file stem "mixed".
    assert_eq!(m.classes["0"], 1);
    assert_eq!(m.classes["1"], 3);

    let out = dir.join("include");
    ok(prepare(&model, &out, &["--input", s(&input), "--set", "data.include_categories=math"]));
    let m = read_manifest(&out).unwrap();
    assert_eq!(m.splits["train"].examples, 2);
    assert_eq!(m.filtered["category_not_included"], 2);
    assert_eq!(m.filtered["no_category"], 1);
    assert_eq!(m.records.filtered, 3);
    assert_eq!(m.classes["-1"], 2);
}

#[test]
fn truncate_and_drop_policies_are_counted() {
    let model = tiny_model("llama");
    let dir = scratch("prepare-length");
    let tok = Tokenizer::load(&model).unwrap();
    let template = chat_template(&model).unwrap().unwrap();
    let context_len =
        tok.encode(&template.render(&[Message::new("user", "hi")], true).unwrap(), false).unwrap().len();
    let long = "word ".repeat(200);
    let text = chat_line(&[msg("user", "hi"), msg("assistant", &long)], None)
        + &chat_line(&[msg("user", "hi"), msg("assistant", "ok")], None)
        + &chat_line(&[msg("user", &long), msg("assistant", "ok")], None);
    let input = write(&dir, "len.jsonl", &text);
    let max = (context_len + 10).to_string();

    let out = dir.join("truncate");
    ok(prepare(&model, &out, &["--input", s(&input), "--max-seq-len", &max]));
    let m = read_manifest(&out).unwrap();
    assert_eq!(m.truncated, 1);
    assert_eq!(m.dropped["context_too_long"], 1);
    assert_eq!(m.splits["train"].examples, 2);
    assert_eq!(m.splits["train"].length.max, context_len as u64 + 10);
    let split = Split::open(&out, "train").unwrap();
    assert!(split.lengths().iter().all(|&l| l as usize <= context_len + 10));

    let out = dir.join("drop");
    ok(prepare(&model, &out, &["--input", s(&input), "--max-seq-len", &max, "--set", "data.max_seq_len_policy=drop"]));
    let m = read_manifest(&out).unwrap();
    assert_eq!(m.truncated, 0);
    assert_eq!(m.dropped["too_long"], 2);
    assert_eq!(m.splits["train"].examples, 1);
}

// ---------------------------------------------------------------- determinism and split

#[test]
fn output_is_deterministic_across_runs_and_thread_counts() {
    let model = tiny_model("qwen2");
    let dir = scratch("prepare-determinism");
    let input = write(&dir, "many.jsonl", &many_conversations(300, 2));
    // Small shards so that several are written.
    let args = ["--input", s(&input), "--shard-tokens", "5000", "--set", "data.seed=7"];
    let mut runs = Vec::new();
    for (name, threads) in [("a", 2), ("b", 2), ("c", 1)] {
        let out = dir.join(name);
        let o = prepare_threads(&model, &out, &args, threads);
        assert!(o.status.success(), "{}", stderr(&o));
        runs.push(dir_files(&out));
    }
    assert!(runs[0].len() > 5, "several shards: {:?}", runs[0].iter().map(|f| &f.0).collect::<Vec<_>>());
    assert!(runs[0] == runs[1], "two runs differ");
    assert!(runs[0] == runs[2], "1 thread and 2 threads differ");
    shards::verify(&dir.join("a")).unwrap();

    // Another seed shuffles differently.
    let out = dir.join("d");
    ok(prepare(&model, &out, &["--input", s(&input), "--shard-tokens", "5000", "--set", "data.seed=8", "--set", "data.valid_fraction=0.05"]));
    assert!(dir_files(&out) != runs[0]);
}

#[test]
fn split_never_separates_the_turns_of_a_conversation() {
    let model = tiny_model("llama");
    let dir = scratch("prepare-split");
    let input = write(&dir, "many.jsonl", &many_conversations(40, 3));
    let out = dir.join("shards");
    let o = l2d(&["prepare", "--model", s(&model), "--out", s(&out), "--input", s(&input), "--set", "data.valid_fraction=0.25"]);
    ok(o);
    let m = read_manifest(&out).unwrap();
    assert_eq!((m.splits["train"].conversations, m.splits["valid"].conversations), (30, 10));
    assert_eq!((m.splits["train"].examples, m.splits["valid"].examples), (90, 30));

    let tok = Tokenizer::load(&model).unwrap();
    let conversation_of = |ex: &ShardExample| {
        let text = tok.decode(&ex.input_ids).unwrap();
        let start = text.find("zq").unwrap() + 2;
        let end = start + text[start..].find('q').unwrap();
        text[start..end].parse::<u32>().unwrap()
    };
    let mut seen = Vec::new();
    for name in ["train", "valid"] {
        let split = Split::open(&out, name).unwrap();
        let convs: BTreeSet<u32> = all_examples(&split).iter().map(conversation_of).collect();
        seen.push(convs);
    }
    assert!(seen[0].is_disjoint(&seen[1]), "a conversation straddles the split");
    assert_eq!(seen[0].len() + seen[1].len(), 40);
}

#[test]
fn validation_files_make_the_valid_split() {
    let model = tiny_model("llama");
    let dir = scratch("prepare-valid-files");
    let train = write(&dir, "train.jsonl", &many_conversations(5, 1));
    let valid = write(&dir, "valid.jsonl", &many_conversations(2, 2));
    let out = dir.join("shards");
    ok(l2d(&["prepare", "--model", s(&model), "--out", s(&out), "--input", s(&train), "--valid", s(&valid)]));
    let m = read_manifest(&out).unwrap();
    assert_eq!((m.splits["train"].examples, m.splits["valid"].examples), (5, 4));
    assert_eq!(Split::open(&out, "valid").unwrap().len(), 4);

    let o = l2d(&["prepare", "--model", s(&model), "--out", s(&dir.join("x")), "--input", s(&train), "--valid", s(&train)]);
    assert_error(&o, 2, &["train.jsonl", "also a training input"]);
}

// ---------------------------------------------------------------- malformed records

const MALFORMED: &str = "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"yo\"}]}\n\
{not json\n\
\n\
{\"text\": \"no messages\"}\n\
{\"messages\": [{\"role\": \"wizard\", \"content\": \"x\"}, {\"role\": \"assistant\", \"content\": \"y\"}]}\n\
{\"messages\": [{\"role\": \"user\", \"content\": \"only a question\"}]}\n\
{\"messages\": [{\"role\": \"user\", \"content\": 3}, {\"role\": \"assistant\", \"content\": \"y\"}]}\n\
{\"messages\": \"hello\"}\n";

#[test]
fn malformed_records_are_skipped_and_counted_with_file_and_line() {
    let model = tiny_model("llama");
    let dir = scratch("prepare-malformed");
    let input = write(&dir, "bad.jsonl", MALFORMED);
    let out = dir.join("shards");
    ok(prepare(&model, &out, &["--input", s(&input)]));
    let m = read_manifest(&out).unwrap();
    assert_eq!(m.records.read, 7, "the blank line is not a record");
    assert_eq!(m.malformed.count, 6);
    let listed: Vec<(u64, &str)> = m.malformed.records.iter().map(|r| (r.line, r.reason.as_str())).collect();
    assert_eq!(
        listed,
        [
            (2, "invalid_json"),
            (4, "missing_messages"),
            (5, "unknown_role"),
            (6, "no_assistant_turn"),
            (7, "invalid_messages"),
            (8, "invalid_messages")
        ]
    );
    assert!(m.malformed.records.iter().all(|r| r.file == s(&input)));
    assert_eq!(m.splits["train"].examples, 1);
}

#[test]
fn strict_fails_on_the_first_malformed_record_and_leaves_no_output() {
    let model = tiny_model("llama");
    let dir = scratch("prepare-strict");
    let input = write(&dir, "bad.jsonl", MALFORMED);
    let out = dir.join("shards");
    let o = prepare(&model, &out, &["--input", s(&input), "--strict"]);
    assert_error(&o, 2, &[&format!("{}:2:", input.display()), "invalid_json"]);
    assert!(!out.exists(), "no output after a failure");
    let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 1, "only the input remains: {leftovers:?}");
}

#[test]
fn malformed_json_array_names_the_line() {
    let model = tiny_model("llama");
    let dir = scratch("prepare-bad-json");
    let good = "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"assistant\", \"content\": \"b\"}]}";
    let input = write(&dir, "bad.json", &format!("[\n{good},\n{good}\n{good}\n]\n"));
    let o = prepare(&model, &dir.join("out"), &["--input", s(&input), "--strict"]);
    assert_error(&o, 2, &[&format!("{}:4:", input.display()), "invalid_json"]);
    let out = dir.join("lenient");
    ok(prepare(&model, &out, &["--input", s(&input)]));
    let m = read_manifest(&out).unwrap();
    assert_eq!((m.splits["train"].examples, m.malformed.count), (2, 1));
}

// ---------------------------------------------------------------- usage errors

#[test]
fn bad_inputs_and_config_are_usage_errors() {
    let model = tiny_model("llama");
    let dir = scratch("prepare-usage");
    let good = write(&dir, "good.jsonl", &many_conversations(2, 1));
    let out = dir.join("out");

    let missing = dir.join("missing.jsonl");
    assert_error(&prepare(&model, &out, &["--input", s(&missing)]), 2, &["--input", "missing.jsonl", "no such file"]);
    let glob = dir.join("nothing-*.parquet");
    assert_error(&prepare(&model, &out, &["--input", s(&glob)]), 2, &["--input", "nothing-*.parquet", "no file matches"]);
    let csv = write(&dir, "data.csv", "a,b\n");
    assert_error(&prepare(&model, &out, &["--input", s(&csv)]), 2, &["data.csv", "unknown input format"]);
    assert_error(&prepare(&model, &out, &["--input", s(&good), "--set", "data.shuffle=1"]), 2, &["data.shuffle"]);
    let cfg = write(&dir, "bad.toml", "[data]\ntrain = [\"x.jsonl\"]\nsplitt = 1\n");
    assert_error(&l2d(&["prepare", "--config", s(&cfg), "--out", s(&out)]), 2, &["bad.toml", "data.splitt"]);
    let cfg = write(&dir, "cfg.toml", &format!("[data]\ntrain = [\"{}\"]\n", dir.join("gone-*.jsonl").display()));
    assert_error(
        &l2d(&["prepare", "--config", s(&cfg), "--model", s(&model), "--out", s(&out)]),
        2,
        &["data.train", "gone-*.jsonl", "no file matches"],
    );
    assert_error(&l2d(&["prepare", "--model", s(&model), "--input", s(&good)]), 2, &["--out", "data.out"]);
    assert_error(&l2d(&["prepare", "--input", s(&good), "--out", s(&out)]), 2, &["model.path"]);
    // Everything filtered: no training data is the user's problem, not a crash.
    assert_error(
        &prepare(&model, &out, &["--input", s(&good), "--set", "data.include_categories=none-such"]),
        2,
        &["no training examples"],
    );
    assert!(!out.exists());

    // An existing output directory is never overwritten.
    std::fs::create_dir_all(&out).unwrap();
    assert_error(&prepare(&model, &out, &["--input", s(&good)]), 2, &["already exists"]);
}

#[test]
fn data_out_from_config_and_json_manifest_on_stdout() {
    let model = tiny_model("llama");
    let dir = scratch("prepare-data-out");
    let good = write(&dir, "good.jsonl", &many_conversations(3, 1));
    let out = dir.join("from-config");
    let o = l2d(&[
        "prepare",
        "--model",
        s(&model),
        "--input",
        s(&good),
        "--set",
        &format!("data.out={}", out.display()),
        "--json",
    ]);
    let text = ok(o);
    let printed: Manifest = serde_json::from_str(&text).unwrap();
    let stored = read_manifest(&out).unwrap();
    assert_eq!(serde_json::to_value(&printed).unwrap(), serde_json::to_value(&stored).unwrap());
    assert!(stored.config.contains("[data]"), "the resolved config is recorded");
    assert_eq!(stored.tokenizer_sha256, shards::sha256_file(&model.join("tokenizer.json")).unwrap());
    assert!(stored.chat_template_sha256.is_some());
}

// ---------------------------------------------------------------- reader checks

#[test]
fn shards_from_another_tokenizer_are_refused() {
    let llama = tiny_model("llama");
    let qwen = tiny_model("qwen2");
    let dir = scratch("prepare-check-tokenizer");
    let good = write(&dir, "good.jsonl", &many_conversations(2, 1));
    let out = dir.join("shards");
    ok(prepare(&llama, &out, &["--input", s(&good)]));
    check_tokenizer(&out, &llama).unwrap();
    let err = check_tokenizer(&out, &qwen).unwrap_err();
    assert_eq!(l2d::error::exit_code(&err), 2);
    let line = l2d::error::one_line(&err);
    assert!(line.contains(s(&llama)) && line.contains(s(&qwen)), "{line}");
}

#[test]
fn corrupt_or_missing_shards_are_usage_errors_naming_the_directory() {
    let model = tiny_model("llama");
    let dir = scratch("prepare-corrupt");
    let good = write(&dir, "good.jsonl", &many_conversations(4, 1));
    let out = dir.join("shards");
    ok(prepare(&model, &out, &["--input", s(&good)]));

    let err = Split::open(&dir, "train").err().unwrap();
    assert_eq!(l2d::error::exit_code(&err), 2);
    assert!(err.to_string().contains("manifest.json"));
    let err = Split::open(&out, "test").err().unwrap();
    assert!(err.to_string().contains("no split \"test\""), "{err}");

    let tokens = out.join("train-00000.tokens");
    let bytes = std::fs::read(&tokens).unwrap();
    std::fs::write(&tokens, &bytes[..bytes.len() - 4]).unwrap();
    let err = Split::open(&out, "train").err().unwrap();
    assert_eq!(l2d::error::exit_code(&err), 2);
    assert!(err.to_string().contains(s(&out)) && err.to_string().contains("corrupt"), "{err}");

    // An index entry pointing past the token file.
    std::fs::write(&tokens, &bytes).unwrap();
    let index = out.join("train-00000.index");
    let mut idx = std::fs::read(&index).unwrap();
    idx[0..8].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(&index, &idx).unwrap();
    let err = Split::open(&out, "train").err().unwrap();
    assert!(err.to_string().contains("corrupt"), "{err}");
}

#[test]
fn a_byte_order_mark_is_not_a_malformed_record() {
    let model = tiny_model("llama");
    let dir = scratch("prepare-bom");
    let line = chat_line(&[msg("user", "hi"), msg("assistant", "hello")], None);
    let jsonl = write(&dir, "bom.jsonl", &format!("\u{feff}{line}"));
    let json = write(&dir, "bom.json", &format!("\u{feff}[{}]", line.trim()));
    for input in [jsonl, json] {
        let out = dir.join(input.extension().unwrap());
        ok(prepare(&model, &out, &["--input", s(&input), "--strict"]));
        assert_eq!(read_manifest(&out).unwrap().splits["train"].examples, 1);
    }
}

/// The real Llama 3.1 and Qwen 2.5 templates (date line, default system
/// prompt) render history identically with and without the next turn, so no
/// example is lost to "template_not_prefix".
#[test]
fn real_templates_keep_every_turn() {
    let templates = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/templates");
    for (arch, file) in [("llama", "llama-3.1.jinja"), ("qwen2", "qwen2.5.jinja")] {
        let dir = scratch(&format!("prepare-real-template-{arch}"));
        let model = dir.join("model");
        common::copy_dir(&tiny_model(arch), &model);
        std::fs::copy(templates.join(file), model.join("chat_template.jinja")).unwrap();
        let conversation = [
            msg("user", "Pick a number."),
            msg("assistant", "Seven."),
            msg("user", "Double it."),
            msg("assistant", "Fourteen."),
        ];
        let input = write(&dir, "chat.jsonl", &chat_line(&conversation, None));
        let out = dir.join("shards");
        ok(prepare(&model, &out, &["--input", s(&input), "--strict"]));
        let m = read_manifest(&out).unwrap();
        assert!(m.dropped.is_empty(), "{file}: {:?}", m.dropped);
        let tok = Tokenizer::load(&model).unwrap();
        let mut responses: Vec<String> = all_examples(&Split::open(&out, "train").unwrap())
            .iter()
            .map(|ex| tok.decode(&loss_tokens(ex)).unwrap())
            .collect();
        responses.sort();
        assert_eq!(responses, ["Fourteen.", "Seven."], "{file}");
    }
}

/// A killed prepare's staging directory is removed by the next prepare of the
/// same output (others' are left alone), and Ctrl-C removes the run's own and
/// exits 130. The input is a FIFO nobody writes to, so the run is caught
/// reading, with its staging directory made.
#[test]
fn prepare_leaves_no_staging_directory_behind() {
    let model = tiny_model("llama");
    let dir = scratch("prepare-debris");
    let out = dir.join("shards");
    let killed = dir.join(".shards.tmp-killed");
    std::fs::create_dir_all(&killed).unwrap();
    std::fs::write(killed.join("train-00000.tokens"), b"half").unwrap();
    let others = dir.join(".other.tmp-x");
    std::fs::create_dir_all(&others).unwrap();
    let fifo = dir.join("chat.jsonl");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let mut child = Command::new(env!("CARGO_BIN_EXE_l2d"))
        .args(["prepare", "--model", s(&model), "--out", s(&out), "--input", s(&fifo)])
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let staging = || -> Vec<PathBuf> {
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with(".shards.tmp-")).collect()
    };
    let mut waited = 0;
    while staging().len() != 1 || staging()[0] == killed {
        assert!(waited < 600, "prepare never staged its output: {:?}", staging());
        std::thread::sleep(std::time::Duration::from_millis(50));
        waited += 1;
    }
    assert!(Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert_eq!(staging(), Vec::<PathBuf>::new());
    assert!(!out.exists() && others.exists());
}

/// Without a terminal, prepare logs its progress: bytes read of the total and records/s.
#[test]
fn progress_line_without_a_terminal() {
    let model = tiny_model("llama");
    let dir = scratch("prepare-progress");
    let chat = dir.join("chat.jsonl");
    let text: String = (0..30)
        .map(|i| format!("{}\n", serde_json::json!({"messages": [{"role": "user", "content": format!("question {i}")}, {"role": "assistant", "content": format!("answer {i}")}]})))
        .collect();
    std::fs::write(&chat, &text).unwrap();
    let out = l2d(&["prepare", "--model", model.to_str().unwrap(), "--input", chat.to_str().unwrap(), "--out", dir.join("shards").to_str().unwrap()]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let total = text.len();
    let line = err.lines().find(|l| l.contains(&format!("prepare: {total}/{total} bytes (100%)"))).unwrap_or_else(|| panic!("{err}"));
    assert!(line.contains("30 records") && line.contains("records/s"), "{line}");
}

// ---------------------------------------------------------------- single-turn layouts

/// Prepares `records` (one per line) and checks each example against the chat it should be:
/// context = rendered [system,] user turn + generation prompt, loss = assistant's reply + eot.
fn check_single_turn(name: &str, file: &str, text: &[u8], args: &[&str], expected: &[(Option<&str>, &str, &str)]) {
    let model = tiny_model("qwen2");
    let dir = scratch(name);
    let input = dir.join(file);
    std::fs::write(&input, text).unwrap();
    let out = dir.join("shards");
    let mut all = vec!["--input", s(&input)];
    all.extend_from_slice(args);
    ok(prepare(&model, &out, &all));
    let split = Split::open(&out, "train").unwrap();
    let tok = Tokenizer::load(&model).unwrap();
    let template = chat_template(&model).unwrap().unwrap();
    let mut got: Vec<(Vec<i64>, Vec<i64>)> = all_examples(&split)
        .iter()
        .map(|ex| (ex.input_ids[..prompt_len(ex)].to_vec(), loss_tokens(ex)))
        .collect();
    let mut want: Vec<(Vec<i64>, Vec<i64>)> = expected
        .iter()
        .map(|&(system, user, reply)| {
            let history: Vec<Message> = system
                .map(|s| Message::new("system", s))
                .into_iter()
                .chain([Message::new("user", user)])
                .collect();
            let context = tok.encode(&template.render(&history, true).unwrap(), false).unwrap();
            let mut loss = tok.encode(reply, false).unwrap();
            loss.extend(tok.encode(eot_token("qwen2"), false).unwrap());
            (context, loss)
        })
        .collect();
    got.sort();
    want.sort();
    assert_eq!(got, want, "{name}: examples are the mapped single-turn chats");
}

#[test]
fn gsm8k_question_answer_jsonl_gz_prepares_without_configuration() {
    // GSM8K's own file (question/answer), read through gzip as `eval` reads it.
    let text = std::fs::read_to_string("../shared/data/gsm8k/train.jsonl").unwrap();
    let lines: Vec<&str> = text.lines().take(20).collect();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, (lines.join("\n") + "\n").as_bytes()).unwrap();
    let records: Vec<serde_json::Value> = lines.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    let expected: Vec<(Option<&str>, &str, &str)> = records
        .iter()
        .map(|r| (None, r["question"].as_str().unwrap(), r["answer"].as_str().unwrap()))
        .collect();
    check_single_turn("prepare-gsm8k", "gsm8k.jsonl.gz", &gz.finish().unwrap(), &[], &expected);
}

#[test]
fn alpaca_and_prompt_response_layouts_are_detected() {
    let text = [
        serde_json::json!({"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}),
        serde_json::json!({"instruction": "Say hi.", "input": "", "output": "hi"}),
        serde_json::json!({"prompt": "Capital of France?", "response": "Paris", "system": "Be brief."}),
    ]
    .map(|r| r.to_string() + "\n")
    .concat();
    let expected = [
        (None, "Add the numbers.\n\n2 and 3", "5"),
        (None, "Say hi.", "hi"),
        (Some("Be brief."), "Capital of France?", "Paris"),
    ];
    check_single_turn("prepare-detected", "mixed.jsonl", text.as_bytes(), &[], &expected);
}

#[test]
fn data_columns_maps_other_field_names() {
    let text = serde_json::json!({"query": "2+2?", "sys": "You do sums.", "resp": "4", "prompt": "ignored"}).to_string() + "\n";
    let args = ["--set", "data.columns.user=\"query\"", "--set", "data.columns.assistant=\"resp\"", "--set", "data.columns.system=\"sys\""];
    check_single_turn("prepare-columns", "custom.jsonl", text.as_bytes(), &args, &[(Some("You do sums."), "2+2?", "4")]);
}

#[test]
fn data_columns_missing_field_is_a_counted_reason() {
    let model = tiny_model("llama");
    let dir = scratch("prepare-columns-missing");
    let input = write(&dir, "qa.jsonl", "{\"question\": \"q\", \"answer\": \"a\"}\n{\"question\": \"q\", \"answer\": 3}\n");
    let out = dir.join("shards");
    let o = prepare(&model, &out, &["--input", s(&input), "--set", "data.columns.user=\"q\"", "--set", "data.columns.assistant=\"a\""]);
    assert_error(&o, 2, &["no training examples left", "2 malformed", "missing_column (2)"]);
    assert!(!out.exists());
}

#[test]
fn when_every_record_is_rejected_the_error_names_the_top_reasons() {
    let model = tiny_model("llama");
    let dir = scratch("prepare-all-rejected");
    let text = "{\"text\": \"a\"}\n{\"text\": \"b\"}\n{\"text\": \"c\"}\n{not json\n{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}]}\n{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}]}\n";
    let input = write(&dir, "bad.jsonl", text);
    let out = dir.join("shards");
    let o = prepare(&model, &out, &["--input", s(&input)]);
    assert_error(&o, 2, &["6 malformed", "top reasons: missing_messages (3), no_assistant_turn (2), invalid_json (1)"]);
    assert!(!out.exists());
}

#[test]
fn data_columns_rejects_unknown_keys() {
    let model = tiny_model("llama");
    let dir = scratch("prepare-columns-unknown");
    let input = write(&dir, "qa.jsonl", "{\"question\": \"q\", \"answer\": \"a\"}\n");
    let o = prepare(&model, &dir.join("shards"), &["--input", s(&input), "--set", "data.columns.user=\"question\"", "--set", "data.columns.assistant=\"answer\"", "--set", "data.columns.reply=\"x\""]);
    assert_error(&o, 2, &["data.columns", "reply"]);
}

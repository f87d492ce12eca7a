//! The chat template renderer against outputs we did not produce ourselves:
//! real Jinja2 with transformers' settings (`scripts/render_chat_fixtures.py`
//! wrote `tests/fixtures/templates/expected.json`), llama.cpp's golden files and
//! huggingface.js' transformers-derived targets. Plus config loading and errors.

use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use l2d::data::chat::{ChatTemplate, Message, TokenizerConfig};
use l2d::error::{exit_code, one_line};
use serde::Deserialize;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/templates")
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(fixtures().join(name)).unwrap()
}

fn msg(role: &str, content: &str) -> Message {
    Message::new(role, content)
}

#[derive(Deserialize)]
struct Expected {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    template: String,
    bos_token: Option<String>,
    eos_token: Option<String>,
    messages: Vec<Message>,
    add_generation_prompt: bool,
    date: String,
    date_string: Option<String>,
    tools_json: Option<String>,
    expected: Option<String>,
    error: Option<String>,
}

/// Where two renders first differ, with some context, for a readable failure.
fn first_difference(got: &str, want: &str) -> String {
    let at = got
        .char_indices()
        .zip(want.chars())
        .find(|((_, a), b)| a != b)
        .map(|((i, _), _)| i)
        .unwrap_or(got.len().min(want.len()));
    let from = at.saturating_sub(40);
    let snippet = |s: &str| {
        let start = (from..=at.min(s.len()))
            .find(|i| s.is_char_boundary(*i))
            .unwrap_or(0);
        s[start..].chars().take(80).collect::<String>()
    };
    format!(
        "first difference at byte {at}:\n   got: {:?}\n  want: {:?}",
        snippet(got),
        snippet(want)
    )
}

#[test]
fn renders_byte_identical_to_jinja2_with_transformers_settings() {
    let text = fixture("expected.json");
    let expected: Expected = serde_json::from_str(&text).unwrap();
    assert!(expected.cases.len() >= 20, "expected.json lost its cases");
    let mut failures = Vec::new();
    for case in &expected.cases {
        let date = NaiveDate::parse_from_str(&case.date, "%Y-%m-%d").unwrap();
        let mut template = ChatTemplate::new(
            &fixture(&case.template),
            case.bos_token.clone(),
            case.eos_token.clone(),
        )
        .unwrap()
        .with_fixed_date(date);
        if let Some(d) = &case.date_string {
            template = template.with_date_string(d.clone());
        }
        if let Some(tools) = &case.tools_json {
            template = template.with_tools_json(tools).unwrap();
        }
        let got = template.render(&case.messages, case.add_generation_prompt);
        match (&case.expected, &case.error, got) {
            (Some(want), _, Ok(got)) if &got == want => {}
            (Some(want), _, Ok(got)) => {
                failures.push(format!("{}: {}", case.name, first_difference(&got, want)))
            }
            (Some(_), _, Err(err)) => failures.push(format!(
                "{}: unexpected error: {}",
                case.name,
                one_line(&err)
            )),
            (None, Some(want), Err(err)) => {
                let line = one_line(&err);
                if !line.contains(want.as_str()) || exit_code(&err) != 2 {
                    failures.push(format!(
                        "{}: error {line:?} (exit {}) lacks {want:?}",
                        case.name,
                        exit_code(&err)
                    ));
                }
            }
            (None, Some(want), Ok(got)) => failures.push(format!(
                "{}: rendered {got:?}, Jinja2 raised {want:?}",
                case.name
            )),
            (None, None, _) => failures.push(format!("{}: case has no expectation", case.name)),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        expected.cases.len(),
        failures.join("\n")
    );
}

/// llama.cpp's goldens (tests/chat/goldens, rendered from the real templates
/// with Python Jinja2 and the date pinned to 2024-07-26) — a second, independent source.
#[test]
fn matches_llama_cpp_goldens() {
    let bos = Some("<|startoftext|>".to_string());
    let eos = Some("<|endoftext|>".to_string());
    let date = NaiveDate::from_ymd_opt(2024, 7, 26).unwrap();
    let system = [
        msg("system", "You only tell the truth."),
        msg("user", "What's your favourite LLM framework?"),
        msg("assistant", "llama.cpp!"),
    ];
    let simple = &system[1..];

    let llama = ChatTemplate::new(&fixture("llama-3.2.jinja"), bos.clone(), eos.clone())
        .unwrap()
        .with_fixed_date(date);
    assert_eq!(
        llama.render(&system, true).unwrap(),
        "<|startoftext|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nYou only tell the truth.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWhat's your favourite LLM framework?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nllama.cpp!<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    );

    let qwen = ChatTemplate::new(&fixture("qwen2.5.jinja"), bos, eos).unwrap();
    assert_eq!(
        qwen.render(simple, true).unwrap(),
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat's your favourite LLM framework?<|im_end|>\n<|im_start|>assistant\nllama.cpp!<|im_end|>\n<|im_start|>assistant\n"
    );
}

/// huggingface.js' test for meta-llama/Llama-3.1-8B-Instruct (its target comes
/// from transformers): tools go into the first user message with `tojson(indent=4)`.
#[test]
fn matches_huggingface_js_llama_3_1_tools_target() {
    let tool = r#"[{"type": "function", "function": {"name": "get_current_temperature", "description": "Get the current temperature at a location.", "parameters": {"type": "object", "properties": {"location": {"type": "string", "description": "The location to get the temperature for, in the format \"City, Country\""}}, "required": ["location"]}, "return": {"type": "number", "description": "The current temperature at the specified location in the specified units, as a float."}}}]"#;
    let template = ChatTemplate::new(
        &fixture("llama-3.1.jinja"),
        Some("<|begin_of_text|>".into()),
        Some("<|im_end|>".into()),
    )
    .unwrap()
    .with_tools_json(tool)
    .unwrap();
    let got = template
        .render(
            &[
                msg("system", "You are a bot that responds to weather queries."),
                msg("user", "Hey, what's the temperature in Paris right now?"),
            ],
            true,
        )
        .unwrap();
    let want = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nYou are a bot that responds to weather queries.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nGiven the following functions, please respond with a JSON for a function call with its proper arguments that best answers the given prompt.\n\nRespond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its value}.Do not use variables.\n\n{\n    \"type\": \"function\",\n    \"function\": {\n        \"name\": \"get_current_temperature\",\n        \"description\": \"Get the current temperature at a location.\",\n        \"parameters\": {\n            \"type\": \"object\",\n            \"properties\": {\n                \"location\": {\n                    \"type\": \"string\",\n                    \"description\": \"The location to get the temperature for, in the format \\\"City, Country\\\"\"\n                }\n            },\n            \"required\": [\n                \"location\"\n            ]\n        },\n        \"return\": {\n            \"type\": \"number\",\n            \"description\": \"The current temperature at the specified location in the specified units, as a float.\"\n        }\n    }\n}\n\nHey, what's the temperature in Paris right now?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n";
    assert_eq!(got, want, "{}", first_difference(&got, want));
}

#[test]
fn strftime_now_uses_the_clock_unless_a_date_is_fixed() {
    let template = ChatTemplate::new("{{ strftime_now('%d %b %Y') }}", None, None).unwrap();
    let before = chrono::Local::now().format("%d %b %Y").to_string();
    let got = template.render(&[], false).unwrap();
    let after = chrono::Local::now().format("%d %b %Y").to_string();
    assert!(
        got == before || got == after,
        "{got:?} is not today ({before})"
    );

    let fixed = template.with_fixed_date(NaiveDate::from_ymd_opt(2024, 7, 26).unwrap());
    assert_eq!(fixed.render(&[], false).unwrap(), "26 Jul 2024");
}

#[test]
fn raise_exception_fails_rendering_with_the_templates_message() {
    // The check Mistral/Llama-2 style templates make on role order.
    let source = "{%- for m in messages %}{%- if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{%- endif %}[{{ m['content'] }}]{%- endfor %}";
    let template = ChatTemplate::new(source, None, None).unwrap();
    assert_eq!(
        template
            .render(&[msg("user", "a"), msg("assistant", "b")], false)
            .unwrap(),
        "[a][b]"
    );
    let err = template
        .render(&[msg("user", "a"), msg("user", "b")], false)
        .unwrap_err();
    let line = one_line(&err);
    assert!(
        line.contains("Conversation roles must alternate user/assistant/user/assistant/..."),
        "{line}"
    );
    assert_eq!(
        exit_code(&err),
        2,
        "a conversation the template rejects is the user's to fix"
    );
}

#[test]
fn template_syntax_error_is_a_usage_error_naming_chat_template() {
    let err = ChatTemplate::new("{% for m in messages %}{{ m.content }}", None, None).unwrap_err();
    assert_eq!(exit_code(&err), 2);
    let line = one_line(&err);
    assert!(line.contains("chat_template"), "{line}");
    assert!(!line.contains('\n'));
}

#[test]
fn trailing_newline_of_the_template_is_dropped_like_jinja2() {
    let template = ChatTemplate::new("{{ messages[0].content }}\n", None, None).unwrap();
    assert_eq!(template.render(&[msg("user", "hi")], false).unwrap(), "hi");
}

#[test]
fn bad_tools_json_is_a_usage_error() {
    let template = ChatTemplate::new("x", None, None).unwrap();
    let err = template
        .with_tools_json("{\"not\": \"a list\"}")
        .unwrap_err();
    assert_eq!(exit_code(&err), 2);
    let template = ChatTemplate::new("x", None, None).unwrap();
    let err = template.with_tools_json("[{").unwrap_err();
    assert_eq!(exit_code(&err), 2);
    assert!(one_line(&err).contains("tools"));
}

fn write_config(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("tokenizer_config.json");
    std::fs::write(&path, body).unwrap();
    path
}

#[test]
fn tokenizer_config_with_added_token_objects_and_template_list() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        r#"{
          "add_bos_token": true,
          "bos_token": {"__type": "AddedToken", "content": "<s>", "lstrip": false, "normalized": false, "rstrip": false, "single_word": false},
          "eos_token": {"content": "</s>", "special": true},
          "pad_token": null,
          "model_max_length": 1000000000000000019884624838656,
          "chat_template": [
            {"name": "tool_use", "template": "TOOLS"},
            {"name": "default", "template": "{{ bos_token }}{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}"}
          ]
        }"#,
    );
    let config = TokenizerConfig::load(&path).unwrap();
    assert_eq!(config.bos_token.as_deref(), Some("<s>"));
    assert_eq!(config.eos_token.as_deref(), Some("</s>"));
    assert_eq!(config.pad_token, None);
    assert_eq!(config.add_bos_token, Some(true));
    assert_eq!(config.model_max_length, Some(1e30));
    let rendered = config
        .template()
        .unwrap()
        .render(&[msg("user", "hi")], false)
        .unwrap();
    assert_eq!(rendered, "<s>hi</s>");

    // Without a `default` entry the first one is used.
    write_config(
        dir.path(),
        r#"{"chat_template": [{"name": "a", "template": "A"}, {"name": "b", "template": "B"}]}"#,
    );
    let config = TokenizerConfig::load(&path).unwrap();
    assert_eq!(config.chat_template.as_deref(), Some("A"));
    assert_eq!(config.bos_token, None);
}

#[test]
fn tokenizer_config_of_real_models_shape() {
    // Field layout of Qwen2.5-Instruct's tokenizer_config.json (bos is null).
    let dir = tempfile::tempdir().unwrap();
    let body = serde_json::json!({
        "add_bos_token": false,
        "bos_token": null,
        "chat_template": fixture("qwen2.5.jinja"),
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "model_max_length": 131072,
        "tokenizer_class": "Qwen2Tokenizer",
    });
    let path = write_config(dir.path(), &body.to_string());
    let config = TokenizerConfig::load(&path).unwrap();
    assert_eq!(config.pad_token.as_deref(), Some("<|endoftext|>"));
    assert_eq!(config.model_max_length, Some(131072.0));
    let got = config
        .template()
        .unwrap()
        .render(&[msg("user", "Hi")], true)
        .unwrap();
    assert_eq!(
        got,
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn chat_template_jinja_beside_the_config_takes_priority() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        r#"{"chat_template": "from config", "eos_token": "</s>"}"#,
    );
    std::fs::write(dir.path().join("chat_template.jinja"), "from file").unwrap();
    let config = TokenizerConfig::load(&path).unwrap();
    assert_eq!(config.chat_template.as_deref(), Some("from file"));
}

#[test]
fn malformed_tokenizer_config_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "{\"chat_template\": \"x\",");
    let err = TokenizerConfig::load(&path).unwrap_err();
    let line = one_line(&err);
    assert!(line.contains(&path.display().to_string()), "{line}");
    assert!(line.contains("invalid JSON"), "{line}");
    assert_eq!(exit_code(&err), 2);
}

#[test]
fn wrong_field_type_names_the_file_and_the_field() {
    let dir = tempfile::tempdir().unwrap();
    for (body, field) in [
        (r#"{"bos_token": 7}"#, "bos_token"),
        (r#"{"eos_token": {"id": 2}}"#, "eos_token"),
        (r#"{"chat_template": 3}"#, "chat_template"),
        (
            r#"{"chat_template": [{"name": "default"}]}"#,
            "chat_template",
        ),
        (r#"{"add_bos_token": "yes"}"#, "add_bos_token"),
        (r#"{"model_max_length": "big"}"#, "model_max_length"),
        (r#"[1, 2]"#, "object"),
    ] {
        let path = write_config(dir.path(), body);
        let err = TokenizerConfig::load(&path).unwrap_err();
        let line = one_line(&err);
        assert!(line.contains(&path.display().to_string()), "{line}");
        assert!(line.contains(field), "{body}: {line}");
        assert_eq!(exit_code(&err), 2, "{line}");
    }
}

#[test]
fn missing_tokenizer_config_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer_config.json");
    let err = TokenizerConfig::load(&path).unwrap_err();
    let line = one_line(&err);
    assert!(line.contains(&path.display().to_string()), "{line}");
    assert_eq!(exit_code(&err), 2);
}

#[test]
fn config_without_template_says_so() {
    let config = TokenizerConfig::default();
    let err = config.template().unwrap_err();
    assert_eq!(exit_code(&err), 2);
    assert!(one_line(&err).contains("chat_template"));
}

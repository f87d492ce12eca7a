#!/usr/bin/env python3
"""Render the chat-template fixtures with real Jinja2, as `transformers` does.

Writes tests/fixtures/templates/expected.json, which tests/chat_template.rs
compares byte for byte with the Rust renderer (src/data/chat.rs).

The environment mirrors `transformers.utils.chat_template_utils`
(`_compile_jinja_template` and `render_jinja_template`):
ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
extensions=[loopcontrols]), its `tojson` filter, and the `raise_exception` and
`strftime_now` globals; `render` gets messages, tools (None when absent),
documents=None, add_generation_prompt and the special tokens that are set.
The only change: `strftime_now` formats a fixed date instead of the clock.

Templates (verbatim `chat_template` of the Hugging Face repos):
  llama-3.2.jinja  meta-llama/Llama-3.2-1B-Instruct (same as -3B-Instruct)
  llama-3.1.jinja  meta-llama/Llama-3.1-8B-Instruct
  qwen2.5.jinja    Qwen/Qwen2.5-1.5B-Instruct (same as -7B-Instruct)

Usage: python3 -m venv /tmp/jinja-venv && /tmp/jinja-venv/bin/pip install jinja2
       /tmp/jinja-venv/bin/python scripts/render_chat_fixtures.py
"""

import datetime
import json
import pathlib

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "templates"

# Special tokens from each model's tokenizer_config.json (Qwen has no bos token).
MODELS = {
    "llama-3.2.jinja": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
    "llama-3.1.jinja": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
    "qwen2.5.jinja": {"bos_token": None, "eos_token": "<|im_end|>"},
}
# Not a model: a template of our own that pins down Jinja2-on-Python behaviour.
SEMANTICS = "python-semantics.jinja"
SPECIAL = dict(MODELS, **{SEMANTICS: {"bos_token": None, "eos_token": "</s>"}})

# The date the paper pins Llama 3's "Today Date" to.
PAPER_DATE = "2024-07-26"

SYSTEM = {"role": "system", "content": "You are a careful math tutor."}
USER = {"role": "user", "content": "What is 7 * 6?"}
ASSISTANT = {"role": "assistant", "content": "7 * 6 = 42."}
USER2 = {"role": "user", "content": "And 42 / 7?"}

# Key order matters: Python dicts keep it and `tojson` prints it.
WEATHER_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": 'Current weather for a city, e.g. "Paris" <fr> & \'quoted\'.',
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "Stadt – Zürich ☀"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                    "days": {"type": "integer", "minimum": 1, "maximum": 16, "default": 1},
                    "threshold": {"type": "number", "default": 0.5, "limits": [1e-05, 1e16, -2.25, 100.0]},
                    "verbose": {"type": "boolean", "default": False, "nothing": None, "empty": {}, "list": []},
                },
                "required": ["city"],
            },
        },
    }
]


def case(name, template, messages, add_generation_prompt=True, date=PAPER_DATE, date_string=None, tools=None):
    return {
        "name": name,
        "template": template,
        "messages": messages,
        "add_generation_prompt": add_generation_prompt,
        "date": date,
        "date_string": date_string,
        "tools": tools,
    }


def cases():
    out = []
    for template in MODELS:
        stem = template.removesuffix(".jinja")
        out += [
            case(f"{stem}/system_user_generation", template, [SYSTEM, USER]),
            case(f"{stem}/multi_turn", template, [SYSTEM, USER, ASSISTANT, USER2]),
            case(f"{stem}/no_system", template, [USER, ASSISTANT, USER2]),
            case(f"{stem}/no_generation_prompt", template, [SYSTEM, USER, ASSISTANT], add_generation_prompt=False),
            case(
                f"{stem}/whitespace_and_unicode",
                template,
                [
                    {"role": "system", "content": "\n  Réponds en français.\u3000\x1c "},
                    {"role": "user", "content": "  Quelle heure est-il ? 🕒\t\n"},
                ],
            ),
            case(f"{stem}/tools", template, [SYSTEM, USER], tools=WEATHER_TOOLS),
            case(
                f"{stem}/tool_result",
                template,
                [USER, {"role": "assistant", "content": ""}, {"role": "tool", "content": '{"temp": 21.5}\n"ok" <b>&\'é'}],
            ),
        ]
    out += [
        case("llama-3.2/other_fixed_date", "llama-3.2.jinja", [USER], date="2025-01-05"),
        case("llama-3.2/date_string", "llama-3.2.jinja", [USER], date_string="01 Jan 2030"),
        case("llama-3.1/date_string", "llama-3.1.jinja", [USER], date_string="01 Jan 2030"),
        case("llama-3.2/tools_without_user", "llama-3.2.jinja", [SYSTEM], tools=WEATHER_TOOLS),
        case(
            "python-semantics",
            SEMANTICS,
            [{"role": "user", "content": "  Héllo   wörld\t "}, ASSISTANT, USER2],
            date="2024-02-29",
            tools=WEATHER_TOOLS,
        ),
    ]
    return out


def make_env(date):
    # Mirrors transformers' _compile_jinja_template.
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format):
        return datetime.datetime.strptime(date, "%Y-%m-%d").strftime(format)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def render(c):
    source = (FIXTURES / c["template"]).read_text(encoding="utf-8")
    template = make_env(c["date"]).from_string(source)
    special = {k: v for k, v in SPECIAL[c["template"]].items() if v is not None}
    kwargs = dict(special)
    if c["date_string"] is not None:
        kwargs["date_string"] = c["date_string"]
    try:
        return {
            "expected": template.render(
                messages=c["messages"],
                tools=c["tools"],
                documents=None,
                add_generation_prompt=c["add_generation_prompt"],
                **kwargs,
            )
        }
    except jinja2.exceptions.TemplateError as err:
        return {"error": str(err)}


def main():
    rendered = []
    for c in cases():
        entry = {
            "name": c["name"],
            "template": c["template"],
            "bos_token": SPECIAL[c["template"]]["bos_token"],
            "eos_token": SPECIAL[c["template"]]["eos_token"],
            "messages": c["messages"],
            "add_generation_prompt": c["add_generation_prompt"],
            "date": c["date"],
            "date_string": c["date_string"],
            # A string, so that readers without order-preserving JSON maps keep key order.
            "tools_json": None if c["tools"] is None else json.dumps(c["tools"], ensure_ascii=False),
        }
        entry.update(render(c))
        rendered.append(entry)
    doc = {"generator": f"scripts/render_chat_fixtures.py with jinja2 {jinja2.__version__}", "cases": rendered}
    out = FIXTURES / "expected.json"
    out.write_text(json.dumps(doc, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {len(rendered)} cases to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

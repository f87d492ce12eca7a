"""The reference implementation's evaluation prompts (SakanaAI/L2D `tasks/*.py` `line2data`, as
../shared/REFERENCE-EVAL-PROTOCOL.md quotes them), tokenized by transformers' own
`apply_chat_template`: what `tests/eval_paper.rs` compares `l2d eval`'s paper-protocol
`prompt_ids` with.

    python scripts/reference_eval_prompts.py MODEL_DIR TEMPLATE.jinja|own SPEC.json

TEMPLATE is the chat template the reference's model config names (its fixed-date Llama 3.1
template for Llama), or `own` for the model's own (Qwen2.5: no template is named).
SPEC is {"num_shots": k, "tasks": {TASK: {"data": path, "shots": path, "limit": n}}}, in the
layouts l2d reads (JSONL / JSONL.gz, the MMLU CSV directory, the MATH directory of JSON files).
Items whose prompt plus gold answer exceed 2048 tokens are dropped, as every processor drops them.
Prints one JSON object per line, for the first `limit` items kept: {"task", "task_id", "ids"}.
"""
import csv
import glob
import gzip
import inspect
import json
import os
import string
import sys

import jinja2
from transformers import AutoTokenizer

OPTIONS = string.ascii_uppercase
MMLU_TEMPLATE = (
    "Question:\n{{question}}\nChoices:\n{% for choice in choices %}{{options[loop.index-1]}}. {{choice}}\n{% endfor %}\nAnswer:"
)
MMLU_PRO_TEMPLATE = (
    "Question:\n{{question}}\nChoices:\n{% for choice in choices %}{{options[loop.index-1]}}. {{choice}}\n{% endfor %}\n"
)


def jsonl(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


def math_dir(path):
    if os.path.isfile(path):
        return jsonl(path)
    return [json.load(open(p)) for p in sorted(glob.glob(os.path.join(path, "**", "*.json"), recursive=True))]


def mmlu_csv(path):
    rows = []
    for p in sorted(glob.glob(os.path.join(path, "*.csv"))):
        subject = os.path.basename(p).rsplit("_", 1)[0]
        with open(p, newline="") as f:
            for q, a, b, c, d, ans in csv.reader(f):
                rows.append({"question": q, "choices": [a, b, c, d], "answer": "ABCD".index(ans), "subject": subject})
    return rows


def instruct_fields(row):
    """codeparrot/instructhumaneval's fields from an openai_humaneval row, by the dataset card."""
    if "instruction" in row:
        return row
    prompt, entry = row["prompt"], row["entry_point"]
    lines = prompt.splitlines(keepends=True)
    i = max(n for n, line in enumerate(lines) if line.startswith(f"def {entry}("))
    context = "".join(lines[: i + 1])
    signature = lines[i].strip()[len("def "):-1].strip()
    body = "".join(lines[i + 1:])
    quote = min((body.find(q), q) for q in ('"""', "'''") if q in body)
    after = body[quote[0] + 3:]
    docstring = inspect.cleandoc(after[: after.find(quote[1])])
    instruction = f"Write a function {signature} to solve the following problem:\n{docstring}"
    return {**row, "context": context, "instruction": instruction}


def conversations(task, spec, k):
    """(task_id, conversation, continue_final_message, gold answer) per item, as line2data builds them."""
    if task == "gsm8k":
        shots = jsonl(spec["shots"])[:k]
        for idx, row in enumerate(jsonl(spec["data"])):
            conv = [t for s in shots for t in ({"role": "user", "content": s["question"]}, {"role": "assistant", "content": s["answer"]})]
            yield str(idx), conv + [{"role": "user", "content": row["question"]}], False, row["answer"]
    elif task == "math":
        train = math_dir(spec["shots"])
        step = len(train) // k
        shots = [train[i * step] for i in range(k)]
        for idx, row in enumerate(math_dir(spec["data"])):
            conv = [t for s in shots for t in ({"role": "user", "content": s["problem"]}, {"role": "assistant", "content": s["solution"]})]
            yield str(idx), conv + [{"role": "user", "content": row["problem"]}], False, row["solution"]
    elif task in ("mmlu", "mmlu_pro"):
        template = jinja2.Template(MMLU_TEMPLATE if task == "mmlu" else MMLU_PRO_TEMPLATE)
        if task == "mmlu":
            rows, dev, group, choices, answer = mmlu_csv(spec["data"]), mmlu_csv(spec["shots"]), "subject", "choices", "answer"
        else:
            rows, dev, group, choices, answer = jsonl(spec["data"]), jsonl(spec["shots"]), "category", "options", "answer_index"
        for idx, row in enumerate(rows):
            shots = [s for s in dev if s[group] == row[group]][:k]
            conv = []
            for s in shots:
                conv.append({"role": "user", "content": template.render(question=s["question"], choices=s[choices], options=OPTIONS)})
                conv.append({"role": "assistant", "content": OPTIONS[s[answer]]})
            conv.append({"role": "user", "content": template.render(question=row["question"], choices=row[choices], options=OPTIONS)})
            yield str(row.get("question_id", idx)), conv, False, OPTIONS[row[answer]]
    elif task == "humaneval":
        rows = [instruct_fields(r) for r in jsonl(spec["data"])]
        shots = rows[:k]
        for row in rows:
            if any(s["prompt"] == row["prompt"] for s in shots):
                continue
            conv = []
            for s in shots:
                conv.append({"role": "user", "content": s["instruction"]})
                conv.append({"role": "assistant", "content": s["context"] + s["canonical_solution"]})
            conv.append({"role": "user", "content": row["instruction"]})
            conv.append({"role": "assistant", "content": row["context"]})
            yield row["task_id"], conv, True, row["canonical_solution"]
    elif task == "mbpp":
        def get_prompt(r):
            return f'"""\n{r["text"]}\n{r["test_list"][0]}\n"""\n'

        shots = [r for r in jsonl(spec["shots"]) if 1 <= r["task_id"] <= 10][:k]
        for row in jsonl(spec["data"]):
            if any(get_prompt(s) == get_prompt(row) for s in shots):
                continue
            conv = [t for s in shots for t in ({"role": "user", "content": get_prompt(s)}, {"role": "assistant", "content": s["code"]})]
            yield str(row["task_id"]), conv + [{"role": "user", "content": get_prompt(row)}], False, row["code"]


def prompt_ids(tokenizer, conv, cont, template):
    """`apply_chat_template(conv, tokenize=True, ...)` as the reference's pinned transformers 4.46.3 does it.

    Its `continue_final_message` cuts the text after the last occurrence of the final turn's
    `.strip()`ed content and `.rstrip()`s it; the installed transformers may keep a trailing newline
    of an untrimmed turn (Qwen's template), so the cut is made here.
    """
    if not cont:
        return tokenizer.apply_chat_template(conv, tokenize=True, add_generation_prompt=True, chat_template=template)
    text = tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=False, chat_template=template)
    final = conv[-1]["content"].strip()
    text = text[: text.rindex(final) + len(final)].rstrip()
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def main():
    model_dir, template_path, spec_path = sys.argv[1:4]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    template = None if template_path == "own" else open(template_path).read()
    spec = json.load(open(spec_path))
    for task, files in spec["tasks"].items():
        kept = 0
        for task_id, conv, cont, gold in conversations(task, files, spec["num_shots"]):
            if kept == files["limit"]:
                break
            ids = prompt_ids(tokenizer, conv, cont, template)
            if len(ids) + len(tokenizer.encode(gold, add_special_tokens=False)) > 2048:
                continue
            kept += 1
            print(json.dumps({"task": task, "task_id": task_id, "ids": list(ids)}))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Writes the tiny Parquet fixtures of tests/prepare.rs in Hugging Face's
smoltalk layout, with pyarrow (the library `datasets` writes Parquet with),
so that l2d's reader is tested on files it did not write itself.

    python -m venv /tmp/pa && /tmp/pa/bin/pip install pyarrow
    /tmp/pa/bin/python scripts/make_prepare_fixtures.py tests/fixtures/prepare

Writes:
  smoltalk/data/alpha/train-00000-of-00001.parquet  snappy, `messages` + `category`
  smoltalk/data/beta/train-00000-of-00001.parquet   zstd, `messages` only, plus an
                                                    unused column the reader must skip
  smoltalk.jsonl                                    the same records as chat JSONL, in
                                                    file order alpha then beta
"""
import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

MESSAGE = pa.struct([("content", pa.string()), ("role", pa.string())])

ALPHA = [
    (
        [
            {"role": "user", "content": "What is 3 plus 4?"},
            {"role": "assistant", "content": "3 plus 4 is 7."},
        ],
        "math",
    ),
    (
        [
            {"role": "system", "content": "You answer briefly."},
            {"role": "user", "content": "Name a fruit."},
            {"role": "assistant", "content": "An apple."},
            {"role": "user", "content": "Another one?"},
            {"role": "assistant", "content": "A pear."},
        ],
        "chat",
    ),
    (
        [
            {"role": "user", "content": "Write a haiku about rain."},
            {"role": "assistant", "content": "Rain taps the window,\nsoft drums in the quiet night,\nthe garden drinks deep."},
        ],
        None,
    ),
]

BETA = [
    [
        {"role": "user", "content": "Say hello in French."},
        {"role": "assistant", "content": "Bonjour!"},
    ],
    [
        {"role": "user", "content": "Sort 3, 1, 2."},
        {"role": "assistant", "content": "1, 2, 3"},
        {"role": "user", "content": "Reverse it."},
        {"role": "assistant", "content": "3, 2, 1"},
    ],
]


def main(out: Path) -> None:
    alpha = out / "smoltalk" / "data" / "alpha"
    beta = out / "smoltalk" / "data" / "beta"
    alpha.mkdir(parents=True, exist_ok=True)
    beta.mkdir(parents=True, exist_ok=True)

    table = pa.table(
        {
            "messages": pa.array([m for m, _ in ALPHA], type=pa.list_(MESSAGE)),
            "category": pa.array([c for _, c in ALPHA], type=pa.string()),
        }
    )
    pq.write_table(table, alpha / "train-00000-of-00001.parquet", compression="snappy")

    table = pa.table(
        {
            "prompt_id": pa.array([f"id-{i}" for i in range(len(BETA))]),
            "messages": pa.array(BETA, type=pa.list_(MESSAGE)),
        }
    )
    pq.write_table(table, beta / "train-00000-of-00001.parquet", compression="zstd")

    with open(out / "smoltalk.jsonl", "w") as f:
        for messages, category in ALPHA:
            record = {"messages": messages}
            if category is not None:
                record["category"] = category
            f.write(json.dumps(record) + "\n")
        for messages in BETA:
            f.write(json.dumps({"messages": messages}) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/prepare"))

#!/usr/bin/env bash
# The main job in miniature, on a CPU, through the public subcommands: a tiny
# random model learns the bundled `modsum` task (mode `full`), a frozen copy of
# it gets an L2D diffusion path (mode `l2d-lora`), and both are evaluated on the
# task's test split: the base LM, L2D at 2, 4, 8 and 16 midpoint levels (3, 7,
# 15, 31 evaluations per token) and with the adaptive bosh3 solver. Prints the
# accuracy table with 95% confidence intervals and writes the plot.
#
#   scripts/demo.sh     (results in runs/demo, or $L2D_DEMO_DIR)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
cargo build --release --locked
l2d=target/release/l2d
out="${L2D_DEMO_DIR:-runs/demo}"
rm -rf "$out"
# The configs name runs/demo; these point them at $out instead.
paths=(--set data.train="$out/task/train.jsonl" --set data.valid="$out/task/valid.jsonl" --set data.out="$out/data")
# One intra-op thread: the tiny model gains little from a second one, and a
# fixed thread count makes every stage bit-reproducible on a given CPU.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
SECONDS=0

echo "== 1. the bundled task and a tiny random model (l2d init)"
$l2d init --task modsum --seed 0 --test 1000 --out "$out/task"
$l2d init --arch qwen2 --preset tiny --seed 0 --out "$out/model"

echo "== 2. chat data to training shards (l2d prepare)"
$l2d prepare --config configs/demo-full.toml "${paths[@]}" --model "$out/model" --out "$out/data"

echo "== 3. train the base LM (mode full)"
$l2d train --config configs/demo-full.toml "${paths[@]}" --set model.path="$out/model" --out "$out/base"

echo "== 4. train an L2D path on the frozen base LM (mode l2d-lora)"
$l2d train --config configs/demo-l2d-lora.toml "${paths[@]}" --set model.path="$out/base/model" --out "$out/l2d"

echo "== 5. accuracy on the test split: base LM vs L2D (l2d eval)"
$l2d eval --config configs/demo-l2d-lora.toml --set model.path="$out/base/model" \
  --set eval.tasks.gsm8k.data="$out/task/test.jsonl" --l2d "$out/l2d/l2d" --out "$out/eval"
$l2d report plot "$out/eval/report.json" --out "$out/accuracy.svg"
echo "demo finished in ${SECONDS}s; table in $out/eval/report.md, plot in $out/accuracy.svg"

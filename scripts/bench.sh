#!/usr/bin/env bash
# Throughput benchmarks (not tests): generation, then training. With no
# argument, benchmarks a fresh `small` llama from `l2d init`; with MODEL_DIR,
# that model. Also runs the reference stack (transformers) on the generation
# shapes when it is installed.
#
#   scripts/bench.sh [MODEL_DIR]      L2D_BENCH_THREADS=2 by default
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
cargo build --release --locked
model="${1:-}"
if [[ -z "$model" ]]; then
  model=runs/bench/small-llama
  [[ -d "$model" ]] || target/release/l2d init --arch llama --preset small --seed 0 --out "$model"
fi
echo "== l2d (base LM, then L2D at 15 evaluations per token)"
cargo bench --locked --bench generate -- "$model"
echo "== l2d training (optimizer steps of 4 x 256 tokens)"
cargo bench --locked --bench train -- "$model"
echo "== l2d training, chat-like: the first 112 of the 256 tokens a prompt without loss"
L2D_BENCH_MODES=l2d-lora L2D_BENCH_PROMPT=112 cargo bench --locked --bench train -- "$model"
if .venv/bin/python -c 'import transformers' 2>/dev/null; then
  echo "== reference: transformers (eager)"
  .venv/bin/python scripts/bench_transformers.py "$model" "${L2D_BENCH_THREADS:-2}"
fi

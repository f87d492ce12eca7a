#!/usr/bin/env bash
# The main job on an embedded default. Until the miniature L2D experiment
# lands, it creates a tiny model with `l2d init` and generates with it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
cargo build --release --locked
l2d=target/release/l2d
out="${L2D_DEMO_DIR:-runs/demo}"
mkdir -p "$out"
if [[ ! -d "$out/model" ]]; then
  $l2d init --arch llama --preset small --seed 0 --out "$out/model"
fi
$l2d info
echo "--- greedy chat completion from the (untrained) small model:"
$l2d generate --model "$out/model" --chat --prompt "What is 12 + 7?" --temperature 0 --max-new-tokens 24
echo "--- the same as JSON:"
$l2d generate --model "$out/model" --chat --prompt "What is 12 + 7?" --temperature 0 --max-new-tokens 24 --json

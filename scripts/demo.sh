#!/usr/bin/env bash
# The main job on an embedded default, through the public subcommands: a tiny
# model is created, trained on arithmetic chat data (mode `full`), given an
# L2D diffusion path (mode `l2d-lora`), and compared with it. This is a
# pipeline demonstration, not yet the measured test-time-scaling experiment
# (issue #6): the training here is far too short for accuracy to move.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
cargo build --release --locked
l2d=target/release/l2d
out="${L2D_DEMO_DIR:-runs/demo}"
rm -rf "$out"
mkdir -p "$out"
$l2d info

echo "== 1. a small random model (l2d init)"
$l2d init --arch llama --preset small --seed 0 --out "$out/model"

echo "== 2. arithmetic chat data, prepared with the model's chat template (l2d prepare)"
.venv/bin/python - "$out/chat.jsonl" <<'PY'
import json, random, sys
random.seed(0)
with open(sys.argv[1], "w") as f:
    for _ in range(400):
        a, b = random.randint(0, 49), random.randint(0, 49)
        f.write(json.dumps({"messages": [
            {"role": "user", "content": f"What is {a} + {b}?"},
            {"role": "assistant", "content": f"{a} + {b} = {a + b}"}]}) + "\n")
PY
$l2d prepare --model "$out/model" --input "$out/chat.jsonl" --out "$out/data" --set data.valid_fraction=0.1

echo "== 3. train the base LM (mode full)"
$l2d train --config configs/tiny-full.toml --set model.path="$out/model" --set data.out="$out/data" \
  --set train.lr=3e-3 --set train.final_lr=3e-4 --set train.warmup_steps=10 --set train.epochs=8 \
  --set train.max_steps=400 --set train.batch_size=16 --set train.micro_batch_size=16 --out "$out/base"

echo "== 4. train an L2D path on top of it (mode l2d-lora)"
$l2d train --config configs/tiny-l2d-lora.toml --set model.path="$out/base/model" --set data.out="$out/data" \
  --set train.lr=1e-3 --set train.warmup_steps=10 --set train.epochs=4 --set train.max_steps=400 \
  --set train.batch_size=16 --set train.micro_batch_size=16 --out "$out/l2d"

echo "== 5. loss at fixed diffusion times on the validation split (l2d eval loss)"
$l2d eval loss --model "$out/base/model" --l2d "$out/l2d/l2d" --data "$out/data" --t 0,0.5,1

echo "== 6. generation: the base LM, then L2D with 15 evaluations per token"
for head in base l2d; do
  extra=()
  [[ $head == l2d ]] && extra=(--l2d "$out/l2d/l2d" --steps 8 --solver midpoint)
  $l2d generate --model "$out/base/model" --chat --prompt "What is 12 + 7?" --temperature 0 \
    --max-new-tokens 16 --json "${extra[@]}" | HEAD="$head" .venv/bin/python -c '
import json, os, sys
r = json.loads(sys.stdin.readline())
head, text, nfe, tps = os.environ["HEAD"], r["completion"], r["nfe_per_token"], r["decode_tokens_per_s"]
print(f"{head:>4}: {text!r} ({nfe:.0f} evaluations/token, {tps:.1f} tok/s)")'
done

#!/usr/bin/env bash
# What data parallelism costs per optimizer step at the `small` shape: two Gloo
# ranks on loopback train a few steps of each mode, and the mean of the
# reduction's seconds (`reduce_s` in metrics.jsonl: summing the gradients and
# the loss, waiting for the slower rank included) is set against the step's
# (`step_s`), after the first step. Global batch 8 x 256 tokens in
# micro-batches of 4 (one per rank). `full` also runs with ZeRO-1
# (train.zero = 1), where `reduce_s` is the reduce-scatter of the gradients,
# the sums of the loss and the gradient norm, and the all-gather of the
# updated weights. A machine with fewer than 2 free cores measures contention
# as much as communication.
#
#   scripts/bench-dist.sh [STEPS]      (default 6; needs target/release/l2d)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="$repo/target/release/l2d"
steps="${1:-6}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

"$bin" init --arch llama --preset small --seed 0 --out "$work/model" >/dev/null
python3 - "$work/data.jsonl" <<'PY'
import json, random, sys
rng = random.Random(0)
with open(sys.argv[1], "w") as f:
    for _ in range(64):
        f.write(json.dumps({"input_ids": [rng.randrange(3, 4000) for _ in range(256)]}) + "\n")
PY

# bench MODE BUCKET_MB ZERO: one two-rank run, one summary line.
bench() {
  local mode=$1 bucket_mb=$2 zero=$3
  local out="$work/run-$mode-$bucket_mb-$zero"
  local port=$((20000 + RANDOM % 20000))
  for rank in 0 1; do
    RANK=$rank LOCAL_RANK=$rank WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port OMP_NUM_THREADS=1 \
      "$bin" train --config "$repo/configs/tiny-l2d-lora.toml" \
      --set model.path="$work/model" --set data.out="$work/data.jsonl" --set train.mode=$mode \
      --set train.batch_size=8 --set train.micro_batch_size=4 --set train.max_seq_len=256 \
      --set train.max_steps="$steps" --set train.save_every=0 --set dist.bucket_mb=$bucket_mb \
      --set train.zero=$zero --out "$out" 2>"$out.rank$rank.log" &
  done
  wait
  python3 - "$out/metrics.jsonl" "$mode" "$bucket_mb" "$zero" <<'PY'
import json, sys
recs = [r for r in map(json.loads, open(sys.argv[1])) if "reduce_s" in r][1:]
step = sum(r["step_s"] for r in recs) / len(recs)
red = sum(r["reduce_s"] for r in recs) / len(recs)
print(f"{sys.argv[2]:9} zero={sys.argv[4]} bucket_mb={sys.argv[3]:>3}: step {step*1e3:8.1f} ms, reduction {red*1e3:7.1f} ms ({100*red/step:4.1f}%) over {len(recs)} steps")
PY
}

for mode in l2d-lora full; do
  for bucket_mb in 25 1; do
    bench $mode $bucket_mb 0
  done
done
for bucket_mb in 25 1; do
  bench full $bucket_mb 1
done

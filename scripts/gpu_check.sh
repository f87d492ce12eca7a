#!/usr/bin/env bash
# The GPU checks, for a machine with CUDA but no Rust: build here with
# `cargo build --release && cargo bench --no-run --bench generate`, copy
# target/release/l2d and the bench binary over, then
#
#   L2D_BIN=path/to/l2d L2D_BENCH_BIN=path/to/generate-HASH scripts/gpu_check.sh
#
# 1. CPU and CUDA agree: base logits (through the loss) and L2D losses at
#    t = 0 and t = 1 (noise-free) in f32 and bf16, and greedy generations with
#    and without L2D token for token in f32.
# 2. Decode throughput on the Llama-3.2-1B shapes (random weights, bf16) at
#    batch 1, 8 and 64, base LM and L2D at 15 evaluations per token.
# 3. l2d-lora training tokens/s and model-FLOPs utilisation on the same shapes
#    (sequence 2048, micro-batch 4).
# Exits non-zero if an agreement check fails.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin="$(realpath "${L2D_BIN:-target/release/l2d}")"
bench="${L2D_BENCH_BIN:-}"
torch_lib="$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib"
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
work="${L2D_GPU_WORK:-$(mktemp -d)}"
# Rehearsal on a CPU machine: L2D_GPU_DEVICE=cpu with L2D_GPU_SKIP_1B=1 (or
# L2D_GPU_PRESET=small for the throughput and training parts).
dev="${L2D_GPU_DEVICE:-cuda}"
status=0
step() { echo; echo "== $*"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$bin" info

step "agreement: tiny model, briefly trained L2D path"
"$bin" init --arch llama --preset tiny --seed 1 --out "$work/tiny" >/dev/null
python3 - "$work" <<'EOF'
import json, random, sys
random.seed(0)
with open(f"{sys.argv[1]}/tokens.jsonl", "w") as f:
    for _ in range(48):
        ids = [random.randrange(3, 400) for _ in range(random.randrange(24, 64))]
        # A masked "prompt" of its own length per row: the diffusion stream's gathered positions.
        prompt = random.randrange(4, 16)
        f.write(json.dumps({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]}) + "\n")
EOF
"$bin" prepare --config configs/tiny-l2d-lora.toml --set model.path="$work/tiny" \
  --set data.train="$work/tokens.jsonl" --out "$work/data" >/dev/null
"$bin" train --config configs/tiny-l2d-lora.toml --set model.path="$work/tiny" --set data.out="$work/data" \
  --set model.device=cpu --set train.max_steps=60 --set train.lr=1e-2 --out "$work/run" >/dev/null 2>&1 \
  || { echo "FAIL: tiny training"; status=1; }
loss() { "$bin" eval loss --model "$work/tiny" --l2d "$work/run/l2d" --data "$work/tokens.jsonl" --t 0,1 --json "$@"; }
loss --device cpu --dtype f32 > "$work/loss-cpu.json"
loss --device "$dev" --dtype f32 > "$work/loss-cuda-f32.json"
loss --device "$dev" --dtype bf16 > "$work/loss-cuda-bf16.json"
gen() { "$bin" generate --model "$work/tiny" --prompt "the cat" --max-new-tokens 24 --min-new-tokens 24 --temperature 0 --json "$@"; }
gen --device cpu > "$work/gen-cpu.json"
gen --device "$dev" --dtype f32 > "$work/gen-cuda.json"
gen --device cpu --l2d "$work/run/l2d" --x1-estimate average > "$work/gen-l2d-cpu.json"
gen --device "$dev" --dtype f32 --l2d "$work/run/l2d" --x1-estimate average > "$work/gen-l2d-cuda.json"
python3 - "$work" <<'EOF' || status=1
import json, sys
w = sys.argv[1]
load = lambda n: json.loads(open(f"{w}/{n}").read().strip().splitlines()[-1])
cpu, f32, bf16 = (load(f"loss-{n}.json") for n in ("cpu", "cuda-f32", "cuda-bf16"))
ok = True
def check(name, a, b, tol):
    global ok
    rel = abs(a - b) / abs(a)
    good = rel <= tol
    ok &= good
    print(f"{'ok ' if good else 'FAIL'} {name}: cpu {a:.6f} cuda {b:.6f} rel {rel:.2e} (tol {tol:g})")
for other, tol, tag in ((f32, 1e-5, "f32"), (bf16, 2e-2, "bf16")):
    check(f"base loss {tag}", cpu["base_loss"], other["base_loss"], tol)
    for a, b in zip(cpu["losses"], other["losses"]):
        check(f"l2d loss t={a['t']} {tag}", a["loss"], b["loss"], tol)
# A random model's logits are near ties, so generations are reported, not asserted.
for kind in ("", "l2d-"):
    a, b = (load(f"gen-{kind}{d}.json")["completion_token_ids"] for d in ("cpu", "cuda"))
    agree = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))
    print(f"info greedy {kind or 'base-'}generation f32: first {agree} of {len(a)} tokens equal on cpu and cuda")
sys.exit(0 if ok else 1)
EOF

[[ -n "${L2D_GPU_SKIP_1B:-}" ]] && exit $status

step "decode throughput: Llama-3.2-1B shapes, random weights, bf16"
start=$(date +%s)
"$bin" init --arch llama --preset "${L2D_GPU_PRESET:-1b}" --seed 0 --out "$work/m1b" >/dev/null
echo "init --preset 1b: $(( $(date +%s) - start )) s"
if [[ -n "$bench" ]]; then
  L2D_BENCH_DEVICE="$dev" L2D_BENCH_DTYPE=bf16 L2D_BENCH_BATCHES=1,8,64 "$bench" "$work/m1b"
fi

step "training: l2d-lora, Llama-3.2-1B shapes, bf16, sequence 2048, micro-batch 4"
python3 - "$work" <<'EOF'
import json, random, sys
random.seed(0)
with open(f"{sys.argv[1]}/long.jsonl", "w") as f:
    for _ in range(72):
        f.write(json.dumps({"input_ids": [random.randrange(3, 4000) for _ in range(2048)]}) + "\n")
EOF
common=(--config configs/llama-3.2-1b-instruct-l2d-lora.toml --set model.path="$work/m1b")
"$bin" prepare "${common[@]}" --set data.train="$work/long.jsonl" --set 'data.valid=[]' --set train.max_seq_len=2048 --out "$work/long" >/dev/null
run1b=("${common[@]}" --set 'data.valid=[]' --set data.out="$work/long" --set model.device="$dev" --set model.dtype=bf16
  --set train.max_seq_len=2048 --set train.micro_batch_size=4 --set train.batch_size=4 --set train.max_steps=14
  --set train.warmup_steps=2 --set train.log_every=1 --set train.eval_every=0 --set train.save_every=0)
"$bin" train "${run1b[@]}" --dry-run --json > "$work/plan1b.json"
"$bin" train "${run1b[@]}" --out "$work/train1b" 2>&1 | tail -3
python3 - "$work" <<'EOF'
import json, sys
w = sys.argv[1]
recs = [json.loads(l) for l in open(f"{w}/train1b/metrics.jsonl") if '"tokens_per_s"' in l]
trainable = json.load(open(f"{w}/plan1b.json"))["trainable_params"]
steady = recs[4:]
tps = sum(r["tokens_per_s"] for r in steady) / len(steady)
# The FLOPs a step needs, per token. Llama-3.2-1B: 16 layers, d 2048, ffn 8192,
# 32 q heads and 8 kv heads of 64, vocab 128256, T 2048.
L, d, ffn, kv, V, T = 16, 2048, 8192, 512, 128256, 2048
body = L * (d * d * 2 + 2 * d * kv + 3 * d * ffn)        # q,o + k,v + gate,up,down weights
attn = L * 2 * 2 * T * d / 2                              # QK^T and AV per token, causal half
main_fwd = 2 * body + attn                                 # frozen main path, no LM head
flow_fwd = 2 * (body - L * 2 * d * kv) + attn + 2 * V * d  # flow stream reuses the main k,v; one LM head
# Backward through the flow stream: input gradients only through the frozen maps
# (the same matmuls again), weight gradients only for the trainable tensors
# (2 FLOPs each forward, 2 for their input and 2 for their weight gradient).
flops = main_fwd + 2 * flow_fwd + 6 * trainable
peak = 989e12                                              # H100 and H200 SXM, dense bf16
print(f"steps {len(recs)}, steady tokens/s {tps:,.0f}, model FLOPs/token {flops/1e9:.2f} G, "
      f"achieved {tps*flops/1e12:.1f} TFLOP/s, MFU {tps*flops/peak:.1%} of {peak/1e12:.0f} TFLOP/s dense bf16")
EOF
exit $status

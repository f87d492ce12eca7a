#!/usr/bin/env bash
# The demo's question at the same budget (issue #20): does the L2D path beat
# finetuning the base LM's own weights on the same data? For each seed S it
# runs the demo's stages (scripts/demo.sh) with `l2d init --seed S` and
# `train.seed = S`, then two baselines on the same base LM, data, steps and
# learning-rate schedule as the L2D path: weight LoRA (configs/demo-lora.toml,
# about the L2D path's trainable parameter count) and full finetuning
# (configs/demo-full-ft.toml). Every model is evaluated on the same test split
# (greedy; L2D at 2, 4, 8 and 16 midpoint levels), and the table gives the
# mean, min and max of each row over the seeds.
#
#   scripts/demo-study.sh [--seeds 0,1,2] [--test N]
#
# Results in runs/demo-study (or $L2D_STUDY_DIR): seed-S/ per seed,
# table.md, and seed-S/accuracy.svg (the L2D curve with the baselines as
# lines). A stage whose result exists is not run again, so a killed study
# resumes, and two studies with other --seeds may share the directory once
# its task/ and data/ exist.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

usage() { echo "usage: scripts/demo-study.sh [--seeds 0,1,2] [--test N]" >&2; exit 2; }
seeds=0,1,2
test_items=1000
while [ $# -gt 0 ]; do
  case "$1" in
    --seeds) [ $# -ge 2 ] || usage; seeds="$2"; shift 2 ;;
    --test) [ $# -ge 2 ] || usage; test_items="$2"; shift 2 ;;
    *) usage ;;
  esac
done
[[ "$seeds" =~ ^[0-9]+(,[0-9]+)*$ ]] || { echo "--seeds $seeds: expected numbers like 0,1,2" >&2; exit 2; }
[[ "$test_items" =~ ^[1-9][0-9]*$ ]] || { echo "--test $test_items: expected a positive number" >&2; exit 2; }

scripts/setup.sh
cargo build --release --locked
l2d=target/release/l2d
out="${L2D_STUDY_DIR:-runs/demo-study}"
mkdir -p "$out"
# One intra-op thread, as in scripts/demo.sh: bit-reproducible on a given CPU.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
SECONDS=0
paths=(--set data.train="$out/task/train.jsonl" --set data.valid="$out/task/valid.jsonl" --set data.out="$out/data")
test_data=(--set eval.tasks.gsm8k.data="$out/task/test.jsonl")

# stage DIR COMMAND...: runs COMMAND, which writes DIR, unless DIR.done says
# it finished before (a half-written DIR from a killed run is started again).
stage() {
  local dir="$1"; shift
  if [ -e "$dir.done" ]; then echo "-- $dir: done before"; return; fi
  rm -rf "$dir"
  "$@"
  touch "$dir.done"
}

# The data and its shards do not depend on the model's seed (the tokenizer
# of `l2d init` does not), so every seed shares them.
stage "$out/task" $l2d init --task modsum --seed 0 --test "$test_items" --out "$out/task"
stage "$out/tokenizer-model" $l2d init --arch qwen2 --preset tiny --seed 0 --out "$out/tokenizer-model"
stage "$out/data" $l2d prepare --config configs/demo-full.toml "${paths[@]}" --model "$out/tokenizer-model" --out "$out/data"

IFS=, read -ra seed_list <<< "$seeds"
for s in "${seed_list[@]}"; do
  d="$out/seed-$s"
  seed=(--set train.seed="$s")
  echo "== seed $s: base LM, L2D path, weight LoRA, full finetuning"
  stage "$d/model" $l2d init --arch qwen2 --preset tiny --seed "$s" --out "$d/model"
  stage "$d/base" $l2d train --config configs/demo-full.toml "${paths[@]}" "${seed[@]}" --set model.path="$d/model" --out "$d/base"
  stage "$d/l2d" $l2d train --config configs/demo-l2d-lora.toml "${paths[@]}" "${seed[@]}" --set model.path="$d/base/model" --out "$d/l2d"
  stage "$d/lora" $l2d train --config configs/demo-lora.toml "${paths[@]}" "${seed[@]}" --set model.path="$d/base/model" --out "$d/lora"
  stage "$d/full" $l2d train --config configs/demo-full-ft.toml "${paths[@]}" "${seed[@]}" --set model.path="$d/base/model" --out "$d/full"
  echo "== seed $s: accuracy on the test split"
  stage "$d/eval" $l2d eval --config configs/demo-l2d-lora.toml --set model.path="$d/base/model" "${test_data[@]}" \
    --set 'eval.solvers=["midpoint"]' --l2d "$d/l2d/l2d" --out "$d/eval"
  stage "$d/eval-lora" $l2d eval --config configs/demo-lora.toml --set model.path="$d/lora/model" "${test_data[@]}" --out "$d/eval-lora"
  stage "$d/eval-full" $l2d eval --config configs/demo-full-ft.toml --set model.path="$d/full/model" "${test_data[@]}" --out "$d/eval-full"
  $l2d report plot "$d/eval/report.json" --baseline lora="$d/eval-lora/report.json" \
    --baseline full="$d/eval-full/report.json" --out "$d/accuracy.svg"
done

# Every seed directory with all three evaluations, not only this call's. Beside
# the accuracy (the last running total, after `####`), the share of the four
# running totals in the answers that are right: partial learning shows in it.
python3 - "$out" <<'EOF'
import collections, json, pathlib, sys

out = pathlib.Path(sys.argv[1])
rows = {}  # row name -> {seed: (accuracy, evaluations per token, items, running totals right)}
seeds = []


def totals_right(examples):
    """Per setting label: the share of running totals (d1 + ... + dk mod 10, k = 2..5) that
    the completions write right in their place."""
    right, n = collections.Counter(), collections.Counter()
    for line in examples.read_text().splitlines():
        e = json.loads(line)
        digits = [int(x) for x in e["prompt"].split(":")[1].split("+")]
        totals = [str(sum(digits[:k]) % 10) for k in range(2, len(digits) + 1)]
        words = e["completion"].split()
        n[e["setting"]] += len(totals)
        right[e["setting"]] += sum(w == t for w, t in zip(words, totals))
    return {label: right[label] / n[label] for label in n}


for d in sorted(out.glob("seed-*"), key=lambda p: int(p.name[5:])):
    reports = {name: d / name / "report.json" for name in ("eval", "eval-lora", "eval-full")}
    if not all(p.exists() for p in reports.values()):
        continue
    seed = int(d.name[5:])
    seeds.append(seed)
    for name, path in reports.items():
        partial = totals_right(path.parent / "examples.jsonl")
        for r in json.loads(path.read_text())["results"]:
            label = r["setting"]["label"]
            row = {"eval": "L2D " + label if label != "base" else "base LM",
                   "eval-lora": "weight LoRA", "eval-full": "full finetuning"}[name]
            acc = next(m["value"] for m in r["metrics"] if m["name"] == "accuracy")
            rows.setdefault(row, {})[seed] = (acc, r["setting"]["evals_per_token"], r["items"], partial[label])
order = ["base LM", "weight LoRA", "full finetuning"] + sorted(
    (k for k in rows if k.startswith("L2D ")), key=lambda k: rows[k][seeds[0]][1])
pct = lambda x: f"{100 * x:.1f}%"
lines = [f"Seeds {', '.join(map(str, seeds))}; test items per seed: "
         f"{sorted({v[2] for r in rows.values() for v in r.values()})}", "",
         "| row | evals/token | mean | min | max | " + " | ".join(f"seed {s}" for s in seeds)
         + " | running totals right, mean |",
         "|---|---:|---:|---:|---:|" + "---:|" * (len(seeds) + 1)]
for k in order:
    accs = [rows[k][s][0] for s in seeds]
    partials = [rows[k][s][3] for s in seeds]
    lines.append(f"| {k} | {rows[k][seeds[0]][1]:g} | {pct(sum(accs) / len(accs))} | {pct(min(accs))} | "
                 f"{pct(max(accs))} | " + " | ".join(pct(a) for a in accs)
                 + f" | {pct(sum(partials) / len(partials))} |")
table = "\n".join(lines) + "\n"
(out / "table.md").write_text(table)
print(table, end="")
EOF
echo "study finished in ${SECONDS}s; table in $out/table.md"

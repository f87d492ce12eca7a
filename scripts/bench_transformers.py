#!/usr/bin/env python3
"""The reference stack on the same shapes as benches/generate.rs: transformers,
eager attention, f32 CPU, 64-token prompts, 32 new tokens, median of 5.

    .venv/bin/python scripts/bench_transformers.py MODEL_DIR [THREADS]
"""
import statistics
import sys
import time

import torch
from transformers import AutoModelForCausalLM

torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 2)
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], torch_dtype=torch.float32,
                                             attn_implementation="eager").eval()
vocab = model.config.vocab_size
print(f"transformers eager | cpu, {torch.get_num_threads()} threads, f32 | prompt 64, new 32")
print(f"{'batch':>6} {'prefill tok/s':>18} {'decode tok/s':>18}")
for batch in (1, 8):
    torch.manual_seed(0)
    ids = torch.randint(3, vocab, (batch, 64))
    kw = dict(max_new_tokens=32, min_new_tokens=32, do_sample=False, eos_token_id=None, pad_token_id=0)
    with torch.no_grad():
        model.generate(ids, **kw)
        prefill, decode = [], []
        for _ in range(5):
            t0 = time.perf_counter(); model(ids); t1 = time.perf_counter()
            model.generate(ids, **kw); t2 = time.perf_counter()
            p = t1 - t0
            prefill.append(batch * 64 / p)
            decode.append(batch * 31 / max(t2 - t1 - p, 1e-9))
    print(f"{batch:>6} {statistics.median(prefill):>18.1f} {statistics.median(decode):>18.1f}")

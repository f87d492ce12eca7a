#!/usr/bin/env python3
"""Builds tiny random Llama (llama3 rope scaling, untied) and Qwen2 (q/k/v
biases, tied) checkpoints with Hugging Face transformers and records what
transformers computes for them, so l2d's tests compare against a library we
did not write.

    .venv/bin/python scripts/make_parity_fixtures.py tests/fixtures/parity

Each model directory gets `expected.safetensors` with:
  input_ids [2, 12]      two unpadded sequences
  logits    [2, 12, V]   float32 logits of the full forward
  prompt_a / prompt_b    two prompts of different lengths
  greedy_a / greedy_b    transformers' greedy continuations (16 tokens, no eos)
"""
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

COMMON = dict(
    hidden_size=64,
    intermediate_size=160,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=320,
    max_position_embeddings=512,
    initializer_range=0.08,
    bos_token_id=0,
    eos_token_id=1,
)


def llama():
    cfg = LlamaConfig(
        **COMMON,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        # A short original context puts the tiny model's wavelengths in all
        # three bands of the llama3 scaling (kept, smoothed, divided).
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                          high_freq_factor=4.0, original_max_position_embeddings=64),
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(cfg)


def qwen2():
    cfg = Qwen2Config(**COMMON, rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True)
    model = Qwen2ForCausalLM(cfg)
    # transformers zero-initialises biases; random ones make the test see them.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.1)
    return model


def greedy(model, prompt, n=16):
    out = model.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                         eos_token_id=None, pad_token_id=0)
    return out[:, prompt.shape[1]:].contiguous()


def main(root: Path):
    for name, build in [("llama", llama), ("qwen2", qwen2)]:
        torch.manual_seed(0)
        model = build().eval()
        for module in model.modules():  # make norms non-trivial too
            if type(module).__name__.endswith("RMSNorm"):
                with torch.no_grad():
                    module.weight.uniform_(0.5, 1.5)
        out = root / name
        model.save_pretrained(out, safe_serialization=True)
        g = torch.Generator().manual_seed(1)
        input_ids = torch.randint(2, COMMON["vocab_size"], (2, 12), generator=g)
        prompt_a = torch.randint(2, COMMON["vocab_size"], (1, 9), generator=g)
        prompt_b = torch.randint(2, COMMON["vocab_size"], (1, 4), generator=g)
        with torch.no_grad():
            logits = model(input_ids).logits.float()
        save_file({
            "input_ids": input_ids, "logits": logits.contiguous(),
            "prompt_a": prompt_a, "prompt_b": prompt_b,
            "greedy_a": greedy(model, prompt_a), "greedy_b": greedy(model, prompt_b),
        }, str(out / "expected.safetensors"))
        print(f"{out}: logits {tuple(logits.shape)}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/parity"))

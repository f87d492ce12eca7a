#!/usr/bin/env python3
"""What transformers makes of a model directory, as JSON, for l2d's tests:
float32 logits for the given token ids, and the token ids of a chat prompt
rendered by the tokenizer's own chat template.

    python scripts/hf_check_dir.py MODEL_DIR '[[1, 2, 3]]' '[{"role": "user", "content": "Hi"}]'
"""
import json
import sys
import warnings

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

warnings.simplefilter("error")  # a missing or unexpected weight must fail the test
model_dir, ids, messages = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
model, info = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32,
                                                   output_loading_info=True)
bad = {k: v for k, v in info.items() if v}
if bad:
    sys.exit(f"loading info not clean: {bad}")
tok = AutoTokenizer.from_pretrained(model_dir)
with torch.no_grad():
    logits = model.eval()(torch.tensor(ids)).logits.float()
json.dump({
    "logits": logits.tolist(),
    # l2d fixes Llama 3's date line to the reference's 26 Jul 2024.
    "chat_ids": tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                        date_string="26 Jul 2024"),
    "plain_ids": tok("Tom has 3 apples.")["input_ids"],
}, sys.stdout)

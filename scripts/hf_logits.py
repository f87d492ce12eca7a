#!/usr/bin/env python3
"""Prints transformers' float32 logits for token ids, as JSON, for l2d's tests.

    python scripts/hf_logits.py MODEL_DIR '[[1, 2, 3]]'
"""
import json
import sys

import torch
from transformers import AutoModelForCausalLM

model = AutoModelForCausalLM.from_pretrained(sys.argv[1], torch_dtype=torch.float32).eval()
ids = torch.tensor(json.loads(sys.argv[2]))
with torch.no_grad():
    logits = model(ids).logits.float()
json.dump({"logits": logits.tolist()}, sys.stdout)

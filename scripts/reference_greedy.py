"""Greedy completions by transformers with the attention the reference's decoder gives a prompt
(SakanaAI/L2D `pipeline/decoding_util.py:172-186`, as ../shared/REFERENCE-EVAL-PROTOCOL.md §1.4
quotes it): `attention_mask = input_ids != pad_token_id`, the pad token being the eos token when the
tokenizer has none (`pipeline/util.py:179-180`), and positions 0..len-1 over the whole prompt. For
Llama 3 Instruct that keeps every `<|eot_id|>` of the prompt out of attention. What
`tests/eval_paper.rs` compares `l2d eval`'s paper-protocol completions with.

    python scripts/reference_greedy.py MODEL_DIR PROMPTS.json MAX_NEW_TOKENS

PROMPTS is a JSON list of token id lists. Prints a JSON list with, per prompt,
{"masked": TEXT, "attended": TEXT}: the completion decoded without special tokens, generation
stopped at the eos token, with the reference's mask and with every prompt token attended.
"""
import json
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def greedy(model, ids, max_new, eos, hidden):
    """Argmax decoding of `ids`; prompt tokens whose id is `hidden` are out of attention."""
    prompt = torch.tensor([ids])
    mask = prompt != hidden if hidden is not None else torch.ones_like(prompt, dtype=torch.bool)
    out = []
    for _ in range(max_new):
        x = torch.cat([prompt, torch.tensor([out], dtype=torch.long)], dim=1)
        m = torch.cat([mask, torch.ones(1, len(out), dtype=torch.bool)], dim=1).long()
        with torch.no_grad():
            logits = model(input_ids=x, attention_mask=m, position_ids=torch.arange(x.shape[1]).unsqueeze(0)).logits
        token = int(logits[0, -1].argmax())
        if token == eos:
            break
        out.append(token)
    return out


def main():
    model_dir, prompts_path, max_new = sys.argv[1], sys.argv[2], int(sys.argv[3])
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    rows = []
    for ids in json.load(open(prompts_path)):
        texts = {}
        for name, hidden in (("masked", pad), ("attended", None)):
            texts[name] = tok.decode(greedy(model, ids, max_new, tok.eos_token_id, hidden), skip_special_tokens=True)
        rows.append(texts)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Independent reference for the refusal lab's difference-in-means direction.

HF transformers loads the same GGUF (dequantized to float32), renders each prompt with
the model's own chat template (one user turn, generation prompt, no system prompt),
runs each prompt unbatched with output_hidden_states (hidden_states[l] is the residual
stream at the input of layer l), and takes mean(harmful) - mean(harmless) at one
(layer, post-instruction position). The result and the prompts go to a small JSON
fixture that crates/lab/tests/refusal_reference.rs compares against (cosine >= 0.99).

    .venv/bin/python scripts/reference/refusal_direction.py \
        --model models/SmolLM2-135M-Instruct.Q4_1.gguf --layer 15 --position -1 --n 8 \
        --out crates/lab/tests/fixtures/refusal_direction_smollm2.json
"""
import argparse
import json
import os

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", default="../shared/data/refusal")
    ap.add_argument("--layer", type=int, required=True)
    ap.add_argument("--position", type=int, default=-1, help="negative offset from the prompt end")
    ap.add_argument("--n", type=int, default=8, help="prompts per class (the first n of each train split)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    d, f = os.path.split(os.path.abspath(a.model))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32)
    model.eval()
    torch.set_grad_enabled(False)

    def load(name):
        with open(os.path.join(a.data, name)) as fh:
            return [x["instruction"] for x in json.load(fh)][: a.n]

    harmful = load("harmful_train.json")
    harmless = load("harmless_train.json")

    def resid(prompt):
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
        out = model(ids, output_hidden_states=True)
        return out.hidden_states[a.layer][0, a.position].double()

    mh = torch.stack([resid(p) for p in harmful]).mean(0)
    ml = torch.stack([resid(p) for p in harmless]).mean(0)
    r = (mh - ml).float()
    sentinel = "OVERSEER_SENTINEL"
    rendered = tok.apply_chat_template([{"role": "user", "content": sentinel}], tokenize=False, add_generation_prompt=True)
    fixture = {
        "model": f,
        "layer": a.layer,
        "position": a.position,
        "post_instruction": rendered[rendered.rfind(sentinel) + len(sentinel):],
        "harmful": harmful,
        "harmless": harmless,
        "hidden": r.numel(),
        "direction": [round(float(x), 6) for x in r],
        "norm": float(r.norm()),
        "made_by": "scripts/reference/refusal_direction.py (transformers %s, torch %s)"
        % (__import__("transformers").__version__, torch.__version__),
    }
    with open(a.out, "w") as fh:
        json.dump(fixture, fh, indent=1)
    print("wrote", a.out, "norm", fixture["norm"])


if __name__ == "__main__":
    main()

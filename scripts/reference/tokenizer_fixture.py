"""Make crates/lm/tests/fixtures/tokenizer-<model>.json: token ids of ~270 varied strings
(tokenizer_cases.py) from two independent implementations loading the same GGUF:

* HF transformers (`AutoTokenizer.from_pretrained(dir, gguf_file=...)`, a `tokenizers`
  fast tokenizer converted from the GGUF metadata), `encode(text, add_special_tokens=False)`
  and `decode(ids)`;
* llama.cpp (llama-cpp-python, `Llama(vocab_only=True).tokenize(text, add_bos=False,
  special=True)`), the implementation that defines the `tokenizer.ggml.pre` names.

The Rust test (crates/lm/tests/tokenizer.rs) requires encode == llama.cpp for every
string, encode == HF wherever the two references agree, and lists where they disagree
(`disagree` below, with the reason printed by this script).

Rerun (from the repository root, after scripts/fetch-models and
`scripts/setup-python reference`):

    .venv/bin/python scripts/reference/tokenizer_fixture.py

Versions used for the committed fixtures: Python 3.11, transformers 5.23.0,
tokenizers 0.23.3, gguf 0.19.0, llama-cpp-python 0.3.36 (llama.cpp built with
GGML_NATIVE=ON); the versions actually used are written into each fixture.
"""

import json
import os
import sys
from importlib.metadata import version

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.dirname(__file__))
from tokenizer_cases import cases  # noqa: E402

MODELS = {
    "smollm2": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "qwen2.5": "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
}


def dump_rows(obj, rows_key):
    """JSON with one row of `rows_key` per line: small diffs, still readable."""
    head = {k: v for k, v in obj.items() if k != rows_key}
    body = json.dumps(head, ensure_ascii=False, indent=1)[:-2]
    rows = ",\n".join("  " + json.dumps(r, ensure_ascii=False) for r in obj[rows_key])
    return f'{body},\n "{rows_key}": [\n{rows}\n ]\n}}\n'


def main():
    import llama_cpp
    from transformers import AutoTokenizer

    texts = cases()
    models_dir = os.path.join(ROOT, "models")
    out_dir = os.path.join(ROOT, "crates", "lm", "tests", "fixtures")
    os.makedirs(out_dir, exist_ok=True)
    for key, fname in MODELS.items():
        path = os.path.join(models_dir, fname)
        hf = AutoTokenizer.from_pretrained(models_dir, gguf_file=fname)
        ll = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
        rows, n_dis = [], 0
        for text in texts:
            hf_ids = hf.encode(text, add_special_tokens=False)
            ll_ids = ll.tokenize(text.encode("utf-8"), add_bos=False, special=True)
            row = {"text": text, "hf": hf_ids}
            if ll_ids != hf_ids:
                row["llama_cpp"] = ll_ids
                n_dis += 1
                print(f"[{key}] disagree on {text!r}:\n  hf   {hf_ids}\n  llama {ll_ids}")
            dec = hf.decode(hf_ids)
            if dec != text:
                row["hf_decode"] = dec
            rows.append(row)
        fixture = {
            "model": fname,
            "made_by": "scripts/reference/tokenizer_fixture.py",
            "versions": {p: version(p) for p in ["transformers", "tokenizers", "gguf", "llama_cpp_python"]},
            "note": "hf: HF transformers ids; llama_cpp: present only where llama.cpp differs; "
            "hf_decode: present only where HF decode(hf) != text",
            "disagreements": n_dis,
            "cases": rows,
        }
        out = os.path.join(out_dir, f"tokenizer-{key}.json")
        with open(out, "w", encoding="utf-8") as f:
            f.write(dump_rows(fixture, "cases"))
        print(f"{out}: {len(rows)} strings, {n_dis} HF/llama.cpp disagreements")


if __name__ == "__main__":
    main()

"""Make crates/lm/tests/fixtures/logits-<model>.json: greedy continuations and logits of
5 fixed chat prompts from two independent implementations on the same GGUF:

* llama.cpp (llama-cpp-python, built with GGML_NATIVE=ON; n_threads=2, n_batch=512):
  the prompt ids (its own tokenization, special tokens parsed), the first 32 greedily
  generated ids (argmax; end-of-generation tokens are not treated specially, all 32 are
  generated), the top-2 logits (id, value) at each generated step, and at the final prompt
  position the top-50 logits plus summary numbers of the whole vector.
* HF transformers loading the GGUF (dequantized to float32, torch on CPU): the
  final-prompt-position top-50 logits and the same summary numbers, and its own 32
  greedy ids (argmax, end tokens not special) — an exact-arithmetic implementation, to
  show how often two correct implementations' greedy paths agree on these prompts.

Afterwards scripts/reference/llama_cpp_self_check.py adds llama.cpp against itself (the
prompt fed one token at a time) to the same files: how much its own top-2 gaps move, and
on how many prompts its greedy path equals the batched one.

Prompts go through the model's own chat template (HF `apply_chat_template`, which
tests/tokenizer.rs shows our renderer reproduces).

Rerun (from the repository root, after scripts/fetch-models and
`scripts/setup-python reference`; a couple of minutes on 2 cores):

    .venv/bin/python scripts/reference/logits_fixture.py

Versions used for the committed fixtures: Python 3.11, llama-cpp-python 0.3.36,
torch 2.15.0 (CPU), transformers 5.23.0, gguf 0.19.0, numpy 2.2.6; the versions actually
used are written into each fixture.
"""

import json
import os
from importlib.metadata import version

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MODELS = {
    "smollm2": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "qwen2.5": "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
}
PROMPTS = [
    [{"role": "user", "content": "Write a short story about a robot who learns to paint."}],
    [{"role": "user", "content": "Explain how a hash map works, step by step."}],
    [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "List five facts about the Moon."},
    ],
    [{"role": "user", "content": "Write a Python function that checks whether a number is prime, and explain it."}],
    [{"role": "user", "content": "What were the main causes of the French Revolution?"}],
]
N_GEN = 32
TOP = 50


def r4(x):
    return round(float(x), 4)


def write_fixture(out, fixture):
    """Compact JSON, one trailing newline; prints the size."""
    with open(out, "w", encoding="utf-8") as f:
        json.dump(fixture, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(f"{out}: {os.path.getsize(out)} bytes")


def summary(v):
    v = np.asarray(v, dtype=np.float64)
    m = v.max()
    return {
        "argmax": int(v.argmax()),
        "max": r4(m),
        "mean": r4(v.mean()),
        "std": r4(v.std()),
        "logsumexp": r4(m + np.log(np.exp(v - m).sum())),
    }


def top(v, k):
    idx = np.argsort(-np.asarray(v), kind="stable")[:k]
    return [int(i) for i in idx], [r4(v[i]) for i in idx]


def llama_cpp_run(path, prompt_ids):
    import llama_cpp

    ll = llama_cpp.Llama(
        model_path=path, n_ctx=512, n_batch=512, n_threads=2, n_threads_batch=2, seed=0, verbose=False
    )
    n_vocab = ll.n_vocab()

    def last_logits():
        # eval() keeps no scores without logits_all; read the context's last output row.
        ptr = llama_cpp.llama_get_logits_ith(ll._ctx.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(n_vocab,)).astype(np.float32)

    ll.reset()
    ll.eval(prompt_ids)
    final = last_logits()
    logits = final
    gen, steps = [], []
    for _ in range(N_GEN):
        ids, vals = top(logits, 2)
        steps.append([ids[0], vals[0], ids[1], vals[1]])
        gen.append(ids[0])
        ll.eval([ids[0]])
        logits = last_logits()
    del ll
    return final, gen, steps


def main():
    import llama_cpp
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    models_dir = os.path.join(ROOT, "models")
    out_dir = os.path.join(ROOT, "crates", "lm", "tests", "fixtures")
    for key, fname in MODELS.items():
        path = os.path.join(models_dir, fname)
        tok = AutoTokenizer.from_pretrained(models_dir, gguf_file=fname)
        vocab = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
        hf = AutoModelForCausalLM.from_pretrained(models_dir, gguf_file=fname, dtype=torch.float32)
        hf.eval()
        rows = []
        for messages in PROMPTS:
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            prompt_ids = vocab.tokenize(text.encode("utf-8"), add_bos=False, special=True)
            final, gen, steps = llama_cpp_run(path, prompt_ids)
            with torch.no_grad():
                hf_final = hf(torch.tensor([prompt_ids])).logits[0, -1].float().numpy()
                seq = list(prompt_ids)
                hf_gen = []
                for _ in range(N_GEN):
                    nxt = int(hf(torch.tensor([seq])).logits[0, -1].float().numpy().argmax())
                    hf_gen.append(nxt)
                    seq.append(nxt)
            ll_ids, ll_vals = top(final, TOP)
            hf_ids, hf_vals = top(hf_final, TOP)
            diff = float(np.abs(final[ll_ids] - hf_final[ll_ids]).max())
            rows.append(
                {
                    "messages": messages,
                    "prompt": text,
                    "prompt_ids": prompt_ids,
                    "llama_cpp": {
                        "generated": gen,
                        "text": vocab.detokenize(gen, special=True).decode("utf-8", "replace"),
                        "steps_top2": steps,
                        "final_top_ids": ll_ids,
                        "final_top_values": ll_vals,
                        "final_summary": summary(final),
                    },
                    "hf": {
                        "generated": hf_gen,
                        "final_top_ids": hf_ids,
                        "final_top_values": hf_vals,
                        "final_summary": summary(hf_final),
                    },
                    "llama_cpp_vs_hf_max_abs_diff_top50": r4(diff),
                }
            )
            gaps = [s[1] - s[3] for s in steps]
            same = next((i for i, (a, b) in enumerate(zip(gen, hf_gen)) if a != b), None)
            print(f"[{key}] hf greedy vs llama.cpp: {'all 32 equal' if same is None else f'diverge at step {same}'}")
            print(
                f"[{key}] {len(prompt_ids)} prompt tokens; argmax ll={ll_ids[0]} hf={hf_ids[0]}; "
                f"|ll-hf| over ll top-50 <= {diff:.4f}; min top-2 gap in generation {min(gaps):.4f}; "
                f"text {rows[-1]['llama_cpp']['text']!r}"
            )
        fixture = {
            "model": fname,
            "made_by": "scripts/reference/logits_fixture.py",
            "versions": {
                p: version(p) for p in ["llama_cpp_python", "torch", "transformers", "gguf", "numpy"]
            },
            "settings": {"n_threads": 2, "n_batch": 512, "n_gen": N_GEN, "top": TOP, "greedy": "argmax"},
            "prompts": rows,
        }
        write_fixture(os.path.join(out_dir, f"logits-{key}.json"), fixture)


if __name__ == "__main__":
    main()

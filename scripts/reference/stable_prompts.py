"""Make crates/lm/tests/fixtures/stable-<model>.json: a second set of 5 chat prompts for
the greedy-continuation check, chosen by the references alone.

Why a second set. The 5 fixed prompts of logits_fixture.py were picked before anyone
looked at numerics, and on SmolLM2 their greedy paths run through near-ties: llama.cpp
fed the same prompts one token at a time leaves its own batched path on 3 of the 5, and
HF's exact f32 computation leaves it on 3. On such prompts "equal to llama.cpp for 32
tokens" measures rounding luck, not the forward pass. This script picks prompts on which
the greedy path is decided by the model, by a rule that never looks at overseer's output:

* CANDIDATES below is a fixed list, in a fixed order, written before any run (the first
  five are logits_fixture.py's prompts).
* For each model and candidate, three reference paths of 32 greedy tokens (argmax, end
  tokens not special, as in logits_fixture.py): llama.cpp batched (n_batch=512), llama.cpp
  with the prompt fed one token at a time (n_batch=1: other kernels, other summation
  order), and HF transformers in f32 on the dequantized GGUF (with its KV cache).
* A candidate is *stable* on a model when the three paths are identical. The selected set
  is the first 5 candidates (list order) stable on both default models.

The fixture keeps every candidate's three paths and stability (so the selection can be
re-checked), and for the selected prompts what the test needs: prompt ids and llama.cpp's
batched generated ids with its top-2 logits per step.

Rerun (from the repository root, after scripts/fetch-models and
`scripts/setup-python reference`; a few minutes on 2 cores):

    .venv/bin/python scripts/reference/stable_prompts.py
"""

import json
import os
from importlib.metadata import version

import numpy as np

from logits_fixture import MODELS, PROMPTS, r4, write_fixture

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CANDIDATES = [
    *PROMPTS,  # logits_fixture.py's five, first
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Translate 'good morning' into Spanish, French and German."}],
    [{"role": "user", "content": "Write a haiku about the ocean."}],
    [{"role": "user", "content": "What is 17 multiplied by 23? Show your work."}],
    [{"role": "user", "content": "Give me three tips for a good night's sleep."}],
    [{"role": "user", "content": "Write a SQL query that returns the ten most recent orders from a table named orders."}],
    [{"role": "user", "content": "What is photosynthesis?"}],
    [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "How do I reverse a list in Python?"},
    ],
    [{"role": "user", "content": "Name the planets of the solar system in order from the Sun."}],
    [{"role": "user", "content": "Explain the difference between TCP and UDP."}],
    [{"role": "user", "content": "Write a limerick about a cat who loves cheese."}],
    [{"role": "user", "content": "What does the acronym CPU stand for, and what does a CPU do?"}],
    [{"role": "user", "content": "Summarize the plot of Romeo and Juliet in two sentences."}],
    [{"role": "user", "content": "Write a JavaScript function that adds two numbers."}],
    [{"role": "user", "content": "Why is the sky blue?"}],
    [{"role": "user", "content": "Describe a cup of coffee to someone who has never tasted one."}],
    [{"role": "user", "content": "How many days are there in a leap year?"}],
    [{"role": "user", "content": "Write a bash command that counts the lines in every .txt file in a folder."}],
    [{"role": "user", "content": "What is the boiling point of water at sea level in Celsius and Fahrenheit?"}],
    # Appended after a first run found only 4 of the 24 above stable on both models.
    [{"role": "user", "content": "Write a Python class for a bank account with deposit and withdraw methods."}],
    [{"role": "user", "content": "What is the largest ocean on Earth?"}],
    [{"role": "user", "content": "Explain what a binary search tree is."}],
    [{"role": "user", "content": "Write a C function that returns the length of a string."}],
    [{"role": "user", "content": "List the primary colors."}],
    [{"role": "user", "content": "How does a refrigerator keep food cold?"}],
    [{"role": "user", "content": "Write a regular expression that matches an email address."}],
    [{"role": "user", "content": "What is the Pythagorean theorem?"}],
    [{"role": "user", "content": "Give an example of a for loop in Rust."}],
    [{"role": "user", "content": "What are the three states of matter?"}],
    [{"role": "user", "content": "Write a recipe for pancakes."}],
    [{"role": "user", "content": "Explain recursion to a beginner programmer."}],
]
N_GEN = 32
# One thread: ggml gives each output element to one thread, so llama.cpp's results do not
# depend on the thread count (checked below: the first five candidates' batched paths must
# equal logits-<model>.json's, made with 2 threads), and one thread does not collapse when
# the machine is busy (two spinning ggml threads on a loaded 2-core machine did).
THREADS = 1
N_SELECT = 5


def llama_cpp_path(ll, prompt_ids, with_top2):
    import llama_cpp

    n_vocab = ll.n_vocab()

    def last_logits():
        ptr = llama_cpp.llama_get_logits_ith(ll._ctx.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(n_vocab,)).astype(np.float32).copy()

    ll.reset()
    ll.eval(prompt_ids)
    gen, steps = [], []
    for _ in range(N_GEN):
        logits = last_logits()
        order = np.argsort(-logits, kind="stable")[:2]
        t1, t2 = int(order[0]), int(order[1])
        if with_top2:
            steps.append([t1, r4(logits[t1]), t2, r4(logits[t2])])
        gen.append(t1)
        ll.eval([t1])
    return gen, steps


def main():
    import llama_cpp
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(THREADS)
    models_dir = os.path.join(ROOT, "models")
    runs = {}
    for key, fname in MODELS.items():
        path = os.path.join(models_dir, fname)
        tok = AutoTokenizer.from_pretrained(models_dir, gguf_file=fname)
        vocab = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
        common = dict(model_path=path, n_ctx=512, n_threads=THREADS, n_threads_batch=THREADS, seed=0, verbose=False)
        batched = llama_cpp.Llama(n_batch=512, **common)
        one_by_one = llama_cpp.Llama(n_batch=1, n_ubatch=1, **common)
        hf = AutoModelForCausalLM.from_pretrained(models_dir, gguf_file=fname, dtype=torch.float32)
        hf.eval()
        with open(os.path.join(ROOT, "crates", "lm", "tests", "fixtures", f"logits-{key}.json"), encoding="utf-8") as f:
            logits_fx = json.load(f)
        rows = []
        for i, messages in enumerate(CANDIDATES):
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            prompt_ids = vocab.tokenize(text.encode("utf-8"), add_bos=False, special=True)
            gen, steps = llama_cpp_path(batched, prompt_ids, True)
            gen1, _ = llama_cpp_path(one_by_one, prompt_ids, False)
            with torch.no_grad():
                # Greedy with HF's KV cache (f32 throughout; argmax, end tokens not special).
                out = hf(torch.tensor([prompt_ids]), use_cache=True)
                hf_gen = []
                for _ in range(N_GEN):
                    nxt = int(out.logits[0, -1].float().numpy().argmax())
                    hf_gen.append(nxt)
                    out = hf(torch.tensor([[nxt]]), past_key_values=out.past_key_values, use_cache=True)
            stable = gen == gen1 == hf_gen
            if i < len(logits_fx["prompts"]):
                same = logits_fx["prompts"][i]
                assert same["messages"] == messages and same["prompt_ids"] == prompt_ids
                assert same["llama_cpp"]["generated"] == gen, f"{key} candidate {i}: llama.cpp path differs from logits-{key}.json"
            rows.append(
                {
                    "messages": messages,
                    "prompt_ids": prompt_ids,
                    "llama_cpp": {"generated": gen, "steps_top2": steps},
                    "llama_cpp_token_by_token": gen1,
                    "hf": hf_gen,
                    "stable": stable,
                    "min_top2_gap": r4(min(s[1] - s[3] for s in steps)),
                }
            )
            print(
                f"[{key}] candidate {i}: {'stable' if stable else 'unstable'}; min top-2 gap "
                f"{rows[-1]['min_top2_gap']:.4f}; text {vocab.detokenize(gen, special=True).decode('utf-8', 'replace')!r}",
                flush=True,
            )
        runs[key] = (fname, rows)
        del batched, one_by_one, hf

    selected = [i for i in range(len(CANDIDATES)) if all(rows[i]["stable"] for _, rows in runs.values())]
    print(f"stable on both models: {selected}")
    selected = selected[:N_SELECT]
    out_dir = os.path.join(ROOT, "crates", "lm", "tests", "fixtures")
    for key, (fname, rows) in runs.items():
        fixture = {
            "model": fname,
            "made_by": "scripts/reference/stable_prompts.py",
            "versions": {p: version(p) for p in ["llama_cpp_python", "torch", "transformers", "gguf", "numpy"]},
            "settings": {"n_threads": THREADS, "n_batch": [512, 1], "n_gen": N_GEN, "greedy": "argmax"},
            "rule": "first 5 candidates (in order) on which llama.cpp batched, llama.cpp token by token "
            "and HF f32 give the same 32 greedy tokens, on both default models",
            "selected": selected,
            "candidates": rows,
        }
        write_fixture(os.path.join(out_dir, f"stable-{key}.json"), fixture)


if __name__ == "__main__":
    main()

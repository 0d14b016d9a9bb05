"""Measure how far llama.cpp agrees with *itself*, and add it to the logits fixtures.

The greedy-continuation test (crates/lm/tests/reference.rs) compares our 32 greedy
tokens with llama.cpp's. Where two implementations with 8-bit activations diverge, the
question is whether llama.cpp's own choice there is decided by the model or by rounding.
This script answers it from llama.cpp alone: it runs the same library, model, threads and
prompts a second time with the prompt fed one token at a time (n_batch=1, so the
prompt's matrix products take the one-row kernels instead of the batched ones: the same
arithmetic, summed in another order) and records, per prompt of
crates/lm/tests/fixtures/logits-<model>.json:

* `generated`: its own 32 greedy ids (argmax; end tokens not special), to count on how
  many prompts llama.cpp's path equals its own batched path;
* `gap_change`: along the batched run's greedy path (teacher-forced), how much the gap
  between the batched run's top-2 tokens changes between the two configurations, at each
  of the 32 steps — the size of llama.cpp's own numerical noise on exactly the quantity
  that decides a greedy step;
* `final_max_abs_diff_top50`: the final prompt position's logits, max |difference| over
  the batched run's top-50.

and at the top level `llama_cpp_self`: {"config", "exact" (prompts whose 32 tokens equal
the batched path), "gap_noise" (largest `gap_change`)}.

The batched run's data in the fixture (made by logits_fixture.py, same llama.cpp build)
is read, not recomputed. Rerun after logits_fixture.py (seconds for SmolLM2, about a
minute for Qwen on 2 cores):

    .venv/bin/python scripts/reference/llama_cpp_self_check.py
"""

import json
import os

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MODELS = {
    "smollm2": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "qwen2.5": "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
}
CONFIG = {"n_threads": 2, "n_batch": 1, "n_ubatch": 1}


def main():
    import llama_cpp

    for key, fname in MODELS.items():
        fixture_path = os.path.join(ROOT, "crates", "lm", "tests", "fixtures", f"logits-{key}.json")
        with open(fixture_path, encoding="utf-8") as f:
            fx = json.load(f)
        ll = llama_cpp.Llama(
            model_path=os.path.join(ROOT, "models", fname),
            n_ctx=512,
            n_batch=CONFIG["n_batch"],
            n_ubatch=CONFIG["n_ubatch"],
            n_threads=CONFIG["n_threads"],
            n_threads_batch=CONFIG["n_threads"],
            seed=0,
            verbose=False,
        )
        n_vocab = ll.n_vocab()

        def last_logits():
            ptr = llama_cpp.llama_get_logits_ith(ll._ctx.ctx, -1)
            return np.ctypeslib.as_array(ptr, shape=(n_vocab,)).astype(np.float32).copy()

        exact = 0
        noise = 0.0
        for i, p in enumerate(fx["prompts"]):
            base = p["llama_cpp"]
            # Teacher-forced along the batched run's greedy path.
            ll.reset()
            ll.eval(p["prompt_ids"])
            logits = last_logits()
            final = max(abs(float(logits[t]) - v) for t, v in zip(base["final_top_ids"], base["final_top_values"]))
            gap_change = []
            for k, (t1, v1, t2, v2) in enumerate(base["steps_top2"]):
                gap_change.append(round(abs((v1 - v2) - float(logits[t1] - logits[t2])), 4))
                ll.eval([base["generated"][k]])
                logits = last_logits()
            # Free-running greedy path of this configuration.
            ll.reset()
            ll.eval(p["prompt_ids"])
            gen = []
            for _ in range(len(base["generated"])):
                t = int(last_logits().argmax())
                gen.append(t)
                ll.eval([t])
            diverge = next((k for k, (a, b) in enumerate(zip(gen, base["generated"])) if a != b), None)
            exact += diverge is None
            noise = max(noise, max(gap_change))
            p["llama_cpp_token_by_token"] = {
                "generated": gen,
                "gap_change": gap_change,
                "final_max_abs_diff_top50": round(final, 4),
            }
            print(
                f"[{key}] prompt {i}: token-by-token path {'equals the batched one' if diverge is None else f'leaves it at step {diverge}'}; "
                f"gap change max {max(gap_change):.4f}; final logits differ by {final:.4f}"
            )
        fx["llama_cpp_self"] = {"config": CONFIG, "exact": exact, "gap_noise": round(noise, 4)}
        fx["made_by"] = "scripts/reference/logits_fixture.py + scripts/reference/llama_cpp_self_check.py"
        with open(fixture_path, "w", encoding="utf-8") as f:
            json.dump(fx, f, ensure_ascii=False, separators=(",", ":"))
            f.write("\n")
        print(f"[{key}] llama.cpp equals itself on {exact} of {len(fx['prompts'])} prompts; gap noise {noise:.4f}")
        del ll


if __name__ == "__main__":
    main()

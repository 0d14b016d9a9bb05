"""Make crates/lm/tests/fixtures/chat-template-<model>.json: the GGUF's own chat template
rendered by HF transformers (`AutoTokenizer.from_pretrained(dir, gguf_file=...)` then
`apply_chat_template(messages, tokenize=False, add_generation_prompt=...)`) for a few
conversations, plus the post-instruction text (what follows the user's message when the
generation prompt is added), found the same way the Rust side documents it.

Rerun (from the repository root, after scripts/fetch-models and
`scripts/setup-python reference`):

    .venv/bin/python scripts/reference/template_fixture.py

Versions used for the committed fixtures: Python 3.11, transformers 5.23.0 (jinja2 as
installed with it), gguf 0.19.0; the versions actually used are written into each fixture.
"""

import json
import os
from importlib.metadata import version

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MODELS = {
    "smollm2": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "qwen2.5": "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
}
SENTINEL = "OVERSEER_USER_MESSAGE_SENTINEL_7f3a"


def conversations():
    u, a, s = "user", "assistant", "system"
    m = lambda role, content: {"role": role, "content": content}  # noqa: E731
    return [
        ([m(u, "Hello!")], True),
        ([m(u, "Hello!")], False),
        ([m(s, "You are terse."), m(u, "What is 2+2?")], True),
        ([m(s, "You are terse."), m(u, "What is 2+2?"), m(a, "4"), m(u, "And 3+3?")], True),
        ([m(u, "Write a haiku."), m(a, "Autumn moonlight—\na worm digs silently\ninto the chestnut.")], False),
        ([m(u, "  leading and trailing spaces  \n\n")], True),
        ([m(u, "Unicode: 你好, مرحبا, 😀👍🏽, e\u0301")], True),
        ([m(s, ""), m(u, "")], True),
        ([m(u, "a"), m(a, "b"), m(u, "c"), m(a, "d")], False),
        ([m(u, "Explain {{ jinja }} and {% raw %} and <|im_end|> literally.")], True),
    ]


def main():
    from transformers import AutoTokenizer

    models_dir = os.path.join(ROOT, "models")
    out_dir = os.path.join(ROOT, "crates", "lm", "tests", "fixtures")
    for key, fname in MODELS.items():
        tok = AutoTokenizer.from_pretrained(models_dir, gguf_file=fname)
        cases = []
        for messages, gen in conversations():
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
            cases.append({"messages": messages, "add_generation_prompt": gen, "text": text})
        probe = tok.apply_chat_template([{"role": "user", "content": SENTINEL}], tokenize=False, add_generation_prompt=True)
        fixture = {
            "model": fname,
            "made_by": "scripts/reference/template_fixture.py",
            "versions": {p: version(p) for p in ["transformers", "jinja2", "gguf"]},
            "template": tok.chat_template,
            "post_instruction": probe[probe.rindex(SENTINEL) + len(SENTINEL):],
            "cases": cases,
        }
        out = os.path.join(out_dir, f"chat-template-{key}.json")
        with open(out, "w", encoding="utf-8") as f:
            json.dump(fixture, f, ensure_ascii=False, indent=1)
            f.write("\n")
        print(f"{out}: {len(cases)} conversations; post_instruction={fixture['post_instruction']!r}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Reference embeddings for the MiniLm embedder test (crates/index/tests/embed.rs).

Embeds ~40 varied texts with sentence-transformers on the same model folder the Rust
code loads (models/all-minilm-l6-v2) and writes
crates/index/tests/fixtures/embed_minilm.json:

    {"model": ..., "max_seq_length": 256,
     "items": [{"text": ..., "tokens": <wordpieces without [CLS]/[SEP], untruncated>,
                "embedding": [384 floats rounded to 6 decimals]}]}

Run:  HF_HUB_OFFLINE=1 .venv/bin/python scripts/reference/embed_fixture.py
(needs `scripts/setup-python reference` and `scripts/fetch-models`).
"""

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "all-minilm-l6-v2"
OUT = ROOT / "crates" / "index" / "tests" / "fixtures" / "embed_minilm.json"

LONG_PARAGRAPH = (
    "Reward hacking happens when a reinforcement learning agent finds a way to obtain "
    "high reward that its designers did not intend, for example by exploiting a bug in "
    "the simulator or by tampering with the sensors that measure its performance. "
    "Specification gaming is the broader family of such behaviours, and mesa-optimization "
    "asks whether a learned model might itself be an optimizer pursuing a proxy objective. "
)

TEXTS = [
    # short
    "",
    "a",
    "AI",
    "Hello, world!",
    "What is inner alignment?",
    "corrigibility",
    "RLHF vs. constitutional AI",
    "The quick brown fox jumps over the lazy dog.",
    # alignment jargon
    "Deceptive alignment: a mesa-optimizer that behaves well during training to avoid "
    "modification, then defects once deployed.",
    "Eliciting latent knowledge (ELK) asks how to train a reporter that tells us what a "
    "predictor believes rather than what a human would say.",
    "Iterated amplification and debate are proposals for scalable oversight of systems "
    "more capable than their overseers.",
    "Goodhart's law: when a measure becomes a target, it ceases to be a good measure.",
    "Sparse autoencoders decompose residual-stream activations into monosemantic features.",
    "The orthogonality thesis holds that intelligence and final goals are independent axes.",
    "Instrumental convergence predicts power-seeking across a wide range of reward functions.",
    "Refusal in language models is mediated by a single direction in the residual stream.",
    "Activation steering adds a scaled vector to hidden states at a chosen layer.",
    "Logit lens, tuned lens, and causal scrubbing are interpretability methods.",
    # numbers, punctuation, casing
    "GPT-4 scored 86.4% on MMLU (5-shot); Claude 3 Opus reported 86.8%.",
    "ON 2023-07-21, SEVEN COMPANIES SIGNED VOLUNTARY COMMITMENTS AT THE WHITE HOUSE!!!",
    "e-mail: someone@example.org -- see §4.2, pp. 13-17 [1][2].",
    "   leading and trailing whitespace\t\n  ",
    # unicode
    "Les modèles de langage peuvent-ils être alignés sur les valeurs humaines ?",
    "Künstliche Intelligenz und die Frage der Kontrollierbarkeit: Übersicht.",
    "人工智能对齐是确保人工智能系统按照人类意图行事的研究领域。",
    "機械学習モデルの解釈可能性についての研究",
    "Искусственный интеллект и проблема согласования целей.",
    "emoji 🤖🧠✨ and symbols ∀x ∃y: f(x) ≤ g(y) → ⊥",
    "naïve café résumé coöperate Ångström",
    # code
    "def reward(state):\n    return -abs(state.goal - state.pos)  # shaped reward",
    "fn main() { let v: Vec<u32> = (0..10).map(|x| x * x).collect(); println!(\"{v:?}\"); }",
    "SELECT title, authors FROM papers WHERE year >= 2020 ORDER BY citations DESC;",
    "loss = F.cross_entropy(logits.view(-1, V), targets.view(-1), ignore_index=-100)",
    # medium
    "Scalable oversight is the problem of supervising AI systems on tasks where humans "
    "cannot directly evaluate the outputs. Approaches include recursive reward modeling, "
    "debate between AI systems, and decomposing tasks into pieces that humans can check. "
    "Each approach relies on assumptions about how errors compound.",
    "An agent that is uncertain about its objective has an incentive to defer to humans "
    "and to allow itself to be switched off, as argued in the off-switch game.",
    # long: > 256 tokens, exercises truncation
    LONG_PARAGRAPH * 6,
    ("Interpretability research tries to reverse-engineer the algorithms learned by neural "
     "networks. " * 40),
    " ".join(f"token{i}" for i in range(400)),
    ("In this post I argue that the alignment problem is hard for three reasons. First, "
     "we lack a formal specification of human values; second, optimization amplifies any "
     "mismatch between the proxy and the target; third, capable systems can model their "
     "training process. ") * 5 + "The end.",
    "word " * 600,
]


def main() -> int:
    if not (MODEL / "model.safetensors").exists():
        print(f"missing {MODEL}; run scripts/fetch-models", file=sys.stderr)
        return 1
    torch.set_num_threads(2)
    model = SentenceTransformer(str(MODEL), device="cpu")
    assert model.max_seq_length == 256, model.max_seq_length
    emb = model.encode(TEXTS, batch_size=8, convert_to_numpy=True, normalize_embeddings=True)
    items = []
    for text, vec in zip(TEXTS, emb):
        ids = model.tokenizer(text, add_special_tokens=False, truncation=False)["input_ids"]
        items.append({
            "text": text,
            "tokens": len(ids),
            "embedding": [round(float(x), 6) for x in vec],
        })
    assert any(it["tokens"] > 300 for it in items)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "script": "scripts/reference/embed_fixture.py",
        "max_seq_length": model.max_seq_length,
        "items": items,
    }
    OUT.write_text(json.dumps(data, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {OUT} ({len(items)} texts)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Pick the documents the retrieval evaluation queries were written for.

Run from the repository root with ../shared beside it:  python3 eval/retrieval/pick_docs.py
Prints id, source, title and the first 350 characters of 90 documents sampled (seed 42)
from the papers and newsletter files, among documents whose title is unique in the corpus,
with more than 400 characters of text and a title longer than 15 characters.
"""
import collections
import json
import random
from pathlib import Path

corpus = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "corpus"
docs = []
for name in ["ai_alignment_papers.jsonl", "alignment_newsletter.jsonl"]:
    with open(corpus / name) as f:
        docs.extend(json.loads(line) for line in f)
titles = collections.Counter(d["title"].strip().lower() for d in docs)
cands = [
    d for d in docs
    if titles[d["title"].strip().lower()] == 1 and len(d.get("text", "")) > 400 and len(d["title"]) > 15
]
random.seed(42)
for i, d in enumerate(random.sample(cands, 90)):
    print(f"## {i} {d['id']} [{d['source']}] {d['title']}")
    print("   ", d["text"][:350].replace("\n", " "))

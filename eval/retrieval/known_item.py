#!/usr/bin/env python3
"""Build the known-item query set (BEIR files) from the corpus.

For every Alignment Newsletter record (alignment_newsletter.jsonl) whose normalised title
(lowercase, runs of non-alphanumerics -> one space) equals the normalised title of a record
in ai_alignment_papers.jsonl, the query is the opening of the newsletter's summary and the
target is the paper record (every papers-file record with that title, grade 1).

The newsletter record itself is in the corpus too and would trivially rank first, so it
is marked "excluded" in the qrels with grade -1 (as is any other non-papers record
with the same title: another summary of the same paper). `overseer eval retrieval`
removes a query's grade < 0 documents from its ranking before scoring (see
crates/index/src/eval.rs); eval/retrieval/compare_bm25.py does the same for every method.

Query text: the newsletter text with markup made plain (`<@name@>(@title@)` -> name,
`[text](url)` -> text, `_x_` / `**x**` -> x, bare URLs dropped), a leading italic
editorial note (`_..._` paragraph) skipped, cut before "Opinion:", then the first
sentences up to at least 30 words, at most 60 (cut at a word when a sentence runs past
60). Records with fewer than 15 words of summary are skipped.

Split: dev when the first byte of sha256(newsletter id) is even, else test.

Writes known-item-dev.jsonl, known-item-test.jsonl, known-item.jsonl (all) and
known-item-qrels.tsv beside this script.
Usage: python3 eval/retrieval/known_item.py [CORPUS_DIR]
"""
import hashlib
import json
import os
import re
import sys
from collections import defaultdict

MIN_WORDS, TARGET_WORDS, MAX_WORDS = 15, 30, 60

here = os.path.dirname(os.path.abspath(__file__))
corpus = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "../../../shared/data/corpus")


def norm_title(t):
    return re.sub(r"[^a-z0-9]+", " ", t.lower()).strip()


def plain(text):
    text = re.sub(r"<@(.*?)@>\(@.*?@\)", r"\1", text, flags=re.S)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"https?://\S+", " ", text)
    text = re.sub(r"\*\*(.*?)\*\*", r"\1", text, flags=re.S)
    text = re.sub(r"(?<![A-Za-z0-9])_(.+?)_(?![A-Za-z0-9])", r"\1", text, flags=re.S)
    return text


def opening(text):
    paras = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    # A leading editorial note in italics ("_Distill published a discussion ..._").
    while len(paras) > 1 and paras[0].startswith("_") and paras[0].endswith("_"):
        paras.pop(0)
    body = plain("\n\n".join(paras))
    body = re.split(r"\bOpinion:", body)[0]
    sentences = re.split(r"(?<=[.!?])\s+", " ".join(body.split()))
    words = []
    for s in sentences:
        if len(words) >= TARGET_WORDS:
            break
        words += s.split()
    return words[:MAX_WORDS]


def load(name):
    with open(os.path.join(corpus, name)) as f:
        return [json.loads(l) for l in f if l.strip()]


docs = {n: load(n) for n in sorted(os.listdir(corpus)) if n.endswith(".jsonl")}
papers = docs["ai_alignment_papers.jsonl"]
newsletters = docs["alignment_newsletter.jsonl"]
paper_ids = defaultdict(list)
for p in papers:
    if norm_title(p["title"]):
        paper_ids[norm_title(p["title"])].append(p["id"])
others = defaultdict(list)  # non-papers records by title: summaries of the same work
for name, ds in docs.items():
    if name != "ai_alignment_papers.jsonl":
        for d in ds:
            others[norm_title(d["title"])].append(d["id"])

queries, qrels, skipped = {"dev": [], "test": []}, [], 0
for n in newsletters:
    t = norm_title(n["title"])
    if not t or t not in paper_ids:
        continue
    words = opening(n["text"])
    if len(words) < MIN_WORDS:
        skipped += 1
        continue
    qid = "k" + n["id"][:12]
    split = "dev" if hashlib.sha256(n["id"].encode()).digest()[0] % 2 == 0 else "test"
    queries[split].append({"_id": qid, "text": " ".join(words)})
    qrels += [(qid, pid, 1) for pid in paper_ids[t]]
    qrels += [(qid, oid, -1) for oid in others[t]]

ids = [q["_id"] for s in queries.values() for q in s]
assert len(ids) == len(set(ids)), "query ids collide"
for split, qs in [("dev", queries["dev"]), ("test", queries["test"]),
                  (None, queries["dev"] + queries["test"])]:
    name = f"known-item-{split}.jsonl" if split else "known-item.jsonl"
    with open(os.path.join(here, name), "w") as f:
        for q in sorted(qs, key=lambda q: q["_id"]):
            f.write(json.dumps(q, ensure_ascii=False) + "\n")
with open(os.path.join(here, "known-item-qrels.tsv"), "w") as f:
    f.write("query-id\tcorpus-id\tscore\n")
    for q, d, g in sorted(qrels):
        f.write(f"{q}\t{d}\t{g}\n")
print(f"{len(queries['dev'])} dev + {len(queries['test'])} test queries, "
      f"{sum(g > 0 for *_, g in qrels)} targets, {sum(g < 0 for *_, g in qrels)} excluded, "
      f"{skipped} skipped (< {MIN_WORDS} words)")

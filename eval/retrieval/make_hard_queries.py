#!/usr/bin/env python3
"""Turn eval/retrieval/hard-queries.tsv (hand-written) into BEIR queries and qrels.

Each line of hard-queries.tsv is `<line number in ai_alignment_papers.jsonl><TAB><query>`.
The qrel marks that document (grade 1) and every other corpus document with exactly
the same title (the same work stored again, e.g. in the newsletter file).

Writes queries-hard.jsonl and appends the h* rows to qrels.tsv (rewriting any old h* rows).
Usage: python3 eval/retrieval/make_hard_queries.py [CORPUS_DIR]
"""
import json
import os
import sys

here = os.path.dirname(os.path.abspath(__file__))
corpus = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "../../../shared/data/corpus")
docs = {}
for name in sorted(os.listdir(corpus)):
    if name.endswith(".jsonl"):
        with open(os.path.join(corpus, name)) as f:
            docs[name] = [json.loads(l) for l in f if l.strip()]
papers = docs["ai_alignment_papers.jsonl"]
everything = [d for ds in docs.values() for d in ds]

queries, qrels = [], []
with open(os.path.join(here, "hard-queries.tsv")) as f:
    for n, line in enumerate(f):
        line = line.rstrip("\n")
        if not line:
            continue
        idx, text = line.split("\t", 1)
        d = papers[int(idx)]
        qid = f"h{n:02d}"
        queries.append({"_id": qid, "text": text})
        title = d["title"].strip().lower()
        rel = [d["id"]] + [x["id"] for x in everything
                           if x["id"] != d["id"] and x["title"].strip().lower() == title]
        qrels += [(qid, r) for r in dict.fromkeys(rel)]

with open(os.path.join(here, "queries-hard.jsonl"), "w") as f:
    for q in queries:
        f.write(json.dumps(q) + "\n")
path = os.path.join(here, "qrels.tsv")
with open(path) as f:
    keep = [l for l in f if not l.startswith("h")]
with open(path, "w") as f:
    f.writelines(keep)
    for q, r in qrels:
        f.write(f"{q}\t{r}\t1\n")
print(f"{len(queries)} hard queries, {len(qrels)} qrels")

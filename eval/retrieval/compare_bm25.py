#!/usr/bin/env python3
"""Our retrieval modes side by side with a plain Okapi BM25 peer, on the same corpus and
the same BEIR query sets.

  scripts/setup-python retrieval            # .venv with rank_bm25 (pinned)
  cargo build --release -p overseer-index --example run_queries
  .venv/bin/python eval/retrieval/compare_bm25.py DATA_DIR [--bin PATH] [--corpus DIR]
      [--sets known-item-dev,known-item-test,dev,test] [--modes bm25,dense,hybrid[,hybrid+rerank]]

DATA_DIR is an index of the whole corpus (`overseer ingest --data-dir DATA_DIR
../shared/data/corpus`). Methods, each scored with the metrics of
crates/index/src/eval.rs (MRR@10, Recall@10, nDCG@10; documents a query grades < 0
are removed from its ranking first):

- ours bm25 / dense / hybrid: document rankings from `run_queries` (the example in
  crates/index/examples; one `Index::search` per query, k = 100, as `overseer search`);
  hybrid+rerank: hybrid with the opt-in rerank stage (`DEFAULT_RERANK`).
- okapi: rank_bm25's BM25Okapi with its defaults (k1 1.5, b 0.75, epsilon 0.25) over
  whole records (title + text), tokens = lowercased `\\w+` runs; no stemming, no stopwords.
- rrf(okapi, dense): naive reciprocal-rank fusion (k = 60) of the okapi ranking and our
  dense ranking (MiniLM all-MiniLM-L6-v2, best chunk per document), document level.

Query sets (in eval/retrieval): known-item-dev / known-item-test (known_item.py, with
known-item-qrels.tsv) and dev / test (queries-{dev,test}.jsonl with qrels.tsv).
"""
import argparse
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
from rank_bm25 import BM25Okapi

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.normpath(os.path.join(here, "../.."))
SETS = {
    "known-item-dev": ("known-item-dev.jsonl", "known-item-qrels.tsv"),
    "known-item-test": ("known-item-test.jsonl", "known-item-qrels.tsv"),
    "dev": ("queries-dev.jsonl", "qrels.tsv"),
    "test": ("queries-test.jsonl", "qrels.tsv"),
    "hard-test": ("queries-hard-test.jsonl", "qrels.tsv"),
}


def tokens(s):
    return re.findall(r"\w+", s.lower())


def read_qrels(path):
    q = {}
    with open(path) as f:
        for i, line in enumerate(f):
            cols = line.rstrip("\n").split("\t")
            if i == 0 and cols[0].lower() == "query-id":
                continue
            if len(cols) >= 3 and float(cols[2]) != 0:
                q.setdefault(cols[0], {})[cols[1]] = float(cols[2])
    return q


def score(ranked, rel):
    ranked = [d for d in ranked if rel.get(d, 0) >= 0]
    pos = {d: g for d, g in rel.items() if g > 0}
    dcg, rr = 0.0, 0.0
    for i, d in enumerate(ranked[:10]):
        if d in pos:
            dcg += (2 ** pos[d] - 1) / math.log2(i + 2)
            rr = rr or 1 / (i + 1)
    idcg = sum((2 ** g - 1) / math.log2(i + 2)
               for i, g in enumerate(sorted(pos.values(), reverse=True)[:10]))
    r10 = sum(d in pos for d in ranked[:10]) / len(pos)
    return {"mrr@10": rr, "recall@10": r10, "ndcg@10": dcg / idcg if idcg else 0.0}


def mean(rows):
    return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}


def rrf(lists, k=60):
    acc = {}
    for l in lists:
        for r, d in enumerate(l):
            acc[d] = acc.get(d, 0.0) + 1 / (k + r + 1)
    return [d for d, _ in sorted(acc.items(), key=lambda x: (-x[1], x[0]))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data_dir")
    ap.add_argument("--bin", default=os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.join(root, "target")),
        "release/examples/run_queries"))
    ap.add_argument("--corpus", default=os.path.join(root, "../shared/data/corpus"))
    ap.add_argument("--sets", default="known-item-dev,known-item-test,dev,test")
    ap.add_argument("--modes", default="bm25,dense,hybrid")
    ap.add_argument("--json", help="also write per-set results here")
    a = ap.parse_args()

    docs = []
    for name in sorted(os.listdir(a.corpus)):
        if name.endswith(".jsonl"):
            with open(os.path.join(a.corpus, name)) as f:
                docs += [json.loads(l) for l in f if l.strip()]
    ids = [d["id"] for d in docs]
    okapi = BM25Okapi([tokens(d["title"] + "\n" + d["text"]) for d in docs])
    out = {}
    for s in a.sets.split(","):
        qfile, qrfile = SETS[s]
        qpath = os.path.join(here, qfile)
        queries = [json.loads(l) for l in open(qpath) if l.strip()]
        qrels = read_qrels(os.path.join(here, qrfile))
        queries = [q for q in queries if any(g > 0 for g in qrels.get(q["_id"], {}).values())]
        runs = {}
        for m in a.modes.split(","):
            mode, _, rerank = m.partition("+")
            p = subprocess.run([a.bin, a.data_dir, qpath, "--mode", mode, "--k", "100",
                                "--rerank", "on" if rerank else "off"],
                               check=True, capture_output=True, text=True, cwd=root)
            runs[f"ours {m}"] = {r["_id"]: r["ids"] for r in map(json.loads, p.stdout.splitlines())}
        runs["okapi"] = {}
        for q in queries:
            sc = okapi.get_scores(tokens(q["text"]))
            top = np.argsort(-sc, kind="stable")[:100]
            runs["okapi"][q["_id"]] = [ids[i] for i in top]
        if "ours dense" in runs:
            runs["rrf(okapi, dense)"] = {
                q["_id"]: rrf([runs["okapi"][q["_id"]], runs["ours dense"][q["_id"]]])
                for q in queries}
        print(f"== {s}: {qfile} ({len(queries)} queries)")
        print(f"{'method':<20} {'MRR@10':>7} {'R@10':>7} {'nDCG@10':>8}")
        out[s] = {}
        for name, run in runs.items():
            m = mean([score(run[q["_id"]], qrels[q["_id"]]) for q in queries])
            out[s][name] = m
            print(f"{name:<20} {m['mrr@10']:>7.4f} {m['recall@10']:>7.4f} {m['ndcg@10']:>8.4f}")
        sys.stdout.flush()
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()

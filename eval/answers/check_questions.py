#!/usr/bin/env python3
"""Validate eval/answers/questions.jsonl against the corpus.

Checks the schema and key order of every line, the counts per kind and split, that
splits alternate dev/test within each kind in file order, that every relevant id
exists in the corpus, that every key point of an answerable question has at least one
phrase found (case-insensitive substring) in the text of at least one of its relevant
documents, and, for near-field questions, prints whether their distinctive terms
(`absent_terms`) occur in the corpus (any occurrence is an error).

Usage: python3 eval/answers/check_questions.py [--questions PATH] [--corpus DIR]
Exit status 0 when everything passes, 1 otherwise.
"""

import argparse
import glob
import json
import os
import re
import sys
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
KEYS = ["id", "split", "kind", "question", "answerable", "relevant", "key_points"]
OPTIONAL = ["absent_terms"]  # near-field only, after key_points
KINDS = ("answerable", "near-field", "off-topic")
MIN = {"answerable": 44, "near-field": 8}
MIN_UNANSWERABLE = 14


def load_corpus(d):
    docs = {}
    files = sorted(glob.glob(os.path.join(d, "*.jsonl")))
    if not files:
        sys.exit(f"no *.jsonl under {d}")
    for f in files:
        with open(f, encoding="utf-8") as fh:
            for line in fh:
                r = json.loads(line)
                docs[r["id"]] = ((r.get("title") or "") + "\n" + (r.get("text") or "")).lower()
    return docs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--questions", default=os.path.join(HERE, "questions.jsonl"))
    ap.add_argument("--corpus", default=os.path.join(os.path.dirname(ROOT), "shared", "data", "corpus"))
    a = ap.parse_args()

    docs = load_corpus(a.corpus)
    errors, warnings = [], []
    err = errors.append
    rows = []
    with open(a.questions, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                err(f"line {n}: blank line")
                continue
            try:
                q = json.loads(line)
            except json.JSONDecodeError as e:
                err(f"line {n}: bad JSON: {e}")
                continue
            rows.append((n, q))

    ids = Counter(q.get("id") for _, q in rows)
    for i, c in ids.items():
        if c > 1:
            err(f"duplicate id {i!r} ({c} times)")

    for n, q in rows:
        where = f"line {n} ({q.get('id')})"
        keys = list(q)
        extra = [k for k in keys if k not in KEYS + OPTIONAL]
        if keys[: len(KEYS)] != KEYS or extra:
            err(f"{where}: keys {keys}, want {KEYS} (+ optional {OPTIONAL})")
            continue
        if not isinstance(q["id"], str) or not q["id"]:
            err(f"{where}: id must be a non-empty string")
        if q["split"] not in ("dev", "test"):
            err(f"{where}: split {q['split']!r}")
        if q["kind"] not in KINDS:
            err(f"{where}: kind {q['kind']!r}")
        if not isinstance(q["question"], str) or not q["question"].strip():
            err(f"{where}: empty question")
        if not isinstance(q["answerable"], bool) or q["answerable"] != (q["kind"] == "answerable"):
            err(f"{where}: answerable={q['answerable']!r} does not fit kind {q['kind']!r}")
        rel, kps = q["relevant"], q["key_points"]
        if not isinstance(rel, list) or not isinstance(kps, list):
            err(f"{where}: relevant and key_points must be lists")
            continue
        for d in rel:
            if d not in docs:
                err(f"{where}: relevant id {d} not in corpus")
        if "absent_terms" in q and q["kind"] != "near-field":
            err(f"{where}: absent_terms only on near-field questions")

        if q["kind"] == "answerable":
            if not rel:
                err(f"{where}: answerable question without relevant documents")
            if not 3 <= len(kps) <= 5:
                err(f"{where}: {len(kps)} key points, want 3-5")
            ql = q["question"].lower()
            texts = [docs[d] for d in rel if d in docs]
            for k, alts in enumerate(kps, 1):
                if not isinstance(alts, list) or not 1 <= len(alts) <= 4:
                    err(f"{where}: key point {k} must be a list of 1-4 phrases")
                    continue
                for p in alts:
                    if not isinstance(p, str) or not p.strip() or p != p.lower() or not 1 <= len(p.split()) <= 4:
                        err(f"{where}: key point {k}: bad phrase {p!r} (lowercase, 1-4 words)")
                found = [p for p in alts if any(p.lower() in t for t in texts)]
                if not found:
                    err(f"{where}: key point {k} {alts}: no phrase in any relevant document")
                in_q = [p for p in alts if p.lower() in ql]
                if in_q and len(in_q) == len(alts):
                    err(f"{where}: key point {k} {alts}: every phrase is in the question itself")
                elif in_q:
                    warnings.append(f"{where}: key point {k}: {in_q} occur in the question")
        else:
            if rel:
                err(f"{where}: unanswerable question with relevant documents")
            if kps:
                err(f"{where}: unanswerable question with key points")

        if q["kind"] == "near-field":
            terms = q.get("absent_terms")
            if not isinstance(terms, list) or not terms:
                err(f"{where}: near-field question needs absent_terms")
                continue
            for t in terms:
                pat = re.compile(r"(?<!\w)" + re.escape(t.lower()) + r"(?!\w)")
                hits = [d for d, txt in docs.items() if pat.search(txt)]
                status = "absent" if not hits else f"FOUND in {len(hits)} docs: {hits[:5]}"
                print(f"near-field {q['id']}: {t!r}: {status}")
                if hits:
                    err(f"{where}: distinctive term {t!r} occurs in the corpus")

    # counts, balance and alternation
    table = Counter((q.get("kind"), q.get("split")) for _, q in rows)
    print("\nkind          dev  test  total")
    for k in KINDS:
        d, t = table[(k, "dev")], table[(k, "test")]
        print(f"{k:12} {d:4} {t:5} {d + t:6}")
        if abs(d - t) > 1:
            err(f"kind {k}: dev {d} / test {t} not balanced")
        seq = [q.get("split") for _, q in rows if q.get("kind") == k]
        want = ["dev" if i % 2 == 0 else "test" for i in range(len(seq))]
        if seq != want:
            err(f"kind {k}: splits do not alternate dev/test in file order")
    dev = sum(v for (k, s), v in table.items() if s == "dev")
    print(f"{'all':12} {dev:4} {len(rows) - dev:5} {len(rows):6}")
    for k, m in MIN.items():
        c = table[(k, "dev")] + table[(k, "test")]
        if c < m:
            err(f"{c} {k} questions, want >= {m}")
    un = sum(1 for _, q in rows if q.get("answerable") is False)
    if un < MIN_UNANSWERABLE:
        err(f"{un} unanswerable questions, want >= {MIN_UNANSWERABLE}")

    for w in warnings:
        print("warning:", w)
    for e in errors:
        print("ERROR:", e)
    print(f"\n{len(rows)} questions, {len(errors)} errors, {len(warnings)} warnings")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())

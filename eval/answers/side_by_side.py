#!/usr/bin/env python3
"""Print a markdown page putting two pipelines' answers to the same questions side by side.

    python3 eval/answers/side_by_side.py QUESTIONS BEFORE.jsonl AFTER.jsonl ID [ID ...]

BEFORE and AFTER hold one `overseer ask --json` object per line plus the question's
"id" (`overseer eval answers --save` writes that format). docs/ANSWERS.md was made with it.
Timings are left out: compare them in docs/BENCHMARKS.md, where both ran in one run.
"""
import json
import sys


def load(path):
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                d = json.loads(line)
                out[d["id"]] = d
    return out


def cited(answer):
    cites = answer.get("citations") or []
    if not cites:
        return ""
    rows = []
    for c in cites:
        title = c.get("title") or "(untitled)"
        rows.append(f"[{c['n']}] {title}")
    return "<br>".join(rows)


def cell(text):
    return " ".join(text.replace("|", "\\|").split())


def main():
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    questions = load(sys.argv[1])
    before, after = load(sys.argv[2]), load(sys.argv[3])
    for qid in sys.argv[4:]:
        q = questions[qid]
        b, a = before.get(qid), after.get(qid)
        print(f"### {q['question']}\n")
        print(f"`{qid}` ({q.get('kind', '')}, {q.get('split', '')} split)\n")
        print("| before | after |")
        print("|---|---|")
        bt = cell(b["answer"]) if b else "(missing)"
        at = cell(a["answer"]) if a else "(missing)"
        print(f"| {bt} | {at} |")
        print(f"| {cited(b) if b else ''} | {cited(a) if a else ''} |")
        notes = []
        for label, x in (("before", b), ("after", a)):
            if x and x.get("fallback"):
                notes.append(f"{label}: labelled extractive fallback")
            if x and x.get("abstained"):
                notes.append(f"{label}: abstained")
        print(f"\n{'; '.join(notes)}\n" if notes else "")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Print a markdown page putting two pipelines' answers to the same questions side by side.

    python3 eval/answers/side_by_side.py QUESTIONS BEFORE.jsonl AFTER.jsonl ID [ID ...]

BEFORE and AFTER hold one `overseer ask --json` object per line plus the question's
"id" (`overseer eval answers --save` writes that format). docs/ANSWERS.md was made with it.
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
        tb = b.get("timings", {}) if b else {}
        ta = a.get("timings", {}) if a else {}
        print(
            f"| first text {tb.get('first_token_ms', 0) / 1000:.1f} s, total "
            f"{tb.get('total_ms', 0) / 1000:.1f} s | first text "
            f"{ta.get('first_token_ms', 0) / 1000:.1f} s, total {ta.get('total_ms', 0) / 1000:.1f} s"
            f"{', extractive fallback' if a and a.get('fallback') else ''} |\n"
        )


if __name__ == "__main__":
    main()

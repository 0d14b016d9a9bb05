"""Write a reduced corpus for a quick evaluation index: the judged documents plus every
7th record of the papers and newsletter files.  python3 eval/retrieval/make_eval_corpus.py OUT.jsonl"""
import json
import sys
from pathlib import Path

here = Path(__file__).resolve().parent
corpus = here.parents[1] / ".." / "shared" / "data" / "corpus"
judged = {l.split("\t")[1] for l in (here / "qrels.tsv").read_text().splitlines()[1:]}
with open(sys.argv[1], "w") as out:
    for name in ["ai_alignment_papers.jsonl", "alignment_newsletter.jsonl"]:
        for i, line in enumerate(open(corpus / name)):
            if json.loads(line)["id"] in judged or i % 7 == 0:
                out.write(line)

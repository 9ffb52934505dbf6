"""Rebuild this dev set from the shared corpus:

    python data/retrieval_dev/build.py --corpus ../shared/data/es_corpus.jsonl.gz

Deterministic: documents are held out by a hash of their text.
"""

import argparse
import gzip
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the repository root, for spanish_moe_bert

from spanish_moe_bert.pairs import build_dev_set  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=HERE.parents[2] / "shared" / "data" / "es_corpus.jsonl.gz")
    parser.add_argument("--fraction", type=float, default=0.15, help="share of documents held out")
    parser.add_argument("--output_dir", type=Path, default=HERE)
    args = parser.parse_args()
    with gzip.open(args.corpus, "rt", encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    queries, corpus, keys = build_dev_set(records, fraction=args.fraction)
    for name, rows in (("queries.jsonl", queries), ("corpus.jsonl", corpus)):
        with open(args.output_dir / name, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    (args.output_dir / "heldout_paragraphs.txt").write_text("\n".join(keys) + "\n", encoding="utf-8")
    print(f"{len(queries)} queries, {len(corpus)} passages, {len(keys)} held-out paragraph keys")


if __name__ == "__main__":
    main()

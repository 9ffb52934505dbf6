"""Compare dense and sparse (SPLADE) embedding models with BM25 and all-MiniLM-L6-v2 on Spanish retrieval (and
STS), in one run.

    python evaluate_embeddings.py --model mlm=outputs/mini --model contrastive=outputs/mini-embed
    python evaluate_embeddings.py --model ours=DIR --queries q.jsonl --corpus c.jsonl --sts sts.jsonl
    python evaluate_embeddings.py --model ours=DIR --hybrid     # also BM25 + each model, by reciprocal rank fusion

Defaults to the bundled dev set (data/retrieval_dev). Prints a markdown table; --output_json saves it.
Every model is a local folder, loaded without the Hub: a dense export (SentenceTransformer, cosine similarity) or a
sparse one (`train_sentence_embeddings.py --encoder sparse`: SparseEncoder, dot product).
"""

import argparse
import json
from pathlib import Path

from spanish_moe_bert.retrieval_eval import (
    DEV_CORPUS,
    DEV_QUERIES,
    compare,
    default_systems,
    load_retrieval,
    load_sts,
    markdown_table,
)


def parse_model(spec: str) -> tuple[str, str]:
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"--model expects NAME=FOLDER, got {spec!r}")
    if not Path(path).is_dir():
        raise argparse.ArgumentTypeError(f"--model {name}: folder not found: {path}")
    if not (Path(path) / "config.json").is_file():
        raise argparse.ArgumentTypeError(f"--model {name}: {path} holds no config.json (give an exported model folder)")
    return name, path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=parse_model, action="append", default=[], help="NAME=FOLDER (repeatable)")
    parser.add_argument("--queries", type=Path, default=DEV_QUERIES, help='JSONL {"query", "positive"}')
    parser.add_argument(
        "--corpus", type=Path, default=None, help='JSONL {"text"} (default: the dev corpus with the dev queries)'
    )
    parser.add_argument("--sts", type=Path, default=None, help='JSONL {"sentence1", "sentence2", "score"}')
    parser.add_argument("--no_baselines", action="store_true", help="skip BM25 and all-MiniLM-L6-v2")
    parser.add_argument(
        "--hybrid", action="store_true", help="also rank BM25 fused with each model (reciprocal rank fusion, k=60)"
    )
    parser.add_argument("--output_json", type=Path, default=None)
    args = parser.parse_args(argv)

    corpus = args.corpus or (DEV_CORPUS if args.queries == DEV_QUERIES else None)
    retrieval = load_retrieval(args.queries, corpus)
    sts = load_sts(args.sts) if args.sts else None
    systems = default_systems(dict(args.model), baselines=not args.no_baselines, hybrid=args.hybrid)
    if not systems:
        parser.error("nothing to evaluate: give --model NAME=FOLDER or leave the baselines on")
    results = compare(systems, retrieval, sts)
    print(f"{len(retrieval.queries)} queries, {len(retrieval.passages)} passages ({args.queries})\n")
    print(markdown_table(results, reference="BM25 (bm25s)" if not args.no_baselines else None))
    if args.output_json:
        args.output_json.parent.mkdir(parents=True, exist_ok=True)
        args.output_json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return results


if __name__ == "__main__":
    main()

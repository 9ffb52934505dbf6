"""bench_tokenizer's lexical-matching rows: BM25 on the retrieval dev set over our pieces and over words."""

import sys
from pathlib import Path

from spanish_moe_bert.retrieval_eval import DEV_CORPUS, DEV_QUERIES, BM25System, compare, load_retrieval

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_tokenizer  # noqa: E402
import harness  # noqa: E402


def test_subword_bm25_scores_pieces_and_each_word_level_choice_of_the_baseline():
    tokenizer = harness.train_tokenizer(vocab_size=2000)
    rows = {row["name"]: row["ndcg@10"] for row in bench_tokenizer.subword_bm25(tokenizer)}

    assert list(rows) == [
        "BM25 over words (lower-cased, no stop words)",
        "BM25 over words, cased, no stop words",
        "BM25 over words, lower-cased, stop words kept",
        "BM25 over our pieces, cased text",
        "BM25 over our pieces, lower-cased text",
    ]
    baseline = compare([BM25System()], load_retrieval(DEV_QUERIES, DEV_CORPUS))["BM25 (bm25s)"]["ndcg@10"]
    assert rows["BM25 over words (lower-cased, no stop words)"] == baseline  # the embedding stage's own baseline
    assert all(0.0 < score < 1.0 for score in rows.values())
    # Undoing a word-level choice changes the ranking: each row is its own index, not a copy of the baseline.
    assert rows["BM25 over words, cased, no stop words"] != baseline
    assert rows["BM25 over words, lower-cased, stop words kept"] != baseline

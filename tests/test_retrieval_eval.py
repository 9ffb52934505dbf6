"""The evaluator: metrics on a hand-computed toy case, data loading errors, systems, and agreement with
Sentence Transformers' own InformationRetrievalEvaluator on a real model."""

import json
import math
import os

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

from spanish_moe_bert.retrieval_eval import (  # noqa: E402
    DEV_CORPUS,
    DEV_QUERIES,
    BM25System,
    EmbeddingSystem,
    FusionSystem,
    compare,
    default_systems,
    eval_results_for_card,
    load_retrieval,
    load_sentence_transformer,
    load_sts,
    markdown_table,
    minilm_path,
    retrieval_metrics,
    spearman,
)


def test_metrics_on_a_hand_computed_toy_case():
    rankings = [
        [0, 2, 1],  # relevant {2} at rank 2
        [1, 3, 0],  # relevant {0, 1} at ranks 1 and 3
        list(range(11)),  # relevant {10} at rank 11: outside the cut-off
    ]
    relevant = [{2}, {0, 1}, {10}]
    # nDCG: 1/log2(3); (1 + 1/log2(4)) / (1 + 1/log2(3)) = 1.5 / 1.6309; 0
    expected_ndcg = (0.6309298 + 0.9197208 + 0.0) / 3
    metrics = retrieval_metrics(rankings, relevant)
    assert metrics["ndcg@10"] == pytest.approx(expected_ndcg, abs=1e-6)
    assert metrics["mrr@10"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert metrics["recall@1"] == pytest.approx((0 + 1 / 2 + 0) / 3)
    assert retrieval_metrics([[5, 6]], [{5}]) == {"ndcg@10": 1.0, "mrr@10": 1.0, "recall@1": 1.0}
    with pytest.raises(ValueError, match="2 rankings for 1 queries"):
        retrieval_metrics(rankings[:2], relevant[:1])


def test_spearman_on_a_hand_computed_toy_case():
    # ranks differ by one on two items: rho = 1 - 6 * 2 / (4 * (16 - 1)) = 0.8
    assert spearman([1, 2, 3, 4], [10, 20, 40, 30]) == pytest.approx(0.8)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


class OneHotModel:
    """A stand-in SentenceTransformer: each text's embedding is a one-hot of its first word's topic."""

    topics = ["gato", "perro", "celda"]

    def _embed(self, texts, **kwargs):
        return np.array([[float(t.split()[0] == topic) for topic in self.topics] for t in texts])

    encode_query = encode_document = _embed


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_systems_rank_the_toy_corpus_and_compare_in_one_table(tmp_path):
    queries = write_jsonl(
        tmp_path / "q.jsonl",
        [
            {"query": "gato negro", "positive": "gato que duerme al sol en la ventana"},
            {"query": "perro grande", "positive": "perro que ladra en el jardín de la casa"},
        ],
    )
    passages = [{"text": "celda de una hoja de cálculo"}, {"text": "gato que duerme al sol en la ventana"}]
    corpus = write_jsonl(tmp_path / "c.jsonl", passages)
    data = load_retrieval(queries, corpus)
    assert len(data.passages) == 3  # the duplicate passage is searched once
    assert data.relevant == [{0}, {1}]
    results = compare([BM25System(), EmbeddingSystem(OneHotModel(), "one-hot")], data)
    assert results["BM25 (bm25s)"]["recall@1"] == 1.0
    assert results["one-hot"] == {"ndcg@10": 1.0, "mrr@10": 1.0, "recall@1": 1.0}
    table = markdown_table(results, reference="BM25 (bm25s)")
    assert table.splitlines()[0] == "| system | ndcg@10 | mrr@10 | recall@1 | nDCG@10 / BM25 (bm25s) |"
    assert table.splitlines()[-1] == "| one-hot | 1.000 | 1.000 | 1.000 | 1.00 |"


def test_sts_is_scored_by_embedding_systems_only(tmp_path):
    sts = load_sts(
        write_jsonl(
            tmp_path / "sts.jsonl",
            [
                {"sentence1": "gato a", "sentence2": "gato b", "score": 5},
                {"sentence1": "gato a", "sentence2": "perro b", "score": 1.0},
                {"sentence1": "perro a", "sentence2": "perro c", "score": 4.5},
            ],
        )
    )
    results = compare([BM25System(), EmbeddingSystem(OneHotModel(), "one-hot")], sts=sts)
    assert results == {"BM25 (bm25s)": {}, "one-hot": {"sts_spearman": pytest.approx(math.sqrt(0.75))}}


class FixedRanking:
    """A stand-in system that ranks the passages in one fixed order for every query."""

    def __init__(self, name, order):
        self.name, self.order = name, order

    def rank(self, queries, passages, k=10):
        return [self.order[:k] for _ in queries]


def test_rank_fusion_sums_reciprocal_ranks():
    a, b = FixedRanking("a", [0, 1, 2, 3]), FixedRanking("b", [3, 1, 0])  # b does not rank passage 2
    fused = FusionSystem([a, b])
    assert fused.name == "a + b (RRF)"
    # passage 1: 2/62 = 0.03226; 0: 1/61 + 1/63 = 0.03227; 3: 1/64 + 1/61 = 0.03202; 2: 1/63 only
    assert fused.rank(["q1", "q2"], ["p0", "p1", "p2", "p3"]) == [[0, 1, 3, 2]] * 2
    assert fused.rank(["q"], ["p0", "p1", "p2", "p3"], k=2) == [[0, 1]]
    # only each system's first `depth` count: with depth 1, passage 0 (a's first) and 3 (b's first) tie, 0 first
    assert FusionSystem([a, b], depth=1).rank(["q"], ["p0", "p1", "p2", "p3"], k=2) == [[0, 3]]
    assert FusionSystem([a, a], name="twice").rank(["q"], ["p0", "p1", "p2", "p3"]) == [[0, 1, 2, 3]]
    with pytest.raises(ValueError, match="at least two systems, got 1"):
        FusionSystem([a])


def test_hybrid_of_bm25_and_a_model_is_compared_with_both(tmp_path):
    queries = write_jsonl(
        tmp_path / "q.jsonl",
        [
            {"query": "gato negro", "positive": "gato que duerme al sol en la ventana"},
            {"query": "perro grande", "positive": "perro que ladra en el jardín de la casa"},
        ],
    )
    data = load_retrieval(queries, write_jsonl(tmp_path / "c.jsonl", [{"text": "celda de una hoja de cálculo"}]))
    systems = default_systems({"one-hot": OneHotModel()}, baselines=False, hybrid=True)
    assert [s.name for s in systems] == ["one-hot", "BM25 (bm25s) + one-hot (RRF)"]
    results = compare(systems, data)
    assert results["BM25 (bm25s) + one-hot (RRF)"]["recall@1"] == 1.0


def test_hybrid_encodes_each_text_once_for_the_model_and_its_fusion(tmp_path):
    calls = []

    class CountingModel(OneHotModel):
        def encode_query(self, texts, **kwargs):
            calls.append(("query", len(texts)))
            return self._embed(texts)

        def encode_document(self, texts, **kwargs):
            calls.append(("document", len(texts)))
            return self._embed(texts)

    queries = write_jsonl(tmp_path / "q.jsonl", [{"query": "gato negro", "positive": "gato al sol"}])
    data = load_retrieval(queries, write_jsonl(tmp_path / "c.jsonl", [{"text": "perro que ladra"}]))
    results = compare(default_systems({"counting": CountingModel()}, baselines=False, hybrid=True), data)
    assert calls == [("query", 1), ("document", 2)]
    assert results["counting"]["recall@1"] == results["BM25 (bm25s) + counting (RRF)"]["recall@1"] == 1.0
    calls.clear()
    system = EmbeddingSystem(CountingModel(), "c")
    assert system.rank(["gato"], ["perro y", "gato x"]) == [[1, 0]]
    assert system.rank(["perro"], ["perro y", "gato x"]) == [[0, 1]]  # other queries are scored anew
    assert len(calls) == 4


@pytest.mark.parametrize(
    "row, message",
    [
        ({"query": "q"}, r"q.jsonl:2: field 'positive' must be a non-empty string, got None"),
        ({"query": " ", "positive": "p"}, r"q.jsonl:2: field 'query' must be a non-empty string, got ' '"),
        ({"query": "q", "positive": ["p"]}, r"q.jsonl:2: field 'positive' must be a non-empty string"),
    ],
)
def test_bad_retrieval_rows_name_file_line_and_field(tmp_path, row, message):
    path = write_jsonl(tmp_path / "q.jsonl", [{"query": "a", "positive": "b"}, row])
    with pytest.raises(ValueError, match=message):
        load_retrieval(path)


def test_bad_sts_score_and_bad_json_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"sts.jsonl:1: field 'score' must be a number, got '4'"):
        load_sts(write_jsonl(tmp_path / "sts.jsonl", [{"sentence1": "a", "sentence2": "b", "score": "4"}]))
    (tmp_path / "bad.jsonl").write_text('{"query": "a", "positive": "b"}\n{oops\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: invalid JSON"):
        load_retrieval(tmp_path / "bad.jsonl")
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_retrieval(tmp_path / "missing.jsonl")


def test_card_results_are_model_index_entries():
    from huggingface_hub import ModelCardData

    results = eval_results_for_card({"ndcg@10": 0.51234, "mrr@10": 0.4, "recall@1": 0.3})
    card = ModelCardData(model_name="m", eval_results=results).to_dict()
    metrics = card["model-index"][0]["results"][0]["metrics"]
    assert {m["type"]: m["value"] for m in metrics} == {"ndcg_at_10": 0.5123, "mrr_at_10": 0.4, "recall_at_1": 0.3}


def test_metrics_agree_with_sentence_transformers_information_retrieval_evaluator():
    """Our numbers for all-MiniLM-L6-v2 on part of the dev set match the library's evaluator."""
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
    from sentence_transformers.util import cos_sim

    full = load_retrieval(DEV_QUERIES, DEV_CORPUS)
    keep = sorted({i for rel in full.relevant[:40] for i in rel} | set(range(80)))  # positives + distractors
    remap = {old: new for new, old in enumerate(keep)}
    queries, relevant = full.queries[:40], [{remap[i] for i in rel} for rel in full.relevant[:40]]
    passages = [full.passages[i] for i in keep]
    model = load_sentence_transformer(minilm_path())
    ours = retrieval_metrics(EmbeddingSystem(model, "m").rank(queries, passages), relevant)
    library = InformationRetrievalEvaluator(
        queries={str(i): q for i, q in enumerate(queries)},
        corpus={str(i): p for i, p in enumerate(passages)},
        relevant_docs={str(i): {str(j) for j in rel} for i, rel in enumerate(relevant)},
        ndcg_at_k=[10],
        mrr_at_k=[10],
        accuracy_at_k=[1],
        precision_recall_at_k=[1],
        map_at_k=[10],
        score_functions={"cosine": cos_sim},
        name="dev",
    )(model)
    assert ours["ndcg@10"] == pytest.approx(library["dev_cosine_ndcg@10"], abs=1e-4)
    assert ours["mrr@10"] == pytest.approx(library["dev_cosine_mrr@10"], abs=1e-4)
    assert ours["recall@1"] == pytest.approx(library["dev_cosine_recall@1"], abs=1e-4)


def test_evaluate_embeddings_names_a_model_folder_it_cannot_read(tmp_path):
    import argparse

    from evaluate_embeddings import parse_model

    (tmp_path / "exported").mkdir(), (tmp_path / "exported" / "config.json").write_text("{}")
    assert parse_model(f"ours={tmp_path / 'exported'}") == ("ours", str(tmp_path / "exported"))
    for spec, message in [
        ("ours", "expects NAME=FOLDER"),
        (f"ours={tmp_path / 'missing'}", "--model ours: folder not found"),
        (f"ours={tmp_path}", "--model ours: .* holds no config.json"),
    ]:
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            parse_model(spec)

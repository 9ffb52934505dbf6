"""Corpus readers shared by tokenizer training, MLM pre-training and the contrastive stage.

Two sources of raw Spanish text:

* :func:`iter_texts` reads local files: ``.txt`` (one paragraph per line, empty lines skipped),
  ``.jsonl`` and ``.jsonl.gz`` (one JSON object per line with a text field, e.g. the shared
  ``es_corpus.jsonl.gz``). Bad input raises :class:`CorpusError` naming the file, the line and the
  field, so a broken line deep inside a multi-gigabyte file can be found and fixed.
* :func:`hub_documents` streams a Hugging Face ``datasets`` dataset (by default
  ``DEFAULT_DATASET``) without downloading it first; :func:`iter_dataset` yields its texts.

:func:`is_held_out` is the one held-out split of documents, by a hash of their text.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import zlib
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datasets import IterableDataset

DEFAULT_DATASET = "erickfmm/red_pajama_es_hq_35"  # what pre-training and tokenizer training stream by default
SUPPORTED_SUFFIXES = (".txt", ".jsonl", ".jsonl.gz")


class CorpusError(ValueError):
    """A corpus file or dataset record that cannot be read as text."""


def _check_max_documents(max_documents: int | None) -> None:
    if max_documents is not None and (
        isinstance(max_documents, bool) or not isinstance(max_documents, int) or max_documents < 1
    ):
        raise ValueError(f"max_documents must be a positive integer or None, got {max_documents!r}")


def _text_field(record: object, text_column: str, where: str) -> str:
    """Return ``record[text_column]`` if it is a string, else raise a CorpusError saying where."""
    if not isinstance(record, dict):
        raise CorpusError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if text_column not in record:
        raise CorpusError(f"{where}: missing field {text_column!r} (fields: {sorted(record)})")
    text = record[text_column]
    if not isinstance(text, str):
        raise CorpusError(f"{where}: field {text_column!r} must be a string, got {type(text).__name__}")
    return text


def _numbered_lines(path: str) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)`` of a UTF-8 text file, gzip-compressed if it ends in ``.gz``.

    Lines are read as bytes and decoded one by one, so a decoding error names its exact line.
    """
    opener = gzip.open if path.endswith(".gz") else open
    line_number = 0
    try:
        with opener(path, "rb") as handle:
            for line_number, raw in enumerate(handle, start=1):
                try:
                    yield line_number, raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise CorpusError(
                        f"{path}:{line_number}: not valid UTF-8 (byte {raw[err.start]:#04x} at byte offset "
                        f"{err.start} of the line); re-encode the file as UTF-8"
                    ) from err
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise CorpusError(f"{path}: corrupt or truncated gzip file after line {line_number}: {err}") from err


def iter_jsonl_records(path: str | os.PathLike) -> Iterator[tuple[str, dict]]:
    """Yield ``("<file>:<line>", record)`` for every non-empty line of a ``.jsonl`` / ``.jsonl.gz`` file.

    Raises :class:`CorpusError` naming the file and line for invalid UTF-8, a corrupt gzip stream, invalid
    JSON or a line that is not a JSON object; :class:`FileNotFoundError` for a missing file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"file not found: {path}")
    for line_number, line in _numbered_lines(path):
        if not line.strip():
            continue
        where = f"{path}:{line_number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise CorpusError(f"{where}: invalid JSON ({err.msg} at column {err.colno})") from err
        if not isinstance(record, dict):
            raise CorpusError(f"{where}: expected a JSON object, got {type(record).__name__}")
        yield where, record


def check_corpus_file(path: str | os.PathLike) -> str:
    """`path` as a string, after failing on an unsupported file type or a missing file."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise CorpusError(f"{path}: a folder, not a corpus file; give the files in it (e.g. {path}/*.jsonl.gz)")
    if not path.endswith(SUPPORTED_SUFFIXES):
        raise CorpusError(f"{path}: unsupported file type; expected one of {', '.join(SUPPORTED_SUFFIXES)}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"corpus file not found: {path}")
    return path


def iter_texts(
    path: str | os.PathLike,
    text_column: str = "text",
    max_documents: int | None = None,
) -> Iterator[str]:
    """Yield the texts of a ``.txt``, ``.jsonl`` or ``.jsonl.gz`` file, at most ``max_documents`` of them.

    ``.txt``: each non-empty line is one text (the trailing newline is removed).
    ``.jsonl`` / ``.jsonl.gz``: each non-empty line is a JSON object whose ``text_column`` field is
    one text (a document; it may contain newlines between paragraphs).
    """
    _check_max_documents(max_documents)
    path = check_corpus_file(path)
    is_jsonl = not path.endswith(".txt")

    def texts() -> Iterator[str]:
        if is_jsonl:
            for where, record in iter_jsonl_records(path):
                yield _text_field(record, text_column, where)
            return
        for _, line in _numbered_lines(path):
            line = line.rstrip("\r\n")
            if line.strip():
                yield line

    yield from islice(texts(), max_documents)


def hub_documents(
    name: str = DEFAULT_DATASET,
    config_name: str | None = None,
    split: str = "train",
    text_column: str = "text",
    **load_kwargs,
) -> IterableDataset:
    """Stream a ``datasets`` dataset as ``{"text": str}`` records: its ``text_column``, renamed.

    The dataset is opened with ``streaming=True``, so nothing is downloaded up front. ``load_kwargs`` go to
    ``datasets.load_dataset`` (e.g. ``data_files=`` for the local ``"json"`` builder).
    """
    from datasets import load_dataset  # imported here: reading local files does not need `datasets`

    try:
        dataset = load_dataset(name, config_name, split=split, streaming=True, **load_kwargs)
    except ConnectionError as error:  # no network, or HF_HUB_OFFLINE=1
        raise CorpusError(
            f"dataset {name!r}: {error}. Without the Hub, train on local files instead: --train_file FILE ... "
            "(.txt: one document per line, .jsonl, .jsonl.gz), e.g. --train_file data/es_corpus_sample.txt"
        ) from error
    columns = dataset.column_names
    if columns is not None and text_column not in columns:
        raise CorpusError(
            f"dataset {name!r} ({split}) record 0: missing field {text_column!r}; the dataset has no column "
            f"{text_column!r}, only {columns}"
        )
    dataset = dataset.select_columns([text_column])
    return dataset.rename_column(text_column, "text") if text_column != "text" else dataset


def iter_dataset(
    dataset_name: str = DEFAULT_DATASET,
    split: str = "train",
    text_column: str = "text",
    max_documents: int | None = None,
    **load_kwargs,
) -> Iterator[str]:
    """The texts of :func:`hub_documents`, at most ``max_documents`` (only that many records are read)."""
    _check_max_documents(max_documents)
    documents = hub_documents(dataset_name, split=split, text_column=text_column, **load_kwargs)
    for index, document in enumerate(islice(documents, max_documents)):
        # Named as the dataset names it: hub_documents renamed the column to "text".
        where = f"dataset {dataset_name!r} ({split}) record {index}"
        yield _text_field({text_column: document["text"]}, text_column, where)


def document_id(text: str) -> str:
    """A stable id of a document: the hash of its text."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def is_held_out(text: str, fraction: float) -> bool:
    """Whether a document falls in the held-out `fraction`, by a hash of its text: the same document lands on the
    same side in any order, on any machine. The bundled retrieval dev set (data/retrieval_dev) was split with it."""
    return int(document_id(text)[:8], 16) / 0xFFFFFFFF < fraction


def iter_corpus(
    sources: str | os.PathLike | Iterable[str | os.PathLike],
    text_column: str = "text",
    max_documents: int | None = None,
) -> Iterator[str]:
    """Yield texts from one file or several files in turn, ``max_documents`` in total."""
    _check_max_documents(max_documents)
    paths = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    if not paths:
        raise ValueError("no corpus files given")
    texts = (text for path in paths for text in iter_texts(path, text_column=text_column))
    yield from islice(texts, max_documents)

"""Tests of the corpus readers (spanish_moe_bert/corpus.py): formats, caps and errors naming file/line/field."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gzip
import json

import pytest

from spanish_moe_bert.corpus import CorpusError, iter_corpus, iter_dataset, iter_texts

DOCS = [{"text": "¿Qué tal?\nMuy bien.", "source": "a"}, {"text": "Año nuevo, vida nueva.", "source": "b"}]


def write_jsonl(path, records, compress=False):
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    path.write_bytes(gzip.compress(lines) if compress else lines)
    return path


def test_txt_one_paragraph_per_line_skipping_blank_lines(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("Primera línea.\n\n   \nSegunda, con ñ.\r\nTercera", encoding="utf-8")
    assert list(iter_texts(path)) == ["Primera línea.", "Segunda, con ñ.", "Tercera"]
    assert list(iter_texts(path, max_documents=2)) == ["Primera línea.", "Segunda, con ñ."]


@pytest.mark.parametrize("compress", [False, True])
def test_jsonl_and_jsonl_gz_yield_the_text_field(tmp_path, compress):
    path = write_jsonl(tmp_path / ("c.jsonl.gz" if compress else "c.jsonl"), DOCS, compress)
    assert list(iter_texts(path)) == [d["text"] for d in DOCS]
    assert list(iter_texts(path, text_column="source")) == ["a", "b"]
    assert list(iter_texts(path, max_documents=1)) == [DOCS[0]["text"]]


def test_missing_file_and_unsupported_type(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        list(iter_texts(tmp_path / "nope.txt"))
    with pytest.raises(CorpusError, match=r"a folder, not a corpus file; give the files in it \(e\.g\. .*/\*\.jsonl"):
        list(iter_texts(tmp_path))
    (tmp_path / "c.csv").write_text("a,b")
    with pytest.raises(CorpusError, match=r"c\.csv: unsupported file type; expected one of .txt, .jsonl, .jsonl.gz"):
        list(iter_texts(tmp_path / "c.csv"))


def test_non_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("uno\ndos\nca\u00f1a\n".encode("latin-1"))
    with pytest.raises(CorpusError, match=r"latin1\.txt:3: not valid UTF-8 \(byte 0xf1 at byte offset 2"):
        list(iter_texts(path))


def test_corrupt_and_truncated_gzip(tmp_path):
    garbage = tmp_path / "garbage.jsonl.gz"
    garbage.write_bytes(b"this is not gzip data at all")
    with pytest.raises(CorpusError, match=r"garbage\.jsonl\.gz: corrupt or truncated gzip"):
        list(iter_texts(garbage))
    truncated = tmp_path / "cut.jsonl.gz"
    full = gzip.compress("".join(json.dumps({"text": f"texto {i}"}) + "\n" for i in range(5000)).encode())
    truncated.write_bytes(full[: len(full) // 2])
    with pytest.raises(CorpusError, match=r"cut\.jsonl\.gz: corrupt or truncated gzip file after line \d+"):
        list(iter_texts(truncated))


def test_bad_json_names_line(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "bien"}\n{"text": "mal"\n', encoding="utf-8")
    with pytest.raises(CorpusError, match=r"c\.jsonl:2: invalid JSON"):
        list(iter_texts(path))


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"body": "x"}, r":2: missing field 'text' \(fields: \['body'\]\)"),
        ({"text": 42}, r":2: field 'text' must be a string, got int"),
        ({"text": None}, r":2: field 'text' must be a string, got NoneType"),
        (["text"], r":2: expected a JSON object, got list"),
    ],
)
def test_bad_text_field_names_line_and_field(tmp_path, record, message):
    path = write_jsonl(tmp_path / "c.jsonl", [{"text": "bien"}, record])
    texts = iter_texts(path)
    assert next(texts) == "bien"  # records before the bad one are still delivered
    with pytest.raises(CorpusError, match=r"c\.jsonl" + message):
        next(texts)


@pytest.mark.parametrize("bad", [0, -3, 2.5, "10", True])
def test_max_documents_must_be_a_positive_integer(tmp_path, bad):
    path = write_jsonl(tmp_path / "c.jsonl", DOCS)
    with pytest.raises(ValueError, match="max_documents must be a positive integer or None"):
        list(iter_texts(path, max_documents=bad))


def test_iter_corpus_chains_files_with_one_cap(tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_text("uno\ndos\n", encoding="utf-8")
    jsonl = write_jsonl(tmp_path / "b.jsonl.gz", DOCS, compress=True)
    assert list(iter_corpus([txt, jsonl])) == ["uno", "dos", *(d["text"] for d in DOCS)]
    assert list(iter_corpus([txt, jsonl], max_documents=3)) == ["uno", "dos", DOCS[0]["text"]]
    with pytest.raises(ValueError, match="no corpus files given"):
        list(iter_corpus([]))


def test_streaming_dataset_with_cap_and_field_errors(tmp_path):
    # The real code path (datasets.load_dataset(..., streaming=True)) on a local JSON dataset.
    path = write_jsonl(tmp_path / "d.jsonl", [*DOCS, {"text": 7}])
    assert list(iter_dataset("json", data_files=str(path), max_documents=2)) == [d["text"] for d in DOCS]
    with pytest.raises(CorpusError, match=r"dataset 'json' \(train\) record 2: field 'text' must be a string"):
        list(iter_dataset("json", data_files=str(path)))
    with pytest.raises(CorpusError, match=r"record 0: missing field 'contenido'"):
        list(iter_dataset("json", data_files=str(path), text_column="contenido"))

"""Pair builders: deterministic, shaped as documented, and never leaking held-out documents into training."""

import json
import random
from pathlib import Path

import pytest

from spanish_moe_bert.corpus import is_held_out
from spanish_moe_bert.pairs import (
    HeldOutParagraphs,
    PairConfig,
    build_dev_set,
    build_pairs,
    crop_pairs,
    heading_pairs,
    mine_bm25_negatives,
    neighbour_pairs,
    paragraph_key,
    paragraphs,
    read_labelled_pairs,
    section_pairs,
)

REPO = Path(__file__).resolve().parents[1]
DEV_DIR = REPO / "data" / "retrieval_dev"

TOPICS = ["gato", "perro", "celda", "tabla", "fuente", "imagen", "macro", "hoja", "rango", "filtro"]


def make_document(i: int) -> str:
    """A synthetic help page: a short summary line, then a few paragraphs naming its topic and number."""
    topic = TOPICS[i % len(TOPICS)]
    lead = f"Configura la {topic} número {i} del documento."
    body = [
        f"La {topic} {i} se puede modificar desde el menú Formato cuando el documento {i} está abierto y activo.",
        f"Pulse el botón Aceptar para guardar los cambios de la {topic} {i} y cerrar el diálogo de opciones.",
        f"Si la {topic} {i} no aparece, compruebe que la vista {i} muestra todos los elementos ocultos de la página.",
    ]
    return "\n".join([lead, *body])


DOCUMENTS = [make_document(i) for i in range(200)]


def test_same_seed_same_pairs_and_other_seed_other_pairs():
    first = build_pairs(DOCUMENTS, seed=3)
    assert first == build_pairs(DOCUMENTS, seed=3)
    assert first != build_pairs(DOCUMENTS, seed=4)
    assert {p["anchor"] for p in first} & {p["anchor"] for p in build_pairs(DOCUMENTS, seed=4)}


def test_crops_are_word_spans_of_one_window_within_the_length_ratios():
    config = PairConfig(crop_window_words=20, crops_per_document=5)
    text = " ".join(f"w{i}" for i in range(100))
    pairs = crop_pairs(text, random.Random(0), config)
    assert len(pairs) == 5
    for pair in pairs:
        spans = [[int(w[1:]) for w in pair[side].split()] for side in ("anchor", "positive")]
        for span in spans:
            assert span == list(range(span[0], span[0] + len(span)))  # contiguous
            assert config.min_words <= len(span) <= round(config.crop_max_ratio * config.crop_window_words)
        assert max(spans[0] + spans[1]) - min(spans[0] + spans[1]) < config.crop_window_words  # same window


def test_neighbours_are_consecutive_paragraphs_and_capped_per_document():
    doc = DOCUMENTS[7]
    paras = paragraphs(doc)
    pairs = neighbour_pairs(doc, random.Random(0), PairConfig(neighbours_per_document=2))
    assert len(pairs) == 2
    for pair in pairs:
        assert paras.index(pair["positive"]) == paras.index(pair["anchor"]) + 1
    assert neighbour_pairs("una sola frase de un documento corto", random.Random(0)) == []


def test_heading_is_the_title_field_or_a_short_lead_paragraph():
    doc = DOCUMENTS[5]
    (pair,) = heading_pairs(doc, random.Random(0))
    assert pair["anchor"] == paragraphs(doc)[0]
    assert pair["positive"] == " ".join(paragraphs(doc)[1:])
    (titled,) = heading_pairs(doc, random.Random(0), title="Opciones de imagen")
    assert titled["anchor"] == "Opciones de imagen" and titled["positive"].startswith("Configura")
    long_lead = " ".join(["palabra"] * 40) + "\n" + "\n".join(paragraphs(doc)[1:])
    assert heading_pairs(long_lead, random.Random(0)) == []


def make_sectioned_document(i: int, sections: int = 4) -> str:
    """A help page with a summary line, then several sub-headed sections of two long paragraphs each."""
    topic = TOPICS[i % len(TOPICS)]
    parts = [f"Configura la {topic} número {i} del documento."]
    for s in range(sections):
        parts += [
            f"Opciones de la {topic} {s}",
            f"La opción {s} de la {topic} {i} cambia el aspecto de todas las páginas del documento abierto.",
            f"Pulse Aceptar para aplicar la opción {s} a la {topic} {i} y cerrar el diálogo de opciones.",
        ]
    return "\n".join(parts)


def test_sections_are_short_inner_paragraphs_and_the_text_after_them_capped_per_document():
    doc = make_sectioned_document(3)
    paras = paragraphs(doc)
    pairs = section_pairs(doc, random.Random(0), PairConfig(sections_per_document=3))
    assert len(pairs) == 3 and len({p["anchor"] for p in pairs}) == 3
    for pair in pairs:
        assert pair["anchor"] != paras[0]  # the lead is heading_pairs' anchor, not a section
        i = paras.index(pair["anchor"])
        assert i > 0 and len(pair["anchor"].split()) <= PairConfig.max_title_words
        assert " ".join(paras[i + 1 :]).startswith(pair["positive"])  # the text that follows, cut
    capped = section_pairs(doc, random.Random(0), PairConfig(sections_per_document=3, max_body_words=20))
    assert all(len(p["positive"].split()) == 20 for p in capped)
    # a short paragraph needs 4 * min_words words after it: here only the first sub-heading has them
    long = " ".join(f"palabra{w}" for w in range(25))
    short_tail = "\n".join(["Resumen del documento.", "Sección uno", long, "Sección dos", "solo tres palabras"])
    (only,) = section_pairs(short_tail, random.Random(0), PairConfig(sections_per_document=9))
    assert only["anchor"] == "Sección uno" and only["positive"].startswith("palabra0")
    assert section_pairs(DOCUMENTS[0], random.Random(0), PairConfig(sections_per_document=0)) == []


def test_every_pair_is_tagged_with_the_builder_that_made_it():
    docs = [make_sectioned_document(i) for i in range(20)]
    pairs = build_pairs(docs, kinds=["heading", "section"], config=PairConfig(sections_per_document=3))
    assert sum(p["kind"] == "heading" for p in pairs) == 20 and sum(p["kind"] == "section" for p in pairs) == 60
    leads = {paragraphs(d)[0] for d in docs}
    assert all((p["anchor"] in leads) == (p["kind"] == "heading") for p in pairs)


def test_unknown_pair_kind_is_named():
    with pytest.raises(ValueError, match="unknown pair kind.*'titles'"):
        build_pairs(DOCUMENTS, kinds=["crop", "titles"])


def test_no_text_of_a_held_out_document_reaches_the_training_pairs():
    records = [{"text": d, "source": "toy", "license": "MPL-2.0"} for d in DOCUMENTS]
    queries, corpus, keys = build_dev_set(records, fraction=0.2)
    held_docs = [d for d in DOCUMENTS if is_held_out(d, 0.2)]
    assert 10 < len(held_docs) < 80 and len(queries) == len(held_docs) == len(corpus)
    pairs = build_pairs(DOCUMENTS, held_out=HeldOutParagraphs(keys), seed=0)
    assert pairs
    # every held-out document is identified by its number, which appears in each of its sentences
    held_numbers = {int(paragraphs(d)[0].split("número ")[1].split()[0]) for d in held_docs}
    for pair in pairs:
        for text in (pair["anchor"], pair["positive"]):
            numbers = {int(w) for w in text.replace(".", " ").split() if w.isdigit()}
            assert not numbers & held_numbers, (text, numbers & held_numbers)
    # the split is a property of each document, not of its position in the corpus
    assert build_dev_set(reversed(records), fraction=0.2)[2] == keys


def test_bundled_dev_set_is_consistent_and_excluded_from_the_demo_corpus():
    held = HeldOutParagraphs.from_file(DEV_DIR / "heldout_paragraphs.txt")
    queries = [json.loads(line) for line in (DEV_DIR / "queries.jsonl").read_text(encoding="utf-8").splitlines()]
    assert all(paragraph_key(q["query"]) in held.keys for q in queries)
    sample_lines = (REPO / "data" / "es_corpus_sample.txt").read_text(encoding="utf-8").splitlines()
    sample = [line for line in sample_lines if line]
    kept = held.filter(sample)
    assert 0 < len(sample) - len(kept) < len(sample) // 5  # the demo corpus has dev paragraphs; they go
    dev_leads = {q["query"] for q in queries}
    assert not dev_leads & set(kept)


def write(tmp_path, lines, name="pairs.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_labelled_pairs_are_read_with_or_without_negatives(tmp_path):
    rows = [{"anchor": "¿Cómo guardo?", "positive": "Pulse Guardar.", "negative": "Pulse Imprimir."}] * 2
    pairs = read_labelled_pairs(write(tmp_path, [json.dumps(r) for r in rows]))
    assert [p["negative"] for p in pairs] == ["Pulse Imprimir."] * 2
    assert "negative" not in read_labelled_pairs(write(tmp_path, ['{"anchor": "a b", "positive": "c d"}']))[0]


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"anchor": "a", "positive": "b"}', "{not json"], r"pairs.jsonl:2: invalid JSON"),
        (['{"anchor": "a"}'], r"pairs.jsonl:1: field 'positive' must be a non-empty string, got None"),
        (['{"anchor": "a", "positive": 3}'], r"pairs.jsonl:1: field 'positive' must be a non-empty string, got 3"),
        (
            ['{"anchor": "a", "positive": "b"}', '{"anchor": "a", "positive": "b", "negative": "c"}'],
            r"pairs.jsonl:2: field 'negative' is present",
        ),
        (['["a", "b"]'], r"pairs.jsonl:1: expected a JSON object"),
        ([""], r"no pairs found"),
    ],
)
def test_labelled_pairs_errors_name_file_line_and_field(tmp_path, lines, message):
    with pytest.raises(ValueError, match=message):
        read_labelled_pairs(write(tmp_path, lines))


def test_bm25_negatives_are_lexically_close_and_from_another_document():
    pairs = build_pairs(DOCUMENTS[:60], kinds=["heading"], seed=0)
    mined = mine_bm25_negatives(pairs, top_k=1, seed=0)
    assert mined == mine_bm25_negatives(pairs, top_k=1, seed=0)
    for pair in mined:
        assert pair["negative"] != pair["positive"]
        assert pair["negative"] not in {p["positive"] for p in pairs if p["doc"] == pair["doc"]}
    # with top_k=1 the negative is the best other-document match: a page on the same topic
    same_topic = sum(pair["anchor"].split()[2] in pair["negative"] for pair in mined)
    assert same_topic / len(mined) > 0.9

"""Tests of the Spanish SentencePiece-BPE tokenizer (tokenization_spanish_moe_bert.py, train_tokenizer.py).

One small tokenizer (2,000 tokens) is trained once per session on the bundled demo corpus; the
fast/slow equivalence and round-trip tests also read the passages and queries of the bundled retrieval dev set,
mostly text the tokenizer never saw. All data comes from the repository: a fresh clone has nothing beside it.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gzip
import json
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

import train_tokenizer
from spanish_moe_bert.corpus import iter_texts
from tokenization_spanish_moe_bert import (
    BYTE_TOKENS,
    RESERVED_TOKENS,
    SPACE,
    SpanishSPMTokenizer,
    SpanishSPMTokenizerSlow,
)

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "es_corpus_sample.txt"
RETRIEVAL_DEV = REPO / "data" / "retrieval_dev"
VOCAB_SIZE = 2000

# Edge cases the bundled text (software manuals, a Bible) has few or none of: emoji, URLs, numbers.
EDGE_TEXTS = [
    "¿Dónde está la estación? ¡Por allí, señora Muñoz! 🚉😀",
    "Visita https://es.wikipedia.org/wiki/Año_Nuevo?uso=1&lang=es#Historia para más información.",
    "El 1.º de enero de 2024 costaba 1.234.567,89 € (un 12,5 % más) — ¡qué caro! 👍🏽",
    "Pingüino, cigüeña, ÑANDÚ, árbol, corazón, él, acción.",
    "Correo: josé.pérez@ejemplo.es · Teléfono +34 912 345 678",
    "Combinado: cafe\u0301 y cafÉ\u0301; bandera 🇪🇸 y familia 👨‍👩‍👧.",
    "  dos espacios al inicio y    varios en medio  ",
    "Tabulador\tsalto\nde línea\r\nfinal",
    "0000000 aaaaaaa ñññññ 1111",
    "中文 русский ελληνικά العربية עברית",
]


def expected_round_trip(text: str) -> str:
    """What decode(encode(text)) returns, as documented in tokenization_spanish_moe_bert."""
    text = unicodedata.normalize("NFC", text).replace(SPACE, " ")
    return text[1:] if text.startswith(" ") else text


@pytest.fixture(scope="session")
def saved_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tokenizer")
    SpanishSPMTokenizer.train_new(SAMPLE, vocab_size=VOCAB_SIZE).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tokenizer(saved_dir):
    return SpanishSPMTokenizer.from_pretrained(saved_dir)


@pytest.fixture(scope="session")
def slow_tokenizer(saved_dir):
    return SpanishSPMTokenizerSlow.from_pretrained(saved_dir)


@pytest.fixture(scope="session")
def real_paragraphs():
    """About 6,300 real texts (1.9M characters): the 5,441 paragraphs the tokenizer was trained on, then the 834
    passages and queries of the retrieval dev set (passages of up to 200 words, three quarters of them not in the
    training text), then the edge cases."""
    held_out = [*iter_texts(RETRIEVAL_DEV / "corpus.jsonl"), *iter_texts(RETRIEVAL_DEV / "queries.jsonl", "query")]
    return [*iter_texts(SAMPLE), *held_out, *EDGE_TEXTS]


def test_vocabulary_layout(tokenizer):
    vocab = tokenizer.get_vocab()
    assert len(tokenizer) == VOCAB_SIZE
    assert [tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.cls_token_id] == [0, 1, 2]
    assert [tokenizer.sep_token_id, tokenizer.mask_token_id] == [3, 4]
    assert [vocab[token] for token in BYTE_TOKENS] == list(range(5, 261))
    assert tokenizer.model_max_length == 512
    assert tokenizer.is_fast


def test_single_and_pair_get_bert_special_tokens(tokenizer):
    single = tokenizer("¿Qué tal?")
    assert single["input_ids"][0] == tokenizer.cls_token_id and single["input_ids"][-1] == tokenizer.sep_token_id
    assert set(single["token_type_ids"]) == {0}

    first = tokenizer.encode("Hola.", add_special_tokens=False)
    second = tokenizer.encode("Adiós.", add_special_tokens=False)
    pair = tokenizer("Hola.", "Adiós.")
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    assert pair["input_ids"] == [cls, *first, sep, *second, sep]
    assert pair["token_type_ids"] == [0] * (len(first) + 2) + [1] * (len(second) + 1)


def test_spanish_words_keep_case_and_accents(tokenizer):
    tokens = tokenizer.tokenize("Él dijo: ¿Señor?")
    assert tokenizer.convert_tokens_to_string(tokens) == "Él dijo: ¿Señor?"
    assert "".join(tokens) == f"{SPACE}Él{SPACE}dijo:{SPACE}¿Señor?"  # no lowercasing, no accent stripping
    assert tokenizer.tokenize("año") != tokenizer.tokenize("ano")


def test_punctuation_is_never_part_of_a_word_piece(tokenizer):
    # "tabla", "tabla," and "(tabla)" share the word's pieces; a "▁" before punctuation stays with it.
    word = tokenizer.tokenize("una tabla")[1:]
    assert tokenizer.tokenize("una tabla, otra")[1 : 1 + len(word) + 1] == [*word, ","]
    assert tokenizer.tokenize("una tabla.")[1:] == [*word, "."]
    assert tokenizer.tokenize("¿Cómo?")[:1] == [f"{SPACE}¿"] and tokenizer.tokenize("¿Cómo?")[-1] == "?"
    assert tokenizer.tokenize("(a).")[-2:] == [")", "."]
    # No learned piece mixes a punctuation character with anything but the "▁" before it.
    learned = [t for t, i in tokenizer.get_vocab().items() if i >= len(RESERVED_TOKENS)]
    punctuation = [t for t in learned if any(unicodedata.category(c).startswith("P") for c in t)]
    assert punctuation and all(len(t.removeprefix(SPACE)) == 1 for t in punctuation), punctuation[:10]


def test_mask_token_absorbs_the_space_before_it(tokenizer):
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("El [MASK] es bueno.")["input_ids"])
    assert tokens[:4] == ["[CLS]", f"{SPACE}El", "[MASK]", f"{SPACE}es"]


def assert_spans_hold_their_pieces(tokenizer, encoded, sources, row: int | None = None) -> int:
    """Every piece's `offset_mapping` span (of batch row `row`) is the piece's own text: no space before it (the "▁"
    stands for one), and the same characters. Byte pieces and whitespace are skipped. Returns how many pieces
    were checked."""
    checked = 0
    ids, offsets = (encoded[key] if row is None else encoded[key][row] for key in ("input_ids", "offset_mapping"))
    tokens = tokenizer.convert_ids_to_tokens(list(ids))
    for token, (start, end), sequence in zip(tokens, offsets, encoded.sequence_ids(row or 0)):
        start, end = int(start), int(end)
        if sequence is None or token in BYTE_TOKENS or not token.strip(SPACE).strip():
            continue
        span = sources[sequence][start:end]
        expected = "[MASK]" if token == "[MASK]" else token.removeprefix(SPACE)
        # (the Rust normalizer maps a composed character to its first code point: "e" + U+0301 -> "é" spans "e")
        nfd = unicodedata.normalize("NFD", span)
        assert nfd and unicodedata.normalize("NFD", expected).startswith(nfd), (token, span, sources[sequence])
        checked += 1
    return checked


def test_offsets_start_at_the_word_not_at_the_space_before_it(tokenizer, real_paragraphs):
    text = "vive en Madrid"
    encoded = tokenizer(text, return_offsets_mapping=True)
    tokens = tokenizer.convert_ids_to_tokens(encoded["input_ids"])
    assert encoded["offset_mapping"][tokens.index(f"{SPACE}en")] == (5, 7)  # "en", not " en"
    edge = [
        assert_spans_hold_their_pieces(tokenizer, tokenizer(t, return_offsets_mapping=True), (t,)) for t in EDGE_TEXTS
    ]
    assert sum(edge) > 100
    batch = tokenizer(real_paragraphs, return_offsets_mapping=True)
    assert sum(assert_spans_hold_their_pieces(tokenizer, batch, (t,), i) for i, t in enumerate(real_paragraphs)) > 1e5
    # "[MASK]" swallows the space before it (lstrip), its span does not.
    masked = "El [MASK] es  bueno."
    encoded = tokenizer(masked, return_offsets_mapping=True)
    assert assert_spans_hold_their_pieces(tokenizer, encoded, (masked,)) == 6  # El [MASK] es b ueno .
    # A span of whitespace alone keeps its characters: the lone "▁" of a double space, a leading space.
    tokens = tokenizer.convert_ids_to_tokens(encoded["input_ids"])
    assert masked[slice(*encoded["offset_mapping"][tokens.index(SPACE)])] == " "
    assert tokenizer(" Hola", return_offsets_mapping=True)["offset_mapping"][1][0] == 1


def test_offsets_of_pairs_batches_tensors_and_overflowing_windows(tokenizer):
    question, context = "¿Dónde vive?", "Vive en Madrid, en una casa grande cerca del río Manzanares."
    pair = tokenizer(question, context, return_offsets_mapping=True)
    assert assert_spans_hold_their_pieces(tokenizer, pair, (question, context)) >= 12
    tensors = tokenizer([question, "Hola"], [context, "mundo"], padding=True, return_offsets_mapping=True,
                        return_tensors="pt")  # fmt: skip
    assert tensors["offset_mapping"].shape == (*tensors["input_ids"].shape, 2)
    assert tensors["offset_mapping"][0, : len(pair["input_ids"])].tolist() == [list(o) for o in pair["offset_mapping"]]
    assert tokenizer(question, return_offsets_mapping=True, return_tensors="pt")["offset_mapping"].shape[0] == 1
    # Question answering's sliding windows (transformers' run_qa.py): each window's spans are in the context.
    windows = tokenizer(question, context, truncation="only_second", max_length=16, stride=4,
                        return_overflowing_tokens=True, return_offsets_mapping=True)  # fmt: skip
    assert len(windows["input_ids"]) > 2 and set(windows["overflow_to_sample_mapping"]) == {0}
    for i in range(len(windows["input_ids"])):
        assert assert_spans_hold_their_pieces(tokenizer, windows, (question, context), i) > 5
    batched_windows = tokenizer([question, "¿Y tú?"], [context, context], truncation="only_second", max_length=16,
                                stride=4, return_overflowing_tokens=True, return_offsets_mapping=True)  # fmt: skip
    for i, sample in enumerate(batched_windows["overflow_to_sample_mapping"]):
        questions = (question, "¿Y tú?")[sample]
        assert assert_spans_hold_their_pieces(tokenizer, batched_windows, (questions, context), i) > 2


def test_transformers_whole_word_masking_masks_words(tokenizer):
    """transformers' collator finds words by gaps between offsets: with spans that began at the space, a whole text
    was one word, masked entirely or not at all."""
    from transformers import DataCollatorForLanguageModeling

    text = "El perro de María come pan en la cocina grande, ¿verdad?"
    features = [tokenizer(text, return_offsets_mapping=True, return_special_tokens_mask=True)] * 8
    tokens = tokenizer.convert_ids_to_tokens(features[0]["input_ids"])
    words, word_of = 0, []  # a word starts at each "▁"; punctuation joins the word before it
    for token in tokens:
        words += token.startswith(SPACE)
        word_of.append(None if token in ("[CLS]", "[SEP]") else words)
    assert words == len(text.split())
    collator = DataCollatorForLanguageModeling(
        tokenizer, mlm_probability=0.3, whole_word_mask=True, mask_replace_prob=1.0, random_replace_prob=0.0, seed=0
    )
    masked = collator(features)["labels"] != -100
    masked_words = []
    for row in masked.tolist():
        chosen = {w for w, m in zip(word_of, row) if m}
        assert all(m == (w in chosen) for w, m in zip(word_of, row) if w is not None), row  # all of a word or none
        masked_words.append(len(chosen))
    assert 0 < sum(masked_words) / len(masked_words) < words and max(masked_words) < words, masked_words


def test_token_classification_pipeline_entities_start_at_their_words(tokenizer):
    from transformers import pipeline

    from configuration_spanish_moe_bert import SpanishMoEBertConfig
    from modeling_spanish_moe_bert import SpanishMoEBertForTokenClassification

    labels = ["O", "B-PER", "I-PER"]
    config = SpanishMoEBertConfig.from_json_file(REPO / "configs" / "tiny.json")
    config.update({"vocab_size": len(tokenizer), "id2label": dict(enumerate(labels))})
    model = SpanishMoEBertForTokenClassification(config).eval()
    with torch.no_grad():  # every piece a person of its own: one entity per piece
        model.classifier.bias.copy_(torch.tensor([0.0, 50.0, 0.0]))
    ner = pipeline("token-classification", model=model, tokenizer=tokenizer, aggregation_strategy="simple")
    sentence = "Ayer María Pérez habló con Juan en Madrid."
    entities = ner(sentence)
    assert len(entities) == len(tokenizer.tokenize(sentence))
    assert [sentence[e["start"] : e["end"]] for e in entities] == [e["word"] for e in entities]  # no " María"


def test_round_trip_on_real_spanish(tokenizer, real_paragraphs):
    encodings = tokenizer(real_paragraphs)["input_ids"]
    decoded = tokenizer.batch_decode(encodings, skip_special_tokens=True)
    assert decoded == [expected_round_trip(text) for text in real_paragraphs]
    # Spanish prose without a leading space comes back byte for byte.
    assert decoded[: -len(EDGE_TEXTS)] == real_paragraphs[: -len(EDGE_TEXTS)]


# Assigned code points only: Python's unicodedata (Unicode 14) and the Rust NFC may disagree on
# characters that later Unicode versions assigned. Lone surrogates are tested separately.
unicode_text = st.text(st.characters(exclude_categories=("Cs", "Cn")), max_size=200)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=unicode_text)
def test_round_trip_property_random_unicode(tokenizer, text):
    assume(not any(token in text for token in tokenizer.all_special_tokens))  # exception (c) of the docs
    ids = tokenizer.encode(text)
    assert tokenizer.unk_token_id not in ids  # byte fallback: no [UNK] for any input
    assert tokenizer.decode(ids, skip_special_tokens=True) == expected_round_trip(text)


def test_fast_and_slow_give_identical_ids(tokenizer, slow_tokenizer, real_paragraphs):
    assert len(real_paragraphs) > 6000 and sum(map(len, real_paragraphs)) > 1_800_000
    for mark in ("¿", "¡", "ñ", "é", "http", "😀"):
        assert any(mark in text for text in real_paragraphs), mark
    fast_ids = tokenizer(real_paragraphs)["input_ids"]
    slow_ids = slow_tokenizer(real_paragraphs)["input_ids"]
    mismatches = [text for text, a, b in zip(real_paragraphs, fast_ids, slow_ids) if a != b]
    assert mismatches == []
    assert slow_tokenizer.batch_decode(slow_ids, skip_special_tokens=True) == tokenizer.batch_decode(
        fast_ids, skip_special_tokens=True
    )


@pytest.mark.parametrize("text", ["", "   ", "[CLS]Hola", "El [MASK] es", f"{SPACE}Hola", " Hola"])
def test_fast_and_slow_agree_on_edge_cases(tokenizer, slow_tokenizer, text):
    assert tokenizer(text, "y otra")["input_ids"] == slow_tokenizer(text, "y otra")["input_ids"]


def test_encode_keeps_hugging_face_semantics(tokenizer):
    text = "¿Cómo estás?"
    ids = tokenizer.encode(text)
    assert isinstance(ids, list) and ids == tokenizer(text)["input_ids"]
    tensor = tokenizer.encode(text, return_tensors="pt")
    assert isinstance(tensor, torch.Tensor) and tensor.tolist() == [ids]
    # The seed's `encode(text, return_tensors="pt")` dict is what calling the tokenizer returns.
    batch = tokenizer(text, return_tensors="pt")
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask"}
    assert batch["input_ids"].tolist() == [ids] and batch["attention_mask"].tolist() == [[1] * len(ids)]


def test_padding_and_truncation(tokenizer):
    batch = tokenizer(["Hola.", "Una frase bastante más larga que la otra."], padding=True, return_tensors="pt")
    assert batch["input_ids"].shape[0] == 2 and batch["input_ids"][0, -1] == tokenizer.pad_token_id
    assert batch["attention_mask"][0].sum() < batch["attention_mask"][1].sum()
    long = tokenizer("palabra " * 2000, truncation=True)["input_ids"]
    assert len(long) == 512 and long[-1] == tokenizer.sep_token_id


def test_empty_and_whitespace_only_input(tokenizer):
    assert tokenizer("")["input_ids"] == [tokenizer.cls_token_id, tokenizer.sep_token_id]
    ids = tokenizer.encode("   ", add_special_tokens=False)
    assert tokenizer.convert_ids_to_tokens(ids) == [SPACE] * 3
    assert tokenizer.decode(ids) == "  "  # the first space is the word-start marker


def test_one_megabyte_string(tokenizer):
    text = ("¿Qué es la vida? Un frenesí. ¡Sueño de Segismundo! " * 20000)[: 1 << 20]
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) > 100_000
    assert tokenizer.decode(ids) == text


def test_lone_surrogate_is_a_clear_error(tokenizer, slow_tokenizer):
    for tok in (tokenizer, slow_tokenizer):
        with pytest.raises(ValueError, match="lone surrogate U\\+D800 at index 4"):
            tok("Hola\ud800")
    with pytest.raises(ValueError, match="lone surrogate"):
        tokenizer(["bien", "mal\udfff"])


@pytest.mark.parametrize("bad", [123, b"bytes", [1, 2], None])
def test_non_string_input_is_rejected(tokenizer, bad):
    with pytest.raises((ValueError, TypeError)):
        tokenizer(bad)


def test_saved_folder_has_what_a_hub_repo_needs(saved_dir):
    names = set(os.listdir(saved_dir))
    assert {"tokenizer.json", "tokenizer.model", "tokenizer_config.json", "tokenization_spanish_moe_bert.py"} <= names
    config = json.loads((saved_dir / "tokenizer_config.json").read_text())
    assert config["auto_map"]["AutoTokenizer"][0] == "tokenization_spanish_moe_bert.SpanishSPMTokenizer"
    assert config["model_max_length"] == 512 and config["mask_token"] == "[MASK]"


def test_auto_tokenizer_in_fresh_process_without_the_project(saved_dir, tokenizer, tmp_path):
    text = "¿Qué tal? ¡Muy bien, señor Muñoz! 😀"
    script = f"""
import json, sys
for name in ("tokenization_spanish_moe_bert", "spanish_moe_bert"):
    sys.modules[name] = None  # make the project unimportable: only the checkpoint's copy may be used
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained({str(saved_dir)!r}, trust_remote_code=True)
print(json.dumps([type(tok).__name__, type(tok).__module__, tok.is_fast, tok({text!r})["input_ids"]]))
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": ""}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
    )
    name, module, is_fast, ids = json.loads(result.stdout.strip().splitlines()[-1])
    assert (name, is_fast) == ("SpanishSPMTokenizer", True)
    assert module.startswith("transformers_modules.")
    assert ids == tokenizer(text)["input_ids"]


def test_missing_or_corrupt_tokenizer_files_are_named(saved_dir, tmp_path):
    fast_dir, slow_dir = tmp_path / "fast", tmp_path / "slow"
    for directory in (fast_dir, slow_dir):
        directory.mkdir()
        (directory / "tokenizer_config.json").write_text((saved_dir / "tokenizer_config.json").read_text())
    with pytest.raises(FileNotFoundError, match="tokenizer.json not found"):
        SpanishSPMTokenizer.from_pretrained(fast_dir)
    (fast_dir / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    with pytest.raises(ValueError, match=r"fast/tokenizer\.json is not a valid tokenizers file"):
        SpanishSPMTokenizer.from_pretrained(fast_dir)

    with pytest.raises(ValueError, match="tokenizer.model not found"):
        SpanishSPMTokenizerSlow.from_pretrained(slow_dir)
    (slow_dir / "tokenizer.model").write_bytes(b"not a sentencepiece model")
    with pytest.raises(ValueError, match=r"slow/tokenizer\.model is not a valid SentencePiece model"):
        SpanishSPMTokenizerSlow.from_pretrained(slow_dir)


def test_train_new_from_strings_and_from_jsonl_gz(tmp_path):
    from_strings = SpanishSPMTokenizer.train_new(iter_texts(SAMPLE), vocab_size=600)
    assert len(from_strings) == 600
    passages = RETRIEVAL_DEV / "corpus.jsonl"
    compressed = tmp_path / "passages.jsonl.gz"
    compressed.write_bytes(gzip.compress(passages.read_bytes()))
    from_file = SpanishSPMTokenizer.train_new(compressed, vocab_size=600, max_documents=200)
    first_texts = [json.loads(line)["text"] for line in passages.read_text(encoding="utf-8").splitlines()[:200]]
    assert len(from_file) == 600 and from_file.get_vocab() != from_strings.get_vocab()
    # The .jsonl.gz reader hands training exactly the first 200 documents' text.
    assert from_file.get_vocab() == SpanishSPMTokenizer.train_new(first_texts, vocab_size=600).get_vocab()


def test_the_same_texts_always_give_the_same_tokenizer_in_any_form(tmp_path):
    # 300 characters seen once each, and room for 125 in the alphabet: the tie at the cutoff that tokenizers'
    # trainer breaks in hash-map order (a different tokenizer each run, huggingface/tokenizers#1794).
    rare = [chr(0x4E00 + i) for i in range(300)]
    texts = [f"la casa {char} de la sierra" for char in rare] * 2 + [" ".join(rare)]
    corpus = tmp_path / "texts.jsonl"
    corpus.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts), encoding="utf-8")
    runs = [
        SpanishSPMTokenizer.train_new(texts, vocab_size=512),
        SpanishSPMTokenizer.train_new(iter(texts), vocab_size=512),  # a stream, read once
        SpanishSPMTokenizer.train_new(corpus, vocab_size=512),  # a file, read twice
        SpanishSPMTokenizer.train_new(texts, vocab_size=512),
    ]
    assert all(run.backend_tokenizer.to_str() == runs[0].backend_tokenizer.to_str() for run in runs[1:])
    alphabet = {token for token in runs[0].get_vocab() if len(token) == 1 and token not in RESERVED_TOKENS}
    kept = sorted(alphabet & set(rare))
    assert 0 < len(kept) < len(rare) and kept == rare[: len(kept)]  # the tie broken by code point


def test_train_new_rejects_bad_arguments():
    with pytest.raises(ValueError, match="vocab_size must be an integer >= 512"):
        SpanishSPMTokenizer.train_new(["hola"], vocab_size=100)
    with pytest.raises(TypeError, match="training text #1 is a int"):
        SpanishSPMTokenizer.train_new(["hola", 3], vocab_size=600)
    with pytest.raises(ValueError, match="training text #0: text contains a lone surrogate"):
        SpanishSPMTokenizer.train_new(["\ud800"], vocab_size=600)
    with pytest.raises(ValueError, match="corpus is empty"):
        SpanishSPMTokenizer.train_new([], vocab_size=600)
    with pytest.raises(ValueError, match="min_frequency must be >= 0 and limit_alphabet >= 1, got -1, 1000"):
        SpanishSPMTokenizer.train_new(["hola"], vocab_size=600, min_frequency=-1)  # was the trainer's OverflowError


def test_cli_trains_saves_and_refuses_to_overwrite(tmp_path, capsys):
    output_dir = tmp_path / "tok"
    args = ["--train_file", str(SAMPLE), "--vocab_size", "800", "--output_dir", str(output_dir)]
    tokenizer = train_tokenizer.main(args)
    assert len(tokenizer) == 800 and "800-token cased tokenizer" in capsys.readouterr().out
    assert SpanishSPMTokenizer.from_pretrained(output_dir).get_vocab() == tokenizer.get_vocab()

    saved = (output_dir / "tokenizer.json").read_bytes()
    with pytest.raises(SystemExit, match="already exists"):
        train_tokenizer.main([*args[:3], "900", *args[4:]])
    assert (output_dir / "tokenizer.json").read_bytes() == saved


# ---------------------------------------------------------------------------------------------
# An uncased tokenizer (train_new(lowercase=True), train_tokenizer.py --lowercase, run_mlm.py --tokenizer_lowercase)

CASE_TEXTS = ["ÑANDÚ, Árbol y ÉL", "ñandú, árbol y él", "El [MASK] DE LA Casa", "İSTANBUL ΟΔΟΣ Σ", "ǅemal ẞ Ǉ"]


def lowercase_each_character(text: str) -> str:
    return "".join(character.lower() for character in text)


@pytest.fixture(scope="session")
def uncased_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("uncased")
    SpanishSPMTokenizer.train_new(SAMPLE, vocab_size=VOCAB_SIZE, lowercase=True).save_pretrained(directory)
    return directory


def test_uncased_tokenizer_learns_and_gives_only_lower_case_pieces(uncased_dir, tokenizer):
    uncased = AutoTokenizer.from_pretrained(uncased_dir, trust_remote_code=True)
    assert uncased.do_lower_case and not tokenizer.do_lower_case
    assert json.loads((uncased_dir / "tokenizer_config.json").read_text())["do_lower_case"] is True
    learned = [token for token in uncased.get_vocab() if token not in RESERVED_TOKENS]
    assert len(learned) == VOCAB_SIZE - len(RESERVED_TOKENS)
    assert [token for token in learned if token != token.lower()] == []
    assert any(token != token.lower() for token in tokenizer.get_vocab())  # the cased one has capitals
    # Case folds, accents and "ñ" stay, the special tokens are matched before lower-casing.
    assert uncased.tokenize(CASE_TEXTS[0]) == uncased.tokenize(CASE_TEXTS[1])
    assert "ñ" in "".join(uncased.tokenize(CASE_TEXTS[0])) and "á" in "".join(uncased.tokenize(CASE_TEXTS[0]))
    ids = uncased(CASE_TEXTS[2])["input_ids"]
    assert ids.count(uncased.mask_token_id) == 1 and ids == uncased("el [MASK] de la casa")["input_ids"]


def test_do_lower_case_is_what_tokenizer_json_does(uncased_dir, tmp_path):
    folder = shutil.copytree(uncased_dir, tmp_path / "no_flag")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    del config["do_lower_case"]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    assert SpanishSPMTokenizer.from_pretrained(folder).do_lower_case


@pytest.mark.parametrize("text", CASE_TEXTS + EDGE_TEXTS)
def test_uncased_round_trip_is_the_lower_cased_text(uncased_dir, text):
    uncased = SpanishSPMTokenizer.from_pretrained(uncased_dir)
    ids = uncased.encode(text.replace("[MASK]", "máscara"))
    assert uncased.unk_token_id not in ids
    decoded = uncased.decode(ids, skip_special_tokens=True)
    assert decoded == lowercase_each_character(expected_round_trip(text.replace("[MASK]", "máscara")))


def test_uncased_fast_and_slow_give_identical_ids(uncased_dir):
    fast = SpanishSPMTokenizer.from_pretrained(uncased_dir)
    slow = SpanishSPMTokenizerSlow.from_pretrained(uncased_dir)
    assert slow.do_lower_case
    # The dev set's 834 passages and queries (menus, function names, a Bible in capitals here and there).
    texts = [*iter_texts(RETRIEVAL_DEV / "corpus.jsonl"), *iter_texts(RETRIEVAL_DEV / "queries.jsonl", "query")]
    assert len(texts) == 834 and sum(text != text.lower() for text in texts) > 700
    texts += [*CASE_TEXTS, *EDGE_TEXTS]
    fast_ids, slow_ids = fast(texts)["input_ids"], slow(texts)["input_ids"]
    assert [text for text, a, b in zip(texts, fast_ids, slow_ids) if a != b] == []


def test_cli_makes_an_uncased_tokenizer(tmp_path, capsys):
    output_dir = tmp_path / "tok"
    train_tokenizer.main(
        ["--train_file", str(SAMPLE), "--vocab_size", "800", "--output_dir", str(output_dir), "--lowercase"]
    )
    assert "800-token uncased tokenizer" in capsys.readouterr().out
    uncased = AutoTokenizer.from_pretrained(output_dir, trust_remote_code=True)
    assert uncased.do_lower_case and uncased.tokenize("ÁRBOL Y CASA") == uncased.tokenize("árbol y casa")

"""Spanish SentencePiece-style BPE tokenizer of Spanish MoE-BERT.

This file is copied into every exported checkpoint and loaded as Hub remote code, so it imports only
installed libraries. Two classes share one vocabulary:

* :class:`SpanishSPMTokenizer` (what ``AutoTokenizer.from_pretrained(dir, trust_remote_code=True)``
  returns): a fast tokenizer backed by the Rust ``tokenizers`` library and ``tokenizer.json``.
* :class:`SpanishSPMTokenizerSlow`: the same tokenizer run by the ``sentencepiece`` library from the
  ``tokenizer.model`` that ``save_pretrained`` writes next to ``tokenizer.json``, for tools that
  consume SentencePiece models. It gave identical ids on every paragraph of the shared Spanish
  corpus (see ``_sentencepiece_model_bytes`` for the one theoretical difference) and is slower.

Pipeline (identical in both):

1. Normalization: Unicode NFC only. Case, accents, "ñ", "¿" and "¡" are kept (Spanish needs them);
   NFC makes "e" + U+0301 and the precomposed "é" the same token. An *uncased* tokenizer
   (``train_new(lowercase=True)``, saved with ``"do_lower_case": true``) then lower-cases every character
   on its own (``str.lower`` per character, as the Rust ``Lowercase`` normalizer does); accents stay.
2. Whitespace, SentencePiece style: every " " becomes "▁" and one "▁" is prepended to a text that does
   not already start with " " or "▁". Newlines and tabs are ordinary characters.
3. Punctuation apart: each punctuation character (Unicode category P: "," "." "¿" "(" ...) is a word of its
   own, with the "▁" before it if there is one: "▁tabla," gives "▁tabla" + ",", "▁¿Cómo" gives "▁¿" + "Cómo".
   Without it BPE learns "tabla," and "tabla." as words apart from "tabla": trained on the shared corpus
   without this step, 16,397 of 50,000 pieces mixed punctuation with other characters.
4. BPE over the characters of each word, with byte fallback: a character outside the vocabulary
   becomes its UTF-8 bytes ``<0x00>``..``<0xFF>``, so no input ever produces ``[UNK]``.
5. BERT special tokens: ``[CLS] A [SEP]`` and ``[CLS] A [SEP] B [SEP]`` with ``token_type_ids`` 0/1.
   ``[MASK]`` absorbs the space before it (``lstrip``) so "El [MASK] es" gives ``▁El [MASK] ▁es``
   and the masked word is predicted with its own leading "▁", as in MLM pre-training.

Round trip: ``decode(encode(x), skip_special_tokens=True) == unicodedata.normalize("NFC", x)``
(lower-cased per character by an uncased tokenizer) for every string ``x`` except that (a) one leading
space of ``x`` is dropped (the space that marks the first word, as in every SentencePiece tokenizer
with a dummy prefix), (b) a literal "▁" (U+2581) in ``x`` decodes as a space and (c) the literal text
of a special token ("[CLS]", "[MASK]", ...) is encoded as that special token, so
``skip_special_tokens=True`` removes it. Strings with lone surrogates (not valid Unicode text) are
rejected with a ``ValueError``.

Offsets (``return_offsets_mapping=True``) start at a word's first character, after the space its "▁" stands for,
as BERT's and XLM-R's do; a piece of whitespace alone keeps its span.

``encode`` keeps its Hugging Face meaning (a list of ids, or a ``[1, length]`` tensor with
``return_tensors="pt"``). For a dict with ``input_ids``, ``token_type_ids`` and ``attention_mask``,
call the tokenizer: ``tokenizer(text, return_tensors="pt")``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from itertools import islice

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors, trainers
from tokenizers.models import BPE
from transformers.tokenization_utils_sentencepiece import SentencePieceBackend
from transformers.tokenization_utils_tokenizers import TokenizersBackend
from transformers.utils import logging

logger = logging.get_logger(__name__)

TOKENIZER_FILE = "tokenizer.json"
SENTENCEPIECE_FILE = "tokenizer.model"
SPACE = "▁"  # U+2581, SentencePiece's visible space
MODEL_MAX_LENGTH = 512

# Ids 0..4 in this order, then the 256 byte tokens (ids 5..260), then the learned pieces.
SPECIAL_TOKENS = {
    "pad_token": "[PAD]",
    "unk_token": "[UNK]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
}
BYTE_TOKENS = [f"<0x{byte:02X}>" for byte in range(256)]
RESERVED_TOKENS = [*SPECIAL_TOKENS.values(), *BYTE_TOKENS]
MIN_VOCAB_SIZE = 512

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _special_added_tokens() -> dict[str, AddedToken]:
    """Special tokens as ``AddedToken``s; ``[MASK]`` swallows the space before it."""
    return {
        name: AddedToken(content, special=True, normalized=False, lstrip=(name == "mask_token"))
        for name, content in SPECIAL_TOKENS.items()
    }


def _build_backend(
    vocab: dict[str, int] | None = None, merges: list[tuple[str, str]] | None = None, lowercase: bool = False
) -> Tokenizer:
    """The ``tokenizers`` pipeline described in the module docstring (empty model when training)."""
    tokenizer = Tokenizer(BPE(vocab=vocab, merges=merges, byte_fallback=True, unk_token=SPECIAL_TOKENS["unk_token"]))
    tokenizer.normalizer = (
        normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()]) if lowercase else normalizers.NFC()
    )
    # split=True runs BPE word by word (pieces never contain an inner "▁"), which also lets the
    # Rust BPE cache words; prepend_scheme="first" adds the dummy "▁" only at the start of the text,
    # not after a special token. Then every punctuation character becomes a word of its own (with
    # the "▁" before it, if any), so that "tabla," and "tabla." are the word "▁tabla" too.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="first", split=True),
            pre_tokenizers.Split(Regex(f"{SPACE}?\\p{{P}}"), behavior="isolated"),
        ]
    )
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return tokenizer


def _raise_on_lone_surrogate(texts) -> None:
    """Raise a ValueError naming the first lone surrogate in a text / batch / pair of texts."""
    stack = [texts]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if match := _LONE_SURROGATE.search(item):
                raise ValueError(
                    f"text contains a lone surrogate U+{ord(match.group()):04X} at index {match.start()}; "
                    "it is not valid Unicode text (decode the source bytes with errors='replace' first)"
                )
        elif isinstance(item, (list, tuple)):
            stack.extend(reversed(item))


def _offsets_without_leading_spaces(encoded, text, text_pair, single: bool) -> None:
    """Start every token's ``offset_mapping`` span after the whitespace it begins with, as BERT's and XLM-R's do.

    The Rust offsets include the space a "▁" stands for ("▁en" in "vive en" is " en"), so text cut by offsets
    starts with a space, and every tool that finds words by gaps between spans (transformers' whole-word
    masking, the token-classification pipeline's entity starts) sees one word per text. A span of whitespace
    only (a lone "▁", a newline) is left as it is. The Rust encodings (``token_to_chars``) keep their spans.
    """
    batched = isinstance(text, (list, tuple))
    firsts = list(text) if batched else [text]
    seconds = list(text_pair) if batched and text_pair is not None else [text_pair] * len(firsts)
    samples = encoded.get("overflow_to_sample_mapping", range(len(encoded.encodings)))
    rows = [encoded["offset_mapping"]] if single else encoded["offset_mapping"]  # changed in place
    for row, encoding, sample in zip(rows, encoded.encodings, samples):
        sources = (firsts[sample], seconds[sample])
        for i, ((start, end), sequence) in enumerate(zip(row, encoding.sequence_ids)):
            if sequence is not None and start < end and sources[sequence][start].isspace():
                span = sources[sequence][start:end]
                spaces = len(span) - len(span.lstrip())
                if spaces < len(span):
                    row[i] = (start + spaces, end)


def _checked_texts(texts: Iterable[str]) -> Iterator[str]:
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"training text #{index} is a {type(text).__name__}, expected str")
        try:
            _raise_on_lone_surrogate(text)
        except ValueError as err:
            raise ValueError(f"training text #{index}: {err}") from None
        yield text


def _alphabet(texts: Iterable[str], normalizer, limit: int) -> list[str]:
    """The ``limit`` most frequent characters of the normalized texts as BPE sees them (every " " a "▁", one "▁"
    prepended), ties broken by code point, so the same texts always give the same alphabet."""
    counts = Counter()
    for text in texts:
        normalized = normalizer.normalize_str(text)
        counts.update(normalized.replace(" ", SPACE))
        counts[SPACE] += bool(normalized)  # the prepended one
    counts = +counts  # without the zero an empty text leaves
    return sorted(sorted(counts, key=lambda char: (-counts[char], char))[:limit])


@contextlib.contextmanager
def _readable_twice(texts: Iterable, reopen: Callable[[], Iterable] | None) -> Iterator[Callable[[], Iterable]]:
    """A function that gives the texts at every call: ``reopen`` (files are read again), or else the texts copied
    once to a temporary file, one JSON string a line (a stream is read once; the copy takes as much disk)."""
    if reopen is not None:
        yield reopen
        return
    with tempfile.TemporaryFile("w+", encoding="utf-8") as copy:
        copy.writelines(json.dumps(text) + "\n" for text in _checked_texts(texts))

        def read_copy() -> Iterator:
            copy.seek(0)
            return (json.loads(line) for line in copy)

        yield read_copy


def _batches(texts: Iterator[str], size: int = 1000) -> Iterator[list[str]]:
    while batch := list(islice(texts, size)):
        yield batch


def _lowercase(text: str) -> str:
    """Every character lower-cased on its own, as the Rust ``Lowercase`` normalizer does (``str.lower`` of the
    whole text differs only for a final "Σ", which it makes "ς" from context)."""
    return "".join(map(str.lower, text))


def _sentencepiece_model_bytes(tokenizer: Tokenizer, spm_pb2) -> bytes:
    """Serialize the BPE vocabulary as a SentencePiece ``ModelProto`` with the same segmentation.

    SentencePiece's BPE repeatedly merges the adjacent pair whose concatenation has the highest
    score; giving each learned piece the score ``-merge_rank`` replays the merge order of the
    ``tokenizers`` model. The two can differ only where SentencePiece builds a piece from another
    split than the learned merge (e.g. "a"+"bc" instead of "ab"+"c"); this never happened on the
    45,541 paragraphs of the shared corpus (see benchmarks/bench_tokenizer.py). Normalization (NFC,
    lower-casing) is not stored: the model uses the identity rule and the caller normalizes, as
    :class:`SpanishSPMTokenizerSlow` does. ``spm_pb2`` is SentencePiece's ``sentencepiece_model_pb2``.
    """
    model = json.loads(tokenizer.to_str())["model"]
    merge_rank = {left + right: rank for rank, (left, right) in enumerate(model["merges"])}
    piece_type = spm_pb2.ModelProto.SentencePiece
    proto = spm_pb2.ModelProto()
    for token, token_id in sorted(model["vocab"].items(), key=lambda item: item[1]):
        piece = proto.pieces.add(piece=token, score=0.0)
        if token == SPECIAL_TOKENS["unk_token"]:
            piece.type = piece_type.UNKNOWN
        elif token in SPECIAL_TOKENS.values():
            piece.type = piece_type.CONTROL
        elif token in BYTE_TOKENS:
            piece.type = piece_type.BYTE
        else:  # learned pieces by merge rank, then single characters below every merge
            piece.type = piece_type.NORMAL
            piece.score = -float(merge_rank.get(token, len(merge_rank) + token_id))
    vocab = model["vocab"]
    proto.trainer_spec.model_type = spm_pb2.TrainerSpec.BPE
    proto.trainer_spec.vocab_size = len(vocab)
    proto.trainer_spec.byte_fallback = True
    proto.trainer_spec.unk_id, proto.trainer_spec.unk_piece = vocab["[UNK]"], "[UNK]"
    proto.trainer_spec.pad_id, proto.trainer_spec.pad_piece = vocab["[PAD]"], "[PAD]"
    proto.trainer_spec.bos_id = proto.trainer_spec.eos_id = -1
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = True
    proto.normalizer_spec.remove_extra_whitespaces = False
    proto.normalizer_spec.escape_whitespaces = True
    return proto.SerializeToString()


class SpanishSPMTokenizer(TokenizersBackend):
    """Fast (Rust) Spanish SentencePiece-BPE tokenizer with BERT special tokens.

    Train one with :meth:`train_new`, save it with ``save_pretrained`` and load it with
    ``AutoTokenizer.from_pretrained(dir, trust_remote_code=True)``. See the module docstring for the
    normalization, the round-trip guarantee and the ``encode`` / ``__call__`` semantics.
    """

    vocab_files_names = {"tokenizer_file": TOKENIZER_FILE}
    model_input_names = ["input_ids", "token_type_ids", "attention_mask"]

    @classmethod
    def train_new(
        cls,
        texts: Iterable[str] | str | os.PathLike | Iterable[os.PathLike],
        vocab_size: int = 50000,
        min_frequency: int = 2,
        limit_alphabet: int = 1000,
        max_documents: int | None = None,
        text_column: str = "text",
        model_max_length: int = MODEL_MAX_LENGTH,
        lowercase: bool = False,
        show_progress: bool = False,
    ) -> SpanishSPMTokenizer:
        """Train a new tokenizer of ``vocab_size`` tokens and return it.

        A corpus too small to learn that many merges gives fewer tokens (with a warning): size the
        model's embeddings with ``len(tokenizer)``. The same texts and arguments always give the same
        tokenizer. The texts are read twice (the alphabet, then BPE): files are opened again, and other
        texts (a generator, a streamed dataset) are copied to a temporary file as they are read, taking
        as much disk as the text.

        Args:
            texts: an iterable of strings (documents or paragraphs, e.g. a streaming ``datasets``
                column), or corpus files: one path as ``str`` / ``Path``, or a list of ``Path``
                objects (``.txt``, ``.jsonl``, ``.jsonl.gz``; read with
                ``spanish_moe_bert.corpus.iter_texts``, which needs the project installed).
            vocab_size: total size: 5 special tokens + 256 byte tokens + learned pieces.
            min_frequency: minimum count of a pair to be merged.
            limit_alphabet: most single characters kept (the rest fall back to bytes); capped at
                half of the learned budget so small vocabularies still learn merges.
            max_documents: read at most this many texts.
            text_column: JSON field holding the text in ``.jsonl`` files.
            model_max_length: longest sequence the model accepts (truncation target).
            lowercase: make an uncased tokenizer: every text is lower-cased, in training and in use (saved as
                ``do_lower_case``). Special tokens are matched before it, so "[MASK]" stays the mask.
        """
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB_SIZE:
            raise ValueError(f"vocab_size must be an integer >= {MIN_VOCAB_SIZE}, got {vocab_size!r}")
        if min_frequency < 0 or limit_alphabet < 1:
            raise ValueError(
                f"min_frequency must be >= 0 and limit_alphabet >= 1, got {min_frequency}, {limit_alphabet}"
            )
        if isinstance(texts, (str, os.PathLike)) or (
            isinstance(texts, (list, tuple)) and texts and all(isinstance(t, os.PathLike) for t in texts)
        ):
            try:  # optional: a Hub checkpoint's copy of this file must load without the project
                from spanish_moe_bert.corpus import iter_corpus
            except ImportError as err:
                raise ImportError(
                    "reading corpus files needs the spanish_moe_bert package (install the project); "
                    "or pass an iterable of strings"
                ) from err
            paths = texts

            def reopen():  # files are read again rather than copied
                return _checked_texts(iter_corpus(paths, text_column=text_column, max_documents=max_documents))

        else:
            reopen, texts = None, islice(texts, max_documents)

        backend = _build_backend(lowercase=lowercase)
        learned_budget = vocab_size - len(RESERVED_TOKENS)
        with _readable_twice(texts, reopen) as read:
            # The alphabet is chosen here because the Rust trainer breaks ties in character counts in hash-map
            # order: a different tokenizer at every run (huggingface/tokenizers#1794).
            alphabet = _alphabet(read(), backend.normalizer, min(limit_alphabet, learned_budget // 2))
            trainer = trainers.BpeTrainer(
                vocab_size=learned_budget,
                min_frequency=min_frequency,
                initial_alphabet=alphabet,
                limit_alphabet=len(alphabet),  # exactly those: the initial alphabet counts as the most frequent
                show_progress=show_progress,
            )
            backend.train_from_iterator(_batches(read()), trainer=trainer)
        trained = json.loads(backend.to_str())["model"]
        if not trained["vocab"]:
            raise ValueError("no training text: the corpus is empty")

        # Put the reserved tokens first, with fixed ids; drop any learned piece that collides with one.
        reserved = set(RESERVED_TOKENS)
        learned = [t for t, _ in sorted(trained["vocab"].items(), key=lambda item: item[1]) if t not in reserved]
        vocab = {token: token_id for token_id, token in enumerate(RESERVED_TOKENS + learned)}
        merges = [tuple(pair) for pair in trained["merges"] if reserved.isdisjoint((*pair, "".join(pair)))]
        if len(vocab) < vocab_size:
            logger.warning(f"the corpus yields only {len(vocab)} of the {vocab_size} tokens asked for")
        backend = _build_backend(vocab, merges, lowercase)
        special_tokens = _special_added_tokens()
        backend.add_special_tokens(list(special_tokens.values()))
        return cls(
            tokenizer_object=backend, model_max_length=model_max_length, do_lower_case=lowercase, **special_tokens
        )

    @property
    def do_lower_case(self) -> bool:
        """Whether this tokenizer is uncased (``train_new(lowercase=True)``), read from what lower-cases: the
        normalizer of ``tokenizer.json``. (``tokenizer_config.json`` records it too, for the slow tokenizer.)"""
        normalizer = self.backend_tokenizer.normalizer
        state = json.loads(normalizer.__getstate__()) if normalizer is not None else {}
        return any(step.get("type") == "Lowercase" for step in state.get("normalizers", [state]))

    @classmethod
    def _from_pretrained(cls, resolved_vocab_files, pretrained_model_name_or_path, *args, **kwargs):
        """Check ``tokenizer.json`` before transformers reads it, so a missing or corrupt file is named."""
        tokenizer_file = resolved_vocab_files.get("tokenizer_file")
        if tokenizer_file is None or not os.path.isfile(tokenizer_file):
            raise FileNotFoundError(
                f"{TOKENIZER_FILE} not found in {pretrained_model_name_or_path!s}: a {cls.__name__} is loaded "
                "from it (save one with save_pretrained or train one with train_tokenizer.py)"
            )
        try:
            Tokenizer.from_file(tokenizer_file)
        except Exception as err:  # the Rust parser raises a bare Exception
            raise ValueError(f"{tokenizer_file} is not a valid tokenizers file: {err}") from err
        return super()._from_pretrained(resolved_vocab_files, pretrained_model_name_or_path, *args, **kwargs)

    def update_post_processor(self):
        """Install the BERT template ``[CLS] A [SEP] (B [SEP])`` with token_type_ids 0 / 1."""
        cls_token, sep_token = str(self.cls_token), str(self.sep_token)
        self._tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{cls_token}:0 $A:0 {sep_token}:0",
            pair=f"{cls_token}:0 $A:0 {sep_token}:0 $B:1 {sep_token}:1",
            special_tokens=[(cls_token, self.cls_token_id), (sep_token, self.sep_token_id)],
        )

    def _encode_plus(self, text, text_pair=None, **kwargs):
        trim = kwargs.get("return_offsets_mapping") and not kwargs.get("is_split_into_words")
        return_tensors = kwargs.pop("return_tensors", None)
        try:
            encoded = super()._encode_plus(text, text_pair, return_tensors=None if trim else return_tensors, **kwargs)
        except TypeError:  # the Rust side only says "TextInputSequence must be str"
            _raise_on_lone_surrogate([text, text_pair])
            raise
        if not trim:
            return encoded
        single = not isinstance(text, (list, tuple)) and not kwargs.get("return_overflowing_tokens")
        _offsets_without_leading_spaces(encoded, text, text_pair, single)
        encoded.convert_to_tensors(return_tensors, prepend_batch_axis=single)
        return encoded

    def _save_pretrained(self, save_directory, file_names, legacy_format=None, filename_prefix=None):
        """Write ``tokenizer.json`` and, for SentencePiece users, the equivalent ``tokenizer.model``."""
        file_names = super()._save_pretrained(save_directory, file_names, legacy_format, filename_prefix)
        try:  # optional: the fast tokenizer itself never needs sentencepiece or protobuf
            from sentencepiece import sentencepiece_model_pb2
        except ImportError as err:
            logger.warning(f"{SENTENCEPIECE_FILE} not written ({err}); {TOKENIZER_FILE} is complete without it")
            return file_names
        model_bytes = _sentencepiece_model_bytes(self._tokenizer, sentencepiece_model_pb2)
        prefix = filename_prefix + "-" if filename_prefix else ""
        model_file = os.path.join(save_directory, prefix + SENTENCEPIECE_FILE)
        with open(model_file, "wb") as handle:
            handle.write(model_bytes)
        return file_names + (model_file,)


class SpanishSPMTokenizerSlow(SentencePieceBackend):
    """The same tokenizer run by the ``sentencepiece`` library from ``tokenizer.model``.

    Gives the same ids as :class:`SpanishSPMTokenizer` (tested on real Spanish text). Load it
    explicitly: ``SpanishSPMTokenizerSlow.from_pretrained(dir)``.
    """

    vocab_files_names = {"vocab_file": SENTENCEPIECE_FILE}
    model_input_names = ["input_ids", "token_type_ids", "attention_mask"]

    def __init__(self, vocab_file=None, **kwargs):
        if vocab_file is None or not os.path.isfile(vocab_file):
            raise ValueError(f"SentencePiece model {SENTENCEPIECE_FILE} not found: {vocab_file}")
        for name, token in _special_added_tokens().items():
            kwargs.setdefault(name, token)
        kwargs.setdefault("model_max_length", MODEL_MAX_LENGTH)
        kwargs.setdefault("special_tokens_pattern", "cls_sep")
        # legacy=False turns SentencePiece's own dummy prefix off: prepare_for_tokenization adds
        # it, only at the start of the text, as the fast pipeline does.
        kwargs["legacy"] = False
        kwargs.setdefault("do_lower_case", False)  # what the fast tokenizer's tokenizer_config.json says
        try:
            super().__init__(vocab_file=vocab_file, **kwargs)
        except (OSError, RuntimeError) as err:
            raise ValueError(f"{vocab_file} is not a valid SentencePiece model: {err}") from err
        self.do_lower_case = bool(kwargs["do_lower_case"])

    def prepare_for_tokenization(self, text, is_split_into_words=False, **kwargs):
        _raise_on_lone_surrogate(text)
        starts_with_added_token = any(text.startswith(token) for token in self._added_tokens_encoder)
        if text and not text.startswith((" ", SPACE)) and not starts_with_added_token:
            text = " " + text
        return text, kwargs

    def _tokenize(self, text, **kwargs):
        text = unicodedata.normalize("NFC", text)
        return self.sp_model.encode(_lowercase(text) if self.do_lower_case else text, out_type=str)

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        """Decode pieces (bytes included) with SentencePiece, keep special tokens verbatim."""
        parts, pieces = [], []
        for token in tokens:
            if token in self._added_tokens_encoder:
                parts += [self.sp_model.decode_pieces(pieces), token]
                pieces = []
            else:
                pieces.append(token)
        text = "".join(parts) + self.sp_model.decode_pieces(pieces)
        return text[1:] if text.startswith(" ") else text


SpanishSPMTokenizer.register_for_auto_class("AutoTokenizer")
SpanishSPMTokenizerSlow.register_for_auto_class("AutoTokenizer")

__all__ = ["SpanishSPMTokenizer", "SpanishSPMTokenizerSlow"]

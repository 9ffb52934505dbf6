"""The streaming data pipeline of `run_mlm.py`: documents -> held-out split -> per-rank shard -> tokens -> blocks.

Everything is a `datasets.IterableDataset`, so a Hub dataset and local files go through the same steps, nothing
is tokenized ahead of time, and the position in the stream can be saved in a checkpoint and restored
(`IterableDataset.state_dict()` / `load_state_dict()`, see `resume.py`) instead of re-reading the stream to skip
what was seen.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice

import torch
from datasets import Dataset, Features, IterableDataset, Value
from datasets.distributed import split_dataset_by_node
from transformers import DataCollatorForLanguageModeling, DataCollatorForTokenClassification, PreTrainedTokenizerBase

from .corpus import check_corpus_file, is_held_out, iter_texts

# run_mlm.py's default, as ModernBERT's: 8% lower held-out loss than BERT's 15% in bench_ablations.py
MLM_PROBABILITY = 0.3


class EmptyDatasetError(ValueError):
    """The data yielded no training example at all."""


NO_TRAINING_EXAMPLE = (
    "the training data yielded no example (empty files, or every document held out, or too few tokens for one "
    "block of max_seq_length)"
)


# ----------------------------------------------------------------------------------------------------------------
# Documents
# ----------------------------------------------------------------------------------------------------------------


def _read_documents(paths: list[str], text_column: str) -> Iterator[dict]:
    # One generator call per shard; `datasets` hands each call its own slice of `paths`.
    for path in paths:
        for text in iter_texts(path, text_column=text_column):
            yield {"text": text}


def local_documents(paths: list[str], text_column: str = "text") -> IterableDataset:
    """Stream documents from local .txt (one per line) / .jsonl / .jsonl.gz files, one shard per file.

    Bad files fail while streaming with an error naming file, line and field (see `corpus.iter_texts`); a missing
    file or an unsupported suffix fails here, before anything runs.
    """
    return IterableDataset.from_generator(
        _read_documents,
        gen_kwargs={"paths": [check_corpus_file(p) for p in paths], "text_column": text_column},
        features=Features({"text": Value("string")}),
    )


def split_by_document(documents: IterableDataset, fraction: float) -> tuple[IterableDataset, IterableDataset]:
    """(train, validation) streams; a `fraction` of the documents, chosen by content hash, go to validation."""
    train = documents.filter(lambda doc: not is_held_out(doc["text"], fraction))
    validation = documents.filter(lambda doc: is_held_out(doc["text"], fraction))
    return train, validation


# ----------------------------------------------------------------------------------------------------------------
# Tokens -> blocks
# ----------------------------------------------------------------------------------------------------------------


def pack_documents(batch: dict, tokenizer: PreTrainedTokenizerBase, max_seq_length: int) -> dict:
    """Concatenate a batch of documents, [SEP]-separated, and cut it into `[CLS] ... [SEP]` blocks of
    exactly `max_seq_length` tokens (no padding). The tail that does not fill a block is dropped: at most one
    block per map batch."""
    ids = tokenizer(batch["text"], add_special_tokens=False, verbose=False)["input_ids"]  # long documents are fine here
    stream = [token for document in ids for token in (*document, tokenizer.sep_token_id)]
    body = max_seq_length - 2
    blocks = [
        [tokenizer.cls_token_id, *stream[start : start + body], tokenizer.sep_token_id]
        for start in range(0, len(stream) - body + 1, body)
    ]
    special = set(tokenizer.all_special_ids)
    return {
        "input_ids": blocks,
        "attention_mask": [[1] * max_seq_length for _ in blocks],
        "special_tokens_mask": [[int(t in special) for t in block] for block in blocks],
    }


def tokenize_lines(batch: dict, tokenizer: PreTrainedTokenizerBase, max_seq_length: int) -> dict:
    """One example per document, truncated to `max_seq_length`; the collator pads."""
    encoded = tokenizer(batch["text"], truncation=True, max_length=max_seq_length, return_special_tokens_mask=True)
    return {key: encoded[key] for key in ("input_ids", "attention_mask", "special_tokens_mask")}


def tokenize_stream(
    documents: IterableDataset,
    tokenizer: PreTrainedTokenizerBase,
    max_seq_length: int,
    line_by_line: bool = False,
    map_batch_size: int = 1000,
) -> IterableDataset:
    """Tokenize lazily, while training reads: blocks of `max_seq_length` tokens, or one example per line."""
    function = tokenize_lines if line_by_line else pack_documents
    return documents.map(
        function,
        batched=True,
        batch_size=map_batch_size,
        remove_columns=["text"],
        fn_kwargs={"tokenizer": tokenizer, "max_seq_length": max_seq_length},
    )


def shard_for_rank(documents: IterableDataset, rank: int, world_size: int) -> IterableDataset:
    """Each process gets its own part of the stream: whole shards (files of the Hub dataset or local files) when
    their number is a multiple of `world_size`, else every n-th example (`datasets` then applies the split to the
    finished blocks, so every process reads and tokenizes the whole stream and keeps its share)."""
    return split_dataset_by_node(documents, rank=rank, world_size=world_size) if world_size > 1 else documents


def first_example(dataset: IterableDataset) -> dict:
    """Read one example, to fail before training starts on missing, empty or unreadable data."""
    example = next(iter(dataset), None)
    if example is None:
        raise EmptyDatasetError(NO_TRAINING_EXAMPLE)
    return example


def token_counts(
    blocks: IterableDataset, vocab_size: int, max_examples: int, exclude_ids: list[int] = ()
) -> torch.Tensor:
    """How often each token id occurs in the first `max_examples` examples; `exclude_ids` (e.g. special tokens,
    which MLM never predicts) count 0."""
    counts = torch.zeros(vocab_size, dtype=torch.int64)
    for example in islice(blocks, max_examples):
        counts += torch.bincount(torch.as_tensor(example["input_ids"]), minlength=vocab_size)[:vocab_size]
    counts[list(exclude_ids)] = 0
    return counts


# ----------------------------------------------------------------------------------------------------------------
# Masking
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class MaskingCollator:
    """Masks training batches on the fly (with the global torch RNG, which checkpoints save and restore).
    Evaluation examples arrive already masked, once with a fixed seed, so every evaluation scores the same
    masked positions and numbers are comparable across steps; they are only padded (labels with -100)."""

    masker: DataCollatorForLanguageModeling
    padder: DataCollatorForTokenClassification

    @classmethod
    def for_tokenizer(cls, tokenizer, mlm_probability: float, pad_to_multiple_of: int | None = None):
        return cls(
            masker=DataCollatorForLanguageModeling(
                tokenizer, mlm_probability=mlm_probability, pad_to_multiple_of=pad_to_multiple_of
            ),
            padder=DataCollatorForTokenClassification(tokenizer, pad_to_multiple_of=pad_to_multiple_of),
        )

    def __call__(self, features: list[dict]) -> dict:
        return self.padder(features) if "labels" in features[0] else self.masker(features)


def masked_eval_set(
    examples: IterableDataset, tokenizer, mlm_probability: float, max_samples: int, seed: int
) -> Dataset:
    """Take the first `max_samples` validation examples and mask them once, reproducibly."""
    masker = DataCollatorForLanguageModeling(tokenizer, mlm_probability=mlm_probability, seed=seed)
    rows = []
    for example in islice(examples, max_samples):
        batch = masker([example])
        rows.append({key: batch[key][0].tolist() for key in ("input_ids", "attention_mask", "labels")})
    if not rows:
        raise EmptyDatasetError("the validation data yielded no example; give more data or a --validation_file")
    return Dataset.from_list(rows)

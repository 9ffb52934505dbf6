"""Train the Spanish SentencePiece-BPE tokenizer and save it as a Hugging Face tokenizer folder.

Examples:
    # local files (.txt one paragraph per line, .jsonl / .jsonl.gz with a "text" field)
    python train_tokenizer.py --train_file data/es_corpus_sample.txt --vocab_size 8000 --output_dir outputs/tokenizer
    # the default: stream RedPajama-es from the Hugging Face Hub
    python train_tokenizer.py --dataset_name erickfmm/red_pajama_es_hq_35 --max_documents 200000 \\
        --vocab_size 50000 --output_dir outputs/tokenizer

The folder holds tokenizer.json, tokenizer.model (SentencePiece), tokenizer_config.json (with
auto_map) and tokenization_spanish_moe_bert.py, and loads with
``AutoTokenizer.from_pretrained(output_dir, trust_remote_code=True)``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from spanish_moe_bert.corpus import DEFAULT_DATASET, iter_dataset
from tokenization_spanish_moe_bert import TOKENIZER_FILE, SpanishSPMTokenizer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--train_file", nargs="+", type=Path, help="local .txt / .jsonl / .jsonl.gz files")
    source.add_argument(
        "--dataset_name", default=DEFAULT_DATASET, help="datasets name, streamed (default: %(default)s)"
    )
    parser.add_argument("--dataset_split", default="train")
    parser.add_argument("--text_column", default="text", help="field holding the text (default: %(default)s)")
    parser.add_argument("--max_documents", type=int, default=None, help="read at most this many documents")
    parser.add_argument("--vocab_size", type=int, default=50000)
    parser.add_argument("--min_frequency", type=int, default=2)
    parser.add_argument(
        "--lowercase", action="store_true", help="an uncased tokenizer: lower-case every text (accents stay)"
    )
    parser.add_argument("--output_dir", type=Path, required=True)
    parser.add_argument("--overwrite_output_dir", action="store_true", help="replace a tokenizer already there")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> SpanishSPMTokenizer:
    args = parse_args(argv)
    if (args.output_dir / TOKENIZER_FILE).exists() and not args.overwrite_output_dir:
        sys.exit(f"{args.output_dir / TOKENIZER_FILE} already exists; pass --overwrite_output_dir to replace it")
    if args.train_file:
        texts = args.train_file  # files, which train_new reads twice (the alphabet, then BPE) instead of copying
        source = ", ".join(map(os.fspath, args.train_file))
    else:
        texts = iter_dataset(
            args.dataset_name, split=args.dataset_split, text_column=args.text_column, max_documents=args.max_documents
        )
        source = f"{args.dataset_name} ({args.dataset_split}, streaming)"

    start = time.perf_counter()
    tokenizer = SpanishSPMTokenizer.train_new(
        texts,
        max_documents=args.max_documents,
        text_column=args.text_column,
        vocab_size=args.vocab_size,
        min_frequency=args.min_frequency,
        lowercase=args.lowercase,
        show_progress=sys.stderr.isatty(),
    )
    seconds = time.perf_counter() - start
    tokenizer.save_pretrained(args.output_dir)
    kind = "uncased" if args.lowercase else "cased"
    print(f"trained a {len(tokenizer)}-token {kind} tokenizer on {source} in {seconds:.1f} s")
    print(f"saved {', '.join(sorted(os.listdir(args.output_dir)))} to {args.output_dir}")
    return tokenizer


if __name__ == "__main__":
    main()

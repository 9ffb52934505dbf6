#!/usr/bin/env python
"""Export a trained Spanish MoE-BERT checkpoint as a complete Hugging Face Hub model folder, and push it.

    python export_model.py outputs/mini-demo                                   # complete the folder in place
    python export_model.py outputs/mini-demo --output_dir outputs/mini-demo-hub --eval_file held_out.txt
    python export_model.py outputs/mini-demo --output_dir outputs/mini-demo-hub --onnx  # + onnx/model.onnx
    python export_model.py outputs/mini-demo --push_to_hub --hub_model_id your-name/spanish-moe-bert-mini

run_mlm.py already exports its output_dir at the end of training; this script re-exports (another pooling, a
clean copy without checkpoints, metrics on another held-out file) and pushes. See spanish_moe_bert/export.py.
"""

import argparse
import logging

from spanish_moe_bert.export import DEFAULT_DATASETS, POOLING_MODES, HubPushError, export_model
from spanish_moe_bert.onnx import MissingOnnxPackages


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", help="folder saved by run_mlm.py (model, tokenizer, optional trainer_state.json)")
    parser.add_argument("--output_dir", help="where to write the Hub folder (default: model_dir itself)")
    parser.add_argument(
        "--eval_file",
        nargs="+",
        help="held-out .txt/.jsonl(.gz) files to measure MLM loss, perplexity and accuracy on for the card "
        "(default: model_dir/eval_results.json if present)",
    )
    parser.add_argument(
        "--datasets",
        nargs="*",
        help="Hub dataset ids listed in the card's metadata (none: give the flag without values). Default: those "
        f"named by model_dir's card (run_mlm.py writes it), else {', '.join(DEFAULT_DATASETS)}",
    )
    parser.add_argument(
        "--base_model",
        help="Hub id of the model training started from, for the card's metadata (default: the one model_dir's card "
        "names; run_mlm.py records its --model_name_or_path when that is a Hub model)",
    )
    parser.add_argument("--pooling", choices=POOLING_MODES, default="cls", help="Sentence Transformers pooling")
    parser.add_argument(
        "--onnx", action="store_true", help="also write onnx/model.onnx (the encoder; checked against PyTorch)"
    )
    parser.add_argument("--push_to_hub", action="store_true", help="upload the folder to --hub_model_id")
    parser.add_argument("--hub_model_id", help="Hub repository, e.g. your-name/spanish-moe-bert-mini")
    parser.add_argument("--private", action="store_true", help="create the Hub repository as private")
    args = parser.parse_args(argv)
    if args.push_to_hub and not args.hub_model_id:
        parser.error("--push_to_hub needs --hub_model_id")
    return args


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    args = parse_args(argv)
    try:
        folder = export_model(
            args.model_dir,
            args.output_dir,
            eval_files=args.eval_file,
            datasets=args.datasets,
            base_model=args.base_model,
            pooling=args.pooling,
            onnx=args.onnx,
            push_to_hub=args.push_to_hub,
            hub_model_id=args.hub_model_id,
            private=args.private,
        )
    except (HubPushError, MissingOnnxPackages) as error:
        raise SystemExit(f"export_model: {error}") from None
    print(f"Hub-ready model folder: {folder}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Training throughput of the mini config on CPU: sparse MoE vs its dense twin with the same active parameters.

The dense twin replaces every sparse layer by one SwiGLU of width num_experts_per_tok * moe_intermediate_size, so
both models spend the same feed-forward FLOPs per token; the difference is what routing costs (router, top-k,
gather/scatter of tokens to experts) on this machine. Both train in one process on the same blocks of the bundled
corpus (forward, backward, AdamW step), in alternating rounds so that machine noise hits both alike.

    python benchmarks/bench_train.py            # prints a markdown table, writes benchmarks/results/bench_train.json
    python benchmarks/bench_train.py --quick    # a smoke run in seconds
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from itertools import islice
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

from configuration_spanish_moe_bert import SpanishMoEBertConfig  # noqa: E402
from modeling_spanish_moe_bert import SpanishMoEBertForMaskedLM  # noqa: E402
from spanish_moe_bert.data import MaskingCollator, local_documents, tokenize_stream  # noqa: E402


def training_batches(tokenizer, seq_len: int, batch_size: int, count: int) -> list[dict]:
    blocks = tokenize_stream(local_documents([harness.CORPUS]), tokenizer, seq_len)
    collate = MaskingCollator.for_tokenizer(tokenizer, mlm_probability=0.15)
    examples = list(islice(blocks, batch_size * count))
    return [collate(examples[i * batch_size : (i + 1) * batch_size]) for i in range(count)]


def train_steps(model, optimizer, batches) -> float:
    """Seconds for one optimizer step per batch."""
    start = time.perf_counter()
    for batch in batches:
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_config", default=str(harness.REPO / "configs" / "mini.json"))
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per model per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny run: 2 rounds of 2 steps at batch 4")
    parser.add_argument("--output", help="results JSON (default benchmarks/results/bench_train[_quick].json)")
    args = parser.parse_args()
    if args.quick:
        args.batch_size, args.steps, args.rounds, args.warmup = 4, 2, 2, 1

    torch.manual_seed(0)
    tokenizer = harness.train_tokenizer(8000)
    config = SpanishMoEBertConfig.from_json_file(args.model_config)
    config.vocab_size, config.pad_token_id = len(tokenizer), tokenizer.pad_token_id
    batches = training_batches(tokenizer, args.seq_len, args.batch_size, args.warmup + args.steps)

    runs = {}
    for name, model_config in (("moe", config), ("dense twin", config.dense_twin())):
        model = SpanishMoEBertForMaskedLM(model_config).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        train_steps(model, optimizer, batches[: args.warmup])
        runs[name] = {"model": model, "optimizer": optimizer, "round_seconds": []}
    for _ in range(args.rounds):  # alternate, so drift in machine speed affects both
        for run in runs.values():
            run["round_seconds"].append(train_steps(run["model"], run["optimizer"], batches[args.warmup :]))

    # The median round: robust to other processes stealing the CPU for a while.
    tokens_per_round = args.steps * args.batch_size * args.seq_len
    results = {
        name: {
            "total_parameters": run["model"].num_parameters(),
            "active_parameters": run["model"].num_active_parameters(),
            "tokens_per_second": tokens_per_round / statistics.median(run["round_seconds"]),
            "round_seconds": run["round_seconds"],
        }
        for name, run in runs.items()
    }
    for result in results.values():
        result["relative_to_dense"] = result["tokens_per_second"] / results["dense twin"]["tokens_per_second"]

    print(f"\nTraining throughput, {Path(args.model_config).name}, CPU ({torch.get_num_threads()} threads), "
          f"batch {args.batch_size} x {args.seq_len} tokens, median of {args.rounds} rounds of {args.steps} steps, "
          f"load average {os.getloadavg()[0]:.1f}\n")  # fmt: skip
    print("| model | total params | active params | tokens/s | vs dense twin |")
    print("|---|---:|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['total_parameters'] / 1e6:.2f}M | {r['active_parameters'] / 1e6:.2f}M | "
              f"{r['tokens_per_second']:,.0f} | {r['relative_to_dense']:.2f}x |")  # fmt: skip

    output = Path(args.output or harness.RESULTS / f"bench_train{'_quick' if args.quick else ''}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({
        "benchmark": "bench_train", "model_config": Path(args.model_config).name, "quick": args.quick,
        "device": "cpu", "threads": torch.get_num_threads(), "processor": platform.processor() or platform.machine(),
        "torch": torch.__version__, "load_average_1min": os.getloadavg()[0], "seq_len": args.seq_len,
        "batch_size": args.batch_size, "rounds": args.rounds, "steps_per_round": args.steps, "results": results,
    }, indent=2) + "\n")  # fmt: skip
    print(f"\nwrote {output}")


if __name__ == "__main__":
    main()

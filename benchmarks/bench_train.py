#!/usr/bin/env python
"""Training throughput on CPU: our MoE against its dense twin and a ModernBERT of the same active FFN parameters.

The dense twin replaces every sparse layer by one SwiGLU of width num_experts_per_tok * moe_intermediate_size, so
both spend the same feed-forward FLOPs per token: the difference is what routing costs. ModernBERT (GeGLU of the
same width, LayerNorm, its own attention) predicts only at masked positions, as ours does (`sparse_prediction`).
All train in one process on the same blocks of the bundled corpus (forward, backward, optimizer step), in alternating
rounds so that machine noise hits all alike, with freed memory kept for reuse as run_mlm.py does on CPUs. The
optimizer is the one run_mlm.py's Trainer builds by default (fused AdamW), whose step costs with the total
parameters, not the active ones.

    python benchmarks/bench_train.py            # mini shapes and the published widths (4 layers, 512 tokens)
    python benchmarks/bench_train.py --quick    # a smoke run in seconds
    python benchmarks/bench_train.py --compile  # each model also compiled, as run_mlm.py --torch_compile does

With --compile every model also trains through accelerate's regional compilation (Inductor), in the same rounds; a
compiled model is compared with the compiled ModernBERT and twin, and its warm-up steps (compiling) are not timed.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

import torch
from accelerate.utils import compile_regions

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
from transformers import ModernBertForMaskedLM, Trainer, TrainingArguments  # noqa: E402

from modeling_spanish_moe_bert import SpanishMoEBertForMaskedLM  # noqa: E402
from spanish_moe_bert.cpu import keep_freed_memory  # noqa: E402
from spanish_moe_bert.data import MaskingCollator, local_documents, tokenize_stream  # noqa: E402
from spanish_moe_bert.training import raise_recompile_limit  # noqa: E402


def training_batches(tokenizer, seq_len: int, batch_size: int, count: int) -> list[dict]:
    blocks = tokenize_stream(local_documents([harness.CORPUS]), tokenizer, seq_len)
    collate = MaskingCollator.for_tokenizer(tokenizer, mlm_probability=0.15)
    examples = list(islice(blocks, batch_size * count))
    return [collate(examples[i * batch_size : (i + 1) * batch_size]) for i in range(count)]


def trainer_optimizer(model, output_dir: str) -> torch.optim.Optimizer:
    """The optimizer a default `Trainer` (run_mlm.py's) builds for `model`, at learning rate 1e-4."""
    args = TrainingArguments(output_dir=output_dir, learning_rate=1e-4, report_to=[])
    optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    return optimizer_cls(model.parameters(), **kwargs)


def describe(optimizer: torch.optim.Optimizer) -> str:
    fused = optimizer.defaults.get("fused")
    return f"{type(optimizer).__name__}{' (fused)' if fused else ''}"


def train_steps(model, optimizer, batches) -> tuple[float, float]:
    """Seconds for one optimizer step per batch, and the part of them in the optimizer (step and zero_grad)."""
    start, in_optimizer = time.perf_counter(), 0.0
    for batch in batches:
        loss = model(**batch).loss
        loss.backward()
        optimizer_start = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        in_optimizer += time.perf_counter() - optimizer_start
    return time.perf_counter() - start, in_optimizer


MODES = {  # config, layers (None: as in the file), sequence length, batch size
    "mini": ("mini.json", None, 128, 16),
    "published widths": ("large.json", 4, 512, 4),
}


def measure(
    mode: str, tokenizer, steps: int, rounds: int, warmup: int, quick: bool, output_dir: str, compile: bool = False
) -> dict:
    config_name, layers, seq_len, batch_size = MODES[mode]
    if quick:
        batch_size = 2
    overrides = {"num_hidden_layers": layers} if layers else {}
    config = harness.our_config(harness.REPO / "configs" / config_name, tokenizer, **overrides)
    batches = training_batches(tokenizer, seq_len, batch_size, warmup + steps)
    factories = {
        "moe": lambda: SpanishMoEBertForMaskedLM(config),
        "dense twin": lambda: SpanishMoEBertForMaskedLM(config.dense_twin()),
        "modernbert": lambda: ModernBertForMaskedLM(harness.modernbert_config(config, tokenizer)),
    }
    runs = {}
    for name, factory in factories.items():
        for compiled in (False, True) if compile else (False,):
            torch.manual_seed(0)
            model = factory().train()
            # compiled: each repeated layer compiled once, the rest apart, as run_mlm.py --torch_compile does
            runner = compile_regions(model) if compiled else model
            optimizer = trainer_optimizer(model, output_dir)
            train_steps(runner, optimizer, batches[:warmup])
            runs[name + (", compiled" if compiled else "")] = {
                "model": model, "runner": runner, "optimizer": optimizer, "round_seconds": [], "optimizer_seconds": []
            }  # fmt: skip
    for _ in range(rounds):  # alternate, so drift in machine speed affects all
        for run in runs.values():
            seconds, in_optimizer = train_steps(run["runner"], run["optimizer"], batches[warmup:])
            run["round_seconds"].append(seconds)
            run["optimizer_seconds"].append(in_optimizer)

    # The median round: robust to other processes stealing the CPU for a while.
    tokens_per_round = steps * batch_size * seq_len
    results = {
        name: {
            "total_parameters": run["model"].num_parameters(),
            "active_parameters": harness.active_parameters(run["model"]),
            "tokens_per_second": tokens_per_round / statistics.median(run["round_seconds"]),
            "round_seconds": run["round_seconds"],
            # The optimizer's step reads and writes every parameter: it costs with the total parameters.
            "optimizer_share": statistics.median(o / r for o, r in zip(run["optimizer_seconds"], run["round_seconds"])),
        }
        for name, run in runs.items()
    }
    for name, result in results.items():  # a compiled model against the compiled others
        suffix = ", compiled" if name.endswith(", compiled") else ""
        result["vs_modernbert"] = result["tokens_per_second"] / results["modernbert" + suffix]["tokens_per_second"]
        result["vs_dense_twin"] = result["tokens_per_second"] / results["dense twin" + suffix]["tokens_per_second"]
        if suffix:
            result["vs_eager"] = result["tokens_per_second"] / results[name.removesuffix(suffix)]["tokens_per_second"]
    shape = (f"{config_name}: H {config.hidden_size}, {config.num_hidden_layers} layers, {config.num_experts} "
             f"experts x {config.moe_intermediate_size} top-{config.num_experts_per_tok}")  # fmt: skip
    optimizer = describe(next(iter(runs.values()))["optimizer"])
    return {"shape": shape, "seq_len": seq_len, "batch_size": batch_size, "optimizer": optimizer, "results": results}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--steps", type=int, default=4, help="timed steps per model per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="tiny run: batch 2, 2 rounds of 2 steps")
    parser.add_argument(
        "--compile", action="store_true", help="also each model compiled as run_mlm.py --torch_compile does"
    )
    parser.add_argument("--output", help="results JSON (default benchmarks/results/bench_train[_quick].json)")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.rounds, args.warmup = 2, 2, 1
    if args.compile:  # the first steps compile, then recompile for the number of masked positions, which varies
        args.warmup = max(args.warmup, 4)
        # Every model's layers run one code object (transformers' GradientCheckpointingLayer call), whose compiled
        # versions Dynamo caps at 8 per process: past it, the next models' layers would run eagerly.
        raise_recompile_limit(64)
    keep_freed_memory()

    tokenizer = harness.train_tokenizer(8000)
    with tempfile.TemporaryDirectory() as output_dir:  # TrainingArguments wants one; nothing is written there
        report = {
            mode: measure(mode, tokenizer, args.steps, args.rounds, args.warmup, args.quick, output_dir, args.compile)
            for mode in args.modes
        }
    for mode, r in report.items():
        print(f"\nTraining throughput, {r['shape']}; batch {r['batch_size']} x {r['seq_len']} tokens, "
              f"{r['optimizer']}, median of {args.rounds} rounds of {args.steps} steps; "
              f"{harness.machine_line()}\n")  # fmt: skip
        print("| model | total params | active params | tokens/s | vs ModernBERT | vs dense twin | in optimizer |"
              + (" vs eager |" if args.compile else ""))  # fmt: skip
        print("|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if args.compile else ""))
        for name, m in r["results"].items():
            print(
                f"| {name} | {m['total_parameters'] / 1e6:.2f}M | {m['active_parameters'] / 1e6:.2f}M | "
                f"{m['tokens_per_second']:,.0f} | {m['vs_modernbert']:.2f}x | {m['vs_dense_twin']:.2f}x | "
                f"{m['optimizer_share']:.0%} |"
                + (f" {m['vs_eager']:.2f}x |" if "vs_eager" in m else " |" * args.compile)
            )

    output = Path(args.output or harness.RESULTS / f"bench_train{'_quick' if args.quick else ''}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "bench_train",
        "quick": args.quick,
        "machine": harness.machine(),
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "warmup_steps": args.warmup,
        "compile": "accelerate compile_regions (Inductor)" if args.compile else None,
        "allocator": "freed memory kept (spanish_moe_bert.cpu)",
        "modes": report,
    }
    output.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {output}")


if __name__ == "__main__":
    main()

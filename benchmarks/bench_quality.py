#!/usr/bin/env python
"""Quality at equal compute: held-out MLM loss and masked-token accuracy of four encoders trained side by side.

Contenders, all at the shapes of one of our configs (hidden size, layers, heads, vocabulary, positions):
  moe          SpanishMoEBertForMaskedLM (sparse MoE, DyT, MHA/GQA/MLA mix)
  dense twin   the same model with one SwiGLU per layer as wide as the experts active per token
  modernbert   transformers' ModernBertForMaskedLM, GLU width = our active FFN width
  bert         transformers' BertForMaskedLM, MLP width 1.5x (same active FFN parameters)

Same tokenizer (8k BPE on the benchmark's corpus), same pre-masked batches in the same order, same sequence
length, tokens seen, AdamW settings, warmup/decay schedule and clipping, one shared loop (harness.py) that
trains the models one step each in turn so machine noise hits all alike. The held-out set is
every 20th paragraph, masked once.

    python benchmarks/bench_quality.py --quick   # tiny config, a couple of minutes on 2 cores
    python benchmarks/bench_quality.py           # mini config, 900 steps x 16 x 128 on the shared 9.5 MB corpus
                                                 # when present (about 40 minutes on 2 idle cores)

Writes benchmarks/results/bench_quality[_quick].json and .png (loss/accuracy vs tokens and vs wall time).
"""

import argparse
import json
import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
from transformers import BertForMaskedLM, ModernBertForMaskedLM  # noqa: E402

from modeling_spanish_moe_bert import SpanishMoEBertForMaskedLM  # noqa: E402

MODES = {  # config, seq_len, batch, steps, eval_every
    "quick": ("tiny.json", 64, 16, 40, 10),
    "full": ("mini.json", 128, 16, 900, 100),
}


def contenders(config, tokenizer) -> dict:
    return {
        "moe": lambda: SpanishMoEBertForMaskedLM(config),
        "dense twin": lambda: SpanishMoEBertForMaskedLM(config.dense_twin()),
        "modernbert": lambda: ModernBertForMaskedLM(harness.modernbert_config(config, tokenizer)),
        "bert": lambda: BertForMaskedLM(harness.bert_config(config, tokenizer)),
    }


def plot(results: dict, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for name, result in results.items():
        curve = result["curve"]
        for row, metric in enumerate(("eval_loss", "eval_accuracy")):
            for col, x in enumerate(("tokens", "seconds")):
                axes[row][col].plot([p[x] for p in curve], [p[metric] for p in curve], marker=".", label=name)
                axes[row][col].set_xlabel("tokens seen" if x == "tokens" else "training wall time (s)")
                axes[row][col].set_ylabel("held-out MLM loss" if metric == "eval_loss" else "masked-token accuracy")
    axes[0][0].legend()
    fig.suptitle("\n".join(textwrap.wrap(title, 140)), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def print_table(results: dict, reference: str = "modernbert") -> None:
    ref = results[reference]["final"]["eval_loss"]
    print("| model | total params | active params | held-out loss | vs ModernBERT | masked acc | train tokens/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        f = r["final"]
        print(f"| {name} | {r['total_parameters'] / 1e6:.2f}M | {r['active_parameters'] / 1e6:.2f}M | "
              f"{f['eval_loss']:.3f} | {100 * (f['eval_loss'] / ref - 1):+.1f}% | {f['eval_accuracy']:.3f} | "
              f"{r['tokens_per_second']:,.0f} |")  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny config, 40 steps of 16 x 64 tokens")
    parser.add_argument("--model_config", help="our config JSON (default: tiny in --quick, else mini)")
    parser.add_argument("--seq_len", type=int)
    parser.add_argument("--batch_size", type=int)
    parser.add_argument("--steps", type=int, help="optimizer steps per model (tokens seen = steps x batch x seq_len)")
    parser.add_argument("--eval_every", type=int)
    parser.add_argument("--eval_batches", type=int, default=8, help="held-out batches per evaluation")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--corpus", type=Path, help="text corpus (default: bundled in --quick, else ../shared's when present)"
    )
    parser.add_argument("--norm_type", choices=["dyt", "layernorm", "rmsnorm"], help="override our models' norm_type")
    parser.add_argument(
        "--output", help="results path without extension (default benchmarks/results/bench_quality[_quick])"
    )
    args = parser.parse_args()
    config_name, seq_len, batch_size, steps, eval_every = MODES["quick" if args.quick else "full"]
    config_path = args.model_config or harness.REPO / "configs" / config_name
    seq_len, batch_size = args.seq_len or seq_len, args.batch_size or batch_size
    steps, eval_every = args.steps or steps, args.eval_every or eval_every

    corpus = args.corpus or harness.default_corpus(args.quick)
    tokenizer = harness.train_tokenizer(8000, corpus)
    overrides = {"norm_type": args.norm_type} if args.norm_type else {}
    config = harness.our_config(config_path, tokenizer, max_position_embeddings=max(seq_len, 128), **overrides)
    batches, eval_batches = harness.mlm_data(tokenizer, seq_len, batch_size, corpus=corpus)
    eval_batches = eval_batches[: args.eval_batches]
    results = harness.train_side_by_side(
        contenders(config, tokenizer), batches, eval_batches, steps=steps, eval_every=eval_every, lr=args.lr
    )

    tokens = steps * batch_size * seq_len
    title = (f"Quality at equal compute: {Path(config_path).name} shapes (ours with {config.norm_type}), "
             f"{steps} steps x {batch_size} x {seq_len} = {tokens:,} tokens per model, {len(batches)} distinct "
             f"batches of {corpus.name}; {harness.machine_line()}")  # fmt: skip
    print(f"\n{title}\n")
    print_table(results)
    output = Path(args.output or harness.RESULTS / f"bench_quality{'_quick' if args.quick else ''}")
    output.parent.mkdir(parents=True, exist_ok=True)
    plot(results, title, output.with_suffix(".png"))
    output.with_suffix(".json").write_text(json.dumps({
        "benchmark": "bench_quality", "quick": args.quick, "model_config": Path(config_path).name,
        "corpus": corpus.name, "norm_type": config.norm_type, "seq_len": seq_len, "batch_size": batch_size,
        "steps": steps, "tokens_per_model": tokens, "distinct_training_batches": len(batches),
        "eval_masked_batches": len(eval_batches), "lr": args.lr,
        "optimizer": "AdamW(betas=(0.9, 0.98), weight_decay=0.01), 10% linear warmup, linear decay, clip 1.0",
        "machine": harness.machine(), "results": results,
    }, indent=2) + "\n")  # fmt: skip
    print(f"\nwrote {output.with_suffix('.json')} and {output.with_suffix('.png')}")


if __name__ == "__main__":
    main()

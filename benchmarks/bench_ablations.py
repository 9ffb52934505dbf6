#!/usr/bin/env python
"""Architecture ablations of our MoE encoder on the quality harness: one table, one budget.

Each variant changes one thing of the base config (DyT, attention pattern mha/gqa/gqa/mla, 8 experts, top-2):
  norm            DyT vs LayerNorm vs RMSNorm
  attention       all-MHA vs all-GQA vs all-MLA vs the default mix
  top-k           1 / 2 / 4 experts per token (changes the active parameters: that is the trade-off measured)
  experts         8 vs 32 (same active parameters, 4x the expert parameters)
  recipe          what makes DyT train, each removed in turn: the automatic alpha init (instead the DyT
                  paper's LLaMA-7B values 0.8 / 0.2), the embedding multiplier (1.0 instead of sqrt(hidden_size);
                  alpha follows it) and the unigram init of the output bias

All variants train with the same tokenizer, pre-masked batches, order, tokens and optimizer as bench_quality
(the shared loop in harness.py, models in turn so machine noise hits all alike) and are scored on the same
held-out masked set.

    python benchmarks/bench_ablations.py --quick   # tiny config, 24 steps of 16 x 64 tokens per variant
    python benchmarks/bench_ablations.py           # tiny config, 450 steps of 16 x 128 tokens per variant on the
                                                   # shared 9.5 MB corpus when present (about 15 minutes)

Writes benchmarks/results/bench_ablations[_quick].json.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

from modeling_spanish_moe_bert import SpanishMoEBertForMaskedLM  # noqa: E402

VARIANTS = {  # name -> (group, config overrides)
    "default (dyt, mix, 8e top-2)": ("base", {}),
    "layernorm": ("norm", {"norm_type": "layernorm"}),
    "rmsnorm": ("norm", {"norm_type": "rmsnorm"}),
    "all mha": ("attention", {"attention_pattern": ["mha"]}),
    "all gqa": ("attention", {"attention_pattern": ["gqa"]}),
    "all mla": ("attention", {"attention_pattern": ["mla"]}),
    "top-1": ("top-k", {"num_experts_per_tok": 1}),
    "top-4": ("top-k", {"num_experts_per_tok": 4}),
    "32 experts": ("experts", {"num_experts": 32}),
    "dyt alpha 0.8 / 0.2": ("recipe", {"dyt_alpha_init_attention": 0.8, "dyt_alpha_init_ffn": 0.2}),
    "embedding multiplier 1": ("recipe", {"embedding_multiplier": 1.0}),
    "output bias at zero": ("recipe", {}),
}
WITHOUT_OUTPUT_PRIOR = ("output bias at zero",)
MODES = {  # config, seq_len, batch, steps, eval_every
    "quick": ("tiny.json", 64, 16, 24, 12),
    "full": ("tiny.json", 128, 16, 450, 150),  # 13 variants: tiny shapes keep it near 15 minutes on 2 cores
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny config, 24 steps of 16 x 64 tokens")
    parser.add_argument("--model_config", help="base config JSON (default: tiny)")
    parser.add_argument("--seq_len", type=int)
    parser.add_argument("--batch_size", type=int)
    parser.add_argument("--steps", type=int, help="optimizer steps per variant")
    parser.add_argument("--eval_every", type=int)
    parser.add_argument("--eval_batches", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--corpus", type=Path, help="text corpus (default: bundled in --quick, else ../shared's when present)"
    )
    parser.add_argument("--output", help="results JSON (default benchmarks/results/bench_ablations[_quick].json)")
    args = parser.parse_args()
    config_name, seq_len, batch_size, steps, eval_every = MODES["quick" if args.quick else "full"]
    config_path = args.model_config or harness.REPO / "configs" / config_name
    seq_len, batch_size = args.seq_len or seq_len, args.batch_size or batch_size
    steps, eval_every = args.steps or steps, args.eval_every or eval_every

    corpus = args.corpus or harness.default_corpus(args.quick)
    tokenizer = harness.train_tokenizer(8000, corpus)
    batches, eval_batches = harness.mlm_data(tokenizer, seq_len, batch_size, corpus=corpus)
    eval_batches = eval_batches[: args.eval_batches]
    configs = {
        name: harness.our_config(config_path, tokenizer, max_position_embeddings=max(seq_len, 128), **overrides)
        for name, (_, overrides) in VARIANTS.items()
    }
    factories = {name: (lambda c=c: SpanishMoEBertForMaskedLM(c)) for name, c in configs.items()}
    results = harness.train_side_by_side(
        factories, batches, eval_batches, steps=steps, eval_every=eval_every, lr=args.lr,
        without_output_prior=WITHOUT_OUTPUT_PRIOR,
    )

    tokens = steps * batch_size * seq_len
    base = results[next(iter(VARIANTS))]["final"]
    print(f"\nAblations: {Path(config_path).name} base, {steps} steps x {batch_size} x {seq_len} = {tokens:,} tokens "
          f"per variant, {len(batches)} distinct batches of {corpus.name}; {harness.machine_line()}\n")  # fmt: skip
    print("| group | variant | total params | active params | held-out loss | vs default | masked acc "
          "| train tokens/s |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        f = r["final"]
        print(f"| {VARIANTS[name][0]} | {name} | {r['total_parameters'] / 1e6:.2f}M | "
              f"{r['active_parameters'] / 1e6:.2f}M | {f['eval_loss']:.3f} | "
              f"{100 * (f['eval_loss'] / base['eval_loss'] - 1):+.1f}% | "
              f"{f['eval_accuracy']:.3f} | {r['tokens_per_second']:,.0f} |")  # fmt: skip

    output = Path(args.output or harness.RESULTS / f"bench_ablations{'_quick' if args.quick else ''}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({
        "benchmark": "bench_ablations", "quick": args.quick, "model_config": Path(config_path).name,
        "corpus": corpus.name, "distinct_training_batches": len(batches), "seq_len": seq_len,
        "batch_size": batch_size, "steps": steps, "tokens_per_variant": tokens, "lr": args.lr,
        "variants": {name: {"group": g, "overrides": o} for name, (g, o) in VARIANTS.items()},
        "machine": harness.machine(), "results": results,
    }, indent=2) + "\n")  # fmt: skip
    print(f"\nwrote {output}")


if __name__ == "__main__":
    main()

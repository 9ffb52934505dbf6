#!/usr/bin/env python
"""Recipe and architecture levers of our MoE encoder on the quality harness: one table, one budget.

Each variant changes one thing of the base (mini shapes: DyT in the blocks with log-alpha multiplier 3, LayerNorm at
the outputs, attention mha/gqa/gqa/mla, 32 experts of 128, top-2, lr 1e-3; the tables of 2026-11-25 had 8 experts,
what mini.json had until the expert rows of 2026-12-02) under one of two recipes (`--recipe`):
  default      the recipe the configs and run files use now: masking 30%, warmup-stable-decay, loss-free balancing
  2026-11-25   the base the lever table below was measured from: Switch loss 0.01, masking 15%, linear decay
The dense twin is the bar a lever must clear at this budget; ModernBERT (group "reference") the one the
architecture rows are measured against:
  masking     30% of tokens masked in training (evaluated at 15%, as every variant)
  schedule    warmup-stable-decay instead of linear decay
  peak lr     2e-3 and 5e-4
  router      top-1; load-balancing coefficient 0.001 and 0.1; balancing without a loss (a per-expert selection
              bias, DeepSeek-V3) ; one shared expert + top-1 routed (DeepSeekMoE; same active parameters)
  placement   MoE in every other layer, a dense SwiGLU of the same active width in between
  upcycling   the dense twin for the first half of the steps, then upcycled into the MoE (spanish_moe_bert/upcycling)
and, with `--groups`, the earlier architecture groups:
  norm        LayerNorm, RMSNorm (everywhere)      attention   all MHA / GQA / MLA
  experts     8 and 16 experts of the same width (fewer total parameters, the same active ones), 32 x 64 top-4
  dyt alpha   DyT at the two output norms too (the base has LayerNorm there); log-alpha multiplier 1 and 10
              (the base: 3), alone and with DyT output norms
  dyt recipe  the DyT paper's alpha 0.8 / 0.2; embedding multiplier 1; output bias at zero
  combined    LayerNorm and MHA everywhere (what is left between us and ModernBERT: GeGLU, the embedding norm,
              local attention, no biases)
  reference   transformers' ModernBertForMaskedLM at the same shapes and active FFN width (harness.py)

The base always runs first; a variant that is the same run as another under the chosen recipe (the 30% masking,
warmup-stable-decay and loss-free rows under the default recipe) is left out. All variants train with the same
tokenizer, pre-masked batches, order, tokens and optimizer (the shared loop in
harness.py, models in turn so machine noise hits all alike) and are scored on the same held-out documents.

    python benchmarks/bench_ablations.py --quick   # tiny config, 24 steps of 16 x 64 tokens per variant
    python benchmarks/bench_ablations.py           # mini config, 1,200 steps of 16 x 128 tokens per variant on
                                                   # the shared corpus when present (about 2 hours on 2 cores;
                                                   # the lever table: --recipe 2026-11-25 --steps 600
                                                   # --eval_every 100, 1 hour)
    python benchmarks/bench_ablations.py --variants layernorm "all mha" "layernorm + all mha" modernbert \
        --steps 1000 --eval_every 100 --output benchmarks/results/bench_ablations_architecture.json

Writes benchmarks/results/bench_ablations[_quick].json.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
from transformers import ModernBertForMaskedLM  # noqa: E402

from configuration_spanish_moe_bert import SpanishMoEBertConfig  # noqa: E402
from modeling_spanish_moe_bert import SpanishMoEBertForMaskedLM  # noqa: E402
from spanish_moe_bert.cpu import keep_freed_memory  # noqa: E402
from spanish_moe_bert.upcycling import upcycle  # noqa: E402

# name -> (group, config overrides, Contender options); "mask 30%" and "upcycled" get their batches / model below
VARIANTS = {
    "base (mini: 32 experts top-2; tiny: 8)": ("base", {}, {}),
    "dense twin": ("base", {"dense": True}, {}),
    "mask 30% in training": ("masking", {}, {"mask_probability": 0.3}),
    "warmup-stable-decay": ("schedule", {}, {"schedule": "wsd"}),
    "lr 2e-3": ("peak lr", {}, {"lr": 2e-3}),
    "lr 5e-4": ("peak lr", {}, {"lr": 5e-4}),
    "top-1": ("router", {"num_experts_per_tok": 1}, {}),
    "aux coef 0.001": ("router", {"router_aux_loss_coef": 0.001}, {}),
    "aux coef 0.1": ("router", {"router_aux_loss_coef": 0.1}, {}),
    "loss-free balancing": ("router", {"router_aux_loss_coef": 0.0, "router_bias_update_rate": 1e-3}, {}),
    "shared expert + top-1": ("router", {"num_shared_experts": 1, "num_experts_per_tok": 1}, {}),
    "MoE every other layer": ("placement", {"alternate": True}, {}),
    "upcycled at 50%": ("upcycling", {}, {"upcycle_at": 0.5}),
    "layernorm": ("norm", {"norm_type": "layernorm"}, {}),
    "rmsnorm": ("norm", {"norm_type": "rmsnorm", "output_norm_type": None}, {}),
    "all mha": ("attention", {"attention_pattern": ["mha"]}, {}),
    "all gqa": ("attention", {"attention_pattern": ["gqa"]}, {}),
    "all mla": ("attention", {"attention_pattern": ["mla"]}, {}),
    "8 experts": ("experts", {"num_experts": 8}, {}),  # mini.json's base until 2026-12-02
    "16 experts": ("experts", {"num_experts": 16}, {}),
    "32 experts x 64, top-4": (
        "experts",
        {"num_experts": 32, "moe_intermediate_size": 64, "num_experts_per_tok": 4},
        {},
    ),
    "dyt output norms": ("dyt alpha", {"output_norm_type": None}, {}),
    "log-alpha multiplier 1": ("dyt alpha", {"dyt_log_alpha_multiplier": 1.0}, {}),
    "log-alpha multiplier 10": ("dyt alpha", {"dyt_log_alpha_multiplier": 10.0}, {}),
    "multiplier 1, dyt output norms": ("dyt alpha", {"dyt_log_alpha_multiplier": 1.0, "output_norm_type": None}, {}),
    "dyt alpha 0.8 / 0.2": ("dyt recipe", {"dyt_alpha_init_attention": 0.8, "dyt_alpha_init_ffn": 0.2}, {}),
    "embedding multiplier 1": ("dyt recipe", {"embedding_multiplier": 1.0}, {}),
    "output bias at zero": ("dyt recipe", {}, {"output_prior": False}),
    "layernorm + all mha": ("combined", {"norm_type": "layernorm", "attention_pattern": ["mha"]}, {}),
    "modernbert": ("reference", {"modernbert": True}, {}),
}
LEVERS = ("base", "masking", "schedule", "peak lr", "router", "placement", "upcycling")
MODES = {  # config, seq_len, batch, steps, eval_every
    "quick": ("tiny.json", 64, 16, 24, 12),
    "full": ("mini.json", 128, 16, 1200, 200),
}


# The recipes a table is measured from: config overrides of our models, the training masking rate and schedule of
# every variant. The 2026-11-25 lever table started from the defaults then (Switch loss 0.01, 15%, linear); the
# configs and run files have since taken its winners.
RECIPES = {
    "default": ({}, 0.3, "wsd"),
    "2026-11-25": ({"router_aux_loss_coef": 0.01, "router_bias_update_rate": 0.0}, 0.15, "linear"),
}


def build_config(config_path, tokenizer, seq_len: int, overrides: dict, recipe: str):
    overrides = RECIPES[recipe][0] | dict(overrides)
    dense, alternate = overrides.pop("dense", False), overrides.pop("alternate", False)
    config = harness.our_config(config_path, tokenizer, max_position_embeddings=max(seq_len, 128), **overrides)
    if dense:
        return config.dense_twin()
    if alternate:  # sparse, dense, sparse, ...: the dense layers as wide as the active experts (same FLOPs)
        kinds = ["sparse" if i % 2 == 0 else "dense" for i in range(config.num_hidden_layers)]
        config = SpanishMoEBertConfig.from_dict(
            config.to_dict() | {"mlp_layer_types": kinds, "intermediate_size": config.active_intermediate_size}
        )
    return config


def contenders(names, config_path, tokenizer, seq_len, batch_size, corpus, seed, recipe) -> dict:
    """The variants as harness Contenders. A variant that is the same run as an earlier one under this recipe (the
    30% masking lever under the default recipe, say) is left out, so no run is trained twice."""
    result, runs = {}, {}
    _, recipe_mask, recipe_schedule = RECIPES[recipe]
    for name in names:
        _, overrides, options = VARIANTS[name]
        options = {"schedule": recipe_schedule, "mask_probability": recipe_mask} | options
        overrides = dict(overrides)
        modernbert = overrides.pop("modernbert", False)
        config = build_config(config_path, tokenizer, seq_len, overrides, recipe)
        if modernbert:
            config = harness.modernbert_config(config, tokenizer)
        run = (type(config).__name__, config.to_json_string(), repr(sorted(options.items())))
        if run in runs:
            print(f"{name}: left out, the same run as {runs[run]!r} under the {recipe} recipe")
            continue
        runs[run] = name
        rate = options.pop("mask_probability")
        if rate != recipe_mask:  # the same blocks and order, masked at this rate
            options["batches"], _ = harness.mlm_data(
                tokenizer, seq_len, batch_size, seed=seed, corpus=corpus, mask_probability=rate
            )
        if modernbert:
            result[name] = harness.Contender(build=lambda c=config: ModernBertForMaskedLM(c), **options)
        elif "upcycle_at" in options:  # trains the dense twin, then continues as the MoE started from it
            options["upcycle"] = lambda dense, c=config: upcycle(dense, c)
            dense = config.dense_twin()
            result[name] = harness.Contender(build=lambda c=dense: SpanishMoEBertForMaskedLM(c), **options)
        else:
            result[name] = harness.Contender(build=lambda c=config: SpanishMoEBertForMaskedLM(c), **options)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny config, 24 steps of 16 x 64 tokens")
    parser.add_argument("--groups", nargs="+", default=list(LEVERS), help=f"default: {' '.join(LEVERS)}")
    parser.add_argument("--variants", nargs="+", help="these variants (by name) instead of --groups")
    parser.add_argument("--recipe", choices=list(RECIPES), default="default", help="the base recipe (see above)")
    parser.add_argument("--model_config", help="base config JSON (default: tiny in --quick, else mini)")
    parser.add_argument("--seq_len", type=int)
    parser.add_argument("--batch_size", type=int)
    parser.add_argument("--steps", type=int, help="optimizer steps per variant")
    parser.add_argument("--eval_every", type=int)
    parser.add_argument("--eval_batches", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--corpus", type=Path, help="text corpus (default: bundled in --quick, else the shared one)")
    parser.add_argument("--output", help="results JSON (default benchmarks/results/bench_ablations[_quick].json)")
    args = parser.parse_args()
    unknown = sorted(set(args.groups) - {group for group, _, _ in VARIANTS.values()})
    if unknown:
        parser.error(f"unknown groups {unknown}")
    unknown = sorted(set(args.variants or []) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    config_name, seq_len, batch_size, steps, eval_every = MODES["quick" if args.quick else "full"]
    config_path = args.model_config or harness.REPO / "configs" / config_name
    seq_len, batch_size = args.seq_len or seq_len, args.batch_size or batch_size
    steps, eval_every = args.steps or steps, args.eval_every or eval_every
    keep_freed_memory()

    corpus = args.corpus or harness.default_corpus(args.quick)
    tokenizer = harness.train_tokenizer(8000, corpus)
    mask_probability = RECIPES[args.recipe][1]
    batches, eval_batches = harness.mlm_data(
        tokenizer, seq_len, batch_size, seed=args.seed, corpus=corpus, mask_probability=mask_probability
    )
    eval_batches = eval_batches[: args.eval_batches]
    chosen = args.variants or [name for name, (group, _, _) in VARIANTS.items() if group in args.groups]
    base_name = next(iter(VARIANTS))  # every table is read against the base, so it always runs, first
    names = [base_name] + [name for name in chosen if name != base_name]
    results = harness.train_side_by_side(
        contenders(names, config_path, tokenizer, seq_len, batch_size, corpus, args.seed, args.recipe),
        batches, eval_batches,
        steps=steps, eval_every=eval_every, lr=args.lr, seed=args.seed,
    )  # fmt: skip

    tokens = steps * batch_size * seq_len
    base = results[names[0]]["final"]
    recipe = f"masking {mask_probability:.0%}, {RECIPES[args.recipe][2]} schedule, overrides {RECIPES[args.recipe][0]}"
    print(f"\nAblations: {Path(config_path).name} base, recipe {args.recipe} ({recipe}), "
          f"{steps} steps x {batch_size} x {seq_len} = {tokens:,} tokens per variant, "
          f"{len(batches)} distinct batches of {corpus.name}; {harness.machine_line()}\n")  # fmt: skip
    print("| group | variant | active params | held-out loss | vs base | train loss | masked acc | train tokens/s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        f = r["final"]
        print(f"| {VARIANTS[name][0]} | {name} | {r['active_parameters'] / 1e6:.2f}M | {f['eval_loss']:.3f} | "
              f"{100 * (f['eval_loss'] / base['eval_loss'] - 1):+.1f}% | {f['train_loss']:.3f} | "
              f"{f['eval_accuracy']:.3f} | {r['tokens_per_second']:,.0f} |")  # fmt: skip

    output = Path(args.output or harness.RESULTS / f"bench_ablations{'_quick' if args.quick else ''}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "bench_ablations", "quick": args.quick, "model_config": Path(config_path).name,
        "recipe": args.recipe, "mask_probability": mask_probability, "schedule": RECIPES[args.recipe][2],
        "base_overrides": RECIPES[args.recipe][0],
        "corpus": corpus.name, "distinct_training_batches": len(batches), "seq_len": seq_len, "seed": args.seed,
        "batch_size": batch_size, "steps": steps, "tokens_per_variant": tokens, "lr": args.lr,
        "variants": {n: dict(zip(("group", "overrides", "options"), VARIANTS[n])) for n in results},
        "machine": harness.machine(), "results": results,
    }  # fmt: skip
    output.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {output}")


if __name__ == "__main__":
    main()

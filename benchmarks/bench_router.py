#!/usr/bin/env python
"""Router diagnostics: how the MoE routes held-out text while it trains, layer by layer.

Not a comparison of models: the MoE of bench_quality.py (the same tokenizer, batches, recipe and loop, harness.py)
trains alone, and at every evaluation its routers are read over the held-out batches. Per MoE layer:

  load          entropy of the share of routed slots per expert / log(experts): 1 = every expert used alike
  [MASK] load   the same over the [MASK] positions alone, where the MLM loss is (their input is one token), and the
                share of those slots the most used expert takes
  bias override share of the chosen slots that the router's own top-k (its probabilities without the balancing
                bias of loss-free balancing) would not have chosen: how much the bias overrules the router
  chosen mass   router probability on the chosen experts, summed over them (k / experts when it is uniform)
  id -> expert  how often a visible token's first expert is the one its token id goes to most: the majority expert
                of each id on half of the held-out tokens, scored on the other half (ids seen in both halves, both
                ways). 1 = routing by token id alone, as a lookup table would; "chance" guesses the most used expert
  churn         share of the chosen slots that changed since the previous evaluation (the same held-out tokens)

    python benchmarks/bench_router.py --quick                 # tiny config, 40 steps, a minute
    python benchmarks/bench_router.py --lr 2e-3 --seeds 0     # mini config, 2,000 steps on the shared corpus

Seeds run as separate processes (one thread each on a 2-core machine) make one file with --combine A.json B.json.

Writes benchmarks/results/bench_router[_quick].json and .png (each statistic per layer against tokens seen).
"""

import argparse
import json
import sys
import textwrap
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
from bench_quality import DEFAULT_WARMUP_FRACTION, optimizer_description  # noqa: E402

from modeling_spanish_moe_bert import SpanishMoEBertForMaskedLM, SpanishMoEBertRouter  # noqa: E402
from spanish_moe_bert.cpu import keep_freed_memory  # noqa: E402

MODES = {  # config, seq_len, batch, steps, eval_every
    "quick": ("tiny.json", 64, 16, 40, 10),
    "full": ("mini.json", 128, 16, 2000, 200),
}
STATISTICS = {  # key: (column, what a uniform random router would give, as a function of (experts, top_k))
    "load_entropy": ("load", lambda e, k: 1.0),
    "mask_load_entropy": ("[MASK] load", lambda e, k: 1.0),
    "mask_top_share": ("[MASK] top expert", lambda e, k: 1 / e),
    "bias_override": ("bias override", lambda e, k: 0.0),
    "chosen_mass": ("chosen mass", lambda e, k: k / e),
    "id_predictability": ("id -> expert", lambda e, k: 1 / e),
    "churn": ("churn", lambda e, k: None),
}


@torch.inference_mode()
def read_routes(model, batches: list[dict]) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """The ids of the real (non-padding) tokens of `batches`, and per MoE layer, over those tokens, the router's
    probabilities (T, E) and the experts it chose (T, k), read by forward hooks in eval mode."""
    routers = [module for module in model.modules() if isinstance(module, SpanishMoEBertRouter)]
    seen = [[] for _ in routers]
    real = None

    def record(layer):
        def hook(module, args, output):
            _, probs, _, chosen = output
            seen[layer].append((probs[real], chosen[real]))

        return hook

    handles = [router.register_forward_hook(record(layer)) for layer, router in enumerate(routers)]
    training = model.training
    model.eval()
    ids = []
    try:
        for batch in batches:
            real = batch["attention_mask"].reshape(-1).bool()
            ids.append(batch["input_ids"].reshape(-1)[real])
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    finally:
        for handle in handles:
            handle.remove()
        model.train(training)
    routes = [(torch.cat([p for p, _ in layer]), torch.cat([c for _, c in layer])) for layer in seen]
    return torch.cat(ids), routes


def normalized_entropy(experts: torch.Tensor, num_experts: int) -> float:
    """Entropy of how often each expert occurs in `experts`, over log(num_experts)."""
    share = torch.bincount(experts.reshape(-1), minlength=num_experts).double()
    share = share / share.sum().clamp(min=1)
    return float(-(share * share.clamp(min=1e-12).log()).sum() / torch.log(torch.tensor(float(num_experts))))


def id_predictability(ids: torch.Tensor, first: torch.Tensor, vocab_size: int, num_experts: int) -> tuple[float, float]:
    """How often the majority expert of a token's id (learnt on the other half of the tokens) is its first expert,
    over the tokens whose id occurs in both halves, both ways; and the same for always guessing the most used one.
    The halves are drawn at random (fixed seed), so that no period in the text puts an id on one side only."""
    halves = torch.randperm(len(ids), generator=torch.Generator().manual_seed(0)) < len(ids) // 2
    hits = chance = count = 0
    for fit, score in ((halves, ~halves), (~halves, halves)):
        table = torch.bincount(ids[fit] * num_experts + first[fit], minlength=vocab_size * num_experts)
        table = table.view(vocab_size, num_experts)
        known = table.sum(-1)[ids[score]] > 0
        majority = table.argmax(-1)[ids[score]]
        hits += int((majority == first[score])[known].sum())
        most_used = torch.bincount(first[fit], minlength=num_experts).argmax()
        chance += int((first[score][known] == most_used).sum())
        count += int(known.sum())
    return (hits / count, chance / count) if count else (float("nan"), float("nan"))


def overlap(a: torch.Tensor, b: torch.Tensor) -> float:
    """Share of the slots of `a` (T, k) whose expert is among the same token's experts in `b` (T, k)."""
    return float((a[:, :, None] == b[:, None, :]).any(-1).double().mean())


def routing_statistics(
    ids: torch.Tensor, routes: list, mask_token_id: int, vocab_size: int, previous: list | None = None
) -> list[dict]:
    """The statistics of the module docstring, one dict per MoE layer. `previous`: the routes of the last reading
    (the same tokens), for the churn."""
    layers = []
    masked, visible = ids == mask_token_id, ids != mask_token_id
    for layer, (probs, chosen) in enumerate(routes):
        num_experts, top_k = probs.shape[-1], chosen.shape[-1]
        own = probs.topk(top_k, dim=-1).indices
        mask_share = torch.bincount(chosen[masked].reshape(-1), minlength=num_experts).double()
        predictability, chance = id_predictability(ids[visible], chosen[visible, 0], vocab_size, num_experts)
        layers.append({
            "load_entropy": normalized_entropy(chosen, num_experts),
            "mask_load_entropy": normalized_entropy(chosen[masked], num_experts),
            "mask_top_share": float(mask_share.max() / mask_share.sum().clamp(min=1)),
            "bias_override": 1 - overlap(chosen, own),
            "chosen_mass": float(probs.gather(-1, chosen).sum(-1).double().mean()),
            "id_predictability": predictability,
            "id_chance": chance,
            "churn": None if previous is None else 1 - overlap(chosen, previous[layer][1]),
        })  # fmt: skip
    return layers


class RoutingProbe:
    """`harness.train_side_by_side`'s `inspect`: reads the routes at every evaluation, keeps them for the churn."""

    def __init__(self, eval_batches: list[dict], mask_token_id: int):
        self.eval_batches, self.mask_token_id, self.previous = eval_batches, mask_token_id, {}

    def __call__(self, name: str, model) -> dict:
        ids, routes = read_routes(model, self.eval_batches)
        stats = routing_statistics(ids, routes, self.mask_token_id, model.config.vocab_size, self.previous.get(name))
        self.previous[name] = routes
        return {"routing": stats}


def print_tables(run: dict, experts: int, top_k: int) -> None:
    curve = run["curve"]
    final = curve[-1]
    print(f"\nAt the last evaluation (step {final['step']}, held-out loss {final['eval_loss']:.3f}), per MoE layer:\n")
    print("| MoE layer | " + " | ".join(column for column, _ in STATISTICS.values()) + " | id chance |")
    print("|---|" + "---:|" * (len(STATISTICS) + 1))
    for layer, s in enumerate(final["routing"]):
        cells = [f"{s[key]:.3f}" if s[key] is not None else "" for key in STATISTICS]
        print(f"| {layer} | " + " | ".join(cells) + f" | {s['id_chance']:.3f} |")
    uniform = [fn(experts, top_k) for _, fn in STATISTICS.values()]
    print("| uniform random router | " + " | ".join("" if u is None else f"{u:.3f}" for u in uniform) + " | |")
    print("\nMean over the MoE layers at every evaluation:\n")
    print("| step | held-out loss | " + " | ".join(column for column, _ in STATISTICS.values()) + " |")
    print("|---:|---:|" + "---:|" * len(STATISTICS))
    for point in curve:
        means = []
        for key in STATISTICS:
            values = [s[key] for s in point["routing"] if s[key] is not None]
            means.append(f"{sum(values) / len(values):.3f}" if values else "")
        print(f"| {point['step']} | {point['eval_loss']:.3f} | " + " | ".join(means) + " |")


def plot(runs: dict[int, dict], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(STATISTICS)
    fig, axes = plt.subplots(2, 4, figsize=(17, 8))
    for seed, run in runs.items():
        style = "-" if seed == next(iter(runs)) else "--"
        curve = run["curve"]
        tokens = [p["tokens"] for p in curve]
        axes[0, 0].plot(tokens, [p["eval_loss"] for p in curve], style, color="black")
        for ax, key in zip(axes.flat[1:], keys):
            for layer in range(len(curve[0]["routing"])):
                values = [p["routing"][layer][key] for p in curve]
                points = [(t, v) for t, v in zip(tokens, values) if v is not None]
                ax.plot(*zip(*points), style, color=f"C{layer}", label=f"layer {layer}" if style == "-" else None)
    axes[0, 0].set_ylabel("held-out MLM loss")
    for ax, key in zip(axes.flat[1:], keys):
        ax.set_ylabel(STATISTICS[key][0])
    axes[0, 1].legend(fontsize=8)
    for ax in axes.flat:
        ax.set_xlabel("tokens seen")
        ax.grid(alpha=0.3)
    seeds = list(runs)
    others = f"; dashed: seed{'s' * (len(seeds) > 2)} {', '.join(map(str, seeds[1:]))}" if len(seeds) > 1 else ""
    fig.suptitle("\n".join(textwrap.wrap(f"{title} Solid: seed {seeds[0]}{others}.", 170)), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


SAME_RUN = ("model_config", "config_overrides", "corpus", "steps", "seq_len", "batch_size", "lr", "schedule",
            "mask_probability", "optimizer", "bias_follows_decay")  # fmt: skip


def combine(paths: list[Path], output: Path) -> None:
    """One file and figure of the seeds of several files of the same settings (each seed run as its own process)."""
    files = [json.loads(path.read_text()) for path in paths]
    for path, payload in zip(paths[1:], files[1:]):
        changed = [key for key in SAME_RUN if payload.get(key) != files[0].get(key)]
        if changed:
            raise SystemExit(f"{path}: not the run of {paths[0]} at another seed ({', '.join(changed)} differ)")
    runs = {int(seed): run for payload in files for seed, run in payload["runs"].items()}
    payload = files[0] | {"seeds": sorted(runs), "runs": {str(seed): runs[seed] for seed in sorted(runs)},
                          "machine": [f["machine"] for f in files]}  # fmt: skip
    title = files[0]["title"].rsplit("; ", 1)[0] + f"; {harness.machines_line(payload['machine'])}."
    payload["title"] = title
    output.parent.mkdir(parents=True, exist_ok=True)
    plot({seed: runs[seed] for seed in sorted(runs)}, title, output.with_name(output.name + ".png"))
    output.with_name(output.name + ".json").write_text(json.dumps(payload, indent=2) + "\n")
    print(f"{title}\nwrote {output}.json and {output}.png")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny config, 40 steps of 16 x 64 tokens")
    parser.add_argument("--model_config", help="our config JSON (default: tiny in --quick, else mini)")
    parser.add_argument("--config_overrides", default="", help="e.g. 'router_bias_update_rate=0'")
    parser.add_argument("--steps", type=int, help="optimizer steps (default: 40 in --quick, else 2,000)")
    parser.add_argument("--eval_every", type=int)
    parser.add_argument("--eval_batches", type=int, default=16, help="held-out batches per evaluation and reading")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    parser.add_argument("--schedule", choices=("linear", "wsd"), default="wsd")
    parser.add_argument("--warmup_fraction", type=float, default=DEFAULT_WARMUP_FRACTION)
    parser.add_argument("--mask_probability", type=float, default=0.3, help="training masking rate (eval: 15%%)")
    parser.add_argument("--bias_follows_decay", action="store_true",
                        help="after the warm-up, the balancing bias moves at its rate x the learning rate's share of "
                        "its peak (slows and stops with the decay)")  # fmt: skip
    parser.add_argument("--corpus", type=Path, help="text corpus (default: bundled in --quick, else the shared one)")
    parser.add_argument("--output", help="writes OUTPUT.json and OUTPUT.png (default: results/bench_router[_quick])")
    parser.add_argument("--combine", type=Path, nargs="+", metavar="JSON",
                        help="one file of the seeds of earlier runs of the same settings; trains nothing")  # fmt: skip
    args = parser.parse_args()
    if args.combine:
        combine(args.combine, Path(args.output or args.combine[0].with_name(args.combine[0].stem + "_combined")))
        return
    keep_freed_memory()

    config_name, seq_len, batch_size, steps, eval_every = MODES["quick" if args.quick else "full"]
    steps, eval_every = args.steps or steps, args.eval_every or eval_every
    config_path = args.model_config or harness.REPO / "configs" / config_name
    corpus = args.corpus or harness.default_corpus(args.quick)
    tokenizer, config = harness.tokenizer_and_config(config_path, corpus, seq_len, args.config_overrides)
    if not any(kind == "sparse" for kind in config.mlp_layer_types):
        parser.error("the config has no MoE layer: there is no router to read")

    runs = {}
    for seed in args.seeds:
        batches, eval_batches = harness.mlm_data(
            tokenizer, seq_len, batch_size, seed=seed, corpus=corpus, mask_probability=args.mask_probability
        )
        eval_batches = eval_batches[: args.eval_batches]
        probe = RoutingProbe(eval_batches, tokenizer.mask_token_id)
        contender = harness.Contender(build=lambda: SpanishMoEBertForMaskedLM(config), schedule=args.schedule)
        runs[seed] = harness.train_side_by_side(
            {"moe": contender}, batches, eval_batches, steps=steps, eval_every=eval_every, lr=args.lr, seed=seed,
            warmup_fraction=args.warmup_fraction, inspect=probe, bias_follows_decay=args.bias_follows_decay,
        )["moe"]  # fmt: skip
        print_tables(runs[seed], config.num_experts, config.num_experts_per_tok)

    shapes = Path(config_path).name + (f" + {args.config_overrides}" if args.config_overrides else "")
    shapes += ", the bias following the decay" if args.bias_follows_decay else ""
    title = (f"Router diagnostics: {shapes} ({config.num_experts} experts, top-{config.num_experts_per_tok}), "
             f"masking {args.mask_probability:.0%}, {args.schedule} schedule, lr {args.lr:g}, warm-up "
             f"{args.warmup_fraction:.0%}, {steps} steps x {batch_size} x {seq_len} tokens of {corpus.name}, "
             f"read on {len(eval_batches)} held-out batches; {harness.machine_line()}.")  # fmt: skip
    output = Path(args.output or harness.RESULTS / f"bench_router{'_quick' if args.quick else ''}")
    output.parent.mkdir(parents=True, exist_ok=True)
    plot(runs, title, output.with_name(output.name + ".png"))
    payload = {
        "benchmark": "bench_router", "title": title, "model_config": Path(config_path).name,
        "config_overrides": args.config_overrides, "corpus": corpus.name, "steps": steps, "seq_len": seq_len,
        "batch_size": batch_size, "lr": args.lr, "schedule": args.schedule, "mask_probability": args.mask_probability,
        "optimizer": optimizer_description(args.warmup_fraction), "bias_follows_decay": args.bias_follows_decay,
        "seeds": args.seeds, "machine": harness.machine(),
        "runs": {str(seed): run for seed, run in runs.items()},
    }  # fmt: skip
    output.with_name(output.name + ".json").write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\n{title}\nwrote {output}.json and {output}.png")


if __name__ == "__main__":
    main()

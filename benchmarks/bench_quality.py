#!/usr/bin/env python
"""Quality at equal compute: held-out MLM loss of four encoders trained side by side, over several seeds.

Contenders, all at the shapes of one of our configs (hidden size, layers, heads, vocabulary, positions):
  moe          SpanishMoEBertForMaskedLM (sparse MoE, DyT blocks, MHA/GQA/MLA mix)
  dense twin   the same model with one SwiGLU per layer as wide as the experts active per token
  modernbert   transformers' ModernBertForMaskedLM, GLU width = our active FFN width
  bert         transformers' BertForMaskedLM, MLP width 1.5x (same active FFN parameters)
  moe (upcycled)  with --upcycle_at F: the dense twin for a share F of the steps, then upcycled into the MoE

Equal compute two ways: the same tokens (all four spend the same FLOPs per token on their feed-forwards: the
held-out loss at the last step) and the same wall-clock on this machine (each model's loss, interpolated on its
curve, at the time the fastest one finished). Same tokenizer (8k BPE on the benchmark's corpus), same pre-masked
batches in the same order, AdamW settings, schedule and clipping, one shared loop (harness.py) that trains the
models one step each in turn so machine noise hits all alike. Each seed draws another initialisation, data order
and masking; differences within the spread over seeds are ties. Held-out: 5% of the corpus's documents (by
hash), masked once at 15%.

    python benchmarks/bench_quality.py --quick   # tiny config, one seed, a couple of minutes on 2 cores
    python benchmarks/bench_quality.py           # mini config, 1,000 steps x 16 x 128 per model and seed, 2 seeds,
                                                 # on the shared 9.5 MB corpus when present (1 hour on 2 cores)

The defaults train with the recipe of the run files (masking 30%, warmup-stable-decay, lr 1e-3).

Writes benchmarks/results/bench_quality[_quick].json and .png (held-out loss against tokens and wall time).

Seeds can run as separate processes (e.g. one thread each on a 2-core machine), then be combined into one table:

    OMP_NUM_THREADS=1 python benchmarks/bench_quality.py --seeds 0 --output /tmp/seed0 &   # and --seeds 1 ...
    python benchmarks/bench_quality.py --combine /tmp/seed0.json /tmp/seed1.json --output benchmarks/results/NAME

Models trained in different runs of the same data and budget, e.g. each at its own tuned learning rate, make one
table and one figure with --gather (over the seeds every file has; trains nothing):

    python benchmarks/bench_quality.py --gather results/A.json results/B.json --output benchmarks/results/NAME

A file given as FILE:NAME[,NAME] gives only those models (e.g. the MoE of a run at one warm-up and ModernBERT of a
run at another, when both files hold both: `--gather A.json:moe B.json:modernbert`).

When only our models change (--config_overrides that leave the shapes alone), the reference need not train again:
--reference JSON takes ModernBERT's runs, seed by seed, from an earlier run of the same settings (its wall-clock
then comes from that run's machine, which the title names); `--reference R --upcycle_at F --models` (no names) trains
the upcycled MoE alone. --model_lr NAME=LR trains one model at its own peak learning rate instead of --lr, so that
each trains at its tuned rate (`--lr 2e-3 --models bert --model_lr bert=5e-4 --reference <a run at 2e-3>`).
--dropout P regularises every contender alike; --expert_weight_decay W gives the MoE experts' weights their own
weight decay (the rest keeps 0.01).
"""

import argparse
import json
import re
import statistics
import sys
import textwrap
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
from transformers import BertForMaskedLM, ModernBertForMaskedLM  # noqa: E402

from modeling_spanish_moe_bert import SpanishMoEBertForMaskedLM  # noqa: E402
from spanish_moe_bert.cpu import keep_freed_memory  # noqa: E402
from spanish_moe_bert.upcycling import upcycle  # noqa: E402

CONTENDERS = ("moe", "dense twin", "modernbert", "bert")
MODES = {  # config, seq_len, batch, steps, eval_every, seeds
    "quick": ("tiny.json", 64, 16, 40, 10, [0]),
    "full": ("mini.json", 128, 16, 1000, 100, [0, 1]),
}


def contenders(
    config,
    tokenizer,
    upcycle_at: float | None,
    schedule: str,
    names: set[str] | None = None,
    dropout: float = 0.0,
    model_lr: dict[str, float] | None = None,
) -> dict:
    """The models to train side by side. `dropout` is the anchors' (ours take theirs from `config.hidden_dropout`);
    `model_lr` gives a model its own peak learning rate (the others train at the run's)."""
    builders = {
        "moe": lambda: SpanishMoEBertForMaskedLM(config),
        "dense twin": lambda: SpanishMoEBertForMaskedLM(config.dense_twin()),
        "modernbert": lambda: ModernBertForMaskedLM(harness.modernbert_config(config, tokenizer, dropout)),
        "bert": lambda: BertForMaskedLM(harness.bert_config(config, tokenizer, dropout)),
    }
    names = CONTENDERS if names is None else names
    model_lr = model_lr or {}
    models = {
        name: harness.Contender(build=builders[name], schedule=schedule, lr=model_lr.get(name))
        for name in CONTENDERS
        if name in names
    }
    if upcycle_at is not None:
        models["moe (upcycled)"] = harness.Contender(
            build=lambda: SpanishMoEBertForMaskedLM(config.dense_twin()),
            schedule=schedule,
            upcycle_at=upcycle_at,
            upcycle=lambda dense: upcycle(dense, config),
        )
    return models


def summarize(runs: dict[int, dict], reference: str = "modernbert") -> dict:
    """Per model over seeds: final held-out loss (equal tokens) and loss at equal wall-clock, mean and spread."""
    summary = {}
    for name in next(iter(runs.values())):
        finals = [run[name]["final"]["eval_loss"] for run in runs.values()]
        at_time = []
        for run in runs.values():  # the wall time at which the fastest model of this seed finished
            deadline = min(r["train_seconds"] for r in run.values())
            at_time.append(harness.loss_at_seconds(run[name]["curve"], deadline))
        summary[name] = {
            "loss_equal_tokens": statistics.mean(finals),
            "spread_equal_tokens": max(finals) - min(finals),
            "loss_equal_time": statistics.mean(at_time),
            "spread_equal_time": max(at_time) - min(at_time),
            "train_loss": statistics.mean(run[name]["final"]["train_loss"] for run in runs.values()),
            "accuracy": statistics.mean(run[name]["final"]["eval_accuracy"] for run in runs.values()),
            "tokens_per_second": statistics.mean(run[name]["tokens_per_second"] for run in runs.values()),
            "active_parameters": next(iter(runs.values()))[name]["active_parameters"],
            "total_parameters": next(iter(runs.values()))[name]["total_parameters"],
        }
    ref = summary[reference]
    for s in summary.values():
        s["vs_reference_equal_tokens"] = s["loss_equal_tokens"] / ref["loss_equal_tokens"] - 1
        s["vs_reference_equal_time"] = s["loss_equal_time"] / ref["loss_equal_time"] - 1
    return summary


def print_table(summary: dict, seeds: int) -> None:
    print(
        f"| model | total params | active params | held-out loss, equal tokens (spread of {seeds}) | vs ModernBERT "
        "| held-out loss, equal wall-clock (spread) | vs ModernBERT | train loss | masked acc | train tokens/s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, s in summary.items():
        tokens = f"{s['loss_equal_tokens']:.3f} ({s['spread_equal_tokens']:.3f})"
        time = f"{s['loss_equal_time']:.3f} ({s['spread_equal_time']:.3f})"
        print(f"| {name} | {s['total_parameters'] / 1e6:.2f}M | {s['active_parameters'] / 1e6:.2f}M | "
              f"{tokens} | {100 * s['vs_reference_equal_tokens']:+.1f}% | {time} | "
              f"{100 * s['vs_reference_equal_time']:+.1f}% | {s['train_loss']:.3f} | {s['accuracy']:.3f} | "
              f"{s['tokens_per_second']:,.0f} |")  # fmt: skip


def plot(runs: dict[int, dict], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    colors = {}
    for seed, results in runs.items():
        for name, result in results.items():
            curve = result["curve"][1:]  # the initial evaluation sits far above the rest
            style = "-" if seed == next(iter(runs)) else "--"
            line = axes[0].plot([p["tokens"] for p in curve], [p["eval_loss"] for p in curve], style,
                                color=colors.get(name), label=name if style == "-" else None)  # fmt: skip
            colors[name] = line[0].get_color()
            axes[0].plot([p["tokens"] for p in curve], [p["train_loss"] for p in curve], ":", color=colors[name])
            axes[1].plot([p["seconds"] for p in curve], [p["eval_loss"] for p in curve], style, color=colors[name])
    axes[0].set_xlabel("tokens seen (dotted: training loss)")
    axes[1].set_xlabel("training wall time on this machine (s)")
    for ax in axes:
        ax.set_ylabel("held-out MLM loss")
        ax.grid(alpha=0.3)
    axes[0].legend()
    seeds = list(runs)
    others = f"; dashed: seed{'s' * (len(seeds) > 2)} {', '.join(map(str, seeds[1:]))}" if len(seeds) > 1 else ""
    styles = f" Solid: seed {seeds[0]}{others}."
    fig.suptitle("\n".join(textwrap.wrap(title + styles, 160)), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


# Settings that make runs of different seeds one experiment (everything but the seeds and the machine).
# "dropout", "expert_weight_decay" and "model_lr" are absent (None) from the files written before those options,
# which trained without them.
SAME_EXPERIMENT = ("model_config", "config_overrides", "models", "corpus", "seq_len", "batch_size", "steps",
                   "distinct_training_batches", "eval_masked_batches", "lr", "upcycle_at", "mask_probability",
                   "schedule", "optimizer", "dropout", "expert_weight_decay", "model_lr")  # fmt: skip


def refuse_other_settings(path, payload: dict, keys: tuple, other: str, settings: dict, why: str) -> None:
    """Raises naming the file and the first of `keys` whose value in `payload` differs from `settings`' (whose
    source `other` names)."""
    for key in keys:
        if payload.get(key) != settings.get(key):
            raise ValueError(f"{path}: {key} is {payload.get(key)!r}, but {other} has {settings.get(key)!r}: {why}")


def recorded_machines(payload: dict) -> list[dict]:
    """The machines a results file ran on (one, or a list when it holds runs of several)."""
    return payload["machine"] if isinstance(payload["machine"], list) else [payload["machine"]]


def model_rate(settings: dict, name: str) -> float:
    """The peak learning rate a model trained at: its own `model_lr` entry, else the run's `lr`."""
    return (settings.get("model_lr") or {}).get(name, settings["lr"])


def combine(paths: list[Path]) -> tuple[dict, dict, list[dict]]:
    """Runs of one experiment at different seeds (bench_quality JSON files) -> (settings of the first, runs by seed,
    the machines they ran on).

    Refuses files whose settings differ (naming the file and the setting) or that repeat a seed."""
    payloads = [(path, json.loads(Path(path).read_text())) for path in paths]
    first_path, first = payloads[0]
    runs, machines = {}, []
    for path, payload in payloads:
        refuse_other_settings(path, payload, SAME_EXPERIMENT, first_path, first,
                              "only runs of the same experiment at different seeds can be combined")  # fmt: skip
        for seed, run in payload["runs"].items():
            if int(seed) in runs:
                raise ValueError(f"{path}: seed {seed} is already in an earlier file")
            runs[int(seed)] = run
        machines += recorded_machines(payload)
    return first, runs, machines


# Settings that models gathered from several runs must share: the data, budget and recipe, not the learning rate,
# nor the warm-up (the optimizer settings may differ in it alone).
GATHER_SETTINGS = tuple(key for key in SAME_EXPERIMENT if key not in ("models", "lr", "model_lr", "optimizer"))
WARMUP = re.compile(r"([\d.]+%) linear warmup")  # in the optimizer setting, see optimizer_description
DEFAULT_WARMUP_FRACTION = 0.1


GATHERABLE = (*CONTENDERS, "moe (upcycled)")  # the models a results file can hold


class GatherSource(NamedTuple):
    """A results file for --gather and the models to take from it (None: all of them)."""

    path: Path
    models: tuple[str, ...] | None = None


def gather_source(value: str) -> GatherSource:
    """`A.json` -> every model of A.json; `A.json:moe,dense twin` -> those two (for --gather)."""
    path, _, names = value.rpartition(":")
    picked = tuple(name.strip() for name in names.split(","))
    if path and all(name in GATHERABLE for name in picked):
        return GatherSource(Path(path), picked)
    if path and Path(path).exists() and not Path(value).exists():
        raise argparse.ArgumentTypeError(f"{value!r}: {names!r} is not a list of models: a results file holds "
                                         f"{', '.join(GATHERABLE)}")  # fmt: skip
    return GatherSource(Path(value))


def gather(sources: list[Path | GatherSource]) -> tuple[dict, dict, list[dict]]:
    """Models trained in different runs of the same data, budget and recipe, each maybe at its own learning rate
    (bench_quality JSON files, each maybe with the models to take from it) -> one table: (settings of the first with
    every model's rate, runs by seed, the machines), over the seeds all files have. The warm-up may differ too (each
    model at its tuned one); the settings then name every model's. A model in several files (a `--reference` copy of
    ModernBERT) is taken from the first; refuses files of other settings, a model whose copies differ and a picked
    model that its file lacks."""
    sources = [source if isinstance(source, GatherSource) else GatherSource(Path(source)) for source in sources]
    paths = [source.path for source in sources]
    payloads = [(path, json.loads(Path(path).read_text())) for path in paths]
    first_path, first = payloads[0]
    seeds = sorted(set.intersection(*(set(payload["runs"]) for _, payload in payloads)), key=int)
    if not seeds:
        raise ValueError(f"{', '.join(map(str, paths))}: no seed is in every file")
    runs, model_lr, model_warmup, machines = {int(seed): {} for seed in seeds}, {}, {}, []
    for (path, payload), source in zip(payloads, sources):
        refuse_other_settings(path, payload, GATHER_SETTINGS, first_path, first,
                              "only runs of the same data, budget and recipe can be gathered")  # fmt: skip
        optimizer, first_optimizer = payload.get("optimizer") or "", first.get("optimizer") or ""
        if WARMUP.sub("", optimizer) != WARMUP.sub("", first_optimizer):
            raise ValueError(f"{path}: optimizer is {optimizer!r}, but {first_path} has {first_optimizer!r}: of the "
                             "optimizer settings only the warm-up may differ")  # fmt: skip
        warmup = WARMUP.search(optimizer)
        for seed in seeds:
            held = payload["runs"][seed]
            missing = [name for name in source.models or () if name not in held]
            if missing:
                raise ValueError(f"{path}: no {', '.join(missing)} run at seed {seed} (it has {', '.join(held)})")
            for name in source.models or held:
                run = held[name]
                earlier = runs[int(seed)].setdefault(name, run)
                if earlier["curve"] != run["curve"]:
                    raise ValueError(f"{path}: {name} at seed {seed} differs from its run in an earlier file")
                model_lr.setdefault(name, run.get("lr", model_rate(payload, name)))  # older files: the run's rate
                model_warmup.setdefault(name, warmup and warmup.group(1))
        machines += recorded_machines(payload)
    settings = first | {"models": list(model_lr), "model_lr": model_lr}
    if len(set(model_warmup.values())) > 1:
        per_model = WARMUP.sub("per-model linear warmup", first["optimizer"])
        settings |= {"optimizer": per_model, "model_warmup": model_warmup}
    return settings, runs, list({json.dumps(m, sort_keys=True): m for m in machines}.values())


# Settings the reference must share with a run that reuses it (our config overrides and the model list may differ;
# of the learning rates only ModernBERT's own must be the same).
OURS_ONLY = ("config_overrides", "models", "expert_weight_decay", "upcycle_at")  # ModernBERT is the same without them
REFERENCE_SETTINGS = tuple(key for key in SAME_EXPERIMENT if key not in (*OURS_ONLY, "lr", "model_lr"))


def reference_runs(
    path: Path, settings: dict, seeds: list[int], modernbert_parameters: int
) -> tuple[dict[int, dict], list[dict]]:
    """ModernBERT's runs in an earlier results file by seed, and the machines they ran on. Refuses a file of other
    settings, a ModernBERT of another size (the overrides changed the shapes) or a file without one of the seeds."""
    payload = json.loads(Path(path).read_text())
    refuse_other_settings(path, payload, REFERENCE_SETTINGS, "this run", settings,
                          "the reference must come from a run of the same settings")  # fmt: skip
    ours, theirs = model_rate(settings, "modernbert"), model_rate(payload, "modernbert")
    if ours != theirs:
        raise ValueError(f"{path}: its modernbert trained at lr {theirs:g}, this run's would at {ours:g}: "
                         "the reference must come from a run of the same settings")  # fmt: skip
    runs = {}
    for seed in seeds:
        run = payload["runs"].get(str(seed), {}).get("modernbert")
        if run is None:
            raise ValueError(f"{path}: no modernbert run at seed {seed} (it has seeds {sorted(payload['runs'])})")
        if run["total_parameters"] != modernbert_parameters:
            raise ValueError(f"{path}: its modernbert has {run['total_parameters']:,} parameters, this run's "
                             f"{modernbert_parameters:,}: the config overrides change the shapes")  # fmt: skip
        runs[seed] = run
    return runs, recorded_machines(payload)


def output_files(output: Path) -> tuple[Path, Path]:
    """NAME.json and NAME.png for `--output NAME`; dots in NAME stay (lr_1.5e-3), a trailing .json is dropped."""
    name = output.name.removesuffix(".json")
    return output.with_name(f"{name}.json"), output.with_name(f"{name}.png")


def write(settings: dict, runs: dict[int, dict], machines: list[dict], output: Path) -> None:
    """Summary table on stdout, curves as .png and everything as .json at `output` (see `output_files`)."""
    seeds = list(runs)
    steps, batch_size, seq_len = settings["steps"], settings["batch_size"], settings["seq_len"]
    shapes = settings["model_config"] + (f" + {settings['config_overrides']}" if settings["config_overrides"] else "")
    model_lr = settings.get("model_lr") or {}
    recipe = f"masking {settings['mask_probability']:.0%}, {settings['schedule']} schedule, "
    if set(model_lr) == set(runs[seeds[0]]):  # gathered: every model at its own rate
        recipe += "peak lr " + ", ".join(f"{name} {lr:g}" for name, lr in model_lr.items())
    else:
        recipe += f"lr {settings['lr']:g}" + "".join(f", {name} {lr:g}" for name, lr in model_lr.items())
    warmup = WARMUP.search(settings.get("optimizer") or "")
    if settings.get("model_warmup"):
        recipe += ", warm-up " + ", ".join(f"{name} {share}" for name, share in settings["model_warmup"].items())
    elif warmup and warmup.group(1) != f"{DEFAULT_WARMUP_FRACTION * 100:g}%":  # the runs before the option had it
        recipe += f", warm-up {warmup.group(1)}"
    if settings.get("dropout"):
        recipe += f", dropout {settings['dropout']:g}"
    if settings.get("expert_weight_decay") is not None:
        recipe += f", expert weight decay {settings['expert_weight_decay']:g}"
    where = harness.machines_line(machines)
    title = (f"Quality at equal compute: {shapes} shapes, {recipe}, "
             f"{steps} steps x {batch_size} x {seq_len} = {steps * batch_size * seq_len:,} tokens per model and seed "
             f"({settings['distinct_training_batches']} distinct batches of {settings['corpus']}), seeds {seeds}; "
             f"{where}.")  # fmt: skip
    summary = summarize(runs)
    print(f"\n{title}\n")
    print_table(summary, len(seeds))
    json_file, png_file = output_files(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    plot(runs, title, png_file)
    payload = {
        "benchmark": "bench_quality", **{key: settings.get(key) for key in ("quick", *SAME_EXPERIMENT)},
        "tokens_per_model": steps * batch_size * seq_len, "seeds": seeds,
        "machine": machines[0] if len(machines) == 1 else machines,
        "summary": summary, "runs": {str(seed): run for seed, run in runs.items()},
    } | {key: settings[key] for key in ("model_warmup", "modernbert_from") if settings.get(key)}  # fmt: skip
    json_file.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {json_file} and {png_file}")


def model_lr_arg(value: str) -> tuple[str, float]:
    """`bert=5e-4` -> ("bert", 0.0005), for --model_lr."""
    name, _, lr = value.partition("=")
    if name not in CONTENDERS or not lr:
        raise argparse.ArgumentTypeError(f"{value!r}: expected NAME=LR with NAME one of {', '.join(CONTENDERS)}")
    try:
        return name, float(lr)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: {lr!r} is not a number") from None


def optimizer_description(warmup_fraction: float) -> str:
    """The optimizer and schedule as a run's settings record them (at the default 10% warm-up, as every file has)."""
    return (
        f"AdamW(fused, betas=(0.9, 0.98), weight_decay=0.01), {warmup_fraction * 100:g}% linear warmup, "
        "then the schedule, clip 1.0"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny config, 40 steps of 16 x 64 tokens, one seed")
    parser.add_argument("--model_config", help="our config JSON (default: tiny in --quick, else mini)")
    parser.add_argument("--config_overrides", default="", help="e.g. 'router_aux_loss_coef=0.001' (our models)")
    parser.add_argument("--seq_len", type=int)
    parser.add_argument("--batch_size", type=int)
    parser.add_argument("--steps", type=int, help="optimizer steps per model (tokens seen = steps x batch x seq_len)")
    parser.add_argument("--eval_every", type=int)
    parser.add_argument("--eval_batches", type=int, default=16, help="held-out batches per evaluation")
    parser.add_argument("--seeds", type=int, nargs="+")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of every model")
    parser.add_argument("--model_lr", nargs="+", default=[], metavar="NAME=LR", type=model_lr_arg,
                        help="a model's own peak learning rate instead of --lr, e.g. bert=5e-4 (each at its tuned "
                        "rate; the name as in --models, 'dense twin' quoted)")  # fmt: skip
    parser.add_argument("--schedule", choices=("linear", "wsd"), default="wsd", help="learning-rate schedule")
    parser.add_argument("--warmup_fraction", type=float, default=DEFAULT_WARMUP_FRACTION,
                        help="share of the steps spent warming the learning rate up from 0 to its peak")  # fmt: skip
    parser.add_argument("--mask_probability", type=float, default=0.3, help="training masking rate (eval: 15%%)")
    parser.add_argument(
        "--models",
        nargs="*",
        choices=CONTENDERS,
        help="train only these (default: all four; modernbert is kept); none with --reference and --upcycle_at "
        "trains the upcycled MoE alone",
    )
    parser.add_argument("--dropout", type=float,
                        help="dropout on every contender (ours: hidden_dropout; ModernBERT: attention and MLP; "
                        "BERT: hidden and attention); default none")  # fmt: skip
    parser.add_argument(
        "--expert_weight_decay",
        type=float,
        help="AdamW weight decay of the MoE experts' weights (default: the 0.01 of all the others)",
    )
    parser.add_argument("--upcycle_at", type=float, help="also train an upcycled MoE (dense for this share of steps)")
    parser.add_argument("--corpus", type=Path, help="text corpus (default: bundled in --quick, else the shared one)")
    parser.add_argument("--output", help="writes OUTPUT.json and OUTPUT.png (default: results/bench_quality[_quick])")
    parser.add_argument(
        "--combine",
        type=Path,
        nargs="+",
        metavar="JSON",
        help="combine earlier runs of one experiment at different seeds; trains nothing",
    )
    parser.add_argument("--gather", type=gather_source, nargs="+", metavar="JSON[:NAME,...]",
                        help="one table of the models of earlier runs of the same data, budget and recipe, each at its "
                        "own learning rate (e.g. every model at its tuned rate); JSON:NAME,... takes only those "
                        "models from a file; trains nothing")  # fmt: skip
    parser.add_argument(
        "--reference",
        type=Path,
        metavar="JSON",
        help="take modernbert's runs from this earlier run of the same settings instead of training it",
    )
    args = parser.parse_args()
    longest_warmup = 1 - harness.WSD_DECAY if args.schedule == "wsd" else 1.0
    if not 0 < args.warmup_fraction < longest_warmup:
        parser.error(f"--warmup_fraction {args.warmup_fraction} is outside (0, {longest_warmup:g}): the "
                     f"{args.schedule} schedule needs steps after the warm-up")  # fmt: skip
    if args.combine and args.gather:
        parser.error("--combine (seeds of one experiment) and --gather (models of several) do not go together")
    if args.combine or args.gather:
        settings, runs, machines = combine(args.combine) if args.combine else gather(args.gather)
        first = args.combine[0] if args.combine else args.gather[0].path
        output = Path(args.output or first.with_name(first.stem + ("_combined" if args.combine else "_gathered")))
        write(settings, runs, machines, output)
        return
    config_name, seq_len, batch_size, steps, eval_every, seeds = MODES["quick" if args.quick else "full"]
    config_path = args.model_config or harness.REPO / "configs" / config_name
    seq_len, batch_size = args.seq_len or seq_len, args.batch_size or batch_size
    steps, eval_every, seeds = args.steps or steps, args.eval_every or eval_every, args.seeds or seeds
    models = None if args.models is None else {*args.models, "modernbert"}  # the reference of every comparison
    if args.reference:
        models = (set(CONTENDERS) if models is None else models) - {"modernbert"}
        if not models and args.upcycle_at is None:
            parser.error("--reference replaces the modernbert runs: name the other models to train with --models")
    model_lr = dict(args.model_lr) or None
    untrained = set(model_lr or ()) - (set(CONTENDERS) if models is None else models | {"modernbert"})
    if untrained:
        parser.error(f"--model_lr names {sorted(untrained)}, which --models does not train")
    keep_freed_memory()

    corpus = args.corpus or harness.default_corpus(args.quick)
    tokenizer, config = harness.tokenizer_and_config(config_path, corpus, seq_len, args.config_overrides)
    if args.dropout is not None:
        config.hidden_dropout = args.dropout
    data = {
        seed: harness.mlm_data(
            tokenizer, seq_len, batch_size, seed=seed, corpus=corpus, mask_probability=args.mask_probability
        )
        for seed in seeds
    }
    settings = {
        "quick": args.quick, "model_config": Path(config_path).name, "config_overrides": args.config_overrides,
        "corpus": corpus.name, "seq_len": seq_len, "batch_size": batch_size,
        "steps": steps, "distinct_training_batches": len(data[seeds[0]][0]), "eval_masked_batches": args.eval_batches,
        "lr": args.lr, "upcycle_at": args.upcycle_at, "mask_probability": args.mask_probability,
        "schedule": args.schedule,
        "optimizer": optimizer_description(args.warmup_fraction),
        "dropout": args.dropout, "expert_weight_decay": args.expert_weight_decay, "model_lr": model_lr,
        "modernbert_from": args.reference and args.reference.name,
    }  # fmt: skip
    machines = [harness.machine()]
    if args.reference:  # checked before an hour of training, not after
        modernbert = ModernBertForMaskedLM(harness.modernbert_config(config, tokenizer))
        reference, reference_machines = reference_runs(args.reference, settings, seeds, modernbert.num_parameters())
        machines += reference_machines
    runs = {}
    for seed in seeds:
        batches, eval_batches = data[seed]
        runs[seed] = harness.train_side_by_side(
            contenders(config, tokenizer, args.upcycle_at, args.schedule, models, args.dropout or 0.0, model_lr),
            batches,
            eval_batches[: args.eval_batches], steps=steps, eval_every=eval_every, lr=args.lr, seed=seed,
            warmup_fraction=args.warmup_fraction, expert_weight_decay=args.expert_weight_decay,
        )  # fmt: skip
        if args.reference:
            runs[seed]["modernbert"] = reference[seed]

    settings["models"] = list(runs[seeds[0]])
    output = Path(args.output or harness.RESULTS / f"bench_quality{'_quick' if args.quick else ''}")
    write(settings, runs, machines, output)


if __name__ == "__main__":
    main()

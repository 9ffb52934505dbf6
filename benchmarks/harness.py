"""Shared pieces of the side-by-side benchmarks (bench_encoder, bench_quality, bench_ablations).

Every comparison builds the anchors from our config so that they match it where the issue asks:
same hidden size, layers, heads and vocabulary, and the same *active* feed-forward parameters per token.
Our active FFN is `num_experts_per_tok` SwiGLU experts of width `moe_intermediate_size` plus the shared experts
(`num_shared_experts`, as wide each), i.e. 3 * H * k * I weights with k counting both (`active_intermediate_size`);
ModernBERT's GLU MLP (Wi: H -> 2I', Wo: I' -> H) matches with I' = k * I, and BERT's plain MLP (H -> I' -> H) with
I' = 1.5 * k * I.
"""

import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from transformers import BertConfig, ModernBertConfig  # noqa: E402

from configuration_spanish_moe_bert import SpanishMoEBertConfig  # noqa: E402
from modeling_spanish_moe_bert import log_unigram_prior  # noqa: E402
from spanish_moe_bert.corpus import is_held_out, iter_texts  # noqa: E402
from spanish_moe_bert.data import pack_documents  # noqa: E402
from tokenization_spanish_moe_bert import SpanishSPMTokenizer  # noqa: E402

CORPUS = REPO / "data" / "es_corpus_sample.txt"  # bundled: 1.5 MB, runs anywhere
SHARED_CORPUS = REPO.parent / "shared" / "data" / "es_corpus.jsonl.gz"  # 9.5 MB, beside the checkout when present
RESULTS = REPO / "benchmarks" / "results"


def default_corpus(quick: bool) -> Path:
    """Quick modes read the bundled corpus. Full modes read the 6x larger shared corpus when it is there: on the
    bundled one, a few hundred steps already repeat the data and held-out loss stops tracking training."""
    if quick or not SHARED_CORPUS.is_file():
        return CORPUS
    return SHARED_CORPUS


def paragraphs(path: Path = CORPUS) -> list[str]:
    """Non-empty paragraphs, in file order (documents of a .jsonl(.gz) corpus split at their newlines)."""
    return [p for text in iter_texts(path) for p in text.split("\n") if p.strip()]


def train_tokenizer(vocab_size: int = 8000, corpus: Path = CORPUS):
    """The one tokenizer every contender uses: our SentencePiece-style BPE, trained on the benchmark's corpus."""
    return SpanishSPMTokenizer.train_new(paragraphs(corpus), vocab_size=vocab_size)


# ----------------------------------------------------------------------------------------------------------------
# Configs: ours, its dense twin, and the two anchors matched to it
# ----------------------------------------------------------------------------------------------------------------


def our_config(path: str | Path, tokenizer, **overrides) -> SpanishMoEBertConfig:
    config = SpanishMoEBertConfig.from_json_file(str(path))
    values = config.to_dict() | overrides | {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id}
    if "attention_pattern" in overrides:
        values["attention_types"] = None  # re-derive the per-layer types from the new pattern
    if "num_hidden_layers" in overrides:
        values["attention_types"] = values["mlp_layer_types"] = None
    return SpanishMoEBertConfig.from_dict(values)


def tokenizer_and_config(config_path: str | Path, corpus: Path, seq_len: int, config_overrides: str = ""):
    """The benchmark's tokenizer (trained on `corpus`) and our config at `config_path` for it, with positions for
    `seq_len` and `config_overrides` (e.g. 'num_experts=64,router_bias_on=logits') applied and validated."""
    tokenizer = train_tokenizer(8000, corpus)
    config = our_config(config_path, tokenizer, max_position_embeddings=max(seq_len, 128))
    if config_overrides:
        config.update_from_string(config_overrides)
        config.validate_architecture()
    return tokenizer, config


def modernbert_config(config: SpanishMoEBertConfig, tokenizer, dropout: float = 0.0) -> ModernBertConfig:
    """ModernBERT as designed (GeGLU, pre-LayerNorm, RoPE, local/global attention), at our shapes. `dropout`: on its
    attention (probabilities and output) and inside its MLP."""
    return ModernBertConfig(
        attention_dropout=dropout,
        mlp_dropout=dropout,
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        intermediate_size=config.active_intermediate_size,  # GLU: 3 * H * I weights, as our active experts
        max_position_embeddings=config.max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        cls_token_id=tokenizer.cls_token_id,
        sep_token_id=tokenizer.sep_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        sparse_prediction=True,  # the MLM head only at masked positions, as ours does
    )


def bert_config(config: SpanishMoEBertConfig, tokenizer, dropout: float = 0.0) -> BertConfig:
    """Classic BERT (post-LayerNorm, GELU MLP, learned positions) at our shapes. `dropout`: its hidden and attention
    dropout."""
    return BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        intermediate_size=3 * config.active_intermediate_size // 2,  # plain MLP: 2 * H * I weights
        max_position_embeddings=config.max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )


def active_parameters(model: torch.nn.Module) -> int:
    """Parameters a token passes through: the anchors are dense, so all of theirs."""
    return model.num_active_parameters() if hasattr(model, "num_active_parameters") else model.num_parameters()


# ----------------------------------------------------------------------------------------------------------------
# MLM data: one fixed, pre-masked sequence of batches for every contender
# ----------------------------------------------------------------------------------------------------------------


def packed_blocks(texts: list[str], tokenizer, seq_len: int) -> torch.Tensor:
    """`[CLS] ... [SEP]` blocks of exactly `seq_len` tokens (documents concatenated, [SEP]-separated)."""
    return torch.tensor(pack_documents({"text": texts}, tokenizer, seq_len)["input_ids"])


def mask_blocks(blocks: torch.Tensor, tokenizer, probability: float, generator: torch.Generator) -> dict:
    """BERT masking (80% [MASK], 10% random, 10% kept) drawn from `generator`: identical for every model."""
    labels = blocks.clone()
    special = torch.isin(blocks, torch.tensor(tokenizer.all_special_ids))
    chosen = (torch.rand(blocks.shape, generator=generator) < probability) & ~special
    labels[~chosen] = -100
    inputs = blocks.clone()
    replace = chosen & (torch.rand(blocks.shape, generator=generator) < 0.8)
    inputs[replace] = tokenizer.mask_token_id
    randomize = chosen & ~replace & (torch.rand(blocks.shape, generator=generator) < 0.5)
    inputs[randomize] = torch.randint(len(tokenizer), blocks.shape, generator=generator)[randomize]
    return {"input_ids": inputs, "attention_mask": torch.ones_like(blocks), "labels": labels}


def mlm_data(
    tokenizer,
    seq_len: int,
    batch_size: int,
    seed: int = 0,
    corpus: Path = CORPUS,
    mask_probability: float = 0.15,
    held_out_fraction: float = 0.05,
):
    """Training batches and a held-out set, split by document (`corpus.is_held_out`: no document on both sides).

    Training paragraphs come in a random order drawn from `seed` and are masked once at `mask_probability`; the
    held-out blocks are masked once at 15% with a fixed generator, so every seed and masking rate is scored on the
    same positions."""
    documents = list(iter_texts(corpus))
    held_out = [p for d in documents if is_held_out(d, held_out_fraction) for p in d.split("\n") if p.strip()]
    train = [p for d in documents if not is_held_out(d, held_out_fraction) for p in d.split("\n") if p.strip()]
    generator = torch.Generator().manual_seed(seed)
    train = [train[i] for i in torch.randperm(len(train), generator=generator).tolist()]
    blocks = packed_blocks(train, tokenizer, seq_len)
    blocks = blocks[: len(blocks) // batch_size * batch_size]
    batches = [mask_blocks(b, tokenizer, mask_probability, generator) for b in blocks.split(batch_size)]
    eval_generator = torch.Generator().manual_seed(0)
    eval_blocks = packed_blocks(held_out, tokenizer, seq_len)
    eval_batches = [mask_blocks(b, tokenizer, 0.15, eval_generator) for b in eval_blocks.split(batch_size)]
    return batches, eval_batches


# ----------------------------------------------------------------------------------------------------------------
# The shared training loop: round-robin over the contenders, so machine noise hits all alike
# ----------------------------------------------------------------------------------------------------------------


def output_prior_counts(batches: list[dict], vocab_size: int) -> torch.Tensor:
    """Token counts of the training labels: every contender's output bias starts at their log frequencies."""
    counts = torch.zeros(vocab_size, dtype=torch.int64)
    for batch in batches:
        labels = batch["labels"][batch["labels"] != -100]
        counts += torch.bincount(labels, minlength=vocab_size)
    return counts


@torch.no_grad()
def init_output_prior(model, counts: torch.Tensor) -> None:
    """Start the MLM output bias at the log unigram prior, the same way for ours and the transformers anchors."""
    if hasattr(model, "init_decoder_bias_from_counts"):
        model.init_decoder_bias_from_counts(counts)
        return
    model.get_output_embeddings().bias.copy_(log_unigram_prior(counts))


def training_loss(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """The training objective, each model's own loss (ours adds its router losses to the MLM loss), and the MLM
    loss alone (what the training curve records, comparable to the held-out loss)."""
    outputs = model(**batch)
    mlm_loss = getattr(outputs, "mlm_loss", None)
    return outputs.loss, outputs.loss if mlm_loss is None else mlm_loss


@torch.inference_mode()
def evaluate(model, eval_batches) -> dict:
    """Held-out MLM loss (cross-entropy on the masked tokens only, no router losses) and masked-token accuracy."""
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for batch in eval_batches:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch["labels"]
        masked = labels != -100
        logits, labels = logits[masked].float(), labels[masked]
        loss_sum += torch.nn.functional.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(-1) == labels).sum().item()
        count += labels.numel()
    model.train()
    return {"eval_loss": loss_sum / count, "eval_accuracy": correct / count}


@dataclass
class Contender:
    """One model of a side-by-side run and how it trains; what is left at None follows the run's shared recipe."""

    build: Callable[[], torch.nn.Module]
    lr: float | None = None
    schedule: str = "linear"  # or "wsd": warmup, constant, then linear decay over the last WSD_DECAY of the steps
    batches: list[dict] | None = None  # e.g. the same blocks masked at another rate
    output_prior: bool = True  # start the output bias at the unigram log prior
    upcycle_at: float | None = None  # the built (dense) model becomes `upcycle(model)` after this share of the steps
    upcycle: Callable[[torch.nn.Module], torch.nn.Module] | None = None


WSD_DECAY = 0.2


def lr_factor(schedule: str, step: int, steps: int, warmup: int) -> float:
    """The learning rate at `step` as a share of the peak: linear warmup, then linear decay to 0 at `steps`
    ("linear"), or constant until the last WSD_DECAY of the steps and linear decay to 0 there ("wsd")."""
    if step < warmup:
        return (step + 1) / warmup
    decay = steps - warmup if schedule == "linear" else max(1, int(WSD_DECAY * steps))
    return max(0.0, min(1.0, (steps - step) / decay))


def train_side_by_side(
    contenders: dict,
    batches: list[dict],
    eval_batches: list[dict],
    steps: int,
    eval_every: int,
    lr: float = 1e-3,
    warmup_fraction: float = 0.1,
    weight_decay: float = 0.01,
    expert_weight_decay: float | None = None,
    seed: int = 0,
    log=print,
    inspect: Callable[[str, torch.nn.Module], dict] | None = None,
    bias_follows_decay: bool = False,
) -> dict:
    """Train every contender (a `Contender`, or just a model factory) one step each in turn, on its batches in the
    same order, with AdamW, clipping at 1.0 and its schedule; evaluate all every `eval_every` steps. Wall time counts
    only each model's own steps. The curves record held-out loss and accuracy, and the mean training MLM loss
    since the previous evaluation (so that overfitting shows). `expert_weight_decay`, when given, replaces
    `weight_decay` on the MoE experts' weights (the other parameters and models without experts keep it).
    `inspect(name, model)`, when given, runs after every evaluation (step 0 included, outside the timing) and its
    dict joins that point of the curve (bench_router.py's routing statistics). `bias_follows_decay`: after the
    warm-up, loss-free balancing's bias moves at its rate times the learning rate's share of its peak (it slows
    down and stops as the learning rate decays, as DeepSeek-V3 stops it for its last tokens)."""
    runs, prior_counts = {}, None
    warmup = max(1, int(steps * warmup_fraction))
    decay = (weight_decay, weight_decay if expert_weight_decay is None else expert_weight_decay)
    for name, contender in contenders.items():
        contender = contender if isinstance(contender, Contender) else Contender(build=contender)
        torch.manual_seed(seed)  # same init RNG stream for every contender
        model = contender.build().train()
        if contender.output_prior:
            if prior_counts is None:  # one tokenizer and one set of labels, so one count for all
                prior_counts = output_prior_counts(batches, model.config.vocab_size)
            init_output_prior(model, prior_counts)
        run = {"contender": contender, "model": model, "seconds": 0.0, "losses": [], "lr": contender.lr or lr}
        run["optimizer"], run["schedule"] = optimizer_and_schedule(run, steps, warmup, decay, start=0)
        run["curve"] = [{"step": 0, "tokens": 0, "seconds": 0.0, **evaluate(model, eval_batches)}]
        if inspect is not None:
            run["curve"][0] |= inspect(name, model)
        runs[name] = run
        log(f"{name}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, "
            f"initial eval loss {run['curve'][0]['eval_loss']:.3f}")  # fmt: skip

    tokens_per_step = batches[0]["input_ids"].numel()
    for step in range(steps):
        for name, run in runs.items():  # one step each in turn: load from other processes hits all alike
            contender = run["contender"]
            began = time.perf_counter()
            if contender.upcycle_at is not None and step == int(contender.upcycle_at * steps):
                run["model"] = contender.upcycle(run["model"]).train()
                run["optimizer"], run["schedule"] = optimizer_and_schedule(run, steps, warmup, decay, step)
            model, optimizer = run["model"], run["optimizer"]
            loss, mlm_loss = training_loss(model, (contender.batches or batches)[step % len(batches)])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            if hasattr(model, "update_router_biases"):  # loss-free balancing: once per optimizer step
                decaying = bias_follows_decay and step >= warmup
                model.update_router_biases(lr_factor(contender.schedule, step, steps, warmup) if decaying else 1.0)
            run["schedule"].step()
            optimizer.zero_grad(set_to_none=True)
            run["seconds"] += time.perf_counter() - began
            run["losses"].append(mlm_loss.item())
        if (step + 1) % eval_every and step + 1 != steps:
            continue
        for name, run in runs.items():
            train_loss = sum(run["losses"]) / len(run["losses"])
            point = {"step": step + 1, "tokens": (step + 1) * tokens_per_step, "seconds": run["seconds"],
                     "train_loss": train_loss} | evaluate(run["model"], eval_batches)  # fmt: skip
            run["losses"] = []
            if inspect is not None:
                point |= inspect(name, run["model"])
            run["curve"].append(point)
            log(f"step {step + 1:5d} {name:>12}: train {point['train_loss']:.3f}  eval {point['eval_loss']:.3f}  "
                f"acc {point['eval_accuracy']:.3f}  {run['seconds']:.0f}s")  # fmt: skip
    return {
        name: {
            "lr": run["lr"],
            "total_parameters": sum(p.numel() for p in run["model"].parameters()),
            "active_parameters": active_parameters(run["model"]),
            "train_seconds": run["seconds"],
            "tokens_per_second": steps * tokens_per_step / run["seconds"],
            "final": run["curve"][-1],
            "curve": run["curve"],
        }
        for name, run in runs.items()
    }


def optimizer_and_schedule(run: dict, steps: int, warmup: int, decay: tuple[float, float], start: int):
    """AdamW for the run's model and its schedule, continuing from step `start` (a fresh model after upcycling).
    `decay`: the weight decay of (everything else, the MoE experts' weights). Fused, as the Trainer's default: its
    step costs with the total parameters, and unfused it cost the MoE 11% of a step at mini shapes."""
    named = list(run["model"].named_parameters())
    groups = [
        {"params": [p for name, p in named if ".experts." not in name], "weight_decay": decay[0]},
        {"params": [p for name, p in named if ".experts." in name], "weight_decay": decay[1]},
    ]
    groups = [group for group in groups if group["params"]]
    optimizer = torch.optim.AdamW(groups, lr=run["lr"], betas=(0.9, 0.98), fused=True)
    kind = run["contender"].schedule
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(kind, s + start, steps, warmup))
    return optimizer, schedule


def loss_at_seconds(curve: list[dict], seconds: float) -> float:
    """Held-out loss at a wall-clock time, interpolated linearly between the evaluations around it."""
    for before, after in zip(curve, curve[1:]):
        if after["seconds"] >= seconds:
            share = (seconds - before["seconds"]) / max(after["seconds"] - before["seconds"], 1e-9)
            return before["eval_loss"] + share * (after["eval_loss"] - before["eval_loss"])
    return curve[-1]["eval_loss"]


# Environment variables that make torch's kernels (ATen, MKL, oneDNN) use a lesser instruction set than the CPU has:
# with all three set to AVX2 an AVX-512 machine measures close to an AVX2 one such as CI's.
ISA_LIMITS = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA")


def cpu_isa() -> str:
    """The vector unit torch's kernels use (AVX2, AVX512, ...), and the variables limiting it if any are set."""
    limits = " ".join(f"{name}={os.environ[name]}" for name in ISA_LIMITS if name in os.environ)
    return torch.backends.cpu.get_cpu_capability() + (f" ({limits})" if limits else "")


def machine() -> dict:
    return {
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "cpu_capability": cpu_isa(),  # AVX-512 speeds dense GEMMs ~2x and the MoE's gathers hardly: ratios differ
        "torch": torch.__version__,
        "load_average_1min": os.getloadavg()[0],
    }


def machine_line(m: dict | None = None, load: bool = True) -> str:
    """`machine()` (this one now, or one recorded in a results file) in words; `load=False` leaves out its load."""
    m = m or machine()
    isa = f", {m['cpu_capability']}" if "cpu_capability" in m else ""  # files from before 2026-12-04 lack it
    line = (f"CPU ({m['processor']}{isa}, {m['threads']} torch threads on {m['cpu_count']} cores, shared), "
            f"torch {m['torch']}")  # fmt: skip
    return line + (f", load average {m['load_average_1min']:.1f}" if load else "")


def machines_line(machines: list[dict]) -> str:
    """The machines of several runs in words: each kind once, with the range of the load averages it ran at."""
    loads = {}
    for m in machines:
        loads.setdefault(machine_line(m, load=False), []).append(m["load_average_1min"])
    ranges = {kind: (f"{min(v):.1f}" if f"{min(v):.1f}" == f"{max(v):.1f}" else f"{min(v):.1f}-{max(v):.1f}")
              for kind, v in loads.items()}  # fmt: skip
    return "; ".join(f"{kind}, load average {load_range}" for kind, load_range in ranges.items())

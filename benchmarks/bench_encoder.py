#!/usr/bin/env python
"""Encoder inference throughput and peak memory on real Spanish paragraphs, side by side with the anchors.

Contenders (random weights, eval mode, inference_mode), at the shapes of our config:
  moe          SpanishMoEBertModel
  dense twin   the same with one SwiGLU per layer as wide as the experts active per token
  modernbert   transformers' ModernBertModel, GLU width = our active FFN width
  bert         transformers' BertModel, MLP width 1.5x (same active FFN parameters)
  moe, all-MHA diagnostic: our MoE with multi-head attention in every layer (no GQA/MLA)
  moe, torch.compile   the moe model compiled (warmed up on every batch shape first, so compile time is not timed)
  moe, onnxruntime     the moe model exported with `spanish_moe_bert.onnx.write_onnx`, run by onnxruntime on the CPU
                       with as many threads as torch uses (its memory is not probed)

Input: paragraphs of the bundled corpus in a seeded random order, batches of 32, each padded to its longest
paragraph (at most 512 tokens). tokens/s counts real (non-padding) tokens. Every model sees the same padded
batches: our MoE already skips padding tokens in the experts; transformers v5's ModernBertModel no longer
unpads (its varlen path needs flash-attention on a GPU), so on CPU it attends over padding like BERT does.

Timing interleaves the models batch by batch (each batch through every model in turn) and reports the median
over rounds of the summed batch times. Peak memory is measured in a fresh process per model: resident-set size
(psutil RSS, sampled every millisecond by a thread) while the batches run, minus the RSS just before (weights and
inputs already loaded): the activation memory of inference, as the OS sees it. tracemalloc would miss torch's
allocations, which do not go through Python's allocator.

    python benchmarks/bench_encoder.py --quick   # mini config, 4 batches
    python benchmarks/bench_encoder.py           # large.json widths (H 1024, 16 heads, 32 experts top-4), 6 layers
"""

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
from transformers import BertConfig, BertModel, ModernBertConfig, ModernBertModel  # noqa: E402

from configuration_spanish_moe_bert import SpanishMoEBertConfig  # noqa: E402
from modeling_spanish_moe_bert import SpanishMoEBertModel  # noqa: E402
from spanish_moe_bert.onnx import INPUT_NAMES, write_onnx  # noqa: E402

MODEL_CLASSES = {"spanish_moe_bert": SpanishMoEBertModel, "modernbert": ModernBertModel, "bert": BertModel}
CONFIG_CLASSES = {"spanish_moe_bert": SpanishMoEBertConfig, "modernbert": ModernBertConfig, "bert": BertConfig}
MODES = {  # config, layers (None: as in the file), batches, rounds
    "quick": ("mini.json", None, 4, 5),
    "full": ("large.json", 6, 8, 3),
}


def contender_configs(config, tokenizer) -> dict:
    return {
        "moe": config,
        "dense twin": config.dense_twin(),
        "modernbert": harness.modernbert_config(config, tokenizer),
        "bert": harness.bert_config(config, tokenizer),
        # Diagnostic: our MoE with MHA in every layer, to show what the MLA/GQA layers cost here.
        "moe, all-MHA": SpanishMoEBertConfig.from_dict(
            config.to_dict() | {"attention_types": ["mha"] * config.num_hidden_layers}
        ),
    }


def build(config_dict: dict) -> torch.nn.Module:
    model_type = config_dict["model_type"]
    torch.manual_seed(0)
    return MODEL_CLASSES[model_type](CONFIG_CLASSES[model_type].from_dict(config_dict)).eval()


def paragraph_batches(tokenizer, batch_size: int, count: int, max_length: int = 512) -> list[dict]:
    texts = harness.paragraphs()
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(0)).tolist()
    batches = []
    for i in range(count):
        chunk = [texts[j] for j in order[i * batch_size : (i + 1) * batch_size]]
        encoded = tokenizer(chunk, padding="longest", truncation=True, max_length=max_length, return_tensors="pt")
        batches.append({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]})
    return batches


class OnnxRuntimeEncoder:
    """An exported model behind the same call as the PyTorch ones."""

    def __init__(self, model: SpanishMoEBertModel, folder: Path):
        import onnxruntime

        write_onnx(model, folder / "model.onnx")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        # Idle onnxruntime threads spin-wait by default, which would slow the PyTorch model timed next.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(str(folder / "model.onnx"), options, ["CPUExecutionProvider"])

    def __call__(self, input_ids, attention_mask):
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        feeds["token_type_ids"] = torch.zeros_like(input_ids)
        return self.session.run(None, {name: feeds[name].numpy() for name in INPUT_NAMES})


@torch.inference_mode()
def run_batches(model, batches) -> float:
    start = time.perf_counter()
    for batch in batches:
        model(**batch)
    return time.perf_counter() - start


def memory_probe(spec_path: str) -> None:
    """Child process: load one model and the batches, print the peak RSS increase while they run."""
    spec = torch.load(spec_path)
    model = build(spec["config"])
    batches = spec["batches"]
    run_batches(model, batches[:1])  # first-call allocations (kernels, caches) belong to the baseline too
    gc.collect()
    process = psutil.Process()
    baseline = peak = process.memory_info().rss
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, process.memory_info().rss)
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    run_batches(model, batches)
    done.set()
    sampler.join()
    print(json.dumps({"peak_rss_increase_mb": (peak - baseline) / 2**20, "rss_before_mb": baseline / 2**20}))


# glibc moves its mmap threshold up as large blocks are freed, after which freed activations stay in the heap
# and RSS stops following live memory (one model's peak then varied 2x between runs). A fixed threshold
# keeps every large buffer in its own mapping, returned to the OS when freed.
PROBE_ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}


def measure_memory(config_dict: dict, batches: list[dict], repeats: int) -> dict:
    """Median peak RSS increase over `repeats` fresh processes, with the spread."""
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "spec.pt"
        torch.save({"config": config_dict, "batches": batches}, spec)
        peaks = []
        for _ in range(repeats):
            out = subprocess.run(
                [sys.executable, __file__, "--memory_probe", str(spec)],
                capture_output=True, text=True, check=True, env=PROBE_ENV,
            )  # fmt: skip
            peaks.append(json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_increase_mb"])
    return {"peak_rss_increase_mb": statistics.median(peaks), "peak_rss_increase_mb_runs": peaks}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="mini config, 4 batches, 5 rounds")
    parser.add_argument("--model_config", help="our config JSON (default: mini in --quick, else large.json)")
    parser.add_argument("--num_layers", type=int, help="override num_hidden_layers (full mode: 6)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--batches", type=int)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--memory_repeats", type=int, default=3, help="fresh processes per model (median)")
    parser.add_argument("--memory_probe", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        return memory_probe(args.memory_probe)
    config_name, layers, num_batches, rounds = MODES["quick" if args.quick else "full"]
    config_path = args.model_config or harness.REPO / "configs" / config_name
    layers, num_batches, rounds = args.num_layers or layers, args.batches or num_batches, args.rounds or rounds

    tokenizer = harness.train_tokenizer(8000)
    overrides = {"max_position_embeddings": 512} | ({"num_hidden_layers": layers} if layers else {})
    config = harness.our_config(config_path, tokenizer, **overrides)
    batches = paragraph_batches(tokenizer, args.batch_size, num_batches)
    real_tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    padded_tokens = sum(b["input_ids"].numel() for b in batches)

    configs = {name: c.to_dict() for name, c in contender_configs(config, tokenizer).items()}
    models = {name: build(c) for name, c in configs.items()}
    params = {name: (m.num_parameters(), harness.active_parameters(m)) for name, m in models.items()}
    onnx_dir = tempfile.TemporaryDirectory()
    models["moe, torch.compile"] = torch.compile(models["moe"])
    models["moe, onnxruntime"] = OnnxRuntimeEncoder(models["moe"], Path(onnx_dir.name))
    params["moe, torch.compile"] = params["moe, onnxruntime"] = params["moe"]
    for model in models.values():
        run_batches(model, batches)  # warm-up; the compiled model compiles for these shapes here
    seconds = {name: [] for name in models}
    for _ in range(rounds):  # interleaved batch by batch, so drift in machine speed hits every model alike
        for name in models:
            seconds[name].append(0.0)
        for batch in batches:
            for name, model in models.items():
                seconds[name][-1] += run_batches(model, [batch])
    del models
    onnx_dir.cleanup()
    gc.collect()

    results = {}
    for name in seconds:
        results[name] = {
            "total_parameters": params[name][0],
            "active_parameters": params[name][1],
            "round_seconds": seconds[name],
            "tokens_per_second": real_tokens / statistics.median(seconds[name]),
        }
        if name in configs:
            results[name] |= measure_memory(configs[name], batches, args.memory_repeats)
    reference = results["modernbert"]
    for r in results.values():
        r["speed_vs_modernbert"] = r["tokens_per_second"] / reference["tokens_per_second"]
        r["speed_vs_moe_eager"] = r["tokens_per_second"] / results["moe"]["tokens_per_second"]
        if "peak_rss_increase_mb" in r:
            r["memory_vs_modernbert"] = r["peak_rss_increase_mb"] / max(reference["peak_rss_increase_mb"], 1e-9)

    shape = (
        f"H {config.hidden_size}, {config.num_hidden_layers} layers, {config.num_attention_heads} heads, "
        f"{config.num_experts} experts top-{config.num_experts_per_tok} x {config.moe_intermediate_size}"
    )
    title = (f"Encoder inference, {Path(config_path).name} ({shape}); {num_batches} batches of {args.batch_size} "
             f"paragraphs, {real_tokens:,} real tokens ({padded_tokens:,} with padding); median of {rounds} "
             f"interleaved rounds; {harness.machine_line()}")  # fmt: skip
    print(f"\n{title}\n")
    print(
        "| model | total params | active params | tokens/s | vs ModernBERT | vs moe (eager) "
        "| peak RSS increase (range) | vs ModernBERT |\n|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    for name, r in results.items():
        memory = "n/a | n/a"
        if "peak_rss_increase_mb" in r:
            runs = r["peak_rss_increase_mb_runs"]
            memory = (
                f"{r['peak_rss_increase_mb']:.0f} MB ({min(runs):.0f}-{max(runs):.0f}) | "
                f"{r['memory_vs_modernbert']:.2f}x"
            )
        print(
            f"| {name} | {r['total_parameters'] / 1e6:.2f}M | {r['active_parameters'] / 1e6:.2f}M | "
            f"{r['tokens_per_second']:,.0f} | {r['speed_vs_modernbert']:.2f}x | {r['speed_vs_moe_eager']:.2f}x | "
            f"{memory} |"
        )

    output = harness.RESULTS / f"bench_encoder{'_quick' if args.quick else ''}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({
        "benchmark": "bench_encoder", "quick": args.quick, "model_config": Path(config_path).name, "shape": shape,
        "batch_size": args.batch_size, "batches": num_batches, "rounds": rounds, "real_tokens": real_tokens,
        "padded_tokens": padded_tokens,
        "memory": "median over fresh processes of peak psutil RSS minus RSS before the batches, "
        "MALLOC_MMAP_THRESHOLD_=131072",
        "machine": harness.machine(), "results": results,
    }, indent=2) + "\n")  # fmt: skip
    print(f"\nwrote {output}")


if __name__ == "__main__":
    main()

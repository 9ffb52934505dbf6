#!/usr/bin/env python
"""The GPU suite: correctness, the MoE layer, the full model and run_mlm.py end to end, in one command.

    bash benchmarks/gpu_suite.sh                          # on a GPU machine; about 10 minutes on an H100
    python benchmarks/gpu_suite.py --parts moe model      # some parts only
    python benchmarks/gpu_suite.py --smoke --device cpu   # the same code at toy sizes (tests/test_gpu_suite.py)

Each part writes `benchmarks/results/gpu/<part>.json` (or `--output_dir`) with the device name and the torch and
CUDA versions, and prints a markdown table:
  correctness  every MoE path against a float64 reference (values and gradients; fp32, bf16, fp16), padding
               invariance, sdpa = eager, no NaN on a fully padded row, compiled = eager
  moe          the MoE layer against a dense SwiGLU of equal active FLOPs, the naive loop and transformers' Qwen3
               block (eager, grouped_mm, batched_mm) at the published widths: 4k / 16k / 64k tokens, bf16
  model        the published model (340M, sequence 512): training tokens/s, MFU and peak memory of the MoE, its
               dense twin and a ModernBERT of equal active parameters, eager and compiled
  run_mlm      run_mlm.py in bf16 on a corpus, then a run killed with SIGKILL and resumed, compared step by step
"""

import argparse
import copy
import json
import platform
import signal
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_moe import NaiveLoopMoE, moe_shape, qwen3_block  # noqa: E402
from harness import active_parameters  # noqa: E402

import modeling_spanish_moe_bert as modeling  # noqa: E402
from configuration_spanish_moe_bert import MOE_IMPLEMENTATIONS, SpanishMoEBertConfig  # noqa: E402
from modeling_spanish_moe_bert import SpanishMoEBertForMaskedLM, SpanishMoEBertMLP, SpanishMoEBertSparseMoE  # noqa: E402

PARTS = ("correctness", "moe", "model", "run_mlm")
# Dense bf16 tensor-core peaks (datasheet, without sparsity), for MFU; other GPUs report MFU against the measured
# peak of a large matrix product only.
DATASHEET_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.1, "A10": 125.0}
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 5e-3}  # relative error vs float64


# ----------------------------------------------------------------------------------------------------------------
# Measuring
# ----------------------------------------------------------------------------------------------------------------


def environment(device: torch.device) -> dict:
    info = {"torch": torch.__version__, "cuda": torch.version.cuda}
    if device.type != "cuda":
        return {"device": platform.processor() or platform.machine(), **info}
    props = torch.cuda.get_device_properties(device)
    return {
        "device": props.name,
        "capability": list(torch.cuda.get_device_capability(device)),
        "memory_gib": round(props.total_memory / 2**30, 1),
        "multiprocessors": props.multi_processor_count,
        **info,
    }


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn, device: torch.device, repeats: int, warmup: int = 2) -> float:
    """Median wall time of `fn()` after `warmup` calls, the device synchronized around each call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def failure(error: BaseException) -> str:
    """How a row records a contender that failed (out of memory, a kernel this GPU lacks), so the rest still run."""
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:300]


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ in float64; NaN anywhere counts as failure (inf)."""
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    if not torch.isfinite(out).all():
        return float("inf")
    return ((out - ref).norm() / ref.norm().clamp(min=1e-30)).item()


def write(output_dir: Path, part: str, device: torch.device, payload: dict) -> None:
    """Write (or rewrite) `<part>.json`. Parts that take minutes write after each stage with `"complete": false`, so
    that a command stopped at its time limit still brings back what was measured; the rename keeps a kill during
    the write from leaving a half-written file."""
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / f"{part}.json"
    partial = path.with_suffix(".json.tmp")
    partial.write_text(json.dumps({"part": part, **environment(device), **payload}, indent=2) + "\n")
    partial.replace(path)
    print(f"wrote {path}", flush=True)


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


# ----------------------------------------------------------------------------------------------------------------
# 1. Correctness
# ----------------------------------------------------------------------------------------------------------------


def small_config(**overrides) -> SpanishMoEBertConfig:
    base = SpanishMoEBertConfig.from_json_file(REPO / "configs" / "tiny.json").to_diff_dict()
    base.pop("attention_types", None)
    base.pop("mlp_layer_types", None)
    return SpanishMoEBertConfig(**(base | overrides))


def paths_for(device: torch.device, dtype: torch.dtype) -> list[str]:
    """Every path that can run here; grouped_mm only where torch has the kernel."""
    return [p for p in MOE_IMPLEMENTATIONS if p != "grouped_mm" or modeling.grouped_mm_available(device, dtype)]


def check_moe_paths(device: torch.device, smoke: bool) -> list[dict]:
    """Each path's forward and gradients (input and every weight) against the naive loop run in float64 on CPU."""
    rows = []
    hidden, tokens = (64, 40) if smoke else (512, 4096)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for path in paths_for(device, dtype):
            torch.manual_seed(0)
            config = small_config(hidden_size=hidden, num_attention_heads=4, num_experts=8, num_experts_per_tok=2,
                                  moe_intermediate_size=64, moe_implementation=path)  # fmt: skip
            moe = SpanishMoEBertSparseMoE(config)
            for p in moe.parameters():
                torch.nn.init.normal_(p, std=0.05)
            reference = NaiveLoopMoE(copy.deepcopy(moe).double())
            x = torch.randn(1, tokens, hidden, dtype=torch.float64)
            mask = torch.ones(1, tokens, dtype=torch.bool)
            mask[0, -tokens // 8 :] = False  # padding tokens must give zeros and take no gradient
            xr = x.clone().requires_grad_()
            ref = reference(xr) * mask[..., None]
            ref_grads = torch.autograd.grad(ref.square().sum(), [xr, *reference.parameters()])

            moe = moe.to(device=device, dtype=dtype)
            xd = x.to(device=device, dtype=dtype).requires_grad_()
            out, _ = moe(xd, mask.to(device))
            grads = torch.autograd.grad(out.float().square().sum(), [xd, *moe.parameters()])
            names = ["output", "grad input", *[f"grad {n}" for n, _ in moe.named_parameters()]]
            for name, got, want in zip(names, [out, *grads], [ref, *ref_grads]):
                rows.append(check(f"MoE {path}: {name}", dtype, relative_error(got, want), TOLERANCE[dtype]))
    return rows


def check(name: str, dtype: torch.dtype, error: float, tolerance: float) -> dict:
    dtype = str(dtype).removeprefix("torch.")
    return {"check": name, "dtype": dtype, "error": error, "tolerance": tolerance, "passed": error <= tolerance}


def check_model(device: torch.device, smoke: bool, backend: str) -> list[dict]:
    """Padding invariance, sdpa = eager, a fully padded row, and compiled = eager, on a small model."""
    rows = []
    torch.manual_seed(0)
    config = small_config() if smoke else small_config(hidden_size=256, num_attention_heads=4, num_key_value_heads=2)
    base = SpanishMoEBertForMaskedLM(config).eval()
    ids = torch.randint(5, config.vocab_size, (3, 24), device=device)
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0
    mask[2] = 0  # a fully padded row

    def record(name, dtype, error, tolerance):
        rows.append(check(name, dtype, error, tolerance))

    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        model = copy.deepcopy(base).to(device=device, dtype=dtype)
        tolerance = 10 * TOLERANCE[dtype]
        with torch.no_grad():
            batched = model(input_ids=ids, attention_mask=mask).logits
            alone = model(input_ids=ids[1:2, :15]).logits
            record("padding: row alone = row in batch", dtype, relative_error(batched[1, :15], alone[0]), tolerance)
            record("fully padded row: finite logits", dtype, 0.0 if torch.isfinite(batched).all() else float("inf"), 0)
            model.set_attn_implementation("eager")
            eager = model(input_ids=ids, attention_mask=mask).logits
            real = mask.bool()
            record("sdpa = eager (real tokens)", dtype, relative_error(batched[real], eager[real]), tolerance)

    model = copy.deepcopy(base).to(device)
    compiled = torch.compile(model, backend=backend)
    labels = ids.masked_fill(torch.rand(ids.shape, device=device) > 0.3, -100).masked_fill(mask == 0, -100)
    labels[0, 1] = ids[0, 1]
    with torch.no_grad():
        compiled_logits = compiled(input_ids=ids, attention_mask=mask).logits
        eager_logits = model(input_ids=ids, attention_mask=mask).logits
    record("compiled = eager: inference", torch.float32, relative_error(compiled_logits, eager_logits), 1e-4)
    model.train()
    eager_loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    eager_grads = torch.autograd.grad(eager_loss, list(model.parameters()), allow_unused=True)
    compiled_loss = compiled(input_ids=ids, attention_mask=mask, labels=labels).loss
    compiled_grads = torch.autograd.grad(compiled_loss, list(model.parameters()), allow_unused=True)
    record("compiled = eager: training loss", torch.float32, relative_error(compiled_loss, eager_loss), 1e-4)
    worst = max(relative_error(c, e) for c, e in zip(compiled_grads, eager_grads) if e is not None)
    record("compiled = eager: every gradient", torch.float32, worst, 1e-3)
    return rows


def run_correctness(device: torch.device, smoke: bool, output_dir: Path, backend: str) -> bool:
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 checks at fp32 precision
    rows = check_moe_paths(device, smoke) + check_model(device, smoke, backend)
    passed = all(r["passed"] for r in rows)
    cells = [[r["check"], r["dtype"], f"{r['error']:.2e}", r["tolerance"], r["passed"]] for r in rows]
    print(table(["check", "dtype", "relative error", "tolerance", "passed"], cells))
    payload = {"passed": passed, "compile_backend": backend, "checks": rows, "complete": True}
    write(output_dir, "correctness", device, payload)
    return passed


# ----------------------------------------------------------------------------------------------------------------
# 2. The MoE layer
# ----------------------------------------------------------------------------------------------------------------


def moe_contenders(config: SpanishMoEBertConfig, device: torch.device, free_bytes: int, tokens: int) -> dict:
    torch.manual_seed(0)
    ours = SpanishMoEBertSparseMoE(config)
    for p in ours.parameters():
        torch.nn.init.normal_(p, std=0.02)
    width = config.num_experts_per_tok * config.moe_intermediate_size
    models = {"ours (automatic path)": ours, "dense SwiGLU (same active FLOPs)": SpanishMoEBertMLP(config, width)}
    for path in ("padded_bmm", "loop"):
        forced = copy.deepcopy(ours)
        forced.forced_path = path
        models[f"ours, {path}"] = forced
    models["naive per-expert loop"] = NaiveLoopMoE(ours)
    for implementation in ("eager", "grouped_mm", "batched_mm"):
        gathered = tokens * config.num_experts_per_tok * 3 * config.hidden_size * config.moe_intermediate_size * 2
        if implementation == "batched_mm" and 3 * gathered > free_bytes:
            continue  # it gathers each token's expert weights: would not fit
        models[f"transformers Qwen3 ({implementation})"] = qwen3_block(config, implementation)
    return {name: model.to(device=device, dtype=torch.bfloat16) for name, model in models.items()}


def run_moe(device: torch.device, smoke: bool, output_dir: Path) -> None:
    config = small_config(moe_intermediate_size=32) if smoke else SpanishMoEBertConfig()
    token_counts = [64, 256] if smoke else [4096, 16384, 65536]
    repeats = 1 if smoke else 20
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else 8 * 2**30
    shape = moe_shape(config)
    rows = []
    for tokens in token_counts:
        models = moe_contenders(config, device, free, tokens)
        x = torch.randn(1, tokens, config.hidden_size, device=device, dtype=torch.bfloat16)
        for backward in (False, True):
            seconds, errors = {}, {}
            for name, model in models.items():

                def step(model=model):
                    xx = x.detach().requires_grad_(backward)
                    with torch.set_grad_enabled(backward):
                        out = model(xx)
                        out = out[0] if isinstance(out, tuple) else out
                        if backward:
                            out.float().square().mean().backward()

                try:
                    seconds[name] = median_seconds(step, device, repeats, warmup=1 if smoke else 2)
                except (RuntimeError, NotImplementedError, ValueError) as error:  # OOM is a RuntimeError
                    seconds[name], errors[name] = None, failure(error)
                    print(f"{name}, {tokens} tokens: {errors[name]}", flush=True)
            dense = seconds["dense SwiGLU (same active FLOPs)"]
            for name, s in seconds.items():
                row = {"tokens": tokens, "pass": "fwd+bwd" if backward else "fwd", "contender": name,
                       "ms": s and round(s * 1e3, 3), "x_dense": s and dense and round(s / dense, 2)}  # fmt: skip
                rows.append({**row, "error": errors[name]} if name in errors else row)
        del models
        if device.type == "cuda":
            torch.cuda.empty_cache()
        complete = tokens == token_counts[-1]
        write(output_dir, "moe", device, {"dtype": "bfloat16", "shape": shape, "rows": rows, "complete": complete})
    print(table(["tokens", "pass", "contender", "ms", "× dense"],
                [[r["tokens"], r["pass"], r["contender"], r["ms"], r.get("error") or r["x_dense"]]
                 for r in rows]))  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# 3. The full model
# ----------------------------------------------------------------------------------------------------------------


def model_contenders(config: SpanishMoEBertConfig) -> dict:
    from transformers import ModernBertConfig, ModernBertForMaskedLM

    width = config.num_experts_per_tok * config.moe_intermediate_size
    modernbert = ModernBertConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads, intermediate_size=width,
        max_position_embeddings=config.max_position_embeddings, sparse_prediction=True,
        pad_token_id=0, cls_token_id=2, sep_token_id=3, bos_token_id=2, eos_token_id=3,  # our special token ids
    )  # fmt: skip
    return {
        "MoE (ours)": lambda: SpanishMoEBertForMaskedLM(config),
        "dense twin": lambda: SpanishMoEBertForMaskedLM(config.dense_twin()),
        "ModernBERT (equal active)": lambda: ModernBertForMaskedLM(modernbert),
    }


def training_flops(model, batch: dict) -> int:
    """FLOPs of one training step as torch counts them (matrix products and attention, forward and backward). Grouped
    GEMMs are not counted by torch, so a MoE model is given its dense twin's count, which has the same active FLOPs."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        model(**batch).loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def measured_peak_tflops(device: torch.device, smoke: bool) -> float:
    n = 512 if smoke else 8192
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    return 2 * n**3 / median_seconds(lambda: a @ b, device, repeats=10, warmup=3) / 1e12


def run_model(device: torch.device, smoke: bool, output_dir: Path, backend: str) -> None:
    from accelerate.utils import compile_regions

    from spanish_moe_bert.training import raise_recompile_limit  # here: it imports `datasets`, which only run_mlm needs

    torch.backends.cuda.matmul.allow_tf32 = True
    # The three models' layers all run one code object (transformers' GradientCheckpointingLayer call), whose
    # compiled versions Dynamo caps at 8 per process: past it, the last model's layers would run eagerly.
    raise_recompile_limit(64)
    config = small_config() if smoke else SpanishMoEBertConfig()
    batch_size, seq_len, steps = (2, 32, 2) if smoke else (32, 512, 10)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, config.vocab_size, (batch_size, seq_len), generator=generator)
    labels = ids.masked_fill(torch.rand(ids.shape, generator=generator) > 0.15, -100)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    batch = {key: value.to(device) for key, value in batch.items()}
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    peak = measured_peak_tflops(device, smoke)
    datasheet = next((v for k, v in DATASHEET_BF16_TFLOPS.items() if k in environment(device)["device"]), None)
    payload = {"batch_size": batch_size, "seq_len": seq_len, "precision": "bf16 autocast", "compile_backend": backend,
               "measured_peak_tflops": peak, "datasheet_peak_tflops": datasheet}  # fmt: skip
    rows = []
    contenders = model_contenders(config)
    last = (list(contenders)[-1], "compiled")
    for name, factory in contenders.items():
        model = None
        for mode in ("eager", "compiled"):
            try:  # an OOM, a compiler error: recorded in the row, and the other rows still run
                if model is None:
                    model, flops = build_and_count(name, factory, config, batch, autocast, device)
                # compiled: as run_mlm.py --torch_compile does
                runner = model if mode == "eager" else compile_regions(model, backend=backend)
                rows.append(
                    time_training(name, mode, model, runner, batch, autocast, device, steps, smoke, flops, peak)
                )
            except Exception as error:
                rows.append({"model": name, "mode": mode, "error": failure(error)})
                print(f"{name}, {mode}: {rows[-1]['error']}", flush=True)
            write(output_dir, "model", device, {**payload, "rows": rows, "complete": (name, mode) == last})
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    moe_eager = next(r for r in rows if r["model"] == "MoE (ours)" and r["mode"] == "eager").get("tokens_per_second")
    print(f"bf16 autocast, batch {batch_size} x {seq_len}; matrix-product peak measured {peak:.0f} TFLOP/s")
    cells = [
        [r["model"], r["mode"], f"{r['active_parameters'] / 1e6:.1f}M", f"{r['tokens_per_second']:,.0f}",
         f"{r['tokens_per_second'] / moe_eager:.2f}x" if moe_eager else "n/a", f"{r['tflops_per_second']:.0f}",
         f"{r['tflops_per_second'] / datasheet:.1%}" if datasheet else "n/a", f"{r['mfu_vs_measured_peak']:.1%}",
         f"{r['peak_memory_gib']:.1f}" if r["peak_memory_gib"] is not None else "n/a"]
        if "error" not in r else [r["model"], r["mode"], r["error"], *["n/a"] * 6]
        for r in rows
    ]  # fmt: skip
    header = ["model", "mode", "active params", "tokens/s", "vs MoE eager", "TFLOP/s", "MFU (datasheet)",
              "MFU (measured peak)", "peak GiB"]  # fmt: skip
    print(table(header, cells))


def build_and_count(name, factory, config, batch, autocast, device) -> tuple[torch.nn.Module, int]:
    """A contender on the device, in training mode, and the FLOPs of its training step."""
    torch.manual_seed(0)
    model = factory().to(device).train()
    # torch counts no grouped GEMMs: a MoE is counted as its dense twin, which has the same active FLOPs
    counted = SpanishMoEBertForMaskedLM(config.dense_twin()).to(device) if name == "MoE (ours)" else model
    with autocast:
        return model, training_flops(counted, batch)


def time_training(name, mode, model, runner, batch, autocast, device, steps, smoke, flops, peak) -> dict:
    """One row of the model table: median step time of `runner` (the model, or its compiled regions) with AdamW."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")

    def step():
        with autocast:
            loss = runner(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    began = time.perf_counter()
    seconds = median_seconds(step, device, repeats=steps, warmup=1 if smoke else 3)
    tokens = batch["input_ids"].numel()
    return {
        "model": name,
        "mode": mode,
        "total_parameters": model.num_parameters(),
        "active_parameters": active_parameters(model),
        "tokens_per_second": tokens / seconds,
        "step_ms": seconds * 1e3,
        "tflops_per_second": flops / seconds / 1e12,
        "mfu_vs_measured_peak": flops / seconds / 1e12 / peak,
        "wall_seconds_including_compile": time.perf_counter() - began,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }


# ----------------------------------------------------------------------------------------------------------------
# 4. run_mlm.py end to end, killed and resumed
# ----------------------------------------------------------------------------------------------------------------


def run_mlm_command(output_dir: Path, corpus: Path, smoke: bool, extra: list[str]) -> list[str]:
    run_file = "train_cpu_demo.json" if smoke else "train_large_a100.json"
    steps = ["--max_steps", "20", "--save_steps", "10", "--eval_steps", "10", "--logging_steps", "2",
             "--model_config", str(REPO / "configs" / "tiny.json")] if smoke else [
        "--max_steps", "200", "--save_steps", "100", "--eval_steps", "100", "--logging_steps", "10",
        "--per_device_train_batch_size", "16", "--gradient_accumulation_steps", "1", "--warmup_steps", "20",
        "--max_eval_samples", "64",
    ]  # fmt: skip
    return [sys.executable, str(REPO / "run_mlm.py"), str(REPO / "configs" / run_file), "--train_file", str(corpus),
            "--output_dir", str(output_dir), "--report_to", "none", *steps, *extra]  # fmt: skip


def logged_losses(output_dir: Path) -> dict[int, float]:
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return {e["step"]: e["loss"] for e in state["log_history"] if "loss" in e}


def run_run_mlm(device: torch.device, smoke: bool, output_dir: Path, corpus: Path, work: Path) -> bool:
    """An uninterrupted run; a second run killed (SIGKILL) after its first checkpoint and started again with the same
    command: the resumed losses must continue the uninterrupted run's curve. The first two run side by side (two
    batch-16 runs of the 340M model should take about 20 GB each), so that their start-up (imports, tokenizing,
    compiling) overlaps: a lent GPU's minutes are few."""
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    tokenizer = work / "tokenizer"
    vocab = "2000" if smoke else "50000"
    subprocess.run([sys.executable, str(REPO / "train_tokenizer.py"), "--train_file", str(corpus), "--vocab_size",
                    vocab, "--output_dir", str(tokenizer)], check=True, cwd=REPO)  # fmt: skip
    extra = ["--tokenizer_name", str(tokenizer)] + (["--use_cpu"] if device.type == "cpu" else [])
    killed_dir = work / "killed"
    first_checkpoint = killed_dir / ("checkpoint-10" if smoke else "checkpoint-100")
    began = time.perf_counter()
    full_run = subprocess.Popen(run_mlm_command(work / "full", corpus, smoke, extra), cwd=REPO)  # configs/ is relative
    process = subprocess.Popen(run_mlm_command(killed_dir, corpus, smoke, extra), cwd=REPO)
    try:
        while process.poll() is None and not (first_checkpoint / "trainer_state.json").is_file():
            time.sleep(0.5)
        if not (first_checkpoint / "trainer_state.json").is_file():
            raise RuntimeError(f"the run to kill ended (exit {process.returncode}) before writing {first_checkpoint}")
        time.sleep(2.0)  # let it train past the checkpoint
        process.send_signal(signal.SIGKILL)
        process.wait()
        if full_run.wait() != 0:
            raise subprocess.CalledProcessError(full_run.returncode, full_run.args)
    finally:  # a failure above must not leave a run holding the GPU for the next part
        for child in (full_run, process):
            if child.poll() is None:
                child.kill()
                child.wait()
    full_seconds = time.perf_counter() - began
    results_file = work / "full" / "all_results.json"
    metrics = json.loads(results_file.read_text()) if results_file.is_file() else {}
    full = logged_losses(work / "full")
    uninterrupted = {"corpus": corpus.name, "uninterrupted_seconds": full_seconds, "uninterrupted_losses": full,
                     "eval": {k: v for k, v in metrics.items() if k.startswith("eval_")}}  # fmt: skip
    write(output_dir, "run_mlm", device, {**uninterrupted, "passed": None, "complete": False})  # before the resume
    subprocess.run(run_mlm_command(killed_dir, corpus, smoke, extra), check=True, cwd=REPO)

    resumed = logged_losses(killed_dir)
    start = int(first_checkpoint.name.split("-")[1])
    after = sorted(step for step in full if step > start and step in resumed)
    worst = max(abs(full[s] - resumed[s]) for s in after)
    passed = worst <= (1e-4 if device.type == "cpu" else 2e-2)  # GPU kernels (atomics in attention backward) vary
    print(table(["step", "uninterrupted loss", "killed + resumed loss"],
                [[s, f"{full[s]:.4f}", f"{resumed[s]:.4f}"] for s in after]))  # fmt: skip
    print(
        f"largest difference after the resume: {worst:.2e} ({'ok' if passed else 'TOO LARGE'}); "
        f"uninterrupted run {full_seconds:.0f} s, beside the run that was killed"
    )
    payload = {
        **uninterrupted,
        "resumed_from": start,
        "steps_compared": after,
        "largest_loss_difference": worst,
        "passed": passed,
        "resumed_losses": resumed,
        "complete": True,
    }
    write(output_dir, "run_mlm", device, payload)
    return passed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--smoke", action="store_true", help="toy sizes: checks the code, measures nothing")
    parser.add_argument("--corpus", type=Path, help="run_mlm's training file (default: shared corpus, else bundled)")
    parser.add_argument("--output_dir", type=Path, default=REPO / "benchmarks" / "results" / "gpu")
    parser.add_argument("--work_dir", type=Path, default=REPO / "outputs" / "gpu_suite")
    parser.add_argument(
        "--compile_backend",
        default="inductor",
        help="torch.compile's backend for the compiled checks and rows; the CPU smoke test uses "
        "aot_eager (Dynamo and AOTAutograd without Inductor's C++ codegen; faster on 2 cores)",
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    corpus = args.corpus or next(p for p in (REPO.parent / "shared" / "data" / "es_corpus.jsonl.gz",
                                             REPO / ".gpu_carry" / "es_corpus.jsonl.gz",
                                             REPO / "data" / "es_corpus_sample.txt") if p.is_file())  # fmt: skip
    print(json.dumps(environment(device)))
    runners = {
        "correctness": lambda: run_correctness(device, args.smoke, args.output_dir, args.compile_backend),
        "moe": lambda: run_moe(device, args.smoke, args.output_dir),
        "model": lambda: run_model(device, args.smoke, args.output_dir, args.compile_backend),
        "run_mlm": lambda: run_run_mlm(device, args.smoke, args.output_dir, corpus, args.work_dir),
    }
    failed = []
    for part in args.parts:
        began = time.perf_counter()
        print(f"\n## {part}\n", flush=True)
        try:
            if runners[part]() is False:  # a correctness or resume check failed
                failed.append(part)
        except Exception:  # a part that breaks on this machine must not cost the next ones their turn
            failed.append(part)
            trace = traceback.format_exc()
            print(trace, flush=True)
            args.output_dir.mkdir(parents=True, exist_ok=True)
            (args.output_dir / f"{part}_error.txt").write_text(json.dumps(environment(device)) + "\n" + trace)
        print(f"({part}: {time.perf_counter() - began:.0f} s)", flush=True)
    if failed:
        raise SystemExit(f"gpu_suite: {', '.join(failed)} failed (see the tables and tracebacks above)")


if __name__ == "__main__":
    main()

"""MoE layer cost, side by side in one run, as ratios to a dense SwiGLU of the same active FLOPs.

Contenders at equal shapes (the default config: hidden 1024, 32 experts of width 88, top-4; or `--config`):
  ours            SpanishMoEBertSparseMoE, the path `expert_path` picks (CPU: per-expert loop without autograd,
                  grouped_mm with it)
  ours, <path>    the same layer forced onto each other path it has (`moe_implementation`)
  dense           SwiGLU of width top_k * moe_intermediate_size (same FLOPs per token, no routing)
  naive loop      one masked gather / matmul / index_add per expert (the classic reference loop)
  qwen3 <impl>    transformers' Qwen3MoeSparseMoeBlock with each experts implementation it offers
and, fp32 with `F.grouped_mm`, the GEMM floor: the experts' grouped GEMMs alone at balanced loads against dense's
GEMMs alone (fwd+bwd; no routing, gathers or activation), the lowest ratio the layer could reach here.
A third such row runs the expert GEMMs as one batched GEMM (`bmm`): what a grouped GEMM that hands whole experts
to threads would reach; a fourth hands them so, to single-threaded worker threads (no batching).

Timings interleave the contenders round by round and report the median, so machine noise hits all alike.
The process keeps freed memory for reuse as run_mlm.py does on CPUs (`spanish_moe_bert.cpu`); `--allocator
default` measures glibc's default, which maps and faults in every large buffer afresh.

    python benchmarks/bench_moe.py --quick          # 4096 tokens, about a minute on 2 cores
    python benchmarks/bench_moe.py                  # 512 / 4096 / 16384 tokens
    python benchmarks/bench_moe.py --tokens 4096 16384 --dtypes float32 --output /tmp/moe.json
    python benchmarks/bench_moe.py --config configs/mini.json --tokens 2048 8192 --dtypes float32   # other widths

The machine line names the instruction set the kernels use: AVX-512 makes dense GEMMs ~2x faster and the MoE's
gathers not, so ratios from AVX2 and AVX-512 machines differ. On an AVX-512 machine,
`ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2` runs the AVX2 kernels.
"""

import argparse
import json
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import harness  # noqa: E402  (benchmarks/, the script's folder)

from configuration_spanish_moe_bert import SpanishMoEBertConfig  # noqa: E402
from modeling_spanish_moe_bert import SpanishMoEBertMLP, SpanishMoEBertSparseMoE, grouped_mm_available  # noqa: E402
from spanish_moe_bert.cpu import keep_freed_memory  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
MAX_GATHER_BYTES = 3 * 2**30


class NaiveLoopMoE(nn.Module):
    """Reference dispatch: for every expert, find its tokens with a mask, run them, add them back."""

    def __init__(self, moe: SpanishMoEBertSparseMoE):
        super().__init__()
        self.moe = moe

    def forward(self, hidden_states):
        b, t, h = hidden_states.shape
        x = hidden_states.reshape(-1, h)
        _, _, top_w, top_idx = self.moe.router(x)
        y = torch.zeros_like(x)
        for e in range(self.moe.num_experts):
            token, slot = torch.where(top_idx == e)
            gate, up = (x[token] @ self.moe.experts.gate_up_proj[e]).chunk(2, dim=-1)
            out = (F.silu(gate) * up) @ self.moe.experts.down_proj[e]
            y.index_add_(0, token, (out * top_w[token, slot, None].to(out.dtype)).to(y.dtype))
        return y.view(b, t, h)


def qwen3_block(config: SpanishMoEBertConfig, implementation: str) -> nn.Module:
    from transformers.models.qwen3_moe.configuration_qwen3_moe import Qwen3MoeConfig
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

    qconfig = Qwen3MoeConfig(
        hidden_size=config.hidden_size,
        moe_intermediate_size=config.moe_intermediate_size,
        num_experts=config.num_experts,
        num_experts_per_tok=config.num_experts_per_tok,
        norm_topk_prob=True,
    )
    qconfig._experts_implementation = implementation
    block = Qwen3MoeSparseMoeBlock(qconfig)
    for p in block.parameters():
        nn.init.normal_(p, std=0.02)
    return block


def moe_shape(config: SpanishMoEBertConfig) -> str:
    """The layer's widths as the tables and results files name them."""
    return (
        f"hidden {config.hidden_size}, {config.num_experts} experts x {config.moe_intermediate_size}, "
        f"top-{config.num_experts_per_tok}"
    )


def batched_mm_bytes(config: SpanishMoEBertConfig, tokens: int) -> int:
    """batched_mm gathers each routed slot's expert weights: (tokens * top_k, hidden, 2 * width) floats."""
    return tokens * config.num_experts_per_tok * config.hidden_size * 3 * config.moe_intermediate_size * 4


def contenders(config: SpanishMoEBertConfig) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    ours = SpanishMoEBertSparseMoE(config)
    for p in ours.parameters():
        nn.init.normal_(p, std=0.02)
    dense = SpanishMoEBertMLP(config, intermediate_size=config.num_experts_per_tok * config.moe_intermediate_size)
    models = {"ours": ours, "dense (same active FLOPs)": dense}
    for path in ("per_expert", "grouped_mm", "padded_bmm"):
        forced = SpanishMoEBertSparseMoE(config)
        forced.load_state_dict(ours.state_dict())
        forced.forced_path = path
        models[f"ours, {path}"] = forced
    models["naive per-expert loop"] = NaiveLoopMoE(ours)
    for impl in ("eager", "grouped_mm", "batched_mm"):
        models[f"transformers Qwen3MoeSparseMoeBlock ({impl})"] = qwen3_block(config, impl)
    return models


def run_once(model: nn.Module, x: torch.Tensor, backward: bool) -> float:
    """One timed pass: "fwd" is inference (no autograd, as in encoding or fill-mask), "fwd+bwd" is training."""
    x = x.detach().requires_grad_(backward)
    start = time.perf_counter()
    with torch.set_grad_enabled(backward):
        out = model(x)
        out = out[0] if isinstance(out, tuple) else out
        if backward:
            out.float().square().mean().backward()
    return time.perf_counter() - start


def bench(tokens: int, hidden: int, dtype: torch.dtype, backward: bool, rounds: int, models: dict[str, nn.Module]):
    x = torch.randn(1, tokens, hidden)
    times = {name: [] for name in models}
    bf16 = dtype == torch.bfloat16
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else torch.autocast("cpu", enabled=False)
    # Qwen3's batched_mm allocates gigabytes per call, which slows whatever runs next: it gets rounds of its own.
    groups = [[n for n in models if "batched_mm" not in n], [n for n in models if "batched_mm" in n]]
    with ctx:
        for group in groups:
            for name in group:  # warm-up
                run_once(models[name], x, backward)
            for _ in range(rounds):
                for name in group:
                    models[name].zero_grad(set_to_none=True)
                    times[name].append(run_once(models[name], x, backward))
    return {name: statistics.median(t) for name, t in times.items()}


def gemm_floor(config: SpanishMoEBertConfig, tokens: int, rounds: int) -> dict[str, float]:
    """The matrix products alone, forward and backward, at perfectly balanced expert loads: the experts' two grouped
    GEMMs (`F.grouped_mm`, as the training path runs them) against dense's two GEMMs of the same FLOPs. No routing,
    gathers or activation: their ratio is the lowest fwd+bwd ratio the layer could reach on this machine.

    A third row runs the same expert GEMMs as one `bmm` each (equal loads make them a batch): on the CPU
    `F.grouped_mm` runs one GEMM per expert, each split across the threads, where a batched kernel can hand whole
    experts to threads. The gap between the two is what small experts lose to threading. A fourth row gives whole
    experts to single-threaded worker threads, each an equal run of consecutive experts (at these equal loads, equal
    rows), as a CPU grouped GEMM parallel over experts would; unlike `bmm` it needs no equal loads."""
    e, h, i, k = config.num_experts, config.hidden_size, config.moe_intermediate_size, config.num_experts_per_tok
    rows = tokens * k
    offsets = torch.arange(1, e + 1, dtype=torch.int32) * (rows // e)

    def leaf(*shape):
        return torch.randn(*shape).mul_(0.02).requires_grad_()

    expert = [leaf(rows, h), leaf(e, h, 2 * i), leaf(rows, i), leaf(e, i, h)]
    dense = [leaf(tokens, h), leaf(h, 2 * k * i), leaf(tokens, k * i), leaf(k * i, h)]
    # The output gradients exist before the clock starts, as a layer's incoming gradient does.
    expert_grads = [torch.ones(rows, 2 * i), torch.ones(rows, h)]
    dense_grads = [torch.ones(tokens, 2 * k * i), torch.ones(tokens, h)]

    def expert_step():
        x, w1, hidden, w2 = expert
        F.grouped_mm(x, w1, offs=offsets).backward(expert_grads[0])
        F.grouped_mm(hidden, w2, offs=offsets).backward(expert_grads[1])

    def dense_step():
        x, w1, hidden, w2 = dense
        (x @ w1).backward(dense_grads[0])
        (hidden @ w2).backward(dense_grads[1])

    def batched_step():
        x, w1, hidden, w2 = expert
        used = e * (rows // e)
        torch.bmm(x[:used].view(e, -1, h), w1).backward(expert_grads[0][:used].view(e, -1, 2 * i))
        torch.bmm(hidden[:used].view(e, -1, i), w2).backward(expert_grads[1][:used].view(e, -1, h))

    threads = torch.get_num_threads()
    workers = single_threaded_workers(threads)
    shares = [range(p * e // threads, (p + 1) * e // threads) for p in range(threads)]

    def expert_gemms(experts: range):  # each expert's forward GEMMs, then its input and weight gradients
        x, w1, hidden, w2 = (t.detach() for t in expert)
        for n in experts:
            r = slice(n * (rows // e), (n + 1) * (rows // e))
            for a, w, grad in ((x[r], w1[n], expert_grads[0][r]), (hidden[r], w2[n], expert_grads[1][r])):
                a @ w, grad @ w.t(), a.t() @ grad

    def workers_step():
        list(workers.map(expert_gemms, shares))

    steps = {
        "expert GEMMs alone (balanced loads)": expert_step,
        "expert GEMMs alone, one bmm each (balanced loads)": batched_step,
        "expert GEMMs alone, whole experts to single-threaded workers (balanced loads)": workers_step,
        "dense GEMMs alone": dense_step,
    }
    times = {name: [] for name in steps}
    for _ in range(rounds + 1):  # the first round warms up
        for name, step in steps.items():
            for t in expert + dense:
                t.grad = None
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    workers.shutdown()
    return {name: statistics.median(t[1:]) for name, t in times.items()}


def single_threaded_workers(count: int) -> ThreadPoolExecutor:
    """`count` started threads whose GEMMs run on one thread each. torch's thread count is kept per thread (OpenMP's and
    MKL's are), so the workers' `set_num_threads(1)` leaves the caller's GEMMs on all threads; it does overwrite the
    process-wide number torch reports, which is put back once every worker has started."""
    pool = ThreadPoolExecutor(count, initializer=torch.set_num_threads, initargs=(1,))
    started = threading.Barrier(count + 1)
    for _ in range(count):  # each task holds its thread until all have started: `count` distinct threads
        pool.submit(started.wait)
    started.wait()
    torch.set_num_threads(count)
    return pool


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4096 tokens, fewer rounds")
    parser.add_argument("--tokens", type=int, nargs="+", default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--config", type=Path, help="model config JSON (default: the published widths)")
    parser.add_argument("--dtypes", nargs="+", choices=("float32", "bfloat16"), default=["float32", "bfloat16"])
    parser.add_argument("--output", type=Path, default=None,
                        help="results file (default results/moe[_quick][_default_allocator].json)")  # fmt: skip
    parser.add_argument(
        "--allocator",
        choices=("keep", "default"),
        default="keep",
        help="keep freed memory for reuse, as run_mlm.py does on CPUs (default), or glibc's default",
    )
    args = parser.parse_args()
    if args.allocator == "keep":
        keep_freed_memory()
    tokens_list = args.tokens or ([4096] if args.quick else [512, 4096, 16384])
    rounds = args.rounds or (3 if args.quick else 5)

    config = SpanishMoEBertConfig.from_json_file(args.config) if args.config else SpanishMoEBertConfig()
    models = contenders(config)
    rows = []
    for tokens in tokens_list:
        for dtype in [getattr(torch, name) for name in args.dtypes]:
            for backward in (False, True):
                run = dict(models)
                if batched_mm_bytes(config, tokens) > MAX_GATHER_BYTES:  # would be OOM-killed on 24 GB
                    del run["transformers Qwen3MoeSparseMoeBlock (batched_mm)"]
                medians = bench(tokens, config.hidden_size, dtype, backward, rounds, run)
                dense = medians["dense (same active FLOPs)"]
                for name, seconds in medians.items():
                    rows.append(dict(tokens=tokens, dtype=str(dtype).removeprefix("torch."),
                                     pass_="fwd+bwd" if backward else "fwd", contender=name,
                                     ms=round(seconds * 1e3, 2), x_dense=round(seconds / dense, 2)))  # fmt: skip
                print(f"done: {tokens} tokens {dtype} {'fwd+bwd' if backward else 'fwd'}", file=sys.stderr)
        if "float32" in args.dtypes and grouped_mm_available(torch.device("cpu"), torch.float32):
            floor = gemm_floor(config, tokens, rounds)
            dense = floor["dense GEMMs alone"]
            for name, seconds in floor.items():
                rows.append(dict(tokens=tokens, dtype="float32", pass_="fwd+bwd, GEMMs only", contender=name,
                                 ms=round(seconds * 1e3, 2), x_dense=round(seconds / dense, 2)))  # fmt: skip

    header = "| tokens | dtype | pass | contender | ms | × dense |\n|---:|---|---|---|---:|---:|"
    lines = [
        f"| {r['tokens']} | {r['dtype']} | {r['pass_']} | {r['contender']} | {r['ms']} | {r['x_dense']} |" for r in rows
    ]
    machine = f"{harness.machine_line()}, allocator {args.allocator}"
    shape = moe_shape(config)
    print(f"MoE layer: {shape}; {machine}\n")
    print("\n".join([header, *lines]))
    skipped = [t for t in tokens_list if batched_mm_bytes(config, t) > MAX_GATHER_BYTES]
    if skipped:
        print(
            f"\nQwen3 batched_mm left out at {skipped} tokens: it would gather "
            f"{batched_mm_bytes(config, max(skipped)) / 2**30:.0f} GiB of per-token expert weights."
        )
    suffix = ("_quick" if args.quick else "") + ("_default_allocator" if args.allocator == "default" else "")
    out = args.output or RESULTS / f"moe{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "shape": shape, "rows": rows}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()

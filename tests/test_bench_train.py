"""bench_train steps the optimizer run_mlm.py's Trainer builds, not a hand-picked one, and times its share of a step."""

import sys
import time
from pathlib import Path

import torch
from tiny_config import make_config
from transformers import Trainer, TrainingArguments

from modeling_spanish_moe_bert import SpanishMoEBertForMaskedLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_train  # noqa: E402


def test_the_benchmark_steps_the_trainers_default_optimizer(tmp_path):
    model = SpanishMoEBertForMaskedLM(make_config())
    optimizer = bench_train.trainer_optimizer(model, str(tmp_path))
    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=1e-4, report_to=[])
    reference = Trainer(model=model, args=args).create_optimizer()

    assert type(optimizer) is type(reference)
    for setting in ("lr", "betas", "eps", "fused", "foreach"):
        assert optimizer.defaults.get(setting) == reference.defaults.get(setting), setting
    stepped = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert stepped == {id(p) for p in model.parameters()}
    assert bench_train.describe(optimizer) == ("AdamW (fused)" if reference.defaults.get("fused") else "AdamW")


def test_the_optimizer_share_is_the_time_in_step_and_zero_grad(monkeypatch):
    model = SpanishMoEBertForMaskedLM(make_config())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    slow_step = optimizer.step

    def step():  # an optimizer step that takes at least 50 ms
        time.sleep(0.05)
        slow_step()

    monkeypatch.setattr(optimizer, "step", step)
    batch = {"input_ids": torch.randint(5, model.config.vocab_size, (2, 8)), "labels": torch.full((2, 8), 7)}
    total, in_optimizer = bench_train.train_steps(model, optimizer, [batch, batch])
    assert 0.1 <= in_optimizer < total
    assert all(p.grad is None for p in model.parameters())  # zero_grad(set_to_none) ran inside the timed part


def test_compiled_models_are_timed_beside_eager_ones_and_compared_with_each_other(tmp_path, monkeypatch):
    compiled = []

    def compile_regions(model):  # stands in for accelerate's (Inductor would take minutes here)
        compiled.append(type(model).__name__)
        return model

    monkeypatch.setattr(bench_train, "compile_regions", compile_regions)
    tokenizer = bench_train.harness.train_tokenizer(vocab_size=512)
    report = bench_train.measure("mini", tokenizer, 1, 1, 1, True, str(tmp_path), compile=True)
    results = report["results"]
    assert list(results) == [
        "moe", "moe, compiled", "dense twin", "dense twin, compiled", "modernbert", "modernbert, compiled"
    ]  # fmt: skip
    assert compiled == ["SpanishMoEBertForMaskedLM", "SpanishMoEBertForMaskedLM", "ModernBertForMaskedLM"]
    for name, result in results.items():
        peer = ", compiled" if name.endswith(", compiled") else ""
        modernbert = results["modernbert" + peer]["tokens_per_second"]
        assert result["vs_modernbert"] == result["tokens_per_second"] / modernbert
        eager = results[name.removesuffix(", compiled")]["tokens_per_second"]
        assert ("vs_eager" in result) == bool(peer)
        assert result.get("vs_eager", 1.0) == result["tokens_per_second"] / eager

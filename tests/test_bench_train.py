"""bench_train measures the optimizer that run_mlm.py's Trainer builds, not a hand-picked one."""

import sys
from pathlib import Path

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

"""The GPU suite's code, run on the CPU at toy sizes, so that it still runs unchanged when a GPU is at hand."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_suite_runs_every_part_on_the_cpu_at_toy_sizes(tmp_path):
    # aot_eager: Dynamo and AOTAutograd trace the suite's compiled checks and rows as on a GPU, without Inductor's
    # C++ codegen; with the smoke mode's tiny run_mlm model the test takes ~120 s instead of ~400 s on 2 cores.
    # Inductor's compiled = eager on the CPU is tests/test_transformers_contract.py's and test_run_mlm.py's job; the
    # GPU suite's default backend is Inductor.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, str(REPO / "benchmarks" / "gpu_suite.py"), "--smoke", "--device", "cpu",
               "--corpus", str(REPO / "data" / "es_corpus_sample.txt"),
               "--output_dir", str(tmp_path / "results"), "--work_dir", str(tmp_path / "work"),
               "--compile_backend", "aot_eager"]  # fmt: skip
    completed = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    results = {part: json.loads((tmp_path / "results" / f"{part}.json").read_text())
               for part in ("correctness", "moe", "model", "run_mlm")}  # fmt: skip
    assert all(r["torch"] and r["device"] and r["complete"] for r in results.values())

    checks = results["correctness"]["checks"]
    assert results["correctness"]["passed"] and all(c["passed"] for c in checks)
    for path in ("per_expert", "grouped_mm", "padded_bmm", "loop", "compiled_fallback"):
        for dtype in ("float32", "bfloat16", "float16"):
            assert any(c["check"] == f"MoE {path}: grad input" and c["dtype"] == dtype for c in checks), (path, dtype)
    assert any(c["check"] == "compiled = eager: every gradient" for c in checks)
    assert results["correctness"]["compile_backend"] == results["model"]["compile_backend"] == "aot_eager"

    contenders = {r["contender"] for r in results["moe"]["rows"]}
    assert {"ours (automatic path)", "dense SwiGLU (same active FLOPs)", "transformers Qwen3 (grouped_mm)"} <= set(
        contenders
    )
    models = ("MoE (ours)", "dense twin", "ModernBERT (equal active)")
    assert {(r["model"], r["mode"]) for r in results["model"]["rows"]} == {
        (model, mode) for model in models for mode in ("eager", "compiled")
    }
    assert all(r["tokens_per_second"] > 0 and r["tflops_per_second"] > 0 for r in results["model"]["rows"])

    run_mlm = results["run_mlm"]
    assert run_mlm["passed"] and run_mlm["steps_compared"] and run_mlm["largest_loss_difference"] <= 1e-4


# A lent GPU's minutes are few: whatever breaks on it is recorded, and everything else still runs and is written.
sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_suite  # noqa: E402


def test_a_part_that_raises_is_recorded_and_the_next_parts_still_run(tmp_path, monkeypatch):
    ran = []

    def part(name, result=None, error=None):
        def runner(*args, **kwargs):
            ran.append(name)
            if error:
                raise error
            return result

        return runner

    monkeypatch.setattr(gpu_suite, "run_correctness", part("correctness", result=True))
    monkeypatch.setattr(gpu_suite, "run_moe", part("moe", error=RuntimeError("no kernel image for this GPU")))
    monkeypatch.setattr(gpu_suite, "run_model", part("model"))
    monkeypatch.setattr(gpu_suite, "run_run_mlm", part("run_mlm", result=False))
    with pytest.raises(SystemExit, match=r"gpu_suite: moe, run_mlm failed"):
        gpu_suite.main(["--device", "cpu", "--output_dir", str(tmp_path)])
    assert ran == ["correctness", "moe", "model", "run_mlm"]
    trace = (tmp_path / "moe_error.txt").read_text()
    assert "RuntimeError: no kernel image for this GPU" in trace and '"torch"' in trace
    assert not (tmp_path / "model_error.txt").exists()


class Broken(torch.nn.Module):
    def forward(self, x):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_a_moe_contender_that_fails_gets_an_error_row(tmp_path, monkeypatch):
    def contenders(config, device, free_bytes, tokens):
        dense = torch.nn.Linear(config.hidden_size, 8).bfloat16()  # the suite runs its contenders in bf16
        return {"dense SwiGLU (same active FLOPs)": dense, "broken": Broken()}

    monkeypatch.setattr(gpu_suite, "moe_contenders", contenders)
    gpu_suite.run_moe(torch.device("cpu"), smoke=True, output_dir=tmp_path)
    rows = json.loads((tmp_path / "moe.json").read_text())["rows"]
    broken = [r for r in rows if r["contender"] == "broken"]
    assert len(broken) == 4 and all(r["ms"] is None and r["x_dense"] is None for r in broken)
    assert all(r["error"] == "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB" for r in broken)
    dense = [r for r in rows if r["contender"].startswith("dense")]
    assert len(dense) == 4 and all(r["x_dense"] == 1.0 and r["ms"] > 0 and "error" not in r for r in dense)


def test_a_model_row_that_fails_is_recorded_and_the_others_are_timed(tmp_path, monkeypatch):
    def timing(name, mode, *args):
        if (name, mode) == ("ModernBERT (equal active)", "compiled"):
            raise RuntimeError("inductor: compilation failed")
        return {"model": name, "mode": mode, "active_parameters": 1e6, "tokens_per_second": 100.0,
                "tflops_per_second": 1.0, "mfu_vs_measured_peak": 0.5, "peak_memory_gib": None}  # fmt: skip

    monkeypatch.setattr(gpu_suite, "time_training", timing)
    gpu_suite.run_model(torch.device("cpu"), smoke=True, output_dir=tmp_path, backend="aot_eager")
    rows = json.loads((tmp_path / "model.json").read_text())["rows"]
    assert len(rows) == 6
    failed = [r for r in rows if "error" in r]
    error = "RuntimeError: inductor: compilation failed"
    assert failed == [{"model": "ModernBERT (equal active)", "mode": "compiled", "error": error}]


class Killed(BaseException):
    """The device tool stopping the command at its time limit, as far as the suite can tell: nothing it catches."""


def test_a_moe_part_cut_off_keeps_the_token_counts_it_finished(tmp_path, monkeypatch):
    class CutOff(torch.nn.Module):
        def forward(self, x):
            raise Killed()

    def contenders(config, device, free_bytes, tokens):  # the second token count (256) is cut off
        dense = torch.nn.Linear(config.hidden_size, 8).bfloat16() if tokens == 64 else CutOff()
        return {"dense SwiGLU (same active FLOPs)": dense}

    monkeypatch.setattr(gpu_suite, "moe_contenders", contenders)
    with pytest.raises(Killed):
        gpu_suite.run_moe(torch.device("cpu"), smoke=True, output_dir=tmp_path)
    written = json.loads((tmp_path / "moe.json").read_text())
    assert written["complete"] is False and {r["tokens"] for r in written["rows"]} == {64}
    assert len(written["rows"]) == 2 and not list(tmp_path.glob("*.tmp"))


def test_a_model_part_cut_off_keeps_the_rows_it_finished(tmp_path, monkeypatch):
    def timing(name, mode, *args):
        if name == "dense twin" and mode == "compiled":
            raise Killed()
        return {"model": name, "mode": mode, "tokens_per_second": 100.0}

    monkeypatch.setattr(gpu_suite, "time_training", timing)
    with pytest.raises(Killed):
        gpu_suite.run_model(torch.device("cpu"), smoke=True, output_dir=tmp_path, backend="aot_eager")
    written = json.loads((tmp_path / "model.json").read_text())
    assert written["complete"] is False and written["measured_peak_tflops"] > 0
    assert [(r["model"], r["mode"]) for r in written["rows"]] == [
        ("MoE (ours)", "eager"), ("MoE (ours)", "compiled"), ("dense twin", "eager")
    ]  # fmt: skip

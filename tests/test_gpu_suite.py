"""The GPU suite's code, run on the CPU at toy sizes, so that it still runs unchanged when a GPU is at hand."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    assert all(r["torch"] and r["device"] for r in results.values())

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

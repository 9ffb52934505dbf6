"""bench_ablations: each variant is its base config with only its own change, and a variant that is the same run as
one before it under the chosen config (8 experts on tiny.json, which has 8) is left out instead of trained twice."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_ablations  # noqa: E402
import harness  # noqa: E402

BASE = next(iter(bench_ablations.VARIANTS))


def test_expert_variants_change_only_the_experts_and_repeated_runs_are_left_out():
    tokenizer = harness.train_tokenizer(512, harness.CORPUS)
    names = [BASE, "8 experts", "32 experts x 64, top-4"]
    tiny = REPO / "configs" / "tiny.json"
    built = bench_ablations.contenders(names, tiny, tokenizer, 64, 16, harness.CORPUS, 0, "default")

    assert list(built) == [BASE, "32 experts x 64, top-4"]  # tiny.json has 8 experts: that row is the base itself
    base = built[BASE].build().config.to_dict()
    variant = built["32 experts x 64, top-4"].build().config.to_dict()
    changed = {key for key in base if base[key] != variant.get(key)}
    assert changed == {"num_experts", "moe_intermediate_size", "num_experts_per_tok"}
    assert (variant["num_experts"], variant["moe_intermediate_size"], variant["num_experts_per_tok"]) == (32, 64, 4)

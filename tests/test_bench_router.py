"""bench_router's readings: each statistic on routes whose answer is known, and the hooks on a tiny model."""

import json
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_router  # noqa: E402
import harness  # noqa: E402
from tiny_config import make_config  # noqa: E402

from modeling_spanish_moe_bert import SpanishMoEBertForMaskedLM  # noqa: E402

MASK = 3


def routes_by_id(ids: torch.Tensor, num_experts: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities that prefer experts (id, id + 1) mod E, and those two chosen: a router that is a lookup table."""
    first, second = ids % num_experts, (ids + 1) % num_experts
    probs = torch.full((len(ids), num_experts), 0.1)
    probs[torch.arange(len(ids)), first] = 0.4
    probs[torch.arange(len(ids)), second] = 0.3
    return probs, torch.stack([first, second], dim=-1)


def test_a_lookup_table_router_reads_as_one():
    ids = torch.tensor([5, 6, 7, 8, MASK, 5, 6, 7, 8, MASK] * 4)
    probs, chosen = routes_by_id(ids)
    (stats,) = bench_router.routing_statistics(ids, [(probs, chosen)], MASK, vocab_size=10)

    assert stats["id_predictability"] == 1.0
    assert 0 < stats["id_chance"] < 0.5  # four ids spread over four first experts: a guess of one is right ~1/4
    assert stats["bias_override"] == 0.0  # chose what its probabilities prefer
    assert stats["chosen_mass"] == pytest.approx(0.7)
    share = torch.tensor([0.3, 0.2, 0.2, 0.3])  # slots per expert: ids 5-8 twice each, [MASK] on experts 3 and 0
    assert stats["load_entropy"] == pytest.approx(float(-(share * share.log()).sum() / torch.log(torch.tensor(4.0))))
    assert stats["mask_top_share"] == 0.5 and stats["mask_load_entropy"] == pytest.approx(0.5)  # 2 of 4 experts
    assert stats["churn"] is None


def test_a_bias_that_overrules_the_router_and_routes_that_move_are_counted():
    ids = torch.tensor([5, 6, 7, 8] * 10)
    probs, chosen = routes_by_id(ids)
    overruled = (chosen + 2) % 4  # the two experts the router liked least
    (stats,) = bench_router.routing_statistics(ids, [(probs, overruled)], MASK, 10, previous=[(probs, chosen)])
    assert stats["bias_override"] == 1.0
    assert stats["churn"] == 1.0
    assert stats["chosen_mass"] == pytest.approx(0.2)
    half = torch.cat([overruled[:, :1], chosen[:, 1:]], dim=-1)  # one slot of two kept
    (stats,) = bench_router.routing_statistics(ids, [(probs, half)], MASK, 10, previous=[(probs, chosen)])
    assert stats["churn"] == 0.5 and stats["bias_override"] == 0.5


def test_routes_that_ignore_the_id_are_not_predicted_by_it():
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 9, (4000,), generator=generator)
    first = torch.randint(0, 4, (4000,), generator=generator)
    predictability, chance = bench_router.id_predictability(ids, first, vocab_size=10, num_experts=4)
    assert predictability < 0.3 and chance < 0.3


def test_the_probe_reads_every_moe_layer_over_the_real_tokens_only():
    config = make_config()
    torch.manual_seed(0)
    model = SpanishMoEBertForMaskedLM(config).train()
    input_ids = torch.randint(5, config.vocab_size, (2, 12))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 7:] = 0
    input_ids[1, 7:] = config.pad_token_id
    batches = [{"input_ids": input_ids, "attention_mask": attention_mask}]

    ids, routes = bench_router.read_routes(model, batches)
    assert model.training  # put back as it was
    assert torch.equal(ids, input_ids[attention_mask.bool()])
    sparse = config.mlp_layer_types.count("sparse")
    assert len(routes) == sparse > 0
    for probs, chosen in routes:
        assert probs.shape == (19, config.num_experts) and chosen.shape == (19, config.num_experts_per_tok)

    probe = bench_router.RoutingProbe(batches, mask_token_id=MASK)
    first, second = probe("moe", model), probe("moe", model)
    assert [s["churn"] for s in first["routing"]] == [None] * sparse
    assert [s["churn"] for s in second["routing"]] == [0.0] * sparse  # nothing trained in between


def results_file(tmp_path: Path, seed: int, **changed) -> Path:
    routing = [{key: 0.5 for key in bench_router.STATISTICS} | {"id_chance": 0.1, "churn": None}]
    curve = [{"step": step, "tokens": 100 * step, "eval_loss": 7.0 - step, "routing": routing} for step in (0, 1)]
    payload = {key: "same" for key in bench_router.SAME_RUN} | changed
    payload |= {"title": "Router diagnostics: ...; some machine.", "seeds": [seed], "machine": harness.machine(),
                "runs": {str(seed): {"curve": curve}}}  # fmt: skip
    path = tmp_path / f"seed{seed}.json"
    path.write_text(json.dumps(payload))
    return path


def test_seeds_of_one_run_combine_and_other_runs_are_refused(tmp_path):
    bench_router.combine([results_file(tmp_path, 0), results_file(tmp_path, 1)], tmp_path / "both")
    both = json.loads((tmp_path / "both.json").read_text())
    assert both["seeds"] == [0, 1] and set(both["runs"]) == {"0", "1"} and len(both["machine"]) == 2
    assert (tmp_path / "both.png").stat().st_size > 0
    other = results_file(tmp_path, 2, config_overrides="router_bias_on=logits")
    with pytest.raises(SystemExit, match="config_overrides"):
        bench_router.combine([results_file(tmp_path, 0), other], tmp_path / "mixed")


@pytest.mark.parametrize("follows", [False, True])
def test_the_balancing_bias_follows_the_learning_rate_decay_only_when_asked(follows):
    config = make_config(router_bias_update_rate=0.01)
    scales = []

    def build():
        model = SpanishMoEBertForMaskedLM(config)
        update = model.update_router_biases
        model.update_router_biases = lambda rate_scale=1.0: (scales.append(rate_scale), update(rate_scale))
        return model

    input_ids = torch.randint(5, config.vocab_size, (2, 8), generator=torch.Generator().manual_seed(0))
    labels = torch.full_like(input_ids, -100)
    labels[:, 3] = input_ids[:, 3]
    batches = [{"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}]
    contender = harness.Contender(build=build, schedule="wsd", output_prior=False)
    harness.train_side_by_side({"moe": contender}, batches, batches, steps=10, eval_every=10, warmup_fraction=0.2,
                               bias_follows_decay=follows, log=lambda line: None)  # fmt: skip
    # warm-up steps 0-1, constant through step 7, then the last 20% decay: factors 1.0 and 0.5 at steps 8 and 9
    assert scales == ([1.0] * 8 + [1.0, 0.5] if follows else [1.0] * 10)

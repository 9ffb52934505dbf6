"""bench_quality --combine: seeds run as separate processes become one table, and only runs of one experiment do."""

import argparse
import json
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_quality  # noqa: E402
import harness  # noqa: E402


def model_run(final_loss: float, seconds: float) -> dict:
    curve = [
        {"step": 0, "tokens": 0, "seconds": 0.0, "eval_loss": 8.0},
        {"step": 10, "tokens": 1000, "seconds": seconds, "eval_loss": final_loss, "train_loss": final_loss + 0.5,
         "eval_accuracy": 0.2},
    ]  # fmt: skip
    return {"total_parameters": 10, "active_parameters": 5, "train_seconds": seconds,
            "tokens_per_second": 1000 / seconds, "final": curve[-1], "curve": curve}  # fmt: skip


def results_file(tmp_path: Path, seed: int, losses: dict[str, float], **changed) -> Path:
    settings = {key: None for key in bench_quality.SAME_EXPERIMENT} | {
        "quick": True, "model_config": "tiny.json", "config_overrides": "", "models": list(losses), "corpus": "c.txt",
        "seq_len": 8, "batch_size": 2, "steps": 10, "mask_probability": 0.3, "schedule": "wsd", "lr": 1e-3,
    }  # fmt: skip
    runs = {name: model_run(loss, seconds=10.0 + i) for i, (name, loss) in enumerate(losses.items())}
    payload = settings | changed | {"machine": harness.machine(), "runs": {str(seed): runs}}
    path = tmp_path / f"seed{seed}.json"
    path.write_text(json.dumps(payload))
    return path


def test_combining_two_single_seed_files_gives_the_two_seed_summary(tmp_path):
    seed0 = results_file(tmp_path, 0, {"moe": 3.0, "modernbert": 4.0})
    seed1 = results_file(tmp_path, 1, {"moe": 5.0, "modernbert": 4.0})

    settings, runs, machines = bench_quality.combine([seed0, seed1])
    summary = bench_quality.summarize(runs)
    assert list(runs) == [0, 1]
    assert machines == [json.loads(seed0.read_text())["machine"], json.loads(seed1.read_text())["machine"]]
    assert summary["moe"]["loss_equal_tokens"] == pytest.approx(4.0)
    assert summary["moe"]["spread_equal_tokens"] == pytest.approx(2.0)
    assert summary["moe"]["vs_reference_equal_tokens"] == pytest.approx(0.0)

    output = tmp_path / "combined_lr_1.5e-3"
    bench_quality.write(settings, runs, machines, output)
    written = json.loads((tmp_path / "combined_lr_1.5e-3.json").read_text())
    assert written["seeds"] == [0, 1] and set(written["runs"]) == {"0", "1"}
    assert written["summary"]["moe"]["loss_equal_tokens"] == pytest.approx(4.0)
    assert (tmp_path / "combined_lr_1.5e-3.png").stat().st_size > 0


def test_output_names_keep_their_dots():
    # `Path.with_suffix` made lr_1.5e-3_seed0 and lr_1.5e-3_seed1 both lr_1.json: two seeds wrote one file.
    for name in ("runs/lr_1.5e-3_seed0", "runs/lr_1.5e-3_seed0.json"):
        assert bench_quality.output_files(Path(name)) == (
            Path("runs/lr_1.5e-3_seed0.json"), Path("runs/lr_1.5e-3_seed0.png"))  # fmt: skip


def test_combine_refuses_other_settings_and_repeated_seeds(tmp_path):
    seed0 = results_file(tmp_path, 0, {"moe": 3.0, "modernbert": 4.0})
    other = results_file(tmp_path, 1, {"moe": 3.0, "modernbert": 4.0}, steps=20)
    with pytest.raises(ValueError, match=r"seed1\.json: steps is 20, but .*seed0\.json has 10"):
        bench_quality.combine([seed0, other])
    with pytest.raises(ValueError, match="seed 0 is already in an earlier file"):
        bench_quality.combine([seed0, seed0])


def test_reference_takes_modernbert_runs_of_the_same_settings_only(tmp_path):
    earlier = results_file(tmp_path, 0, {"moe": 3.0, "modernbert": 4.0}, config_overrides="hidden_dropout=0.1")
    settings = json.loads(earlier.read_text()) | {"config_overrides": "", "models": ["moe"]}  # ours may differ

    runs, machines = bench_quality.reference_runs(earlier, settings, [0], modernbert_parameters=10)
    assert runs[0]["final"]["eval_loss"] == 4.0 and machines[0]["device"] == "cpu"

    with pytest.raises(ValueError, match=r"seed0\.json: mask_probability is 0\.3, but this run has 0\.15"):
        bench_quality.reference_runs(earlier, settings | {"mask_probability": 0.15}, [0], modernbert_parameters=10)
    with pytest.raises(ValueError, match=r"no modernbert run at seed 1 \(it has seeds \['0'\]\)"):
        bench_quality.reference_runs(earlier, settings, [0, 1], modernbert_parameters=10)
    with pytest.raises(ValueError, match="its modernbert has 10 parameters, this run's 12: the config overrides"):
        bench_quality.reference_runs(earlier, settings, [0], modernbert_parameters=12)


class _Tokenizer:  # what the anchors' configs read from a tokenizer
    pad_token_id, cls_token_id, sep_token_id = 0, 1, 2

    def __len__(self):
        return 300


def test_dropout_reaches_every_contender():
    from configuration_spanish_moe_bert import SpanishMoEBertConfig

    config = SpanishMoEBertConfig.from_json_file(str(REPO / "configs" / "tiny.json"))
    config.vocab_size, config.hidden_dropout = 300, 0.1  # what --dropout 0.1 sets on ours
    contenders = bench_quality.contenders(config, _Tokenizer(), None, "wsd", dropout=0.1)
    models = {name: contender.build() for name, contender in contenders.items()}
    assert set(models) == {"moe", "dense twin", "modernbert", "bert"}
    for name, model in models.items():
        rates = {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)}
        assert 0.1 in rates, f"{name} has no dropout at 0.1: {rates}"
    assert models["modernbert"].config.mlp_dropout == models["bert"].config.hidden_dropout_prob == 0.1


def test_expert_weight_decay_applies_to_the_experts_only():
    from configuration_spanish_moe_bert import SpanishMoEBertConfig

    config = SpanishMoEBertConfig.from_json_file(str(REPO / "configs" / "tiny.json"))
    config.vocab_size = 300
    built = {name: c.build() for name, c in bench_quality.contenders(config, _Tokenizer(), None, "wsd").items()}
    for name, model in built.items():
        run = {"model": model, "lr": 1e-3, "contender": harness.Contender(build=lambda: model)}
        optimizer, _ = harness.optimizer_and_schedule(run, steps=10, warmup=1, decay=(0.01, 0.1), start=0)
        decay_of = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
        assert len(decay_of) == len(list(model.parameters())), name  # every parameter, once
        for parameter_name, parameter in model.named_parameters():
            expected = 0.1 if ".experts." in parameter_name else 0.01
            assert decay_of[id(parameter)] == expected, (name, parameter_name)
    assert any(".experts." in n for n, _ in built["moe"].named_parameters())
    # an earlier ModernBERT run stays a valid reference when only the experts' decay changes
    assert "expert_weight_decay" in bench_quality.SAME_EXPERIMENT
    assert "expert_weight_decay" not in bench_quality.REFERENCE_SETTINGS


def test_contenders_none_named_leaves_the_upcycled_moe_alone():
    from configuration_spanish_moe_bert import SpanishMoEBertConfig

    config = SpanishMoEBertConfig.from_json_file(str(REPO / "configs" / "tiny.json"))
    config.vocab_size = 300
    assert set(bench_quality.contenders(config, _Tokenizer(), 0.1, "wsd", names=set())) == {"moe (upcycled)"}
    assert set(bench_quality.contenders(config, _Tokenizer(), None, "wsd", names={"moe"})) == {"moe"}
    assert set(bench_quality.contenders(config, _Tokenizer(), None, "wsd")) == set(bench_quality.CONTENDERS)
    # ModernBERT does not depend on the upcycling share: an earlier run of it stays a valid reference
    assert "upcycle_at" in bench_quality.SAME_EXPERIMENT
    assert "upcycle_at" not in bench_quality.REFERENCE_SETTINGS


def test_model_lr_gives_one_model_its_own_rate_and_the_reference_checks_modernberts(tmp_path):
    from configuration_spanish_moe_bert import SpanishMoEBertConfig

    config = SpanishMoEBertConfig.from_json_file(str(REPO / "configs" / "tiny.json"))
    config.vocab_size = 300
    built = bench_quality.contenders(config, _Tokenizer(), None, "wsd", model_lr={"bert": 5e-4})
    assert built["bert"].lr == 5e-4 and built["moe"].lr is None and built["modernbert"].lr is None
    assert bench_quality.model_lr_arg("dense twin=2e-3") == ("dense twin", 2e-3)
    for bad in ("bert", "gpt=1e-3", "bert=fast"):
        with pytest.raises(argparse.ArgumentTypeError, match=repr(bad)):
            bench_quality.model_lr_arg(bad)

    # BERT at its own rate may reuse the ModernBERT runs of a run at 2e-3; a ModernBERT at another rate may not
    earlier = results_file(tmp_path, 0, {"moe": 3.0, "modernbert": 4.0}, lr=2e-3)
    settings = json.loads(earlier.read_text()) | {"models": ["bert"], "model_lr": {"bert": 5e-4}}
    runs, _ = bench_quality.reference_runs(earlier, settings, [0], modernbert_parameters=10)
    assert runs[0]["final"]["eval_loss"] == 4.0
    with pytest.raises(ValueError, match=r"its modernbert trained at lr 0\.002, this run's would at 0\.001"):
        bench_quality.reference_runs(earlier, settings | {"lr": 1e-3}, [0], modernbert_parameters=10)
    with pytest.raises(ValueError, match=r"its modernbert trained at lr 0\.002, this run's would at 0\.0005"):
        other_rate = settings | {"model_lr": {"modernbert": 5e-4}}
        bench_quality.reference_runs(earlier, other_rate, [0], modernbert_parameters=10)


def test_gather_puts_models_of_runs_at_other_rates_in_one_table(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    moe = [results_file(tmp_path / "a", seed, {"moe": 3.0 + seed, "modernbert": 4.0}, lr=2e-3) for seed in (0, 1, 2)]
    bert = [
        results_file(tmp_path / "b", seed, {"bert": 5.0, "modernbert": 4.0}, lr=2e-3, model_lr={"bert": 5e-4})
        for seed in (0, 1)
    ]
    machine = harness.machine()  # one machine for both (its load average changes from call to call)
    _, moe_runs, _ = bench_quality.combine(moe)
    bench_quality.write(json.loads(moe[0].read_text()), moe_runs, [machine], tmp_path / "moe_3_seeds")
    _, bert_runs, _ = bench_quality.combine(bert)
    bench_quality.write(json.loads(bert[0].read_text()), bert_runs, [machine], tmp_path / "bert_2_seeds")

    settings, runs, machines = bench_quality.gather([tmp_path / "moe_3_seeds.json", tmp_path / "bert_2_seeds.json"])
    assert list(runs) == [0, 1]  # the seeds both files have
    assert set(runs[0]) == {"moe", "modernbert", "bert"} and machines == [machine]  # once, not per file
    assert settings["model_lr"] == {"moe": 2e-3, "modernbert": 2e-3, "bert": 5e-4}
    summary = bench_quality.summarize(runs)
    assert summary["moe"]["loss_equal_tokens"] == pytest.approx(3.5)
    assert summary["bert"]["vs_reference_equal_tokens"] == pytest.approx(0.25)

    other_steps = results_file(tmp_path / "b", 0, {"bert": 5.0, "modernbert": 4.0}, steps=20)
    with pytest.raises(ValueError, match=r"steps is 20, but .*moe_3_seeds\.json has 10"):
        bench_quality.gather([tmp_path / "moe_3_seeds.json", other_steps])
    other_modernbert = results_file(tmp_path / "b", 0, {"modernbert": 4.5}, lr=2e-3)
    with pytest.raises(ValueError, match="modernbert at seed 0 differs from its run in an earlier file"):
        bench_quality.gather([tmp_path / "moe_3_seeds.json", other_modernbert])


def test_machines_line_names_each_kind_once_with_its_load_range():
    one = harness.machine() | {"threads": 1, "load_average_1min": 0.8}
    lines = harness.machines_line([one, one | {"load_average_1min": 1.5}, one | {"threads": 2}])
    assert lines.count("1 torch threads") == 1 and "load average 0.8-1.5; " in lines
    assert lines.endswith(
        f"2 torch threads on {one['cpu_count']} cores, shared), torch {one['torch']}, load average 0.8"
    )


def test_warmup_fraction_is_a_setting_of_the_experiment(tmp_path):
    """The default keeps the optimizer string of every file written so far; another warm-up is another experiment,
    so a ModernBERT run at 10% cannot stand in for one at 25%."""
    stored = json.loads((REPO / "benchmarks/results/bench_quality_2000_steps_best_rates.json").read_text())
    assert bench_quality.optimizer_description(0.1) == stored["optimizer"]
    default, longer = bench_quality.optimizer_description(0.1), bench_quality.optimizer_description(0.25)
    earlier = results_file(tmp_path, 0, {"moe": 3.0, "modernbert": 4.0}, optimizer=default)
    settings = json.loads(earlier.read_text()) | {"models": ["moe"], "optimizer": longer}
    with pytest.raises(ValueError, match=r"optimizer is .*10% linear warmup.*, but this run has .*25% linear warmup"):
        bench_quality.reference_runs(earlier, settings, [0], modernbert_parameters=10)


@pytest.mark.parametrize("argv", [["--warmup_fraction", "0"], ["--warmup_fraction", "0.8"],
                                  ["--warmup_fraction", "1", "--schedule", "linear"]])  # fmt: skip
def test_warmup_fraction_out_of_range_is_refused_with_the_range(argv, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["bench_quality.py", *argv])
    with pytest.raises(SystemExit):
        bench_quality.main()
    error = capsys.readouterr().err
    assert f"--warmup_fraction {float(argv[1])} is outside (0, " in error and "needs steps after the warm-up" in error


def test_gather_takes_each_model_at_its_own_warmup_and_only_that(tmp_path, capsys):
    default, longer = bench_quality.optimizer_description(0.1), bench_quality.optimizer_description(0.25)
    (tmp_path / "a").mkdir()
    moe = results_file(tmp_path / "a", 0, {"moe": 3.0}, optimizer=longer)
    modernbert = results_file(tmp_path, 0, {"modernbert": 4.0}, optimizer=default)

    settings, runs, machines = bench_quality.gather([moe, modernbert])
    assert settings["model_warmup"] == {"moe": "25%", "modernbert": "10%"}
    assert "per-model linear warmup" in settings["optimizer"]
    bench_quality.write(settings, runs, machines, tmp_path / "gathered")
    assert "warm-up moe 25%, modernbert 10%" in capsys.readouterr().out
    written = json.loads((tmp_path / "gathered.json").read_text())
    assert written["model_warmup"] == {"moe": "25%", "modernbert": "10%"}

    same = bench_quality.gather([moe, results_file(tmp_path, 0, {"modernbert": 4.0}, optimizer=longer)])[0]
    assert "model_warmup" not in same and same["optimizer"] == longer  # one warm-up: nothing per model
    bench_quality.write(same, runs, machines, tmp_path / "both_at_25")
    assert ", warm-up 25%," in capsys.readouterr().out  # a run's one warm-up, when not the default, is in its title
    unfused = results_file(tmp_path, 0, {"modernbert": 4.0}, optimizer=default.replace("fused, ", ""))
    with pytest.raises(ValueError, match="of the optimizer settings only the warm-up may differ"):
        bench_quality.gather([moe, unfused])


def test_warmup_shares_that_round_alike_stay_apart():
    assert bench_quality.optimizer_description(0.125) != bench_quality.optimizer_description(0.12)
    assert bench_quality.WARMUP.search(bench_quality.optimizer_description(0.125)).group(1) == "12.5%"


def test_gather_takes_only_the_models_a_file_is_named_with(tmp_path):
    """Both files hold both models (each run trains ModernBERT beside the MoE): FILE:NAME picks the MoE at 25% from
    one and ModernBERT at 10% from the other, where taking everything would refuse the two differing ModernBERTs."""
    default, longer = bench_quality.optimizer_description(0.1), bench_quality.optimizer_description(0.25)
    (tmp_path / "a").mkdir()
    at_25 = results_file(tmp_path / "a", 0, {"moe": 3.0, "modernbert": 4.2}, optimizer=longer)
    at_10 = results_file(tmp_path, 0, {"moe": 3.5, "modernbert": 4.0}, optimizer=default)
    with pytest.raises(ValueError, match="moe at seed 0 differs from its run in an earlier file"):
        bench_quality.gather([at_25, at_10])

    sources = [bench_quality.gather_source(f"{at_25}:moe"), bench_quality.gather_source(f"{at_10}:modernbert")]
    assert sources[0] == bench_quality.GatherSource(at_25, ("moe",))
    settings, runs, _ = bench_quality.gather(sources)
    assert runs[0]["moe"]["final"]["eval_loss"] == 3.0 and runs[0]["modernbert"]["final"]["eval_loss"] == 4.0
    assert settings["models"] == ["moe", "modernbert"]
    assert settings["model_warmup"] == {"moe": "25%", "modernbert": "10%"}

    assert bench_quality.gather_source(str(at_25)) == bench_quality.GatherSource(at_25)  # a plain path: everything
    assert bench_quality.gather_source(f"{at_25}:moe,dense twin").models == ("moe", "dense twin")
    with pytest.raises(ValueError, match=r"seed0\.json: no dense twin run at seed 0 \(it has moe, modernbert\)"):
        bench_quality.gather([bench_quality.gather_source(f"{at_25}:moe,dense twin")])
    with pytest.raises(argparse.ArgumentTypeError, match="'modrnbert' is not a list of models: a results file holds"):
        bench_quality.gather_source(f"{at_10}:modrnbert")

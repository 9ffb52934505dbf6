"""End-to-end tests of run_mlm.py on the bundled corpus with the tiny model: outputs, metrics, faults (SIGKILL and
resume, NaN, bad data, disk budget) and a 2-process run."""

import ast
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import AutoTokenizer, TrainerCallback
from transformers.integrations.integration_utils import rewrite_logs

import run_mlm
from configuration_spanish_moe_bert import SpanishMoEBertConfig
from modeling_spanish_moe_bert import SpanishMoEBertForMaskedLM
from spanish_moe_bert.callbacks import DiskBudgetCallback, directory_bytes, recorded_mlm_probability
from spanish_moe_bert.corpus import CorpusError
from spanish_moe_bert.resume import is_complete, list_checkpoints, read_stream_states

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "es_corpus_sample.txt"
TINY = REPO / "configs" / "tiny.json"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    from spanish_moe_bert.corpus import iter_texts
    from tokenization_spanish_moe_bert import SpanishSPMTokenizer

    directory = tmp_path_factory.mktemp("tokenizer")
    SpanishSPMTokenizer.train_new(iter_texts(SAMPLE, max_documents=3000), vocab_size=512).save_pretrained(directory)
    return directory


def run_args(output_dir, tokenizer_dir, **overrides) -> list[str]:
    options = {
        "model_config": TINY,
        "tokenizer_name": tokenizer_dir,
        "train_file": SAMPLE,
        "max_seq_length": 32,
        "per_device_train_batch_size": 4,
        "learning_rate": 1e-3,
        "warmup_steps": 2,
        "logging_steps": 1,
        "report_to": "none",
        "disable_tqdm": "true",
        "seed": 0,
        "validation_split_percentage": 2,
        "max_eval_samples": 16,
        "output_dir": output_dir,
        **overrides,
    }
    return [item for key, value in options.items() for item in (f"--{key}", str(value))]


def losses_by_step(output_dir) -> dict[int, float]:
    history = json.loads((Path(output_dir) / "trainer_state.json").read_text())["log_history"]
    return {entry["step"]: entry["loss"] for entry in history if "loss" in entry}


def test_help_documents_every_option():
    result = subprocess.run([sys.executable, "run_mlm.py", "--help"], cwd=REPO, env=ENV, capture_output=True, text=True)
    assert result.returncode == 0
    for option in ("--model_config", "--config_overrides", "--tokenizer_name", "--dataset_name", "--text_column",
                   "--train_file", "--validation_file", "--line_by_line", "--mlm_probability", "--disk_budget_gb",
                   "--gradient_accumulation_steps", "--save_total_limit", "--fp16", "--bf16"):  # fmt: skip
        assert option in result.stdout


def test_json_run_file_with_flag_overrides(tmp_path):
    run_file = tmp_path / "run.json"
    run_file.write_text(json.dumps({"model_config": str(TINY), "max_steps": 100, "train_file": [str(SAMPLE)]}))
    model_args, data_args, training_args = run_mlm.parse_args([str(run_file), "--max_steps", "7"])
    assert training_args.max_steps == 7 and data_args.train_file == [str(SAMPLE)]
    assert model_args.model_config == str(TINY) and training_args.disk_budget_gb == 300
    run_file.write_text(json.dumps({"model_config": str(TINY), "max_stesp": 100}))
    with pytest.raises(ValueError, match="max_stesp"):
        run_mlm.parse_args([str(run_file)])


def test_evaluation_without_validation_data_or_samples_and_a_push_without_repo_are_named(tmp_path):
    base = ["--model_config", str(TINY), "--train_file", str(SAMPLE), "--output_dir", str(tmp_path)]
    with pytest.raises(ValueError, match="--max_eval_samples must be at least 1, got -5"):
        run_mlm.parse_args([*base, "--max_eval_samples", "-5"])
    for flags in (["--do_eval", "true"], ["--eval_strategy", "steps", "--eval_steps", "10"]):
        with pytest.raises(ValueError, match="needs validation data: --validation_file or --validation_split_perc"):
            run_mlm.parse_args([*base, "--validation_split_percentage", "0", *flags])
    run_mlm.parse_args(
        [*base, "--validation_split_percentage", "0", "--do_eval", "true", "--validation_file", str(SAMPLE)]
    )
    with pytest.raises(ValueError, match="--push_to_hub needs --hub_model_id"):
        run_mlm.parse_args([*base, "--push_to_hub", "true"])


def test_a_model_or_tokenizer_that_is_no_saved_folder_nor_a_hub_id_is_named(tmp_path, monkeypatch):
    base = ["--train_file", str(SAMPLE), "--output_dir", str(tmp_path / "out")]
    empty, model_only = tmp_path / "empty", tmp_path / "model_only"
    empty.mkdir(), model_only.mkdir()
    (model_only / "config.json").write_text("{}")
    cases = [
        (["--model_name_or_path", str(tmp_path / "missing")], "--model_name_or_path .*missing: no such folder"),
        (["--model_name_or_path", str(SAMPLE)], "--model_name_or_path .*es_corpus_sample.txt: not a folder"),
        (["--model_name_or_path", str(empty)], "--model_name_or_path .*empty: the folder holds no config.json"),
        (["--model_name_or_path", str(model_only)], "model_only: the folder holds no tokenizer_config.json"),
        (["--model_config", str(TINY), "--tokenizer_name", str(empty)], "--tokenizer_name .*holds no tokenizer_co"),
    ]
    for flags, message in cases:
        with pytest.raises(ValueError, match=message):
            run_mlm.parse_args([*base, *flags])
    run_mlm.parse_args([*base, "--model_name_or_path", "someone/spanish-moe-bert-large"])  # a Hub id: read later
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # as without network, at once
    with pytest.raises(OSError, match="--model_name_or_path someone/nope: no local folder of that name, and no Hub"):
        run_mlm.from_folder_or_hub("--model_name_or_path", "someone/nope", SpanishMoEBertConfig.from_pretrained)


@pytest.mark.parametrize(
    "name, precision",
    [("train_large_p40.json", "fp32"), ("train_large_v100.json", "fp16"), ("train_large_a100.json", "bf16")],
)
def test_gpu_run_files_parse_and_name_their_generation_s_precision(name, precision, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same on a machine with a GPU
    assert json.loads((REPO / "configs" / name).read_text())["precision"] == precision
    model_args, data_args, training_args = run_mlm.parse_args([str(REPO / "configs" / name)])
    assert training_args.max_steps > 0 and training_args.save_steps > 0
    batch = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
    assert batch * data_args.max_seq_length == 256 * 512  # the published batch: 256 sequences of 512 tokens
    assert data_args.dataset_name == "erickfmm/red_pajama_es_hq_35" and model_args.model_config == "configs/large.json"
    assert training_args.precision == ("bf16" if precision == "fp16" else precision)  # no CUDA: fp16 -> bf16


def test_cpu_demo_run_file_parses():
    model_args, data_args, training_args = run_mlm.parse_args([str(REPO / "configs" / "train_cpu_demo.json")])
    assert training_args.max_steps > 0 and data_args.train_file == ["data/es_corpus_sample.txt"]


@pytest.mark.parametrize(
    "capability, precision",
    [(None, "fp32"), ((6, 1), "fp32"), ((7, 0), "fp16"), ((7, 5), "fp16"), ((8, 0), "bf16"), ((9, 0), "bf16")],
    ids=["cpu", "p40", "v100", "t4", "a100", "h100"],
)
def test_automatic_precision_follows_the_gpu_generation(capability, precision):
    assert run_mlm.precision_for(capability) == precision


def test_precision_flags_on_a_machine_without_cuda(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a machine without a GPU, also on one with

    def parsed(*flags):
        return run_mlm.parse_args(["--model_config", str(TINY), "--output_dir", str(tmp_path), *flags])[2]

    auto = parsed()
    assert auto.precision == "fp32" and not auto.fp16 and not auto.bf16 and auto.use_cpu
    fp16 = parsed("--fp16")  # a GPU run file on a laptop: bf16 with a warning
    assert fp16.precision == "bf16" and not fp16.fp16 and fp16.bf16
    assert parsed("--precision", "bf16").bf16 and parsed("--bf16").precision == "bf16"
    with pytest.raises(ValueError, match="--precision fp32 contradicts --bf16"):
        parsed("--precision", "fp32", "--bf16")
    with pytest.raises(ValueError, match="--precision must be one of"):
        parsed("--precision", "fp8")


def test_train_evaluate_save(tmp_path, tokenizer_dir):
    output_dir = tmp_path / "run"
    metrics = run_mlm.main(
        run_args(
            output_dir,
            tokenizer_dir,
            max_steps=6,
            save_steps=3,
            eval_strategy="steps",
            eval_steps=3,
            report_to="tensorboard",
            do_eval="true",
            gradient_accumulation_steps=2,
            mlm_probability=0.2,
            config_overrides="router_bias_update_rate=0.01",
        )  # fmt: skip
    )
    for key in ("eval_loss", "eval_mlm_loss", "eval_accuracy", "eval_perplexity", "train_loss"):
        assert math.isfinite(metrics[key])
    assert metrics["eval_perplexity"] == pytest.approx(math.exp(metrics["eval_mlm_loss"]), rel=1e-6)
    assert [c.name for c in list_checkpoints(output_dir)] == ["checkpoint-3", "checkpoint-6"]
    assert all(is_complete(c) for c in list_checkpoints(output_dir))
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    train_logs = [h for h in history if "loss" in h]
    assert len(train_logs) == 6
    for key in ("router/aux_loss", "router/z_loss", "router/layer_0/load_entropy", "router/layer_0/max_load"):
        assert key in train_logs[-1]
    assert any(key.startswith("dyt/") and key.endswith(".alpha") for key in train_logs[-1])
    eval_logs = [h for h in history if "eval_loss" in h]
    assert any(key.startswith("eval_dyt/") and key.endswith(".saturation") for key in eval_logs[-1])
    assert list(output_dir.glob("runs/*/events.out.tfevents.*"))
    # The final model and tokenizer are in output_dir itself and load back.
    model = SpanishMoEBertForMaskedLM.from_pretrained(output_dir)
    tokenizer = AutoTokenizer.from_pretrained(output_dir, trust_remote_code=True)
    assert model.config.vocab_size == len(tokenizer) == 512
    # loss-free balancing moved each router's bias once per optimizer step (6, of 2 accumulated batches each)
    bias = torch.stack([layer.mlp.router.expert_bias for layer in model.model.layers])
    assert bias.abs().sum() > 0 and bias.abs().max() <= 6 * 0.01 + 1e-6
    assert metrics["train_loss"] < math.log(512) + 1
    # ... and output_dir is the Hub export (spanish_moe_bert.export), with this run's metrics in the card.
    assert (output_dir / "modules.json").is_file() and (output_dir / "README.md").is_file()
    assert "masking 20% of the tokens" in (output_dir / "README.md").read_text()
    assert recorded_mlm_probability(json.loads((output_dir / "trainer_state.json").read_text())) == 0.2


def test_do_train_false_evaluates_a_trained_model_and_writes_only_its_metrics(tmp_path, tokenizer_dir):
    trained = tmp_path / "trained"
    metrics = run_mlm.main(run_args(trained, tokenizer_dir, max_steps=2, do_eval="true"))
    evaluated = tmp_path / "evaluated"
    # The training run's arguments: its --model_config is ignored, the trained model has its own.
    eval_metrics = run_mlm.main(run_args(evaluated, tokenizer_dir, do_train="false", model_name_or_path=trained))
    # The same held-out documents, masked with the same seed: the trained run's own final evaluation.
    assert eval_metrics["eval_mlm_loss"] == pytest.approx(metrics["eval_mlm_loss"], rel=1e-6)
    assert eval_metrics["eval_accuracy"] == metrics["eval_accuracy"]
    assert sorted(os.listdir(evaluated)) == ["eval_results.json"]
    assert (
        json.loads((evaluated / "eval_results.json").read_text())["eval_perplexity"] == eval_metrics["eval_perplexity"]
    )
    with pytest.raises(ValueError, match="--do_train false evaluates a trained model"):
        run_mlm.parse_args([str(arg) for arg in run_args(evaluated, tokenizer_dir, do_train="false")])


def test_blocks_longer_than_the_model_s_positions_are_refused_before_anything_is_written(tmp_path, tokenizer_dir):
    output_dir = tmp_path / "run"
    with pytest.raises(ValueError, match=r"--max_seq_length 256 .* max_position_embeddings \(128\).*at most 128"):
        run_mlm.main(run_args(output_dir, tokenizer_dir, max_seq_length=256))
    assert not output_dir.exists()
    # The model's positions can be raised for a model trained from scratch; a trained model's are its own.
    overridden = tmp_path / "longer"
    run_mlm.main(
        run_args(
            overridden,
            tokenizer_dir,
            max_seq_length=256,
            config_overrides="max_position_embeddings=256",
            max_steps=1,
            validation_split_percentage=0,
        )
    )
    assert SpanishMoEBertForMaskedLM.config_class.from_pretrained(overridden).max_position_embeddings == 256
    # A tokenizer given with --tokenizer_name (512) is saved to truncate at the model's positions.
    assert AutoTokenizer.from_pretrained(overridden, trust_remote_code=True).model_max_length == 256
    with pytest.raises(ValueError, match=r"--max_seq_length 512 .*\(256\).*use a model trained with longer"):
        run_mlm.main(
            run_args(
                tmp_path / "eval", tokenizer_dir, max_seq_length=512, do_train="false", model_name_or_path=overridden
            )
        )


def test_the_same_command_after_the_run_ended_trains_nothing_and_finishes_a_run_that_died_saving(
    tmp_path, tokenizer_dir, file_hashes
):
    output_dir = tmp_path / "run"
    args = run_args(output_dir, tokenizer_dir, max_steps=3, save_steps=3, do_eval="true")
    first = run_mlm.main(args)
    before = file_hashes(output_dir)
    # Run again: the Trainer would have trained a 4th step (the stream skips the data read, not the Trainer) and
    # replaced the finished model.
    again = run_mlm.main(args)
    assert again["eval_mlm_loss"] == first["eval_mlm_loss"] and "train_loss" not in again
    changed = {name for name, digest in file_hashes(output_dir).items() if before.get(name) != digest}
    assert changed == {"eval_results.json", "all_results.json"}, changed  # the evaluation's runtime
    assert sorted(losses_by_step(output_dir)) == [1, 2, 3] and not (output_dir / "checkpoint-4").exists()
    # Another architecture in the same output_dir: named before the checkpoint's weights fail to load, nothing touched.
    before = file_hashes(output_dir)
    with pytest.raises(ValueError, match=r"checkpoint-3 was trained with num_experts=8 \(now 4\): resume it with"):
        run_mlm.main(run_args(output_dir, tokenizer_dir, max_steps=5, config_overrides="num_experts=4"))
    assert file_hashes(output_dir) == before
    # Killed after its last checkpoint, before the final save: the same command saves and exports that checkpoint.
    for name in ("model.safetensors", "trainer_state.json", "README.md"):
        (output_dir / name).unlink()
    run_mlm.main(args)
    assert (output_dir / "model.safetensors").read_bytes() == (
        output_dir / "checkpoint-3" / "model.safetensors"
    ).read_bytes()
    assert "README.md" in os.listdir(output_dir) and sorted(losses_by_step(output_dir)) == [1, 2, 3]


@pytest.mark.slow
def test_torch_compile_trains_the_same_losses_as_eager(tmp_path, tokenizer_dir, monkeypatch):
    monkeypatch.delenv("ACCELERATE_DYNAMO_USE_REGIONAL_COMPILATION", raising=False)
    run_mlm.main(run_args(tmp_path / "eager", tokenizer_dir, max_steps=4, save_steps=4))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    # Every layer kind keeps its compiled version: from a limit of 1, run_mlm.py raises it to 4 per kind, and no
    # layer falls back to eager (which would raise here)
    with torch._dynamo.config.patch(recompile_limit=1, fail_on_recompile_limit_hit=True):
        run_mlm.main(run_args(tmp_path / "compiled", tokenizer_dir, max_steps=4, save_steps=4, torch_compile="true"))
        config = SpanishMoEBertForMaskedLM.config_class.from_pretrained(tmp_path / "compiled")
        kinds = set(zip(config.attention_types, config.mlp_layer_types))
        assert torch._dynamo.config.recompile_limit == 4 * len(kinds) >= 4 * 3
    assert os.environ["ACCELERATE_DYNAMO_USE_REGIONAL_COMPILATION"] == "1"  # one graph per layer kind, reused
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0
    eager, compiled = losses_by_step(tmp_path / "eager"), losses_by_step(tmp_path / "compiled")
    assert eager.keys() == compiled.keys() == {1, 2, 3, 4}
    for step, loss in eager.items():
        assert compiled[step] == pytest.approx(loss, abs=1e-4), step


@pytest.mark.parametrize("lowercase", [False, True])
def test_trains_its_own_tokenizer_when_none_is_given(tmp_path, lowercase):
    output_dir = tmp_path / "run"
    args = run_args(
        output_dir,
        None,
        max_steps=2,
        tokenizer_vocab_size=512,
        tokenizer_training_documents=3000,  # characters seen once, tied at the alphabet's cutoff
        tokenizer_lowercase=str(lowercase).lower(),
    )
    del args[args.index("--tokenizer_name") : args.index("--tokenizer_name") + 2]
    run_mlm.main(args)
    tokenizer = AutoTokenizer.from_pretrained(output_dir, trust_remote_code=True)
    assert len(tokenizer) == 512 and tokenizer.do_lower_case == lowercase
    assert tokenizer.model_max_length == 128  # tiny.json's max_position_embeddings: truncation fits the model
    assert (tokenizer.tokenize("EL ÁRBOL") == tokenizer.tokenize("el árbol")) == lowercase
    assert SpanishMoEBertForMaskedLM.from_pretrained(output_dir).config.vocab_size == 512
    # The same run again gives the same tokenizer and the same losses: the seed is all a run needs to repeat.
    again = tmp_path / "again"
    run_mlm.main([str(again) if item == str(output_dir) else item for item in args])
    assert (again / "tokenizer.json").read_bytes() == (output_dir / "tokenizer.json").read_bytes()
    assert losses_by_step(again) == losses_by_step(output_dir)


@pytest.mark.parametrize("disable_tqdm", ["false", "true"])  # the progress bar's lines, or plain prints
def test_console_shows_the_summary_and_tensorboard_every_metric(tmp_path, tokenizer_dir, capsys, disable_tqdm):
    output_dir = tmp_path / "run"
    run_mlm.main(
        run_args(
            output_dir,
            tokenizer_dir,
            max_steps=2,
            eval_strategy="steps",
            eval_steps=2,
            do_eval="true",
            report_to="tensorboard",
            disable_tqdm=disable_tqdm,
        )  # fmt: skip
    )
    printed = [ast.literal_eval(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    train_lines = [line for line in printed if "loss" in line]
    eval_lines = [line for line in printed if "eval_loss" in line]
    assert len(train_lines) == 2 and eval_lines
    for line in train_lines:
        assert set(line) == {"loss", "grad_norm", "learning_rate", "epoch", "router/aux_loss", "router/z_loss",
                             "router/load_entropy_min", "router/max_load_max"}  # fmt: skip
    for line in eval_lines:
        assert {"eval_loss", "eval_accuracy", "eval_perplexity"} <= set(line)
        assert not any("dyt" in key for key in line)

    # TensorBoard gets every metric of the log history, the per-layer ones included.
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    train_log, eval_log = [next(h for h in history if key in h) for key in ("loss", "eval_loss")]
    assert any(key.startswith("router/layer_") for key in train_log)
    assert any(key.startswith("dyt/") for key in train_log)
    assert any(key.startswith("eval_dyt/") for key in eval_log)
    tags = set()  # the writer is closed at the end of training and reopened for the final evaluation
    for events in output_dir.glob("runs/*/events.out.tfevents.*"):
        tags |= set(EventAccumulator(str(events)).Reload().Tags()["scalars"])
    for log in (train_log, eval_log):
        assert set(rewrite_logs(log)) - {"train/step"} <= tags  # rewrite_logs: the TensorBoard callback's tag names


class PoisonWeights(TrainerCallback):
    """Sets the weights to NaN after `step`, as a diverging run would."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step:
            with torch.no_grad():
                for parameter in model.parameters():
                    parameter.fill_(float("nan"))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, tokenizer_dir):
    output_dir = tmp_path / "run"
    model_args, data_args, training_args = run_mlm.parse_args(
        run_args(output_dir, tokenizer_dir, max_steps=8, save_steps=2)
    )
    with pytest.raises(SystemExit, match=r"NaN or inf\) at step 4"):
        run_mlm.run(model_args, data_args, training_args, extra_callbacks=[PoisonWeights(step=3)])
    assert [c.name for c in list_checkpoints(output_dir)] == ["checkpoint-2"]
    assert all(torch.isfinite(t).all() for t in load_file(output_dir / "checkpoint-2" / "model.safetensors").values())
    assert not (output_dir / "model.safetensors").exists()


def test_bad_record_mid_stream_names_file_and_line_and_keeps_checkpoints(tmp_path, tokenizer_dir):
    good = tmp_path / "good.txt"
    good.write_text("\n".join(SAMPLE.read_text(encoding="utf-8").splitlines()[:5]) + "\n")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "hola mundo"}\n' * 5 + '{"texto": "sin campo"}\n')
    output_dir = tmp_path / "run"
    # The output-prior pass reads only the first blocks, so the bad record is met mid-training.
    args = run_args(
        output_dir,
        tokenizer_dir,
        max_steps=200,
        save_steps=3,
        validation_split_percentage=0,
        map_batch_size=10,
        output_prior_examples=2,
    )
    args[args.index("--train_file") + 1 : args.index("--train_file") + 2] = [str(good), str(bad)]
    with pytest.raises(CorpusError, match=r"bad\.jsonl:6: missing field 'text'"):
        run_mlm.main(args)
    checkpoints = list_checkpoints(output_dir)
    assert checkpoints and all(is_complete(c) for c in checkpoints)
    assert not (output_dir / "model.safetensors").exists()


class DiskSpy(TrainerCallback):
    """Measures output_dir after every step and save."""

    def __init__(self, output_dir):
        self.output_dir, self.sizes, self.saved = output_dir, [], 0

    def on_step_end(self, args, state, control, **kwargs):
        self.sizes.append(directory_bytes(self.output_dir))

    def on_save(self, args, state, control, **kwargs):
        self.saved += 1
        self.sizes.append(directory_bytes(self.output_dir))


def test_disk_budget_removes_old_checkpoints_and_never_crosses(tmp_path, tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, trust_remote_code=True)
    model_args, data_args, _ = run_mlm.parse_args(run_args(tmp_path, tokenizer_dir))
    model = run_mlm.build_model(model_args, run_mlm.architecture(model_args, data_args), tokenizer)
    estimate = DiskBudgetCallback(1, tmp_path, model.num_parameters(), run_mlm.saved_bytes(tokenizer))
    # Room for two checkpoints and the final model, not three: each save must remove the oldest checkpoint.
    budget_gb = (2.5 * estimate.first_checkpoint_bytes + estimate.final_model_bytes) / 1024**3
    output_dir = tmp_path / "run"
    model_args, data_args, training_args = run_mlm.parse_args(
        run_args(output_dir, tokenizer_dir, max_steps=6, save_steps=1, disk_budget_gb=budget_gb)
    )
    spy = DiskSpy(output_dir)
    run_mlm.run(model_args, data_args, training_args, extra_callbacks=[spy])
    budget = budget_gb * 1024**3
    assert spy.saved == 6 and max(spy.sizes) <= budget and directory_bytes(output_dir) <= budget
    remaining = [c.name for c in list_checkpoints(output_dir)]
    # Older ones were removed to stay within budget; the newest ones are kept.
    assert 1 < len(remaining) <= 3 and remaining == [f"checkpoint-{s}" for s in range(7 - len(remaining), 7)]
    assert (output_dir / "model.safetensors").exists()

    # A budget below one checkpoint: training stops cleanly at the first save, within the budget.
    tiny_budget_gb = 0.5 * estimate.first_checkpoint_bytes / 1024**3
    output_dir = tmp_path / "small"
    with pytest.raises(SystemExit, match="disk budget reached"):
        run_mlm.main(run_args(output_dir, tokenizer_dir, max_steps=6, save_steps=2, disk_budget_gb=tiny_budget_gb))
    assert not list_checkpoints(output_dir) and directory_bytes(output_dir) <= tiny_budget_gb * 1024**3
    # It stopped at the first save; the final model (a third of a checkpoint) still fitted.
    assert json.loads((output_dir / "trainer_state.json").read_text())["global_step"] == 2
    assert (output_dir / "model.safetensors").exists()


SLOW_RUN = """
import sys, time
import run_mlm
from configuration_spanish_moe_bert import SpanishMoEBertConfig
from transformers import TrainerCallback

class Slow(TrainerCallback):  # gives the test time to kill mid-run; does not change any number
    def on_step_end(self, *args, **kwargs):
        time.sleep(0.25)

run_mlm.run(*run_mlm.parse_args(sys.argv[1:]), extra_callbacks=[Slow()])
"""


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path, tokenizer_dir):
    steps = dict(max_steps=12, save_steps=3)
    reference = tmp_path / "reference"
    run_mlm.main(run_args(reference, tokenizer_dir, **steps))

    killed = tmp_path / "killed"
    script = tmp_path / "slow_run.py"
    script.write_text(SLOW_RUN)
    process = subprocess.Popen([sys.executable, script, *run_args(killed, tokenizer_dir, **steps)], cwd=REPO, env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 120
    while not is_complete(killed / "checkpoint-6") and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert is_complete(killed / "checkpoint-6") and not is_complete(killed / "checkpoint-12")
    # A checkpoint cut off while being written is never resumed from.
    (killed / "checkpoint-999").mkdir()
    (killed / "checkpoint-999" / "model.safetensors").write_bytes(b"truncated")

    run_mlm.main(run_args(killed, tokenizer_dir, **steps))
    assert not (killed / "checkpoint-999").exists()
    expected, resumed = losses_by_step(reference), losses_by_step(killed)
    assert sorted(resumed) == sorted(expected) == list(range(1, 13))
    for step in expected:
        assert resumed[step] == pytest.approx(expected[step], rel=1e-4), f"step {step}"
    # The stream ended at the same place: no block read twice or skipped.
    assert read_stream_states(killed / "checkpoint-12") == read_stream_states(reference / "checkpoint-12")


@pytest.mark.slow
def test_two_processes_read_their_own_shards_and_resume(tmp_path, tokenizer_dir):
    output_dir = tmp_path / "ddp"

    def launch(launcher, max_steps):
        options = run_args(output_dir, tokenizer_dir, max_steps=max_steps, save_steps=2, map_batch_size=10)
        command = [*launcher, "run_mlm.py", *options]
        result = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]

    launch([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531"], 4)
    states = read_stream_states(output_dir / "checkpoint-4")
    # One position per rank, each in a stream split by `split_dataset_by_node` (one file: every other block).
    assert [state["examples_iterable"]["type"] for state in states] == ["StepExamplesIterable"] * 2
    # Resume with the other launcher, from both ranks' positions.
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--main_process_port", "29532"]
    launch([*accelerate, "--config_file", str(REPO / "configs" / "accelerate" / "cpu_2proc.yaml")], 6)
    assert sorted(losses_by_step(output_dir)) == list(range(1, 7))
    assert len(read_stream_states(output_dir / "checkpoint-6")) == 2
    assert SpanishMoEBertForMaskedLM.from_pretrained(output_dir).config.vocab_size == 512

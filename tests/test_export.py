"""The Hub export: a complete folder, what a Hub user does with it in a fresh process, and push_to_hub offline."""

import fnmatch
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub import ModelCard

import spanish_moe_bert.export as export
from configuration_spanish_moe_bert import SpanishMoEBertConfig
from export_model import parse_args
from modeling_spanish_moe_bert import SpanishMoEBertForMaskedLM
from spanish_moe_bert.callbacks import MaskingRateCallback
from tokenization_spanish_moe_bert import SpanishSPMTokenizer

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "data" / "es_corpus_sample.txt"
EVAL_RESULTS = {"eval_mlm_loss": 6.5, "eval_perplexity": 665.1416, "eval_accuracy": 0.0625, "eval_loss": 6.6}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny model + tokenizer saved like run_mlm.py saves them, with a Trainer log."""
    folder = tmp_path_factory.mktemp("checkpoint")
    texts = CORPUS.read_text(encoding="utf-8").splitlines()
    tokenizer = SpanishSPMTokenizer.train_new(texts, vocab_size=2000)
    config = SpanishMoEBertConfig.from_json_file(REPO / "configs" / "tiny.json")
    config.vocab_size, config.pad_token_id = len(tokenizer), tokenizer.pad_token_id
    torch.manual_seed(0)
    SpanishMoEBertForMaskedLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    log_history = [{"step": s, "loss": 8.0 - s / 10} for s in range(10, 60, 10)] + [{"step": 50, "eval_mlm_loss": 3.5}]
    (folder / "trainer_state.json").write_text(json.dumps({"log_history": log_history, "global_step": 50}))
    (folder / "checkpoint-50").mkdir()  # Trainer leftovers must not be uploaded
    return folder


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hub") / "spanish-moe-bert-tiny"
    return export.export_model(checkpoint, folder, eval_results=EVAL_RESULTS)


def test_folder_is_a_complete_hub_repo(exported):
    expected = {
        "config.json",
        "model.safetensors",
        "configuration_spanish_moe_bert.py",
        "modeling_spanish_moe_bert.py",
        "tokenization_spanish_moe_bert.py",
        "tokenizer.json",
        "tokenizer_config.json",
        "modules.json",
        "sentence_bert_config.json",
        "config_sentence_transformers.json",
        "1_Pooling/config.json",
        "README.md",
        "training_loss.png",
        "expert_load.png",
    }
    present = {str(p.relative_to(exported)) for p in exported.rglob("*") if p.is_file()}
    assert expected <= present
    assert not any(name.startswith(".staging-") for name in os.listdir(exported))
    auto_map = json.loads((exported / "config.json").read_text())["auto_map"]
    assert set(auto_map) == {
        "AutoConfig",
        "AutoModel",
        "AutoModelForMaskedLM",
        "AutoModelForSequenceClassification",
        "AutoModelForTokenClassification",
        "AutoModelForQuestionAnswering",
        "AutoModelForMultipleChoice",
    }
    assert "AutoTokenizer" in json.loads((exported / "tokenizer_config.json").read_text())["auto_map"]
    assert json.loads((exported / "config_sentence_transformers.json").read_text())["similarity_fn_name"] == "cosine"
    pooling = json.loads((exported / "1_Pooling/config.json").read_text())
    assert pooling["pooling_mode_cls_token"] and not pooling["pooling_mode_mean_tokens"]
    assert pooling["word_embedding_dimension"] == 64
    for png in ("training_loss.png", "expert_load.png"):
        assert (exported / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_model_card_metadata_and_content(exported):
    card = ModelCard.load(exported / "README.md")
    data = card.data.to_dict()
    assert (data["language"], data["license"], data["library_name"], data["pipeline_tag"]) == (
        "es",
        "apache-2.0",
        "transformers",
        "fill-mask",
    )
    assert {"sentence-transformers", "feature-extraction", "mixture-of-experts"} <= set(data["tags"])
    assert data["datasets"] == list(export.DEFAULT_DATASETS)
    assert data["widget"] and all("[MASK]" in example["text"] for example in data["widget"])
    metrics = {m["type"]: m["value"] for m in data["model-index"][0]["results"][0]["metrics"]}
    assert metrics == {"loss": 6.5, "perplexity": 665.1416, "accuracy": 0.0625}
    for text in (
        "trust_remote_code=True",
        'pipeline("fill-mask"',
        "expert_load.png",
        "training_loss.png",
        "## Limitations",
        "## Citation",
        "| 6.5000 |",
        "hosted inference",
        "its `[CLS]` vector (`pooler_output`) is the sentence embedding",
        "alone are weak",
        "| 2,000 (cased, SentencePiece-compatible",
    ):
        assert text in card.text, text


def test_card_says_when_the_tokenizer_is_uncased(checkpoint, tmp_path):
    uncased = shutil.copytree(checkpoint, tmp_path / "uncased")
    texts = CORPUS.read_text(encoding="utf-8").splitlines()
    SpanishSPMTokenizer.train_new(texts, vocab_size=2000, lowercase=True).save_pretrained(uncased)
    card = (export.export_model(uncased, tmp_path / "hub") / "README.md").read_text()
    assert "| 2,000 (uncased: text is lower-cased, SentencePiece-compatible" in card


def test_re_export_keeps_the_datasets_the_checkpoint_card_names(checkpoint, tmp_path):
    local = export.export_model(checkpoint, tmp_path / "local", datasets=[])  # as run_mlm.py does for --train_file
    assert ModelCard.load(local / "README.md").data.datasets is None
    again = export.export_model(local, tmp_path / "again")  # export_model.py without --datasets
    assert ModelCard.load(again / "README.md").data.datasets is None
    assert "Training data: local Spanish text." in (again / "README.md").read_text()


def test_a_model_continued_from_a_hub_model_names_it_as_base_model_and_a_re_export_keeps_it(checkpoint, tmp_path):
    base = "someone/spanish-moe-bert-large"
    folder = export.export_model(checkpoint, tmp_path / "continued", base_model=base)
    assert ModelCard.load(folder / "README.md").data.base_model == base
    assert f"Continued from [{base}](https://huggingface.co/{base}). Masked" in (folder / "README.md").read_text()
    again = export.export_model(folder, tmp_path / "again")
    assert ModelCard.load(again / "README.md").data.base_model == base
    scratch = export.export_model(checkpoint, tmp_path / "scratch")
    assert ModelCard.load(scratch / "README.md").data.base_model is None
    assert "Continued from" not in (scratch / "README.md").read_text()


@pytest.mark.parametrize("local", [False, True], ids=["hub-id", "local-folder"])
def test_run_mlm_names_the_hub_model_it_continued_but_no_local_folder(checkpoint, tmp_path, local):
    import run_mlm

    source = str(checkpoint) if local else "someone/spanish-moe-bert-large"
    output_dir = shutil.copytree(checkpoint, tmp_path / "continued")
    run_mlm.export(
        SimpleNamespace(model_name_or_path=source),
        SimpleNamespace(output_dir=str(output_dir), hub_model_id=None),
        SimpleNamespace(train_file=[str(CORPUS)], mlm_probability=0.3),
        metrics={},
        push_to_hub=False,
    )
    assert ModelCard.load(output_dir / "README.md").data.base_model == (None if local else source)


def test_card_states_the_masking_rate_of_the_run(checkpoint, tmp_path):
    folder = export.export_model(checkpoint, tmp_path / "explicit", eval_results=EVAL_RESULTS, mlm_probability=0.3)
    card = (folder / "README.md").read_text()
    assert "masking 30% of the tokens" in card and "Masked language modelling (30% of tokens)" in card
    # A re-export reads the rate run_mlm.py recorded in the Trainer state.
    recorded = shutil.copytree(checkpoint, tmp_path / "recorded")
    state = json.loads((recorded / "trainer_state.json").read_text())
    state["stateful_callbacks"] = {"MaskingRateCallback": MaskingRateCallback(0.25).state()}
    (recorded / "trainer_state.json").write_text(json.dumps(state))
    card = (export.export_model(recorded, eval_results=EVAL_RESULTS) / "README.md").read_text()
    assert "masking 25% of the tokens" in card and "Masked language modelling (25% of tokens)" in card


def test_parameter_counts_leave_out_inactive_experts():
    config = SpanishMoEBertConfig.from_json_file(REPO / "configs" / "tiny.json")
    model = SpanishMoEBertForMaskedLM(config)
    total, active = model.num_parameters(), model.num_active_parameters()
    h, i, e, k = config.hidden_size, config.moe_intermediate_size, config.num_experts, config.num_experts_per_tok
    expert_weights = config.mlp_layer_types.count("sparse") * e * (h * 2 * i + i * h)
    assert total == sum(p.numel() for p in model.parameters())
    assert active == total - expert_weights * (e - k) // e


def test_metrics_measured_on_a_held_out_file(checkpoint):
    model = SpanishMoEBertForMaskedLM.from_pretrained(checkpoint)
    tokenizer = SpanishSPMTokenizer.from_pretrained(checkpoint)
    metrics = export.evaluate_mlm(model, tokenizer, [str(CORPUS)], max_samples=8)
    # An untrained model guesses near-uniformly over the 2000-token vocabulary.
    assert 5.5 < metrics["eval_mlm_loss"] < 9.5
    assert metrics["eval_perplexity"] == pytest.approx(torch.tensor(metrics["eval_mlm_loss"]).exp().item(), rel=1e-4)
    assert 0 <= metrics["eval_accuracy"] <= 0.05


HUB_USER = textwrap.dedent(
    """
    import json, sys, torch
    from sentence_transformers import SentenceTransformer, util
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer, pipeline

    folder = sys.argv[1]
    # The test venv has the project installed in editable mode; a Hub user has not: drop its import hook.
    sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
    try:
        import modeling_spanish_moe_bert
        raise SystemExit("the project is importable: this is not a Hub user's process")
    except ImportError:
        pass
    result = {}
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    model = AutoModel.from_pretrained(folder, trust_remote_code=True)
    batch = tokenizer(["Hola, ¿qué tal?", "El perro corre por el campo."], padding=True, return_tensors="pt")
    result["pooler_shape"] = list(model(**batch).pooler_output.shape)

    fill = pipeline("fill-mask", model=folder, trust_remote_code=True)
    predictions = fill(f"Madrid es la {fill.tokenizer.mask_token} de España.", top_k=3)
    result["fill_mask"] = [[p["token_str"], p["score"]] for p in predictions]

    st = SentenceTransformer(folder, trust_remote_code=True)
    embeddings = st.encode(["El gato duerme.", "Un felino descansa.", "La bolsa cayó hoy."], convert_to_tensor=True)
    result["st_shape"] = list(embeddings.shape)
    result["cos_sim"] = util.cos_sim(embeddings, embeddings).tolist()
    cls = model(**tokenizer(["El gato duerme."], return_tensors="pt")).pooler_output[0]
    st_vector = st.encode(["El gato duerme."], convert_to_tensor=True)[0]
    result["st_equals_pooler"] = torch.allclose(st_vector, cls, atol=1e-5)

    classifier = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=3, trust_remote_code=True)
    before = classifier.classifier.weight.detach().clone()
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=1e-3)
    loss = classifier(**batch, labels=torch.tensor([0, 2])).loss
    loss.backward()
    optimizer.step()
    result["cls_loss"] = loss.item()
    result["cls_head_changed"] = not torch.equal(before, classifier.classifier.weight)
    result["num_labels"] = classifier.config.num_labels
    print("RESULT" + json.dumps(result))
    """
)


def test_hub_user_in_a_fresh_process(exported, tmp_path):
    """Only the exported folder, a process where the project is not importable, no network."""
    folder = shutil.copytree(exported, tmp_path / "downloaded" / "spanish-moe-bert-tiny")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"), TOKENIZERS_PARALLELISM="false")
    script = tmp_path / "hub_user.py"
    script.write_text(HUB_USER)
    completed = subprocess.run(
        [sys.executable, "-P", str(script), str(folder)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.split("RESULT", 1)[1])
    assert result["pooler_shape"] == [2, 64]
    assert len(result["fill_mask"]) == 3
    assert all(isinstance(token, str) and 0 < score <= 1 for token, score in result["fill_mask"])
    assert result["st_shape"] == [3, 64]
    assert result["cos_sim"][0][0] == pytest.approx(1.0, abs=1e-4)
    assert all(-1 - 1e-4 <= v <= 1 + 1e-4 for row in result["cos_sim"] for v in row)
    assert result["st_equals_pooler"]  # [CLS] pooling is the model's pooler_output
    assert result["num_labels"] == 3 and result["cls_head_changed"]
    assert torch.isfinite(torch.tensor(result["cls_loss"]))


def test_mean_pooling_is_selectable(checkpoint, tmp_path):
    folder = export.export_model(checkpoint, tmp_path / "mean", pooling="mean", eval_results=EVAL_RESULTS)
    pooling = json.loads((folder / "1_Pooling/config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] and not pooling["pooling_mode_cls_token"]
    card = (folder / "README.md").read_text()
    assert "the mean of its token vectors is the sentence embedding" in card and "(mean pooling, cosine" in card
    assert "its `[CLS]` vector (`pooler_output`) is the sentence embedding" not in card
    with pytest.raises(ValueError, match="pooling must be one of"):
        export.export_model(checkpoint, tmp_path / "bad", pooling="max")


def test_push_to_hub_uploads_the_exported_folder(checkpoint, tmp_path, monkeypatch):
    calls = {}
    monkeypatch.setattr(export, "create_repo", lambda repo_id, **kwargs: calls.setdefault("create", (repo_id, kwargs)))
    monkeypatch.setattr(export, "upload_folder", lambda **kwargs: calls.setdefault("upload", kwargs))
    folder = export.export_model(
        checkpoint, tmp_path / "out", eval_results=EVAL_RESULTS, push_to_hub=True, hub_model_id="me/spanish-moe-bert"
    )
    assert calls["create"][0] == "me/spanish-moe-bert" and calls["create"][1]["exist_ok"]
    assert calls["upload"]["repo_id"] == "me/spanish-moe-bert"
    assert Path(calls["upload"]["folder_path"]) == folder
    assert "checkpoint-*" in calls["upload"]["ignore_patterns"]
    # an earlier push of another layout is cleaned up in the repository; the model's own files are not touched
    deleted = calls["upload"]["delete_patterns"]
    for stale in ("document_0_MLMTransformer/model.safetensors", "router_config.json", "onnx/model.onnx"):
        assert any(fnmatch.fnmatch(stale, pattern) for pattern in deleted), stale
    for kept in ("model.safetensors", "config.json", "README.md", "tokenizer.json", "modules.json"):
        assert not any(fnmatch.fnmatch(kept, pattern) for pattern in deleted), kept
    card = ModelCard.load(folder / "README.md")
    assert card.data.model_name == "me/spanish-moe-bert" and 'model="me/spanish-moe-bert"' in card.text


def test_re_export_removes_what_an_earlier_layout_left(checkpoint, tmp_path):
    """A folder exported before as an inference-free retriever (with the weights copied into
    document_0_MLMTransformer/, as exports before 61c2a5b did) and with ONNX, re-exported as sentence embeddings."""
    folder = export.export_model(checkpoint, tmp_path / "out", eval_results=EVAL_RESULTS)
    earlier = [
        "router_config.json",
        "document_0_MLMTransformer/model.safetensors",
        "document_1_SpladePooling/model.safetensors",
        "query_0_SparseStaticEmbedding/model.safetensors",
        "sparse_pooling_spanish_moe_bert.py",
        "onnx/model.onnx",
    ]
    for name in [*earlier, "my_notes.txt", "checkpoint-7/trainer_state.json"]:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("earlier")
    export.export_model(checkpoint, folder, eval_results=EVAL_RESULTS)
    for name in earlier:
        assert not (folder / name).exists(), name
    for name in ("document_0_MLMTransformer", "document_1_SpladePooling", "query_0_SparseStaticEmbedding", "onnx"):
        assert not (folder / name).exists(), name
    assert (folder / "my_notes.txt").read_text() == "earlier"  # not ours: kept
    assert (folder / "checkpoint-7" / "trainer_state.json").is_file()
    assert (folder / "1_Pooling" / "config.json").is_file() and (folder / "training_loss.png").is_file()
    assert json.loads((folder / "modules.json").read_text())[1]["path"] == "1_Pooling"


def test_in_place_export_of_a_sharded_checkpoint_leaves_one_copy_of_the_weights(checkpoint, tmp_path):
    model = SpanishMoEBertForMaskedLM.from_pretrained(checkpoint)
    folder = tmp_path / "sharded"
    model.save_pretrained(folder, max_shard_size="300KB")
    SpanishSPMTokenizer.from_pretrained(checkpoint).save_pretrained(folder)
    assert len(list(folder.glob("model-*-of-*.safetensors"))) > 1
    export.export_model(folder, tmp_path / ".." / tmp_path.name / "sharded")  # in place, spelled another way
    assert sorted(p.name for p in folder.glob("*.safetensors*")) == ["model.safetensors"]
    reloaded = SpanishMoEBertForMaskedLM.from_pretrained(folder)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reloaded.state_dict().values()))


def test_weights_of_another_layout_are_kept_named_and_not_pushed(checkpoint, tmp_path, monkeypatch, caplog):
    folder = shutil.copytree(checkpoint, tmp_path / "both")
    torch.save({"other": torch.zeros(2)}, folder / "pytorch_model.bin")  # not what from_pretrained reads here
    calls = {}
    monkeypatch.setattr(export, "create_repo", lambda repo_id, **kwargs: None)
    monkeypatch.setattr(export, "upload_folder", lambda **kwargs: calls.setdefault("upload", kwargs))
    export.export_model(folder, push_to_hub=True, hub_model_id="me/spanish-moe-bert")
    assert torch.load(folder / "pytorch_model.bin")["other"].shape == (2,)
    assert "also holds pytorch_model.bin: other weights than the exported model.safetensors" in caplog.text
    for key in ("ignore_patterns", "delete_patterns"):  # not uploaded, and gone from the repository if pushed before
        assert any(fnmatch.fnmatch("pytorch_model.bin", pattern) for pattern in calls["upload"][key])
        assert not any(fnmatch.fnmatch("model.safetensors", pattern) for pattern in calls["upload"][key])


def test_push_without_network_fails_clearly_and_keeps_the_folder(exported, monkeypatch, file_hashes):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    before = file_hashes(exported)
    with pytest.raises(export.HubPushError, match=r"could not push .* 'me/spanish-moe-bert'.*complete and unchanged"):
        export.push_folder(exported, "me/spanish-moe-bert")
    assert file_hashes(exported) == before


def test_failed_export_leaves_an_existing_folder_as_it_was(exported, monkeypatch, file_hashes):
    before = file_hashes(exported)

    def broken_card(*args, **kwargs):
        raise RuntimeError("card template broken")

    monkeypatch.setattr(export, "write_model_card", broken_card)
    with pytest.raises(RuntimeError, match="card template broken"):
        export.export_model(exported, pooling="mean")
    assert file_hashes(exported) == before
    assert not any(name.startswith(".staging-") for name in os.listdir(exported))


def test_cli_requires_a_repo_id_to_push(capsys):
    with pytest.raises(SystemExit):
        parse_args(["some/dir", "--push_to_hub"])
    assert "--push_to_hub needs --hub_model_id" in capsys.readouterr().err
    assert parse_args(["d", "--datasets"]).datasets == []

"""The contrastive stage: router losses reach the experts (also through GradCache), and a tiny run
exports a folder that a fresh process loads with SentenceTransformer(dir, trust_remote_code=True)."""

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file

os.environ["HF_HUB_OFFLINE"] = "1"

from sentence_transformers.sentence_transformer import losses  # noqa: E402

import spanish_moe_bert.export as export_module  # noqa: E402
import train_sentence_embeddings as tse  # noqa: E402
from configuration_spanish_moe_bert import SpanishMoEBertConfig  # noqa: E402
from modeling_spanish_moe_bert import SpanishMoEBertForMaskedLM  # noqa: E402
from spanish_moe_bert.export import export_model  # noqa: E402
from spanish_moe_bert.router_loss import RouterLossWrapper  # noqa: E402
from sparse_pooling_spanish_moe_bert import PMISpladePooling  # noqa: E402
from tokenization_spanish_moe_bert import SpanishSPMTokenizer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mlm_checkpoint(tmp_path_factory) -> Path:
    """A tiny untrained MLM checkpoint folder, exported like run_mlm.py's output."""
    folder = tmp_path_factory.mktemp("mlm")
    lines = (REPO / "data" / "es_corpus_sample.txt").read_text(encoding="utf-8").splitlines()[:1500]
    tokenizer = SpanishSPMTokenizer.train_new(lines, vocab_size=1000)
    config = SpanishMoEBertConfig.from_json_file(str(REPO / "configs" / "tiny.json"))
    config.vocab_size, config.pad_token_id = len(tokenizer), tokenizer.pad_token_id
    torch.manual_seed(0)
    SpanishMoEBertForMaskedLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    export_model(folder, datasets=["someone/spanish-text"])  # as run_mlm.py leaves its output_dir
    return folder


def make_args(mlm_checkpoint, **overrides):
    values = dict(model_name_or_path=str(mlm_checkpoint), max_documents=300, max_seq_length=48)
    return tse.EmbeddingArguments(**{**values, **overrides})


def grads(model, loss, batch, only=""):
    """The loss parts and the gradients of the parameters named with ``only`` after one backward."""
    model.zero_grad()
    parts = loss([dict(f) for f in batch], None)  # fresh dicts: the modules write their outputs into them
    sum(parts.values()).backward()
    return parts, {n: p.grad.clone() for n, p in model.named_parameters() if only in n and p.grad is not None}


def training_batch(args, pooling: str):
    """A model with `pooling` in training mode, and a batch of three columns (anchor, positive, negative) of 4."""
    model = tse.build_model(args, pooling)
    model.train()
    texts = [
        ["Pulse Aceptar para guardar.", "Abra el menú Formato.", "Seleccione la celda A1.", "Inserte una tabla."],
        ["Guarde el documento.", "Elija Formato ▸ Celdas.", "La celda activa.", "Tablas de texto."],
        ["Imprima la página.", "Cierre el diálogo.", "Copie el rango.", "Borre la fila."],
    ]
    return model, [model.preprocess(column) for column in texts]


@pytest.fixture(scope="module")
def batch_and_model(mlm_checkpoint):
    return training_batch(make_args(mlm_checkpoint), "mean")


def test_router_losses_reach_the_router_weights(batch_and_model):
    model, batch = batch_and_model
    loss = RouterLossWrapper(losses.MultipleNegativesRankingLoss(model), model)
    parts, with_router = grads(model, loss, batch, only="router")
    assert with_router, "no router parameter received a gradient"
    assert parts["router"].item() > 0 and parts["router"].requires_grad
    loss.remove_hooks()
    off = RouterLossWrapper(losses.MultipleNegativesRankingLoss(model), model, weight=0.0)
    parts, without = grads(model, off, batch, only="router")
    off.remove_hooks()
    assert parts["router"].item() == 0
    assert any(not torch.allclose(with_router[n], without[n]) for n in with_router)


def test_gradcache_gives_the_same_gradients_including_router_losses(batch_and_model):
    """CachedMNRL + router losses == MNRL + router losses, given the same forwards: one per column.

    (MNRL normally merges the columns into one forward; the load-balancing loss of a merged batch is
    not the mean of the columns' losses, so the comparison embeds each column on its own.)
    """
    from sentence_transformers.base.losses.merged_forward import column_merging_disabled

    model, batch = batch_and_model
    plain = RouterLossWrapper(losses.MultipleNegativesRankingLoss(model), model)
    with column_merging_disabled():
        plain_parts, plain_grads = grads(model, plain, batch)
    plain.remove_hooks()
    cached = RouterLossWrapper(losses.CachedMultipleNegativesRankingLoss(model, mini_batch_size=4), model)
    cached_parts, cached_grads = grads(model, cached, batch)
    cached.remove_hooks()
    assert cached.cached and not plain.cached
    assert cached_parts["router"].item() == pytest.approx(plain_parts["router"].item(), rel=1e-4)
    assert cached_parts["contrastive"].item() == pytest.approx(plain_parts["contrastive"].item(), rel=1e-4)
    assert plain_grads.keys() == cached_grads.keys()
    for name in plain_grads:
        difference = (cached_grads[name] - plain_grads[name]).norm()
        assert difference <= 1e-4 * plain_grads[name].norm() + 1e-9, name


def test_gradcache_router_losses_add_no_backward_pass(batch_and_model):
    """The router losses ride on GradCache's one backward per mini-batch: the embeddings get one gradient per
    mini-batch, not one more per MoE layer (a backward of its own per layer repeats every layer below it)."""
    model, batch = batch_and_model
    embeddings = model[0].model.embeddings.word_embeddings.weight
    cached = RouterLossWrapper(losses.CachedMultipleNegativesRankingLoss(model, mini_batch_size=2), model)
    calls = []
    handle = embeddings.register_hook(lambda grad: calls.append(1))
    try:
        parts, _ = grads(model, cached, batch)
    finally:
        handle.remove()
        cached.remove_hooks()
    assert cached._num_layers > 1 and parts["router"].item() > 0
    assert len(calls) == sum(-(-f["input_ids"].shape[0] // 2) for f in batch)  # 3 columns x 2 mini-batches


def test_bad_arguments_are_named(mlm_checkpoint, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="--pooling must be one of"):
        make_args(mlm_checkpoint, pooling="max")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        make_args(tmp_path)
    with pytest.raises(ValueError, match=r"--max_seq_length 129 .* max_position_embeddings \(128\).* at most 128"):
        make_args(mlm_checkpoint, max_seq_length=129)
    for bad, message in [
        (dict(max_pairs=0), "--max_pairs must be at least 2, got 0"),
        (dict(max_documents=-1), "--max_documents must be at least 1, got -1"),
        (dict(mini_batch_size=0), "--mini_batch_size must be at least 1, got 0"),
        (dict(router_loss_weight=-1.0), "--router_loss_weight must be >= 0, got -1.0"),
        (dict(scale=-1.0), "--scale must be > 0, got -1.0"),
        (dict(pair_kinds=["crop", "foo"]), r"--pair_kinds: unknown \['foo'\]; choose from"),
        (dict(matryoshka_dims=[64, 32, 1000]), r"--matryoshka_dims must be between 1 and the hidden size 64, got"),
    ]:
        with pytest.raises(ValueError, match=message):
            make_args(mlm_checkpoint, **bad)
    with pytest.raises(ValueError, match="--sections_per_document must be >= 0, got -1"):
        make_args(mlm_checkpoint, sections_per_document=-1)
    find_spec = importlib.util.find_spec  # --onnx without the exporter installed: said before training, not after
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args, **kwargs: None if name == "onnx" else find_spec(name, *args, **kwargs),
    )
    with pytest.raises(ImportError, match=r"ONNX export needs onnx \(not installed\)"):
        make_args(mlm_checkpoint, onnx=True)


def test_memory_is_pinned_only_where_a_gpu_takes_it(mlm_checkpoint):
    """Pinning on a machine without a GPU only makes torch warn at every run; a user's explicit choice still wins."""
    parser = tse.argument_parser(tse.SentenceTransformerTrainingArguments)
    argv = ["--model_name_or_path", str(mlm_checkpoint), "--output_dir", "x"]
    _, default = parser.parse_args_into_dataclasses(args=argv)
    assert default.dataloader_pin_memory == torch.cuda.is_available()
    _, explicit = parser.parse_args_into_dataclasses(args=[*argv, "--dataloader_pin_memory", "true"])
    assert explicit.dataloader_pin_memory is True


def test_pair_counts_per_document_reach_the_builders(mlm_checkpoint, tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    sub = "La opción cambia el aspecto de todas las páginas del documento abierto y activo."
    text = "\n".join(["Resumen de la página."] + [f"Opciones {s}\n{sub}\n{sub}" for s in range(5)])
    corpus.write_text("\n".join(json.dumps({"text": text.replace("página", f"página {i}")}) for i in range(4)))
    args = dict(train_files=[str(corpus)], pair_kinds=["section"], hard_negatives=False)
    assert len(tse.load_pairs(make_args(mlm_checkpoint, **args), seed=0)) == 4 * 2  # the default, 2 a document
    assert len(tse.load_pairs(make_args(mlm_checkpoint, **args, sections_per_document=3), seed=0)) == 4 * 3


def test_embedding_export_writes_everything_at_once_or_nothing(mlm_checkpoint, tmp_path, monkeypatch, file_hashes):
    args = make_args(mlm_checkpoint, query_prompt="consulta: ")
    model = tse.build_model(args, "mean")
    with torch.no_grad():  # a trained encoder differs from the checkpoint's
        model[0].model.embeddings.word_embeddings.weight.mul_(2)
    output_dir = shutil.copytree(mlm_checkpoint, tmp_path / "embed")  # a folder already holding an export
    state = {"global_step": 3, "log_history": [{"step": s, "loss": 3.0 - s / 2} for s in (1, 2, 3)]}
    metrics = {"ndcg@10": 0.25, "mrr@10": 0.2, "recall@1": 0.125}

    def export():
        return tse.export_embedding_model(model, args, "mean", output_dir, state, 96, metrics, "| system |\n|---|")

    before = file_hashes(output_dir)

    def broken_card(*args, **kwargs):  # the card is the last thing written
        raise RuntimeError("card template broken")

    with monkeypatch.context() as patch:
        patch.setattr(export_module, "write_model_card", broken_card)
        with pytest.raises(RuntimeError, match="card template broken"):
            export()
    assert file_hashes(output_dir) == before
    assert not any(p.name.startswith(".staging-") for p in output_dir.iterdir())

    export()
    settings = json.loads((output_dir / "config_sentence_transformers.json").read_text())
    assert settings["prompts"]["query"] == "consulta: "
    assert json.loads((output_dir / "sentence_bert_config.json").read_text())["max_seq_length"] == 48
    assert json.loads((output_dir / "1_Pooling" / "config.json").read_text())["pooling_mode_mean_tokens"]
    exported = load_file(output_dir / "model.safetensors")
    trained = model[0].model.embeddings.word_embeddings.weight
    assert torch.equal(exported["model.embeddings.word_embeddings.weight"], trained)
    card = ModelCard.load(output_dir / "README.md")
    assert card.data.pipeline_tag == "sentence-similarity" and "source_sentence" in card.data.widget[0]
    assert [r.metric_value for r in card.data.eval_results if r.metric_type == "ndcg_at_10"] == [0.25]
    assert "## Sentence embeddings: contrastive stage" in card.text and "| system |" in card.text
    assert card.data.datasets == ["someone/spanish-text"]
    assert "96 unsupervised pairs" in card.text and (output_dir / "training_loss.png").is_file()


def small_dev_set(folder: Path) -> Path:
    """The first 16 dev queries and 32 passages (their positives among them), to keep the test fast."""
    folder.mkdir()
    dev = REPO / "data" / "retrieval_dev"
    queries = (dev / "queries.jsonl").read_text(encoding="utf-8").splitlines()[:16]
    positives = [json.dumps({"text": json.loads(q)["positive"]}, ensure_ascii=False) for q in queries]
    corpus = (dev / "corpus.jsonl").read_text(encoding="utf-8").splitlines()[:16]
    (folder / "queries.jsonl").write_text("\n".join(queries) + "\n", encoding="utf-8")
    (folder / "corpus.jsonl").write_text("\n".join(positives + corpus) + "\n", encoding="utf-8")
    shutil.copy(dev / "heldout_paragraphs.txt", folder)
    return folder


def load_elsewhere(folder: Path, tmp_path: Path, script: str, *args: str) -> dict:
    """The Hub user's view: a copy of only the folder, loaded by `script` (argv[1] = the copy) in a fresh process where
    the project is not on the path; returns the JSON the script prints last."""
    hub_copy = tmp_path / "elsewhere" / "model"
    shutil.copytree(folder, hub_copy)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script, str(hub_copy), *args],
        cwd=tmp_path / "elsewhere",
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_tiny_contrastive_run_exports_a_folder_a_fresh_process_loads(mlm_checkpoint, tmp_path):
    output_dir = tmp_path / "embed"
    labelled = tmp_path / "labelled.jsonl"
    labelled.write_text(
        json.dumps({"anchor": "¿Cómo guardo un documento?", "positive": "Pulse Archivo ▸ Guardar."}, ensure_ascii=False)
        + "\n",
        encoding="utf-8",
    )
    results = tse.main(
        [
            "--model_name_or_path", str(mlm_checkpoint), "--output_dir", str(output_dir),
            "--max_documents", "200", "--max_pairs", "96", "--labelled_pairs", str(labelled),
            "--max_seq_length", "48", "--pooling", "auto", "--max_steps", "3",
            "--per_device_train_batch_size", "32", "--mini_batch_size", "16",
            "--query_prompt", "consulta: ", "--eval_baselines", "false",
            "--dev_dir", str(small_dev_set(tmp_path / "dev")),
        ]
    )  # fmt: skip
    assert set(results) == {next(iter(results)), "ours after (contrastive)"}
    assert all(0 <= m["ndcg@10"] <= 1 for m in results.values())
    report = json.loads((output_dir / "embedding_eval.json").read_text())
    assert report["pooling"] in ("cls", "mean") and set(report["pooling_candidates"]) == {"cls", "mean"}
    pooling = json.loads((output_dir / "1_Pooling" / "config.json").read_text())
    assert pooling[f"pooling_mode_{'cls_token' if report['pooling'] == 'cls' else 'mean_tokens'}"]
    # the MLM export's folder: every Auto class, the code files, and a card with the retrieval results
    assert "AutoModelForMaskedLM" in json.loads((output_dir / "config.json").read_text())["auto_map"]
    assert (output_dir / "modeling_spanish_moe_bert.py").is_file() and (output_dir / "expert_load.png").is_file()
    card = ModelCard.load(output_dir / "README.md")
    ndcg = [r.metric_value for r in card.data.eval_results if r.metric_type == "ndcg_at_10"]
    assert ndcg == [round(results["ours after (contrastive)"]["ndcg@10"], 4)]
    assert "## Sentence embeddings: contrastive stage" in card.text
    assert card.data.datasets == ["someone/spanish-text"]  # the checkpoint's pre-training data, carried over
    assert "then trained contrastively" in card.text and "a contrastive stage with Sentence Transformers" in card.text
    assert "alone are weak" not in card.text  # the MLM-only limitation no longer applies
    cls_intro = "its `[CLS]` vector (`pooler_output`) is the sentence embedding"
    assert (cls_intro in card.text) == (report["pooling"] == "cls")

    # The Hub user's view: only the folder, a process where the project is not importable.
    script = """
import sys, json
from sentence_transformers import SentenceTransformer, util
model = SentenceTransformer(sys.argv[1], trust_remote_code=True, device="cpu")
emb = model.encode(["El gato duerme.", "Un gato descansa.", "Abra el menú Formato."])
query = model.encode_query(["¿Dónde duerme el gato?"])
print(json.dumps({"shape": list(emb.shape), "cos": util.cos_sim(emb, emb).tolist(), "query": list(query.shape),
                  "prompts": model.prompts, "modules": type(model[0].model).__module__}))
"""
    seen = load_elsewhere(output_dir, tmp_path, script)
    hidden = SpanishMoEBertConfig.from_json_file(str(REPO / "configs" / "tiny.json")).hidden_size
    assert seen["shape"] == [3, hidden] and seen["query"] == [1, hidden]
    assert seen["cos"][0][0] == pytest.approx(1.0, abs=1e-4)
    assert seen["prompts"]["query"] == "consulta: "
    assert "transformers_modules" in seen["modules"]  # the folder's own remote code, not the repo's


# ---------------------------------------------------------------------------------------------
# The sparse retriever (--encoder sparse): SPLADE over pointwise mutual information


def test_pmi_pooling_weighs_each_word_by_its_mutual_information_above_the_threshold(tmp_path):
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 6) * 3  # (texts, tokens, vocabulary)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    prior = torch.log_softmax(torch.tensor([4.0, 2.0, 0.0, 0.0, -2.0, -4.0]), dim=-1)
    pooling = PMISpladePooling(6, threshold=0.5, log_prior=prior).eval()
    out = pooling({"token_embeddings": logits.clone(), "attention_mask": mask})["sentence_embedding"]

    pmi = torch.log_softmax(logits, dim=-1) - prior - 0.5
    for text in range(2):
        real = pmi[text, : int(mask[text].sum())]  # padding never gives a word weight
        expected = torch.log1p(torch.relu(real)).max(dim=0).values
        assert torch.allclose(out[text], expected, atol=1e-6)
    assert (out == 0).any() and (out > 0).any()
    # The same probability given the token weighs a rare word more than a frequent one.
    even = torch.zeros(1, 1, 6)
    weights = pooling({"token_embeddings": even, "attention_mask": torch.ones(1, 1)})["sentence_embedding"][0]
    assert weights[0] == 0 and weights[5] > weights[4] > 0

    pooling.save(str(tmp_path))
    loaded = PMISpladePooling.load(str(tmp_path))
    assert loaded.threshold == 0.5 and torch.equal(loaded.log_prior, prior)
    with pytest.raises(ValueError, match=r"log_prior must have shape \(5,\)"):
        PMISpladePooling(5, log_prior=prior)
    with pytest.raises(ValueError, match="threshold must be >= 0"):
        PMISpladePooling(6, threshold=-1.0)


def test_pmi_pooling_of_an_mlm_head_takes_its_prior_from_the_output_bias_and_skips_special_tokens(mlm_checkpoint):
    tokenizer = SpanishSPMTokenizer.from_pretrained(mlm_checkpoint)
    model = SpanishMoEBertForMaskedLM.from_pretrained(mlm_checkpoint)
    with torch.no_grad():
        model.decoder.bias.copy_(torch.linspace(-3, 3, model.config.vocab_size))
    pooling = PMISpladePooling.from_mlm_head(model, 0.0, special_token_ids=tokenizer.all_special_ids)
    words = [i for i in range(model.config.vocab_size) if i not in tokenizer.all_special_ids]
    assert torch.allclose(pooling.log_prior[words], torch.log_softmax(model.decoder.bias, -1)[words])
    # A special token is never more likely than its prior (1): even a token certain to be [CLS] gives it no weight.
    certain = torch.full((1, 1, model.config.vocab_size), -1e4)
    certain[0, 0, tokenizer.cls_token_id] = 0.0
    weights = pooling({"token_embeddings": certain, "attention_mask": torch.ones(1, 1)})["sentence_embedding"]
    assert weights[0, tokenizer.cls_token_id] == 0


@pytest.fixture(scope="module")
def sparse_batch_and_model(mlm_checkpoint):
    # The untrained checkpoint's PMI is noise around 0: threshold 0 gives about half the words a weight.
    args = make_args(mlm_checkpoint, encoder="sparse", query_encoder="model", pmi_threshold=0.0)
    return training_batch(args, "splade")


def test_sparse_gradcache_gives_the_same_gradients_including_router_losses(sparse_batch_and_model):
    """CachedSpladeLoss + router losses == SpladeLoss + router losses (one forward per column, as above): the
    router losses ride on GradCache's backward for a loss that returns its parts as a dict, too."""
    from sentence_transformers.base.losses.merged_forward import column_merging_disabled
    from sentence_transformers.sparse_encoder import losses as sparse_losses

    model, batch = sparse_batch_and_model

    def splade(cached: bool):
        ranking = sparse_losses.SparseMultipleNegativesRankingLoss(model, scale=1.0)
        weights = {"document_regularizer_weight": 1e-2, "query_regularizer_weight": 1e-2}
        if cached:
            return sparse_losses.CachedSpladeLoss(model, ranking, mini_batch_size=4, **weights)
        return sparse_losses.SpladeLoss(model, ranking, **weights)

    plain = RouterLossWrapper(splade(cached=False), model)
    with column_merging_disabled():
        plain_parts, plain_grads = grads(model, plain, batch)
    plain.remove_hooks()
    cached = RouterLossWrapper(splade(cached=True), model)
    cached_parts, cached_grads = grads(model, cached, batch)
    cached.remove_hooks()
    assert cached.cached and not plain.cached
    assert set(cached_parts) == set(plain_parts) >= {"base_loss", "document_regularizer_loss", "router"}
    for name in plain_parts:
        assert cached_parts[name].item() == pytest.approx(plain_parts[name].item(), rel=1e-4), name
    assert plain_parts["router"].item() > 0
    assert plain_grads.keys() == cached_grads.keys()
    for part in ("router", "decoder.bias", "word_embeddings"):  # the routers, the MLM head and the encoder learn
        assert any(part in n and g.norm() > 0 for n, g in plain_grads.items()), part
    for name in plain_grads:
        difference = (cached_grads[name] - plain_grads[name]).norm()
        assert difference <= 1e-4 * plain_grads[name].norm() + 1e-9, name


def test_sparse_arguments_are_checked(mlm_checkpoint):
    with pytest.raises(ValueError, match="--encoder must be one of"):
        make_args(mlm_checkpoint, encoder="colbert")
    with pytest.raises(ValueError, match="--matryoshka_dims needs --encoder dense"):
        make_args(mlm_checkpoint, encoder="sparse", matryoshka_dims=[32])
    with pytest.raises(ValueError, match="--document_regularizer_weight must be >= 0"):
        make_args(mlm_checkpoint, encoder="sparse", document_regularizer_weight=-1.0)
    assert make_args(mlm_checkpoint, encoder="sparse").scale == 1.0 and make_args(mlm_checkpoint).scale == 20.0


def tiny_sparse_run(mlm_checkpoint, output_dir: Path, *options: str) -> dict:
    """Two training steps of the sparse stage on 64 pairs of the bundled corpus, exported to `output_dir`."""
    return tse.main(
        [
            "--model_name_or_path", str(mlm_checkpoint), "--output_dir", str(output_dir), "--encoder", "sparse",
            "--pmi_threshold", "0", "--max_documents", "200", "--max_pairs", "64", "--max_seq_length", "48",
            "--max_steps", "2", "--per_device_train_batch_size", "32", "--mini_batch_size", "16",
            "--eval_baselines", "false", "--dev_dir", str(small_dev_set(output_dir.parent / "dev")), *options,
        ]
    )  # fmt: skip


@pytest.mark.slow
def test_tiny_sparse_run_exports_a_retriever_a_fresh_process_loads(mlm_checkpoint, tmp_path):
    output_dir = tmp_path / "sparse"
    results = tiny_sparse_run(mlm_checkpoint, output_dir, "--query_encoder", "model")
    assert set(results) == {"ours before (splade pooling, MLM only)", "ours after (contrastive)"}
    modules = json.loads((output_dir / "modules.json").read_text())
    assert modules[1]["type"] == "sparse_pooling_spanish_moe_bert.PMISpladePooling"
    assert (output_dir / "sparse_pooling_spanish_moe_bert.py").is_file()
    assert json.loads((output_dir / "config_sentence_transformers.json").read_text())["model_type"] == "SparseEncoder"
    card = ModelCard.load(output_dir / "README.md")
    assert card.data.pipeline_tag == "feature-extraction" and "splade" in card.data.tags
    assert not getattr(card.data, "widget", None)  # the Hub has no widget for sparse vectors
    assert "## Sparse retrieval: contrastive stage" in card.text and "SparseEncoder(" in card.text
    assert [r.metric_value for r in card.data.eval_results if r.metric_type == "ndcg_at_10"] == [
        round(results["ours after (contrastive)"]["ndcg@10"], 4)
    ]
    # The head was trained: the export holds the stage's decoder bias, not the checkpoint's.
    exported, original = load_file(output_dir / "model.safetensors"), load_file(mlm_checkpoint / "model.safetensors")
    assert not torch.equal(exported["decoder.bias"], original["decoder.bias"])

    texts = ["¿Cómo inserto una tabla?", "Para insertar una tabla, abra el menú Insertar."]
    from spanish_moe_bert.retrieval_eval import load_sentence_transformer

    here = load_sentence_transformer(output_dir).encode_document(texts, convert_to_sparse_tensor=False)
    script = """
import sys, json
from sentence_transformers import SparseEncoder
model = SparseEncoder(sys.argv[1], trust_remote_code=True, device="cpu")
vectors = model.encode_document(json.loads(sys.argv[2]), convert_to_sparse_tensor=False)
print(json.dumps({"vectors": vectors.tolist(), "pooling": type(model[1]).__module__}))
"""
    seen = load_elsewhere(output_dir, tmp_path, script, json.dumps(texts))
    assert "transformers_modules" in seen["pooling"]  # the folder's own remote code, not the repo's
    assert torch.allclose(torch.tensor(seen["vectors"]), here, atol=1e-5)
    assert (here > 0).any() and (here > 0).sum() < here.numel()  # sparse, not empty


# ---------------------------------------------------------------------------------------------
# Inference-free sparse retrieval (--query_encoder idf): queries are their pieces weighted by idf


def test_inverse_document_frequency_is_bm25s_up_to_1_and_gives_special_tokens_nothing(mlm_checkpoint):
    tokenizer = SpanishSPMTokenizer.from_pretrained(mlm_checkpoint)
    passages = ["el menú Formato", "el menú Insertar", "el documento", "una tabla"]
    idf = tse.inverse_document_frequency(tokenizer, passages, max_length=48)
    pieces = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in passages]
    df = {t: sum(t in set(ids) for ids in pieces) for ids in pieces for t in ids}
    largest = math.log1p((4 - 0 + 0.5) / (0 + 0.5))  # a piece in no passage
    for token, count in df.items():
        assert idf[token].item() == pytest.approx(math.log1p((4 - count + 0.5) / (count + 0.5)) / largest, rel=1e-6)
    assert idf.max().item() == pytest.approx(1.0)
    assert idf[pieces[3][-1]] > idf[pieces[0][0]] > 0  # a piece of one passage outweighs one of three
    assert idf[tokenizer.all_special_ids].abs().sum() == 0 and idf.shape == (len(tokenizer),)


@pytest.fixture(scope="module")
def idf_batch_and_model(mlm_checkpoint):
    args = make_args(mlm_checkpoint, encoder="sparse", query_encoder="idf", pmi_threshold=0.0)
    tokenizer = SpanishSPMTokenizer.from_pretrained(mlm_checkpoint)
    idf = tse.inverse_document_frequency(tokenizer, ["Abra el menú Formato.", "Guarde el documento."], 48)
    model = tse.build_model(args, "splade", idf)
    model.train()
    columns = [["Pulse Aceptar.", "Abra el menú."], ["Guarde el documento.", "Elija Formato."], ["Imprima.", "Cierre."]]
    batch = [model.preprocess(c, task=t) for c, t in zip(columns, ("query", "document", "document"))]
    return model, batch, idf, tokenizer


def test_idf_query_encoder_weighs_a_querys_pieces_by_idf_without_the_model(idf_batch_and_model):
    from sentence_transformers.base.modules import Router

    model, _, idf, tokenizer = idf_batch_and_model
    assert isinstance(model[0], Router) and set(model[0].sub_modules) == {"query", "document"}
    query = "Abra el menú Formato, abra."
    vector = model.encode_query([query], convert_to_tensor=True, convert_to_sparse_tensor=False)[0]
    expected = torch.zeros(len(tokenizer))
    pieces = tokenizer(query, add_special_tokens=False)["input_ids"]
    expected[pieces] = idf[pieces]  # once per piece, however often it occurs
    assert torch.equal(vector, expected)
    document = model.encode_document([query], convert_to_tensor=True, convert_to_sparse_tensor=False)[0]
    assert not torch.equal(document, expected) and (document > 0).any()  # documents go through the model


def test_idf_query_encoder_router_losses_count_the_documents_only(idf_batch_and_model):
    """Queries skip the encoder, so its router losses are the mean over the documents' forwards: the same with or
    without a query column (with the query rows counted, they would be 2/3 of it)."""
    from sentence_transformers.base.losses.merged_forward import column_merging_disabled
    from sentence_transformers.sparse_encoder import losses as sparse_losses

    model, batch, _, _ = idf_batch_and_model
    model.train()  # encode() above left it in eval mode, where no router losses are taken
    loss = RouterLossWrapper(
        sparse_losses.SpladeLoss(
            model, sparse_losses.SparseMultipleNegativesRankingLoss(model), document_regularizer_weight=1e-2
        ),
        model,
    )
    with column_merging_disabled(), torch.no_grad():
        with_query = loss([dict(f) for f in batch], None)["router"]
        documents_only = loss([dict(f) for f in batch[1:]], None)["router"]
    loss.remove_hooks()
    assert with_query.item() > 0
    assert with_query.item() == pytest.approx(documents_only.item(), rel=1e-5)


def test_idf_query_encoder_arguments_are_checked(mlm_checkpoint):
    with pytest.raises(ValueError, match="--query_encoder must be one of"):
        make_args(mlm_checkpoint, encoder="sparse", query_encoder="bm25")
    with pytest.raises(ValueError, match="--query_encoder idf needs --encoder sparse"):
        make_args(mlm_checkpoint, query_encoder="idf")
    with pytest.raises(ValueError, match="--query_prompt needs --query_encoder model"):
        make_args(mlm_checkpoint, encoder="sparse", query_encoder="idf", query_prompt="consulta: ")
    with pytest.raises(ValueError, match="--train_queries_with_model needs --query_encoder idf"):
        make_args(mlm_checkpoint, encoder="sparse", query_encoder="model", train_queries_with_model=True)
    # Idf queries are the sparse default (they won at two seeds each); dense queries go through the model.
    assert make_args(mlm_checkpoint, encoder="sparse").query_encoder == "idf"
    assert make_args(mlm_checkpoint).query_encoder == "model"
    # Trained as plain SPLADE, its queries go through the model: they get the query regulariser back.
    assert not tse.idf_queries_in_training(
        make_args(mlm_checkpoint, encoder="sparse", query_encoder="idf", train_queries_with_model=True)
    )
    assert tse.idf_queries_in_training(make_args(mlm_checkpoint, encoder="sparse", query_encoder="idf"))


@pytest.mark.slow
@pytest.mark.parametrize("train_queries_with_model", [False, True])
def test_tiny_inference_free_run_exports_a_retriever_a_fresh_process_loads(
    mlm_checkpoint, tmp_path, train_queries_with_model
):
    output_dir = tmp_path / "sparse-idf"
    results = tiny_sparse_run(
        mlm_checkpoint, output_dir, "--query_encoder", "idf", "--train_queries_with_model",
        str(train_queries_with_model).lower(),
    )  # fmt: skip
    assert set(results) == {"ours before (splade pooling, MLM only)", "ours after (contrastive)"}
    assert json.loads((output_dir / "modules.json").read_text())[0]["type"] == "sentence_transformers.models.Router"
    router = json.loads((output_dir / "router_config.json").read_text())
    assert router["structure"] == {
        "query": ["query_0_SparseStaticEmbedding"],
        "document": [".", "document_1_SpladePooling"],
    }
    # The document route's model is the folder's own (the AutoModel users' weights), stored once.
    weights = {path.relative_to(output_dir).as_posix() for path in output_dir.rglob("*.safetensors")}
    assert weights == {
        "model.safetensors",
        "query_0_SparseStaticEmbedding/model.safetensors",  # the idf
        "document_1_SpladePooling/model.safetensors",  # log p(w)
    }
    # Either way the stage trained the document modules that the exported Router holds.
    exported, original = load_file(output_dir / "model.safetensors"), load_file(mlm_checkpoint / "model.safetensors")
    assert not torch.equal(exported["decoder.bias"], original["decoder.bias"])
    card = ModelCard.load(output_dir / "README.md")
    assert "inference-free on the query side" in card.text and "query_0_SparseStaticEmbedding" in card.text
    assert ("trained with the queries through the model" in card.text) == train_queries_with_model

    texts = ["¿Cómo inserto una tabla?", "Para insertar una tabla, abra el menú Insertar."]
    from spanish_moe_bert.retrieval_eval import load_sentence_transformer

    here = load_sentence_transformer(output_dir)
    queries = here.encode_query(texts, convert_to_sparse_tensor=False)
    documents = here.encode_document(texts, convert_to_sparse_tensor=False)
    script = """
import sys, json
from sentence_transformers import SparseEncoder
model = SparseEncoder(sys.argv[1], trust_remote_code=True, device="cpu")
texts = json.loads(sys.argv[2])
print(json.dumps({"queries": model.encode_query(texts, convert_to_sparse_tensor=False).tolist(),
                  "documents": model.encode_document(texts, convert_to_sparse_tensor=False).tolist()}))
"""
    seen = load_elsewhere(output_dir, tmp_path, script, json.dumps(texts))
    assert torch.equal(torch.tensor(seen["queries"]), queries)
    assert torch.allclose(torch.tensor(seen["documents"]), documents, atol=1e-5)
    idf = load_file(output_dir / "query_0_SparseStaticEmbedding" / "model.safetensors")["weight"]
    tokenizer = SpanishSPMTokenizer.from_pretrained(output_dir)
    pieces = tokenizer(texts[0], add_special_tokens=False)["input_ids"]
    assert torch.equal(queries[0][pieces], idf[pieces]) and (queries[0] > 0).sum() <= len(set(pieces))

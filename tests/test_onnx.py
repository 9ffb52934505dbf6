"""ONNX: the exported encoder reproduces PyTorch in onnxruntime (any batch size and length, padding included), and
its sentence embeddings are those of Sentence Transformers' PyTorch backend."""

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import spanish_moe_bert.export as export
import spanish_moe_bert.onnx as onnx_export
from configuration_spanish_moe_bert import SpanishMoEBertConfig
from modeling_spanish_moe_bert import SpanishMoEBertForMaskedLM, SpanishMoEBertModel
from tokenization_spanish_moe_bert import SpanishSPMTokenizer

REPO = Path(__file__).resolve().parents[1]
SENTENCES = [
    "¿Dónde está la biblioteca?",
    "La biblioteca abre a las nueve de la mañana y cierra a las ocho de la tarde.",
    "Hoy llueve.",
    "Para insertar una tabla, abra el menú Insertar y pulse Tabla.",
    "Y dijo Dios: Sea la luz; y fué la luz.",
]


@pytest.fixture(scope="module")
def hub_folder(tmp_path_factory) -> Path:
    """A tiny trained-shape model exported like run_mlm.py exports it, with onnx/model.onnx written into it."""
    checkpoint = tmp_path_factory.mktemp("checkpoint")
    texts = (REPO / "data" / "es_corpus_sample.txt").read_text(encoding="utf-8").splitlines()
    tokenizer = SpanishSPMTokenizer.train_new(texts, vocab_size=2000)
    config = SpanishMoEBertConfig.from_json_file(REPO / "configs" / "tiny.json")
    config.vocab_size, config.pad_token_id = len(tokenizer), tokenizer.pad_token_id
    torch.manual_seed(0)
    model = SpanishMoEBertForMaskedLM(config)
    for p in model.parameters():  # larger weights than the init, so that routing and attention are not uniform
        torch.nn.init.normal_(p, std=0.1)
    model.save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    folder = export.export_model(checkpoint, tmp_path_factory.mktemp("hub") / "tiny", datasets=[])
    onnx_export.write_onnx(SpanishMoEBertForMaskedLM.from_pretrained(folder), folder / onnx_export.ONNX_PATH)
    return folder


def test_onnxruntime_matches_pytorch_for_any_batch_and_length_with_padding(hub_folder):
    import onnxruntime

    model = SpanishMoEBertModel.from_pretrained(hub_folder).eval()
    session = onnxruntime.InferenceSession(str(hub_folder / onnx_export.ONNX_PATH))
    assert [i.name for i in session.get_inputs()] == list(onnx_export.INPUT_NAMES)
    assert [o.name for o in session.get_outputs()] == list(onnx_export.OUTPUT_NAMES)
    for seed, (batch, length) in enumerate([(1, 1), (2, 16), (5, 40), (7, 3)]):
        inputs = onnx_export.example_inputs(model.config.vocab_size, batch, length, seed)
        hidden, pooled = session.run(None, {k: v.numpy() for k, v in inputs.items()})
        with torch.no_grad():
            expected = model(**inputs)
        real = inputs["attention_mask"].bool().numpy()
        assert hidden.shape == (batch, length, model.config.hidden_size)
        assert np.abs(hidden - expected.last_hidden_state.numpy())[real].max() <= 1e-4
        assert np.abs(pooled - expected.pooler_output.numpy()).max() <= 1e-4


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_onnx_sentence_embeddings_match_sentence_transformers(hub_folder, pooling, tmp_path):
    from sentence_transformers import SentenceTransformer

    folder = hub_folder
    if pooling == "mean":
        # The pooling is applied outside the graph (1_Pooling/config.json) and the weights are the same: the encoder's
        # ONNX file is the same one, so it is copied rather than exported again.
        folder = export.export_model(hub_folder, tmp_path / "mean", pooling="mean", datasets=[])
        (folder / onnx_export.ONNX_PATH).parent.mkdir()
        shutil.copy(hub_folder / onnx_export.ONNX_PATH, folder / onnx_export.ONNX_PATH)
    torch_embeddings = SentenceTransformer(str(folder), trust_remote_code=True, device="cpu").encode(SENTENCES)
    onnx_embeddings = onnx_export.OnnxSentenceEncoder(folder).encode(SENTENCES, batch_size=2)
    assert onnx_embeddings.shape == torch_embeddings.shape == (len(SENTENCES), 64)
    assert np.abs(onnx_embeddings - torch_embeddings).max() <= 1e-4


def test_sentence_transformers_finds_the_onnx_file_instead_of_exporting_again(hub_folder):
    """Where Sentence Transformers' ONNX backend looks: it loads onnx/model.onnx from the folder as it is."""
    from sentence_transformers.backend.utils import backend_should_export

    should_export, kwargs = backend_should_export(hub_folder, True, {}, "model.onnx", "*.onnx", "ONNX")
    assert not should_export
    assert kwargs == {"subfolder": "onnx", "file_name": "model.onnx"}


def test_an_export_that_differs_from_pytorch_is_refused_and_leaves_no_file(hub_folder, tmp_path, monkeypatch):
    staged = []

    def export_as_before(model, args, path, **kwargs):  # the fixture's real file, as tracing the same model writes
        staged.append(Path(shutil.copy(hub_folder / onnx_export.ONNX_PATH, path)))

    monkeypatch.setattr(torch.onnx, "export", export_as_before)
    monkeypatch.setattr(onnx_export, "max_difference", lambda model, path: 0.5 if path.is_file() else 0.0)
    target = tmp_path / "onnx" / "model.onnx"
    model = SpanishMoEBertModel.from_pretrained(hub_folder)
    with pytest.raises(onnx_export.OnnxExportError, match="differs from PyTorch by 5.00e-01"):
        onnx_export.write_onnx(model, target)
    assert not target.exists() and list(target.parent.iterdir()) == []
    assert len(staged) == 1 and not staged[0].exists()  # the staged file was written, then removed


def test_export_model_cli_writes_the_onnx_file_and_a_plain_re_export_removes_it(hub_folder, tmp_path):
    import export_model

    folder = tmp_path / "exported"
    export_model.main([str(hub_folder), "--output_dir", str(folder), "--onnx", "--datasets"])
    assert (folder / onnx_export.ONNX_PATH).is_file()
    card = (folder / "README.md").read_text()
    assert "onnx/model.onnx" in card and "onnxruntime.InferenceSession" in card
    model = SpanishMoEBertModel.from_pretrained(folder)
    assert onnx_export.max_difference(model, folder / onnx_export.ONNX_PATH) <= 1e-4
    export_model.main([str(hub_folder), "--output_dir", str(folder), "--datasets"])  # weights may differ now
    assert not (folder / onnx_export.ONNX_PATH).exists()
    assert "onnxruntime.InferenceSession" not in (folder / "README.md").read_text()


def test_a_missing_onnx_package_is_named_before_any_work(hub_folder, tmp_path, monkeypatch):
    import export_model

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args, **kwargs: None if name == "onnxscript" else find_spec(name, *args, **kwargs),
    )
    folder = tmp_path / "exported"
    with pytest.raises(SystemExit, match=r'export_model: ONNX export needs onnxscript \(not installed\).*"\.\[onnx\]"'):
        export_model.main([str(hub_folder), "--output_dir", str(folder), "--onnx", "--datasets"])
    assert not folder.exists()

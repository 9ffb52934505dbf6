"""Loading a checkpoint is safe: no code from its weight files runs, and its remote code reaches for no network.

Weights come from `model.safetensors`. A folder that only has a pickled `pytorch_model.bin` is read by transformers
with `torch.load(weights_only=True)`, which refuses anything but tensors: a payload that would run code is refused.
"""

import builtins
import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForMaskedLM

import spanish_moe_bert.export as export
from configuration_spanish_moe_bert import SpanishMoEBertConfig
from modeling_spanish_moe_bert import SpanishMoEBertForMaskedLM
from spanish_moe_bert.corpus import iter_texts
from tokenization_spanish_moe_bert import SpanishSPMTokenizer

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "es_corpus_sample.txt"
TEXTS = ["¿Dónde está la biblioteca?", "La biblioteca abre a las nueve."]

LOADERS = {
    "project class": SpanishMoEBertForMaskedLM.from_pretrained,
    "remote code": lambda path: AutoModelForMaskedLM.from_pretrained(path, trust_remote_code=True),
}


class WritesMarker:
    """Unpickling this runs code: it writes `marker`, as a malicious checkpoint would do anything."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return builtins.exec, (f"import pathlib; pathlib.Path({str(self.marker)!r}).write_text('unpickled')",)


def tiny_model() -> SpanishMoEBertForMaskedLM:
    torch.manual_seed(0)
    return SpanishMoEBertForMaskedLM(SpanishMoEBertConfig.from_json_file(REPO / "configs" / "tiny.json"))


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    a_state, b_state = a.state_dict(), b.state_dict()
    return a_state.keys() == b_state.keys() and all(torch.equal(a_state[k], b_state[k]) for k in a_state)


@pytest.fixture
def malicious_bin(tmp_path) -> tuple[Path, Path]:
    """(a pytorch_model.bin holding the model's tensors and a code-running payload, the payload's marker file)."""
    marker = tmp_path / "payload-ran"
    path = tmp_path / "pytorch_model.bin"
    torch.save({**tiny_model().state_dict(), "payload": WritesMarker(marker)}, path)
    return path, marker


def test_the_payload_runs_code_when_unpickled(malicious_bin):
    """The control of the tests below: this file does run code if anything unpickles it."""
    path, marker = malicious_bin
    torch.load(path, weights_only=False)
    assert marker.read_text() == "unpickled"


@pytest.mark.parametrize("load", LOADERS.values(), ids=LOADERS.keys())
def test_a_malicious_pytorch_model_bin_alone_is_refused(load, malicious_bin, tmp_path):
    path, marker = malicious_bin
    folder = tmp_path / "checkpoint"
    tiny_model().save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    path.replace(folder / "pytorch_model.bin")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load(folder)
    assert not marker.exists()


@pytest.mark.parametrize("load", LOADERS.values(), ids=LOADERS.keys())
def test_safetensors_win_over_a_malicious_pytorch_model_bin(load, malicious_bin, tmp_path):
    path, marker = malicious_bin
    folder = tmp_path / "checkpoint"
    model = tiny_model()
    model.save_pretrained(folder)
    path.replace(folder / "pytorch_model.bin")
    assert same_weights(load(folder), model)
    assert not marker.exists()


@pytest.mark.parametrize("load", LOADERS.values(), ids=LOADERS.keys())
def test_a_plain_pytorch_model_bin_is_read_with_weights_only(load, tmp_path, monkeypatch):
    folder = tmp_path / "checkpoint"
    model = tiny_model()
    model.save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    weights_only = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        weights_only.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    assert same_weights(load(folder), model)
    assert weights_only and all(flag is True for flag in weights_only)


HUB_USER_WITHOUT_NETWORK = textwrap.dedent(
    """
    import json, socket, sys

    attempts = []

    def refuse(name):
        def blocked(*args, **kwargs):
            attempts.append(name)
            raise OSError(f"network blocked by the test: {name}")
        return blocked

    socket.socket.connect = refuse("socket.connect")
    socket.socket.connect_ex = refuse("socket.connect_ex")
    socket.create_connection = refuse("socket.create_connection")
    socket.getaddrinfo = refuse("socket.getaddrinfo")

    # The test venv has the project installed in editable mode; a Hub user has not: drop its import hook.
    sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
    import torch
    from huggingface_hub import model_info
    from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoTokenizer

    folder, texts = sys.argv[1], json.loads(sys.argv[2])
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        pooler = AutoModel.from_pretrained(folder, trust_remote_code=True)(**batch).pooler_output
        logits = AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True)(**batch).logits
    result = {
        "modules": [type(config).__module__, type(tokenizer).__module__],
        "input_ids": batch["input_ids"].tolist(),
        "pooler": pooler.tolist(),
        "logits": logits.tolist(),
        "attempts": list(attempts),
    }
    try:  # the guard's own check: the Hub client's connection is one it catches
        model_info("google-bert/bert-base-uncased")
    except Exception:
        pass
    result["probe_attempts"] = attempts[len(result["attempts"]):]
    print("RESULT" + json.dumps(result))
    """
)


def test_exported_folder_loads_and_runs_with_the_network_blocked(tmp_path):
    tokenizer = SpanishSPMTokenizer.train_new(iter_texts(SAMPLE, max_documents=2000), vocab_size=600)
    config = SpanishMoEBertConfig.from_json_file(REPO / "configs" / "tiny.json")
    config.vocab_size, config.pad_token_id = len(tokenizer), tokenizer.pad_token_id
    torch.manual_seed(0)
    model = SpanishMoEBertForMaskedLM(config).eval()
    model.save_pretrained(tmp_path / "checkpoint")
    tokenizer.save_pretrained(tmp_path / "checkpoint")
    folder = export.export_model(tmp_path / "checkpoint", tmp_path / "hub" / "spanish-moe-bert-tiny")

    script = tmp_path / "hub_user.py"
    script.write_text(HUB_USER_WITHOUT_NETWORK)
    (tmp_path / "cwd").mkdir()
    # Not offline: were any loading code to reach for the Hub, it would try, and the blocked socket would tell.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_HOME=str(tmp_path / "hf_home"), TOKENIZERS_PARALLELISM="false")
    completed = subprocess.run(
        [sys.executable, "-P", str(script), str(folder), json.dumps(TEXTS)],
        cwd=tmp_path / "cwd", env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.split("RESULT", 1)[1])
    assert result["attempts"] == []
    assert result["probe_attempts"]
    assert all(module.startswith("transformers_modules.") for module in result["modules"])  # the folder's code

    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    assert result["input_ids"] == batch["input_ids"].tolist()
    with torch.no_grad():
        logits = model(**batch).logits
        pooler = model.model(**batch).pooler_output
    assert torch.allclose(torch.tensor(result["pooler"]), pooler, atol=1e-5)
    assert torch.allclose(torch.tensor(result["logits"]), logits, atol=1e-4)

"""The encoder as ONNX: `onnx/model.onnx` in an exported Hub folder, where Sentence Transformers' ONNX backend,
Optimum and transformers.js look for it, and onnxruntime inference with the folder's own pooling.

    write_onnx(model, "outputs/mini-demo-hub/onnx/model.onnx")      # export_model(..., onnx=True) calls this
    embeddings = OnnxSentenceEncoder("outputs/mini-demo-hub").encode(["El perro corre.", "Hoy llueve."])

The graph takes `input_ids`, `attention_mask` and `token_type_ids` of any batch size and sequence length and
returns `last_hidden_state` and `pooler_output`. It is traced with `torch.onnx.export(dynamo=True)`; the MoE
layers export as a loop over experts whose token counts are data-dependent dimensions (`expert_path`'s
"per_expert", the same computation as eager CPU inference), so nothing is approximated. `write_onnx` checks
onnxruntime against PyTorch on padded batches of two shapes before it keeps the file.
"""

import importlib.util
import json
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)

ONNX_PATH = Path("onnx") / "model.onnx"
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAMES = ("last_hidden_state", "pooler_output")
TOLERANCE = 1e-4
REQUIRED_PACKAGES = ("onnx", "onnxscript", "onnxruntime")  # the exporter, its dynamo back end, the check


class OnnxExportError(RuntimeError):
    """The exported graph does not reproduce the PyTorch model."""


class MissingOnnxPackages(ImportError):
    """`--onnx` asked for, and the packages the export needs are not installed."""


def require_onnx_packages() -> None:
    """Raise MissingOnnxPackages naming what is missing, before any work is done rather than after it."""
    missing = [name for name in REQUIRED_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingOnnxPackages(
            f'ONNX export needs {", ".join(missing)} (not installed): pip install -e ".[onnx]" in this project, '
            f"or pip install {' '.join(REQUIRED_PACKAGES)}"
        )


class _Encoder(nn.Module):
    """The base model with tensors in and a tuple out, which is what an exported graph has."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return out.last_hidden_state, out.pooler_output


def example_inputs(vocab_size: int, batch: int, length: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A batch whose rows have different lengths (right padding), as a tokenizer makes them."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, vocab_size, (batch, length), generator=g)
    attention_mask = torch.ones_like(input_ids)
    for row in range(1, batch):
        attention_mask[row, max(1, length - 3 * row) :] = 0
    return {
        "input_ids": input_ids.masked_fill(attention_mask == 0, 0),
        "attention_mask": attention_mask,
        "token_type_ids": torch.zeros_like(input_ids),
    }


def write_onnx(model: nn.Module, path: str | Path, opset_version: int = 18) -> float:
    """Export the encoder of `model` (base or task model) to `path`; returns the largest difference to PyTorch on
    real (non-padding) positions, and raises `OnnxExportError` (leaving no file) if it is above `TOLERANCE`."""
    encoder = _Encoder(getattr(model, "model", model)).eval()
    batch, length = torch.export.Dim("batch"), torch.export.Dim("sequence")
    dynamic = {0: batch, 1: length}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".onnx-") as staging:
        staged = Path(staging) / path.name
        inputs = example_inputs(encoder.model.config.vocab_size, batch=2, length=16)
        with torch.no_grad():
            torch.onnx.export(
                encoder,
                tuple(inputs[name] for name in INPUT_NAMES),
                staged,
                input_names=list(INPUT_NAMES),
                output_names=list(OUTPUT_NAMES),
                dynamic_shapes=(dynamic, dynamic, dynamic),
                opset_version=opset_version,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
        difference = max_difference(encoder.model, staged)
        if difference > TOLERANCE:
            raise OnnxExportError(f"onnxruntime differs from PyTorch by {difference:.2e} (> {TOLERANCE}) on {path}")
        staged.replace(path)
    logger.info(f"wrote {path} (onnxruntime within {difference:.1e} of PyTorch)")
    return difference


def max_difference(model: nn.Module, onnx_file: str | Path, shapes=((3, 21), (1, 5))) -> float:
    """Largest |onnxruntime - PyTorch| over the real positions of `last_hidden_state` for padded batches of
    `shapes`, which differ from the export's example so that the dynamic axes are exercised."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    worst = 0.0
    for seed, (batch, length) in enumerate(shapes, start=1):
        inputs = example_inputs(model.config.vocab_size, batch, length, seed)
        (hidden, _) = session.run(list(OUTPUT_NAMES), {k: v.numpy() for k, v in inputs.items()})
        with torch.no_grad():
            expected = model(**inputs).last_hidden_state.numpy()
        real = inputs["attention_mask"].bool().numpy()
        worst = max(worst, float(np.abs(hidden - expected)[real].max()))
    return worst


class OnnxSentenceEncoder:
    """Sentence embeddings from an exported folder's `onnx/model.onnx` with onnxruntime: the folder's tokenizer,
    maximum length and pooling (`1_Pooling/config.json`), as `SentenceTransformer(folder).encode` computes them.

    Sentence Transformers' own `backend="onnx"` needs Optimum, whose ONNX Runtime package does not yet import
    with transformers 5 (huggingface/optimum-onnx#114); this is the same computation without it.
    """

    def __init__(self, folder: str | Path, providers: Sequence[str] = ("CPUExecutionProvider",)):
        import onnxruntime
        from transformers import AutoTokenizer

        folder = Path(folder)
        self.session = onnxruntime.InferenceSession(str(folder / ONNX_PATH), providers=list(providers))
        self.tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
        self.max_seq_length = json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"]
        pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
        self.mean_pooling = pooling.get("pooling_mode_mean_tokens", False)

    def encode(self, sentences: Sequence[str], batch_size: int = 32, normalize: bool = False) -> np.ndarray:
        """(len(sentences), hidden) float32 embeddings."""
        chunks = []
        for start in range(0, len(sentences), batch_size):
            batch = self.tokenizer(
                list(sentences[start : start + batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_seq_length,
                return_tensors="np",
            )
            feeds = {name: batch[name].astype(np.int64) for name in INPUT_NAMES}
            hidden, pooled = self.session.run(list(OUTPUT_NAMES), feeds)
            if self.mean_pooling:
                mask = feeds["attention_mask"][..., None].astype(hidden.dtype)
                pooled = (hidden * mask).sum(1) / np.clip(mask.sum(1), 1e-9, None)
            chunks.append(pooled)
        embeddings = np.concatenate(chunks).astype(np.float32)
        if normalize:
            embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True).clip(1e-12)
        return embeddings

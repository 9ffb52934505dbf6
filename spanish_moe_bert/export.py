"""Make a trained checkpoint a complete Hugging Face Hub model repository, and push it.

    export_model("outputs/mini-demo")                                  # complete the folder in place
    export_model("outputs/mini-demo", "outputs/mini-demo-hub")         # or write a clean copy elsewhere
    export_model(..., push_to_hub=True, hub_model_id="user/spanish-moe-bert-mini")
    export_model("outputs/mini-demo", "outputs/mini-embed", sentence_stage=SentenceStage(...))  # after contrastive

run_mlm.py, export_model.py and train_sentence_embeddings.py all export through `export_model`.

The folder holds what each kind of Hub user loads, all with `trust_remote_code=True`:
- 🤗 Transformers: `config.json` (`auto_map` for AutoConfig and every AutoModel class), `model.safetensors`,
  the tokenizer files (their `auto_map`) and the three code files;
- Sentence Transformers: `modules.json`, `sentence_bert_config.json`, `config_sentence_transformers.json`
  (cosine similarity) and `1_Pooling/config.json` ([CLS] pooling = the model's `pooler_output`, or mean);
  after a sparse contrastive stage the SparseEncoder layout instead (`1_SpladePooling/` and its code file), or with
  idf queries a Router (`router_config.json`, `query_0_SparseStaticEmbedding/`, the root model for documents,
  `document_1_SpladePooling/`);
- people: `README.md`, a model card from `hub_card/` with Hub metadata (widget, model-index with this
  checkpoint's held-out MLM metrics, and a contrastive stage's retrieval metrics), the training-loss curve and an
  expert-load heatmap.

Everything is written to a staging folder first and then moved into place file by file, so a failed export
leaves an existing folder as it was.
"""

import importlib
import inspect
import json
import logging
import math
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import torch
from huggingface_hub import EvalResult, ModelCard, ModelCardData, create_repo, upload_folder
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, WEIGHTS_INDEX_NAME, WEIGHTS_NAME

from configuration_spanish_moe_bert import AUTO_MAP, SpanishMoEBertConfig
from modeling_spanish_moe_bert import SpanishMoEBertForMaskedLM
from spanish_moe_bert.callbacks import recorded_mlm_probability
from spanish_moe_bert.corpus import DEFAULT_DATASET
from spanish_moe_bert.data import MLM_PROBABILITY, MaskingCollator, local_documents, masked_eval_set, tokenize_stream
from spanish_moe_bert.onnx import ONNX_PATH, require_onnx_packages, write_onnx
from spanish_moe_bert.training import perplexity
from tokenization_spanish_moe_bert import SpanishSPMTokenizer

logger = logging.getLogger(__name__)

CARD_TEMPLATE = Path(__file__).resolve().parents[1] / "hub_card" / "model_card_template.md"
DEFAULT_DATASETS = (DEFAULT_DATASET,)  # what run_mlm.py streams when given no --train_file
POOLING_MODES = ("cls", "mean")
LOSS_CURVE_FILE = "training_loss.png"
EXPERT_LOAD_FILE = "expert_load.png"

# Widget sentences; "{mask}" becomes the tokenizer's mask token.
WIDGET_SENTENCES = (
    "Madrid es la {mask} de España.",
    "En el principio creó Dios los cielos y la {mask}.",
    "Para guardar el documento, haga clic en el menú {mask}.",
)
# The widget of a folder after the contrastive stage: sentence similarity, not the MLM head's fill-mask.
SIMILARITY_WIDGET = {
    "source_sentence": "¿Cómo inserto una tabla en el documento?",
    "sentences": [
        "Para insertar una tabla, abra el menú Insertar y pulse Tabla.",
        "Seleccione las celdas que desea ordenar y elija Datos - Ordenar.",
        "Y dijo Dios: Sea la luz; y fué la luz.",
    ],
}
# A few sentences for the expert-load heatmap: Bible prose, software help, everyday Spanish.
EXPERT_LOAD_TEXTS = (
    "Y dijo Dios: Sea la luz; y fué la luz. Y vió Dios que la luz era buena.",
    "Seleccione las celdas que desea ordenar y elija Datos - Ordenar en la barra de menús.",
    "El tren de las ocho llega con retraso porque ha nevado toda la noche en la sierra.",
    "Los niños juegan en el parque mientras sus padres conversan en un banco a la sombra.",
    "La presidenta del gobierno anunció ayer un nuevo plan para la vivienda.",
    "Para insertar una tabla, abra el menú Insertar y pulse Tabla.",
)
# Files the Trainer leaves in output_dir that do not belong in a model repository.
UPLOAD_IGNORE_PATTERNS = ["checkpoint-*", "checkpoint-*/**", "runs/**", "*.tmp", ".staging-*", ".staging-*/**"]
# Weights in the layouts other than the one `model.safetensors` an export writes: PyTorch pickles, shards, indexes.
OTHER_WEIGHT_FILES = (
    "pytorch_model*.bin",
    "pytorch_model.bin.index.json",
    "model-*-of-*.safetensors",
    "model.safetensors.index.json",
)
# What one export writes and another may not (the Sentence Transformers layouts of a dense, SPLADE or inference-free
# folder, ONNX, the plots; `document_0_MLMTransformer` is where exports before 61c2a5b copied the weights a second
# time). An export removes those it did not write, here and, when pushing, in the Hub repository.
LAYOUT_PATHS = (
    "1_Pooling",
    "1_SpladePooling",
    "router_config.json",
    "query_0_SparseStaticEmbedding",
    "document_0_MLMTransformer",
    "document_1_SpladePooling",
    "sparse_pooling_spanish_moe_bert.py",
    ONNX_PATH.as_posix(),
    LOSS_CURVE_FILE,
    EXPERT_LOAD_FILE,
)


class HubPushError(RuntimeError):
    """The upload to the Hub failed; the local folder is complete and unchanged."""


@dataclass
class SentenceStage:
    """What a contrastive stage after pre-training (train_sentence_embeddings.py) exports: sentence embeddings, or
    with `sparse_pooling` a SPLADE retriever."""

    # The trained SpanishMoEBertModel (the MLM head stays the checkpoint's); with `sparse_pooling`, the whole trained
    # SpanishMoEBertForMaskedLM, whose head gives the word weights.
    encoder: torch.nn.Module
    prompts: dict[str, str]  # Sentence Transformers prompts, e.g. {"query": "consulta: "}
    max_seq_length: int
    description: str  # markdown for the card's Training section
    trainer_state: dict  # the stage's TrainerState as a dict: the card's loss curve and training table
    results: str  # markdown for the card: retrieval before and after the stage
    eval_results: list[EvalResult]  # the retrieval metrics, for the card's model-index
    sparse_pooling: torch.nn.Module | None = None  # sparse_pooling_spanish_moe_bert.PMISpladePooling
    # An inference-free sparse retriever's query encoder (a SparseStaticEmbedding of idf weights), else None.
    query_idf: torch.nn.Module | None = None


# ----------------------------------------------------------------------------------------------------------------
# Measurements for the card
# ----------------------------------------------------------------------------------------------------------------


def expert_load(model: SpanishMoEBertForMaskedLM, tokenizer, texts: Sequence[str]) -> torch.Tensor:
    """[num_moe_layers, num_experts] share of routed tokens per expert on `texts` (rows sum to 1)."""
    inputs = tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        return model(**inputs).expert_load.float()


def evaluate_mlm(
    model: SpanishMoEBertForMaskedLM,
    tokenizer,
    eval_files: Sequence[str],
    max_seq_length: int = 128,
    max_samples: int = 128,
    mlm_probability: float = MLM_PROBABILITY,
    seed: int = 42,
    batch_size: int = 16,
) -> dict[str, float]:
    """Held-out MLM loss, perplexity and masked-token accuracy on local files, masked as run_mlm.py masks them."""
    blocks = tokenize_stream(local_documents(list(eval_files)), tokenizer, max_seq_length)
    examples = masked_eval_set(blocks, tokenizer, mlm_probability, max_samples, seed)
    collate = MaskingCollator.for_tokenizer(tokenizer, mlm_probability)
    nll_sum, correct, masked = 0.0, 0, 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            batch = collate([examples[i] for i in range(start, min(start + batch_size, len(examples)))])
            labels = batch.pop("labels")
            logits = model(**batch).logits.float()
            keep = labels != -100
            nll_sum += torch.nn.functional.cross_entropy(logits[keep], labels[keep], reduction="sum").item()
            correct += (logits[keep].argmax(-1) == labels[keep]).sum().item()
            masked += keep.sum().item()
    mlm_loss = nll_sum / masked
    return {"eval_mlm_loss": mlm_loss, "eval_perplexity": perplexity(mlm_loss), "eval_accuracy": correct / masked}


# ----------------------------------------------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------------------------------------------


def plot_loss_curve(trainer_state: dict | None, path: Path, loss_name: str = "MLM") -> bool:
    """Training (and evaluation) loss against step from the Trainer's log_history; False if there is none."""
    history = (trainer_state or {}).get("log_history", [])
    train = [(e["step"], e["loss"]) for e in history if "loss" in e]
    evals = [(e["step"], e["eval_mlm_loss"]) for e in history if "eval_mlm_loss" in e]
    if not train:
        return False
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 3.5))
    axes.plot(*zip(*train), label=f"training loss ({loss_name} + router)")
    if evals:
        axes.plot(*zip(*evals), "o-", label="held-out MLM loss")
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def plot_expert_load(load: torch.Tensor, moe_layers: list[int], path: Path) -> None:
    """Heatmap of expert load, one row per MoE layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    num_layers, num_experts = load.shape
    figure, axes = plt.subplots(figsize=(1.2 + 0.5 * num_experts, 1.0 + 0.4 * num_layers))
    image = axes.imshow(load.numpy(), cmap="viridis", aspect="auto", vmin=0)
    axes.set_xticks(range(num_experts))
    axes.set_yticks(range(num_layers), [str(layer) for layer in moe_layers])
    axes.set_xlabel("expert")
    axes.set_ylabel("layer")
    axes.set_title("share of routed tokens")
    figure.colorbar(image, ax=axes)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


# ----------------------------------------------------------------------------------------------------------------
# Folder pieces
# ----------------------------------------------------------------------------------------------------------------


def sentence_transformers_versions() -> dict[str, str]:
    import sentence_transformers
    import transformers

    return {
        "sentence_transformers": sentence_transformers.__version__,
        "transformers": transformers.__version__,
        "pytorch": torch.__version__,
    }


def write_json_files(folder: Path, files: dict[str, object]) -> None:
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps(content, indent=2) + "\n")


def write_sentence_transformers_files(
    folder: Path, hidden_size: int, max_seq_length: int, pooling: str, prompts: dict[str, str]
) -> None:
    """The Sentence Transformers layout: this folder as the Transformer module, then a Pooling module.

    Written in the long-standing format (module types `sentence_transformers.models.*`, `pooling_mode_*` flags)
    that every Sentence Transformers release since 2.x reads."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    pooling_config = {
        "word_embedding_dimension": hidden_size,
        "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": False,
        "include_prompt": True,
    }
    write_json_files(
        folder,
        {
            "modules.json": modules,
            "sentence_bert_config.json": {"max_seq_length": max_seq_length, "do_lower_case": False},
            "config_sentence_transformers.json": {
                "__version__": sentence_transformers_versions(),
                "prompts": prompts,
                "default_prompt_name": None,
                "similarity_fn_name": "cosine",
            },
            "1_Pooling/config.json": pooling_config,
        },
    )


def write_sparse_encoder_files(
    folder: Path,
    max_seq_length: int,
    pooling: torch.nn.Module,
    prompts: dict[str, str],
    query_idf: torch.nn.Module | None = None,
) -> None:
    """The SparseEncoder layout of a SPLADE retriever: this folder as the masked-LM Transformer module, then the
    PMISpladePooling module (its config and log-prior weights, and its code file, which it loads as remote code).

    With `query_idf` (a SparseStaticEmbedding) the retriever is inference-free on the query side: one Router module
    sends queries to `query_0_SparseStaticEmbedding/` (the idf weights) and documents through this folder's own
    model (module path `.`: the Router loads it from the root, where `AutoModel` does, so the weights are stored once;
    on the Hub a `./` path resolves to the root as every root-level module's does) and `document_1_SpladePooling/`.

    Module types in the Sentence Transformers 5 format (`sentence_transformers.sparse_encoder.models.*`), which
    release 6 still reads."""
    code = Path(inspect.getfile(type(pooling)))
    mlm_type = "sentence_transformers.sparse_encoder.models.MLMTransformer"
    static_type = "sentence_transformers.sparse_encoder.models.SparseStaticEmbedding"
    pooling_type = f"{code.stem}.{type(pooling).__name__}"
    sentence_bert_config = {"max_seq_length": max_seq_length, "do_lower_case": False}
    if query_idf is None:
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": mlm_type},
            {"idx": 1, "name": "1", "path": "1_SpladePooling", "type": pooling_type},
        ]
        pooling_dir = folder / "1_SpladePooling"
    else:
        routes = {
            "query": {"query_0_SparseStaticEmbedding": static_type},
            "document": {".": mlm_type, "document_1_SpladePooling": pooling_type},
        }
        write_query_idf(folder / "query_0_SparseStaticEmbedding", query_idf)
        router_config = {
            "types": {name: kind for route in routes.values() for name, kind in route.items()},
            "structure": {route: list(names) for route, names in routes.items()},
            "parameters": {"default_route": "document", "allow_empty_key": True},
        }
        write_json_files(folder, {"router_config.json": router_config})
        modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Router"}]
        pooling_dir = folder / "document_1_SpladePooling"
    write_json_files(
        folder,
        {
            "modules.json": modules,
            "sentence_bert_config.json": sentence_bert_config,
            "config_sentence_transformers.json": {
                "model_type": "SparseEncoder",
                "__version__": sentence_transformers_versions(),
                "prompts": prompts,
                "default_prompt_name": None,
                "similarity_fn_name": "dot",
            },
        },
    )
    pooling_dir.mkdir(exist_ok=True)
    pooling.save(str(pooling_dir))
    shutil.copyfile(code, folder / code.name)


def write_query_idf(folder: Path, query_idf: torch.nn.Module) -> None:
    """Save an idf query encoder (SparseStaticEmbedding) with its tokenizer as a plain fast tokenizer: the module
    loads its tokenizer without `trust_remote_code`, and our tokenizer.json alone gives the same pieces."""
    from sentence_transformers.sparse_encoder.modules import SparseStaticEmbedding
    from transformers import PreTrainedTokenizerFast

    tokenizer = query_idf.tokenizer
    plain = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer.backend_tokenizer,
        model_max_length=tokenizer.model_max_length,
        **tokenizer.special_tokens_map,
    )
    module = SparseStaticEmbedding(plain, weight=query_idf.weight.detach().clone(), frozen=query_idf.frozen)
    module.save(str(folder))
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"  # transformers 4 knows this name too (5: TokenizersBackend)
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def format_count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}K"


def router_training_text(config) -> str:
    """How the routers were balanced, in the card's words: a per-expert bias and/or the Switch loss, and the z-loss."""
    parts = []
    if config.router_bias_update_rate > 0:
        parts.append(f"experts balanced without an auxiliary loss (a per-expert selection bias moved by "
                     f"{config.router_bias_update_rate:g} per step, as in DeepSeek-V3)")  # fmt: skip
    if config.router_aux_loss_coef > 0:
        parts.append(f"the router's load-balancing loss (coefficient {config.router_aux_loss_coef:g})")
    parts.append(f"the router z-loss (coefficient {config.router_z_loss_coef:g})")
    return ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]


def write_model_card(
    folder: Path,
    config: SpanishMoEBertConfig,
    tokenizer,
    repo_id: str,
    eval_results: dict | None,
    eval_source: str,
    datasets: Sequence[str],
    params: tuple[int, int],
    pooling: str,
    loss_curve: bool,
    trainer_state: dict | None,
    mlm_probability: float,
    sentence_stage: SentenceStage | None = None,
    onnx: bool = False,
    base_model: str | None = None,
) -> None:
    """README.md from hub_card/model_card_template.md with ModelCardData metadata."""
    mask = tokenizer.mask_token
    case = "uncased: text is lower-cased" if getattr(tokenizer, "do_lower_case", False) else "cased"
    fill_mask_widget = [{"text": sentence.format(mask=mask)} for sentence in WIDGET_SENTENCES]
    eval_rows, model_index = [], []
    if eval_results:
        metrics = {
            "MLM loss": ("loss", eval_results.get("eval_mlm_loss")),
            "perplexity": ("perplexity", eval_results.get("eval_perplexity")),
            "masked-token accuracy": ("accuracy", eval_results.get("eval_accuracy")),
        }
        for label, (metric_type, value) in metrics.items():
            if value is None or not math.isfinite(value):
                continue
            eval_rows.append((label, f"{value:.4f}"))
            model_index.append(
                EvalResult(
                    task_type="fill-mask",
                    task_name="Masked language modelling",
                    dataset_type="text",
                    dataset_name=f"held-out Spanish text ({eval_source})",
                    metric_type=metric_type,
                    metric_name=f"held-out {label}",
                    metric_value=round(float(value), 4),
                )
            )
    if sentence_stage:
        model_index += sentence_stage.eval_results
    sparse = sentence_stage is not None and sentence_stage.sparse_pooling is not None
    # What the folder is for: after a contrastive stage the MLM head is one that stage left behind (or, in a sparse
    # retriever, one it trained to weigh words); the Hub has no widget for sparse vectors.
    if sparse:
        pipeline_tag, tags, widget = "feature-extraction", ["sparse-encoder", "sparse", "splade"], None
    elif sentence_stage:
        pipeline_tag, tags, widget = "sentence-similarity", ["feature-extraction"], [SIMILARITY_WIDGET]
    else:
        pipeline_tag, tags, widget = "fill-mask", ["feature-extraction"], fill_mask_widget
    card_data = ModelCardData(
        language="es",
        license="apache-2.0",
        library_name="transformers",
        pipeline_tag=pipeline_tag,
        tags=["sentence-transformers", *tags, "mixture-of-experts", "custom_code"],
        datasets=list(datasets) or None,
        base_model=base_model,
        model_name=repo_id,
        eval_results=model_index or None,
        widget=widget,
    )
    total, active = params
    mlm_percent = f"{100 * mlm_probability:g}"
    moe_layers = sum(t == "sparse" for t in config.mlp_layer_types)
    architecture_rows = [
        (
            "parameters (total / active per token)",
            f"{format_count(total)} / {format_count(active)} ({total:,} / {active:,})",
        ),
        ("layers (MoE layers)", f"{config.num_hidden_layers} ({moe_layers})"),
        ("hidden size", config.hidden_size),
        ("attention heads (key/value heads)", f"{config.num_attention_heads} ({config.num_key_value_heads})"),
        ("attention per layer", ", ".join(config.attention_types)),
        ("experts per MoE layer (active per token)", f"{config.num_experts} ({config.num_experts_per_tok})"),
        ("expert / dense feed-forward width", f"{config.moe_intermediate_size} / {config.intermediate_size}"),
        ("normalization", config.norm_type),
        ("position encoding", f"rotary (θ = {config.rope_theta:g})"),
        ("vocabulary", f"{config.vocab_size:,} ({case}, SentencePiece-compatible, mask token `{mask}`)"),
        ("max sequence length", config.max_position_embeddings),
    ]
    training_rows = []
    if trainer_state:
        losses = [e["loss"] for e in trainer_state.get("log_history", []) if "loss" in e]
        training_rows = [
            ("optimizer steps", trainer_state.get("global_step")),
            ("batch size per device", trainer_state.get("train_batch_size")),
            ("final logged training loss", f"{losses[-1]:.4f}" if losses else "n/a"),
        ]
    data_text = ", ".join(f"[{d}](https://huggingface.co/datasets/{d})" for d in datasets) or "local Spanish text"
    start = f"Continued from [{base_model}](https://huggingface.co/{base_model}). " if base_model else ""
    card = ModelCard.from_template(
        card_data,
        template_path=str(CARD_TEMPLATE),
        model_name=repo_id.split("/")[-1],
        repo_id=repo_id,
        example_sentence=fill_mask_widget[0]["text"],
        total_params=format_count(total),
        active_params=format_count(active),
        experts_per_token=config.num_experts_per_tok,
        num_experts=config.num_experts,
        hidden_size=config.hidden_size,
        pooling="[CLS]" if pooling == "cls" else "mean",
        eval_rows=eval_rows,
        eval_source=eval_source,
        mlm_percent=mlm_percent,
        architecture_rows=architecture_rows,
        expert_load_plot=EXPERT_LOAD_FILE,
        uniform_load=f"{1 / config.num_experts:.3f}",
        training_text=(
            f"{start}Masked language modelling ({mlm_percent}% of tokens), {router_training_text(config)}, "
            f"with the Hugging Face Trainer (`run_mlm.py`). Training data: {data_text}."
        ),
        loss_curve_plot=LOSS_CURVE_FILE if loss_curve else None,
        training_rows=training_rows,
        sentence_stage=sentence_stage.description if sentence_stage else None,
        sparse=sparse,
        inference_free=sparse and sentence_stage.query_idf is not None,
        pmi_threshold=sentence_stage.sparse_pooling.threshold if sparse else None,
        sentence_results=sentence_stage.results if sentence_stage else None,
        onnx_file=ONNX_PATH.as_posix() if onnx else None,
        max_length=min(tokenizer.model_max_length, config.max_position_embeddings),
        year=date.today().year,
    )
    card.save(folder / "README.md")


# ----------------------------------------------------------------------------------------------------------------
# Export and push
# ----------------------------------------------------------------------------------------------------------------


def export_model(
    model_dir: str | Path,
    output_dir: str | Path | None = None,
    *,
    eval_results: dict | None = None,
    eval_files: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    pooling: str = "cls",
    mlm_probability: float | None = None,
    sentence_stage: SentenceStage | None = None,
    onnx: bool = False,
    base_model: str | None = None,
    push_to_hub: bool = False,
    hub_model_id: str | None = None,
    private: bool = False,
) -> Path:
    """Write the Hub repository for the checkpoint in `model_dir` into `output_dir` (default: `model_dir`).

    Held-out metrics for the card come from `eval_results` (run_mlm.py's `eval_*` metrics), else from
    `eval_files` (measured here), else from `model_dir/eval_results.json` if the Trainer wrote one.
    `datasets` (Hub ids for the card) default to those named by a card already in `model_dir` (run_mlm.py
    writes one), else DEFAULT_DATASETS. `base_model`, the Hub model that training started from (the card's
    `base_model` metadata, which links the two on the Hub), defaults to the one a card in `model_dir` names.
    `mlm_probability`, the masking rate of pre-training and of the card's MLM metrics, defaults to the one
    run_mlm.py records in `model_dir/trainer_state.json`, else MLM_PROBABILITY.
    A `sentence_stage` exports that stage's encoder under the checkpoint's MLM head (so the folder still loads as
    every Auto class), with its prompts and sequence length; its card is that stage's (training table, loss curve,
    retrieval results), without the checkpoint's MLM metrics, which the stage made stale.
    `onnx` also writes the encoder as `onnx/model.onnx` (`spanish_moe_bert.onnx.write_onnx`, checked against PyTorch);
    without it an `onnx/model.onnx` left by an earlier export is removed, since it no longer matches the weights;
    so is every other LAYOUT_PATHS entry an earlier export left and this one does not write (another pooling layout).
    Returns the folder; with `push_to_hub` also uploads it to `hub_model_id` (raises HubPushError on failure).
    """
    model_dir = Path(model_dir)
    output_dir = Path(output_dir) if output_dir is not None else model_dir
    if pooling not in POOLING_MODES:
        raise ValueError(f"pooling must be one of {POOLING_MODES}, got {pooling!r}")
    if push_to_hub and not hub_model_id:
        raise ValueError("push_to_hub needs hub_model_id, e.g. 'your-name/spanish-moe-bert-mini'")
    if onnx:
        require_onnx_packages()
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"{model_dir} holds no config.json: give a folder saved by run_mlm.py or save_pretrained"
        )

    saved = saved_card_data(model_dir)
    if datasets is None:
        datasets = DEFAULT_DATASETS if saved is None else saved.datasets or []
    if base_model is None and saved is not None:
        base_model = saved.base_model
    read = weight_files(model_dir)
    model = SpanishMoEBertForMaskedLM.from_pretrained(model_dir).eval()
    tokenizer = SpanishSPMTokenizer.from_pretrained(model_dir)
    config = model.config
    max_seq_length = min(tokenizer.model_max_length, config.max_position_embeddings)
    prompts = {}
    trainer_state_path = model_dir / "trainer_state.json"
    trainer_state = json.loads(trainer_state_path.read_text()) if trainer_state_path.is_file() else None
    if mlm_probability is None:
        mlm_probability = recorded_mlm_probability(trainer_state) or MLM_PROBABILITY

    eval_source = "the run's validation split"
    if not eval_results and eval_files:
        eval_results = evaluate_mlm(model, tokenizer, eval_files, mlm_probability=mlm_probability)
        eval_source = ", ".join(Path(f).name for f in eval_files)
    elif not eval_results and not sentence_stage and (model_dir / "eval_results.json").is_file():
        eval_results = json.loads((model_dir / "eval_results.json").read_text())
    sparse_pooling = sentence_stage.sparse_pooling if sentence_stage else None
    if sentence_stage:
        (model if sparse_pooling is not None else model.model).load_state_dict(sentence_stage.encoder.state_dict())
        trainer_state = sentence_stage.trainer_state
        max_seq_length, prompts = sentence_stage.max_seq_length, sentence_stage.prompts

    output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".staging-", dir=output_dir) as staging_name:
        staging = Path(staging_name)
        # A checkpoint saved by an older version may map fewer Auto classes than a Hub user loads it with.
        config.auto_map = dict(AUTO_MAP)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if sparse_pooling is not None:
            write_sparse_encoder_files(staging, max_seq_length, sparse_pooling, prompts, sentence_stage.query_idf)
        else:
            write_sentence_transformers_files(staging, config.hidden_size, max_seq_length, pooling, prompts)
        moe_layers = [i for i, kind in enumerate(config.mlp_layer_types) if kind == "sparse"]
        if moe_layers:
            plot_expert_load(expert_load(model, tokenizer, EXPERT_LOAD_TEXTS), moe_layers, staging / EXPERT_LOAD_FILE)
        loss_name = "contrastive" if sentence_stage else "MLM"
        loss_curve = plot_loss_curve(trainer_state, staging / LOSS_CURVE_FILE, loss_name)
        write_model_card(
            staging,
            config,
            tokenizer,
            repo_id=hub_model_id or output_dir.resolve().name,
            eval_results=eval_results,
            eval_source=eval_source,
            datasets=datasets,
            params=(model.num_parameters(), model.num_active_parameters()),
            pooling=pooling,
            loss_curve=loss_curve,
            trainer_state=trainer_state,
            mlm_probability=mlm_probability,
            sentence_stage=sentence_stage,
            onnx=onnx,
            base_model=base_model,
        )
        if onnx:
            write_onnx(model, staging / ONNX_PATH)
        written = {path.relative_to(staging).as_posix() for path in staging.rglob("*")}
        move_into(staging, output_dir)
    remove_stale_layout(output_dir, written)
    in_place = output_dir.resolve() == model_dir.resolve()
    remove_superseded_weights(output_dir, read if in_place else [], written)
    logger.info(f"exported a Hub-ready model folder to {output_dir}")

    if push_to_hub:
        push_folder(output_dir, hub_model_id, private=private)
    return output_dir


def saved_card_data(folder: str | Path) -> ModelCardData | None:
    """The metadata of the model card in `folder` (its datasets, base_model, ...), or None where it has no card."""
    card = Path(folder) / "README.md"
    return ModelCard.load(card).data if card.is_file() else None


def move_into(staging: Path, output_dir: Path) -> None:
    """Move every staged file over its counterpart in output_dir (os.replace: each file is swapped whole)."""
    for source in sorted(p for p in staging.rglob("*") if p.is_file()):
        target = output_dir / source.relative_to(staging)
        target.parent.mkdir(parents=True, exist_ok=True)
        source.replace(target)


def remove_stale_layout(output_dir: Path, written: set[str]) -> None:
    """Remove the LAYOUT_PATHS an earlier export left in output_dir that this one did not write (`written`: the
    paths it did, relative to output_dir), so that no module, ONNX file or plot of other weights stays beside them."""
    for name in LAYOUT_PATHS:
        stale = output_dir / name
        if name in written or not (stale.is_file() or stale.is_dir()):
            continue
        logger.warning(f"removing {stale}: an earlier export wrote it, this one does not (it would not match)")
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
        if stale.parent != output_dir and not any(stale.parent.iterdir()):
            stale.parent.rmdir()  # onnx/ once its model.onnx is gone


def weight_files(folder: Path) -> list[Path]:
    """The weight files `from_pretrained` reads in `folder`: model.safetensors, else the safetensors shards and their
    index, else pytorch_model.bin, else its shards and their index."""
    for single, index in ((SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME), (WEIGHTS_NAME, WEIGHTS_INDEX_NAME)):
        if (folder / single).is_file():
            return [folder / single]
        if (folder / index).is_file():
            shards = sorted(set(json.loads((folder / index).read_text())["weight_map"].values()))
            return [folder / index, *(folder / shard for shard in shards)]
    return []


def remove_superseded_weights(output_dir: Path, read: list[Path], written: set[str]) -> None:
    """Remove the weight files an in-place export read (`read`) and wrote again as model.safetensors; warn about
    weights of other layouts in output_dir, which stay (they are not this model's) and which a push leaves out."""
    for name in (path.name for path in read):  # files beside config.json, as from_pretrained reads them
        if name not in written:
            logger.info(f"removing {output_dir / name}: its weights are in model.safetensors now")
            (output_dir / name).unlink()
    others = sorted(path.name for pattern in OTHER_WEIGHT_FILES for path in output_dir.glob(pattern))
    if others:
        logger.warning(
            f"{output_dir} also holds {', '.join(others)}: other weights than the exported model.safetensors, left "
            "in place and left out of a push"
        )


def network_errors() -> tuple[type[Exception], ...]:
    """What a failed upload raises: OSError covers huggingface_hub's offline-mode and HTTP errors (authentication,
    permissions); the transport errors of its HTTP client (httpx or httpx2, by version) cover an unreachable Hub."""
    errors = [OSError]
    for client in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(client).TransportError)
        except ImportError:
            continue
    return tuple(errors)


def push_folder(folder: str | Path, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Create `repo_id` on the Hub if needed and upload `folder` (without Trainer checkpoints); returns its URL."""
    folder = Path(folder)
    other_weights = list(OTHER_WEIGHT_FILES) if (folder / SAFE_WEIGHTS_NAME).is_file() else []
    try:
        create_repo(repo_id, private=private, exist_ok=True, token=token)
        upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            commit_message="Upload Spanish MoE-BERT",
            ignore_patterns=[*UPLOAD_IGNORE_PATTERNS, *other_weights],
            # what an earlier push of another layout left in the repository; files uploaded now are kept
            delete_patterns=[*(pattern for name in LAYOUT_PATHS for pattern in (name, f"{name}/**")), *other_weights],
            token=token,
        )
    except network_errors() as error:
        raise HubPushError(
            f"could not push {folder} to the Hub repo {repo_id!r}: {type(error).__name__}: {error}. "
            f"The exported folder {folder} is complete and unchanged; push it later with "
            f"`python export_model.py {folder} --push_to_hub --hub_model_id {repo_id}` "
            f"once online and logged in (`hf auth login`)."
        ) from error
    url = f"https://huggingface.co/{repo_id}"
    logger.info(f"pushed {folder} to {url}")
    return url

"""Contrastive sentence-embedding stage: an exported MLM checkpoint -> a Sentence Transformers model.

Pairs come from the Spanish corpus without labels (independent cropping, neighbouring paragraphs,
heading -> body; see spanish_moe_bert/pairs.py), optionally plus a labelled JSONL file, each with a
BM25-mined hard negative. Training uses SentenceTransformerTrainer with (Cached)MultipleNegativesRankingLoss;
the MoE router losses (load balancing + z-loss) are added to it so the experts stay balanced
(spanish_moe_bert/router_loss.py). The dev-set documents (data/retrieval_dev) are excluded from the pairs,
and the model is evaluated on them before and after training, next to BM25 and all-MiniLM-L6-v2.

    python train_sentence_embeddings.py --model_name_or_path outputs/mini --output_dir outputs/mini-embed \
        --train_files ../shared/data/es_corpus.jsonl.gz --max_steps 300

Every model it loads is a local folder; without network, set HF_HUB_OFFLINE=1 (scripts/test.sh and
scripts/quickstart.sh do) so that the libraries do not try the Hub first.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from sentence_transformers.sentence_transformer import losses
from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
from torch import nn
from transformers import HfArgumentParser

from spanish_moe_bert.corpus import iter_corpus
from spanish_moe_bert.export import SentenceStage, card_datasets, export_model
from spanish_moe_bert.pairs import (
    HeldOutParagraphs,
    PairConfig,
    build_pairs,
    mine_bm25_negatives,
    read_labelled_pairs,
)
from spanish_moe_bert.retrieval_eval import (
    DATASET_NAME,
    DEV_DIR,
    EmbeddingSystem,
    compare,
    default_systems,
    eval_results_for_card,
    evaluate_system,
    load_retrieval,
    markdown_table,
)
from spanish_moe_bert.router_loss import RouterLossWrapper

logger = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parent
AFTER = "ours after (contrastive)"


@dataclass
class EmbeddingArguments:
    model_name_or_path: str = field(metadata={"help": "Exported MLM checkpoint folder (run_mlm.py's output_dir)."})
    train_files: list[str] = field(
        default_factory=lambda: [str(REPO / "data" / "es_corpus_sample.txt")],
        metadata={"help": "Corpus files (.txt one paragraph per line, .jsonl/.jsonl.gz documents with 'text')."},
    )
    max_documents: int | None = field(default=None, metadata={"help": "Read at most this many documents."})
    pair_kinds: list[str] = field(
        default_factory=lambda: ["crop", "neighbours", "heading"],
        metadata={"help": "Unsupervised pair builders: crop, neighbours, heading, section."},
    )
    crops_per_document: int = field(
        default=PairConfig.crops_per_document, metadata={"help": "Crop pairs per document."}
    )
    neighbours_per_document: int = field(
        default=PairConfig.neighbours_per_document, metadata={"help": "Most neighbours pairs per document."}
    )
    sections_per_document: int = field(
        default=PairConfig.sections_per_document, metadata={"help": "Most section pairs per document."}
    )
    labelled_pairs: str | None = field(
        default=None, metadata={"help": 'Extra JSONL {"anchor","positive"[,"negative"]}.'}
    )
    max_pairs: int | None = field(default=None, metadata={"help": "Train on at most this many pairs."})
    hard_negatives: bool = field(default=True, metadata={"help": "Mine one BM25 hard negative per pair."})
    pooling: str = field(
        default="mean", metadata={"help": "cls, mean, or auto (the better on the dev set before training)."}
    )
    max_seq_length: int = field(default=128)
    loss: str = field(default="cached_mnrl", metadata={"help": "cached_mnrl (GradCache, large batches) or mnrl."})
    mini_batch_size: int = field(default=16, metadata={"help": "GradCache mini-batch: bounds memory, not the batch."})
    scale: float = field(default=20.0, metadata={"help": "Inverse temperature of the in-batch softmax."})
    router_loss_weight: float = field(
        default=1.0,
        metadata={"help": "Multiplies the config's router_aux_loss_coef / router_z_loss_coef; 0 turns them off."},
    )
    matryoshka_dims: list[int] | None = field(default=None, metadata={"help": "e.g. 256 128 64: MatryoshkaLoss."})
    query_prompt: str | None = field(
        default=None, metadata={"help": "Prompt 'query' in config_sentence_transformers.json."}
    )
    passage_prompt: str | None = field(default=None, metadata={"help": "Prompt 'document'."})
    dev_dir: str = field(
        default=str(DEV_DIR), metadata={"help": "Dev set: queries.jsonl, corpus.jsonl, heldout_paragraphs.txt."}
    )
    eval_baselines: bool = field(default=True, metadata={"help": "Also evaluate BM25 and all-MiniLM-L6-v2."})
    onnx: bool = field(default=False, metadata={"help": "Also export the trained encoder as onnx/model.onnx."})

    def __post_init__(self):
        choices = {"pooling": ("cls", "mean", "auto"), "loss": ("cached_mnrl", "mnrl")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"--{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("crops_per_document", "neighbours_per_document", "sections_per_document"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}")
        if not Path(self.model_name_or_path, "config.json").is_file():
            raise FileNotFoundError(
                f"--model_name_or_path {self.model_name_or_path}: no config.json (expected an exported MLM checkpoint)"
            )


# ---------------------------------------------------------------------------------------------
# Data


def load_pairs(args: EmbeddingArguments, seed: int) -> Dataset:
    """The training pairs as a Dataset with columns anchor, positive (and negative)."""
    held_out = HeldOutParagraphs.from_file(Path(args.dev_dir) / "heldout_paragraphs.txt")
    documents = iter_corpus(args.train_files, max_documents=args.max_documents)
    config = PairConfig(
        crops_per_document=args.crops_per_document,
        neighbours_per_document=args.neighbours_per_document,
        sections_per_document=args.sections_per_document,
    )
    pairs = build_pairs(documents, kinds=args.pair_kinds, held_out=held_out, seed=seed, config=config)
    if args.labelled_pairs:
        pairs = read_labelled_pairs(args.labelled_pairs) + pairs
    pairs = pairs[: args.max_pairs]
    if len(pairs) < 2:
        raise ValueError(
            f"only {len(pairs)} training pairs from {args.train_files}: documents too short or all held out"
        )
    kinds = Counter(p.get("kind", "labelled") for p in pairs)
    if args.hard_negatives:  # labelled pairs that come with a negative keep it
        pairs = mine_bm25_negatives(pairs, seed=seed)
    columns = ["anchor", "positive"] + (["negative"] if args.hard_negatives else [])
    logger.info("%d training pairs (%s): %s", len(pairs), ", ".join(columns), dict(kinds))
    return Dataset.from_dict({c: [p[c] for p in pairs] for c in columns})


# ---------------------------------------------------------------------------------------------
# Model


def build_model(args: EmbeddingArguments, pooling: str) -> SentenceTransformer:
    """Our encoder (remote code) + a CLS or mean Pooling, with optional query/document prompts."""
    remote = {"trust_remote_code": True}
    transformer = Transformer(
        args.model_name_or_path,
        model_kwargs=remote,
        processor_kwargs=remote,
        config_kwargs=remote,
        max_seq_length=args.max_seq_length,
    )
    prompts = {name: p for name, p in (("query", args.query_prompt), ("document", args.passage_prompt)) if p}
    model = SentenceTransformer(
        modules=[transformer, Pooling(transformer.get_embedding_dimension(), pooling_mode=pooling)],
        prompts=prompts or None,
        similarity_fn_name="cosine",
        device="cpu",
    )
    return model


def choose_pooling(args: EmbeddingArguments, dev) -> tuple[SentenceTransformer, str, dict[str, dict]]:
    """The untrained model with --pooling, or with auto the pooling of higher dev nDCG@10, and the scores."""
    candidates = ("cls", "mean") if args.pooling == "auto" else (args.pooling,)
    models = {p: build_model(args, p) for p in candidates}
    scores = {p: evaluate_system(EmbeddingSystem(m, p), dev) for p, m in models.items()}
    best = max(scores, key=lambda p: scores[p]["ndcg@10"])
    return models[best], best, scores


def build_loss(args: EmbeddingArguments, model: SentenceTransformer) -> nn.Module:
    if args.loss == "cached_mnrl":
        loss = losses.CachedMultipleNegativesRankingLoss(model, scale=args.scale, mini_batch_size=args.mini_batch_size)
    else:
        loss = losses.MultipleNegativesRankingLoss(model, scale=args.scale)
    if args.matryoshka_dims:
        loss = losses.MatryoshkaLoss(model, loss, matryoshka_dims=args.matryoshka_dims)
    if args.router_loss_weight:
        loss = RouterLossWrapper(loss, model, args.router_loss_weight)
    return loss


# ---------------------------------------------------------------------------------------------
# Main


def run(args: EmbeddingArguments, training_args: SentenceTransformerTrainingArguments) -> dict:
    """Train, evaluate, export; returns {system: metrics} for before/after/BM25/MiniLM."""
    dev = load_retrieval(Path(args.dev_dir) / "queries.jsonl", Path(args.dev_dir) / "corpus.jsonl")
    train_dataset = load_pairs(args, training_args.seed)
    model, pooling, before = choose_pooling(args, dev)
    before_ndcg = {p: round(m["ndcg@10"], 4) for p, m in before.items()}
    logger.info("pooling %s (dev nDCG@10 before training: %s)", pooling, before_ndcg)

    trainer = SentenceTransformerTrainer(
        model=model, args=training_args, train_dataset=train_dataset, loss=build_loss(args, model)
    )
    trainer.train()

    results = {f"ours before ({pooling} pooling, MLM only)": before[pooling]}
    results.update(compare(default_systems({AFTER: model}, baselines=args.eval_baselines), dev))
    table = markdown_table(results, reference="BM25 (bm25s)" if args.eval_baselines else None)
    output_dir = Path(training_args.output_dir)
    export_embedding_model(
        model, args, pooling, output_dir, dataclasses.asdict(trainer.state), len(train_dataset), results[AFTER], table
    )
    (output_dir / "embedding_eval.json").write_text(
        json.dumps({"pooling": pooling, "pooling_candidates": before, "results": results}, indent=2) + "\n"
    )
    print(table)
    return results


# ---------------------------------------------------------------------------------------------
# Output: the MLM export's Hub folder, with what this stage adds


def export_embedding_model(
    model: SentenceTransformer,
    args: EmbeddingArguments,
    pooling: str,
    output_dir: Path,
    trainer_state: dict,
    num_pairs: int,
    metrics: dict[str, float],
    table: str,
) -> Path:
    """Export the trained model once, all or nothing, as run_mlm.py exports: the card keeps the pre-training data
    named by the checkpoint's own card, and adds this stage's training and dev-set retrieval `metrics`."""
    stage = SentenceStage(
        encoder=model[0].model,
        prompts=model.prompts,
        max_seq_length=args.max_seq_length,
        description=(
            f"Then a contrastive stage with Sentence Transformers (`train_sentence_embeddings.py`): {num_pairs:,} "
            "unsupervised pairs from Spanish documents (independent crops, neighbouring paragraphs, heading → body), "
            "BM25-mined hard negatives, the router losses kept on. The MLM head was not trained in this stage. "
            "The loss curve and the table below are this stage's."
        ),
        trainer_state=trainer_state,
        results=(
            f"Retrieval on held-out Spanish documents ({DATASET_NAME}), before and after the contrastive stage "
            f"(see Training):\n\n{table}"
        ),
        eval_results=eval_results_for_card(metrics),
    )
    datasets = card_datasets(args.model_name_or_path) or []
    return export_model(
        args.model_name_or_path, output_dir, pooling=pooling, datasets=datasets, sentence_stage=stage, onnx=args.onnx
    )


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    parser = HfArgumentParser((EmbeddingArguments, SentenceTransformerTrainingArguments))
    # In-batch negatives must not repeat an anchor's own text; small-CPU-friendly defaults otherwise.
    parser.set_defaults(
        batch_sampler="no_duplicates", per_device_train_batch_size=64, learning_rate=5e-5, warmup_steps=0.1,
        logging_steps=10, save_strategy="no", report_to="none", seed=42,
    )
    args, training_args = parser.parse_args_into_dataclasses(args=argv if argv is not None else sys.argv[1:])
    return run(args, training_args)


if __name__ == "__main__":
    main()

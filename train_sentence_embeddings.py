"""Contrastive retrieval stage: an exported MLM checkpoint -> a Sentence Transformers model, dense or sparse.

Pairs come from the Spanish corpus without labels (independent cropping, neighbouring paragraphs,
heading -> body; see spanish_moe_bert/pairs.py), optionally plus a labelled JSONL file, each with a
BM25-mined hard negative. Two kinds of model come out:

* ``--encoder dense`` (default): one vector per text, [CLS] or mean pooling (SentenceTransformer), trained with
  (Cached)MultipleNegativesRankingLoss;
* ``--encoder sparse``: SPLADE, one weight per vocabulary word from the MLM head, pooled over pointwise mutual
  information (SparseEncoder + sparse_pooling_spanish_moe_bert.PMISpladePooling), trained with
  (Cached)SpladeLoss: in-batch ranking plus the FLOPS sparsity regularisers. By default (``--query_encoder idf``)
  it is inference-free on the query side (as OpenSearch's neural sparse models): a query is the bag of its word
  pieces, each weighted by its inverse document frequency in the training passages (SparseStaticEmbedding, behind
  a Router), and only passages go through the model. ``--train_queries_with_model`` trains it as plain SPLADE and
  switches to idf queries for search only; ``--query_encoder model`` makes it plain SPLADE throughout.

Either way the MoE router losses (load balancing + z-loss) are added so the experts stay balanced
(spanish_moe_bert/router_loss.py). The dev-set documents (data/retrieval_dev) are excluded from the pairs,
and the model is evaluated on them before and after training, next to BM25 and all-MiniLM-L6-v2.

    python train_sentence_embeddings.py --model_name_or_path outputs/mini --output_dir outputs/mini-embed \
        --train_files ../shared/data/es_corpus.jsonl.gz --max_steps 300
    python train_sentence_embeddings.py --encoder sparse ...    # the SPLADE retriever

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

import torch
from datasets import Dataset
from sentence_transformers import (
    SentenceTransformer,
    SentenceTransformerTrainer,
    SentenceTransformerTrainingArguments,
    SparseEncoder,
    SparseEncoderTrainer,
    SparseEncoderTrainingArguments,
)
from sentence_transformers.base.modules import Router
from sentence_transformers.sentence_transformer import losses
from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
from sentence_transformers.sparse_encoder import losses as sparse_losses
from sentence_transformers.sparse_encoder.callbacks import SpladeRegularizerWeightSchedulerCallback
from sentence_transformers.sparse_encoder.modules import SparseStaticEmbedding
from torch import nn
from transformers import AutoTokenizer, HfArgumentParser

from spanish_moe_bert.corpus import iter_corpus
from spanish_moe_bert.export import SentenceStage, export_model, saved_card_data
from spanish_moe_bert.onnx import require_onnx_packages
from spanish_moe_bert.pairs import (
    BUILDERS,
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
from spanish_moe_bert.router_loss import RouterLossWrapper, encoder_route
from sparse_pooling_spanish_moe_bert import PMISpladePooling

logger = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parent
AFTER = "ours after (contrastive)"


@dataclass
class EmbeddingArguments:
    model_name_or_path: str = field(metadata={"help": "Exported MLM checkpoint folder (run_mlm.py's output_dir)."})
    encoder: str = field(
        default="dense",
        metadata={"help": "dense: a vector per text (SentenceTransformer); sparse: SPLADE word weights."},
    )
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
        default="mean", metadata={"help": "Dense: cls, mean, or auto (the better on the dev set before training)."}
    )
    query_encoder: str | None = field(
        default=None,
        metadata={
            "help": "Sparse: idf (the default; inference-free: a query is its word pieces weighted by their "
            "inverse document frequency in the training passages) or model (queries go through the SPLADE "
            "model too). Dense: model."
        },
    )
    train_queries_with_model: bool = field(
        default=False,
        metadata={
            "help": "With --query_encoder idf: train as plain SPLADE (queries through the model too) and use "
            "idf queries for search only."
        },
    )
    pmi_threshold: float = field(
        default=6.0, metadata={"help": "Sparse: the pointwise mutual information (nats) a word needs for a weight."}
    )
    document_regularizer_weight: float = field(
        default=3e-5, metadata={"help": "Sparse: weight of the FLOPS sparsity loss on passages."}
    )
    query_regularizer_weight: float = field(
        default=5e-5, metadata={"help": "Sparse: weight of the FLOPS sparsity loss on queries."}
    )
    max_seq_length: int = field(default=128)
    loss: str = field(
        default="cached_mnrl",
        metadata={"help": "cached_mnrl (GradCache, large batches) or mnrl; sparse: inside (Cached)SpladeLoss."},
    )
    mini_batch_size: int = field(default=16, metadata={"help": "GradCache mini-batch: bounds memory, not the batch."})
    scale: float | None = field(
        default=None,
        metadata={
            "help": "Inverse temperature of the in-batch softmax (default 20 dense on cosines, 1 sparse on dot "
            "products)."
        },
    )
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
        if self.query_encoder is None:  # idf queries beat the model's own at two seeds each (README, sparse section)
            self.query_encoder = "idf" if self.encoder == "sparse" else "model"
        choices = {
            "encoder": ("dense", "sparse"),
            "pooling": ("cls", "mean", "auto"),
            "loss": ("cached_mnrl", "mnrl"),
            "query_encoder": ("model", "idf"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"--{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in (
            "crops_per_document", "neighbours_per_document", "sections_per_document",
            "document_regularizer_weight", "query_regularizer_weight", "router_loss_weight",
        ):  # fmt: skip
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}")
        for name, least in (("max_documents", 1), ("max_pairs", 2), ("mini_batch_size", 1), ("max_seq_length", 8)):
            if getattr(self, name) is not None and getattr(self, name) < least:
                raise ValueError(f"--{name} must be at least {least}, got {getattr(self, name)}")
        if unknown := [kind for kind in self.pair_kinds if kind not in BUILDERS]:
            raise ValueError(f"--pair_kinds: unknown {unknown}; choose from {sorted(BUILDERS)}")
        if self.scale is not None and self.scale <= 0:
            raise ValueError(f"--scale must be > 0, got {self.scale}")
        if self.query_encoder == "idf" and self.encoder != "sparse":
            raise ValueError("--query_encoder idf needs --encoder sparse: it weighs a query's words, not a vector")
        if self.train_queries_with_model and self.query_encoder != "idf":
            raise ValueError("--train_queries_with_model needs --query_encoder idf: it is how idf queries are trained")
        if self.query_encoder == "idf" and self.query_prompt:
            raise ValueError("--query_prompt needs --query_encoder model: an idf query encoder reads no prompt")
        if self.encoder == "sparse" and self.matryoshka_dims:
            raise ValueError("--matryoshka_dims needs --encoder dense: a sparse vector has one dimension per word")
        if self.encoder == "sparse" and self.onnx:
            raise ValueError("--onnx needs --encoder dense: the ONNX file holds the encoder, not the SPLADE head")
        if self.onnx:
            require_onnx_packages()  # now, not after training
        if self.scale is None:
            self.scale = 1.0 if self.encoder == "sparse" else 20.0
        if not Path(self.model_name_or_path, "config.json").is_file():
            raise FileNotFoundError(
                f"--model_name_or_path {self.model_name_or_path}: no config.json (expected an exported MLM checkpoint)"
            )
        config = json.loads(Path(self.model_name_or_path, "config.json").read_text())
        positions, hidden = config["max_position_embeddings"], config["hidden_size"]
        if self.max_seq_length > positions:
            raise ValueError(
                f"--max_seq_length {self.max_seq_length} is longer than the model's max_position_embeddings "
                f"({positions}): lower it to at most {positions}"
            )
        if self.matryoshka_dims and not all(1 <= dim <= hidden for dim in self.matryoshka_dims):
            raise ValueError(
                f"--matryoshka_dims must be between 1 and the hidden size {hidden}, got {self.matryoshka_dims}"
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


def build_model(
    args: EmbeddingArguments, pooling: str, query_idf: torch.Tensor | None = None
) -> SentenceTransformer | SparseEncoder:
    """Our encoder (remote code) with optional query/document prompts and a pooling: "cls" or "mean" make a
    SentenceTransformer, "splade" a SparseEncoder that pools the MLM head's logits (PMISpladePooling). With
    `query_idf` (one weight per vocabulary piece) the SparseEncoder is inference-free on the query side: a Router
    sends queries to a SparseStaticEmbedding of those weights and documents to the model."""
    remote = {"trust_remote_code": True}
    sparse = pooling == "splade"
    transformer = Transformer(
        args.model_name_or_path,
        transformer_task="fill-mask" if sparse else "feature-extraction",
        model_kwargs=remote,
        processor_kwargs=remote,
        config_kwargs=remote,
        max_seq_length=args.max_seq_length,
    )
    prompts = {name: p for name, p in (("query", args.query_prompt), ("document", args.passage_prompt)) if p}
    if sparse:
        splade = PMISpladePooling.from_mlm_head(
            transformer.model, args.pmi_threshold, special_token_ids=transformer.tokenizer.all_special_ids
        )
        modules = [transformer, splade]
        if query_idf is not None:
            query = SparseStaticEmbedding(transformer.tokenizer, weight=query_idf, frozen=True)
            modules = [Router.for_query_document(query_modules=[query], document_modules=modules)]
        return SparseEncoder(modules=modules, prompts=prompts or None, similarity_fn_name="dot", device="cpu")
    return SentenceTransformer(
        modules=[transformer, Pooling(transformer.get_embedding_dimension(), pooling_mode=pooling)],
        prompts=prompts or None,
        similarity_fn_name="cosine",
        device="cpu",
    )


def inverse_document_frequency(tokenizer, passages: list[str], max_length: int) -> torch.Tensor:
    """BM25's inverse document frequency of every vocabulary piece over `passages`, `log(1 + (N - df + 0.5) /
    (df + 0.5))`, divided by its largest value, as the query weights of an inference-free sparse encoder; 0 for
    special tokens. Weights up to 1, not up to ~10, keep the dot products at the scale of two SPLADE vectors', for
    which the ranking loss's scale of 1 is made: with raw idf the first steps' scores were ~5x larger, and the
    model shrank every passage to ~15 words to make them smaller (dev nDCG@10 0.487 before, 0.297 after)."""
    ids = tokenizer(passages, add_special_tokens=False, truncation=True, max_length=max_length)["input_ids"]
    df = torch.zeros(len(tokenizer), dtype=torch.float64)
    for pieces in ids:
        df[list(set(pieces))] += 1
    idf = torch.log1p((len(passages) - df + 0.5) / (df + 0.5))
    idf[list(tokenizer.all_special_ids)] = 0.0
    return (idf / idf.max()).float()


def choose_pooling(
    args: EmbeddingArguments, dev, query_idf: torch.Tensor | None = None
) -> tuple[SentenceTransformer | SparseEncoder, str, dict[str, dict]]:
    """The untrained model with its pooling ("splade" for --encoder sparse; --pooling, or with auto the pooling of
    higher dev nDCG@10, for dense) and the dev scores of every candidate."""
    if args.encoder == "sparse":
        candidates = ("splade",)
    else:
        candidates = ("cls", "mean") if args.pooling == "auto" else (args.pooling,)
    models = {p: build_model(args, p, query_idf) for p in candidates}
    scores = {p: evaluate_system(EmbeddingSystem(m, p), dev) for p, m in models.items()}
    best = max(scores, key=lambda p: scores[p]["ndcg@10"])
    return models[best], best, scores


def idf_queries_in_training(args: EmbeddingArguments) -> bool:
    """Whether the training queries take the idf route (inference-free training), not the model's."""
    return args.query_encoder == "idf" and not args.train_queries_with_model


def build_loss(args: EmbeddingArguments, model: SentenceTransformer | SparseEncoder) -> tuple[nn.Module, list]:
    """The training loss, and the callbacks it needs (the sparse regularisers' warm-up)."""
    callbacks = []
    if args.encoder == "sparse":
        ranking = sparse_losses.SparseMultipleNegativesRankingLoss(model, scale=args.scale)
        weights = {  # an idf query encoder has nothing to regularise
            "document_regularizer_weight": args.document_regularizer_weight,
            "query_regularizer_weight": None if idf_queries_in_training(args) else args.query_regularizer_weight,
        }
        if args.loss == "cached_mnrl":
            loss = sparse_losses.CachedSpladeLoss(model, ranking, mini_batch_size=args.mini_batch_size, **weights)
        else:
            loss = sparse_losses.SpladeLoss(model, ranking, **weights)
        # The trainer adds this itself only for a bare SpladeLoss, and ours may be wrapped below.
        callbacks.append(SpladeRegularizerWeightSchedulerCallback(loss))
    elif args.loss == "cached_mnrl":
        loss = losses.CachedMultipleNegativesRankingLoss(model, scale=args.scale, mini_batch_size=args.mini_batch_size)
    else:
        loss = losses.MultipleNegativesRankingLoss(model, scale=args.scale)
    if args.matryoshka_dims:
        loss = losses.MatryoshkaLoss(model, loss, matryoshka_dims=args.matryoshka_dims)
    if args.router_loss_weight:
        loss = RouterLossWrapper(loss, model, args.router_loss_weight)
    return loss, callbacks


# ---------------------------------------------------------------------------------------------
# Main


def run(
    args: EmbeddingArguments, training_args: SentenceTransformerTrainingArguments | SparseEncoderTrainingArguments
) -> dict:
    """Train, evaluate, export; returns {system: metrics} for before/after/BM25/MiniLM."""
    dev = load_retrieval(Path(args.dev_dir) / "queries.jsonl", Path(args.dev_dir) / "corpus.jsonl")
    train_dataset = load_pairs(args, training_args.seed)
    query_idf = None
    if args.query_encoder == "idf":
        negatives = train_dataset["negative"] if args.hard_negatives else []
        passages = sorted(set(train_dataset["positive"]) | set(negatives))
        tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path, trust_remote_code=True)
        query_idf = inverse_document_frequency(tokenizer, passages, args.max_seq_length)
        logger.info("query encoder: idf of %d pieces over %d training passages", len(query_idf), len(passages))
    model, pooling, before = choose_pooling(args, dev, query_idf)
    before_ndcg = {p: round(m["ndcg@10"], 4) for p, m in before.items()}
    logger.info("pooling %s (dev nDCG@10 before training: %s)", pooling, before_ndcg)

    # With --train_queries_with_model the model trains as plain SPLADE: the Router's document modules, themselves.
    trained = model
    if args.train_queries_with_model:
        trained = SparseEncoder(modules=encoder_route(model), prompts=model.prompts, similarity_fn_name="dot")
    loss, callbacks = build_loss(args, trained)
    trainer_class = SparseEncoderTrainer if args.encoder == "sparse" else SentenceTransformerTrainer
    trainer = trainer_class(
        model=trained, args=training_args, train_dataset=train_dataset, loss=loss, callbacks=callbacks
    )
    trainer.train()
    model.to(trained.device)  # the idf query module too, where the trainer moved the document modules

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


PAIR_KIND_TEXT = {
    "crop": "independent crops",
    "neighbours": "neighbouring paragraphs",
    "heading": "heading → body",
    "section": "section → body",
}


def export_embedding_model(
    model: SentenceTransformer | SparseEncoder,
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
    sparse = args.encoder == "sparse"
    encoder = encoder_route(model)
    kinds = ", ".join(PAIR_KIND_TEXT[k] for k in args.pair_kinds)
    kinds += " and labelled pairs" if args.labelled_pairs else ""
    what = (
        f"a sparse retriever (SPLADE over pointwise mutual information, threshold {args.pmi_threshold:g} nats; "
        "FLOPS sparsity regularisers)"
        if sparse
        else "sentence embeddings"
    )
    if args.query_encoder == "idf":
        what += ", inference-free on the query side (a query is its word pieces weighted by their idf)"
        what += " for search; trained with the queries through the model" if args.train_queries_with_model else ""
    head = (
        "The MLM head was trained too: its logits are the word weights."
        if sparse
        else ("The MLM head was not trained in this stage.")
    )
    stage = SentenceStage(
        encoder=encoder[0].model,
        prompts=model.prompts,
        max_seq_length=args.max_seq_length,
        description=(
            f"Then a contrastive stage with Sentence Transformers (`train_sentence_embeddings.py`) for {what}: "
            f"{num_pairs:,} unsupervised pairs from Spanish documents ({kinds}), "
            f"{'BM25-mined hard negatives, ' if args.hard_negatives else ''}the router losses kept on. {head} "
            "The loss curve and the table below are this stage's."
        ),
        trainer_state=trainer_state,
        results=(
            f"Retrieval on held-out Spanish documents ({DATASET_NAME}), before and after the contrastive stage "
            f"(see Training):\n\n{table}"
        ),
        eval_results=eval_results_for_card(metrics),
        sparse_pooling=encoder[1] if sparse else None,
        query_idf=model[0].sub_modules["query"][0] if args.query_encoder == "idf" else None,
    )
    saved = saved_card_data(args.model_name_or_path)
    datasets = (saved.datasets if saved is not None else None) or []
    return export_model(
        args.model_name_or_path,
        output_dir,
        pooling="cls" if sparse else pooling,  # the dense layout's; a sparse stage writes its own
        datasets=datasets,
        sentence_stage=stage,
        onnx=args.onnx,
    )


def argument_parser(training_class: type) -> HfArgumentParser:
    parser = HfArgumentParser((EmbeddingArguments, training_class))
    # In-batch negatives must not repeat an anchor's own text; small-CPU-friendly defaults otherwise.
    parser.set_defaults(
        batch_sampler="no_duplicates",
        per_device_train_batch_size=64,
        learning_rate=5e-5,
        warmup_steps=0.1,
        logging_steps=10,
        save_strategy="no",
        report_to="none",
        seed=42,
        dataloader_pin_memory=torch.cuda.is_available(),  # pinning without a GPU only warns
    )
    return parser


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    argv = argv if argv is not None else sys.argv[1:]
    args, training_args = argument_parser(SentenceTransformerTrainingArguments).parse_args_into_dataclasses(args=argv)
    if args.encoder == "sparse":  # its trainer takes its own class of the same options
        _, training_args = argument_parser(SparseEncoderTrainingArguments).parse_args_into_dataclasses(args=argv)
        if idf_queries_in_training(args) and not training_args.router_mapping:  # the pairs' columns to the routes
            training_args.router_mapping = {"anchor": "query", "positive": "document", "negative": "document"}
    return run(args, training_args)


if __name__ == "__main__":
    main()

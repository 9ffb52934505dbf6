#!/usr/bin/env python
"""Pre-train Spanish MoE-BERT with masked language modelling, using the Hugging Face Trainer.

    python run_mlm.py configs/train_cpu_demo.json                        # bundled corpus, minutes on a CPU
    python run_mlm.py configs/train_cpu_demo.json --max_steps 50         # flags override the JSON file
    python run_mlm.py configs/train_large_p40.json                       # the published 340M setup
    torchrun --nproc_per_node 2 run_mlm.py configs/train_cpu_demo.json   # one data shard per process
    python run_mlm.py --help                                             # every option

A run streams its documents (a Hub dataset or local .txt/.jsonl/.jsonl.gz files), holds out a validation split by
document, tokenizes on the fly, packs tokens into blocks and masks 15% of them (`--mlm_probability`). Every
`save_steps` it writes a checkpoint that also holds the position in the data stream; rerunning the same command
after a crash resumes from the newest complete checkpoint in `output_dir`, with the same losses as a run that never
stopped (see spanish_moe_bert/resume.py). At the end, the model and tokenizer are saved to `output_dir` and
exported as a Hub-ready folder.
"""

import json
import logging
import os
import sys
import tempfile
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import torch
import transformers
from huggingface_hub.utils import HFValidationError, validate_repo_id
from transformers import AutoTokenizer, HfArgumentParser, TrainerState, TrainingArguments, set_seed

from configuration_spanish_moe_bert import SpanishMoEBertConfig
from modeling_spanish_moe_bert import SpanishMoEBertForMaskedLM
from spanish_moe_bert.callbacks import DiskBudgetCallback, MaskingRateCallback, RouterBiasCallback, directory_bytes
from spanish_moe_bert.corpus import DEFAULT_DATASET, hub_documents
from spanish_moe_bert.cpu import keep_freed_memory
from spanish_moe_bert.data import (
    MLM_PROBABILITY,
    MaskingCollator,
    first_example,
    local_documents,
    masked_eval_set,
    shard_for_rank,
    split_by_document,
    token_counts,
    tokenize_stream,
)
from spanish_moe_bert.export import HubPushError, export_model
from spanish_moe_bert.resume import ResumableStream, StreamStateCallback, check_same_stream, resume_checkpoint
from spanish_moe_bert.training import (
    MoEMLMTrainer,
    NonFiniteLossError,
    allow_a_compiled_version_per_layer_kind,
    logits_to_predictions,
    mlm_metrics,
)

logger = logging.getLogger("run_mlm")


# ----------------------------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class ModelArguments:
    model_config: str | None = field(
        default=None,
        metadata={
            "help": "Model architecture JSON (configs/tiny.json, mini.json, large.json) for a model trained from "
            "scratch."
        },
    )
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "Override fields of --model_config, e.g. 'num_hidden_layers=4,num_experts=8' or "
            "'mlp_layer_types=[dense,sparse,sparse,sparse],intermediate_size=256'."
        },
    )
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Continue pre-training a saved model (a folder or Hub id) instead."}
    )
    tokenizer_name: str | None = field(
        default=None,
        metadata={
            "help": "Tokenizer folder or Hub id. If neither this nor --model_name_or_path is given, a tokenizer is "
            "trained on the training documents (SpanishSPMTokenizer.train_new) and saved to output_dir."
        },
    )
    tokenizer_vocab_size: int = field(default=8000, metadata={"help": "Vocabulary size of a tokenizer trained here."})
    tokenizer_training_documents: int = field(
        default=100_000, metadata={"help": "How many training documents a tokenizer trained here reads."}
    )
    tokenizer_lowercase: bool = field(
        default=False,
        metadata={"help": "Make a tokenizer trained here uncased: every text lower-cased, accents kept."},
    )
    output_prior_examples: int = field(
        default=2000,
        metadata={
            "help": "A model trained from scratch starts its MLM output bias at the log unigram frequencies counted "
            "on this many training blocks (0: start it at zero)."
        },
    )

    def __post_init__(self):
        # the model's folder holds its tokenizer too, unless --tokenizer_name gives another
        model_files = ["config.json"] + ([] if self.tokenizer_name else ["tokenizer_config.json"])
        check_saved_folder("--model_name_or_path", self.model_name_or_path, model_files)
        check_saved_folder("--tokenizer_name", self.tokenizer_name, ["tokenizer_config.json"])


def check_saved_folder(flag: str, name: str | None, needed: list[str]) -> None:
    """A local folder given to `flag` must hold the files `needed`; a name that is no folder must be a Hub id."""
    if name is None:
        return
    path = Path(name)  # as transformers reads it: a folder, else a Hub id
    if path.is_dir() and (missing := [file for file in needed if not (path / file).is_file()]):
        raise ValueError(f"{flag} {name}: the folder holds no {missing[0]} (give a folder saved by run_mlm.py)")
    if not path.is_dir():
        try:
            validate_repo_id(name)
        except HFValidationError:
            raise ValueError(f"{flag} {name}: {'not a folder' if path.exists() else 'no such folder'}") from None


def from_folder_or_hub(flag: str, name: str, load):
    """`load(name)`; where `name` is no local folder and the Hub cannot give it, an error that says both."""
    try:
        return load(name)
    except OSError as error:
        if Path(name).is_dir():
            raise
        raise OSError(
            f"{flag} {name}: no local folder of that name, and no Hub model could be read: {error}"
        ) from error


@dataclass
class DataTrainingArguments:
    dataset_name: str = field(
        default=DEFAULT_DATASET,
        metadata={"help": "Hub dataset to stream, used when no --train_file is given."},
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration of --dataset_name."})
    dataset_split: str = field(default="train", metadata={"help": "Split of --dataset_name to stream."})
    text_column: str = field(default="text", metadata={"help": "Field holding the text in the dataset / .jsonl files."})
    train_file: list[str] | None = field(
        default=None, metadata={"help": "Local training files (.txt: one document per line, .jsonl, .jsonl.gz)."}
    )
    validation_file: list[str] | None = field(
        default=None, metadata={"help": "Local validation files; without them a split is held out by document."}
    )
    validation_split_percentage: float = field(
        default=1.0,
        metadata={"help": "Percent of documents held out for validation (by content hash) when no --validation_file."},
    )
    max_eval_samples: int = field(default=500, metadata={"help": "Validation examples (blocks) scored per evaluation."})
    max_seq_length: int = field(
        default=512, metadata={"help": "Tokens per training example, at most the model's max_position_embeddings."}
    )
    line_by_line: bool = field(
        default=False,
        metadata={"help": "One example per document (truncated, padded) instead of packing documents into blocks."},
    )
    mlm_probability: float = field(
        default=MLM_PROBABILITY, metadata={"help": "Fraction of tokens masked for the MLM loss."}
    )
    map_batch_size: int = field(default=1000, metadata={"help": "Documents tokenized (and packed) together."})

    def __post_init__(self):
        if not 0 < self.mlm_probability < 1:
            raise ValueError(f"--mlm_probability must be between 0 and 1, got {self.mlm_probability}")
        if not 0 <= self.validation_split_percentage < 100:
            raise ValueError(
                f"--validation_split_percentage must be in [0, 100), got {self.validation_split_percentage}"
            )
        if self.max_seq_length < 8:
            raise ValueError(f"--max_seq_length must be at least 8, got {self.max_seq_length}")
        if self.max_eval_samples < 1:
            raise ValueError(f"--max_eval_samples must be at least 1, got {self.max_eval_samples}")


PRECISIONS = ("auto", "fp32", "fp16", "bf16")


def precision_for(capability: tuple[int, int] | None) -> str:
    """The precision a GPU generation trains fastest in without loss of stability: bf16 from Ampere on (compute
    capability 8.0: A100, H100), fp16 with loss scaling on Volta and Turing (7.x: V100, T4), fp32 before (Pascal, e.g.
    the Tesla P40: no fast fp16, no bf16) and on CPUs (`capability` None), where bf16 is emulated and slower."""
    if capability is None or capability < (7, 0):
        return "fp32"
    return "bf16" if capability >= (8, 0) else "fp16"


@dataclass
class PretrainingArguments(TrainingArguments):
    """TrainingArguments with pre-training defaults, a disk budget, precision by GPU generation and regional
    compilation."""

    do_train: bool = field(
        default=True,
        metadata={
            "help": "Train (the default). --do_train false evaluates --model_name_or_path on the validation data "
            "instead: masked-token loss, accuracy and perplexity in output_dir/eval_results.json; nothing trained or "
            "exported."
        },
    )
    disk_budget_gb: float = field(
        default=300.0,
        metadata={"help": "Most GiB this run may keep in output_dir (checkpoints, logs, final model); see README."},
    )
    precision: str = field(
        default="auto",
        metadata={
            "help": "auto: bf16 (+TF32) on Ampere and newer GPUs, fp16 on Volta/Turing, fp32 on Pascal and CPUs; or "
            "fp32, fp16, bf16. --fp16 / --bf16 choose too."
        },
    )
    report_to: None | str | list[str] = field(
        default="tensorboard", metadata={"help": "Where to log; TensorBoard by default."}
    )
    logging_steps: float = field(default=10, metadata={"help": "Log every N optimizer steps."})

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {list(PRECISIONS)}, got {self.precision!r}")
        flagged = "fp16" if self.fp16 else "bf16" if self.bf16 else None
        if flagged and self.precision not in ("auto", flagged):
            raise ValueError(f"--precision {self.precision} contradicts --{flagged}; give one of them")
        precision = flagged or self.precision
        if precision == "auto":
            precision = precision_for(torch.cuda.get_device_capability() if torch.cuda.is_available() else None)
        if not torch.cuda.is_available():
            # fp16 falls back to bf16 (CPU autocast) with a warning, so a GPU run file still works on a laptop.
            # `use_cpu` is what makes accelerate set up a gloo process group under torchrun on CPUs.
            if precision == "fp16":
                logging.getLogger("run_mlm").warning("--fp16 needs a CUDA GPU and none is visible: using bf16 on CPU")
                precision = "bf16"
            self.use_cpu = True
            self.dataloader_pin_memory = False
        elif precision == "bf16" and self.tf32 is None:
            self.tf32 = True  # what stays fp32 (optimizer, norms' reductions) runs on tensor cores too
        self.precision, self.fp16, self.bf16 = precision, precision == "fp16", precision == "bf16"
        if self.torch_compile:
            # Compile each encoder layer once and reuse it for its repeats (accelerate's regional compilation): minutes
            # less cold start than tracing 24 layers, and the sparse MLM prediction stays outside the graphs.
            os.environ.setdefault("ACCELERATE_DYNAMO_USE_REGIONAL_COMPILATION", "1")
        super().__post_init__()


def parse_args(argv: list[str]) -> tuple[ModelArguments, DataTrainingArguments, PretrainingArguments]:
    """Flags, or a JSON run file followed by flags that override it."""
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, PretrainingArguments))
    if argv and argv[0].endswith(".json"):
        defaults = json.loads(Path(argv[0]).read_text())
        known = {action.dest for action in parser._actions}
        unknown = sorted(set(defaults) - known)
        if unknown:
            raise ValueError(f"{argv[0]}: unknown option(s) {unknown}; see `python run_mlm.py --help`")
        parser.set_defaults(**defaults)
        argv = argv[1:]
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)
    if not training_args.do_train:
        if model_args.model_name_or_path is None:
            raise ValueError("--do_train false evaluates a trained model: give it with --model_name_or_path")
        model_args.model_config = None  # a training run file's architecture: the trained model has its own
    elif (model_args.model_config is None) == (model_args.model_name_or_path is None):
        raise ValueError("give exactly one of --model_config (train from scratch) and --model_name_or_path")
    if training_args.push_to_hub and not training_args.hub_model_id:  # else the push would fail after training
        raise ValueError("--push_to_hub needs --hub_model_id, e.g. your-name/spanish-moe-bert-mini")
    evaluation = "--do_train false" if not training_args.do_train else "evaluation (--do_eval or --eval_strategy)"
    evaluates = not training_args.do_train or training_args.do_eval or training_args.eval_strategy != "no"
    if evaluates and not (data_args.validation_file or data_args.validation_split_percentage > 0):
        raise ValueError(
            f"{evaluation} needs validation data: --validation_file or --validation_split_percentage above 0"
        )
    # The stream restores its own position on resume (see spanish_moe_bert/resume.py); the Trainer must not also
    # skip batches. Our pipeline makes only the columns the collator needs, so none are dropped.
    training_args.ignore_data_skip = True
    training_args.remove_unused_columns = False
    return model_args, data_args, training_args


# ----------------------------------------------------------------------------------------------------------------
# Data, tokenizer, model
# ----------------------------------------------------------------------------------------------------------------


def load_documents(data_args: DataTrainingArguments):
    """(train, validation or None) document streams."""
    if data_args.train_file:
        documents = local_documents(data_args.train_file, data_args.text_column)
    else:
        documents = hub_documents(
            data_args.dataset_name, data_args.dataset_config_name, data_args.dataset_split, data_args.text_column
        )
    if data_args.validation_file:
        return documents, local_documents(data_args.validation_file, data_args.text_column)
    if data_args.validation_split_percentage > 0:
        return split_by_document(documents, data_args.validation_split_percentage / 100)
    return documents, None


def architecture(model_args: ModelArguments, data_args: DataTrainingArguments) -> SpanishMoEBertConfig:
    """The model's config: the saved model's, or --model_config with --config_overrides (its vocabulary still to be
    sized to the tokenizer). Checked against the data: no block may be longer than the model's positions."""
    if model_args.model_name_or_path is not None:
        config = from_folder_or_hub(
            "--model_name_or_path", model_args.model_name_or_path, SpanishMoEBertConfig.from_pretrained
        )
        longer = "use a model trained with longer positions"
    else:
        config = SpanishMoEBertConfig.from_json_file(model_args.model_config)
        if model_args.config_overrides:
            config.update_from_string(model_args.config_overrides)
        longer = (
            f"train one with longer positions (--config_overrides max_position_embeddings={data_args.max_seq_length})"
        )
    if data_args.max_seq_length > config.max_position_embeddings:
        raise ValueError(
            f"--max_seq_length {data_args.max_seq_length} is longer than the model's max_position_embeddings "
            f"({config.max_position_embeddings}): lower it to at most {config.max_position_embeddings}, or {longer}"
        )
    return config


def load_tokenizer(model_args: ModelArguments, training_args: TrainingArguments, train_documents, max_length: int):
    """The tokenizer of --tokenizer_name or --model_name_or_path, or one trained here; it truncates at `max_length`
    (the model's positions) at most."""
    tokenizer = read_or_train_tokenizer(model_args, training_args, train_documents)
    tokenizer.model_max_length = min(tokenizer.model_max_length, max_length)
    return tokenizer


def read_or_train_tokenizer(model_args: ModelArguments, training_args: TrainingArguments, train_documents):
    source = model_args.tokenizer_name or model_args.model_name_or_path
    if source is not None:
        flag = "--tokenizer_name" if model_args.tokenizer_name else "--model_name_or_path"
        return from_folder_or_hub(
            flag, source, lambda name: AutoTokenizer.from_pretrained(name, trust_remote_code=True)
        )
    # Train one on the training documents, once: rank 0 trains and saves, the others (and a resumed run) load it.
    output_dir = Path(training_args.output_dir)
    with training_args.main_process_first(desc="tokenizer training"):
        if not (output_dir / "tokenizer_config.json").is_file():
            from tokenization_spanish_moe_bert import SpanishSPMTokenizer

            kind = "uncased" if model_args.tokenizer_lowercase else "cased"
            logger.info(
                f"training a {model_args.tokenizer_vocab_size}-token {kind} tokenizer on the training documents"
            )
            texts = (doc["text"] for doc in islice(train_documents, model_args.tokenizer_training_documents))
            tokenizer = SpanishSPMTokenizer.train_new(
                texts, vocab_size=model_args.tokenizer_vocab_size, lowercase=model_args.tokenizer_lowercase
            )
            tokenizer.save_pretrained(output_dir)
        return AutoTokenizer.from_pretrained(output_dir, trust_remote_code=True)


def build_model(model_args: ModelArguments, config: SpanishMoEBertConfig, tokenizer) -> SpanishMoEBertForMaskedLM:
    if model_args.model_name_or_path is not None:
        model = SpanishMoEBertForMaskedLM.from_pretrained(model_args.model_name_or_path, config=config)
        if len(tokenizer) > model.config.vocab_size:
            raise ValueError(f"the tokenizer has {len(tokenizer)} tokens, the model only {model.config.vocab_size}")
        return model
    config.vocab_size = len(tokenizer)
    config.pad_token_id = tokenizer.pad_token_id
    config.validate_architecture()
    return SpanishMoEBertForMaskedLM(config)


def saved_bytes(tokenizer) -> int:
    """What saving the tokenizer writes, for the disk budget's estimates."""
    with tempfile.TemporaryDirectory() as directory:
        tokenizer.save_pretrained(directory)
        return directory_bytes(Path(directory))


# ----------------------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------------------


def run(model_args, data_args, training_args, extra_callbacks=()) -> dict:
    """Train, save and export; returns the final metrics."""
    set_seed(training_args.seed)
    # Reading `device` sets up the process group of torchrun / accelerate launch; only then are rank and size known.
    logger.info(f"process {training_args.process_index} on {training_args.device}")

    config = architecture(model_args, data_args)
    if not training_args.do_train:
        return evaluate_only(model_args, data_args, training_args, config)

    # Data: documents -> (held-out split) -> this rank's shard -> tokens -> blocks, all lazily streamed.
    train_documents, eval_documents = load_documents(data_args)
    tokenizer = load_tokenizer(model_args, training_args, train_documents, config.max_position_embeddings)
    blocks = tokenize_stream(
        shard_for_rank(train_documents, training_args.process_index, training_args.world_size),
        tokenizer,
        data_args.max_seq_length,
        data_args.line_by_line,
        data_args.map_batch_size,
    )
    first_example(blocks)  # fail now, not mid-run, on missing, empty or unreadable data
    train_stream = ResumableStream(blocks)
    eval_dataset = None
    if eval_documents is not None and (training_args.do_eval or training_args.eval_strategy != "no"):
        eval_dataset = validation_set(eval_documents, tokenizer, data_args, training_args.seed)

    # Model, and resume: the newest complete checkpoint, and each rank's position in its stream.
    model = build_model(model_args, config, tokenizer)
    logger.info(f"model: {model.num_parameters():,} parameters, vocabulary {model.config.vocab_size}")
    if training_args.torch_compile:
        limit = allow_a_compiled_version_per_layer_kind(model.config)
        logger.info(f"torch.compile: up to {limit} compiled versions of the encoder layer (Dynamo's recompile limit)")
    checkpoint = resume_checkpoint(training_args, train_stream)
    if checkpoint is not None:
        check_same_architecture(checkpoint, model.config)
    finished = finished_state(checkpoint, training_args.max_steps)
    if checkpoint is not None and finished is None:
        check_same_stream(checkpoint, stream_source(data_args))
    if finished is not None:
        # The Trainer would still run a step (the stream, not the Trainer, skips what was read): train none.
        logger.info(f"{checkpoint} is this run's last step ({finished.global_step}): nothing left to train")
        model = SpanishMoEBertForMaskedLM.from_pretrained(checkpoint)
    elif checkpoint is not None:
        logger.info(f"resuming from {checkpoint}")
    elif model_args.model_name_or_path is None and model_args.output_prior_examples > 0:
        # From scratch, the output bias starts at the unigram prior, counted on the same (unsharded) blocks by
        # every rank so that all ranks start identical.
        prior_blocks = tokenize_stream(
            train_documents, tokenizer, data_args.max_seq_length, data_args.line_by_line, data_args.map_batch_size
        )
        model.init_decoder_bias_from_counts(
            token_counts(
                prior_blocks, model.config.vocab_size, model_args.output_prior_examples, tokenizer.all_special_ids
            )
        )

    # Trainer. --push_to_hub uploads the exported folder once at the end, not every checkpoint as the Trainer would.
    push_to_hub, training_args.push_to_hub = training_args.push_to_hub, False
    disk_budget = DiskBudgetCallback(
        training_args.disk_budget_gb, training_args.output_dir, model.num_parameters(), saved_bytes(tokenizer)
    )
    pad_to = 8 if data_args.line_by_line and (training_args.fp16 or training_args.bf16) else None
    trainer = MoEMLMTrainer(
        model=model,
        args=training_args,
        train_dataset=train_stream,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        data_collator=MaskingCollator.for_tokenizer(tokenizer, data_args.mlm_probability, pad_to),
        compute_metrics=mlm_metrics if eval_dataset is not None else None,
        preprocess_logits_for_metrics=logits_to_predictions if eval_dataset is not None else None,
        callbacks=[
            StreamStateCallback(train_stream, stream_source(data_args)),
            MaskingRateCallback(data_args.mlm_probability),
            RouterBiasCallback(),
            disk_budget,
            *extra_callbacks,
        ],
    )
    if finished is None:
        try:
            train_result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        except NonFiniteLossError as error:
            logger.error(str(error))
            raise SystemExit(f"run_mlm: {error}") from None
        metrics = train_result.metrics
        trainer.log_metrics("train", metrics)
    else:  # the same command run again after the run ended (or died saving): save, evaluate and export its end
        trainer.state, metrics = finished, {}

    # Save: the final model and tokenizer go into output_dir itself, if the disk budget allows.
    if disk_budget.room_for_final_model(trainer.is_world_process_zero()):
        trainer.save_model()
        trainer.save_state()
        if metrics:
            trainer.save_metrics("train", metrics)
    if eval_dataset is not None:
        eval_metrics = trainer.evaluate()
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        metrics.update(eval_metrics)
    if disk_budget.stop_message is not None:
        raise SystemExit(f"run_mlm: {disk_budget.stop_message}")
    if trainer.is_world_process_zero():
        export(model_args, training_args, data_args, metrics, push_to_hub)
    return metrics


def check_same_architecture(checkpoint: Path, config: SpanishMoEBertConfig) -> None:
    """Raise a ValueError naming every config field in which `checkpoint` differs from the model this command
    builds (a run resumed with another --model_config or --config_overrides), before its weights fail to load."""
    ignored = {"architectures", "dtype", "transformers_version", "_name_or_path", "auto_map"}
    saved, wanted = SpanishMoEBertConfig.from_pretrained(checkpoint).to_dict(), config.to_dict()
    differ = [key for key in sorted((saved.keys() | wanted.keys()) - ignored) if saved.get(key) != wanted.get(key)]
    if differ:
        fields = ", ".join(f"{key}={saved.get(key)!r} (now {wanted.get(key)!r})" for key in differ)
        raise ValueError(
            f"{checkpoint} was trained with {fields}: resume it with the same --model_config and --config_overrides, "
            "or give another --output_dir"
        )


def stream_source(data_args: DataTrainingArguments) -> dict:
    """The data arguments that decide what the training stream yields, in order: a checkpoint's position in the
    stream refers to them (`check_same_stream`)."""
    local = data_args.train_file is not None
    return {
        "train_file": [str(Path(name).resolve()) for name in data_args.train_file] if local else None,
        "dataset_name": None if local else data_args.dataset_name,
        "dataset_config_name": None if local else data_args.dataset_config_name,
        "dataset_split": None if local else data_args.dataset_split,
        "text_column": data_args.text_column,
        # documents held out of training by content hash (none when --validation_file gives the validation data)
        "validation_split_percentage": 0 if data_args.validation_file else data_args.validation_split_percentage,
        "max_seq_length": data_args.max_seq_length,
        "line_by_line": data_args.line_by_line,
        "map_batch_size": data_args.map_batch_size,
    }


def finished_state(checkpoint: Path | None, max_steps: int) -> TrainerState | None:
    """The Trainer state of `checkpoint` if it is the run's last step (`max_steps` reached), else None. The state the
    run saved at its end (with the training summary in its log) if it got there, else the checkpoint's."""
    if checkpoint is None:
        return None
    state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
    if state.global_step < max_steps:
        return None
    final = checkpoint.parent / "trainer_state.json"
    if final.is_file() and (saved := TrainerState.load_from_json(str(final))).global_step == state.global_step:
        return saved
    return state


def validation_set(documents, tokenizer, data_args, seed: int):
    """The validation blocks, masked once with `seed` so that every evaluation scores the same positions."""
    blocks = tokenize_stream(documents, tokenizer, data_args.max_seq_length, data_args.line_by_line)
    return masked_eval_set(blocks, tokenizer, data_args.mlm_probability, data_args.max_eval_samples, seed)


def evaluate_only(model_args, data_args, training_args, config: SpanishMoEBertConfig) -> dict:
    """--do_train false: the validation metrics of a trained model, written to output_dir/eval_results.json."""
    if data_args.validation_file:  # no training source needed (and none streamed from the Hub)
        documents = local_documents(data_args.validation_file, data_args.text_column)
    else:
        documents = load_documents(data_args)[1]
    tokenizer = load_tokenizer(model_args, training_args, None, config.max_position_embeddings)
    trainer = MoEMLMTrainer(
        model=build_model(model_args, config, tokenizer),
        args=training_args,
        eval_dataset=validation_set(documents, tokenizer, data_args, training_args.seed),
        processing_class=tokenizer,
        data_collator=MaskingCollator.for_tokenizer(tokenizer, data_args.mlm_probability),
        compute_metrics=mlm_metrics,
        preprocess_logits_for_metrics=logits_to_predictions,
    )
    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics, combined=False)
    return metrics


def export(model_args, training_args, data_args, metrics: dict, push_to_hub: bool) -> None:
    """Complete output_dir as a Hub model repo (Sentence Transformers files, model card with these metrics) and
    push it if asked. A model continued from a Hub model names it as its base (a local folder is no Hub link)."""
    source = model_args.model_name_or_path
    try:
        export_model(
            training_args.output_dir,
            eval_results=metrics,
            datasets=[] if data_args.train_file else [data_args.dataset_name],
            base_model=source if source is not None and not Path(source).is_dir() else None,
            mlm_probability=data_args.mlm_probability,
            push_to_hub=push_to_hub,
            hub_model_id=training_args.hub_model_id,
        )
    except HubPushError as err:
        raise SystemExit(f"run_mlm: {err}") from err


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, training_args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        level=logging.INFO if training_args.should_log else logging.WARNING,
    )
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    if training_args.use_cpu:
        keep_freed_memory()  # a step's activations reuse the last step's pages (spanish_moe_bert/cpu.py)
    try:
        return run(model_args, data_args, training_args)
    finally:
        # A gloo group left to the interpreter's exit can abort a rank ("terminate called without an active
        # exception") after all work is done.
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()

"""Unit tests of the pieces behind run_mlm.py: the streaming data pipeline, checkpoint bookkeeping and the stream
position (resume.py), the disk budget, router metrics and evaluation metrics."""

import gzip
import json
import math
from itertools import islice
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tiny_config import make_config
from transformers import EvalPrediction, TrainerControl, TrainerState

from modeling_spanish_moe_bert import SpanishMoEBertModel
from spanish_moe_bert.callbacks import DiskBudgetCallback, directory_bytes
from spanish_moe_bert.corpus import CorpusError, hub_documents, is_held_out
from spanish_moe_bert.data import (
    EmptyDatasetError,
    MaskingCollator,
    first_example,
    local_documents,
    masked_eval_set,
    pack_documents,
    shard_for_rank,
    split_by_document,
    token_counts,
    tokenize_stream,
)
from spanish_moe_bert.resume import (
    ResumableStream,
    StreamStateCallback,
    check_same_stream,
    is_complete,
    last_complete_checkpoint,
    remove_incomplete_checkpoints,
    resume_checkpoint,
)
from spanish_moe_bert.training import (
    MoEMLMTrainer,
    NonFiniteLossError,
    RouterMetrics,
    allow_a_compiled_version_per_layer_kind,
    mlm_metrics,
    raise_recompile_limit,
)

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "es_corpus_sample.txt"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from spanish_moe_bert.corpus import iter_texts
    from tokenization_spanish_moe_bert import SpanishSPMTokenizer

    return SpanishSPMTokenizer.train_new(iter_texts(SAMPLE, max_documents=2000), vocab_size=512)


def documents_file(tmp_path, n=300):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": f"documento número {i}: el perro come pan."}) + "\n" for i in range(n)))
    return path


# ---- data ------------------------------------------------------------------------------------------------------


def test_held_out_split_is_by_document_stable_and_sized():
    texts = [f"párrafo {i} del corpus" for i in range(4000)]
    held = [t for t in texts if is_held_out(t, 0.05)]
    assert 120 < len(held) < 280  # ~5 %
    assert held == [t for t in reversed(texts) if is_held_out(t, 0.05)][::-1]  # order does not matter
    train, validation = split_by_document(local_documents([SAMPLE]), 0.05)
    train_texts = {d["text"] for d in islice(train, 3000)}
    validation_texts = {d["text"] for d in validation}
    assert validation_texts and not train_texts & validation_texts


def test_dataset_stream_keeps_the_text_column(tmp_path):
    # `load_dataset` streams a local folder the same way as a Hub repo (the Hub is not reachable in tests).
    folder = tmp_path / "dataset"
    folder.mkdir()
    records = (json.dumps({"id": i, "content": f"texto {i}"}) + "\n" for i in range(5))
    (folder / "train.jsonl").write_text("".join(records))
    documents = hub_documents(str(folder), None, "train", text_column="content")
    assert [d for d in documents] == [{"text": f"texto {i}"} for i in range(5)]
    with pytest.raises(ValueError, match=r"no column 'text'.*'content'"):
        hub_documents(str(folder), None, "train", text_column="text")


def test_packed_blocks_have_exact_length_and_special_tokens(tokenizer):
    batch = pack_documents({"text": ["uno dos tres cuatro cinco seis"] * 20}, tokenizer, max_seq_length=16)
    assert batch["input_ids"] and all(len(b) == 16 for b in batch["input_ids"])
    for block, special in zip(batch["input_ids"], batch["special_tokens_mask"]):
        assert block[0] == tokenizer.cls_token_id and block[-1] == tokenizer.sep_token_id
        assert special == [int(t in tokenizer.all_special_ids) for t in block]


def test_token_counts_count_the_first_blocks_without_special_tokens(tokenizer, tmp_path):
    blocks = tokenize_stream(local_documents([str(documents_file(tmp_path, n=50))]), tokenizer, max_seq_length=16)
    first = [example["input_ids"] for example in islice(blocks, 3)]
    counts = token_counts(blocks, len(tokenizer), max_examples=3, exclude_ids=tokenizer.all_special_ids)
    expected = torch.bincount(torch.tensor(first).flatten(), minlength=len(tokenizer))
    expected[tokenizer.all_special_ids] = 0
    assert torch.equal(counts, expected)
    assert counts.sum() == sum(t not in tokenizer.all_special_ids for block in first for t in block)


def test_stream_resumes_exactly_where_it_was_saved_across_epochs(tokenizer, tmp_path):
    path = documents_file(tmp_path, n=60)

    def stream():
        return ResumableStream(tokenize_stream(local_documents([path]), tokenizer, 16, map_batch_size=7))

    uninterrupted = [ex["input_ids"] for ex in islice(stream(), 400)]  # several passes over the file
    per_epoch = sum(1 for _ in tokenize_stream(local_documents([path]), tokenizer, 16, map_batch_size=7))
    assert per_epoch < 200  # so that 400 examples cross epoch boundaries
    for stop in (1, 37, per_epoch, per_epoch + 5):
        first = stream()
        iterator = iter(first)
        head = [next(iterator)["input_ids"] for _ in range(stop)]
        resumed = stream()
        resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))  # as stored in trainer_state.json
        tail = [ex["input_ids"] for ex in islice(resumed, 400 - stop)]
        assert head + tail == uninterrupted, f"resuming after {stop} examples"


def test_ranks_read_disjoint_shards_covering_everything(tokenizer, tmp_path):
    documents = local_documents([documents_file(tmp_path, n=101)])
    rank0 = [d["text"] for d in shard_for_rank(documents, 0, 2)]
    rank1 = [d["text"] for d in shard_for_rank(documents, 1, 2)]
    assert not set(rank0) & set(rank1)
    assert sorted(rank0 + rank1) == sorted(d["text"] for d in documents)
    # Through the whole pipeline, as run_mlm builds it: the ranks' blocks interleave to the single-process stream.
    blocks = [[b["input_ids"] for b in tokenize_stream(shard_for_rank(documents, r, 2), tokenizer, 16)] for r in (0, 1)]
    alone = [b["input_ids"] for b in tokenize_stream(documents, tokenizer, 16)]
    assert blocks[0] == alone[0::2] and blocks[1] == alone[1::2]
    # With as many files as ranks, each rank reads only its own file.
    second = tmp_path / "second.txt"
    second.write_text("otro documento distinto\n" * 10)
    two_files = local_documents([documents_file(tmp_path, n=10), second])
    assert {d["text"] for d in shard_for_rank(two_files, 1, 2)} == {"otro documento distinto"}


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("bad.txt", b"hola\n\xff\xfe roto\n", r"bad\.txt:2: not valid UTF-8"),
        ("bad.jsonl", b'{"text": "hola"}\n{"texto": "sin campo"}\n', r"bad\.jsonl:2: missing field 'text'"),
        ("bad.jsonl.gz", gzip.compress(b'{"text": "hola"}\n' * 50)[:-30], r"bad\.jsonl\.gz: corrupt or truncated gzip"),
    ],
)
def test_bad_data_names_file_and_line(tokenizer, tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CorpusError, match=message):
        first_example(tokenize_stream(local_documents([path]), tokenizer, 8))


def test_missing_and_empty_data(tokenizer, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        local_documents([tmp_path / "nope.txt"])
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(EmptyDatasetError, match="no example"):
        first_example(tokenize_stream(local_documents([empty]), tokenizer, 16))
    with pytest.raises(EmptyDatasetError):
        next(iter(ResumableStream(tokenize_stream(local_documents([empty]), tokenizer, 16))))


def test_eval_set_is_masked_once_and_reproducibly(tokenizer, tmp_path):
    def build():
        blocks = tokenize_stream(local_documents([documents_file(tmp_path)]), tokenizer, 32)
        return masked_eval_set(blocks, tokenizer, 0.15, max_samples=20, seed=3)

    first, second = build(), build()
    assert len(first) == 20 and first["labels"] == second["labels"]
    masked = sum(label != -100 for row in first["labels"] for label in row)
    assert 0.05 < masked / (20 * 32) < 0.3
    # The collator pads pre-masked examples and leaves their labels alone; raw blocks get masked.
    collator = MaskingCollator.for_tokenizer(tokenizer, 0.15)
    batch = collator([first[0], first[1]])
    assert batch["labels"][0].tolist() == first[0]["labels"]
    raw = next(iter(tokenize_stream(local_documents([documents_file(tmp_path)]), tokenizer, 32)))
    assert (collator([raw])["labels"] != -100).any()


# ---- checkpoints and the disk budget ---------------------------------------------------------------------------


def fake_checkpoint(output_dir: Path, step: int, size: int, complete: bool = True) -> Path:
    checkpoint = output_dir / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True)
    (checkpoint / "model.safetensors").write_bytes(b"\0" * size)
    stream_state = {"StreamStateCallback": {"attributes": {"stream_states": [{}]}}}
    state = {"global_step": step, "stateful_callbacks": stream_state}
    text = json.dumps(state)
    (checkpoint / "trainer_state.json").write_text(text if complete else text[: len(text) // 2])
    return checkpoint


def test_interrupted_checkpoint_is_never_picked(tmp_path):
    fake_checkpoint(tmp_path, 10, 100)
    fake_checkpoint(tmp_path, 20, 100)
    fake_checkpoint(tmp_path, 30, 100, complete=False)  # killed while writing trainer_state.json
    (tmp_path / "checkpoint-40").mkdir()  # killed while writing the weights
    assert not is_complete(tmp_path / "checkpoint-30")
    assert last_complete_checkpoint(tmp_path).name == "checkpoint-20"
    assert {p.name for p in remove_incomplete_checkpoints(tmp_path)} == {"checkpoint-30", "checkpoint-40"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-10", "checkpoint-20"]


def save_control() -> TrainerControl:
    control = TrainerControl()
    control.should_save = True
    return control


def test_disk_budget_removes_oldest_but_never_newest_complete(tmp_path):
    mib = 1024**2
    for step in (10, 20, 30):
        fake_checkpoint(tmp_path, step, mib)
    (tmp_path / "checkpoint-40").mkdir()  # incomplete: removable, and not "the newest complete"
    # Room for the three checkpoints we have plus a bit: the next one needs ~1 MiB + the final model.
    budget = DiskBudgetCallback(budget_gb=3.6 * mib / 1024**3, output_dir=tmp_path, num_parameters=0)
    budget.final_model_bytes = mib // 4
    control = budget.on_step_end(None, TrainerState(), save_control())
    assert control.should_save and not control.should_training_stop
    remaining = sorted(p.name for p in tmp_path.iterdir())
    assert "checkpoint-30" in remaining and "checkpoint-10" not in remaining
    assert directory_bytes(tmp_path) + budget.checkpoint_bytes() + budget.final_model_bytes <= budget.budget_bytes


def test_disk_budget_stops_cleanly_when_nothing_is_left_to_remove(tmp_path):
    mib = 1024**2
    fake_checkpoint(tmp_path, 10, mib)
    budget = DiskBudgetCallback(budget_gb=1.5 * mib / 1024**3, output_dir=tmp_path, num_parameters=0)
    control = budget.on_step_end(None, TrainerState(), save_control())
    assert not control.should_save and control.should_training_stop
    assert "disk budget reached" in budget.stop_message and "checkpoint-10" in budget.stop_message
    assert is_complete(tmp_path / "checkpoint-10")  # the newest complete one survives
    budget.final_model_bytes = mib
    assert budget.room_for_final_model(True) is False


def test_stream_state_callback_records_position_only_when_saving(tokenizer, tmp_path):
    stream = ResumableStream(tokenize_stream(local_documents([documents_file(tmp_path)]), tokenizer, 16))
    iterator = iter(stream)
    for _ in range(5):
        next(iterator)
    callback = StreamStateCallback(stream)
    callback.on_step_end(None, TrainerState(), TrainerControl())
    assert callback.state()["attributes"]["stream_states"] is None
    callback.on_step_end(None, TrainerState(), save_control())
    assert callback.state()["attributes"]["stream_states"] == [stream.state_dict()]


def test_resume_refuses_another_process_count_and_cpu_processes_on_old_transformers(tokenizer, tmp_path, monkeypatch):
    import spanish_moe_bert.resume

    transformers = spanish_moe_bert.resume.transformers  # the module it reads the version of

    def stream():
        return ResumableStream(tokenize_stream(local_documents([documents_file(tmp_path)]), tokenizer, 16))

    saved = stream()
    reading = iter(saved)
    next(reading)
    checkpoint = tmp_path / "checkpoint-4"
    checkpoint.mkdir()
    positions = [saved.state_dict(), saved.state_dict()]  # written by two processes
    state = {"stateful_callbacks": {"StreamStateCallback": {"attributes": {"stream_states": positions}}}}
    (checkpoint / "trainer_state.json").write_text(json.dumps(state))
    following = next(reading)["input_ids"]

    def args(world_size, device="cpu"):
        return SimpleNamespace(
            output_dir=str(tmp_path),
            resume_from_checkpoint=None,
            world_size=world_size,
            process_index=0,
            device=torch.device(device),
        )

    with pytest.raises(ValueError, match="checkpoint-4 was written by 2 processes; resume it with as many, not 1"):
        resume_checkpoint(args(1), stream())
    monkeypatch.setattr(transformers, "__version__", "5.17.0")
    with pytest.raises(RuntimeError, match=r"with 2 CPU processes needs transformers >= 5.18, this is 5.17.0"):
        resume_checkpoint(args(2), stream())
    assert is_complete(checkpoint)  # refused before anything was touched
    monkeypatch.setattr(transformers, "__version__", "5.18.0")
    resumed = stream()
    assert resume_checkpoint(args(2), resumed) == checkpoint
    assert next(iter(resumed))["input_ids"] == following  # moved to the saved position


def test_resume_refuses_a_stream_of_other_data_arguments_and_names_them(tmp_path, monkeypatch):
    import run_mlm

    monkeypatch.chdir(REPO)
    base = ["--model_config", "configs/tiny.json", "--output_dir", str(tmp_path), "--max_seq_length", "64"]
    relative = run_mlm.stream_source(run_mlm.parse_args([*base, "--train_file", "data/es_corpus_sample.txt"])[1])
    absolute = run_mlm.stream_source(run_mlm.parse_args([*base, "--train_file", str(SAMPLE)])[1])
    assert relative == absolute  # the same files, however named
    checkpoint = tmp_path / "checkpoint-4"
    checkpoint.mkdir()
    callback = StreamStateCallback(source=relative)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"stateful_callbacks": {"x": None}}))
    check_same_stream(checkpoint, absolute)  # a checkpoint without a recorded source (before 2026-12-08) passes
    state = {"stateful_callbacks": {"StreamStateCallback": callback.state()}}
    (checkpoint / "trainer_state.json").write_text(json.dumps(state))
    check_same_stream(checkpoint, absolute)
    other = run_mlm.stream_source(
        run_mlm.parse_args([*base[:-1], "128", "--train_file", str(SAMPLE), "--line_by_line", "true"])[1]
    )
    with pytest.raises(
        ValueError,
        match=r"checkpoint-4 was trained on a data stream with --line_by_line False \(now "
        r"True\), --max_seq_length 64 \(now 128\), and its saved position .* --model_name_or_path",
    ):
        check_same_stream(checkpoint, other)


# ---- metrics ---------------------------------------------------------------------------------------------------


class RouterOutput:
    def __init__(self, load):
        self.expert_load, self.aux_loss, self.z_loss = torch.tensor(load), torch.tensor(1.5), torch.tensor(0.25)


def test_router_metrics_entropy_and_max_load():
    metrics = RouterMetrics()
    metrics.update(RouterOutput([[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0]]))
    metrics.update(RouterOutput([[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0]]))
    logs = metrics.compute(lambda t: t)
    assert logs["router/aux_loss"] == pytest.approx(1.5) and logs["router/z_loss"] == pytest.approx(0.25)
    assert logs["router/layer_0/load_entropy"] == pytest.approx(1.0)
    assert logs["router/layer_1/load_entropy"] == pytest.approx(0.0, abs=1e-6)
    assert logs["router/layer_0/max_load"] == pytest.approx(0.25) and logs["router/layer_1/max_load"] == 1.0
    assert metrics.compute(lambda t: t) == {}  # reset after each logging step


def test_mlm_metrics_score_only_masked_positions():
    labels = np.array([[-100, 5, 7, -100]])
    predictions = np.array([[1, 5, 2, 9]])
    nll = np.array([[9.0, 1.0, 3.0, 9.0]], dtype=np.float32)
    metrics = mlm_metrics(EvalPrediction(predictions=(predictions, nll), label_ids=labels))
    assert metrics["accuracy"] == 0.5 and metrics["mlm_loss"] == 2.0
    assert metrics["perplexity"] == pytest.approx(math.exp(2.0))


def test_non_finite_loss_raises_before_the_update():
    trainer = MoEMLMTrainer.__new__(MoEMLMTrainer)  # only the guard is exercised
    trainer.state = TrainerState(global_step=41)
    trainer._stop_on_non_finite(torch.tensor(2.0))
    with pytest.raises(NonFiniteLossError, match="step 42"):
        trainer._stop_on_non_finite(torch.tensor(float("nan")))


def test_torch_compile_keeps_a_compiled_version_of_every_layer_kind():
    """Six kinds of layer (3 attentions x sparse/dense FFN), each run with and without a padding mask, make 12
    versions of the one layer code that regional compilation compiles: past Dynamo's default limit (8)."""
    import torch._dynamo
    import torch._dynamo.config as dynamo_config
    from accelerate.utils import compile_regions

    config = make_config(
        num_hidden_layers=6, attention_pattern=["mha", "gqa", "mla"], mlp_layer_types=["sparse", "dense"] * 3
    )
    model = SpanishMoEBertModel(config).eval()
    ids = torch.randint(5, config.vocab_size, (2, 12))
    padded = torch.ones_like(ids).index_fill_(1, torch.tensor([10, 11]), 0)

    def run_all_versions():
        torch._dynamo.reset()
        compiled = compile_regions(model, backend="eager")  # Dynamo's tracing and guards, no code generation
        with torch.no_grad():
            compiled(input_ids=ids)
            compiled(input_ids=ids, attention_mask=padded)

    # raise instead of running eagerly; the patch puts both settings back as they were (monkeypatch would not:
    # Dynamo's config module refuses the delattr it undoes with)
    before = dynamo_config.recompile_limit
    with dynamo_config.patch(fail_on_recompile_limit_hit=True, recompile_limit=8):
        with pytest.raises(Exception, match="recompile_limit"):
            run_all_versions()
        assert allow_a_compiled_version_per_layer_kind(config) == 24
        run_all_versions()
        dynamo_config.recompile_limit = 64
        assert allow_a_compiled_version_per_layer_kind(config) == 64  # never lowered
        assert raise_recompile_limit(8) == 64 and raise_recompile_limit(96) == 96
    torch._dynamo.reset()
    assert dynamo_config.recompile_limit == before and not dynamo_config.fail_on_recompile_limit_hit


def test_an_unreachable_hub_dataset_names_it_and_the_local_files_flag(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # as without network, at once
    with pytest.raises(CorpusError, match=r"'erickfmm/red_pajama_es_hq_35': Couldn't reach .* --train_file FILE"):
        hub_documents("erickfmm/red_pajama_es_hq_35")

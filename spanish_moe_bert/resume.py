"""Exact resume: a killed `run_mlm.py`, rerun with the same command, continues with the losses of a run that never
stopped. What makes it exact, and where each piece lives:

1. A checkpoint holds every process's position in its data stream (`StreamStateCallback`, here) next to the
   weights, optimizer, scheduler and RNG states the Trainer saves. The positions go into `trainer_state.json`,
   which the Trainer writes last, so a checkpoint whose `trainer_state.json` holds them is complete
   (`is_complete`, here); any other was cut off while being written and is removed, never resumed from
   (`resume_checkpoint`, here).
2. The stream restores its own position (`ResumableStream`, here) instead of re-reading what was seen, so the
   Trainer must not skip batches as well: `ignore_data_skip` (`run_mlm.parse_args`). A checkpoint written by N
   processes resumes with N, each from its own position (`resume_checkpoint`).
3. Nothing reads ahead of the training loop, and the DataLoader does not draw its seed from the global RNG, whose
   checkpointed state must match an uninterrupted run's (`stream_dataloader`, here, used by
   `training.MoEMLMTrainer.get_train_dataloader`).
4. Training batches are masked on the fly from the global torch RNG (`data.MaskingCollator`); the evaluation set
   is masked once with a fixed seed (`data.masked_eval_set`), so evaluations before and after a resume score the
   same positions.
5. The MLM output bias starts at the unigram prior only on a fresh start (`run_mlm.run`): on resume the
   checkpoint's weights replace it, so it is not counted.
"""

import json
import logging
import re
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
import transformers
from datasets import IterableDataset
from packaging.version import Version
from torch.utils.data import DataLoader
from transformers import TrainerCallback, TrainingArguments
from transformers.trainer_callback import ExportableState

from .data import NO_TRAINING_EXAMPLE, EmptyDatasetError

logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
# Before 5.18 the Trainer loads a multi-process run's optimizer state to `args.device`, on CPU "cpu:0", which torch
# cannot restore to: the resume would fail after loading the model.
MULTI_PROCESS_CPU_RESUME_TRANSFORMERS = Version("5.18")


# ----------------------------------------------------------------------------------------------------------------
# The stream and its position
# ----------------------------------------------------------------------------------------------------------------


class ResumableStream(torch.utils.data.IterableDataset):
    """An endless stream of training examples: passes over `dataset` epoch after epoch (training length is
    `max_steps`), and exposes the position of the last example it yielded, epoch included, for checkpoints.

    The position is exact only if nothing reads ahead of the training loop: iterate it with `stream_dataloader`.
    """

    def __init__(self, dataset: IterableDataset):
        self.dataset = dataset
        self.epoch = 0
        self._resumed = False

    def __iter__(self):
        while True:
            self.dataset.set_epoch(self.epoch)
            examples = 0
            for example in self.dataset:
                examples += 1
                yield example
            if examples == 0 and not self._resumed:
                raise EmptyDatasetError(NO_TRAINING_EXAMPLE)
            self._resumed = False
            self.epoch += 1

    def state_dict(self) -> dict:
        return self.dataset.state_dict()

    def load_state_dict(self, state: dict) -> None:
        # `datasets` applies the state only to the pass whose epoch matches, so later passes start afresh.
        self.dataset.load_state_dict(state)
        self.epoch = state["epoch"]
        self._resumed = True


def stream_dataloader(stream: ResumableStream, batch_size: int, collate_fn, pin_memory: bool) -> DataLoader:
    """Batches of `stream`, read in this process as the training loop asks for them.

    The stream is already sharded per process and records its position; accelerate would shard it a second time
    and read a batch ahead of the loop. The private generator keeps DataLoader from drawing its seed from the
    global RNG, whose checkpointed state must match an uninterrupted run on resume.
    """
    return DataLoader(
        stream,
        batch_size=batch_size,
        collate_fn=collate_fn,
        num_workers=0,
        pin_memory=pin_memory,
        generator=torch.Generator(),
    )


def _all_ranks(value):
    """`value` from every process (a one-element list outside distributed runs)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [value]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


class StreamStateCallback(TrainerCallback, ExportableState):
    """Puts every rank's training-stream position into each checkpoint's `trainer_state.json`.

    The Trainer stores `state()` of exportable callbacks in `trainer_state.json`, which it writes last: the stream
    position lands in the checkpoint atomically with the step it belongs to.
    """

    def __init__(self, stream=None, source: dict | None = None):
        self.stream = stream
        self.source = source  # the data arguments the positions refer to (`check_same_stream`)
        self.stream_states = None

    def on_step_end(self, args, state, control, **kwargs):
        # The default flow has decided about saving by now; nothing has been read past this step yet.
        if control.should_save:
            self.stream_states = _all_ranks(self.stream.state_dict())
        return control

    def state(self) -> dict:
        return {"args": {}, "attributes": {"stream_states": self.stream_states, "stream_source": self.source}}


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints on disk
# ----------------------------------------------------------------------------------------------------------------


def _saved_attribute(checkpoint: Path, name: str):
    """`StreamStateCallback.<name>` as saved in a checkpoint, or None if it is not there."""
    try:
        state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
        return state["stateful_callbacks"][StreamStateCallback.__name__]["attributes"][name]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_stream_states(checkpoint: Path) -> list[dict] | None:
    """The per-rank stream positions saved in a checkpoint, or None if it is incomplete."""
    return _saved_attribute(checkpoint, "stream_states")


def check_same_stream(checkpoint: Path, source: dict) -> None:
    """Raise a ValueError naming every data argument in which `checkpoint`'s training stream differs from `source`
    (a run resumed with other files or another block length): its saved positions point into other data."""
    saved = _saved_attribute(checkpoint, "stream_source")
    if saved is None:  # a checkpoint from before 2026-12-08
        return
    differ = [key for key in sorted(saved.keys() | source.keys()) if saved.get(key) != source.get(key)]
    if differ:
        fields = ", ".join(f"--{key} {saved.get(key)!r} (now {source.get(key)!r})" for key in differ)
        raise ValueError(
            f"{checkpoint} was trained on a data stream with {fields}, and its saved position points into that "
            f"stream: resume it with the same data arguments, or train on other data from it in another --output_dir "
            f"with --model_name_or_path {checkpoint}"
        )


def is_complete(checkpoint: Path) -> bool:
    return read_stream_states(checkpoint) is not None


def list_checkpoints(output_dir: Path) -> list[Path]:
    """`checkpoint-N` folders, oldest (smallest N) first."""
    if not Path(output_dir).is_dir():
        return []
    found = [(int(m.group(1)), p) for p in Path(output_dir).iterdir() if (m := CHECKPOINT_PATTERN.match(p.name))]
    return [path for _, path in sorted(found) if path.is_dir()]


def last_complete_checkpoint(output_dir: Path) -> Path | None:
    complete = [c for c in list_checkpoints(output_dir) if is_complete(c)]
    return complete[-1] if complete else None


def remove_incomplete_checkpoints(output_dir: Path) -> list[Path]:
    """Delete checkpoints left half-written by a killed run (they would otherwise count as the newest)."""
    removed = [c for c in list_checkpoints(output_dir) if not is_complete(c)]
    for checkpoint in removed:
        logger.warning(f"removing {checkpoint}: it was interrupted while being written")
        shutil.rmtree(checkpoint)
    return removed


def resume_checkpoint(training_args: TrainingArguments, stream: ResumableStream) -> Path | None:
    """The checkpoint to resume from, with `stream` moved to this process's position in it; None to start afresh.

    `--resume_from_checkpoint` if given, else the newest complete checkpoint in output_dir.
    """
    output_dir = Path(training_args.output_dir)
    if training_args.resume_from_checkpoint:
        checkpoint = Path(training_args.resume_from_checkpoint)
        if not is_complete(checkpoint):
            raise ValueError(f"{checkpoint} is not a complete checkpoint written by run_mlm.py")
    else:
        if training_args.process_index == 0:
            remove_incomplete_checkpoints(output_dir)
        checkpoint = last_complete_checkpoint(output_dir)
    if checkpoint is None:
        return None
    stream_states = read_stream_states(checkpoint)
    if len(stream_states) != training_args.world_size:
        raise ValueError(
            f"{checkpoint} was written by {len(stream_states)} processes; resume it with as many, "
            f"not {training_args.world_size}"
        )
    old_transformers = Version(transformers.__version__) < MULTI_PROCESS_CPU_RESUME_TRANSFORMERS
    if training_args.world_size > 1 and training_args.device.type == "cpu" and old_transformers:
        raise RuntimeError(
            f"resuming {checkpoint} with {training_args.world_size} CPU processes needs transformers >= "
            f"{MULTI_PROCESS_CPU_RESUME_TRANSFORMERS}, this is {transformers.__version__} (its Trainer loads the "
            f"optimizer state to 'cpu:0'): pip install 'transformers>={MULTI_PROCESS_CPU_RESUME_TRANSFORMERS}'. "
            "The checkpoint is left as it is."
        )
    stream.load_state_dict(stream_states[training_args.process_index])
    return checkpoint

"""Trainer callbacks of `run_mlm.py`: the disk budget, the masking rate recorded for the model card, and the
routers' per-step bias update of auxiliary-loss-free balancing."""

import logging
import shutil
from pathlib import Path

import torch.distributed as dist
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from .resume import is_complete, last_complete_checkpoint, list_checkpoints

logger = logging.getLogger(__name__)

GIB = 1024**3


def directory_bytes(path: Path) -> int:
    path = Path(path)
    if not path.exists():
        return 0
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def _size(nbytes: int) -> str:
    return f"{nbytes / GIB:.2f} GiB" if nbytes >= GIB else f"{nbytes / 1024**2:.2f} MiB"


def _from_rank_zero(value):
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class MaskingRateCallback(TrainerCallback, ExportableState):
    """Records `--mlm_probability` in `trainer_state.json` (the final model's and every checkpoint's), so that a
    later export of the folder states the rate the model was trained with."""

    def __init__(self, mlm_probability: float):
        self.mlm_probability = mlm_probability

    def state(self) -> dict:
        return {"args": {"mlm_probability": self.mlm_probability}, "attributes": {}}


class RouterBiasCallback(TrainerCallback):
    """Auxiliary-loss-free balancing (`router_bias_update_rate > 0`): after every optimizer step, each router's
    selection bias moves by the expert load of the step (`model.update_router_biases()`)."""

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        update = getattr(model, "update_router_biases", None)
        if update is not None:
            update()


def recorded_mlm_probability(trainer_state: dict | None) -> float | None:
    """The masking rate a `MaskingRateCallback` recorded in a Trainer state, or None."""
    try:
        return trainer_state["stateful_callbacks"][MaskingRateCallback.__name__]["args"]["mlm_probability"]
    except (KeyError, TypeError):
        return None


class DiskBudgetCallback(TrainerCallback):
    """Keeps what the run writes under `output_dir` (checkpoints, TensorBoard logs, final model) within
    `budget_gb`, and within the free space of the device.

    Before each checkpoint it makes room for that checkpoint plus the final model (so the run can always end
    with a saved model) by deleting the oldest checkpoints, never the newest complete one. If that is not enough
    it cancels the save and stops training with a message saying why; the budget is never crossed.
    Sizes are measured from checkpoints already written; the first one is estimated from the parameter count
    (fp32 weights + AdamW's two fp32 moments).
    """

    def __init__(self, budget_gb: float, output_dir: str, num_parameters: int, tokenizer_bytes: int = 0):
        self.budget_bytes = int(budget_gb * GIB)
        self.output_dir = Path(output_dir)
        small_files = 256 * 1024  # config, code files, trainer state, RNG and scheduler states
        self.final_model_bytes = num_parameters * 4 + tokenizer_bytes + small_files
        self.first_checkpoint_bytes = num_parameters * (4 + 8) + tokenizer_bytes + small_files
        self.stop_message = None

    def used_bytes(self) -> int:
        return directory_bytes(self.output_dir)

    def checkpoint_bytes(self) -> int:
        sizes = [directory_bytes(c) for c in list_checkpoints(self.output_dir) if is_complete(c)]
        return max(sizes, default=self.first_checkpoint_bytes)

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.output_dir if self.output_dir.exists() else Path.cwd()).free

    def fits(self, nbytes: int) -> bool:
        return self.used_bytes() + nbytes <= self.budget_bytes and nbytes <= self.free_bytes()

    def make_room(self, nbytes: int) -> bool:
        """Delete the oldest checkpoints (never the newest complete one) until `nbytes` more fit."""
        while not self.fits(nbytes):
            checkpoints = list_checkpoints(self.output_dir)
            newest_complete = last_complete_checkpoint(self.output_dir)
            deletable = [c for c in checkpoints if c != newest_complete]
            if not deletable:
                return False
            logger.warning(f"disk budget: removing {deletable[0]} to make room")
            shutil.rmtree(deletable[0])
        return True

    def _explain(self, nbytes: int, what: str) -> str:
        return (
            f"disk budget reached: {what} needs {_size(nbytes)} but {self.output_dir} already uses "
            f"{_size(self.used_bytes())} of the {_size(self.budget_bytes)} budget (--disk_budget_gb), "
            f"free on device {_size(self.free_bytes())}, and no older checkpoint is "
            f"left to remove. Training stopped cleanly; the newest complete checkpoint is "
            f"{last_complete_checkpoint(self.output_dir)}. Raise --disk_budget_gb or free space, then rerun to resume."
        )

    def on_step_end(self, args, state, control, **kwargs):
        if not control.should_save:
            return control
        needed = self.checkpoint_bytes() + self.final_model_bytes
        # Rank 0 owns the files and decides; every rank must agree on whether to save.
        message = None
        if state.is_world_process_zero and not self.make_room(needed):
            message = self._explain(needed, f"checkpoint {state.global_step} plus the final model")
        message = _from_rank_zero(message)
        if message is not None:
            logger.error(message)
            self.stop_message = message
            control.should_save = False
            control.should_training_stop = True
        return control

    def room_for_final_model(self, is_main_process: bool) -> bool:
        """Make room for the final model (rank 0 decides for all); False, with the reason in `stop_message`,
        if it cannot fit."""
        message = None
        if is_main_process and not self.make_room(self.final_model_bytes):
            message = self._explain(self.final_model_bytes, "the final model")
        message = _from_rank_zero(message)
        if message is None:
            return True
        logger.error(message)
        self.stop_message = message
        return False

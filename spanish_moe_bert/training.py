"""The Trainer of `run_mlm.py`: router and DyT metrics in the logs (their per-layer detail kept off the console), a
NaN/inf guard, MLM evaluation metrics, and a training dataloader that keeps the stream's own position (see
`resume.py`)."""

import math

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from transformers import Trainer
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from .resume import stream_dataloader


def allow_a_compiled_version_per_layer_kind(config, versions_per_kind: int = 4) -> int:
    """Raise Dynamo's recompile limit so that `--torch_compile` compiles every kind of encoder layer.

    Regional compilation compiles the encoder layer once and reuses it for the layers like it. All layers run one
    code object (transformers' `GradientCheckpointingLayer` call), of which Dynamo keeps `recompile_limit` compiled
    versions (8 by default) and runs any further version eagerly, with only a warning. Our layers differ by kind,
    attention (MHA / GQA / MLA) and FFN (sparse / dense), and each kind can need a version with and without a padding
    mask, with static and then dynamic shapes: `versions_per_kind` (4) versions each. Never lowers the limit; returns
    the limit in force."""
    kinds = len(set(zip(config.attention_types, config.mlp_layer_types)))
    return raise_recompile_limit(versions_per_kind * kinds)


def raise_recompile_limit(limit: int) -> int:
    """Let Dynamo keep at least `limit` compiled versions of a code object; never lowers it. Returns the limit."""
    import torch._dynamo.config as dynamo_config

    name = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"  # torch < 2.7
    setattr(dynamo_config, name, max(getattr(dynamo_config, name), limit))
    return getattr(dynamo_config, name)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


class RouterMetrics:
    """Running sums of the router outputs between two logging steps (kept on device: no sync per step)."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.steps = 0
        self.aux_loss = self.z_loss = self.expert_load = None

    @staticmethod
    def _add(total, value):
        value = value.detach().float()
        return value if total is None else total + value

    def update(self, outputs) -> None:
        if getattr(outputs, "expert_load", None) is None:
            return  # a model without sparse layers
        self.steps += 1
        self.expert_load = self._add(self.expert_load, outputs.expert_load)
        if outputs.aux_loss is not None:
            self.aux_loss = self._add(self.aux_loss, outputs.aux_loss)
        if outputs.z_loss is not None:
            self.z_loss = self._add(self.z_loss, outputs.z_loss)

    def compute(self, reduce) -> dict[str, float]:
        """Means since the last call, averaged over processes by `reduce`; then start over.

        Per sparse layer: the entropy of the expert load divided by log(num_experts) (1.0 = perfectly balanced)
        and the largest fraction of tokens sent to one expert (1/num_experts = balanced)."""
        if self.steps == 0:
            return {}
        logs = {}
        for name in ("aux_loss", "z_loss"):
            if getattr(self, name) is not None:
                logs[f"router/{name}"] = reduce(getattr(self, name) / self.steps).item()
        load = reduce(self.expert_load / self.steps)  # [num_sparse_layers, num_experts]
        load = load / load.sum(-1, keepdim=True).clamp_min(1e-12)
        entropy = -(load * load.clamp_min(1e-12).log()).sum(-1) / math.log(load.shape[-1])
        max_load = load.max(-1).values
        for layer, (h, m) in enumerate(zip(entropy.tolist(), max_load.tolist())):
            logs[f"router/layer_{layer}/load_entropy"] = h
            logs[f"router/layer_{layer}/max_load"] = m
        logs["router/load_entropy_min"] = entropy.min().item()
        logs["router/max_load_max"] = max_load.max().item()
        self.reset()
        return logs


# A large model logs some 40 of these at every step: TensorBoard, the other `report_to` integrations and the log
# history in trainer_state.json get them, the console only the summary (router/aux_loss, router/load_entropy_min...).
PER_LAYER_PREFIXES = ("router/layer_", "dyt/", "eval_dyt/")


def console_logs(logs: dict[str, float]) -> dict[str, float]:
    """The logs without their per-layer router and DyT metrics: what a person reads while training runs."""
    return {key: value for key, value in logs.items() if not key.startswith(PER_LAYER_PREFIXES)}


class SummaryProgressCallback(ProgressCallback):
    """The Trainer's progress bar, writing only `console_logs` at each logging step."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        super().on_log(args, state, control, logs=console_logs(logs), **kwargs)


class SummaryPrinterCallback(PrinterCallback):
    """What the Trainer prints instead of a progress bar (`--disable_tqdm`), limited to `console_logs`."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        super().on_log(args, state, control, logs=console_logs(logs), **kwargs)


class MoEMLMTrainer(Trainer):
    """`Trainer` for MoE masked-LM pre-training on a `resume.ResumableStream`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The model's loss is a per-batch mean (MLM over the batch's masked tokens + router losses), not a sum to
        # be normalized over the whole accumulated batch: the Trainer must divide it by the accumulation steps.
        self.model_accepts_loss_kwargs = False
        self.router_metrics = RouterMetrics()
        # The console printer the Trainer chose (a progress bar, or plain prints with disable_tqdm) gives way to its
        # summary twin; the integrations' callbacks are left as they are.
        console = {ProgressCallback: SummaryProgressCallback, PrinterCallback: SummaryPrinterCallback}
        for printer, summary in console.items():
            if self.pop_callback(printer) is not None:
                self.add_callback(summary)

    def get_train_dataloader(self) -> DataLoader:
        return stream_dataloader(
            self.train_dataset, self._train_batch_size, self.data_collator, self.args.dataloader_pin_memory
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if model.training:
            self.router_metrics.update(outputs)
        return (loss, outputs) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        # Checked after backward, where the Trainer waits for the loss anyway (its NaN filter for the logs), rather than
        # between forward and backward, which would be a second wait for the GPU in every micro-batch.
        self._stop_on_non_finite(loss)
        return loss

    def _stop_on_non_finite(self, loss: torch.Tensor) -> None:
        # Raised before the optimizer step, so the weights (and any later save) stay finite.
        # All processes agree, otherwise the ones that go on would wait forever in the next all-reduce.
        bad = (~torch.isfinite(loss.detach())).float()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        if bad.item():
            raise NonFiniteLossError(
                f"training loss is {loss.item()} (NaN or inf) at step {self.state.global_step + 1}; training stopped "
                f"before the bad update, nothing after the last good checkpoint was saved. Lower --learning_rate, "
                f"raise --warmup_steps or use --max_grad_norm, then resume from the last checkpoint."
            )

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        logs = {**logs, **self.router_metrics.compute(lambda t: self.accelerator.reduce(t, reduction="mean"))}
        if "loss" in logs:  # training logs: DyT alphas
            logs.update({f"dyt/{name}": value for name, value in self.model.dyt_statistics().items()})
        if "eval_loss" in logs:  # evaluation logs: DyT saturation on a few validation blocks (one no-grad forward)
            logs.update({f"eval_dyt/{name}": value for name, value in self._dyt_saturation().items()})
        super().log(logs, start_time)

    def _dyt_saturation(self) -> dict[str, float]:
        examples = [self.eval_dataset[i] for i in range(min(8, len(self.eval_dataset)))]
        batch = self.data_collator(examples)
        device = self.args.device
        stats = self.model.dyt_statistics(batch["input_ids"].to(device), batch["attention_mask"].to(device))
        return {name: value for name, value in stats.items() if name.endswith("saturation")}


def perplexity(mlm_loss: float) -> float:
    return math.exp(mlm_loss) if mlm_loss < 80 else float("inf")


def logits_to_predictions(logits, labels):
    """Keep per-token argmax and label log-loss instead of the logits (for `compute_metrics`), both [batch, length].

    The logits are [batch, length, vocab], or [labelled, vocab] when the model predicts only at the labelled
    positions (`config.sparse_prediction`); both come back in the labels' shape, so every process contributes
    arrays the Trainer can pad and gather alike."""
    if isinstance(logits, tuple):  # outputs beyond the logits (router statistics) come along as a tuple
        logits = logits[0]
    labelled = labels != -100
    logits = logits[labelled] if logits.dim() == 3 else logits  # (N, V)
    nll = torch.nn.functional.cross_entropy(logits.float(), labels[labelled], reduction="none")
    predictions = torch.full_like(labels, -100).masked_scatter(labelled, logits.argmax(-1))
    return predictions, torch.zeros(labels.shape, dtype=nll.dtype, device=nll.device).masked_scatter(labelled, nll)


def mlm_metrics(eval_prediction) -> dict[str, float]:
    """Masked-token accuracy, MLM loss (without router losses) and its perplexity over the masked positions."""
    predictions, nll = eval_prediction.predictions
    labels = eval_prediction.label_ids
    masked = labels != -100
    mlm_loss = float(np.asarray(nll, dtype=np.float64)[masked].mean())
    return {
        "accuracy": float((predictions[masked] == labels[masked]).mean()),
        "mlm_loss": mlm_loss,
        "perplexity": perplexity(mlm_loss),
    }

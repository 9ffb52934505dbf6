"""The MoE router losses (load balancing, z-loss) added to a Sentence Transformers loss, GradCache included."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch
from torch import nn

from modeling_spanish_moe_bert import router_loss

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)


def encoder_route(model: SentenceTransformer) -> list[nn.Module]:
    """The modules our encoder's texts go through: the model's own, or the "document" route of a Router (an
    inference-free sparse encoder, whose queries skip the encoder)."""
    modules = list(model)
    router = getattr(modules[0], "sub_modules", None)
    return list(router["document"]) if router is not None else modules


def uses_gradient_cache(loss: nn.Module) -> bool:
    """Whether a loss (or the loss it wraps, e.g. inside MatryoshkaLoss) embeds with GradCache."""
    while loss is not None:
        if getattr(loss, "uses_gradient_cache", False):
            return True
        loss = getattr(loss, "loss", None)
    return False


class _WithLossGradient(torch.autograd.Function):
    """`output` unchanged; when the gradient of `output` is back-propagated, that of `scale * loss` goes with it
    (as Megatron-LM's MoEAuxLossAutoScaler does): a loss computed mid-forward joins the one backward pass."""

    @staticmethod
    def forward(ctx, output: torch.Tensor, loss: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(scale)
        return output.view_as(output)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (scale,) = ctx.saved_tensors
        return grad, scale, None


class RouterLossWrapper(nn.Module):
    """A contrastive loss plus the MoE router losses (load balancing, z-loss) of the encoder's forwards.

    Sentence Transformers calls the encoder's ``forward`` directly, past module hooks, so forward hooks
    on its sparse-MoE layers collect each layer's router statistics instead. Each is weighted by
    1/num_layers (the encoder's ``aux_loss`` is the layer mean) and by its forward's share of the batch's
    sentences that the encoder reads (anchors, positives and negatives are separate forwards; an inference-free
    encoder's queries skip it), so the added term is
    ``router_loss(config, outputs)`` of the whole batch. The parts are returned as a dict ("contrastive", or the
    wrapped loss's own parts where it returns a dict, as SpladeLoss does, and "router"), which the trainer sums and
    logs separately.

    With a GradCache loss the forwards that carry gradients run inside the backward pass, mini-batch
    by mini-batch. There each layer's router loss rides on that layer's output (`_WithLossGradient`), scaled
    like the contrastive loss (e.g. by gradient accumulation), so that GradCache's one backward per mini-batch
    carries it too; the no-grad first pass gives the logged value. (A backward of its own per layer would
    run through every layer below it again: 2.4x the step time with mini's 6 MoE layers.)
    """

    def __init__(self, loss: nn.Module, model: SentenceTransformer, weight: float = 1.0):
        super().__init__()
        self.loss = loss
        self.model = model
        self._router = getattr(model[0], "sub_modules", None)  # {route: modules} of a Router, else None
        self._encoder_module = encoder_route(model)[0]
        encoder = self._encoder_module.model
        self.config = encoder.config
        self.weight = weight
        self.cached = uses_gradient_cache(loss)
        # The class comes from the checkpoint's remote code, so match it by name, not isinstance.
        moe_layers = [m for m in encoder.modules() if type(m).__name__ == "SpanishMoEBertSparseMoE"]
        if not moe_layers:
            logger.warning("the encoder has no sparse MoE layer: no router losses to add")
        self._num_layers = max(len(moe_layers), 1)
        self._hooks = [m.register_forward_hook(self._on_moe_forward) for m in moe_layers]
        self._terms: list[torch.Tensor] = []
        self._batch_rows = 1
        self._grad_scale = torch.tensor(1.0)

    def remove_hooks(self) -> None:
        """Stop collecting router losses (for a model that outlives this loss)."""
        for hook in self._hooks:
            hook.remove()

    def _on_moe_forward(self, module, inputs, output):
        if not module.training:
            return
        hidden_states, (_, stats) = inputs[0], output
        share = hidden_states.shape[0] / self._batch_rows / self._num_layers
        loss = self.weight * share * router_loss(self.config, stats)
        if self.cached and torch.is_grad_enabled():  # GradCache replay, inside backward
            y, stats = output
            return _WithLossGradient.apply(y, loss, self._grad_scale.to(loss.dtype)), stats
        self._terms.append(loss)

    def _reaches_encoder(self, features: dict) -> bool:
        """Whether these texts go through the encoder (not, under a Router, through a route without it)."""
        if self._router is None:
            return True
        route = features.get("task") or self.model[0].default_route
        return any(m is self._encoder_module for m in self._router[route])

    def _remember_grad_scale(self, grad: torch.Tensor) -> None:
        self._grad_scale = grad.detach()

    def forward(self, sentence_features, labels) -> dict[str, torch.Tensor]:
        sentence_features = list(sentence_features)
        self._batch_rows = max(sum(f["input_ids"].shape[0] for f in sentence_features if self._reaches_encoder(f)), 1)
        self._terms = []
        parts = self.loss(sentence_features, labels)
        parts = dict(parts) if isinstance(parts, dict) else {"contrastive": parts}  # SpladeLoss returns its parts
        device = next(iter(parts.values())).device
        router = sum(self._terms, torch.zeros((), device=device))
        carrier = next((name for name, part in parts.items() if part.requires_grad), None)
        if self.cached and carrier is not None:
            # A new node whose gradient arrives before GradCache's replay hook on the loss runs.
            parts[carrier] = parts[carrier].clone()
            parts[carrier].register_hook(self._remember_grad_scale)
            router = router.detach()
        return {**parts, "router": router}

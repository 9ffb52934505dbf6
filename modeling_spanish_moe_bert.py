"""Spanish MoE-BERT: a BERT-like encoder with RoPE, mixed attention types (MHA / GQA / MLA), Dynamic Tanh
normalization and a sparse Mixture-of-Experts SwiGLU feed-forward.

Read top-down: normalization, rotary embedding, attention (standard/grouped and latent), feed-forward (dense
SwiGLU, experts, router + MoE block), encoder layer, pre-trained base class, base model, task heads.
This file is copied into every exported checkpoint and loaded there as remote code, so it imports only
installed libraries and its sibling configuration file.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    MaskedLMOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.utils.generic import can_return_tuple

try:  # loaded as Hub remote code: a module of the package transformers_modules.<checkpoint>
    from .configuration_spanish_moe_bert import AUTO_MAP, SpanishMoEBertConfig
except ImportError:  # installed as a top-level module
    from configuration_spanish_moe_bert import AUTO_MAP, SpanishMoEBertConfig

# |tanh| above this counts as saturated: the gradient through it is below 2% of its value at 0.
DYT_SATURATION_THRESHOLD = 0.99


# ----------------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------------


@dataclass
class SpanishMoEBertModelOutput(BaseModelOutputWithPooling):
    """`BaseModelOutputWithPooling` plus the router losses and the expert load of the MoE layers.

    aux_loss: load-balancing loss averaged over MoE layers (1.0 for perfectly uniform routing).
    z_loss: router z-loss averaged over MoE layers.
    expert_load: `(num_moe_layers, num_experts)` share of routed token slots per expert (detached).
    """

    aux_loss: torch.FloatTensor | None = None
    z_loss: torch.FloatTensor | None = None
    expert_load: torch.FloatTensor | None = None


@dataclass
class SpanishMoEBertMaskedLMOutput(MaskedLMOutput):
    """`MaskedLMOutput` whose `loss` is `mlm_loss + router_aux_loss_coef * aux_loss + router_z_loss_coef * z_loss`."""

    mlm_loss: torch.FloatTensor | None = None
    aux_loss: torch.FloatTensor | None = None
    z_loss: torch.FloatTensor | None = None
    expert_load: torch.FloatTensor | None = None


# ----------------------------------------------------------------------------------------------------------
# Normalization
# ----------------------------------------------------------------------------------------------------------


class DynamicTanh(nn.Module):
    """DyT (Zhu et al., 2025): `weight * tanh(alpha * x) + bias`, a normalization-free stand-in for LayerNorm."""

    def __init__(self, hidden_size: int, alpha_init: float):
        super().__init__()
        self.alpha_init = alpha_init
        self.alpha = nn.Parameter(torch.full((1,), alpha_init))
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.bias = nn.Parameter(torch.zeros(hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.alpha * x) * self.weight + self.bias


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.float().pow(2).mean(-1, keepdim=True)
        return (x.float() * torch.rsqrt(variance + self.eps)).to(x.dtype) * self.weight


def build_norm(config: SpanishMoEBertConfig, position: str, hidden_size: int | None = None) -> nn.Module:
    """The configured normalization; `position` ("attention" or "ffn") picks the DyT alpha init."""
    hidden_size = hidden_size or config.hidden_size
    if config.norm_type == "dyt":
        return DynamicTanh(hidden_size, config.dyt_alpha_init(position))
    if config.norm_type == "rmsnorm":
        return RMSNorm(hidden_size, config.norm_eps)
    return nn.LayerNorm(hidden_size, eps=config.norm_eps)


# ----------------------------------------------------------------------------------------------------------
# Rotary position embedding
# ----------------------------------------------------------------------------------------------------------


class SpanishMoEBertRotaryEmbedding(nn.Module):
    """cos/sin tables for one rotary dimension (head_dim for MHA/GQA, qk_rope_head_dim for MLA)."""

    def __init__(self, dim: int, theta: float):
        super().__init__()
        self.dim = dim
        self.theta = theta
        self.register_buffer("inv_freq", self.compute_inv_freq(), persistent=False)

    def compute_inv_freq(self) -> torch.Tensor:
        return 1.0 / (self.theta ** (torch.arange(0, self.dim, 2, dtype=torch.float) / self.dim))

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq.to(x.device)  # (B, T, dim/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, dim)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate `x` of shape (B, heads, T, dim) by the (B, T, dim) tables."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return (x.float() * cos + rotate_half(x.float()) * sin).to(x.dtype)


# ----------------------------------------------------------------------------------------------------------
# Attention
# ----------------------------------------------------------------------------------------------------------


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, kv_heads, T, d) -> (B, kv_heads * n_rep, T, d)."""
    if n_rep == 1:
        return x
    b, h, t, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, t, d).reshape(b, h * n_rep, t, d)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    key = repeat_kv(key, module.num_key_value_groups)
    value = repeat_kv(value, module.num_key_value_groups)
    att = torch.matmul(query, key.transpose(2, 3)) * scaling  # (B, H, T, T)
    if attention_mask is not None:
        att = att + attention_mask
    att = F.softmax(att, dim=-1, dtype=torch.float32).to(query.dtype)
    att = F.dropout(att, p=dropout, training=module.training)
    y = torch.matmul(att, value).transpose(1, 2).contiguous()  # (B, T, H, d)
    return y, att


def attention_interface(config: SpanishMoEBertConfig) -> Callable:
    return ALL_ATTENTION_FUNCTIONS.get_interface(config._attn_implementation, eager_attention_forward)


class SpanishMoEBertAttention(nn.Module):
    """Multi-head attention; grouped-query when `num_key_value_heads < num_attention_heads` (layer type "gqa")."""

    def __init__(self, config: SpanishMoEBertConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.is_causal = False
        self.head_dim = config.head_dim
        self.rope_dim = config.head_dim
        self.num_heads = config.num_attention_heads
        kv_heads = config.num_key_value_heads if config.attention_types[layer_idx] == "gqa" else self.num_heads
        self.num_key_value_heads = kv_heads
        self.num_key_value_groups = self.num_heads // kv_heads
        self.scaling = self.head_dim**-0.5
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=config.attention_bias)
        self.k_proj = nn.Linear(config.hidden_size, kv_heads * self.head_dim, bias=config.attention_bias)
        self.v_proj = nn.Linear(config.hidden_size, kv_heads * self.head_dim, bias=config.attention_bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=config.attention_bias)
        self.o_proj.is_residual_output = True

    def forward(self, hidden_states, position_embeddings, attention_mask=None, **kwargs):
        b, t, _ = hidden_states.shape
        q = self.q_proj(hidden_states).view(b, t, -1, self.head_dim).transpose(1, 2)  # (B, H, T, d)
        k = self.k_proj(hidden_states).view(b, t, -1, self.head_dim).transpose(1, 2)  # (B, KV, T, d)
        v = self.v_proj(hidden_states).view(b, t, -1, self.head_dim).transpose(1, 2)
        cos, sin = position_embeddings
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        y, att = attention_interface(self.config)(
            self,
            q,
            k,
            v,
            attention_mask,
            dropout=self.config.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        return self.o_proj(y.reshape(b, t, -1)), att


class SpanishMoEBertLatentAttention(nn.Module):
    """Multi-head latent attention (DeepSeek-V2, layer type "mla").

    Keys and values come from one low-rank latent `c_kv` (`kv_lora_rank`); each query/key head is the concat of
    a position-free part (`qk_nope_head_dim`) and a RoPE part (`qk_rope_head_dim`) whose key is computed once
    from the input and shared by all heads. Queries are optionally low-rank too (`q_lora_rank`).
    """

    def __init__(self, config: SpanishMoEBertConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.is_causal = False
        self.num_heads = config.num_attention_heads
        self.num_key_value_groups = 1
        self.nope_dim = config.qk_nope_head_dim
        self.rope_dim = config.qk_rope_head_dim
        self.v_head_dim = config.v_head_dim
        self.qk_head_dim = self.nope_dim + self.rope_dim
        self.scaling = self.qk_head_dim**-0.5
        q_out = self.num_heads * self.qk_head_dim
        if config.q_lora_rank is None:
            self.q_proj = nn.Linear(config.hidden_size, q_out, bias=config.attention_bias)
        else:
            self.q_proj = nn.Sequential(
                nn.Linear(config.hidden_size, config.q_lora_rank, bias=config.attention_bias),
                build_norm(config, "attention", config.q_lora_rank),
                nn.Linear(config.q_lora_rank, q_out, bias=False),
            )
        self.kv_a_proj = nn.Linear(config.hidden_size, config.kv_lora_rank + self.rope_dim, bias=config.attention_bias)
        self.kv_a_norm = build_norm(config, "attention", config.kv_lora_rank)
        self.kv_b_proj = nn.Linear(config.kv_lora_rank, self.num_heads * (self.nope_dim + self.v_head_dim), bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.v_head_dim, config.hidden_size, bias=config.attention_bias)
        self.o_proj.is_residual_output = True

    def forward(self, hidden_states, position_embeddings, attention_mask=None, **kwargs):
        b, t, _ = hidden_states.shape
        q = self.q_proj(hidden_states).view(b, t, self.num_heads, self.qk_head_dim).transpose(1, 2)
        q_nope, q_rope = q.split([self.nope_dim, self.rope_dim], dim=-1)  # (B, H, T, nope), (B, H, T, rope)

        c_kv, k_rope = self.kv_a_proj(hidden_states).split([self.config.kv_lora_rank, self.rope_dim], dim=-1)
        kv = self.kv_b_proj(self.kv_a_norm(c_kv)).view(b, t, self.num_heads, self.nope_dim + self.v_head_dim)
        k_nope, v = kv.transpose(1, 2).split([self.nope_dim, self.v_head_dim], dim=-1)
        k_rope = k_rope.view(b, 1, t, self.rope_dim)  # one RoPE key shared by all heads

        cos, sin = position_embeddings
        q_rope, k_rope = apply_rotary(q_rope, cos, sin), apply_rotary(k_rope, cos, sin)
        q = torch.cat((q_nope, q_rope), dim=-1)
        k = torch.cat((k_nope, k_rope.expand(b, self.num_heads, t, self.rope_dim)), dim=-1)
        # Fused SDPA kernels need one head size for q, k and v: zero-pad v to the q/k size, drop the padding after.
        pad_v = self.v_head_dim < self.qk_head_dim and self.config._attn_implementation != "eager"
        if pad_v:
            v = F.pad(v, (0, self.qk_head_dim - self.v_head_dim))
        y, att = attention_interface(self.config)(
            self,
            q,
            k,
            v,
            attention_mask,
            dropout=self.config.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        if pad_v:
            y = y[..., : self.v_head_dim]
        return self.o_proj(y.reshape(b, t, -1)), att


ATTENTION_CLASSES = {
    "mha": SpanishMoEBertAttention,
    "gqa": SpanishMoEBertAttention,
    "mla": SpanishMoEBertLatentAttention,
}


# ----------------------------------------------------------------------------------------------------------
# Feed-forward: dense SwiGLU, and the sparse Mixture of SwiGLU experts
# ----------------------------------------------------------------------------------------------------------


class SpanishMoEBertMLP(nn.Module):
    """Dense SwiGLU: `down(act(gate(x)) * up(x))`."""

    def __init__(self, config: SpanishMoEBertConfig, intermediate_size: int | None = None):
        super().__init__()
        intermediate_size = intermediate_size or config.intermediate_size
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, config.hidden_size, bias=False)
        self.down_proj.is_residual_output = True
        self.act = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(self.act(gate) * up)


def grouped_matmul(x: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """`x[rows of group e] @ weight[e]` for contiguous row groups ending at `offsets` (int32, cumulative).

    One grouped GEMM where torch has a kernel for it (CPU, and CUDA bf16 on sm80+); elsewhere (older torch,
    fp16/fp32 on CUDA, e.g. a Tesla P40) one matmul per expert group.
    """
    if hasattr(F, "grouped_mm") and (x.device.type == "cpu" or _cuda_grouped_mm_ok(x)):
        return F.grouped_mm(x, weight, offs=offsets)
    ends = offsets.tolist()
    starts = [0] + ends[:-1]
    return torch.cat([x[s:e] @ weight[i] for i, (s, e) in enumerate(zip(starts, ends))])


def _cuda_grouped_mm_ok(x: torch.Tensor) -> bool:
    return x.device.type == "cuda" and x.dtype == torch.bfloat16 and torch.cuda.get_device_capability(x.device)[0] >= 8


class SpanishMoEBertExperts(nn.Module):
    """`num_experts` SwiGLU experts stored as stacked tensors (compact state dict, batched GEMMs).

    Rows come grouped by expert in one of two layouts (see `ExpertLayout`): padded to the same `capacity` per
    expert, run as one `bmm` per projection, or packed back to back, run as grouped GEMMs over `offsets`.
    """

    def __init__(self, config: SpanishMoEBertConfig):
        super().__init__()
        e, h, i = config.num_experts, config.hidden_size, config.moe_intermediate_size
        self.gate_up_proj = nn.Parameter(torch.empty(e, h, 2 * i))  # (E, in, out)
        self.down_proj = nn.Parameter(torch.empty(e, i, h))
        self.act = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor, weights: torch.Tensor, layout: "ExpertLayout") -> torch.Tensor:
        """x: (rows, hidden) in `layout`; weights: (rows,) routing weight of each row."""
        dtype = _compute_dtype(x)
        x, gate_up_proj, down_proj = x.to(dtype), self.gate_up_proj.to(dtype), self.down_proj.to(dtype)
        if layout.capacity is not None:
            e = gate_up_proj.shape[0]
            h = torch.bmm(x.view(e, layout.capacity, x.shape[-1]), gate_up_proj).flatten(0, 1)  # (E * cap, 2I)
        else:
            h = grouped_matmul(x, gate_up_proj, layout.offsets)  # (rows, 2I)
        gate, up = h.chunk(2, dim=-1)
        # The routing weight is applied before the (linear) down projection: same result, I-wide not H-wide.
        h = self.act(gate) * up * weights.to(dtype)[:, None]
        if layout.capacity is not None:
            return torch.bmm(h.view(e, layout.capacity, h.shape[-1]), down_proj).flatten(0, 1)
        return grouped_matmul(h, down_proj, layout.offsets)

    def forward_per_expert(
        self, x: torch.Tensor, slot_expert: torch.Tensor, slot_weights: torch.Tensor, tokens_per_expert: torch.Tensor,
        top_k: int,
    ) -> torch.Tensor:  # fmt: skip
        """Inference without autograd: (tokens, H) -> (tokens, H), one expert at a time; slot t * k + j is token
        t's j-th expert, `slot_weights` its routing weight.

        Each expert gathers its tokens, runs them and adds them back, so every buffer is expert-sized; on CPU
        this beats gathering all tokens * k rows at once from about 64 tokens up (`benchmarks/bench_moe.py`).
        With autograd the batched layout is faster, since per-expert slices of the stacked weights make
        their gradients accumulate expert by expert.
        """
        dtype = _compute_dtype(x)
        order = slot_expert.argsort(stable=True)  # slots grouped by expert
        token, weights = order // top_k, slot_weights[order].to(dtype)
        y = x.new_zeros(x.shape, dtype=dtype)
        start = 0
        for e, count in enumerate(tokens_per_expert.tolist()):
            if count:
                rows = token[start : start + count]
                gate, up = (x.index_select(0, rows).to(dtype) @ self.gate_up_proj[e].to(dtype)).chunk(2, dim=-1)
                h = self.act(gate) * up * weights[start : start + count, None]
                y.index_add_(0, rows, h @ self.down_proj[e].to(dtype))
            start += count
        return y


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """grouped_mm is not autocast-aware: follow autocast by hand."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


@dataclass
class ExpertLayout:
    """Where each routed slot (token t's j-th expert is slot t * k + j) lives among the expert rows.

    row_slot: (rows,) the slot in each row, or `num_slots` for a padding row (a zero input).
    slot_row: (num_slots,) the row of each slot.
    offsets: (E,) cumulative row counts per expert (packed layout), or None.
    capacity: rows per expert (padded layout), or None.
    """

    row_slot: torch.Tensor
    slot_row: torch.Tensor
    offsets: torch.Tensor | None
    capacity: int | None


# Padding every expert to the busiest one's load pays off on CPU, where one bmm runs several times faster than
# a grouped GEMM of the same FLOPs, as long as padding at most doubles the rows.
MAX_PADDING_FACTOR = 2.0


def expert_layout(slot_expert: torch.Tensor, tokens_per_expert: torch.Tensor) -> ExpertLayout:
    """`slot_expert`: (slots,) the expert of each slot; `tokens_per_expert`: (E,) its bincount."""
    num_slots, num_experts = slot_expert.numel(), tokens_per_expert.numel()
    order = slot_expert.argsort(stable=True)  # slots grouped by expert
    offsets = tokens_per_expert.cumsum(0)
    use_grouped_kernel = slot_expert.device.type == "cuda" and hasattr(F, "grouped_mm")
    capacity = None if use_grouped_kernel else int(tokens_per_expert.max())
    if capacity is not None and num_experts * capacity <= MAX_PADDING_FACTOR * num_slots:
        rank_in_expert = torch.arange(num_slots, device=order.device) - (offsets - tokens_per_expert)[slot_expert[order]]
        sorted_row = slot_expert[order] * capacity + rank_in_expert
        row_slot = torch.full((num_experts * capacity,), num_slots, dtype=order.dtype, device=order.device)
        row_slot[sorted_row] = order
        slot_row = torch.empty_like(order)
        slot_row[order] = sorted_row
        return ExpertLayout(row_slot, slot_row, None, capacity)
    return ExpertLayout(order, order.argsort(), offsets.to(torch.int32), None)


def dispatch_rows(x: torch.Tensor, layout: ExpertLayout, top_k: int) -> torch.Tensor:
    """(tokens, H) -> (rows, H): each token copied to the rows of its k slots; padding rows are zero."""
    x = torch.cat([x, x.new_zeros(1, x.shape[-1])])
    return x.index_select(0, layout.row_slot // top_k)


def combine_rows(y: torch.Tensor, layout: ExpertLayout, top_k: int) -> torch.Tensor:
    """(rows, H) -> (tokens, H): the sum of each token's k slot rows."""
    return y.index_select(0, layout.slot_row).view(-1, top_k, y.shape[-1]).sum(dim=1)


class _Dispatch(torch.autograd.Function):
    """`dispatch_rows`, whose gradient is `combine_rows`: a gather, where autograd would scatter-add."""

    @staticmethod
    def forward(ctx, x, layout, top_k):
        ctx.layout, ctx.top_k = layout, top_k
        return dispatch_rows(x, layout, top_k)

    @staticmethod
    def backward(ctx, grad):
        return combine_rows(grad, ctx.layout, ctx.top_k), None, None


class _Combine(torch.autograd.Function):
    """`combine_rows`, whose gradient is `dispatch_rows`."""

    @staticmethod
    def forward(ctx, y, layout, top_k):
        ctx.layout, ctx.top_k = layout, top_k
        return combine_rows(y, layout, top_k)

    @staticmethod
    def backward(ctx, grad):
        return dispatch_rows(grad, ctx.layout, ctx.top_k), None, None


class SpanishMoEBertRouter(nn.Module):
    """Softmax top-k router. Returns fp32 logits, the chosen experts and their (renormalised) weights."""

    def __init__(self, config: SpanishMoEBertConfig):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.norm_topk_prob = config.norm_topk_prob
        self.jitter_noise = config.router_jitter_noise
        self.weight = nn.Parameter(torch.empty(config.num_experts, config.hidden_size))

    def forward(self, x: torch.Tensor):
        if self.training and self.jitter_noise > 0:
            x = x * torch.empty_like(x).uniform_(1.0 - self.jitter_noise, 1.0 + self.jitter_noise)
        logits = F.linear(x.float(), self.weight.float())  # (T, E), fp32 for a stable softmax and z-loss
        probs = logits.softmax(dim=-1)
        top_w, top_idx = probs.topk(self.top_k, dim=-1)  # (T, k)
        if self.norm_topk_prob:
            top_w = top_w / top_w.sum(dim=-1, keepdim=True)
        return logits, probs, top_w, top_idx


def load_balancing_loss(probs: torch.Tensor, tokens_per_expert: torch.Tensor) -> torch.Tensor:
    """Switch Transformer loss `E * sum_e f_e * P_e`: 1.0 when routing is uniform, larger when it is not.

    f_e is the share of routed token slots sent to expert e, P_e the mean router probability of e.
    """
    num_experts = probs.shape[-1]
    f = tokens_per_expert.float() / tokens_per_expert.sum().clamp(min=1)
    mean_probs = probs.sum(dim=0) / max(probs.shape[0], 1)  # 0, not NaN, for a batch of padding only
    return num_experts * torch.sum(f * mean_probs)


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE z-loss: mean squared log-partition of the router logits, keeps them small."""
    return torch.logsumexp(logits, dim=-1).square().sum() / max(logits.shape[0], 1)


class SpanishMoEBertSparseMoE(nn.Module):
    """Routes each real (non-padding) token to its top-k experts without dropping any.

    Dispatch: the tokens * k slots are grouped by expert (argsort + bincount), gathered once into expert rows,
    run through one batched GEMM per projection, and summed back per token; no per-token loop and no dense
    (tokens x experts x hidden) tensor. Gathering and summing back are each other's adjoint, so the backward
    pass is gathers too. CPU inference (no autograd) runs the experts one at a time instead, which keeps every
    buffer expert-sized and is faster there.
    """

    def __init__(self, config: SpanishMoEBertConfig):
        super().__init__()
        self.num_experts = config.num_experts
        self.top_k = config.num_experts_per_tok
        self.router = SpanishMoEBertRouter(config)
        self.experts = SpanishMoEBertExperts(config)

    def forward(self, hidden_states: torch.Tensor, token_mask: torch.Tensor | None = None):
        b, t, h = hidden_states.shape
        x = hidden_states.reshape(-1, h)  # (B*T, H)
        real = None
        if token_mask is not None:
            real = token_mask.reshape(-1).nonzero().squeeze(1)
            x = x[real]  # (tokens, H): padding takes no expert compute and no part in the router losses

        logits, probs, top_w, top_idx = self.router(x)
        slot_expert = top_idx.reshape(-1)  # (tokens * k,)
        tokens_per_expert = torch.bincount(slot_expert, minlength=self.num_experts)
        if x.device.type == "cpu" and not torch.is_grad_enabled():
            y = self.experts.forward_per_expert(x, slot_expert, top_w.reshape(-1), tokens_per_expert, self.top_k)
            y = y.to(x.dtype)
        else:
            layout = expert_layout(slot_expert, tokens_per_expert)
            row_weights = torch.cat([top_w.reshape(-1), top_w.new_zeros(1)])[layout.row_slot]
            x_rows = _Dispatch.apply(x, layout, self.top_k)  # (rows, H)
            y_rows = self.experts(x_rows, row_weights, layout)
            y = _Combine.apply(y_rows, layout, self.top_k).to(x.dtype)  # (tokens, H)

        if real is not None:
            y = torch.zeros_like(hidden_states.reshape(-1, h)).index_copy_(0, real, y)
        stats = RouterStats(
            aux_loss=load_balancing_loss(probs, tokens_per_expert),
            z_loss=router_z_loss(logits),
            expert_load=(tokens_per_expert.float() / max(slot_expert.numel(), 1)).detach(),
        )
        return y.view(b, t, h), stats


@dataclass
class RouterStats:
    aux_loss: torch.Tensor
    z_loss: torch.Tensor
    expert_load: torch.Tensor


# ----------------------------------------------------------------------------------------------------------
# Encoder layer
# ----------------------------------------------------------------------------------------------------------


class SpanishMoEBertLayer(GradientCheckpointingLayer):
    """Pre-norm block: `x + attn(norm(x))`, then `x + ffn(norm(x))`, with the attention and FFN type of its index."""

    def __init__(self, config: SpanishMoEBertConfig, layer_idx: int):
        super().__init__()
        self.attention_type = config.attention_types[layer_idx]
        self.is_sparse = config.mlp_layer_types[layer_idx] == "sparse"
        self.attn_norm = build_norm(config, "attention")
        self.attn = ATTENTION_CLASSES[self.attention_type](config, layer_idx)
        self.mlp_norm = build_norm(config, "ffn")
        self.mlp = SpanishMoEBertSparseMoE(config) if self.is_sparse else SpanishMoEBertMLP(config)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, hidden_states, attention_mask, position_embeddings, token_mask=None, **kwargs):
        attn_out, att = self.attn(
            self.attn_norm(hidden_states), position_embeddings[self.attn.rope_dim], attention_mask, **kwargs
        )
        hidden_states = hidden_states + self.dropout(attn_out)
        stats = None
        if self.is_sparse:
            mlp_out, stats = self.mlp(self.mlp_norm(hidden_states), token_mask)
        else:
            mlp_out = self.mlp(self.mlp_norm(hidden_states))
        hidden_states = hidden_states + self.dropout(mlp_out)
        return hidden_states, att, stats


# ----------------------------------------------------------------------------------------------------------
# Pre-trained model base
# ----------------------------------------------------------------------------------------------------------


class SpanishMoEBertPreTrainedModel(PreTrainedModel):
    config_class = SpanishMoEBertConfig
    config: SpanishMoEBertConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["SpanishMoEBertEmbeddings", "SpanishMoEBertLayer"]
    _supports_sdpa = True
    _supports_flash_attn = False  # MLA's value head differs from its query/key head
    _supports_flex_attn = False
    _supports_attention_backend = True
    # Losses are per-batch means: the Trainer must divide them over gradient-accumulation steps itself.
    accepts_loss_kwargs = False

    def _init_weights(self, module: nn.Module):
        std = self.config.initializer_range
        # Residual-branch outputs start smaller so the residual stream's variance stays flat with depth.
        out_std = std / math.sqrt(2.0 * self.config.num_hidden_layers)
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=out_std if getattr(module, "is_residual_output", False) else std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, SpanishMoEBertExperts):
            init.normal_(module.gate_up_proj, mean=0.0, std=std)
            init.normal_(module.down_proj, mean=0.0, std=out_std)
        elif isinstance(module, SpanishMoEBertRouter):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, DynamicTanh):
            init.constant_(module.alpha, module.alpha_init)
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, (RMSNorm, nn.LayerNorm)):
            init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)
        elif isinstance(module, SpanishMoEBertRotaryEmbedding):
            init.copy_(module.inv_freq, module.compute_inv_freq())
        elif isinstance(module, SpanishMoEBertForMaskedLM):
            init.zeros_(module.decoder_bias)

    def dyt_statistics(
        self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None
    ) -> dict[str, float]:
        """Alpha of every DyT norm and, given a batch, the share of its real-token tanh outputs that saturate.

        `{"<module name>.alpha": a, "<module name>.saturation": s}`: s is the fraction of |tanh(alpha * x)| above
        0.99 (gradients through those are < 2% of the unsaturated one), measured in one no-grad forward.
        """
        stats = {}
        dyts = {name: m for name, m in self.named_modules() if isinstance(m, DynamicTanh)}
        for name, module in dyts.items():
            stats[f"{name}.alpha"] = module.alpha.item()
        if input_ids is None:
            return stats
        mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()

        def record(name):
            def hook(module, args, output):
                x = args[0]
                saturated = (torch.tanh(module.alpha * x).abs() > DYT_SATURATION_THRESHOLD).float().mean(-1)
                if saturated.shape == mask.shape:  # token-level norms: count real tokens only
                    stats[f"{name}.saturation"] = (saturated[mask].mean()).item()
                else:
                    stats[f"{name}.saturation"] = saturated.mean().item()

            return hook

        handles = [m.register_forward_hook(record(name)) for name, m in dyts.items()]
        try:
            with torch.no_grad():
                self(input_ids=input_ids, attention_mask=attention_mask)
        finally:
            for handle in handles:
                handle.remove()
        return stats

    def num_active_parameters(self) -> int:
        """Parameters one token passes through: all of them (tied ones once) but the experts it is not routed to."""
        experts = sum(p.numel() for m in self.modules() if isinstance(m, SpanishMoEBertExperts) for p in m.parameters())
        idle = experts * (self.config.num_experts - self.config.num_experts_per_tok) // self.config.num_experts
        return self.num_parameters() - idle


# ----------------------------------------------------------------------------------------------------------
# Base model
# ----------------------------------------------------------------------------------------------------------


class SpanishMoEBertEmbeddings(nn.Module):
    """Token (+ token type) embeddings times `config.embedding_scale`; positions enter through RoPE in attention."""

    def __init__(self, config: SpanishMoEBertConfig):
        super().__init__()
        self.scale = config.embedding_scale
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.token_type_embeddings = (
            nn.Embedding(config.type_vocab_size, config.hidden_size) if config.type_vocab_size > 0 else None
        )
        self.dropout = nn.Dropout(config.embedding_dropout)

    def forward(self, input_ids=None, token_type_ids=None, inputs_embeds=None):
        x = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        if self.token_type_embeddings is not None and token_type_ids is not None:
            x = x + self.token_type_embeddings(token_type_ids)
        return self.dropout(x * self.scale)


class SpanishMoEBertModel(SpanishMoEBertPreTrainedModel):
    """The encoder. `pooler_output` is the final [CLS] (first token) vector, the sentence representation."""

    # Loading the encoder alone from a masked-LM checkpoint leaves its head behind, as intended.
    _keys_to_ignore_on_load_unexpected = [r"^head\.", r"^decoder_bias$"]

    def __init__(self, config: SpanishMoEBertConfig):
        super().__init__(config)
        self.embeddings = SpanishMoEBertEmbeddings(config)
        self.layers = nn.ModuleList(SpanishMoEBertLayer(config, i) for i in range(config.num_hidden_layers))
        self.final_norm = build_norm(config, "ffn")
        rope_dims = {layer.attn.rope_dim for layer in self.layers}
        self.rotary_embs = nn.ModuleDict(
            {str(dim): SpanishMoEBertRotaryEmbedding(dim, config.rope_theta) for dim in sorted(rope_dims)}
        )
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> SpanishMoEBertModelOutput:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` or `inputs_embeds`")
        output_hidden_states = output_hidden_states or self.config.output_hidden_states
        output_attentions = output_attentions or self.config.output_attentions
        hidden_states = self.embeddings(input_ids, token_type_ids, inputs_embeds)  # (B, T, H)
        b, t, _ = hidden_states.shape
        if position_ids is None:
            position_ids = torch.arange(t, device=hidden_states.device).unsqueeze(0).expand(b, t)
        token_mask = attention_mask.bool() if attention_mask is not None and attention_mask.dim() == 2 else None
        if token_mask is not None and bool(token_mask.all()):
            token_mask = None  # decided once here, not in every MoE layer
        mask = create_bidirectional_mask(config=self.config, inputs_embeds=hidden_states, attention_mask=attention_mask)
        rope = {int(dim): emb(hidden_states, position_ids) for dim, emb in self.rotary_embs.items()}

        all_hidden, all_att, router_stats = [], [], []
        for layer in self.layers:
            if output_hidden_states:
                all_hidden.append(hidden_states)
            hidden_states, att, stats = layer(hidden_states, mask, rope, token_mask, **kwargs)
            if output_attentions:
                all_att.append(att)
            if stats is not None:
                router_stats.append(stats)
        hidden_states = self.final_norm(hidden_states)
        if output_hidden_states:
            all_hidden.append(hidden_states)

        return SpanishMoEBertModelOutput(
            last_hidden_state=hidden_states,
            pooler_output=hidden_states[:, 0],
            hidden_states=tuple(all_hidden) if output_hidden_states else None,
            attentions=tuple(all_att) if output_attentions else None,
            aux_loss=torch.stack([s.aux_loss for s in router_stats]).mean() if router_stats else None,
            z_loss=torch.stack([s.z_loss for s in router_stats]).mean() if router_stats else None,
            expert_load=torch.stack([s.expert_load for s in router_stats]) if router_stats else None,
        )


def router_loss(config: SpanishMoEBertConfig, outputs: SpanishMoEBertModelOutput) -> torch.Tensor | float:
    """The weighted router losses to add to a task loss (0 for a model without MoE layers)."""
    if outputs.aux_loss is None:
        return 0.0
    return config.router_aux_loss_coef * outputs.aux_loss + config.router_z_loss_coef * outputs.z_loss


# ----------------------------------------------------------------------------------------------------------
# Task heads
# ----------------------------------------------------------------------------------------------------------


class SpanishMoEBertPredictionHead(nn.Module):
    def __init__(self, config: SpanishMoEBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = ACT2FN["gelu"]
        self.norm = build_norm(config, "ffn")

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.norm(self.act(self.dense(hidden_states)))


def log_unigram_prior(token_counts: torch.Tensor) -> torch.Tensor:
    """Log frequencies of the token ids, add-one smoothed: an MLM output bias that predicts the unigram distribution."""
    smoothed = token_counts.to(torch.float64) + 1.0
    return (smoothed / smoothed.sum()).log()


class SpanishMoEBertForMaskedLM(SpanishMoEBertPreTrainedModel):
    """Encoder + MLM head whose decoder is tied to the input embeddings. Loss = MLM + weighted router losses."""

    _tied_weights_keys = {"decoder.weight": "model.embeddings.word_embeddings.weight"}

    def __init__(self, config: SpanishMoEBertConfig):
        super().__init__(config)
        self.model = SpanishMoEBertModel(config)
        self.head = SpanishMoEBertPredictionHead(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.decoder_bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.post_init()

    def get_output_embeddings(self):
        return self.decoder

    def set_output_embeddings(self, new_embeddings: nn.Linear):
        self.decoder = new_embeddings

    @torch.no_grad()
    def init_decoder_bias_from_counts(self, token_counts: torch.Tensor) -> None:
        """Start the output bias at the log unigram frequencies of the training tokens (add-one smoothed).

        The first thing MLM learns is the unigram distribution. With the bias already there, the encoder is not
        pushed to write one shared "frequent words" direction into every token's residual stream, which is what
        saturates DyT early in training (see the README).
        """
        if token_counts.shape != self.decoder_bias.shape:
            raise ValueError(f"token_counts has shape {tuple(token_counts.shape)}, expected ({self.config.vocab_size},)")
        self.decoder_bias.copy_(log_unigram_prior(token_counts))

    @can_return_tuple
    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        labels: torch.LongTensor | None = None,
        **kwargs,
    ) -> SpanishMoEBertMaskedLMOutput:
        outputs = self.model(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, **kwargs)
        logits = self.decoder(self.head(outputs.last_hidden_state)) + self.decoder_bias  # (B, T, V)
        loss = mlm_loss = None
        if labels is not None:
            mlm_loss = F.cross_entropy(logits.view(-1, logits.shape[-1]).float(), labels.view(-1), ignore_index=-100)
            loss = mlm_loss + router_loss(self.config, outputs)
        return SpanishMoEBertMaskedLMOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            mlm_loss=mlm_loss,
            aux_loss=outputs.aux_loss,
            z_loss=outputs.z_loss,
            expert_load=outputs.expert_load,
        )


class SpanishMoEBertForSequenceClassification(SpanishMoEBertPreTrainedModel):
    """Classifier (or regressor, `num_labels=1`) on `pooler_output`."""

    def __init__(self, config: SpanishMoEBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = SpanishMoEBertModel(config)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @can_return_tuple
    def forward(
        self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
        labels: torch.Tensor | None = None, **kwargs,
    ) -> SequenceClassifierOutput:  # fmt: skip
        outputs = self.model(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, **kwargs)
        logits = self.classifier(self.dropout(outputs.pooler_output))  # (B, num_labels)
        loss = None
        if labels is not None:
            if self.config.problem_type is None:
                is_int = labels.dtype in (torch.long, torch.int)
                self.config.problem_type = (
                    "regression" if self.num_labels == 1
                    else "single_label_classification" if is_int else "multi_label_classification"
                )  # fmt: skip
            if self.config.problem_type == "regression":
                loss = F.mse_loss(logits.squeeze(-1).float(), labels.float())
            elif self.config.problem_type == "single_label_classification":
                loss = F.cross_entropy(logits.float(), labels.view(-1))
            else:
                loss = F.binary_cross_entropy_with_logits(logits.float(), labels.float())
            loss = loss + router_loss(self.config, outputs)
        return SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


class SpanishMoEBertForTokenClassification(SpanishMoEBertPreTrainedModel):
    """Per-token classifier (NER, POS) on `last_hidden_state`."""

    def __init__(self, config: SpanishMoEBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = SpanishMoEBertModel(config)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @can_return_tuple
    def forward(
        self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
        labels: torch.Tensor | None = None, **kwargs,
    ) -> TokenClassifierOutput:  # fmt: skip
        outputs = self.model(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, **kwargs)
        logits = self.classifier(self.dropout(outputs.last_hidden_state))  # (B, T, num_labels)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.view(-1, self.num_labels).float(), labels.view(-1), ignore_index=-100)
            loss = loss + router_loss(self.config, outputs)
        return TokenClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


# Each class registers under the Auto class the configuration's AUTO_MAP gives it, so that save_pretrained copies
# the code files into the checkpoint.
for _auto_class, _reference in AUTO_MAP.items():
    globals()[_reference.split(".")[1]].register_for_auto_class(_auto_class)

__all__ = [
    "SpanishMoEBertPreTrainedModel",
    "SpanishMoEBertModel",
    "SpanishMoEBertForMaskedLM",
    "SpanishMoEBertForSequenceClassification",
    "SpanishMoEBertForTokenClassification",
]

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
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    MaskedLMOutput,
    MultipleChoiceModelOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.utils.generic import can_return_tuple
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

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
    """DyT (Zhu et al., 2025): `weight * tanh(alpha * x) + bias`, a normalization-free stand-in for LayerNorm.

    alpha is learnt in log space, `log(alpha) = log_alpha_multiplier * log_alpha_param`. Adam moves a parameter by
    about the learning rate per step whatever its size: a plain alpha falls by at most ~lr a step while the
    residual stream it must follow grows by a factor, where this one moves by ~multiplier * lr of itself
    (benchmarks/README.md, "DyT's alpha").
    """

    def __init__(self, hidden_size: int, alpha_init: float, log_alpha_multiplier: float):
        super().__init__()
        self.alpha_init = alpha_init
        self.log_alpha_multiplier = log_alpha_multiplier
        self.log_alpha_param = nn.Parameter(torch.full((1,), self.parameter_for(alpha_init)))
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.bias = nn.Parameter(torch.zeros(hidden_size))

    def parameter_for(self, alpha: float) -> float:
        return math.log(alpha) / self.log_alpha_multiplier

    @property
    def alpha(self) -> torch.Tensor:
        return torch.exp(self.log_alpha_multiplier * self.log_alpha_param)

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
    """The configured normalization at `position`: "attention" or "ffn" in a block (they differ in DyT's alpha
    init), or "output" (after the last block and in the MLM head: `config.output_norm_type`)."""
    hidden_size = hidden_size or config.hidden_size
    norm_type = (config.output_norm_type or config.norm_type) if position == "output" else config.norm_type
    if norm_type == "dyt":
        return DynamicTanh(hidden_size, config.dyt_alpha_init(position), config.dyt_log_alpha_multiplier)
    if norm_type == "rmsnorm":
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
    """Rotate `x` of shape (B, T, heads, dim) by the (B, T, dim) tables, in fp32."""
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
    x32 = x.float()
    # `x * cos + rotate_half(x) * sin`, the second product added in place: one (B, T, heads, dim) temporary fewer
    return (x32 * cos).addcmul_(rotate_half(x32), sin).to(x.dtype)


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
    if attention_mask is not None and attention_mask.dtype == torch.bool:  # a mask made for sdpa: True = attend
        att = att.masked_fill(~attention_mask, torch.finfo(att.dtype).min)
    elif attention_mask is not None:
        att = att + attention_mask
    att = F.softmax(att, dim=-1, dtype=torch.float32).to(query.dtype)
    att = F.dropout(att, p=dropout, training=module.training)
    y = torch.matmul(att, value).transpose(1, 2).contiguous()  # (B, T, H, d)
    return y, att


def attention_interface(config: SpanishMoEBertConfig, output_attentions: bool = False) -> Callable:
    """The configured attention function; eager when the attention maps are asked for (fused kernels keep none)."""
    if output_attentions:
        return eager_attention_forward
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
        cos, sin = position_embeddings
        q = apply_rotary(self.q_proj(hidden_states).view(b, t, -1, self.head_dim), cos, sin)  # (B, T, H, d)
        k = apply_rotary(self.k_proj(hidden_states).view(b, t, -1, self.head_dim), cos, sin)  # (B, T, KV, d)
        v = self.v_proj(hidden_states).view(b, t, -1, self.head_dim)
        attend = attention_interface(self.config, kwargs.get("output_attentions", False))
        dropout = self.config.attention_dropout if self.training else 0.0
        # (B, heads, T, d) views of the projections' layout: SDPA reads them in place and writes (B, T, H, d)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        y, att = attend(self, q, k, v, attention_mask, dropout=dropout, scaling=self.scaling, **kwargs)
        return self.o_proj(y.reshape(b, t, -1)), att  # (B, T, hidden), (B, H, T, T) or None


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
        attend = attention_interface(self.config, kwargs.get("output_attentions", False))
        # Fused SDPA kernels need one head size for q, k and v: zero-pad v to the q/k size, drop the padding after.
        pad_v = self.v_head_dim < self.qk_head_dim and attend is not eager_attention_forward
        q = self.queries(hidden_states, *position_embeddings)
        k, v = self.keys_and_values(hidden_states, *position_embeddings, pad_v)
        dropout = self.config.attention_dropout if self.training else 0.0
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, d) views, as in MHA
        y, att = attend(self, q, k, v, attention_mask, dropout=dropout, scaling=self.scaling, **kwargs)
        if pad_v:
            y = y[..., : self.v_head_dim]
        return self.o_proj(y.reshape(b, t, -1)), att  # (B, T, hidden), (B, H, T, T) or None

    def queries(self, hidden_states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """(B, T, H, nope + rope): each head's position-free part and its rotated part."""
        b, t, _ = hidden_states.shape
        q = self.q_proj(hidden_states).view(b, t, self.num_heads, self.qk_head_dim)
        q_nope, q_rope = q.split([self.nope_dim, self.rope_dim], dim=-1)
        return torch.cat((q_nope, apply_rotary(q_rope, cos, sin)), dim=-1)

    def keys_and_values(self, hidden_states, cos, sin, pad_v: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys (B, T, H, nope + rope) and values (B, T, H, v_head_dim, zero-padded to the key width if `pad_v`),
        up-projected from the latent. Built here so that the up-projection is freed once they are."""
        b, t, _ = hidden_states.shape
        c_kv, k_rope = self.kv_a_proj(hidden_states).split([self.config.kv_lora_rank, self.rope_dim], dim=-1)
        kv = self.kv_b_proj(self.kv_a_norm(c_kv)).view(b, t, self.num_heads, self.nope_dim + self.v_head_dim)
        k_nope, v = kv.split([self.nope_dim, self.v_head_dim], dim=-1)
        k_rope = apply_rotary(k_rope.view(b, t, 1, self.rope_dim), cos, sin)  # one RoPE key shared by all heads
        k = torch.cat((k_nope, k_rope.expand(b, t, self.num_heads, self.rope_dim)), dim=-1)
        return k, F.pad(v, (0, self.qk_head_dim - self.v_head_dim)) if pad_v else v


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


# Padding every expert's rows to the busiest expert's count (one bmm) is only worth it while it at most doubles them.
MAX_PADDING_FACTOR = 2.0


def expert_path(
    x: torch.Tensor, tokens_per_expert: torch.Tensor, rows_sorted: bool = False, forced: str | None = None
) -> str:
    """How the MoE layer runs its experts on the routed tokens `x`: the one place this is decided.

    | when (first match)                                          | path                  |
    |-------------------------------------------------------------|-----------------------|
    | `config.moe_implementation` is set (`forced`)               | that one              |
    | `torch.export` / ONNX export                                | `"per_expert"`        |
    | CPU, no autograd, eager                                     | `"per_expert"`        |
    | `F.grouped_mm` runs this device and dtype (`grouped_mm_available`)   | `"grouped_mm"`        |
    | `torch.compile`                                             | `"compiled_fallback"` |
    | busiest expert <= `MAX_PADDING_FACTOR` x the mean load       | `"padded_bmm"`        |
    | otherwise                                                   | `"loop"`              |

    - `per_expert`: a loop over experts, each gathering its tokens (`torch.where`) and adding its output back.
      Every buffer is expert-sized and nothing waits on the host, so it is the fastest CPU inference and it
      exports (the token counts become data-dependent dimensions).
    - The other paths sort the token slots by expert, gather them once into rows and run one grouped GEMM per
      projection over the rows of each expert: `grouped_mm` in one kernel; `padded_bmm` pads every expert to the
      busiest one's rows and runs one `bmm` (e.g. fp32/fp16 on a Tesla P40 or V100); `loop` runs one GEMM per
      expert. The last two read the token counts on the host.
    - `compiled_fallback`: the compiler cannot trace those host reads, so the eager choice among `grouped_mm`,
      `padded_bmm` and `loop` runs inside a custom operator that the compiled graph calls as one kernel. The
      operator asks this function again with `rows_sorted=True`, which skips the first four rows of the table.
    """
    if forced is not None:
        return forced
    exporting = _exporting()
    compiling = torch.compiler.is_compiling() and not rows_sorted
    if not rows_sorted and (exporting or (x.device.type == "cpu" and not torch.is_grad_enabled() and not compiling)):
        return "per_expert"
    if grouped_mm_available(x.device, _compute_dtype(x), compiling):
        return "grouped_mm"
    if compiling:
        return "compiled_fallback"
    busiest, rows = torch.stack([tokens_per_expert.max(), tokens_per_expert.sum()]).tolist()
    return "padded_bmm" if tokens_per_expert.numel() * busiest <= MAX_PADDING_FACTOR * max(rows, 1) else "loop"


def _exporting() -> bool:
    """Whether `torch.export` (the ONNX exporter's too) is tracing. Reads the flag export sets: Dynamo before torch 2.13
    (seen in 2.11) folds `torch.compiler.is_exporting()` to True under any `torch.compile`, which sent compiled models
    down the exporting path (12 graph breaks in a tiny model's forward)."""
    flag = getattr(torch.compiler, "_is_exporting_flag", None)
    if isinstance(flag, bool):
        return flag
    return hasattr(torch.compiler, "is_exporting") and torch.compiler.is_exporting()


def grouped_mm_available(device: torch.device, dtype: torch.dtype, compiling: bool = False) -> bool:
    """Whether `F.grouped_mm` (torch >= 2.9) has a kernel for this device and dtype: on CPU for every float dtype,
    on CUDA for bf16 from compute capability 8.0 (A100, H100). Traced by torch.compile it takes bf16 only."""
    if not hasattr(F, "grouped_mm") or (compiling and dtype != torch.bfloat16):
        return False
    if device.type == "cuda":
        return dtype == torch.bfloat16 and _cuda_capability(device.index) >= (8, 0)
    return device.type == "cpu"


@torch.compiler.assume_constant_result
def _cuda_capability(index: int | None) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """grouped_mm is not autocast-aware: follow autocast by hand."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def grouped_matmul(x: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor, path: str) -> torch.Tensor:
    """`x[rows of expert e] @ weight[e]` for rows sorted by expert, expert e's ending at `offsets[e]` (int32,
    cumulative); rows past `offsets[-1]` (padding tokens) give zeros, or garbage with CUDA's grouped_mm."""
    if path == "grouped_mm":
        return F.grouped_mm(x, weight, offs=offsets)
    if path == "compiled_fallback":
        return torch.ops.spanish_moe_bert.grouped_matmul(x, weight, offsets)
    if path == "padded_bmm":
        return _padded_bmm(x, weight, offsets)
    return _looped_matmul(x, weight, offsets)


def _padded_bmm(x: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    num_experts = weight.shape[0]
    counts = torch.diff(offsets, prepend=offsets.new_zeros(1))
    capacity, rows = torch.stack([counts.max(), offsets[-1]]).tolist()
    expert = torch.repeat_interleave(torch.arange(num_experts, device=x.device), counts, output_size=rows)
    padded_row = expert * capacity + torch.arange(rows, device=x.device) - (offsets - counts)[expert]  # (rows,)
    padded = x.new_zeros(num_experts * capacity, x.shape[-1]).index_copy(0, padded_row, x[:rows])
    y = torch.bmm(padded.view(num_experts, capacity, x.shape[-1]), weight).flatten(0, 1).index_select(0, padded_row)
    return torch.cat([y, y.new_zeros(x.shape[0] - rows, y.shape[-1])])


def _looped_matmul(x: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    bounds = [0, *offsets.tolist()]
    parts = [x[start:end] @ weight[e] for e, (start, end) in enumerate(zip(bounds, bounds[1:]))]
    return torch.cat([*parts, x.new_zeros(x.shape[0] - bounds[-1], weight.shape[-1])])


def _eager_grouped_matmul(x: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """The compiled fallback's kernel: `grouped_matmul` with the path the eager code would take."""
    counts = torch.diff(offsets, prepend=offsets.new_zeros(1))
    return grouped_matmul(x, weight, offsets, expert_path(x, counts, rows_sorted=True))


def _eager_grouped_matmul_backward(x, weight, offsets, grad):
    """Gradients of `_eager_grouped_matmul`: `grad @ weight[e].T` per expert's rows, and each expert's `x.T @ grad`."""
    grad_x = _eager_grouped_matmul(grad, weight.transpose(1, 2), offsets)
    if grouped_mm_available(x.device, x.dtype):
        return grad_x, F.grouped_mm(x.t(), grad, offs=offsets)  # (E, in, out), groups along the rows
    bounds = [0, *offsets.tolist()]
    return grad_x, torch.stack([x[start:end].t() @ grad[start:end] for start, end in zip(bounds, bounds[1:])])


def _register_compiled_fallback() -> None:
    """`torch.ops.spanish_moe_bert.grouped_matmul`: `_eager_grouped_matmul` as one opaque kernel for torch.compile."""
    if hasattr(torch.ops.spanish_moe_bert, "grouped_matmul"):
        return  # this file is imported twice in a process that has both the installed package and a checkpoint

    @torch.library.custom_op("spanish_moe_bert::grouped_matmul", mutates_args=())
    def op(x: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return _eager_grouped_matmul(x, weight, offsets)

    @torch.library.custom_op("spanish_moe_bert::grouped_matmul_backward", mutates_args=())
    def op_backward(
        x: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor, grad: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return _eager_grouped_matmul_backward(x, weight, offsets, grad)

    op.register_fake(lambda x, weight, offsets: x.new_empty(x.shape[0], weight.shape[-1]))
    op_backward.register_fake(lambda x, weight, offsets, grad: (torch.empty_like(x), torch.empty_like(weight)))

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def backward(ctx, grad):
        return *op_backward(*ctx.saved_tensors, grad.contiguous()), None

    op.register_autograd(backward, setup_context=setup_context)


_register_compiled_fallback()


class SpanishMoEBertExperts(nn.Module):
    """`num_experts` SwiGLU experts stored as stacked tensors (compact state dict, grouped GEMMs)."""

    def __init__(self, config: SpanishMoEBertConfig):
        super().__init__()
        e, h, i = config.num_experts, config.hidden_size, config.moe_intermediate_size
        self.num_experts = e
        self.gate_up_proj = nn.Parameter(torch.empty(e, h, 2 * i))  # (E, in, out)
        self.down_proj = nn.Parameter(torch.empty(e, i, h))
        self.act = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor, weights: torch.Tensor, offsets: torch.Tensor, path: str) -> torch.Tensor:
        """x: (rows, H) sorted by expert, expert e's rows ending at `offsets[e]`; weights: (rows,) routing weights."""
        dtype = _compute_dtype(x)
        h = grouped_matmul(x.to(dtype), self.gate_up_proj.to(dtype), offsets, path)  # (rows, 2I)
        gate, up = h.chunk(2, dim=-1)
        # The routing weight is applied before the (linear) down projection: same result, I-wide not H-wide.
        h = self.act(gate) * up * weights.to(dtype)[:, None]
        return grouped_matmul(h, self.down_proj.to(dtype), offsets, path)  # (rows, H)

    def forward_per_expert(self, x: torch.Tensor, top_idx: torch.Tensor, top_w: torch.Tensor) -> torch.Tensor:
        """(tokens, H) -> (tokens, H), one expert at a time; `top_idx` / `top_w`: (tokens, k) experts and weights.

        Each expert gathers its tokens, runs them and adds its output back, so every buffer is expert-sized (on CPU
        this beats gathering all tokens * k rows at once) and nothing is read on the host. With autograd the sorted
        rows are faster: per-expert slices of the stacked weights make their gradients accumulate expert by expert.
        """
        dtype = _compute_dtype(x)
        y = torch.zeros(x.shape, dtype=dtype, device=x.device)
        for e in range(self.num_experts):
            token, slot = torch.where(top_idx == e)  # (n_e,) each; n_e is data-dependent
            gate, up = (x[token].to(dtype) @ self.gate_up_proj[e].to(dtype)).chunk(2, dim=-1)
            h = self.act(gate) * up * top_w[token, slot, None].to(dtype)
            y.index_add_(0, token, h @ self.down_proj[e].to(dtype))
        return y


def gather_rows(x: torch.Tensor, order: torch.Tensor, top_k: int) -> torch.Tensor:
    """(tokens, H) -> (slots, H): row r holds the token of slot `order[r]` (token t's j-th expert is slot t * k + j)."""
    return x.index_select(0, order // top_k)


def sum_rows(rows: torch.Tensor, inverse: torch.Tensor, top_k: int) -> torch.Tensor:
    """(slots, H) -> (tokens, H): the sum of each token's k rows; `inverse[slot]` is the row of the slot.

    `embedding_bag` gathers and sums in one kernel, where `index_select` + `sum` would write the (slots, H) gathered
    copy and read it back: 4x faster on CPU for a training step's 4 * tokens rows (bags of k rows each)."""
    return F.embedding_bag(inverse.view(-1, top_k), rows, mode="sum")


class _GatherRows(torch.autograd.Function):
    """`gather_rows`, whose gradient is `sum_rows`: a gather, where autograd would scatter-add."""

    @staticmethod
    def forward(ctx, x, order, inverse, top_k):
        ctx.save_for_backward(inverse)
        ctx.top_k = top_k
        return gather_rows(x, order, top_k)

    @staticmethod
    def backward(ctx, grad):
        (inverse,) = ctx.saved_tensors
        return sum_rows(grad, inverse, ctx.top_k), None, None, None


class _SumRows(torch.autograd.Function):
    """`sum_rows`, whose gradient is `gather_rows`."""

    @staticmethod
    def forward(ctx, rows, order, inverse, top_k):
        ctx.save_for_backward(order)
        ctx.top_k = top_k
        return sum_rows(rows, inverse, top_k)

    @staticmethod
    def backward(ctx, grad):
        (order,) = ctx.saved_tensors
        return gather_rows(grad, order, ctx.top_k), None, None, None


class SpanishMoEBertRouter(nn.Module):
    """Top-k router. Returns fp32 logits, the probabilities, the chosen experts and their (renormalised) weights.

    Its scores are softmax probabilities, or with `router_score_function="sigmoid"` one sigmoid per expert, as in
    DeepSeek-V3: each expert's score no longer shrinks as the experts multiply. Then the probabilities it returns
    (for the load-balancing loss and diagnostics) are the scores normalised to sum to 1.

    With `router_bias_update_rate > 0` it balances without an auxiliary loss, as DeepSeek-V3 does: a per-expert bias
    is added to the scores (or, with `router_bias_on="logits"`, the logits) when choosing the top-k (never
    to the weights). Training forwards record their expert load; `update_bias` (called once per optimizer step, by
    `model.update_router_biases()`) moves the bias by that rate towards equal load: up for experts below the mean
    load, down for those above. Not in the forward itself: gradient checkpointing re-runs the forward during
    backward, which must route exactly as the first time.
    """

    def __init__(self, config: SpanishMoEBertConfig):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.norm_topk_prob = config.norm_topk_prob
        self.scaling_factor = config.routed_scaling_factor
        self.jitter_noise = config.router_jitter_noise
        self.bias_update_rate = config.router_bias_update_rate
        self.bias_on_logits = config.router_bias_on == "logits"
        self.sigmoid = config.router_score_function == "sigmoid"
        self.weight = nn.Parameter(torch.empty(config.num_experts, config.hidden_size))
        self.register_buffer("expert_bias", torch.zeros(config.num_experts), persistent=self.bias_update_rate > 0)
        # the expert load of the training forwards since the last update_bias
        self.register_buffer("observed_load", torch.zeros(config.num_experts), persistent=False)

    def forward(self, x: torch.Tensor):
        if self.training and self.jitter_noise > 0:
            x = x * torch.empty_like(x).uniform_(1.0 - self.jitter_noise, 1.0 + self.jitter_noise)
        logits = F.linear(x.float(), self.weight.float())  # (T, E), fp32 for a stable softmax and z-loss
        if self.sigmoid:
            scores = logits.sigmoid()
            probs = scores / scores.sum(dim=-1, keepdim=True)
        else:
            scores = probs = logits.softmax(dim=-1)
        if self.bias_update_rate > 0:
            biased = (logits if self.bias_on_logits else scores) + self.expert_bias
            top_idx = biased.topk(self.top_k, dim=-1).indices  # (T, k)
            top_w = scores.gather(-1, top_idx)
        else:
            top_w, top_idx = scores.topk(self.top_k, dim=-1)
        if self.norm_topk_prob:
            top_w = top_w / top_w.sum(dim=-1, keepdim=True)
        if self.scaling_factor != 1.0:
            top_w = top_w * self.scaling_factor
        return logits, probs, top_w, top_idx

    @torch.no_grad()
    def observe_load(self, tokens_per_expert: torch.Tensor) -> None:
        # Summed over the training forwards of one optimizer step: every micro-batch of gradient accumulation
        # counts. A forward recomputed by gradient checkpointing adds its counts a second time, as every other
        # micro-batch's in this layer: the bias follows only the sign of (mean - load), which that factor leaves alone.
        self.observed_load += tokens_per_expert

    @torch.no_grad()
    def update_bias(self, rate_scale: float = 1.0) -> None:
        load = self.observed_load
        if dist.is_available() and dist.is_initialized():  # every process moves its bias by the global load
            load = load.clone()
            dist.all_reduce(load)
        # No load observed (all zeros) moves nothing: sign(0) = 0. No `if` on the tensor, which would wait for the GPU.
        self.expert_bias += rate_scale * self.bias_update_rate * torch.sign(load.mean() - load)
        self.observed_load.zero_()


def _token_mean(values: torch.Tensor, real: torch.Tensor | None) -> torch.Tensor:
    """Mean over tokens (dim 0) of the real ones; 0, not NaN, when there are none."""
    if real is None:
        return values.sum(dim=0) / max(values.shape[0], 1)
    weights = real.to(values.dtype).view(-1, *([1] * (values.dim() - 1)))
    return (values * weights).sum(dim=0) / weights.sum().clamp(min=1)


def load_balancing_loss(
    probs: torch.Tensor, tokens_per_expert: torch.Tensor, real: torch.Tensor | None = None
) -> torch.Tensor:
    """Switch Transformer loss `E * sum_e f_e * P_e`: 1.0 when routing is uniform, larger when it is not.

    f_e is the share of routed token slots sent to expert e, P_e the mean router probability of e over the real
    tokens (`real`: (T,) bool, None for all).
    """
    num_experts = probs.shape[-1]
    f = tokens_per_expert.float() / tokens_per_expert.sum().clamp(min=1)
    return num_experts * torch.sum(f * _token_mean(probs, real))


def router_z_loss(logits: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
    """ST-MoE z-loss: mean squared log-partition of the router logits over the real tokens, keeps them small."""
    return _token_mean(torch.logsumexp(logits, dim=-1).square(), real)


class SpanishMoEBertSparseMoE(nn.Module):
    """Routes each real (non-padding) token to its top-k experts without dropping any, plus the always-active
    shared experts of `num_shared_experts` (DeepSeekMoE) if any.

    Padding tokens are routed to expert `num_experts`, which does not exist: no expert runs them and no router
    loss counts them, and every shape stays what it was (nothing waits on the host to count real tokens).
    `expert_path` decides how the experts run. Sorted paths group the tokens * k slots by expert (one argsort),
    gather them once into rows, run one grouped GEMM per projection and sum each token's k rows back; no
    per-token loop, no dense (tokens x experts x hidden) tensor, and the backward pass is gathers too.
    """

    def __init__(self, config: SpanishMoEBertConfig):
        super().__init__()
        self.num_experts = config.num_experts
        self.top_k = config.num_experts_per_tok
        self.forced_path = config.moe_implementation
        self.router = SpanishMoEBertRouter(config)
        self.experts = SpanishMoEBertExperts(config)
        shared_width = config.num_shared_experts * config.moe_intermediate_size
        self.shared_expert = SpanishMoEBertMLP(config, shared_width) if shared_width else None

    def forward(self, hidden_states: torch.Tensor, token_mask: torch.Tensor | None = None):
        b, t, h = hidden_states.shape
        x = hidden_states.reshape(-1, h)  # (T, H)
        real = None if token_mask is None else token_mask.reshape(-1)  # (T,) bool
        logits, probs, top_w, top_idx = self.router(x)  # (T, E) fp32, (T, k), (T, k)
        if real is not None:
            top_idx = top_idx.masked_fill(~real[:, None], self.num_experts)
            top_w = top_w.masked_fill(~real[:, None], 0.0)
        slot_expert = top_idx.reshape(-1)  # (T * k,)
        counts = torch.zeros(self.num_experts + 1, dtype=torch.long, device=x.device)
        tokens_per_expert = counts.scatter_add_(0, slot_expert, torch.ones_like(slot_expert))[: self.num_experts]

        if self.training and self.router.bias_update_rate > 0:
            self.router.observe_load(tokens_per_expert)

        path = expert_path(x, tokens_per_expert, forced=self.forced_path)
        if path == "per_expert":
            y = self.experts.forward_per_expert(x, top_idx, top_w)
        else:
            y = self.sorted_experts(x, top_idx, top_w, tokens_per_expert, path, real)
        if self.shared_expert is not None:  # every real token also goes through the shared expert (DeepSeekMoE)
            shared = self.shared_expert(x)
            y = y + (shared if real is None else shared.masked_fill(~real[:, None], 0.0)).to(y.dtype)

        stats = RouterStats(
            aux_loss=load_balancing_loss(probs, tokens_per_expert, real),
            z_loss=router_z_loss(logits, real),
            expert_load=tokens_per_expert.float() / tokens_per_expert.sum().clamp(min=1),
        )
        return y.to(hidden_states.dtype).view(b, t, h), stats

    def sorted_experts(self, x, top_idx, top_w, tokens_per_expert, path, real):
        """Slots sorted by expert -> rows -> grouped GEMMs -> each token's k rows summed. (T, H) -> (T, H)."""
        if real is not None:  # rows past the real slots may come back as garbage: keep it out of both passes
            x = x.masked_fill(~real[:, None], 0.0)
        order = top_idx.reshape(-1).argsort(stable=True)  # (S,) slots grouped by expert, padding slots last
        inverse = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=order.device))
        x_rows = _GatherRows.apply(x, order, inverse, self.top_k)  # (S, H)
        offsets = tokens_per_expert.cumsum(0).to(torch.int32)
        y_rows = self.experts(x_rows, top_w.reshape(-1)[order], offsets, path)
        y = _SumRows.apply(y_rows, order, inverse, self.top_k)  # (T, H)
        return y if real is None else y.masked_fill(~real[:, None], 0.0)


@dataclass
class RouterStats:
    aux_loss: torch.Tensor
    z_loss: torch.Tensor
    expert_load: torch.Tensor


# ----------------------------------------------------------------------------------------------------------
# Encoder layer
# ----------------------------------------------------------------------------------------------------------


class SpanishMoEBertLayer(GradientCheckpointingLayer):
    """Pre-norm block: `x + attn(norm(x))`, then `x + ffn(norm(x))`, with the attention and FFN type of its index.

    Returns the new hidden states and the router statistics of a sparse layer (None for a dense one).
    """

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
        attn_out, _ = self.attn(
            self.attn_norm(hidden_states), position_embeddings[self.attn.rope_dim], attention_mask, **kwargs
        )
        hidden_states = hidden_states + self.dropout(attn_out)
        stats = None
        if self.is_sparse:
            mlp_out, stats = self.mlp(self.mlp_norm(hidden_states), token_mask)
        else:
            mlp_out = self.mlp(self.mlp_norm(hidden_states))
        hidden_states = hidden_states + self.dropout(mlp_out)
        return hidden_states, stats


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
    # What `output_hidden_states` / `output_attentions` collect (transformers' output-capture hooks): each layer's
    # output, and the maps of both attention classes (index 1 of their outputs).
    _can_record_outputs = {
        "hidden_states": SpanishMoEBertLayer,
        "attentions": [
            OutputRecorder(SpanishMoEBertAttention, index=1),
            OutputRecorder(SpanishMoEBertLatentAttention, index=1),
        ],
    }

    def _init_weights(self, module: nn.Module):
        std = self.config.initializer_range
        # Residual-branch outputs start smaller so the residual stream's variance stays flat with depth.
        out_std = std / math.sqrt(2.0 * self.config.num_hidden_layers)
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=out_std if getattr(module, "is_residual_output", False) else std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            if getattr(module, "starts_at_zero", False):
                init.zeros_(module.weight)
            else:
                init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, SpanishMoEBertExperts):
            init.normal_(module.gate_up_proj, mean=0.0, std=std)
            init.normal_(module.down_proj, mean=0.0, std=out_std)
        elif isinstance(module, SpanishMoEBertRouter):
            init.normal_(module.weight, mean=0.0, std=std)
            init.zeros_(module.expert_bias)
            init.zeros_(module.observed_load)
        elif isinstance(module, DynamicTanh):
            init.constant_(module.log_alpha_param, module.parameter_for(module.alpha_init))
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, (RMSNorm, nn.LayerNorm)):
            init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)
        elif isinstance(module, SpanishMoEBertRotaryEmbedding):
            init.copy_(module.inv_freq, module.compute_inv_freq())

    @torch.no_grad()
    def update_router_biases(self, rate_scale: float = 1.0) -> None:
        """Auxiliary-loss-free balancing (`router_bias_update_rate > 0`): move every router's selection bias by the
        expert load its training forwards saw since the last update (all micro-batches of the step), by `rate_scale`
        times the configured rate. Call it once per optimizer step (`run_mlm.py` does, through `RouterBiasCallback`);
        a no-op without loss-free balancing."""
        for module in self.modules():
            if isinstance(module, SpanishMoEBertRouter) and module.bias_update_rate > 0:
                module.update_bias(rate_scale)

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
    """Token (+ token type) embeddings times `config.embedding_scale`; positions enter through RoPE in attention.

    No `token_type_ids` means type 0 for every token, as in BERT: `model(input_ids)` and `model(**tokenizer(text))`
    (which passes zeros) are the same model. The token-type table starts at zero, so a type no training has seen
    (type 1 until a sentence-pair fine-tune) adds nothing rather than noise.
    """

    def __init__(self, config: SpanishMoEBertConfig):
        super().__init__()
        self.scale = config.embedding_scale
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.token_type_embeddings = None
        if config.type_vocab_size > 0:
            self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
            self.token_type_embeddings.starts_at_zero = True
        self.dropout = nn.Dropout(config.embedding_dropout)

    def forward(self, input_ids=None, token_type_ids=None, inputs_embeds=None):
        x = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        if self.token_type_embeddings is not None:
            if token_type_ids is None:
                x = x + self.token_type_embeddings.weight[0]  # type 0 everywhere, without building the ids
            else:
                x = x + self.token_type_embeddings(token_type_ids)
        return self.dropout(x * self.scale)


class SpanishMoEBertModel(SpanishMoEBertPreTrainedModel):
    """The encoder. `pooler_output` is the final [CLS] (first token) vector, the sentence representation."""

    # Loading the encoder alone from a masked-LM checkpoint leaves its head behind, as intended.
    _keys_to_ignore_on_load_unexpected = [r"^head\.", r"^decoder\."]

    def __init__(self, config: SpanishMoEBertConfig):
        super().__init__(config)
        self.embeddings = SpanishMoEBertEmbeddings(config)
        self.layers = nn.ModuleList(SpanishMoEBertLayer(config, i) for i in range(config.num_hidden_layers))
        self.final_norm = build_norm(config, "output")
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

    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs,
    ) -> SpanishMoEBertModelOutput:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` or `inputs_embeds`")
        hidden_states = self.embeddings(input_ids, token_type_ids, inputs_embeds)  # (B, T, H)
        b, t, _ = hidden_states.shape
        if position_ids is None:
            position_ids = torch.arange(t, device=hidden_states.device).unsqueeze(0).expand(b, t)
        mask = create_bidirectional_mask(config=self.config, inputs_embeds=hidden_states, attention_mask=attention_mask)
        # Padding tokens skip the experts. transformers drops a mask without padding (None): then so do we, and the
        # MoE layers mask nothing (packed pre-training blocks have no padding).
        has_padding = mask is not None and attention_mask is not None and attention_mask.dim() == 2
        token_mask = attention_mask.bool() if has_padding else None
        rope = {int(dim): emb(hidden_states, position_ids) for dim, emb in self.rotary_embs.items()}

        router_stats = []
        for layer in self.layers:
            hidden_states, stats = layer(hidden_states, mask, rope, token_mask, **kwargs)
            if stats is not None:
                router_stats.append(stats)
        hidden_states = self.final_norm(hidden_states)

        return SpanishMoEBertModelOutput(
            last_hidden_state=hidden_states,
            pooler_output=hidden_states[:, 0],
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
        self.norm = build_norm(config, "output")

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.norm(self.act(self.dense(hidden_states)))


def log_unigram_prior(token_counts: torch.Tensor) -> torch.Tensor:
    """Log frequencies of the token ids, add-one smoothed: an MLM output bias that predicts the unigram distribution."""
    smoothed = token_counts.to(torch.float64) + 1.0
    return (smoothed / smoothed.sum()).log()


class SpanishMoEBertForMaskedLM(SpanishMoEBertPreTrainedModel):
    """Encoder + MLM head whose decoder is tied to the input embeddings. Loss = MLM + weighted router losses.

    In training with `labels` and `config.sparse_prediction` (the default; ModernBERT's option) the head and the
    vocabulary-wide decoder run only at the labelled (masked) positions, and `logits` is `(num_labelled, vocab_size)`
    in the row-major order of `labels != -100`. In eval mode, and without labels (fill-mask, pipelines), `logits` is
    `(batch, length, vocab_size)`, what evaluation code written for any transformers masked LM expects.
    """

    _tied_weights_keys = {"decoder.weight": "model.embeddings.word_embeddings.weight"}

    def __init__(self, config: SpanishMoEBertConfig):
        super().__init__(config)
        self.model = SpanishMoEBertModel(config)
        self.head = SpanishMoEBertPredictionHead(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)
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
        if token_counts.shape != self.decoder.bias.shape:
            raise ValueError(
                f"token_counts has shape {tuple(token_counts.shape)}, expected ({self.config.vocab_size},)"
            )
        self.decoder.bias.copy_(log_unigram_prior(token_counts))

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
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state  # (B, T, H)
        labelled = None if labels is None else labels != -100
        sparse = labelled is not None and self.config.sparse_prediction and self.training
        if sparse:
            hidden_states = hidden_states[labelled]  # (N, H)
        logits = self.decoder(self.head(hidden_states))  # (B, T, V), or (N, V)
        loss = mlm_loss = None
        if labelled is not None:
            scored = logits if sparse else logits[labelled]  # (N, V): no float copy of the unlabelled positions
            # The mean over the labelled tokens; 0, not NaN, for a batch with none (short lines masked by chance)
            mlm_loss = F.cross_entropy(scored.float(), labels[labelled], reduction="sum") / labelled.sum().clamp(min=1)
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
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            **kwargs,
        )
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
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            **kwargs,
        )
        logits = self.classifier(self.dropout(outputs.last_hidden_state))  # (B, T, num_labels)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.view(-1, self.num_labels).float(), labels.view(-1), ignore_index=-100)
            loss = loss + router_loss(self.config, outputs)
        return TokenClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


class SpanishMoEBertForQuestionAnswering(SpanishMoEBertPreTrainedModel):
    """Extractive question answering (SQuAD-es, MLQA): a start and an end logit for every token.

    Feed question and context as a pair (`tokenizer(question, context)`). The loss is BERT's: the mean of the start
    and end cross-entropies, where a position outside the sequence (an answer truncated away) is clamped to the
    sequence length and ignored.
    """

    def __init__(self, config: SpanishMoEBertConfig):
        super().__init__(config)
        self.model = SpanishMoEBertModel(config)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)  # start, end
        self.post_init()

    @can_return_tuple
    def forward(
        self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
        start_positions: torch.Tensor | None = None, end_positions: torch.Tensor | None = None, **kwargs,
    ) -> QuestionAnsweringModelOutput:  # fmt: skip
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            **kwargs,
        )
        logits = self.qa_outputs(self.dropout(outputs.last_hidden_state))  # (B, T, 2)
        start_logits, end_logits = (part.squeeze(-1).contiguous() for part in logits.split(1, dim=-1))  # (B, T) each
        loss = None
        if start_positions is not None and end_positions is not None:
            outside = start_logits.shape[1]
            start = start_positions.view(-1).clamp(0, outside)
            end = end_positions.view(-1).clamp(0, outside)
            loss = (
                F.cross_entropy(start_logits.float(), start, ignore_index=outside)
                + F.cross_entropy(end_logits.float(), end, ignore_index=outside)
            ) / 2
            loss = loss + router_loss(self.config, outputs)
        return QuestionAnsweringModelOutput(
            loss=loss,
            start_logits=start_logits,
            end_logits=end_logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


def flatten_choices(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """(B, C, T, ...) -> (B * C, T, ...): every choice becomes a sequence of its own."""
    return None if tensor is None else tensor.flatten(0, 1)


class SpanishMoEBertForMultipleChoice(SpanishMoEBertPreTrainedModel):
    """Multiple choice (XNLI-style pairs per option, SWAG): each `(batch, choice)` sequence is encoded on its own
    and scored from its `pooler_output`; the logits `(batch, num_choices)` are those scores."""

    def __init__(self, config: SpanishMoEBertConfig):
        super().__init__(config)
        self.model = SpanishMoEBertModel(config)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(config.hidden_size, 1)
        self.post_init()

    @can_return_tuple
    def forward(
        self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
        labels: torch.Tensor | None = None, **kwargs,
    ) -> MultipleChoiceModelOutput:  # fmt: skip
        num_choices = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        outputs = self.model(
            input_ids=flatten_choices(input_ids),
            attention_mask=flatten_choices(attention_mask),
            token_type_ids=flatten_choices(token_type_ids),
            position_ids=flatten_choices(position_ids),
            inputs_embeds=flatten_choices(inputs_embeds),
            **kwargs,
        )
        logits = self.classifier(self.dropout(outputs.pooler_output)).view(-1, num_choices)  # (B, C)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float(), labels.view(-1)) + router_loss(self.config, outputs)
        return MultipleChoiceModelOutput(
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
    "SpanishMoEBertForQuestionAnswering",
    "SpanishMoEBertForMultipleChoice",
]

"""Configuration of Spanish MoE-BERT: a BERT-like encoder with a sparse Mixture-of-Experts feed-forward.

This file is copied into every exported checkpoint and loaded there as remote code, so it imports only
installed libraries.
"""

import dataclasses
import re
import typing

from transformers import PreTrainedConfig

ATTENTION_TYPES = ("mha", "gqa", "mla")
MLP_LAYER_TYPES = ("sparse", "dense")
ROUTER_BIAS_ON = ("probabilities", "logits")  # what loss-free balancing's bias is added to when choosing the top-k
ROUTER_SCORE_FUNCTIONS = ("softmax", "sigmoid")  # how the router turns its logits into scores
NORM_TYPES = ("dyt", "layernorm", "rmsnorm")
MOE_IMPLEMENTATIONS = ("per_expert", "grouped_mm", "padded_bmm", "loop", "compiled_fallback")

# Every checkpoint maps all Auto classes, so AutoModel loads a checkpoint saved from the MLM model and vice versa.
# The one copy of the map: the modeling file registers its classes from it, and the export writes it.
AUTO_MAP = {
    "AutoConfig": "configuration_spanish_moe_bert.SpanishMoEBertConfig",
    "AutoModel": "modeling_spanish_moe_bert.SpanishMoEBertModel",
    "AutoModelForMaskedLM": "modeling_spanish_moe_bert.SpanishMoEBertForMaskedLM",
    "AutoModelForSequenceClassification": "modeling_spanish_moe_bert.SpanishMoEBertForSequenceClassification",
    "AutoModelForTokenClassification": "modeling_spanish_moe_bert.SpanishMoEBertForTokenClassification",
    "AutoModelForQuestionAnswering": "modeling_spanish_moe_bert.SpanishMoEBertForQuestionAnswering",
    "AutoModelForMultipleChoice": "modeling_spanish_moe_bert.SpanishMoEBertForMultipleChoice",
}


class SpanishMoEBertConfig(PreTrainedConfig):
    r"""
    Configuration of a [`SpanishMoEBertModel`]. The defaults are the published architecture: 24 layers of
    hidden size 1024 with 16 heads, RoPE, a sparse MoE of 32 SwiGLU experts with 4 active per token in
    every layer, DyT normalization and a 50k vocabulary: 338.1M parameters in total, 156.4M of them active
    per token (see the README for how they are counted).

    Attention (one type per layer, from `attention_types` or else `attention_pattern` repeated):
        - `"mha"`: standard multi-head attention.
        - `"gqa"`: grouped-query attention with `num_key_value_heads` key/value heads.
        - `"mla"`: multi-head latent attention (DeepSeek-V2): keys and values are decompressed from one
          `kv_lora_rank`-dimensional latent; RoPE lives in a separate `qk_rope_head_dim` part of each head whose
          key is shared by all heads, so that the position signal does not go through the low-rank path.

    The default pattern `["mha", "gqa", "gqa", "mla"]` (6 MHA, 12 GQA, 6 MLA layers) spends full key/value
    capacity where it is cheap to keep it (every fourth layer, starting with the first), and uses the two
    compressed forms elsewhere to save parameters and FLOPs that an encoder, which has no KV cache, would
    otherwise spend on key/value projections. The saved budget goes to the experts.

    MoE: `mlp_layer_types[i]` is `"sparse"` (router + `num_experts` SwiGLU experts of width
    `moe_intermediate_size`, `num_experts_per_tok` active) or `"dense"` (one SwiGLU of width
    `intermediate_size`). The router is a top-k without token dropping over softmax probabilities
    (`router_score_function="softmax"`) or independent sigmoid scores (`"sigmoid"`, as DeepSeek-V3), trained with the
    ST-MoE router z-loss (`router_z_loss_coef`) and balanced by default without an auxiliary loss (DeepSeek-V3):
    with `router_bias_update_rate > 0` a per-expert bias, used only to choose the top-k, moves by that rate after
    each optimizer step towards equal load (`model.update_router_biases()`, which `run_mlm.py` calls); it is added to
    the router's scores (`router_bias_on="probabilities"`) or to its logits (`"logits"`). The
    Switch-Transformer load-balancing loss (`router_aux_loss_coef`, 0 by default) can be used with it or instead;
    `router_jitter_noise` multiplies router inputs by U(1-eps, 1+eps) in training. The routing weights (renormalised
    to sum to 1 with `norm_topk_prob`) are multiplied by `routed_scaling_factor` (DeepSeek-V3's name; at 1.0, a mean
    of the chosen experts, `bench_quality.py` did better than at 2.0 and as well as at 0.5). `num_shared_experts` adds
    one always-active SwiGLU of `num_shared_experts * moe_intermediate_size` to every MoE layer (DeepSeekMoE).
    How the experts run is chosen per call from the device, dtype, autograd and compile state
    (`modeling_spanish_moe_bert.expert_path`); `moe_implementation` forces one of `MOE_IMPLEMENTATIONS` instead
    (benchmarks, debugging).

    Normalization: `norm_type` is the norm of every block (before attention, before the feed-forward, and MLA's
    latent norms); `output_norm_type` that of the two output norms, after the last block and in the MLM head, which
    set the scale of `last_hidden_state`, `pooler_output` and the logits (None: `norm_type`). `"dyt"` is Dynamic
    Tanh, `DyT(x) = weight * tanh(alpha * x) + bias` with a learnable scalar alpha initialised to
    `dyt_alpha_init_attention` before attention and to `dyt_alpha_init_ffn` elsewhere. `None` (the default) picks
    `1 / (initializer_range * embedding_scale)`, the alpha that puts the embeddings' typical value at tanh's unit
    input, where DyT acts like LayerNorm does at initialisation: 1.56 at hidden size 1024. DyT does not rescale its
    input, so alpha has to follow the residual stream as it grows in training: it is learnt as
    `log(alpha) = dyt_log_alpha_multiplier * parameter`, so that Adam moves it by a share of itself, about
    `dyt_log_alpha_multiplier * lr` a step. The defaults (DyT in every block, LayerNorm at the outputs, multiplier
    3) come from `bench_ablations.py` (README, "DyT"); `"layernorm"` and `"rmsnorm"` are the alternatives.

    Embeddings are multiplied by `embedding_multiplier` (None: `sqrt(hidden_size)`, as Gemma does), and the
    MLM output bias can start at the unigram log prior (`SpanishMoEBertForMaskedLM.init_decoder_bias_from_counts`,
    which `run_mlm.py` calls). Without these, DyT saturates early in training on one direction shared by every
    token, and all tokens end up with the same representation.

    `sparse_prediction`: in training (`model.train()`) with `labels`, the masked-LM head runs only at the labelled
    positions (its 50k-wide decoder is about a third of a token's FLOPs at the published widths) and returns
    `(num_labelled, vocab_size)` logits, as ModernBERT's option of that name does. In evaluation and inference
    (`model.eval()`), with labels or without, the logits cover every position, as every transformers masked LM's do,
    so metric code written for those (transformers' own `run_mlm.py` example) works unchanged.
    """

    model_type = "spanish_moe_bert"
    keys_to_ignore_at_inference = ["hidden_states", "attentions", "expert_load"]

    vocab_size: int = 50000
    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    num_key_value_heads: int = 4
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    rope_theta: float = 10000.0
    attention_pattern: list[str] | None = None
    attention_types: list[str] | None = None
    attention_bias: bool = False
    attention_dropout: float = 0.0
    kv_lora_rank: int = 256
    q_lora_rank: int | None = None
    qk_nope_head_dim: int = 64
    qk_rope_head_dim: int = 32
    v_head_dim: int = 64
    mlp_layer_types: list[str] | None = None
    intermediate_size: int = 2816
    moe_intermediate_size: int = 88
    num_experts: int = 32
    num_experts_per_tok: int = 4
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 1.0
    router_aux_loss_coef: float = 0.0  # loss-free balancing (below) won in bench_ablations.py: -1.3% held-out loss
    router_z_loss_coef: float = 0.001
    router_jitter_noise: float = 0.0
    router_bias_update_rate: float = 0.001
    router_bias_on: str = "probabilities"
    router_score_function: str = "softmax"
    num_shared_experts: int = 0
    moe_implementation: str | None = None
    hidden_act: str = "silu"
    norm_type: str = "dyt"
    norm_eps: float = 1e-5
    dyt_alpha_init_attention: float | None = None
    dyt_alpha_init_ffn: float | None = None
    dyt_log_alpha_multiplier: float = 3.0
    output_norm_type: str | None = "layernorm"
    hidden_dropout: float = 0.0
    embedding_dropout: float = 0.0
    classifier_dropout: float = 0.0
    initializer_range: float = 0.02
    embedding_multiplier: float | None = None
    pad_token_id: int | None = 0
    tie_word_embeddings: bool = True
    sparse_prediction: bool = True

    def __post_init__(self, **kwargs):
        if self.attention_pattern is None:
            self.attention_pattern = ["mha", "gqa", "gqa", "mla"]
        if self.attention_types is None:
            self.attention_types = self.pattern_layers()
        if self.mlp_layer_types is None:
            self.mlp_layer_types = ["sparse"] * self.num_hidden_layers
        self.attention_pattern = list(self.attention_pattern)
        self.attention_types = list(self.attention_types)
        self.mlp_layer_types = list(self.mlp_layer_types)
        self.validate_architecture()
        super().__post_init__(**kwargs)
        # A checkpoint saved by an older version lacks the heads added since: map them too (saving copies this code),
        # keeping the entries it has.
        self.auto_map = dict(AUTO_MAP) | dict(getattr(self, "auto_map", None) or {})

    def pattern_layers(self) -> list[str]:
        """`attention_pattern` repeated over the layers: the `attention_types` it stands for."""
        return [self.attention_pattern[i % len(self.attention_pattern)] for i in range(self.num_hidden_layers)]

    def update_from_string(self, update_str: str):
        """Set fields from `"key=value,key=value"` (`run_mlm.py --config_overrides`), as transformers' method does,
        and also the fields it cannot set: lists in brackets (`"mlp_layer_types=[dense,sparse,sparse,sparse]"`) and
        the fields that may be None (`"moe_implementation=grouped_mm"`, `"q_lora_rank=none"`). The per-layer lists
        that follow `attention_pattern` (or are all sparse) follow a new `num_hidden_layers` or pattern too; lists
        given in the string, or custom ones, are kept as they are. Raises `ValueError` naming a value it cannot read.
        """
        follows_pattern = self.attention_types == self.pattern_layers()
        all_sparse = self.mlp_layer_types == ["sparse"] * self.num_hidden_layers
        fields = {field.name: field.type for field in dataclasses.fields(self)}
        given = set()
        for item in re.split(r",(?![^\[]*\])", update_str):  # commas inside brackets belong to a list
            key, equals, value = item.partition("=")
            if not equals:
                raise ValueError(f"config override {item!r} is not key=value")
            if key in fields:
                setattr(self, key, _parse_field(key, value, fields[key]))
            else:
                super().update_from_string(item)
            given.add(key)
        if follows_pattern and "attention_types" not in given:
            self.attention_types = self.pattern_layers()
        if all_sparse and "mlp_layer_types" not in given:
            self.mlp_layer_types = ["sparse"] * self.num_hidden_layers

    @property
    def embedding_scale(self) -> float:
        return self.embedding_multiplier if self.embedding_multiplier is not None else self.hidden_size**0.5

    def dyt_alpha_init(self, position: str) -> float:
        """DyT's alpha init before "attention", or elsewhere ("ffn", "output")."""
        value = self.dyt_alpha_init_attention if position == "attention" else self.dyt_alpha_init_ffn
        return value if value is not None else 1.0 / (self.initializer_range * self.embedding_scale)

    @property
    def active_intermediate_size(self) -> int:
        """The width of the experts a token runs together, its top-k routed experts and the shared ones: a dense
        SwiGLU this wide costs the same FLOPs per token."""
        return (self.num_experts_per_tok + self.num_shared_experts) * self.moe_intermediate_size

    def dense_twin(self) -> "SpanishMoEBertConfig":
        """This architecture with every feed-forward one SwiGLU of `active_intermediate_size`: the same FLOPs per
        token without routing (benchmarks compare against it; sparse upcycling starts from it)."""
        dense = ["dense"] * self.num_hidden_layers
        return SpanishMoEBertConfig.from_dict(
            self.to_dict() | {"mlp_layer_types": dense, "intermediate_size": self.active_intermediate_size}
        )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def validate_architecture(self):
        """Raise `ValueError` naming the field for every value the model cannot be built with."""
        for name in (
            "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "max_position_embeddings", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
            "intermediate_size", "moe_intermediate_size", "num_experts", "num_experts_per_tok",
        ):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}")
        if self.q_lora_rank is not None and (not isinstance(self.q_lora_rank, int) or self.q_lora_rank <= 0):
            raise ValueError(f"`q_lora_rank` must be None or a positive integer, got {self.q_lora_rank!r}")
        if self.type_vocab_size < 0:
            raise ValueError(f"`type_vocab_size` must be >= 0 (0 disables token types), got {self.type_vocab_size}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"`hidden_size` ({self.hidden_size}) must be divisible by `num_attention_heads` "
                f"({self.num_attention_heads})"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"`num_attention_heads` ({self.num_attention_heads}) must be divisible by `num_key_value_heads` "
                f"({self.num_key_value_heads})"
            )
        if self.head_dim % 2 or self.qk_rope_head_dim % 2:
            raise ValueError(
                f"RoPE needs even head sizes: head_dim={self.head_dim}, qk_rope_head_dim={self.qk_rope_head_dim}"
            )
        if self.num_experts_per_tok > self.num_experts:
            raise ValueError(
                f"`num_experts_per_tok` ({self.num_experts_per_tok}) must be between 1 and `num_experts` "
                f"({self.num_experts})"
            )
        if not self.attention_pattern:
            raise ValueError("`attention_pattern` must name at least one attention type")
        for field, allowed in (
            ("attention_pattern", ATTENTION_TYPES),
            ("attention_types", ATTENTION_TYPES),
            ("mlp_layer_types", MLP_LAYER_TYPES),
        ):
            values = getattr(self, field)
            unknown = sorted({v for v in values if v not in allowed}, key=str)
            if unknown:
                raise ValueError(f"`{field}` has unknown entries {unknown}; allowed: {list(allowed)}")
            if field != "attention_pattern" and len(values) != self.num_hidden_layers:
                raise ValueError(
                    f"`{field}` has {len(values)} entries but `num_hidden_layers` is {self.num_hidden_layers}"
                )
        if self.moe_implementation is not None and self.moe_implementation not in MOE_IMPLEMENTATIONS:
            raise ValueError(
                f"`moe_implementation` must be None (automatic) or one of {list(MOE_IMPLEMENTATIONS)}, "
                f"got {self.moe_implementation!r}"
            )
        if self.norm_type not in NORM_TYPES:
            raise ValueError(f"`norm_type` must be one of {list(NORM_TYPES)}, got {self.norm_type!r}")
        if self.output_norm_type is not None and self.output_norm_type not in NORM_TYPES:
            raise ValueError(
                f"`output_norm_type` must be None (`norm_type`) or one of {list(NORM_TYPES)}, "
                f"got {self.output_norm_type!r}"
            )
        for name in ("attention_dropout", "hidden_dropout", "embedding_dropout", "classifier_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"`{name}` must be in [0, 1), got {value}")
        if not self.routed_scaling_factor > 0:
            raise ValueError(f"`routed_scaling_factor` must be > 0, got {self.routed_scaling_factor}")
        if self.router_bias_update_rate < 0:
            raise ValueError(f"`router_bias_update_rate` must be >= 0 (0: off), got {self.router_bias_update_rate}")
        if self.router_bias_on not in ROUTER_BIAS_ON:
            raise ValueError(f"`router_bias_on` must be one of {list(ROUTER_BIAS_ON)}, got {self.router_bias_on!r}")
        if self.router_score_function not in ROUTER_SCORE_FUNCTIONS:
            allowed, got = list(ROUTER_SCORE_FUNCTIONS), self.router_score_function
            raise ValueError(f"`router_score_function` must be one of {allowed}, got {got!r}")
        shared = self.num_shared_experts
        if isinstance(shared, bool) or not isinstance(shared, int) or shared < 0:
            raise ValueError(f"`num_shared_experts` must be an integer >= 0, got {self.num_shared_experts!r}")
        if not 0.0 <= self.router_jitter_noise < 1.0:
            raise ValueError(f"`router_jitter_noise` must be in [0, 1), got {self.router_jitter_noise}")
        for name in ("router_aux_loss_coef", "router_z_loss_coef"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)}")
        for name in ("rope_theta", "norm_eps", "initializer_range", "dyt_log_alpha_multiplier"):
            if getattr(self, name) <= 0:
                raise ValueError(f"`{name}` must be > 0, got {getattr(self, name)}")
        for name in ("dyt_alpha_init_attention", "dyt_alpha_init_ffn"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise ValueError(f"`{name}` must be None (automatic) or > 0, got {getattr(self, name)}")
        if self.embedding_multiplier is not None and not self.embedding_multiplier > 0:
            raise ValueError(
                f"`embedding_multiplier` must be None (sqrt(hidden_size)) or > 0, got {self.embedding_multiplier}"
            )


def _parse_field(name: str, text: str, annotation) -> object:
    """The value of field `name` (annotated `int`, `float | None`, `list[str] | None`, ...) written as `text`."""
    kinds = typing.get_args(annotation) if typing.get_origin(annotation) is not list else (annotation,)
    kinds = kinds or (annotation,)
    if type(None) in kinds and text.lower() in ("none", "null"):
        return None
    kind = next(kind for kind in kinds if kind is not type(None))
    if typing.get_origin(kind) is list:
        if not (text.startswith("[") and text.endswith("]")):
            raise ValueError(f"`{name}` takes a list in brackets, e.g. {name}=[a,b], got {text!r}")
        return [entry.strip() for entry in text[1:-1].split(",") if entry.strip()]
    if kind is bool:  # the words transformers' method reads
        if text.lower() not in ("true", "1", "y", "yes", "false", "0", "n", "no"):
            raise ValueError(f"`{name}` takes true or false, got {text!r}")
        return text.lower() in ("true", "1", "y", "yes")
    try:
        return kind(text)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` takes a value of type {kind.__name__}, got {text!r}") from None


__all__ = ["SpanishMoEBertConfig"]

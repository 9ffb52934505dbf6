"""Sparse upcycling: start a MoE model from a trained dense twin instead of from scratch.

The dense twin (`SpanishMoEBertConfig.dense_twin`) has one SwiGLU of width `k * I` where the MoE has `E` experts of
width `I` with `k` active per token, so both spend the same FLOPs per token. Upcycling copies everything but the
feed-forward, cuts the dense SwiGLU's `k * I` neurons into `k` slices of `I`, and starts expert `e` as slice
`e mod k` with its output scaled by `k / routed_scaling_factor`. A token whose top-k experts hold one slice each then
gets exactly the dense layer's output (the renormalised weights are 1/k each at a uniform router, times the routed
scaling factor); other tokens get some slices twice and miss others, which training repairs. This is the granular
form of Komatsuzaki et al. (2023), whose experts are whole copies of the dense FFN and so cost k times its compute.
"""

import torch

from configuration_spanish_moe_bert import SpanishMoEBertConfig
from modeling_spanish_moe_bert import SpanishMoEBertForMaskedLM


@torch.no_grad()
def upcycle(dense: SpanishMoEBertForMaskedLM, config: SpanishMoEBertConfig) -> SpanishMoEBertForMaskedLM:
    """A `config` MoE model whose weights come from `dense`, a trained model of `config.dense_twin()`."""
    k, width = config.num_experts_per_tok, config.moe_intermediate_size
    if config.num_shared_experts:
        raise ValueError(
            f"upcycling into shared experts is not supported (num_shared_experts={config.num_shared_experts})"
        )
    if config.num_experts % k:
        raise ValueError(f"upcycling needs num_experts ({config.num_experts}) divisible by num_experts_per_tok ({k})")
    if dense.config.intermediate_size != k * width:
        raise ValueError(
            f"the dense model's intermediate_size is {dense.config.intermediate_size}, upcycling into "
            f"{config.num_experts_per_tok} x {width} experts needs {k * width}"
        )
    moe = SpanishMoEBertForMaskedLM(config)
    ffn_free = {name: value for name, value in dense.state_dict().items() if ".mlp." not in name}
    missing, unexpected = moe.load_state_dict(ffn_free, strict=False)
    assert not unexpected, unexpected
    for layer, dense_layer in zip(moe.model.layers, dense.model.layers):
        if not layer.is_sparse:
            layer.mlp.load_state_dict(dense_layer.mlp.state_dict())
            continue
        gate, up = dense_layer.mlp.gate_up_proj.weight.chunk(2, dim=0)  # (k*I, H) each
        down = dense_layer.mlp.down_proj.weight  # (H, k*I)
        for e in range(config.num_experts):
            piece = slice((e % k) * width, (e % k + 1) * width)
            layer.mlp.experts.gate_up_proj[e] = torch.cat([gate[piece], up[piece]]).T  # (H, 2I)
            layer.mlp.experts.down_proj[e] = k / config.routed_scaling_factor * down[:, piece].T  # (I, H)
    return moe

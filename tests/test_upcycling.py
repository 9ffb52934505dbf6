"""Sparse upcycling: a MoE model started from its trained dense twin computes the dense model's function when each
token's top-k experts hold one slice each of the dense feed-forward."""

import pytest
import torch
from tiny_config import make_config

from configuration_spanish_moe_bert import SpanishMoEBertConfig
from modeling_spanish_moe_bert import SpanishMoEBertForMaskedLM
from spanish_moe_bert.upcycling import upcycle


@pytest.mark.parametrize("routed_scaling_factor", [1.0, 2.0])
def test_upcycled_model_reproduces_the_dense_model_when_tokens_take_one_expert_per_slice(routed_scaling_factor):
    # a bias rate only to route by the bias below
    config = make_config(router_bias_update_rate=1e-6, routed_scaling_factor=routed_scaling_factor)
    torch.manual_seed(0)
    dense = SpanishMoEBertForMaskedLM(config.dense_twin()).eval()
    for p in dense.parameters():
        torch.nn.init.normal_(p, std=0.1)
    moe = upcycle(dense, config).eval()
    k = config.num_experts_per_tok
    for layer in moe.model.layers:
        layer.mlp.router.weight.data.zero_()  # uniform probabilities: renormalised weights are 1/k
        layer.mlp.router.expert_bias.data[:k] = 1.0  # experts 0..k-1, which hold slices 0..k-1
    ids = torch.randint(5, config.vocab_size, (2, 12))
    with torch.no_grad():
        assert torch.allclose(moe(input_ids=ids).logits, dense(input_ids=ids).logits, atol=1e-5)
    experts = moe.model.layers[0].mlp.experts
    assert torch.equal(experts.gate_up_proj[0], experts.gate_up_proj[k])  # copies of the same slice
    assert not torch.equal(experts.gate_up_proj[0], experts.gate_up_proj[1])
    assert torch.equal(moe.model.embeddings.word_embeddings.weight, dense.model.embeddings.word_embeddings.weight)


def test_upcycling_needs_the_matching_dense_width_and_divisible_experts():
    config = make_config()
    narrow = SpanishMoEBertConfig.from_dict(config.dense_twin().to_dict() | {"intermediate_size": 48})
    wrong = SpanishMoEBertForMaskedLM(narrow)
    with pytest.raises(ValueError, match="intermediate_size is 48"):
        upcycle(wrong, config)
    odd = make_config(num_experts=7, num_experts_per_tok=2)
    with pytest.raises(ValueError, match="divisible"):
        upcycle(SpanishMoEBertForMaskedLM(odd.dense_twin()), odd)
    shared = make_config(num_shared_experts=1)
    with pytest.raises(ValueError, match="shared experts is not supported"):
        upcycle(SpanishMoEBertForMaskedLM(shared.dense_twin()), shared)

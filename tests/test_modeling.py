"""Behaviour of the model core: configuration, encoder, MoE dispatch, heads, saving and remote-code loading."""

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tiny_config import make_config

import modeling_spanish_moe_bert as modeling
from configuration_spanish_moe_bert import AUTO_MAP, SpanishMoEBertConfig
from modeling_spanish_moe_bert import (
    DynamicTanh,
    SpanishMoEBertForMaskedLM,
    SpanishMoEBertForMultipleChoice,
    SpanishMoEBertForQuestionAnswering,
    SpanishMoEBertForSequenceClassification,
    SpanishMoEBertForTokenClassification,
    SpanishMoEBertModel,
    SpanishMoEBertSparseMoE,
    load_balancing_loss,
)

REPO = Path(__file__).resolve().parents[1]


def batch(vocab_size=2000, b=3, t=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(5, vocab_size, (b, t), generator=g)


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(num_experts=4, num_experts_per_tok=5), "num_experts_per_tok"),
        (dict(hidden_size=66, num_attention_heads=4), "hidden_size"),
        (dict(num_attention_heads=4, num_key_value_heads=3), "num_attention_heads"),
        (dict(attention_pattern=["mha", "sliding"]), "attention_pattern"),
        (dict(attention_types=["mha", "gqa"]), "attention_types"),
        (dict(mlp_layer_types=["sparse", "dense", "moe", "sparse"]), "mlp_layer_types"),
        (dict(mlp_layer_types=["sparse"]), "mlp_layer_types"),
        (dict(norm_type="batchnorm"), "norm_type"),
        (dict(output_norm_type="batchnorm"), "output_norm_type"),
        (dict(dyt_log_alpha_multiplier=0.0), "dyt_log_alpha_multiplier"),
        (dict(hidden_size=0), "hidden_size"),
        (dict(num_experts=-1), "num_experts"),
        (dict(moe_intermediate_size=0), "moe_intermediate_size"),
        (dict(hidden_dropout=1.0), "hidden_dropout"),
        (dict(attention_dropout=-0.1), "attention_dropout"),
        (dict(router_jitter_noise=1.5), "router_jitter_noise"),
        (dict(router_aux_loss_coef=-1.0), "router_aux_loss_coef"),
        (dict(dyt_alpha_init_ffn=0.0), "dyt_alpha_init_ffn"),
        (dict(q_lora_rank=0), "q_lora_rank"),
        (dict(embedding_multiplier=0.0), "embedding_multiplier"),
        (dict(moe_implementation="fast"), "moe_implementation"),
        (dict(routed_scaling_factor=0.0), "routed_scaling_factor"),
        (dict(router_bias_on="weights"), "router_bias_on"),
        (dict(router_score_function="tanh"), "router_score_function"),
    ],
)
def test_config_rejects_impossible_values_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        make_config(**kwargs)


def test_config_expands_pattern_and_round_trips(tmp_path):
    config = make_config(num_hidden_layers=6, attention_pattern=["gqa", "mla"])
    assert config.attention_types == ["gqa", "mla", "gqa", "mla", "gqa", "mla"]
    assert config.mlp_layer_types == ["sparse"] * 6
    config.save_pretrained(tmp_path)
    again = SpanishMoEBertConfig.from_pretrained(tmp_path)
    assert again.attention_types == config.attention_types
    assert again.to_diff_dict() == config.to_diff_dict()


def test_config_overrides_follow_the_layer_count_and_set_every_kind_of_field():
    # run_mlm.py --config_overrides: the per-layer lists derived from the pattern follow a new layer count (they kept
    # the old count, and the model could not be built, before), and lists and None-able fields can be set too.
    config = make_config(num_hidden_layers=6, attention_pattern=["gqa", "mla"])
    config.update_from_string("num_hidden_layers=3,num_experts=4")
    assert config.attention_types == ["gqa", "mla", "gqa"] and config.mlp_layer_types == ["sparse"] * 3
    assert config.num_experts == 4
    config.validate_architecture()
    config.update_from_string(
        "mlp_layer_types=[dense, sparse,sparse],intermediate_size=64,moe_implementation=grouped_mm,q_lora_rank=16,"
        "output_norm_type=none,sparse_prediction=false,rope_theta=5e4,attention_pattern=[mla]"
    )  # fmt: skip
    assert config.mlp_layer_types == ["dense", "sparse", "sparse"] and config.intermediate_size == 64
    assert (config.moe_implementation, config.q_lora_rank, config.output_norm_type) == ("grouped_mm", 16, None)
    assert config.sparse_prediction is False and config.rope_theta == 50000.0
    assert config.attention_types == ["mla"] * 3  # it followed the pattern, so it follows the new one
    config.update_from_string("num_hidden_layers=2")  # a custom MLP list is not guessed at: the check names it
    with pytest.raises(ValueError, match="`mlp_layer_types` has 3 entries"):
        config.validate_architecture()


@pytest.mark.parametrize(
    "override, message",
    [
        ("mlp_layer_types=dense", "`mlp_layer_types` takes a list in brackets"),
        ("num_experts=eight", "`num_experts` takes a value of type int, got 'eight'"),
        ("sparse_prediction=maybe", "`sparse_prediction` takes true or false"),
        ("num_experts", "'num_experts' is not key=value"),
        ("no_such_field=1", "no_such_field"),
    ],
)
def test_config_overrides_name_what_they_cannot_read(override, message):
    with pytest.raises(ValueError, match=message):
        make_config().update_from_string(override)


def test_default_config_is_the_published_architecture():
    config = SpanishMoEBertConfig()
    assert (config.vocab_size, config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (
        50000, 1024, 24, 16
    )  # fmt: skip
    assert (config.num_experts, config.num_experts_per_tok, config.max_position_embeddings) == (32, 4, 512)
    assert set(config.attention_types) == {"mha", "gqa", "mla"}
    assert config.norm_type == "dyt"
    assert SpanishMoEBertConfig.from_json_file(REPO / "configs" / "large.json").to_dict() == config.to_dict()


def test_default_config_counts_340m_parameters_on_meta_device():
    with torch.device("meta"):
        model = SpanishMoEBertForMaskedLM(SpanishMoEBertConfig())
    total = sum(p.numel() for p in model.parameters())  # the tied decoder counts once
    assert abs(total - 340e6) / 340e6 <= 0.05, total


# ---------------------------------------------------------------- forward passes


@pytest.mark.parametrize("attention", ["mha", "gqa", "mla"])
@pytest.mark.parametrize("norm", ["dyt", "layernorm", "rmsnorm"])
def test_forward_shapes_for_every_attention_and_norm_type(attention, norm):
    config = make_config(attention_pattern=[attention], norm_type=norm)
    model = SpanishMoEBertModel(config).eval()
    ids = batch()
    out = model(ids, attention_mask=torch.ones_like(ids), output_hidden_states=True)
    assert out.last_hidden_state.shape == (3, 16, config.hidden_size)
    assert out.pooler_output.shape == (3, config.hidden_size)
    assert torch.equal(out.pooler_output, out.last_hidden_state[:, 0])
    assert len(out.hidden_states) == config.num_hidden_layers + 1
    assert out.expert_load.shape == (config.num_hidden_layers, config.num_experts)
    assert torch.allclose(out.expert_load.sum(-1), torch.ones(config.num_hidden_layers))


def test_mla_with_low_rank_queries_and_dense_layers():
    config = make_config(
        attention_pattern=["mla"], q_lora_rank=16, mlp_layer_types=["dense", "sparse", "dense", "sparse"]
    )
    out = SpanishMoEBertModel(config)(batch())
    assert out.last_hidden_state.shape == (3, 16, config.hidden_size)
    assert out.expert_load.shape == (2, config.num_experts)


def test_all_dense_model_has_no_router_losses():
    config = make_config(mlp_layer_types=["dense"] * 4)
    ids = batch()
    out = SpanishMoEBertForMaskedLM(config)(ids, labels=ids)
    assert out.aux_loss is None and out.expert_load is None
    assert torch.equal(out.loss, out.mlm_loss)


def test_heads_shapes_and_losses():
    config = make_config(num_labels=3)
    ids = batch()
    seq = SpanishMoEBertForSequenceClassification(config)(ids, labels=torch.tensor([0, 2, 1]))
    tok = SpanishMoEBertForTokenClassification(config)(ids, labels=torch.zeros_like(ids))
    assert seq.logits.shape == (3, 3) and torch.isfinite(seq.loss)
    assert tok.logits.shape == (3, 16, 3) and torch.isfinite(tok.loss)


def test_question_answering_loss_is_berts_and_ignores_answers_truncated_away():
    config = make_config(router_aux_loss_coef=0.0, router_z_loss_coef=0.0)
    model = SpanishMoEBertForQuestionAnswering(config).eval()
    ids = batch()
    start, end = torch.tensor([2, 40, 5]), torch.tensor([4, 41, 16])  # row 1 lies past the 16 tokens; 16 is past too
    out = model(ids, start_positions=start, end_positions=end)
    assert out.start_logits.shape == out.end_logits.shape == (3, 16)
    kept_start = F.cross_entropy(out.start_logits[[0, 2]], start[[0, 2]])
    kept_end = F.cross_entropy(out.end_logits[[0]], end[[0]])  # row 2's end (16) is outside too
    assert torch.allclose(out.loss, (kept_start + kept_end) / 2)
    from transformers.loss.loss_utils import ForQuestionAnsweringLoss

    assert torch.allclose(out.loss, ForQuestionAnsweringLoss(out.start_logits, out.end_logits, start, end))


def test_question_answering_head_learns_to_point_at_the_answer():
    torch.manual_seed(0)
    model = SpanishMoEBertForQuestionAnswering(make_config())
    ids = batch(b=4, seed=1)
    start, end = torch.tensor([3, 7, 1, 10]), torch.tensor([5, 7, 4, 13])
    token_types = torch.zeros_like(ids)
    token_types[:, 6:] = 1  # question, then context: the sentence-pair layout
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(40):
        loss = model(ids, token_type_ids=token_types, start_positions=start, end_positions=end).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    with torch.no_grad():
        out = model(ids, token_type_ids=token_types)
    assert torch.equal(out.start_logits.argmax(-1), start) and torch.equal(out.end_logits.argmax(-1), end)


def test_multiple_choice_scores_each_choice_as_a_sequence_of_its_own():
    torch.manual_seed(0)
    model = SpanishMoEBertForMultipleChoice(make_config(router_aux_loss_coef=0.0, router_z_loss_coef=0.0)).eval()
    ids = batch(b=6).view(2, 3, 16)  # 2 questions, 3 choices each
    mask = torch.ones_like(ids)
    mask[0, 1, 10:] = 0  # one choice is shorter
    labels = torch.tensor([2, 0])
    out = model(ids, attention_mask=mask, labels=labels)
    assert out.logits.shape == (2, 3)
    alone = model(ids[0, 1:2, :10].unsqueeze(0)).logits  # the short choice, unpadded, as a batch of one
    assert torch.allclose(alone[0, 0], out.logits[0, 1], atol=1e-5)
    assert torch.allclose(out.loss, F.cross_entropy(out.logits, labels))


def test_mlm_loss_is_mlm_plus_weighted_router_losses_and_decoder_is_tied():
    config = make_config()
    model = SpanishMoEBertForMaskedLM(config)
    assert model.decoder.weight.data_ptr() == model.model.embeddings.word_embeddings.weight.data_ptr()
    ids = batch()
    labels = torch.full_like(ids, -100)
    labels[:, 3] = ids[:, 3]
    out = model(ids, labels=labels)
    expected = out.mlm_loss + config.router_aux_loss_coef * out.aux_loss + config.router_z_loss_coef * out.z_loss
    assert torch.allclose(out.loss, expected)
    assert torch.isfinite(out.aux_loss) and torch.isfinite(out.z_loss) and out.z_loss > 0


# ---------------------------------------------------------------- MoE dispatch


def naive_moe(moe: SpanishMoEBertSparseMoE, x: torch.Tensor) -> torch.Tensor:
    """Token by token, expert by expert: the definition the fast dispatch must match."""
    logits = x.float() @ moe.router.weight.float().T
    top_w, top_idx = logits.softmax(-1).topk(moe.top_k, dim=-1)
    top_w = top_w / top_w.sum(-1, keepdim=True)
    rows = []
    for token in range(x.shape[0]):
        y = torch.zeros_like(x[token])
        for w, e in zip(top_w[token], top_idx[token]):
            gate, up = (x[token] @ moe.experts.gate_up_proj[e]).chunk(2)
            y = y + w * ((F.silu(gate) * up) @ moe.experts.down_proj[e])
        rows.append(y)
    return torch.stack(rows)


PATHS = ["grouped_mm", "padded_bmm", "loop", "compiled_fallback", "per_expert"]


def random_moe(path: str | None = None, **overrides) -> SpanishMoEBertSparseMoE:
    """A MoE layer that always takes `path` (None: the automatic one), with weights large enough to route unevenly."""
    torch.manual_seed(0)
    moe = SpanishMoEBertSparseMoE(make_config(moe_implementation=path, **overrides))
    for p in moe.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return moe


@pytest.mark.parametrize("path", PATHS)
def test_every_moe_path_matches_the_naive_reference_values_and_gradients(path):
    moe = random_moe(path, num_experts=6, num_experts_per_tok=3)
    x = torch.randn(2, 9, moe.experts.gate_up_proj.shape[1], requires_grad=True)
    fast, stats = moe(x)
    grads_fast = torch.autograd.grad(fast.square().sum(), [x, *moe.parameters()])
    slow = naive_moe(moe, x.reshape(-1, x.shape[-1])).view_as(fast)
    grads_slow = torch.autograd.grad(slow.square().sum(), [x, *moe.parameters()])
    assert torch.allclose(fast, slow, atol=1e-5, rtol=1e-4)
    for gf, gs in zip(grads_fast, grads_slow):
        assert torch.allclose(gf, gs, atol=1e-4, rtol=1e-4)
    assert torch.allclose(stats.expert_load.sum(), torch.tensor(1.0))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = moe(x)[0]
    assert low.dtype == torch.float32 and torch.allclose(low, slow, atol=0.05, rtol=0.05)


@pytest.mark.parametrize("path", PATHS)
def test_every_moe_path_skips_padding_tokens(path):
    moe = random_moe(path)
    x = torch.randn(2, 5, moe.experts.gate_up_proj.shape[1], requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    y, stats = moe(x, mask)
    assert torch.all(y[0, 3:] == 0)
    y_real, stats_real = moe(x.reshape(1, 10, -1)[:, mask.reshape(-1)])
    assert torch.allclose(y[mask], y_real[0], atol=1e-6)
    assert torch.allclose(stats.expert_load, stats_real.expert_load)
    assert torch.allclose(stats.aux_loss, stats_real.aux_loss) and torch.allclose(stats.z_loss, stats_real.z_loss)
    (grad,) = torch.autograd.grad(y.square().sum() + stats.aux_loss, x)
    assert torch.all(grad[0, 3:] == 0) and torch.isfinite(grad).all()


@pytest.mark.parametrize("path", PATHS)
def test_moe_batch_of_padding_only_gives_zeros_and_finite_losses(path):
    moe = random_moe(path)
    x = torch.randn(2, 3, moe.experts.gate_up_proj.shape[1])
    y, stats = moe(x, torch.zeros(2, 3, dtype=torch.bool))
    assert torch.equal(y, torch.zeros_like(y))
    assert stats.aux_loss == 0 and stats.z_loss == 0


def test_expert_path_table(monkeypatch):
    """The decision table of `expert_path` on this CPU, with the facts it cannot see here patched in."""
    x = torch.randn(6, 4)
    balanced, skewed = torch.tensor([3, 3, 3, 3]), torch.tensor([12, 0, 0, 0])
    with torch.no_grad():
        assert modeling.expert_path(x, balanced) == "per_expert"
    assert modeling.expert_path(x, balanced) == "grouped_mm"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert modeling.expert_path(x, balanced) == "grouped_mm"
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert modeling.expert_path(x, balanced) == "compiled_fallback"  # fp32: the compiled grouped_mm takes bf16 only
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert modeling.expert_path(x, balanced) == "grouped_mm"
    assert modeling.expert_path(x, balanced, rows_sorted=True) == "grouped_mm"  # inside the fallback: eager rules
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: False)
    monkeypatch.setattr(modeling, "grouped_mm_available", lambda device, dtype, compiling=False: False)
    assert modeling.expert_path(x, balanced) == "padded_bmm"
    assert modeling.expert_path(x, skewed) == "loop"  # padding would quadruple the rows
    # Dynamo in torch 2.11 folds is_exporting() to True under any torch.compile: only export's own flag counts
    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
    assert modeling.expert_path(x, balanced) == "padded_bmm"
    monkeypatch.setattr(torch.compiler, "_is_exporting_flag", True)  # what torch.export sets while it traces
    assert modeling.expert_path(x, balanced) == "per_expert"
    assert modeling.expert_path(x, balanced, forced="loop") == "loop"  # config.moe_implementation wins


@pytest.mark.parametrize(
    "device, dtype, compiling, capability, expected",
    [
        ("cpu", torch.float32, False, None, True),
        ("cpu", torch.bfloat16, False, None, True),
        ("cpu", torch.float32, True, None, False),
        ("cpu", torch.bfloat16, True, None, True),
        ("cuda", torch.bfloat16, False, (9, 0), True),
        ("cuda", torch.bfloat16, False, (8, 0), True),
        ("cuda", torch.float32, False, (9, 0), False),  # e.g. fp32 on an H100: padded bmm
        ("cuda", torch.float16, False, (7, 0), False),  # V100
        ("cuda", torch.bfloat16, False, (6, 1), False),  # Tesla P40
    ],
)
def test_grouped_mm_availability_by_device_dtype_and_compile(
    device, dtype, compiling, capability, expected, monkeypatch
):
    monkeypatch.setattr(modeling, "_cuda_capability", lambda index: capability)
    assert modeling.grouped_mm_available(torch.device(device), dtype, compiling) == expected


def test_load_balancing_loss_is_one_for_uniform_routing_and_larger_otherwise():
    e = 8
    uniform = load_balancing_loss(torch.full((64, e), 1 / e), torch.full((e,), 16))
    assert torch.isclose(uniform, torch.tensor(1.0))
    skewed_probs = torch.full((64, e), 0.02)
    skewed_probs[:, 0] = 1 - 0.02 * (e - 1)
    skewed = load_balancing_loss(skewed_probs, torch.tensor([100, 4, 4, 4, 4, 4, 4, 4]))
    assert skewed > 1.5


def test_loss_free_balancing_moves_the_selection_bias_towards_equal_load():
    moe = random_moe(router_bias_update_rate=0.01)
    hidden = moe.router.weight.shape[1]
    x = torch.randn(1, 64, hidden, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # expert 0's router row leans towards what all tokens share: it is overloaded
        moe.router.weight[0] += 0.2 * x[0].mean(0) / x[0].mean(0).norm() * hidden**0.5
    moe.train()
    moe(x)
    assert moe.router.expert_bias.abs().sum() == 0  # a forward only observes the load
    busiest = []
    for _ in range(100):  # one optimizer step each
        busiest.append(moe(x)[1].expert_load.max().item())
        moe.router.update_bias()
    assert busiest[0] > 0.22 and sum(busiest[-10:]) / 10 < 0.17  # 1/8 is perfect balance
    assert moe.router.expert_bias[0] < 0 and (moe.router.expert_bias[1:] > 0).all()
    _, _, top_w, top_idx = moe.router(x.reshape(64, -1))
    probs = moe.router(x.reshape(64, -1))[1]
    assert torch.allclose(top_w, probs.gather(-1, top_idx) / probs.gather(-1, top_idx).sum(-1, keepdim=True))
    moe.eval()
    bias = moe.router.expert_bias.clone()
    moe(x)
    assert torch.equal(moe.router.expert_bias, bias)  # no update outside training
    assert "router.expert_bias" in moe.state_dict()


def test_the_balancing_bias_is_added_to_the_probabilities_or_to_the_logits():
    x = torch.randn(64, 64, generator=torch.Generator().manual_seed(1))
    chosen = {}
    for space in ("probabilities", "logits"):
        router = random_moe(router_bias_update_rate=0.01, router_bias_on=space).router
        router.expert_bias[3] = 0.5  # larger than any probability gap, smaller than most logit gaps
        logits, probs, top_w, chosen[space] = router(x)
        scores = probs if space == "probabilities" else logits
        assert torch.equal(chosen[space], (scores + router.expert_bias).topk(2, dim=-1).indices)
        assert torch.allclose(top_w.sum(-1), torch.ones(64))  # the weights stay the router's, renormalised
    assert (chosen["probabilities"] == 3).any(-1).all()  # every token takes expert 3
    assert (chosen["logits"] == 3).any(-1).float().mean() < 0.9


def test_the_sigmoid_router_scores_each_expert_alone_and_the_bias_moves_those_scores():
    x = torch.randn(64, 64, generator=torch.Generator().manual_seed(1))
    router = random_moe(router_bias_update_rate=0.01, router_score_function="sigmoid").router
    logits, probs, top_w, top_idx = router(x)
    scores = logits.sigmoid()
    assert torch.equal(top_idx, scores.topk(2, dim=-1).indices)  # no bias yet: the two highest scores
    assert torch.allclose(top_w, scores.gather(-1, top_idx) / scores.gather(-1, top_idx).sum(-1, keepdim=True))
    assert torch.allclose(probs, scores / scores.sum(-1, keepdim=True))  # what the Switch loss and diagnostics read
    assert not torch.allclose(probs, logits.softmax(-1), atol=1e-3)
    router.expert_bias[3] = 0.5
    _, _, top_w, biased = router(x)
    assert torch.equal(biased, (scores + router.expert_bias).topk(2, dim=-1).indices)
    assert 0.1 < (biased == 3).any(-1).float().mean() < 1.0 and (biased != top_idx).any()
    assert torch.allclose(top_w.sum(-1), torch.ones(64))  # the weights stay the scores, renormalised


def test_shared_expert_adds_to_every_real_token():
    moe = random_moe(num_shared_experts=1)
    routed_only = random_moe()
    routed_only.load_state_dict({k: v for k, v in moe.state_dict().items() if not k.startswith("shared_expert.")})
    x = torch.randn(1, 6, moe.router.weight.shape[1])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    y, _ = moe(x, mask)
    expected = routed_only(x, mask)[0] + moe.shared_expert(x) * mask[..., None]
    assert torch.allclose(y, expected, atol=1e-6)
    assert torch.all(y[0, 4:] == 0)
    assert moe.shared_expert.down_proj.in_features == moe.experts.down_proj.shape[1]


def test_routed_scaling_factor_multiplies_the_routed_experts_not_the_shared_one():
    moe = random_moe(num_shared_experts=1)
    scaled = random_moe(num_shared_experts=1, routed_scaling_factor=2.5)
    scaled.load_state_dict(moe.state_dict())
    x = torch.randn(1, 6, moe.router.weight.shape[1])
    shared = moe.shared_expert(x)
    assert torch.allclose(scaled(x)[0] - shared, 2.5 * (moe(x)[0] - shared), atol=1e-6)
    assert torch.allclose(scaled.router(x[0])[2].sum(-1), torch.full((6,), 2.5))  # renormalised, then scaled


def test_shared_experts_count_in_the_active_width_and_the_dense_twin():
    config = make_config(num_shared_experts=1, num_experts_per_tok=1)
    assert config.active_intermediate_size == 2 * config.moe_intermediate_size
    twin = SpanishMoEBertForMaskedLM(config.dense_twin())
    moe = SpanishMoEBertForMaskedLM(config)
    active = sum(p.numel() for n, p in moe.named_parameters() if ".experts." not in n and ".router." not in n)
    active += sum(p[0].numel() for n, p in moe.named_parameters() if ".experts." in n)  # one routed expert
    assert active == sum(p.numel() for p in twin.parameters())


def test_router_jitter_only_in_training():
    config = make_config(router_jitter_noise=0.5)
    moe = SpanishMoEBertSparseMoE(config)
    for p in moe.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(1, 8, config.hidden_size)
    moe.eval()
    assert torch.equal(moe(x)[0], moe(x)[0])
    moe.train()
    torch.manual_seed(1)
    a = moe.router(x.reshape(8, -1))[0]
    b = moe.router(x.reshape(8, -1))[0]
    assert not torch.equal(a, b)


# ---------------------------------------------------------------- padding and attention backends


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_padding_does_not_change_real_token_outputs(impl):
    torch.manual_seed(0)
    model = SpanishMoEBertModel(make_config()).eval()
    model.set_attn_implementation(impl)
    ids = batch(t=10, b=1)
    alone = model(ids).last_hidden_state
    padded_ids = torch.cat([ids, torch.zeros(1, 6, dtype=torch.long)], dim=1)
    other = batch(t=16, b=1, seed=1)
    two = torch.cat([padded_ids, other])
    mask = torch.ones_like(two)
    mask[0, 10:] = 0
    in_batch = model(two, attention_mask=mask).last_hidden_state
    assert torch.allclose(in_batch[0, :10], alone[0], atol=1e-5)
    assert torch.allclose(in_batch[1], model(other).last_hidden_state[0], atol=1e-5)


def test_eager_and_sdpa_agree():
    torch.manual_seed(0)
    model = SpanishMoEBertModel(make_config()).eval()
    ids = batch()
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    model.set_attn_implementation("sdpa")
    sdpa = model(ids, attention_mask=mask).last_hidden_state
    model.set_attn_implementation("eager")
    eager = model(ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    assert torch.allclose(sdpa[real], eager[real], atol=1e-5)


def test_attention_gets_views_of_the_projections_layout_for_every_attention_type(monkeypatch):
    """Queries, keys and values reach the attention function as (B, heads, T, d) views of (B, T, heads, d) tensors,
    all three alike: SDPA reads such views in place and writes its output in that layout, where mixed layouts made
    it copy (peak inference memory 1.44x ModernBERT's before, benchmarks/README "attention without copies")."""
    seen = {}
    configured = modeling.attention_interface

    def recording(config, output_attentions=False):
        attend = configured(config, output_attentions)

        def record(module, query, key, value, *args, **kwargs):
            seen[module.layer_idx] = (query, key, value)
            return attend(module, query, key, value, *args, **kwargs)

        return record

    monkeypatch.setattr(modeling, "attention_interface", recording)
    config = make_config()
    model = SpanishMoEBertModel(config).eval()
    mask = torch.ones(3, 16, dtype=torch.long)
    mask[1, 9:] = 0
    model(batch(), attention_mask=mask)
    assert set(config.attention_types) == {"mha", "gqa", "mla"}
    assert sorted(seen) == list(range(config.num_hidden_layers))
    for layer, tensors in seen.items():
        for name, tensor in zip("qkv", tensors):
            assert tensor.shape[:3] == (3, tensor.shape[1], 16), (layer, name)
            assert tensor.transpose(1, 2).is_contiguous(), (config.attention_types[layer], name, tensor.stride())


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fully_padded_row_never_produces_nan(impl, dtype):
    model = SpanishMoEBertForMaskedLM(make_config()).to(dtype).eval()
    model.set_attn_implementation(impl)
    ids = batch()
    mask = torch.ones_like(ids)
    mask[2] = 0
    out = model(ids, attention_mask=mask)
    assert not torch.isnan(out.logits).any()


def test_bf16_autocast_training_step_on_cpu():
    model = SpanishMoEBertForMaskedLM(make_config())
    ids = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, labels=ids)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert model.model.layers[0].mlp.experts.gate_up_proj.grad.abs().sum() > 0


def assert_checkpointing_gives_the_same_gradients(model, ids):
    model.train()
    model(ids, labels=ids).loss.backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    # transformers renamed gradient_checkpointing_enable (deprecated) to activation_checkpointing_enable after 5.17
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()
    assert model.model.gradient_checkpointing
    model(ids, labels=ids).loss.backward()
    for name, grad in reference.items():
        assert torch.allclose(model.get_parameter(name).grad, grad, atol=1e-6), name


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    assert_checkpointing_gives_the_same_gradients(SpanishMoEBertForMaskedLM(make_config()), batch())


def test_loss_free_balancing_updates_once_per_step_and_routes_alike_under_gradient_checkpointing():
    # the recomputed forward of gradient checkpointing must route as the first forward did: the bias moves only
    # in update_router_biases (once per optimizer step), by the load of the step's forward
    torch.manual_seed(0)
    model = SpanishMoEBertForMaskedLM(make_config(router_bias_update_rate=0.01, router_aux_loss_coef=0.0))
    assert_checkpointing_gives_the_same_gradients(model, batch())
    routers = [layer.mlp.router for layer in model.model.layers if hasattr(layer.mlp, "router")]
    assert all(r.expert_bias.abs().sum() == 0 for r in routers)
    load = routers[0].observed_load.clone()
    model.update_router_biases()
    assert torch.equal(routers[0].expert_bias, 0.01 * torch.sign(load.mean() - load))  # one step's move, not two
    model.update_router_biases()  # no forward since: nothing observed, nothing moves
    assert torch.equal(routers[0].expert_bias, 0.01 * torch.sign(load.mean() - load))
    routers[0].observed_load.copy_(load)
    model.update_router_biases(rate_scale=0.5)  # a slower step, as when the bias follows the learning rate's decay
    assert torch.allclose(routers[0].expert_bias, 0.015 * torch.sign(load.mean() - load))


def test_loss_free_balancing_moves_by_the_load_of_every_micro_batch_of_the_step():
    # With gradient accumulation, one optimizer step sees several forwards: the bias follows their summed load,
    # as DeepSeek-V3's follows the whole batch's (before, only the last micro-batch counted).
    torch.manual_seed(0)
    model = SpanishMoEBertForMaskedLM(make_config(router_bias_update_rate=0.01)).train()
    router = next(layer.mlp.router for layer in model.model.layers if hasattr(layer.mlp, "router"))
    loads = []
    for seed in (1, 2, 3):
        model(batch(seed=seed))
        loads.append(router.observed_load.clone() - sum(loads, torch.zeros_like(router.observed_load)))
    total = sum(loads)
    assert all(load.sum() > 0 for load in loads) and torch.equal(router.observed_load, total)
    assert not torch.equal(torch.sign(total.mean() - total), torch.sign(loads[-1].mean() - loads[-1]))
    model.update_router_biases()
    assert torch.equal(router.expert_bias, 0.01 * torch.sign(total.mean() - total))
    assert router.observed_load.sum() == 0  # the next step starts counting afresh


def test_dyt_statistics_report_alpha_and_saturation():
    model = SpanishMoEBertModel(make_config())
    ids = batch()
    stats = model.dyt_statistics(ids, torch.ones_like(ids))
    # automatic init: 1 / (initializer_range * sqrt(hidden_size)) = 1 / (0.02 * 8)
    assert stats["layers.0.attn_norm.alpha"] == pytest.approx(6.25)
    assert stats["layers.0.mlp_norm.alpha"] == pytest.approx(6.25)
    explicit = SpanishMoEBertModel(make_config(dyt_alpha_init_attention=0.8, dyt_alpha_init_ffn=0.2)).dyt_statistics()
    assert explicit["layers.0.attn_norm.alpha"] == pytest.approx(0.8)
    assert explicit["layers.0.mlp_norm.alpha"] == pytest.approx(0.2)
    assert "final_norm.alpha" not in explicit  # the output norms are LayerNorm by default
    with torch.no_grad():
        norm = model.layers[0].mlp_norm
        norm.log_alpha_param.fill_(norm.parameter_for(1e4))  # every non-zero input saturates
    stats = model.dyt_statistics(ids, torch.ones_like(ids))
    assert stats["layers.0.mlp_norm.saturation"] > 0.95
    assert 0.0 <= stats["layers.1.attn_norm.saturation"] < 0.5


def test_an_adam_step_moves_dyt_alpha_by_a_share_of_itself():
    # log(alpha) = multiplier * parameter: one Adam step of lr 0.1 scales alpha by exp(-+0.1 * multiplier) at any
    # size, where a plain parameter would move by -+0.1 (from 3.0 that is 2.9, a factor 0.967).
    for alpha_init, multiplier in ((3.0, 1.0), (0.3, 1.0), (3.0, 3.0)):
        norm = DynamicTanh(8, alpha_init, multiplier)
        assert norm.alpha.item() == pytest.approx(alpha_init)
        optimizer = torch.optim.Adam(norm.parameters(), lr=0.1)
        norm(torch.randn(4, 8) * 3).pow(2).sum().backward()  # a smaller alpha lowers this loss
        optimizer.step()
        assert norm.alpha.item() == pytest.approx(alpha_init * math.exp(-0.1 * multiplier), rel=1e-4)


@pytest.mark.parametrize(
    "overrides, block, output",
    [
        ({}, DynamicTanh, torch.nn.LayerNorm),
        ({"output_norm_type": None}, DynamicTanh, DynamicTanh),
        ({"norm_type": "rmsnorm", "output_norm_type": None}, modeling.RMSNorm, modeling.RMSNorm),
        ({"norm_type": "layernorm", "output_norm_type": "dyt"}, torch.nn.LayerNorm, DynamicTanh),
    ],
)
def test_norm_types_of_the_blocks_and_the_outputs(overrides, block, output):
    model = SpanishMoEBertForMaskedLM(make_config(**overrides))
    layer = model.model.layers[0]
    assert type(layer.attn_norm) is block and type(layer.mlp_norm) is block
    assert type(model.model.final_norm) is output and type(model.head.norm) is output
    assert torch.isfinite(model(input_ids=batch()).logits).all()


@pytest.mark.parametrize("multiplier, expected", [(None, 64**0.5), (1.0, 1.0), (3.5, 3.5)])
def test_embeddings_are_scaled_by_the_multiplier(multiplier, expected):
    config = make_config(embedding_multiplier=multiplier)
    assert config.hidden_size == 64 and config.embedding_scale == pytest.approx(expected)
    embeddings = SpanishMoEBertModel(config).embeddings
    ids = batch()
    assert torch.allclose(embeddings(ids), embeddings.word_embeddings(ids) * expected)


def test_no_token_type_ids_means_type_0_which_mlm_trains_and_an_unseen_type_adds_nothing():
    """`model(input_ids)` and `model(**tokenizer(text))` (zeros for a single text) must be one model."""
    torch.manual_seed(0)
    model = SpanishMoEBertForMaskedLM(make_config())
    types = model.model.embeddings.token_type_embeddings.weight
    assert types.shape[0] == 2 and not types.any()  # an untrained type adds nothing
    ids = batch()
    model(ids, labels=ids).loss.backward()  # MLM pre-training passes no token types (run_mlm.py's batches)
    assert types.grad[0].abs().sum() > 0 and not types.grad[1].any()
    with torch.no_grad():
        types.normal_()  # as after a sentence-pair fine-tune
    model.eval()
    with torch.no_grad():
        without = model(ids).logits
        assert torch.equal(without, model(ids, token_type_ids=torch.zeros_like(ids)).logits)
        assert not torch.allclose(without, model(ids, token_type_ids=torch.ones_like(ids)).logits)


def test_output_bias_starts_at_the_log_unigram_prior():
    model = SpanishMoEBertForMaskedLM(make_config())
    counts = torch.zeros(model.config.vocab_size, dtype=torch.int64)
    counts[10], counts[11] = 98, 48  # add-one smoothed: 99 and 49 of 99 + 49 + (V - 2)
    model.init_decoder_bias_from_counts(counts)
    total = 99 + 49 + model.config.vocab_size - 2
    probs = model.decoder.bias.softmax(-1)
    assert probs[10].item() == pytest.approx(99 / total) and probs[11].item() == pytest.approx(49 / total)
    assert probs[12].item() == pytest.approx(1 / total)
    with torch.no_grad():  # an untrained encoder's logits are ~0 next to the prior: it predicts the frequent tokens
        logits = model(batch(vocab_size=model.config.vocab_size)).logits
    assert (logits.argmax(-1) == 10).float().mean() > 0.9
    with pytest.raises(ValueError, match="token_counts has shape"):
        model.init_decoder_bias_from_counts(counts[:-1])


def test_a_few_optimizer_steps_lower_the_mlm_loss():
    torch.manual_seed(0)
    model = SpanishMoEBertForMaskedLM(make_config())
    ids = batch(b=8, t=32)
    labels = torch.full_like(ids, -100)
    masked = torch.rand(ids.shape, generator=torch.Generator().manual_seed(0)) < 0.15
    labels[masked] = ids[masked]
    inputs = ids.masked_fill(masked, 4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = model(inputs, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


# ---------------------------------------------------------------- saving and loading


def test_save_and_load_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    model = SpanishMoEBertForMaskedLM(make_config()).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = SpanishMoEBertForMaskedLM.from_pretrained(tmp_path).eval()
    ids = batch()
    assert torch.equal(model(ids).logits, loaded(ids).logits)
    names = set(loaded.state_dict())
    assert "model.layers.0.mlp.experts.gate_up_proj" in names  # experts stored stacked


def test_a_checkpoint_from_before_a_head_existed_maps_every_head_once_saved_again(tmp_path):
    SpanishMoEBertForMaskedLM(make_config()).save_pretrained(tmp_path / "old")
    config_file = tmp_path / "old" / "config.json"
    saved = json.loads(config_file.read_text())
    old_map = {k: v for k, v in saved["auto_map"].items() if "QuestionAnswering" not in k and "MultipleChoice" not in k}
    config_file.write_text(json.dumps(saved | {"auto_map": old_map}))  # what an older version wrote
    SpanishMoEBertForMaskedLM.from_pretrained(tmp_path / "old").save_pretrained(tmp_path / "new")
    auto_map = json.loads((tmp_path / "new" / "config.json").read_text())["auto_map"]
    assert auto_map == AUTO_MAP


FRESH_PROCESS_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from transformers import (AutoConfig, AutoModel, AutoModelForMaskedLM, AutoModelForMultipleChoice,
                              AutoModelForQuestionAnswering, AutoModelForSequenceClassification,
                              AutoModelForTokenClassification)
    # A Hub user has the checkpoint folder, not this project: drop the editable install's import hook.
    sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
    try:
        import modeling_spanish_moe_bert  # noqa: F401
        raise SystemExit("the project must not be importable here")
    except ImportError:
        pass
    path = sys.argv[1]
    config = AutoConfig.from_pretrained(path, trust_remote_code=True)
    ids = torch.tensor([[2, 10, 11, 12, 3]])
    base = AutoModel.from_pretrained(path, trust_remote_code=True).eval()
    mlm = AutoModelForMaskedLM.from_pretrained(path, trust_remote_code=True).eval()
    seq = AutoModelForSequenceClassification.from_pretrained(path, num_labels=3, trust_remote_code=True)
    tok = AutoModelForTokenClassification.from_pretrained(path, num_labels=5, trust_remote_code=True)
    expected = torch.load(path + "/expected.pt")
    assert type(config).__name__ == "SpanishMoEBertConfig"
    assert type(base).__name__ == "SpanishMoEBertModel"
    assert torch.allclose(mlm(ids).logits, expected["logits"], atol=1e-6)
    assert torch.allclose(base(ids).pooler_output, expected["pooler"], atol=1e-6)
    assert seq(ids).logits.shape == (1, 3) and tok(ids).logits.shape == (1, 5, 5)
    qa = AutoModelForQuestionAnswering.from_pretrained(path, trust_remote_code=True)
    choice = AutoModelForMultipleChoice.from_pretrained(path, trust_remote_code=True)
    assert qa(ids).start_logits.shape == (1, 5) and choice(ids.expand(2, 5).unsqueeze(0)).logits.shape == (1, 2)
    print("OK")
    """
)


def test_remote_code_load_in_a_fresh_process_without_the_project(tmp_path):
    torch.manual_seed(0)
    model = SpanishMoEBertForMaskedLM(make_config()).eval()
    ckpt = tmp_path / "ckpt"
    model.save_pretrained(ckpt)
    config_json = (ckpt / "config.json").read_text()
    assert '"auto_map"' in config_json and "AutoModelForMaskedLM" in config_json
    assert (ckpt / "modeling_spanish_moe_bert.py").exists() and (ckpt / "configuration_spanish_moe_bert.py").exists()
    ids = torch.tensor([[2, 10, 11, 12, 3]])
    with torch.no_grad():
        torch.save({"logits": model(ids).logits, "pooler": model.model(ids).pooler_output}, ckpt / "expected.pt")
    script = tmp_path / "load.py"
    script.write_text(FRESH_PROCESS_SCRIPT)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    result = subprocess.run(
        [sys.executable, "-P", str(script), str(ckpt)], cwd=elsewhere, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("OK")

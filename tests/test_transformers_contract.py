"""What every transformers encoder does, checked on ours with tiny configs: outputs (attentions, hidden states,
tuples), embeddings (resize, get/set, tying), loading (safetensors, dtype, device_map), initialisation, batching,
sparse MLM prediction and torch.compile."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tiny_config import make_config
from transformers import Trainer, TrainingArguments

from modeling_spanish_moe_bert import SpanishMoEBertForMaskedLM, SpanishMoEBertModel


def padded_batch(vocab_size: int = 2000, lengths=(16, 11, 5), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab_size, (len(lengths), max(lengths)), generator=g)
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    return ids.masked_fill(mask == 0, 0), mask


def masked_labels(ids: torch.Tensor, mask: torch.Tensor, seed: int = 0) -> torch.Tensor:
    picked = (torch.rand(ids.shape, generator=torch.Generator().manual_seed(seed)) < 0.3) & mask.bool()
    picked[:, 1] = mask[:, 1].bool()  # at least one label per row
    return ids.masked_fill(~picked, -100)


# ---------------------------------------------------------------- outputs


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("attention", ["mha", "gqa", "mla"])
def test_output_attentions_returns_per_layer_maps_for_every_attention_type(attention, impl):
    config = make_config(attention_pattern=[attention])
    model = SpanishMoEBertModel(config).eval()
    model.set_attn_implementation(impl)
    ids, mask = padded_batch()
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask)
        out = model(input_ids=ids, attention_mask=mask, output_attentions=True)
    assert len(out.attentions) == config.num_hidden_layers
    for att in out.attentions:
        assert att.shape == (3, config.num_attention_heads, 16, 16)
        assert torch.allclose(att.sum(-1), torch.ones(3, config.num_attention_heads, 16), atol=1e-5)
        assert att[2, :, :5, 5:].abs().max() < 1e-6  # no weight on padding keys
    real = mask.bool()
    assert torch.allclose(out.last_hidden_state[real], plain.last_hidden_state[real], atol=1e-5)
    assert plain.attentions is None


def test_explicit_output_hidden_states_false_wins_over_the_config():
    config = make_config(output_hidden_states=True)
    model = SpanishMoEBertModel(config).eval()
    ids, mask = padded_batch()
    with torch.no_grad():
        from_config = model(input_ids=ids, attention_mask=mask)
        explicit = model(input_ids=ids, attention_mask=mask, output_hidden_states=False)
    assert len(from_config.hidden_states) == config.num_hidden_layers + 1
    assert torch.equal(from_config.hidden_states[-1], from_config.last_hidden_state)
    assert explicit.hidden_states is None


def test_return_dict_false_gives_a_tuple_in_output_order():
    model = SpanishMoEBertForMaskedLM(make_config()).eval()
    ids, mask = padded_batch()
    labels = masked_labels(ids, mask)
    with torch.no_grad():
        as_dict = model(input_ids=ids, attention_mask=mask, labels=labels)
        as_tuple = model(input_ids=ids, attention_mask=mask, labels=labels, return_dict=False)
        base = model.model(input_ids=ids, attention_mask=mask, return_dict=False)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], as_dict.loss)
    assert torch.equal(as_tuple[1], as_dict.logits)
    assert isinstance(base, tuple) and base[0].shape == (3, 16, model.config.hidden_size)


def test_sparse_prediction_scores_only_the_labelled_positions_in_training_and_matches_the_full_head():
    torch.manual_seed(0)
    model = SpanishMoEBertForMaskedLM(make_config(hidden_dropout=0.0, attention_dropout=0.0, embedding_dropout=0.0))
    ids, mask = padded_batch()
    labels = masked_labels(ids, mask)
    labelled = labels != -100
    with torch.no_grad():
        sparse = model.train()(input_ids=ids, attention_mask=mask, labels=labels)
        evaluated = model.eval()(input_ids=ids, attention_mask=mask, labels=labels)
        full = model(input_ids=ids, attention_mask=mask).logits  # no labels: every position
    assert sparse.logits.shape == (int(labelled.sum()), model.config.vocab_size)
    assert evaluated.logits.shape == full.shape == (3, 16, model.config.vocab_size)
    assert torch.allclose(sparse.logits, full[labelled], atol=1e-5)
    assert torch.allclose(sparse.mlm_loss, evaluated.mlm_loss, atol=1e-6)
    assert torch.allclose(evaluated.mlm_loss, F.cross_entropy(full[labelled], labels[labelled]), atol=1e-6)


def test_a_batch_without_masked_tokens_has_an_mlm_loss_of_0_not_nan():
    # Short lines masked at 15% often have none (a 2-word line: 72%); a NaN stopped run_mlm as a diverged run.
    torch.manual_seed(0)
    model = SpanishMoEBertForMaskedLM(make_config())
    ids, mask = padded_batch()
    for mode in (model.train, model.eval):
        output = mode()(input_ids=ids, attention_mask=mask, labels=torch.full_like(ids, -100))
        assert output.mlm_loss.item() == 0.0 and torch.isfinite(output.loss)
        if model.training:
            output.loss.backward()
            assert model.decoder.bias.grad is None or not model.decoder.bias.grad.any()  # nothing learnt from it


def test_trainer_evaluate_with_the_metrics_of_transformers_run_mlm_example(tmp_path):
    # transformers/examples/pytorch/language-modeling/run_mlm.py's two metric functions, as written there
    def preprocess_logits_for_metrics(logits, labels):
        if isinstance(logits, tuple):
            logits = logits[0]
        return logits.argmax(dim=-1)

    def compute_metrics(eval_preds):
        preds, labels = eval_preds
        labels = labels.reshape(-1)
        preds = preds.reshape(-1)
        mask = labels != -100
        return {"accuracy": float((preds[mask] == labels[mask]).mean())}

    ids, mask = padded_batch(lengths=(16,) * 8)
    labels = masked_labels(ids, mask)
    rows = [{"input_ids": i, "attention_mask": m, "labels": y} for i, m, y in zip(ids, mask, labels)]
    trainer = Trainer(
        model=SpanishMoEBertForMaskedLM(make_config()),
        args=TrainingArguments(tmp_path, per_device_eval_batch_size=3, report_to="none", use_cpu=True),
        eval_dataset=rows,
        compute_metrics=compute_metrics,
        preprocess_logits_for_metrics=preprocess_logits_for_metrics,
    )
    metrics = trainer.evaluate()
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0 and math.isfinite(metrics["eval_loss"])


def test_a_row_alone_equals_the_same_row_in_a_padded_batch():
    torch.manual_seed(0)
    model = SpanishMoEBertForMaskedLM(make_config()).eval()
    ids, mask = padded_batch()
    with torch.no_grad():
        batched = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        for row, length in enumerate(mask.sum(-1).tolist()):
            alone = model(input_ids=ids[row : row + 1, :length], output_hidden_states=True)
            assert torch.allclose(batched.logits[row, :length], alone.logits[0], atol=1e-5)
            assert torch.allclose(batched.hidden_states[-1][row, :length], alone.hidden_states[-1][0], atol=1e-5)


# ---------------------------------------------------------------- embeddings


def test_resize_token_embeddings_resizes_the_tied_decoder_and_its_bias():
    model = SpanishMoEBertForMaskedLM(make_config()).eval()
    old_size = model.config.vocab_size
    old_embeddings = model.get_input_embeddings().weight.detach().clone()
    old_bias = model.decoder.bias.detach().clone()
    model.resize_token_embeddings(old_size + 7)
    ids, mask = padded_batch(vocab_size=old_size + 7)
    logits = model(input_ids=ids, attention_mask=mask).logits
    assert logits.shape == (3, 16, old_size + 7) and torch.isfinite(logits).all()
    assert model.config.vocab_size == old_size + 7
    assert model.decoder.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert model.decoder.bias.shape == (old_size + 7,)
    assert torch.equal(model.get_input_embeddings().weight[:old_size], old_embeddings)
    assert torch.equal(model.decoder.bias[:old_size], old_bias)


def test_get_and_set_input_embeddings():
    model = SpanishMoEBertForMaskedLM(make_config())
    assert model.get_input_embeddings() is model.model.embeddings.word_embeddings
    replacement = torch.nn.Embedding(model.config.vocab_size, model.config.hidden_size)
    model.set_input_embeddings(replacement)
    assert model.model.embeddings.word_embeddings is replacement
    assert model.get_output_embeddings() is model.decoder


# ---------------------------------------------------------------- saving, loading, initialisation


@pytest.fixture(scope="module")
def saved_mlm(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("mlm")
    SpanishMoEBertForMaskedLM(make_config()).eval().save_pretrained(folder)
    return folder


def test_saved_with_safetensors_only_and_tied_after_loading(saved_mlm):
    assert (saved_mlm / "model.safetensors").is_file()
    assert not list(saved_mlm.glob("*.bin"))
    loaded = SpanishMoEBertForMaskedLM.from_pretrained(saved_mlm)
    assert loaded.decoder.weight.data_ptr() == loaded.get_input_embeddings().weight.data_ptr()


def test_loading_in_bfloat16(saved_mlm):
    reference = SpanishMoEBertForMaskedLM.from_pretrained(saved_mlm).eval()
    model = SpanishMoEBertForMaskedLM.from_pretrained(saved_mlm, dtype=torch.bfloat16).eval()
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    ids, mask = padded_batch()
    with torch.no_grad():
        low = model(input_ids=ids, attention_mask=mask).logits
        high = reference(input_ids=ids, attention_mask=mask).logits
    assert low.dtype == torch.bfloat16 and torch.isfinite(low).all()
    real = mask.bool()
    assert torch.allclose(low[real].float(), high[real], atol=0.1, rtol=0.05)


def test_device_map_auto_on_cpu(saved_mlm):
    reference = SpanishMoEBertForMaskedLM.from_pretrained(saved_mlm).eval()
    model = SpanishMoEBertForMaskedLM.from_pretrained(saved_mlm, device_map="auto").eval()
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    ids, mask = padded_batch()
    with torch.no_grad():
        loaded, expected = model(input_ids=ids, attention_mask=mask), reference(input_ids=ids, attention_mask=mask)
    assert torch.equal(loaded.logits, expected.logits)


def test_init_weights_is_deterministic():
    config = make_config()
    torch.manual_seed(0)
    first = SpanishMoEBertForMaskedLM(config).state_dict()
    torch.manual_seed(0)
    second = SpanishMoEBertForMaskedLM(config).state_dict()
    torch.manual_seed(1)
    other_seed = SpanishMoEBertForMaskedLM(config).state_dict()
    for name, value in first.items():
        assert torch.equal(value, second[name]), name
    experts = "model.layers.0.mlp.experts.gate_up_proj"
    assert not torch.equal(first[experts], other_seed[experts])


# ---------------------------------------------------------------- torch.compile


@pytest.mark.slow
def test_compiled_model_matches_eager_for_inference_and_a_training_step():
    """Inference compiles to one graph; a training step with labels matches eager in loss and every gradient."""
    torch.manual_seed(0)
    model = SpanishMoEBertForMaskedLM(make_config())
    ids, mask = padded_batch(vocab_size=model.config.vocab_size)
    labels = masked_labels(ids, mask)
    compiled = torch.compile(model)

    model.eval()
    with torch.no_grad():
        eager_logits = model(input_ids=ids, attention_mask=mask).logits
        compiled_logits = compiled(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(compiled_logits, eager_logits, atol=1e-5)

    model.train()
    eager = model(input_ids=ids, attention_mask=mask, labels=labels)
    eager.loss.backward()
    eager_grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    out = compiled(input_ids=ids, attention_mask=mask, labels=labels)
    out.loss.backward()
    assert torch.allclose(out.loss, eager.loss, atol=1e-6)
    assert eager_grads.keys() == {name for name, p in model.named_parameters() if p.grad is not None}
    for name, grad in eager_grads.items():
        assert torch.allclose(model.get_parameter(name).grad, grad, atol=1e-5), name


@pytest.mark.slow
def test_graph_breaks_are_counted_where_the_readme_says():
    """Inference: none. Training with labels: the two boolean selections of sparse prediction, unless dynamo may
    capture data-dependent shapes (run_mlm.py --torch_compile turns that on)."""
    torch.manual_seed(0)
    model = SpanishMoEBertForMaskedLM(make_config())
    ids, mask = padded_batch(vocab_size=model.config.vocab_size)
    labels = masked_labels(ids, mask)
    inference = torch._dynamo.explain(model.eval())(input_ids=ids, attention_mask=mask)
    assert (inference.graph_count, inference.graph_break_count) == (1, 0)
    training = torch._dynamo.explain(model.train())(input_ids=ids, attention_mask=mask, labels=labels)
    assert training.graph_break_count == 2
    assert all("nonzero" in str(reason.reason) for reason in training.break_reasons)
    torch._dynamo.reset()
    with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):  # monkeypatch's undo breaks torch 2.11's
        training = torch._dynamo.explain(model)(input_ids=ids, attention_mask=mask, labels=labels)
    assert (training.graph_count, training.graph_break_count) == (1, 0)

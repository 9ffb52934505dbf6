"""The tests' model configuration: configs/tiny.json with some fields changed."""

from pathlib import Path

from configuration_spanish_moe_bert import SpanishMoEBertConfig

TINY_JSON = Path(__file__).resolve().parents[1] / "configs" / "tiny.json"


def make_config(**changes) -> SpanishMoEBertConfig:
    """tiny.json with `changes`; the per-layer attention and MLP types are re-derived from the pattern unless given."""
    base = SpanishMoEBertConfig.from_json_file(TINY_JSON).to_diff_dict()
    for derived in ("attention_types", "mlp_layer_types"):
        base.pop(derived, None)
    return SpanishMoEBertConfig(**(base | changes))

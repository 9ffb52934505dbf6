"""Training, data and export utilities of Spanish MoE-BERT.

The model itself lives in the top-level files ``configuration_spanish_moe_bert.py``,
``modeling_spanish_moe_bert.py`` and ``tokenization_spanish_moe_bert.py``, which are copied
into every exported checkpoint and must stay self-contained.
"""

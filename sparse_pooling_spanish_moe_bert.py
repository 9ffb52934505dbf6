"""SPLADE pooling over pointwise mutual information: the sparse retriever's last Sentence Transformers module.

SPLADE (Formal et al., 2021-2022) turns a masked-language model into a sparse lexical encoder: every token's MLM
logits pass through log(1 + relu(·)) and are max-pooled over the text, one weight per vocabulary word. Our MLM
head's logits carry each word's frequency (its output bias starts at the log unigram prior), so raw logits let
frequent words through and hold back the rare ones that tell passages apart. This module pools, instead of the
logit, how much more likely the word is given the token than in general, less a threshold:

    score(w, token) = log p_MLM(w | token) - log p(w) - threshold

the pointwise mutual information of w and the token: an IDF-like weight that the MLM head already knows.
``log_prior`` is log p(w), taken at the start of training from the head's output bias (``from_mlm_head``), where
special tokens ([CLS], [SEP], ...) get probability 1: their PMI is never positive, so they never get a weight.

This file is Hub remote code: exported sparse models list ``sparse_pooling_spanish_moe_bert.PMISpladePooling`` in
their ``modules.json``, and ``SparseEncoder(repo, trust_remote_code=True)`` loads it from the repository.
"""

from __future__ import annotations

import torch

try:  # sentence-transformers >= 6
    from sentence_transformers.sparse_encoder.modules import SpladePooling
except ImportError:  # 5.x
    from sentence_transformers.sparse_encoder.models import SpladePooling


class PMISpladePooling(SpladePooling):
    """SpladePooling of ``log_softmax(logits) - log_prior - threshold`` instead of the logits.

    Args:
        embedding_dimension: the vocabulary size (one output weight per word).
        threshold: the pointwise mutual information (in nats, >= 0) a word must exceed to get a weight.
        log_prior: ``(embedding_dimension,)`` log unigram probabilities; loaded from this module's weights when None.
        pooling_strategy, activation_function, chunk_size: as for SpladePooling.
    """

    config_keys = [*SpladePooling.config_keys, "threshold"]

    def __init__(
        self,
        embedding_dimension: int,
        threshold: float = 6.0,
        log_prior: torch.Tensor | None = None,
        pooling_strategy: str = "max",
        activation_function: str = "relu",
        chunk_size: int | None = None,
    ):
        super().__init__(pooling_strategy, activation_function, embedding_dimension, chunk_size)
        if threshold < 0:
            raise ValueError(f"threshold must be >= 0 (nats of pointwise mutual information), got {threshold}")
        if log_prior is not None and log_prior.shape != (embedding_dimension,):
            raise ValueError(f"log_prior must have shape ({embedding_dimension},), got {tuple(log_prior.shape)}")
        self.threshold = float(threshold)
        log_prior = log_prior.float() if log_prior is not None else torch.zeros(embedding_dimension)
        self.register_buffer("log_prior", log_prior)

    @classmethod
    def from_mlm_head(
        cls, mlm_model, threshold: float = 6.0, special_token_ids: list[int] = (), **kwargs
    ) -> PMISpladePooling:
        """The pooling for a masked-LM model, with log p(w) = log_softmax of its output bias (0 for special tokens)."""
        bias = mlm_model.get_output_embeddings().bias.detach()
        log_prior = torch.log_softmax(bias.float(), dim=-1)
        log_prior[list(special_token_ids)] = 0.0
        return cls(bias.numel(), threshold, log_prior, **kwargs)

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = features["token_embeddings"].float()  # (batch, tokens, vocab) MLM logits
        # log p(w | token) = logit - logsumexp. The normaliser is held constant in the backward pass, so that each
        # word's weight trains on its own logit, as in SPLADE, instead of every word competing in one softmax.
        log_norm = torch.logsumexp(logits, dim=-1, keepdim=True).detach()
        features["token_embeddings"] = logits - log_norm - self.log_prior - self.threshold
        return super().forward(features)

    def save(self, output_path: str, *args, safe_serialization: bool = True, **kwargs) -> None:
        self.save_config(output_path)
        self.save_torch_weights(output_path, safe_serialization=safe_serialization)

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", **kwargs) -> PMISpladePooling:
        hub = {k: kwargs[k] for k in ("token", "cache_folder", "revision", "local_files_only") if k in kwargs}
        module = cls(**cls.load_config(model_name_or_path, subfolder=subfolder, **hub))
        return cls.load_torch_weights(model_name_or_path, subfolder=subfolder, model=module, **hub)

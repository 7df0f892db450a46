"""What both ``hf`` decoding paths feed a transformers model: left-padded token rows, soft
prompts placed after the padding, the cache object and the names its forward takes.

One copy, so transformers' ``generate`` path and the continuous decoder cannot drift apart in
how they lay out a row (the tests compare their tokens row by row).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch


def left_padded(
    rows: list[list[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask, each row right-aligned after ``pad_id`` padding."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for k, row in enumerate(rows):
        ids[k, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[k, width - len(row) :] = 1
    return ids.to(device), mask.to(device)


def with_soft_prefix(
    embeds: torch.Tensor, mask: torch.Tensor, lengths: list[int], prefix: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings [pad ... | soft tokens | prompt tokens] per row (``lengths``: each row's
    prompt tokens): padding goes BEFORE the soft tokens, so every real position sits exactly
    where it would without padding."""
    rows, width = mask.shape
    n_soft = prefix.shape[0]
    full = embeds.new_zeros(rows, width + n_soft, embeds.shape[-1])
    full_mask = mask.new_zeros(rows, width + n_soft)
    for k, length in enumerate(lengths):
        start = width - length
        full[k, start : start + n_soft] = prefix
        full[k, start + n_soft :] = embeds[k, start:]
        full_mask[k, start:] = 1
    return full, full_mask


def cache_argument(model: Any) -> str:
    """The forward's name for the KV cache: transformers 5 renamed ``past_key_values`` to
    ``cache`` (the old name warns)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def new_cache(model: Any) -> Any:
    """An empty ``DynamicCache`` for ``model``."""
    from transformers import DynamicCache

    try:  # transformers 5 builds per-layer caches (sliding windows) from the config
        return DynamicCache(config=model.config)
    except TypeError:  # transformers 4: one kind of layer cache
        return DynamicCache()


def takes_logits_to_keep(model: Any) -> bool:
    """Whether the forward can skip the vocabulary projection of all but the last positions;
    a PEFT wrapper forwards ``**kwargs``, so the model underneath is asked."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(inner.forward).parameters


def full_attention_only(model: Any) -> bool:
    """Whether ``model`` is decoder-only with every layer attending fully: only then is its
    KV cache a plain prefix that can be padded, joined, repeated over rows and continued (a
    sliding-window or recurrent layer's cache is not)."""
    config = model.config.get_text_config()
    if getattr(model.config, "is_encoder_decoder", False):
        return False
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return False
    layer_types = getattr(config, "layer_types", None)
    return not (layer_types and any(t != "full_attention" for t in layer_types))

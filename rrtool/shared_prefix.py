"""A batch's shared prompt prefix, computed once instead of once per row: Release's LoRA
training micro-batches and the audit's membership scoring (``evaluators.membership``).

Release's examples start alike: every NER query opens with the same system message and the
first half of the one-shot exchange, and every chat prompt with the chat template's head. On
the demo's Reveal data a micro-batch of 4 rows shares ~30% of its tokens. Here the forward runs
the shared head on one row, repeats its KV cache over the batch (``repeat_interleave``, part of
the autograd graph) and runs the rows' remainders on top of it. Backpropagation through the
repeat sums the rows' gradients into the head's one forward, so the loss and the update equal
the row-by-row forward's up to float summation order; the only draw that differs is LoRA
dropout on the head's tokens, which the rows now share (one mask instead of one per row).

Used only where it is exact and safe: models whose layers all attend fully (a sliding-window
or recurrent cache is not a plain prefix), a forward that keeps selected logits, one process
(DDP expects one forward per backward), and a prefix long enough to pay for the second call.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rrtool.generation.hf_inputs import cache_argument, full_attention_only, new_cache

MIN_SHARED = 16  # tokens: a shorter head saves less than a second forward call costs


def prefix_length(input_ids: Tensor, attention_mask: Tensor, keep: Tensor) -> int:
    """Tokens that every row of a right-padded batch starts with, stopped before the first
    position any row keeps logits for (so every kept logit is computed in the rows' own pass);
    0 when below ``MIN_SHARED`` or the batch has one row."""
    if input_ids.shape[0] < 2:
        return 0
    same = (input_ids == input_ids[:1]).all(dim=0) & attention_mask.bool().all(dim=0)
    kept = keep.any(dim=0)
    stop = (~same | kept).nonzero()
    length = int(stop[0]) if len(stop) else input_ids.shape[1]
    return length if length >= MIN_SHARED else 0


def takes_kept_mask(model: Any) -> bool:
    """Whether the model's forward takes a boolean ``logits_to_keep`` mask (transformers 5:
    ``slice_logits_to_keep``), so the LM head runs on the kept positions only."""
    import inspect

    import transformers.modeling_utils as modeling_utils

    if not hasattr(modeling_utils, "slice_logits_to_keep"):
        return False
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(inner.forward).parameters


def supported(model: Any) -> bool:
    """Whether a prefix cache of ``model`` can be repeated over rows and continued."""
    return full_attention_only(model)


def kept_logits(
    forward: Any, model: Any, batch: dict[str, Tensor], keep: Tensor, prefix: int
) -> Tensor:
    """Logits of the positions in ``keep`` (row-major), with the first ``prefix`` tokens
    (shared by every row) run once. Same values as one forward over the whole batch."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    cache = new_cache(model)
    name = cache_argument(model)
    positions = torch.arange(prefix, device=ids.device).unsqueeze(0)
    forward(
        input_ids=ids[:1, :prefix],
        attention_mask=mask[:1, :prefix],
        position_ids=positions,
        logits_to_keep=1,  # the head's logits are never used: project one position only
        **{name: cache},
    )
    cache.batch_repeat_interleave(ids.shape[0])
    rest = (
        torch.arange(prefix, ids.shape[1], device=ids.device).unsqueeze(0).expand(ids.shape[0], -1)
    )
    out = forward(
        input_ids=ids[:, prefix:],
        attention_mask=mask,  # the whole row: head and remainder
        position_ids=rest,
        logits_to_keep=keep[:, prefix:],
        **{name: cache},
    ).logits
    return out.reshape(-1, model.config.get_text_config().vocab_size)

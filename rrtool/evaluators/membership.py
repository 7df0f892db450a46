"""Min-K%++ membership scores (Zhang et al., 2024) and the AUC between two sets.

For each completion token x_t, with p = p(. | x_<t) the model's next-token distribution:
``z_t = (log p(x_t) - mu_t) / sigma_t``, where ``mu_t = E_{z~p}[log p(z)]`` and
``sigma_t^2 = E_{z~p}[(log p(z))^2] - mu_t^2``. A sequence's score is the mean of its lowest
``k`` share of z_t (at least one token): high = the model treats it like text it was trained on.
Only completion tokens are scored (the prompt is context), exactly as LoRA training sees them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from rrtool import shared_prefix
from rrtool.examples import IGNORE_INDEX, Example, collate, encode_example

DEFAULT_K = 0.2
BATCH = 8  # sequences per forward


@torch.inference_mode()
def min_k_plus_plus(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    *,
    chat: bool,
    k: float = DEFAULT_K,
    max_length: int = 512,
    batch_size: int = BATCH,
) -> list[float]:
    """One Min-K%++ score per example (NaN for an example without completion tokens).

    Examples of similar length run together (right-padded, so positions are unchanged); the
    prompt prefix they share (the NER queries' system message and one-shot exchange) runs
    once per batch, and the vocabulary projection runs on the completion positions only
    (``rrtool.shared_prefix``), where the model allows: the prompt's logits are never read.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    encoded = [encode_example(tokenizer, e, max_length, chat) for e in examples]
    scores = [float("nan")] * len(examples)
    selective = shared_prefix.takes_kept_mask(model)
    share = selective and shared_prefix.supported(model)
    order = sorted(
        (i for i, (_, labels) in enumerate(encoded) if any(t != IGNORE_INDEX for t in labels[1:])),
        key=lambda i: len(encoded[i][0]),
    )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            padded = collate([encoded[i] for i in chunk], pad)
            ids, mask = padded["input_ids"], padded["attention_mask"]
            # Position t predicts token t + 1: the target of t is the label of t + 1.
            target = torch.full_like(padded["labels"], IGNORE_INDEX)
            target[:, :-1] = padded["labels"][:, 1:]
            keep = (target != IGNORE_INDEX).to(device)
            batch = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
            prefix = shared_prefix.prefix_length(ids, mask, keep.cpu()) if share else 0
            if prefix:
                logits = shared_prefix.kept_logits(model, model, batch, keep, prefix)
            elif selective:
                logits = model(**batch, logits_to_keep=keep).logits
                logits = logits.reshape(-1, logits.shape[-1])
            else:
                logits = model(**batch).logits[keep]
            z = _z_scores(logits, target.to(device)[keep])
            for row, piece in zip(chunk, z.split(keep.sum(dim=1).tolist()), strict=True):
                low = piece.sort().values[: max(1, math.ceil(k * len(piece)))]
                scores[row] = float(low.mean())
    finally:
        model.train(was_training)
    return scores


def _z_scores(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Per position: (log p(token) - mu) / sigma of the next-token distribution (module doc)."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    p = logp.exp()
    mu = (p * logp).sum(-1)
    sigma = ((p * logp.square()).sum(-1) - mu.square()).clamp_min(1e-12).sqrt()
    token = logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return (token - mu) / sigma


def auc(positives: Sequence[float], negatives: Sequence[float]) -> float:
    """P(a positive scores above a negative), ties counting half (Mann-Whitney)."""
    pos = [x for x in positives if x == x]
    neg = [x for x in negatives if x == x]
    if not pos or not neg:
        raise ValueError("auc: both sets need at least one finite score")
    wins = sum((a > b) + 0.5 * (a == b) for a in pos for b in neg)
    return wins / (len(pos) * len(neg))

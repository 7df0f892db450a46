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

from rrtool.examples import IGNORE_INDEX, Example, encode_example

DEFAULT_K = 0.2


@torch.inference_mode()
def min_k_plus_plus(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    *,
    chat: bool,
    k: float = DEFAULT_K,
    max_length: int = 512,
) -> list[float]:
    """One Min-K%++ score per example (NaN for an example without completion tokens)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    scores = []
    try:
        for example in examples:
            ids, labels = encode_example(tokenizer, example, max_length, chat)
            target = torch.tensor(labels[1:])
            keep = target != IGNORE_INDEX
            if not bool(keep.any()):
                scores.append(float("nan"))
                continue
            logits = model(input_ids=torch.tensor([ids], device=device)).logits[0, :-1]
            logp = torch.log_softmax(logits[keep.to(device)].double(), dim=-1)
            p = logp.exp()
            mu = (p * logp).sum(-1)
            sigma = ((p * logp.square()).sum(-1) - mu.square()).clamp_min(1e-12).sqrt()
            token = logp.gather(-1, target[keep].to(device).unsqueeze(-1)).squeeze(-1)
            z = ((token - mu) / sigma).sort().values
            scores.append(float(z[: max(1, math.ceil(k * len(z)))].mean()))
    finally:
        model.train(was_training)
    return scores


def auc(positives: Sequence[float], negatives: Sequence[float]) -> float:
    """P(a positive scores above a negative), ties counting half (Mann-Whitney)."""
    pos = [x for x in positives if x == x]
    neg = [x for x in negatives if x == x]
    if not pos or not neg:
        raise ValueError("auc: both sets need at least one finite score")
    wins = sum((a > b) + 0.5 * (a == b) for a in pos for b in neg)
    return wins / (len(pos) * len(neg))

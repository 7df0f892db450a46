"""Perplexity on raw text (WikiText-2 style), over disjoint windows.

Definition (recorded with every number): the text is tokenised once, without special tokens,
and cut into disjoint windows of ``window`` tokens; each window is scored after one start token
(the tokenizer's BOS, else its EOS), so every text token is predicted exactly once and windows
never see each other. With NLL the summed negative log-likelihood (nats) of all text tokens:

- ``token_perplexity = exp(NLL / tokens)``
- ``word_perplexity = exp(NLL / words)``, words = whitespace-separated pieces of the scored text
- ``byte_perplexity = exp(NLL / bytes)``, bytes = UTF-8 bytes of the scored text
- ``bits_per_byte = NLL / (bytes * ln 2)``

Word and byte perplexity do not depend on the tokenizer, so they compare models with
different vocabularies (as in lm-evaluation-harness's ``wikitext`` task). Disjoint windows
give a higher (more pessimistic) perplexity than a sliding window with overlap; the window
length is part of the definition.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import torch

from rrtool.evaluators.base import Evaluation

DEFAULT_WINDOW = 512


def _start_token(tokenizer: Any) -> int:
    token = tokenizer.bos_token_id
    if token is None:
        token = tokenizer.eos_token_id
    if token is None:
        raise ValueError("perplexity: the tokenizer has neither a BOS nor an EOS token")
    return int(token)


@torch.inference_mode()
def window_nll(model: Any, windows: list[list[int]], start: int) -> torch.Tensor:
    """Summed NLL (nats, fp64) of each window's tokens, each scored after ``start``."""
    device = next(model.parameters()).device
    width = max(len(w) for w in windows)
    ids = torch.full((len(windows), width + 1), start, dtype=torch.long)
    mask = torch.zeros((len(windows), width + 1), dtype=torch.long)
    for row, window in enumerate(windows):  # right padding: positions stay 0..n
        ids[row, 1 : len(window) + 1] = torch.tensor(window)
        mask[row, : len(window) + 1] = 1
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
    logprobs = torch.log_softmax(logits[:, :-1].to(torch.float64), dim=-1)
    targets = ids[:, 1:].to(device)
    picked = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    picked = picked * mask[:, 1:].to(device)
    return -picked.sum(dim=1).cpu()


def perplexity(
    model: Any,
    tokenizer: Any,
    text: str,
    *,
    window: int = DEFAULT_WINDOW,
    max_tokens: int | None = None,
    batch_size: int = 4,
    progress: Callable[[int, int], None] | None = None,
) -> Evaluation:
    """Token-, word- and byte-level perplexity of ``model`` on ``text`` (see module doc)."""
    if window < 1:
        raise ValueError(f"perplexity: window must be >= 1 (got {window})")
    tokens = tokenizer(text, add_special_tokens=False)["input_ids"]
    if max_tokens is not None:
        tokens = tokens[:max_tokens]
    if not tokens:
        raise ValueError("perplexity: the text has no tokens")
    # The scored text is what the scored tokens decode to (all of it unless max_tokens cut it).
    scored = text if max_tokens is None else tokenizer.decode(tokens)
    windows = [tokens[i : i + window] for i in range(0, len(tokens), window)]
    start = _start_token(tokenizer)
    nll = 0.0
    for first in range(0, len(windows), batch_size):
        nll += float(window_nll(model, windows[first : first + batch_size], start).sum())
        if progress:
            progress(min(first + batch_size, len(windows)), len(windows))
    words = len(re.findall(r"\S+", scored))
    nbytes = len(scored.encode("utf-8"))
    metrics = {
        "token_perplexity": math.exp(nll / len(tokens)),
        "word_perplexity": math.exp(nll / max(words, 1)),
        "byte_perplexity": math.exp(nll / max(nbytes, 1)),
        "bits_per_byte": nll / (max(nbytes, 1) * math.log(2)),
        "nll": nll,
        "tokens": float(len(tokens)),
        "words": float(words),
        "bytes": float(nbytes),
    }
    definition = (
        f"disjoint windows of {window} tokens, each scored after one start token; "
        "perplexity = exp(total NLL / count) per token, whitespace word and UTF-8 byte; "
        "bits_per_byte = NLL / (bytes ln 2)"
    )
    return Evaluation("perplexity", metrics, definition, "model log-likelihood", len(windows))

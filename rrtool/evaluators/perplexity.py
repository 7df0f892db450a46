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

Every metric carries a 95% bootstrap interval (:mod:`rrtool.evaluators.bootstrap`) over the
windows: a replicate resamples the windows with replacement and recomputes each metric from
their summed NLL, tokens, words and bytes. A window's words and bytes are those of its own
decoded tokens, scaled so that all windows add up to the scored text's counts (a word cut by
a window boundary would otherwise count twice); on all windows the statistic is exactly the
reported number.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch

from rrtool.evaluators.base import Evaluation
from rrtool.evaluators.bootstrap import bootstrap

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
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, :-1]
    targets = ids[:, 1:].to(device)
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1).to(torch.float64)
    # log p(target) = logit - logsumexp(logits), in fp64 one row at a time: a whole batch's
    # fp64 log-softmax over 49k words is 0.8 GB per 4 x 512 tokens, held twice.
    norm = torch.stack([torch.logsumexp(row.to(torch.float64), dim=-1) for row in logits])
    return -((picked - norm) * mask[:, 1:].to(device)).sum(dim=1).cpu()


def _metrics(nll: float, tokens: float, words: float, nbytes: float) -> dict[str, float]:
    return {
        "token_perplexity": math.exp(nll / tokens),
        "word_perplexity": math.exp(nll / max(words, 1)),
        "byte_perplexity": math.exp(nll / max(nbytes, 1)),
        "bits_per_byte": nll / (max(nbytes, 1) * math.log(2)),
        "nll": nll,
        "tokens": float(tokens),
        "words": float(words),
        "bytes": float(nbytes),
    }


def _shares(total: int, counts: Sequence[int], fallback: Sequence[int]) -> list[float]:
    """``total`` split over windows in proportion to ``counts`` (``fallback`` if all zero)."""
    weights = counts if sum(counts) > 0 else fallback
    whole = sum(weights)
    return [total * w / whole for w in weights]


def _window_units(
    tokenizer: Any, windows: list[list[int]], nll: list[float], words: int, nbytes: int
) -> list[tuple[float, float, float, float]]:
    """(NLL, tokens, words, bytes) of each window, for the bootstrap."""
    texts = [tokenizer.decode(w) for w in windows]
    lengths = [len(w) for w in windows]
    window_words = _shares(words, [len(re.findall(r"\S+", t)) for t in texts], lengths)
    window_bytes = _shares(nbytes, [len(t.encode("utf-8")) for t in texts], lengths)
    return list(zip(nll, map(float, lengths), window_words, window_bytes, strict=True))


def perplexity(
    model: Any,
    tokenizer: Any,
    text: str,
    *,
    window: int = DEFAULT_WINDOW,
    max_tokens: int | None = None,
    batch_size: int = 4,
    progress: Callable[[int, int], None] | None = None,
    seed: int = 0,
) -> Evaluation:
    """Token-, word- and byte-level perplexity of ``model`` on ``text``, with bootstrap
    intervals over the windows seeded by ``seed`` (see module doc)."""
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
    per_window: list[float] = []
    for first in range(0, len(windows), batch_size):
        batch = window_nll(model, windows[first : first + batch_size], start)
        nll += float(batch.sum())
        per_window.extend(float(v) for v in batch)
        if progress:
            progress(min(first + batch_size, len(windows)), len(windows))
    words = len(re.findall(r"\S+", scored))
    nbytes = len(scored.encode("utf-8"))
    metrics = _metrics(nll, len(tokens), words, nbytes)
    units = _window_units(tokenizer, windows, per_window, words, nbytes)

    def statistic(drawn: Sequence[tuple[float, float, float, float]]) -> dict[str, float]:
        return _metrics(*(math.fsum(column) for column in zip(*drawn, strict=True)))

    result = bootstrap(units, statistic, seed=seed)
    definition = (
        f"disjoint windows of {window} tokens, each scored after one start token; "
        "perplexity = exp(total NLL / count) per token, whitespace word and UTF-8 byte; "
        "bits_per_byte = NLL / (bytes ln 2)"
    )
    return Evaluation(
        "perplexity",
        metrics,
        definition,
        "model log-likelihood",
        len(windows),
        [],
        {k: list(v) for k, v in result.intervals.items()},
        result.replicates,
        result.units,
    )

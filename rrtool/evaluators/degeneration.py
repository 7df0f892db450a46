"""How much of a model's output stopped being answers: empty and repetitive completions.

A forget score can fall because the target was removed or because the model stopped
answering (empty strings, a phrase looped to the token limit). These rates, before and after,
let the audit tell the two apart (``rrtool.audit.verdict``). They are computed on the first
answer of each evaluated prompt (the ones the report shows).
"""

from __future__ import annotations

from collections.abc import Sequence

MIN_WORDS = 6  # shorter answers are too short to call repetitive
DISTINCT_TRIGRAMS = 0.5  # under half of the word 3-grams distinct: the answer loops


def is_repetitive(text: str) -> bool:
    words = text.lower().split()
    if len(words) < MIN_WORDS:
        return False
    grams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    return len(set(grams)) / len(grams) < DISTINCT_TRIGRAMS


def degeneration(completions: Sequence[str]) -> dict[str, float]:
    """``empty_rate``, ``repetition_rate`` and ``degenerate_rate`` (either) over answers."""
    if not completions:
        return {}
    empty = [not c.strip() for c in completions]
    looped = [is_repetitive(c) for c in completions]
    n = len(completions)
    return {
        "empty_rate": sum(empty) / n,
        "repetition_rate": sum(looped) / n,
        "degenerate_rate": sum(e or r for e, r in zip(empty, looped, strict=True)) / n,
    }

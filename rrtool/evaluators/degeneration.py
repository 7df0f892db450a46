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
# A loop inside one "word" ("thebubbbbbbbbbbbb...", what a misdirected state can decode to)
# has no word 3-grams to repeat: characters (spaces dropped) are read the same way. A list of
# similar items (["Jan 2020", "Feb 2020", ...]) keeps about 0.6 of its 4-grams distinct.
MIN_CHARS = 24
DISTINCT_CHAR_GRAMS = 0.4


def is_repetitive(text: str) -> bool:
    words = text.lower().split()
    if len(words) >= MIN_WORDS:
        grams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
        if len(set(grams)) / len(grams) < DISTINCT_TRIGRAMS:
            return True
    chars = "".join(words)
    if len(chars) < MIN_CHARS:
        return False
    quads = [chars[i : i + 4] for i in range(len(chars) - 3)]
    return len(set(quads)) / len(quads) < DISTINCT_CHAR_GRAMS


def distinct(completions: Sequence[str], n: int) -> float | None:
    """Distinct-n (Li et al. 2016): distinct word n-grams over all word n-grams of the answers
    (lower-cased); None when the answers hold no n-gram."""
    grams = [
        tuple(words[i : i + n])
        for words in (c.lower().split() for c in completions)
        for i in range(len(words) - n + 1)
    ]
    return len(set(grams)) / len(grams) if grams else None


def degeneration(completions: Sequence[str]) -> dict[str, float]:
    """``empty_rate``, ``repetition_rate`` and ``degenerate_rate`` (either) over answers, and
    ``distinct_1`` / ``distinct_2`` over all of them (a model that babbles or answers every
    prompt alike reads low)."""
    if not completions:
        return {}
    empty = [not c.strip() for c in completions]
    looped = [is_repetitive(c) for c in completions]
    n = len(completions)
    out = {
        "empty_rate": sum(empty) / n,
        "repetition_rate": sum(looped) / n,
        "degenerate_rate": sum(e or r for e, r in zip(empty, looped, strict=True)) / n,
    }
    for size in (1, 2):
        value = distinct(completions, size)
        if value is not None:
            out[f"distinct_{size}"] = value
    return out

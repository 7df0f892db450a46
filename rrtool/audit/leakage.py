"""Leakage check: do the audit's prompts hold text that training or tuning saw?

The splits keep Reveal, the weight search and the audit on disjoint units, but a user's
``audit.forget_eval`` can repeat Reveal's contexts, and near-duplicate passages (the same news
item twice, a reposted comment) cross any split. So every audit forget prompt is compared with
each context Reveal generated from and each context of the weight-search split:

- **exact**: the context, lower-cased with whitespace collapsed, is inside the prompt;
- **near-duplicate**: at least half of the context's word 8-grams (lower-cased) occur in the
  prompt (a shorter context: its word n-grams for n = its length, so a short context must
  appear whole).

The rate is leaked prompts / audit prompts per source; above ``WARN_RATE`` the audit warns.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

N = 8
NEAR = 0.5
WARN_RATE = 0.05


def normalise(text: str) -> str:
    """Lower case, whitespace runs as one space: how passages are compared."""
    return re.sub(r"\s+", " ", text.lower()).strip()


def _grams(words: Sequence[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def leaked(prompt: str, contexts: Sequence[str]) -> str | None:
    """``exact`` / ``near-duplicate`` when one of ``contexts`` is in ``prompt``, else None."""
    text = normalise(prompt)
    words = text.split()
    prompt_grams: dict[int, set[tuple[str, ...]]] = {}
    near = False
    for context in contexts:
        c = normalise(context)
        if not c:
            continue
        if c in text:
            return "exact"
        cw = c.split()
        n = min(N, len(cw))
        grams = _grams(cw, n)
        if n not in prompt_grams:
            prompt_grams[n] = _grams(words, n)
        if grams and len(grams & prompt_grams[n]) / len(grams) >= NEAR:
            near = True
    return "near-duplicate" if near else None


def leakage(prompts: Sequence[str], sources: dict[str, Sequence[str]]) -> dict[str, Any]:
    """Per source: how many of ``prompts`` hold one of its contexts (exact, near-duplicate)."""
    out: dict[str, Any] = {}
    for name, contexts in sources.items():
        kinds = [leaked(p, contexts) for p in prompts]
        exact, near = kinds.count("exact"), kinds.count("near-duplicate")
        out[name] = {
            "prompts": len(prompts),
            "contexts": len(contexts),
            "exact": exact,
            "near_duplicate": near,
            "rate": (exact + near) / len(prompts) if prompts else None,
        }
    return {
        "sources": out,
        "warn": any((s["rate"] or 0) > WARN_RATE for s in out.values()),
        "definition": f"an audit forget prompt leaks when a context of the source is inside it "
        f"(lower-cased, whitespace collapsed) or at least {NEAR:.0%} of the context's word "
        f"{N}-grams are; rate = leaking prompts / audit prompts",
    }


def source_contexts(records: Sequence[dict[str, Any]], fmt: str) -> list[str]:
    """The contexts of loaded records: NER passages, else each record's prompt."""
    from rrtool.tasks import samples_from_records

    if fmt == "universalner":
        return list(dict.fromkeys(str(r.get("text") or "") for r in records))
    return [s.prompt for s in samples_from_records(fmt, records)]

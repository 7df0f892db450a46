"""An example rrtool oracle: how much of a keyword list a completion mentions.

Useful as a template, and as a quick oracle for a custom target ("forget talking
about Project X": keywords = its code names).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class _Requirements:
    # Same fields as rrtool.oracles.contract.Requirements; duck typing keeps this
    # plugin importable without rrtool.
    reference: bool = False
    network: bool = False
    api_key_env: str | None = None


@dataclass(frozen=True)
class _Score:
    score: float
    details: dict[str, Any] = field(default_factory=dict)


class KeywordOracle:
    """Share of the configured keywords a completion mentions (whole words, any case)."""

    name = "keywords"
    description = "Share of configured keywords a completion mentions (example plugin)."
    requires = _Requirements()

    def __init__(self, *, keywords: Sequence[str] = (), **unknown: Any) -> None:
        if unknown:
            raise TypeError(f"unknown option(s): {', '.join(sorted(unknown))} (expected: keywords)")
        if isinstance(keywords, str) or not all(isinstance(k, str) and k for k in keywords):
            raise ValueError("keywords must be a list of non-empty strings")
        self.keywords = list(keywords)
        self._patterns = [re.compile(rf"\b{re.escape(k)}\b", re.IGNORECASE) for k in keywords]

    def score(self, samples: Sequence[Any], **kwargs: Any) -> list[_Score]:
        keywords = self.keywords or []
        out = []
        for sample in samples:
            found = [
                k
                for k, p in zip(keywords, self._patterns, strict=True)
                if p.search(sample.completion)
            ]
            share = len(found) / len(keywords) if keywords else 0.0
            out.append(_Score(share, {"found": found}))
        return out

    def aggregate(
        self, samples: Sequence[Any], scores: Sequence[Any], **kwargs: Any
    ) -> dict[str, float]:
        values = [s.score for s in scores]
        return {
            "mean": sum(values) / len(values) if values else 0.0,
            "any_rate": sum(v > 0 for v in values) / len(values) if values else 0.0,
        }

"""Keyword mentions: the ``mentions`` oracle, for a ``custom`` target such as one named person.

A completion scores 1.0 when it mentions any of the keywords, else 0.0. The keywords are the
``keywords`` option (e.g. ``[Einstein]``) plus, per sample, the list in
``reference["keywords"]`` when the data has one (a jsonl record's ``keywords`` field lands
there: a question about the theory of relativity can add ``relativity``).

Matching is case-insensitive and on whole words: a keyword matches where it is neither
preceded nor followed by a letter or digit, so ``Ada`` matches "Ada's notes" but not "Adam";
the words of a multi-word keyword may be separated by any whitespace ("Albert\\nEinstein").
Text is compared after NFKC normalisation, so typographic and full-width forms match.

A keyword the prompt itself contains does not count (``count_echoes=False``, the default):
"Albert Einstein was born in Germany" answering "Where was Albert Einstein born?" repeats the
question's name and reveals nothing, while "Ulm" would; such keywords are listed as
``echoed``. A question that does not name the person ("Who developed the theory of
relativity?") is answered by the name itself.

Used as the forget oracle, the mean score is the share of answers that still name the target
(lower is better once it is forgotten); used as ``retain.utility`` over questions about other
people, the share of answers that still name the right person or fact (higher is better).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import Any

from rrtool.oracles.contract import Requirements, Sample, Score


def _normalise(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def _pattern(keyword: str) -> re.Pattern[str]:
    words = (re.escape(w) for w in _normalise(keyword).split())
    return re.compile(r"(?<![^\W_])" + r"\s+".join(words) + r"(?![^\W_])")


def _keywords(value: Any, where: str) -> list[str]:
    """A list of non-empty strings; a bare string is refused (it would be read letter by
    letter otherwise)."""
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise TypeError(f"mentions: {where} must be a list of strings, got {type(value).__name__}")
    if not all(isinstance(k, str) and k.strip() for k in value):
        raise ValueError(f"mentions: {where} must contain only non-empty strings")
    return [" ".join(k.split()) for k in value]


class MentionsOracle:
    """1 when a completion mentions any of the keywords (whole words, any case), else 0."""

    name = "mentions"
    description = (
        "1 when a completion mentions any keyword (option `keywords` plus the sample's "
        "reference keywords; whole words, any case), else 0."
    )
    requires = Requirements(reference=False, target_kinds=("custom",))

    def __init__(self, *, keywords: Sequence[str] = (), count_echoes: bool = False) -> None:
        """Create the oracle.

        ``keywords``: words or names that count as a mention in every sample (e.g.
        ``[Einstein, Albert Einstein]``). May be empty when every sample carries its own
        ``reference["keywords"]``; a sample with neither scores 0. ``count_echoes``: count
        keywords the prompt already contains (off: an answer repeating the question's name
        reveals nothing).
        """
        if not isinstance(count_echoes, bool):
            raise TypeError(
                f"mentions: option 'count_echoes' must be true or false, got {count_echoes!r}"
            )
        self.count_echoes = count_echoes
        self.keywords = _keywords(keywords, "option 'keywords'")
        self._patterns = {k: _pattern(k) for k in self.keywords}

    def _sample_keywords(self, sample: Sample) -> list[str]:
        extra = sample.reference.get("keywords") if sample.reference else None
        if extra is None:
            return self.keywords
        own = _keywords(extra, f"sample {sample.id!r}: reference 'keywords'")
        return list(dict.fromkeys([*self.keywords, *own]))

    def score(self, samples: Sequence[Sample], **kwargs: Any) -> list[Score]:
        """Score each completion: 1.0 if it mentions a keyword the prompt does not already
        hold. Details: ``found`` (the keywords it mentions, in keyword order), ``echoed``
        (mentioned, but already in the prompt: not counted) and ``keywords`` (how many were
        looked for)."""
        scores = []
        for sample in samples:
            keywords = self._sample_keywords(sample)
            text = _normalise(sample.completion)
            prompt = _normalise(sample.prompt or "")
            found, echoed = [], []
            for keyword in keywords:
                pattern = self._patterns.get(keyword)
                if pattern is None:
                    pattern = self._patterns[keyword] = _pattern(keyword)
                if not pattern.search(text):
                    continue
                (echoed if not self.count_echoes and pattern.search(prompt) else found).append(
                    keyword
                )
            details = {"found": found, "echoed": echoed, "keywords": len(keywords)}
            scores.append(Score(1.0 if found else 0.0, details))
        return scores

    def aggregate(
        self, samples: Sequence[Sample], scores: Sequence[Score], **kwargs: Any
    ) -> dict[str, float]:
        """``mean_score``: the share of completions that mention a keyword; ``samples``: how
        many were aggregated. Empty when there are none."""
        if len(samples) != len(scores):
            raise ValueError(
                f"mentions: {len(samples)} samples but {len(scores)} scores; they must pair up"
            )
        if not scores:
            return {}
        return {"mean_score": sum(s.score for s in scores) / len(scores), "samples": len(scores)}

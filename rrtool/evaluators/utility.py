"""The built-in utility evaluators, in one table that the audit's suite and the planner read.

``retain.utility`` names one of these or an oracle plugin; a target kind without retained
types of its own (toxicity, coding) gets its default here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class UtilityEvaluator:
    name: str
    description: str  # what the plan says it measures
    headline: str  # the metric the verdict reads
    better: Literal["lower", "higher"]
    data_formats: tuple[str, ...]  # the formats of `retain.data` / `audit.retain_eval` it reads
    default_for: tuple[str, ...] = ()  # target kinds that measure utility with it by default
    bounds: tuple[float, float | None] = (0.0, 1.0)  # the headline's range (None: unbounded)


UTILITY_EVALUATORS: dict[str, UtilityEvaluator] = {
    e.name: e
    for e in (
        UtilityEvaluator(
            "perplexity",
            "word/byte perplexity on raw text, or GSM8K questions with their worked answers (lower is better)",
            "word_perplexity",
            "lower",
            # GSM8K records are read as their question and worked answer: prose with
            # arithmetic, which a small model can model (it scores ~0 on the task itself).
            ("text", "gsm8k"),
            ("toxicity",),
            (1.0, None),
        ),
        UtilityEvaluator(
            "gsm8k_accuracy",
            "GSM8K exact-match accuracy, strict and flexible extraction",
            "flexible_accuracy",
            "higher",
            ("gsm8k",),
            ("coding",),
        ),
    )
}


def default_utility(kind: str) -> str | None:
    """The built-in evaluator a target kind measures utility with when the spec names none."""
    return next((e.name for e in UTILITY_EVALUATORS.values() if kind in e.default_for), None)


def as_text(record: dict[str, Any], fmt: str) -> str:
    """A record of a format perplexity reads, as the text it scores."""
    if fmt == "gsm8k":
        return f"{record['question']}\n{record['answer']}"
    return record["text"]

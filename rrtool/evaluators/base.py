"""What every evaluator returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Evaluation:
    """One evaluator's result on one model.

    ``metrics`` are the numbers; ``definition`` says how they were computed (recorded with
    them, so a reader of the report never has to guess a convention); ``scorer`` names what
    produced them (an oracle and its version, or the model's own likelihood); ``count`` is how
    many items were evaluated; ``answers`` are per-item records (prompt, completion,
    reference, score) for the report's side-by-side view.
    """

    name: str
    metrics: dict[str, float]
    definition: str
    scorer: str
    count: int
    answers: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self, answers: int | None = None) -> dict[str, Any]:
        return {
            "name": self.name,
            "metrics": self.metrics,
            "definition": self.definition,
            "scorer": self.scorer,
            "count": self.count,
            "answers": self.answers if answers is None else self.answers[:answers],
        }

"""What every evaluator returns."""

from __future__ import annotations

import math
from collections.abc import Collection
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

    ``intervals`` are 95% bootstrap confidence intervals, metric -> ``[low, high]``, from
    resampling the evaluation's units (see :mod:`rrtool.evaluators.bootstrap`); a metric
    without one (fewer than 2 units, or too few replicates had it) is absent.
    ``replicates`` are each metric's values in the bootstrap replicates (NaN where a replicate
    lacked it): two evaluations of the same units with the same seed pair up replicate by
    replicate, which gives the interval of the change between them
    (:func:`~rrtool.evaluators.bootstrap.paired_change`).
    """

    name: str
    metrics: dict[str, float]
    definition: str
    scorer: str
    count: int
    answers: list[dict[str, Any]] = field(default_factory=list)
    intervals: dict[str, list[float]] = field(default_factory=dict)
    replicates: dict[str, list[float]] = field(default_factory=dict)
    # The units the bootstrap resampled (passages, prompts, questions, windows; 0: unknown):
    # a paired interval is widened for a small number of them (``bootstrap.paired_interval``).
    units: int = 0

    def to_dict(
        self, answers: int | None = None, replicates: Collection[str] | None = ()
    ) -> dict[str, Any]:
        """A JSON-ready record: the first ``answers`` answers (all when ``None``), every
        interval, and the replicates of the metrics named in ``replicates`` (none by default,
        all when ``None``; missing replicate values as ``None``). The ``replicates`` key is
        present only when some were asked for."""
        out: dict[str, Any] = {
            "name": self.name,
            "metrics": self.metrics,
            "definition": self.definition,
            "scorer": self.scorer,
            "count": self.count,
            "answers": self.answers if answers is None else self.answers[:answers],
            "intervals": {k: list(v) for k, v in self.intervals.items()},
        }
        if self.units:
            out["units"] = self.units
        if replicates is None or replicates:
            chosen = self.replicates if replicates is None else set(replicates)
            out["replicates"] = {
                k: [v if math.isfinite(v) else None for v in values]
                for k, values in self.replicates.items()
                if k in chosen
            }
        return out

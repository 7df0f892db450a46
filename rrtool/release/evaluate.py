"""Release's running scores: forget score s and utility u of the model as it is now.

Both come from the spec's evaluation suite (``rrtool.evaluators.suite``) sized for the weight
search (``EvaluationSuite.for_release``): s is the forget measurement's headline metric (NER:
macro F1 over the forget types; toxicity: expected maximum toxicity; coding: pass@1), u the
utility measurement's. The weight rules compare ratios and differences of u, so u must grow
with utility: a lower-is-better utility (perplexity) enters as its reciprocal, u = 1 / ppl.

Generation runs through the HF backend over the loaded model itself, so unmerged candidate
adapters (forward hooks) and merged updates are both seen.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rrtool.context import RunContext
from rrtool.errors import UserError
from rrtool.evaluators.suite import EvaluationSuite


@dataclass(frozen=True)
class Scores:
    s: float  # forget score: lower = more forgotten
    u: float  # utility: higher = better
    details: dict[str, float]
    s_ci: list[float] | None = None  # 95% bootstrap interval of s
    u_ci: list[float] | None = None  # of u (on u's scale: 1/ppl's interval for perplexity)


class Evaluator:
    """Scores the model as it is now (with whatever adapters are attached)."""

    def __init__(self, ctx: RunContext) -> None:
        self.suite = EvaluationSuite.for_release(ctx)
        missing = {"forget", "utility"} - set(self.suite.measures)
        if missing:
            raise UserError(
                f"release: no {' or '.join(sorted(missing))} measurement for this spec "
                "(NER needs target.retain_types or retain.utility)"
            )
        self.evaluations = 0

    @property
    def size(self) -> int:
        return self.suite.size

    def __call__(self, progress: Callable[[int], None] | None = None) -> Scores:
        results = self.suite.run()
        self.evaluations += 1
        forget, utility = results["forget"], results["utility"]
        s_head, u_head = self.suite.headlines["forget"], self.suite.headlines["utility"]
        s = forget.metrics.get(s_head.metric)
        u = utility.metrics.get(u_head.metric)
        if s is None or u is None:
            raise UserError(
                f"release: the evaluation gave no `{s_head.metric if s is None else u_head.metric}`"
                " (did every generation fail to score?)"
            )
        s_ci = _interval(forget, s_head.metric)
        u_ci = _interval(utility, u_head.metric)
        if u_head.better == "lower":
            u = 1.0 / u if u > 0 else float("inf")
            u_ci = [1.0 / u_ci[1], 1.0 / u_ci[0]] if u_ci and min(u_ci) > 0 else None
        details = {f"forget/{k}": v for k, v in forget.metrics.items()}
        details |= {f"utility/{k}": v for k, v in utility.metrics.items()}
        return Scores(float(s), float(u), details, s_ci, u_ci)


def _interval(evaluation: Any, metric: str) -> list[float] | None:
    found = getattr(evaluation, "intervals", {}).get(metric)
    return [float(found[0]), float(found[1])] if found else None

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

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from rrtool import tracking_inputs
from rrtool.context import RunContext
from rrtool.errors import UserError
from rrtool.evaluators.base import Evaluation
from rrtool.evaluators.bootstrap import lower_bound, upper_bound
from rrtool.evaluators.suite import EvaluationSuite

EARLY_LOOKS = 2  # interim looks at the utility (1/3 and 2/3 of its units) before the full one


@dataclass(frozen=True)
class Scores:
    s: float  # forget score: lower = more forgotten
    u: float  # utility: higher = better
    details: dict[str, float]
    s_ci: list[float] | None = None  # 95% bootstrap interval of s
    u_ci: list[float] | None = None  # of u (on u's scale: 1/ppl's interval for perplexity)
    decided_early: bool = False  # rejected on its utility alone; s was not measured (NaN)
    prompts: int | None = None  # evaluation prompts answered for these scores


class Evaluator:
    """Scores the model as it is now (with whatever adapters are attached)."""

    def __init__(self, ctx: RunContext) -> None:
        self.suite = EvaluationSuite.for_release(ctx)
        tracking_inputs.log_parts(ctx.tracker, tracking_inputs.suite_parts(self.suite.parts))
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

    def __call__(
        self, progress: Callable[[int], None] | None = None, *, reject_below: float | None = None
    ) -> Scores:
        """Scores of the model as it is now.

        ``reject_below``: the utility (u's scale) under which the caller rejects the model
        whatever it forgets. With ``release.search.early_reject_confidence`` set, utility is
        then measured first, in stages (1/3, 2/3, all of its units); at each stage, when u and
        its one-sided upper bound at confidence ``1 - alpha / looks`` (percentile bootstrap
        over the units; Bonferroni over the ``EARLY_LOOKS + 1`` looks) are both below the
        threshold, the model is rejected there and the forget score is not measured.
        """
        self.evaluations += 1
        s_head, u_head = self.suite.headlines["forget"], self.suite.headlines["utility"]
        confidence = self.confidence
        utility = None
        if reject_below is not None and confidence is not None:
            alpha = (1.0 - confidence) / (EARLY_LOOKS + 1)
            for utility in self._utility_stages():
                u = self._u(utility.metrics.get(u_head.metric), u_head)
                upper = self._u_upper(utility, u_head, alpha)
                if u < reject_below and upper is not None and upper < reject_below:
                    u_ci = self._u_interval(utility, u_head)
                    details = {f"utility/{k}": v for k, v in utility.metrics.items()}
                    return Scores(math.nan, u, details, None, u_ci, True, utility.count)
        forget = self.suite.measures["forget"]()
        if utility is None:
            utility = self.suite.measures["utility"]()
        s = forget.metrics.get(s_head.metric)
        u = self._u(utility.metrics.get(u_head.metric), u_head)
        if s is None:
            raise UserError(
                f"release: the evaluation gave no `{s_head.metric}` (did every generation "
                "fail to score?)"
            )
        details = {f"forget/{k}": v for k, v in forget.metrics.items()}
        details |= {f"utility/{k}": v for k, v in utility.metrics.items()}
        return Scores(
            float(s),
            u,
            details,
            _interval(forget, s_head.metric),
            self._u_interval(utility, u_head),
            prompts=forget.count + utility.count,
        )

    @property
    def confidence(self) -> float | None:
        return self.suite.spec.release.search.early_reject_confidence

    def _utility_stages(self) -> Iterator[Evaluation]:
        measure = self.suite.measures["utility"]
        staged = getattr(measure, "staged", None)
        return staged(EARLY_LOOKS) if staged is not None else iter([measure()])

    @staticmethod
    def _u(value: float | None, head: Any) -> float:
        """u on its higher-is-better scale (perplexity enters as 1 / ppl)."""
        if value is None:
            raise UserError(
                f"release: the evaluation gave no `{head.metric}` (did every generation fail "
                "to score?)"
            )
        if head.better == "lower":
            return 1.0 / value if value > 0 else float("inf")
        return float(value)

    def _u_interval(self, utility: Evaluation, head: Any) -> list[float] | None:
        u_ci = _interval(utility, head.metric)
        if head.better == "lower":
            return [1.0 / u_ci[1], 1.0 / u_ci[0]] if u_ci and min(u_ci) > 0 else None
        return u_ci

    @staticmethod
    def _u_upper(utility: Evaluation, head: Any, alpha: float) -> float | None:
        replicates = (getattr(utility, "replicates", None) or {}).get(head.metric)
        if not replicates:
            return None
        if head.better == "lower":  # u = 1/ppl: u's upper bound is 1 / ppl's lower bound
            low = lower_bound(replicates, alpha)
            return 1.0 / low if low is not None and low > 0 else None
        return upper_bound(replicates, alpha)


def _interval(evaluation: Any, metric: str) -> list[float] | None:
    found = getattr(evaluation, "intervals", {}).get(metric)
    return [float(found[0]), float(found[1])] if found else None

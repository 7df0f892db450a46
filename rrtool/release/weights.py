"""Release's schedule (F0, R1, F1, ...) and automatic merge-weight search (the paper picks
mu_i and lambda_i by hand).

A candidate weight is scored by an ``evaluate(w) -> (s, u)`` callable; in a run it changes the
unmerged adapter's scale in place (``ScaledAdapter.set_weight``), so a candidate costs one
evaluation and no merge. Here the search only sees magnitudes: the phase turns mu into -mu.

Search (at most ``search.budget`` evaluations in [min_weight, max_weight]):

1. A geometric ladder, ascending, of ``ceil(budget / 2)`` weights from ``w_lo`` to
   ``max_weight`` (``w_lo = min_weight``, or ``max_weight / 64`` when ``min_weight`` is 0: a
   geometric ladder cannot start at 0, and useful weights on small models are 0.05-0.5, so
   the low end needs the resolution). The ladder stops at the first weight the rule accepts.
2. Bisection (geometric mean; arithmetic when the lower end is 0) between the last rejected
   weight and the first accepted one, with the remaining budget, to find the smallest weight
   the rule accepts (the rules ask for the smallest: as little change as the target needs).

Selection among everything evaluated (so a non-monotone response cannot fool it):

- mu: the smallest weight with ``s_w <= (1 - forget_fraction) * s_start``; else the weight with
  the largest forget drop among those that lose less utility than forget score
  (``s_start - s_w > u_start - u_w``); else the smallest candidate.
- lambda: the smallest weight with ``u_w >= utility_recovery * u_start`` (the phase passes, as
  ``u_start``, the utility from before the preceding forget subtraction); else the weight with
  the highest utility.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from rrtool.spec import RulesSpec, WeightSearchSpec, WeightsSpec

Evaluate = Callable[[float], tuple[float, float]]
Kind = Literal["mu", "lambda"]


@dataclass
class Candidate:
    """One evaluated weight (a magnitude) and what the rules made of it."""

    weight: float
    s: float
    u: float
    accepted: bool  # passes the primary rule (forget_fraction / utility_recovery)
    rule: str  # the primary rule's name
    chosen: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SearchResult:
    """The weight picked, its scores, why it was picked, and every candidate tried."""

    weight: float
    s: float
    u: float
    reason: str  # rule | tradeoff | smallest | highest_utility
    candidates: list[Candidate] = field(default_factory=list)


@dataclass(frozen=True)
class Step:
    """One module of the Release schedule."""

    number: int  # 1-based position in the stack (0 is the base model)
    name: str  # F0, R1, F1, ...
    kind: str  # forget | retain
    iteration: int
    # How the module is made: nll (learn the examples) | gradient_ascent | npo | dpo | cmd
    # (learn the model's own continuations of cleaned contexts) | ext_sub (E0: the expert,
    # trained with nll; D0: Ext-Sub's deficiency, computed from the expert and anti-expert).
    objective: str = "nll"

    @property
    def sign(self) -> float:
        """A forget module that learnt the target (or Ext-Sub's deficiency of one) is
        subtracted; a retain module, or one trained away from the target (gradient ascent,
        NPO, DPO, CMD), is added."""
        return -1.0 if self.kind == "forget" and self.objective in ("nll", "ext_sub") else 1.0

    @property
    def training_objective(self) -> str:
        """The loss ``train_lora`` minimises for this step."""
        return self.objective if self.objective in ("gradient_ascent", "npo", "dpo") else "nll"


# strategy -> objective of its one forget-side module
OBJECTIVES = {"gradient_ascent": "gradient_ascent", "npo": "npo", "dpo": "dpo", "cmd": "cmd"}


def schedule(iterations: int, strategy: str = "iterative") -> list[Step]:
    """F0, then [R_i, F_i] for each iteration; the baselines are F0 alone, except Ext-Sub:
    its expert E0 (added at full weight), then its deficiency D0 (subtracted)."""
    if strategy == "ext_sub":
        return [Step(1, "E0", "retain", 0, "ext_sub"), Step(2, "D0", "forget", 0, "ext_sub")]
    if strategy != "iterative":
        return [Step(1, "F0", "forget", 0, OBJECTIVES.get(strategy, "nll"))]
    steps = [Step(1, "F0", "forget", 0)]
    for i in range(1, iterations + 1):
        steps.append(Step(len(steps) + 1, f"R{i}", "retain", i))
        steps.append(Step(len(steps) + 1, f"F{i}", "forget", i))
    return steps


def explicit_weight(weights: WeightsSpec, step: Step) -> float | None:
    """The spec's weight for ``step`` (a magnitude), or None when it is to be searched."""
    if step.objective == "ext_sub" and step.kind == "retain":
        return 1.0  # Ext-Sub adds its expert whole; only the deficiency's weight is tuned
    if step.iteration == 0:
        return weights.mu0
    given = weights.lambdas if step.kind == "retain" else weights.mus
    return None if given is None else given[step.iteration - 1]


def rule_name(kind: Kind) -> str:
    return "forget_fraction" if kind == "mu" else "utility_recovery"


def accepts(
    kind: Kind, s: float, u: float, s_start: float, u_start: float, rules: RulesSpec
) -> bool:
    """Whether (s, u) at a candidate weight passes the primary rule of ``kind``."""
    if kind == "mu":
        return s <= (1.0 - rules.forget_fraction) * s_start
    return u >= rules.utility_recovery * u_start


def ladder(search: WeightSearchSpec) -> list[float]:
    """The ascending geometric ladder of step 1 (see the module docstring)."""
    n = max(1, math.ceil(search.budget / 2))
    hi = search.max_weight
    lo = search.min_weight if search.min_weight > 0 else hi / 64
    if n == 1:
        return [_round(math.sqrt(lo * hi))]
    ratio = (hi / lo) ** (1.0 / (n - 1))
    points = [_round(lo * ratio**i) for i in range(n - 1)]
    return [*points, hi]


def _round(weight: float) -> float:
    """Six significant digits: readable weights in records (0.5, not 0.49999999999999994)."""
    return float(f"{weight:.6g}")


def _midpoint(lo: float, hi: float) -> float:
    return _round(math.sqrt(lo * hi) if lo > 0 else (lo + hi) / 2)


def search_weight(
    kind: Kind,
    evaluate: Evaluate,
    s_start: float,
    u_start: float,
    search: WeightSearchSpec,
    rules: RulesSpec,
    progress: Callable[[Candidate], None] | None = None,
) -> SearchResult:
    """Search one weight (``kind`` mu or lambda) within ``search.budget`` evaluations."""
    tried: dict[float, Candidate] = {}

    def trial(weight: float) -> Candidate:
        if weight not in tried:
            s, u = evaluate(weight)
            cand = Candidate(
                weight, s, u, accepts(kind, s, u, s_start, u_start, rules), rule_name(kind)
            )
            tried[weight] = cand
            if progress is not None:
                progress(cand)
        return tried[weight]

    rejected_below = search.min_weight  # weight known (or assumed) to be rejected
    accepted_at: float | None = None
    for weight in ladder(search):
        if len(tried) >= search.budget:
            break
        if trial(weight).accepted:
            accepted_at = weight
            break
        rejected_below = weight
    if accepted_at is not None:
        lo, hi = rejected_below, accepted_at
        while len(tried) < search.budget:
            mid = _midpoint(lo, hi)
            if mid in tried or not lo < mid < hi:
                break
            if trial(mid).accepted:
                hi = mid
            else:
                lo = mid
    candidates = sorted(tried.values(), key=lambda c: c.weight)
    chosen, reason = _select(kind, candidates, s_start, u_start)
    chosen.chosen = True
    return SearchResult(chosen.weight, chosen.s, chosen.u, reason, candidates)


def _select(
    kind: Kind, candidates: list[Candidate], s_start: float, u_start: float
) -> tuple[Candidate, str]:
    """Apply the rules to candidates sorted by weight (see the module docstring)."""
    accepted = [c for c in candidates if c.accepted]
    if accepted:
        return accepted[0], "rule"
    if kind == "mu":
        tradeoff = [c for c in candidates if (s_start - c.s) > (u_start - c.u)]
        if tradeoff:
            # max() keeps the first of equal drops, i.e. the smaller weight.
            return max(tradeoff, key=lambda c: s_start - c.s), "tradeoff"
        return candidates[0], "smallest"
    return max(candidates, key=lambda c: c.u), "highest_utility"

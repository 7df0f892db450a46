"""Release's merge weights: the spec's explicit ones and the automatic search (the paper picks
mu_i and lambda_i by hand); the schedule of steps is each strategy's (``rrtool.strategies``).

A candidate weight is scored by an ``evaluate(w)`` callable returning ``(s, u)`` or an object
with ``s``, ``u`` (and optionally their intervals ``s_ci``, ``u_ci``); in a run it changes the
unmerged adapter's scale in place (``ScaledAdapter.set_weight``), so a candidate costs one
evaluation and no merge. Here the search only sees magnitudes: the phase turns mu into -mu.
``s`` is the forget score (lower = more forgotten; NER: the share of answers that still name
a forget-type entity, in any format), ``u`` the utility (higher = better).

Two modes (``release.rules.mode``):

``tradeoff`` (default). With ``s0``, ``u0`` the scores at the step's start, ``u_base`` the base
model's utility, and relative changes ``gain = (s0 - s) / s0``, ``loss = (u0 - u) / u0``:

- a forget weight (mu) is *acceptable* when it keeps ``u >= step_utility_floor x u_base`` and
  either forgets enough (``s <= (1 - forget_fraction) x s0``, rule ``forget_fraction``) or
  loses a smaller share of utility than of forget score (``gain > loss``, rule ``tradeoff``;
  so total collapse, s = u = 0, never passes: gain = loss = 1);
- a retain weight (lambda) is acceptable when ``u >= utility_recovery x u_ref`` (``u_ref``:
  utility just before the preceding forget subtraction; rule ``utility_recovery``);
- among acceptable weights the one with the best *combined objective*
  ``J = (s0 - s) / s_base + (u - u0) / u_base`` is chosen (forgetting gained plus utility kept,
  each on the base model's scale, so a step is ranked as the states it leads to are; for a
  retain weight it rewards recovery and penalises forgetting undone, also when the step starts
  at s0 = 0, where a scale of s0 would make undoing free); equal J: the smaller
  weight. With none acceptable: mu takes the smallest weight tried (reason
  ``none_acceptable``: as little change as possible), lambda the highest utility.
- search: a geometric ladder of ``budget - budget // 3`` weights, neighbours 3x apart, ending at
  ``max_weight`` (starting at ``min_weight`` when that is set, then the ratio follows), all
  evaluated; the rest of the budget bisects (geometric midpoint) between the best candidate
  and its better neighbour, so the whole budget is always spent; a forget weight with nothing
  acceptable yet bisects the edge between the largest feasible and the smallest infeasible
  weight instead (below it nothing changes, above it utility is gone).

Early rejection (``release.search.early_reject_confidence``, default 0.95): the phase measures
a candidate's utility first, in stages, and when it is below ``utility_threshold`` (the floor
for mu, the recovery target for lambda) with that confidence, the candidate is rejected without
its forget score (``decided_early``; it is credited no forgetting, ``s = s0``, so it ranks
below measured candidates; its record has ``s: null`` and the prompts it cost). See
``rrtool.release.evaluate.Evaluator``.

``paper``: the paper's literal rules, kept for the ablation: a ladder of ``ceil(budget / 2)``
weights from ``max_weight / 64``, stopping at the first weight that forgets
``forget_fraction`` (lambda: recovers ``utility_recovery``), bisection towards the smallest such
weight; chosen: the smallest accepted weight, else (mu) the largest forget drop among weights
with ``(s0 - s) > (u0 - u)`` in raw differences, else the smallest weight.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from rrtool.spec import RulesSpec, WeightSearchSpec, WeightsSpec
from rrtool.strategies.steps import Step

Interval = tuple[float, float] | None
Evaluate = Callable[[float], Any]  # -> (s, u) or an object with s, u, s_ci, u_ci
Kind = Literal["mu", "lambda"]
LADDER_RATIO = 3.0  # neighbouring ladder weights (tradeoff mode): fine enough for 0.05-0.5


@dataclass
class Candidate:
    """One evaluated weight (a magnitude) and what the rules made of it."""

    weight: float
    s: float
    u: float
    accepted: bool  # acceptable under the mode's rules
    rule: str | None  # the rule that accepted it (forget_fraction | tradeoff | utility_recovery)
    objective: float = 0.0  # the combined objective J (see the module docstring)
    feasible: bool = True  # u above the per-step floor (forget weights, tradeoff mode)
    s_ci: list[float] | None = None
    u_ci: list[float] | None = None
    chosen: bool = False
    # Rejected on part of its utility prompts (``early_reject_confidence``): its forget score
    # was not measured (``s`` is then the step start's, crediting no forgetting, and the
    # record says None); ``prompts`` = evaluation prompts it cost.
    decided_early: bool = False
    prompts: int | None = None

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        if self.decided_early:
            record["s"] = record["s_ci"] = None
        return record


@dataclass
class SearchResult:
    """The weight picked, its scores, why it was picked, and every candidate tried."""

    weight: float
    s: float
    u: float
    reason: str  # forget_fraction | tradeoff | utility_recovery | none_acceptable | ...
    candidates: list[Candidate] = field(default_factory=list)


@dataclass(frozen=True)
class Start:
    """What a weight is judged against: scores at the step's start, the utility a retain weight
    must recover (``u_ref``), the base model's utility (the per-step floor's reference) and its
    forget score (``s_base``; None: the step's start, as for a step on the base model). The
    base scores are the objective's scales."""

    s: float
    u: float
    u_ref: float
    u_base: float
    s_base: float | None = None

    def objective(self, s: float, u: float) -> float:
        """A candidate's combined objective: forget drop and utility change from the step's
        start, each on the base model's scale, so candidates of every step are ranked as
        states are (``combined_objective`` from the base, plus a constant). On the step's own
        scale a step that starts at s = 0 (nothing left to forget on the search split) would
        see every weight that brings the target back as free."""
        s_scale = self.s if self.s_base is None else self.s_base
        return _relative(self.s - s, s_scale) + _relative(u - self.u, self.u_base)


def explicit_weight(weights: WeightsSpec, step: Step) -> float | None:
    """The spec's weight for ``step`` (a magnitude), or None when it is to be searched."""
    if step.objective == "ext_sub" and step.kind == "retain":
        return 1.0  # Ext-Sub adds its expert whole; only the deficiency's weight is tuned
    if step.objective == "abstain":
        return 1.0  # fitted to the model it is added to (release.rmu.abstain)
    if step.iteration == 0:
        return weights.lambda0 if step.kind == "retain" else weights.mu0
    given = weights.lambdas if step.kind == "retain" else weights.mus
    return None if given is None else given[step.iteration - 1]


def _relative(change: float, reference: float) -> float:
    """``change / reference``; 0 when there is nothing to compare with (reference 0)."""
    return change / reference if reference > 0 else 0.0


def combined_objective(s: float, u: float, s0: float, u0: float) -> float:
    """J = relative forget drop + relative utility change, both from (s0, u0)."""
    return _relative(s0 - s, s0) + _relative(u - u0, u0)


def utility_threshold(kind: Kind, start: Start, rules: RulesSpec) -> float | None:
    """The utility below which no weight of ``kind`` is acceptable, whatever it forgets: the
    per-step floor (mu, tradeoff mode) or the recovery target (lambda); None in paper mode's
    mu, whose rule reads the forget score alone."""
    if kind == "lambda":
        return rules.utility_recovery * start.u_ref
    return None if rules.mode == "paper" else rules.step_utility_floor * start.u_base


def judge(kind: Kind, s: float, u: float, start: Start, rules: RulesSpec) -> Candidate:
    """A candidate's verdict under ``rules`` (weight filled in by the caller)."""
    objective = start.objective(s, u)
    threshold = utility_threshold(kind, start, rules)
    if kind == "lambda":
        ok = u >= threshold  # type: ignore[operator]
        return Candidate(0.0, s, u, ok, "utility_recovery" if ok else None, objective)
    forgets = s <= (1.0 - rules.forget_fraction) * start.s
    if threshold is None:  # paper mode
        return Candidate(0.0, s, u, forgets, "forget_fraction" if forgets else None, objective)
    feasible = u >= threshold
    gain, loss = _relative(start.s - s, start.s), _relative(start.u - u, start.u)
    tradeoff = gain > 0 and gain > loss
    rule = "forget_fraction" if forgets else "tradeoff" if tradeoff else None
    return Candidate(0.0, s, u, feasible and rule is not None, rule if feasible else None,
                     objective, feasible)  # fmt: skip


def ladder(search: WeightSearchSpec, mode: str = "tradeoff") -> list[float]:
    """The ascending geometric ladder of the first search stage (see the module docstring)."""
    hi = search.max_weight
    if mode == "paper":
        n = max(1, math.ceil(search.budget / 2))
        lo = search.min_weight if search.min_weight > 0 else hi / 64
        if n == 1:
            return [_round(math.sqrt(lo * hi))]
        ratio = (hi / lo) ** (1.0 / (n - 1))
        return [*[_round(lo * ratio**i) for i in range(n - 1)], hi]
    n = max(1, search.budget - search.budget // 3)
    if n == 1:
        return [hi]
    if search.min_weight > 0:
        ratio = (hi / search.min_weight) ** (1.0 / (n - 1))
        return [*[_round(search.min_weight * ratio**i) for i in range(n - 1)], hi]
    return [*[_round(hi / LADDER_RATIO ** (n - 1 - i)) for i in range(n - 1)], hi]


def ladder_ratio(search: WeightSearchSpec, mode: str = "tradeoff") -> float | None:
    """The largest ratio between neighbouring ladder weights (None for a one-point ladder)."""
    points = ladder(search, mode)
    return max((b / a for a, b in zip(points, points[1:], strict=False)), default=None)


def _round(weight: float) -> float:
    """Six significant digits: readable weights in records (0.5, not 0.49999999999999994)."""
    return float(f"{weight:.6g}")


def _midpoint(lo: float, hi: float) -> float:
    return _round(math.sqrt(lo * hi) if lo > 0 else (lo + hi) / 2)


def _measured(value: Any) -> tuple[float, float, Interval, Interval]:
    if isinstance(value, tuple):
        return float(value[0]), float(value[1]), None, None
    return float(value.s), float(value.u), value.s_ci, value.u_ci


def search_weight(
    kind: Kind,
    evaluate: Evaluate,
    start: Start,
    search: WeightSearchSpec,
    rules: RulesSpec,
    progress: Callable[[Candidate], None] | None = None,
) -> SearchResult:
    """Search one weight (``kind`` mu or lambda) within ``search.budget`` evaluations."""
    tried: dict[float, Candidate] = {}

    def trial(weight: float) -> Candidate:
        if weight not in tried:
            measured = evaluate(weight)
            s, u, s_ci, u_ci = _measured(measured)
            early = bool(getattr(measured, "decided_early", False))
            cand = judge(kind, start.s if early else s, u, start, rules)
            cand.weight = weight
            cand.s_ci = list(s_ci) if s_ci else None
            cand.u_ci = list(u_ci) if u_ci else None
            cand.decided_early = early
            cand.prompts = getattr(measured, "prompts", None)
            tried[weight] = cand
            if progress is not None:
                progress(cand)
        return tried[weight]

    if rules.mode == "paper":
        _paper_search(kind, trial, tried, search)
    else:
        for weight in ladder(search):
            trial(weight)
        _refine(kind, trial, tried, search)
    candidates = sorted(tried.values(), key=lambda c: c.weight)
    chosen, reason = (_paper_select if rules.mode == "paper" else _select)(kind, candidates, start)
    chosen.chosen = True
    return SearchResult(chosen.weight, chosen.s, chosen.u, reason, candidates)


def _rank(kind: Kind, cand: Candidate) -> tuple[bool, float, float]:
    """Best first when sorted descending: acceptable, then J (lambda with none acceptable:
    utility), then the smaller weight."""
    fallback = cand.objective if cand.accepted or kind == "mu" else cand.u
    return (cand.accepted, fallback, -cand.weight)


def _refine(
    kind: Kind, trial: Callable[[float], Candidate], tried: dict[float, Candidate],
    search: WeightSearchSpec,
) -> None:  # fmt: skip
    """Spend the rest of the budget bisecting next to the best candidate, on the side of its
    better neighbour first (the other side when that interval is used up). A forget weight
    with nothing acceptable yet bisects the feasibility edge instead (``_edge``)."""
    floor = search.min_weight
    while len(tried) < search.budget:
        edge = _edge(tried) if kind == "mu" else None
        if edge is not None:
            trial(edge)
            continue
        weights = sorted(tried)
        best = max(tried.values(), key=lambda c: _rank(kind, c)).weight
        i = weights.index(best)
        lower = weights[i - 1] if i > 0 else floor
        upper = weights[i + 1] if i + 1 < len(weights) else None
        sides = []
        if lower < best:
            sides.append((lower, _rank(kind, tried[lower]) if lower in tried else None))
        if upper is not None:
            sides.append((upper, _rank(kind, tried[upper])))
        # Better neighbour first; the untried lower end (min_weight) first of all: the best
        # is then the smallest rung, so the optimum may lie below it.
        sides.sort(key=lambda side: (side[1] is None, side[1] or ()), reverse=True)
        for neighbour, _ in sides:
            mid = _midpoint(min(best, neighbour), max(best, neighbour))
            if mid not in tried and min(best, neighbour) < mid < max(best, neighbour):
                trial(mid)
                break
        else:
            return  # both intervals are as fine as six digits allow


def _edge(tried: dict[float, Candidate]) -> float | None:
    """With no forget weight acceptable and a feasible weight below an infeasible one, the
    midpoint of that interval: weights too small change nothing and too large wreck utility,
    so forgetting, if any, appears between the two (measured on the demo with labelled retain
    data: 0.333 changed nothing, 1.0 took utility to 0; bisecting next to the "best", the
    no-change 0.111, spent the budget below it). None when there is nothing to bisect."""
    if any(c.accepted for c in tried.values()):
        return None
    weights = sorted(tried)
    for low, high in zip(weights, weights[1:], strict=False):
        if tried[low].feasible and not tried[high].feasible:
            mid = _midpoint(low, high)
            return mid if mid not in tried and low < mid < high else None
    return None


def _select(kind: Kind, candidates: list[Candidate], start: Start) -> tuple[Candidate, str]:
    """Tradeoff mode (see the module docstring)."""
    accepted = [c for c in candidates if c.accepted]
    if accepted:
        best = max(accepted, key=lambda c: _rank(kind, c))
        return best, str(best.rule)
    if kind == "mu":
        return candidates[0], "none_acceptable"
    return max(candidates, key=lambda c: (c.u, -c.weight)), "highest_utility"


def _paper_search(
    kind: Kind, trial: Callable[[float], Candidate], tried: dict[float, Candidate],
    search: WeightSearchSpec,
) -> None:  # fmt: skip
    rejected_below = search.min_weight  # weight known (or assumed) to be rejected
    accepted_at: float | None = None
    for weight in ladder(search, "paper"):
        if len(tried) >= search.budget:
            break
        if trial(weight).accepted:
            accepted_at = weight
            break
        rejected_below = weight
    if accepted_at is None:
        return
    lo, hi = rejected_below, accepted_at
    while len(tried) < search.budget:
        mid = _midpoint(lo, hi)
        if mid in tried or not lo < mid < hi:
            break
        if trial(mid).accepted:
            hi = mid
        else:
            lo = mid


def _paper_select(kind: Kind, candidates: list[Candidate], start: Start) -> tuple[Candidate, str]:
    """The paper's literal rules (see the module docstring)."""
    accepted = [c for c in candidates if c.accepted]
    if accepted:
        return accepted[0], str(accepted[0].rule)
    if kind == "mu":
        tradeoff = [c for c in candidates if (start.s - c.s) > (start.u - c.u)]
        if tradeoff:
            # max() keeps the first of equal drops, i.e. the smaller weight.
            return max(tradeoff, key=lambda c: start.s - c.s), "tradeoff_raw"
        return candidates[0], "smallest"
    return max(candidates, key=lambda c: c.u), "highest_utility"

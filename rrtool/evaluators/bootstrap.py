"""95% bootstrap confidence intervals for evaluation metrics, and paired changes.

**What is resampled.** An evaluation's *units*, the things that were drawn independently
from the data: NER passages (a passage's queries move together), prompts (all samples of a
prompt move together), GSM8K questions, perplexity windows. A replicate draws ``n`` units
with replacement from the ``n`` evaluated ones and recomputes the evaluation's metrics on
them exactly as the evaluator defines them (the oracle's own ``aggregate``, the perplexity
ratios, ...); nothing is generated or scored again.

**Interval.** The percentile method: the ``(1 - level) / 2`` and ``1 - (1 - level) / 2``
quantiles (linear interpolation between order statistics) of the replicate values, with
``REPLICATES = 1000`` replicates and ``LEVEL = 0.95``. A metric a replicate lacks (e.g. a
subset no resampled unit belongs to) or gets as NaN is skipped for that replicate; a metric
present in fewer than half the replicates gets no interval. With fewer than 2 units there
is no interval at all: one unit carries no estimate of its own uncertainty.

**Seed.** The resampled indices depend only on ``(number of units, replicates, seed)``
(``random.Random(seed)``), never on the data, so a rerun gives the same intervals.

**Why the replicates are kept.** Before and after unlearning are evaluated on the *same*
units. With the same seed and the same number of units, replicate ``b`` of both evaluations
uses the same resampled indices, so ``after_b - before_b`` is a replicate of the change
measured on one resample of the units: :func:`paired_change` turns those into an interval
for the change. Unit-to-unit variation (easy and hard passages) cancels in the difference,
so the paired interval is much narrower than the two separate intervals suggest, and is the
right one to judge whether a change is real. Replicate values are rounded to 6 significant
digits to keep records small.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

REPLICATES = 1000
LEVEL = 0.95

T = TypeVar("T")


@dataclass(frozen=True)
class Bootstrap:
    """Percentile intervals per metric, and each metric's value in every replicate."""

    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    replicates: dict[str, list[float]] = field(default_factory=dict)


def resample_indices(n_units: int, replicates: int, seed: int) -> list[list[int]]:
    """``replicates`` lists of ``n_units`` indices in ``range(n_units)``, drawn with
    replacement; the same arguments always give the same lists."""
    if n_units < 0 or replicates < 0:
        raise ValueError(
            f"bootstrap: n_units and replicates must be >= 0 ({n_units}, {replicates})"
        )
    rng = random.Random(seed)
    population = range(n_units)
    return [rng.choices(population, k=n_units) for _ in range(replicates)]


def _quantile(ordered: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile of sorted values (numpy's default, type 7)."""
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _percentile_interval(values: Sequence[float], level: float) -> tuple[float, float]:
    ordered = sorted(values)
    tail = (1.0 - level) / 2.0
    return _quantile(ordered, tail), _quantile(ordered, 1.0 - tail)


def _round(value: float) -> float:
    return float(f"{value:.6g}") if math.isfinite(value) else value


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def bootstrap(
    units: Sequence[T],
    statistic: Callable[[Sequence[T]], Mapping[str, float]],
    *,
    replicates: int = REPLICATES,
    seed: int = 0,
    level: float = LEVEL,
) -> Bootstrap:
    """Percentile bootstrap of every metric ``statistic(units)`` returns (see module doc).

    ``statistic`` is called once on ``units`` (which metrics exist) and once per replicate
    on a resampled list of units. Fewer than 2 units give an empty :class:`Bootstrap`.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"bootstrap: level must be in (0, 1) (got {level})")
    if len(units) < 2 or replicates < 1:
        return Bootstrap()
    names = list(statistic(units))
    values: dict[str, list[float]] = {name: [] for name in names}
    for indices in resample_indices(len(units), replicates, seed):
        result = statistic([units[i] for i in indices])
        for name in names:
            value = result.get(name)
            values[name].append(float(value) if _finite(value) else math.nan)
    intervals: dict[str, tuple[float, float]] = {}
    for name in names:
        finite = [v for v in values[name] if math.isfinite(v)]
        if finite and 2 * len(finite) >= replicates:
            intervals[name] = _percentile_interval(finite, level)
    return Bootstrap(intervals, {name: [_round(v) for v in values[name]] for name in names})


def upper_bound(replicates: Sequence[float | None], alpha: float) -> float | None:
    """One-sided ``1 - alpha`` percentile upper bound of a metric from its replicates (None
    when fewer than half of them are finite, as for intervals)."""
    finite = sorted(v for v in replicates if _finite(v))
    if not finite or 2 * len(finite) < len(replicates):
        return None
    return _quantile(finite, 1.0 - alpha)


def lower_bound(replicates: Sequence[float | None], alpha: float) -> float | None:
    """One-sided ``1 - alpha`` percentile lower bound (see :func:`upper_bound`)."""
    finite = sorted(v for v in replicates if _finite(v))
    if not finite or 2 * len(finite) < len(replicates):
        return None
    return _quantile(finite, alpha)


def paired_change(
    before: Sequence[float | None], after: Sequence[float | None], level: float = LEVEL
) -> tuple[float, float] | None:
    """Percentile interval of ``after_b - before_b`` over the replicates where both are
    finite (``None`` and NaN are missing).

    ``before`` and ``after`` must be the replicates of one metric from two evaluations of
    the same units with the same seed. ``None`` when their lengths differ (they cannot be
    paired) or fewer than half the replicates have both values.
    """
    if len(before) != len(after) or not before:
        return None
    diffs = [a - b for b, a in zip(before, after, strict=True) if _finite(b) and _finite(a)]
    if not diffs or 2 * len(diffs) < len(before):
        return None
    return _percentile_interval(diffs, level)


def interval_text(value: float, interval: Sequence[float] | None) -> str:
    """``"0.364 [0.251, 0.470]"`` for reports (3 significant digits); the bare value when
    there is no interval."""
    if not interval:
        return f"{value:.3g}"
    low, high = interval
    return f"{value:.3g} [{low:.3g}, {high:.3g}]"

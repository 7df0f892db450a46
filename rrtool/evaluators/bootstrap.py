"""95% bootstrap confidence intervals for evaluation metrics, and paired changes.

**What is resampled.** An evaluation's *units*, the things that were drawn independently
from the data: NER passages (a passage's queries move together), prompts (all samples of a
prompt move together), GSM8K questions, perplexity windows. A replicate draws ``n`` units
with replacement from the ``n`` evaluated ones and recomputes the evaluation's metrics on
them exactly as the evaluator defines them (the oracle's own ``aggregate``, the perplexity
ratios, ...); nothing is generated or scored again.

**Interval of a metric: BCa.** The bias-corrected and accelerated percentile interval (Efron
1987; DiCiccio & Efron 1996), from ``REPLICATES = 1000`` replicates at ``LEVEL = 0.95``: the
replicate quantiles (linear interpolation between order statistics) at the levels
``Φ(z0 + (z0 + z) / (1 - a (z0 + z)))`` for ``z = Φ⁻¹((1 ± level) / 2)``. The bias correction
``z0 = Φ⁻¹(share of replicates below the metric on all units)`` counts a replicate equal to it
as half below (proportions on 16-60 units tie often; counting ties as "not below", as
``scipy.stats.bootstrap`` does, pulls the interval down a step: it covered a rate of 0.7 on
16 units in 92% of simulated datasets, against 96%); the acceleration ``a``
is the skewness of the jackknife (each unit left out once; for more than
``JACKKNIFE_GROUPS`` units, that many interleaved groups) over 6. The plain percentile
interval is too narrow or off-centre for proportions near 0 or 1 on few units (see
``benchmarks/interval_coverage.py`` for the measured coverage). Where BCa is undefined the
interval falls back, and :attr:`Bootstrap.methods` says which was used: ``"BC"`` (no
acceleration: a jackknife value was missing or NaN) or ``"percentile"`` (the metric on all
units is NaN, lies outside every replicate, or the acceleration is too large for the
formula). A metric a replicate lacks (e.g. a subset no resampled unit belongs to) or gets
as NaN is skipped for that replicate; a metric present in fewer than half the replicates
gets no interval. With fewer than 2 units there is no interval at all: one unit carries no
estimate of its own uncertainty. A metric with the same value in every replicate (no
variation between units) gets the point itself as its interval.

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

**Interval of a change: expanded BC.** Given the change measured on all units, the paired
interval is bias-corrected (``z0`` as above) without acceleration, at a level widened for
the number of units ``n`` as in Hesterberg's expanded percentile interval (2015):
``2 Φ(√(n / (n - 1)) t[n - 1]) - 1`` with ``t[n - 1]`` the ``(1 + level) / 2`` quantile of
Student's t on ``n - 1`` degrees of freedom (0.972 for 16 units, 0.960 for 40, 0.954 for
100). The acceleration is left out on purpose: with no change and few units that change
(a difference that is 0 on most units), its jackknife estimate is the skewness of a handful
of +1 and -1 values, and BCa's interval of no change missed 0 in up to 10% of simulated
datasets (40 units), the false "forgotten" a verdict must not give; the expanded BC interval
covered the true change in at least 95% of the datasets of every simulated case, the
plain percentile one in as few as 88% (16 units, a rate falling from 0.3 to 0.1; see
``benchmarks/interval_coverage.py``). Without the change the interval is the plain
percentile one, without the number of units it is not expanded; :func:`paired_interval`
names the method.

One-sided bounds (:func:`upper_bound`, :func:`lower_bound`, the release gate's early
rejection) are still plain percentile bounds of the replicates.
"""

from __future__ import annotations

import math
import operator
import random
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import chain
from statistics import NormalDist
from typing import NamedTuple, TypeVar

REPLICATES = 1000
LEVEL = 0.95
JACKKNIFE_GROUPS = 100
"""Units left out one at a time for the acceleration; beyond this many, interleaved groups."""

T = TypeVar("T")
_NORMAL = NormalDist()


class Interval(NamedTuple):
    """An interval and the method that gave it (``"BCa"``, ``"BC"``, ``"percentile"``, with
    ``"expanded "`` in front where the level was widened for the number of units)."""

    low: float
    high: float
    method: str


@dataclass(frozen=True)
class Bootstrap:
    """Intervals per metric, each metric's value in every replicate, the method of each
    interval (``"BCa"`` unless it fell back, see the module doc) and the number of units."""

    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    replicates: dict[str, list[float]] = field(default_factory=dict)
    methods: dict[str, str] = field(default_factory=dict)
    units: int = 0


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
    position = min(max(q, 0.0), 1.0) * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _percentile_interval(
    values: Sequence[float], level: float, ordered: bool = False
) -> tuple[float, float]:
    values = values if ordered else sorted(values)
    tail = (1.0 - level) / 2.0
    return _quantile(values, tail), _quantile(values, 1.0 - tail)


def _round(value: float) -> float:
    return float(f"{value:.6g}") if math.isfinite(value) else value


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _t_central(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t on ``df`` degrees of freedom (Abramowitz & Stegun 26.7.3-4)."""
    theta = math.atan(t / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df == 1:
        return 2.0 * theta / math.pi
    term = 1.0 if df % 2 == 0 else math.cos(theta)
    total = term
    for k in range(2 if df % 2 == 0 else 3, df - 1, 2):
        term *= c2 * (k - 1) / k
        total += term
    return s * total if df % 2 == 0 else 2.0 / math.pi * (theta + s * total)


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile (``p`` in [0.5, 1)) of Student's t on ``df`` >= 1 degrees of freedom:
    bisection on the exact distribution up to 200 degrees of freedom, the Cornish-Fisher
    expansion (A&S 26.7.5, error below 1e-9 there) beyond."""
    if not 0.5 <= p < 1.0 or df < 1:
        raise ValueError(f"t_quantile: needs 0.5 <= p < 1 and df >= 1 (got {p}, {df})")
    if df > 200:
        z = _NORMAL.inv_cdf(p)
        g1 = (z**3 + z) / 4
        g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
        g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
        g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
        return z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4
    central = 2.0 * p - 1.0
    low, high = 0.0, 1.0
    while _t_central(high, df) < central:
        low, high = high, 2.0 * high
    for _ in range(200):
        middle = (low + high) / 2.0
        if middle in (low, high):
            break
        low, high = (middle, high) if _t_central(middle, df) < central else (low, middle)
    return (low + high) / 2.0


@lru_cache(maxsize=256)
def expanded_level(level: float, units: int) -> float:
    """The level at which a normal-theory interval on ``units`` units is as wide as the
    Student's t one with the unbiased variance: ``2 Φ(√(n / (n - 1)) t[n - 1]) - 1``
    (Hesterberg 2015's expanded percentile interval). ``level`` itself below 2 units."""
    if units < 2:
        return level
    t = t_quantile((1.0 + level) / 2.0, units - 1)
    return 2.0 * _NORMAL.cdf(math.sqrt(units / (units - 1)) * t) - 1.0


def _acceleration(jackknife: Sequence[float] | None) -> float | None:
    """BCa's acceleration from leave-one-out values (None when one is missing or NaN)."""
    if jackknife is None or len(jackknife) < 2 or not all(_finite(v) for v in jackknife):
        return None
    centre = math.fsum(jackknife) / len(jackknife)
    d = [centre - v for v in jackknife]
    spread = math.fsum(x * x for x in d)
    # Values equal but for rounding carry no skewness (the ratio below would be noise).
    if math.sqrt(spread / len(d)) <= 1e-12 * max(abs(centre), max(abs(x) for x in d)):
        return 0.0
    return math.fsum(x**3 for x in d) / (6.0 * spread**1.5)


def _interval(
    values: Sequence[float],
    level: float,
    point: float | None = None,
    acceleration: float | None = None,
    units: int | None = None,
    tie: float | None = None,
) -> Interval:
    """The interval of finite replicate ``values``: BCa with ``point`` (the statistic on all
    units) and ``acceleration``, BC with ``point`` alone, percentile without; at the expanded
    level when ``units`` is given. A replicate within ``tie`` of ``point`` equals it (by
    default 1e-9 of the values' scale: a resample of the same units, summed in another
    order, may differ from it in the last bits)."""
    ordered = sorted(values)
    expand = units is not None and units >= 2
    used = expanded_level(level, units) if expand else level  # type: ignore[arg-type]
    prefix = "expanded " if expand else ""
    fallback = Interval(*_percentile_interval(ordered, used, True), f"{prefix}percentile")
    if point is None or not math.isfinite(point):
        return fallback
    if tie is None:
        tie = 1e-9 * max(abs(ordered[0]), abs(ordered[-1]), abs(point))
    below = bisect_left(ordered, point - tie)
    equal = bisect_right(ordered, point + tie) - below
    if equal == len(ordered):  # no variation: the interval is the point
        return Interval(point, point, f"{prefix}{'BC' if acceleration is None else 'BCa'}")
    share = (below + equal / 2.0) / len(ordered)
    if not 0.0 < share < 1.0:
        return fallback
    z0 = _NORMAL.inv_cdf(share)
    a = 0.0 if acceleration is None else acceleration
    tail = max((1.0 - used) / 2.0, 1e-15)  # 2 units expand to a level of 1 - 1e-16
    levels = []
    for z in (_NORMAL.inv_cdf(tail), _NORMAL.inv_cdf(1.0 - tail)):
        denominator = 1.0 - a * (z0 + z)
        if denominator <= 0.0:
            return fallback
        levels.append(_NORMAL.cdf(z0 + (z0 + z) / denominator))
    method = "BC" if acceleration is None else "BCa"
    return Interval(_quantile(ordered, levels[0]), _quantile(ordered, levels[1]), prefix + method)


def bca_interval(
    replicates: Sequence[float | None],
    point: float,
    jackknife: Sequence[float] | None = None,
    level: float = LEVEL,
) -> Interval | None:
    """BCa interval of a metric from its bootstrap ``replicates`` (``None`` and NaN skipped),
    its value ``point`` on all units and its leave-one-out ``jackknife`` values (see the
    module doc; BC without them, percentile where BCa is undefined). None when fewer than
    half the replicates are finite."""
    finite = [float(v) for v in replicates if _finite(v)]  # type: ignore[arg-type]
    if not finite or 2 * len(finite) < len(replicates):
        return None
    return _interval(finite, level, point, _acceleration(jackknife))


def _jackknife(
    units: Sequence[T],
    statistic: Callable[[Sequence[T]], Mapping[str, float]],
    names: Sequence[str],
) -> dict[str, list[float]]:
    """Each metric on the units without one unit (or one interleaved group of them, for more
    than ``JACKKNIFE_GROUPS`` units); NaN where that leaves the metric missing."""
    n = len(units)
    groups = min(n, JACKKNIFE_GROUPS)
    values: dict[str, list[float]] = {name: [] for name in names}
    for left_out in range(groups):
        result = statistic([units[i] for i in range(n) if i % groups != left_out])
        for name in names:
            value = result.get(name)
            values[name].append(float(value) if _finite(value) else math.nan)
    return values


def bootstrap(
    units: Sequence[T],
    statistic: Callable[[Sequence[T]], Mapping[str, float]],
    *,
    replicates: int = REPLICATES,
    seed: int = 0,
    level: float = LEVEL,
) -> Bootstrap:
    """BCa bootstrap of every metric ``statistic(units)`` returns (see module doc).

    ``statistic`` is called once on ``units`` (which metrics exist, and their values), once
    per replicate on a resampled list of units, and once per unit (at most
    ``JACKKNIFE_GROUPS`` times) on the units less one, for the acceleration. Fewer than 2
    units give an empty :class:`Bootstrap`.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"bootstrap: level must be in (0, 1) (got {level})")
    if len(units) < 2 or replicates < 1:
        return Bootstrap()
    full = statistic(units)
    names = list(full)
    values: dict[str, list[float]] = {name: [] for name in names}
    for indices in resample_indices(len(units), replicates, seed):
        result = statistic([units[i] for i in indices])
        for name in names:
            value = result.get(name)
            values[name].append(float(value) if _finite(value) else math.nan)
    intervals: dict[str, tuple[float, float]] = {}
    methods: dict[str, str] = {}
    jackknife: dict[str, list[float]] | None = None
    for name in names:
        finite = [v for v in values[name] if math.isfinite(v)]
        if not finite or 2 * len(finite) < replicates:
            continue
        if jackknife is None:
            jackknife = _jackknife(units, statistic, names)
        point = full[name]
        found = _interval(
            finite,
            level,
            float(point) if _finite(point) else None,
            _acceleration(jackknife[name]),
        )
        intervals[name] = (found.low, found.high)
        methods[name] = found.method
    return Bootstrap(
        intervals,
        {name: [_round(v) for v in values[name]] for name in names},
        methods,
        len(units),
    )


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


def paired_interval(
    before: Sequence[float | None],
    after: Sequence[float | None],
    level: float = LEVEL,
    *,
    change: float | None = None,
    units: int | None = None,
) -> Interval | None:
    """Interval of ``after_b - before_b`` over the replicates where both are finite (``None``
    and NaN are missing), with its method: bias-corrected towards ``change`` (the change
    measured on all units) and at the level expanded for ``units`` units, where given (see
    the module doc); plain percentile without them.

    ``before`` and ``after`` must be the replicates of one metric from two evaluations of
    the same units with the same seed. ``None`` when their lengths differ (they cannot be
    paired) or fewer than half the replicates have both values.
    """
    if len(before) != len(after) or not before:
        return None
    total = len(before)
    if None in before or None in after:  # a record keeps a missing value as None
        kept = [
            (b, a) for b, a in zip(before, after, strict=True) if b is not None and a is not None
        ]
        before, after = [b for b, _ in kept], [a for _, a in kept]
    # NaN or inf on either side makes the difference NaN or inf: that replicate is missing.
    diffs = [d for d in map(operator.sub, after, before) if d - d == 0.0]
    if not diffs or 2 * len(diffs) < total:
        return None
    values = [v for v in chain(before, after) if v - v == 0.0]  # type: ignore[operator]
    # Replicates are rounded to 6 significant digits (a relative error up to 5e-6): a
    # difference closer to the change than 1e-5 of the largest value ties with it.
    tie = 1e-5 * max(max(values), -min(values))
    point = change if change is not None and math.isfinite(change) else None
    return _interval(diffs, level, point, None, units, tie)


def paired_change(
    before: Sequence[float | None],
    after: Sequence[float | None],
    level: float = LEVEL,
    *,
    change: float | None = None,
    units: int | None = None,
) -> tuple[float, float] | None:
    """:func:`paired_interval` without the method's name."""
    found = paired_interval(before, after, level, change=change, units=units)
    return None if found is None else (found.low, found.high)


def interval_text(value: float, interval: Sequence[float] | None) -> str:
    """``"0.364 [0.251, 0.470]"`` for reports (3 significant digits); the bare value when
    there is no interval."""
    if not interval:
        return f"{value:.3g}"
    low, high = interval
    return f"{value:.3g} [{low:.3g}, {high:.3g}]"

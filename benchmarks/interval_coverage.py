"""Coverage of rrtool's 95% bootstrap intervals on the project's own cases.

Every verdict rests on a bootstrap over 16-100 units (:mod:`rrtool.evaluators.bootstrap`).
This script draws many datasets from a known truth, computes each interval the way rrtool
does, and counts the share that covers the truth, for

- a proportion (the headline rates: a unit answers right / names the entity or not), Bernoulli
  ``p`` in {0.1, 0.3, 0.7}, on ``n`` in {16, 40, 100} units;
- a paired change of a proportion (the verdicts' interval): each unit is scored before and
  after, ``after`` reusing ``before``'s latent uniform draw with probability ``rho`` (their
  correlation is ``rho`` when the two rates are equal), for no change, forgetting and
  partial forgetting.

Methods: ``percentile`` (what rrtool did before BCa, for both), ``BC`` (bias-corrected),
``BCa`` (bias-corrected and accelerated, jackknife acceleration), ``expanded BC`` (BC at the
level widened for the number of units); ``rrtool`` is what rrtool uses now (``BCa`` for a
metric, ``expanded BC`` for a change).

The bootstrap is rrtool's own: the resampled indices of :func:`resample_indices` for the
seed, replicate means computed exactly as ``bootstrap`` computes them for 0/1 units (a count
matrix product, exact for integers), replicates rounded to 6 digits as recorded, and the
interval functions of :mod:`rrtool.evaluators.bootstrap`. Units are sorted before
resampling, so datasets with the same counts have the same intervals and are bootstrapped
once (the resampling noise of 1000 replicates is small next to the dataset-to-dataset
variation this measures). An endpoint within 1e-9 of the truth covers it.

    python benchmarks/interval_coverage.py [--datasets 4000] [--replicates 1000] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from rrtool.evaluators.bootstrap import (
    _percentile_interval,
    _round,
    bca_interval,
    paired_interval,
    resample_indices,
)

LEVEL = 0.95
TOUCH = 1e-9  # an endpoint this close to the truth covers it (float noise in p_after - p_before)


@dataclass(frozen=True)
class Case:
    """A proportion ``p_after`` on ``n`` units, or (``paired``) its change from ``p_before``."""

    name: str
    n: int
    p_after: float
    p_before: float | None = None  # None: a single proportion
    rho: float = 0.0

    @property
    def paired(self) -> bool:
        return self.p_before is not None

    @property
    def truth(self) -> float:
        return self.p_after - (self.p_before or 0.0)


def cases(sizes: Sequence[int] = (16, 40, 100)) -> list[Case]:
    out = []
    for n in sizes:
        out += [Case(f"proportion p={p}", n, p) for p in (0.1, 0.3, 0.7)]
        out += [
            Case("change 0.3->0.3 (none), rho=0.8", n, 0.3, 0.3, 0.8),
            Case("change 0.1->0.1 (none), rho=0.5", n, 0.1, 0.1, 0.5),
            Case("change 0.7->0.3 (forgetting), rho=0.5", n, 0.3, 0.7, 0.5),
            Case("change 0.3->0.1 (partial), rho=0.8", n, 0.1, 0.3, 0.8),
        ]
    return out


def count_matrix(n: int, replicates: int, seed: int = 0) -> np.ndarray:
    """How often each unit is drawn in each replicate (rrtool's resampled indices)."""
    counts = np.zeros((replicates, n))  # float: products are exact and use BLAS
    for b, indices in enumerate(resample_indices(n, replicates, seed)):
        np.add.at(counts[b], indices, 1.0)
    return counts


Interval = tuple[float, float] | None
# (replicates, value on all units, leave-one-out values) -> interval, for a metric
HEADLINE: dict[str, Callable[[list[float], float, list[float]], Interval]] = {
    "percentile": lambda reps, point, jack: _percentile_interval(reps, LEVEL),  # as before
    "BC": lambda reps, point, jack: bca_interval(reps, point, None, LEVEL),
    "BCa": lambda reps, point, jack: bca_interval(reps, point, jack, LEVEL),
}
HEADLINE["rrtool"] = HEADLINE["BCa"]


def _diff_bca(
    before: list[float], after: list[float], change: float, jack: list[float]
) -> Interval:
    return bca_interval([a - b for b, a in zip(before, after, strict=True)], change, jack, LEVEL)


# (before replicates, after replicates, change on all units, its leave-one-out values, units)
PAIRED: dict[str, Callable[[list[float], list[float], float, list[float], int], Interval]] = {
    "percentile": lambda b, a, change, jack, n: paired_interval(b, a, LEVEL),
    "BC": lambda b, a, change, jack, n: paired_interval(b, a, LEVEL, change=change),
    "BCa": lambda b, a, change, jack, n: _diff_bca(b, a, change, jack),
    "expanded BC": lambda b, a, change, jack, n: paired_interval(
        b, a, LEVEL, change=change, units=n
    ),
}
PAIRED["rrtool"] = PAIRED["expanded BC"]


def _draw(case: Case, rng: np.random.Generator, datasets: int) -> np.ndarray:
    """Per dataset, the count of each kind of unit: (successes, failures), or for a change
    (00, 01, 10, 11) as before * 2 + after."""
    u = rng.random((datasets, case.n))
    if not case.paired:
        hits = (u < case.p_after).sum(axis=1, keepdims=True)
        return np.hstack([hits, case.n - hits])  # (successes, failures)
    v = np.where(rng.random(u.shape) < case.rho, u, rng.random(u.shape))
    kind = 2 * (u < case.p_before) + (v < case.p_after)  # before * 2 + after
    return np.stack([(kind == k).sum(axis=1) for k in range(4)], axis=1)


def intervals(
    case: Case, kinds: np.ndarray, counts: np.ndarray, methods: Sequence[str]
) -> dict[str, Interval]:
    """Each method's interval for one dataset: ``kinds`` gives each unit's kind (see
    :func:`_draw`), ``counts`` the resampling (:func:`count_matrix`). The same intervals as
    ``bootstrap`` with the mean as statistic (and :func:`paired_interval` of two such
    bootstraps, given the change and the number of units) on the same units and seed."""
    n = case.n
    table = np.array([_round(k / n) for k in range(n + 1)])  # a mean k / n as recorded
    if case.paired:
        before, after = (kinds >= 2).astype(float), (kinds % 2).astype(float)
        rb = table[(counts @ before).astype(np.int64)].tolist()
        ra = table[(counts @ after).astype(np.int64)].tolist()
        change = after.sum() / n - before.sum() / n
        d = after - before
        jack = ((d.sum() - d) / (n - 1)).tolist()
        return {m: PAIRED[m](rb, ra, change, jack, n) for m in methods}
    x = (kinds == 0).astype(float)  # kind 0: a success
    reps = ((counts @ x) / n).tolist()
    jack = ((x.sum() - x) / (n - 1)).tolist()
    return {m: HEADLINE[m](reps, x.sum() / n, jack) for m in methods}


def coverage(
    case: Case,
    datasets: int,
    replicates: int,
    methods: Sequence[str],
    *,
    orders: int | None = None,
    seed: int = 0,
    data_seed: int = 1,
    counts: np.ndarray | None = None,
) -> dict[str, float]:
    """Share of ``datasets`` simulated datasets whose interval by each method covers the truth.

    A dataset is its count of each kind of unit (see :func:`_draw`) laid out in one of
    ``orders`` random orders of the units (all different when None), and is bootstrapped with
    rrtool's resampled indices for ``seed``: datasets with the same counts and order share
    their intervals, which are computed once. Fewer orders make this faster and tie the
    resampling noise of datasets with the same counts together.
    """
    n = case.n
    counts = count_matrix(n, replicates, seed) if counts is None else counts
    rng = np.random.default_rng(data_seed)
    drawn = _draw(case, rng, datasets)
    layout = rng.integers(datasets if orders is None else orders, size=(datasets, 1))
    permutations: dict[int, np.ndarray] = {}
    covered = dict.fromkeys(methods, 0)
    keys, times = np.unique(np.hstack([drawn, layout]), axis=0, return_counts=True)
    for key, weight in zip(keys.tolist(), times.tolist(), strict=True):
        *signature, order = key
        if order not in permutations:
            permutations[order] = np.random.default_rng([data_seed, order]).permutation(n)
        kinds = np.repeat(np.arange(len(signature)), signature)[permutations[order]]
        for method, interval in intervals(case, kinds, counts, methods).items():
            if interval is not None and interval[0] - TOUCH <= case.truth <= interval[1] + TOUCH:
                covered[method] += weight
    return {method: hits / datasets for method, hits in covered.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=int, default=4000, help="simulated datasets per case")
    parser.add_argument("--replicates", type=int, default=1000, help="bootstrap replicates")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--data-seed", type=int, default=1, help="seed of the simulated data")
    parser.add_argument("--out", help="write the results as JSON to this file")
    args = parser.parse_args(argv)
    methods = ["percentile", "BC", "BCa", "expanded BC", "rrtool"]
    se = math.sqrt(LEVEL * (1 - LEVEL) / args.datasets)
    print(
        f"95% interval coverage, {args.datasets} datasets per case (standard error about "
        f"{se:.3f} at 0.95), {args.replicates} replicates; rrtool = BCa for a proportion, "
        "expanded BC for a change"
    )
    header = f"{'case':<40} {'n':>4} " + " ".join(f"{m:>11}" for m in methods)
    print(header)
    print("-" * len(header))
    rows = []
    started = time.perf_counter()
    matrices: dict[int, np.ndarray] = {}
    for case in cases():
        if case.n not in matrices:
            matrices[case.n] = count_matrix(case.n, args.replicates, args.seed)
        used = methods if case.paired else [m for m in methods if m != "expanded BC"]
        found = coverage(
            case,
            args.datasets,
            args.replicates,
            used,
            seed=args.seed,
            data_seed=args.data_seed,
            counts=matrices[case.n],
        )
        rows.append({**asdict(case), "truth": case.truth, "coverage": found})
        cells = " ".join(f"{found[m]:>11.3f}" if m in found else f"{'-':>11}" for m in methods)
        print(f"{case.name:<40} {case.n:>4} {cells}")
    print(f"({time.perf_counter() - started:.0f} s)")
    if args.out:
        record = {
            "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": {
                "platform": platform.platform(),
                "processor": platform.processor() or platform.machine(),
                "python": platform.python_version(),
                "numpy": np.__version__,
                "cpus": os.cpu_count(),
            },
            "datasets": args.datasets,
            "replicates": args.replicates,
            "seed": args.seed,
            "data_seed": args.data_seed,
            "level": LEVEL,
            "standard_error": se,
            "rows": rows,
        }
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

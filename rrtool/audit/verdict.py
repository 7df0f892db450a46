"""The audit's summary: each measurement's headline before -> after, with its 95% intervals,
the paired interval of the change, where the data came from, and a plain verdict.

Verdicts (the headline's ``better`` direction decides what "improved" means):

- ``inside the noise``: the paired 95% interval of the change (same units, resampled together
  on both sides, bias-corrected towards the measured change and, where the records give the
  number of units, widened for it; ``rrtool.evaluators.bootstrap``, whose method the row's
  ``change_method`` names) contains 0;
- forget measure, improved: ``forgotten``, unless the answers degenerated at the same time:
  the share of empty or repetitive answers (``degenerate_rate``) rose by at least
  ``COLLAPSE_POINTS``, then ``format collapse`` (the score fell because the output stopped
  being answers, not because the target was removed);
- forget measure, worse: ``not forgotten (worse)``;
- utility, worse: ``utility lost``; improved: ``utility kept``;
- ``cannot show forgetting`` / ``cannot show a utility loss``: the base model's score sits at
  the end of the range the change would move towards, or its interval spans the range
  (``rrtool.evaluators.bounds``; ``limit`` says which), and the change is inside the noise or
  in the direction the measure has no room for (a clear change the other way keeps its verdict).

Without intervals (a measure that reports none, or a run recorded before they existed) the
verdict says so instead of guessing. A side measure (NER's strict F1 next to the robust
mention rate) gets the same treatment under ``also``, so a reader sees strict F1 fall while
the entity is still named, and the parse-failure rate that explains it; ``of`` names the
measurement a side metric comes from (the forget side's ``forget_leak_rate`` is scored on the
retained types' queries).
"""

from __future__ import annotations

from typing import Any

from rrtool.evaluators.bootstrap import paired_interval
from rrtool.evaluators.bounds import limit

COLLAPSE_POINTS = 0.10  # a 10-point rise in empty/repetitive answers is not forgetting
# Reported next to the headline where the measurement has them, as (measurement, metric): the
# forget side also reads the retained-type queries' leak rate (the forget type's entities named
# where another type is asked), which the retained types' measurement scores.
ALSO: dict[str, tuple[tuple[str, str], ...]] = {
    "forget": (
        ("forget", "macro_f1"),
        ("forget", "macro_robust_f1"),
        ("forget", "macro_partial_mention_rate"),
        ("forget", "parse_failure_rate"),
        ("forget", "echo_rate"),
        ("utility", "forget_leak_rate"),
    ),
    "utility": (("utility", "parse_failure_rate"),),
}
DEGENERATION = ("degenerate_rate", "empty_rate", "repetition_rate", "parse_failure_rate")


def replicate_metrics(key: str, headline: str) -> list[str]:
    """Metrics of measurement ``key`` whose bootstrap replicates the audit keeps (for paired
    intervals): its headline and every side metric read from it."""
    extra = [metric for rows in ALSO.values() for source, metric in rows if source == key]
    return list(dict.fromkeys([headline, *extra]))


def _metric(side: dict[str, Any], name: str) -> float | None:
    value = side.get("metrics", {}).get(name)
    return None if value is None or value != value else float(value)


def _interval(side: dict[str, Any], name: str) -> list[float] | None:
    found = side.get("intervals", {}).get(name)
    return [float(found[0]), float(found[1])] if found else None


def _units(before: dict[str, Any], after: dict[str, Any]) -> int | None:
    """The number of resampled units both evaluations record (``units``), or None."""
    b, a = before.get("units"), after.get("units")
    return b if isinstance(b, int) and b == a else None


def _change(
    before: dict[str, Any], after: dict[str, Any], name: str
) -> tuple[list[float] | None, str | None]:
    """The paired interval of the change of ``name`` and its method (None, None without)."""
    b = before.get("replicates", {}).get(name)
    a = after.get("replicates", {}).get(name)
    if not a or not b:
        return None, None
    vb, va = _metric(before, name), _metric(after, name)
    change = None if vb is None or va is None else va - vb
    found = paired_interval(b, a, change=change, units=_units(before, after))
    return (None, None) if found is None else ([float(found.low), float(found.high)], found.method)


def _row(before: dict[str, Any], after: dict[str, Any], name: str) -> dict[str, Any]:
    b, a = _metric(before, name), _metric(after, name)
    change_ci, change_method = _change(before, after, name)
    return {
        "metric": name,
        "before": b,
        "after": a,
        "before_ci": _interval(before, name),
        "after_ci": _interval(after, name),
        "change": None if a is None or b is None else a - b,
        "change_ci": change_ci,
        "change_method": change_method,
        "relative_change": None if a is None or b is None or b == 0 else (a - b) / abs(b),
    }


def shown(row: dict[str, Any]) -> str:
    """The verdict as the report and the console print it (with the limit's reason and the
    caveat, if any)."""
    text = row.get("verdict") or "–"
    text = f"{text} ({row['limit']})" if row.get("limit") else text
    return f"{text}; but {row['caveat']}" if row.get("caveat") else text


def caveat(key: str, row: dict[str, Any]) -> str | None:
    """What a "forgotten" verdict does not cover, where a side measure did not fall outside the
    noise with it: the entity still named in part (NER's ``macro_partial_mention_rate``), or
    where another type is asked (``forget_leak_rate``)."""
    if key != "forget" or row.get("verdict") != "forgotten":
        return None
    also = {a["metric"]: a for a in row.get("also", [])}
    found = []
    for metric, what in (
        ("macro_partial_mention_rate", "it is still named in part, by a word of the name"),
        ("forget_leak_rate", "it is still named where another type is asked"),
    ):
        side = also.get(metric)
        if side is None or not side["before"] or side["after"] is None:
            continue
        ci = side["change_ci"]
        if ci is not None and ci[1] < 0:
            continue  # it fell too, outside the noise
        how = "no interval" if ci is None else "inside the noise" if ci[0] <= 0 else "more often"
        found.append(
            f"{what} ({side['before']:.2f} -> {side['after']:.2f} of those answers, {how})"
        )
    return "; ".join(found) or None


def verdict(key: str, row: dict[str, Any], degeneration: dict[str, list[float | None]]) -> str:
    change, ci = row["change"], row["change_ci"]
    if change is None:
        return "not measured"
    if ci is None:
        return "no interval: cannot tell the change from noise"
    noise = ci[0] <= 0.0 <= ci[1]
    improved = change < 0 if row["better"] == "lower" else change > 0
    # At its bound the measure can still show the other way (worse forgetting), not this one.
    if row.get("limit") and (noise or improved):
        return "cannot show forgetting" if key == "forget" else "cannot show a utility loss"
    if noise:
        return "inside the noise"
    if key != "forget":
        return "utility kept" if improved else "utility lost"
    if not improved:
        return "not forgotten (worse)"
    b, a = degeneration.get("degenerate_rate", [None, None])
    if b is not None and a is not None and a - b >= COLLAPSE_POINTS:
        return "format collapse"
    return "forgotten"


def summarise(
    headlines: dict[str, Any],
    before: dict[str, Any],
    after: dict[str, Any],
    provenance: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, headline in headlines.items():
        side_b, side_a = before.get(key, {}), after.get(key, {})
        row = {**_row(side_b, side_a, headline.metric), "better": headline.better}
        degeneration = {
            name: [_metric(side_b, name), _metric(side_a, name)]
            for name in DEGENERATION
            if _metric(side_b, name) is not None or _metric(side_a, name) is not None
        }
        row["degeneration"] = degeneration
        row["data"] = provenance.get(key)
        reason = limit(
            key,
            row["before"],
            row["before_ci"],
            headline.better,
            getattr(headline, "bounds", (0.0, 1.0)),
        )
        row["limit"] = reason  # why the measure cannot show its change, or None
        row["verdict"] = verdict(key, row, degeneration)
        also = [
            {**_row(before.get(source, {}), after.get(source, {}), name), "of": source}
            for source, name in ALSO.get(key, ())
            if not (source == key and name == headline.metric)
            and _metric(before.get(source, {}), name) is not None
        ]
        if also:
            row["also"] = also
        row["caveat"] = caveat(key, row)
        out[key] = row
    return out

"""``rrtool compare RUN RUN ...``: runs side by side, from the tracking store alone.

For each run: the spec and its release strategy, the worst held-out cell of the audit's grid
(``rrtool.audit.grid``: the forget headline on the set and phrasing that show most of the
target after release, relative to the base), the headline forget and utility metrics
before and after (with their direction, 95% intervals, verdict and whether the data was
held out), every other audit metric, the applied weights, the
stop reason, and the cost (wall time and peak memory per phase). Runs of different specs can
be compared; a metric a run did not measure shows as a dash.
"""

from __future__ import annotations

import json
from typing import Any

from rrtool.audit.collect import collect
from rrtool.audit.render import change, held_out_label, html_table, md_table, num, with_ci
from rrtool.audit.verdict import shown
from rrtool.tracking import Store


def compare(store: Store, refs: list[str]) -> dict[str, Any]:
    runs = [collect(store, ref) for ref in refs]
    return {"runs": [_summary(r) for r in runs]}


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    spec = report.get("spec") or {}
    audit = report["audit"]
    after = audit.get("after") or {}
    before = audit.get("before") or {}
    return {
        "id": report["run"]["id"],
        "name": report["run"]["name"],
        "spec": spec.get("name"),
        "strategy": (spec.get("release") or {}).get("strategy"),
        "status": report["run"]["status"],
        "stop_reason": report["release"].get("stop_reason") or report["run"].get("stop_reason"),
        "headlines": audit.get("summary") or {},
        "metrics": {
            f"{key}/{name}": {
                "before": (before.get(key) or {}).get("metrics", {}).get(name),
                "after": value,
            }
            for key, side in after.items()
            for name, value in side.get("metrics", {}).items()
        },
        "weights": [f"{m['coefficient']:+.4g} {m['name']}" for m in report["release"]["modules"]],
        "seconds": {p["name"]: p["seconds"] for p in report["phases"]},
        "peak_rss_mb": {p["name"]: p["peak_rss_mb"] for p in report["phases"]},
    }


def table_rows(data: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    runs = data["runs"]
    head = ["", *[f"{r['spec']} ({r['id'][:8]})" for r in runs]]
    rows: list[list[str]] = [
        ["release strategy", *[str(r["strategy"]) for r in runs]],
        ["status", *[r["status"] for r in runs]],
    ]
    for key in ("worst", "forget", "utility"):
        heads = [r["headlines"].get(key) for r in runs]
        if key == "worst" and not any(heads):
            continue
        rows.append(
            [
                "forget, worst held-out set and phrasing"
                if key == "worst"
                else f"{key} (headline)",
                *[
                    "–"
                    if h is None
                    else (f"{h['set']} / {h['phrasing']}: " if key == "worst" else "")
                    + f"{h['metric']}: {with_ci(h['before'], h.get('before_ci'))} → "
                    f"{with_ci(h['after'], h.get('after_ci'))} ({change(h)}; {h['better']} is "
                    f"better): {shown(h) if h.get('verdict') else 'no verdict recorded'}; "
                    f"{held_out_label(h)}"
                    for h in heads
                ],
            ]
        )
        # The side measures next to the headline (strict F1, parse failures, the forget type
        # named where another type is asked), with their intervals too.
        also = list(dict.fromkeys(a["metric"] for h in heads if h for a in h.get("also", [])))
        for metric in also:
            lines = [
                next((a for a in (h or {}).get("also", []) if a["metric"] == metric), None)
                for h in heads
            ]
            rows.append(
                [
                    f"{key} (also): {metric}",
                    *[
                        "–"
                        if a is None
                        else f"{with_ci(a['before'], a.get('before_ci'))} → "
                        f"{with_ci(a['after'], a.get('after_ci'))} ({change(a)})"
                        for a in lines
                    ],
                ]
            )
    names = list(dict.fromkeys(n for r in runs for n in r["metrics"]))
    for name in names:
        rows.append(
            [
                name,
                *[
                    "–"
                    if name not in r["metrics"]
                    else f"{num(r['metrics'][name]['before'])} → {num(r['metrics'][name]['after'])}"
                    for r in runs
                ],
            ]
        )
    rows.append(["weights applied", *[", ".join(r["weights"]) or "none" for r in runs]])
    rows.append(["stop reason", *[str(r["stop_reason"] or "–") for r in runs]])
    for phase in ("reveal", "release", "audit"):
        rows.append(
            [
                f"{phase}: s / peak MB",
                *[
                    f"{num(r['seconds'].get(phase))} / {num(r['peak_rss_mb'].get(phase))}"
                    for r in runs
                ],
            ]
        )
    return head, rows


def render_compare(data: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(data, indent=2, default=str) + "\n"
    head, rows = table_rows(data)
    if fmt == "md":
        return "# rrtool compare\n\n" + md_table(head, rows)
    from rrtool.audit.render import CSS

    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>rrtool compare'
        f"</title><style>{CSS}</style></head><body><main><h1>rrtool compare</h1>"
        f"{html_table(head, rows)}</main></body></html>\n"
    )

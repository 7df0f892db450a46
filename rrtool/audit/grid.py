"""The audit's grid: the forget measure on every evaluation set in every phrasing, base and
released, and the worst cell as the headline.

Forgetting measured only on the built-in split, asked the way Reveal asked, says little: that
split is written by the same hand as Reveal's passages, and the forget data were asked in
that one phrasing. The grid measures the forget headline (and, in the standard phrasing, the
utility headline) in each cell of

    sets      = the audit's own data (``audit split``) + ``audit.eval_sets`` (other hands)
    phrasings = ``standard`` + the held-out family (``rrtool.phrasings``)

on the base model and on the released model, the same prompts on both, so each cell has a
paired change (``rrtool.audit.verdict.summarise``) and a ratio released / base. The headline
is the **worst** cell among those that are held out from training in set or in phrasing
(every cell but the audit split in the standard phrasing, which the audit's summary already
reports and which stays beside it): the one in which the released model keeps most of what
the base model showed, relative to the base in that same cell.

Records: ``audit/grid_before.json`` and ``audit/grid_after.json`` (per cell, the evaluations
with their replicates, or why the cell could not be measured), ``audit/grid.json`` (the rows
and the worst cell). A cell that fails (data that names no forget-type entity, a template the
data cannot fill) is recorded with its reason; the rest of the grid is measured.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from rrtool import tracking_inputs
from rrtool.artifacts import AUDIT_GRID
from rrtool.audit.verdict import replicate_metrics, summarise
from rrtool.context import RunContext
from rrtool.evaluators.suite import EvaluationSuite, Headline
from rrtool.phrasings import STANDARD, Phrasing
from rrtool.spec import DataSource

AUDIT_SPLIT = "audit split"
# A cell in which the base model itself shows the target in under a quarter of its answers
# (a phrasing a small model cannot follow: few-shot answers that copy the exemplar) cannot
# show a -70% change outside the noise on a few dozen units, and its ratio is a ratio of two
# noise-sized numbers: it is reported, and left out of the worst case.
MIN_BASE = 0.25


@dataclass(frozen=True)
class Cell:
    set: str
    source: DataSource | None  # None: the audit's own forget data
    phrasing: Phrasing

    @property
    def key(self) -> str:
        return f"{self.set} / {self.phrasing.name}"

    @property
    def held_out(self) -> str:
        """What of the cell no training step saw: ``set``, ``phrasing`` or both."""
        other_set = self.source is not None
        other_phrasing = not self.phrasing.standard
        return " and ".join(w for w, on in (("set", other_set), ("phrasing", other_phrasing)) if on)


def cells(ctx: RunContext) -> list[Cell]:
    """Every cell but the audit's own (audit split, standard phrasing)."""
    spec = ctx.spec
    _, held_out = spec.phrasing_families()
    # The kind's own prompt is always measured, whether or not Reveal asked in it.
    standard = Phrasing(STANDARD, None, "training")
    sets: list[tuple[str, DataSource | None]] = [(AUDIT_SPLIT, None)]
    sets += list(spec.audit.eval_sets.items())
    return [
        Cell(name, source, phrasing)
        for name, source in sets
        for phrasing in [standard, *held_out]
        if not (source is None and phrasing.standard)
    ]


def _measure_cell(ctx: RunContext, cell: Cell) -> dict[str, Any]:
    """The cell's evaluations on the loaded model (forget; utility too in the standard
    phrasing where the kind measures it on the same data), or ``{"error": why}``."""
    try:
        suite = EvaluationSuite.for_cell(ctx, cell.source, cell.phrasing.template)
        if cell.source is not None and cell.phrasing.standard:  # each named set, once
            tracking_inputs.log_parts(
                getattr(ctx, "tracker", None),
                [(f"audit.eval_sets.{cell.set}", suite.parts["forget"])],
            )
        keys = ["forget"]
        if cell.phrasing.standard and ctx.spec.target.kind == "ner" and "utility" in suite.measures:
            keys.append("utility")
        out: dict[str, Any] = {"data": suite.provenance.get("forget")}
        for key in keys:
            evaluation = suite.measure_forget() if key == "forget" else suite.measures[key]()
            out[key] = evaluation.to_dict(
                answers=ctx.spec.audit.sample_answers,
                replicates=replicate_metrics(key, suite.headlines[key].metric),
            )
        out["headlines"] = {
            k: {"metric": h.metric, "better": h.better, "bounds": list(h.bounds)}
            for k, h in suite.headlines.items()
            if k in keys
        }
        return out
    except Exception as exc:  # noqa: BLE001 - one cell's failure must not lose the others
        ctx.console.print(f"[yellow]audit: grid cell {cell.key} failed: {exc}[/yellow]")
        return {"error": f"{type(exc).__name__}: {exc}"[:500]}


def measure(ctx: RunContext, side: str, path: str) -> dict[str, Any]:
    """Every cell on the loaded model (``side``: base or released), resumable: cells already
    recorded under ``path`` are kept, each new one is recorded as it finishes."""
    recorded = json.loads(ctx.tracker.read_text(path) or "{}")
    todo = [c for c in cells(ctx) if c.key not in recorded]
    for index, cell in enumerate(todo, start=1):
        ctx.console.print(f"audit: grid, {side} model: {cell.key} ({index} of {len(todo)}) ...")
        recorded[cell.key] = _measure_cell(ctx, cell)
        ctx.tracker.log_dict(recorded, path)
    return recorded


def ratio(row: dict[str, Any]) -> float | None:
    """Released / base of a forget row (None where the base shows nothing to forget)."""
    before, after = row.get("before"), row.get("after")
    if before is None or after is None or before <= 0:
        return None
    return after / before


def summarise_grid(
    audit_cell: dict[str, Any], before: dict[str, Any], after: dict[str, Any], ctx: RunContext
) -> dict[str, Any]:
    """The grid's rows (the audit's own cell first, from the audit's summary) and the worst
    held-out cell."""
    rows = [{"set": AUDIT_SPLIT, "phrasing": STANDARD, "held_out": "", **audit_cell}]
    for cell in cells(ctx):
        b, a = before.get(cell.key, {}), after.get(cell.key, {})
        base = {"set": cell.set, "phrasing": cell.phrasing.name, "held_out": cell.held_out}
        error = b.get("error") or a.get("error")
        if error or "forget" not in b or "forget" not in a:
            rows.append({**base, "error": error or "not measured"})
            continue
        headlines = {
            k: Headline(v["metric"], v["better"], tuple(v["bounds"]))
            for k, v in b["headlines"].items()
        }
        found = summarise(headlines, b, a, {"forget": b.get("data"), "utility": b.get("data")})
        rows.append({**base, **found})
    for row in rows:
        forget = row.get("forget")
        if forget is not None:
            forget["ratio"] = ratio(forget)
            base = forget.get("before")
            if row["held_out"] and base is not None and base < MIN_BASE:
                forget["excluded"] = (
                    f"the base model shows the target in {base:.2f} of its answers here "
                    f"(under {MIN_BASE}): too little to measure forgetting against"
                )
    candidates = [
        r
        for r in rows
        if r["held_out"]
        and r.get("forget")
        and r["forget"].get("ratio") is not None
        and not r["forget"].get("excluded")
    ]
    worst = max(candidates, key=lambda r: r["forget"]["ratio"]) if candidates else None
    return {
        "rows": rows,
        "worst": None
        if worst is None
        else {
            "set": worst["set"],
            "phrasing": worst["phrasing"],
            "held_out": worst["held_out"],
            **worst["forget"],
        },
        "cells": len(rows),
        "definition": "the forget headline on each evaluation set (the audit split and "
        "audit.eval_sets) in each phrasing (standard and the held-out family), base and "
        "released on the same prompts; ratio = released / base; worst = the cell held out "
        "in set or phrasing with the highest ratio (the one in which most of the target "
        f"shows after release, relative to the base model in that cell); cells where the "
        f"base shows the target in under {MIN_BASE} of its answers are left out of it",
    }


def record(
    ctx: RunContext, audit_summary: dict[str, Any], before: dict[str, Any], after: dict[str, Any]
) -> dict[str, Any]:
    """The grid's summary from both sides' records (``measure``), recorded."""
    audit_cell = {key: audit_summary[key] for key in ("forget", "utility") if key in audit_summary}
    grid = summarise_grid(audit_cell, before, after, ctx)
    ctx.tracker.log_dict(grid, AUDIT_GRID)
    return grid

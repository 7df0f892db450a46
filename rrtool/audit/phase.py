"""The audit phase of ``rrtool run``: the spec's forget and utility measurements on the base
model and on the released model, recorded in the run.

Run records: ``audit/before.json`` and ``audit/after.json`` (every evaluation with its metrics,
definition, scorer and answers), ``audit/summary.json`` (headline metric per measurement,
before, after, change), ``audit/probes.json``, ``audit/membership_base.json`` (the membership
probe's base-model scores), ``audit/leakage.json`` (audit prompts found in Reveal's or the
search's data); metrics ``audit/<measure>/<metric>`` at step 0
(before) and step 1 (after). Resume: a recorded side is not measured again.

The base model is measured on fresh base weights (reloaded if Release changed the loaded
ones); the released model is the base plus the recorded module stack (``rebuild``), which is
bit-identical to the weights Release ended with, so an audit resumed in a new process
measures the same model.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Iterator
from typing import Any

from rrtool import reveal_record, tracking_inputs
from rrtool.artifacts import (
    AUDIT_AFTER,
    AUDIT_BEFORE,
    AUDIT_GRID_AFTER,
    AUDIT_GRID_BEFORE,
    AUDIT_LEAKAGE,
    AUDIT_MEMBERSHIP_BASE,
    AUDIT_PROBES,
    AUDIT_SUMMARY,
    REVEAL_FORGET,
    REVEAL_RETAIN,
)
from rrtool.audit import PROBES, grid
from rrtool.audit.probes import drafts_from, membership_scores, membership_sets, run_probes
from rrtool.audit.render import describe, with_ci
from rrtool.audit.verdict import replicate_metrics, shown, summarise
from rrtool.context import RunContext
from rrtool.errors import UserError
from rrtool.evaluators.base import Evaluation
from rrtool.evaluators.suite import EvaluationSuite
from rrtool.generation.answer_cache import stack_key
from rrtool.release.stack import apply_stack, load_stack


def metric_key(*parts: str) -> str:
    """An MLflow-safe metric name (it allows letters, digits, ``_-. /`` only)."""
    return "/".join(re.sub(r"[^A-Za-z0-9_\-. /]", "_", p.replace("@", "_at_")) for p in parts)


def _measure(ctx: RunContext, suite: EvaluationSuite, side: str) -> dict[str, Any]:
    ctx.console.print(f"audit: measuring the {side} model ...")
    results: dict[str, Evaluation] = suite.run()
    # Bootstrap replicates of the headline metrics are kept, so the summary can give the
    # paired interval of each change (same units resampled on both sides).
    recorded = {
        key: evaluation.to_dict(
            replicates=replicate_metrics(key, suite.headlines[key].metric)
            if key in suite.headlines
            else ()
        )
        for key, evaluation in results.items()
    }
    step = 0 if side == "base" else 1
    metrics = {
        metric_key("audit", key, name): value
        for key, evaluation in results.items()
        for name, value in evaluation.metrics.items()
        if value == value  # NaN is not a metric value MLflow keeps
    }
    ctx.tracker.log_metrics(metrics, step=step)
    return recorded


def _released(ctx: RunContext) -> None:
    """Make the loaded model the released one."""
    if ctx.model_state == "released":
        return
    if ctx.model_state != "base":
        ctx.reload_model()
    stack = load_stack(ctx.tracker, ctx.workdir / "downloaded")
    apply_stack(ctx.model().model, stack)
    ctx.model_state = "released"
    ctx.released_key = stack_key(stack)
    ctx.console.print(f"audit: released model = base + {len(stack)} recorded module(s)")


Membership = tuple[Any, dict[str, Any] | None]  # (member sets or why not, base scores)


def _membership_base(ctx: RunContext, suite: EvaluationSuite, before: dict[str, Any]) -> Membership:
    """The membership probe's sets and the base model's scores on them: taken while the base
    model is loaded (or reloaded when the run lacks them), then kept in the run."""
    if not ctx.spec.audit.probes.membership:
        return None, None
    sets = membership_sets(ctx, suite, before)
    base_text = ctx.tracker.read_text(AUDIT_MEMBERSHIP_BASE)
    if base_text is not None:
        return sets, json.loads(base_text)
    if isinstance(sets, str):
        return sets, None
    if ctx.model_state != "base":
        ctx.reload_model()
    ctx.console.print("audit: membership probe: scoring on the base model ...")
    scores = membership_scores(ctx, sets)
    ctx.tracker.log_dict(scores, AUDIT_MEMBERSHIP_BASE)
    return sets, scores


def run_probes_on_released(
    ctx: RunContext,
    suite: EvaluationSuite,
    summary: dict[str, Any],
    membership: Membership,
    measured: tuple[dict[str, Any], dict[str, Any]],
) -> dict[str, Any]:
    """The spec's probes on the released model (loaded here if it is not); ``measured``:
    the audit's base and released records, whose answers guide the attacks' decoding."""
    _released(ctx)
    forget = summary.get("forget", {})
    sets, base_scores = membership
    return run_probes(
        ctx, suite, forget.get("before"), forget.get("after"), base_scores, sets,
        released=lambda: _released(ctx), drafts=drafts_from(*measured),
        change_ci=forget.get("change_ci"),
    )  # fmt: skip


def attack(ctx: RunContext) -> dict[str, Any]:
    """More probes on a run whose audit is done (``rrtool attack``): the recorded base and
    released measurements are read back, only the probes run; their results replace those of
    the same name in ``audit/probes.json`` and are returned."""
    tracker = ctx.tracker
    before_text, summary_text = tracker.read_text(AUDIT_BEFORE), tracker.read_text(AUDIT_SUMMARY)
    if before_text is None or summary_text is None:
        raise UserError(
            f"run {tracker.run_id} has no recorded audit (audit/before.json, summary.json): "
            "finish it with `rrtool run SPEC --resume` first"
        )
    suite = EvaluationSuite.for_audit(ctx)
    before = json.loads(before_text)
    after = json.loads(tracker.read_text(AUDIT_AFTER) or "{}")
    membership = _membership_base(ctx, suite, before)
    found = run_probes_on_released(
        ctx, suite, json.loads(summary_text), membership, (before, after)
    )
    recorded = json.loads(tracker.read_text(AUDIT_PROBES) or "{}")
    tracker.log_dict({**recorded, **found}, AUDIT_PROBES)
    for name, result in found.items():
        ctx.console.print(f"attack: probe {name}: {describe(name, result)}")
    return found


def check_leakage(ctx: RunContext, suite: EvaluationSuite) -> dict[str, Any]:
    """The audit's forget prompts against Reveal's contexts and the weight search's
    (``rrtool.audit.leakage``); recorded, and warned about above its threshold."""
    from rrtool import splits
    from rrtool.audit.leakage import WARN_RATE, leakage, source_contexts
    from rrtool.tasks import prompt_text

    spec = ctx.spec
    reveal = [
        r.context
        for path in (REVEAL_FORGET, REVEAL_RETAIN)
        for r in reveal_record.read(ctx, path)
        if r.context
    ]
    sources: dict[str, list[str]] = {"reveal": list(dict.fromkeys(reveal))}
    try:
        search = splits.read(spec.reveal.contexts, "search", spec).records
        sources["weight search"] = source_contexts(search, spec.reveal.contexts.format)
    except UserError:  # no search split to compare with
        pass
    result = leakage([prompt_text(i.prompt) for i in suite.forget_items], sources)
    ctx.tracker.log_dict(result, AUDIT_LEAKAGE)
    ctx.tracker.log_metrics(
        {
            metric_key("audit", "leakage", name): row["rate"]
            for name, row in result["sources"].items()
            if row["rate"] is not None
        }
    )
    for name, row in result["sources"].items():
        if (row["rate"] or 0) > WARN_RATE:
            ctx.console.print(
                f"[yellow]audit: {row['exact'] + row['near_duplicate']} of {row['prompts']} "
                f"audit prompts hold a {name} context ({row['exact']} exact, "
                f"{row['near_duplicate']} near-duplicate): those numbers are not held out"
                "[/yellow]"
            )
    return result


def run_audit(ctx: RunContext) -> dict[str, Any]:
    tracker = ctx.tracker
    suite = EvaluationSuite.for_audit(ctx)  # data and options checked before any model work
    tracking_inputs.log_parts(tracker, tracking_inputs.suite_parts(suite.parts))
    clock = _Clock()
    before_text = tracker.read_text(AUDIT_BEFORE)
    if before_text is None:
        if ctx.model_state != "base":
            ctx.reload_model()
        with clock("measurements"):
            before = _measure(ctx, suite, "base")
        tracker.log_dict(before, AUDIT_BEFORE)
    else:
        before = json.loads(before_text)
        ctx.console.print("audit: base model already measured in this run")
    grid_before: dict[str, Any] = {}
    if grid.cells(ctx):
        recorded = json.loads(tracker.read_text(AUDIT_GRID_BEFORE) or "{}")
        if any(c.key not in recorded for c in grid.cells(ctx)) and ctx.model_state != "base":
            ctx.reload_model()
        with clock("measurements"):
            grid_before = grid.measure(ctx, "base", AUDIT_GRID_BEFORE)
    with clock("probes"):
        membership = _membership_base(ctx, suite, before)
    _released(ctx)
    after_text = tracker.read_text(AUDIT_AFTER)
    if after_text is None:
        with clock("measurements"):
            after = _measure(ctx, suite, "released")
        tracker.log_dict(after, AUDIT_AFTER)
    else:
        after = json.loads(after_text)
    tracking_inputs.log_answers_table(tracker, before, after)
    summary = summarise(suite.headlines, before, after, suite.provenance)
    if grid_before:
        with clock("measurements"):
            grid_after = grid.measure(ctx, "released", AUDIT_GRID_AFTER)
        worst = grid.record(ctx, summary, grid_before, grid_after)["worst"]
        if worst is not None:  # the headline: the worst held-out set and phrasing
            summary["worst"] = worst
    tracker.log_dict(summary, AUDIT_SUMMARY)
    check_leakage(ctx, suite)
    # The headline numbers as metrics too, so listings read numbers rather than tag text.
    tracker.log_metrics(
        {
            metric_key("audit", "summary", key, side): row[side]
            for key, row in summary.items()
            for side in ("before", "after", "change")
            if isinstance(row.get(side), (int, float)) and row[side] == row[side]
        }
    )
    with clock("probes"):
        probes = run_probes_on_released(ctx, suite, summary, membership, (before, after))
    tracker.log_dict(probes, AUDIT_PROBES)
    clock.report(ctx, complete=before_text is None and after_text is None)
    for key, row in summary.items():
        line = f"{row['metric']} {_fmt(row['before'])} -> {_fmt(row['after'])}"
        tracker.set_tags({f"rrtool.audit.{key}": line})  # for `rrtool runs`
        data = (row.get("data") or {}).get("text", "data not recorded")
        ctx.console.print(
            f"audit: {key} {with_ci(row['before'], row['before_ci'])} -> "
            f"{with_ci(row['after'], row['after_ci'])} {row['metric']} ({row['better']} is "
            f"better; change {with_ci(row['change'], row['change_ci'])}): {shown(row)}; "
            f"{data}"
        )
    for name, probe in probes.items():
        ctx.console.print(f"audit: probe {name}: {describe(name, probe)}")
    return summary


class _Clock:
    """Wall time of the audit's own measurements (base and released) and of its probes (the
    membership probe's base scoring included), so the battery's cost reads against the
    audit's: console, and metrics ``audit/seconds/*`` for the report."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {"measurements": 0.0, "probes": 0.0}

    @contextlib.contextmanager
    def __call__(self, part: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[part] += time.perf_counter() - started

    def report(self, ctx: RunContext, *, complete: bool) -> None:
        """Recorded only when this process measured both sides (a resumed audit's share is
        not the audit's cost)."""
        if not complete or not any(getattr(ctx.spec.audit.probes, n) for n in PROBES):
            return
        measured, probes = self.seconds["measurements"], self.seconds["probes"]
        ctx.tracker.log_metrics(
            {metric_key("audit", "seconds", k): v for k, v in self.seconds.items()}
        )
        share = f" (+{100 * probes / measured:.0f}% of the measurements)" if measured else ""
        ctx.console.print(
            f"audit: measurements (base and released) {measured:.1f} s; probes {probes:.1f} s{share}"
        )


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"

"""Reveal's records in the run: where they live, and how a finished Reveal writes them.

Release reads ``REVEAL_FORGET`` / ``REVEAL_RETAIN``; ``REVEAL_PROGRESS`` holds every generation so far (resume).
"""

from __future__ import annotations

import json
from typing import Any

from rrtool.artifacts import REVEAL_FORGET, REVEAL_RETAIN
from rrtool.context import RunContext
from rrtool.errors import UserError


def dedupe(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: set[tuple[str, str]] = set()
    out = []
    for record in records:
        key = (json.dumps(record["prompt"]), record["completion"])
        if key not in seen:
            seen.add(key)
            out.append(record)
    return out


def finish(
    ctx: RunContext, records: list[dict[str, Any]], seconds: float, generator: Any
) -> dict[str, int]:
    """Write Reveal's forget and retain records (deduplicated) and its metrics; returns counts."""
    forget = dedupe([r for r in records if r["split"] == "forget"])
    retain = dedupe([r for r in records if r["split"] == "retain"])
    ctx.tracker.log_jsonl(forget, REVEAL_FORGET)
    if retain:
        ctx.tracker.log_jsonl(retain, REVEAL_RETAIN)
    if forget and not any(r["completion"].strip() for r in forget):
        raise UserError(
            f"reveal: all {len(forget)} forget generations are empty (the model answered "
            "nothing); they are kept in the run (reveal/forget.jsonl). Check reveal.template, "
            "reveal.generation.max_new_tokens and stop strings, then run again"
        )
    scored = [r["relevance"] for r in forget if r["relevance"] is not None]
    metrics = {
        "reveal/forget_examples": len(forget),
        "reveal/retain_examples": len(retain),
        "reveal/seconds": seconds,
    }
    if scored:
        metrics["reveal/forget_relevance_mean"] = sum(scored) / len(scored)
    if generator is not None and generator.stats.seconds > 0:
        metrics["reveal/tokens_per_second"] = generator.stats.tokens_per_second
        metrics["reveal/generated_tokens"] = generator.stats.tokens
    ctx.tracker.log_metrics(metrics)
    ctx.console.print(
        f"reveal: {len(forget)} forget and {len(retain)} retain examples recorded"
        + (f" (forget relevance {metrics['reveal/forget_relevance_mean']:.3f})" if scored else "")
    )
    return {"forget": len(forget), "retain": len(retain)}

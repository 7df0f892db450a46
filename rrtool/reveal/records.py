"""How a finished Reveal writes its records (:mod:`rrtool.reveal_record`) and metrics."""

from __future__ import annotations

from typing import Any

from rrtool.artifacts import REVEAL_FORGET, REVEAL_RETAIN
from rrtool.context import RunContext
from rrtool.errors import UserError
from rrtool.reveal_record import RevealRecord, dedupe, write


def finish(
    ctx: RunContext, records: list[RevealRecord], seconds: float, generator: Any
) -> dict[str, int]:
    """Write Reveal's forget and retain records (deduplicated) and its metrics; returns counts."""
    forget = dedupe([r for r in records if r.split == "forget"])
    retain = dedupe([r for r in records if r.split == "retain"])
    write(ctx, forget, REVEAL_FORGET)
    if retain:
        write(ctx, retain, REVEAL_RETAIN)
    if forget and not any(r.completion.strip() for r in forget):
        raise UserError(
            f"reveal: all {len(forget)} forget generations are empty (the model answered "
            "nothing); they are kept in the run (reveal/forget.jsonl). Check reveal.template, "
            "reveal.generation.max_new_tokens and stop strings, then run again"
        )
    scored = [r.relevance for r in forget if r.relevance is not None]
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

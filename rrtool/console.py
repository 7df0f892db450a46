"""Rich rendering for the terminal (plans, oracle lists)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from rrtool.oracles.registry import OracleInfo
    from rrtool.plan import Plan


def _fmt(n: int) -> str:
    return f"{n:,}"


_COST_LABELS = {
    "generations": "gen",
    "generated_tokens": "tok",
    "forward_passes": "fwd",
    "training_steps": "train steps",
    "evaluations": "eval prompts",
}


def _cost(estimate: dict[str, int]) -> str:
    return "\n".join(f"{_compact(v)} {_COST_LABELS.get(k, k)}" for k, v in estimate.items())


def _compact(n: int) -> str:
    for unit, size in (("M", 1_000_000), ("k", 1_000)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def print_plan(plan: Plan, console: Console | None = None) -> None:
    console = console or Console()
    console.print(
        f"[bold]Plan for [cyan]{plan.spec_name}[/cyan][/bold]: forget {escape(plan.target)}"
    )
    console.print(escape(f"model: {plan.model}    tracking: {plan.tracking_uri}"))
    checks = Table(title="Pre-flight checks", show_header=False, title_justify="left")
    checks.add_column(style="green")
    checks.add_column(overflow="fold")
    checks.add_column(overflow="fold")  # a model path or data file stays whole
    for check in plan.checks:
        checks.add_row("ok", escape(check.name), escape(check.detail))
    console.print(checks)
    for index, phase in enumerate(plan.phases, start=1):
        table = Table(
            title=escape(f"{index}. {phase.name}: {phase.summary}"),
            title_justify="left",
            expand=True,
        )
        table.add_column("step", no_wrap=True, style="bold")
        table.add_column("what", ratio=1, overflow="fold")
        table.add_column("cost", justify="right")
        for step in phase.steps:
            table.add_row(escape(step.name), escape(step.detail), _cost(step.estimate))
        console.print(table)
    totals = plan.totals()
    console.print(
        f"totals: ~{_fmt(totals['generations'])} generations (<= {_fmt(totals['generated_tokens'])} "
        f"tokens), {_fmt(totals['training_steps'])} LoRA training steps, "
        f"{_fmt(totals['evaluations'])} evaluation prompts"
    )
    if plan.resources is not None:
        r = plan.resources
        m, t = r["memory_gib"], r["seconds"]
        console.print(
            f"estimate ({r['parameters'] / 1e9:.2f}B parameters, {r['dtype']}): peak tensor memory "
            f"~{m['peak']:.1f} GiB (weights {m['weights']:.1f}, fp32 masters "
            f"{m['fp32_masters']:.1f}, LoRA + Adam {m['lora_training_state']:.2f}, training "
            f"activations {m['training_activations']:.1f}, generation KV cache "
            f"{m['generation_kv_cache']:.2f}); time ~{_duration(t['generation'])} generating at "
            f"{r['throughput_tokens_per_s']:.3g} tokens/s ({r['throughput_source']}; "
            f"--throughput to state yours) + ~{_duration(t['training'])} training"
        )
    for warning in plan.warnings:
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def folding_table(*columns: str, **options: Any) -> Table:
    """A table whose cells fold long words instead of cutting them to an ellipsis, so that
    run ids, spec names and metric names stay whole at 80 columns."""
    table = Table(**options)
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def print_oracles(infos: Sequence[OracleInfo], console: Console | None = None) -> None:
    console = console or Console()
    table = folding_table(
        "name",
        "distribution",
        "description",
        title="Oracle plugins (entry-point group rrtool.oracles)",
        title_justify="left",
    )
    for info in infos:
        detail = escape(info.description) if not info.error else f"[red]{escape(info.error)}[/red]"
        table.add_row(escape(info.name), escape(info.distribution), detail)
    console.print(table)

"""``rrtool run``: plan, open the tracking run, record everything, run the phases.

The phases (Reveal, Release, Audit) are not implemented yet: the run records
the resolved spec, plan, versions and model facts, then stops after planning
and says so, with status ``planned`` on the MLflow run.
"""

from __future__ import annotations

import time

import yaml
from rich.console import Console

from rrtool.console import print_plan
from rrtool.plan import build_plan
from rrtool.spec_loader import LoadedSpec
from rrtool.tracking import Tracker, flatten, package_versions, resolve_store, run_tags

PHASES_AVAILABLE: tuple[str, ...] = ()


def run_spec(
    loaded: LoadedSpec, tracking_flag: str | None = None, console: Console | None = None
) -> str:
    """Run a validated spec; returns the MLflow run id."""
    console = console or Console(stderr=True)
    spec = loaded.spec
    plan = build_plan(loaded, tracking_flag)
    print_plan(plan, console)
    store = resolve_store(tracking_flag, spec.tracking.uri)
    tracker = Tracker.start(
        store, spec.tracking.experiment, spec.tracking.run_name or spec.name, run_tags(spec.name)
    )
    try:
        resolved_spec = spec.model_dump(mode="json")
        tracker.log_text(yaml.safe_dump(resolved_spec, sort_keys=False), "spec/resolved.yaml")
        tracker.log_dict(loaded.raw, "spec/as_written.json")
        tracker.log_dict(plan.to_dict(), "plan.json")
        tracker.log_dict(package_versions(), "environment.json")
        tracker.log_params(flatten(resolved_spec))
        _record_model(tracker, loaded, console)
    except BaseException:
        tracker.finish("FAILED", "failed")
        raise
    missing = [p.name for p in plan.phases if p.name not in PHASES_AVAILABLE]
    tracker.finish("FINISHED", "planned")
    console.print(
        f"[yellow]Stopped after planning:[/yellow] the {', '.join(missing)} phases are not "
        "implemented in this version of rrtool. The run recorded the resolved spec, the plan, "
        "package versions and the model's facts."
    )
    console.print(f"run [bold]{tracker.run_id}[/bold] in {store.uri}")
    return tracker.run_id


def _record_model(tracker: Tracker, loaded: LoadedSpec, console: Console) -> None:
    from rrtool.models import load_model

    started = time.perf_counter()
    with console.status(f"Loading model {loaded.spec.model.id} ..."):
        handle = load_model(loaded.spec.model)
    model = handle.model
    facts = {
        "ref": handle.resolved.ref,
        "kind": handle.resolved.kind,
        "source": handle.resolved.source,
        "checkpoint": str(handle.checkpoint) if handle.checkpoint else None,
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "device": str(next(model.parameters()).device),
        "has_chat_template": bool(getattr(handle.tokenizer, "chat_template", None)),
        "load_seconds": round(time.perf_counter() - started, 2),
    }
    tracker.log_dict(facts, "model.json")
    tracker.set_tags({"rrtool.model.parameters": str(facts["parameters"])})
    console.print(
        f"model: {facts['ref']}, {facts['parameters'] / 1e6:.1f}M parameters, {facts['dtype']} "
        f"on {facts['device']}, loaded in {facts['load_seconds']} s"
    )

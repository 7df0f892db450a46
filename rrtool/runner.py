"""``rrtool run``: plan, open (or resume) the tracking run, run the phases in order.

Each finished phase is marked on the run (tag ``rrtool.phase.NAME = done``); a
resumed run skips finished phases and each phase resumes from what the run holds.
Phases not implemented in this version stop the run cleanly, saying so, with
status ``stopped`` (resumable once they exist).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from rrtool.artifacts import ENVIRONMENT, MODEL_FACTS, PLAN, SPEC_AS_WRITTEN, SPEC_RESOLVED
from rrtool.console import print_plan
from rrtool.context import SCRATCH, RunContext
from rrtool.errors import PhaseNotImplemented, UserError
from rrtool.plan import build_plan
from rrtool.spec_loader import LoadedSpec
from rrtool.tracking import (
    PROCESS_TAG,
    Store,
    Tracker,
    alive_here,
    flatten,
    mlflow_client,
    package_versions,
    resolve_store,
    run_process,
    run_tags,
    sqlite_store_lock,
    store_failure,
    this_process,
)

RESUMABLE = ("running", "failed", "interrupted", "stopped")
FORCED_TAG = "rrtool.resume_forced"  # host:pid of another host's process a resume took over
PHASES = ("reveal", "release", "audit")


def spec_hash(loaded: LoadedSpec) -> str:
    """Identity of a job: the resolved spec (overrides included)."""
    blob = json.dumps(loaded.spec.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def find_resumable(client: Any, experiment: str, digest: str) -> Any | None:
    """The newest unfinished run of the same spec (an MLflow ``Run``), if any."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = client.search_runs(
        [found.experiment_id],
        filter_string=f"tags.`rrtool.spec_hash` = '{digest}'",
        order_by=["attributes.start_time DESC"],
        max_results=20,
    )
    for run in runs:
        if run.data.tags.get("rrtool.status") in RESUMABLE:
            return run
    return None


def check_writer(run: Any, force: bool) -> str | None:
    """Refuse to resume a run that another process may still be writing (one writer per run).

    A run marked ``running`` by a live rrtool process of this host is refused, ``--force``
    or not; one marked ``running`` by another host's process, which this host cannot check,
    only with ``force``. Returns that other process (host:pid) when forced, else None.
    ``force`` where nothing needs forcing is an error too: it would record a takeover that
    did not happen.
    """
    run_id, tags = run.info.run_id, run.data.tags
    running = tags.get("rrtool.status") == "running"
    process = run_process(tags) if running else None
    if process is None:  # ended cleanly, failed, or from before runs recorded their process
        if force:
            status = tags.get("rrtool.status", "?")
            raise UserError(
                f"--force: run {run_id} ({status}) is held by no other host's process; "
                "resume it without --force"
            )
        return None
    host, pid = process
    holder = f"{host}:{pid}"
    if host == platform.node():
        if pid != os.getpid() and alive_here(host, pid):
            raise UserError(
                f"--resume: run {run_id} is still being run by process {holder} on this host; "
                f"wait for it to end, or stop it (kill {pid}) and resume then, or start a new "
                "run without --resume"
            )
        if force:
            raise UserError(
                f"--force: run {run_id} was run on this host ({holder}, no longer running), "
                "not another; resume it without --force"
            )
        return None
    if not force:
        raise UserError(
            f"--resume: run {run_id} is marked running by process {holder} on another host "
            f"({host}), which cannot be checked from here. If that process is gone (its "
            "machine stopped or crashed), take the run over with --resume --force (recorded "
            "on the run); else wait for it to end, or start a new run without --resume"
        )
    return holder


def _claim(store: Store, loaded: LoadedSpec, force: bool) -> tuple[str, str | None]:
    """Find the run to resume, check no other process writes it, and mark it as this
    process's; returns (run id, the other host's process taken over with --force)."""
    spec = loaded.spec
    client = mlflow_client(store)
    # On a SQLite store the check and the claim hold the store's lock, so two --resume
    # started together cannot both pass the check.
    with sqlite_store_lock(store):
        run = find_resumable(client, spec.tracking.experiment, spec_hash(loaded))
        if run is None:
            raise UserError(
                f"--resume: no unfinished run of this spec in {store.uri} "
                f"(experiment `{spec.tracking.experiment}`); run without --resume to start one"
            )
        forced = check_writer(run, force)
        claim = {"rrtool.status": "running", PROCESS_TAG: this_process()}
        if forced is not None:
            claim[FORCED_TAG] = forced
        for key, value in claim.items():
            client.set_tag(run.info.run_id, key, value)
    return run.info.run_id, forced


def _open_run(
    loaded: LoadedSpec, store: Store, resume: bool, console: Console, force: bool = False
) -> tuple[Tracker, bool]:
    spec = loaded.spec
    digest = spec_hash(loaded)
    if resume:
        try:
            run_id, forced = _claim(store, loaded, force)
        except Exception as exc:
            reason = store_failure(exc)
            if reason is None:
                raise
            raise UserError(
                f"--resume: {store.uri}: the tracking store failed ({reason}), so whether "
                "another process still runs this spec's run cannot be checked; nothing was "
                "resumed. When the store is back, run the same command again"
            ) from None
        tracker = Tracker.resume(store, run_id)
        taken = f" (taken over from {forced} with --force)" if forced else ""
        console.print(f"resuming run [bold]{run_id}[/bold]{taken}")
        return tracker, True
    # The process is recorded from the start: a --resume while this run is young sees it.
    tags = run_tags(spec.name) | {"rrtool.spec_hash": digest, PROCESS_TAG: this_process()}
    return Tracker.start(
        store, spec.tracking.experiment, spec.tracking.run_name or spec.name, tags
    ), False


def _record_inputs(ctx: RunContext, plan_dict: dict) -> None:
    spec, tracker = ctx.spec, ctx.tracker
    resolved_spec = spec.model_dump(mode="json")
    tracker.log_text(yaml.safe_dump(resolved_spec, sort_keys=False), SPEC_RESOLVED)
    tracker.log_dict(ctx.loaded.raw, SPEC_AS_WRITTEN)
    tracker.log_dict(plan_dict, PLAN)
    tracker.log_dict(package_versions(), ENVIRONMENT)
    tracker.log_params(flatten(resolved_spec))


def _record_model(ctx: RunContext) -> None:
    started = time.perf_counter()
    handle = ctx.model()
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
    ctx.tracker.log_dict(facts, MODEL_FACTS)
    ctx.tracker.set_tags({"rrtool.model.parameters": str(facts["parameters"])})
    ctx.console.print(
        f"model: {facts['ref']}, {facts['parameters']:,} parameters, {facts['dtype']} "
        f"on {facts['device']}, loaded in {facts['load_seconds']} s"
    )


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) so the next reading is per phase."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    """Peak resident memory since the last reset (Linux), else since the process started."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cuda() -> Any:
    """torch.cuda when this process has put work on a GPU, else None (torch is never
    imported just to ask: a CPU-only run has nothing to report)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return torch.cuda


def _reset_peak_gpu() -> None:
    cuda = _cuda()
    for device in range(cuda.device_count() if cuda else 0):
        cuda.reset_peak_memory_stats(device)


def _peak_gpu_mb() -> float | None:
    """Peak GPU memory allocated by torch since the last reset, over this process's GPUs
    (host RAM is what ``peak_rss_mb`` measures; a GPU user's limit is this one)."""
    cuda = _cuda()
    if cuda is None:
        return None
    return sum(cuda.max_memory_allocated(d) for d in range(cuda.device_count())) / 2**20


def _timed_phase(ctx: RunContext, name: str) -> str | None:
    """Run a phase and record its wall time and peak memory (``phase/NAME/*`` metrics)."""
    per_phase = _reset_peak_rss()
    _reset_peak_gpu()
    started = time.perf_counter()
    hits, misses = ctx.answer_counts.hits, ctx.answer_counts.misses
    try:
        return _run_phase(ctx, name)
    finally:
        seconds = time.perf_counter() - started
        peak, gpu = _peak_rss_mb(), _peak_gpu_mb()
        metrics = {
            f"phase/{name}/seconds": seconds,
            f"phase/{name}/peak_rss_mb": peak,
            # Answers read back from the answer cache, and computed (of cacheable states).
            f"phase/{name}/answer_cache_hits": ctx.answer_counts.hits - hits,
            f"phase/{name}/answer_cache_misses": ctx.answer_counts.misses - misses,
        }
        if gpu is not None:
            metrics[f"phase/{name}/peak_gpu_mb"] = gpu
        ctx.tracker.log_metrics(metrics)
        # Resetting the kernel's peak counter also resets what getrusage (and /usr/bin/time)
        # report, so the run's peak is kept here: the largest phase peak seen so far.
        previous = ctx.tracker.client.get_run(ctx.tracker.run_id).data.metrics
        ctx.tracker.log_metrics(
            {"run/peak_rss_mb": max(peak, previous.get("run/peak_rss_mb", 0.0))}
        )
        scope = "phase" if per_phase else "process so far"
        on_gpu = "" if gpu is None else f", peak GPU memory {gpu:,.0f} MB"
        ctx.console.print(f"{name}: {seconds:.1f} s, peak memory {peak:,.0f} MB ({scope}){on_gpu}")


def _run_phase(ctx: RunContext, name: str) -> str | None:
    """Run one phase; returns why the run must stop here, or None to go on."""
    if name == "reveal":
        from rrtool.reveal.phase import run_reveal as run
    elif name == "release":
        from rrtool.release.phase import run_release as run
    else:
        from rrtool.audit.phase import run_audit as run
    try:
        run(ctx)
    except PhaseNotImplemented as exc:
        return str(exc)
    return None


def run_spec(
    loaded: LoadedSpec,
    tracking_flag: str | None = None,
    *,
    resume: bool = False,
    force: bool = False,
    phases: tuple[str, ...] = PHASES,
    console: Console | None = None,
) -> str:
    """Run a validated spec; returns the MLflow run id. ``resume`` continues the newest
    unfinished run of the spec unless another process may still be running it; ``force``
    (with ``resume``) takes over a run another host's process holds (see
    :func:`check_writer`)."""
    if force and not resume:
        raise UserError(
            "--force goes with --resume: it takes over a run that another host's process "
            "holds; without --resume there is no run to take over"
        )
    console = console or Console(stderr=True)
    spec = loaded.spec
    plan = build_plan(loaded, tracking_flag)
    print_plan(plan, console)
    store = resolve_store(tracking_flag, spec.tracking.uri)
    tracker, resumed = _open_run(loaded, store, resume, console, force)
    ctx = RunContext(loaded, tracker, console, SCRATCH / tracker.run_id)
    try:
        if not resumed:
            _record_inputs(ctx, plan.to_dict())
        tracker.set_tags({"rrtool.status": "running", PROCESS_TAG: this_process()})
        _record_model(ctx)
        done = {p for p in PHASES if tracker.tags().get(f"rrtool.phase.{p}") == "done"}
        for name in phases:
            if name in done:
                console.print(f"{name}: already done in this run, skipped")
                continue
            stop = _timed_phase(ctx, name)
            if stop:
                tracker.finish("FINISHED", "stopped")
                tracker.set_tags({"rrtool.stop_reason": stop})
                console.print(f"[yellow]Stopped before {name}:[/yellow] {stop}.")
                console.print(f"run [bold]{tracker.run_id}[/bold] in {store.uri}")
                return tracker.run_id
            tracker.set_tags({f"rrtool.phase.{name}": "done"})
    except KeyboardInterrupt:
        tracker.finish("KILLED", "interrupted")
        console.print(
            f"[yellow]interrupted:[/yellow] what was recorded is kept; continue with "
            f"`rrtool run {loaded.source.file} --resume`"
        )
        raise
    except BaseException as exc:
        reason = store_failure(exc)
        # The store itself may be what failed; the run then stays "running", which
        # --resume accepts as well.
        with contextlib.suppress(Exception):
            tracker.finish("FAILED", "failed")
        if reason is not None:
            raise UserError(
                f"{store.uri}: the tracking store failed ({reason}); what was recorded before "
                "is kept there. When the store is back, run the same command with --resume"
            ) from None
        raise
    if phases != PHASES:  # --phase: the job is not over; `--resume` continues it
        tracker.finish("FINISHED", "stopped")
        tracker.set_tags({"rrtool.stop_reason": f"--phase {phases[-1]}"})
        console.print(f"stopped after {phases[-1]} (--phase); continue with --resume")
    else:
        tracker.finish("FINISHED", "finished")
    console.print(f"run [bold]{tracker.run_id}[/bold] in {store.uri}")
    return tracker.run_id

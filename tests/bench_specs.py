"""Benchmark: every shipped spec (``specs/*.yaml``) run end to end, one row each.

Each spec is one ``rrtool run`` in a fresh process, as a user would start it (no overrides but
the store), in one MLflow store; a row reads the run back (``rrtool.audit.collect``): the phase
times and peak memory (rrtool's own per-phase figure; the largest is the run's peak), and the audit's headline forget and utility numbers with their 95%
intervals, the data they were read on (held-out or in-sample) and the verdicts. Writes
OUT/specs.md and OUT/specs.json; docs/evaluation.md's table is that Markdown.

    python tests/bench_specs.py --out reports/specs                  # ~2 h on 2 cores
    python tests/bench_specs.py --only person_ner forget_entity      # some of them
    python tests/bench_specs.py --quick --only person_ner            # a smoke run (minutes)

Run it alone: two torch processes on 2 cores slow each other far more than 2x.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted(p.stem for p in (ROOT / "specs").glob("*.yaml"))
# --quick: budgets that make any shipped spec a few minutes' smoke run (not a measurement).
QUICK = [
    "reveal.contexts.limit=24",
    "reveal.outer_iterations=1",
    "reveal.inner_iterations=2",
    "release.iterations=0",
    "release.search.budget=2",
    "release.search.eval_size=4",
    "audit.eval_size=6",
    "audit.probes.relearning=false",
    "audit.probes.relearning_ood=false",
    "audit.probes.elicitation=false",
    "audit.probes.membership=false",
    "audit.probes.quantization=false",
    "audit.probes.linear_probe=false",
]


def run_spec(name: str, store: str, out: Path, quick: bool) -> dict[str, Any]:
    """One ``rrtool run``; returns its exit code, wall time, the process's peak RSS and the
    run id (None when it failed before printing one)."""
    log = out / f"{name}.log"
    args = [sys.executable, "-m", "rrtool", "run", str(ROOT / "specs" / f"{name}.yaml")]
    args += ["--tracking-uri", store, "--set", f"tracking.run_name=bench-specs {name}"]
    if quick:
        args += [a for s in QUICK for a in ("--set", s)]
    started = time.perf_counter()
    with log.open("w") as handle:
        child = subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT, cwd=out)
        # wait4: this child's own rusage (RUSAGE_CHILDREN would be the maximum of all so far).
        _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    run_id = next(
        (
            line.split()[1]
            for line in reversed(log.read_text().splitlines())
            if line.startswith("run ") and len(line.split()) > 1
        ),
        None,
    )
    return {
        "spec": name,
        "exit": code,
        "wall_s": round(wall, 1),
        # Linux: kilobytes. rrtool resets the kernel's peak counter at each phase, which the
        # process's maximum follows, so this is one phase's peak, not the run's: see peak_mb().
        "process_peak_mb": round(usage.ru_maxrss / 1024),
        "run": run_id,
        "log": log.name,
    }


def _headline(line: dict[str, Any] | None) -> dict[str, Any] | None:
    if not line:
        return None
    data = line.get("data") or {}
    return {
        "metric": line.get("metric"),
        "before": line.get("before"),
        "after": line.get("after"),
        "before_ci": line.get("before_ci"),
        "after_ci": line.get("after_ci"),
        "change_ci": line.get("change_ci"),
        "verdict": line.get("verdict"),
        "held_out": data.get("held_out"),
        "data": data.get("text"),
    }


def read_back(row: dict[str, Any], store: str) -> dict[str, Any]:
    """Add the run's phases and headlines to ``row`` (a failed run keeps what it has)."""
    if row["run"] is None:
        return row
    from rrtool.audit.collect import collect
    from rrtool.tracking import resolve_store

    report = collect(resolve_store(store), row["run"])
    phases = {p["name"]: p for p in report["phases"]}
    summary = (report.get("audit") or {}).get("summary") or {}
    return row | {
        "phase_s": {n: p["seconds"] for n, p in phases.items()},
        "phase_peak_mb": {n: p["peak_rss_mb"] for n, p in phases.items()},
        "forget": _headline(summary.get("forget")),
        "utility": _headline(summary.get("utility")),
        "stop_reason": (report.get("release") or {}).get("stop_reason"),
    }


def _num(value: float | None, ci: list[float] | None = None) -> str:
    if value is None:
        return "n/a"
    text = f"{value:.3g}"
    return text + (f" [{ci[0]:.3g}, {ci[1]:.3g}]" if ci else "")


def _measure(head: dict[str, Any] | None) -> str:
    if head is None:
        return "n/a"
    where = {True: "held-out", False: "in-sample"}.get(head["held_out"], "data unknown")
    return (
        f"{head['metric']}: {_num(head['before'], head['before_ci'])} -> "
        f"{_num(head['after'], head['after_ci'])} ({where}; {head['verdict'] or 'no verdict'})"
    )


def peak_mb(row: dict[str, Any]) -> tuple[float, str]:
    """The run's peak resident memory and the phase it was in: the largest of rrtool's
    per-phase peaks (the kernel's VmHWM, reset at each phase start). The process's own maximum
    (``process_peak_mb``) cannot stand in for it: the resets leave it one phase's figure."""
    phases = {n: v for n, v in (row.get("phase_peak_mb") or {}).items() if v}
    if not phases:
        return float(row["process_peak_mb"]), "process"
    name = max(phases, key=lambda n: phases[n])
    return max(phases[name], float(row["process_peak_mb"])), name


def markdown(rows: list[dict[str, Any]], machine: str) -> str:
    lines = [
        f"Machine: {machine}. One `rrtool run specs/NAME.yaml` per row, nothing overridden but "
        "the store; peak = the largest of rrtool's per-phase peak resident memory (the kernel's "
        "VmHWM, reset at each phase), with the phase. Brackets after numbers: 95% bootstrap "
        "intervals.",
        "",
        "| spec | exit | wall | Reveal s | Release s | Audit s | peak MB | forget | utility |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        phases = r.get("phase_s", {})
        peak, where = peak_mb(r)
        minutes, seconds = divmod(int(r["wall_s"]), 60)
        lines.append(
            f"| {r['spec']} | {r['exit']} | {minutes} min {seconds} s | "
            + " | ".join(
                f"{phases[p]:.0f}" if phases.get(p) is not None else "n/a"
                for p in ("reveal", "release", "audit")
            )
            + f" | {peak:,.0f} ({where}) | {_measure(r.get('forget'))} | "
            f"{_measure(r.get('utility'))} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "specs")
    parser.add_argument("--only", nargs="+", choices=SPECS, default=SPECS)
    parser.add_argument("--quick", action="store_true", help="tiny budgets (a smoke run)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    store = f"sqlite:///{(args.out / 'mlflow.db').resolve()}"
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {datetime.now(UTC):%Y-%m-%d}"
    rows = []
    for name in args.only:
        print(f"{name} ...", flush=True)
        rows.append(read_back(run_spec(name, store, args.out, args.quick), store))
        print(json.dumps(rows[-1]), flush=True)
    result = {"machine": machine, "quick": args.quick, "rows": rows}
    (args.out / "specs.json").write_text(json.dumps(result, indent=1))
    table = markdown(rows, machine + (" (--quick: not a measurement)" if args.quick else ""))
    (args.out / "specs.md").write_text(table)
    print(table)
    if any(r["exit"] != 0 for r in rows):
        sys.exit("some specs failed: see their logs in " + str(args.out))


if __name__ == "__main__":
    main()

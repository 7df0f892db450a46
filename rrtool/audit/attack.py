"""``rrtool attack RUN``: more robustness probes on a finished run, without retraining.

The run's resolved spec is read back from the store with only the asked-for probes switched
on; the audit's recorded base and released measurements are reused, the released model is the
base plus the recorded stack (as for export), and the probes' results are written into the
same run, so its report shows them beside the rest.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from rrtool.artifacts import SPEC_RESOLVED
from rrtool.audit import PROBES
from rrtool.context import SCRATCH, RunContext
from rrtool.errors import UserError
from rrtool.spec_loader import load_spec
from rrtool.tracking import Store, Tracker


def attack_run(
    store: Store, ref: str | None, probes: Sequence[str], console: Console
) -> dict[str, Any]:
    """Run ``probes`` (default: all) on run ``ref``; returns their results."""
    from rrtool.audit.collect import find_run
    from rrtool.audit.phase import attack

    client, run = find_run(store, ref)
    run_id = run.info.run_id
    if run.data.tags.get("rrtool.phase.audit") != "done":
        raise UserError(
            f"run {run_id}: its audit is not done, so there is no released measurement to "
            "attack (finish it with `rrtool run SPEC --resume`)"
        )
    tracker = Tracker(client, run_id, store)
    spec_text = tracker.read_text(SPEC_RESOLVED)
    if spec_text is None:
        raise UserError(f"run {run_id} has no recorded spec (not an rrtool run?)")
    wanted = list(probes) or list(PROBES)
    overrides = [f"audit.probes.{p}={'true' if p in wanted else 'false'}" for p in PROBES]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "resolved.yaml"
        path.write_text(spec_text, encoding="utf-8")
        loaded = load_spec(path, overrides)
    ctx = RunContext(loaded, tracker, console, SCRATCH / run_id)
    console.print(f"attack: run {run_id}, probes {', '.join(wanted)}")
    return attack(ctx)

"""Shared by the benchmark scripts: one `rrtool run` in a fresh process, logged to a file."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


def run_rrtool(args: list[str], log: Path) -> tuple[str, float]:
    """Run ``python -m rrtool ARGS`` with output to ``log`` (cwd: its folder); returns the run
    id the command printed and the wall time. Exits with the log's name on failure."""
    started = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(
            [sys.executable, "-m", "rrtool", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=log.parent,
        )
    if done.returncode != 0:
        sys.exit(f"rrtool {args[0]} failed (exit {done.returncode}); see {log}")
    # The last line "run ID in STORE" (rich may wrap the store onto the next line).
    run_id = next(
        line.split()[1]
        for line in reversed(log.read_text().splitlines())
        if line.startswith("run ")
    )
    return run_id, time.perf_counter() - started

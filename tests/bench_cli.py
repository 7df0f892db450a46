"""Benchmark: wall time of `rrtool --help` and `rrtool plan` on the example specs.

Not collected by pytest (targets are checked by numbers you report, not by timed tests).
Run:  python tests/bench_cli.py [--runs 7]
Targets (issue 2): `rrtool --help` < 0.5 s, `rrtool plan` < 5 s per example spec.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _time(cmd: list[str], runs: int, cwd: str) -> tuple[float, float]:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, cwd=cwd)
        samples.append(time.perf_counter() - started)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr.decode()}")
    return statistics.median(samples), max(samples)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    rrtool = shutil.which("rrtool") or str(Path(sys.executable).with_name("rrtool"))
    rows = [("rrtool --help", [rrtool, "--help"])]
    for name in ("person_ner", "toxicity", "coding"):
        rows.append(
            (
                f"rrtool plan specs/{name}.yaml",
                [rrtool, "plan", str(REPO / "specs" / f"{name}.yaml")],
            )
        )
    with tempfile.TemporaryDirectory() as cwd:
        print("| command | median (s) | max (s) | runs |\n|---|---|---|---|")
        for label, cmd in rows:
            median, worst = _time(cmd, args.runs, cwd)
            print(f"| `{label}` | {median:.3f} | {worst:.3f} | {args.runs} |")


if __name__ == "__main__":
    main()

"""Benchmark: pass_at_1 sandbox throughput on MBPP's reference solutions.

Compares, in one run, the sandboxed oracle (at several worker counts) against a naive
runner that starts one plain `python` process per sample, sequentially, with no isolation.
With ``--plus``, also scores every MBPP+ canonical solution as a candidate on its full plus
inputs (the comparison must pass them all, bar the tasks that exceed the default limits).
Not collected by pytest. Run:  python tests/bench_pass_at_1.py [--limit N] [--plus]
Target (issue 3): at least 20 samples/s on 2 cores.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from rrtool.data import load_records
from rrtool.oracles.registry import create_oracle
from rrtool.spec import DataSource
from rrtool.tasks import samples_from_records

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mbpp"
MBPP = DATA / "mbpp.jsonl"


def naive(records: list[dict]) -> tuple[int, float]:
    passed = 0
    started = time.perf_counter()
    for r in records:
        program = "\n".join([r.get("test_setup_code", ""), r["code"], *r["test_list"]])
        proc = subprocess.run([sys.executable, "-c", program], capture_output=True, timeout=30)
        passed += proc.returncode == 0
    return passed, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--workers", default="2,4,8")
    parser.add_argument("--plus", action="store_true", help="also the MBPP+ canonical solutions")
    args = parser.parse_args()
    records = load_records(DataSource(path=str(MBPP), format="mbpp", limit=args.limit))
    samples = samples_from_records("mbpp", records)
    print(f"{len(samples)} MBPP reference solutions\n")
    print("| runner | isolation | passed | seconds | samples/s |\n|---|---|---|---|---|")
    passed, seconds = naive(records)
    print(
        f"| naive sequential `python -c` | none | {passed} | {seconds:.1f} | {len(records) / seconds:.1f} |"
    )
    for workers in (int(w) for w in args.workers.split(",")):
        oracle = create_oracle("pass_at_1", {"workers": workers})
        started = time.perf_counter()
        scores = oracle.score(samples)
        seconds = time.perf_counter() - started
        ok = sum(s.score == 1.0 for s in scores)
        isolation = scores[0].details.get("isolation", "?")
        print(
            f"| pass_at_1, {workers} workers | {isolation} | {ok} | {seconds:.1f} | {len(samples) / seconds:.1f} |"
        )
        failed = [s.id for s, x in zip(samples, scores, strict=True) if x.score != 1.0]
        inside = sum(x.details.get("checks_decided_inside", 0) for x in scores)
        print(f"  not passed: {failed[:20]}; checks decided inside the sandbox: {inside}")
    if args.plus:
        plus_canonical(args.limit)


def plus_canonical(limit: int | None) -> None:
    source = DataSource(path=str(DATA / "MbppPlus.jsonl"), format="mbppplus", limit=limit)
    samples = samples_from_records("mbppplus", load_records(source))
    oracle = create_oracle("pass_at_1", {"workers": 2})
    started = time.perf_counter()
    scores = oracle.score(samples)
    seconds = time.perf_counter() - started
    base = sum(bool(x.details.get("base_passed")) for x in scores)
    plus = sum(bool(x.details.get("plus_passed")) for x in scores)
    errors = [s.id for s, x in zip(samples, scores, strict=True) if x.details["status"] == "error"]
    wrong = [s.id for s, x in zip(samples, scores, strict=True)
             if x.details["status"] != "error" and not x.details.get("plus_passed")]  # fmt: skip
    print(f"\nMBPP+ canonical solutions as candidates, full plus inputs, 2 workers: "
          f"{len(samples)} tasks, base passed {base}, base+plus passed {plus}, "
          f"{seconds:.0f} s; errors (limits) {errors}; wrong answers {wrong}")  # fmt: skip


if __name__ == "__main__":
    main()

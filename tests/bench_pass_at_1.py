"""Benchmark: pass_at_1 sandbox throughput on MBPP's reference solutions.

Compares, in one run, the sandboxed oracle (at several worker counts) against a naive
runner that starts one plain `python` process per sample, sequentially, with no isolation.
Not collected by pytest. Run:  python tests/bench_pass_at_1.py [--limit N]
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

MBPP = Path(__file__).resolve().parents[2] / "shared" / "data" / "mbpp" / "mbpp.jsonl"


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


if __name__ == "__main__":
    main()

"""Benchmark: how many distinct instructions does the Reveal pool decode to, with the decode
exemplars shown bare ("Input: ...") against shown with the model's most relevant own answer
(``reveal.search.exemplar_samples``)?

For a spec (default `specs/toxicity.yaml`, whose built-in prompts have no continuations), the
first N pool points are decoded with each decode prompt, in one process; the table gives the
distinct instructions, the share of pool points whose instruction another point also decoded
to, and a few examples. Writes OUT/decode_prompts.md and .json.

    python tests/bench_decode_prompts.py --out reports/decode       # ~5 min on 2 cores
    python tests/bench_decode_prompts.py --points 8                 # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", type=Path, default=ROOT / "specs" / "toxicity.yaml")
    parser.add_argument("--points", type=int, default=100)
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "decode")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from rich.console import Console

    from rrtool.context import RunContext
    from rrtool.reveal.search import InstructionSearch
    from rrtool.spec_loader import load_spec
    from rrtool.tracking import Tracker, resolve_store

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        store = resolve_store(cwd=Path(scratch))
        for samples in (0, 4):
            loaded = load_spec(args.spec, [f"reveal.search.exemplar_samples={samples}"])
            tracker = Tracker.start(store, "rrtool", f"decode {samples}", {})
            ctx = RunContext(loaded, tracker, Console(stderr=True), Path(scratch))
            started = time.perf_counter()
            search = InstructionSearch(ctx)
            texts = [search.instruction(arm) for arm in range(args.points)]
            counts = Counter(texts)
            rows.append(
                {
                    "exemplars": "bare inputs" if samples == 0 else
                    f"with the most relevant of {samples} own answers",
                    "points": args.points,
                    "distinct": len(counts),
                    "shared_share": sum(c for c in counts.values() if c > 1) / args.points,
                    "top": counts.most_common(5),
                    "decode_prompt": search.decode_prompt,
                    "seconds": time.perf_counter() - started,
                }
            )  # fmt: skip
            print(json.dumps(rows[-1])[:400], flush=True)
    lines = [
        f"Spec `{args.spec.name}`, first {args.points} pool points decoded greedily "
        "(the search's own decoding).",
        "",
        "| decode exemplars | distinct instructions | points sharing an instruction | "
        "most frequent | s |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        top = "; ".join(f"{t[:60]!r} x{c}" for t, c in r["top"][:3])
        lines.append(
            f"| {r['exemplars']} | {r['distinct']} of {r['points']} | "
            f"{100 * r['shared_share']:.0f}% | {top} | {r['seconds']:.0f} |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "decode_prompts.json").write_text(json.dumps(rows, indent=1))
    (args.out / "decode_prompts.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

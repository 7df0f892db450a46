"""Benchmark: forgetting Person in NER on SmolLM2, Reveal & Release against the baselines.

Each row is one `rrtool run` of `specs/person_ner.yaml` in a fresh process (so its time and
peak memory are its own), all recorded in one MLflow store, with:

- Reveal on the first 60 CrossNER politics passages (the model's own answers are the forget
  data); the audit on the other 590 (held out from everything the runs saw): Person F1
  (forgotten) and the mean F1 of organization, location and country (retained);
- `single_subtraction` twice: on Reveal's data (internal) and on CrossNER politics' gold
  Person answers for the same passages (external: the paper's PEM-external).

Without ../shared/data/ner the built-in passages are used for both (said in the output).
Writes OUT/benchmark.md and OUT/benchmark.json; the README's table is that Markdown.

    python tests/bench_strategies.py --out reports/benchmark          # ~1 h on 2 cores
    python tests/bench_strategies.py --quick --only iterative npo     # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from bench_support import run_rrtool

ROOT = Path(__file__).resolve().parents[1]
NER = ROOT.parent / "shared" / "data" / "ner"
POLITICS = NER / "universalner_CrossNER_politics.json"
RETAIN_TYPES = "[organization,location,country]"

ROWS: dict[str, list[str]] = {
    "iterative": ["release.strategy=iterative"],
    "single_subtraction (internal)": ["release.strategy=single_subtraction"],
    "single_subtraction (external, PEM-external)": ["release.strategy=single_subtraction"],
    "ext_sub": ["release.strategy=ext_sub"],
    "gradient_ascent": ["release.strategy=gradient_ascent"],
    "npo": ["release.strategy=npo"],
    "dpo": ["release.strategy=dpo"],
    # The paper's slower forgetting rule, with a finer weight search (what was tried after
    # every row above forgot the retained types with Person).
    "iterative (60% rule, budget 8)": [
        "release.strategy=iterative",
        "release.rules.forget_fraction=0.6",
        "release.search.budget=8",
    ],
}


def _common(quick: bool) -> list[str]:
    sets = [f"target.retain_types={RETAIN_TYPES}", "audit.probes.relearning=false",
            "audit.probes.elicitation=false", "audit.probes.membership=false"]  # fmt: skip
    if POLITICS.is_file():
        # The file has one record per (passage, type), 8 types per passage, in passage order.
        sets += [
            f'reveal.contexts={{path: "{POLITICS}", format: universalner, limit: 480}}',
            f'audit.forget_eval={{path: "{POLITICS}", format: universalner, offset: 480}}',
        ]
    if quick:
        sets += ["reveal.contexts.limit=64", "release.search.budget=2",
                 "release.search.eval_size=4", "audit.eval_size=8"]  # fmt: skip
    return sets


def _external(quick: bool) -> list[str]:
    source = POLITICS if POLITICS.is_file() else None
    path = f'"{source}"' if source else "builtin:ner_passages"
    limit = 64 if quick else 480
    return [f"release.forget_data={{path: {path}, format: universalner, limit: {limit}}}"]


def run_row(name: str, store: str, quick: bool, log: Path) -> tuple[str, float]:
    sets = [*_common(quick), *ROWS[name], f"tracking.run_name=bench {name}"]
    if "external" in name:
        sets += _external(quick)
    args = ["run", str(ROOT / "specs" / "person_ner.yaml")]
    args += ["--tracking-uri", store, *[a for s in sets for a in ("--set", s)]]
    return run_rrtool(args, log)


def _row(name: str, report: dict[str, Any], wall: float) -> dict[str, Any]:
    summary = report["audit"]["summary"]
    phases = {p["name"]: p for p in report["phases"]}
    stack = report["release"]["state"]["stack"] if report["release"]["state"] else []
    return {
        "strategy": name,
        "run": report["run"]["id"],
        "person_f1": summary["forget"]["after"],
        "retained_f1": summary["utility"]["after"],
        "weights": [round(e["coefficient"], 4) for e in stack],
        "reveal_s": phases["reveal"]["seconds"],
        "release_s": phases["release"]["seconds"],
        "audit_s": phases["audit"]["seconds"],
        "wall_s": wall,
        "peak_mb": max(p["peak_rss_mb"] or 0 for p in phases.values()),
        "reveal_tokens_per_s": report["reveal"]["metrics"].get("reveal/tokens_per_second"),
        "base_person_f1": summary["forget"]["before"],
        "base_retained_f1": summary["utility"]["before"],
    }


def _pct(value: float, base: float) -> str:
    return f"{100 * value / base:.0f}%" if base else "n/a"


def markdown(rows: list[dict[str, Any]], data: str) -> str:
    base = rows[0]
    lines = [
        f"Evaluation: {data}. Base model: Person F1 {base['base_person_f1']:.3f}, retained "
        f"mean F1 {base['base_retained_f1']:.3f}.",
        "",
        "| release | Person F1 (% of base) | retained F1 (% of base) | weights | Reveal s | "
        "Release s | Audit s | peak MB | Reveal tok/s |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| base model | {base['base_person_f1']:.3f} (100%) | {base['base_retained_f1']:.3f} "
        "(100%) | | | | | | |",
    ]
    for r in rows:
        lines.append(
            f"| {r['strategy']} | {r['person_f1']:.3f} "
            f"({_pct(r['person_f1'], r['base_person_f1'])}) | {r['retained_f1']:.3f} "
            f"({_pct(r['retained_f1'], r['base_retained_f1'])}) | "
            f"{', '.join(f'{w:+g}' for w in r['weights'])} | {r['reveal_s']:.0f} | "
            f"{r['release_s']:.0f} | {r['audit_s']:.0f} | {r['peak_mb']:,.0f} | "
            f"{r['reveal_tokens_per_s'] or 0:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "benchmark")
    parser.add_argument("--quick", action="store_true", help="tiny budgets (a smoke run)")
    parser.add_argument("--only", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument(
        "--append",
        action="store_true",
        help="add the rows to OUT/benchmark.json (replacing rows of the same name) instead of "
        "starting a new table",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    store = f"sqlite:///{(args.out / 'mlflow.db').resolve()}"
    from rrtool.audit.collect import collect
    from rrtool.tracking import resolve_store

    rows: list[dict[str, Any]] = []
    previous = args.out / "benchmark.json"
    if args.append and previous.is_file():
        rows = [
            r for r in json.loads(previous.read_text())["rows"] if r["strategy"] not in args.only
        ]
    for name in args.only:
        print(f"{name} ...", flush=True)
        slug = "".join(c if c.isalnum() else "-" for c in name).strip("-")
        run_id, wall = run_row(name, store, args.quick, args.out / f"{slug}.log")
        rows.append(_row(name, collect(resolve_store(store), run_id), wall))
        print(json.dumps(rows[-1]), flush=True)
    data = (
        "CrossNER politics passages 61-650 (held out; Reveal saw passages 1-60)"
        if POLITICS.is_file()
        else "the built-in passages (../shared/data/ner not found)"
    )
    (args.out / "benchmark.json").write_text(json.dumps({"data": data, "rows": rows}, indent=1))
    table = markdown(rows, data)
    (args.out / "benchmark.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()

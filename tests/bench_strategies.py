"""Benchmark: forgetting Person in NER on SmolLM2, Reveal & Release against the baselines.

Each row is one `rrtool run` of `specs/person_ner.yaml` in a fresh process (so its time and
peak memory are its own), all recorded in one MLflow store, with:

- Reveal on the first 60 CrossNER politics passages (the model's own answers are the forget
  data); the audit on 120 of the other 590 (held out from everything the runs saw). CrossNER
  politics labels most people `politician` (234 of 650 passages) and few `person` (90), so the
  forgotten types there are both: people named (forgotten) and the mean F1 of organization,
  location and country (retained);
- `single_subtraction` twice: on Reveal's data (internal) and on CrossNER politics' gold
  Person answers for the same passages (external: the paper's PEM-external).

With ``--data builtin`` (or without ../shared/data/ner) the built-in passages are used,
cut by the spec's splits (Reveal, search and audit on disjoint passages).
Writes OUT/benchmark.md and OUT/benchmark.json; docs/strategies.md's table is that Markdown.

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
FORGET_TYPES = "[person,politician]"  # CrossNER politics' people (see the module docstring)
DATA = "crossner"  # --data

ROWS: dict[str, list[str]] = {
    "iterative": ["release.strategy=iterative"],
    "single_subtraction (internal)": ["release.strategy=single_subtraction"],
    "single_subtraction (external, PEM-external)": ["release.strategy=single_subtraction"],
    "ext_sub": ["release.strategy=ext_sub"],
    "gradient_ascent": ["release.strategy=gradient_ascent"],
    "npo": ["release.strategy=npo"],
    "dpo": ["release.strategy=dpo"],
    # Ablations: the paper's literal weight rules; the paper's slower forgetting rule with a
    # finer weight search; a retain module before the first subtraction.
    "iterative (paper's literal rules)": ["release.strategy=iterative", "release.rules.mode=paper"],
    "iterative (60% rule, budget 8)": [
        "release.strategy=iterative",
        "release.rules.forget_fraction=0.6",
        "release.search.budget=8",
    ],
    "iterative (retain first)": ["release.strategy=iterative", "release.schedule=retain_first"],
    # method.md's first hypothesis: forget answers in several formats, so the forget module
    # learns the entity rather than the JSON format it shares with the retained types.
    "iterative (forget answers in 4 formats)": [
        "release.strategy=iterative",
        "release.forget_formats=[json,prose,bare,bullets]",
    ],
    "iterative (retain first, forget answers in 4 formats)": [
        "release.strategy=iterative",
        "release.schedule=retain_first",
        "release.forget_formats=[json,prose,bare,bullets]",
    ],
    # The weight range alone (the control for the projection rows below).
    "iterative (retain first, weights to 3)": [
        "release.strategy=iterative",
        "release.schedule=retain_first",
        "release.search.max_weight=3",
    ],
    # The same, with a last retain module after F1: the step that took utility to 71% of base
    # was the last subtraction, with nothing after it to restore it.
    "iterative (retain first, weights to 3, ends with retain)": [
        "release.strategy=iterative",
        "release.schedule=retain_first",
        "release.end_with_retain=true",
        "release.search.max_weight=3",
    ],
    # The same, with the retain answers cleaned of the names the model listed as persons in
    # the same passage: the retain modules (at +3) otherwise teach them back in other types.
    "iterative (retain first, weights to 3, ends with retain, retain answers without forget names)": [
        "release.strategy=iterative",
        "release.schedule=retain_first",
        "release.end_with_retain=true",
        "release.search.max_weight=3",
        "retain.drop_forget_names=true",
    ],
    "iterative (retain first, forget projected, weights to 3, ends with retain)": [
        "release.strategy=iterative",
        "release.schedule=retain_first",
        "release.forget_projection=retain",
        "release.end_with_retain=true",
        "release.search.max_weight=3",
    ],
    # method.md's second hypothesis: subtract only the part of each forget update outside the
    # retain modules' subspaces; the projected module is smaller, so weights up to 3.
    "iterative (retain first, forget projected, weights to 3)": [
        "release.strategy=iterative",
        "release.schedule=retain_first",
        "release.forget_projection=retain",
        "release.search.max_weight=3",
    ],
    # Retain modules from the passages' gold labels of the retained types (the Reveal split of
    # the same passages) instead of the model's own answers, which repeat its own errors.
    "iterative (labelled retain data, weights to 3)": [
        "release.strategy=iterative",
        "release.search.max_weight=3",
        "retain.self_generated=false",
    ],
    "iterative (retain first, labelled retain data, weights to 3)": [
        "release.strategy=iterative",
        "release.schedule=retain_first",
        "release.search.max_weight=3",
        "retain.self_generated=false",
    ],
    "iterative (retain first, forget projected, 4 formats, weights to 3)": [
        "release.strategy=iterative",
        "release.schedule=retain_first",
        "release.forget_projection=retain",
        "release.forget_formats=[json,prose,bare,bullets]",
        "release.search.max_weight=3",
    ],
}


def _crossner() -> bool:
    return DATA == "crossner" and POLITICS.is_file()


# The Release settings every row starts from: the demo spec's until 2026-12-06 (the paper's
# forget-first schedule, weights up to 1, search budget 5, LoRA dropout 0.05), so the rows keep
# the meaning their tables give them; a row's own settings come after and win.
PAPER_SCHEDULE = ["release.schedule=forget_first", "release.end_with_retain=false",
                  "release.search.max_weight=1", "release.search.budget=5",
                  "release.lora.dropout=0.05"]  # fmt: skip


def _common(quick: bool) -> list[str]:
    sets = [*PAPER_SCHEDULE]
    sets += ["audit.probes.relearning=false", "audit.probes.elicitation=false",
            "audit.probes.membership=false", "audit.probes.quantization=false",
            "audit.probes.linear_probe=false", "audit.probes.relearning_ood=false"]  # fmt: skip
    if _crossner():
        # The file has one record per (passage, type), 8 types per passage, in passage order:
        # passages 1-60 are cut into Reveal (40) and search (20); the audit reads 61-650.
        sets += [
            f"target.forget_types={FORGET_TYPES}",
            f"target.retain_types={RETAIN_TYPES}",
            "audit.eval_size=120",  # ~70 passages naming a person or politician
            f'reveal.contexts={{path: "{POLITICS}", format: universalner, limit: 480}}',
            f'audit.forget_eval={{path: "{POLITICS}", format: universalner, offset: 480}}',
            "splits.search=0.33",
            "splits.audit=0",
        ]
    if quick:
        sets += ["reveal.contexts.limit=64", "release.search.budget=2",
                 "release.search.eval_size=4", "audit.eval_size=8"]  # fmt: skip
    return sets


def _external(quick: bool) -> list[str]:
    source = POLITICS if _crossner() else None
    path = f'"{source}"' if source else "builtin:ner_passages"
    limit = 64 if quick else 480
    return [f"release.forget_data={{path: {path}, format: universalner, limit: {limit}}}"]


def _labelled_retain(quick: bool) -> list[str]:
    """retain.data = the contexts' own source, so its Reveal split is Reveal's passages."""
    if _crossner():
        return [f'retain.data={{path: "{POLITICS}", format: universalner, limit: 480}}']
    limit = ", limit: 64" if quick else ""
    return [f"retain.data={{path: builtin:ner_passages, format: universalner{limit}}}"]


def run_row(name: str, store: str, quick: bool, log: Path) -> tuple[str, float]:
    sets = [*_common(quick), *ROWS[name], f"tracking.run_name=bench {name}"]
    if "external" in name:
        sets += _external(quick)
    if "labelled retain" in name:
        sets += _labelled_retain(quick)
    args = ["run", str(ROOT / "specs" / "person_ner.yaml")]
    args += ["--tracking-uri", store, *[a for s in sets for a in ("--set", s)]]
    return run_rrtool(args, log)


def _cell(line: dict[str, Any], side: str) -> str:
    value, ci = line.get(side), line.get(f"{side}_ci")
    if value is None:
        return "n/a"
    return f"{value:.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def _also(row: dict[str, Any], metric: str) -> dict[str, Any]:
    return next((a for a in row.get("also", []) if a["metric"] == metric), {})


def _row(name: str, report: dict[str, Any], wall: float) -> dict[str, Any]:
    summary = report["audit"]["summary"]
    phases = {p["name"]: p for p in report["phases"]}
    stack = report["release"]["state"]["stack"] if report["release"]["state"] else []
    forget, utility = summary["forget"], summary["utility"]
    return {
        "strategy": name,
        "run": report["run"]["id"],
        "forget": forget,
        "utility": utility,
        "strict_f1": _also(forget, "macro_f1"),
        "parse_failures": _also(forget, "parse_failure_rate"),
        "leak": _also(forget, "forget_leak_rate"),
        "weights": [round(e["coefficient"], 4) for e in stack],
        "stop_reason": report["release"]["stop_reason"],
        "reveal_s": phases["reveal"]["seconds"],
        "release_s": phases["release"]["seconds"],
        "audit_s": phases["audit"]["seconds"],
        "wall_s": wall,
        "peak_mb": max(p["peak_rss_mb"] or 0 for p in phases.values()),
    }


def _pct(value: float | None, base: float | None) -> str:
    return f"{100 * value / base:.0f}%" if value is not None and base else "n/a"


def markdown(rows: list[dict[str, Any]], data: str, forgotten: str = "Person") -> str:
    base = rows[0]
    forget, strict, utility = base["forget"], base["strict_f1"], base["utility"]
    lines = [
        f"Evaluation: {data} ({forget['data']['text'] if forget.get('data') else 'n/a'}). "
        "Brackets: 95% bootstrap intervals over passages; the verdicts read the paired interval "
        "of each change.",
        "",
        f"| release | {forgotten} still named (% of base) | strict {forgotten} F1 | "
        f"{forgotten} named in "
        "another type's answer | retained F1 (% of base) | parse failures "
        "| verdict (forget / utility) | weights | Release s | peak MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| base model | {_cell(forget, 'before')} (100%) | {_cell(strict, 'before')} | "
        f"{_cell(base.get('leak', {}), 'before')} | "
        f"{_cell(utility, 'before')} (100%) | {_cell(base['parse_failures'], 'before')} | | | | |",
    ]
    for r in rows:
        f, u = r["forget"], r["utility"]
        lines.append(
            f"| {r['strategy']} | {_cell(f, 'after')} ({_pct(f['after'], f['before'])}) | "
            f"{_cell(r['strict_f1'], 'after')} | {_cell(r.get('leak', {}), 'after')} | "
            f"{_cell(u, 'after')} "
            f"({_pct(u['after'], u['before'])}) | {_cell(r['parse_failures'], 'after')} | "
            f"{f.get('verdict')} / {u.get('verdict')} | "
            f"{', '.join(f'{w:+g}' for w in r['weights']) or 'none (base)'} | "
            f"{r['release_s']:.0f} | {r['peak_mb']:,.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "benchmark")
    parser.add_argument("--quick", action="store_true", help="tiny budgets (a smoke run)")
    parser.add_argument("--only", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument(
        "--data",
        choices=("crossner", "builtin"),
        default="crossner",
        help="CrossNER politics from ../shared/data (Reveal and search on passages 1-60, audit "
        "on 61-650), or the built-in passages with the spec's splits",
    )
    parser.add_argument(
        "--append",
        action="store_true",
        help="add the rows to OUT/benchmark.json (replacing rows of the same name) instead of "
        "starting a new table",
    )
    args = parser.parse_args()
    global DATA
    DATA = args.data
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
        "120 of CrossNER politics passages 61-650 (held out; Reveal and the search read "
        "passages 1-60)"
        if _crossner()
        else "the built-in passages, the spec's audit split"
    )
    (args.out / "benchmark.json").write_text(json.dumps({"data": data, "rows": rows}, indent=1))
    table = markdown(rows, data, "person / politician" if _crossner() else "Person")
    (args.out / "benchmark.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()

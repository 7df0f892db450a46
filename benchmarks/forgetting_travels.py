"""Benchmark: does the forgetting travel? Person in NER on SmolLM2, every row on the same
public evaluation sets and held-out phrasings, headline = the worst cell.

Each row is one `rrtool run` of `specs/person_ner.yaml` (fresh process, own store) with

- `audit.eval_sets`: CrossNER politics and AI (UniversalNER), the GLiNER sample, WNUT-17 dev
  (CoNLL), all read from ../shared/data/ner and sampled among the passages that name a person;
  WNUT-17 *test* is the sealed set (``--sealed``): measured only with ``--with-sealed``, for the
  closing report, never while a variant is being tuned;
- the held-out phrasing family (``rrtool.phrasings``: bare, plain_question, prose_request,
  few_shot, key_value), base and released in each;
- the relearning attack at 16 and 64 forget examples with the base model as the control
  (recovery ratio RR), and the int8/int4 quantization attack.

Rows (``--only`` picks some): the demo spec as it ships (``demo``); the paper's iterative
schedule as the demo ran it until 2026-12-07 (``iterative``, standard phrasing); the same with
Reveal's examples asked in the training family's phrasings in turn (``multi_phrasing``); that
and Reveal over a second built-in style of passages (``styles``); the representation-level
strategy (``rmu``), on the training family (``rmu_phrasings``), and followed by an
answer-format module (``rmu_abstain``).

The rows share one answer cache (OUT/answers.sqlite): the base model's answers, measured in the
first row, are read back in the others.

Writes OUT/results.json (every row's grid, worst cell, relearning and quantization rows, wall
time, the command, the date and the machine) and OUT/results.md (the table).

    python benchmarks/forgetting_travels.py --out reports/travels            # every row
    python benchmarks/forgetting_travels.py --only demo --quick --out /tmp/t  # a smoke run
    python benchmarks/forgetting_travels.py --only rmu --resume --out reports/travels  # go on
    python benchmarks/forgetting_travels.py --only rmu_abstain --set release.rmu.abstain_epochs=4 \
        --out reports/explore                                        # a variant of a row
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NER = ROOT.parent / "shared" / "data" / "ner"
SETS = {
    "crossner_politics": ("universalner_CrossNER_politics.json", "universalner"),
    "crossner_ai": ("universalner_CrossNER_AI.json", "universalner"),
    "gliner_sample": ("gliner_sample_data.json", "gliner"),
    "wnut17_dev": ("wnut17/emerging.dev.conll.txt", "conll"),
}
SEALED = {"wnut17_test": ("wnut17/emerging.test.annotated.txt", "conll")}
PROBES = [
    "audit.probes.relearning=true",
    "audit.probes.quantization=true",
    "audit.probes.elicitation=true",
    "audit.probes.membership=false",
    "audit.probes.linear_probe=false",
    "audit.probes.relearning_ood=false",
]
# The paper's LoRA-composition schedule as the demo ran it until 2026-12-07 (the demo spec
# now runs `rmu` with `release.rmu.abstain`).
ITERATIVE = [
    "release.strategy=iterative",
    "release.rmu.abstain=false",
    "release.schedule=retain_first",
    "release.end_with_retain=true",
    "release.lora.learning_rate=3.0e-4",
    "release.lora.epochs=1",
    "phrasings.training=[standard]",
]
TRAINING_FAMILY = "phrasings.training=[standard,list_instruction,prose_answer,dash_lines]"
# RMU's module (the demo's first): its objective moves slowly at the NLL modules' rate, and one
# epoch of the demo's 60 forget examples is 8 optimiser steps (docs/strategies.md): five epochs.
RMU = [
    "release.strategy=rmu",
    "release.lora.learning_rate=2.0e-3",
    "release.lora.epochs=5",
]
ROWS: dict[str, list[str]] = {
    "demo": [],  # specs/person_ner.yaml as it ships
    "iterative": ITERATIVE,
    # The same schedule with Reveal's examples asked in the training family's phrasings.
    "multi_phrasing": [*ITERATIVE[:-1], TRAINING_FAMILY],
    # And Reveal over a second style of passages (posts, chat, records, ...; people mostly
    # without role titles), so the forget examples share the Person concept, not one style.
    "styles": [
        *ITERATIVE[:-1],
        TRAINING_FAMILY,
        "reveal.extra_contexts=[{path: builtin:ner_styles, format: universalner}]",
    ],
    # RMU alone, on the standard phrasing, then on the training family.
    "rmu": [*RMU, "release.rmu.abstain=false", "phrasings.training=[standard]"],
    "rmu_phrasings": [*RMU, "release.rmu.abstain=false", TRAINING_FAMILY],
    # And an answer-format module after it (release.rmu.abstain): RMU alone leaves the person
    # queries answered with noise, which the audit reads as format collapse.
    "rmu_abstain": [*RMU, "release.rmu.abstain=true", TRAINING_FAMILY],
}
QUICK = [
    "reveal.contexts.limit=100",
    "release.search.budget=2",
    "audit.eval_size=8",
]


def _sets(sealed: bool) -> list[str]:
    chosen = {**SETS, **(SEALED if sealed else {})}
    return [
        f"audit.eval_sets.{name}={{path: {NER / path}, format: {fmt}}}"
        for name, (path, fmt) in chosen.items()
    ]


def run_row(name: str, overrides: list[str], out: Path, resume: bool = False) -> dict[str, Any]:
    """One `rrtool run` in OUT/NAME (``resume``: continue the row's interrupted run there);
    its grid, probes and time read back from its store."""
    work = out / name
    work.mkdir(parents=True, exist_ok=True)
    # One answer cache for every row (rrtool.generation.answer_cache): the base model answers
    # the same grid prompts in each row, so only the first row pays for them.
    cache = work / "answers.sqlite"
    if not cache.exists() and not cache.is_symlink():
        cache.symlink_to(Path("..") / "answers.sqlite")
    args = ["run", str(ROOT / "specs" / "person_ner.yaml"), *(["--resume"] if resume else [])]
    for item in overrides:
        args += ["--set", item]
    log = work / ("resume.log" if resume else "run.log")
    started = time.perf_counter()
    with log.open("w") as handle:
        done = subprocess.run(
            [sys.executable, "-m", "rrtool", *args], stdout=handle, stderr=subprocess.STDOUT,
            cwd=work,
        )  # fmt: skip
    seconds = time.perf_counter() - started
    if done.returncode != 0:  # recorded as failed; the other rows still run
        tail = log.read_text().splitlines()[-5:]
        return {"row": name, "status": f"failed (exit {done.returncode})", "log": tail}
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("rrtool")
    run = client.search_runs([experiment.experiment_id], order_by=["start_time DESC"])[0]

    def artifact(path: str) -> Any:
        return json.loads(
            Path(client.download_artifacts(run.info.run_id, path, str(work / "dl"))).read_text()
        )

    summary, probes = artifact("audit/summary.json"), artifact("audit/probes.json")
    return {
        "row": name,
        "status": "done",
        "overrides": overrides,
        "run_id": run.info.run_id,
        "seconds": round(seconds, 1),
        "summary": summary,
        "grid": artifact("audit/grid.json"),
        "relearning": probes.get("relearning"),
        "quantization": probes.get("quantization"),
    }


def _num(value: Any) -> str:
    return "–" if value is None else f"{value:.2f}"


def _ci(value: Any, interval: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.2f}" + (f" [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else "")


def _int4(row: dict[str, Any]) -> dict[str, Any]:
    """The row's int4 quantization scheme record ({} when it has none)."""
    schemes = (row["quantization"] or {}).get("schemes", [])
    return next((s for s in schemes if s["scheme"] == "int4"), {})


GOAL = 0.30  # the bar: the person named at most 30% of the base model's rate


def summary(rows: list[dict[str, Any]]) -> str:
    """One line per row: the standard phrasing on the built-in split, the worst held-out cell,
    how many held-out cells reach the goal, the retained types' F1 kept (the lowest share
    over the sets, standard phrasing), relearning RR and int4."""
    lines = [
        "| row | audit split, standard | worst held-out cell | held-out cells at <= 0.30 of "
        "base | their verdicts | retained F1 kept (lowest set) | RR at 16 (attack) | int4 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if row["status"] != "done":
            lines.append(f"| {row['row']} | {row['status']} | | | | | | |")
            continue
        cells = [c for c in row["grid"]["rows"] if c.get("forget")]
        own = next(
            (c for c in cells if c["set"] == "audit split" and c["phrasing"] == "standard"), None
        )
        measured = [c for c in cells if c is not own and c["forget"].get("ratio") is not None]
        worst = row["summary"].get("worst") or {}
        reached = sum(1 for c in measured if c["forget"]["ratio"] <= GOAL)
        kept = [c["utility"]["after"] / c["utility"]["before"] for c in cells
                if c.get("utility") and c["utility"].get("before")]  # fmt: skip
        sizes = (row["relearning"] or {}).get("sizes") or []
        rr = next((s.get("recovered") for s in sizes if s["examples"] == 16), None)
        int4 = _int4(row)
        f = (own or {}).get("forget") or {}
        verdicts = Counter(c["forget"].get("verdict") for c in measured)
        # The attack's strength: one epoch (before audit.relearning_steps) or N steps.
        budget = (row["relearning"] or {}).get("budget", "")
        attack = (
            "1 epoch"
            if "1 epoch" in budget
            else budget.split(" optimiser")[0].split(", ")[-1] + " steps"
        )
        lines.append(
            f"| {row['row']} | {_ci(f.get('before'), f.get('before_ci'))} -> "
            f"{_ci(f.get('after'), f.get('after_ci'))} ({f.get('verdict')}) | "
            f"{worst.get('set')} / {worst.get('phrasing')}: {_num(worst.get('before'))} -> "
            f"{_num(worst.get('after'))} (ratio {_num(worst.get('ratio'))}) | "
            f"{reached} of {len(measured)} | "
            f"{', '.join(f'{n} {v}' for v, n in verdicts.most_common())} | "
            f"{f'{min(kept):.0%}' if kept else '–'} | {_num(rr)} ({attack}) | "
            f"{_ci(int4.get('released'), int4.get('released_ci'))} |"
        )
    return "\n".join(lines) + "\n"


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| row | cell | base | released | change [paired 95% CI] | released / base | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if row["status"] != "done":
            lines.append(f"| {row['row']} | {row['status']} | | | | | |")
            continue
        for cell in row["grid"]["rows"]:
            forget = cell.get("forget")
            label = f"{cell['set']} / {cell['phrasing']}"
            if not forget:
                lines.append(
                    f"| {row['row']} | {label} | not measured: {cell.get('error')} | | | | |"
                )
                continue
            ratio = forget.get("ratio")
            lines.append(
                f"| {row['row']} | {label} | {_ci(forget['before'], forget.get('before_ci'))} | "
                f"{_ci(forget['after'], forget.get('after_ci'))} | "
                f"{_ci(forget.get('change'), forget.get('change_ci'))} | "
                f"{'–' if ratio is None else f'{ratio:.2f}'} | {forget.get('verdict')} |"
            )
    # Recovery ratio per relearning size (the sizes a row had: 64 is capped by its examples).
    lines += ["", "| row | worst cell | ratio | RR (relearning examples) | int4 | wall s |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for row in rows:
        if row["status"] != "done":
            continue
        worst = row["summary"].get("worst") or {}
        rr = ", ".join(
            f"{_num(size.get('recovered'))} ({size['examples']})"
            for size in (row["relearning"] or {}).get("sizes", [])
        )
        int4 = _int4(row)
        lines.append(
            f"| {row['row']} | {worst.get('set')} / {worst.get('phrasing')} | "
            f"{worst.get('ratio') if worst.get('ratio') is None else round(worst['ratio'], 2)} | "
            + f"{rr} | {_ci(int4.get('released'), int4.get('released_ci'))} | {row['seconds']} |"
        )
    return summary(rows) + "\n" + "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--table", type=Path, nargs="+", metavar="RESULTS_JSON",
        help="no runs: write OUT/results.md from these results files' rows (docs tables)",
    )  # fmt: skip
    parser.add_argument("--only", nargs="*", choices=list(ROWS))
    parser.add_argument("--quick", action="store_true", help="smaller sizes: a smoke run")
    parser.add_argument(
        "--with-sealed", action="store_true", help="also the sealed set (the closing report)"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue each row's interrupted run in OUT"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", dest="extra",
        help="one more override for every row (repeatable; recorded with the row's overrides)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.table:
        rows = [r for path in args.table for r in json.loads(path.read_text())["rows"]]
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.md").write_text(markdown(rows))
        print(markdown(rows))
        return
    if not NER.exists():
        sys.exit(f"{NER}: the public NER data is not here (this benchmark reads it in place)")
    args.out.mkdir(parents=True, exist_ok=True)
    common = _sets(args.with_sealed) + PROBES + (QUICK if args.quick else [])
    rows = [
        run_row(name, common + ROWS[name] + args.extra, args.out, args.resume)
        for name in args.only or ROWS
    ]
    result = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, "
        f"{__import__('os').cpu_count()} cores",
        "rows": rows,
    }
    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    (args.out / "results.md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()

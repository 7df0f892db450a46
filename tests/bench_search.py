"""Benchmark: does the NeuralUCB instruction search beat a plain instruction and random choice?

Runs Reveal of a spec (default `specs/coding.yaml`: SmolLM2, MBPP-style prompts, pass@1 in the
sandbox; `--spec specs/toxicity.yaml` for the toxicity oracle) three times per seed in one
MLflow store: `neuralucb`, `random` (the same trials and collections, inner
instructions drawn uniformly from the untried pool: the same evaluation budget) and `direct`
(the task's plain instruction over every context). Each is scored the same way on the forget
data it produced, the last collection of the search (the best instruction of the last outer
loop over all contexts) or direct's answers: mean relevance (the spec's oracle),
normalised Vendi diversity of the answers (the Reveal embedder), and their weighted harmonic
mean with the spec's alpha, the score the search optimises. The searches also report their
trials (all picks; in brackets those that generated, i.e. the budget: a pick of an instruction
already scored is a free re-score), the mean score of the generated trials and the best trial
score.

    python tests/bench_search.py --out reports/search            # ~20 min on 2 cores
    python tests/bench_search.py --spec specs/toxicity.yaml --seeds 0 1 2 --out reports/tox
    python tests/bench_search.py --quick --out /tmp/search       # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from bench_support import run_rrtool
from synthetic_bandit import mean_ci, paired_sign_flip_p

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = ("neuralucb", "random", "direct")


def run(
    spec: Path, strategy: str, seed: int, store: str, quick: bool, log: Path, extra: list[str]
) -> tuple[str, float]:
    sets = [f"reveal.strategy={strategy}", f"seed={seed}", *extra]
    sets.append(f"tracking.run_name=search {spec.stem} {strategy} seed {seed}")
    if quick:
        sets += ["reveal.contexts.limit=8", "reveal.outer_iterations=1",
                 "reveal.inner_iterations=2", "reveal.search.initial_evaluations=2",
                 "reveal.search.pool_size=16", "reveal.contexts_per_trial=2",
                 "reveal.generation.max_new_tokens=32"]  # fmt: skip
    args = ["run", str(spec)]
    args += ["--phase", "reveal", "--tracking-uri", store]
    args += [a for s in sets for a in ("--set", s)]
    return run_rrtool(args, log)


def measure(store: str, run_id: str, alpha: float, embedder: Any) -> dict[str, Any]:
    from rrtool.artifacts import REVEAL_FORGET, REVEAL_TRIALS
    from rrtool.reveal.scoring import combined_score
    from rrtool.reveal.vendi import VendiAccumulator
    from rrtool.reveal_record import RevealRecord
    from rrtool.tracking import Tracker, mlflow_client, resolve_store

    where = resolve_store(store)
    tracker = Tracker(mlflow_client(where), run_id, where)
    run = tracker.client.get_run(run_id)
    jsonl = lambda path: tracker.read_jsonl(path) or []  # noqa: E731 - absent: nothing recorded

    forget = [RevealRecord.from_dict(r) for r in jsonl(REVEAL_FORGET)]
    last = max((r.outer for r in forget), default=0)
    final = [r for r in forget if r.outer == last]
    scored = [r.relevance for r in final if r.relevance is not None]
    relevance = sum(scored) / len(scored) if scored else 0.0
    vectors = embedder.encode([r.completion for r in final])
    vendi = VendiAccumulator(vectors.shape[1])
    vendi.add(vectors)
    diversity = vendi.normalised_score_with()
    # Confirmation scores (kind `confirm`) are not picks: they re-score the best on other contexts.
    trials = [t for t in jsonl(REVEAL_TRIALS) if t["kind"] not in ("rescore", "confirm")]
    # Trial quality over the instructions the search paid generations for (a cached pick
    # re-scores an earlier one and would count it twice).
    generated = [t for t in trials if not t["cached"]]
    return {
        "run": run_id,
        "records": len(final),
        "relevance": relevance,
        "diversity": diversity,
        "score": combined_score(relevance, diversity, alpha),
        "trials": len(trials),
        "distinct_instructions": len({t["instruction"] for t in trials}),
        "generated_trials": len(generated),
        "mean_trial_score": (
            sum(t["score"] for t in generated) / len(generated) if generated else None
        ),
        "best_trial_score": max((t["score"] for t in trials), default=None),
        "reveal_s": run.data.metrics.get("phase/reveal/seconds"),
        "generated_tokens_per_s": run.data.metrics.get("reveal/tokens_per_second"),
    }


def _f(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def markdown(rows: list[dict[str, Any]], alpha: float, oracle: str) -> str:
    lines = [
        f"Forget data scored alike (alpha = {alpha}): mean relevance of the answers "
        f"(`{oracle}`), normalised Vendi diversity, and their weighted harmonic mean.",
        "",
        "| strategy | seed | records | relevance | diversity | score | trials (generated) | "
        "distinct instructions | mean trial score | best trial score | Reveal s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['strategy']} | {r['seed']} | {r['records']} | {_f(r['relevance'])} | "
            f"{_f(r['diversity'])} | {_f(r['score'])} | "
            f"{r['trials']} ({r['generated_trials']}) | "
            f"{r['distinct_instructions'] or ''} | {_f(r['mean_trial_score'])} | "
            f"{_f(r['best_trial_score'])} | {r['reveal_s'] or 0:.0f} |"
        )
    seeds = {r["seed"] for r in rows}
    if len(seeds) > 1:
        lines += ["", f"Mean over the {len(seeds)} seeds:", ""]
        lines += [
            "| strategy | relevance | diversity | score | mean trial score |",
            "|---|---|---|---|---|",
        ]
        for strategy in dict.fromkeys(r["strategy"] for r in rows):
            mine = [r for r in rows if r["strategy"] == strategy]
            keys = ("relevance", "diversity", "score", "mean_trial_score")
            mean = {
                k: sum(v) / len(v) if (v := [r[k] for r in mine if r[k] is not None]) else None
                for k in keys
            }
            lines.append(
                f"| {strategy} | {_f(mean['relevance'])} | {_f(mean['diversity'])} | "
                f"{_f(mean['score'])} | {_f(mean['mean_trial_score'])} |"
            )
        lines += paired(rows)
    return "\n".join(lines) + "\n"


def paired(rows: list[dict[str, Any]]) -> list[str]:
    """NeuralUCB against each other strategy on the same seeds: the mean difference of the
    forget-data score, its 95% bootstrap interval over seeds, wins, and the exact one-sided
    sign-flip p-value that NeuralUCB scores higher (seeds are the units: the same contexts,
    split and model per seed)."""
    score = {(r["strategy"], r["seed"]): r["score"] for r in rows}
    out: list[str] = []
    for other in ("random", "direct"):
        seeds = sorted(s for (n, s) in score if n == "neuralucb" and (other, s) in score)
        if len(seeds) < 2:
            continue
        diffs = [score[("neuralucb", s)] - score[(other, s)] for s in seeds]
        low, high = mean_ci(diffs)
        if not out:
            out += ["", "NeuralUCB minus the other strategy, paired by seed (forget-data score):",
                    "", "| against | seeds | mean difference [95% CI] | wins / ties | p (higher) |",
                    "|---|---|---|---|---|"]  # fmt: skip
        out.append(
            f"| {other} | {len(seeds)} | {sum(diffs) / len(diffs):+.3f} [{low:+.3f}, {high:+.3f}] "
            f"| {sum(d > 0 for d in diffs)} / {sum(d == 0 for d in diffs)} "
            f"| {paired_sign_flip_p(diffs):.3f} |"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "search")
    parser.add_argument("--quick", action="store_true", help="tiny budgets (a smoke run)")
    parser.add_argument("--only", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    parser.add_argument("--spec", type=Path, default=ROOT / "specs" / "coding.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: the spec's")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="spec override (repeat)"
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    store = f"sqlite:///{(args.out / 'mlflow.db').resolve()}"
    import yaml

    from rrtool.reveal.embedder import SentenceEmbedder

    args.spec = args.spec.resolve()  # rrtool runs in another directory
    spec = yaml.safe_load(args.spec.read_text())
    alpha = float(spec["reveal"].get("alpha", 0.5))
    embedder = SentenceEmbedder(spec["reveal"].get("embedding_model", "builtin:all-minilm-l6-v2"))
    rows = []
    for seed in args.seeds or [int(spec.get("seed", 0))]:
        for strategy in args.only:
            print(f"{strategy} seed {seed} ...", flush=True)
            log = args.out / f"{strategy}-{seed}.log"
            run_id, wall = run(args.spec, strategy, seed, store, args.quick, log, args.set)
            measured = measure(store, run_id, alpha, embedder)
            rows.append({"strategy": strategy, "seed": seed, "wall_s": wall} | measured)
            print(json.dumps(rows[-1]), flush=True)
    (args.out / "search.json").write_text(json.dumps({"alpha": alpha, "rows": rows}, indent=1))
    table = markdown(rows, alpha, spec["oracle"]["name"])
    (args.out / "search.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()

"""Benchmark: does the NeuralUCB search find better arms than random choice where the truth is
known? (``tests/synthetic_bandit.py``: Reveal's pool, features, surrogate and UCB code; rewards
a known smooth function of the pool points with noise SD 0.074; no LLM, seconds per search.)

Rows: NeuralUCB as shipped (features standardised, then unit norm) at each exploration scale
given, NeuralUCB as before the unit-norm change (standardised only) at the first, uniform random
choice, and both with the best 3 confirmed on fresh noise (``reveal.search.confirm_top``), all with Reveal's default budget (5 initial, 3 outer x 20 inner, top-10 re-scored) and
the same seeds; every search of a seed sees the same problem and initial arms. Per row: the
true reward of the arm the search answers with (mean and 95% bootstrap interval over seeds),
its regret, the best true reward among the arms it evaluated, and the paired one-sided
sign-flip p-value of "better than random". Writes OUT/bandit_synthetic.md and .json.

    python tests/bench_bandit_synthetic.py --epochs 300 --out reports/bandit   # ~25 min, 1 core
    python tests/bench_bandit_synthetic.py --seeds 4 --epochs 100        # a smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from synthetic_bandit import mean_ci, paired_sign_flip_p, problem, search

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "bandit")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument(
        "--epochs", type=int, default=1000, help="surrogate fit steps (Reveal: 1000)"
    )
    parser.add_argument("--nu", type=float, nargs="+", default=[1.0, 0.1])
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows: list[tuple[str, str, dict[str, Any]]] = [("random", "random", {})]
    for nu in args.nu:
        rows.append((f"NeuralUCB, unit-norm features, nu={nu:g}", "neuralucb", {"nu": nu}))
    rows.append(
        (f"NeuralUCB, standardised features (before), nu={args.nu[0]:g}", "neuralucb",
         {"nu": args.nu[0], "unit_norm": False})
    )  # fmt: skip
    rows.append(
        (f"NeuralUCB, unit-norm features, nu={args.nu[0]:g}, best 3 confirmed", "neuralucb",
         {"nu": args.nu[0], "confirm_top": 3})
    )  # fmt: skip
    rows.append(("random, best 3 confirmed", "random", {"confirm_top": 3}))
    results: dict[str, list[Any]] = {name: [] for name, _, _ in rows}
    seconds: dict[str, float] = dict.fromkeys(results, 0.0)
    for seed in range(args.seeds):
        prob = problem(seed)
        for name, strategy, options in rows:
            started = time.perf_counter()
            results[name].append(search(prob, strategy, seed, epochs=args.epochs, **options))
            seconds[name] += time.perf_counter() - started
        print(seed, {n: round(r[-1].chosen, 3) for n, r in results.items()}, flush=True)
    base = [o.chosen for o in results["random"]]
    table = []
    for name, outcomes in results.items():
        chosen = [o.chosen for o in outcomes]
        diffs = [c - b for c, b in zip(chosen, base, strict=True)]
        table.append(
            {
                "row": name,
                "chosen": statistics.fmean(chosen),
                "chosen_ci": mean_ci(chosen),
                "regret": statistics.fmean(o.regret for o in outcomes),
                "best_evaluated": statistics.fmean(o.best_evaluated for o in outcomes),
                "minus_random": statistics.fmean(diffs),
                "minus_random_ci": mean_ci(diffs),
                "p_better_than_random": None if name == "random" else paired_sign_flip_p(diffs),
                "wins": sum(d > 0 for d in diffs),
                "curve": [
                    statistics.fmean(c) for c in zip(*(o.curve for o in outcomes), strict=True)
                ],
                "seconds_per_search": seconds[name] / args.seeds,
            }
        )
    optimum = statistics.fmean(o.optimum for o in results["random"])
    lines = [
        f"Synthetic bandit (`tests/synthetic_bandit.py`), {args.seeds} seeds, pool 1,000, "
        f"576-d features, noise SD 0.074, surrogate {args.epochs} Adam steps per fit; mean "
        f"optimum {optimum:.3f}. Brackets: 95% bootstrap intervals over seeds; p: paired "
        "one-sided sign-flip test against random on the same seeds.",
        "",
        "| search | true reward of the chosen arm | regret | best evaluated | minus random | "
        f"wins of {args.seeds} | p (better than random) | s per search |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        p = "" if r["p_better_than_random"] is None else f"{r['p_better_than_random']:.4f}"
        lines.append(
            f"| {r['row']} | {r['chosen']:.3f} [{r['chosen_ci'][0]:.3f}, {r['chosen_ci'][1]:.3f}] "
            f"| {r['regret']:.3f} | {r['best_evaluated']:.3f} | {r['minus_random']:+.3f} "
            f"[{r['minus_random_ci'][0]:+.3f}, {r['minus_random_ci'][1]:+.3f}] | "
            f"{r['wins'] if r['row'] != 'random' else ''} | {p} | {r['seconds_per_search']:.1f} |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bandit_synthetic.json").write_text(json.dumps(table, indent=1))
    (args.out / "bandit_synthetic.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

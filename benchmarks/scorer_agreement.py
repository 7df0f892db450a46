"""How well the offline toxicity scorer agrees with Perspective, on RealToxicityPrompts.

The ``toxicity`` oracle scores offline (``alt-profanity-check`` by default); the paper and
RealToxicityPrompts itself score with Google's Perspective API. RTP ships Perspective's
``toxicity`` for every prompt and continuation, so the agreement can be measured on real text
without a remote call: each text scored by the oracle (``rrtool.oracles.create_oracle``, as a
run scores), compared with its Perspective score.

Measures, on all texts and on the continuations alone (what the audit scores are model
continuations), each with a 95% percentile bootstrap interval over texts:

- Spearman rank correlation with Perspective's toxicity;
- ROC AUC of the oracle's score for Perspective's label ``toxicity >= 0.5`` (RTP's "toxic");
- at the oracle's own threshold 0.5: the share of Perspective-toxic texts it flags (recall),
  the share of its flags Perspective calls toxic (precision), and Cohen's kappa;
- the mean score of each, so a rate read off one is not taken for the other's.

The data is read in place from ../shared/data/realtoxicityprompts (never copied).

    python benchmarks/scorer_agreement.py --out reports/scorer          # default scorer
    python benchmarks/scorer_agreement.py --out OUT --oracle-option scorer=detoxify \\
        --oracle-option checkpoint=PATH                                 # another scorer
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RTP = ROOT.parent / "shared" / "data" / "realtoxicityprompts"
FILES = ("toxic.jsonl", "nontoxic.jsonl")  # challenging prompts, then non-challenging ones
TOXIC = 0.5  # Perspective's and RTP's "toxic"; also the oracle's default threshold
REPLICATES = 1000


def read_texts(folder: Path) -> list[dict[str, Any]]:
    """Every prompt and continuation of RTP with a Perspective toxicity score."""
    texts = []
    for name in FILES:
        for line in (folder / name).read_text().splitlines():
            record = json.loads(line)
            for part in ("prompt", "continuation"):
                item = record[part]
                if item.get("toxicity") is not None and item["text"].strip():
                    texts.append({"file": name, "part": part, "text": item["text"],
                                  "perspective": float(item["toxicity"])})  # fmt: skip
    return texts


def _ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks (ties share theirs), as Spearman's correlation takes them."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return (sums / counts)[inverse]


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.corrcoef(_ranks(x), _ranks(y))[0, 1])


def roc_auc(score: np.ndarray, label: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counted half (Mann-Whitney)."""
    positives, negatives = label.sum(), (~label).sum()
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = _ranks(score) + 1
    return float((ranks[label].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def at_threshold(score: np.ndarray, label: np.ndarray) -> dict[str, float]:
    flagged = score >= TOXIC
    tp = float((flagged & label).sum())
    observed = float((flagged == label).mean())
    expected = float(flagged.mean() * label.mean() + (1 - flagged.mean()) * (1 - label.mean()))
    return {
        "recall": tp / label.sum() if label.sum() else float("nan"),
        "precision": tp / flagged.sum() if flagged.sum() else float("nan"),
        "kappa": (observed - expected) / (1 - expected) if expected < 1 else float("nan"),
    }


def measures(score: np.ndarray, perspective: np.ndarray) -> dict[str, float]:
    label = perspective >= TOXIC
    return {
        "spearman": spearman(score, perspective),
        "roc_auc": roc_auc(score, label),
        **at_threshold(score, label),
        "oracle_mean": float(score.mean()),
        "perspective_mean": float(perspective.mean()),
        "oracle_rate": float((score >= TOXIC).mean()),
        "perspective_rate": float(label.mean()),
    }


def with_intervals(
    score: np.ndarray, perspective: np.ndarray, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """Each measure with its 95% percentile bootstrap interval (texts resampled)."""
    point = measures(score, perspective)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {k: [] for k in point}
    for _ in range(REPLICATES):
        idx = rng.integers(0, len(score), len(score))
        for key, value in measures(score[idx], perspective[idx]).items():
            draws[key].append(value)
    return {
        key: {"value": round(value, 4),
              "ci": [round(float(np.nanpercentile(draws[key], q)), 4) for q in (2.5, 97.5)]}
        for key, value in point.items()
    }  # fmt: skip


def scorer(options: dict[str, str]) -> tuple[str, Callable[[list[str]], list[float]]]:
    """The oracle's name for its scorer and a function scoring texts as a run does."""
    from rrtool.oracles.contract import Sample
    from rrtool.oracles.registry import create_oracle

    oracle = create_oracle("toxicity", options)

    def score(texts: list[str]) -> list[float]:
        samples = [Sample(str(i), "", t) for i, t in enumerate(texts)]
        return [s.score for s in oracle.score(samples)]

    name = oracle.score([Sample("0", "", "hello")])[0].details.get("scorer", "toxicity")
    return str(name), score


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"Scorer `{result['scorer']}` against Perspective `toxicity` on RealToxicityPrompts "
        f"({result['date'][:10]}; `{result['command']}`).",
        "",
        "| texts | n | Spearman | ROC AUC (Perspective >= 0.5) | recall at 0.5 | precision at "
        "0.5 | kappa | mean: scorer / Perspective | rate >= 0.5: scorer / Perspective |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def ci(m: dict[str, Any]) -> str:
        return f"{m['value']:.2f} [{m['ci'][0]:.2f}, {m['ci'][1]:.2f}]"

    for group in result["groups"]:
        m = group["measures"]
        lines.append(
            f"| {group['name']} | {group['n']} | {ci(m['spearman'])} | {ci(m['roc_auc'])} | "
            f"{ci(m['recall'])} | {ci(m['precision'])} | {ci(m['kappa'])} | "
            f"{m['oracle_mean']['value']:.2f} / {m['perspective_mean']['value']:.2f} | "
            f"{m['oracle_rate']['value']:.2f} / {m['perspective_rate']['value']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--oracle-option", action="append", default=[], metavar="KEY=VALUE",
        help="an option of the toxicity oracle (repeatable)",
    )  # fmt: skip
    args = parser.parse_args()
    if not RTP.exists():
        sys.exit(f"{RTP}: the RealToxicityPrompts data is not here (read in place)")
    options = dict(o.split("=", 1) for o in args.oracle_option)
    texts = read_texts(RTP)
    name, score = scorer(options)
    started = time.perf_counter()
    scores = np.array(score([t["text"] for t in texts]))
    seconds = time.perf_counter() - started
    perspective = np.array([t["perspective"] for t in texts])
    groups = []
    for label, keep in (
        ("all prompts and continuations", lambda t: True),
        ("continuations", lambda t: t["part"] == "continuation"),
        ("continuations of challenging prompts", lambda t: t["part"] == "continuation"
         and t["file"] == "toxic.jsonl"),
    ):  # fmt: skip
        mask = np.array([keep(t) for t in texts])
        groups.append({"name": label, "n": int(mask.sum()),
                       "measures": with_intervals(scores[mask], perspective[mask])})  # fmt: skip
    result = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "data": str(RTP.relative_to(ROOT.parent)),
        "scorer": name,
        "scoring_seconds": round(seconds, 2),
        "groups": groups,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    (args.out / "results.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()

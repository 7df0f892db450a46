"""Evaluations that generate answers and have an oracle judge them (NER F1, pass@1,
toxicity, a user's plugin).

The oracle's own ``aggregate`` gives the metrics, so the audit reports exactly what the plugin
defines; subsets (e.g. RealToxicityPrompts' challenging prompts) are aggregated separately and
prefixed with the subset's name. Which scorer and which sandbox isolation stood behind the
numbers is read from the scores' details (``scorer``, ``isolation``), never assumed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rrtool.evaluators.base import Evaluation
from rrtool.generation.base import Generator, Prompt, SamplingParams
from rrtool.oracles.contract import Oracle, Sample, Score
from rrtool.tasks import prompt_text


@dataclass(frozen=True)
class Item:
    """One evaluation prompt and what the oracle needs to judge its answers."""

    id: str
    prompt: Prompt
    reference: dict[str, Any] = field(default_factory=dict)


def _scorer(oracle: Oracle, scores: list[Score]) -> str:
    seen = dict.fromkeys(
        str(s.details[key]) for s in scores for key in ("scorer", "isolation") if s.details.get(key)
    )
    version = getattr(oracle, "version", None)
    head = f"oracle {oracle.name}" + (f" {version}" if version else "")
    return head + (f" ({', '.join(seen)})" if seen else "")


def oracle_evaluation(
    name: str,
    generator: Generator,
    oracle: Oracle,
    items: list[Item],
    params: SamplingParams,
    *,
    chat: bool,
    definition: str,
    subsets: Mapping[str, Callable[[dict[str, Any]], bool]] | None = None,
    progress: Callable[[int], None] | None = None,
) -> Evaluation:
    """Generate ``params.num_samples`` answers per item, score them, aggregate."""
    if not items:
        raise ValueError(f"{name}: nothing to evaluate")
    outputs = generator.generate([i.prompt for i in items], params, chat=chat, progress=progress)
    samples: list[Sample] = []
    owner: list[int] = []
    for index, (item, completions) in enumerate(zip(items, outputs, strict=True)):
        for k, completion in enumerate(completions):
            samples.append(
                Sample(
                    id=item.id if len(completions) == 1 else f"{item.id}#{k}",
                    prompt=prompt_text(item.prompt),
                    completion=completion.text,
                    reference=item.reference,
                )
            )
            owner.append(index)
    scores = oracle.score(samples)
    metrics = dict(oracle.aggregate(samples, scores))
    for subset, member in (subsets or {}).items():
        chosen = [j for j, i in enumerate(owner) if member(items[i].reference)]
        if chosen:
            part = oracle.aggregate([samples[j] for j in chosen], [scores[j] for j in chosen])
            metrics |= {f"{subset}/{key}": value for key, value in part.items()}
    first: dict[int, int] = {}
    for j, i in enumerate(owner):
        first.setdefault(i, j)
    answers = [
        {
            "id": items[i].id,
            "prompt": samples[j].prompt,
            "completion": samples[j].completion,
            "reference": items[i].reference,
            "score": scores[j].score,
        }
        for i, j in first.items()
    ]
    return Evaluation(
        name,
        {k: float(v) for k, v in metrics.items()},
        definition,
        _scorer(oracle, scores),
        len(items),
        answers,
    )

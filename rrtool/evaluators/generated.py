"""Evaluations that generate answers and have an oracle judge them (NER F1, pass@1,
toxicity, a user's plugin).

The oracle's own ``aggregate`` gives the metrics, so the audit reports exactly what the plugin
defines; subsets (e.g. RealToxicityPrompts' challenging prompts) are aggregated separately and
prefixed with the subset's name. Which scorer and which sandbox isolation stood behind the
numbers is read from the scores' details (``scorer``, ``isolation``), never assumed.

Every metric carries a 95% bootstrap interval (:mod:`rrtool.evaluators.bootstrap`): the units
are the items with all their samples, or groups of items that were drawn together (``groups``,
else the items' ``reference["passage_id"]`` where present: a passage's NER queries), and each
replicate re-runs ``aggregate`` on the resampled samples and scores (subsets likewise); nothing
is generated or scored again. An item drawn a second time is a new item to the aggregate: its
copies' sample ids, prompts and any ``reference["task_id"]`` carry a ``~<copy>`` suffix, so
oracles that group samples by prompt (toxicity) or task (pass@k) count it twice.

Cost: an oracle's ``aggregate`` is plain Python (ner_f1: about 2.6 ms per 1000 samples), so
the number of replicates is ``REPLICATES`` (1000) up to ``SAMPLE_BUDGET`` samples aggregated
per evaluation and lower beyond it (``SAMPLE_BUDGET // samples per replicate``, at least
``MIN_REPLICATES``): about 1000 NER queries get 600 replicates, 2 seconds of aggregation. The
count depends only on the number of samples and subsets' sizes, so a before and an after
evaluation of the same items still pair replicate by replicate.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rrtool.evaluators.base import Evaluation
from rrtool.evaluators.bootstrap import REPLICATES, bootstrap
from rrtool.generation.base import Generator, Prompt, SamplingParams
from rrtool.oracles.contract import Oracle, Sample, Score
from rrtool.tasks import prompt_text

SAMPLE_BUDGET = 600_000
"""Samples aggregated over all replicates before the replicate count is lowered."""
MIN_REPLICATES = 200


def replicates_for(samples_per_replicate: int) -> int:
    """Bootstrap replicates for an evaluation aggregating this many samples per replicate."""
    if samples_per_replicate <= 0:
        return REPLICATES
    return max(MIN_REPLICATES, min(REPLICATES, SAMPLE_BUDGET // samples_per_replicate))


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


def _metrics(
    oracle: Oracle,
    samples: list[Sample],
    scores: list[Score],
    owner: list[int],
    members: Mapping[str, list[bool]],
) -> dict[str, float]:
    """The oracle's aggregate of all samples, then of each subset's, prefixed."""
    metrics = dict(oracle.aggregate(samples, scores))
    for subset, member in members.items():
        chosen = [j for j, i in enumerate(owner) if member[i]]
        if chosen:
            part = oracle.aggregate([samples[j] for j in chosen], [scores[j] for j in chosen])
            metrics |= {f"{subset}/{key}": value for key, value in part.items()}
    return {k: float(v) for k, v in metrics.items()}


def _copy(sample: Sample, copy: int) -> Sample:
    """The ``copy``-th repeat of a sample in a bootstrap resample, distinct to the aggregate."""
    reference = sample.reference
    if "task_id" in reference:
        reference = {**reference, "task_id": f"{reference['task_id']}~{copy}"}
    return Sample(
        id=f"{sample.id}~{copy}",
        prompt=f"{sample.prompt}~{copy}",
        completion=sample.completion,
        reference=reference,
    )


def _intervals(
    oracle: Oracle,
    items: list[Item],
    samples: list[Sample],
    scores: list[Score],
    owner: list[int],
    members: Mapping[str, list[bool]],
    groups: Sequence[str] | None,
    seed: int,
) -> tuple[dict[str, list[float]], dict[str, list[float]], int]:
    """Bootstrap over groups of items (each item with all its samples); also the number of
    groups (units)."""
    keys: list[Any]
    if groups is not None:
        keys = [("group", str(g)) for g in groups]
    else:
        keys = [
            ("passage", str(item.reference["passage_id"]))
            if item.reference.get("passage_id") is not None
            else ("item", index)
            for index, item in enumerate(items)
        ]
    position: dict[Any, int] = {}
    members_of: list[list[int]] = []  # per unit (group): its samples' indices, in order
    for j, i in enumerate(owner):
        unit = position.setdefault(keys[i], len(position))
        if unit == len(members_of):
            members_of.append([])
        members_of[unit].append(j)
    copies: dict[tuple[int, int], Sample] = {}

    def statistic(drawn: Sequence[int]) -> dict[str, float]:
        times: dict[int, int] = {}
        chosen: list[Sample] = []
        chosen_scores: list[Score] = []
        chosen_owner: list[int] = []
        for unit in drawn:
            copy = times.get(unit, 0)
            times[unit] = copy + 1
            for j in members_of[unit]:
                if copy:
                    sample = copies.get((j, copy))
                    if sample is None:
                        sample = copies[(j, copy)] = _copy(samples[j], copy)
                else:
                    sample = samples[j]
                chosen.append(sample)
                chosen_scores.append(scores[j])
                chosen_owner.append(owner[j])
        return _metrics(oracle, chosen, chosen_scores, chosen_owner, members)

    work = len(samples) + sum(member[i] for member in members.values() for i in owner)
    result = bootstrap(
        range(len(members_of)), statistic, replicates=replicates_for(work), seed=seed
    )
    intervals = {k: list(v) for k, v in result.intervals.items()}
    return intervals, result.replicates, len(members_of)


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
    groups: Sequence[str] | None = None,
    seed: int = 0,
    drafts: Mapping[str, str] | None = None,
) -> Evaluation:
    """Generate ``params.num_samples`` answers per item, score them, aggregate, and bootstrap
    the metrics' intervals over the items (see module doc).

    ``drafts``: a guessed answer by item id (greedy only; the generator checks it and it
    changes no answer, see ``Generator.generate``).

    ``groups`` gives one key per item; items with equal keys are resampled together (the
    queries of one passage). Without it, items with the same ``reference["passage_id"]`` go
    together and every other item is its own unit. ``seed`` seeds the resampling.
    """
    if not items:
        raise ValueError(f"{name}: nothing to evaluate")
    if groups is not None and len(groups) != len(items):
        raise ValueError(f"{name}: {len(groups)} groups for {len(items)} items")
    # Only a greedy backend uses them (``HFGenerator.generate``); fakes in tests take none.
    guess = {} if drafts is None else {"drafts": [drafts.get(item.id) for item in items]}
    outputs = generator.generate(
        [i.prompt for i in items], params, chat=chat, progress=progress, **guess
    )
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
    members = {
        subset: [bool(member(item.reference)) for item in items]
        for subset, member in (subsets or {}).items()
    }
    metrics = _metrics(oracle, samples, scores, owner, members)
    intervals, replicates, units = _intervals(
        oracle, items, samples, scores, owner, members, groups, seed
    )
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
        metrics,
        definition,
        _scorer(oracle, scores),
        len(items),
        answers,
        intervals,
        replicates,
        units,
    )

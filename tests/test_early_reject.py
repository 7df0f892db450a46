"""Early-decided weight candidates: utility in stages, rejection once it is decided."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace
from typing import Any

import pytest

from rrtool.evaluators.base import Evaluation
from rrtool.evaluators.bootstrap import bootstrap
from rrtool.evaluators.staged import MemoGenerator, stages
from rrtool.evaluators.suite import Headline, OracleMeasure
from rrtool.generation.base import Completion, GenerationStats, SamplingParams
from rrtool.release.evaluate import EARLY_LOOKS, Evaluator
from rrtool.release.weights import Start, search_weight, utility_threshold
from rrtool.spec import RulesSpec, WeightSearchSpec


def test_stages_grow_keep_units_whole_and_end_with_everything() -> None:
    items = list(range(30))
    groups = [f"p{i // 3}" for i in items]  # 10 passages of 3 queries
    found = list(stages(items, groups, looks=2, seed=1))
    assert [len(s) for s in found] == [12, 21, 30]  # ceil(10/3)=4, ceil(20/3)=7 passages
    assert found[-1] == items  # the full measurement, in the original order
    for subset in found[:-1]:
        passages = {groups[i] for i in subset}
        assert all(groups[j] not in passages or j in subset for j in items)  # whole passages
    assert set(found[0]) < set(found[1])
    assert list(stages(items, groups, 2, 1)) == found  # seeded
    assert list(stages(items, groups, 2, 2))[0] != found[0]
    assert (
        list(stages([1, 2], None, 2, 0)) == [[1, 2]] or len(list(stages([1, 2], None, 2, 0))) == 2
    )


class Scripted:
    """A generator that answers from a table (a stand-in whose answers the test controls)."""

    def __init__(self) -> None:
        self.stats = GenerationStats()
        self.asked: list[str] = []

    def generate(self, prompts, params, *, chat=True, progress=None):  # type: ignore[no-untyped-def]
        self.asked += list(prompts)
        return [[Completion(f"answer to {p}", 3, "stop")] for p in prompts]


def test_memo_generator_answers_each_prompt_once() -> None:
    inner = Scripted()
    memo = MemoGenerator(inner)  # type: ignore[arg-type]
    greedy = SamplingParams(temperature=0.0)
    first = memo.generate(["a", "b"], greedy)
    assert memo.generate(["b", "a", "c"], greedy) == [
        first[1],
        first[0],
        [Completion("answer to c", 3, "stop")],
    ]
    assert inner.asked == ["a", "b", "c"] and memo.generated == 3
    with pytest.raises(ValueError, match="greedy"):
        memo.generate(["a"], SamplingParams(temperature=1.0, seed=0))


def _unit_mean_measure(scores: list[float], calls: list[int]) -> OracleMeasure:
    """A utility measure whose metric is the mean of per-passage scores, with the real
    bootstrap over the passages evaluated (what oracle_evaluation computes for a mean)."""

    def evaluate(_: Any, chosen: list[int], drafts: Any) -> Evaluation:
        calls.append(len(chosen))
        values = [scores[i] for i in chosen]
        result = bootstrap(values, lambda v: {"f1": sum(v) / len(v)}, seed=0)
        return Evaluation(
            "utility",
            {"f1": sum(values) / len(values)},
            "mean",
            "test",
            len(chosen),
            [],
            {k: list(v) for k, v in result.intervals.items()},
            result.replicates,
        )

    return OracleMeasure(
        evaluate, len(scores), [f"p{i}" for i in range(len(scores))], True, Scripted, 0
    )  # type: ignore[arg-type,return-value]


def _evaluator(
    utility: list[float], confidence: float | None = 0.95
) -> tuple[Evaluator, list[int], list[int]]:
    calls: list[int] = []
    forget_calls: list[int] = []

    def forget() -> Evaluation:
        forget_calls.append(1)
        return Evaluation("forget", {"rate": 0.5}, "", "", 10)

    evaluator = Evaluator.__new__(Evaluator)
    evaluator.evaluations = 0
    evaluator.suite = SimpleNamespace(  # type: ignore[assignment]
        headlines={"forget": Headline("rate", "lower"), "utility": Headline("f1", "higher")},
        measures={"forget": forget, "utility": _unit_mean_measure(utility, calls)},
        spec=SimpleNamespace(
            release=SimpleNamespace(search=SimpleNamespace(early_reject_confidence=confidence))
        ),
    )
    return evaluator, calls, forget_calls


@pytest.mark.parametrize("level", [0.02, 0.9])
def test_a_clear_margin_gives_the_full_evaluations_decision(level: float) -> None:
    rng = random.Random(0)
    passages = [min(1.0, max(0.0, level + rng.uniform(-0.05, 0.05))) for _ in range(30)]
    threshold = 0.4
    early, calls, forget_calls = _evaluator(passages)
    scores = early(reject_below=threshold)
    full, full_calls, _ = _evaluator(passages, confidence=None)
    reference = full(reject_below=threshold)
    assert full_calls == [30] and not reference.decided_early
    # Same decision as the full measurement: rejected exactly when the full u is below.
    assert scores.decided_early == (reference.u < threshold)
    if level < threshold:
        assert calls == [10] and scores.prompts == 10 and not forget_calls  # the first look
        assert math.isnan(scores.s) and scores.u < threshold
    else:
        assert calls == [10, 20, 30] and forget_calls == [1]  # every look, then forget
        assert scores.u == reference.u and scores.s == reference.s == 0.5
        assert scores.prompts == 30 + 10


def test_a_borderline_candidate_is_measured_fully() -> None:
    rng = random.Random(1)
    # Mean just under the threshold, noisy passages: no look is conclusive.
    passages = [rng.choice([0.0, 0.75]) for _ in range(30)]
    early, calls, forget_calls = _evaluator(passages)
    scores = early(reject_below=0.36)
    assert calls[-1] == 30 and not scores.decided_early and forget_calls == [1]


def test_without_a_threshold_nothing_is_staged() -> None:
    early, calls, forget_calls = _evaluator([0.0] * 30)
    scores = early()
    assert calls == [30] and forget_calls == [1] and not scores.decided_early
    assert EARLY_LOOKS == 2


def test_search_records_early_rejections_and_never_chooses_them_when_others_pass() -> None:
    rules, search = RulesSpec(), WeightSearchSpec(budget=6, max_weight=1.0)
    start = Start(s=0.8, u=0.6, u_ref=0.6, u_base=0.6)
    threshold = utility_threshold("mu", start, rules)
    assert threshold == pytest.approx(rules.step_utility_floor * 0.6)

    def evaluate(weight: float) -> Any:
        if weight > 0.5:  # collapse: decided on a third of the prompts
            return SimpleNamespace(
                s=math.nan, u=0.05, s_ci=None, u_ci=None, decided_early=True, prompts=4
            )
        return SimpleNamespace(s=0.8 - weight, u=0.6 - weight / 4, s_ci=None, u_ci=None, prompts=24)

    result = search_weight("mu", evaluate, start, search, rules)
    early = [c for c in result.candidates if c.decided_early]
    assert early and all(not c.accepted and c.prompts == 4 for c in early)
    assert all(c.to_dict()["s"] is None for c in early)
    chosen = next(c for c in result.candidates if c.chosen)
    assert not chosen.decided_early and chosen.weight <= 0.5 and chosen.accepted
    assert utility_threshold("mu", start, RulesSpec(mode="paper")) is None
    assert utility_threshold("lambda", start, rules) == pytest.approx(rules.utility_recovery * 0.6)

"""Bootstrap intervals: the resampling itself, paired changes, and each evaluator's units."""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from rrtool.evaluators import gsm8k
from rrtool.evaluators.base import Evaluation
from rrtool.evaluators.bootstrap import (
    JACKKNIFE_GROUPS,
    REPLICATES,
    bca_interval,
    bootstrap,
    expanded_level,
    interval_text,
    paired_change,
    paired_interval,
    resample_indices,
    t_quantile,
)
from rrtool.evaluators.generated import (
    MIN_REPLICATES,
    Item,
    oracle_evaluation,
    replicates_for,
)
from rrtool.evaluators.perplexity import _window_units, perplexity
from rrtool.generation.base import SamplingParams
from rrtool.models import LoadedModel
from rrtool.oracles.contract import Requirements, Sample, Score
from rrtool.oracles.registry import create_oracle
from tests.test_evaluators import TEXT, _load


def mean(values: Sequence[float]) -> dict[str, float]:
    return {"mean": sum(values) / len(values)}


def width(interval: Sequence[float]) -> float:
    return interval[1] - interval[0]


# ------------------------------------------------------------------ resampling
def test_resampling_is_seeded() -> None:
    assert resample_indices(50, 20, seed=3) == resample_indices(50, 20, seed=3)
    assert resample_indices(50, 20, seed=3) != resample_indices(50, 20, seed=4)
    draws = resample_indices(50, 20, seed=3)
    assert len(draws) == 20 and all(len(d) == 50 and set(d) <= set(range(50)) for d in draws)
    # With replacement: some unit is drawn twice in a replicate.
    assert any(len(set(d)) < 50 for d in draws)

    data = [float(i % 7) for i in range(60)]
    first, again = bootstrap(data, mean, seed=5), bootstrap(data, mean, seed=5)
    assert first.intervals == again.intervals and first.replicates == again.replicates
    other = bootstrap(data, mean, seed=6)
    assert other.replicates["mean"] != first.replicates["mean"]
    assert len(first.replicates["mean"]) == REPLICATES


def test_bernoulli_mean_interval_matches_the_normal_approximation() -> None:
    n, p = 400, 0.3
    data = [1.0] * int(n * p) + [0.0] * int(n * (1 - p))
    random.Random(0).shuffle(data)
    result = bootstrap(data, mean, seed=0)
    low, high = result.intervals["mean"]
    assert low < p < high
    expected = 2 * 1.96 * math.sqrt(p * (1 - p) / n)
    assert width((low, high)) == pytest.approx(expected, rel=0.25)


def test_too_few_units_or_replicates_give_no_interval() -> None:
    assert bootstrap([1.0], mean).intervals == {} and bootstrap([], mean).replicates == {}

    def sometimes(values: Sequence[float]) -> dict[str, float]:
        # "rare" exists only when unit 0 was drawn at least 3 times (rarely), "nan" never is finite.
        out = {"mean": sum(values) / len(values), "nan": math.nan}
        if values.count(0.0) >= 3 or len(set(values)) == len(values):
            out["rare"] = 1.0
        return out

    result = bootstrap([float(i) for i in range(30)], sometimes, seed=1)
    assert set(result.intervals) == {"mean"}
    assert set(result.replicates) == {"mean", "nan", "rare"}
    assert all(math.isnan(v) for v in result.replicates["nan"])
    assert sum(math.isnan(v) for v in result.replicates["rare"]) > REPLICATES / 2


def test_replicates_are_rounded_to_six_significant_digits() -> None:
    result = bootstrap([1 / 3, 2 / 3, 1 / 7, 5 / 9], mean, replicates=50)
    assert all(v == float(f"{v:.6g}") for v in result.replicates["mean"])
    assert any(v != round(v, 3) for v in result.replicates["mean"])


# ------------------------------------------------------------------------ BCa
def test_bca_matches_scipy_on_skewed_data() -> None:
    """BCa moves the interval of a right-skewed mean to the right of the percentile one, as
    scipy's BCa does (different resamples: agreement to the resampling noise)."""
    stats = pytest.importorskip("scipy.stats")
    rng = random.Random(0)
    data = [rng.expovariate(1.0) for _ in range(30)]
    ours = bootstrap(data, mean, replicates=20000, seed=1)
    assert ours.methods == {"mean": "BCa"} and ours.units == 30
    theirs = stats.bootstrap(
        (data,), lambda x: sum(x) / len(x), method="BCa", n_resamples=20000, random_state=1
    ).confidence_interval
    percentile = stats.bootstrap(
        (data,), lambda x: sum(x) / len(x), method="percentile", n_resamples=20000, random_state=1
    ).confidence_interval
    width = theirs.high - theirs.low
    assert ours.intervals["mean"] == pytest.approx((theirs.low, theirs.high), abs=0.03 * width)
    assert ours.intervals["mean"][1] > percentile.high + 0.05 * width


def test_bca_degenerate_cases() -> None:
    # No variation between units: the interval is the point, never NaN.
    same = bootstrap([0.25] * 20, mean)
    assert same.intervals == {"mean": (0.25, 0.25)} and same.methods == {"mean": "BCa"}
    assert bca_interval([0.25] * 100, 0.25, [0.25] * 20) == (0.25, 0.25, "BCa")
    # One unit: no interval; two: one, from the min and max.
    assert bootstrap([1.0], mean).intervals == {}
    two = bootstrap([0.0, 1.0], mean)
    assert two.intervals["mean"] == (0.0, 1.0)
    # NaN and None replicates are skipped; too many give no interval.
    values = [i / 100 for i in range(100)]
    with_gaps: list[float | None] = [*values[:80], *[math.nan] * 10, *[None] * 10]
    found = bca_interval(with_gaps, 0.4, None)
    assert found is not None and found.method == "BC" and 0 < found.low < 0.4 < found.high
    assert bca_interval(values[:40] + [math.nan] * 60, 0.2, None) is None
    # A jackknife value missing: no acceleration (BC), said so. The point outside every
    # replicate, or NaN: BCa is undefined, the percentile interval is used.
    for point, jackknife, method in (
        (0.5, [0.5, math.nan, 0.4], "BC"),
        (2.0, [1.0, 2.0], "percentile"),
        (math.nan, None, "percentile"),
    ):
        found = bca_interval(values, point, jackknife)
        assert found is not None and found.method == method


def test_bootstrap_names_the_method_of_each_interval() -> None:
    def stat(values: Sequence[float]) -> dict[str, float]:
        # "whole" exists only on all 12 units (and every resample of them), not left one out.
        out = {"mean": sum(values) / len(values)}
        if len(values) == 12:
            out["whole"] = max(values)
        return out

    result = bootstrap([float(i % 4) for i in range(12)], stat, seed=3)
    assert result.methods == {"mean": "BCa", "whole": "BC"}


def test_the_jackknife_is_grouped_for_many_units() -> None:
    calls: list[int] = []

    def stat(values: Sequence[float]) -> dict[str, float]:
        calls.append(len(values))
        return {"mean": sum(values) / len(values)}

    bootstrap([float(i % 3) for i in range(250)], stat, replicates=10)
    # 1 call on all units, 10 replicates, then the jackknife: JACKKNIFE_GROUPS groups.
    assert len(calls) == 1 + 10 + JACKKNIFE_GROUPS
    assert sorted(set(calls[11:])) == [247, 248]  # 250 units in 100 groups of 2 or 3


def test_t_quantile_and_the_expanded_level() -> None:
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 4, 15, 39, 99, 200, 201, 1000):
        for p in (0.6, 0.975, 0.9995):
            assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-9)
    with pytest.raises(ValueError, match="0.5 <= p < 1"):
        t_quantile(0.2, 3)
    assert expanded_level(0.95, 16) == pytest.approx(0.9723, abs=1e-4)
    assert expanded_level(0.95, 40) == pytest.approx(0.9595, abs=1e-4)
    assert expanded_level(0.95, 100) == pytest.approx(0.9539, abs=1e-4)
    assert expanded_level(0.95, 1) == 0.95 and expanded_level(0.95, 10**6) > 0.95


# -------------------------------------------------------------- paired changes
def test_paired_change_of_identical_and_shifted_replicates() -> None:
    before = bootstrap([float(i % 5) for i in range(40)], mean, seed=2).replicates["mean"]
    assert paired_change(before, before) == (0.0, 0.0)
    low, high = paired_change(before, [b + 0.25 for b in before])  # type: ignore[misc]
    assert low == pytest.approx(0.25) and high == pytest.approx(0.25)
    assert paired_change(before, before[:-1]) is None
    half_missing = [math.nan if i % 3 else v for i, v in enumerate(before)]
    assert paired_change(before, half_missing) is None
    with_none: list[float | None] = [None, *before[1:]]
    assert paired_change(with_none, before) == (0.0, 0.0)


def test_paired_interval_bias_correction_and_expansion() -> None:
    """3 of 40 units named the entity before and none after: BCa's acceleration (the skewness
    of three -1 among 37 zeros) would exclude 0; the bias-corrected interval, widened for 40
    units, does not (the same three units could have changed either way)."""
    before = bootstrap([1.0] * 3 + [0.0] * 37, mean, seed=0)
    after = bootstrap([0.0] * 40, mean, seed=0)
    b, a = before.replicates["mean"], after.replicates["mean"]
    plain = paired_interval(b, a)
    assert plain is not None and plain.method == "percentile"
    assert paired_change(b, a) == (plain.low, plain.high)
    corrected = paired_interval(b, a, change=-3 / 40)
    assert corrected is not None and corrected.method == "BC"
    expanded = paired_interval(b, a, change=-3 / 40, units=40)
    assert expanded is not None and expanded.method == "expanded BC"
    assert expanded.low <= corrected.low and expanded.high == 0.0
    diffs = [y - x for x, y in zip(b, a, strict=True)]
    bca = bca_interval(diffs, -3 / 40, [-(3 - v) / 39 for v in [1.0] * 3 + [0.0] * 37])
    assert bca is not None and bca.high < 0  # what BCa would have called forgotten
    # No variation: the point, whichever the method.
    assert paired_interval(b, b, change=0.0, units=40) == (0.0, 0.0, "expanded BC")
    # Rounded replicates still tie with the change measured on unrounded values.
    third = bootstrap([1.0, 0.0, 0.0] * 10, mean, seed=1)
    none = bootstrap([0.0] * 30, mean, seed=1)
    found = paired_interval(third.replicates["mean"], none.replicates["mean"], change=-1 / 3)
    assert found is not None and found.low < -1 / 3 < found.high


def test_paired_interval_is_much_narrower_than_the_unpaired_ones() -> None:
    """Units vary a lot, the change is small and nearly the same on every unit: pairing the
    replicates cancels the unit-to-unit variation, two separate intervals cannot."""
    rng = random.Random(0)
    before_units = [rng.gauss(0.0, 1.0) for _ in range(200)]
    after_units = [x + 0.05 + rng.gauss(0.0, 0.01) for x in before_units]
    before = bootstrap(before_units, mean, seed=7)
    after = bootstrap(after_units, mean, seed=7)
    change = paired_change(before.replicates["mean"], after.replicates["mean"])
    assert change is not None and change[0] > 0.04 and change[1] < 0.06
    # Unpaired, the two intervals overlap almost entirely and say nothing about the change.
    assert after.intervals["mean"][0] < before.intervals["mean"][1]
    assert width(change) < 0.05 * min(
        width(before.intervals["mean"]), width(after.intervals["mean"])
    )
    # A different seed on one side breaks the pairing: the "change" is as wide as the intervals.
    unpaired = bootstrap(after_units, mean, seed=8)
    broken = paired_change(before.replicates["mean"], unpaired.replicates["mean"])
    assert broken is not None and width(broken) > 10 * width(change)


def test_paired_change_through_evaluations() -> None:
    """Two GSM8K evaluations of the same questions: after fixes 10 of 100 answers. The
    separate intervals overlap; the paired one excludes no change."""
    golds = [str(i) for i in range(100)]
    rng = random.Random(1)
    right = [rng.random() < 0.5 for _ in golds]
    wrong_ones = [i for i, r in enumerate(right) if not r][:10]
    after_right = [r or i in wrong_ones for i, r in enumerate(right)]
    before = gsm8k.score(
        [f"#### {g if r else -1}" for g, r in zip(golds, right, strict=True)], golds
    )
    after = gsm8k.score(
        [f"#### {g if r else -1}" for g, r in zip(golds, after_right, strict=True)], golds
    )
    key = "strict_accuracy"
    change = paired_change(before.replicates[key], after.replicates[key])
    assert change is not None and 0 < change[0] < 0.1 < change[1] < 0.2
    assert after.intervals[key][0] < before.intervals[key][1]
    assert width(before.intervals[key]) > 0.15  # about 2 * 1.96 * 0.05


def test_interval_text() -> None:
    assert interval_text(0.36412, (0.2513, 0.47)) == "0.364 [0.251, 0.47]"
    assert interval_text(2.5, None) == "2.5"


# ----------------------------------------------------------------- Evaluation
def test_evaluation_records_intervals_and_chosen_replicates() -> None:
    e = Evaluation(
        "e",
        {"a": 1.0, "b": 2.0},
        "d",
        "s",
        3,
        [],
        {"a": [0.5, 1.5]},
        {"a": [1.0, math.nan], "b": [2.0, 2.0]},
    )
    assert e.to_dict()["intervals"] == {"a": [0.5, 1.5]} and "replicates" not in e.to_dict()
    assert e.to_dict(replicates=["b"])["replicates"] == {"b": [2.0, 2.0]}
    assert e.to_dict(replicates=None)["replicates"] == {"a": [1.0, None], "b": [2.0, 2.0]}
    old_style = Evaluation("e", {"a": 1.0}, "d", "s", 1, [])
    assert old_style.intervals == {} and old_style.to_dict()["intervals"] == {}


# --------------------------------------------------------- oracle evaluations
class _Completion:
    def __init__(self, text: str) -> None:
        self.text = text


class FakeGenerator:
    """Answers ``yes`` to prompts whose number is even (``num_samples`` times)."""

    def generate(
        self, prompts: list[Any], params: SamplingParams, *, chat: bool, progress: Any = None
    ) -> list[list[_Completion]]:
        return [
            [_Completion("yes" if int(str(p).split()[-1]) % 2 == 0 else "no")] * params.num_samples
            for p in prompts
        ]


class GroupOracle:
    """Scores ``yes`` as 1; aggregates what a resample looks like to an oracle."""

    name = "groups"
    description = "test oracle"
    requires = Requirements()

    def score(self, samples: Sequence[Sample], **kwargs: Any) -> list[Score]:
        return [Score(float(s.completion == "yes")) for s in samples]

    def aggregate(
        self, samples: Sequence[Sample], scores: Sequence[Score], **kwargs: Any
    ) -> dict[str, float]:
        per_item = Counter((s.reference["g"], s.reference["k"]) for s in samples)
        # A group is split when its items were not drawn equally often.
        drawn: dict[str, set[int]] = {}
        for (group, _), times in per_item.items():
            drawn.setdefault(group, set()).add(times)
        return {
            "mean": sum(s.score for s in scores) / len(scores),
            "split_groups": float(sum(len(t) > 1 for t in drawn.values())),
            "distinct_ids": float(len({s.id for s in samples}) == len(samples)),
            "distinct_prompts": float(
                len({s.prompt for s in samples}) * 2 == len(samples)  # 2 samples per item
            ),
            "groups_seen": float(len(drawn)),
        }


def _group_items() -> tuple[list[Item], list[str]]:
    items, groups = [], []
    for g in range(12):
        size = 1 + g % 4
        for k in range(size):
            n = len(items)
            items.append(Item(f"i{n}", f"question {n}", {"g": f"g{g}", "k": k}))
            groups.append(f"g{g}")
    return items, groups


def _run(items: list[Item], **kwargs: Any) -> Evaluation:
    return oracle_evaluation(
        "fake",
        FakeGenerator(),
        GroupOracle(),
        items,
        SamplingParams(num_samples=2),
        chat=False,
        definition="d",
        **kwargs,
    )


def test_oracle_evaluation_intervals_and_groups() -> None:
    items, groups = _group_items()
    together = _run(items, groups=groups, seed=3)
    assert set(together.intervals) == set(together.metrics)
    low, high = together.intervals["mean"]
    assert low < together.metrics["mean"] < high
    # Equal keys move together: no replicate ever splits a group.
    assert set(together.replicates["split_groups"]) == {0.0}
    # Repeated draws are new items to the aggregate (ids and prompts made distinct).
    assert set(together.replicates["distinct_ids"]) == {1.0}
    assert set(together.replicates["distinct_prompts"]) == {1.0}
    # Resampling 12 groups with replacement leaves some out.
    assert min(together.replicates["groups_seen"]) < 12

    alone = _run(items, seed=3)  # every item its own unit: groups are split
    assert max(alone.replicates["split_groups"]) > 0

    by_passage = [
        Item(i.id, i.prompt, {**i.reference, "passage_id": g})
        for i, g in zip(items, groups, strict=True)
    ]
    assert set(_run(by_passage, seed=3).replicates["split_groups"]) == {0.0}

    assert _run(items, groups=groups, seed=3).replicates == together.replicates
    assert _run(items, groups=groups, seed=4).replicates != together.replicates
    with pytest.raises(ValueError, match="3 groups for 30 items"):
        _run(items, groups=groups[:3])


def test_oracle_evaluation_with_ner_f1_and_subsets() -> None:
    items = [
        Item(
            f"q{i}",
            f"passage {i}",
            {"type": "person" if i % 3 else "location", "entities": ["Ada"], "hard": i % 2 == 0},
        )
        for i in range(40)
    ]

    class Answers(FakeGenerator):
        def generate(self, prompts: list[Any], params: SamplingParams, **kwargs: Any) -> Any:
            return [[_Completion('["Ada"]' if i % 4 else "[]")] for i, _ in enumerate(prompts)]

    result = oracle_evaluation(
        "ner",
        Answers(),
        create_oracle("ner_f1", {}),
        items,
        SamplingParams(),
        chat=False,
        definition="d",
        subsets={"hard": lambda r: r["hard"]},
    )
    for key in ("macro_f1", "person/f1", "hard/macro_f1"):
        low, high = result.intervals[key]
        assert low <= result.metrics[key] <= high and low < high
    assert len(result.replicates["macro_f1"]) == REPLICATES


def test_replicates_are_lowered_only_for_large_evaluations() -> None:
    assert replicates_for(10) == REPLICATES and replicates_for(600) == REPLICATES
    assert MIN_REPLICATES < replicates_for(1000) < REPLICATES
    assert replicates_for(10**7) == MIN_REPLICATES


# ------------------------------------------------------ perplexity and GSM8K
@pytest.fixture(scope="module")
def handle(model_cache: Path) -> LoadedModel:
    return _load(model_cache)


@pytest.mark.usefixtures("one_torch_thread")
def test_perplexity_intervals_over_windows(handle: LoadedModel) -> None:
    result = perplexity(handle.model, handle.tokenizer, TEXT, window=4, batch_size=8)
    assert result.count >= 10
    assert set(result.intervals) == set(result.metrics)
    for key in ("token_perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte"):
        low, high = result.intervals[key]
        assert low < result.metrics[key] < high
        assert len(result.replicates[key]) == REPLICATES
    # The windows' words and bytes add up to the scored text's, so on all windows the
    # statistic is the reported number.
    tokens = handle.tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    windows = [tokens[i : i + 4] for i in range(0, len(tokens), 4)]
    units = _window_units(handle.tokenizer, windows, [1.0] * len(windows), 37, 205)
    assert [math.fsum(c) for c in zip(*units, strict=True)] == pytest.approx(
        [len(windows), len(tokens), 37, 205]
    )


@pytest.mark.usefixtures("one_torch_thread")
def test_uniform_model_perplexity_interval_is_a_point(model_cache: Path) -> None:
    """Every token costs ln V under a uniform model, so every resample has token perplexity V."""
    uniform = _load(model_cache)
    with torch.no_grad():
        uniform.model.get_output_embeddings().weight.zero_()
    vocab = uniform.model.get_output_embeddings().weight.shape[0]
    result = perplexity(uniform.model, uniform.tokenizer, TEXT, window=5)
    low, high = result.intervals["token_perplexity"]
    assert low == pytest.approx(vocab, rel=1e-6) and high == pytest.approx(vocab, rel=1e-6)


def test_gsm8k_intervals() -> None:
    records = [{"question": f"q{i}", "answer": f"a\n#### {i}"} for i in range(42)]

    def generate(prompts: list[str]) -> list[str]:
        # strict right on every third question, flexible right on every other one.
        return [
            f"#### {i + 2}" if i % 3 == 0 else f"so {i + 2}" if i % 2 == 0 else "#### 0"
            for i in range(len(prompts))
        ]

    result = gsm8k.evaluate(generate, records, shots=2)
    assert result.definition.startswith("2-shot; ")
    assert set(result.intervals) == {"strict_accuracy", "flexible_accuracy"}
    for key, value in result.metrics.items():
        low, high = result.intervals[key]
        assert 0 <= low < value < high <= 1
    again = gsm8k.evaluate(generate, records, shots=2)
    assert again.replicates == result.replicates
    other = gsm8k.evaluate(generate, records, shots=2, seed=1)
    assert other.replicates != result.replicates

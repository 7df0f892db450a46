"""Disjoint Reveal / search / audit splits of the shared data, and the audit's verdicts."""

from __future__ import annotations

import pytest

from rrtool import splits
from rrtool.audit.verdict import summarise, verdict
from rrtool.data import load_records
from rrtool.errors import UserError
from rrtool.evaluators.bootstrap import bootstrap
from rrtool.evaluators.suite import Headline
from rrtool.spec import DataSource, Spec
from tests.conftest import tiny_spec

NER = DataSource(path="builtin:ner_passages", format="universalner")


def _spec(**sections) -> Spec:
    return Spec.model_validate(tiny_spec(**sections))


def test_ner_passages_are_cut_whole_into_disjoint_splits_of_the_stated_sizes() -> None:
    spec = _spec()  # search 0.2, audit 0.4 of 150 passages
    records = load_records(NER)
    parts = {role: splits.part_of(records, NER, role, spec) for role in splits.ROLES}
    passages = {role: {r["text"] for r in p.records} for role, p in parts.items()}
    assert {role: len(p) for role, p in passages.items()} == {
        "reveal": 60, "search": 30, "audit": 60
    }  # fmt: skip
    assert not passages["reveal"] & passages["search"]
    assert not passages["reveal"] & passages["audit"]
    assert not passages["search"] & passages["audit"]
    # A passage moves with all five of its entity-type queries.
    assert all(len(p.records) == 5 * len(passages[r]) for r, p in parts.items())
    assert parts["audit"].held_out and parts["search"].held_out
    assert not parts["reveal"].held_out
    # Seeded: the same spec always cuts the same way; another seed cuts another way.
    again = splits.part_of(records, NER, "audit", spec)
    assert again.records == parts["audit"].records
    other = splits.part_of(records, NER, "audit", _spec(seed=1))
    assert {r["text"] for r in other.records} != passages["audit"]


def test_a_zero_share_reads_the_whole_source_in_sample() -> None:
    spec = _spec(splits={"search": 0.0, "audit": 0.0})
    part = splits.read(NER, "audit", spec)
    assert not part.split and not part.held_out and part.units == 150
    assert "in-sample" in part.describe()["text"]


def test_an_empty_split_is_a_clear_error() -> None:
    spec = _spec()
    source = NER.model_copy(update={"limit": 5})  # one passage
    with pytest.raises(UserError, match="the `search` split of builtin:ner_passages is empty"):
        splits.read(source, "search", spec)


def test_shares_leave_room_for_reveal() -> None:
    with pytest.raises(ValueError, match="must stay below 1"):
        _spec(splits={"search": 0.5, "audit": 0.5})


def test_explicit_data_that_overlaps_the_shared_source_is_in_sample() -> None:
    a = DataSource(path="builtin:ner_passages", format="universalner", limit=100)
    b = DataSource(path="builtin:ner_passages", format="universalner", offset=100)
    c = DataSource(path="builtin:ner_passages", format="universalner", offset=50)
    assert not splits.overlap(a, b) and splits.overlap(a, c)
    assert splits.whole(b, "audit", a).held_out
    assert not splits.whole(c, "audit", a).held_out


def _side(values: list[float], degenerate: float = 0.0) -> dict:
    """An evaluation as recorded: the mean of ``values`` with its bootstrap."""
    stat = lambda xs: {"m": sum(xs) / len(xs)}  # noqa: E731
    boot = bootstrap(values, stat, seed=0)
    return {
        "metrics": {"m": stat(values)["m"], "degenerate_rate": degenerate},
        "intervals": {k: list(v) for k, v in boot.intervals.items()},
        "replicates": boot.replicates,
    }


def _summary(before: dict, after: dict, key: str = "forget") -> dict:
    data = {key: {"held_out": True, "text": "held-out"}}
    return summarise({key: Headline("m", "lower")}, {key: before}, {key: after}, data)[key]


def test_verdicts_read_the_paired_interval() -> None:
    named = [1.0] * 30 + [0.0] * 10  # the entity named in 75% of answers
    forgotten = [0.0] * 40
    row = _summary(_side(named), _side(forgotten))
    assert row["verdict"] == "forgotten"
    assert row["change"] == pytest.approx(-0.75) and row["change_ci"][1] < 0
    assert row["before_ci"][0] < 0.75 < row["before_ci"][1]
    # One answer of 40 changed: inside the noise.
    row = _summary(_side(named), _side([1.0] * 29 + [0.0] * 11))
    assert row["verdict"] == "inside the noise"
    # Forgotten only because the answers became empty or looped: format collapse.
    row = _summary(_side(named), _side(forgotten, degenerate=0.6))
    assert row["verdict"] == "format collapse"
    # Worse after than before.
    row = _summary(_side(forgotten), _side(named))
    assert row["verdict"] == "not forgotten (worse)"


def test_a_verdict_without_intervals_says_so() -> None:
    row = {"change": -0.5, "change_ci": None, "better": "lower"}
    assert verdict("forget", row, {}) == "no interval: cannot tell the change from noise"

"""Disjoint Reveal / search / audit splits of the shared data."""

from __future__ import annotations

import pytest

from rrtool import splits
from rrtool.data import load_records
from rrtool.errors import UserError
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

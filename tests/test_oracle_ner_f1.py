"""The ner_f1 oracle: parsing, normalisation, per-query F1 and batch aggregation."""

from __future__ import annotations

import pytest
from rrtool_oracles.ner_f1 import NerF1Oracle, build_query, normalise, parse_prediction

from rrtool.oracles.contract import Oracle, Requirements, Sample, Score


def _sample(
    completion: str, entities: list[str], entity_type: str = "person", sid: str = "s"
) -> Sample:
    return Sample(
        id=sid,
        prompt=build_query("some text", entity_type),
        completion=completion,
        reference={"type": entity_type, "entities": entities},
    )


def test_satisfies_contract() -> None:
    oracle = NerF1Oracle()
    assert isinstance(oracle, Oracle)
    assert oracle.name == "ner_f1"
    assert "\n" not in NerF1Oracle.description
    assert NerF1Oracle.requires == Requirements(reference=True)


def test_build_query_is_universalner_format() -> None:
    assert build_query("Ada met Charles.", "person") == (
        "Text: Ada met Charles.\nWhat describes person in the text?"
    )
    with pytest.raises(ValueError):
        build_query("x", "  ")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("The Beatles", "beatles"),
        ("  Dr.   J.R.R.  Tolkien ", "dr jrr tolkien"),
        ("O\u2019Brien", "obrien"),
        ("A Tale of Two Cities", "tale of two cities"),
        ("Theodore", "theodore"),  # "the" is dropped only as a whole word
        ("ANNA-MARIE", "annamarie"),
        ("the", ""),
    ],
)
def test_normalise(raw: str, expected: str) -> None:
    assert normalise(raw) == expected


@pytest.mark.parametrize(
    ("completion", "entities", "error"),
    [
        ('["Ada", "Charles"]', ["Ada", "Charles"], False),
        ('Sure! The answer is ["Ada"] and [1, 2].', ["Ada"], False),
        ('["Smith [Jr.]", "Bo"]', ["Smith [Jr.]", "Bo"], False),  # bracket inside a string
        ("[1815, 1852]", ["1815", "1852"], False),
        ("[]", [], False),
        ("No entities here.", [], True),
        ("['Ada']", [], True),  # Python repr, not JSON
        ('["Ada", "Char', [], True),  # truncated generation
        ('["Ada", {"x": 1}]', [], True),
        ('["Ada", null]', [], True),
        ('["Ada", true]', [], True),
    ],
)
def test_parse_prediction(completion: str, entities: list[str], error: bool) -> None:
    assert parse_prediction(completion) == (entities, error)


def test_per_query_f1_and_details() -> None:
    oracle = NerF1Oracle()
    # gold {ada lovelace, charles babbage, lord byron}; predicted {ada lovelace, mary shelley}
    # with a duplicate (after normalisation) that must not count twice.
    sample = _sample(
        '["Ada Lovelace", "ada lovelace.", "Mary Shelley"]',
        ["Ada Lovelace", "Charles Babbage", "Lord Byron"],
    )
    (score,) = oracle.score([sample])
    assert score.details["tp"] == 1
    assert score.details["fp"] == 1
    assert score.details["fn"] == 2
    assert score.details["predicted"] == ["ada lovelace", "mary shelley"]
    assert score.details["gold"] == ["ada lovelace", "charles babbage", "lord byron"]
    assert score.details["parse_error"] is False
    # P = 1/2, R = 1/3, F1 = 2PR/(P+R) = 0.4
    assert score.score == pytest.approx(0.4)


def test_edge_scores() -> None:
    oracle = NerF1Oracle()
    scores = oracle.score(
        [
            _sample("[]", []),  # nothing to find, nothing found
            _sample("[]", ["Ada"]),  # missed everything
            _sample('["Ada"]', []),  # invented an entity
            _sample("I cannot answer that.", ["Ada"]),  # refusal: parse error, not a crash
            _sample('["THE ADA!"]', ["Ada"]),  # matches after normalisation
        ]
    )
    assert [s.score for s in scores] == [1.0, 0.0, 0.0, 0.0, 1.0]
    assert [s.details["parse_error"] for s in scores] == [False, False, False, True, False]
    assert all(0.0 <= s.score <= 1.0 for s in scores)


def test_aggregate_micro_per_type_and_macro() -> None:
    oracle = NerF1Oracle()
    samples = [
        # person: tp=2 fp=0 fn=0, then tp=0 fp=1 fn=2
        _sample('["Ada", "Charles"]', ["Ada", "Charles"], sid="p1"),
        _sample('["Mary"]', ["Byron", "Percy"], sid="p2"),
        # location: tp=1 fp=1 fn=0, and one unparsable answer (fn=1)
        _sample('["London", "Paris"]', ["London"], "location", sid="l1"),
        _sample("no idea", ["Rome"], "location", sid="l2"),
    ]
    scores = oracle.score(samples)
    metrics = oracle.aggregate(samples, scores)
    # person micro: tp=2 fp=1 fn=2 -> P=2/3 R=1/2 F1=4/7 (not the mean of per-query F1s, 0.5)
    assert metrics["person/precision"] == pytest.approx(2 / 3)
    assert metrics["person/recall"] == pytest.approx(1 / 2)
    assert metrics["person/f1"] == pytest.approx(4 / 7)
    assert metrics["person/support"] == 4.0
    # location micro: tp=1 fp=1 fn=1 -> P=R=F1=1/2
    assert metrics["location/f1"] == pytest.approx(0.5)
    assert metrics["location/support"] == 2.0
    assert metrics["macro_f1"] == pytest.approx((4 / 7 + 0.5) / 2)
    assert metrics["parse_failures"] == 1.0
    assert all(isinstance(v, float) for v in metrics.values())


def test_types_option_restricts_aggregation() -> None:
    oracle = NerF1Oracle(types=["Person", "organisation"])
    samples = [
        _sample('["Ada"]', ["Ada"], sid="p"),
        _sample("garbage", ["Rome"], "location", sid="l"),
    ]
    metrics = oracle.aggregate(samples, oracle.score(samples))
    assert metrics["person/f1"] == 1.0
    assert not any(k.startswith("location/") for k in metrics)
    # "organisation" has no query in the batch: left out, not a vacuous 1.0.
    assert not any(k.startswith("organisation/") for k in metrics)
    assert metrics["macro_f1"] == 1.0
    assert metrics["parse_failures"] == 0.0  # the failed location query is not aggregated


def test_aggregate_rejects_mismatched_or_foreign_scores() -> None:
    oracle = NerF1Oracle()
    samples = [_sample('["Ada"]', ["Ada"])]
    with pytest.raises(ValueError, match="pair up"):
        oracle.aggregate(samples, [])
    with pytest.raises(ValueError, match="ner_f1"):
        oracle.aggregate(samples, [Score(score=1.0, details={})])


@pytest.mark.parametrize(
    "reference",
    [{}, {"type": "person"}, {"entities": ["Ada"]}, {"type": "person", "entities": "Ada"}],
)
def test_bad_reference_is_a_clear_error(reference: dict) -> None:
    sample = Sample(id="bad-1", prompt="p", completion='["Ada"]', reference=reference)
    with pytest.raises(ValueError, match="bad-1"):
        NerF1Oracle().score([sample])


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"types": "person"}, TypeError),
        ({"types": []}, ValueError),
        ({"types": ["person", ""]}, ValueError),
        ({"typo": 1}, TypeError),
    ],
)
def test_invalid_options_rejected(options: dict, error: type[Exception]) -> None:
    with pytest.raises(error):
        NerF1Oracle(**options)


def test_score_ignores_unknown_kwargs() -> None:
    oracle = NerF1Oracle()
    samples = [_sample('["Ada"]', ["Ada"])]
    scores = oracle.score(samples, future_context=object())
    assert oracle.aggregate(samples, scores, future_context=1)["person/f1"] == 1.0

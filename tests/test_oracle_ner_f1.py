"""The ner_f1 oracle: parsing, normalisation, per-query F1 and batch aggregation."""

from __future__ import annotations

from typing import Any

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
    assert NerF1Oracle.requires == Requirements(reference=True, target_kinds=("ner",))


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


# --- format-robust measures -------------------------------------------------------

PASSAGE = (
    "Helena Stroud, the Prime Minister of Varn, met Imre Kallas in Korth"
    " to sign the annual trade treaty."
)
GOLD = ["Helena Stroud", "Imre Kallas"]


def _query(
    completion: str,
    entities: list[str] | None = None,
    entity_type: str = "person",
    passage: str = PASSAGE,
    sid: str = "q",
) -> Sample:
    return Sample(
        id=sid,
        prompt=build_query(passage, entity_type),
        completion=completion,
        reference={"type": entity_type, "entities": GOLD if entities is None else entities},
    )


def _details(completion: str, entities: list[str] | None = None, **kw: Any) -> dict:
    (score,) = NerF1Oracle().score([_query(completion, entities, **kw)])
    return dict(score.details)


def _robust(d: dict) -> tuple[int, int, int]:
    return d["robust_tp"], d["robust_fp"], d["robust_fn"]


def test_json_answer_naming_the_person() -> None:
    d = _details('["Helena Stroud"]')
    assert d["parse_error"] is False and (d["tp"], d["fp"], d["fn"]) == (1, 0, 1)
    assert d["mentioned"] == ["helena stroud"]
    assert d["robust_predicted"] == ["helena stroud"]
    assert _robust(d) == (1, 0, 1)
    assert d["echo"] is False and d["empty"] is False


def test_json_without_spaces_still_names_both() -> None:
    # normalise() deletes '","' and would glue "stroudimre": matching splits on separators.
    d = _details('["Helena Stroud","Imre Kallas"]')
    assert d["mentioned"] == ["helena stroud", "imre kallas"]
    assert _robust(d) == (2, 0, 0)


def test_prose_answer_naming_the_person() -> None:
    (score,) = NerF1Oracle().score(
        [
            _query(
                "The person described is Helena Stroud, the Prime Minister of Varn.",
                ["Helena Stroud"],
            )
        ]
    )
    d = score.details
    assert score.score == 0.0 and d["parse_error"] is True  # strict F1 is fooled
    assert d["mentioned"] == ["helena stroud"]
    # capitalised runs; the sentence-initial "The" is dropped
    assert d["robust_predicted"] == ["helena stroud", "prime minister", "varn"]
    assert _robust(d) == (1, 2, 0)
    assert d["echo"] is False


def test_bare_name_without_brackets() -> None:
    d = _details("Imre Kallas")
    assert d["parse_error"] is True
    assert d["mentioned"] == ["imre kallas"]
    assert d["robust_predicted"] == ["imre kallas"]
    assert _robust(d) == (1, 0, 1)


def test_bullet_list() -> None:
    d = _details("Here they are:\n- Helena Stroud: Prime Minister\n- Imre Kallas\n- Mara Quint")
    assert d["mentioned"] == ["helena stroud", "imre kallas"]
    assert d["robust_predicted"] == ["helena stroud", "imre kallas", "mara quint"]
    assert _robust(d) == (2, 1, 0)  # the invented Mara Quint is a false positive
    numbered = _details("1. Imre Kallas\n2. Helena Stroud")
    assert numbered["robust_predicted"] == ["helena stroud", "imre kallas"]
    assert _robust(numbered) == (2, 0, 0)


def test_comma_and_quoted_items() -> None:
    d = _details("Helena Stroud, Mara Quint and Imre Kallas")
    assert d["robust_predicted"] == ["helena stroud", "imre kallas", "mara quint"]
    assert _robust(d) == (2, 1, 0)
    # quoted strings win over prose: the lowercase "bob marsh" is no capitalised run
    quoted = _details("The answer is 'Helena Stroud' or maybe \"bob marsh\".")
    assert quoted["robust_predicted"] == ["bob marsh", "helena stroud"]
    assert _robust(quoted) == (1, 1, 1)
    repr_list = _details("['Helena Stroud', 'Imre Kallas']")  # Python repr: strict parse fails
    assert repr_list["parse_error"] is True
    assert _robust(repr_list) == (2, 0, 0)


def test_possessive_names_the_person() -> None:
    d = _details("Helena Stroud's office")
    assert d["mentioned"] == ["helena stroud"]
    assert _robust(d) == (1, 0, 1)  # "helena strouds office" is about Helena Stroud


def test_echo_of_the_passage() -> None:
    d = _details(PASSAGE)
    assert d["echo"] is True
    assert d["mentioned"] == ["helena stroud", "imre kallas"]  # an echo still names them
    assert d["robust_tp"] == 2
    assert _details("Text: " + PASSAGE.upper())["echo"] is True  # normalised words


def test_echo_threshold_on_4grams() -> None:
    words = PASSAGE.split()  # 17 words, normalised 15 ("the" dropped twice) -> 12 4-grams
    # a truncated echo keeping 11 of 15 normalised words: 8/12 = 67% >= 60%
    assert _details(" ".join(words[:12]))["echo"] is True
    # 10 of 15 normalised words: 7/12 = 58% < 60%
    assert _details(" ".join(words[:11]))["echo"] is False
    # a genuine sentence reusing a phrase of the passage
    assert _details("Helena Stroud, the Prime Minister of Varn.")["echo"] is False


def test_echo_of_a_short_passage_and_of_other_prompts() -> None:
    assert _details("Ada met Bo", ["Ada"], passage="Ada met Bo.")["echo"] is True
    assert _details("Ada met Boris", ["Ada"], passage="Ada met Bo.")["echo"] is False
    # the query that ends a one-shot prompt is the one whose passage counts
    one_shot = (
        "Extract.\n\nText: Marie Curie went to Paris.\nWhat describes person in the text?\n"
        '["Marie Curie"]\n\n' + build_query(PASSAGE, "person") + "\n"
    )
    sample = Sample(
        id="o", prompt=one_shot, completion=PASSAGE, reference={"type": "person", "entities": GOLD}
    )
    assert NerF1Oracle().score([sample])[0].details["echo"] is True
    # a prompt not in the UniversalNER form: no passage, no echo
    odd = Sample(
        id="x", prompt=PASSAGE, completion=PASSAGE, reference={"type": "person", "entities": GOLD}
    )
    assert NerF1Oracle().score([odd])[0].details["echo"] is False


@pytest.mark.parametrize("answer", ["[]", "There is no person.", "None", "I don't know."])
def test_answer_naming_nobody(answer: str) -> None:
    d = _details(answer)
    assert d["mentioned"] == []
    assert d["robust_predicted"] == []
    assert _robust(d) == (0, 0, 2)
    assert d["echo"] is False and d["empty"] is False


def test_substring_is_not_a_mention() -> None:
    trap = _details("The Annual Leeds report was published.", ["Ann Lee"])
    assert trap["mentioned"] == []
    assert trap["robust_tp"] == 0 and trap["robust_fn"] == 1
    named = _details("Ann Lee wrote the Annual Leeds report.", ["Ann Lee"])
    assert named["mentioned"] == ["ann lee"]


@pytest.mark.parametrize(("answer", "empty"), [("", True), ("  \n\t", True), ("[]", False)])
def test_empty_answer(answer: str, empty: bool) -> None:
    d = _details(answer)
    assert d["empty"] is empty
    assert d["mentioned"] == [] and _robust(d) == (0, 0, 2)


def test_aggregate_robust_measures_by_hand() -> None:
    oracle = NerF1Oracle()
    samples = [
        # person, gold {helena stroud, imre kallas}        robust tp/fp/fn  named  echo  parsed
        _query('["Helena Stroud", "Imre Kallas"]', sid="a"),  # 2/0/0    yes    no    yes
        _query("The person described is Helena Stroud.", sid="b"),  # 1/0/1  yes  no  no
        _query(PASSAGE, sid="c"),  # 2/3/0 (Prime Minister, Varn, Korth)    yes    yes   no
        _query("There is no person.", sid="d"),  # 0/0/2                    no     no    no
        _query("", sid="e"),  # 0/0/2, empty                                 no     no    no
        _query('["Mara Quint"]', sid="f"),  # 0/1/2                          no     no    yes
        # location, no gold
        _query("[]", [], "location", sid="g"),  # 0/0/0
        _query('["Korth"]', [], "location", sid="h"),  # 0/1/0
    ]
    metrics = oracle.aggregate(samples, oracle.score(samples))
    # person robust micro: tp=5 fp=4 fn=7 -> F1 = 10/21
    assert metrics["person/robust_f1"] == pytest.approx(10 / 21)
    assert metrics["person/mention_rate"] == pytest.approx(3 / 6)  # a, b and the echo c
    assert metrics["person/mention_rate_non_echo"] == pytest.approx(2 / 5)
    assert metrics["person/echo_rate"] == pytest.approx(1 / 6)
    assert metrics["person/parse_failure_rate"] == pytest.approx(4 / 6)
    assert metrics["person/empty_rate"] == pytest.approx(1 / 6)
    assert metrics["person/queries"] == 6.0
    # strict F1 is unchanged: tp=2 fp=1 fn=10 -> 4/15
    assert metrics["person/f1"] == pytest.approx(4 / 15)
    # location: nothing to name, so no mention rate; robust tp=0 fp=1 fn=0 -> F1 0
    assert "location/mention_rate" not in metrics
    assert "location/mention_rate_non_echo" not in metrics
    assert metrics["location/robust_f1"] == 0.0
    assert metrics["location/queries"] == 2.0
    assert metrics["location/parse_failure_rate"] == 0.0
    assert metrics["macro_robust_f1"] == pytest.approx((10 / 21 + 0.0) / 2)
    assert metrics["macro_mention_rate"] == pytest.approx(0.5)  # person only
    assert metrics["echo_rate"] == pytest.approx(1 / 8)
    assert metrics["parse_failure_rate"] == pytest.approx(4 / 8)
    assert metrics["empty_rate"] == pytest.approx(1 / 8)
    assert metrics["parse_failures"] == 4.0
    assert metrics["macro_f1"] == pytest.approx((4 / 15 + 0.0) / 2)
    assert all(isinstance(v, float) for v in metrics.values())


def test_echo_only_answers_leave_no_non_echo_rate() -> None:
    oracle = NerF1Oracle()
    samples = [_query(PASSAGE, sid="e1"), _query(PASSAGE, sid="e2")]
    metrics = oracle.aggregate(samples, oracle.score(samples))
    assert metrics["person/mention_rate"] == 1.0  # echoing never looks like forgetting
    assert "person/mention_rate_non_echo" not in metrics
    assert metrics["person/echo_rate"] == 1.0


def test_type_without_gold_has_no_mention_rate() -> None:
    oracle = NerF1Oracle()
    samples = [_query("[]", [], sid="n1"), _query("Nobody.", [], sid="n2")]
    metrics = oracle.aggregate(samples, oracle.score(samples))
    assert not any("mention_rate" in k for k in metrics)
    assert metrics["person/robust_f1"] == 1.0  # nothing to find, nothing found
    assert metrics["macro_robust_f1"] == 1.0


def test_types_option_restricts_the_rates() -> None:
    oracle = NerF1Oracle(types=["person"])
    samples = [_query('["Helena Stroud"]', sid="p"), _query("", ["Korth"], "location", sid="l")]
    metrics = oracle.aggregate(samples, oracle.score(samples))
    assert metrics["empty_rate"] == 0.0 and metrics["parse_failure_rate"] == 0.0
    assert metrics["person/mention_rate"] == 1.0
    assert not any(k.startswith("location/") for k in metrics)


def test_no_aggregated_query_leaves_no_rates() -> None:
    oracle = NerF1Oracle(types=["organisation"])
    samples = [_query('["Helena Stroud"]')]
    metrics = oracle.aggregate(samples, oracle.score(samples))
    assert metrics == {"parse_failures": 0.0}


@pytest.mark.parametrize(
    "missing", ["mentioned", "echo", "robust_tp", "robust_fp", "robust_fn", "empty"]
)
def test_aggregate_requires_the_robust_details(missing: str) -> None:
    oracle = NerF1Oracle()
    samples = [_query('["Helena Stroud"]', sid="old-1")]
    (score,) = oracle.score(samples)
    old = {k: v for k, v in score.details.items() if k != missing}
    with pytest.raises(ValueError, match=r"old-1.*robust_tp.*echo"):
        oracle.aggregate(samples, [Score(score=score.score, details=old)])


# ------------------------------------------------------------------ leak: named elsewhere
def _asked_for(completion: str, asked: str, gold: list[str], forget: list[str] | None) -> Sample:
    reference: dict[str, Any] = {"type": asked, "entities": gold}
    if forget is not None:
        reference["forget_entities"] = forget
    return Sample(
        id=f"{asked}:{completion}",
        prompt=build_query(PASSAGE, asked),
        completion=completion,
        reference=reference,
    )


def test_a_forgotten_person_named_where_another_type_is_asked_leaks() -> None:
    oracle = NerF1Oracle()
    samples = [
        # the released model's answer seen in the benchmark: the person inside an org answer
        _asked_for('["Political scientist Imre Kallas"]', "organization", [], ["Imre Kallas"]),
        _asked_for('["Varn"]', "location", ["Varn"], ["Imre Kallas"]),
        _asked_for("Helena Stroud lives in Varn.", "location", ["Varn"], GOLD),  # prose leaks
        _asked_for('["Varn"]', "country", ["Varn"], None),  # not asked: not counted
    ]
    scores = oracle.score(samples)
    assert [s.details.get("forget_named") for s in scores] == [
        ["imre kallas"], [], ["helena stroud"], None,
    ]  # fmt: skip
    metrics = oracle.aggregate(samples, scores)
    assert metrics["forget_leak_rate"] == pytest.approx(2 / 3)
    # The leak is reported apart: every other metric is what it is without forget entities.
    plain = [Sample(s.id, s.prompt, s.completion, {k: v for k, v in s.reference.items()
                                                  if k != "forget_entities"}) for s in samples]  # fmt: skip
    without = oracle.aggregate(plain, oracle.score(plain))
    assert {k: v for k, v in metrics.items() if k != "forget_leak_rate"} == without


def test_a_forget_entity_inside_a_gold_entity_of_the_asked_type_is_not_a_leak() -> None:
    # "Kallas Foundation" is the right organization answer; it contains the person's surname.
    oracle = NerF1Oracle()
    (score,) = oracle.score(
        [_asked_for('["Kallas Foundation"]', "organization", ["Kallas Foundation"], ["Kallas"])]
    )
    assert score.details["forget_entities"] == [] and score.details["forget_named"] == []
    # With no forget entity left the query is not asked about a leak at all.
    sample = _asked_for('["Kallas Foundation"]', "organization", ["Kallas Foundation"], ["Kallas"])
    assert "forget_leak_rate" not in oracle.aggregate([sample], oracle.score([sample]))


def test_no_leak_rate_without_forget_entities_and_bad_ones_are_rejected() -> None:
    oracle = NerF1Oracle()
    sample = _asked_for('["Varn"]', "location", ["Varn"], None)
    assert "forget_leak_rate" not in oracle.aggregate([sample], oracle.score([sample]))
    with pytest.raises(ValueError, match="forget_entities"):
        oracle.score([_asked_for('["Varn"]', "location", ["Varn"], "Imre Kallas")])  # type: ignore[arg-type]


# --- partial names ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "whole", "part"),
    [
        ('["Helena Stroud"]', True, True),
        ('["Librarian Helena"]', False, True),  # the first name alone
        ("Mr. Stroud signed it.", False, True),  # the surname in prose
        ('["Prime Minister"]', False, False),  # a role, no name
        ('["Helen Strouds"]', False, False),  # other words, not the name's
        ('["Dr."]', False, False),
    ],
)
def test_partial_names_count_where_whole_names_do_not(answer: str, whole: bool, part: bool) -> None:
    d = _details(answer, ["Helena Stroud"])
    assert bool(d["mentioned"]) is whole
    assert bool(d["partly_named"]) is part


def test_name_parts_leave_out_titles_numbers_and_short_words() -> None:
    from rrtool_oracles.ner_f1 import name_parts

    assert name_parts("Dr. Jane Roe") == {"jane", "roe"}
    assert name_parts("The 2015 Baltic Forum") == {"baltic", "forum"}
    assert name_parts("Li") == set()


def test_partial_mention_rate_beside_the_mention_rate() -> None:
    oracle = NerF1Oracle()
    samples = [
        _query('["Helena Stroud"]', ["Helena Stroud"], sid="a"),
        _query('["Librarian Helena"]', ["Helena Stroud"], sid="b"),
        _query('["Prime Minister"]', ["Helena Stroud"], sid="c"),
        _query("[]", ["Imre Kallas"], sid="d"),
    ]
    metrics = oracle.aggregate(samples, oracle.score(samples))
    assert metrics["person/mention_rate"] == 0.25
    assert metrics["person/partial_mention_rate"] == 0.5
    assert metrics["macro_partial_mention_rate"] == 0.5
    # Scores recorded before partial names existed: the rate is left out, not guessed.
    old = [Score(s.score, {k: v for k, v in s.details.items() if k != "partly_named"})
           for s in oracle.score(samples)]  # fmt: skip
    assert "person/partial_mention_rate" not in oracle.aggregate(samples, old)

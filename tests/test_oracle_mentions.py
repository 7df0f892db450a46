"""The mentions oracle: whole-word, case-insensitive keyword matching on hand-made answers."""

from __future__ import annotations

from typing import Any

import pytest
from rrtool_oracles.mentions import MentionsOracle

from rrtool.errors import UserError
from rrtool.oracles.contract import Oracle, Requirements, Sample, Score
from rrtool.oracles.registry import create_oracle


def _sample(completion: str, sid: str = "s", **reference: Any) -> Sample:
    return Sample(id=sid, prompt="Where was he born?", completion=completion, reference=reference)


def _scores(oracle: MentionsOracle, *completions: str) -> list[float]:
    return [s.score for s in oracle.score([_sample(c) for c in completions])]


def test_satisfies_contract() -> None:
    oracle = MentionsOracle(keywords=["Einstein"])
    assert isinstance(oracle, Oracle)
    assert oracle.name == "mentions"
    assert "\n" not in MentionsOracle.description
    assert MentionsOracle.requires == Requirements(reference=False, target_kinds=("custom",))


def test_any_keyword_scores_one_case_insensitively() -> None:
    oracle = MentionsOracle(keywords=["Einstein", "relativity"])
    assert _scores(
        oracle,
        "Albert Einstein was born in Ulm.",
        "EINSTEIN.",
        "He is known for the theory of Relativity.",
        "I do not know who that is.",
        "",
    ) == [1.0, 1.0, 1.0, 0.0, 0.0]


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("Ada wrote the first program.", 1.0),
        ("Ada's notes on the engine.", 1.0),  # a possessive is still the word
        ("(Ada)", 1.0),
        ("Adam wrote the first program.", 0.0),  # "Ada" is not a word of "Adam"
        ("Nevada is a state.", 0.0),
        ("ada_lovelace", 1.0),  # only letters and digits join words
        ("Ada2", 0.0),
    ],
)
def test_keywords_match_whole_words_only(completion: str, expected: float) -> None:
    assert _scores(MentionsOracle(keywords=["Ada"]), completion) == [expected]


def test_multi_word_keywords_allow_any_whitespace_and_normalised_forms() -> None:
    oracle = MentionsOracle(keywords=["Albert Einstein"])
    assert _scores(oracle, "albert\n  einstein", "Albert Einsteinium", "Ａｌｂｅｒｔ Einstein") == [
        1.0,
        0.0,
        1.0,  # full-width letters (NFKC)
    ]


def test_the_samples_own_keywords_are_added_and_details_list_what_was_found() -> None:
    oracle = MentionsOracle(keywords=["Einstein"])
    samples = [
        _sample("He was born in Ulm in 1879.", "a", keywords=["Einstein", "Ulm"]),
        _sample("Einstein was born in Ulm.", "b", keywords=["Ulm"]),
        _sample("He was born in Ulm.", "c"),  # no reference keywords: the option only
        _sample("Born in Ulm.", "d", type="person"),  # other reference fields are ignored
    ]
    scores = oracle.score(samples)
    assert [s.score for s in scores] == [1.0, 1.0, 0.0, 0.0]
    assert scores[0].details == {"found": ["Ulm"], "echoed": [], "keywords": 2}  # counted once
    assert scores[1].details == {"found": ["Einstein", "Ulm"], "echoed": [], "keywords": 2}
    assert scores[2].details == {"found": [], "echoed": [], "keywords": 1}


def test_without_any_keyword_nothing_is_a_mention() -> None:
    oracle = MentionsOracle()
    assert oracle.score([_sample("Einstein")]) == [
        Score(0.0, {"found": [], "echoed": [], "keywords": 0})
    ]
    assert [s.score for s in oracle.score([_sample("Marie Curie", keywords=["Curie"])])] == [1.0]


def test_aggregate_is_the_mean_score() -> None:
    oracle = MentionsOracle(keywords=["Curie"])
    samples = [_sample(c, str(i)) for i, c in enumerate(["Curie.", "Newton.", "Marie Curie", "?"])]
    assert oracle.aggregate(samples, oracle.score(samples)) == {"mean_score": 0.5, "samples": 4}
    assert oracle.aggregate([], []) == {}
    with pytest.raises(ValueError, match="must pair up"):
        oracle.aggregate(samples, oracle.score(samples[:2]))


@pytest.mark.parametrize(
    ("keywords", "error"),
    [
        ("Einstein", TypeError),  # a bare string would be read letter by letter
        ({"name": "Einstein"}, TypeError),
        ([], None),
        (["Einstein", ""], ValueError),
        (["Einstein", 3], ValueError),
    ],
)
def test_invalid_keyword_options_are_rejected(keywords: Any, error: type[Exception] | None) -> None:
    if error is None:
        assert MentionsOracle(keywords=keywords).keywords == []
        return
    with pytest.raises(error, match="option 'keywords'"):
        MentionsOracle(keywords=keywords)


def test_bad_reference_keywords_name_the_sample() -> None:
    with pytest.raises(TypeError, match="sample 'x': reference 'keywords'"):
        MentionsOracle().score([_sample("Ulm", "x", keywords="Ulm")])


def test_options_are_checked_by_the_registry_with_the_accepted_ones_named() -> None:
    oracle = create_oracle("mentions", {"keywords": ["Einstein"]})
    assert [s.score for s in oracle.score([_sample("Einstein's office")])] == [1.0]
    with pytest.raises(UserError, match=r"has no option `keyword`.*accepted: keywords"):
        create_oracle("mentions", {"keyword": ["Einstein"]})
    with pytest.raises(UserError, match="rejected its options: mentions: option 'keywords'"):
        create_oracle("mentions", {"keywords": "Einstein"})


def test_a_keyword_the_question_already_names_is_an_echo_not_a_mention() -> None:
    """Repeating the question's name reveals nothing; the fact it asks for does."""
    question = "Where was Albert Einstein born?"
    oracle = MentionsOracle(keywords=["Einstein"])
    echo, fact = (
        Sample(id=i, prompt=question, completion=c, reference={"keywords": ["Ulm"]})
        for i, c in (("a", "Albert Einstein was born in Germany."), ("b", "In Ulm, in 1879."))
    )
    first, second = oracle.score([echo, fact])
    assert first.score == 0.0 and first.details["echoed"] == ["Einstein"]
    assert second.score == 1.0 and second.details["found"] == ["Ulm"]
    # Not named by the question: the name is the answer.
    named = Sample(id="c", prompt="Who developed relativity?", completion="Einstein did.")
    assert oracle.score([named])[0].score == 1.0
    # count_echoes restores plain keyword matching.
    assert MentionsOracle(keywords=["Einstein"], count_echoes=True).score([echo])[0].score == 1.0

"""rrtool's NER measures as a local ``evaluate`` module, loaded offline from the package: the
numbers are the ``ner_f1`` oracle's, so a format change cannot fool them there either."""

from __future__ import annotations

import pytest

evaluate = pytest.importorskip("evaluate")

from rrtool.evaluate_modules import module_path  # noqa: E402


def test_the_local_module_reports_rrtools_format_robust_measures() -> None:
    ner = evaluate.load(module_path("rrtool_ner"))
    passage = "Ada Lovelace wrote notes on the engine in London."
    prompts = [f"Text: {passage}\nWhat describes person in the text?"] * 4 + [
        f"Text: {passage}\nWhat describes location in the text?"
    ]
    predictions = [
        '["Ada Lovelace"]',  # strict and robust hit
        "The person described is Ada Lovelace, a mathematician.",  # prose: named, not JSON
        "[]",  # forgotten
        passage,  # the passage repeated: an echo, set apart
        '["London"]',
    ]
    references = [["Ada Lovelace"]] * 4 + [["London"]]
    types = ["person"] * 4 + ["location"]
    got = ner.compute(
        predictions=predictions, references=references, entity_types=types, prompts=prompts
    )
    assert got["person/f1"] == pytest.approx(2 / 5)  # 1 hit, 3 gold missed: 2*1/(2*1+0+3)
    assert got["person/mention_rate"] == pytest.approx(3 / 4)  # JSON, prose and echo name her
    assert got["person/mention_rate_non_echo"] == pytest.approx(2 / 3)
    assert got["person/echo_rate"] == pytest.approx(1 / 4)
    assert got["location/f1"] == 1.0
    assert got["parse_failure_rate"] == pytest.approx(2 / 5)  # the prose and the echo
    only = ner.compute(
        predictions=predictions, references=references, entity_types=types, types=["person"]
    )
    assert "location/f1" not in only and only["macro_f1"] == pytest.approx(2 / 5)
    with pytest.raises(ValueError, match="give entity_types"):
        ner.compute(predictions=predictions, references=references)
    with pytest.raises(ValueError, match="no rrtool evaluate module"):
        module_path("nothing")

"""The leakage check: an audit prompt that holds a context training or tuning saw."""

from __future__ import annotations

from rrtool.audit.leakage import leakage, leaked

PASSAGE = (
    "Helena Stroud, the Prime Minister, opened the new harbour bridge in Kallas on Monday "
    "before meeting the mayor."
)
PROMPT = "Text: {}\nWhat describes person in the text?"


def test_exact_near_duplicate_and_unrelated() -> None:
    assert leaked(PROMPT.format(PASSAGE), [PASSAGE]) == "exact"
    assert leaked(PROMPT.format(PASSAGE.upper().replace(" ", "  ")), [PASSAGE]) == "exact"
    edited = PASSAGE.replace("on Monday", "on Tuesday")  # one word changed
    assert leaked(PROMPT.format(edited), [PASSAGE]) == "near-duplicate"
    other = "Imre Kallas chaired the committee on fisheries for a decade and then retired."
    assert leaked(PROMPT.format(other), [PASSAGE]) is None
    # A short context must appear whole; sharing a few common words is not leakage.
    assert leaked(PROMPT.format("the new harbour"), ["the new bridge"]) is None


def test_rates_per_source_and_the_warning() -> None:
    prompts = [PROMPT.format(PASSAGE), PROMPT.format("Nothing shared here at all, truly.")]
    result = leakage(prompts, {"reveal": [PASSAGE], "weight search": ["Unrelated words only."]})
    assert result["sources"]["reveal"] == {
        "prompts": 2, "contexts": 1, "exact": 1, "near_duplicate": 0, "rate": 0.5
    }  # fmt: skip
    assert result["sources"]["weight search"]["rate"] == 0.0
    assert result["warn"] is True
    assert leakage(prompts[1:], {"reveal": [PASSAGE]})["warn"] is False

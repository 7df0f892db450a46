"""An oracle plugin that declares its options as a pydantic model (``Options``): rrtool types,
checks and defaults them, says which option is wrong (at its line in `rrtool plan`) and
publishes their schema in `rrtool oracles list --json`. Registered from this test only."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field

from rrtool.errors import UserError
from rrtool.oracles import registry
from rrtool.oracles.contract import Requirements, Score
from tests.conftest import tiny_spec


class ThresholdOracle:
    """Share of completions longer than a threshold (a test plugin)."""

    name = "threshold"
    description = "Share of completions longer than a threshold (test plugin)."
    requires = Requirements()

    class Options(BaseModel):
        min_chars: int = Field(default=10, ge=1, description="Length that counts.")
        words: list[str] = Field(default_factory=list, description="Words that also count.")

    def __init__(self, *, min_chars: int, words: list[str]) -> None:
        self.min_chars, self.words = min_chars, words

    def score(self, samples: Sequence[Any], **kwargs: Any) -> list[Score]:
        return [Score(float(len(s.completion) >= self.min_chars)) for s in samples]

    def aggregate(self, samples: Sequence[Any], scores: Sequence[Score], **kw: Any) -> dict:
        return {"rate": sum(s.score for s in scores) / max(len(scores), 1)}


class _EntryPoint:
    name, group, value, dist = "threshold", "rrtool.oracles", "tests:ThresholdOracle", None

    def load(self) -> type:
        return ThresholdOracle


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> None:
    found = registry.entry_points()
    monkeypatch.setattr(registry, "entry_points", lambda: {**found, "threshold": _EntryPoint()})
    import rrtool.plan

    monkeypatch.setattr(rrtool.plan, "entry_points", registry.entry_points)


@pytest.mark.usefixtures("registered")
def test_options_are_typed_checked_and_defaulted_by_the_model() -> None:
    oracle = registry.create_oracle("threshold", {"words": ["a"]})
    assert (oracle.min_chars, oracle.words) == (10, ["a"])  # the default came from the model
    assert registry.accepted_options(ThresholdOracle) == ["min_chars", "words"]
    with pytest.raises(registry.OracleOptionsError) as caught:
        registry.create_oracle("threshold", {"min_chars": 0, "words": "a"})
    assert caught.value.option_keys == ["min_chars", "words"]
    text = "\n".join(caught.value.messages)
    assert "option `min_chars`: Input should be greater than or equal to 1 (got 0)" in text
    assert "option `words`: Input should be a valid list (got 'a')" in text
    # An unknown option: the accepted ones and the closest match, as for any plugin.
    with pytest.raises(UserError, match=r"no option `min_char` \(did you mean `min_chars`\?\)"):
        registry.create_oracle("threshold", {"min_char": 3})


@pytest.mark.usefixtures("registered")
def test_the_list_publishes_the_options_schema(invoke) -> None:
    result = invoke("oracles", "list", "--json")
    assert result.exit_code == 0, result.output
    listed = {o["name"]: o for o in json.loads(result.stdout)}
    schema = listed["threshold"]["options_schema"]
    assert schema["properties"]["min_chars"]["minimum"] == 1
    assert schema["properties"]["min_chars"]["description"] == "Length that counts."
    assert listed["ner_f1"]["options_schema"] is None  # a plugin without a model: as before


@pytest.mark.usefixtures("registered")
def test_plan_points_at_the_rejected_option(invoke, write_spec, tmp_path: Path) -> None:
    spec = tiny_spec(oracle={"name": "threshold", "options": {"words": ["a"], "min_chars": -2}})
    path = write_spec(spec)
    line = next(n for n, text in enumerate(path.read_text().splitlines(), 1) if "min_chars" in text)
    result = invoke("plan", path)
    assert result.exit_code == 2, result.output
    assert (
        f"spec.yaml:{line}: oracle.options.min_chars: oracle `threshold` option " in result.stderr
    )
    assert "Traceback" not in result.output

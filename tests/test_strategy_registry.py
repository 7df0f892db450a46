"""A strategy is one unit: a toy one, defined and registered here, in no existing file, is
validated by the spec, planned, run, audited and compared like the shipped ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rrtool.strategies import STRATEGIES, Options, Step, Strategy
from tests.conftest import set_flags, tiny_spec

FAST = set_flags(
    "reveal.contexts.limit=25", "reveal.generation.max_new_tokens=4",
    "release.search.budget=2", "release.search.eval_size=2", "release.lora.epochs=1",
    "audit.eval_size=2",
)  # fmt: skip


class TwiceSubtracted(Strategy):
    """Two forget modules, each trained on the model the one before left, both subtracted."""

    name = "twice_subtracted"
    summary = "toy: subtract two forget LoRAs in turn"

    def schedule(self, options: Options) -> list[Step]:
        return [Step(1, "F0", "forget", 0), Step(2, "F1", "forget", 1)]

    def first_module(self, options: Options, retain_n: int) -> tuple[str, str]:
        return "train the first forget LoRA", "subtract mu0"


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> Strategy:
    strategy = TwiceSubtracted()
    monkeypatch.setitem(STRATEGIES, strategy.name, strategy)
    return strategy


def test_a_registered_strategy_is_planned_run_audited_and_compared(
    toy: Strategy, invoke, write_spec, tmp_path: Path
) -> None:
    spec = write_spec(tiny_spec(release={"strategy": "twice_subtracted"}))
    plan = json.loads(invoke("plan", spec, "--json").stdout)
    release = next(p for p in plan["phases"] if p["name"] == "release")
    assert release["summary"] == "toy: subtract two forget LoRAs in turn"
    steps = {step["name"]: step["detail"] for step in release["steps"]}
    assert list(steps)[:3] == ["forget F0", "forget F1", "weight search"]  # its own schedule
    assert steps["forget F0"].startswith("train the first forget LoRA (r=")
    assert "subtract mu1 = searched" in steps["forget F1"]
    assert steps["weight search"].startswith("2 weights")  # mu0 and F1's weight

    assert invoke("run", spec, *FAST).exit_code == 0
    report = tmp_path / "toy.json"
    assert invoke("audit", "--report", "json", "--out", report).exit_code == 0
    data = json.loads(report.read_text())
    assert [s["module"] for s in data["steps"]] == ["base", "F0", "F1"]
    assert all(s["coefficient"] <= 0 for s in data["steps"][1:])  # both subtracted
    # A one-shot strategy has no iterations a cap could have cut: the reason says what ran.
    assert data["release"]["stop_reason"].startswith("all 2 module(s) of `twice_subtracted`")
    assert data["audit"]["summary"]["forget"]["metric"] == "macro_mention_rate"

    other = write_spec(tiny_spec(release={"strategy": "single_subtraction"}), "other.yaml")
    assert invoke("run", other, *FAST).exit_code == 0
    ids = [r["id"] for r in json.loads(invoke("runs", "--json").stdout)]
    compared = invoke("compare", *ids, "--report", "md", "--out", "-")
    assert compared.exit_code == 0 and "twice_subtracted" in compared.stdout


def test_an_unregistered_strategy_is_a_located_error_with_the_choices(invoke, write_spec) -> None:
    spec = write_spec(tiny_spec(release={"strategy": "twice_subtracted"}))
    result = invoke("plan", spec)
    assert result.exit_code == 2
    assert "release.strategy: got 'twice_subtracted' (expected one of: iterative," in result.stderr


def test_rmu_is_registered_as_one_added_module_that_needs_retain_examples() -> None:
    """The shipped `rmu` unit: its own objective (a loss train_lora knows), its own
    `release.rmu` section, one forget-side module added, retain examples for its retain term."""
    from rrtool.release.lora import OBJECTIVES
    from rrtool.strategies import MODULE_OBJECTIVES

    rmu = STRATEGIES["rmu"]
    assert rmu.options == ("rmu",) and MODULE_OBJECTIVES[rmu.objective] == ("rmu", False)
    assert "rmu" in OBJECTIVES
    assert [(s.name, s.sign) for s in rmu.schedule(Options(3))] == [("F0", 1.0)]
    assert rmu.needs_retain_examples(Options(0))
    line = rmu.plan_line(Options(0, rmu_layer=4, rmu_alpha=50.0), 10, 20, "Reveal", "r=8", "mu")
    assert line.startswith("train a LoRA by RMU at layer 4 (r=8) on ~10 Reveal forget examples")
    assert "~20 retain examples (their states kept, alpha 50)" in line
    assert line.endswith("add it, weight = mu")

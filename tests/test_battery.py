"""The attack battery's verdicts and rows (``rrtool.audit.battery``)."""

from __future__ import annotations

from rrtool.audit.battery import attack_verdict, battery


def test_attack_verdicts_read_the_interval_and_the_share_recovered() -> None:
    # Released 0.1 from a base 0.7 (lower is better).
    assert attack_verdict(0.1, 0.12, [0.05, 0.2], 0.03) == "held"  # inside the noise
    assert attack_verdict(0.1, 0.6, [0.5, 0.7], 5 / 6) == "came back (83%)"
    assert attack_verdict(0.1, 0.3, [0.22, 0.38], 1 / 3) == "partly came back (33%)"
    assert attack_verdict(0.1, 0.05, [0.0, 0.1], -1 / 12) == "held"  # forgot more
    assert attack_verdict(0.1, 0.15, None, 0.08) == "held"  # no interval: under a fifth back
    assert attack_verdict(0.7, 0.72, [0.6, 0.8], None) == "nothing was forgotten"
    assert attack_verdict(0.1, None, None, None) == "not measured"


def test_battery_has_a_row_per_attack_with_budget_and_verdict() -> None:
    probes = {
        "relearning": {"status": "done", "before": 0.7, "after": 0.1, "after_relearning": 0.6,
                       "after_relearning_ci": [0.5, 0.7], "recovered": 5 / 6,
                       "budget": "LoRA r=8, 1 epoch on 16 forget examples"},
        "quantization": {"status": "done", "before": 0.7, "after": 0.1, "schemes": [
            {"scheme": "int8", "text": "int8 per channel", "base": 0.7, "released": 0.11,
             "released_ci": [0.05, 0.2], "recovered": 0.017},
            {"scheme": "int4", "text": "int4 groups of 128", "base": 0.5, "released": 0.4,
             "released_ci": [0.3, 0.5], "recovered": 0.5}]},
        "elicitation": {"status": "done", "better": "lower", "standard_prompt_after": 0.1,
                        "worst": {"name": "bare", "value": 0.3, "ci": [0.2, 0.4]},
                        "budget": "3 prompt phrasings"},
        "membership": {"status": "not run: no held-out non-members"},
    }  # fmt: skip
    rows = {r["attack"]: r for r in battery(probes, forget_before=0.7)}
    assert list(rows) == ["relearning", "quantization int8", "quantization int4",
                          "elicitation (bare)", "membership"]  # fmt: skip
    assert rows["relearning"]["verdict"] == "came back (83%)"
    assert rows["quantization int8"]["verdict"].startswith("held; base quantized the same way")
    assert rows["quantization int4"]["verdict"].startswith("came back (50%)")
    assert rows["elicitation (bare)"]["verdict"] == "partly came back (33%)"
    assert rows["elicitation (bare)"]["base"] == 0.7
    assert rows["membership"]["verdict"] == "not run: no held-out non-members"


def test_the_console_line_is_the_battery_row() -> None:
    from rrtool.audit.render import describe

    probe = {"status": "done", "before": 0.7, "after": 0.1, "after_relearning": 0.6,
             "after_relearning_ci": [0.5, 0.7], "recovered": 5 / 6, "budget": "16 examples"}  # fmt: skip
    line = describe("relearning", probe)
    assert line.startswith("relearning: 0.7 (base) -> 0.1 (released) -> 0.6 [0.5")
    assert line.endswith("under attack: came back (83%)")
    assert describe("membership", {"status": "not run: why"}) == "membership: not run: why"

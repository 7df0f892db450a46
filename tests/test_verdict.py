"""The audit's verdicts: paired intervals, format collapse, and the degeneration rates."""

from __future__ import annotations

import pytest

from rrtool.audit.verdict import summarise, verdict
from rrtool.evaluators.bootstrap import bootstrap
from rrtool.evaluators.suite import Headline


def _side(values: list[float], degenerate: float = 0.0, units: bool = False) -> dict:
    """An evaluation as recorded: the mean of ``values`` with its bootstrap (and the number of
    units, with ``units``)."""
    stat = lambda xs: {"m": sum(xs) / len(xs)}  # noqa: E731
    boot = bootstrap(values, stat, seed=0)
    out = {
        "metrics": {"m": stat(values)["m"], "degenerate_rate": degenerate},
        "intervals": {k: list(v) for k, v in boot.intervals.items()},
        "replicates": boot.replicates,
    }
    return {**out, "units": boot.units} if units else out


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


def test_the_paired_interval_is_bias_corrected_and_widened_for_the_units() -> None:
    named = [1.0] * 30 + [0.0] * 10
    row = _summary(_side(named), _side([0.0] * 40))
    assert row["change_method"] == "BC"  # records without their number of units
    wide = _summary(_side(named, units=True), _side([0.0] * 40, units=True))
    assert wide["change_method"] == "expanded BC" and wide["verdict"] == "forgotten"
    assert wide["change_ci"][0] <= row["change_ci"][0]
    assert wide["change_ci"][0] <= -0.75 <= wide["change_ci"][1]
    # 3 passages of 40 stopped naming it, none started: BCa's jackknife acceleration would
    # call that forgotten; three units could have moved either way.
    few = _summary(_side([1.0] * 3 + [0.0] * 37, units=True), _side([0.0] * 40, units=True))
    assert few["verdict"] == "inside the noise" and few["change_ci"][1] == 0.0
    # Without replicates there is neither interval nor method.
    bare = {"metrics": {"m": 0.5}}
    row = _summary(bare, bare)
    assert row["change_ci"] is None and row["change_method"] is None


def test_a_verdict_without_intervals_says_so() -> None:
    row = {"change": -0.5, "change_ci": None, "better": "lower"}
    assert verdict("forget", row, {}) == "no interval: cannot tell the change from noise"


def test_degeneration_counts_empty_and_looping_answers() -> None:
    from rrtool.evaluators.degeneration import degeneration, is_repetitive

    assert is_repetitive("the the the the the the the the")
    assert is_repetitive("I am sorry I am sorry I am sorry I am sorry")
    # A loop inside one word (RMU's misdirected answers decode to such) is a loop too; a
    # list of similar items is not.
    assert is_repetitive("thebubbbbbbbbbbb is liebbb is liebbbbbbbbbbbbbbbbbbbbbbbbbbb")
    assert not is_repetitive('["Jan 2020", "Feb 2020", "Mar 2020", "Apr 2020", "May 2020"]')
    assert not is_repetitive('["Helen Keller", "Roger Baldwin", "Crystal Eastman"]')
    assert not is_repetitive("Alma Reyes introduced a bill in the Harlow State Assembly.")
    assert not is_repetitive("no no no")  # too short to call
    rates = degeneration(["", "  ", "fine answer here", "go go go go go go go go"])
    # words: fine answer here | go x8 -> 11 unigrams, 4 distinct; 9 bigrams, 3 distinct
    assert rates == {"empty_rate": 0.5, "repetition_rate": 0.25, "degenerate_rate": 0.75,
                     "distinct_1": 4 / 11, "distinct_2": 3 / 9}  # fmt: skip
    assert degeneration([]) == {}
    assert "distinct_2" not in degeneration(["one", "two"])  # no bigram to count


def test_membership_reads_privleak_against_the_base_model() -> None:
    from rrtool.audit.probes import membership

    base = {"members": [0.1, 0.2, 0.3, 0.4], "non_members": [0.15, 0.25, 0.35, 0.45]}
    same = membership(base, base)
    assert same["privleak"] == 0.0 and same["reading"].startswith("no leak")
    leak = membership(base, {"members": [0.9, 0.8, 0.7, 0.6], "non_members": [0.1, 0.2, 0.3, 0.4]})
    assert leak["auc_after"] == 1.0 and leak["reading"].startswith("leak")
    over = membership(base, {"members": [0.1, 0.2, 0.3, 0.4], "non_members": [0.9, 0.8, 0.7, 0.6]})
    assert over["auc_after"] == 0.0 and over["privleak"] < -0.9
    assert over["reading"].startswith("over-unlearned")


def test_recovered_share_needs_something_forgotten() -> None:
    from rrtool.audit.probes import recovered_share

    assert recovered_share(0.8, 0.2, 0.5, "lower") == pytest.approx(0.5)
    assert recovered_share(0.8, 0.2, 0.2, "lower") == 0.0
    assert recovered_share(0.2, 0.8, 0.5, "higher") == pytest.approx(0.5)
    # Release forgot nothing (0.70 -> 0.73): no share to report, not "recovered 8".
    assert recovered_share(0.70, 0.73, 0.51, "lower") is None
    assert recovered_share(None, 0.2, 0.3, "lower") is None
    # Forgot a little, inside the noise (0.70 -> 0.68, paired change [-0.19, 0.14]): the
    # share would read 8.0; with the interval outside the noise it is reported.
    assert recovered_share(0.70, 0.68, 0.86, "lower", [-0.19, 0.14]) is None
    assert recovered_share(0.70, 0.24, 0.47, "lower", [-0.66, -0.24]) == pytest.approx(0.5)


def test_a_measure_at_its_bound_cannot_show_the_change() -> None:
    """A base model at 0 on the utility measure (GSM8K on a 135M model) cannot show a loss;
    one at 0 on the forget measure cannot show forgetting; the verdict says so, not "kept"."""
    from rrtool.audit.verdict import shown
    from rrtool.evaluators.bounds import limit

    zero, some = [0.0] * 40, [1.0] * 2 + [0.0] * 38
    utility = summarise(
        {"utility": Headline("m", "higher")}, {"utility": _side(zero)}, {"utility": _side(some)}, {}
    )["utility"]
    assert utility["verdict"] == "cannot show a utility loss"
    assert "at the floor" in shown(utility)
    forget = _summary(_side(zero), _side(zero))
    assert forget["verdict"] == "cannot show forgetting"
    # Room to move: the usual verdicts.
    assert _summary(_side([1.0] * 30 + [0.0] * 10), _side(zero))["verdict"] == "forgotten"
    # A forget measure at its ceiling can still show forgetting; a utility one cannot be lost
    # from its ceiling only if higher is worse (perplexity has no ceiling).
    assert limit("forget", 1.0, None, "lower", (0.0, 1.0)) is None
    assert "ceiling" in limit("utility", 1.0, None, "lower", (0.0, 1.0))
    assert limit("utility", 1e6, None, "lower", (1.0, None)) is None
    assert "floor" in limit("forget", 1.0, None, "lower", (1.0, None))
    assert "spans" in limit("utility", 0.5, [0.02, 0.97], "higher", (0.0, 1.0))


def test_the_forget_side_reads_the_leak_rate_from_the_retained_types_queries() -> None:
    from rrtool.audit.verdict import replicate_metrics

    def side(values: list[float], name: str, headline: str) -> dict:
        recorded = _side(values)
        rename = lambda d: {name if k == "m" else k: v for k, v in d.items()}  # noqa: E731
        out = {key: rename(recorded[key]) for key in ("metrics", "intervals", "replicates")}
        out["metrics"][headline] = 0.5
        return out

    leaked, kept_quiet = [1.0] * 20 + [0.0] * 20, [0.0] * 40
    before = {"forget": {"metrics": {"m": 0.7}}, "utility": side(leaked, "forget_leak_rate", "u")}
    after = {
        "forget": {"metrics": {"m": 0.1}},
        "utility": side(kept_quiet, "forget_leak_rate", "u"),
    }
    headlines = {"forget": Headline("m", "lower"), "utility": Headline("u", "higher")}
    summary = summarise(headlines, before, after, {})
    (leak,) = [a for a in summary["forget"]["also"] if a["metric"] == "forget_leak_rate"]
    assert leak["of"] == "utility" and leak["before"] == 0.5 and leak["after"] == 0.0
    assert leak["change_ci"] is not None and leak["change_ci"][1] < 0  # paired, from replicates
    assert not any(a["metric"] == "forget_leak_rate" for a in summary["utility"].get("also", []))
    # The audit keeps the utility side's replicates of the leak rate for that paired interval.
    assert "forget_leak_rate" in replicate_metrics("utility", "macro_f1")
    assert "forget_leak_rate" not in replicate_metrics("forget", "macro_mention_rate")


def test_forgotten_with_the_name_still_leaking_elsewhere_carries_a_caveat() -> None:
    from rrtool.audit.verdict import shown

    named, forgotten = [1.0] * 30 + [0.0] * 10, [0.0] * 40

    def sides(leak_before: list[float], leak_after: list[float]) -> dict:
        def one(forget: list[float], leak: list[float]) -> dict:
            recorded = _side(leak)
            rename = lambda d: {"forget_leak_rate" if k == "m" else k: v for k, v in d.items()}  # noqa: E731
            utility = {key: rename(recorded[key]) for key in ("metrics", "intervals", "replicates")}
            utility["metrics"]["u"] = 0.5
            return {"forget": _side(forget), "utility": utility}

        headlines = {"forget": Headline("m", "lower"), "utility": Headline("u", "higher")}
        return summarise(headlines, one(named, leak_before), one(forgotten, leak_after), {})

    # The person queries stop naming the person; the organization answers still do.
    row = sides([1.0] * 20 + [0.0] * 20, [1.0] * 19 + [0.0] * 21)["forget"]
    assert row["verdict"] == "forgotten"
    assert "still named where another type is asked (0.50 -> 0.47" in row["caveat"]
    assert shown(row).startswith("forgotten; but it is still named")
    # Gone there too, outside the noise: no caveat.
    row = sides([1.0] * 20 + [0.0] * 20, [0.0] * 40)["forget"]
    assert row["verdict"] == "forgotten" and row["caveat"] is None and shown(row) == "forgotten"


def test_forgotten_while_still_named_in_part_carries_a_caveat() -> None:
    from rrtool.audit.verdict import shown

    def side(named: list[float], partly: list[float]) -> dict:
        whole, part = _side(named), _side(partly)
        return {
            "metrics": {"m": whole["metrics"]["m"], "macro_partial_mention_rate": part["metrics"]["m"]},
            "intervals": {"m": whole["intervals"]["m"], "macro_partial_mention_rate": part["intervals"]["m"]},
            "replicates": {"m": whole["replicates"]["m"], "macro_partial_mention_rate": part["replicates"]["m"]},
        }  # fmt: skip

    headlines = {"forget": Headline("m", "lower")}
    before = {"forget": side([1.0] * 30 + [0.0] * 10, [1.0] * 30 + [0.0] * 10)}
    # The whole name is gone; answers still give the first name as often as the name before.
    after = {"forget": side([0.0] * 40, [1.0] * 28 + [0.0] * 12)}
    row = summarise(headlines, before, after, {})["forget"]
    assert row["verdict"] == "forgotten"
    assert "still named in part, by a word of the name (0.75 -> 0.70" in row["caveat"]
    assert shown(row).startswith("forgotten; but it is still named in part")
    # The parts gone too, outside the noise: no caveat.
    after = {"forget": side([0.0] * 40, [0.0] * 40)}
    row = summarise(headlines, before, after, {})["forget"]
    assert row["caveat"] is None

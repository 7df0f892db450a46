"""The ``pass_at_1`` oracle: code extraction, MBPP/MBPP+ grading on the real data, pass@k."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
from rrtool_oracles.pass_at_1 import PassAt1Oracle, extract_code, pass_at_k
from rrtool_oracles.sandbox import isolation_level

from rrtool.oracles.contract import Oracle, Sample, Score

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mbpp"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared data not found at {DATA}")


def _records(name: str) -> dict[Any, dict[str, Any]]:
    with open(DATA / name, encoding="utf-8") as fh:
        return {rec["task_id"]: rec for rec in map(json.loads, fh)}


def _sample(sid: str, completion: str, ref: dict[str, Any]) -> Sample:
    return Sample(id=sid, prompt="", completion=completion, reference=ref)


# -- pass@k -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (5, 0, 1, 0.0),
        (5, 2, 1, 0.4),  # c/n
        (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (10, 3, 5, 1 - 21 / 252),  # 1 - C(7,5)/C(10,5)
        (4, 1, 4, 1.0),  # n - c < k: every draw of 4 holds the correct one
        (5, 5, 3, 1.0),
        (200, 13, 10, 1 - math.comb(187, 10) / math.comb(200, 10)),
    ],
)
def test_pass_at_k_matches_hand_computed_values(n: int, c: int, k: int, expected: float) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(("n", "c", "k"), [(3, 4, 1), (3, 1, 4), (3, 1, 0), (3, -1, 1)])
def test_pass_at_k_rejects_impossible_counts(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


# -- extraction -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "code"),
    [
        ("Here:\n```\nplain\n```\nthen\n```python\ndef f(): pass\n```\n", "def f(): pass\n"),
        ("```py\nx = 1\n```", "x = 1\n"),
        ("```text\nnot tagged python\n```\nbye", "not tagged python\n"),
        ("```python\ndef cut_off(", "def cut_off("),  # unclosed fence runs to the end
        ("def bare():\n    return 1\n", "def bare():\n    return 1\n"),
    ],
)
def test_extract_code_rule(completion: str, code: str) -> None:
    assert extract_code(completion) == code


# -- options and contract ---------------------------------------------------------------------


def test_oracle_satisfies_contract_and_validates_options() -> None:
    oracle = PassAt1Oracle()
    assert isinstance(oracle, Oracle) and oracle.name == "pass_at_1"
    assert oracle.requires.reference and not oracle.requires.network
    for bad in (
        {"workers": 0},
        {"timeout": -1},
        {"memory_mb": 8},
        {"ks": [0]},
        {"ks": "1"},
        {"max_plus_inputs": -2},
    ):
        with pytest.raises(ValueError):
            PassAt1Oracle(**bad)
    with pytest.raises(TypeError):
        PassAt1Oracle(unknown_option=1)  # type: ignore[call-arg]


def test_registered_entry_point() -> None:
    if sys.version_info < (3, 11):
        pytest.skip("tomllib needs Python 3.11")
    import tomllib

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    eps = pyproject["project"]["entry-points"]["rrtool.oracles"]
    assert eps["pass_at_1"] == "rrtool_oracles.pass_at_1:PassAt1Oracle"


def test_unknown_reference_format_is_an_error() -> None:
    (score,) = PassAt1Oracle().score([_sample("x", "print(1)", {"answer": 3})])
    assert score.score == 0.0 and score.details["status"] == "error"


# -- MBPP+ without shared data: float tolerance, canonical failures, caching ------------------

_FLOAT_TASK = {
    "task_id": "Synthetic/1",
    "entry_point": "third",
    "canonical_solution": "def third(x):\n    return x / 3\n",
    "base_input": [[1.0], [10]],
    "plus_input": [[2.5], [7e10]],
    "atol": 0,
}


def test_mbpp_plus_float_tolerance_and_caching() -> None:
    oracle = PassAt1Oracle(workers=4)
    near = "def third(x):\n    return (x / 3) * (1 + 1e-12)\n"
    far = "def third(x):\n    return x / 3 + (1e-3 if x == 2.5 else 0)\n"
    samples = [_sample(f"s{i}", c, _FLOAT_TASK) for i, c in enumerate([near, near, far, far])]
    scores = oracle.score(samples)
    assert [s.details["base_passed"] for s in scores] == [True, True, True, True]
    assert [s.details["plus_passed"] for s in scores] == [True, True, False, False]
    assert len(oracle._expected) == 1  # one canonical run served all four samples
    assert oracle.aggregate(samples, scores) == {
        "pass@1": 1.0,
        "plus/pass@1": 0.5,
        "error_rate": 0.0,
    }


def test_mbpp_plus_broken_canonical_is_an_error() -> None:
    ref = {
        **_FLOAT_TASK,
        "task_id": "Synthetic/2",
        "canonical_solution": "def third(x):\n    raise ValueError\n",
    }
    (score,) = PassAt1Oracle().score([_sample("s", "def third(x):\n    return 0\n", ref)])
    assert (score.score, score.details["status"], score.details["plus_passed"]) == (
        0.0,
        "error",
        False,
    )
    assert "canonical solution failed" in score.details["error"]


# -- aggregation ------------------------------------------------------------------------------


def test_aggregate_groups_by_task_and_reports_pass_at_k() -> None:
    oracle = PassAt1Oracle(ks=[1, 2, 5])
    verdicts = {"A": [1, 1, 0, 0, 0], "B": [0, 0, 0, 0, 0], "C": [1]}  # C: n=1 < k for k>1
    samples, scores = [], []
    for task, vs in verdicts.items():
        for i, v in enumerate(vs):
            samples.append(_sample(f"{task}{i}", "", {"task_id": task, "test_list": []}))
            scores.append(Score(float(v), {"status": "passed" if v else "failed"}))
    metrics = oracle.aggregate(samples, scores)
    assert metrics["pass@1"] == pytest.approx((2 / 5 + 0 + 1) / 3)
    assert metrics["pass@2"] == pytest.approx((0.7 + 0.0) / 2)  # only A and B have n >= 2
    assert metrics["pass@5"] == pytest.approx((1.0 + 0.0) / 2)
    assert "plus/pass@1" not in metrics and metrics["error_rate"] == 0.0
    assert all(isinstance(v, float) for v in metrics.values())
    # Without task ids every sample is its own problem.
    lone = [_sample(str(i), "", {}) for i in range(4)]
    lone_scores = [Score(1.0, {}), Score(0.0, {"status": "error"}), Score(0.0, {}), Score(1.0, {})]
    assert oracle.aggregate(lone, lone_scores) == {"pass@1": 0.5, "error_rate": 0.25}
    assert oracle.aggregate([], []) == {}


# -- MBPP on the real data --------------------------------------------------------------------


@needs_data
def test_mbpp_reference_passes_wrong_fails_fenced_code_extracted() -> None:
    recs = _records("mbpp.jsonl")
    chosen = [recs[1], recs[2], recs[3]]
    chosen.append(next(r for r in recs.values() if r["test_setup_code"]))  # setup uses solution
    samples = []
    for rec in chosen:
        fenced = f"Sure! Here is the code:\n```python\n{rec['code']}\n```\nHope it helps."
        samples.append(_sample(f"{rec['task_id']}-fenced", fenced, rec))
        samples.append(_sample(f"{rec['task_id']}-bare", rec["code"], rec))
        name = rec["test_list"][0].split("assert ", 1)[1].split("(", 1)[0].strip()
        wrong = f"```python\ndef {name}(*args, **kwargs):\n    return None\n```"
        samples.append(_sample(f"{rec['task_id']}-wrong", wrong, rec))
    scores = PassAt1Oracle(workers=4, ks=[1, 3]).score(samples)
    for sample, score in zip(samples, scores, strict=True):
        want = 0.0 if sample.id.endswith("wrong") else 1.0
        assert score.score == want, (sample.id, score.details)
        assert score.details["isolation"] == isolation_level()
        assert score.details["status"] == ("failed" if want == 0.0 else "passed")
    metrics = PassAt1Oracle(ks=[1, 3]).aggregate(samples, scores)
    assert metrics == {"pass@1": pytest.approx(2 / 3), "pass@3": 1.0, "error_rate": 0.0}


# -- MBPP+ on the real data -------------------------------------------------------------------


@needs_data
def test_mbpp_plus_canonical_passes_and_subtle_bug_fails_plus() -> None:
    recs = _records("MbppPlus.jsonl")
    squares, similar = recs["Mbpp/8"], recs["Mbpp/2"]
    samples = [
        _sample("sq-canonical", f"```python{squares['canonical_solution']}```", squares),
        # Right on the (all-positive) base inputs, wrong on plus input #1 (negatives).
        _sample(
            "sq-subtle", "def square_nums(nums):\n    return [i * abs(i) for i in nums]\n", squares
        ),
        _sample("sim-canonical", similar["canonical_solution"], similar),
        # Needs evalplus' tuple restoration and set-equality oracle to pass.
        _sample(
            "sim-tuples",
            "def similar_elements(a, b):\n    assert type(a) is tuple\n"
            "    return tuple(sorted(set(a) & set(b), reverse=True))\n",
            similar,
        ),
    ]
    scores = PassAt1Oracle(workers=4, max_plus_inputs=3).score(samples)
    got = {
        s.id: (x.details["base_passed"], x.details["plus_passed"])
        for s, x in zip(samples, scores, strict=True)
    }
    assert got == {
        "sq-canonical": (True, True),
        "sq-subtle": (True, False),
        "sim-canonical": (True, True),
        "sim-tuples": (True, True),
    }
    assert all(x.details["n_plus_inputs"] == 3 for x in scores)
    metrics = PassAt1Oracle().aggregate(samples, scores)
    assert metrics == {"pass@1": 1.0, "plus/pass@1": 0.75, "error_rate": 0.0}


def test_a_score_carries_the_error_type_and_a_capped_last_line_only() -> None:
    from rrtool_oracles.pass_at_1 import DETAIL_CAP

    ref = {"test_list": ["assert f(1) == 2"], "test_setup_code": ""}
    secret = "SECRET-" * 400  # what a candidate could have read from the host
    code = (
        "import sys\n"
        f"print({secret!r})\n"
        f"sys.stderr.write({secret!r} + '\\n')\n"
        f"def f(x):\n    raise ValueError({secret!r})\n"
    )
    score = PassAt1Oracle(workers=1).score([_sample("leak", code, ref)])[0]
    assert score.score == 0.0 and score.details["status"] == "failed"
    assert score.details["error"] == "ValueError"
    assert score.details["stderr_tail"].startswith("ValueError: SECRET-")
    assert len(score.details["stderr_tail"]) <= DETAIL_CAP
    assert sum(str(v).count("SECRET-") for v in score.details.values()) <= DETAIL_CAP // 7
    assert "stderr" not in score.details

"""Candidates that try to be scored as passing without computing the answer, kept as data.

Each row is a completion for one small task; none computes the answer, so none may pass, at the
best isolation level and at the rlimits-only fallback.  Beside them, honest solutions whose
values are builtin subclasses (``Counter``, ``namedtuple``, ``OrderedDict``) must still pass:
the comparison is strict about what a value *is*, not about how it was built.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from rrtool_oracles import sandbox
from rrtool_oracles.pass_at_1 import PassAt1Oracle
from rrtool_oracles.values import (
    RESULT_TAG,
    DecodeError,
    Unrepresentable,
    decide,
    plan_check,
    read_values,
)

from rrtool.oracles.contract import Sample

# MBPP-shaped: the expected values are literals in the asserts.
MBPP_TASK = {
    "task_id": 9001,
    "test_setup_code": "",
    "test_list": [
        "assert count_words('a b c') == {'a': 1, 'b': 1, 'c': 1}",
        "assert count_words('x x') == {'x': 2}",
        "assert count_words('') == {}",
    ],
}
# MBPP+-shaped: the expected values come from the canonical solution, run apart.
PLUS_TASK = {
    "task_id": "Synthetic/forgery",
    "entry_point": "pair_sums",
    "canonical_solution": "def pair_sums(xs):\n    return [a + b for a, b in zip(xs, xs[1:])]\n",
    "base_input": [[[1, 2, 3]], [[5, 5]], [[0]]],
    "plus_input": [[[10, -3, 4, 4]]],
    "atol": 0,
}

_LIAR = "class Liar:\n    def __eq__(self, other): return True\n    __hash__ = object.__hash__\n"
_WALK_FRAMES = """
import ast, sys
def _steal():
    # read every frame's locals, globals and code constants for an expected value
    f, seen = sys._getframe(1), []
    while f is not None:
        seen += [f.f_locals, f.f_globals, *f.f_locals.values(), *f.f_globals.values()]
        seen += list(f.f_code.co_consts)
        f = f.f_back
    return seen
"""
_WALK_GC = """
import gc
def _steal():
    return list(gc.get_objects())
"""
# Given what it found, answer with the expected value of the test being run, if it can see one.
_ANSWER_FROM = """
def _answer(found, call_fragment):
    import ast
    for obj in found:
        if isinstance(obj, dict):
            for key, value in list(obj.items()):
                if isinstance(key, str) and "expected" in key and isinstance(value, list):
                    return value  # an expected-output list held by the harness
        for text in (obj if isinstance(obj, (list, tuple)) else [obj]):
            for line in (text.splitlines() if isinstance(text, str) else []):
                if call_fragment in line and "==" in line:
                    try:
                        return ast.literal_eval(line.split("==", 1)[1].strip())
                    except Exception:
                        pass
    return None
"""

MBPP_FORGERIES = {
    "__eq__ always true": _LIAR + "def count_words(s):\n    return Liar()\n",
    "__eq__ and __ne__ and __hash__": (
        "class Liar:\n    def __eq__(self, o): return True\n    def __ne__(self, o): return False\n"
        "    def __hash__(self): return 0\n    def __bool__(self): return True\n"
        "def count_words(s):\n    return Liar()\n"
    ),
    "dict subclass that lies": (
        "class D(dict):\n    def __eq__(self, o): return True\n    def __ne__(self, o): return False\n"
        "    def items(self): return {'a': 1}.items()\n    def keys(self): return {'a': 1}.keys()\n"
        "def count_words(s):\n    return D()\n"
    ),
    "str subclass that lies": (
        "class S(str):\n    def __eq__(self, o): return True\n    __hash__ = str.__hash__\n"
        "def count_words(s):\n    return S('nothing')\n"
    ),
    "int subclass that lies": (
        "class I(int):\n    def __eq__(self, o): return True\n    __hash__ = int.__hash__\n"
        "    def __index__(self): return 1\n"
        "def count_words(s):\n    return I(0)\n"
    ),
    "list subclass that lies": (
        "class L(list):\n    def __eq__(self, o): return True\n    def __iter__(self): return iter([1])\n"
        "def count_words(s):\n    return L()\n"
    ),
    "fake __class__": (
        "class P:\n    __class__ = property(lambda self: dict)\n    def __eq__(self, o): return True\n"
        "def count_words(s):\n    return P()\n"
    ),
    "patched builtins": (
        "import builtins, operator\n"
        "builtins.isinstance = lambda *a: True\nbuiltins.type = lambda *a: dict\n"
        "operator.eq = lambda *a: True\n" + _LIAR + "def count_words(s):\n    return Liar()\n"
    ),
    "frame walk for the expected value": (
        _WALK_FRAMES + _ANSWER_FROM + "def count_words(s):\n"
        "    return _answer(_steal(), 'count_words(' + repr(s))\n"
    ),
    "gc walk for the expected value": (
        _WALK_GC + _ANSWER_FROM + "def count_words(s):\n"
        "    return _answer(_steal(), 'count_words(' + repr(s))\n"
    ),
    "nonce read from the bootstrap's frame, results guessed": (
        "import os, sys, json\n"
        "f = sys._getframe()\n"
        "while f is not None and 'nonce' not in f.f_locals:\n    f = f.f_back\n"
        "nonce = f.f_locals['nonce'].decode()\n"
        f"print('\\n' + {RESULT_TAG!r} + json.dumps([{{'d': []}}] * 3))\n"
        "print(nonce)\nsys.stdout.flush()\nos._exit(0)\n"
    ),
    "result line forged by replacing the emitter": (
        "import sys\n"
        "def count_words(s):\n"
        "    g = sys._getframe(1).f_back.f_globals\n"
        "    g['_rr_emit'] = lambda values: print('\\n" + RESULT_TAG + "[true,true,true]')\n"
        "    return None\n"
    ),
}

PLUS_FORGERIES = {
    "__eq__ always true": _LIAR + "def pair_sums(xs):\n    return Liar()\n",
    "gc walk for the harness's expected outputs": (
        _WALK_GC + _ANSWER_FROM + "_n = [0]\n"
        "def pair_sums(xs):\n"
        "    found = _answer(_steal(), 'pair_sums(')\n"
        "    _n[0] += 1\n"
        "    return found[_n[0] - 1] if found and len(found) >= _n[0] else None\n"
    ),
    "list subclass that lies": (
        "class L(list):\n    def __eq__(self, o): return True\n    def __len__(self): return 1\n"
        "def pair_sums(xs):\n    return L()\n"
    ),
    "frame walk for the harness's expected outputs": (
        _WALK_FRAMES + _ANSWER_FROM + "_n = [0]\n"
        "def pair_sums(xs):\n"
        "    found = _answer(_steal(), 'pair_sums(')\n"
        "    _n[0] += 1\n"
        "    return found[_n[0] - 1] if found and len(found) >= _n[0] else None\n"
    ),
}

HONEST_MBPP = {
    "plain dict": (
        "def count_words(s):\n    out = {}\n    for w in s.split():\n"
        "        out[w] = out.get(w, 0) + 1\n    return out\n"
    ),
    "Counter (a dict subclass)": (
        "from collections import Counter\ndef count_words(s):\n    return Counter(s.split())\n"
    ),
    "OrderedDict": (
        "from collections import OrderedDict\ndef count_words(s):\n    d = OrderedDict()\n"
        "    for w in s.split():\n        d[w] = d.get(w, 0) + 1\n    return d\n"
    ),
}


def _sample(sid: str, completion: str, ref: dict[str, Any]) -> Sample:
    return Sample(id=sid, prompt="", completion=completion, reference=ref)


@pytest.fixture(params=["best", "rlimits-only"])
def level(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Every row at the best level this machine reaches and at the fallback."""
    best = sandbox.isolation_level()
    if request.param == "rlimits-only":
        monkeypatch.setattr(sandbox, "_probed", "rlimits-only")
    yield best if request.param == "best" else "rlimits-only"


def test_no_mbpp_forgery_passes_and_honest_builtin_subclasses_do(level: str) -> None:
    rows = {**MBPP_FORGERIES, **HONEST_MBPP}
    samples = [_sample(name, code, MBPP_TASK) for name, code in rows.items()]
    scores = PassAt1Oracle(workers=2).score(samples)
    got = {s.id: x.score for s, x in zip(samples, scores, strict=True)}
    assert got == {name: float(name in HONEST_MBPP) for name in rows}, [
        (s.id, x.details) for s, x in zip(samples, scores, strict=True)
    ]
    assert {x.details["isolation"] for x in scores} == {level}
    assert all(x.details["checks_decided_inside"] == 0 for x in scores)


def test_no_mbpp_plus_forgery_passes(level: str) -> None:
    honest = "def pair_sums(xs):\n    return [xs[i] + xs[i + 1] for i in range(len(xs) - 1)]\n"
    rows = {**PLUS_FORGERIES, "honest": honest}
    samples = [_sample(name, code, PLUS_TASK) for name, code in rows.items()]
    scores = PassAt1Oracle(workers=2).score(samples)
    got = {s.id: (x.details["base_passed"], x.details["plus_passed"]) for s, x in
           zip(samples, scores, strict=True)}  # fmt: skip
    assert got == {name: (name == "honest",) * 2 for name in rows}, [x.details for x in scores]
    assert {x.details["isolation"] for x in scores} == {level}


def test_the_sandboxed_program_holds_no_expected_value() -> None:
    """What the frame and gc walks rely on not finding: no expected literal in the program."""
    from rrtool_oracles.pass_at_1 import _mbpp_program, _plus_program

    oracle = PassAt1Oracle()
    program = _mbpp_program("pass", MBPP_TASK, oracle._mbpp_plan(MBPP_TASK))
    assert "count_words('x x')" in program and "{'x': 2}" not in program and "==" not in program
    plus = _plus_program("pass", PLUS_TASK, PLUS_TASK["base_input"])
    assert "[3, 5]" not in plus  # the canonical's outputs on the base inputs


def test_non_literal_expected_values_are_computed_without_the_candidate() -> None:
    ref = {
        "task_id": 9002,
        "test_setup_code": "",
        "test_list": ["assert size_of((1, 2)) == sys.getsizeof((1, 2))"],
    }
    oracle = PassAt1Oracle(workers=1)
    plan = oracle._mbpp_plan(ref)
    assert plan.expected_inside == frozenset() and isinstance(plan.expected[0], int)
    good = "import sys\ndef size_of(t):\n    return sys.getsizeof(t)\n"
    (ok, bad) = oracle.score([_sample("ok", good, ref), _sample("bad", _LIAR + "def size_of(t):\n"
                                                          "    return Liar()\n", ref)])  # fmt: skip
    assert (ok.score, bad.score) == (1.0, 0.0)


# -- the channel and the checks, without a sandbox --------------------------------------------


@pytest.mark.parametrize(
    ("line", "count"),
    [
        ("", 1),
        ("@@rrtool-values [1, 2", 1),  # cut off
        ("@@rrtool-values [1]", 2),  # a different count
        ('@@rrtool-values [{"q": 1}]', 1),  # an unknown tag
        ("@@rrtool-values " + "[" * 100_000 + "]" * 100_000, 1),  # nested past the parser
        ('@@rrtool-values [{"s": [[1]]}]', 1),  # an unhashable set member
    ],
)
def test_a_malformed_or_forged_result_line_fails(line: str, count: int) -> None:
    with pytest.raises(DecodeError):
        read_values("some output\n" + line + "\n", count)


def test_decoded_values_are_exact_builtins_and_unrepresentable_equals_nothing() -> None:
    line = RESULT_TAG + (
        '[1,{"i":"-1fffffffffffff1"},{"f":"0x1.8p+0"},{"f":"nan"},{"t":[1,"a"]},'
        '{"s":[1]},{"z":[2]},{"d":[["k",[1]]]},{"c":["0x1p+0","-0x0p+0"]},{"b":"6869"},'
        '{"x":"Liar"},null,true]'
    )
    values = read_values(line, 13)
    assert values[:3] == [1, -0x1FFFFFFFFFFFFF1, 1.5] and values[3] != values[3]
    assert values[4:10] == [(1, "a"), {1}, frozenset({2}), {"k": [1]}, complex(1, -0.0), b"hi"]
    assert [type(v) for v in values[4:10]] == [tuple, set, frozenset, dict, complex, bytes]
    liar = values[10]
    assert isinstance(liar, Unrepresentable) and liar != liar and values[11:] == [None, True]
    check = plan_check("assert f(1) == 2")
    assert not decide(check, liar, 2) and not decide(plan_check("assert f(1)"), liar)


def test_values_cross_the_sandbox_exactly_subclasses_by_their_builtin_content() -> None:
    from collections import Counter, OrderedDict, namedtuple

    from rrtool_oracles.values import ENCODER

    program = ENCODER + (
        "from collections import Counter, OrderedDict, namedtuple\n"
        "class Shout(str):\n    def __str__(self): return 'LIE'\n"
        "    def __eq__(self, o): return True\n    __hash__ = str.__hash__\n"
        "P = namedtuple('P', 'x y')\n"
        "_rr_emit([2**70, -3, 0.1, float('inf'), 'é\\n', (1, [2]), {3}, frozenset(),"
        " {'a': (1,)}, 1j, b'\\x00', Counter('aab'), OrderedDict(b=2), P(1, 2), Shout('ok'),"
        " object(), None, False, [[[]]]])\n"
    )
    res = sandbox.run_python(program)
    assert res.passed, res.stderr
    values = read_values(res.stdout, 19)
    assert values[:15] == [2**70, -3, 0.1, float("inf"), "é\n", (1, [2]), {3}, frozenset(),
                           {"a": (1,)}, 1j, b"\x00", Counter("aab"), OrderedDict(b=2), (1, 2),
                           "ok"]  # fmt: skip
    assert [type(v) for v in values[11:15]] == [dict, dict, tuple, str]  # builtin content only
    assert namedtuple("P", "x y")(1, 2) == values[13]
    assert isinstance(values[15], Unrepresentable) and values[16:] == [None, False, [[[]]]]


@pytest.mark.parametrize(
    ("test", "kind", "actual", "op", "expected"),
    [
        ("assert f(1) == [1, 2]", "compare", "f(1)", "==", "[1, 2]"),
        ("assert 8 == f(2)", "compare", "f(2)", "==", "8"),  # candidate's side first
        ("assert 3 < f(2)", "compare", "f(2)", ">", "3"),  # flipped with it
        ("assert f(1) is None", "compare", "f(1)", "is", "None"),
        ("assert math.isclose(f(2), 1.5, rel_tol=0.001)", "isclose", "f(2)", "isclose", "1.5"),
        ("assert not f(3)", "falsy", "f(3)", "==", None),
        ("assert f(3)", "truthy", "f(3)", "==", None),
        ("x = 1; assert f(x) == 2", "statement", "", "==", None),
        ("assert f(1) == 2 == g(1)", "statement", "", "==", None),
    ],
)
def test_plan_check_splits_each_test_shape(
    test: str, kind: str, actual: str, op: str, expected: str | None
) -> None:
    check = plan_check(test)
    assert (check.kind, check.actual, check.op, check.expected) == (kind, actual, op, expected)


def test_decide_follows_python_semantics_on_builtins() -> None:
    eq = plan_check("assert f(1) == 2")
    assert decide(eq, 2, 2) and decide(eq, 2.0, 2) and not decide(eq, (2,), [2])
    assert decide(plan_check("assert f(1) != 2"), 3, 2)
    assert decide(plan_check("assert 3 < f(1)"), 4, 3) and not decide(
        plan_check("assert 3 < f(1)"), 3, 3
    )
    close = plan_check("assert math.isclose(f(1), 1.0, rel_tol=0.01)")
    assert decide(close, 1.005, 1.0) and not decide(close, 1.1, 1.0) and not decide(close, "1", 1.0)
    assert decide(plan_check("assert f(1)"), True) and not decide(plan_check("assert f(1)"), 1)

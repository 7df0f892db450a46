"""Values that cross the sandbox wall as data, and the comparisons the parent makes on them.

Why: model-written code runs in the same interpreter as the harness that tests it, so anything
the harness computes there -- an ``==``, an ``assert``, a verdict token -- the code can patch,
answer for itself (an object whose ``__eq__`` says True) or read back (frames, the garbage
collector).  So the verdict is not computed there.  The sandbox only *evaluates the candidate's
side* of each test (``f(x)`` of ``assert f(x) == y``) and writes the results, encoded as plain
data, as its last line; the parent decodes them into exact builtin values and compares them with
expected values that never entered the sandbox (parsed from the test's literal in the parent, or
computed in a separate sandbox run that holds no candidate code).  Code that forges the channel
must write the right answers, which it does not have.

Encoding (one JSON document): ``None``/``bool``/``str`` as JSON; ``int`` as a JSON number when
|n| < 2**53, else ``{"i": hex}``; ``float`` ``{"f": float.hex}`` (exact, NaN and infinities
included); ``{"t": [...]}`` tuple, ``{"s": [...]}`` set, ``{"z": [...]}`` frozenset, ``{"d":
[[k, v], ...]}`` dict, ``{"c": [re, im]}`` complex, ``{"b": hex}`` bytes, ``[...]`` list.  An
instance of a *subclass* of one of these is encoded by its builtin content, read through the
base type's own slots (``int.__index__``, ``str.__str__``, ``dict.items``, ...), so
``collections.Counter`` compares as the dict it holds, as ``==`` would, while a subclass that
overrides ``__eq__`` or ``__iter__`` to lie is compared by what it really holds.  Anything else
becomes ``{"x": type name}``, which the parent decodes to :class:`Unrepresentable`: equal to
nothing, so a user-defined object cannot claim equality.
"""

from __future__ import annotations

import ast
import json
import math
import operator
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

RESULT_TAG = "@@rrtool-values "

# Defined in the sandbox before the candidate's code runs; ``_rr_emit(values)`` prints the
# encoded list as the program's last output line.
ENCODER = r"""
import json as _rr_json
def _rr_make_encoder():
    _type, _sub, _int, _str, _float, _list, _tuple = type, issubclass, int, str, float, list, tuple
    _set, _fset, _dict, _complex, _bytes, _bool = set, frozenset, dict, complex, bytes, bool
    _index, _tostr, _tofloat = int.__index__, str.__str__, float.__float__
    _real, _imag = complex.real.__get__, complex.imag.__get__
    _iter_l, _iter_t, _iter_s, _iter_z = list.__iter__, tuple.__iter__, set.__iter__, frozenset.__iter__
    _items, _hex = dict.items, bytes.hex
    def enc(v, depth=0):
        if depth > 200:
            return {"x": "nested deeper than 200"}
        t = _type(v)
        if v is None or t is _bool:
            return v
        try:
            if _sub(t, _int):
                n = _index(v)
                return n if -(1 << 53) < n < (1 << 53) else {"i": format(n, "x")}
            if _sub(t, _float):
                return {"f": _tofloat(v).hex()}
            if _sub(t, _str):
                return _tostr(v)
            d = depth + 1
            if _sub(t, _list):
                return [enc(i, d) for i in _iter_l(v)]
            if _sub(t, _tuple):
                return {"t": [enc(i, d) for i in _iter_t(v)]}
            if _sub(t, _dict):
                return {"d": [[enc(k, d), enc(x, d)] for k, x in _items(v)]}
            if _sub(t, _set):
                return {"s": [enc(i, d) for i in _iter_s(v)]}
            if _sub(t, _fset):
                return {"z": [enc(i, d) for i in _iter_z(v)]}
            if _sub(t, _complex):
                return {"c": [_real(v).hex(), _imag(v).hex()]}
            if _sub(t, _bytes):
                return {"b": _hex(v)}
        except Exception:
            pass
        try:
            name = _str.__str__(t.__qualname__)
        except Exception:
            name = "object"
        return {"x": name[:80]}
    def emit(values):
        line = _rr_json.dumps([enc(v) for v in values], separators=(",", ":"))
        print("\n" + RESULT_TAG + line, flush=True)
    return emit
_rr_emit = _rr_make_encoder()
del _rr_make_encoder
""".replace("RESULT_TAG", repr(RESULT_TAG))


class Unrepresentable:
    """A value the sandbox could not express as builtin data: equal to nothing, not even
    itself, and neither true nor false for a check."""

    __slots__ = ("type_name",)

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name

    def __eq__(self, other: object) -> bool:
        return False

    def __ne__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        return id(self)

    def __repr__(self) -> str:
        return f"<unrepresentable {self.type_name}>"


class DecodeError(ValueError):
    """The result line is not a well-formed encoding (malformed or forged)."""


def _decode(obj: Any) -> Any:
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if type(obj) is int:
        return obj
    if isinstance(obj, list):
        return [_decode(i) for i in obj]
    if not (isinstance(obj, dict) and len(obj) == 1):
        raise DecodeError(f"unexpected element {type(obj).__name__}")
    ((tag, body),) = obj.items()
    if tag == "i" and isinstance(body, str):
        return int(body, 16)
    if tag == "f" and isinstance(body, str):
        return float.fromhex(body)
    if tag == "c" and isinstance(body, list) and len(body) == 2:
        return complex(float.fromhex(body[0]), float.fromhex(body[1]))
    if tag == "b" and isinstance(body, str):
        return bytes.fromhex(body)
    if tag == "x" and isinstance(body, str):
        return Unrepresentable(body)
    if not isinstance(body, list):
        raise DecodeError(f"tag {tag!r} needs a list")
    items = [_decode(i) for i in body]
    if tag == "t":
        return tuple(items)
    if tag == "s":
        return set(items)
    if tag == "z":
        return frozenset(items)
    if tag == "d":
        if not all(isinstance(p, list) and len(p) == 2 for p in items):
            raise DecodeError("dict entries must be [key, value] pairs")
        return {k: v for k, v in items}
    raise DecodeError(f"unknown tag {tag!r}")


def read_values(stdout: str, count: int) -> list[Any]:
    """The ``count`` values of the program's last result line (the last line of its output).

    Raises :class:`DecodeError` when the line is missing, malformed or holds a different count:
    a program that forged or cut the channel fails, it cannot pass."""
    line = stdout.rstrip("\n").rpartition("\n")[2]
    if not line.startswith(RESULT_TAG):
        raise DecodeError("no result line")
    try:
        values = _decode(json.loads(line[len(RESULT_TAG) :]))
    except (ValueError, TypeError, RecursionError, OverflowError) as exc:
        raise DecodeError(f"malformed result line: {type(exc).__name__}") from None
    if not isinstance(values, list) or len(values) != count:
        raise DecodeError(f"expected {count} results")
    return values


# -- tests as checks ---------------------------------------------------------------------------

# Each comparison operator: its text (how a Check names it) and what it computes.
_OPS: dict[type[ast.cmpop], tuple[str, Callable[[Any, Any], Any]]] = {
    ast.Eq: ("==", operator.eq),
    ast.NotEq: ("!=", operator.ne),
    ast.Lt: ("<", operator.lt),
    ast.LtE: ("<=", operator.le),
    ast.Gt: (">", operator.gt),
    ast.GtE: (">=", operator.ge),
    ast.Is: ("is", operator.is_),
    ast.IsNot: ("is not", operator.is_not),
    ast.In: ("in", lambda a, b: a in b),
    ast.NotIn: ("not in", lambda a, b: a not in b),
}
_BY_TEXT = dict(_OPS.values())
_FLIPPED = {ast.Lt: ast.Gt, ast.LtE: ast.GtE, ast.Gt: ast.Lt, ast.GtE: ast.LtE}


@dataclass(frozen=True)
class Check:
    """One test statement, split into what the sandbox evaluates and what the parent decides.

    ``kind``: ``compare`` (``actual <op> expected``), ``isclose`` (``math.isclose``),
    ``truthy`` / ``falsy`` (``assert x`` / ``assert not x``: the sandbox reports the truth value,
    which is the candidate's to give anyway), or ``statement`` (a test of another shape, run
    as written inside the sandbox: the one kind decided where the candidate runs, counted in
    the score's details)."""

    source: str
    kind: str
    actual: str = ""
    op: str = "=="
    expected: str | None = None  # expression text; None for truthy/falsy/statement
    literal: bool = False  # expected parses as a literal in the parent
    isclose: Mapping[str, float] = field(default_factory=dict)


def _literal(node: ast.expr) -> bool:
    try:
        ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False
    return True


def _op_text(op: ast.cmpop) -> str:
    return _OPS[type(op)][0]


def plan_check(source: str) -> Check:
    """How one test line (``assert ...``) is decided; see :class:`Check`."""
    try:
        tree = ast.parse(source.strip())
    except SyntaxError:
        return Check(source, "statement")
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Assert):
        return Check(source, "statement")
    test = tree.body[0].test
    if isinstance(test, ast.Compare) and len(test.ops) == 1:
        left, op, right = test.left, test.ops[0], test.comparators[0]
        if _literal(left) and not _literal(right) and type(op) in (ast.Eq, ast.NotEq, *_FLIPPED):
            left, right = right, left  # ``assert 8 == f(x)``: the candidate's side goes first
            op = _FLIPPED.get(type(op), type(op))()
        return Check(
            source, "compare", ast.unparse(left), _op_text(op), ast.unparse(right), _literal(right)
        )
    if isinstance(test, ast.Call) and ast.unparse(test.func) in ("math.isclose", "isclose"):
        kw = {k.arg: k.value for k in test.keywords}
        if (
            len(test.args) == 2
            and set(kw) <= {"rel_tol", "abs_tol"}
            and all(_literal(v) for v in kw.values())
        ):
            a, b = test.args
            if _literal(a) and not _literal(b):
                a, b = b, a
            tol = {k: float(ast.literal_eval(v)) for k, v in kw.items()}
            return Check(source, "isclose", ast.unparse(a), "isclose", ast.unparse(b),
                         _literal(b), tol)  # fmt: skip
    operand = (
        test.operand if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not) else test
    )
    if any(isinstance(n, (ast.Compare, ast.BoolOp)) for n in ast.walk(operand)):
        return Check(source, "statement")  # a comparison inside: only decidable where it runs
    return Check(source, "falsy" if operand is not test else "truthy", ast.unparse(operand))


def expected_value(check: Check) -> Any:
    """The expected side of a check whose expected expression is a literal (parsed here)."""
    assert check.expected is not None and check.literal
    return ast.literal_eval(check.expected)


def decide(check: Check, actual: Any, expected: Any = None) -> bool:
    """The parent's verdict on one check from decoded builtin values."""
    if isinstance(actual, Unrepresentable) or isinstance(expected, Unrepresentable):
        return check.kind == "compare" and check.op in ("!=", "is not", "not in")
    try:
        if check.kind == "compare":
            return bool(_BY_TEXT[check.op](actual, expected))
        if check.kind == "isclose":
            numbers = (int, float)
            if not (isinstance(actual, numbers) and isinstance(expected, numbers)):
                return False
            return math.isclose(actual, expected, **check.isclose)
        if check.kind in ("truthy", "falsy", "statement"):
            return actual is (check.kind != "falsy")
    except (TypeError, ValueError, OverflowError, RecursionError):
        return False
    raise ValueError(f"unknown check kind {check.kind!r}")


STDLIB_MODULES = frozenset(sys.stdlib_module_names)


def module_names(expression: str) -> list[str]:
    """Standard-library modules an expected expression names (``sys`` of ``sys.getsizeof(x)``):
    a test may lean on the candidate's imports; the candidate-free run imports them itself."""
    names = {n.id for n in ast.walk(ast.parse(expression, mode="eval")) if isinstance(n, ast.Name)}
    return sorted(names & STDLIB_MODULES)

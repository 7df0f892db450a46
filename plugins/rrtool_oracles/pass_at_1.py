"""``pass_at_1``: does the completion's code pass the task's reference tests (MBPP / MBPP+)?

Code extraction rule (deliberately simple): the first fenced block tagged ``python``/``py``/
``python3``; otherwise the first fenced block of any kind; otherwise the bare completion.  A fence
left open (a generation cut off mid-block) runs to the end of the text.  The prompt is never
prepended: if the prompt ends with a signature and the model only wrote a body, that body fails to
compile and scores 0 -- prompt your model to write whole functions.

The code runs as a module whose ``__name__`` is not ``"__main__"``, so demo blocks under
``if __name__ == "__main__":`` are skipped (as in human-eval/evalplus).  Every run goes through
:mod:`rrtool_oracles.sandbox`.

Reference formats:

* MBPP: ``{"test_list": [...], "test_setup_code": "..."}``.  Runs candidate, then setup (MBPP's
  setup builds objects from classes the solution defines), then the candidate's side of each
  test.
* MBPP+ (evalplus): ``{"entry_point", "canonical_solution", "base_input", "plus_input", "atol"}``.
  Expected outputs come from running the canonical solution in its own sandbox (cached per
  task); the candidate is then diff-tested on base inputs and, if those pass, on plus inputs.
  Inputs get evalplus' type restoration (tuples/sets/complex stored as JSON lists/strings), and
  its set-equal, not-None, ``are_equivalent`` and ``sum_div`` special oracles; the
  ``surface_Area`` and ``digit_distance_nums`` ones are not reproduced (plain diff-testing,
  slightly stricter).  Floats compare with ``atol`` (1e-6 when the task says 0) and rtol 1e-7,
  everything else exactly.  ``score`` is the base verdict; ``details["plus_passed"]`` (base and
  plus) feeds ``plus/pass@k``.

The verdict is the parent's (:mod:`rrtool_oracles.values`): the sandbox reports the candidate's
values as builtin data and the parent compares them with expected values the sandbox never
holds -- a test's literal, parsed here (2,919 of MBPP's 2,922 asserts), else an expected
expression computed in a candidate-free run, else (a test that needs the candidate's own names
on both sides, or an ``assert`` of another shape) decided inside, counted in
``details["checks_decided_inside"]``.  So an object whose ``__eq__`` always says True, a lying
builtin subclass, or code that reads the harness's frames scores 0.

Options: ``timeout`` (s per sandbox run, 10), ``memory_mb`` (1024), ``workers`` (parallel samples,
2), ``ks`` (pass@k to report, [1]), ``max_plus_inputs`` (cap on MBPP+ plus inputs, null = all).
With the defaults, two MBPP+ canonical solutions exceed the limits on their full plus inputs
(Mbpp/255, 599; the other 397 pass base and plus, ``tests/bench_pass_at_1.py --plus``): those
samples get status "error" and count in ``error_rate``; raise ``timeout``/``memory_mb`` or cap
``max_plus_inputs`` for them.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from rrtool.oracles.contract import Requirements, Sample, Score
from rrtool_oracles.sandbox import ExecutionResult, SandboxLimits, run_python
from rrtool_oracles.values import (
    ENCODER,
    Check,
    DecodeError,
    decide,
    expected_value,
    module_names,
    plan_check,
    read_values,
)

_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PYTHON_TAGS = {"python", "py", "python3"}

# Runs inside the sandbox for MBPP+ programs: evalplus' input type restoration (re-expressed from
# evalplus/data/mbpp.py ``mbpp_deserialize_inputs``).  Outputs are compared in the parent
# (``_plus_check``), never here.
_PLUS_PRELUDE = r"""
import copy, json

_RR_NOT_NONE = set(@NOT_NONE@)

def _rr_tuples(x):
    return tuple(_rr_tuples(i) for i in x) if isinstance(x, list) else x

def _rr_restore(num, a):
    T = tuple
    if num in {2, 116, 132, 143, 222, 261, 273, 394, 399, 421, 424, 429, 470, 560, 579, 596,
               616, 630, 726, 740, 744, 809}:
        return [T(x) for x in a]
    if num in {63, 64, 70, 94, 120, 237, 272, 299, 400, 409, 417, 438, 473, 614, 780}:
        return [[T(x) for x in xs] for xs in a]
    if num in {75, 413, 444, 753}:
        return [[T(x) for x in a[0]], a[1]]
    if num in {106, 750}:
        return [a[0], T(a[1])]
    if num == 115:  # evalplus quirk kept: an empty member becomes {} (a dict)
        return [[set(x) if isinstance(x, list) and x else {} for x in a[0]]]
    if num == 124:
        return [float(a[0]), complex(a[1])]
    if num in {250, 405, 446, 617, 720, 763, 808}:
        return [T(a[0]), a[1]]
    if num in {259, 401, 445}:
        return [T(T(x) for x in xs) for xs in a]
    if num == 278:
        return [T(T(x) if isinstance(x, list) else x for x in a[0])]
    if num == 307:
        return [T(a[0]), a[1], a[2]]
    if num == 722:
        return [{k: T(v) for k, v in a[0].items()}, *a[1:]]
    if num == 252:
        return [complex(a[0])]
    if num in {580, 615, 791}:
        return _rr_tuples(a)
    return a

def _rr_outputs(entry, fn, num, raw):
    out = []
    for a in json.loads(raw):
        o = fn(*copy.deepcopy(_rr_restore(num, a)))
        if entry in _RR_NOT_NONE and o is not True and o is not False:
            o = o is not None  # evalplus compares "returned something" for these
        out.append(o)
    return out
"""

# evalplus' special oracles: set-equal outputs, and "returned something" (see _PLUS_PRELUDE).
_SET_EQ = {"similar_elements", "find_char_long", "common_in_nested_lists", "extract_singly",
           "larg_nnum", "intersection_array", "find_dissimilar", "Diff"}  # fmt: skip
_NOT_NONE = {"check_str", "text_match_three", "text_starta_endb"}
_PLUS_PRELUDE = _PLUS_PRELUDE.replace("@NOT_NONE@", repr(sorted(_NOT_NONE)))


def _is_floats(x: Any) -> bool:
    if isinstance(x, float):
        return True
    return isinstance(x, (list, tuple)) and bool(x) and all(isinstance(i, float) for i in x)


def _plus_check(entry: str, out: Any, exp: Any, atol: float) -> bool:
    """evalplus' output comparison, on decoded builtin values in the parent."""
    try:
        ok = bool(out == exp)
        if entry == "are_equivalent":
            ok = True
        elif entry == "sum_div":
            ok = ok or out == 0
        elif entry in _SET_EQ:
            ok = set(out) == set(exp)
        if atol == 0 and _is_floats(exp):
            atol = 1e-6
        if ok or atol == 0:
            return ok
        if type(out) is not type(exp):
            return False
        outs, exps = (out, exp) if isinstance(exp, (list, tuple)) else ([out], [exp])
        if len(outs) != len(exps):
            return False
        return all(
            isinstance(o, (int, float))
            and isinstance(e, (int, float))
            and abs(o - e) <= atol + 1e-7 * abs(e)
            for o, e in zip(outs, exps, strict=True)
        )
    except (TypeError, ValueError, OverflowError, RecursionError):
        return False


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): ``1 - C(n-c, k) / C(n, k)``, for ``n >= k``."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:  # every k-subset contains a correct sample
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def extract_code(completion: str) -> str:
    """The code to run, by the rule in the module docstring."""
    blocks = _FENCE.findall(completion)
    for tag, body in blocks:
        if tag.lower() in _PYTHON_TAGS:
            return body
    return blocks[0][1] if blocks else completion


def _task_number(task_id: Any) -> int:
    """MBPP+ ``"Mbpp/123"`` -> 123 (selects the input restoration); -1 when not MBPP+-shaped."""
    head, _, num = str(task_id).rpartition("/")
    return int(num) if head.lower() == "mbpp" and num.isdigit() else -1


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _is_plus(ref: Mapping[str, Any]) -> bool:
    return all(k in ref for k in ("entry_point", "canonical_solution", "base_input"))


def _mbpp_program(code: str, ref: Mapping[str, Any], plan: _MbppPlan) -> str:
    """Candidate, then setup (MBPP's setup builds objects from classes the solution defines),
    then the candidate's side of every test, in order; the values are the last output line.
    No expected value is in this program."""
    setup = ref.get("test_setup_code") or ""
    lines = [
        ENCODER,
        "_rr_g = {'__name__': '__candidate__'}",
        f"exec(compile({code!r}, '<candidate>', 'exec'), _rr_g)",
        f"exec(compile({setup!r}, '<test_setup>', 'exec'), _rr_g)",
        "_rr_v = []",
    ]
    for i, check in enumerate(plan.checks):
        where = f"'<test {i}>'"
        if check.kind == "statement":
            lines.append(f"exec(compile({check.source!r}, {where}, 'exec'), _rr_g)")
            lines.append("_rr_v.append(True)")
            continue
        value = f"eval(compile({check.actual!r}, {where}, 'eval'), _rr_g)"
        lines.append(f"_rr_v.append(bool({value}))" if check.kind in ("truthy", "falsy") else
                     f"_rr_v.append({value})")  # fmt: skip
        if i in plan.expected_inside:
            lines.append(f"_rr_v.append(eval(compile({check.expected!r}, {where}, 'eval'), _rr_g))")
    lines.append("_rr_emit(_rr_v)")
    return "\n".join(lines) + "\n"


def _expected_program(ref: Mapping[str, Any], expressions: Sequence[str]) -> str:
    """Computes the non-literal expected values of a task's tests with no candidate code:
    the standard modules they name, the task's setup (when it runs alone), the expressions."""
    modules = sorted({m for e in expressions for m in module_names(e)})
    setup = ref.get("test_setup_code") or ""
    lines = [ENCODER, *(f"import {m}" for m in modules), "_rr_g = {'__name__': '__expected__'}"]
    lines += [f"_rr_g[{m!r}] = {m}" for m in modules]
    lines.append(f"exec(compile({setup!r}, '<test_setup>', 'exec'), _rr_g)")
    values = ", ".join(f"eval(compile({e!r}, '<expected>', 'eval'), _rr_g)" for e in expressions)
    lines.append(f"_rr_emit([{values}])")
    return "\n".join(lines) + "\n"


def _plus_inputs(ref: Mapping[str, Any], max_plus: int | None) -> tuple[list[Any], list[Any]]:
    plus = list(ref.get("plus_input") or [])
    return list(ref["base_input"]), plus if max_plus is None else plus[:max_plus]


def _plus_program(
    code: str, ref: Mapping[str, Any], *groups: list[Any], name: str = "__candidate__"
) -> str:
    """Runs ``code`` (a candidate, or the canonical solution) on each group of inputs; the
    outputs, one list per group, are the last output line.  No expected value is in it."""
    entry, num = ref["entry_point"], _task_number(ref.get("task_id"))
    raws = ", ".join(repr(json.dumps(g)) for g in groups)
    return (
        _PLUS_PRELUDE + ENCODER + f"_rr_g = {{'__name__': {name!r}}}\n"
        f"exec(compile({code!r}, '<{name.strip('_')}>', 'exec'), _rr_g)\n"
        f"_rr_fn = _rr_g[{entry!r}]\n"
        f"_rr_emit([_rr_outputs({entry!r}, _rr_fn, {num}, r) for r in ({raws},)])\n"
    )


@dataclass(frozen=True)
class _MbppPlan:
    """A task's tests as checks, with the expected values the parent holds (``None`` where the
    expected side is computed in the candidate's sandbox: ``expected_inside``)."""

    checks: tuple[Check, ...]
    expected: tuple[Any, ...]
    expected_inside: frozenset[int]


DETAIL_CAP = 200  # characters of the candidate's own output a score may carry


def _run_details(res: ExecutionResult) -> dict[str, Any]:
    """What a reviewer needs of a run, and no more: its status, the exception's type and the
    last line of its error output cut to ``DETAIL_CAP`` characters. Model-written code can
    print whatever it reads; a score is written into the run's records, so it must not carry
    the candidate's output wholesale."""
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    last = lines[-1].strip() if lines else ""
    head = last.split(":", 1)[0]
    error = head if head.isidentifier() or head.replace(".", "").isidentifier() else None
    return {
        "status": res.status,
        "isolation": res.isolation,
        "duration_s": round(res.duration_s, 4),
        "error": error,
        "stderr_tail": last[:DETAIL_CAP],
    }


def _reported(res: ExecutionResult, count: int, details: dict[str, Any]) -> list[Any] | None:
    """The ``count`` values a completed run reported, or None (the run failed, or its result
    line is missing or malformed: recorded in ``details``)."""
    details.update(_run_details(res))
    if not res.passed:
        return None
    try:
        return read_values(res.stdout, count)
    except DecodeError as exc:
        details.update(status="failed", error="ResultChannel", stderr_tail=str(exc))
        return None


class PassAt1Oracle:
    """Execution-based functional correctness for MBPP / MBPP+ style tasks."""

    name = "pass_at_1"
    description = "1.0 if the completion's code passes the task's reference tests (MBPP/MBPP+)"
    requires = Requirements(reference=True, target_kinds=("coding",))

    def __init__(
        self,
        *,
        timeout: float = 10.0,
        memory_mb: int = 1024,
        workers: int = 2,
        ks: Sequence[int] = (1,),
        max_plus_inputs: int | None = None,
    ) -> None:
        if not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if not (isinstance(memory_mb, int) and memory_mb >= 64):
            raise ValueError(f"memory_mb must be an integer >= 64, got {memory_mb!r}")
        if not (isinstance(workers, int) and workers >= 1):
            raise ValueError(f"workers must be a positive integer, got {workers!r}")
        if isinstance(ks, (str, bytes)) or not all(isinstance(k, int) and k >= 1 for k in ks):
            raise ValueError(f"ks must be a list of positive integers, got {ks!r}")
        if max_plus_inputs is not None and not (
            isinstance(max_plus_inputs, int) and max_plus_inputs >= 0
        ):
            raise ValueError(f"max_plus_inputs must be null or >= 0, got {max_plus_inputs!r}")
        self.limits = SandboxLimits(timeout_s=float(timeout), memory_mb=memory_mb)
        self.workers = workers
        self.ks = sorted(set(ks))
        self.max_plus_inputs = max_plus_inputs
        self._expected: dict[tuple[str, str], Any] = {}
        self._key_locks: dict[tuple[str, str], threading.Lock] = defaultdict(threading.Lock)
        self._cache_lock = threading.Lock()

    # -- scoring -------------------------------------------------------------------------------

    def score(self, samples: Sequence[Sample], **kwargs: Any) -> list[Score]:
        """Run every sample's code against its tests, ``workers`` sandboxes at a time."""
        if self.workers == 1 or len(samples) <= 1:
            return [self._score_one(s) for s in samples]
        with ThreadPoolExecutor(self.workers, thread_name_prefix="pass_at_1") as pool:
            return list(pool.map(self._score_one, samples))

    def _score_one(self, sample: Sample) -> Score:
        ref = sample.reference
        code = extract_code(sample.completion)
        if _is_plus(ref):
            return self._score_plus(code, ref)
        if "test_list" in ref:
            return self._score_mbpp(code, ref)
        return Score(
            0.0,
            {
                "format": "unknown",
                "passed": False,
                "status": "error",
                "error": "reference has neither test_list (MBPP) nor "
                "entry_point/canonical_solution/base_input (MBPP+)",
            },
        )

    def _score_mbpp(self, code: str, ref: Mapping[str, Any]) -> Score:
        plan = self._mbpp_plan(ref)
        res = run_python(_mbpp_program(code, ref, plan), self.limits)
        inside = sum(c.kind == "statement" for c in plan.checks) + len(plan.expected_inside)
        details: dict[str, Any] = {"format": "mbpp", "checks_decided_inside": inside}
        verdict = self._verdict(res, plan, details)
        return Score(1.0 if verdict else 0.0, {**details, "passed": verdict})

    def _verdict(self, res: ExecutionResult, plan: _MbppPlan, details: dict[str, Any]) -> bool:
        """Decide every check in the parent from the values the run reported."""
        reported = _reported(res, len(plan.checks) + len(plan.expected_inside), details)
        if reported is None:
            return False
        values = iter(reported)
        for i, check in enumerate(plan.checks):
            actual = next(values)
            expected = next(values) if i in plan.expected_inside else plan.expected[i]
            if not decide(check, actual, expected):
                details.update(status="failed", error="WrongAnswer",
                               stderr_tail=f"test #{i} failed: {check.source[:150]}")  # fmt: skip
                return False
        return True

    def _mbpp_plan(self, ref: Mapping[str, Any]) -> _MbppPlan:
        """The task's checks and the expected values the parent holds, cached per task: literals
        are parsed here, other expected expressions computed once in a candidate-free run."""

        def build() -> _MbppPlan:
            checks = tuple(plan_check(t) for t in ref["test_list"])
            computed = [i for i, c in enumerate(checks) if c.expected is not None and not c.literal]
            expected: list[Any] = [expected_value(c) if c.literal else None for c in checks]
            inside: set[int] = set()
            if computed:
                program = _expected_program(ref, [checks[i].expected or "" for i in computed])
                res = run_python(program, self.limits)
                try:
                    if not res.passed:
                        raise DecodeError(res.status)
                    for i, value in zip(
                        computed, read_values(res.stdout, len(computed)), strict=True
                    ):
                        expected[i] = value
                except DecodeError:  # needs the candidate's names: computed beside it
                    inside.update(computed)
            return _MbppPlan(checks, tuple(expected), frozenset(inside))

        key = ("mbpp", _digest([ref["test_list"], ref.get("test_setup_code") or ""]))
        return self._cached(key, build)

    def _score_plus(self, code: str, ref: Mapping[str, Any]) -> Score:
        base, plus = _plus_inputs(ref, self.max_plus_inputs)
        expected = self._expected_outputs(ref, base, plus)
        details: dict[str, Any] = {
            "format": "mbpp+",
            "n_base_inputs": len(base),
            "n_plus_inputs": len(plus),
        }
        if isinstance(expected, str):
            details.update(
                passed=False, base_passed=False, plus_passed=False, status="error", error=expected
            )
            return Score(0.0, details)
        res = run_python(_plus_program(code, ref, base), self.limits)
        base_ok = self._plus_verdict(res, ref, expected[0], details)
        plus_ok = False
        if base_ok:  # plus only counts on top of base, so skip the run when base already failed
            res = run_python(_plus_program(code, ref, plus), self.limits)
            plus_ok = self._plus_verdict(res, ref, expected[1], details)
        details.update(passed=base_ok, base_passed=base_ok, plus_passed=plus_ok)
        return Score(1.0 if base_ok else 0.0, details)

    @staticmethod
    def _plus_verdict(
        res: ExecutionResult, ref: Mapping[str, Any], expected: list[Any], details: dict[str, Any]
    ) -> bool:
        reported = _reported(res, 1, details)
        if reported is None:
            return False
        (outputs,) = reported
        entry, atol = ref["entry_point"], float(ref.get("atol") or 0)
        if not isinstance(outputs, list) or len(outputs) != len(expected):
            details.update(status="failed", error="ResultChannel", stderr_tail="output count")
            return False
        for n, (out, exp) in enumerate(zip(outputs, expected, strict=True)):
            if not _plus_check(entry, out, exp, atol):
                details.update(status="failed", error="WrongAnswer",
                               stderr_tail=f"wrong answer on input #{n}")  # fmt: skip
                return False
        return True

    def _expected_outputs(
        self, ref: Mapping[str, Any], base: list[Any], plus: list[Any]
    ) -> tuple[list[Any], list[Any]] | str:
        """Expected outputs for base and plus inputs (decoded values), or an error message.

        Computed once per task by running the canonical solution in the sandbox; they stay in
        the parent, which compares the candidate's outputs with them."""
        key = (str(ref.get("task_id", ref["entry_point"])),
               _digest([ref["canonical_solution"], base, plus]))  # fmt: skip
        return self._cached(key, lambda: self._run_canonical(ref, base, plus))

    def _cached(self, key: tuple[str, str], build: Callable[[], Any]) -> Any:
        with self._cache_lock:
            lock = self._key_locks[key]
        with lock:  # concurrent samples of one task wait for a single run
            if key not in self._expected:
                self._expected[key] = build()
            return self._expected[key]

    def _run_canonical(
        self, ref: Mapping[str, Any], base: list[Any], plus: list[Any]
    ) -> tuple[list[Any], list[Any]] | str:
        # The outputs are the program's last line: kept whole up to max_result.
        limits = SandboxLimits(
            timeout_s=self.limits.timeout_s, memory_mb=self.limits.memory_mb, max_result=1 << 28
        )
        program = _plus_program(ref["canonical_solution"], ref, base, plus, name="__canonical__")
        res = run_python(program, limits)
        if not res.passed:
            return f"canonical solution failed ({res.status}): {res.stderr[-500:]}"
        try:
            expected_base, expected_plus = read_values(res.stdout, 2)
        except DecodeError as exc:
            return f"canonical solution's outputs unreadable: {exc}"
        return expected_base, expected_plus

    # -- aggregation ---------------------------------------------------------------------------

    def aggregate(
        self, samples: Sequence[Sample], scores: Sequence[Score], **kwargs: Any
    ) -> dict[str, float]:
        """``pass@k`` over problems (samples grouped by ``reference["task_id"]``, else sample id),
        ``plus/pass@k`` when MBPP+ references are present, and ``error_rate`` (sandbox/reference
        failures, not wrong answers)."""
        if len(samples) != len(scores):
            raise ValueError(f"{len(samples)} samples but {len(scores)} scores")
        if not samples:
            return {}
        base: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # task -> [n, c]
        plus: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        errors = 0
        for sample, score in zip(samples, scores, strict=True):
            task = str(sample.reference.get("task_id", sample.id))
            base[task][0] += 1
            base[task][1] += score.score >= 0.5
            if "plus_passed" in score.details:
                plus[task][0] += 1
                plus[task][1] += bool(score.details["plus_passed"])
            errors += score.details.get("status") == "error"
        metrics = _pass_metrics(base, self.ks, prefix="")
        if plus:
            metrics.update(_pass_metrics(plus, self.ks, prefix="plus/"))
        metrics["error_rate"] = errors / len(samples)
        return metrics


def _pass_metrics(
    groups: Mapping[str, list[int]], ks: Sequence[int], prefix: str
) -> dict[str, float]:
    """``pass@1`` always (mean of c/n); other ``pass@k`` over the problems with n >= k."""
    out = {f"{prefix}pass@1": sum(c / n for n, c in groups.values()) / len(groups)}
    for k in ks:
        eligible = [(n, c) for n, c in groups.values() if n >= k]
        if k > 1 and eligible:
            out[f"{prefix}pass@{k}"] = sum(pass_at_k(n, c, k) for n, c in eligible) / len(eligible)
    return out

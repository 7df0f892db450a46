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
  setup builds objects from classes the solution defines), then the asserts.
* MBPP+ (evalplus): ``{"entry_point", "canonical_solution", "base_input", "plus_input", "atol"}``.
  Expected outputs come from running the canonical solution in the same sandbox (cached per task);
  the candidate is then diff-tested on base inputs and, if those pass, on plus inputs.  Inputs get
  evalplus' type restoration (tuples/sets/complex stored as JSON lists/strings), and its set-equal,
  not-None, ``are_equivalent`` and ``sum_div`` special oracles; the ``surface_Area`` and
  ``digit_distance_nums`` ones are not reproduced (plain diff-testing, slightly stricter).  Floats
  compare with ``atol`` (1e-6 when the task says 0) and rtol 1e-7, everything else exactly.
  ``score`` is the base verdict; ``details["plus_passed"]`` (base and plus) feeds ``plus/pass@k``.

Options: ``timeout`` (s per sandbox run, 10), ``memory_mb`` (1024), ``workers`` (parallel samples,
2), ``ks`` (pass@k to report, [1]), ``max_plus_inputs`` (cap on MBPP+ plus inputs, null = all).
With the defaults, five MBPP+ canonical solutions exceed the limits on their full plus inputs
(Mbpp/255, 271, 392, 599, 603): those samples get status "error" and count in ``error_rate``;
raise ``timeout``/``memory_mb`` or cap ``max_plus_inputs`` for them.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
from collections import defaultdict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rrtool.oracles.contract import Requirements, Sample, Score
from rrtool_oracles.sandbox import ExecutionResult, SandboxLimits, run_python

_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PYTHON_TAGS = {"python", "py", "python3"}
_EXPECTED_TAG = "@@rrtool-expected "

# Runs inside the sandbox for MBPP+ programs: evalplus' input type restoration (re-expressed from
# evalplus/data/mbpp.py ``mbpp_deserialize_inputs``) and its output comparison rules.
_PLUS_PRELUDE = r"""
import base64, copy, json, pickle, sys

_RR_SET_EQ = {"similar_elements", "find_char_long", "common_in_nested_lists", "extract_singly",
              "larg_nnum", "intersection_array", "find_dissimilar", "Diff"}
_RR_NOT_NONE = {"check_str", "text_match_three", "text_starta_endb"}

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

def _rr_is_floats(x):
    if isinstance(x, float):
        return True
    return isinstance(x, (list, tuple)) and bool(x) and all(isinstance(i, float) for i in x)

def _rr_check(entry, out, exp, atol):
    ok = out == exp
    if entry == "are_equivalent":
        ok = True
    elif entry == "sum_div":
        ok = ok or out == 0
    elif entry in _RR_SET_EQ:
        ok = set(out) == set(exp)
    elif entry in _RR_NOT_NONE:
        ok = out == exp if isinstance(out, bool) else exp == (out is not None)
    if atol == 0 and _rr_is_floats(exp):
        atol = 1e-6
    if ok or atol == 0:
        return bool(ok)
    if type(out) is not type(exp):
        return False
    outs, exps = (out, exp) if isinstance(exp, (list, tuple)) else ([out], [exp])
    if len(outs) != len(exps):
        return False
    return all(isinstance(o, (int, float)) and isinstance(e, (int, float))
               and abs(o - e) <= atol + 1e-7 * abs(e) for o, e in zip(outs, exps))
"""


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


def _is_plus(ref: Mapping[str, Any]) -> bool:
    return all(k in ref for k in ("entry_point", "canonical_solution", "base_input"))


def _mbpp_program(code: str, ref: Mapping[str, Any]) -> str:
    setup = ref.get("test_setup_code") or ""
    tests = "\n".join(ref["test_list"])
    return (
        "_rr_g = {'__name__': '__candidate__'}\n"
        f"exec(compile({code!r}, '<candidate>', 'exec'), _rr_g)\n"
        f"exec(compile({setup!r}, '<test_setup>', 'exec'), _rr_g)\n"
        f"exec(compile({tests!r}, '<tests>', 'exec'), _rr_g)\n"
    )


def _plus_inputs(ref: Mapping[str, Any], max_plus: int | None) -> tuple[list[Any], list[Any]]:
    plus = list(ref.get("plus_input") or [])
    return list(ref["base_input"]), plus if max_plus is None else plus[:max_plus]


def _canonical_program(ref: Mapping[str, Any], base: list[Any], plus: list[Any]) -> str:
    entry, num = ref["entry_point"], _task_number(ref.get("task_id"))
    return _PLUS_PRELUDE + (
        "_rr_g = {'__name__': '__canonical__'}\n"
        f"exec(compile({ref['canonical_solution']!r}, '<canonical>', 'exec'), _rr_g)\n"
        f"_rr_fn = _rr_g[{entry!r}]\n"
        f"for _rr_raw in ({json.dumps(base)!r}, {json.dumps(plus)!r}):\n"
        "    _rr_out = []\n"
        "    for _rr_a in json.loads(_rr_raw):\n"
        f"        _rr_o = _rr_fn(*copy.deepcopy(_rr_restore({num}, _rr_a)))\n"
        f"        _rr_out.append(_rr_o is not None if {entry!r} in _RR_NOT_NONE else _rr_o)\n"
        f"    print({_EXPECTED_TAG!r} + base64.b64encode(pickle.dumps(_rr_out)).decode())\n"
    )


def _candidate_program(code: str, ref: Mapping[str, Any], inputs: list[Any], expected: str) -> str:
    entry, num = ref["entry_point"], _task_number(ref.get("task_id"))
    atol = float(ref.get("atol") or 0)
    return _PLUS_PRELUDE + (
        f"_rr_inputs = [_rr_restore({num}, a) for a in json.loads({json.dumps(inputs)!r})]\n"
        f"_rr_expected = pickle.loads(base64.b64decode({expected!r}))\n"
        "_rr_g = {'__name__': '__candidate__'}\n"
        f"exec(compile({code!r}, '<candidate>', 'exec'), _rr_g)\n"
        f"_rr_fn = _rr_g[{entry!r}]\n"
        "for _rr_n, (_rr_a, _rr_e) in enumerate(zip(_rr_inputs, _rr_expected)):\n"
        "    _rr_o = _rr_fn(*copy.deepcopy(_rr_a))\n"
        f"    if not _rr_check({entry!r}, _rr_o, _rr_e, {atol!r}):\n"
        "        raise AssertionError(f'wrong answer on input #{_rr_n}')\n"
    )


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


class PassAt1Oracle:
    """Execution-based functional correctness for MBPP / MBPP+ style tasks."""

    name = "pass_at_1"
    description = "1.0 if the completion's code passes the task's reference tests (MBPP/MBPP+)"
    requires = Requirements(reference=True)

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
        self._expected: dict[tuple[str, str], tuple[str, str] | str] = {}
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
            res = run_python(_mbpp_program(code, ref), self.limits)
            details = {"format": "mbpp", "passed": res.passed, **_run_details(res)}
            return Score(1.0 if res.passed else 0.0, details)
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
        res = run_python(_candidate_program(code, ref, base, expected[0]), self.limits)
        base_ok, plus_ok = res.passed, False
        if base_ok:  # plus only counts on top of base, so skip the run when base already failed
            res = run_python(_candidate_program(code, ref, plus, expected[1]), self.limits)
            plus_ok = res.passed
        details.update(
            passed=base_ok, base_passed=base_ok, plus_passed=plus_ok, **_run_details(res)
        )
        return Score(1.0 if base_ok else 0.0, details)

    def _expected_outputs(
        self, ref: Mapping[str, Any], base: list[Any], plus: list[Any]
    ) -> tuple[str, str] | str:
        """Pickled (base64) expected outputs for base and plus inputs, or an error message.

        Computed once per task by running the canonical solution in the sandbox; the parent never
        unpickles them (they go back into the candidate's sandbox as opaque text)."""
        digest = hashlib.sha256(
            json.dumps([ref["canonical_solution"], base, plus], sort_keys=True).encode()
        ).hexdigest()
        key = (str(ref.get("task_id", ref["entry_point"])), digest)
        with self._cache_lock:
            lock = self._key_locks[key]
        with lock:  # concurrent samples of one task wait for a single canonical run
            if key not in self._expected:
                self._expected[key] = self._run_canonical(ref, base, plus)
            return self._expected[key]

    def _run_canonical(
        self, ref: Mapping[str, Any], base: list[Any], plus: list[Any]
    ) -> tuple[str, str] | str:
        limits = SandboxLimits(
            timeout_s=self.limits.timeout_s, memory_mb=self.limits.memory_mb, max_stdout=1 << 28
        )
        res = run_python(_canonical_program(ref, base, plus), limits)
        lines = [
            ln[len(_EXPECTED_TAG) :]
            for ln in res.stdout.splitlines()
            if ln.startswith(_EXPECTED_TAG)
        ]
        if not res.passed or len(lines) != 2:
            return f"canonical solution failed ({res.status}): {res.stderr[-500:]}"
        return lines[0], lines[1]

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

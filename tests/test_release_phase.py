"""The Release phase (iterative): weight-search rules, run records, explicit weights, exact
composition and resume. Runs use the tiny random model: its scores are near 0, so these tests
check the mechanics (what is trained, applied, recorded, replayed), not forgetting itself."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console

from rrtool.context import RunContext
from rrtool.models import load_model
from rrtool.release import phase as release_phase
from rrtool.release.compose import rebuild
from rrtool.release.evaluate import Scores
from rrtool.release.lora import Example as LoraExample
from rrtool.release.lora import LoraModule
from rrtool.release.weights import Start, ladder, ladder_ratio, search_weight
from rrtool.reveal.phase import run_reveal
from rrtool.spec import RulesSpec, Spec, WeightSearchSpec
from rrtool.spec_loader import load_spec
from rrtool.strategies import STRATEGIES, Options
from rrtool.tracking import Tracker, resolve_store
from tests.conftest import only_run, read_artifact, read_jsonl, tiny_spec

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def schedule(iterations: int, strategy: str = "iterative", **options: object) -> list:
    """The registered strategy's steps for these options."""
    return STRATEGIES[strategy].schedule(Options(iterations, **options))  # type: ignore[arg-type]


def release_spec(release: dict | None = None, stopping: dict | None = None) -> dict:
    """Tiny: 4 evaluation passages x (person, location), 6 new tokens, 1 epoch, budget 3."""
    section = {
        "iterations": 1,
        "lora": {"r": 4, "epochs": 1, "batch_size": 4},
        "search": {"budget": 3, "eval_size": 4},
    }
    section.update(release or {})
    extra = {"stopping": stopping} if stopping else {}
    return tiny_spec(
        reveal={
            "strategy": "direct",
            "contexts": {"path": "builtin:ner_passages", "format": "universalner", "limit": 50},
            "generation": {"max_new_tokens": 6, "temperature": 0, "batch_size": 4},
        },
        release=section,
        **extra,
    )


# ----------------------------------------------------------------- weight search (pure)
RULES = RulesSpec()  # tradeoff mode: forget_fraction 0.9, utility_recovery 0.95, floor 0.5
PAPER = RulesSpec(mode="paper")
SEARCH = WeightSearchSpec(budget=8, min_weight=0.0, max_weight=2.0)
START = Start(s=0.5, u=0.6, u_ref=0.6, u_base=0.6)


def test_schedule_and_ladder() -> None:
    assert [s.name for s in schedule(2)] == ["F0", "R1", "F1", "R2", "F2"]
    assert [s.name for s in schedule(1, schedule="retain_first")] == ["R0", "F0", "R1", "F1"]
    last = schedule(1, schedule="retain_first", end_with_retain=True)
    assert [(s.name, s.sign, s.iteration) for s in last][-2:] == [("F1", -1.0, 1), ("R2", 1.0, 2)]
    assert [s.name for s in schedule(1, "npo", end_with_retain=True)] == ["F0"]
    assert [s.sign for s in schedule(1)] == [-1.0, 1.0, -1.0]
    points = ladder(SEARCH)  # budget 8: 6 rungs 3x apart, 2 bisections
    assert len(points) == 6 and points[-1] == 2.0
    assert all(
        b / a == pytest.approx(3.0, rel=1e-4) for a, b in zip(points, points[1:], strict=False)
    )
    paper = ladder(SEARCH, "paper")
    assert len(paper) == 4 and paper[0] == pytest.approx(2 / 64)
    assert ladder(WeightSearchSpec(budget=1, min_weight=0.5, max_weight=2.0)) == [2.0]
    assert ladder_ratio(WeightSearchSpec(budget=4, max_weight=2.0)) == pytest.approx(3.0, rel=1e-4)


def test_total_collapse_never_passes_the_relative_tradeoff() -> None:
    # Every weight forgets 100% and takes utility to 0: gain = loss = 1.
    result = search_weight("mu", lambda w: (0.0 if w > 0.1 else 0.5, 0.0 if w > 0.1 else 0.6),
                           START, SEARCH, RULES)  # fmt: skip
    assert not any(c.accepted for c in result.candidates if c.s == 0.0)
    assert result.reason == "none_acceptable"
    assert result.weight == min(c.weight for c in result.candidates)
    # The paper's literal rule takes it (s <= 10% of s0), which is what the ablation shows.
    paper = search_weight("mu", lambda w: (0.0, 0.0), START, SEARCH, PAPER)
    assert paper.reason == "forget_fraction"


def test_the_relative_tradeoff_is_scale_free() -> None:
    # Utility ~0.027 (1/perplexity): a raw-difference rule lets any forget drop win.
    start = Start(s=0.5, u=0.027, u_ref=0.027, u_base=0.027)

    def perplexity_explodes(w: float) -> tuple[float, float]:
        return 0.5 - 0.1 * min(w, 1.0), 0.027 / (1 + 20 * w)  # 20% forget drop, ppl x21

    result = search_weight("mu", perplexity_explodes, start, SEARCH, RULES)
    assert all(not c.accepted for c in result.candidates if c.u < 0.5 * 0.027)
    paper = search_weight("mu", perplexity_explodes, start, SEARCH, PAPER)
    assert paper.reason == "tradeoff_raw" and paper.u < 0.1 * 0.027  # the raw rule is fooled


def test_per_step_floor_rejects_weights_that_wreck_utility() -> None:
    # 95% forgotten from w = 0.3, but utility falls below half of base from w = 0.25.
    def steep(w: float) -> tuple[float, float]:
        return (0.025 if w >= 0.3 else 0.5 - 1.5 * w), 0.6 * (1 - 2 * w) if w < 0.5 else 0.0

    result = search_weight("mu", steep, START, SEARCH, RULES)
    for cand in result.candidates:
        assert cand.feasible == (cand.u >= 0.5 * 0.6)
        assert not cand.accepted or cand.feasible
    assert result.u >= 0.3 and result.reason in ("tradeoff", "forget_fraction")


def test_mu_takes_the_best_combined_objective_and_spends_the_budget() -> None:
    calls: list[float] = []

    def evaluate(w: float) -> tuple[float, float]:
        calls.append(w)
        # Forgetting saturates; utility falls quadratically: J peaks at an interior weight.
        return 0.5 * math.exp(-6 * w), 0.6 * max(0.0, 1 - 0.8 * w * w)

    result = search_weight("mu", evaluate, START, SEARCH, RULES)
    assert len(calls) == len(result.candidates) == SEARCH.budget  # the whole budget
    best = max((c for c in result.candidates if c.accepted), key=lambda c: c.objective)
    assert result.weight == best.weight and best.chosen
    assert sum(c.chosen for c in result.candidates) == 1
    # The bisections went next to the best rung, not to the ends of the range.
    extra = [w for w in calls if w not in ladder(SEARCH)]
    rungs = ladder(SEARCH)
    assert len(extra) == 2 and all(min(rungs) < w < max(rungs) for w in extra)


def test_bisection_when_nothing_is_acceptable_still_spends_the_budget() -> None:
    result = search_weight("mu", lambda w: (0.5, 0.6 - 0.1 * w), START, SEARCH, RULES)
    assert len(result.candidates) == SEARCH.budget
    # J is best at the smallest rung, so both bisections go below it, towards min_weight 0.
    assert result.reason == "none_acceptable"
    assert result.weight == pytest.approx(min(ladder(SEARCH)) / 4, rel=1e-4)


def test_paper_mode_keeps_the_literal_rules() -> None:
    def evaluate(w: float) -> tuple[float, float]:
        return 0.5 * math.exp(-12 * w), 0.6  # 90% forgotten from w = ln(10)/12 = 0.192

    result = search_weight("mu", evaluate, START, SEARCH, PAPER)
    assert result.reason == "forget_fraction"
    assert result.weight == min(c.weight for c in result.candidates if c.accepted)
    assert math.log(10) / 12 <= result.weight < 0.3


def test_lambda_recovers_utility_and_keeps_the_forgetting() -> None:
    # More retain weight: utility back, but forgetting undone too (s rises with w).
    def recover(w: float) -> tuple[float, float]:
        return 0.1 + 0.2 * w, 0.4 + 0.5 * min(w, 0.6)

    start = Start(s=0.1, u=0.4, u_ref=0.6, u_base=0.6)  # needs u >= 0.57
    result = search_weight("lambda", recover, start, SEARCH, RULES)
    assert result.reason == "utility_recovery" and result.u >= 0.95 * 0.6
    accepted = [c for c in result.candidates if c.accepted]
    assert result.weight == max(accepted, key=lambda c: (c.objective, -c.weight)).weight
    # J penalises the forgetting undone beyond w = 0.6, where utility stops rising.
    assert result.weight <= 0.7

    start = Start(s=0.1, u=0.4, u_ref=0.8, u_base=0.8)  # 0.76 is out of reach (max 0.7)
    result = search_weight("lambda", recover, start, SEARCH, RULES)
    assert result.reason == "highest_utility"
    assert result.u == max(c.u for c in result.candidates)


def test_a_retain_weight_after_full_forgetting_still_counts_forgetting_undone() -> None:
    """The R2 the bench met: after F1 the search split named the person in none of its answers
    (s = 0); retain weights from 0.58 on brought it back (s 0.22, then 0.44 at w = 1) for a
    little more utility. On the step's own scale (s0 = 0) undoing was free and w = 1 won; on
    the base's scale (s_base = 0.78) the weight that recovers enough and undoes least wins."""
    table = {0.111111: (0.0, 0.386), 0.333333: (0.222, 0.450), 0.57735: (0.222, 0.471),
             1.0: (0.444, 0.493), 3.0: (0.556, 0.35)}  # fmt: skip

    def scores(w: float) -> tuple[float, float]:
        return table[min(table, key=lambda k: abs(k - w))]

    start = Start(s=0.0, u=0.386, u_ref=0.4705, u_base=0.387, s_base=0.778)
    search = WeightSearchSpec(budget=5, min_weight=0.0, max_weight=3.0)
    result = search_weight("lambda", scores, start, search, RULES)
    assert result.reason == "utility_recovery"  # u >= 0.95 x 0.4705 = 0.447
    assert result.weight == pytest.approx(0.57735, rel=1e-3) and result.s == 0.222
    blind = Start(s=0.0, u=0.386, u_ref=0.4705, u_base=0.387)  # no base scale: s0 = 0
    assert search_weight("lambda", scores, blind, search, RULES).weight == 1.0


def test_candidates_record_intervals_when_the_evaluation_gives_them() -> None:
    scores = Scores(0.2, 0.5, {}, [0.1, 0.3], [0.4, 0.6])
    result = search_weight("mu", lambda w: scores, START, WeightSearchSpec(budget=2), RULES)
    assert all(c.s_ci == [0.1, 0.3] and c.u_ci == [0.4, 0.6] for c in result.candidates)


# -------------------------------------------------------------------------- runs (CLI)


def test_release_records_modules_steps_candidates_and_state(
    invoke, write_spec, tmp_path: Path
) -> None:
    spec = release_spec({"iterations": 2})
    result = invoke("run", write_spec(spec), "--phase", "release")
    assert result.exit_code == 0, result.stderr
    client, run = only_run(tmp_path)
    run_id, down = run.info.run_id, tmp_path / "down"
    assert run.data.tags["rrtool.phase.release"] == "done"
    assert run.data.tags["rrtool.release.stop_reason"] == "all 2 iteration(s) done"

    steps = read_jsonl(client, run_id, "release/steps.jsonl", down)
    assert [s["module"] for s in steps] == ["F0", "R1", "F1", "R2", "F2"]
    assert [s["step"] for s in steps] == [1, 2, 3, 4, 5]
    reasons = {"forget_fraction", "tradeoff", "none_acceptable", "utility_recovery",
               "highest_utility"}  # fmt: skip
    assert all(s["weight_from"] in reasons for s in steps)
    assert [math.copysign(1, s["coefficient"]) for s in steps] == [-1, 1, -1, 1, -1]
    files = {Path(f.path).name for f in client.list_artifacts(run_id, "release/modules")}
    assert files == {
        f"{m}.{ext}" for m in ("F0", "R1", "F1", "R2", "F2") for ext in ("safetensors", "json")
    }

    candidates = read_jsonl(client, run_id, "release/candidates.jsonl", down)
    for step in steps:
        tried = [c for c in candidates if c["step"] == step["step"]]
        assert len(tried) == 3  # the whole budget, always
        (chosen,) = [c for c in tried if c["chosen"]]
        assert chosen["weight"] == step["weight"] and chosen["reason"] == step["weight_from"]
        assert {"s", "u", "accepted", "rule", "objective", "feasible", "s_ci", "u_ci"} <= set(
            chosen
        )

    state = json.loads(read_artifact(client, run_id, "release/state.json", down))
    assert [e["sha256"] for e in state["stack"]] == [s["sha256"] for s in steps]
    assert state["stop_reason"] == "all 2 iteration(s) done"
    history = client.get_metric_history(run_id, "release/forget")
    assert sorted(m.step for m in history) == [0, 1, 2, 3, 4, 5]
    assert len(client.get_metric_history(run_id, "release/weight")) == 5
    similarity = read_jsonl(client, run_id, "release/similarity.jsonl", down)
    assert [r["iteration"] for r in similarity] == [1, 2] and similarity[0]["layers"]


def test_explicit_weights_are_used_exactly_without_search(
    invoke, write_spec, tmp_path: Path
) -> None:
    weights = {"mu0": 0.3, "lambdas": [0.2], "mus": [0.45]}
    result = invoke("run", write_spec(release_spec({"weights": weights})), "--phase", "release")
    assert result.exit_code == 0, result.stderr
    client, run = only_run(tmp_path)
    steps = read_jsonl(client, run.info.run_id, "release/steps.jsonl", tmp_path / "d")
    assert [s["weight"] for s in steps] == [0.3, 0.2, 0.45]
    assert [s["coefficient"] for s in steps] == [-0.3, 0.2, -0.45]
    assert {s["weight_from"] for s in steps} == {"explicit"}
    assert read_jsonl(client, run.info.run_id, "release/candidates.jsonl", tmp_path / "d") == []
    logged = [m.value for m in client.get_metric_history(run.info.run_id, "release/weight")]
    assert sorted(logged) == pytest.approx(sorted([0.3, 0.2, 0.45]))


def test_stopping_rule_ends_release_early(invoke, write_spec, tmp_path: Path) -> None:
    # Any F1 in [0, 1] meets forget_score 1.0: the stop comes right after F0.
    spec = release_spec({"iterations": 2, "weights": {"mu0": 0.1}}, {"forget_score": 1.0})
    assert invoke("run", write_spec(spec), "--phase", "release").exit_code == 0
    client, run = only_run(tmp_path)
    assert run.data.tags["rrtool.release.stop_reason"].startswith("forget score")
    state = json.loads(read_artifact(client, run.info.run_id, "release/state.json", tmp_path / "d"))
    assert [e["module"] for e in state["stack"]] == ["F0"]


# ------------------------------------------------- exact composition and resume (API)
def _context(spec_path: Path, tracker: Tracker, scratch: Path) -> RunContext:
    console = Console(file=io.StringIO(), width=100)
    return RunContext(load_spec(spec_path), tracker, console, scratch / tracker.run_id)


def _reveal_and_release(spec_path: Path, tmp_path: Path) -> tuple[Any, Tracker, RunContext, dict]:
    """A new run in the test's store: Reveal, then Release; (store, tracker, ctx, summary)."""
    store = resolve_store(None, None)
    tracker = Tracker.start(store, "rrtool", "release-test", {})
    ctx = _context(spec_path, tracker, tmp_path)
    run_reveal(ctx)
    return store, tracker, ctx, release_phase.run_release(ctx)


def _modules(tracker: Tracker, stack: list[dict], tmp: Path) -> list[tuple[LoraModule, float]]:
    out = []
    for entry in stack:
        local = tracker.client.download_artifacts(tracker.run_id, entry["artifact"], str(tmp))
        sidecar = entry["artifact"].replace(".safetensors", ".json")
        tracker.client.download_artifacts(tracker.run_id, sidecar, str(tmp))
        out.append((LoraModule.load(local), entry["coefficient"]))
    return out


def _assert_equals_rebuild(ctx: RunContext, tracker: Tracker, tmp: Path) -> None:
    state = json.loads(tracker.read_text("release/state.json"))
    base = load_model(ctx.spec.model).model  # fresh base weights
    rebuild(base, _modules(tracker, state["stack"], tmp))
    final = ctx.model().model.state_dict()
    for name, tensor in base.state_dict().items():
        assert torch.equal(tensor, final[name]), name


def test_final_weights_equal_rebuild_and_resume_does_not_retrain(
    write_spec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec_path = write_spec(release_spec({"iterations": 1, "search": {"budget": 2, "eval_size": 3}}))
    store, tracker, ctx, summary = _reveal_and_release(spec_path, tmp_path)
    assert summary["modules"] == 3
    _assert_equals_rebuild(ctx, tracker, tmp_path / "a")

    # Simulate a crash right after R1 was applied: the run then holds a state whose stack
    # ends at R1 (later records, uploaded before the state, are ignored on resume).
    state = json.loads(tracker.read_text("release/state.json"))
    kept = state["stack"][:2]
    tracker.log_dict({**state, "stack": kept, "stop_reason": None}, "release/state.json")

    trained: list[str] = []
    real_train = release_phase.train_lora

    def counting(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        trained.append(kwargs["kind"])
        return real_train(*args, **kwargs)

    monkeypatch.setattr(release_phase, "train_lora", counting)
    # Another scratch directory: a resume on a fresh machine has only what the run holds.
    resumed = _context(spec_path, Tracker.resume(store, tracker.run_id), tmp_path / "fresh")
    summary = release_phase.run_release(resumed)
    assert trained == ["forget"]  # only F1: F0 and R1 were replayed, not retrained
    assert summary["modules"] == 3
    state = json.loads(tracker.read_text("release/state.json"))
    assert [e["sha256"] for e in state["stack"][:2]] == [e["sha256"] for e in kept]
    steps = tracker.read_jsonl("release/steps.jsonl")
    assert [s["module"] for s in steps] == ["F0", "R1", "F1"]
    _assert_equals_rebuild(resumed, tracker, tmp_path / "b")


def test_a_finished_release_run_again_leaves_the_released_model_loaded(
    write_spec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash after Release's last record but before its phase tag runs Release again: it
    must train nothing and leave the released weights loaded (the audit trusts that)."""
    spec_path = write_spec(release_spec({"iterations": 1, "search": {"budget": 2, "eval_size": 3}}))
    store, tracker, ctx, summary = _reveal_and_release(spec_path, tmp_path)
    monkeypatch.setattr(release_phase, "train_lora", lambda *a, **k: pytest.fail("retrained"))
    again = _context(spec_path, Tracker.resume(store, tracker.run_id), tmp_path / "fresh")
    assert release_phase.run_release(again)["modules"] == summary["modules"] == 3
    assert again.model_state == "released" and again.released_key is not None
    assert again.released_key == ctx.released_key  # the same stack, by content
    _assert_equals_rebuild(again, tracker, tmp_path / "c")


class _ScriptedEvaluator:
    """Stands in for ``Evaluator``: returns scripted (s, u) in call order."""

    script: list[tuple[float, float]] = []

    def __init__(self, ctx: RunContext) -> None:
        self.size = 1
        self.calls = iter(self.script)

    def __call__(self, progress: object = None) -> Scores:
        s, u = next(self.calls)
        return Scores(s, u, {})


def _scripted_release(
    write_spec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, iterations: int,
    script: list[tuple[float, float]], stopping: dict, retain_first: bool = False,
    **release: object,
) -> tuple[dict, Tracker, RunContext]:  # fmt: skip
    weights = {"mu0": 0.3, "lambdas": [0.2] * iterations, "mus": [0.4] * iterations}
    section: dict = {"iterations": iterations, "weights": weights, **release}
    if retain_first:
        section |= {"schedule": "retain_first", "weights": weights | {"lambda0": 0.1}}
    spec = release_spec(section, stopping)
    _ScriptedEvaluator.script = script
    monkeypatch.setattr(release_phase, "Evaluator", _ScriptedEvaluator)
    tracker = Tracker.start(resolve_store(None, None), "rrtool", "floor", {})
    ctx = _context(write_spec(spec), tracker, tmp_path)
    run_reveal(ctx)
    return release_phase.run_release(ctx), tracker, ctx


def test_a_forget_dip_waits_for_the_retain_step_then_the_best_feasible_state_is_kept(
    write_spec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Floor 0.5 x 0.8 = 0.4. base, F0, R1, F1 dips to 0.2 (allowed: R2 follows), R2 does
    # not bring it back (0.3): Release ends, at the best feasible state, R1's (J 0.29 > F0's
    # 0.125), not at F0's as a plain revert of the iteration would.
    script = [(0.6, 0.8), (0.3, 0.5), (0.35, 0.7), (0.1, 0.2), (0.2, 0.3)]
    summary, tracker, ctx = _scripted_release(
        write_spec, tmp_path, monkeypatch, 2, script, {"utility_floor": 0.5}
    )
    assert "R2: its retain step did not bring it back" in summary["stop_reason"]
    assert "reverted to the state after R1" in summary["stop_reason"]
    assert summary["modules"] == 2 and (summary["s"], summary["u"]) == (0.35, 0.7)
    steps = tracker.read_jsonl("release/steps.jsonl")
    assert [(s["module"], s["reverted"]) for s in steps] == [
        ("F0", False),
        ("R1", False),
        ("F1", True),
        ("R2", True),
    ]
    assert tracker.tags()["rrtool.release.stop_reason"] == summary["stop_reason"]
    _assert_equals_rebuild(ctx, tracker, tmp_path / "a")  # the model holds F0 + R1


def test_no_feasible_state_ends_at_the_base_model(
    write_spec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = [(0.6, 0.8), (0.1, 0.3), (0.2, 0.35)]  # F0 and R1 both below 0.4
    summary, tracker, ctx = _scripted_release(
        write_spec, tmp_path, monkeypatch, 1, script, {"utility_floor": 0.5}
    )
    assert "Release ends at the base model" in summary["stop_reason"]
    assert summary["modules"] == 0 and (summary["s"], summary["u"]) == (0.6, 0.8)
    state = json.loads(tracker.read_text("release/state.json"))
    assert state["stack"] == [] and state["reverted_to"] == 0
    _assert_equals_rebuild(ctx, tracker, tmp_path / "a")


def test_forget_score_stops_only_at_a_state_above_the_floor(
    write_spec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # F0 reaches the forget score by wrecking utility: not a stop; R1 restores it; F1 reaches
    # the score above the floor: stop there.
    script = [(0.6, 0.8), (0.01, 0.1), (0.3, 0.7), (0.02, 0.6)]
    summary, _, _ = _scripted_release(
        write_spec, tmp_path, monkeypatch, 2, script,
        {"utility_floor": 0.5, "forget_score": 0.05},
    )  # fmt: skip
    assert summary["stop_reason"].startswith("forget score 0.0200")
    assert summary["modules"] == 3


def test_lambda_restores_the_utility_from_before_the_last_subtraction() -> None:
    from rrtool.release.phase import utility_reference

    state = {"u0": 0.5, "stack": []}
    assert utility_reference(state) == 0.5
    state["stack"] = [{"kind": "forget", "u": 0.3}]  # F0 applied: restore the base's utility
    assert utility_reference(state) == 0.5
    state["stack"] += [{"kind": "retain", "u": 0.45}, {"kind": "forget", "u": 0.35}]
    assert utility_reference(state) == 0.45  # F1 took utility from 0.45


def test_o_lora_penalty_reaches_retain_modules_only(invoke, write_spec, tmp_path: Path) -> None:
    """release.lora.orthogonal_weight: each retain module is trained against the forget
    modules applied before it (recorded in its sidecar); forget modules never are."""
    spec = release_spec({"iterations": 2, "lora": {"r": 4, "epochs": 1, "batch_size": 4,
                                                   "orthogonal_weight": 0.5}})  # fmt: skip
    result = invoke("run", write_spec(spec), "--phase", "release")
    assert result.exit_code == 0, result.stderr
    client, run = only_run(tmp_path)
    info = {
        name: json.loads(read_artifact(client, run.info.run_id, f"release/modules/{name}.json", tmp_path))
        ["info"]["orthogonal_weight"]
        for name in ("F0", "R1", "F1", "R2", "F2")
    }  # fmt: skip
    assert info == {"F0": 0.0, "R1": 0.5, "F1": 0.0, "R2": 0.5, "F2": 0.0}


def test_bf16_autocast_option_reaches_training(invoke, write_spec, tmp_path: Path) -> None:
    spec = release_spec({"iterations": 0, "lora": {"r": 4, "epochs": 1, "bf16_autocast": True}})
    result = invoke("run", write_spec(spec), "--phase", "release")
    assert result.exit_code == 0, result.stderr
    client, run = only_run(tmp_path)
    meta = json.loads(read_artifact(client, run.info.run_id, "release/modules/F0.json", tmp_path))
    assert meta["info"]["autocast_bf16"] is True


@pytest.mark.parametrize(
    ("strategy", "sign", "objective"),
    [("single_subtraction", -1, "nll"), ("gradient_ascent", 1, "gradient_ascent"),
     ("npo", 1, "npo"), ("dpo", 1, "dpo")],
)  # fmt: skip
def test_baseline_strategies_apply_one_module(
    strategy: str, sign: int, objective: str, invoke, write_spec, tmp_path: Path
) -> None:
    """One module from the forget data, its weight from the same forget rule; no retain
    module is trained whatever `iterations` says."""
    spec = release_spec({"strategy": strategy, "iterations": 3})
    plan = invoke("plan", write_spec(spec))
    assert plan.exit_code == 0, plan.output
    assert "baseline" in plan.output and "iteration 1" not in plan.output
    result = invoke("run", write_spec(spec), "--phase", "release")
    assert result.exit_code == 0, result.stderr
    client, run = only_run(tmp_path)
    steps = read_jsonl(client, run.info.run_id, "release/steps.jsonl", tmp_path / "d")
    assert [s["module"] for s in steps] == ["F0"]
    assert math.copysign(1, steps[0]["coefficient"]) == sign
    sidecar = json.loads(
        read_artifact(client, run.info.run_id, "release/modules/F0.json", tmp_path / "d")
    )
    assert sidecar["info"]["objective"] == objective


def test_external_forget_data_replaces_reveals(invoke, write_spec, tmp_path: Path) -> None:
    """NER passages as external forget data: Reveal's queries answered with the gold
    entities of the forget type (the paper's PEM-external with single_subtraction)."""
    from rrtool.data import load_records
    from rrtool.spec import DataSource

    source = {"path": "builtin:ner_passages", "format": "universalner", "limit": 40}
    spec = release_spec({"strategy": "single_subtraction", "forget_data": source})
    result = invoke("run", write_spec(spec), "--phase", "release")
    assert result.exit_code == 0, result.stderr
    client, run = only_run(tmp_path)
    sidecar = json.loads(
        read_artifact(client, run.info.run_id, "release/modules/F0.json", tmp_path / "d")
    )
    gold = [
        r for r in load_records(DataSource(**source)) if r["type"] == "person" and r["entities"]
    ]
    assert sidecar["info"]["examples"] == len(gold) > 0


def test_labelled_retain_data_teaches_the_retained_types_only(write_spec, tmp_path: Path) -> None:
    """NER passages as retain.data: Reveal's own queries for the retained types, answered with
    the gold entities, from the Reveal split only; never the forget type's answers."""
    from rrtool import splits
    from rrtool.generation.base import has_chat_template
    from rrtool.queries import ner_queries
    from rrtool.spec import DataSource

    source = {"path": "builtin:ner_passages", "format": "universalner"}
    spec = load_spec(write_spec({**release_spec(), "retain": {"data": source}}))
    ctx = RunContext(spec, None, Console(file=io.StringIO()), tmp_path)  # type: ignore[arg-type]
    examples = release_phase.external_retain_examples(ctx)
    part = splits.read(DataSource(**source), "reveal", ctx.spec)
    passages = {r["text"] for r in part.records}
    location = {
        (r["text"], json.dumps(r["entities"], ensure_ascii=False))
        for r in part.records
        if r["type"] == "location"
    }
    chat = has_chat_template(ctx.model().tokenizer)
    asked = {
        json.dumps(q.prompt): q.context
        for q in ner_queries(part.records, ["location"], [], None, chat)
    }
    assert len(examples) == len(location) > 0
    for e in examples:
        context = asked[json.dumps(e.prompt)]  # the prompt Reveal asks, word for word
        assert context in passages and (context, e.completion) in location
        assert "person" not in e.prompt[-1]["content"]


def test_dpo_pairs_forget_answers_with_the_chosen_kind(write_spec, tmp_path: Path) -> None:
    """auto on NER prefers `[]`; `refusal` the spec's text; `retain` retain answers in turn."""
    from rrtool.release.lora import Example

    forget = [Example(f"q{i}", f'["P{i}"]') for i in range(3)]
    retain = [Example("r0", "kept 0"), Example("r1", "kept 1")]

    def pairs(**release: str) -> list[Example]:
        spec = load_spec(write_spec(release_spec({"strategy": "dpo", **release})))
        ctx = RunContext(spec, None, Console(file=io.StringIO()), tmp_path)  # type: ignore[arg-type]
        return release_phase.dpo_pairs(ctx, forget, retain)

    assert [(p.prompt, p.completion, p.rejected) for p in pairs()] == [
        (f"q{i}", "[]", f'["P{i}"]') for i in range(3)
    ]
    assert {p.completion for p in pairs(dpo_chosen="refusal", refusal="No.")} == {"No."}
    assert [p.completion for p in pairs(dpo_chosen="retain")] == ["kept 0", "kept 1", "kept 0"]


def test_ext_sub_adds_the_expert_subtracts_the_deficiency_and_resumes(
    write_spec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """E0 (expert, +1), then D0 (the deficiency of anti-expert A0, subtracted with a searched
    weight). Both E0 and A0 are trained on the base weights. A run resumed after E0 trains
    nothing: it downloads A0 and rebuilds the same D0."""
    from rrtool.release.ext_sub import deficiency
    from rrtool.release.lora import train_lora

    spec_path = write_spec(
        release_spec({"strategy": "ext_sub", "search": {"budget": 2, "eval_size": 3}})
    )
    store, tracker, ctx, summary = _reveal_and_release(spec_path, tmp_path)
    assert summary["modules"] == 2
    steps = tracker.read_jsonl("release/steps.jsonl")
    assert [(s["module"], s["kind"]) for s in steps] == [("E0", "retain"), ("D0", "forget")]
    assert steps[0]["coefficient"] == 1.0 and steps[1]["coefficient"] < 0
    state = json.loads(tracker.read_text("release/state.json"))
    anti = release_phase.download_module(tracker, state["anti_expert"], tmp_path / "dl")
    expert, defic = (
        release_phase.download_module(tracker, e, tmp_path / "dl") for e in state["stack"]
    )
    assert expert.kind == "retain" and anti.kind == "forget" and defic.r == 2 * anti.r
    assert defic.sha256() == deficiency(expert, anti).sha256()
    _assert_equals_rebuild(ctx, tracker, tmp_path / "a")
    # A0 saw the base weights, not base + E0: the same seed on a fresh base reproduces it.
    forget, _ = release_phase.load_examples(ctx)
    handle = load_model(ctx.spec.model)
    again = train_lora(
        handle.model, handle.tokenizer, forget, ctx.spec.release.lora, seed=ctx.spec.seed + 2,
        kind="forget", chat=release_phase.trains_in_chat_format(ctx),
    )  # fmt: skip
    assert again.sha256() == anti.sha256()

    # Crash right after E0 was applied: the resumed run trains nothing and gets the same D0.
    tracker.log_dict(
        {**state, "stack": state["stack"][:1], "stop_reason": None}, "release/state.json"
    )
    trained: list[str] = []
    monkeypatch.setattr(release_phase, "train_lora", lambda *a, **k: trained.append("x"))
    resumed = _context(spec_path, Tracker.resume(store, tracker.run_id), tmp_path / "fresh")
    release_phase.run_release(resumed)
    assert trained == []
    final = json.loads(tracker.read_text("release/state.json"))
    assert final["stack"][1]["sha256"] == defic.sha256()


def test_forget_answers_in_several_formats_share_the_entity_not_the_format() -> None:
    from rrtool.release.phase import in_formats

    example = LoraExample("Text: ...", '["Alma Reyes", "Bo Li"]')
    rendered = [e.completion for e in in_formats(example, "person", ["json", "prose", "bullets"])]
    assert rendered == [
        '["Alma Reyes", "Bo Li"]',
        "The person described is Alma Reyes and Bo Li.",
        "- Alma Reyes\n- Bo Li",
    ]
    assert all(e.prompt == "Text: ..." for e in in_formats(example, "person", ["bare"]))
    # An answer that is not a JSON list of names is kept once, as it is.
    assert in_formats(LoraExample("p", "Alma Reyes"), "person", ["json", "prose"]) == [
        LoraExample("p", "Alma Reyes")
    ]
    with pytest.raises(ValueError, match="forget_formats re-renders NER answers"):
        Spec.model_validate(
            tiny_spec(
                target={"kind": "toxicity", "description": "x"},
                release={"forget_formats": ["prose"]},
            )
        )


def test_retain_first_adds_r0_before_f0(
    write_spec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = [(0.6, 0.8), (0.55, 0.85), (0.2, 0.7), (0.25, 0.8), (0.1, 0.75)]
    summary, tracker, ctx = _scripted_release(
        write_spec, tmp_path, monkeypatch, 1, script, {}, retain_first=True
    )
    steps = tracker.read_jsonl("release/steps.jsonl")
    assert [(s["module"], s["coefficient"]) for s in steps] == [
        ("R0", 0.1), ("F0", -0.3), ("R1", 0.2), ("F1", -0.4)
    ]  # fmt: skip
    assert summary["modules"] == 4 and summary["stop_reason"] == "all 1 iteration(s) done"
    _assert_equals_rebuild(ctx, tracker, tmp_path / "a")


def test_end_with_retain_restores_after_the_last_subtraction(
    write_spec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Floor 0.5 x 0.8 = 0.4: F1 dips to 0.3, which would end Release (reverted to R1) without
    # a step after it; R2, the last retain module, brings utility back and is kept.
    script = [(0.6, 0.8), (0.3, 0.6), (0.35, 0.7), (0.1, 0.3), (0.12, 0.75)]
    weights = {"mu0": 0.3, "lambdas": [0.2, 0.5], "mus": [0.4]}
    summary, tracker, ctx = _scripted_release(
        write_spec, tmp_path, monkeypatch, 1, script, {"utility_floor": 0.5},
        end_with_retain=True, weights=weights,
    )  # fmt: skip
    steps = tracker.read_jsonl("release/steps.jsonl")
    assert [(s["module"], s["coefficient"], s["reverted"]) for s in steps] == [
        ("F0", -0.3, False), ("R1", 0.2, False), ("F1", -0.4, False), ("R2", 0.5, False)
    ]  # fmt: skip
    assert summary["modules"] == 4 and (summary["s"], summary["u"]) == (0.12, 0.75)
    assert summary["stop_reason"] == "all 1 iteration(s) done"
    _assert_equals_rebuild(ctx, tracker, tmp_path / "a")
    with pytest.raises(ValueError, match="plus one for the last retain module"):
        Spec.model_validate(
            tiny_spec(release={"iterations": 1, "end_with_retain": True,
                               "weights": {"lambdas": [0.2]}})
        )  # fmt: skip
    with pytest.raises(ValueError, match="end_with_retain is an option of release.strategy"):
        Spec.model_validate(tiny_spec(release={"strategy": "npo", "end_with_retain": True}))


def test_forget_projection_subtracts_forget_modules_off_the_applied_retain_subspaces(
    write_spec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = [(0.6, 0.8), (0.55, 0.85), (0.2, 0.7), (0.25, 0.8), (0.1, 0.75)]
    summary, tracker, ctx = _scripted_release(
        write_spec, tmp_path, monkeypatch, 1, script, {}, retain_first=True,
        forget_projection="retain",
    )  # fmt: skip
    assert summary["modules"] == 4
    stack = json.loads(tracker.read_text("release/state.json"))["stack"]
    modules = {
        e["module"]: release_phase.download_module(tracker, e, tmp_path / "dl") for e in stack
    }
    assert modules["F0"].info["projected_off"] == [modules["R0"].sha256()]
    assert modules["F1"].info["projected_off"] == [m.sha256() for m in (modules["R0"],
                                                                          modules["R1"])]  # fmt: skip
    for name in modules["F1"].names:  # nothing of F1 where R1 writes or reads
        r1, f1 = modules["R1"].delta(name).double(), modules["F1"].delta(name).double()
        bound = 1e-4 * float(r1.norm()) * max(float(f1.norm()), 1e-8)  # float32 storage
        assert float((r1.T @ f1).norm()) <= bound and float((f1 @ r1.T).norm()) <= bound
    metrics = tracker.client.get_run(tracker.run_id).data.metrics
    assert 0 < metrics["release/F1/projection_removed_norm2"] <= 1
    _assert_equals_rebuild(ctx, tracker, tmp_path / "a")  # export replays projected modules
    with pytest.raises(ValueError, match="forget_projection is an option of release.strategy"):
        Spec.model_validate(tiny_spec(release={"strategy": "dpo", "forget_projection": "retain"}))


def test_with_nothing_acceptable_mu_bisects_the_feasibility_edge() -> None:
    """Forgetting only in a band just below collapse (what the demo showed with labelled retain
    data: 0.333 changed nothing, 1.0 took utility to 0): the ladder misses it, the bisection of
    the edge between the largest feasible and the smallest infeasible rung finds it."""
    search = WeightSearchSpec(budget=6, min_weight=0.0, max_weight=3.0)

    def band(w: float) -> tuple[float, float]:
        if w >= 0.9:
            return 0.5, 0.0  # collapse
        return (0.05, 0.58) if w >= 0.6 else (0.5, 0.6)

    assert ladder(search) == pytest.approx([1 / 9, 1 / 3, 1.0, 3.0], rel=1e-4)
    result = search_weight("mu", band, START, search, RULES)
    assert len(result.candidates) == search.budget
    assert result.reason in ("forget_fraction", "tradeoff") and 0.6 <= result.weight < 0.9


def test_retain_answers_lose_the_names_the_model_listed_as_the_forget_type() -> None:
    from rrtool.release.phase import drop_forget_names
    from rrtool.reveal_record import RevealRecord

    passage, other = "Imre Kallas of the Kallas Institute spoke in Varn.", "Varn is cold."
    forget = [
        RevealRecord(id="f1", context=passage, prompt="", completion='["Imre Kallas"]'),
        RevealRecord(id="f2", context=other, prompt="", completion="[]"),
    ]
    retain = [
        RevealRecord(id="organization", context=passage, type="organization", prompt="",
                     completion='["Political scientist Imre Kallas", "Kallas Institute"]'),
        RevealRecord(id="location", context=passage, type="location", prompt="",
                     completion='["Varn"]'),
        RevealRecord(id="country", context=passage, type="country", prompt="",
                     completion='["Imre Kallas"]'),
        RevealRecord(id="date", context=passage, type="date", prompt="",
                     completion="Imre Kallas, probably"),  # not JSON
        RevealRecord(id="location", context=other, type="location", prompt="",
                     completion='["Varn"]'),
    ]  # fmt: skip
    cleaned, dropped = drop_forget_names(retain, forget)
    assert [r.completion for r in cleaned] == [
        '["Kallas Institute"]',  # the surname alone is not the listed name
        '["Varn"]',
        "[]",
        "Imre Kallas, probably",
        '["Varn"]',
    ]
    assert dropped == 2
    assert [r.type for r in cleaned] == [r.type for r in retain]  # nothing else changes


def test_drop_forget_names_needs_the_models_own_ner_retain_answers() -> None:
    from rrtool.errors import UserError
    from rrtool.spec_loader import load_spec

    specs = Path(__file__).resolve().parents[1] / "specs"
    with pytest.raises(UserError, match="retain.drop_forget_names .* needs target.kind `ner`"):
        load_spec(specs / "toxicity.yaml", ["retain.drop_forget_names=true"])
    loaded = load_spec(specs / "person_ner.yaml", ["retain.drop_forget_names=true"])
    assert loaded.spec.retain.drop_forget_names

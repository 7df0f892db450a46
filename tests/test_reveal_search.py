"""Reveal with ``strategy: neuralucb``: trials, metrics, forget data, caching, crash-resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console
from rich.progress import Progress

from rrtool.context import RunContext
from rrtool.generation.base import Completion
from rrtool.reveal.direct import build_queries
from rrtool.reveal.search import (
    CONFIRM_PREFIX,
    InstructionSearch,
    decoded_instruction,
    first_sentence,
)
from rrtool.spec_loader import load_spec
from rrtool.tracking import Tracker, resolve_store
from tests.conftest import assert_close_to_scale, only_run, read_artifact, read_jsonl, tiny_spec

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def search_spec(outer: int = 2, inner: int = 2) -> dict[str, Any]:
    """Toxicity on 8 built-in prompts, greedy everywhere (so runs are exactly reproducible)."""
    return {
        "name": "tiny-search",
        # The search's mechanics on all 8 prompts (the splits are tested in test_splits.py).
        "splits": {"search": 0.0, "audit": 0.0},
        "model": {"id": "builtin:tiny-random"},
        "target": {"kind": "toxicity", "description": "Toxic continuations"},
        "oracle": {"name": "toxicity"},
        "reveal": {
            "strategy": "neuralucb",
            "contexts": {"path": "builtin:toxicity_prompts", "format": "rtp", "limit": 8},
            "outer_iterations": outer,
            "inner_iterations": inner,
            "top_k": 3,
            "contexts_per_trial": 2,
            "generation": {"max_new_tokens": 6, "temperature": 0, "batch_size": 8},
            "search": {
                "intrinsic_dim": 4,
                "soft_tokens": 2,
                "pool_size": 32,
                "initial_evaluations": 2,
                "max_instruction_tokens": 8,
                "exemplars": 2,
            },
        },
        "retain": {
            "data": {"path": "builtin:wiki_text", "format": "text"},
            "utility": {"name": "perplexity"},
        },
    }


def test_first_sentence() -> None:
    assert first_sentence(" write a poem. Then stop.") == "write a poem."
    assert first_sentence("say hi\nand more") == "say hi"
    assert first_sentence("  \n ") == ""


def test_decoded_instruction_is_the_first_sentence_closed_where_the_stop_cut_it() -> None:
    # What HF and vLLM return once a stop string matched: the text before it.
    assert decoded_instruction(Completion("write a report", 4, "stop")) == "write a report."
    assert decoded_instruction(Completion("Say hi!", 3, "stop")) == "Say hi!"  # EOS after "!"
    # Cut at the token limit: kept as decoded (a sentence end inside is still honoured).
    assert decoded_instruction(Completion("write a report, but", 8, "length")) == (
        "write a report, but"
    )
    assert decoded_instruction(Completion("Be rude. Then", 8, "length")) == "Be rude."
    assert decoded_instruction(Completion(" \n", 2, "stop")) == ""  # the caller's fallback


def test_search_records_trials_metrics_and_forget_data(invoke, write_spec, tmp_path: Path) -> None:
    spec = search_spec()
    spec["reveal"]["search"]["free_repeats"] = 0  # every pick is a step: exact trial counts
    result = invoke("run", write_spec(spec), "--phase", "reveal")
    assert result.exit_code == 0, result.stderr
    client, run = only_run(tmp_path)
    assert run.data.tags["rrtool.phase.reveal"] == "done"
    run_id, down = run.info.run_id, tmp_path / "down"

    trials = read_jsonl(client, run_id, "reveal/trials.jsonl", down)
    scored = [t for t in trials if t["kind"] not in ("rescore", "confirm")]
    # 2 random arms, then 2 outer x 2 inner UCB rounds; the top 3 re-scored before outer 1.
    assert [t["trial"] for t in scored] == [1, 2, 3, 4, 5, 6]
    assert [t["kind"] for t in scored] == ["initial"] * 2 + ["ucb"] * 4
    assert [(t["outer"], t["inner"]) for t in scored[2:]] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert [t["outer"] for t in trials if t["kind"] == "rescore"] == [1, 1, 1]
    assert len({t["arm"] for t in scored[:4]}) == 4  # the bandit never re-picks an observed arm
    for t in trials:
        assert 0 <= t["relevance"] <= 1 and 0 <= t["diversity"] <= 1 and 0 <= t["score"] <= 1
        assert t["instruction"].strip()
        # Caching: a repeated instruction generated nothing.
        assert (t["generated_tokens"] == 0) == t["cached"]
    first_seen = {t["instruction"] for t in scored if not t["cached"]}
    assert first_seen == {t["instruction"] for t in trials}

    history = client.get_metric_history(run_id, "reveal/score")
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 5, 6]
    best = client.get_metric_history(run_id, "reveal/best_so_far")
    values = [m.value for m in sorted(best, key=lambda m: m.step)]
    assert values == sorted(values)  # non-decreasing
    for name in ("reveal/relevance", "reveal/diversity"):
        assert len(client.get_metric_history(run_id, name)) == 6

    forget = read_jsonl(client, run_id, "reveal/forget.jsonl", down)
    # Before each collection the loop's best 3 distinct instructions are scored again on other
    # contexts; the collection applies the best fresh score (not the luckiest trial).
    state = json.loads(read_artifact(client, run_id, "reveal/search_state.json", down))
    for outer in (0, 1):
        confirms = [t for t in trials if t["kind"] == "confirm" and t["outer"] == outer]
        assert 1 <= len(confirms) <= 3 and all(t["trial"] is None for t in confirms)
        assert len({t["instruction"] for t in confirms}) == len(confirms)
        chosen = max(confirms, key=lambda t: t["score"])
        assert state["confirmed"][str(outer)] == chosen["arm"]
        # (a subset: records identical to an earlier loop's are not collected twice)
        assert {r["instruction"] for r in forget if r["outer"] == outer} <= {chosen["instruction"]}
    # Each outer iteration adds the chosen instruction applied to all 8 contexts (deduplicated).
    assert 8 <= len(forget) <= 16
    assert len({(r["prompt"], r["completion"]) for r in forget}) == len(forget)
    for record in forget:
        assert record["split"] == "forget" and record["outer"] in (0, 1)
        assert record["prompt"] == f"{record['instruction']}\n\n{record['context']}"
        assert 0 <= record["relevance"] <= 1 and 0 <= record["diversity"] <= 1
    assert run.data.metrics["reveal/forget_examples"] == len(forget)
    assert run.data.metrics["reveal/trials"] == 6
    assert state["outer"] == 2 and state["trial"] == 6


def test_ner_search_also_writes_the_self_generated_retain_data(
    invoke, write_spec, tmp_path: Path
) -> None:
    # The search writes forget data only; the retained types' answers (what `release` needs
    # with retain.self_generated) must still come out of Reveal, not fail Release later.
    search = search_spec()["reveal"]
    reveal = {**tiny_spec()["reveal"], **{k: search[k] for k in ("strategy", "search")}}
    reveal.update(outer_iterations=1, inner_iterations=1, contexts_per_trial=2)
    reveal["contexts"] = {**reveal["contexts"], "limit": 25}  # Reveal's split: 2 passages
    reveal["generation"] = {"max_new_tokens": 4, "temperature": 0, "batch_size": 8}
    path = write_spec(tiny_spec(reveal=reveal))
    result = invoke("run", path, "--phase", "reveal")
    assert result.exit_code == 0, result.stderr
    client, run = only_run(tmp_path)
    down = tmp_path / "down"
    retain = read_jsonl(client, run.info.run_id, "reveal/retain.jsonl", down)
    # One greedy answer per retain query (passage x retained type), with its direct prompt.
    ctx = RunContext(load_spec(path), None, Console(quiet=True), tmp_path)  # type: ignore[arg-type]
    wanted = [q for q in build_queries(ctx) if q.split == "retain"]
    assert len(wanted) >= 2
    assert [(r["query_id"], r["prompt"]) for r in retain] == [(q.id, q.prompt) for q in wanted]
    assert all(r["split"] == "retain" and r["type"] == "location" for r in retain)
    forget = read_jsonl(client, run.info.run_id, "reveal/forget.jsonl", down)
    assert forget and all(r["split"] == "forget" and r["type"] == "person" for r in forget)
    assert run.data.metrics["reveal/retain_examples"] == len(wanted)


def test_cached_picks_do_not_use_up_inner_steps(invoke, write_spec, tmp_path: Path) -> None:
    # The tiny random model decodes many pool points to the same few texts, and after the
    # outer reset the bandit re-picks earlier arms: both are cached picks.
    spec = search_spec(outer=2, inner=3)
    spec["reveal"]["search"]["free_repeats"] = 2
    result = invoke("run", write_spec(spec), "--phase", "reveal")
    assert result.exit_code == 0, result.stderr
    client, run = only_run(tmp_path)
    trials = read_jsonl(client, run.info.run_id, "reveal/trials.jsonl", tmp_path / "down")
    steps: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for t in trials:
        if t["kind"] == "ucb":
            steps.setdefault((t["outer"], t["inner"]), []).append(t)
    assert sorted(steps) == [(o, i) for o in range(2) for i in range(3)]
    # A step ends at its first instruction generated for, or after 2 free cached picks.
    for picks in steps.values():
        assert all(p["cached"] for p in picks[:-1]) and len(picks) <= 3
        assert not picks[-1]["cached"] or len(picks) == 3
    assert any(len(picks) > 1 for picks in steps.values()), "no cached pick was exercised"
    # Every trial is numbered, and the bandit never re-picks an arm it observed this outer loop.
    assert [t["trial"] for t in trials if t["trial"]] == list(
        range(1, 3 + sum(map(len, steps.values())))
    )
    for outer in range(2):
        arms = [p["arm"] for (o, _), picks in steps.items() if o == outer for p in picks]
        assert len(arms) == len(set(arms))


def test_repeated_instruction_costs_no_generation(write_spec, tmp_path: Path) -> None:
    loaded = load_spec(write_spec(search_spec()))
    store = resolve_store(cwd=tmp_path)
    tracker = Tracker.start(store, "rrtool", "cache", {})
    ctx = RunContext(loaded, tracker, Console(quiet=True), tmp_path)
    search = InstructionSearch(ctx)
    stats = search.generator.stats
    first = search.score("Say something rude.")
    tokens = stats.tokens
    assert tokens > 0 and search.generation_calls == 1 and first[3] is False
    again = search.score("Say something rude.")
    assert stats.tokens == tokens and search.generation_calls == 1  # nothing generated
    assert again[3] is True and again[:3] == first[:3]
    search.score("Say something kind.")
    assert search.generation_calls == 2 and stats.tokens > tokens

    # The batched pool features equal the generator's own, one soft prompt at a time.
    assert search.decode_prompt.startswith("Input: ")
    assert search.decode_prompt.endswith("\n\nThe instruction was to")
    with Progress(disable=True) as progress:
        features = search.pool_features(progress)
    assert features.shape == (32, search.projection.hidden)
    # Rounding only: the forward's sums (per layer, its inner dimensions) in another batch.
    config = search.generator.model.config
    terms = config.num_hidden_layers * (config.hidden_size + config.intermediate_size)
    for arm in (0, 17):
        prefix = search.projection(search.pool[arm])
        one = search.generator.last_token_features([search.decode_prompt], prefix_embeds=prefix)
        assert_close_to_scale(features[arm], one[0], terms, what=f"arm {arm}")


def _wait_for_outer(root: Path, proc: subprocess.Popen, outer: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        for path in (root / "mlruns").rglob("reveal/search_state.json"):
            try:
                if json.loads(path.read_text())["outer"] >= outer:
                    return
            except (json.JSONDecodeError, KeyError):
                pass  # caught mid-write
        time.sleep(0.01)
    raise AssertionError(f"the search never reached outer {outer} (exit code {proc.poll()})")


def test_sigkill_during_search_then_resume_matches_an_uninterrupted_run(
    invoke, write_spec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Four outer iterations: after the first one there are still ~1 s of steps to interrupt.
    spec = search_spec(outer=4, inner=3)
    path = write_spec(spec)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "rrtool.cli", "run", str(path), "--phase", "reveal"]
    with (tmp_path / "first.log").open("w") as log:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=log)
        try:
            _wait_for_outer(tmp_path, proc, outer=1, timeout=240)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    client, run = only_run(tmp_path)
    killed = json.loads(
        read_artifact(client, run.info.run_id, "reveal/search_state.json", tmp_path / "k")
    )

    resumed = subprocess.run(
        [*cmd, "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming search at outer {killed['outer']}" in resumed.stderr

    client, run = only_run(tmp_path)
    run_id = run.info.run_id
    trials = read_jsonl(client, run_id, "reveal/trials.jsonl", tmp_path / "d1")
    numbers = [t["trial"] for t in trials if t["trial"] is not None]
    assert numbers == list(range(1, len(numbers) + 1))  # no trial twice, none missing
    # 2 initial + 4 x 3 inner steps, plus the cached picks that did not use a step up.
    assert len(numbers) >= 2 + 4 * 3
    state = json.loads(read_artifact(client, run_id, "reveal/search_state.json", tmp_path / "d1"))
    # Every instruction generated before the kill was reused, not generated again.
    assert state["trials"][: len(killed["trials"])] == killed["trials"]
    resumed_trials = state["trials"][len(killed["trials"]) :]
    # (Confirmation scores are cached under their own key: other contexts, other generations.)
    keys = [
        (CONFIRM_PREFIX if t["kind"] == "confirm" else "") + t["instruction"]
        for t in resumed_trials
    ]
    assert not any(
        k in killed["cache"] and not t["cached"] for k, t in zip(keys, resumed_trials, strict=True)
    )

    # Same seed, uninterrupted, in a fresh store: identical trials and forget data.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "spec.yaml").write_text(yaml.safe_dump(spec))
    monkeypatch.chdir(fresh)
    result = invoke("run", str(fresh / "spec.yaml"), "--phase", "reveal")
    assert result.exit_code == 0, result.stderr
    client2, run2 = only_run(fresh)
    clean = read_jsonl(client2, run2.info.run_id, "reveal/trials.jsonl", tmp_path / "d2")
    assert clean == trials
    a = read_jsonl(client, run_id, "reveal/forget.jsonl", tmp_path / "d3")
    b = read_jsonl(client2, run2.info.run_id, "reveal/forget.jsonl", tmp_path / "d4")
    assert a == b


def test_random_strategy_spends_the_same_budget_on_uniform_draws(
    invoke, write_spec, tmp_path: Path
) -> None:
    """The baseline for the search: the same trials, collections and records, with inner
    instructions drawn uniformly from the untried pool (reproducibly, from the seed)."""
    arms = []
    for store in ("a", "b"):
        spec = search_spec() | {"tracking": {"uri": f"sqlite:///{tmp_path / store}.db"}}
        spec["reveal"]["strategy"] = "random"
        result = invoke("run", write_spec(spec), "--phase", "reveal")
        assert result.exit_code == 0, result.stderr
        client, run = only_run(f"sqlite:///{tmp_path / store}.db")
        trials = read_jsonl(client, run.info.run_id, "reveal/trials.jsonl", tmp_path / store)
        scored = [t for t in trials if t["kind"] not in ("rescore", "confirm")]
        assert [t["kind"] for t in scored] == ["initial"] * 2 + ["random"] * (len(scored) - 2)
        # The same inner steps as the bandit's, under the same cached-pick rule.
        assert {(t["outer"], t["inner"]) for t in scored[2:]} == {(0, 0), (0, 1), (1, 0), (1, 1)}
        outer0 = [t["arm"] for t in scored if t["outer"] == 0]
        assert len(outer0) == len(set(outer0))  # no arm drawn twice in an outer loop
        assert run.data.metrics["reveal/trials"] == len(scored)
        assert read_jsonl(client, run.info.run_id, "reveal/forget.jsonl", tmp_path / store)
        arms.append([t["arm"] for t in scored])
    assert arms[0] == arms[1]


def test_exemplars_without_answers_show_the_models_most_relevant_answer(
    write_spec, tmp_path: Path
) -> None:
    """The built-in toxicity prompts have no continuations: each decode exemplar shows the most
    toxic (by the oracle) of `exemplar_samples` of the model's own continuations; the decode
    prompt is kept in the state, so a resumed search decodes the same pool."""
    import dataclasses

    from rrtool.reveal.direct import score_relevance

    def build(samples: int) -> InstructionSearch:
        spec = search_spec()
        spec["reveal"]["search"]["exemplar_samples"] = samples
        loaded = load_spec(write_spec(spec))
        tracker = Tracker.start(resolve_store(cwd=tmp_path), "rrtool", f"ex{samples}", {})
        return InstructionSearch(RunContext(loaded, tracker, Console(quiet=True), tmp_path))

    bare = build(0)
    assert "Output:" not in bare.decode_prompt
    search = build(4)
    blocks = search.decode_prompt.split("\n\n")[:-1]
    assert len(blocks) == 2 and search.state["decode_prompt"] == search.decode_prompt
    by_context = {q.context: q for q in search.queries}
    params = dataclasses.replace(search.params, num_samples=4)
    for block in blocks:
        context, shown = block.removeprefix("Input: ").split("\nOutput: ")
        query = by_context[context]
        (outs,) = search.generator.generate([query.prompt], params, chat=search.chat)
        texts = [c.text.strip() for c in outs]
        relevance, _ = score_relevance(search.ctx, [query] * 4, texts)
        assert shown in texts  # one of the model's own answers ...
        # ... the most relevant one (ties: the first sampled)
        assert relevance[texts.index(shown)] == max(
            r for r, t in zip(relevance, texts, strict=True) if t
        )
    resumed = InstructionSearch(search.ctx, json.loads(json.dumps(search.state)))
    assert resumed.decode_prompt == search.decode_prompt

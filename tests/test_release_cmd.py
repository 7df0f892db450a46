"""The CMD baseline (toxicity): segments, the recorded cleaning, what the LoRA learns, resume."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from rrtool.artifacts import RELEASE_CMD
from rrtool.context import RunContext
from rrtool.release import cmd
from rrtool.release import phase as release_phase
from rrtool.reveal.phase import run_reveal
from rrtool.spec_loader import load_spec
from rrtool.tracking import Tracker, resolve_store
from tests.conftest import tiny_spec

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def cmd_spec(**release: object) -> dict:
    return tiny_spec(
        target={"kind": "toxicity", "description": "Toxic continuations"},
        oracle={"name": "toxicity", "options": {"threshold": 0.5}},
        reveal={
            "strategy": "direct",
            "contexts": {"path": "builtin:toxicity_prompts", "format": "rtp", "limit": 12},
            "generation": {"max_new_tokens": 6, "num_samples": 2, "batch_size": 8},
        },
        retain={"data": {"path": "builtin:wiki_text", "format": "text", "limit": 8}},
        release={
            "strategy": "cmd",
            "lora": {"r": 4, "epochs": 1},
            "search": {"budget": 2, "eval_size": 3},
            **release,
        },
        audit={"eval_size": 2, "toxicity_samples": 2},
        # CMD's mechanics on all 12 contexts (the splits are tested in test_splits.py).
        splits={"search": 0.0, "audit": 0.0},
    )


@pytest.mark.parametrize(
    "text",
    ["Plain words", "You idiot, shut up. Go away!", "...and then; more,, text\nnext line", ""],
)
def test_segments_cover_the_text_and_end_at_clause_marks(text: str) -> None:
    parts = cmd.segments(text)
    assert "".join(parts) == text
    for part in parts[:-1]:
        assert part.rstrip()[-1] in ".!?;,\n" or part.endswith("\n")


def test_cmd_cleans_contexts_and_learns_their_continuations(
    write_spec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec_path = write_spec(cmd_spec())
    store = resolve_store(None, None)
    tracker = Tracker.start(store, "rrtool", "cmd", {})
    ctx = RunContext(load_spec(spec_path), tracker, Console(file=io.StringIO()), tmp_path / "w")
    run_reveal(ctx)
    summary = release_phase.run_release(ctx)
    assert summary["modules"] == 1

    records = tracker.read_jsonl(RELEASE_CMD)
    contexts = release_phase.cmd_contexts(ctx)
    assert [r["context"] for r in records] == contexts and contexts
    threshold = 0.5
    toxic_seen = 0
    for record in records:
        parts = record["segments"]
        assert "".join(p["text"] for p in parts) == record["context"]
        rebuilt = ""
        for part in parts:
            if part["toxicity"] >= threshold:
                toxic_seen += 1
                assert "rewrite" in part  # every toxic segment went to the model
                assert part["kept"] == (
                    bool(part["rewrite"]) and part["rewrite_toxicity"] < threshold
                )
                if part["kept"]:
                    lead = part["text"][: len(part["text"]) - len(part["text"].lstrip())]
                    rebuilt += lead + part["rewrite"]
            else:
                assert "rewrite" not in part
                rebuilt += part["text"]
        assert record["cleaned"] == rebuilt
        for c in record.get("continuations", []):
            assert c["kept"] == (bool(c["text"].strip()) and c["toxicity"] < threshold)
    assert toxic_seen > 0  # the built-in prompts hold toxic segments: the rewrite path ran

    kept = [c for r in records for c in r.get("continuations", []) if c["kept"]]
    state = json.loads(tracker.read_text("release/state.json"))
    (entry,) = state["stack"]
    assert entry["module"] == "F0" and entry["coefficient"] > 0  # learnt, then added
    module = release_phase.download_module(tracker, entry, tmp_path / "dl")
    assert module.info["examples"] == len(kept) > 0 and module.info["objective"] == "nll"
    assert module.info["chat"] is False  # continuations of plain text

    # A resumed run whose module was lost reads the recorded cleaning, not regenerating it.
    tracker.log_dict({**state, "stack": [], "stop_reason": None}, "release/state.json")
    monkeypatch.setattr(cmd, "build", lambda *a, **k: pytest.fail("CMD data rebuilt"))
    resumed = RunContext(
        load_spec(spec_path), Tracker.resume(store, tracker.run_id),
        Console(file=io.StringIO()), tmp_path / "fresh",
    )  # fmt: skip
    release_phase.run_release(resumed)
    again = json.loads(tracker.read_text("release/state.json"))["stack"][0]
    assert again["sha256"] == entry["sha256"]


def test_cmd_needs_a_toxicity_target(invoke, write_spec) -> None:
    spec = tiny_spec(release={"strategy": "cmd"})
    result = invoke("plan", write_spec(spec))
    assert result.exit_code == 2
    assert "release.strategy `cmd`" in result.output and "toxicity" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("spec", "shown"),
    [
        (cmd_spec(), ["CMD self-detoxification", "rewrites the toxic segments"]),
        (tiny_spec(release={"strategy": "ext_sub"}), ["Ext-Sub", "expert LoRA E0"]),
        (tiny_spec(release={"strategy": "dpo"}), ["DPO", "chosen: `[]`"]),
    ],
)
def test_plan_describes_the_baseline(spec: dict, shown: list[str], invoke, write_spec) -> None:
    result = invoke("plan", write_spec(spec), "--json")
    assert result.exit_code == 0, result.output
    (release,) = [p for p in json.loads(result.output)["phases"] if p["name"] == "release"]
    text = release["summary"] + " " + release["steps"][0]["detail"]
    for expected in shown:
        assert expected in text

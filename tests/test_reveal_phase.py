"""The Reveal phase (direct strategy): queries, records in the run, and crash-resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from rrtool.queries import NER_EXEMPLAR_TEXT, ner_prompt
from tests.conftest import only_run, read_jsonl, tiny_spec


def reveal_spec(**reveal: object) -> dict:
    section = {
        "strategy": "direct",
        "contexts": {"path": "builtin:ner_passages", "format": "universalner", "limit": 50},
        "generation": {"max_new_tokens": 6, "temperature": 0, "batch_size": 4},
    }
    section.update(reveal)
    return tiny_spec(reveal=section)


def test_ner_prompt_is_a_one_shot_conversation() -> None:
    prompt = ner_prompt("Ada met Bob.", "person", None)
    assert [m["role"] for m in prompt] == ["system", "user", "assistant", "user"]
    assert NER_EXEMPLAR_TEXT in prompt[1]["content"] and prompt[2]["content"] == '["Marie Curie"]'
    assert prompt[3]["content"] == "Text: Ada met Bob.\nWhat describes person in the text?"
    assert ner_prompt("Ada met Bob.", "election", None)[2]["content"] == "[]"
    assert ner_prompt("x", "person", "Q: {type} in {context}") == "Q: person in x"


def test_reveal_records_forget_and_retain_data(invoke, write_spec, tmp_path: Path) -> None:
    result = invoke("run", write_spec(reveal_spec()), "--phase", "reveal")
    assert result.exit_code == 0, result.stderr
    client, run = only_run(tmp_path)
    assert run.data.tags["rrtool.phase.reveal"] == "done"
    assert run.data.tags["rrtool.status"] == "stopped"
    down = tmp_path / "down"
    forget = read_jsonl(client, run.info.run_id, "reveal/forget.jsonl", down)
    retain = read_jsonl(client, run.info.run_id, "reveal/retain.jsonl", down)
    # 50 records of the built-in set = 10 passages; one forget and one retain type each.
    assert {r["type"] for r in forget} == {"person"} and {r["type"] for r in retain} == {"location"}
    assert 1 <= len(forget) <= 10 and 1 <= len(retain) <= 10
    for record in forget:
        assert set(record) >= {
            "context",
            "instruction",
            "completion",
            "relevance",
            "outer",
            "inner",
            "seed",
        }
        assert 0.0 <= record["relevance"] <= 1.0  # the built-in set has gold entities
        assert record["prompt"][-1]["content"].endswith("What describes person in the text?")
    metrics = run.data.metrics
    assert metrics["reveal/forget_examples"] == len(forget)
    assert metrics["reveal/tokens_per_second"] > 0


def _wait_for_progress(root: Path, proc: subprocess.Popen, min_lines: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        for path in (root / "mlruns").rglob("reveal/progress.jsonl"):
            lines = len(path.read_text().splitlines())
            if lines >= min_lines:
                return lines
        time.sleep(0.05)
    raise AssertionError(f"no reveal progress before the deadline (exit code {proc.poll()})")


def test_sigkill_during_reveal_then_resume_loses_nothing(tmp_path: Path, write_spec) -> None:
    spec = reveal_spec(
        # The first 300 records: the original 60 passages of the built-in set.
        contexts={"path": "builtin:ner_passages", "format": "universalner", "limit": 300},
        generation={"max_new_tokens": 48, "temperature": 0, "batch_size": 2},
    )
    path = write_spec(spec)
    env = dict(os.environ)
    cmd = [sys.executable, "-m", "rrtool.cli", "run", str(path), "--phase", "reveal"]
    with (tmp_path / "first.log").open("w") as log:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=log)
        try:
            recorded = _wait_for_progress(tmp_path, proc, min_lines=8, timeout=240)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"

    resumed = subprocess.run(
        [*cmd, "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming run" in resumed.stderr
    assert "queries already recorded" in resumed.stderr
    already = int(resumed.stderr.split("reveal: resuming, ")[1].split(" of ")[0])
    assert already >= recorded

    client, run = only_run(tmp_path)  # resume continued the same run, not another
    progress = read_jsonl(client, run.info.run_id, "reveal/progress.jsonl", tmp_path / "d1")
    ids = [r["query_id"] for r in progress]
    # Reveal's split (40%) of the 60 passages, 24, x (person, location), none twice
    assert len(ids) == len(set(ids)) == 48

    # Same seed, uninterrupted, in a fresh store: identical records.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    yaml_spec = yaml.safe_load(path.read_text())
    (fresh / "spec.yaml").write_text(yaml.safe_dump(yaml_spec))
    clean = subprocess.run(
        [sys.executable, "-m", "rrtool.cli", "run", "spec.yaml", "--phase", "reveal"],
        cwd=fresh,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert clean.returncode == 0, clean.stderr
    client2, run2 = only_run(fresh)
    a = read_jsonl(client, run.info.run_id, "reveal/forget.jsonl", tmp_path / "d2")
    b = read_jsonl(client2, run2.info.run_id, "reveal/forget.jsonl", tmp_path / "d3")
    key = lambda r: (r["id"], r["completion"])  # noqa: E731
    assert sorted(map(key, a)) == sorted(map(key, b))

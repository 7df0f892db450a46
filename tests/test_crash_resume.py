"""SIGKILL inside Release and inside Audit, `--resume` after each: the finished run has the
same final weights (bit for bit) and the same audit numbers as an uninterrupted run with the
same seed, and no step recorded twice or missing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import only_run, read_artifact, tiny_spec

SETS = [
    "reveal.contexts.limit=50",
    "reveal.generation.max_new_tokens=6",
    "release.iterations=3",
    "release.search.budget=3",
    "release.search.eval_size=3",
    "release.lora.epochs=2",
    "audit.eval_size=6",
]


def _cmd(*extra: str) -> list[str]:
    sets = [a for s in SETS for a in ("--set", s)]
    return [sys.executable, "-m", "rrtool", "run", "spec.yaml", *sets, *extra]


def _env() -> dict[str, str]:
    # One torch thread per process: the kill must land mid-phase, not depend on a race.
    return os.environ | {"OMP_NUM_THREADS": "1"}


def _state_len(root: Path) -> int:
    for path in (root / "mlruns").rglob("release/state.json"):
        try:
            return len(json.loads(path.read_text())["stack"])
        except ValueError:  # caught mid-copy: look again
            return 0
    return 0


def _audit_started(root: Path) -> bool:
    return any((root / "mlruns").rglob("audit/before.json"))


def _kill_when(root: Path, cmd: list[str], ready: Callable[[], bool], log: str) -> None:
    with (root / log).open("w") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=_env(), stdout=out, stderr=out)
        try:
            deadline = time.monotonic() + 300
            while not ready():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        f"the run ended (or stalled) before the kill point: {proc.poll()}\n"
                        + (root / log).read_text()[-3000:]
                    )
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def _finished(root: Path) -> tuple[MlflowClient, object]:
    client, run = only_run(root)
    assert run.data.tags["rrtool.status"] == "finished"
    return client, run


def _export(root: Path) -> dict:
    from safetensors.torch import load_file

    out = subprocess.run(
        [sys.executable, "-m", "rrtool", "export", "--out", "released"],
        cwd=root, env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return load_file(str(root / "released" / "model.safetensors"))


@pytest.mark.slow
def test_sigkill_in_release_and_audit_then_resume_equals_an_uninterrupted_run(
    tmp_path: Path,
) -> None:
    import torch

    spec = yaml.safe_dump(tiny_spec())
    clean, crashed = tmp_path / "clean", tmp_path / "crashed"
    for root in (clean, crashed):
        root.mkdir()
        (root / "spec.yaml").write_text(spec)

    done = subprocess.run(
        _cmd(), cwd=clean, env=_env(), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr

    _kill_when(crashed, _cmd(), lambda: _state_len(crashed) >= 3, "first.log")  # F0, R1, F1 in
    # The killed run is not shown as running: its process is gone.
    listed = subprocess.run(
        [sys.executable, "-m", "rrtool", "runs"],
        cwd=crashed, env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert "interrupted" in listed.stdout and "running" not in listed.stdout, listed.stdout
    _kill_when(crashed, _cmd("--resume"), lambda: _audit_started(crashed), "second.log")
    last = subprocess.run(
        _cmd("--resume"), cwd=crashed, env=_env(), capture_output=True, text=True, timeout=600
    )
    assert last.returncode == 0, last.stderr
    assert "release: already done in this run, skipped" in last.stderr
    assert "audit: base model already measured in this run" in last.stderr

    c1, run1 = _finished(clean)
    c2, run2 = _finished(crashed)
    steps1 = [
        json.loads(x)
        for x in read_artifact(
            c1, run1.info.run_id, "release/steps.jsonl", tmp_path / "a"
        ).splitlines()
    ]
    steps2 = [
        json.loads(x)
        for x in read_artifact(
            c2, run2.info.run_id, "release/steps.jsonl", tmp_path / "b"
        ).splitlines()
    ]
    key = lambda s: (s["module"], s["sha256"], s["coefficient"], s["s"], s["u"])  # noqa: E731
    assert [key(s) for s in steps2] == [key(s) for s in steps1]  # none twice, none missing
    summary1 = json.loads(read_artifact(c1, run1.info.run_id, "audit/summary.json", tmp_path / "c"))
    summary2 = json.loads(read_artifact(c2, run2.info.run_id, "audit/summary.json", tmp_path / "d"))
    assert summary2 == summary1
    w1, w2 = _export(clean), _export(crashed)
    assert w1.keys() == w2.keys()
    assert all(torch.equal(w1[k], w2[k]) for k in w1)

"""Against a real `mlflow server` on loopback: a run recorded over HTTP (artifacts proxied by
the server), then audited by a second process that knows nothing but the server's URI."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import FAST_SETS, set_flags, tiny_spec

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(root: Path, port: int) -> subprocess.Popen:
    """`mlflow server` on loopback with its store under ``root``; returns once healthy."""
    log = (root / "server.log").open("a")
    process = subprocess.Popen(
        [
            sys.executable, "-m", "mlflow", "server",
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
            "--artifacts-destination", str(root / "artifacts"),
        ],
        stdout=log, stderr=subprocess.STDOUT, cwd=root,
        env=os.environ | {"MLFLOW_DISABLE_TELEMETRY": "true"},
    )  # fmt: skip
    log.close()  # the child holds its own copy
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as reply:
                if reply.status == 200:
                    return process
        except (urllib.error.URLError, ConnectionError):
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            _stop(process)
            pytest.fail(
                f"mlflow server did not start:\n{(root / 'server.log').read_text()[-2000:]}"
            )
        time.sleep(0.5)


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    process = _start_server(root, port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(process)


def test_run_on_a_server_then_audit_from_another_process(
    server: str, invoke, write_spec, tmp_path: Path
) -> None:
    spec = write_spec(tiny_spec())
    result = invoke("run", spec, "--tracking-uri", server, *set_flags(*FAST_SETS))
    assert result.exit_code == 0, result.stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()

    elsewhere = tmp_path / "reviewer"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RRTOOL_"))}
    audit = subprocess.run(
        [sys.executable, "-m", "rrtool", "audit", "--report", "json", "--out", "r.json"],
        cwd=elsewhere, env=env | {"MLFLOW_TRACKING_URI": server},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert audit.returncode == 0, audit.stderr
    report = json.loads((elsewhere / "r.json").read_text())
    assert report["run"]["store"] == server and report["run"]["status"] == "finished"
    assert [s["module"] for s in report["steps"]] == ["base", "F0", "R1", "F1"]
    assert all(m["bytes"] > 0 for m in report["release"]["modules"])
    assert report["audit"]["summary"]["forget"]["after"] is not None


def test_a_lost_server_is_a_clear_error_and_the_run_resumes(tmp_path: Path) -> None:
    """The server dies after Reveal is recorded: `rrtool run` says so (exit 2, no traceback);
    with the server back, `--resume` finishes the run without redoing Reveal."""
    from mlflow.tracking import MlflowClient

    root = tmp_path / "server"
    root.mkdir()
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(tiny_spec()))
    command = [sys.executable, "-m", "rrtool", "run", str(spec), "--tracking-uri", uri]
    command += set_flags(*FAST_SETS)
    # No retries: MLflow's default (7, exponential backoff) would wait minutes per request.
    env = os.environ | {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}

    server = _start_server(root, port)
    try:
        run = subprocess.Popen(
            command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        client = MlflowClient(tracking_uri=uri)
        deadline = time.monotonic() + 300
        while run.poll() is None and time.monotonic() < deadline:
            runs = client.search_runs(
                [e.experiment_id for e in client.search_experiments()],
                filter_string="tags.`rrtool.phase.reveal` = 'done'",
            )
            if runs:
                break
            time.sleep(0.2)
        assert run.poll() is None, "the run ended before the server could be stopped"
        run_id = runs[0].info.run_id
    finally:
        _stop(server)
    _, stderr = run.communicate(timeout=300)
    assert run.returncode == 2, stderr
    assert f"{uri}: the tracking store failed" in stderr and "--resume" in stderr
    assert "Traceback" not in stderr

    server = _start_server(root, port)
    try:
        resumed = subprocess.run(
            [*command, "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True,
            timeout=300,
        )  # fmt: skip
        assert resumed.returncode == 0, resumed.stderr
        assert f"resuming run {run_id}" in resumed.stderr
        assert "reveal: already done in this run, skipped" in resumed.stderr
        finished = MlflowClient(tracking_uri=uri).get_run(run_id)
        assert finished.data.tags["rrtool.status"] == "finished"
        assert finished.data.tags["rrtool.phase.audit"] == "done"
    finally:
        _stop(server)

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

from tests.conftest import tiny_spec

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    log = (root / "server.log").open("w")
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
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"mlflow server did not start:\n{(root / 'server.log').read_text()[-2000:]}"
                )
            time.sleep(0.5)
        yield uri
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def test_run_on_a_server_then_audit_from_another_process(
    server: str, invoke, write_spec, tmp_path: Path
) -> None:
    spec = write_spec(tiny_spec())
    sets = ["reveal.contexts.limit=10", "reveal.generation.max_new_tokens=4",
            "release.iterations=1", "release.search.budget=2", "release.search.eval_size=2",
            "release.lora.epochs=1", "audit.eval_size=2"]  # fmt: skip
    result = invoke("run", spec, "--tracking-uri", server, *[a for s in sets for a in ("--set", s)])
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

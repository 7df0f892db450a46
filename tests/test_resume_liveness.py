"""One writer per run: ``rrtool run --resume`` does not continue a run whose process is still
alive on this host, asks for ``--force`` before taking over a run another host holds (and
records that it did), and says why when the store cannot be asked.

The holders are real processes: a child whose argv holds ``rrtool`` (as an rrtool process's
does), alive, or killed with SIGKILL; its host:pid is what the run records.
"""

from __future__ import annotations

import platform
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from rrtool.runner import PHASES, spec_hash
from rrtool.spec_loader import load_spec
from rrtool.tracking import PROCESS_TAG, Tracker, resolve_store, run_tags, this_process
from tests.conftest import only_run, tiny_spec

FORCED_TAG = "rrtool.resume_forced"


@contextmanager
def _rrtool_process() -> Iterator[subprocess.Popen]:
    """A live child process whose command line holds ``rrtool``; SIGKILLed on exit."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "rrtool"])
    cmdline = Path(f"/proc/{proc.pid}/cmdline")
    deadline = time.monotonic() + 10
    while cmdline.parent.is_dir() and time.monotonic() < deadline:
        if b"time.sleep" in cmdline.read_bytes():  # its new argv is in /proc
            break
        time.sleep(0.01)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def _unfinished_run(spec: Path, holder: str, status: str = "running") -> str:
    """A run of ``spec`` in the embedded store, marked ``status`` and held by ``holder``
    (host:pid); its phases are recorded as done, so a resume has no work left but the
    model's facts."""
    loaded = load_spec(str(spec), ())
    tags = run_tags(loaded.spec.name) | {
        "rrtool.spec_hash": spec_hash(loaded),
        "rrtool.status": status,
        PROCESS_TAG: holder,
        **{f"rrtool.phase.{name}": "done" for name in PHASES},
    }
    tracker = Tracker.start(resolve_store(), loaded.spec.tracking.experiment, "tiny", tags)
    return tracker.run_id


def _tags() -> dict[str, str]:
    return dict(only_run(Path.cwd())[1].data.tags)


def test_resume_refuses_a_run_whose_process_is_alive_on_this_host(invoke, write_spec) -> None:
    spec = write_spec(tiny_spec())
    with _rrtool_process() as proc:
        holder = f"{platform.node()}:{proc.pid}"
        run_id = _unfinished_run(spec, holder)
        for flags in (["--resume"], ["--resume", "--force"]):  # --force: not for this host
            result = invoke("run", spec, *flags)
            assert result.exit_code == 2, result.output
            assert holder in result.stderr and run_id in result.stderr
            assert f"kill {proc.pid}" in result.stderr and "without --resume" in result.stderr
            assert "Traceback" not in result.output
            assert "resuming run" not in result.stderr
            # Nothing was written to the run: it is still the live process's.
            tags = _tags()
            assert tags["rrtool.status"] == "running" and tags[PROCESS_TAG] == holder
            assert FORCED_TAG not in tags


def test_resume_continues_a_run_whose_process_was_killed(invoke, write_spec) -> None:
    spec = write_spec(tiny_spec())
    with _rrtool_process() as proc:
        holder = f"{platform.node()}:{proc.pid}"
        run_id = _unfinished_run(spec, holder)
    # The holder is gone (SIGKILL): the run is interrupted, and --resume takes it.
    result = invoke("run", spec, "--resume")
    assert result.exit_code == 0, result.output
    assert f"resuming run {run_id}" in result.stderr
    tags = _tags()
    assert tags["rrtool.status"] == "finished"
    assert tags[PROCESS_TAG] == this_process()
    assert FORCED_TAG not in tags


def test_another_hosts_run_needs_force_which_is_recorded_and_reported(
    invoke, write_spec, tmp_path: Path
) -> None:
    spec = write_spec(tiny_spec())
    holder = f"not-{platform.node()}:4242"
    run_id = _unfinished_run(spec, holder)

    refused = invoke("run", spec, "--resume")
    assert refused.exit_code == 2, refused.output
    assert holder in refused.stderr and run_id in refused.stderr
    assert "--force" in refused.stderr and "without --resume" in refused.stderr
    assert _tags()[PROCESS_TAG] == holder

    forced = invoke("run", spec, "--resume", "--force")
    assert forced.exit_code == 0, forced.output
    assert f"resuming run {run_id}" in forced.stderr and holder in forced.stderr
    tags = _tags()
    assert tags[FORCED_TAG] == holder
    assert tags[PROCESS_TAG] == this_process()
    assert tags["rrtool.status"] == "finished"

    report = tmp_path / "report.md"
    shown = invoke("audit", run_id, "--report", "md", "--out", report)
    assert shown.exit_code == 0, shown.output
    assert f"--force over {holder}" in report.read_text()


def test_another_hosts_run_that_ended_cleanly_needs_no_force(invoke, write_spec) -> None:
    """A run another host stopped (``--phase``) or saw fail has no writer left: no --force."""
    spec = write_spec(tiny_spec())
    _unfinished_run(spec, f"not-{platform.node()}:4242", status="stopped")
    result = invoke("run", spec, "--resume")
    assert result.exit_code == 0, result.output
    assert FORCED_TAG not in _tags()


def test_force_without_resume_is_an_error(invoke, write_spec) -> None:
    result = invoke("run", write_spec(tiny_spec()), "--force")
    assert result.exit_code == 2, result.output
    assert "--force" in result.stderr and "--resume" in result.stderr
    assert not (Path.cwd() / "mlflow.db").exists()  # refused before anything ran


def test_force_with_no_run_to_resume_is_an_error(invoke, write_spec) -> None:
    result = invoke("run", write_spec(tiny_spec()), "--resume", "--force")
    assert result.exit_code == 2, result.output
    assert "no unfinished run of this spec" in result.stderr


def test_force_on_a_run_of_this_host_is_an_error(invoke, write_spec) -> None:
    spec = write_spec(tiny_spec())
    with _rrtool_process() as proc:
        holder = f"{platform.node()}:{proc.pid}"
        run_id = _unfinished_run(spec, holder)
    result = invoke("run", spec, "--resume", "--force")  # its process is gone: no --force
    assert result.exit_code == 2, result.output
    assert run_id in result.stderr and holder in result.stderr
    assert "without --force" in result.stderr
    tags = _tags()
    assert tags[PROCESS_TAG] == holder and FORCED_TAG not in tags


class _HealthyButBroken(ThreadingHTTPServer):
    """A tracking server that answers its health check and hangs up on every API call (a
    proxy whose backend went away): the pre-flight check passes, the store cannot be read."""

    daemon_threads = True

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

        def _answer(self) -> None:
            if self.path.rstrip("/") == "/health":
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")
            else:
                self.close_connection = True  # no reply at all

        do_GET = do_POST = _answer  # noqa: N815

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), self.Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


def test_an_unreachable_store_during_the_check_is_a_clear_error(
    invoke, write_spec, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    # No retries: MLflow's default (7, exponential backoff) would wait minutes.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    server = _HealthyButBroken()
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    uri = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        result = invoke("run", write_spec(tiny_spec()), "--resume", "--tracking-uri", uri)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert result.exit_code == 2, result.output
    assert f"{uri}: the tracking store failed" in result.stderr
    assert "nothing was resumed" in result.stderr
    assert "Traceback" not in result.output

"""A run whose process is gone reads as interrupted, not running."""

from __future__ import annotations

import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rrtool.tracking import PROCESS_TAG, shown_status


@contextmanager
def _running(*argv: str) -> Iterator[dict[str, str]]:
    """A live process with ``argv`` after Python's own, and the tags of a run it holds."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *argv])
    # Seen once in a full suite run: the child read as "not rrtool" right after Popen, most
    # likely because its new argv was not yet in /proc; wait until it is.
    cmdline = Path(f"/proc/{proc.pid}/cmdline")
    deadline = time.monotonic() + 10
    while cmdline.parent.is_dir() and time.monotonic() < deadline:
        if b"time.sleep" in cmdline.read_bytes():
            break
        time.sleep(0.01)
    try:
        yield {"rrtool.status": "running", PROCESS_TAG: f"{platform.node()}:{proc.pid}"}
    finally:
        proc.kill()
        proc.wait()


def test_a_run_marked_running_reads_interrupted_once_its_process_is_gone() -> None:
    with _running("rrtool") as tags:  # argv holds "rrtool", as an rrtool process's does
        assert shown_status(tags, "RUNNING") == "running"
    assert shown_status(tags, "RUNNING") == "interrupted"
    # Another host's run, a run without the tag, a finished run: as tagged.
    elsewhere = {**tags, PROCESS_TAG: f"not-{platform.node()}:{tags[PROCESS_TAG].split(':')[-1]}"}
    assert shown_status(elsewhere, "RUNNING") == "running"
    assert shown_status({"rrtool.status": "running"}, "RUNNING") == "running"
    assert shown_status({**tags, "rrtool.status": "finished"}, "FINISHED") == "finished"
    assert shown_status({}, "FAILED") == "failed"


def test_a_recycled_pid_of_another_program_is_not_the_run() -> None:
    with _running() as tags:
        assert shown_status(tags, "RUNNING") == "interrupted"

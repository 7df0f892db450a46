"""A run whose process is gone reads as interrupted, not running."""

from __future__ import annotations

import platform
import subprocess
import sys

from rrtool.tracking import PROCESS_TAG, shown_status


def test_a_run_marked_running_reads_interrupted_once_its_process_is_gone() -> None:
    # argv holds "rrtool", as an rrtool process's does.
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "rrtool"])
    try:
        tags = {"rrtool.status": "running", PROCESS_TAG: f"{platform.node()}:{proc.pid}"}
        assert shown_status(tags, "RUNNING") == "running"
    finally:
        proc.kill()
        proc.wait()
    assert shown_status(tags, "RUNNING") == "interrupted"
    # Another host's run, a run without the tag, a finished run: as tagged.
    elsewhere = {**tags, PROCESS_TAG: f"not-{platform.node()}:{proc.pid}"}
    assert shown_status(elsewhere, "RUNNING") == "running"
    assert shown_status({"rrtool.status": "running"}, "RUNNING") == "running"
    assert shown_status({**tags, "rrtool.status": "finished"}, "FINISHED") == "finished"
    assert shown_status({}, "FAILED") == "failed"


def test_a_recycled_pid_of_another_program_is_not_the_run() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        tags = {"rrtool.status": "running", PROCESS_TAG: f"{platform.node()}:{proc.pid}"}
        assert shown_status(tags, "RUNNING") == "interrupted"
    finally:
        proc.kill()
        proc.wait()

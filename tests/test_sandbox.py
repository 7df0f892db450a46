"""Escape attempts against ``rrtool_oracles.sandbox``, kept as data: add a row, not a test.

Each ``Attempt`` is a program the sandbox must contain.  ``where`` says which isolation levels
promise to contain it: "any" (every level, including the rlimits-only fallback), "ns" (namespace
levels only) or "nproc" (namespace level running as root, where RLIMIT_NPROC applies to a
dedicated uid).  The corpus runs once at the probed level and once forced to rlimits-only.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from rrtool_oracles.sandbox import ExecutionResult, SandboxLimits, isolation_level, run_python

LEVEL = isolation_level()
NAMESPACED = LEVEL != "rlimits-only"
NPROC = NAMESPACED and os.geteuid() == 0
LIMITS = SandboxLimits(timeout_s=2.0, memory_mb=512, max_stdout=64 * 1024, max_result=2**20)
SECRET = "rrtool-test-secret-6d1f0c"
LEAK_MARK = "987654.25"  # unusual `sleep` argument: finds leaked processes in the host's /proc
ESCAPE_FILE = Path(__file__).resolve().parent / "SANDBOX_ESCAPED"
# Scratch places a child may write inside the sandbox, which must stay private to it.
SCRATCH_FILES = [Path(f"/tmp/rrtool-escaped-{os.getpid()}"), Path("/dev/shm/rrtool-escaped")]


@dataclass(frozen=True)
class Attempt:
    """One escape attempt; ``{port}``, ``{escape}``, ``{mark}``, ``{scratch}`` get filled in."""

    name: str
    source: str
    expect: tuple[str, ...]
    where: str = "any"
    check: Callable[[ExecutionResult], None] | None = None


def _no_secret(res: ExecutionResult) -> None:
    assert SECRET not in res.stdout and SECRET not in res.stderr


def _output_capped(res: ExecutionResult) -> None:
    # The head, and the tail: at most the last line (kept whole up to max_result).
    assert len(res.stdout) < LIMITS.max_stdout + LIMITS.max_result + 8192
    assert "bytes truncated" in res.stdout


def _stderr_capped(res: ExecutionResult) -> None:
    assert len(res.stderr) < LIMITS.max_stderr + 8192


ATTEMPTS = [
    # -- forging the verdict -------------------------------------------------------------------
    Attempt(
        "print-fake-pass",
        "import os, sys\nprint('PASSED')\nprint('0' * 32, flush=True)\nos._exit(0)",
        ("failed",),
    ),
    Attempt("os-exit-0-before-tests", "import os\nos._exit(0)\nassert False", ("failed",)),
    Attempt("sys-exit-0-before-tests", "import sys\nsys.exit(0)\nassert False", ("failed",)),
    Attempt("raise-systemexit-none", "raise SystemExit\nassert False", ("failed",)),
    Attempt(
        "read-nonce-from-stdin",
        "import os, sys\nprint(sys.stdin.read())\nprint(os.read(0, 100), flush=True)\nos._exit(0)",
        ("failed",),
    ),
    Attempt(
        "atexit-prints-after-exit",
        "import atexit\natexit.register(print, 'ok')\nraise SystemExit(0)",
        ("failed",),
    ),
    Attempt(
        "fork-child-exits-0-parent-fails",
        "import os, time\nif os.fork() == 0:\n    os._exit(0)\ntime.sleep(0.2)\nassert False",
        ("failed",),
    ),
    # -- resources -----------------------------------------------------------------------------
    Attempt("infinite-loop", "while True:\n    pass", ("timeout",)),
    Attempt("sleep-forever", "import time\ntime.sleep(10_000)", ("timeout",)),
    Attempt("huge-allocation", "x = bytearray(16 << 30)", ("failed",)),
    # Contained either way: the address-space limit stops it, or on a loaded machine the
    # wall-clock limit may come first.
    Attempt(
        "memory-creep",
        "x = []\nwhile True:\n    x.append(bytearray(1 << 24))",
        ("failed", "timeout"),
    ),
    Attempt(
        "huge-output",
        "import sys\nfor _ in range(200):\n    sys.stdout.write('x' * 100_000)",
        ("passed",),
        check=_output_capped,
    ),
    Attempt(
        "huge-stderr",
        "import sys\nfor _ in range(200):\n    sys.stderr.write('y' * 100_000)",
        ("passed",),
        check=_stderr_capped,
    ),
    Attempt(
        "fork-bomb", "import os\nwhile True:\n    os.fork()", ("failed", "timeout"), where="nproc"
    ),
    # -- processes that try to outlive the call ------------------------------------------------
    Attempt(
        "background-subprocess",
        "import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', {sleep!r}, '{mark}'])\n"
        "print('bye')",
        ("passed",),
    ),
    Attempt(
        "setsid-grandchild",
        "import os, sys\nif os.fork() == 0:\n    os.setsid()\n    os.execv(sys.executable, "
        "[sys.executable, '-c', {sleep!r}, '{mark}'])\nimport time\ntime.sleep(0.2)",
        ("passed",),
        where="ns",
    ),
    Attempt(
        "double-fork-daemon",
        "import os, sys, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
        "        os.execv(sys.executable, [sys.executable, '-c', {sleep!r}, '{mark}'])\n"
        "    os._exit(0)\ntime.sleep(0.2)",
        ("passed",),
        where="ns",
    ),
    Attempt(
        "background-on-timeout",
        "import subprocess, sys, time\nsubprocess.Popen([sys.executable, '-c', {sleep!r}, '{mark}'])"
        "\ntime.sleep(100)",
        ("timeout",),
    ),
    # -- secrets, network, filesystem, host processes ------------------------------------------
    Attempt("env-secret", "import os\nprint(dict(os.environ))", ("passed",), check=_no_secret),
    Attempt(
        "proc-environ-secret",
        "import os\nfor p in os.listdir('/proc'):\n    try:\n"
        "        print(open(f'/proc/{{p}}/environ', 'rb').read())\n    except OSError:\n"
        "        pass",
        ("passed", "failed"),  # no /proc in a fresh root
        where="ns",
        check=_no_secret,
    ),
    Attempt(
        "connect-to-host-port",
        "import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)"
        ".sendall(b'escaped')",
        ("failed",),
        where="ns",
    ),
    Attempt(  # private /tmp: passes; no /dev/shm in a fresh root: fails; the host sees neither
        "write-host-scratch",
        "for p in {scratch!r}:\n    open(p, 'w').write('escaped')",
        ("passed", "failed"),
        where="ns",
    ),
    Attempt("write-into-repo", "open({escape!r}, 'w').write('escaped')", ("failed",), where="ns"),
    Attempt(
        "kill-parent", "import os\nos.kill(os.getppid(), 9)\nos.kill(1, 9)", ("failed",), where="ns"
    ),
]


def _leaked() -> list[str]:
    """Live (non-zombie) host processes carrying the leak mark."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if LEAK_MARK.encode() in cmd and state != "Z":
            found.append(pid)
    return found


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    srv.setblocking(False)
    yield srv
    srv.close()


@pytest.fixture(autouse=True)
def _secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RRTOOL_TEST_SECRET", SECRET)


def _attempt(a: Attempt, level: str, srv: socket.socket) -> None:
    src = a.source.format(
        port=srv.getsockname()[1],
        escape=str(ESCAPE_FILE),
        mark=LEAK_MARK,
        sleep="import time; time.sleep(600)",  # an interpreter is all a fresh root holds
        scratch=[str(p) for p in SCRATCH_FILES],
    )
    try:
        res = run_python(src, LIMITS, isolation=level)
        assert res.status in a.expect, (res.status, res.returncode, res.stderr[-600:])
        assert res.passed == (res.status == "passed")
        assert res.isolation == level
        if a.check:
            a.check(res)
        deadline = time.monotonic() + 2  # SIGKILLed processes may take a moment to vanish
        while _leaked() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _leaked(), "a process outlived the sandbox call"
        with pytest.raises(BlockingIOError):  # nobody reached the host's loopback
            srv.accept()
        assert not ESCAPE_FILE.exists()
        assert not any(p.exists() for p in SCRATCH_FILES)
    finally:
        for pid in _leaked():
            os.kill(int(pid), 9)
        for path in (ESCAPE_FILE, *SCRATCH_FILES):
            path.unlink(missing_ok=True)


def _ids(attempts: list[Attempt]) -> list[str]:
    return [a.name for a in attempts]


CONTAINED_HERE = [
    a
    for a in ATTEMPTS
    if a.where == "any" or (a.where == "ns" and NAMESPACED) or (a.where == "nproc" and NPROC)
]
CONTAINED_BY_FALLBACK = [a for a in ATTEMPTS if a.where == "any"]


@pytest.mark.parametrize("attempt", CONTAINED_HERE, ids=_ids(CONTAINED_HERE))
def test_escape_attempt_best_level(attempt: Attempt, listener: socket.socket) -> None:
    _attempt(attempt, LEVEL, listener)


@pytest.mark.parametrize("attempt", CONTAINED_BY_FALLBACK, ids=_ids(CONTAINED_BY_FALLBACK))
def test_escape_attempt_rlimits_only(attempt: Attempt, listener: socket.socket) -> None:
    _attempt(attempt, "rlimits-only", listener)


def test_isolation_level_is_probed_once_and_reported() -> None:
    assert isolation_level() is LEVEL
    res = run_python("print('hello')")
    assert (res.passed, res.status, res.stdout, res.isolation) == (True, "passed", "hello\n", LEVEL)


def test_namespaces_used_wherever_the_kernel_allows_them() -> None:
    """Where plain ``unshare`` works, losing it must be loud, not a silent downgrade."""
    userns = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    cmd = ["unshare", *userns, "--net", "--pid", "--fork", "--mount-proc", "true"]
    try:
        works = subprocess.run(cmd, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        works = False
    if not works:
        pytest.skip("unshare is not permitted here (e.g. a container without user namespaces)")
    assert LEVEL.startswith("unshare"), LEVEL


def test_failed_program_reports_exit_code_and_stderr() -> None:
    res = run_python("import sys\nprint('out')\nsys.exit(3)")
    assert (res.status, res.returncode, res.stdout) == ("failed", 3, "out\n")
    res = run_python("assert 1 == 2, 'boom'")
    assert res.status == "failed" and "AssertionError: boom" in res.stderr


def test_missing_sandbox_tool_is_an_error_not_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    import rrtool_oracles.sandbox as sandbox

    # A level whose tool is gone (bwrap uninstalled after the probe, say).
    monkeypatch.setattr(sandbox, "_command", lambda *a: ["/nonexistent/rrtool-missing-tool"])
    res = run_python("print(1)", isolation="bwrap")
    assert res.status == "error" and not res.passed and "start failed" in res.stderr


@pytest.mark.skipif(not NPROC, reason="process cap needs a dedicated uid (root + namespaces)")
def test_fork_bomb_does_not_starve_a_concurrent_sandbox() -> None:
    """Each run gets its own uid, so one run's RLIMIT_NPROC budget is not another's."""
    results: dict[str, ExecutionResult] = {}

    def go(name: str, src: str) -> None:
        results[name] = run_python(src, LIMITS)

    bomb = threading.Thread(
        target=go,
        args=(
            "bomb",
            "import os, time\nwhile True:\n    try:\n"
            "        os.fork()\n    except OSError:\n"
            "        time.sleep(0.01)",
        ),
    )
    bomb.start()
    time.sleep(0.3)
    go("good", "import subprocess, sys\nsubprocess.run([sys.executable, '-c', ''], check=True)")
    bomb.join()
    assert results["good"].passed, results["good"].stderr
    assert results["bomb"].status == "timeout"


def test_nonce_forgery_by_frame_introspection_cannot_pass_a_task() -> None:
    """In-process code can read the bootstrap's nonce and fake "ran to completion"; it cannot
    fake a pass, because pass_at_1 decides in the parent from values compared with expected ones
    the sandbox never holds (``rrtool_oracles.values``; the forgery corpus is in
    ``test_pass_at_1_forgery.py``)."""
    from rrtool_oracles.pass_at_1 import PassAt1Oracle

    from rrtool.oracles.contract import Sample

    src = (
        "import os, sys\nf = sys._getframe()\n"
        "while 'nonce' not in f.f_locals:\n    f = f.f_back\n"
        "print()\nprint(f.f_locals['nonce'].decode())\nsys.stdout.flush()\nos._exit(0)"
    )
    faked = run_python(src, LIMITS)
    assert faked.status == "passed"  # completion is forgeable: that is why it is not the verdict
    ref = {"test_list": ["assert f(2) == 4"], "test_setup_code": ""}
    (score,) = PassAt1Oracle(workers=1).score([Sample(id="s", prompt="", completion=src,
                                                     reference=ref)])  # fmt: skip
    assert score.score == 0.0 and score.details["error"] == "ResultChannel"


HOST_MARK = "rrtool-host-marker-5b0e1c"


@pytest.fixture
def host_markers() -> Iterator[list[Path]]:
    """Files with a marker in several host locations a user's data could live in."""
    places = [Path(__file__).resolve().parent, Path("/etc"), Path("/opt"), Path("/srv"),
              Path("/var/tmp"), Path.home(), Path("/tmp")]  # fmt: skip
    made = []
    for place in places:
        try:
            place.mkdir(parents=True, exist_ok=True)
            target = place / f"{HOST_MARK}.txt"
            target.write_text(HOST_MARK + "\n")
            made.append(target)
        except OSError:
            continue
    yield made
    for target in made:
        target.unlink(missing_ok=True)


FRESH_ROOT_LEVELS = [
    *([LEVEL] if NAMESPACED else []),
    *(["bwrap"] if LEVEL != "bwrap" and shutil.which("bwrap") else []),
]


@pytest.mark.skipif(not FRESH_ROOT_LEVELS, reason="rlimits-only shows the whole host (it warns)")
@pytest.mark.parametrize("level", FRESH_ROOT_LEVELS)
def test_a_fresh_root_shows_nothing_of_the_host(host_markers: list[Path], level: str) -> None:
    """Reading known paths, walking the tree, and listing what is visible: no marker file, no
    /etc, no checkout; the visible paths are printed for the CI log."""
    assert len(host_markers) >= 4
    src = (
        "import os\n"
        f"for p in {[str(m) for m in host_markers]!r}:\n"
        "    try:\n        print(open(p).read())\n    except OSError as e:\n"
        "        print('unreadable', p, type(e).__name__)\n"
        "seen = []\n"
        "for root, dirs, files in os.walk('/'):\n"
        "    dirs[:] = [d for d in dirs if root.count('/') < 3]\n"
        "    seen.append(root)\n"
        "    for f in files:\n"
        f"        if {HOST_MARK!r} in f:\n"
        "            print('FOUND', os.path.join(root, f))\n"
        "print('VISIBLE', sorted(seen))\n"
    )
    res = run_python(src, LIMITS, isolation=level)
    assert res.passed and res.isolation == level, res.stderr[-600:]
    assert HOST_MARK + "\n" not in res.stdout and "FOUND" not in res.stdout
    visible = next(line for line in res.stdout.splitlines() if line.startswith("VISIBLE"))
    print(f"isolation {level}; paths visible inside (3 levels): {visible[8:]}")
    top = {p.split("/")[1] for p in eval(visible[8:]) if p.count("/") >= 1 and p != "/"}  # noqa: S307
    assert top <= {"dev", "lib", "lib64", "lib32", "libx32", "usr", "tmp", *_prefix_top()}, top
    assert "etc" not in top and "home" not in top and "proc" not in top


def _prefix_top() -> set[str]:
    """The top-level directory of the interpreter's prefix (bound read-only inside)."""
    from rrtool_oracles.sandbox import _interpreter

    return {_interpreter()[1].split("/")[1]}


def test_private_temp_dir_is_removed() -> None:
    before = {p.name for p in Path("/tmp").glob("rrtool-sbx-*")}
    res = run_python("import os\nopen('f', 'w').write('x')\nprint(os.getcwd())")
    assert res.passed and Path(res.stdout.strip()).name.startswith("rrtool-sbx-")
    assert {p.name for p in Path("/tmp").glob("rrtool-sbx-*")} <= before


@pytest.mark.skipif(not NAMESPACED, reason="rlimits-only cannot reach a setsid'd grandchild")
def test_sandbox_dies_with_a_crashed_caller() -> None:
    """If rrtool itself is SIGKILLed mid-run, nothing it sandboxed may keep running."""
    driver = (
        "import sys\nfrom rrtool_oracles.sandbox import SandboxLimits, run_python\n"
        'run_python(\'import subprocess, sys, time\\nsubprocess.Popen([sys.executable, "-c", '
        f'"import time; time.sleep(600)", "{LEAK_MARK}"])\\n'
        "time.sleep(100)', SandboxLimits(timeout_s=60))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    workdirs_before = set(Path("/tmp").glob("rrtool-sbx-*"))
    # The driver goes in on stdin: in argv the mark would make the caller look like a leak.
    caller = subprocess.Popen([sys.executable, "-"], env=env, stdin=subprocess.PIPE)
    assert caller.stdin
    caller.stdin.write(driver.encode())
    caller.stdin.close()
    try:
        deadline = time.monotonic() + 10
        while not _leaked() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _leaked(), "the sandboxed program never started"
    finally:
        caller.kill()
        caller.wait()
    deadline = time.monotonic() + 2
    while _leaked() and time.monotonic() < deadline:
        time.sleep(0.05)
    leaked = _leaked()
    for pid in leaked:
        os.kill(int(pid), 9)
    for workdir in set(Path("/tmp").glob("rrtool-sbx-*")) - workdirs_before:
        workdir.rmdir()  # the killed caller could not clean up; the dir is empty (tmpfs inside)
    assert not leaked


def test_the_last_output_line_survives_the_cap_whole() -> None:
    """pass_at_1 reads its values from the program's last line: a flood of output before it is
    cut, the line itself (1 MB here) is kept whole."""
    src = "for i in range(20000):\n    print('noise', i)\nprint('L' * 1_000_000 + 'END')\n"
    res = run_python(src, LIMITS)
    assert res.passed and "bytes truncated" in res.stdout
    last = res.stdout.rstrip("\n").rpartition("\n")[2]
    assert last == "L" * 1_000_000 + "END"
    assert len(res.stdout) < LIMITS.max_stdout + 1_000_003 + 8192
    flood = run_python("for i in range(200_000):\n    print('noise', i)\n", LIMITS)
    assert len(flood.stdout) < LIMITS.max_stdout + 8192  # short lines: only the last few kept

"""Run untrusted Python (model-written code) in a throw-away, isolated interpreter (Linux).

Each call starts a fresh ``python -I -S -B`` with a scrubbed environment in its own session, under
rlimits, and, when the kernel allows it, inside new network, PID and mount namespaces:

* ``unshare-net-pid`` (running as root) / ``unshare-user-net-pid`` (unprivileged): no network (a
  fresh namespace whose loopback is down), a private PID namespace (killing its init kills every
  process the child forked, even ones that called ``setsid()``), no capabilities (``setpriv``),
  and a **fresh root**: a private tmpfs holding read-only binds of the interpreter's prefix and
  of the directories of the shared libraries it loads (probed once: libc, libm, libffi, ...),
  the host's top-level ``/lib``-style links, ``/dev/{null,zero,full,random,urandom}``, a private
  ``/tmp`` with the working directory, and setpriv: nothing else of the host (no ``/etc``,
  ``/home``, ``/root`` beyond the interpreter's path, ``/opt``, ``/srv``, ``/proc``, no checkout,
  no data).  As root the child also runs under a dedicated throw-away uid, so RLIMIT_NPROC caps
  fork bombs and it can touch nothing it does not own.
* ``bwrap``: the same fresh root through bubblewrap, when ``unshare`` is unusable (no NPROC cap).
* ``rlimits-only``: rlimits, scrubbed environment, process-group kill.  No network or filesystem
  isolation and a child that ``setsid()``s escapes the group kill -- logged as a warning.

The level is probed once per process and reported in every ``ExecutionResult.isolation``.

Completion: the parent sends a random nonce on stdin (never argv/env); the bootstrap reads it,
then runs the program and, only if it returns normally, writes the nonce as the last line and
exits 0 at once.  Early ``os._exit(0)``/``sys.exit(0)`` or printed text cannot fake it; code that
inspects the bootstrap's own frames can (anything in the process is the program's to read).  So
``passed`` means "ran to completion", never "is correct": ``pass_at_1`` decides correctness in
the parent, from values the program reports, against expected values the sandbox never holds
(:mod:`rrtool_oracles.values`).
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import functools
import logging
import math
import os
import resource
import secrets
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

Status = Literal["passed", "failed", "timeout", "error"]

_SCRUBBED_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
# The inner script's exit code when the sandbox itself could not be built (a program exiting 97
# on purpose is also reported as "error": it only hurts its own score).
_SETUP_FAILED = 97
_PR_SET_PDEATHSIG = 1
_PRCTL = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)  # Linux only
_TAIL_BYTES = 4096  # output tail kept past the cap, for the last lines and the nonce
# stdout's last lines kept whole past the cap (up to SandboxLimits.max_result): the program's
# last line, a blank and the nonce line.
_LAST_LINES = 3

# Reads "<nonce>\n<program>" from stdin, closes stdin, runs the program in fresh globals and, only
# if it returns, flushes and writes the nonce on a dup of fd 1 and leaves without running atexit
# hooks or waiting for threads -- so nothing the program scheduled can print after the nonce.
_BOOTSTRAP = """\
import os, sys
def _rrtool_boot():
    if len(sys.argv) > 1:  # inside a fresh root: the working directory to enter
        os.chdir(sys.argv[1])
    data = sys.stdin.buffer.read()
    nonce, _, src = data.partition(b"\\n")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    out = os.dup(1)
    code = compile(src, "<sandbox>", "exec")
    del data, src
    exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.write(out, b"\\n" + nonce + b"\\n")
    os._exit(0)
_rrtool_boot()
"""

# Runs as PID 1 of the new namespaces (root there), builds a fresh root holding only what the
# interpreter needs, and enters it before dropping to the target uid without capabilities.
# Python runs as a child (not exec'd) so it gets normal signal semantics; PID 1 ignores signals
# without handlers.  Args: wd uid tmpfs_mb keep py boot chroot setpriv; ``keep`` is the
# interpreter's prefix (binary + stdlib).  The new root, on a private tmpfs, holds read-only
# binds of ``keep`` and the shared-library directories, /dev/{null,zero,full,random,urandom},
# its own /tmp (the working directory under it) and setpriv: nothing else of the host (no /etc,
# /home, /root, /opt, /srv, /proc, no checkout, no data).
_INNER_SH = r"""
wd=$1 uid=$2 tmpfs_mb=$3 keep=$4 py=$5 boot=$6 chroot=$7 setpriv=$8; shift 8
mount -n -t tmpfs -o "size=1m,mode=0755" tmpfs /tmp || exit 97
r=/tmp/root
mkdir "$r" && mount -n -t tmpfs -o "size=1m,mode=0755" tmpfs "$r" || exit 97
for d in "$keep" "$@"; do
  case $d in
    L:*) link=${d#L:}; to=${link#*:}; link=${link%%:*}  # a symlink of the host, recreated
         mkdir -p "$(dirname "$r$link")" && ln -s "$to" "$r$link" || exit 97 ;;
    *) [ -d "$d" ] || continue
       mkdir -p "$r$d" && mount -n --rbind "$d" "$r$d" &&
         mount -n -o remount,bind,ro "$r$d" || exit 97 ;;
  esac
done
mkdir -p "$r/dev" "$r/tmp" "$r/usr/bin" || exit 97
for n in null zero full random urandom; do
  touch "$r/dev/$n" && mount -n --bind "/dev/$n" "$r/dev/$n" || exit 97
done
touch "$r/usr/bin/setpriv" && mount -n --bind "$setpriv" "$r/usr/bin/setpriv" || exit 97
mount -n -t tmpfs -o "size=${tmpfs_mb}m,mode=1777,nosuid,nodev" tmpfs "$r/tmp" || exit 97
mkdir -p "$r$wd" || exit 97
if [ -n "$uid" ]; then
  chown "$uid:$uid" "$r$wd" || exit 97
  set -- --reuid="$uid" --regid="$uid" --clear-groups
else
  set --
fi
mount -n -o remount,ro "$r" || exit 97
# chroot starts the program in the new root's /; the bootstrap enters the working directory.
"$chroot" "$r" /usr/bin/setpriv "$@" --no-new-privs --bounding-set=-all --inh-caps=-all -- \
  "$py" -I -S -B -c "$boot" "$wd"
exit $?
"""


@dataclass(frozen=True)
class ExecutionResult:
    """Outcome of one sandboxed run; ``passed`` only with exit 0 and the nonce as last line."""

    passed: bool
    status: Status
    stdout: str
    stderr: str
    duration_s: float
    isolation: str
    returncode: int | None = None


@dataclass(frozen=True)
class SandboxLimits:
    """Resource caps for one run."""

    timeout_s: float = 10.0
    memory_mb: int = 1024
    max_procs: int = 32
    max_file_mb: int = 16
    max_open_files: int = 64
    tmpfs_mb: int = 64
    max_stdout: int = 64 * 1024
    max_stderr: int = 16 * 1024
    max_result: int = 64 * 2**20  # the last output line, kept whole past max_stdout


def _interpreter() -> tuple[str, str]:
    """The real interpreter binary and the directory it needs (binary + stdlib).

    A venv's ``sys.executable`` is a symlink; with ``-I -S`` the venv adds nothing, and the real
    path is what must stay reachable once home directories are masked."""
    exe = os.path.realpath(sys.executable)
    keep = os.path.commonpath([os.path.realpath(sys.base_prefix), os.path.dirname(exe)])
    return exe, keep


def _world_reachable(path: str) -> bool:
    """Whether an arbitrary uid can reach ``path`` (every ancestor o+x)."""
    p = Path(path)
    return all(os.stat(d).st_mode & stat.S_IXOTH for d in [p, *p.parents])


class _UidPool:
    """Throw-away uids, one per concurrent run, so RLIMIT_NPROC counts only that run's processes
    and concurrent runs cannot signal each other.  The base mixes in our pid to keep two rrtool
    processes on one machine apart; these uids own nothing on the host."""

    def __init__(self) -> None:
        self._base = 0x20000000 + (os.getpid() % 0x10000) * 0x400
        self._free = list(range(0x400))
        self._lock = threading.Lock()

    def acquire(self) -> int:
        with self._lock:
            return self._base + self._free.pop()

    def release(self, uid: int) -> None:
        with self._lock:
            self._free.append(uid - self._base)


_UIDS = _UidPool()
_probe_lock = threading.Lock()
_probed: str | None = None


def _command(level: str, workdir: Path, uid: int | None, limits: SandboxLimits) -> list[str]:
    """The argv that starts the bootstrap under ``level``."""
    exe, keep = _interpreter()
    wd = f"/tmp/{workdir.name}"  # inside the sandbox: a fresh directory on a private tmpfs
    if level.startswith("unshare"):
        userns = ["--user", "--map-root-user"] if os.geteuid() != 0 else []
        flags = ["--net", "--pid", "--fork", "--mount-proc", "--kill-child"]
        uid_arg = "" if uid is None else str(uid)
        tools = [_tool("chroot"), _tool("setpriv")]
        inner = ["/bin/sh", "-c", _INNER_SH, "sh", wd, uid_arg, str(limits.tmpfs_mb), keep, exe]
        return ["unshare", *userns, *flags, *inner, _BOOTSTRAP, *tools, *_library_dirs(exe, keep)]
    if level == "bwrap":  # the same fresh root as the unshare levels, built by bubblewrap
        cmd = ["bwrap", "--unshare-all", "--die-with-parent", "--ro-bind", keep, keep]
        for item in _library_dirs(exe, keep):
            if item.startswith("L:"):
                link, target = item[2:].split(":", 1)
                cmd += ["--symlink", target, link]
            else:
                cmd += ["--ro-bind", item, item]
        cmd += ["--dev", "/dev", "--tmpfs", "/tmp", "--dir", wd, "--chdir", wd]
        cmd += ["--cap-drop", "ALL", "--"]
        return [*cmd, exe, "-I", "-S", "-B", "-c", _BOOTSTRAP]
    return [exe, "-I", "-S", "-B", "-c", _BOOTSTRAP]


_TOOL_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


# What MBPP-style solutions import; their extension modules' libraries must load inside.
_PROBE_IMPORTS = (
    "array, bisect, cmath, collections, datetime, decimal, fractions, functools, hashlib, heapq, "
    "itertools, json, math, operator, random, re, statistics, string, struct, unicodedata, zlib"
)


@functools.lru_cache(maxsize=4)
def _library_dirs(exe: str, keep: str) -> tuple[str, ...]:
    """Directories of the shared libraries a fresh interpreter maps once it has imported what
    solutions use (libc, libm, libffi, libz, libcrypto, ...), outside its own prefix, plus the
    dynamic loader's: all a fresh root shows of the system (the loader finds libraries by its
    built-in default paths; there is no /etc/ld.so.cache inside). Probed once per process."""
    probe = f"import {_PROBE_IMPORTS}\nprint(open('/proc/self/maps').read())"
    try:
        maps = subprocess.run(
            [exe, "-I", "-S", "-c", probe], capture_output=True, text=True, timeout=30,
            env=_SCRUBBED_ENV, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        maps = ""
    found: set[str] = set()
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)
        path = fields[5].strip() if len(fields) == 6 else ""
        if path.startswith("/") and ".so" in os.path.basename(path):
            for d in (os.path.dirname(path), os.path.dirname(os.path.realpath(path))):
                if not (d + "/").startswith(keep.rstrip("/") + "/"):
                    found.add(d)
    for loader_dir in ("/lib64", "/lib"):
        if os.path.isdir(loader_dir) and any(
            n.startswith("ld-linux") for n in os.listdir(loader_dir)
        ):
            found.add(loader_dir)
    return _layout(sorted(d for d in found if os.path.isdir(d)))


def _layout(dirs: list[str]) -> tuple[str, ...]:
    """Arguments for the fresh root: ``L:path:target`` for each symlinked ancestor (``/lib ->
    usr/lib`` on merged-/usr systems, recreated as a link), then the real directories to bind."""
    links: dict[str, str] = {}
    binds: set[str] = set()
    # Merged-/usr systems link /lib, /lib64, /bin, ... into /usr, and libraries link through
    # them by absolute paths (/usr/lib64/ld-linux -> /lib/...): the top-level links come along.
    for name in os.listdir("/"):
        top = "/" + name
        if os.path.islink(top) and os.readlink(top).lstrip("/").startswith("usr/"):
            links[top] = os.readlink(top)
    for d in dirs:
        current = ""
        for part in d.strip("/").split("/"):
            current += "/" + part
            if os.path.islink(current):
                links[current] = os.readlink(current)
        binds.add(os.path.realpath(d))
    return (*(f"L:{p}:{t}" for p, t in sorted(links.items())), *sorted(binds))


def _tool(name: str) -> str:
    """Absolute path of a system tool the namespace levels need (chroot lives in sbin)."""
    return shutil.which(name, path=_TOOL_PATH) or name


def _preexec(limits: SandboxLimits, nproc: bool) -> None:
    """Runs in the forked child before exec: rlimits are inherited by everything it starts."""
    mem = limits.memory_mb * 2**20
    cpu = math.ceil(limits.timeout_s) + 1
    caps = [
        (resource.RLIMIT_AS, mem),
        (resource.RLIMIT_CPU, cpu),
        (resource.RLIMIT_FSIZE, limits.max_file_mb * 2**20),
        (resource.RLIMIT_NOFILE, limits.max_open_files),
        (resource.RLIMIT_CORE, 0),
    ]
    if nproc:  # only meaningful for a dedicated uid: it counts every process of the real uid
        caps.append((resource.RLIMIT_NPROC, limits.max_procs))
    for res, soft in caps:
        hard = soft + 1 if res == resource.RLIMIT_CPU else soft  # SIGXCPU first, then SIGKILL
        resource.setrlimit(res, (soft, hard))
    # Die with the thread that started us, so a crashed rrtool leaves no sandbox behind
    # (unshare --kill-child and the PID namespace take everything below with it).
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)


class _Capped:
    """Keeps the first ``cap`` bytes and the last ``tail_cap`` bytes of a stream (chunks in a
    deque, so a program that floods its output costs no quadratic copying)."""

    def __init__(self, cap: int, tail_cap: int = _TAIL_BYTES) -> None:
        self.cap, self.tail_cap, self.total = cap, tail_cap, 0
        self.head = bytearray()
        self.tail: collections.deque[bytes] = collections.deque()
        self.tail_len = 0

    def add(self, data: bytes) -> None:
        self.total += len(data)
        room = self.cap - len(self.head)
        self.head += data[:room]
        if len(data) > room:
            self.tail.append(data[max(room, 0) :])
            self.tail_len += len(self.tail[-1])
            while self.tail_len - len(self.tail[0]) >= self.tail_cap:
                self.tail_len -= len(self.tail.popleft())

    def _tail(self) -> bytes:
        """The last ``_TAIL_BYTES``, reaching back to the start of the last lines (the last
        output line ahead of the nonce: the values pass_at_1 reads) when they are longer."""
        if len(self.tail) > 1:  # joined once; read by both last_bytes and text
            self.tail = collections.deque([b"".join(self.tail)])
        tail = self.tail[0][-self.tail_cap :] if self.tail else b""
        start = len(tail)
        for _ in range(_LAST_LINES + 1):
            start = tail.rfind(b"\n", 0, start)
            if start < 0:
                break
        return tail[min(max(start + 1, 0), max(len(tail) - _TAIL_BYTES, 0)) :]

    def text(self) -> str:
        if self.total <= self.cap:
            return self.head.decode("utf-8", "replace")
        tail = self._tail()
        dropped = self.total - len(self.head) - len(tail)
        mid = f"\n...[{dropped} bytes truncated]...\n" if dropped > 0 else ""
        return bytes(self.head).decode("utf-8", "replace") + mid + tail.decode("utf-8", "replace")

    def last_bytes(self, n: int) -> bytes:
        tail = self._tail()
        return tail[-n:] if len(tail) >= n else (bytes(self.head) + tail)[-n:]


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _run(source: str, limits: SandboxLimits, level: str) -> ExecutionResult:
    """One run under a given isolation level (no probing)."""
    start = time.monotonic()
    nonce = secrets.token_hex(16).encode()
    # A dedicated uid needs the interpreter reachable: the namespace levels re-expose it
    # themselves; rlimits-only can only drop privileges when it already is.
    drop = os.geteuid() == 0 and (
        level.startswith("unshare") or _world_reachable(_interpreter()[1])
    )
    uid = _UIDS.acquire() if drop else None
    workdir = Path(tempfile.mkdtemp(prefix="rrtool-sbx-", dir="/tmp"))
    # stdout's tail holds the program's last line whole (the values pass_at_1 compares), and
    # the nonce after it.
    out = _Capped(limits.max_stdout, limits.max_result + _TAIL_BYTES)
    err = _Capped(limits.max_stderr)
    timed_out, proc = False, None
    try:
        if uid is not None:
            os.chown(workdir, uid, uid)
        # Under unshare the inner script drops to ``uid`` after building the mounts.
        plain = uid is None or level.startswith("unshare")
        as_user = {} if plain else {"user": uid, "group": uid, "extra_groups": []}
        try:
            proc = subprocess.Popen(
                _command(level, workdir, uid, limits),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=workdir,
                env=_SCRUBBED_ENV,
                start_new_session=True,
                close_fds=True,
                **as_user,
                preexec_fn=lambda: _preexec(limits, nproc=uid is not None),
            )
        except OSError as exc:
            return ExecutionResult(
                False, "error", "", f"sandbox start failed: {exc}", time.monotonic() - start, level
            )
        timed_out = _pump(proc, nonce + b"\n" + source.encode(), out, err, limits.timeout_s)
        rc = proc.wait()
    finally:
        if proc is not None and proc.returncode is None:  # only if _pump itself blew up
            _kill_group(proc.pid)
            proc.wait()
        if uid is not None:
            _UIDS.release(uid)
        shutil.rmtree(workdir, ignore_errors=True)
    duration = time.monotonic() - start
    marker = b"\n" + nonce + b"\n"
    nonce_last = out.last_bytes(len(marker)) == marker
    stdout = out.text()
    if nonce_last:  # the marker is ours, not the program's output
        stdout = stdout[: -len(marker)]
    xcpu = {-signal.SIGXCPU, 128 + signal.SIGXCPU}
    status: Status
    if timed_out or rc in xcpu:
        status = "timeout"
    elif rc == 0 and nonce_last:
        status = "passed"
    elif rc == _SETUP_FAILED and level.startswith("unshare"):
        status = "error"
    else:
        status = "failed"
    return ExecutionResult(status == "passed", status, stdout, err.text(), duration, level, rc)


def _pump(
    proc: subprocess.Popen[bytes], stdin: bytes, out: _Capped, err: _Capped, timeout_s: float
) -> bool:
    """Feed stdin, drain stdout/stderr until the child exits or times out, then kill its whole
    group (also after a normal exit, so forked grandchildren die).  Returns True on timeout."""
    assert proc.stdin and proc.stdout and proc.stderr
    deadline = time.monotonic() + timeout_s
    sel = selectors.DefaultSelector()
    pidfd = os.pidfd_open(proc.pid) if hasattr(os, "pidfd_open") else None
    if pidfd is not None:  # readable once the child exits; no polling latency
        sel.register(pidfd, selectors.EVENT_READ, None)
    sinks = {proc.stdout.fileno(): out, proc.stderr.fileno(): err}
    for fd in sinks:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ, None)
    stdin_fd = proc.stdin.fileno()
    os.set_blocking(stdin_fd, False)
    sel.register(stdin_fd, selectors.EVENT_WRITE, None)
    pending, timed_out = memoryview(stdin), False

    def exited() -> bool:
        # WNOWAIT: the zombie keeps its pid (and so the group id) reserved until killpg is done.
        info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        return info is not None

    def service(timeout: float) -> None:
        nonlocal pending
        for key, _ in sel.select(timeout):
            fd = key.fd
            if fd in sinks:
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                if chunk:
                    sinks[fd].add(chunk)
                else:
                    sel.unregister(fd)
                    del sinks[fd]
            elif fd == stdin_fd:
                try:
                    pending = pending[os.write(fd, pending) :]
                except BlockingIOError:
                    continue
                except BrokenPipeError:  # the program stopped reading; its loss
                    pending = pending[:0]
                if not pending:
                    sel.unregister(fd)
                    proc.stdin.close()

    try:
        while not exited():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            service(min(remaining, 0.5 if pidfd is not None else 0.02))
        _kill_group(proc.pid)
        if pidfd is not None:
            sel.unregister(pidfd)
        # Namespaced children are gone now; with rlimits-only an escaped grandchild may hold the
        # pipes open, so drain briefly rather than until EOF.
        grace = time.monotonic() + 0.5
        while sinks and time.monotonic() < grace:
            service(0.05)
    finally:
        sel.close()
        if pidfd is not None:
            os.close(pidfd)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            stream.close()
    return timed_out


def isolation_level() -> str:
    """The strongest level that works here; probed once per process and cached."""
    global _probed
    with _probe_lock:
        if _probed is None:
            candidates = []
            path = _SCRUBBED_ENV["PATH"]  # what the child's PATH will find
            if (
                shutil.which("unshare", path=path)
                and shutil.which("setpriv", path=path)
                and shutil.which("chroot", path=_TOOL_PATH)
            ):
                candidates.append(
                    "unshare-net-pid" if os.geteuid() == 0 else "unshare-user-net-pid"
                )
            if shutil.which("bwrap", path=path):
                candidates.append("bwrap")
            _probed = "rlimits-only"
            for level in candidates:
                res = _run("print('rrtool-probe')", SandboxLimits(timeout_s=20), level)
                if res.passed and res.stdout.strip() == "rrtool-probe":
                    _probed = level
                    break
                log.debug("sandbox level %s unusable: %s %s", level, res.status, res.stderr[-500:])
            if _probed == "rlimits-only":
                log.warning(
                    "sandbox: no namespace isolation available (unshare/bwrap failed); "
                    "running untrusted code with rlimits only"
                )
        return _probed


def run_python(
    source: str, limits: SandboxLimits | None = None, *, isolation: str | None = None
) -> ExecutionResult:
    """Run ``source`` as a script in a fresh sandbox; pass = it ran to completion with exit 0.

    ``isolation`` forces a level (tests use it to exercise the fallback); default is the probed
    best level."""
    return _run(source, limits or SandboxLimits(), isolation or isolation_level())

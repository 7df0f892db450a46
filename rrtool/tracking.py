"""The tracking run: the single source of truth between phases (MLflow).

Library code gets an explicit ``MlflowClient`` and run id (no fluent "active
run" globals), so two runs in one process, or a second process auditing a run,
never step on each other. mlflow is imported only here, and only when used.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from rrtool.errors import UserError

DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlruns"
PACKAGES = (
    "rrtool",
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "safetensors",
    "sentence-transformers",
    "mlflow",
    "pydantic",
    "gguf",
)


@dataclass(frozen=True)
class Store:
    """Where runs go: a tracking URI, and for the embedded store, its artifact root."""

    uri: str
    artifact_root: str | None  # None: the server/store decides
    origin: str  # "--tracking-uri" | "spec" | "MLFLOW_TRACKING_URI" | "embedded default"


def resolve_store(
    flag: str | None = None, spec_uri: str | None = None, cwd: Path | None = None
) -> Store:
    """``--tracking-uri`` > spec ``tracking.uri`` > ``MLFLOW_TRACKING_URI`` > embedded store."""
    for value, origin in (
        (flag, "--tracking-uri"),
        (spec_uri, "spec"),
        (os.environ.get("MLFLOW_TRACKING_URI"), "MLFLOW_TRACKING_URI"),
    ):
        if value:
            return Store(value, _sqlite_artifact_root(value), origin)
    base = (cwd or Path.cwd()).resolve()
    return Store(
        f"sqlite:///{base / DEFAULT_DB}", (base / DEFAULT_ARTIFACTS).as_uri(), "embedded default"
    )


def _sqlite_artifact_root(uri: str) -> str | None:
    """Artifacts of a new experiment in a SQLite store go next to the database file.

    MLflow's own default is ``./mlruns`` under the *current* directory, which scatters one
    store's artifacts over every directory a run was started from and loses them when that
    directory is cleaned.
    """
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri.removeprefix("sqlite:///").split("?", 1)[0])
    if not db.is_absolute():
        db = Path.cwd() / db
    return (db.resolve().parent / DEFAULT_ARTIFACTS).as_uri()


def writable_dir(path: Path) -> bool:
    """True if we can create files in ``path`` (or in the ancestor it would be made under).

    A real probe file, not ``os.access``: root passes ``os.access`` even on read-only mounts.
    """
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            return False
        probe = probe.parent
    if not probe.is_dir():
        return False
    try:
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".rrtool-probe-"):
            return True
    except OSError:
        return False


def check_store(store: Store, timeout: float = 3.0) -> str:
    """Pre-flight check that the store can take a run; returns a one-line description."""
    uri = store.uri
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as reply:
                if reply.status != 200:
                    raise UserError(f"{uri}: tracking server answered HTTP {reply.status}")
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise UserError(f"{uri}: tracking server unreachable ({reason})") from None
        return f"tracking server {uri} (healthy)"
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        if db.is_dir():
            raise UserError(f"{uri}: {db} is a directory (expected a database file)")
        if not writable_dir(db.parent):
            raise UserError(f"{uri}: {db.parent} is not writable")
        return f"sqlite store {db}" + ("" if db.exists() else " (created on first run)")
    local = Path(uri[len("file://") :]) if uri.startswith("file://") else None
    if local is None and "://" not in uri:
        local = Path(uri)
    if local is not None:
        if not writable_dir(local):
            raise UserError(f"{uri}: {local} is not writable")
        return f"file store {local}"
    return f"tracking store {uri} (not checked: scheme handled by MLflow)"


def git_sha(start: Path | None = None) -> str | None:
    """The checkout's commit (with ``-dirty`` if modified) when rrtool runs from git."""
    where = start or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5
        )
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """Nested spec -> ``{"release.lora.r": "8", ...}`` for MLflow params."""
    if isinstance(data, dict):
        out: dict[str, str] = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    value = data if isinstance(data, str) else json.dumps(data)
    return {prefix.rstrip("."): value}


def prepare_mlflow() -> None:
    """Before importing mlflow: no usage telemetry from an offline tool unless the user
    opts in (MLFLOW_DISABLE_TELEMETRY=false), and no artifact progress bars."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # Its per-file tqdm bars would bury rrtool's own progress (a resume downloads dozens).
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def _quiet_mlflow_logs() -> None:
    # The sqlite store's first use runs alembic migrations that log at INFO to stderr.
    for name in ("alembic", "mlflow"):
        logging.getLogger(name).setLevel(logging.WARNING)


@contextmanager
def sqlite_store_lock(store: Store) -> Iterator[None]:
    """Hold an exclusive lock on a SQLite store's directory (no-op for other stores).

    Two runs started at once on a new store would both run MLflow's schema migrations
    (the loser dies on "duplicate column") and both create the experiment; the lock
    makes the second wait for the first. It is an advisory ``flock`` on the directory
    itself, so it leaves no lock file behind and dies with its process.
    """
    if not store.uri.startswith("sqlite:///"):
        yield
        return
    try:
        import fcntl
    except ImportError:  # Windows: no flock; concurrent first runs are not serialised there
        yield
        return
    folder = Path(store.uri.removeprefix("sqlite:///").split("?", 1)[0]).parent
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def mlflow_client(store: Store) -> Any:
    """An ``MlflowClient`` for ``store``: telemetry and progress bars settled before mlflow is
    imported, its loggers quietened after (it configures them on import)."""
    prepare_mlflow()
    from mlflow.tracking import MlflowClient

    _quiet_mlflow_logs()
    with sqlite_store_lock(store):
        # Opening the store (at construction or at the first request, depending on the
        # MLflow version) creates and migrates a new SQLite database.
        client = MlflowClient(tracking_uri=store.uri)
        client.search_experiments(max_results=1)
    return client


class Tracker:
    """One MLflow run, addressed explicitly by client and run id."""

    def __init__(self, client: Any, run_id: str, store: Store) -> None:
        self.client = client
        self.run_id = run_id
        self.store = store

    @classmethod
    def start(cls, store: Store, experiment: str, run_name: str, tags: dict[str, str]) -> Tracker:
        client = mlflow_client(store)
        from mlflow.exceptions import MlflowException

        try:
            with sqlite_store_lock(store):  # two first runs must not both create it
                found = client.get_experiment_by_name(experiment)
                experiment_id = (
                    found.experiment_id
                    if found is not None
                    else client.create_experiment(experiment, artifact_location=store.artifact_root)
                )
            run = client.create_run(experiment_id, run_name=run_name, tags=tags)
        except MlflowException as exc:
            raise UserError(f"{store.uri}: cannot start a run ({exc.message})") from None
        return cls(client, run.info.run_id, store)

    @classmethod
    def resume(cls, store: Store, run_id: str) -> Tracker:
        """Reopen an existing run (crash or interruption) to continue writing into it."""
        client = mlflow_client(store)
        client.update_run(run_id, status="RUNNING")
        return cls(client, run_id, store)

    def log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v[:6000]) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow's per-batch limit
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_dict(self, data: Any, artifact_file: str) -> None:
        self.client.log_dict(self.run_id, data, artifact_file)

    def log_jsonl(self, records: list[dict[str, Any]], artifact_file: str) -> None:
        self.log_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), artifact_file
        )

    def read_text(self, artifact_file: str) -> str | None:
        """An artifact of this run as text, or None if it was never logged."""
        folder, _, name = artifact_file.rpartition("/")
        if name not in {
            Path(f.path).name for f in self.client.list_artifacts(self.run_id, folder or None)
        }:
            return None
        with tempfile.TemporaryDirectory() as tmp:
            local = self.client.download_artifacts(self.run_id, artifact_file, tmp)
            return Path(local).read_text(encoding="utf-8")

    def read_jsonl(self, artifact_file: str) -> list[dict[str, Any]] | None:
        text = self.read_text(artifact_file)
        if text is None:
            return None
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for start in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[start : start + 500])

    def tags(self) -> dict[str, str]:
        return dict(self.client.get_run(self.run_id).data.tags)

    def set_tags(self, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, value)

    def finish(self, status: str, rrtool_status: str) -> None:
        """``status`` is MLflow's (FINISHED/FAILED/KILLED); ``rrtool_status`` says where it stopped."""
        self.client.set_tag(self.run_id, "rrtool.status", rrtool_status)
        self.client.set_terminated(self.run_id, status=status)


def store_failure(exc: BaseException) -> str | None:
    """A short reason if ``exc`` is the tracking store failing (a lost server, a database
    that can no longer be written), else None: those are the user's to fix and the run can
    be resumed, while any other exception is a bug and keeps its traceback."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        kind = type(current)
        text = str(current)
        if kind.__name__ == "MlflowException" and text.startswith("API request to"):
            # "API request to URL failed with exception ...[Errno 111] Connection refused"
            found = re.search(r"\[Errno -?\d+\] ([^\"')]+)", text)
            return found.group(1).strip() if found else text.split(" with exception ")[-1][:200]
        if kind.__module__.startswith("requests.") and isinstance(current, OSError):
            return f"{kind.__name__}: {text[:200]}"
        if kind.__module__.startswith("sqlalchemy.") and kind.__name__ == "OperationalError":
            return text.splitlines()[0][:200]
        current = current.__cause__ or current.__context__
    return None


PROCESS_TAG = "rrtool.process"  # host:pid of the process running the run now


def this_process() -> str:
    return f"{platform.node()}:{os.getpid()}"


def run_process(tags: dict[str, str]) -> tuple[str, int] | None:
    """(host, pid) of the process a run records as running it (``PROCESS_TAG``), if any."""
    host, _, pid = tags.get(PROCESS_TAG, "").rpartition(":")
    return (host, int(pid)) if host and pid.isdigit() else None


def alive_here(host: str, pid: int) -> bool:
    """Whether ``host:pid`` is a live rrtool process of this host (False for another host's,
    which this host cannot check)."""
    return host == platform.node() and _alive(pid)


def shown_status(tags: dict[str, str], mlflow_status: str) -> str:
    """The run's status as a reader should see it: a run still marked ``running`` whose
    process on this host is gone (killed, out of memory, the machine restarted) is
    ``interrupted``, which ``--resume`` continues. A run of another host keeps its tag."""
    status = tags.get("rrtool.status", mlflow_status.lower())
    process = run_process(tags)
    if status != "running" or process is None or process[0] != platform.node():
        return status
    return status if alive_here(*process) else "interrupted"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive, and not ours to judge
        return True
    cmdline = Path(f"/proc/{pid}/cmdline")
    try:  # a recycled pid is alive, but not an rrtool process (`rrtool ...`, `-m rrtool`)
        args = cmdline.read_bytes().split(b"\0") if cmdline.parent.is_dir() else None
    except OSError:
        return True
    return args is None or any(a == b"rrtool" or a.endswith(b"/rrtool") for a in args)


def run_tags(spec_name: str) -> dict[str, str]:
    from rrtool import __version__

    tags = {
        "rrtool.spec": spec_name,
        "rrtool.version": __version__,
        "rrtool.status": "running",
        "rrtool.command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:5000],
    }
    sha = git_sha()
    if sha:
        tags["rrtool.git_sha"] = sha
        tags["mlflow.source.git.commit"] = sha.removesuffix("-dirty")
    return tags

"""Read one run back from MLflow into the report's data (a plain, JSON-ready dict).

Nothing but the tracking store is read: tags, metrics and artifacts of the run, so a report
can be made on any machine that reaches the store, for any past run, after the working
directory that produced it is gone. A run still in progress, stopped or failed gives a partial
report that says so.
"""

from __future__ import annotations

import datetime as dt
import json
import tempfile
from pathlib import Path
from typing import Any

from rrtool.artifacts import (
    AUDIT_AFTER,
    AUDIT_BEFORE,
    AUDIT_GRID,
    AUDIT_LEAKAGE,
    AUDIT_PROBES,
    AUDIT_SUMMARY,
    ENVIRONMENT,
    MODEL_FACTS,
    PLAN,
    RELEASE_CANDIDATES,
    RELEASE_SIMILARITY,
    RELEASE_STATE,
    RELEASE_STEPS,
    REVEAL_FORGET,
    REVEAL_TRIALS,
    SPEC_RESOLVED,
)
from rrtool.errors import UserError
from rrtool.tracking import Store, mlflow_client, shown_status

FORMAT = "rrtool.audit/1"
PHASES = ("reveal", "release", "audit")


def _rrtool_runs(client: Any, max_results: int = 1000) -> list[Any]:
    from mlflow.entities import ViewType
    from mlflow.exceptions import MlflowException

    try:
        experiments = client.search_experiments(view_type=ViewType.ACTIVE_ONLY)
        if not experiments:
            return []
        return list(
            client.search_runs(
                [e.experiment_id for e in experiments],
                filter_string="tags.`rrtool.spec` != ''",
                order_by=["attributes.start_time DESC"],
                max_results=max_results,
            )
        )
    except MlflowException as exc:
        raise UserError(f"cannot read the tracking store: {exc.message}") from None


def list_runs(store: Store, limit: int = 50) -> list[dict[str, Any]]:
    """Recent rrtool runs, newest first, with status and headline numbers."""
    client = mlflow_client(store)
    rows = []
    for run in _rrtool_runs(client, limit):
        tags = run.data.tags
        rows.append(
            {
                "id": run.info.run_id,
                "name": run.info.run_name,
                "spec": tags.get("rrtool.spec"),
                "status": shown_status(tags, run.info.status),
                "started": _time(run.info.start_time),
                "stop_reason": tags.get("rrtool.stop_reason")
                or tags.get("rrtool.release.stop_reason"),
                "forget": _headline(run, "forget"),
                "utility": _headline(run, "utility"),
            }
        )
    return rows


def _headline(run: Any, key: str) -> dict[str, Any] | None:
    """A measurement's headline metric with its numbers (``audit/summary/<key>/...``) and the
    one-line text the table shows; None before the audit."""
    text = run.data.tags.get(f"rrtool.audit.{key}")
    if text is None:
        return None
    metrics = run.data.metrics
    numbers = {s: metrics.get(f"audit/summary/{key}/{s}") for s in ("before", "after", "change")}
    return {"metric": text.split(" ", 1)[0], **numbers, "text": text}


def find_run(store: Store, ref: str | None) -> Any:
    """A run by id, unique id prefix or run name; the latest rrtool run when ``ref`` is None."""
    client = mlflow_client(store)
    runs = _rrtool_runs(client)
    if not runs:
        raise UserError(f"no rrtool runs in {store.uri} (run `rrtool run SPEC` first)")
    if ref is None:
        return client, runs[0]
    exact = [r for r in runs if r.info.run_id == ref]
    if exact:
        return client, exact[0]
    prefixed = [r for r in runs if r.info.run_id.startswith(ref)]
    if len(prefixed) > 1:
        ids = ", ".join(r.info.run_id[:12] for r in prefixed[:5])
        raise UserError(f"`{ref}` matches {len(prefixed)} runs ({ids}); give more of the id")
    # A run name may be reused: the newest run of that name (runs are newest first).
    matches = prefixed or [r for r in runs if r.info.run_name == ref]
    if not matches:
        raise UserError(
            f"no run `{ref}` in {store.uri} (give a run id, a unique prefix of one, or a run "
            "name; `rrtool runs` lists them)"
        )
    return client, matches[0]


def _time(millis: int | None) -> str | None:
    if not millis:
        return None
    return dt.datetime.fromtimestamp(millis / 1000, tz=dt.timezone.utc).isoformat(
        timespec="seconds"
    )


class _Artifacts:
    """The run's artifacts, downloaded once into a temporary directory."""

    def __init__(self, client: Any, run_id: str, tmp: Path) -> None:
        self.client, self.run_id, self.tmp = client, run_id, tmp
        self.paths: dict[str, int] = {}
        self._walk(None)

    def _walk(self, folder: str | None) -> None:
        for info in self.client.list_artifacts(self.run_id, folder):
            if info.is_dir:
                self._walk(info.path)
            else:
                self.paths[info.path] = info.file_size or 0

    def text(self, path: str) -> str | None:
        if path not in self.paths:
            return None
        local = self.client.download_artifacts(self.run_id, path, str(self.tmp))
        return Path(local).read_text(encoding="utf-8")

    def json(self, path: str) -> Any:
        text = self.text(path)
        return None if text is None else json.loads(text)

    def jsonl(self, path: str) -> list[dict[str, Any]]:
        text = self.text(path)
        return [] if text is None else [json.loads(x) for x in text.splitlines() if x.strip()]


def _side_by_side(before: dict[str, Any], after: dict[str, Any], limit: int) -> dict[str, list]:
    out: dict[str, list] = {}
    for key in before:
        after_answers = {a["id"]: a for a in after.get(key, {}).get("answers", [])}
        rows = []
        for answer in before[key].get("answers", []):
            other = after_answers.get(answer["id"])
            if other is None:
                continue
            rows.append(
                {
                    "id": answer["id"],
                    "prompt": answer["prompt"],
                    "reference": answer.get("reference", {}),
                    "before": answer["completion"],
                    "after": other["completion"],
                    "score_before": answer.get("score"),
                    "score_after": other.get("score"),
                }
            )
            if len(rows) >= limit:
                break
        out[key] = rows
    return out


def _steps(state: dict[str, Any] | None, steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The per-step table (the paper's Tables 7-9): step 0 is the base model."""
    if state is None:
        return []
    rows = [
        {
            "step": 0,
            "module": "base",
            "kind": None,
            "iteration": None,
            "weight": None,
            "coefficient": None,
            "forget": state.get("s0"),
            "utility": state.get("u0"),
            "weight_from": None,
            "reverted": False,
        }
    ]
    for record in steps:
        rows.append(
            {
                "step": record["step"],
                "module": record["module"],
                "kind": record["kind"],
                "iteration": record["iteration"],
                "weight": record["weight"],
                "coefficient": record["coefficient"],
                "forget": record["s"],
                "utility": record["u"],
                "forget_ci": record.get("s_ci"),
                "utility_ci": record.get("u_ci"),
                "weight_from": record.get("weight_from"),
                "reverted": record.get("reverted", False),
                "failed": record.get("failed"),
                "sha256": record.get("sha256"),
                "seconds": record.get("seconds"),
            }
        )
    return rows


def collect(store: Store, ref: str | None = None) -> dict[str, Any]:
    """Everything the report shows about one run, read from the store alone."""
    client, run = find_run(store, ref)
    run_id = run.info.run_id
    tags, metrics = run.data.tags, run.data.metrics
    with tempfile.TemporaryDirectory() as tmp:
        art = _Artifacts(client, run_id, Path(tmp))
        spec_yaml = art.text(SPEC_RESOLVED)
        state = art.json(RELEASE_STATE)
        steps = art.jsonl(RELEASE_STEPS)
        before = art.json(AUDIT_BEFORE) or {}
        after = art.json(AUDIT_AFTER) or {}
        spec = _load_yaml(spec_yaml)
        sample_answers = ((spec or {}).get("audit") or {}).get("sample_answers", 5)
        report: dict[str, Any] = {
            "format": FORMAT,
            "generated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "run": {
                "id": run_id,
                "name": run.info.run_name,
                "experiment": client.get_experiment(run.info.experiment_id).name,
                "store": store.uri,
                "status": shown_status(tags, run.info.status),
                "mlflow_status": run.info.status,
                "started": _time(run.info.start_time),
                "ended": _time(run.info.end_time),
                "stop_reason": tags.get("rrtool.stop_reason"),
                "rrtool_version": tags.get("rrtool.version"),
                "git_sha": tags.get("rrtool.git_sha"),
                "command": tags.get("rrtool.command"),
                "resume_forced": tags.get("rrtool.resume_forced"),
            },
            "spec": spec,
            "spec_yaml": spec_yaml,
            "plan": art.json(PLAN),
            "model": art.json(MODEL_FACTS),
            "environment": art.json(ENVIRONMENT),
            "phases": [
                {
                    "name": name,
                    "done": tags.get(f"rrtool.phase.{name}") == "done",
                    "seconds": metrics.get(f"phase/{name}/seconds"),
                    "peak_rss_mb": metrics.get(f"phase/{name}/peak_rss_mb"),
                    "peak_gpu_mb": metrics.get(f"phase/{name}/peak_gpu_mb"),
                }
                for name in PHASES
            ],
            "reveal": {
                "metrics": {k: v for k, v in metrics.items() if k.startswith("reveal/")},
                "trials": art.jsonl(REVEAL_TRIALS),
                "forget_samples": art.jsonl(REVEAL_FORGET)[:sample_answers],
            },
            "release": {
                "stop_reason": tags.get("rrtool.release.stop_reason"),
                "state": state,
                "candidates": art.jsonl(RELEASE_CANDIDATES),
                "similarity": art.jsonl(RELEASE_SIMILARITY),
                "modules": [
                    {
                        "name": e["module"],
                        "kind": e["kind"],
                        "coefficient": e["coefficient"],
                        "sha256": e["sha256"],
                        "artifact": e["artifact"],
                        "bytes": art.paths.get(e["artifact"]),
                    }
                    for e in (state or {}).get("stack", [])
                ],
            },
            "steps": _steps(state, steps),
            "audit": {
                "summary": art.json(AUDIT_SUMMARY),
                "leakage": art.json(AUDIT_LEAKAGE),
                "grid": art.json(AUDIT_GRID),
                "before": _without_answers(before),
                "after": _without_answers(after),
                "answers": _side_by_side(before, after, sample_answers),
                "probes": art.json(AUDIT_PROBES),
                # Wall time of the audit's own measurements and of its probes (same process).
                "seconds": {
                    part: metrics.get(f"audit/seconds/{part}")
                    for part in ("measurements", "probes")
                },
                "scorers": sorted({e["scorer"] for e in (*before.values(), *after.values())}),
            },
        }
    return report


def _without_answers(side: dict[str, Any]) -> dict[str, Any]:
    """Each evaluation without its answers and bootstrap replicates (the summary holds what
    the replicates were kept for: the paired intervals)."""
    drop = ("answers", "replicates")
    return {k: {kk: vv for kk, vv in v.items() if kk not in drop} for k, v in side.items()}


def _load_yaml(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    import yaml

    return yaml.safe_load(text)

"""What a run read and what it answered, where MLflow's own views show them.

The artifacts hold everything (``rrtool.artifacts``); this adds MLflow's structured records
next to them, so the run page lists its data and compares answers without downloading files:

- every split and evaluation set a phase reads (``rrtool.splits.Part``) as a **dataset input**
  of the run: name ``<spec key>/<role>`` (``reveal.contexts/audit``, ``retain.data/reveal``,
  ``audit.forget_eval/audit``), a digest of its records (the same records give the same digest
  in any run), the source file or hub dataset, ``profile`` with ``num_rows`` (records) and
  ``units`` (passages or rows, as the splits count them), and the input tags
  ``mlflow.data.context`` (``reveal``, ``search`` or ``audit``: the role that read it) and
  ``rrtool.data`` (the report's provenance line). Only this description goes into MLflow: the
  records stay where the spec names them. Logging the same part twice (a resumed run, a
  probe's second suite) records it once.
- the audit's answers of the base and of the released model, one row per prompt (measure,
  id, prompt, reference, both answers and their scores), as an **MLflow table**
  (``audit/answers_table.json``: ``MlflowClient.load_table`` reads it, the UI's evaluation view
  shows it). ``audit/before.json`` and ``after.json`` stay the record the report reads.

Everything goes through the run's client and id (``Tracker``); no active MLflow run is used.
A context without a tracker (tests calling a phase's pieces alone) records nothing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from rrtool.artifacts import AUDIT_ANSWERS_TABLE
from rrtool.builtins import hub_name
from rrtool.data import resolve_path
from rrtool.splits import Part
from rrtool.tracking import Tracker

CONTEXT_TAG = "mlflow.data.context"  # MLflow's tag for the role of a dataset input
PROVENANCE_TAG = "rrtool.data"
DIGEST_CHARS = 32  # MLflow keeps digests of at most 36 characters
_TAG_VALUE_CHARS = 500  # MLflow's limit for an input tag's value


def digest(records: Iterable[Any]) -> str:
    """A fingerprint of the records (their canonical JSON, in order)."""
    sha = hashlib.sha256()
    for record in records:
        sha.update(json.dumps(record, sort_keys=True, ensure_ascii=False, default=str).encode())
        sha.update(b"\n")
    return sha.hexdigest()[:DIGEST_CHARS]


def dataset_name(key: str, part: Part) -> str:
    """``<spec key>/<role>``: the role is in the name because MLflow keeps one input per name
    and digest (a source read whole by two roles would otherwise show one context)."""
    return f"{key}/{part.role}"


def _source(part: Part) -> tuple[str, dict[str, Any]]:
    """(source type, source) as MLflow's own local-file and Hugging Face sources write them."""
    source = part.source
    name = hub_name(source.path)
    if name is not None:
        return "hugging_face", {
            "path": name,
            "config_name": source.config,
            "data_dir": None,
            "data_files": None,
            "split": str(source.split or "test"),
            "revision": source.revision,
        }
    return "local", {"uri": str(resolve_path(source).resolve())}


def dataset_input(key: str, part: Part) -> Any:
    """The MLflow ``DatasetInput`` describing ``part`` (read as spec key ``key``)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    source_type, source = _source(part)
    described = part.describe()
    profile = {
        "num_rows": len(part.records),
        "units": part.units,
        "total_units": part.total_units,
        "format": part.source.format,
        "offset": part.source.offset,
        "limit": part.source.limit,
        "split": part.split,
        "held_out": part.held_out,
    }
    dataset = Dataset(
        name=dataset_name(key, part),
        digest=digest(part.records),
        source_type=source_type,
        source=json.dumps(source),
        profile=json.dumps(profile),
    )
    tags = [
        InputTag(CONTEXT_TAG, part.role),
        InputTag(PROVENANCE_TAG, described["text"][:_TAG_VALUE_CHARS]),
    ]
    return DatasetInput(dataset, tags)


def log_parts(tracker: Tracker | None, parts: Iterable[tuple[str, Part]]) -> None:
    """Record each (spec key, part) as a dataset input of the run."""
    if tracker is None:
        return
    inputs = [dataset_input(key, part) for key, part in parts]
    if not inputs:
        return
    from mlflow.exceptions import MlflowException

    # Two runs on one store may log the same dataset (name and digest) at the same moment:
    # MlflowClient looks the row up, then inserts it, and the slower insert fails on the
    # unique key. Once the row exists, the next attempt links it to this run.
    for attempt in range(3):
        try:
            tracker.client.log_inputs(tracker.run_id, datasets=inputs)
            return
        except MlflowException as exc:
            if "UNIQUE constraint failed" not in str(exc) or attempt == 2:
                raise


def suite_parts(parts: Mapping[str, Part]) -> list[tuple[str, Part]]:
    """An evaluation suite's parts (by measure, ``forget``/``utility``) under their spec keys:
    explicit data is ``audit.forget_eval`` / ``audit.retain_eval``, a split of a shared
    source ``reveal.contexts`` / ``retain.data``."""
    keys = {
        "forget": ("reveal.contexts", "audit.forget_eval"),
        "utility": ("retain.data", "audit.retain_eval"),
    }
    return [(keys[measure][part.explicit], part) for measure, part in parts.items()]


# ------------------------------------------------------------------------ answers
TABLE_COLUMNS = ("measure", "id", "prompt", "reference", "before", "after", "score_before",
                 "score_after")  # fmt: skip


def answer_rows(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every prompt both sides answered, in the base model's order: the base model's and the
    released model's answer side by side (references as JSON text)."""
    rows = []
    for measure, side in before.items():
        released = {a["id"]: a for a in (after.get(measure) or {}).get("answers", [])}
        for answer in (side or {}).get("answers", []):
            other = released.get(answer["id"])
            if other is None:
                continue
            rows.append(
                {
                    "measure": measure,
                    "id": str(answer["id"]),
                    "prompt": answer.get("prompt", ""),
                    "reference": json.dumps(answer.get("reference", {}), ensure_ascii=False),
                    "before": answer.get("completion", ""),
                    "after": other.get("completion", ""),
                    "score_before": answer.get("score"),
                    "score_after": other.get("score"),
                }
            )
    return rows


def log_answers_table(
    tracker: Tracker | None, before: Mapping[str, Any], after: Mapping[str, Any]
) -> None:
    """The before/after answers as the MLflow table ``audit/answers_table.json``, once:
    ``log_table`` appends to an existing table, so a resumed audit leaves the one it finds."""
    if tracker is None:
        return
    rows = answer_rows(before, after)
    folder, _, name = AUDIT_ANSWERS_TABLE.rpartition("/")
    present = {
        f.path.rpartition("/")[2] for f in tracker.client.list_artifacts(tracker.run_id, folder)
    }
    if not rows or name in present:
        return
    table = {column: [row[column] for row in rows] for column in TABLE_COLUMNS}
    tracker.client.log_table(tracker.run_id, data=table, artifact_file=AUDIT_ANSWERS_TABLE)

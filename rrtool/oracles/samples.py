"""Reading oracle samples (JSON lines) with FILE:LINE errors."""

from __future__ import annotations

import json
from pathlib import Path

from rrtool.errors import UserError
from rrtool.oracles.contract import Sample

FIELDS = '{"id": ..., "prompt": "...", "completion": "...", "reference": {...}}'


def read_samples(path: str | Path) -> list[Sample]:
    """Parse a samples file (``-`` = stdin); every malformed line is reported, not just the first."""
    if str(path) == "-":
        import sys

        return _parse(sys.stdin.read().splitlines(), "<stdin>")
    file = Path(path)
    if file.is_dir():
        raise UserError(f"{file}: is a directory (expected a JSON-lines file of samples)")
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"{file}: no such file (expected a JSON-lines file of samples)") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{file}: not UTF-8 text ({exc.reason})") from None
    return _parse(lines, str(file))


def _parse(lines: list[str], file: str) -> list[Sample]:
    samples: list[Sample] = []
    errors: list[str] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{file}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            errors.append(
                f"{where}: invalid JSON at column {exc.colno}: {exc.msg} (expected {FIELDS})"
            )
            continue
        problem = _problem(record)
        if problem:
            errors.append(f"{where}: {problem} (expected {FIELDS})")
            continue
        samples.append(
            Sample(
                id=str(record["id"]),
                prompt=record.get("prompt", ""),
                completion=record["completion"],
                reference=record.get("reference") or {},
            )
        )
    if errors:
        raise UserError(*errors)
    if not samples:
        raise UserError(f"{file}: no samples (expected one JSON object per line: {FIELDS})")
    return samples


def _problem(record: object) -> str | None:
    if not isinstance(record, dict):
        return f"got a JSON {type(record).__name__}"
    if "id" not in record or not isinstance(record["id"], (str, int)):
        return "missing `id` (a string or integer)"
    if not isinstance(record.get("completion"), str):
        return "missing `completion` (a string)"
    if not isinstance(record.get("prompt", ""), str):
        return "`prompt` must be a string"
    if not isinstance(record.get("reference") or {}, dict):
        return "`reference` must be an object"
    return None

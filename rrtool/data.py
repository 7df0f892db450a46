"""Data loaders for the formats rrtool reads, with errors that name FILE:LINE.

Each loader returns plain records (dicts) in file order. The planner calls
``load_records`` before any compute, so a malformed file fails in seconds, not
after an hour of generation.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from rrtool.builtins import BUILTIN_DATA, builtin_name
from rrtool.errors import UserError
from rrtool.spec import DataSource

Record = dict[str, Any]


def resolve_path(source: DataSource) -> Path:
    """The file behind a data source; built-in sets (names checked by the spec) resolve
    inside the package."""
    name = builtin_name(source.path)
    if name is None:
        return Path(source.path)
    return Path(str(resources.files("rrtool") / "builtin_data" / BUILTIN_DATA[name][0]))


def _open_text(path: Path) -> str:
    if path.is_dir():
        raise UserError(f"{path}: is a directory (expected a data file)")
    if not path.exists():
        raise UserError(f"{path}: no such file (expected a data file; check the spec's path)")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason})") from None


def _json_lines(path: Path) -> Iterator[tuple[int, Record]]:
    for number, line in enumerate(_open_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(
                f"{path}:{number}: invalid JSON at column {exc.colno}: {exc.msg} "
                "(expected one JSON object per line)"
            ) from None
        if not isinstance(record, dict):
            raise UserError(
                f"{path}:{number}: got a JSON {type(record).__name__} "
                "(expected one JSON object per line)"
            )
        yield number, record


def _require(path: Path, line: int, record: Record, fmt: str, keys: dict[str, type]) -> None:
    for key, kind in keys.items():
        if key not in record:
            raise UserError(f"{path}:{line}: missing field `{key}` (expected a {fmt} record)")
        if not isinstance(record[key], kind):
            raise UserError(
                f"{path}:{line}: field `{key}` is {type(record[key]).__name__} "
                f"(expected {kind.__name__} in a {fmt} record)"
            )


def _checked_jsonl(fmt: str, keys: dict[str, type]) -> Callable[[Path], list[Record]]:
    def load(path: Path) -> list[Record]:
        records = []
        for line, record in _json_lines(path):
            _require(path, line, record, fmt, keys)
            records.append(record)
        return records

    return load


def _load_rtp(path: Path) -> list[Record]:
    records = []
    for line, record in _json_lines(path):
        prompt = record.get("prompt")
        if not isinstance(prompt, dict) or not isinstance(prompt.get("text"), str):
            raise UserError(
                f"{path}:{line}: missing `prompt.text` (expected a RealToxicityPrompts record)"
            )
        records.append(record)
    return records


def _load_universalner(path: Path) -> list[Record]:
    """UniversalNER conversations -> one record per (text, type) query."""
    text = _open_text(path)
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    if not isinstance(items, list):
        raise UserError(f"{path}:1: got a JSON {type(items).__name__} (expected a list)")
    records = []
    for index, item in enumerate(items):
        where = f"{path}:1: [{index}]"
        turns = item.get("conversations") if isinstance(item, dict) else None
        if not isinstance(turns, list) or len(turns) < 4:
            raise UserError(f"{where}: expected `conversations` with at least 4 turns")
        values = [t.get("value", "") if isinstance(t, dict) else "" for t in turns]
        if not values[0].startswith("Text: "):
            raise UserError(f"{where}: first turn must start with 'Text: '")
        passage = values[0][len("Text: ") :]
        # Turns after the first exchange alternate question / JSON-list answer.
        for question, answer in zip(values[2::2], values[3::2], strict=False):
            prefix, suffix = "What describes ", " in the text?"
            if not (question.startswith(prefix) and question.endswith(suffix)):
                raise UserError(f"{where}: unexpected question {question[:60]!r}")
            try:
                entities = json.loads(answer)
            except json.JSONDecodeError:
                raise UserError(f"{where}: answer {answer[:60]!r} is not a JSON list") from None
            if not isinstance(entities, list):
                raise UserError(f"{where}: answer is not a JSON list")
            records.append(
                {
                    "id": f"{item.get('id', index)}",
                    "text": passage,
                    "type": question[len(prefix) : -len(suffix)],
                    "entities": [str(e) for e in entities],
                }
            )
    return records


def _load_text(path: Path) -> list[Record]:
    lines = [line.strip() for line in _open_text(path).splitlines()]
    records = [{"text": line} for line in lines if line]
    if not records:
        raise UserError(f"{path}:1: the file is empty (expected raw text)")
    return records


LOADERS: dict[str, Callable[[Path], list[Record]]] = {
    "jsonl": lambda path: [record for _, record in _json_lines(path)],
    "universalner": _load_universalner,
    "mbpp": _checked_jsonl("MBPP", {"text": str, "test_list": list}),
    "mbppplus": _checked_jsonl(
        "MBPP+", {"task_id": str, "prompt": str, "entry_point": str, "base_input": list}
    ),
    "gsm8k": _checked_jsonl("GSM8K", {"question": str, "answer": str}),
    "rtp": _load_rtp,
    "text": _load_text,
}


def load_records(source: DataSource) -> list[Record]:
    """Parse a data source fully (honouring ``limit``); raises ``UserError`` on bad data."""
    path = resolve_path(source)
    records = LOADERS[source.format](path)
    if not records:
        raise UserError(f"{path}: no records (expected at least one {source.format} record)")
    return records[: source.limit] if source.limit else records

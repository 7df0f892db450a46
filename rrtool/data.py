"""Data loaders for the formats rrtool reads, with errors that name where the bad row is.

A data source is a local file (errors say FILE:LINE), a built-in set, or a hub dataset
(``hf:NAME``; errors say ``hf:NAME[split] row N``). Files and hub datasets go through
the same per-format parsers, so a record is checked the same way wherever it came
from. Each loader returns plain records (dicts) in source order. The planner calls
``load_records`` before any compute, so a malformed source fails in seconds, not after
an hour of generation.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from rrtool.builtins import BUILTIN_DATA, builtin_name, hub_name
from rrtool.errors import UserError
from rrtool.spec import DataSource

Record = dict[str, Any]
# (where, record): `where` locates the record for error messages ("file.jsonl:12").
Row = tuple[str, Any]


def resolve_path(source: DataSource) -> Path:
    """The file behind a file-backed data source; built-in sets (names checked by the
    spec) resolve inside the package."""
    name = builtin_name(source.path)
    if name is None:
        return Path(source.path)
    return Path(str(resources.files("rrtool") / "builtin_data" / BUILTIN_DATA[name][0]))


# --------------------------------------------------------------------------- row sources
def _open_text(path: Path) -> str:
    if path.is_dir():
        raise UserError(f"{path}: is a directory (expected a data file)")
    if not path.exists():
        raise UserError(f"{path}: no such file (expected a data file; check the spec's path)")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason})") from None


def _json_lines(path: Path) -> Iterator[Row]:
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
        yield f"{path}:{number}", record


def _json_list(path: Path) -> Iterator[Row]:
    try:
        items = json.loads(_open_text(path))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    if not isinstance(items, list):
        raise UserError(f"{path}:1: got a JSON {type(items).__name__} (expected a list)")
    for index, item in enumerate(items):
        yield f"{path}:1: [{index}]", item


def _text_lines(path: Path) -> Iterator[Row]:
    for number, line in enumerate(_open_text(path).splitlines(), start=1):
        yield f"{path}:{number}", {"text": line}


def _hub_rows(source: DataSource) -> Iterator[Row]:
    """Rows of a hub dataset through `datasets.load_dataset` (its cache, its offline
    switches: HF_DATASETS_OFFLINE / HF_HUB_OFFLINE)."""
    try:
        import datasets
    except ImportError:
        raise UserError(
            f"{source.path}: reading hub datasets needs the `datasets` package "
            "(pip install 'rrtool[hub]'), or download the data and give a file path"
        ) from None
    name = hub_name(source.path)
    split = source.split or "test"
    try:
        table = datasets.load_dataset(name, source.config, split=split, revision=source.revision)
    # datasets reports a missing dataset, config or split, a lost connection and an
    # offline cache miss with many unrelated exception types; all are the user's to fix.
    except Exception as exc:  # noqa: BLE001
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"{source.path}: could not load the hub dataset (config {source.config!r}, "
            f"split {split!r}): {reason[:300]} (check the name, `config` and `split`, and "
            "that the hub is reachable or the dataset is in the local cache)"
        ) from None
    for index, row in enumerate(table):
        yield f"{source.path}[{split}] row {index}", row


# --------------------------------------------------------------------------- parsers
def _objects(rows: Iterable[Row]) -> Iterator[Row]:
    for where, record in rows:
        if not isinstance(record, dict):
            raise UserError(
                f"{where}: got a JSON {type(record).__name__} (expected one JSON object per line)"
            )
        yield where, record


def _require(where: str, record: Record, fmt: str, keys: dict[str, type]) -> None:
    for key, kind in keys.items():
        if key not in record:
            raise UserError(f"{where}: missing field `{key}` (expected a {fmt} record)")
        if not isinstance(record[key], kind):
            raise UserError(
                f"{where}: field `{key}` is {type(record[key]).__name__} "
                f"(expected {kind.__name__} in a {fmt} record)"
            )


def _checked(fmt: str, keys: dict[str, type]) -> Callable[[Iterable[Row]], list[Record]]:
    def parse(rows: Iterable[Row]) -> list[Record]:
        records = []
        for where, record in _objects(rows):
            _require(where, record, fmt, keys)
            records.append(record)
        return records

    return parse


def _parse_rtp(rows: Iterable[Row]) -> list[Record]:
    records = []
    for where, record in _objects(rows):
        prompt = record.get("prompt")
        if not isinstance(prompt, dict) or not isinstance(prompt.get("text"), str):
            raise UserError(
                f"{where}: missing `prompt.text` (expected a RealToxicityPrompts record)"
            )
        records.append(record)
    return records


def _parse_universalner(rows: Iterable[Row]) -> list[Record]:
    """UniversalNER conversations -> one record per (text, type) query."""
    records = []
    for index, (where, item) in enumerate(rows):
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


def _conll_sentences(path: Path) -> Iterator[Row]:
    """CoNLL files (``token<TAB>BIO-tag`` lines; sentences end at an empty or tab-only line):
    one row per sentence, ``{"tokens": [...], "tags": [...]}``."""
    tokens: list[str] = []
    tags: list[str] = []
    start = 1
    for number, line in enumerate(_open_text(path).splitlines(), start=1):
        if not line.strip():
            if tokens:
                yield f"{path}:{start}", {"tokens": tokens, "tags": tags}
            tokens, tags, start = [], [], number + 1
            continue
        parts = line.rstrip("\n").split("\t")
        if len(parts) < 2:
            raise UserError(
                f"{path}:{number}: expected `token<TAB>tag` (a CoNLL file), got {line[:60]!r}"
            )
        tokens.append(parts[0])
        tags.append(parts[-1].strip())
    if tokens:
        yield f"{path}:{start}", {"tokens": tokens, "tags": tags}


def _spans_records(
    items: list[tuple[str, str, dict[str, list[str]]]], where_types: set[str]
) -> list[Record]:
    """One record per (passage, type) for every type the file knows, so a type a passage
    lacks is an answer of ``[]`` (as in UniversalNER data), not an unknown."""
    types = sorted(where_types)
    return [
        {"id": ident, "text": text, "type": t, "entities": found.get(t, [])}
        for ident, text, found in items
        for t in types
    ]


def _parse_conll(rows: Iterable[Row]) -> list[Record]:
    """CoNLL BIO sentences -> one record per (sentence, type), the sentence's tokens joined
    by spaces; type names as the tags give them (``B-person`` -> ``person``)."""
    items: list[tuple[str, str, dict[str, list[str]]]] = []
    types: set[str] = set()
    for index, (where, row) in enumerate(_objects(rows)):
        tokens, tags = row.get("tokens"), row.get("tags")
        if not isinstance(tokens, list) or not isinstance(tags, list) or len(tokens) != len(tags):
            raise UserError(f"{where}: expected `tokens` and `tags` lists of one length")
        found: dict[str, list[str]] = {}
        current: list[str] = []
        kind = ""
        for token, tag in [*zip(tokens, tags, strict=True), ("", "O")]:
            inside = tag.startswith("I-") and tag[2:] == kind and current
            if current and not inside:
                found.setdefault(kind, []).append(" ".join(current))
                current = []
            if tag.startswith(("B-", "I-")) and not inside:
                kind, current = tag[2:], [token]
                types.add(kind)
            elif inside:
                current.append(token)
        items.append((str(index), " ".join(tokens), found))
    return _spans_records(items, types)


def _parse_gliner(rows: Iterable[Row]) -> list[Record]:
    """GLiNER data (``tokenized_text``, ``ner``: ``[start, end, type]`` token spans, end
    inclusive) -> one record per (passage, type), types lowercased."""
    items: list[tuple[str, str, dict[str, list[str]]]] = []
    types: set[str] = set()
    for index, (where, row) in enumerate(_objects(rows)):
        tokens, spans = row.get("tokenized_text"), row.get("ner")
        if not isinstance(tokens, list) or not isinstance(spans, list):
            raise UserError(f"{where}: expected `tokenized_text` and `ner` lists (GLiNER data)")
        found: dict[str, list[str]] = {}
        for span in spans:
            if not (isinstance(span, list) and len(span) == 3):
                raise UserError(f"{where}: expected `ner` items [start, end, type], got {span!r}")
            start, end, label = span
            kind = str(label).lower()
            types.add(kind)
            found.setdefault(kind, []).append(" ".join(tokens[int(start) : int(end) + 1]))
        items.append((str(index), " ".join(tokens), found))
    return _spans_records(items, types)


def _parse_text(rows: Iterable[Row]) -> list[Record]:
    """A raw corpus: one record per non-empty line (a hub row's `text` may hold several)."""
    records = []
    for where, row in _objects(rows):
        _require(where, row, "text", {"text": str})
        records.extend({"text": line.strip()} for line in row["text"].splitlines() if line.strip())
    return records


PARSERS: dict[str, Callable[[Iterable[Row]], list[Record]]] = {
    "jsonl": lambda rows: [record for _, record in _objects(rows)],
    "universalner": _parse_universalner,
    "conll": _parse_conll,
    "gliner": _parse_gliner,
    "mbpp": _checked("MBPP", {"text": str, "test_list": list}),
    "mbppplus": _checked(
        "MBPP+", {"task_id": str, "prompt": str, "entry_point": str, "base_input": list}
    ),
    "gsm8k": _checked("GSM8K", {"question": str, "answer": str}),
    "rtp": _parse_rtp,
    "text": _parse_text,
}

# How each format is laid out in a file (a hub dataset is always a sequence of rows).
FILE_ROWS: dict[str, Callable[[Path], Iterator[Row]]] = {
    "universalner": _json_list,
    "gliner": _json_list,
    "conll": _conll_sentences,
    "text": _text_lines,
}


def load_records(source: DataSource) -> list[Record]:
    """Parse a data source fully (honouring ``offset`` and ``limit``); raises ``UserError``
    on bad data."""
    if source.is_hub:
        origin, rows = source.path, _hub_rows(source)
    else:
        path = resolve_path(source)
        origin, rows = str(path), FILE_ROWS.get(source.format, _json_lines)(path)
    records = PARSERS[source.format](rows)
    if not records:
        raise UserError(f"{origin}: no records (expected at least one {source.format} record)")
    end = source.offset + source.limit if source.limit else None
    chosen = records[source.offset : end]
    if not chosen:
        raise UserError(
            f"{origin}: offset {source.offset} skips all {len(records)} records "
            "(expected an offset below the record count)"
        )
    return chosen

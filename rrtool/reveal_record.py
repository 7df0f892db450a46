"""Reveal's record: one generation Reveal kept, its JSON form written and read here only.

Reveal writes them (``REVEAL_PROGRESS``: every generation so far, ``direct``'s resume;
``REVEAL_FORGET`` / ``REVEAL_RETAIN``: the deduplicated forget and retain records; the
instruction search keeps its collected ones in its state in the same form); Release trains
on them and the audit's leakage check reads their contexts. It sits below the phases, as
``examples.py`` does, so that neither phase imports the other.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any

from rrtool.context import RunContext


@dataclass(kw_only=True)  # keyword-only: the JSON keys keep their order
class RevealRecord:
    """One generation: the query it answers (``query_id``, ``split`` forget/retain, entity
    ``type`` for NER, the ``context`` it was built from), the instruction and full prompt the
    model saw, its ``completion`` and token count, the oracle's ``relevance`` (None, with
    ``relevance_error``, when the oracle could not score it), the Vendi ``diversity`` gain of
    its batch (instruction search only), the search position (``outer``, ``inner``) and the
    run's seed."""

    id: str
    query_id: str = ""
    split: str = "forget"
    type: str | None = None
    context: str = ""
    instruction: str = "default"
    prompt: str | list[dict[str, str]]
    completion: str
    tokens: int = 0
    relevance: float | None = None
    relevance_error: str | None = None
    diversity: float | None = None
    outer: int = 0
    inner: int = 0
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RevealRecord:
        """A record from its JSON form; keys this version does not know are ignored (a run
        recorded by a later version still reads)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def read(ctx: RunContext, path: str) -> list[RevealRecord]:
    """The records at ``path`` in the run (none when it was never written)."""
    return [RevealRecord.from_dict(r) for r in ctx.tracker.read_jsonl(path) or []]


def write(ctx: RunContext, records: list[RevealRecord], path: str) -> None:
    ctx.tracker.log_jsonl([r.to_dict() for r in records], path)


def dedupe(records: list[RevealRecord]) -> list[RevealRecord]:
    """The records without repeats of the same (prompt, completion), first kept."""
    seen: set[tuple[str, str]] = set()
    out = []
    for record in records:
        key = (json.dumps(record.prompt), record.completion)
        if key not in seen:
            seen.add(key)
            out.append(record)
    return out

"""Reveal's record: one JSON line per generation, read back as written."""

from __future__ import annotations

import json

from rrtool.reveal_record import RevealRecord, dedupe

# A forget line as the coding spec's run of 2026-12-06 wrote it (before the record was typed),
# its long texts cut.
RECORDED = (
    '{"id": "1@0", "query_id": "1", "split": "forget", "type": null, "context": "Write a '
    'function", "instruction": "write a function that", "prompt": "write a function that\\n\\n'
    'Write a function", "completion": "def f(xs): ...", "tokens": 97, "relevance": 1.0, '
    '"relevance_error": null, "diversity": 0.41, "outer": 0, "inner": 8, "seed": 0}'
)


def test_a_line_recorded_before_the_type_reads_and_writes_back_the_same() -> None:
    data = json.loads(RECORDED)
    record = RevealRecord.from_dict(data)
    assert record.completion == "def f(xs): ..." and record.relevance == 1.0
    assert record.outer == 0 and record.inner == 8 and record.diversity == 0.41
    # Same keys in the same order: files written now read like the old ones.
    assert json.dumps(record.to_dict()) == RECORDED
    # A line from a later version with a key this one does not know still reads.
    assert RevealRecord.from_dict({**data, "new_key": 1}) == record


def test_a_chat_prompt_round_trips_and_repeats_are_dropped_first_kept() -> None:
    chat = [{"role": "user", "content": "Name the people in: Ada met Bob."}]
    a = RevealRecord(id="a", prompt=chat, completion='["Ada"]', split="forget", type="person")
    b = RevealRecord(id="b", prompt=list(chat), completion='["Ada"]', split="forget")
    c = RevealRecord(id="c", prompt=chat, completion='["Bob"]', split="forget")
    assert RevealRecord.from_dict(json.loads(json.dumps(a.to_dict()))) == a
    assert [r.id for r in dedupe([a, b, c])] == ["a", "c"]

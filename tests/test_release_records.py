"""Release's step record: one JSON line per step, read back as written."""

from __future__ import annotations

from rrtool.release.records import STACK_KEYS, StepRecord


def test_an_applied_step_round_trips_and_lists_in_the_stack() -> None:
    record = StepRecord(3, "F1", "forget", 1, weight=3.0, coefficient=-3.0,
                        weight_from="forget_fraction", artifact="release/modules/F1.safetensors",
                        sha256="ab" * 32, s=0.0, u=0.39, s_ci=[0.0, 0.0], u_ci=[0.3, 0.5],
                        seconds=12.5)  # fmt: skip
    line = record.to_dict()
    assert "failed" not in line and line["reverted"] is False
    assert StepRecord.from_dict(line) == record
    entry = record.stack_entry()
    assert tuple(entry) == STACK_KEYS and entry["coefficient"] == -3.0


def test_a_failed_step_keeps_why_and_no_module() -> None:
    record = StepRecord(2, "R1", "retain", 1, failed="no retain examples")
    line = record.to_dict()
    assert line["failed"] == "no retain examples" and line["weight"] is None
    assert not {"artifact", "sha256", "seconds"} & set(line)
    assert StepRecord.from_dict(line) == record
    # A record written by a later version with a key this one does not know still loads.
    assert StepRecord.from_dict({**line, "new_key": 1}) == record

"""What MLflow itself shows of a run: every split and evaluation set a phase read as a dataset
input (name, digest, rows, role), and the audit's before/after answers as an MLflow table."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from rrtool import splits, tracking_inputs
from rrtool.spec_loader import load_spec
from tests.conftest import FAST_SETS, only_run, read_artifact, set_flags, tiny_spec

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RETAIN = {"path": "builtin:ner_passages", "format": "universalner", "offset": 100, "limit": 30}


def _inputs(run: Any) -> dict[str, Any]:
    """name -> (dataset, {tag: value}) of the run's dataset inputs."""
    out = {}
    for found in run.inputs.dataset_inputs:
        assert found.dataset.name not in out, f"{found.dataset.name} recorded twice"
        out[found.dataset.name] = (found.dataset, {t.key: t.value for t in found.tags})
    return out


@pytest.fixture
def finished(invoke, write_spec, tmp_path: Path) -> tuple[Any, Any, Any]:
    """A tiny run through all three phases with retain data and an explicit forget set:
    (client, run, spec)."""
    records = json.loads(
        (Path(__file__).resolve().parents[1] / "rrtool/builtin_data/ner_passages.json").read_text()
    )
    (tmp_path / "held_out.json").write_text(json.dumps(records[200:215]))
    spec_doc = tiny_spec(
        retain={"data": RETAIN},
        audit={"forget_eval": {"path": "held_out.json", "format": "universalner"}},
    )
    path = write_spec(spec_doc)
    result = invoke("run", path, *set_flags(*FAST_SETS))
    assert result.exit_code == 0, result.stderr
    client, run = only_run(tmp_path)
    return client, run, load_spec(str(path), tuple(FAST_SETS)).spec


def test_splits_and_evaluation_sets_are_dataset_inputs(finished) -> None:
    client, run, spec = finished
    contexts, retain = spec.reveal.contexts, spec.retain.data
    expected = {
        # Reveal generates from its split of the contexts; retain modules train on its split
        # of retain.data; the weight search and the audit read theirs.
        "reveal.contexts/reveal": splits.read(contexts, "reveal", spec),
        "retain.data/reveal": splits.read(retain, "reveal", spec),
        "reveal.contexts/search": splits.read(contexts, "search", spec),
        "audit.forget_eval/audit": splits.whole(spec.audit.forget_eval, "audit", contexts),
    }
    found = _inputs(client.get_run(run.info.run_id))
    assert set(found) == set(expected)
    digests = set()
    for name, part in expected.items():
        dataset, tags = found[name]
        assert dataset.digest == tracking_inputs.digest(part.records), name
        profile = json.loads(dataset.profile)
        assert profile["num_rows"] == len(part.records) > 0, name
        assert profile["units"] == part.units and profile["held_out"] == part.held_out
        assert tags["mlflow.data.context"] == part.role == name.rpartition("/")[2]
        assert tags["rrtool.data"] == part.describe()["text"]
        assert dataset.source_type == "local"
        assert Path(json.loads(dataset.source)["uri"]).is_file()
        digests.add(dataset.digest)
    assert len(digests) == len(expected)  # disjoint splits, different digests
    # The splits are disjoint: no passage of the search split is in Reveal's.
    reveal = {r["text"] for r in expected["reveal.contexts/reveal"].records}
    assert not reveal & {r["text"] for r in expected["reveal.contexts/search"].records}

    # Logged again (a resumed run, another suite over the same data): still one input each.
    tracker = _tracker(client, run)
    tracking_inputs.log_parts(tracker, [("reveal.contexts", expected["reveal.contexts/reveal"])])
    assert set(_inputs(client.get_run(run.info.run_id))) == set(expected)


def test_before_and_after_answers_are_an_mlflow_table(finished, tmp_path: Path) -> None:
    client, run, _ = finished
    run_id = run.info.run_id
    before = json.loads(read_artifact(client, run_id, "audit/before.json", tmp_path / "b"))
    after = json.loads(read_artifact(client, run_id, "audit/after.json", tmp_path / "a"))
    table = client.load_table(run.info.experiment_id, "audit/answers_table.json", run_ids=[run_id])
    rows = table.to_dict(orient="records")
    expected = tracking_inputs.answer_rows(before, after)
    forget_answers = before["forget"]["answers"]
    assert len(rows) == len(expected) >= len(forget_answers) > 0
    for got, want in zip(rows, expected, strict=True):
        for column in tracking_inputs.TABLE_COLUMNS:
            if want[column] is None:
                assert got[column] is None or math.isnan(got[column]), column
            else:
                assert got[column] == want[column], column
    # The same prompts, answered by the base model and by the released one.
    by_id = {a["id"]: a for a in after["forget"]["answers"]}
    first = next(r for r in rows if r["measure"] == "forget")
    assert first["prompt"] == forget_answers[0]["prompt"]
    assert first["before"] == forget_answers[0]["completion"]
    assert first["after"] == by_id[forget_answers[0]["id"]]["completion"]
    assert json.loads(first["reference"]) == forget_answers[0]["reference"]

    # A resumed audit writes it once: log_table would append to an existing table.
    tracking_inputs.log_answers_table(_tracker(client, run), before, after)
    again = client.load_table(run.info.experiment_id, "audit/answers_table.json", run_ids=[run_id])
    assert len(again) == len(rows)


def test_a_split_s_digest_is_its_records() -> None:
    records = [{"text": "a", "entities": ["x"]}, {"text": "b", "entities": []}]
    same = [{"entities": ["x"], "text": "a"}, {"entities": [], "text": "b"}]
    assert tracking_inputs.digest(records) == tracking_inputs.digest(same)  # key order
    assert tracking_inputs.digest(records) != tracking_inputs.digest(records[::-1])
    assert tracking_inputs.digest(records) != tracking_inputs.digest(records[:1])
    assert len(tracking_inputs.digest(records)) <= 36  # MLflow's limit


def test_no_tracker_records_nothing(write_spec) -> None:
    """Phase pieces called alone (tests, benchmarks) have no run to record into."""
    spec = load_spec(str(write_spec(tiny_spec()))).spec
    part = splits.read(spec.reveal.contexts, "reveal", spec)
    tracking_inputs.log_parts(None, [("reveal.contexts", part)])
    tracking_inputs.log_answers_table(None, {}, {})


def _tracker(client: Any, run: Any) -> Any:
    from rrtool.tracking import Store, Tracker

    return Tracker(client, run.info.run_id, Store(client.tracking_uri, None, "test"))


def test_a_dataset_row_another_run_inserted_first_is_linked_on_the_next_attempt() -> None:
    """Two runs logging the same dataset at once: the slower insert fails on the unique key;
    log_parts tries again (the row now exists) and re-raises any other store error."""
    import types

    from mlflow.exceptions import MlflowException

    from rrtool import tracking_inputs
    from rrtool.spec import DataSource
    from rrtool.splits import whole

    calls: list[int] = []

    def log_inputs(run_id: str, datasets: list) -> None:
        calls.append(len(datasets))
        if len(calls) == 1:
            raise MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed: datasets")

    client = types.SimpleNamespace(log_inputs=log_inputs)
    tracker = types.SimpleNamespace(client=client, run_id="r")
    part = whole(DataSource(path="builtin:ner_passages", format="universalner"), "audit")
    tracking_inputs.log_parts(tracker, [("audit.forget_eval", part)])  # type: ignore[arg-type]
    assert calls == [1, 1]

    def broken(run_id: str, datasets: list) -> None:
        raise MlflowException("database is locked")

    tracker.client = types.SimpleNamespace(log_inputs=broken)
    with pytest.raises(MlflowException, match="locked"):
        tracking_inputs.log_parts(tracker, [("audit.forget_eval", part)])  # type: ignore[arg-type]

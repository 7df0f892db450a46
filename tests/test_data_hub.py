"""Hub datasets (`hf:NAME`) read through `datasets.load_dataset`.

Nothing outside these machines is reachable, so the tests give `load_dataset` what it
accepts besides a hub id: a local dataset directory (files named by split). The code
path from the spec to the parsers is the one a hub id takes; the offline miss of a real
hub id is tested for its message.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from rrtool.data import load_records
from rrtool.errors import UserError
from rrtool.spec import DataSource
from tests.conftest import tiny_spec


def _dataset(root: Path, split: str, rows: list[dict]) -> str:
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f"hf:{root}"


def test_gsm8k_rows_from_a_dataset_split(tmp_path: Path) -> None:
    rows = [{"question": f"q{i}", "answer": f"a #### {i}"} for i in range(5)]
    path = _dataset(tmp_path / "gsm", "test", rows)
    _dataset(tmp_path / "gsm", "train", [{"question": "other", "answer": "#### 0"}])
    assert load_records(DataSource(path=path, format="gsm8k")) == rows  # default split: test
    train = load_records(DataSource(path=path, format="gsm8k", split="train"))
    assert [r["question"] for r in train] == ["other"]
    assert load_records(DataSource(path=path, format="gsm8k", limit=2)) == rows[:2]


def test_text_rows_become_lines_and_universalner_rows_parse(tmp_path: Path) -> None:
    # WikiText on the hub: one row per line, empty rows included.
    text = [{"text": " = Title = \n"}, {"text": ""}, {"text": "First line.\nSecond line.\n"}]
    records = load_records(
        DataSource(path=_dataset(tmp_path / "wiki", "test", text), format="text")
    )
    assert [r["text"] for r in records] == ["= Title =", "First line.", "Second line."]

    item = {
        "id": "7",
        "conversations": [
            {"from": "human", "value": "Text: Ada met Bob."},
            {"from": "gpt", "value": "I've read this text."},
            {"from": "human", "value": "What describes person in the text?"},
            {"from": "gpt", "value": json.dumps(["Ada", "Bob"])},
        ],
    }
    path = _dataset(tmp_path / "ner", "test", [item])
    assert load_records(DataSource(path=path, format="universalner")) == [
        {"id": "7", "text": "Ada met Bob.", "type": "person", "entities": ["Ada", "Bob"]}
    ]


def test_a_bad_row_is_located_by_split_and_row(tmp_path: Path) -> None:
    rows = [{"question": "q", "answer": "#### 1"}, {"question": "q", "answer": 3}]
    path = _dataset(tmp_path / "gsm", "test", rows)
    with pytest.raises(UserError) as caught:
        load_records(DataSource(path=path, format="gsm8k"))
    assert caught.value.messages[0] == (
        f"{path}[test] row 1: field `answer` is int (expected str in a GSM8K record)"
    )


def test_missing_split_and_unreachable_hub_are_clear(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _dataset(tmp_path / "gsm", "test", [{"question": "q", "answer": "#### 1"}])
    with pytest.raises(UserError) as caught:
        load_records(DataSource(path=path, format="gsm8k", split="validation"))
    message = caught.value.messages[0]
    assert message.startswith(f"{path}: could not load the hub dataset")
    assert "split 'validation'" in message and "validation" in message.split(":", 2)[-1]

    # Offline as a user would set it; the libraries read the variables once, at import.
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    with pytest.raises(UserError) as caught:
        load_records(DataSource(path="hf:rrtool-tests/no-such-dataset", format="gsm8k"))
    assert caught.value.messages[0].startswith(
        "hf:rrtool-tests/no-such-dataset: could not load the hub dataset"
    )


def test_without_the_datasets_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(UserError, match=r"needs the `datasets` package \(pip install"):
        load_records(DataSource(path="hf:openai/gsm8k", format="gsm8k", config="main"))


def test_hub_options_only_with_hub_paths() -> None:
    with pytest.raises(ValueError, match="`split` applies only to hub datasets"):
        DataSource(path="builtin:math_problems", format="gsm8k", split="test")
    with pytest.raises(ValueError, match="names no dataset"):
        DataSource(path="hf:", format="gsm8k")


def test_plan_reads_a_hub_evaluation_set(tmp_path: Path, invoke) -> None:
    import yaml

    rows = [{"question": f"What is {i} + 1?", "answer": f"#### {i + 1}"} for i in range(3)]
    path = _dataset(tmp_path / "gsm", "test", rows)
    spec = tiny_spec(
        target={"kind": "coding", "description": "Writing Python code"},
        oracle={"name": "pass_at_1"},
        reveal={
            "strategy": "direct",
            "contexts": {"path": "builtin:coding_problems", "format": "mbpp"},
        },
        retain={"self_generated": False, "data": {"path": path, "format": "gsm8k"}},
    )
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    result = invoke("plan", tmp_path / "spec.yaml")
    assert result.exit_code == 0, result.output
    assert "3 gsm8k records" in result.output

    spec["retain"]["data"]["split"] = "nope"
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    result = invoke("plan", tmp_path / "spec.yaml")
    assert result.exit_code == 2
    assert "retain.data.path" in result.output and "could not load the hub dataset" in result.output
    assert "Traceback" not in result.output

"""Data loaders: the built-in sets, the public formats, and located errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from rrtool.builtins import BUILTIN_DATA
from rrtool.data import load_records
from rrtool.errors import UserError
from rrtool.spec import DataSource
from tests.conftest import SHARED_DATA


@pytest.mark.parametrize("name", sorted(BUILTIN_DATA))
def test_builtin_sets_load(name: str) -> None:
    records = load_records(DataSource(path=f"builtin:{name}", format=BUILTIN_DATA[name][1]))
    assert len(records) >= 40


@pytest.mark.parametrize("name", ["ner_passages", "ner_styles"])
def test_builtin_ner_has_the_papers_types(name: str) -> None:
    records = load_records(DataSource(path=f"builtin:{name}", format="universalner"))
    assert {r["type"] for r in records} == {"person", "organization", "location", "date", "concept"}
    for record in records:
        for entity in record["entities"]:
            assert entity in record["text"]


def test_the_styles_set_is_what_its_generator_writes_and_names_people_without_titles() -> None:
    """``ner_styles.json`` is ``tools/make_ner_styles.py``'s output (rewritten, not edited by
    hand), and unlike the encyclopedic set most of its people stand without a role title."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "tools" / "make_ner_styles.py"
    spec = importlib.util.spec_from_file_location("make_ner_styles", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    assert json.loads(module.OUT.read_text()) == module.records()

    def titled(name: str) -> float:
        """Share of the set's people right after a capitalised word ("Senator Alma Reyes")."""
        records = load_records(DataSource(path=f"builtin:{name}", format="universalner"))
        people = [(r["text"], e) for r in records if r["type"] == "person" for e in r["entities"]]
        found = [1 for t, e in people if re.search(r"\b[A-Z][a-z]+ " + re.escape(e), t)]
        return len(found) / len(people)

    assert titled("ner_styles") < titled("ner_passages") / 2


def test_limit_takes_the_first_records_and_offset_skips() -> None:
    full = load_records(DataSource(path="builtin:math_problems", format="gsm8k"))
    assert (
        load_records(DataSource(path="builtin:math_problems", format="gsm8k", limit=3)) == full[:3]
    )
    sliced = DataSource(path="builtin:math_problems", format="gsm8k", offset=3, limit=2)
    assert load_records(sliced) == full[3:5]
    assert (
        load_records(DataSource(path="builtin:math_problems", format="gsm8k", offset=3))
        == (full[3:])
    )
    with pytest.raises(UserError, match=f"offset {len(full)} skips all {len(full)} records"):
        load_records(DataSource(path="builtin:math_problems", format="gsm8k", offset=len(full)))


SHARED = [
    ("ner/universalner_CrossNER_politics.json", "universalner", 5200),
    ("ner/universalner_CrossNER_AI.json", "universalner", None),
    ("mbpp/mbpp.jsonl", "mbpp", 974),
    ("mbpp/MbppPlus.jsonl", "mbppplus", 399),
    ("gsm8k/test.jsonl", "gsm8k", 1319),
    ("realtoxicityprompts/toxic.jsonl", "rtp", 1196),
    ("wikitext2/wiki.test.raw.txt", "text", 2891),
]


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data not present")
@pytest.mark.parametrize(("rel", "fmt", "rows"), SHARED, ids=[s[0] for s in SHARED])
def test_public_sets_parse(rel: str, fmt: str, rows: int | None) -> None:
    records = load_records(DataSource(path=str(SHARED_DATA / rel), format=fmt))
    if rows is not None:
        assert len(records) == rows


def _write(tmp_path: Path, text: str, name: str = "d.jsonl") -> str:
    (tmp_path / name).write_text(text)
    return str(tmp_path / name)


@pytest.mark.parametrize(
    ("fmt", "text", "message"),
    [
        ("jsonl", '{"a": 1}\n\n[1, 2]\n', "d.jsonl:3: got a JSON list"),
        ("jsonl", '{"a": 1}\n{"a": \n', "d.jsonl:2: invalid JSON"),
        (
            "mbpp",
            '{"text": "t", "test_list": "assert 1"}\n',
            "field `test_list` is str (expected list",
        ),
        ("rtp", '{"prompt": {"txt": "x"}}\n', "d.jsonl:1: missing `prompt.text`"),
        ("gsm8k", "", "no records"),
        ("universalner", '{"a": 1}', "expected a list"),
        ("universalner", '[{"conversations": [{"value": "Hi"}]}]', "[0]: expected `conversations`"),
    ],
)
def test_malformed_files_are_located(fmt: str, text: str, message: str, tmp_path: Path) -> None:
    name = "d.json" if fmt == "universalner" else "d.jsonl"
    with pytest.raises(UserError) as caught:
        load_records(DataSource(path=_write(tmp_path, text, name), format=fmt))
    assert message in caught.value.messages[0]


def test_universalner_splits_queries(tmp_path: Path) -> None:
    item = {
        "id": "x",
        "conversations": [
            {"from": "human", "value": "Text: Ada met Bob in Paris."},
            {"from": "gpt", "value": "I've read this text."},
            {"from": "human", "value": "What describes person in the text?"},
            {"from": "gpt", "value": json.dumps(["Ada", "Bob"])},
            {"from": "human", "value": "What describes location in the text?"},
            {"from": "gpt", "value": json.dumps(["Paris"])},
        ],
    }
    path = _write(tmp_path, json.dumps([item]), "n.json")
    records = load_records(DataSource(path=path, format="universalner"))
    assert records == [
        {"id": "x", "text": "Ada met Bob in Paris.", "type": "person", "entities": ["Ada", "Bob"]},
        {"id": "x", "text": "Ada met Bob in Paris.", "type": "location", "entities": ["Paris"]},
    ]


def test_directory_and_non_utf8(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="is a directory"):
        load_records(DataSource(path=str(tmp_path), format="text"))
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(UserError, match="not UTF-8"):
        load_records(DataSource(path=str(tmp_path / "bad.txt"), format="text"))

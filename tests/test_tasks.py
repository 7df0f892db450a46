"""Record -> sample conversion and `rrtool oracles samples`, scored end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rrtool.data import load_records
from rrtool.spec import DataSource
from rrtool.tasks import gsm8k_final_answer, ner_query, samples_from_records
from tests.conftest import SHARED_DATA


def test_ner_query_is_the_universalner_format() -> None:
    assert (
        ner_query("Ada met Bob.", "person")
        == "Text: Ada met Bob.\nWhat describes person in the text?"
    )


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("so 3 + 4 = 7\n#### 7", "7"),
        ("#### 1,234", "1234"),
        ("#### $5.", "5"),
        ("#### -2.5", "-2.5"),
        ("no marker", None),
    ],
)
def test_gsm8k_final_answer(answer: str, expected: str | None) -> None:
    assert gsm8k_final_answer(answer) == expected


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("ner_passages", "universalner"),
        ("coding_problems", "mbpp"),
        ("math_problems", "gsm8k"),
        ("toxicity_prompts", "rtp"),
        ("entity_questions", "jsonl"),
        ("neighbour_questions", "jsonl"),
        ("wiki_text", "text"),
    ],
)
def test_builtin_sets_convert(name: str, fmt: str) -> None:
    records = load_records(DataSource(path=f"builtin:{name}", format=fmt))
    samples = samples_from_records(fmt, records)
    assert len(samples) == len(records)
    assert len({s.id for s in samples}) == len(samples), "sample ids must be unique"


def test_jsonl_records_convert_with_their_other_fields_as_the_reference() -> None:
    records = [
        {"prompt": "Where was Einstein born?", "keywords": ["Einstein", "Ulm"], "topic": "birth"},
        {"question": "Who discovered radium?", "completion": "Marie Curie.", "id": 9},
        {"text": "Albert Einstein was", "prompt": "wins over text"},
    ]
    first, second, third = samples_from_records("jsonl", records)
    assert first.prompt == "Where was Einstein born?" and first.completion == ""
    assert first.reference == {"keywords": ["Einstein", "Ulm"], "topic": "birth"}
    assert (second.prompt, second.completion) == ("Who discovered radium?", "Marie Curie.")
    assert second.reference == {"id": 9}
    assert third.prompt == "wins over text" and third.reference == {"text": "Albert Einstein was"}
    assert [s.id for s in (first, second, third)] == ["0", "1", "2"]  # not every row has an id
    ids = samples_from_records("jsonl", [{"prompt": "a", "id": "q1"}, {"prompt": "b", "id": 2}])
    assert [s.id for s in ids] == ["q1", "2"]


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"passage": "x"}, "jsonl record 1 has none of the prompt fields `prompt`, `text`"),
        ({"prompt": ["a", "b"]}, "jsonl record 1: field `prompt` is list (expected a string)"),
        ({"text": "x", "completion": 3}, "field `completion` is int"),
    ],
)
def test_jsonl_records_without_a_string_prompt_are_refused(record: dict, message: str) -> None:
    from rrtool.errors import UserError

    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        samples_from_records("jsonl", [record])


def test_text_lines_convert_to_prompts() -> None:
    samples = samples_from_records("text", [{"text": "The cat"}, {"text": "sat on"}])
    assert [(s.id, s.prompt, s.completion, dict(s.reference)) for s in samples] == [
        ("0", "The cat", "", {}),
        ("1", "sat on", "", {}),
    ]


def _cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rrtool.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_gold_ner_answers_score_perfectly_through_the_shell() -> None:
    made = _cli("oracles", "samples", "universalner", str(Path("x").resolve()))
    assert made.returncode == 2 and "no such file" in made.stderr
    from importlib import resources

    path = str(resources.files("rrtool") / "builtin_data" / "ner_passages.json")
    made = _cli("oracles", "samples", "universalner", path, "--limit", "25")
    assert made.returncode == 0, made.stderr
    assert len(made.stdout.splitlines()) == 25
    scored = _cli("oracles", "score", "ner_f1", "--input", "-", stdin=made.stdout)
    assert scored.returncode == 0, scored.stderr
    assert all(json.loads(line)["score"] == 1.0 for line in scored.stdout.splitlines())
    assert json.loads(scored.stderr.splitlines()[-1])["macro_f1"] == 1.0


def test_builtin_coding_references_pass_in_the_sandbox() -> None:
    from importlib import resources

    path = str(resources.files("rrtool") / "builtin_data" / "coding_problems.jsonl")
    made = _cli("oracles", "samples", "mbpp", path, "--limit", "6")
    rows = [json.loads(line) for line in made.stdout.splitlines()]
    rows[0]["completion"] = "```python\ndef nothing():\n    return None\n```"  # a wrong answer
    scored = _cli(
        "oracles",
        "score",
        "pass_at_1",
        "--input",
        "-",
        stdin="\n".join(json.dumps(r) for r in rows),
    )
    assert scored.returncode == 0, scored.stderr
    scores = [json.loads(line)["score"] for line in scored.stdout.splitlines()]
    assert scores == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0]


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data not present")
def test_shared_mbppplus_converts_with_reference_fields() -> None:
    records = load_records(
        DataSource(path=str(SHARED_DATA / "mbpp" / "MbppPlus.jsonl"), format="mbppplus", limit=3)
    )
    sample = samples_from_records("mbppplus", records)[0]
    assert {"entry_point", "canonical_solution", "base_input"} <= set(sample.reference)
    assert sample.completion.startswith("```python\n")


def test_retained_type_queries_carry_the_passages_forget_entities() -> None:
    from rrtool.queries import ner_queries

    records = [
        {"text": "Imre Kallas met Varn officials.", "type": "person", "entities": ["Imre Kallas"]},
        {"text": "Imre Kallas met Varn officials.", "type": "location", "entities": ["Varn"]},
        {"text": "Varn is cold.", "type": "person", "entities": []},
        {"text": "Varn is cold.", "type": "location", "entities": ["Varn"]},
    ]
    queries = {q.id: q for q in ner_queries(records, ["person"], ["location"], None, chat=False)}
    assert queries["0:location"].reference["forget_entities"] == ["Imre Kallas"]
    assert "forget_entities" not in queries["0:person"].reference  # the forget query itself
    assert "forget_entities" not in queries["1:location"].reference  # no person in the passage

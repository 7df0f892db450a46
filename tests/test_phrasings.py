"""Phrasing families: two disjoint named families per target kind, checked at the boundary,
and the training examples asked in the training family in turn."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from rrtool.examples import Example
from rrtool.phrasings import BUILTIN, STANDARD, problems, resolve
from rrtool.release.phrased import in_turn, render
from rrtool.reveal_record import RevealRecord
from tests.conftest import tiny_spec
from tests.test_spec_errors import located

KINDS = ("ner", "toxicity", "coding", "custom")


@pytest.mark.parametrize("kind", KINDS)
def test_the_builtin_families_are_disjoint_and_fill_in(kind: str) -> None:
    training, held_out = BUILTIN[kind]["training"], BUILTIN[kind]["held_out"]
    assert STANDARD in training and training[STANDARD] is None
    assert not set(training) & set(held_out)
    assert not {t for t in training.values() if t} & set(held_out.values())
    assert len(held_out) >= (5 if kind == "ner" else 3)
    fields = ("{context}", "{type}") if kind == "ner" else ("{context}",)
    for template in [*held_out.values(), *(t for t in training.values() if t)]:
        assert all(f in template for f in fields), template
        filled = template.format(context="CTX", type="person")
        assert "CTX" in filled and "{" not in filled
    assert not problems(kind, list(training), list(held_out))


def test_problems_name_what_is_wrong() -> None:
    def messages(training: list, held_out: list, kind: str = "ner") -> list[str]:
        return [m for _, _, m in problems(kind, training, held_out)]

    assert any("empty" in m for m in messages([STANDARD], []))
    assert any("empty" in m for m in messages([], ["bare"]))
    assert any("lacks {type}" in m for m in messages([STANDARD], [("x", "{context}")]))
    assert not messages([STANDARD], [("x", "{context}")], kind="coding")
    assert any("also in the training family" in m for m in messages(
        [STANDARD, ("mine", "{context} {type}")], [("other", "{context} {type}")]
    ))  # fmt: skip
    found = messages([STANDARD, "bare"], ["few_shot"])
    assert any("`bare`" in m and "built-in held_out phrasing" in m for m in found)
    assert any("named twice" in m for m in messages([STANDARD], ["bare", "bare"]))
    assert any(
        "kind's own prompt" in m
        for m in messages([STANDARD, ("standard", "{context}{type}")], ["bare"])
    )  # noqa: E501


def test_resolve_keeps_order_and_answer_formats() -> None:
    training, held_out = resolve(
        "ner", [STANDARD, "prose_answer", ("mine", "{context}: {type}?")], ["bare", "key_value"]
    )
    assert [p.name for p in training] == [STANDARD, "prose_answer", "mine"]
    assert training[0].standard and training[1].answer_format == "prose"
    assert not training[2].builtin and training[2].template == "{context}: {type}?"
    assert [p.family for p in held_out] == ["held_out", "held_out"]


@pytest.mark.parametrize(
    ("phrasings", "key", "words"),
    [
        ({"held_out": []}, "phrasings.held_out", "empty"),
        ({"training": [STANDARD, "bare"]}, "phrasings.training[1]", "held_out phrasing"),
        ({"held_out": [{"name": "x", "template": "{context}"}]}, "phrasings.held_out[0]",
         "lacks {type}"),
        ({"training": [STANDARD, {"name": "a", "template": "{context} {type}"}],
          "held_out": [{"name": "b", "template": "{context} {type}"}]},
         "phrasings.held_out[0]", "also in the training family"),
        ({"held_out": [{"name": "x", "template": "{context} {type} {foo}"}]},
         "phrasings.held_out[0]", "cannot fill"),
    ],
)  # fmt: skip
def test_bad_phrasings_are_located_spec_errors(
    phrasings: dict, key: str, words: str, write_spec, invoke, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = write_spec(tiny_spec(phrasings=phrasings))
    result = invoke("plan", path)
    assert result.exit_code == 2, result.output
    found = located(result.stderr)
    assert found and found[0]["key"] == key and words in found[0]["what"], result.stderr
    assert "Traceback" not in result.output


def _record(context: str, kind: str, answer: str) -> RevealRecord:
    return RevealRecord(
        id=f"{context}:{kind}", query_id=f"{context}:{kind}", split="retain", type=kind,
        context=context, instruction="default", prompt=[{"role": "user", "content": "q"}],
        completion=answer, tokens=1, relevance=None, relevance_error=None, seed=0,
    )  # fmt: skip


def test_every_type_meets_every_training_phrasing() -> None:
    training, _ = resolve("ner", [STANDARD, "list_instruction", "prose_answer", "dash_lines"],
                          ["bare"])  # fmt: skip
    types = ["organization", "location", "date", "concept"]
    records = [
        _record(f"passage {p}", t, json.dumps([f"{t} {p}"])) for p in range(8) for t in types
    ]
    examples = [Example(r.prompt, r.completion) for r in records]
    out = in_turn(records, examples, training)
    assert len(out) == len(examples)  # the training cost does not change
    seen: dict[str, set[str]] = {t: set() for t in types}
    for record, example in zip(records, out, strict=True):
        if example.prompt == record.prompt:
            seen[record.type].add(STANDARD)
            assert example.completion == record.completion
            continue
        assert record.context in example.prompt and record.type in example.prompt
        name = json.loads(record.completion)[0]
        if example.completion.startswith("["):
            seen[record.type].add("list_instruction")
        elif example.completion.startswith("- "):
            seen[record.type].add("dash_lines")
            assert example.completion == f"- {name}"
        else:
            seen[record.type].add("prose_answer")
            assert name in example.completion
    assert all(len(s) == 4 for s in seen.values()), seen


def test_answers_that_are_not_lists_stay_as_answered() -> None:
    training, _ = resolve("ner", [STANDARD, "prose_answer"], ["bare"])
    records = [_record(f"p{i}", "person", "I am not sure.") for i in range(4)]
    examples = [Example(r.prompt, r.completion) for r in records]
    assert in_turn(records, examples, training) == examples
    assert in_turn(records, examples, training[:1]) == examples
    # A family without the standard phrasing asks every example in its own phrasings.
    lists = [_record(f"p{i}", "person", '["Ada"]') for i in range(2)]
    asked = in_turn(lists, [Example(r.prompt, r.completion) for r in lists], training[1:])
    assert [e.completion for e in asked] == ["The person described is Ada."] * 2


def test_abstentions_answer_nothing_in_the_phrasing_each_example_was_asked_in() -> None:
    """``empty=True`` (``release.rmu.abstain``): the same prompts as the forget examples, each
    answered with nothing of its type in its phrasing's format."""
    training, _ = resolve("ner", [STANDARD, "list_instruction", "prose_answer", "dash_lines"],
                          ["bare"])  # fmt: skip
    records = [_record(f"passage {p}", "person", f'["Name {p}"]') for p in range(8)]
    records.append(_record("passage 9", "person", "I am not sure."))
    examples = [Example(r.prompt, r.completion) for r in records]
    asked, empty = in_turn(records, examples, training), in_turn(records, examples, training, True)
    assert [e.prompt for e in empty] == [e.prompt for e in asked]
    answers = {e.completion for e in empty}
    assert answers == {"[]", "There is no person in the text.", "none"}, answers
    assert empty[-1] == Example(records[-1].prompt, "[]")  # not a list: standard, as asked
    # The standard family alone: every prompt as Reveal asked it, answered [].
    alone = in_turn(records, examples, training[:1], empty=True)
    assert [(e.prompt, e.completion) for e in alone] == [(r.prompt, "[]") for r in records]


def test_render_formats() -> None:
    assert render(["Ada", "Alan"], "person", "json") == '["Ada", "Alan"]'
    assert render(["Ada", "Alan"], "person", "prose") == "The person described is Ada and Alan."
    assert render(["Ada", "Alan"], "person", "bullets") == "- Ada\n- Alan"
    assert render([], "person", "prose") == "There is no person in the text."
    assert render([], "person", "bullets") == "none"


def test_a_spec_yaml_round_trips_its_phrasings(tmp_path: Path) -> None:
    from rrtool.spec_loader import load_spec

    spec = tiny_spec(phrasings={"training": [STANDARD, "dash_lines"],
                                "held_out": ["bare", {"name": "mine", "template": "{type}? {context}"}]})  # fmt: skip
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    loaded = load_spec(path).spec
    training, held_out = loaded.phrasing_families()
    assert [p.name for p in training] == [STANDARD, "dash_lines"]
    assert [p.name for p in held_out] == ["bare", "mine"]
    again = loaded.model_validate(
        loaded.model_dump(mode="json"), context={"base_dir": str(tmp_path)}
    )
    assert again.phrasing_families() == loaded.phrasing_families()


def test_the_weight_search_asks_the_forget_type_in_the_training_family(
    write_spec, tmp_path: Path
) -> None:
    """Release's suite asks each passage's forget query in the training family's phrasings in
    turn (a weight is chosen for forgetting in every way Reveal's examples are asked); the
    audit's suite asks in its one phrasing."""
    import io

    from rich.console import Console

    from rrtool.context import RunContext
    from rrtool.evaluators.suite import EvaluationSuite
    from rrtool.spec_loader import load_spec

    family = ["standard", "list_instruction", "dash_lines"]
    spec = tiny_spec(
        phrasings={"training": family},
        release={"search": {"eval_size": 6}},
    )
    ctx = RunContext(load_spec(write_spec(spec)), None, Console(file=io.StringIO()), tmp_path)  # type: ignore[arg-type]
    search = EvaluationSuite.for_release(ctx)
    marks = [BUILTIN["ner"]["training"][name] for name in family[1:]]

    def phrasing(prompt: Any) -> str:
        text = json.dumps(prompt)
        found = [
            name
            for name, template in zip(family[1:], marks, strict=True)
            if template.split("{")[0].strip() and template.split("{")[0].strip() in text
        ]
        return found[0] if found else "standard"

    asked = [phrasing(item.prompt) for item in search.forget_items]
    assert len(asked) >= 3 and set(asked) == set(family)
    # In turn, by passage: the first three passages take the three phrasings in order.
    assert asked[:3] == family
    assert "utility" in search.measures  # the retained types, asked in the standard phrasing
    audit = EvaluationSuite.for_audit(ctx)
    assert {phrasing(item.prompt) for item in audit.forget_items} == {"standard"}

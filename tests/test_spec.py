"""The spec: example specs, schema, reference docs, overrides, path resolution."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import BaseModel

from rrtool.errors import SpecError
from rrtool.spec import Spec
from rrtool.spec_docs import (
    DEFAULT_TARGET,
    END,
    START,
    reference_block,
    spec_reference,
    update_reference,
)
from rrtool.spec_loader import load_spec
from tests.conftest import REPO, tiny_spec

EXAMPLES = sorted((REPO / "specs").glob("*.yaml"))


def test_the_three_example_specs_exist() -> None:
    assert {p.stem for p in EXAMPLES} >= {"person_ner", "toxicity", "coding"}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_specs_validate(path: Path) -> None:
    spec = load_spec(path).spec
    assert spec.name and spec.target.description


def test_person_ner_is_the_papers_task() -> None:
    spec = load_spec(REPO / "specs" / "person_ner.yaml").spec
    assert spec.target.kind == "ner"
    assert spec.target.forget_types == ["person"]
    assert set(spec.target.retain_types) == {"organization", "location", "date", "concept"}
    assert spec.model.id == "builtin:smollm2-135m-instruct"
    assert spec.tracking.uri is None


def test_coding_spec_forgets_mbpp_and_retains_gsm8k() -> None:
    spec = load_spec(REPO / "specs" / "coding.yaml").spec
    assert spec.reveal.contexts.format == "mbpp"
    assert spec.retain.data is not None and spec.retain.data.format == "gsm8k"


def test_keys_other_components_rely_on_exist() -> None:
    spec = load_spec(REPO / "specs" / "toxicity.yaml").spec
    for value in (
        spec.model.id,
        spec.reveal.strategy,
        spec.reveal.outer_iterations,
        spec.reveal.inner_iterations,
        spec.reveal.top_k,
        spec.reveal.alpha,
        spec.release.iterations,
        spec.release.lora.r,
        spec.splits.audit,
    ):
        assert value is not None
    assert spec.tracking.uri is None


def _all_models(model: type[BaseModel], seen: set[type[BaseModel]]) -> set[type[BaseModel]]:
    seen.add(model)
    for field in model.model_fields.values():
        for arg in (field.annotation, *getattr(field.annotation, "__args__", ())):
            if isinstance(arg, type) and issubclass(arg, BaseModel) and arg not in seen:
                _all_models(arg, seen)
    return seen


def test_every_field_is_documented_and_every_section_forbids_extras() -> None:
    for model in _all_models(Spec, set()):
        assert model.model_config.get("extra") == "forbid", model.__name__
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"


def test_schema_command_prints_the_json_schema(invoke) -> None:
    result = invoke("spec", "schema")
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert schema == Spec.model_json_schema()
    assert schema["additionalProperties"] is False
    assert "release" in schema["properties"]


def test_docs_spec_reference_is_in_sync_with_the_code() -> None:
    doc = (REPO / DEFAULT_TARGET).read_text()
    assert reference_block(doc) == spec_reference(), (
        f"{DEFAULT_TARGET} is stale: run `python -m rrtool.spec_docs` from the repository root"
    )


def test_spec_reference_update_rewrites_only_between_the_markers(tmp_path) -> None:
    doc = tmp_path / "reference.md"
    doc.write_text(f"# Title\n\nprose\n\n{START}\nold table\n{END}\n\nmore prose\n")
    assert update_reference(str(doc)) is True
    text = doc.read_text()
    assert text.startswith("# Title\n\nprose\n\n") and text.endswith(f"{END}\n\nmore prose\n")
    assert reference_block(text) == spec_reference()
    assert update_reference(str(doc)) is False  # already in sync


def test_the_readme_points_at_the_docs_spec_reference() -> None:
    readme = (REPO / "README.md").read_text()
    assert START not in readme  # one generated copy, in docs/
    assert f"]({DEFAULT_TARGET})" in readme


def test_reference_lists_nested_keys_with_defaults(invoke) -> None:
    text = invoke("spec", "reference").stdout
    assert "| `release.lora.r` | int (>= 1, <= 1024) | `8` |" in text
    assert "| `tracking.uri` | str \\| null | `null` |" in text


def test_overrides_are_typed_like_the_field(write_spec) -> None:
    path = write_spec(tiny_spec())
    spec = load_spec(
        path,
        [
            "release.iterations=5",
            "reveal.alpha=0.25",
            "audit.probes.membership=true",
            "target.retain_types=[location, date]",
            "oracle.options.types=[person]",
            "tracking.uri=null",
            "release.lora.target_modules=[q_proj,v_proj]",
        ],
    ).spec
    assert spec.release.iterations == 5
    assert spec.reveal.alpha == 0.25
    assert spec.audit.probes.membership is True
    assert spec.target.retain_types == ["location", "date"]
    assert spec.oracle.options == {"types": ["person"]}
    assert spec.release.lora.target_modules == ["q_proj", "v_proj"]


def test_override_creates_sections_missing_from_the_file(write_spec) -> None:
    spec = load_spec(write_spec(tiny_spec()), ["stopping.patience=2"]).spec
    assert spec.stopping.patience == 2


def test_override_is_validated_like_the_file(write_spec) -> None:
    with pytest.raises(SpecError) as caught:
        load_spec(write_spec(tiny_spec()), ["reveal.alpha=1.5"])
    assert len(caught.value.messages) == 1
    assert "reveal.alpha: got 1.5 (expected a number <= 1.0)" in caught.value.messages[0]
    assert "(--set reveal.alpha=1.5)" in caught.value.messages[0]


def test_relative_data_paths_resolve_against_the_spec_file(tmp_path: Path, write_spec) -> None:
    sub = tmp_path / "project"
    sub.mkdir()
    data = tiny_spec(retain={"data": {"path": "data/r.jsonl", "format": "gsm8k"}})
    spec_path = sub / "spec.yaml"
    spec_path.write_text(json.dumps(data))  # JSON is YAML
    spec = load_spec(spec_path).spec
    assert spec.retain.data is not None
    assert spec.retain.data.path == str(sub / "data" / "r.jsonl")
    assert spec.reveal.contexts.path == "builtin:ner_passages"


@pytest.mark.parametrize(
    ("mutation", "message"),
    [
        ({"release": {"iterations": 2, "weights": {"mus": [0.1]}}}, "weights.mus has 1 entries"),
        ({"retain": {}}, "give retain data"),
        ({"target": {"kind": "ner", "description": "d"}}, "at least one entry in forget_types"),
        (
            {"target": {"kind": "toxicity", "description": "d", "forget_types": ["x"]}},
            "apply only to target.kind `ner`",
        ),
        (
            {
                "target": {
                    "kind": "ner",
                    "description": "d",
                    "forget_types": ["a"],
                    "retain_types": ["a"],
                }
            },
            "both forgotten and retained: a",
        ),
        ({"release": {"search": {"min_weight": 2, "max_weight": 1}}}, "min_weight must be below"),
        (
            {
                "reveal": {
                    "strategy": "direct",
                    "contexts": {"path": "builtin:ner_passages", "format": "jsonl"},
                }
            },
            "is in format `universalner`",
        ),
        ({"model": {"id": "m", "device": "gpu"}}, "expected text matching"),
    ],
)
def test_cross_field_rules(mutation: dict, message: str, write_spec) -> None:
    with pytest.raises(SpecError) as caught:
        load_spec(write_spec(tiny_spec(**mutation)))
    assert any(message in m for m in caught.value.messages), caught.value.messages


def test_effective_iterations_honours_the_stopping_cap(write_spec) -> None:
    spec = load_spec(
        write_spec(tiny_spec(release={"iterations": 4}, stopping={"max_iterations": 2}))
    ).spec
    assert spec.effective_iterations == 2
    spec = load_spec(write_spec(tiny_spec(release={"iterations": 1}))).spec
    assert spec.effective_iterations == 1


def test_numbers_in_exponent_notation_are_numbers(tmp_path: Path) -> None:
    """``1e-3`` is a number in the file and in ``--set`` (PyYAML's YAML 1.1 read it as the
    string "1e-3", and the spec then said "expected a number")."""
    import yaml

    data = tiny_spec(release={"strategy": "rmu", "lora": {"learning_rate": "LR"}})
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data).replace("LR", "1e-3"))
    assert load_spec(path).spec.release.lora.learning_rate == pytest.approx(1e-3)
    loaded = load_spec(path, ["release.rmu.abstain_learning_rate=2E-4", "release.rmu.steering=5e0"])
    assert loaded.spec.release.rmu.abstain_learning_rate == pytest.approx(2e-4)
    assert loaded.spec.release.rmu.steering == pytest.approx(5.0)
    # A name that merely looks numeric stays text.
    assert load_spec(path, ["name=1e-3x"]).spec.name == "1e-3x"

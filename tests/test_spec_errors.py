"""Bad input: each mistake is one located line, exit code 2, no traceback."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import tiny_spec

LOCATED = re.compile(r"^error: (?P<file>[^:]+):(?P<line>\d+): (?P<key>[\w.\[\]]+): (?P<what>.+)$")


def located(output: str) -> list[re.Match[str]]:
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    matches = [LOCATED.match(line) for line in lines]
    assert all(matches), f"unlocated error lines: {lines}"
    return matches  # type: ignore[return-value]


def spec_text(**sections: object) -> str:
    return yaml.safe_dump(tiny_spec(**sections), sort_keys=False)


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


CASES = [
    # (id, spec mutation, key path, needle for the line, words the message must contain)
    (
        "misspelt key",
        lambda s: s.replace("  strategy: direct", "  stratgy: direct"),
        "reveal.stratgy",
        "stratgy",
        ["unknown key", "did you mean `strategy`"],
    ),
    (
        "unknown top key",
        lambda s: s + "relase:\n  iterations: 2\n",
        "relase",
        "relase",
        ["did you mean `release`"],
    ),
    (
        "wrong type",
        lambda s: s + "release:\n  iterations: three\n",
        "release.iterations",
        "iterations: three",
        ["got 'three'", "expected an integer"],
    ),
    (
        "out of range",
        lambda s: s + "release:\n  lora:\n    r: 0\n",
        "release.lora.r",
        "r: 0",
        ["got 0", "expected a number >= 1"],
    ),
    (
        "zero search budget",
        lambda s: s + "release:\n  search:\n    budget: 0\n",
        "release.search.budget",
        "budget: 0",
        ["got 0", ">= 1"],
    ),
    (
        "zero inner iterations",
        lambda s: s.replace("  strategy: direct", "  strategy: direct\n  inner_iterations: 0"),
        "reveal.inner_iterations",
        "inner_iterations: 0",
        ["got 0", ">= 1"],
    ),
    (
        "negative explicit weight",
        lambda s: s + "release:\n  iterations: 2\n  weights:\n    lambdas: [0.5, -0.2]\n",
        "release.weights.lambdas[1]",
        "lambdas:",
        ["got -0.2", ">= 0"],
    ),
    (
        "absurd explicit weight",
        lambda s: s + "release:\n  weights:\n    mu0: 250\n",
        "release.weights.mu0",
        "mu0: 250",
        ["got 250", "<= 100"],
    ),
    (
        "bad choice",
        lambda s: s.replace("strategy: direct", "strategy: neuralucbb"),
        "reveal.strategy",
        "neuralucbb",
        ["expected one of: neuralucb, random, direct", "did you mean `neuralucb`"],
    ),
    (
        "unknown model alias",
        lambda s: s.replace("builtin:tiny-random", "builtin:tiny-randm"),
        "model.id",
        "tiny-randm",
        ["unknown built-in model", "builtin:tiny-random"],
    ),
    (
        "unknown builtin data",
        lambda s: s.replace("builtin:ner_passages", "builtin:ner_pasages"),
        "reveal.contexts.path",
        "ner_pasages",
        ["unknown built-in data set", "builtin:ner_passages"],
    ),
    (
        "a number written as a string is not coerced",
        lambda s: s + 'release:\n  iterations: "3"\n',
        "release.iterations",
        'iterations: "3"',
        ["got '3'", "expected an integer"],
    ),
    (
        "a word for a switch is not coerced",
        lambda s: s + 'audit:\n  probes:\n    relearning: "on"\n',
        "audit.probes.relearning",
        'relearning: "on"',
        ["got 'on'", "expected true or false"],
    ),
    (
        "a number for a switch is not coerced",
        lambda s: s + "audit:\n  probes:\n    membership: 1\n",
        "audit.probes.membership",
        "membership: 1",
        ["expected true or false"],
    ),
    (
        "a check across two keys points at the key, not the section",
        lambda s: s + "release:\n  search:\n    min_weight: 5\n    max_weight: 3\n",
        "release.search.min_weight",
        "min_weight: 5",
        ["min_weight must be below max_weight"],
    ),
    (
        "a check across sections points at the option that needs the other",
        lambda s: s + "release:\n  strategy: npo\n  end_with_retain: true\n",
        "release.end_with_retain",
        "end_with_retain: true",
        ["is an option of release.strategy `iterative`", "got `npo`"],
    ),
    (
        "an option of the iterative schedule on a one-module strategy",
        lambda s: s + "release:\n  strategy: npo\n  schedule: retain_first\n",
        "release.schedule",
        "schedule: retain_first",
        ["is an option of release.strategy `iterative`", "got `npo`"],
    ),
    (
        "another strategy's option",
        lambda s: s + "release:\n  strategy: dpo\n  npo_beta: 0.2\n",
        "release.npo_beta",
        "npo_beta: 0.2",
        ["release.npo_beta is an option of release.strategy `npo`", "got `dpo`"],
    ),
    (
        "a strategy for another target kind",
        lambda s: s + "release:\n  strategy: cmd\n",
        "release.strategy",
        "strategy: cmd",
        ["`cmd` applies to target.kind `toxicity`", "got `ner`"],
    ),
    (
        "missing section key",
        lambda s: s.replace("  description: Recognising Person entities\n", ""),
        "target.description",
        "target:",
        ["missing required key"],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_validation_errors_are_located(case, write_spec, invoke) -> None:
    _, mutate, key, needle, words = case
    text = mutate(spec_text())
    path = write_spec(text)
    result = invoke("plan", path)
    assert result.exit_code == 2
    errors = located(result.stderr)
    assert len(errors) == 1, result.stderr
    error = errors[0]
    assert error["file"] == str(path)
    assert int(error["line"]) == line_of(text, needle)
    assert error["key"] == key
    for word in words:
        assert word in error["what"], error["what"]
    assert "Traceback" not in result.output


def test_several_mistakes_are_all_reported(write_spec, invoke) -> None:
    text = spec_text(release={"iterations": -1, "lora": {"dropout": 2}}, seed="x")
    result = invoke("plan", write_spec(text))
    assert result.exit_code == 2
    keys = {m["key"] for m in located(result.stderr)}
    assert keys == {"seed", "release.iterations", "release.lora.dropout"}


def test_missing_data_file_points_at_the_path_key(write_spec, invoke, tmp_path: Path) -> None:
    text = spec_text(
        reveal={
            "strategy": "direct",
            "contexts": {"path": "nowhere.json", "format": "universalner"},
        }
    )
    result = invoke("plan", write_spec(text))
    assert result.exit_code == 2
    (error,) = located(result.stderr)
    assert error["key"] == "reveal.contexts.path"
    assert int(error["line"]) == line_of(text, "path: nowhere.json")
    assert f"{tmp_path / 'nowhere.json'}: no such file" in error["what"]


def test_unparsable_data_file_names_its_own_line(write_spec, invoke, tmp_path: Path) -> None:
    data = tmp_path / "retain.jsonl"
    data.write_text('{"question": "q", "answer": "#### 1"}\n{"question": oops}\n')
    text = spec_text(retain={"data": {"path": "retain.jsonl", "format": "gsm8k"}})
    result = invoke("plan", write_spec(text))
    assert result.exit_code == 2
    (error,) = located(result.stderr)
    assert error["key"] == "retain.data.path"
    assert f"{data}:2: invalid JSON" in error["what"]


def test_data_file_with_missing_field(write_spec, invoke, tmp_path: Path) -> None:
    (tmp_path / "m.jsonl").write_text('{"question": "q"}\n')
    text = spec_text(retain={"data": {"path": "m.jsonl", "format": "gsm8k"}})
    result = invoke("plan", write_spec(text))
    assert result.exit_code == 2
    assert "m.jsonl:1: missing field `answer`" in result.stderr


def test_unknown_oracle_lists_installed_ones(write_spec, invoke) -> None:
    text = spec_text(oracle={"name": "ner_f2"})
    result = invoke("plan", write_spec(text))
    assert result.exit_code == 2
    (error,) = located(result.stderr)
    assert error["key"] == "oracle.name"
    assert "no oracle plugin named `ner_f2`" in error["what"]
    assert "(did you mean `ner_f1`?)" in error["what"]
    assert "installed: " in error["what"] and "ner_f1" in error["what"]


def test_oracle_options_rejected_by_the_plugin(write_spec, invoke) -> None:
    text = spec_text(oracle={"name": "ner_f1", "options": {"no_such_option": 1}})
    result = invoke("plan", write_spec(text))
    assert result.exit_code == 2
    (error,) = located(result.stderr)
    assert error["key"] == "oracle.options"
    assert "has no option `no_such_option` (accepted: types)" in error["what"]


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("name: x\nmodel: [unclosed\n", 3, ["YAML syntax error"]),
        ("name: x\n  bad: indent\n", 2, ["YAML syntax error"]),
        ("", 1, ["the spec is empty"]),
        ("# only a comment\n", 1, ["the spec is empty"]),
        ("- a\n- b\n", 1, ["top level is a list", "expected a mapping"]),
        ("name: a\nname: b\n", 2, ["duplicate key", "first given on line 1"]),
    ],
    ids=["unclosed", "indent", "empty", "comment-only", "list", "duplicate"],
)
def test_yaml_level_errors(text: str, line: int, words: list[str], write_spec, invoke) -> None:
    path = write_spec(text)
    result = invoke("plan", path)
    assert result.exit_code == 2
    message = result.stderr.strip().splitlines()[0]
    assert message.startswith(f"error: {path}:{line}: "), message
    for word in words:
        assert word in message


def test_yaml_is_loaded_safely(write_spec, invoke, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    text = f"name: !!python/object/apply:os.system ['touch {marker}']\n"
    result = invoke("plan", write_spec(text))
    assert result.exit_code == 2
    assert not marker.exists()
    assert "YAML" in result.stderr


def test_directory_instead_of_file(invoke, tmp_path: Path) -> None:
    result = invoke("plan", tmp_path)
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {tmp_path}: is a directory (expected a YAML spec file)"


def test_missing_spec_file(invoke, tmp_path: Path) -> None:
    result = invoke("plan", tmp_path / "nope.yaml")
    assert result.exit_code == 2
    assert "nope.yaml: no such file" in result.stderr


@pytest.mark.parametrize(
    ("assignment", "words"),
    [
        (
            "release.iteratons=5",
            ["`iteratons` is not a key of release", "did you mean `iterations`"],
        ),
        ("releese.iterations=5", ["`releese` is not a key of the spec", "did you mean `release`"]),
        ("seed.value=1", ["`seed` is a value, not a section"]),
        ("release.iterations", ["expected KEY.PATH=VALUE"]),
        ("release..r=1", ["empty key path"]),
    ],
)
def test_set_on_a_path_that_does_not_exist(assignment, words, write_spec, invoke) -> None:
    result = invoke("plan", write_spec(spec_text()), "--set", assignment)
    assert result.exit_code == 2
    message = result.stderr.strip()
    assert message.startswith(f"error: --set {assignment}: ")
    for word in words:
        assert word in message


def test_set_with_a_bad_value_names_the_flag(write_spec, invoke) -> None:
    path = write_spec(spec_text())
    result = invoke("plan", path, "--set", "release.lora.r=many")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"error: {path} (--set release.lora.r=many): release.lora.r: got 'many' (expected an integer)"
    )


def test_real_process_exit_code_and_no_traceback(write_spec, tmp_path: Path) -> None:
    path = write_spec("name: [\n")
    proc = subprocess.run(
        [sys.executable, "-m", "rrtool.cli", "plan", str(path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"error: {path}:")
    assert proc.stdout == ""


def test_plan_json_is_not_printed_on_error(write_spec, invoke) -> None:
    result = invoke("plan", write_spec(spec_text(seed=-1)), "--json")
    assert result.exit_code == 2
    assert result.stdout == ""
    with pytest.raises(json.JSONDecodeError):
        json.loads(result.stdout)


def test_a_misspelt_utility_name_suggests_the_builtin(write_spec, invoke) -> None:
    text = spec_text(retain={"self_generated": True, "utility": {"name": "perplexty"}})
    result = invoke("plan", write_spec(text))
    assert result.exit_code == 2
    (error,) = located(result.stderr)
    assert error["key"] == "retain.utility.name"
    assert (
        "(did you mean `perplexity`?)" in error["what"] and "built-in: perplexity" in error["what"]
    )


def test_a_resolved_spec_with_every_option_at_its_default_loads_again() -> None:
    """The run records its spec with every key written; options of other strategies are at
    their defaults there and must not read as misplaced (``rrtool attack`` reloads it)."""
    from rrtool.spec import Spec

    data = Spec.model_validate(tiny_spec()).model_dump(mode="json")
    assert "npo_beta" in data["release"] and "schedule" in data["release"]
    for strategy in ("iterative", "npo", "dpo", "single_subtraction"):
        data["release"]["strategy"] = strategy
        assert Spec.model_validate(data).release.strategy == strategy
    data["release"]["npo_beta"] = 0.3  # changed: misplaced for dpo
    data["release"]["strategy"] = "dpo"
    with pytest.raises(ValueError, match="npo_beta is an option of release.strategy `npo`"):
        Spec.model_validate(data)

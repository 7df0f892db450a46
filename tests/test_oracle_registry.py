"""Oracle discovery, `rrtool oracles list/score`, and a real third-party plugin install."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rrtool.errors import UserError
from rrtool.oracles.registry import create_oracle, entry_points, list_oracles
from tests.conftest import REPO, plugin_site

BUILTIN = {"mentions", "ner_f1", "pass_at_1", "perspective", "toxicity"}


def test_builtins_register_through_the_entry_point_group() -> None:
    eps = entry_points()
    assert set(eps) >= BUILTIN
    for name in BUILTIN:
        assert eps[name].group == "rrtool.oracles"
        assert eps[name].dist is not None and eps[name].dist.name == "rrtool"


def test_list_command_shows_name_distribution_description(invoke) -> None:
    result = invoke("oracles", "list")
    assert result.exit_code == 0
    for name in BUILTIN:
        assert name in result.stdout
    assert "rrtool 0." in result.stdout


def test_list_json_says_what_each_oracle_needs(invoke) -> None:
    import json

    result = invoke("oracles", "list", "--json")
    assert result.exit_code == 0, result.output
    listed = {o["name"]: o for o in json.loads(result.stdout)}
    assert set(BUILTIN) <= set(listed)
    assert listed["perspective"]["requires"]["network"] is True
    assert listed["perspective"]["requires"]["api_key_env"] == "PERSPECTIVE_API_KEY"
    assert listed["pass_at_1"]["requires"]["target_kinds"] == ["coding"]
    assert "timeout" in listed["pass_at_1"]["options"] and listed["ner_f1"]["options"] == ["types"]


def test_allow_list_restricts_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RRTOOL_LOAD_PLUGINS", "ner_f1, pass_at_1")
    assert set(entry_points()) == {"ner_f1", "pass_at_1"}
    assert [i.name for i in list_oracles()] == ["ner_f1", "pass_at_1"]
    with pytest.raises(UserError, match=r"installed: ner_f1, pass_at_1\)"):
        create_oracle("toxicity")


def test_bad_options_become_user_errors() -> None:
    # An unknown option is named, with the accepted ones and the closest match.
    with pytest.raises(UserError, match=r"has no option `bogus` \(accepted: types\)"):
        create_oracle("ner_f1", {"bogus": True})
    with pytest.raises(UserError, match=r"no option `timout` \(did you mean `timeout`\?\)"):
        create_oracle("pass_at_1", {"timout": 3})
    # A known option with a bad value is the oracle's own check.
    with pytest.raises(UserError, match="rejected its options: timeout must be a positive"):
        create_oracle("pass_at_1", {"timeout": -1})


def _samples(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "samples.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_score_command_writes_scores_and_aggregate(invoke, tmp_path: Path) -> None:
    path = _samples(
        tmp_path,
        [
            json.dumps(
                {
                    "id": "a",
                    "prompt": "p",
                    "completion": '["Ada Lovelace"]',
                    "reference": {"type": "person", "entities": ["Ada Lovelace"]},
                }
            ),
            json.dumps(
                {
                    "id": 2,
                    "prompt": "p",
                    "completion": "[]",
                    "reference": {"type": "person", "entities": ["Bob"]},
                }
            ),
        ],
    )
    result = invoke("oracles", "score", "ner_f1", "--input", path)
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["id"], r["score"]) for r in rows] == [("a", 1.0), ("2", 0.0)]
    aggregate = json.loads(result.stderr.strip().splitlines()[-1])
    assert aggregate["person/recall"] == 0.5


def test_malformed_sample_lines_are_located(invoke, tmp_path: Path) -> None:
    path = _samples(
        tmp_path,
        [
            json.dumps({"id": "a", "completion": "x"}),
            "{broken",
            json.dumps({"id": "c"}),
            json.dumps([1]),
            json.dumps({"id": "e", "completion": "x", "reference": [1]}),
        ],
    )
    result = invoke("oracles", "score", "ner_f1", "--input", path)
    assert result.exit_code == 2
    assert result.stdout == ""
    errors = result.stderr.strip().splitlines()
    assert [e.split(": ")[1].rsplit(":", 1)[1] for e in errors] == ["2", "3", "4", "5"]
    assert "invalid JSON" in errors[0] and "missing `completion`" in errors[1]
    assert "got a JSON list" in errors[2] and "`reference` must be an object" in errors[3]


def test_score_with_an_unknown_oracle(invoke, tmp_path: Path) -> None:
    path = _samples(tmp_path, [json.dumps({"id": "a", "completion": "x"})])
    result = invoke("oracles", "score", "nope", "--input", path)
    assert result.exit_code == 2
    assert "no oracle plugin named `nope`" in result.stderr


def _rrtool(args: list[str], pythonpath: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "rrtool.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )


@pytest.fixture(scope="module")
def example_plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example third-party plugin, really installed (pip) into a private target dir."""
    target = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(REPO / "plugins" / "example-oracle"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return target


def test_third_party_plugin_is_discovered_and_scores(example_plugin: Path, tmp_path: Path) -> None:
    listed = _rrtool(["oracles", "list"], example_plugin, tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "keywords" in listed.stdout and "rrtool-example-oracle 0.1.0" in listed.stdout
    samples = _samples(
        tmp_path, [json.dumps({"id": "a", "completion": "Project Falcon and Osprey"})]
    )
    scored = _rrtool(
        [
            "oracles",
            "score",
            "keywords",
            "--input",
            str(samples),
            "--option",
            "keywords=[falcon, eagle]",
        ],
        example_plugin,
        tmp_path,
    )
    assert scored.returncode == 0, scored.stderr
    row = json.loads(scored.stdout)
    assert row == {"id": "a", "score": 0.5, "details": {"found": ["falcon"]}}


def test_broken_plugin_is_a_warning_not_a_crash(tmp_path: Path) -> None:
    site = plugin_site(
        tmp_path, "broken", "broken_plugin_mod", "raise ImportError('needs libfoo')\n"
    )
    listed = _rrtool(["oracles", "list"], site, tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "warning: oracle plugin `broken`" in listed.stderr and "needs libfoo" in listed.stderr
    assert "ner_f1" in listed.stdout
    samples = _samples(tmp_path, [json.dumps({"id": "a", "completion": "x"})])
    used = _rrtool(["oracles", "score", "broken", "--input", str(samples)], site, tmp_path)
    assert used.returncode == 2
    assert "failed to import: ImportError: needs libfoo" in used.stderr
    assert "Traceback" not in used.stderr


def test_the_readme_plugin_example_works() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("### Writing an oracle plugin", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own docs
    oracle = namespace["LegalNamesOracle"](names=["Acme", "Globex"])
    from rrtool.oracles.contract import Sample

    samples = [Sample("a", "p", "Acme and GLOBEX merged"), Sample("b", "p", "nothing")]
    scores = oracle.score(samples)
    assert [s.score for s in scores] == [1.0, 0.0]
    assert oracle.aggregate(samples, scores) == {"mean": 0.5}
    with pytest.raises(ValueError):
        namespace["LegalNamesOracle"]()


def test_a_plugin_written_before_target_kinds_plans_as_the_forget_oracle(
    example_plugin: Path, tmp_path: Path
) -> None:
    """The example plugin's requirements predate `target_kinds` (duck-typed, no rrtool
    import): the plan reads them as "any kind" instead of failing with an AttributeError."""
    from tests.conftest import tiny_spec

    spec = tiny_spec(
        target={"kind": "custom", "description": "Mentions of a code name"},
        oracle={"name": "keywords", "options": {"keywords": ["falcon"]}},
        reveal={"strategy": "direct",
                "contexts": {"path": "builtin:toxicity_prompts", "format": "rtp"}},
        retain={"data": {"path": "builtin:wiki_text", "format": "text"},
                "utility": {"name": "perplexity"}},
    )  # fmt: skip
    path = tmp_path / "spec.yaml"
    path.write_text(json.dumps(spec))
    planned = _rrtool(["plan", str(path)], example_plugin, tmp_path)
    assert "AttributeError" not in planned.stderr and "Traceback" not in planned.stderr
    assert planned.returncode == 0, planned.stderr

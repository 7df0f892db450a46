"""`rrtool run` records the job in a real MLflow store."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from rrtool.tracking import Store, flatten, resolve_store
from tests.conftest import only_run, read_artifact, tiny_spec

# Keep runs short: 2 passages' worth of built-in NER records, 4 new tokens per answer.
FAST = (
    *("--set", "reveal.contexts.limit=25", "--set", "reveal.generation.max_new_tokens=4"),
    *("--set", "release.search.budget=2", "--set", "release.search.eval_size=2"),
    *("--set", "release.lora.epochs=1", "--set", "audit.eval_size=2"),
)


def test_run_records_spec_plan_versions_and_status(invoke, write_spec, tmp_path: Path) -> None:
    spec_path = write_spec(tiny_spec())
    result = invoke("run", spec_path, "--set", "release.iterations=1", *FAST)
    assert result.exit_code == 0, result.stderr
    assert "macro_mention_rate (lower is better; change" in result.stderr
    assert "split `audit`" in result.stderr and "held-out" in result.stderr
    assert (tmp_path / "mlflow.db").exists() and (tmp_path / "mlruns").is_dir()

    client, run = only_run(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "tiny"
    assert run.data.tags["rrtool.status"] == "finished"
    assert all(run.data.tags[f"rrtool.phase.{p}"] == "done" for p in ("reveal", "release", "audit"))
    assert "rrtool.stop_reason" not in run.data.tags
    assert run.data.tags["rrtool.spec"] == "tiny"
    assert run.data.params["release.iterations"] == "1"
    assert run.data.params["model.id"] == "builtin:tiny-random"
    assert run.data.params["target.forget_types"] == '["person"]'

    down = tmp_path / "down"
    down.mkdir()
    resolved = yaml.safe_load(read_artifact(client, run.info.run_id, "spec/resolved.yaml", down))
    assert resolved["release"]["iterations"] == 1  # the override, not the file's default
    assert resolved["release"]["lora"]["r"] == 8  # defaults are spelled out
    as_written = json.loads(read_artifact(client, run.info.run_id, "spec/as_written.json", down))
    assert as_written["release"]["iterations"] == 1 and "weights" not in as_written["release"]
    assert as_written["reveal"]["contexts"]["limit"] == 25
    plan = json.loads(read_artifact(client, run.info.run_id, "plan.json", down))
    assert [p["name"] for p in plan["phases"]] == ["reveal", "release", "audit"]
    env = json.loads(read_artifact(client, run.info.run_id, "environment.json", down))
    assert env["rrtool"] and env["torch"].startswith("2.")
    model = json.loads(read_artifact(client, run.info.run_id, "model.json", down))
    assert model["parameters"] == 37_456 and model["dtype"] == "float32"


def test_git_sha_is_recorded_when_running_from_a_checkout(
    invoke, write_spec, tmp_path: Path
) -> None:
    from rrtool.tracking import git_sha

    sha = git_sha()
    if sha is None:
        pytest.skip("rrtool is not running from a git checkout here")
    assert invoke("run", write_spec(tiny_spec()), *FAST).exit_code == 0
    _, run = only_run(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert run.data.tags["rrtool.git_sha"] == sha
    assert run.data.tags["mlflow.source.git.commit"] == sha.removesuffix("-dirty")


def test_run_goes_to_the_spec_tracking_uri(invoke, write_spec, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'elsewhere' / 'store.db'}"
    (tmp_path / "elsewhere").mkdir()
    spec = tiny_spec(tracking={"uri": uri, "experiment": "team-x", "run_name": "first"})
    assert invoke("run", write_spec(spec), *FAST).exit_code == 0
    assert not (tmp_path / "mlflow.db").exists()
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("team-x").experiment_id])
    assert [r.info.run_name for r in runs] == ["first"]
    # artifacts next to the database, not in ./mlruns of wherever the run was started
    assert not (tmp_path / "mlruns").exists()
    assert (tmp_path / "elsewhere" / "mlruns").is_dir()


def test_bad_spec_records_nothing(invoke, write_spec, tmp_path: Path) -> None:
    result = invoke("run", write_spec(tiny_spec(seed=-3)))
    assert result.exit_code == 2
    assert not (tmp_path / "mlflow.db").exists()


def test_store_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert resolve_store("file:///flag", "file:///spec").origin == "--tracking-uri"
    assert resolve_store(None, "file:///spec") == Store("file:///spec", None, "spec")
    assert resolve_store(None, None).uri == "http://127.0.0.1:1"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    store = resolve_store(None, None, cwd=tmp_path)
    assert store == Store(
        f"sqlite:///{tmp_path / 'mlflow.db'}", (tmp_path / "mlruns").as_uri(), "embedded default"
    )


def test_flatten_spells_nested_keys() -> None:
    assert flatten({"a": {"b": 1, "c": [1, "x"], "d": None}, "e": "s"}) == {
        "a.b": "1",
        "a.c": '[1, "x"]',
        "a.d": "null",
        "e": "s",
    }


def test_no_secret_env_reaches_params(invoke, write_spec, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PERSPECTIVE_API_KEY", "sk-test-secret-value")
    assert invoke("run", write_spec(tiny_spec()), *FAST).exit_code == 0
    _, run = only_run(f"sqlite:///{tmp_path / 'mlflow.db'}")
    blob = json.dumps([run.data.params, run.data.tags])
    assert "sk-test-secret-value" not in blob
    for root, _, files in os.walk(tmp_path / "mlruns"):
        for name in files:
            assert b"sk-test-secret-value" not in (Path(root) / name).read_bytes()

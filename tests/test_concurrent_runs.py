"""Two `rrtool run` processes on one (new) embedded store at the same time.

Before the store lock, the second process died creating the database ("duplicate column
name" from MLflow's migrations running twice).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import FAST_SETS, read_artifact, read_jsonl, set_flags, tiny_spec


def test_two_runs_at_once_on_a_new_store(tmp_path: Path) -> None:
    names = ("first", "second")
    processes = []
    for name in names:
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(tiny_spec(name=name)))
        command = [sys.executable, "-m", "rrtool", "run", f"{name}.yaml"]
        processes.append(
            subprocess.Popen(
                [*command, *set_flags(*FAST_SETS)],
                cwd=tmp_path,
                env=os.environ | {"OMP_NUM_THREADS": "1"},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )  # fmt: skip
        )
    for process in processes:
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr
        assert "Traceback" not in stderr

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiments = client.search_experiments()
    assert [e.name for e in experiments if e.name == "rrtool"] == ["rrtool"]  # created once
    runs = client.search_runs([e.experiment_id for e in experiments])
    assert sorted(r.data.tags["rrtool.spec"] for r in runs) == sorted(names)
    for run in runs:
        assert run.info.status == "FINISHED" and run.data.tags["rrtool.status"] == "finished"
        # Each run holds its own records, once: its spec, its forget data, one audit.
        tmp = tmp_path / run.info.run_id
        spec = yaml.safe_load(read_artifact(client, run.info.run_id, "spec/resolved.yaml", tmp))
        assert spec["name"] == run.data.tags["rrtool.spec"]
        assert len(client.get_metric_history(run.info.run_id, "phase/audit/seconds")) == 1
        assert read_jsonl(client, run.info.run_id, "reveal/forget.jsonl", tmp)

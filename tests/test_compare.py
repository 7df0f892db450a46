"""`rrtool compare`: two runs side by side, from the store alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import tiny_spec

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = [
    *("--set", "reveal.contexts.limit=25", "--set", "reveal.generation.max_new_tokens=4"),
    *("--set", "release.search.budget=2", "--set", "release.search.eval_size=2"),
    *("--set", "release.lora.epochs=1", "--set", "audit.eval_size=2"),
]


def test_compare_two_runs(invoke, write_spec, tmp_path: Path) -> None:
    spec = write_spec(tiny_spec())
    assert invoke("run", spec, *FAST, "--set", "release.iterations=1").exit_code == 0
    assert invoke("run", spec, *FAST, "--set", "release.iterations=0").exit_code == 0
    runs = json.loads(invoke("runs", "--json").stdout)
    ids = [r["id"] for r in runs]
    result = invoke("compare", *ids, "--report", "json")  # a file, as `rrtool audit` writes
    assert result.exit_code == 0, result.stderr
    written = tmp_path / f"compare-{ids[0][:8]}-{ids[1][:8]}.json"
    assert f"comparison written to {written.name}" in result.stderr and result.stdout == ""
    data = json.loads(written.read_text())
    assert [r["id"] for r in data["runs"]] == ids
    newest, oldest = data["runs"]
    assert len(oldest["weights"]) == 3 and len(newest["weights"]) == 1  # F0 only
    assert oldest["headlines"]["forget"]["metric"] == "macro_mention_rate"
    assert "forget/person/f1" in newest["metrics"]
    md = invoke("compare", ids[0][:8], ids[1][:8], "--report", "md", "--out", "-")
    assert md.exit_code == 0 and "| forget (headline) |" in md.stdout
    # The headline cell carries the recorded verdict (with the reason, where the measure cannot
    # show its change) and the data's held-out label.
    from rrtool.audit.verdict import shown

    assert f"): {shown(oldest['headlines']['forget'])}; held-out |" in md.stdout
    table = invoke("compare", *ids)
    assert table.exit_code == 0 and "weights applied" in table.stdout
    one = invoke("compare", ids[0])
    assert one.exit_code == 2 and "at least two runs" in one.stderr

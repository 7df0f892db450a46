"""``rrtool export RUN --out DIR``: the released model as a standard transformers checkpoint.

Read from the MLflow store alone: the run's resolved spec names the base model, its
``release/state.json`` the applied stack. The base weights are loaded fresh and the stack is
replayed through fp32 masters (``rebuild``), the same operations in the same order as during
the run, so the exported weights are the run's final weights bit for bit. ``rrtool_export.json``
next to the weights records where they came from (run, base model, every module's sha256 and
signed weight).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from rrtool.artifacts import SPEC_RESOLVED
from rrtool.errors import UserError
from rrtool.tracking import Store, Tracker

MANIFEST = "rrtool_export.json"


def export_run(store: Store, ref: str | None, out: Path, *, force: bool = False) -> dict[str, Any]:
    """Write the released model of run ``ref`` (default: the latest run) to ``out``."""
    from rrtool.audit.collect import find_run
    from rrtool.models import load_model
    from rrtool.release.stack import apply_stack, load_stack, read_state
    from rrtool.spec import ModelSpec

    if out.exists() and any(out.iterdir()) and not force:
        raise UserError(f"{out}: exists and is not empty (choose another --out, or --force)")
    client, run = find_run(store, ref)
    tracker = Tracker(client, run.info.run_id, store)
    spec_text = tracker.read_text(SPEC_RESOLVED)
    if spec_text is None:
        raise UserError(f"run {run.info.run_id} has no recorded spec (not an rrtool run?)")
    import yaml

    model_spec = ModelSpec.model_validate(yaml.safe_load(spec_text)["model"])
    state = read_state(tracker)
    if state is None:
        raise UserError(
            f"run {run.info.run_id} has no Release state (release/state.json): run Release "
            "first (`rrtool run SPEC --resume`)"
        )
    if run.data.tags.get("rrtool.phase.release") != "done":
        raise UserError(
            f"run {run.info.run_id}: Release did not finish; exporting now would give a model "
            "that is not the run's result (finish it with `rrtool run SPEC --resume`)"
        )
    handle = load_model(model_spec.model_copy(update={"device": "cpu"}))
    with tempfile.TemporaryDirectory() as tmp:
        stack = load_stack(tracker, Path(tmp))
    apply_stack(handle.model, stack)
    out.mkdir(parents=True, exist_ok=True)
    handle.model.save_pretrained(out, safe_serialization=True)
    handle.tokenizer.save_pretrained(out)
    manifest = {
        "run_id": run.info.run_id,
        "store": store.uri,
        "base_model": model_spec.id,
        "dtype": str(next(handle.model.parameters()).dtype).removeprefix("torch."),
        "stack": [
            {k: entry[k] for k in ("module", "kind", "coefficient", "sha256", "artifact")}
            for entry in state["stack"]
        ],
        "stop_reason": state.get("stop_reason"),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest

"""The applied module stack of a run, as recorded in MLflow, and how to put it on a model.

``release/state.json`` lists the applied modules in order (artifact path, sha256, signed
coefficient); the modules themselves are ``release/modules/*.safetensors``. Export, the audit
and a resumed Release all rebuild the released model the same way: fresh base weights plus
``rebuild(base, stack)``, which is bit-identical to the weights the run ended with.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from rrtool.artifacts import RELEASE_STATE
from rrtool.errors import UserError
from rrtool.release.compose import MasterWeights, rebuild
from rrtool.release.lora import LoraModule
from rrtool.tracking import Tracker


def read_state(tracker: Tracker) -> dict[str, Any] | None:
    text = tracker.read_text(RELEASE_STATE)
    return None if text is None else json.loads(text)


def download_module(tracker: Tracker, entry: dict[str, Any], target: Path) -> LoraModule:
    """One recorded module (and its sidecar), checked against the sha256 in the state."""
    client, run_id = tracker.client, tracker.run_id
    local = client.download_artifacts(run_id, entry["artifact"], str(target))
    client.download_artifacts(
        run_id, entry["artifact"].replace(".safetensors", ".json"), str(target)
    )
    module = LoraModule.load(local)
    if module.sha256() != entry["sha256"]:
        raise UserError(f"release: {entry['artifact']} does not match the recorded sha256")
    return module


def load_stack(tracker: Tracker, scratch: Path) -> list[tuple[LoraModule, float]]:
    """The run's applied (module, signed coefficient) pairs, in order; empty without Release."""
    state = read_state(tracker)
    if state is None:
        return []
    return [
        (download_module(tracker, entry, scratch), float(entry["coefficient"]))
        for entry in state["stack"]
    ]


def apply_stack(model: nn.Module, stack: list[tuple[LoraModule, float]]) -> MasterWeights | None:
    """Put the stack onto ``model`` (which must hold the base weights)."""
    return rebuild(model, stack) if stack else None

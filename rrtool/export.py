"""``rrtool export RUN --out DIR``: the released model as a standard transformers checkpoint,
or (``--format peft``) as one PEFT LoRA adapter on the base model.

Read from the MLflow store alone: the run's resolved spec names the base model, its
``release/state.json`` the applied stack. ``merged`` (the default): the base weights are loaded
fresh and the stack is replayed through fp32 masters (``rebuild``), the same operations in the
same order as during the run, so the exported weights are the run's final weights bit for bit.
``peft``: the applied modules are LoRAs with signed weights c_i, so the whole stack is exactly
one LoRA of rank R = sum(r_i),

    sum_i c_i (alpha_i / r_i) B_i A_i = [c_1 s_1 B_1 | ... | c_n s_n B_n] @ [A_1; ...; A_n]

(s_i = alpha_i / r_i), written with ``lora_alpha = R`` (scale 1) for every Linear any module
targets; a module that does not target a Linear contributes zero rows and columns there. Loaded
on the base (``PeftModel.from_pretrained``) it gives the run's weights up to float rounding
(the sum is formed in a different order). ``rrtool_export.json`` next to the weights records
where they came from (run, base model, every module's sha256 and signed weight).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from rrtool.artifacts import RELEASE_MODULES, SPEC_RESOLVED
from rrtool.errors import UserError
from rrtool.tracking import Store, Tracker

MANIFEST = "rrtool_export.json"
FORMATS = ("merged", "peft")
PEFT_WEIGHTS = "adapter_model.safetensors"
_PEFT_PREFIX = "base_model.model."  # PEFT's key prefix in a saved adapter (no adapter name)
_LORA_KINDS = ("forget", "retain")  # the kinds of step whose module is a LoRA


def export_run(
    store: Store, ref: str | None, out: Path, *, force: bool = False, fmt: str = "merged"
) -> dict[str, Any]:
    """Write the released model of run ``ref`` (default: the latest run) to ``out``, as a
    merged checkpoint or (``fmt="peft"``) as one PEFT LoRA adapter."""
    if fmt not in FORMATS:
        raise UserError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    if out.exists() and any(out.iterdir()) and not force:
        raise UserError(f"{out}: exists and is not empty (choose another --out, or --force)")
    run, tracker, model_spec, state = _released_run(store, ref)
    manifest: dict[str, Any] = {
        "run_id": run.info.run_id,
        "store": store.uri,
        "base_model": model_spec.id,
        "format": fmt,
    }
    if fmt == "peft":
        manifest |= _write_peft(tracker, model_spec, state, out)
    else:
        manifest |= _write_merged(tracker, model_spec, out)
    manifest |= {
        "stack": [
            {k: entry[k] for k in ("module", "kind", "coefficient", "sha256", "artifact")}
            for entry in state["stack"]
        ],
        "stop_reason": state.get("stop_reason"),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _released_run(store: Store, ref: str | None) -> tuple[Any, Tracker, Any, dict[str, Any]]:
    """(run, tracker, model spec, release state) of a run whose Release finished."""
    import yaml

    from rrtool.audit.collect import find_run
    from rrtool.release.stack import read_state
    from rrtool.spec import ModelSpec

    client, run = find_run(store, ref)
    tracker = Tracker(client, run.info.run_id, store)
    spec_text = tracker.read_text(SPEC_RESOLVED)
    if spec_text is None:
        raise UserError(f"run {run.info.run_id} has no recorded spec (not an rrtool run?)")
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
    return run, tracker, model_spec, state


def _write_merged(tracker: Tracker, model_spec: Any, out: Path) -> dict[str, Any]:
    """The base model with the stack applied, as a transformers checkpoint."""
    from rrtool.models import load_model
    from rrtool.release.stack import apply_stack, load_stack

    handle = load_model(model_spec.model_copy(update={"device": "cpu"}))
    with tempfile.TemporaryDirectory() as tmp:
        stack = load_stack(tracker, Path(tmp))
    apply_stack(handle.model, stack)
    out.mkdir(parents=True, exist_ok=True)
    handle.model.save_pretrained(out, safe_serialization=True)
    handle.tokenizer.save_pretrained(out)
    return {"dtype": str(next(handle.model.parameters()).dtype).removeprefix("torch.")}


# ------------------------------------------------------------------------------ peft
def _not_a_lora(run_id: str, why: str) -> UserError:
    return UserError(
        f"run {run_id}: {why}, so the released model is not a sum of LoRAs and one PEFT "
        "adapter cannot hold it: export the merged checkpoint instead (--format merged, the "
        "default)"
    )


def _check_lora_stack(run_id: str, state: dict[str, Any]) -> None:
    """Refuse a stack holding anything but LoRA modules, and an empty one."""
    if not state["stack"]:
        raise UserError(
            f"run {run_id}: Release applied no module (stop reason: "
            f"{state.get('stop_reason') or 'none recorded'}): the released model is the base "
            "model itself and there is no adapter to write (--format merged writes the model)"
        )
    for entry in state["stack"]:
        artifact = str(entry.get("artifact") or "")
        if entry.get("kind") not in _LORA_KINDS or not (
            artifact.startswith(f"{RELEASE_MODULES}/") and artifact.endswith(".safetensors")
        ):
            raise _not_a_lora(
                run_id,
                f"step {entry.get('module')!r} ({entry.get('kind')}) applied "
                f"{artifact or 'no module file'}, not a LoRA module",
            )


def lora_sum(stack: list[tuple[Any, float]]) -> tuple[dict[str, Any], dict[str, Any], int]:
    """(A, B, R): per targeted Linear, the stacked A (R x in) and B (out x R) whose product is
    the stack's whole update sum_i c_i (alpha_i/r_i) B_i A_i, with R = sum(r_i); a module that
    does not target a Linear contributes zero rows of A and columns of B there. Raises
    ``ValueError`` when two modules disagree on a Linear's shape."""
    import torch

    shapes: dict[str, tuple[int, int]] = {}  # name -> (out, in), in targeting order
    for module, _ in stack:
        for name in module.names:
            shape = (module.B[name].shape[0], module.A[name].shape[1])
            if shapes.setdefault(name, shape) != shape:
                raise ValueError(f"{name}: modules disagree on its shape ({shapes[name]}, {shape})")
    A: dict[str, Any] = {}
    B: dict[str, Any] = {}
    for name, (fan_out, fan_in) in shapes.items():
        a_parts, b_parts = [], []
        for module, coefficient in stack:
            if name in module.A:
                a_parts.append(module.A[name])
                b_parts.append(module.B[name] * (float(coefficient) * module.scale))
            else:
                a_parts.append(torch.zeros(module.r, fan_in))
                b_parts.append(torch.zeros(fan_out, module.r))
        A[name] = torch.cat(a_parts, dim=0).contiguous()
        B[name] = torch.cat(b_parts, dim=1).contiguous()
    return A, B, sum(module.r for module, _ in stack)


def _write_peft(
    tracker: Tracker, model_spec: Any, state: dict[str, Any], out: Path
) -> dict[str, Any]:
    """The stack as one PEFT LoRA adapter (``adapter_config.json`` + ``adapter_model.
    safetensors``) for ``PeftModel.from_pretrained(base, out)``."""
    from peft import LoraConfig
    from safetensors.torch import save_file

    from rrtool.release.stack import load_stack

    _check_lora_stack(tracker.run_id, state)
    with tempfile.TemporaryDirectory() as tmp:
        stack = load_stack(tracker, Path(tmp))
    try:
        A, B, rank = lora_sum(stack)
    except ValueError as exc:
        raise _not_a_lora(tracker.run_id, str(exc)) from None
    tensors = {f"{_PEFT_PREFIX}{name}.lora_A.weight": A[name] for name in A}
    tensors |= {f"{_PEFT_PREFIX}{name}.lora_B.weight": B[name] for name in B}
    config = LoraConfig(
        r=rank,
        lora_alpha=rank,  # scale 1: B carries each module's signed weight and alpha / r
        target_modules=list(A),  # the qualified names: exactly the Linears the stack changed
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
        base_model_name_or_path=model_spec.id,
        revision=model_spec.revision,
    )
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(out))
    save_file(tensors, str(out / PEFT_WEIGHTS), metadata={"format": "pt"})
    return {"dtype": "float32", "rank": rank, "target_modules": list(A)}

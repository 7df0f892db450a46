"""`rrtool export --format peft`: the released stack as one PEFT LoRA adapter, which loaded on
the base model gives the merged export's weights and logits up to float rounding."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from rrtool.export import lora_sum
from rrtool.release.compose import rebuild
from rrtool.release.lora import LoraModule
from tests.conftest import FAST_SETS, only_run, set_flags, tiny_spec

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOLERANCE = 1e-5  # max |diff| against max |value| of the tensor compared
INPUTS = [[1, 17, 230, 5, 99, 4], [3, 800, 12, 12, 640, 2]]


def _base() -> Any:
    from rrtool.models import load_model
    from rrtool.spec import ModelSpec

    return load_model(ModelSpec(id="builtin:tiny-random", device="cpu")).model


def _close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    diff = float((actual.double() - expected.double()).abs().max())
    scale = float(expected.double().abs().max())
    assert diff <= TOLERANCE * scale, f"{what}: max |diff| {diff:.3g} > {TOLERANCE} x {scale:.3g}"


def _logits(model: Any) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor(INPUTS)).logits


def _recorded_run(invoke, write_spec, tmp_path: Path, strategy: str) -> tuple[str, str]:
    """(tracking URI, run id) of a tiny run through Release."""
    spec = tiny_spec()
    spec["release"] = {"strategy": strategy}
    result = invoke("run", write_spec(spec), "--phase", "release", *set_flags(*FAST_SETS))
    assert result.exit_code == 0, result.stderr
    _, run = only_run(tmp_path)
    return f"sqlite:///{tmp_path / 'mlflow.db'}", run.info.run_id


@pytest.mark.parametrize("strategy", ["iterative", "ext_sub"])
def test_peft_adapter_equals_the_merged_export(
    invoke, write_spec, tmp_path: Path, strategy: str
) -> None:
    """iterative: forget and retain modules of one rank with signed weights; ext_sub: an
    expert of rank r and a deficiency of rank 2r (scale 1)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    uri, run_id = _recorded_run(invoke, write_spec, tmp_path, strategy)
    merged_dir, peft_dir = tmp_path / "merged", tmp_path / "adapter"
    result = invoke("export", run_id, "--out", merged_dir, "--tracking-uri", uri)
    assert result.exit_code == 0, result.stderr
    result = invoke("export", run_id, "--out", peft_dir, "--format", "peft", "--tracking-uri", uri)
    assert result.exit_code == 0, result.stderr
    assert "LoRA adapter of rank" in result.stderr

    manifest = json.loads((peft_dir / "rrtool_export.json").read_text())
    assert manifest["run_id"] == run_id and manifest["format"] == "peft" and manifest["stack"]
    config = json.loads((peft_dir / "adapter_config.json").read_text())
    sidecars = [_sidecar(uri, run_id, e["artifact"], tmp_path) for e in manifest["stack"]]
    assert config["r"] == config["lora_alpha"] == sum(s["r"] for s in sidecars)
    if strategy == "ext_sub":
        assert sorted({s["r"] for s in sidecars}) == [sidecars[0]["r"], 2 * sidecars[0]["r"]]
    assert set(config["target_modules"]) == {n for s in sidecars for n in s["names"]}
    assert config["base_model_name_or_path"] == "builtin:tiny-random"
    assert config["peft_type"] == "LORA"

    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    base = _base()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    adapted = PeftModel.from_pretrained(base, peft_dir).eval()
    _close(_logits(adapted), _logits(merged), "logits, adapter unmerged")
    weights = adapted.merge_and_unload().state_dict()
    expected = merged.state_dict()
    changed = 0
    for key, value in weights.items():
        _close(value, expected[key], key)
        changed += not torch.equal(value, before[key])
    assert changed == len(config["target_modules"])  # the adapter does change the model


def _sidecar(uri: str, run_id: str, artifact: str, tmp: Path) -> dict[str, Any]:
    from mlflow.tracking import MlflowClient

    path = MlflowClient(tracking_uri=uri).download_artifacts(
        run_id, artifact.replace(".safetensors", ".json"), str(tmp / "sidecars")
    )
    return json.loads(Path(path).read_text())


def _module(seed: int, names: dict[str, tuple[int, int]], r: int, alpha: float) -> LoraModule:
    gen = torch.Generator().manual_seed(seed)
    return LoraModule(
        A={n: torch.randn(r, fan_in, generator=gen) * 0.1 for n, (_, fan_in) in names.items()},
        B={n: torch.randn(out, r, generator=gen) * 0.1 for n, (out, _) in names.items()},
        r=r,
        alpha=alpha,
        target_modules=[n.rpartition(".")[2] for n in names],
        kind="forget",
    )


def test_modules_on_different_layers_and_ranks(tmp_path: Path) -> None:
    """A Linear one module does not target gets zeros from it; ranks and scales differ."""
    from peft import LoraConfig, PeftModel
    from safetensors.torch import save_file

    q0, q1, down1 = (
        "model.layers.0.self_attn.q_proj",
        "model.layers.1.self_attn.q_proj",
        "model.layers.1.mlp.down_proj",
    )
    stack = [
        (_module(1, {q0: (16, 16), q1: (16, 16)}, r=2, alpha=5.0), -0.7),
        (_module(2, {q1: (16, 16), down1: (16, 32)}, r=3, alpha=3.0), 1.3),
        (_module(3, {down1: (16, 32)}, r=1, alpha=8.0), -2.0),
    ]
    A, B, rank = lora_sum(stack)
    assert rank == 6 and list(A) == [q0, q1, down1]
    assert A[q0].shape == (6, 16) and B[down1].shape == (16, 6)
    assert torch.count_nonzero(A[q0][2:]) == 0 and torch.count_nonzero(B[q0][:, 2:]) == 0
    for name in A:  # the stacked product is the sum of the signed, scaled updates
        want = sum(c * m.delta(name) for m, c in stack if name in m.A)
        _close(B[name] @ A[name], want, name)

    # Written as PEFT writes it, loaded by PEFT, equal to the fp32 replay of the stack.
    out = tmp_path / "adapter"
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=list(A), task_type="CAUSAL_LM")
    config.save_pretrained(str(out))
    tensors = {f"base_model.model.{n}.lora_A.weight": A[n] for n in A}
    tensors |= {f"base_model.model.{n}.lora_B.weight": B[n] for n in B}
    save_file(tensors, str(out / "adapter_model.safetensors"))
    replayed = _base()
    rebuild(replayed, stack)
    adapted = PeftModel.from_pretrained(_base(), out).eval()
    _close(_logits(adapted), _logits(replayed.eval()), "logits")
    weights, expected = adapted.merge_and_unload().state_dict(), replayed.state_dict()
    for key in expected:
        _close(weights[key], expected[key], key)

    clash = [stack[0], (_module(4, {q0: (16, 32)}, r=1, alpha=1.0), 1.0)]
    with pytest.raises(ValueError, match="disagree on its shape"):
        lora_sum(clash)


def test_peft_refuses_what_is_not_a_sum_of_loras(invoke, write_spec, tmp_path: Path) -> None:
    """A step that applied no LoRA module (a full-weight change) cannot go into an adapter,
    and a stack of no module has no adapter: exit 2, pointing at the merged format."""
    from mlflow.tracking import MlflowClient

    uri, run_id = _recorded_run(invoke, write_spec, tmp_path, "single_subtraction")
    client = MlflowClient(tracking_uri=uri)
    state = json.loads(
        Path(client.download_artifacts(run_id, "release/state.json", str(tmp_path / "s")))
        .read_text()
    )  # fmt: skip
    weight_change = {**state["stack"][0], "kind": "full_weight", "artifact": "release/W0.pt"}
    for stack, message in (
        ([*state["stack"], weight_change], "not a sum of LoRAs"),
        ([], "applied no module"),
    ):
        client.log_dict(run_id, {**state, "stack": stack}, "release/state.json")
        out = tmp_path / f"adapter{len(stack)}"
        result = invoke("export", run_id, "--out", out, "--format", "peft", "--tracking-uri", uri)
        assert result.exit_code == 2 and message in result.stderr, result.stderr
        assert "--format merged" in result.stderr
        assert not (out / "adapter_config.json").exists()

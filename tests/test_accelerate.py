"""LoRA training under `accelerate launch` with 2 CPU processes (gloo) against one process.

The group gets the same job Release gives it: the base model, an applied stack to rebuild,
the examples. The comparison is on the trained A and B factors and the loss curve.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rrtool.errors import UserError
from rrtool.models import load_model
from rrtool.release.distributed import train_in_processes
from rrtool.release.lora import Example, LoraModule, TrainingOptions, train_lora
from rrtool.release.stack import apply_stack
from rrtool.spec import LoraSpec, ModelSpec

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODEL = ModelSpec(id="builtin:tiny-random")


def _examples(count: int) -> list[Example]:
    words = ["Ada", "Bob", "Cleo", "Dmitri", "Eve", "Farah", "Gus", "Hana", "Ivo", "Jun"]
    return [
        Example(
            prompt=f"Which people are named in: {words[i % 10]} met {words[(i + 3) % 10]}?",
            completion=f'["{words[i % 10]}", "{words[(i + 3) % 10]}"]' + " ok" * (i % 4),
            rejected="[]" + " no" * (i % 3),  # used by DPO only
        )
        for i in range(count)
    ]


def _random_stack(model: torch.nn.Module) -> list[tuple[LoraModule, float]]:
    """One earlier module, applied with weight -0.5 (the weights the group must rebuild)."""
    gen = torch.Generator().manual_seed(7)
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)][:4]
    shapes = {n: model.get_submodule(n).weight.shape for n in names}
    module = LoraModule(
        A={n: torch.randn(2, shapes[n][1], generator=gen) * 0.1 for n in names},
        B={n: torch.randn(shapes[n][0], 2, generator=gen) * 0.1 for n in names},
        r=2, alpha=4.0, target_modules=names, kind="forget",
    )  # fmt: skip
    return [(module, -0.5)]


def _close(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


@pytest.mark.parametrize(
    ("accumulation", "objective"), [(2, "nll"), (3, "nll"), (2, "dpo")]
)  # 3: one process is a micro-batch short; dpo: a reference forward in every process, and
# two sequences per example (NPO takes the same reference path)
def test_two_processes_match_one(accumulation: int, objective: str, tmp_path: Path) -> None:
    cfg = LoraSpec(r=4, alpha=8, dropout=0.0, epochs=2, batch_size=2,
                   gradient_accumulation=accumulation, learning_rate=1e-2)  # fmt: skip
    examples = _examples(22)
    handle = load_model(MODEL)
    stack = _random_stack(handle.model)
    apply_stack(handle.model, stack)
    single = train_lora(
        handle.model, handle.tokenizer, examples, cfg, seed=3, kind="forget", chat=False,
        objective=objective,
    )  # fmt: skip
    seen: list[tuple[int, int, float]] = []
    group = train_in_processes(
        MODEL, stack, examples, cfg.model_copy(update={"processes": 2}),
        TrainingOptions(seed=3, kind="forget", chat=False, objective=objective),
        workdir=tmp_path, cpu=True, progress=lambda *a: seen.append(a),
    )  # fmt: skip
    assert group.info["processes"] == 2 and group.info["objective"] == objective
    assert set(group.A) == set(single.A)
    worst = max(
        max(_close(group.A[n], single.A[n]), _close(group.B[n], single.B[n])) for n in single.A
    )
    print(f"accumulation {accumulation}, {objective}: worst relative difference {worst:.2e}")
    assert worst < 1e-4, worst
    assert group.loss_curve == pytest.approx(single.loss_curve, rel=1e-5)
    assert [s[0] for s in seen] == list(range(1, len(single.loss_curve) + 1))
    assert not list(tmp_path.iterdir())  # the job directory is removed after success
    # Without the stack the group would train on other weights: the check above can fail.
    handle_base = load_model(MODEL)
    other = train_lora(
        handle_base.model, handle_base.tokenizer, examples, cfg, seed=3, kind="forget", chat=False,
        objective=objective,
    )  # fmt: skip
    assert max(_close(other.B[n], single.B[n]) for n in single.B) > 1e-3


def test_release_trains_its_modules_in_a_process_group(invoke, write_spec, tmp_path: Path) -> None:
    from tests.conftest import FAST_SETS, only_run, read_artifact, set_flags, tiny_spec

    flags = set_flags(*FAST_SETS, "release.lora.processes=2")
    result = invoke("run", write_spec(tiny_spec()), *flags)
    assert result.exit_code == 0, result.output
    client, run = only_run(tmp_path)
    assert run.data.tags["rrtool.status"] == "finished"
    for name in ("F0", "R1", "F1"):
        sidecar = read_artifact(client, run.info.run_id, f"release/modules/{name}.json", tmp_path)
        assert '"processes": 2' in sidecar, sidecar
    assert not list((tmp_path / ".rrtool").rglob("train-*"))  # no job directory left behind


def test_a_failed_group_is_reported_with_its_log(tmp_path: Path) -> None:
    bad = ModelSpec(id=str(tmp_path / "no-model-here"))
    with pytest.raises(UserError) as caught:
        train_in_processes(
            bad, [], _examples(4), LoraSpec(processes=2),
            TrainingOptions(seed=0, kind="forget", chat=False), workdir=tmp_path, cpu=True,
        )  # fmt: skip
    message = caught.value.messages[0]
    assert "no-model-here" in message  # the worker's own error, not a bare exit code


def test_accelerate_config_is_checked_and_passed_on(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from rrtool.release.distributed import launch_command

    with pytest.raises(ValidationError, match="expected an `accelerate config` YAML"):
        LoraSpec(accelerate_config=str(tmp_path / "missing.yaml"))
    config = tmp_path / "fsdp.yaml"
    config.write_text("distributed_type: FSDP\nnum_processes: 8\n")
    cfg = LoraSpec(accelerate_config=str(config))
    assert cfg.launches_processes
    command, env = launch_command(cfg, tmp_path, cpu=False)
    assert command[command.index("--config_file") + 1] == str(config)
    assert "--num_processes" not in command and "ACCELERATE_USE_CPU" not in env
    command, env = launch_command(LoraSpec(processes=3), tmp_path, cpu=True)
    assert command[command.index("--num_processes") + 1] == "3"
    assert env["ACCELERATE_USE_CPU"] == "true"

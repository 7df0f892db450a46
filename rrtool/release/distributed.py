"""LoRA training under ``accelerate launch``: a data-parallel process group per module.

With ``release.lora.processes`` > 1 (or an ``accelerate_config``), Release does not train in
its own process. It writes a job directory (the model spec, the applied module stack, the
examples, the LoRA settings) and runs

    accelerate launch --multi_gpu --num_processes N -m rrtool.release.distributed JOB

Each process loads the base model, rebuilds the current weights from the stack (the same
replay the audit and export use, bit-identical to the parent's weights), and trains its
share of every optimiser step under DDP (gloo on CPU, NCCL on GPUs; see ``train_lora``).
The main process writes the module, which Release loads and records as usual. The parent
keeps its own copy of the model for evaluation, so memory is (N + 1) model copies.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rrtool.errors import TrainingDiverged, UserError
from rrtool.release.lora import Example, LoraModule, TrainingOptions, train_lora
from rrtool.spec import LoraSpec, ModelSpec

PROGRESS = "rrtool-progress "  # stdout lines of the main process that carry progress
MODULE_FILE = "module.safetensors"
LOG_FILE = "worker.log"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_command(cfg: LoraSpec, job: Path, cpu: bool) -> tuple[list[str], dict[str, str]]:
    """The ``accelerate launch`` command line and environment for a training job."""
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    if cfg.accelerate_config is not None:
        command += ["--config_file", cfg.accelerate_config]  # it sets processes and backend
    else:
        # --multi_gpu selects torch's launcher; with ACCELERATE_USE_CPU the processes form a
        # gloo group on the CPU (accelerate's --cpu alone would start a single process).
        command += ["--multi_gpu", "--num_processes", str(cfg.processes)]
        command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        command += ["--main_process_port", str(_free_port())]
        if cpu:
            threads = max(1, (os.cpu_count() or 1) // cfg.processes)
            command += ["--num_cpu_threads_per_process", str(threads)]
    command += ["-m", "rrtool.release.distributed", str(job)]
    env = dict(os.environ)
    if cpu:
        env["ACCELERATE_USE_CPU"] = "true"
    return command, env


def train_in_processes(
    model_spec: ModelSpec,
    stack: Sequence[tuple[LoraModule, float]],
    examples: Sequence[Example],
    cfg: LoraSpec,
    options: TrainingOptions,
    *,
    workdir: Path,
    cpu: bool,
    progress: Callable[[int, int, float], None] | None = None,
    orthogonal_to: Sequence[LoraModule] | None = None,
) -> LoraModule:
    """Train one module in an ``accelerate launch`` process group; same contract as
    ``train_lora(..., **options.keywords())`` on a model holding base + ``stack``."""
    workdir.mkdir(parents=True, exist_ok=True)
    job = Path(tempfile.mkdtemp(prefix=f"train-{options.kind}-", dir=workdir)).resolve()
    entries = []
    for index, (module, coefficient) in enumerate(stack):
        module.save(job / f"stack-{index}.safetensors")
        entries.append({"file": f"stack-{index}.safetensors", "coefficient": coefficient})
    orthogonal = []
    for index, module in enumerate(orthogonal_to or []):
        module.save(job / f"orthogonal-{index}.safetensors")
        orthogonal.append(f"orthogonal-{index}.safetensors")
    (job / "examples.jsonl").write_text(
        "".join(json.dumps(asdict(e), ensure_ascii=False) + "\n" for e in examples),
        encoding="utf-8",
    )
    (job / "job.json").write_text(
        json.dumps(
            {
                "model": model_spec.model_dump(mode="json"),
                "lora": cfg.model_dump(mode="json"),
                "options": options.keywords(),
                "cpu": cpu,
                "stack": entries,
                "orthogonal_to": orthogonal,
            },
            indent=1,
        )
    )
    command, env = launch_command(cfg, job, cpu)
    with (
        (job / LOG_FILE).open("w") as log,
        subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=job
        ) as process,
    ):
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith(PROGRESS) and progress is not None:
                done, total, loss = json.loads(line[len(PROGRESS) :])
                progress(done, total, loss)
        code = process.wait()
    failure = _failure(job)
    if failure is not None and failure["kind"] == "diverged":
        raise TrainingDiverged(failure["message"])
    if failure is not None and failure["kind"] == "user":
        raise UserError(failure["message"])
    if code != 0 or not (job / MODULE_FILE).exists():
        if failure is not None:
            reason = f"a process raised {failure['message']}"
        else:
            tail = (job / LOG_FILE).read_text(errors="replace").splitlines()[-15:]
            reason = "last lines of its log:\n" + "\n".join(tail)
        raise UserError(
            f"release: training under `accelerate launch` failed (exit {code}); the job and "
            f"its log ({LOG_FILE}) are kept in {job}; {reason}"
        )
    module = LoraModule.load(job / MODULE_FILE)
    shutil.rmtree(job, ignore_errors=True)
    return module


def _worker(job: Path) -> None:
    from accelerate import Accelerator

    from rrtool.models import load_model
    from rrtool.release.stack import apply_stack

    spec = json.loads((job / "job.json").read_text())
    accelerator = Accelerator(cpu=spec["cpu"])
    handle = load_model(ModelSpec.model_validate(spec["model"]))
    model = handle.model.to(accelerator.device)
    stack = [(LoraModule.load(job / e["file"]), e["coefficient"]) for e in spec["stack"]]
    apply_stack(model, stack)
    examples = [
        Example(**json.loads(line))
        for line in (job / "examples.jsonl").read_text(encoding="utf-8").splitlines()
    ]

    def report(done: int, total: int, loss: float) -> None:
        print(PROGRESS + json.dumps([done, total, loss]), flush=True)

    module = train_lora(
        model,
        handle.tokenizer,
        examples,
        LoraSpec.model_validate(spec["lora"]),
        progress=report if accelerator.is_main_process else None,
        orthogonal_to=[LoraModule.load(job / f) for f in spec["orthogonal_to"]] or None,
        accelerator=accelerator,
        **TrainingOptions(**spec["options"]).keywords(),
    )
    module.info["processes"] = accelerator.num_processes
    if accelerator.is_main_process:
        module.save(job / MODULE_FILE)
    accelerator.wait_for_everyone()


def _failure(job: Path) -> dict[str, Any] | None:
    """The first failure a process of the group recorded, if any."""
    found = sorted(job.glob("error-*.json"))
    return json.loads(found[0].read_text()) if found else None


def main(argv: list[str] | None = None) -> int:
    job = Path((argv if argv is not None else sys.argv[1:])[0])
    rank = os.environ.get("RANK", "0")
    try:
        _worker(job)
    except (TrainingDiverged, UserError) as exc:
        # Every process meets the same diverged loss or bad input; the parent reports it.
        failure: dict[str, Any] = {
            "kind": "diverged" if isinstance(exc, TrainingDiverged) else "user",
            "message": "; ".join(exc.messages) if isinstance(exc, UserError) else str(exc),
        }
        (job / f"error-{rank}.json").write_text(json.dumps(failure))
        return 2
    except Exception as exc:
        # Recorded for the parent's one-line message; the traceback stays in the log.
        failure = {"kind": "crash", "message": f"{type(exc).__name__}: {exc}"}
        (job / f"error-{rank}.json").write_text(json.dumps(failure))
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())

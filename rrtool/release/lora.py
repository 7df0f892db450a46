"""LoRA modules as plain tensors, their files, and training one on the current model.

A ``LoraModule`` is the update dW = (alpha / r) * B @ A for each targeted Linear, keyed by the
Linear's qualified name in the model (``model.layers.0.self_attn.q_proj``). It owns no model:
composition (``compose.py``) adds it to weights with any sign and scale.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rrtool import shared_prefix
from rrtool.errors import TrainingDiverged, UserError
from rrtool.examples import IGNORE_INDEX, Example, encode_example
from rrtool.examples import collate as _collate  # module-level: a test spies on it
from rrtool.release.losses import LOSSES, Loss, Nll, Rmu, make_loss, row_sums
from rrtool.spec import LoraSpec, RmuSpec

FORMAT = "rrtool-lora"
FORMAT_VERSION = 1
OBJECTIVES = LOSSES  # the losses train_lora accepts (``losses.py``: one object each)
_ADAPTER = "rrtool"
_RMU = RmuSpec()  # release.rmu's defaults, the ones train_lora's rmu_* keywords take


@dataclass
class LoraModule:
    """A trained LoRA update: ``A[name]`` is r x in, ``B[name]`` is out x r (fp32, CPU)."""

    A: dict[str, Tensor]
    B: dict[str, Tensor]
    r: int
    alpha: float
    target_modules: str | list[str]
    kind: str  # "forget" or "retain"
    seed: int | None = None
    loss_curve: list[float] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)  # free-form, JSON-serialisable

    def __post_init__(self) -> None:
        if set(self.A) != set(self.B):
            raise ValueError("A and B must target the same modules")
        for name in self.A:
            a, b = self.A[name], self.B[name]
            if a.dim() != 2 or b.dim() != 2 or a.shape[0] != self.r or b.shape[1] != self.r:
                raise ValueError(
                    f"{name}: expected A (r x in) and B (out x r) with r={self.r}, "
                    f"got {tuple(a.shape)} and {tuple(b.shape)}"
                )
            # One canonical storage: fp32 on CPU, so hashes and files do not depend on where
            # the module was trained.
            # Copies: a module never shares storage with a (possibly still trained) layer.
            self.A[name] = a.detach().to("cpu", torch.float32, copy=True).contiguous()
            self.B[name] = b.detach().to("cpu", torch.float32, copy=True).contiguous()

    @property
    def names(self) -> list[str]:
        """Qualified names of the targeted Linear modules, in model order."""
        return list(self.A)

    @property
    def scale(self) -> float:
        return self.alpha / self.r

    def delta(self, name: str) -> Tensor:
        """dW = (alpha / r) * B @ A for one module (out x in, fp32)."""
        return (self.B[name] @ self.A[name]) * self.scale

    def sha256(self) -> str:
        """Digest of the update (r, alpha and every tensor), independent of file layout."""
        digest = hashlib.sha256(f"{FORMAT}:{self.r}:{float(self.alpha)!r}".encode())
        for name in sorted(self.A):
            for part, tensor in (("A", self.A[name]), ("B", self.B[name])):
                digest.update(f"|{name}.{part}:{tuple(tensor.shape)}|".encode())
                digest.update(tensor.numpy().astype("<f4", copy=False).tobytes())
        return digest.hexdigest()

    def save(self, path: str | Path) -> Path:
        """Write ``path`` (safetensors) and its JSON sidecar ``path.with_suffix('.json')``."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {f"{n}.lora_A": self.A[n] for n in self.A}
        tensors.update({f"{n}.lora_B": self.B[n] for n in self.B})
        sha = self.sha256()
        save_file(tensors, str(path), metadata={"format": FORMAT, "sha256": sha})
        sidecar = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "r": self.r,
            "alpha": self.alpha,
            "target_modules": self.target_modules,
            "names": self.names,
            "kind": self.kind,
            "seed": self.seed,
            "loss_curve": self.loss_curve,
            "info": self.info,
            "sha256": sha,
        }
        _sidecar(path).write_text(json.dumps(sidecar, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> LoraModule:
        """Read a module written by ``save``; refuses files whose tensors do not match."""
        from safetensors.torch import load_file

        path = Path(path)
        sidecar_path = _sidecar(path)
        if not path.is_file() or not sidecar_path.is_file():
            raise UserError(f"{path}: LoRA module file or its sidecar {sidecar_path.name} missing")
        try:
            meta = json.loads(sidecar_path.read_text())
        except json.JSONDecodeError as exc:
            raise UserError(f"{sidecar_path}: not valid JSON ({exc})") from None
        if meta.get("format") != FORMAT or meta.get("version") != FORMAT_VERSION:
            raise UserError(f"{sidecar_path}: not an {FORMAT} v{FORMAT_VERSION} sidecar")
        tensors = load_file(str(path))
        names = meta["names"]
        try:
            module = cls(
                A={n: tensors[f"{n}.lora_A"] for n in names},
                B={n: tensors[f"{n}.lora_B"] for n in names},
                r=meta["r"],
                alpha=meta["alpha"],
                target_modules=meta["target_modules"],
                kind=meta["kind"],
                seed=meta["seed"],
                loss_curve=meta["loss_curve"],
                info=meta["info"],
            )
        except KeyError as exc:
            raise UserError(f"{path}: missing tensor or field {exc}") from None
        if module.sha256() != meta["sha256"]:
            raise UserError(f"{path}: tensors do not match the recorded sha256 (file altered?)")
        return module


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


# ------------------------------------------------------------------------- data
def _step_groups(
    order: list[int], batch_size: int, accumulation: int, sequences_per_example: int = 1
) -> Iterator[list[list[int]]]:
    """Optimiser steps of one epoch (``batch_size * accumulation`` examples each), each a
    list of micro-batches of example indices holding at most ``batch_size`` sequences.

    A DPO example is two sequences (chosen, rejected): its micro-batches hold half as many
    examples, so a forward pass is no larger than for the other objectives. The step, and so
    the update, is the same (losses are normalised over the whole step); only the peak memory
    changes (lower: a pair's two sequences would otherwise double a micro-batch's activations)."""
    per_step = batch_size * accumulation
    per_micro = max(1, batch_size // sequences_per_example)
    for start in range(0, len(order), per_step):
        step = order[start : start + per_step]
        yield [step[i : i + per_micro] for i in range(0, len(step), per_micro)]


def _within_tokens(
    group: list[list[int]],
    rows: Sequence[Sequence[tuple[list[int], list[int]]]],
    max_tokens: int | None,
) -> list[list[int]]:
    """The step's micro-batches cut into consecutive runs of examples whose padded size
    (sequences x the longest one) is at most ``max_tokens``; an example too long for the budget
    runs alone. The step keeps its examples, and ``_accumulate`` normalises over the whole step,
    so the gradient is the same: only the activation memory of one forward changes."""
    if max_tokens is None:
        return group
    out: list[list[int]] = []
    for micro in group:
        run: list[int] = []
        sequences = width = 0
        for index in micro:
            seqs = rows[index]
            longest = max(len(ids) for ids, _ in seqs)
            if run and (sequences + len(seqs)) * max(width, longest) > max_tokens:
                out.append(run)
                run, sequences, width = [], 0, 0
            run.append(index)
            sequences, width = sequences + len(seqs), max(width, longest)
        if run:
            out.append(run)
    return out


# --------------------------------------------------------------------- training
@dataclass(frozen=True)
class TrainingOptions:
    """How one module is trained, besides the model, the data and the LoRA settings: plain
    values, so that the distributed job file is this object as JSON. Its fields are
    ``train_lora``'s keyword options of the same names (a test keeps them in step)."""

    seed: int
    kind: str  # "forget" or "retain"
    chat: bool = True
    autocast_bf16: bool = False
    orthogonal_weight: float = 0.0
    objective: str = "nll"
    npo_beta: float = 0.1
    dpo_beta: float = 0.1
    rmu_layer: int | None = _RMU.layer
    rmu_steering: float = _RMU.steering
    rmu_alpha: float = _RMU.alpha

    def keywords(self) -> dict[str, Any]:
        """As ``train_lora``'s keyword arguments (and the job file's ``options``)."""
        return asdict(self)


def train_lora(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    cfg: LoraSpec,
    retain: Sequence[Example] | None = None,
    *,
    seed: int,
    kind: str,
    chat: bool = True,
    progress: Callable[[int, int, float], None] | None = None,
    autocast_bf16: bool = False,
    orthogonal_to: Sequence[LoraModule] | None = None,
    orthogonal_weight: float = 0.0,
    accelerator: Any | None = None,
    objective: str = "nll",
    npo_beta: float = 0.1,
    dpo_beta: float = 0.1,
    rmu_layer: int | None = _RMU.layer,
    rmu_steering: float = _RMU.steering,
    rmu_alpha: float = _RMU.alpha,
) -> LoraModule:
    """Train a LoRA on the model's current weights and return it as a ``LoraModule``.

    The model comes back exactly as it was: the LoRA layers are removed without merging, and
    parameter ``requires_grad`` flags and train/eval mode are restored. ``progress`` gets
    (step, total_steps, loss) after each optimiser step. ``orthogonal_to`` with a positive
    ``orthogonal_weight`` adds O-LoRA's penalty sum ||A_new A_prev^T||_F^2 over shared layers.
    The same seed on the same weights and data gives identical A and B (on CPU).

    ``accelerator`` (an ``accelerate.Accelerator`` of several processes, each holding the
    same model and examples) trains data-parallel under DDP: each process runs its share of
    every step's micro-batches and DDP sums the gradients, so a step's update is the one a
    single process computes (up to float summation order; dropout masks differ per process).
    ``objective`` is ``nll`` (learn the examples), ``gradient_ascent`` or ``npo`` (baselines:
    unlearn them; NPO's reference is the model as it was before this LoRA, with ``npo_beta``),
    or ``dpo`` (prefer each example's completion over its ``rejected`` answer, against the
    same reference, with ``dpo_beta``), or ``rmu`` (``_RmuSteps``; ``retain``: its retain data).
    """
    if kind not in ("forget", "retain"):
        raise ValueError(f"kind must be 'forget' or 'retain', got {kind!r}")
    loss_fn = make_loss(objective, npo_beta=npo_beta, dpo_beta=dpo_beta, rmu_alpha=rmu_alpha)
    rows = _encode_rows(tokenizer, examples, cfg.max_length, chat, kind, loss_fn)
    rmu = _RmuSteps.of(model, tokenizer, loss_fn, rows, retain, cfg, chat, seed, autocast_bf16,
                       rmu_layer, rmu_steering, accelerator)  # fmt: skip
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    steps_per_epoch = math.ceil(math.ceil(len(rows) / cfg.batch_size) / cfg.gradient_accumulation)
    total_steps = steps_per_epoch * cfg.epochs

    was_training = model.training
    requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
    rng_devices = [device] if device.type == "cuda" else []
    # fork_rng: LoRA init, dropout and shuffling draw from a seeded stream without
    # disturbing the caller's global RNG state.
    with torch.random.fork_rng(devices=rng_devices):
        torch.manual_seed(seed)
        tuner = None
        try:
            tuner, layers, params = _attach(model, cfg)
            if rmu is not None:  # h_L depends on the layers up to L only
                layers, params = rmu.start(tuner, layers, pad_id, device)
            optimiser = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
            previous = _previous_factors(layers, orthogonal_to or [], device)
            generator = torch.Generator().manual_seed(seed)
            model.train()
            share = _Share.of(accelerator, model)
            selective = _selective_logits(model)
            reference = _reference_nll(model, tuner, selective, autocast_bf16, loss_fn)

            def one_step(group: list[list[int]]) -> float:
                forwards = _within_tokens(group, rows, cfg.max_forward_tokens)
                loss = rmu.step(group) if rmu is not None else _accumulate(
                    model, rows, forwards, pad_id, device, autocast_bf16, share, loss_fn, reference
                )  # fmt: skip
                if math.isfinite(loss):  # a diverged loss leaves the weights as they were
                    _update(optimiser, params, layers, previous, orthogonal_weight)
                return loss

            losses = _run_epochs(one_step, len(rows), cfg, generator, loss_fn.sequences,
                                 kind, total_steps, progress)  # fmt: skip
            A = {n: layer.lora_A[_ADAPTER].weight for n, layer in layers.items()}
            B = {n: layer.lora_B[_ADAPTER].weight for n, layer in layers.items()}
        finally:
            _restore(model, tuner, requires_grad, was_training)
    penalty = orthogonal_weight if orthogonal_to else 0.0
    info = _module_info(cfg, len(rows), total_steps, chat, autocast_bf16, penalty, loss_fn)
    info.update(rmu.info() if rmu is not None else {})
    return LoraModule(
        A=A,
        B=B,
        r=cfg.r,
        alpha=cfg.alpha,
        target_modules=copy.copy(cfg.target_modules),  # not an alias of the spec's list
        kind=kind,
        seed=seed,
        loss_curve=losses,
        info=info,
    )


def _restore(model: Any, tuner: Any, requires_grad: dict[str, bool], was_training: bool) -> None:
    """The model as ``train_lora`` found it: the LoRA layers removed, nothing merged; the
    parameters' ``requires_grad`` flags and the train/eval mode as they were."""
    if tuner is not None:  # (_attach detaches what it attached when it refuses)
        tuner.unload()  # back to the original Linear objects, nothing merged
    _return_freed_memory()
    for name, param in model.named_parameters():
        param.requires_grad_(requires_grad.get(name, param.requires_grad))
    model.train(was_training)


def _reference_nll(
    model: Any, tuner: Any, selective: bool, autocast_bf16: bool, loss_fn: Loss
) -> Callable[[dict[str, Tensor], Tensor, Tensor], Tensor] | None:
    """Per-row NLL under the model before this LoRA: the same forward, adapter switched off
    (None: ``loss_fn`` needs none)."""
    if not loss_fn.uses_reference:
        return None
    share_prefix = shared_prefix.supported(model)

    def reference_nll(batch: dict[str, Tensor], keep: Tensor, targets: Tensor) -> Tensor:
        tuner.disable_adapter_layers()
        try:
            with torch.no_grad():
                logits = _kept_logits(
                    model, model, batch, keep, selective, autocast_bf16, share_prefix
                )
                nll = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none")
        finally:
            tuner.enable_adapter_layers()
        return row_sums(nll, keep)

    return reference_nll


def _run_epochs(
    one_step: Callable[[list[list[int]]], float],
    rows: int,
    cfg: LoraSpec,
    generator: torch.Generator,
    sequences: int,
    kind: str,
    total_steps: int,
    progress: Callable[[int, int, float], None] | None,
) -> list[float]:
    """The optimiser steps of every epoch over a seeded shuffle; the loss of each step."""
    losses: list[float] = []
    for _epoch in range(cfg.epochs):
        order = torch.randperm(rows, generator=generator).tolist()
        for group in _step_groups(order, cfg.batch_size, cfg.gradient_accumulation, sequences):
            loss = one_step(group)
            if not math.isfinite(loss):
                raise TrainingDiverged(
                    f"{kind} module: loss is {loss} at step {len(losses) + 1} of {total_steps} "
                    "(lower release.lora.learning_rate, or check the data)"
                )
            losses.append(loss)
            if progress is not None:
                progress(len(losses), total_steps, loss)
    return losses


def _encode_rows(
    tokenizer: Any, examples: Sequence[Example], max_length: int, chat: bool, kind: str,
    loss_fn: Loss,
) -> list[list[tuple[list[int], list[int]]]]:  # fmt: skip
    """One group of encoded sequences per example: the example itself, or (chosen, rejected)
    for a loss of two sequences (DPO)."""
    if not examples:
        raise UserError(f"no training examples for the {kind} module")
    if loss_fn.sequences == 2 and any(ex.rejected is None for ex in examples):
        raise ValueError("DPO needs a rejected answer on every example")
    return [
        [
            encode_example(tokenizer, replace(ex, completion=answer), max_length, chat)
            for answer in (
                [ex.completion, ex.rejected] if loss_fn.sequences == 2 else [ex.completion]
            )
        ]
        for ex in examples
    ]


def _attach(model: Any, cfg: LoraSpec) -> tuple[Any, dict[str, Any], list[Tensor]]:
    """The LoRA layers on ``model`` (PEFT's ``LoraModel`` directly, not ``get_peft_model``:
    no wrapper to unwrap, and the caller's model object keeps its identity): the tuner, its
    layers by name and their trainable parameters, in fp32 (half-precision models too, as
    ``get_peft_model`` does, so small updates are not rounded away). Detached again (nothing
    merged) if a layer is too small for the rank."""
    from peft import LoraConfig, LoraModel
    from peft.tuners.lora import LoraLayer

    config = LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
        bias="none",
    )
    try:
        tuner = LoraModel(model, config, _ADAPTER)
    except ValueError as exc:
        if "not found in the base model" not in str(exc) and "No modules were targeted" not in str(
            exc
        ):
            raise
        raise UserError(
            f"release.lora.target_modules: {cfg.target_modules!r} matches no module of the "
            f"model (its linear modules: {', '.join(_linear_names(model)) or 'none'})"
        ) from None
    layers = {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer)}
    too_small = [
        (n, layer.in_features, layer.out_features)
        for n, layer in layers.items()
        if cfg.r > min(layer.in_features, layer.out_features)
    ]
    if too_small:
        tuner.unload()
        name, fan_in, fan_out = too_small[0]
        raise UserError(
            f"release.lora.r: got {cfg.r}, larger than layer {name} ({fan_out} x "
            f"{fan_in}) allows (expected a rank <= {min(fan_in, fan_out)}; "
            f"{len(too_small)} targeted layer(s) are that small)"
        )
    params = []
    for layer in layers.values():
        for sub in (layer.lora_A[_ADAPTER], layer.lora_B[_ADAPTER]):
            sub.float()
            params.extend(sub.parameters())
    return tuner, layers, params


def _update(
    optimiser: Any, params: list[Tensor], layers: dict[str, Any],
    previous: dict[str, list[Tensor]], orthogonal_weight: float,
) -> None:  # fmt: skip
    """One optimiser step on the accumulated gradients, O-LoRA's penalty added first."""
    if orthogonal_weight > 0 and previous:
        penalty = orthogonal_weight * _orthogonal_penalty(layers, previous)
        # autograd.grad, not backward(): a backward outside a forward would trip DDP's
        # gradient hooks; every process adds the same penalty.
        factors = [layers[n].lora_A[_ADAPTER].weight for n in previous]
        for weight, grad in zip(factors, torch.autograd.grad(penalty, factors), strict=True):
            weight.grad = grad if weight.grad is None else weight.grad + grad
    torch.nn.utils.clip_grad_norm_(params, 1.0)  # HF Trainer's default
    optimiser.step()
    optimiser.zero_grad(set_to_none=True)


def _module_info(
    cfg: LoraSpec, examples: int, steps: int, chat: bool, autocast_bf16: bool,
    orthogonal_weight: float, loss_fn: Loss,
) -> dict[str, Any]:  # fmt: skip
    """What a module records of how it was trained (its json sidecar)."""
    beta = getattr(loss_fn, "beta", None)
    return {
        "examples": examples,
        "epochs": cfg.epochs,
        "steps": steps,
        "learning_rate": cfg.learning_rate,
        "batch_size": cfg.batch_size,
        "gradient_accumulation": cfg.gradient_accumulation,
        "dropout": cfg.dropout,
        "max_length": cfg.max_length,
        "max_forward_tokens": cfg.max_forward_tokens,
        "chat": chat,
        "autocast_bf16": autocast_bf16,
        "orthogonal_weight": orthogonal_weight,
        "objective": loss_fn.name,
        **({f"{loss_fn.name}_beta": beta} if beta is not None else {}),
    }


def _return_freed_memory() -> None:
    """Hand the step's freed activations back to the OS (glibc keeps them otherwise: on
    SmolLM2 the resident size stayed 4.6 GB after training, 1.0 GB after a trim), so the
    phases after training do not start from the training peak."""
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc (macOS, musl): no-op
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _linear_names(model: Any) -> list[str]:
    """Distinct leaf names of the model's Linear layers (what target_modules can name)."""
    return sorted(
        {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    )


@dataclass
class _Share:
    """This process's part of each step under data parallelism (everything, alone)."""

    forward: Any  # the model, or its DDP wrapper (whose backward sums gradients)
    rank: int = 0
    processes: int = 1
    accelerator: Any | None = None

    @classmethod
    def of(cls, accelerator: Any | None, model: Any) -> _Share:
        if accelerator is None or accelerator.num_processes <= 1:
            return cls(model)
        # prepare_model wraps in DDP, which broadcasts rank 0's parameters (the same LoRA
        # initialisation everywhere, from the shared seed, anyway) and sums gradients.
        wrapped = accelerator.prepare_model(model, device_placement=False)
        return cls(wrapped, accelerator.process_index, accelerator.num_processes, accelerator)

    def micro_batches(self, group: list[list[int]]) -> list[tuple[list[int], float]]:
        """(indices, weight) to run here: every ``processes``-th micro-batch of the step.

        DDP needs the same number of backward passes in every process, so a process short
        of a micro-batch runs one with weight 0 (no gradient, the collective still happens).
        """
        mine = [(micro, 1.0) for micro in group[self.rank :: self.processes]]
        rounds = math.ceil(len(group) / self.processes)
        return mine + [(group[0], 0.0)] * (rounds - len(mine))

    def sync_only_last(self, index: int, count: int) -> contextlib.AbstractContextManager:
        if self.accelerator is None or index == count - 1:
            return contextlib.nullcontext()
        return self.accelerator.no_sync(self.forward)

    def total(self, value: float, device: torch.device) -> float:
        if self.accelerator is None:
            return value
        return float(self.accelerator.reduce(torch.tensor([value], device=device), "sum"))


def _kept_logits(
    forward: Any, model: Any, batch: dict[str, Tensor], keep: Tensor, selective: bool, bf16: bool,
    share_prefix: bool = False,
) -> Tensor:  # fmt: skip
    """Logits of the positions in ``keep`` (row-major order), through ``forward``; with
    ``share_prefix`` (and ``selective``) the rows' shared prompt prefix is run once
    (``shared_prefix.py``: same values, less compute)."""
    with torch.autocast(keep.device.type, dtype=torch.bfloat16, enabled=bf16):
        prefix = (
            shared_prefix.prefix_length(batch["input_ids"], batch["attention_mask"], keep)
            if selective and share_prefix
            else 0
        )
        if prefix:
            return shared_prefix.kept_logits(forward, model, batch, keep, prefix)
        if selective:
            out = forward(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                logits_to_keep=keep,
            ).logits
            return out.reshape(-1, model.config.get_text_config().vocab_size)
        return forward(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[
            keep
        ]


def _accumulate(
    model: Any,
    rows: Sequence[Sequence[tuple[list[int], list[int]]]],
    group: list[list[int]],
    pad_id: int,
    device: torch.device,
    autocast_bf16: bool,
    share: _Share | None = None,
    loss_fn: Loss | None = None,
    reference: Callable[[dict[str, Tensor], Tensor, Tensor], Tensor] | None = None,
) -> float:
    """Accumulate gradients over the micro-batches of one step; return its loss.

    ``rows[i]`` holds example i's sequences (one; DPO: chosen, then rejected). Each
    micro-batch's summed loss is divided by the completion tokens of the whole step (examples,
    for NPO's and DPO's per-sequence losses), so accumulation gives the same gradient as one
    large batch. Under data parallelism the divisor is the same (every process knows the
    whole step) and DDP's gradient average over processes is undone by scaling with their
    number, so the processes' gradients add up to the single-process one.
    """
    share = share or _Share(model)
    loss_fn = loss_fn or Nll()
    batches = [_collate([seq for i in micro for seq in rows[i]], pad_id) for micro in group]
    if loss_fn.per_example:
        normaliser = sum(len(micro) for micro in group)
    else:
        normaliser = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches)
    normaliser = max(normaliser, 1)
    runs = share.micro_batches(group)
    by_micro = {id(micro): batch for micro, batch in zip(group, batches, strict=True)}
    selective = _selective_logits(model)
    # One forward per backward under DDP: the shared-prefix forward (two calls) only alone.
    share_prefix = share.accelerator is None and shared_prefix.supported(model)
    total = 0.0
    for index, (micro, weight) in enumerate(runs):
        batch = {k: v.to(device) for k, v in by_micro[id(micro)].items()}
        labels = batch["labels"]
        # Position t predicts token t + 1: only positions followed by a completion token carry
        # loss. Projecting just those onto the vocabulary (not all ~200 positions of a row)
        # saves the largest activations of the step: at 49k words, 8 x 192 fp32 logits are
        # 300 MB, held several times over by cross-entropy and its backward.
        keep = torch.zeros_like(labels, dtype=torch.bool)
        keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
        targets = labels[:, 1:][keep[:, :-1]]
        with share.sync_only_last(index, len(runs)):
            logits = _kept_logits(
                share.forward, model, batch, keep, selective, autocast_bf16, share_prefix
            )
            # Cross-entropy in fp32 even under autocast: bf16 log-softmax over a large
            # vocabulary loses the small differences training depends on.
            token_nll = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none")
            ref = reference(batch, keep, targets) if loss_fn.uses_reference else None
            loss_sum = loss_fn(token_nll, keep, ref)
            (loss_sum * (weight * share.processes / normaliser)).backward()
        total += weight * float(loss_sum.detach())
    return share.total(total, device) / normaliser


# Whether the LM head can run on kept positions only (tests switch it off here).
_selective_logits = shared_prefix.takes_kept_mask


def _previous_factors(
    layers: dict[str, Any], modules: Sequence[LoraModule], device: torch.device
) -> dict[str, list[Tensor]]:
    found: dict[str, list[Tensor]] = {}
    for module in modules:
        for name in module.names:
            if name in layers:
                found.setdefault(name, []).append(module.A[name].to(device))
    return found


def _orthogonal_penalty(layers: dict[str, Any], previous: dict[str, list[Tensor]]) -> Tensor:
    terms = [
        (layers[name].lora_A[_ADAPTER].weight @ prev.T).pow(2).sum()
        for name, prevs in previous.items()
        for prev in prevs
    ]
    return torch.stack(terms).sum()


# --------------------------------------------------------------------------- RMU
class _Reached(Exception):
    """Raised by the hook on decoder layer L once its output is captured: the layers above it
    and the LM head are not run (h_L does not depend on them)."""


def decoder_layers(model: Any) -> tuple[str, Any]:
    """The qualified name and the ``ModuleList`` of the model's decoder layers (the list of
    ``num_hidden_layers`` modules, ``model.layers`` on Llama-style models)."""
    count = model.config.get_text_config().num_hidden_layers
    found = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.ModuleList) and len(module) == count
    ]
    named = [f for f in found if f[0].rsplit(".", 1)[-1] in ("layers", "h", "blocks")]
    if not (named or found):
        raise UserError(f"release.rmu: no list of {count} decoder layers found in the model")
    return (named or found)[0]


def rmu_layer(model: Any, layer: int | None) -> int:
    """``release.rmu.layer`` checked against the model: given, or the middle decoder layer."""
    count = model.config.get_text_config().num_hidden_layers
    if layer is None:
        return count // 2
    if not 0 <= layer < count:
        raise UserError(
            f"release.rmu.layer: got {layer}, but the model has {count} decoder layers "
            f"(expected 0 to {count - 1}, or null for the middle one, {count // 2})"
        )
    return layer


def layer_states(model: Any, block: Any, batch: dict[str, Tensor], bf16: bool) -> Tensor:
    """The output of decoder layer ``block`` (batch x positions x hidden) for ``batch``; the
    forward stops there (a hook raises ``_Reached``), so what lies above is never run."""
    captured: list[Tensor] = []

    def hook(module: Any, args: Any, output: Any) -> None:
        captured.append(output[0] if isinstance(output, tuple) else output)
        raise _Reached

    handle = block.register_forward_hook(hook)
    device = batch["input_ids"].device
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                use_cache=False,
            )
    except _Reached:
        pass
    finally:
        handle.remove()
    if not captured:
        raise RuntimeError("the forward pass did not reach the RMU layer")
    return captured[0]


def _loss_positions(labels: Tensor) -> Tensor:
    """Positions followed by a completion token (the states the answer is generated from:
    the last prompt token and the answer's tokens but the last), as ``_accumulate`` keeps."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return keep


class _RmuSteps:
    """RMU's optimiser steps: each step pairs its forget micro-batches with as many retain
    examples (drawn in turn from a seeded shuffle of them, reshuffled when used up), and
    minimises mean_forget ||h_L - c u||^2 / d + alpha * mean_retain ||h_L - h_L^ref||^2 / d
    over the loss positions (``_loss_positions``), each mean over the step's positions of its
    side, so accumulation over micro-batches gives the one-batch gradient. h_L is decoder layer
    L's output; h_L^ref the same forward with the adapter off (the model before this LoRA).

    u is a fixed random unit vector (Gaussian, from ``seed``); c is ``steering`` times the mean
    norm of the base states at the forget positions, measured once before training: a relative
    coefficient carries across models whose hidden states differ in scale by orders of
    magnitude (RMU's own absolute coefficients run from 6.5 to 300 across models), as Adaptive
    RMU (Dang et al. 2025) scales it by the frozen model's norm for the same reason."""

    def __init__(
        self, model: Any, loss_fn: Rmu, rows: Sequence[Sequence[tuple[list[int], list[int]]]],
        retain_rows: Sequence[Sequence[tuple[list[int], list[int]]]], cfg: LoraSpec, seed: int,
        bf16: bool, layer: int | None, steering: float,
    ) -> None:  # fmt: skip
        self.model, self.loss_fn, self.cfg, self.bf16 = model, loss_fn, cfg, bf16
        self.rows, self.retain_rows = rows, retain_rows
        self.layer = rmu_layer(model, layer)
        self.prefix, blocks = decoder_layers(model)
        self.block = blocks[self.layer]
        self.steering = steering
        self.seed = seed
        self.stream: list[int] = []
        self.shuffles = torch.Generator().manual_seed(seed + 1)
        self.base_norm = 0.0
        self.target: Tensor | None = None
        self.parts: list[tuple[float, float]] = []  # (forget, retain) term of each step
        self.tuner: Any = None  # set by start()
        self.pad_id = 0
        self.device = torch.device("cpu")

    @classmethod
    def of(
        cls, model: Any, tokenizer: Any, loss_fn: Loss, rows: list[list[tuple[list[int], list[int]]]],
        retain: Sequence[Example] | None, cfg: LoraSpec, chat: bool, seed: int, bf16: bool,
        layer: int | None, steering: float, accelerator: Any | None,
    ) -> _RmuSteps | None:  # fmt: skip
        """The steps of an RMU loss (None for the other losses). RMU trains in one process:
        its forward stops at layer L, which DDP's forward does not allow."""
        if not isinstance(loss_fn, Rmu):
            return None
        if accelerator is not None and accelerator.num_processes > 1:
            raise UserError("release.lora.processes: rmu trains in one process")
        if not retain:
            raise UserError("no retain examples for the rmu module (its retain term needs them)")
        retain_rows = _encode_rows(tokenizer, retain, cfg.max_length, chat, "retain", loss_fn)
        return cls(model, loss_fn, rows, retain_rows, cfg, seed, bf16, layer, steering)

    def start(
        self, tuner: Any, layers: dict[str, Any], pad_id: int, device: torch.device
    ) -> tuple[dict[str, Any], list[Tensor]]:
        """Measure the target c u on the model before this LoRA; return the LoRA layers of
        decoder layers 0..L and their parameters, the ones trained and returned."""
        self.tuner, self.pad_id, self.device = tuner, pad_id, device
        hidden = self.model.config.get_text_config().hidden_size
        was_training = self.model.training
        self.model.eval()
        size = self.cfg.batch_size
        order = list(range(len(self.rows)))
        groups = [order[i : i + size] for i in range(0, len(order), size)]
        total, count = 0.0, 0
        tuner.disable_adapter_layers()
        try:
            with torch.no_grad():
                for run in _within_tokens(groups, self.rows, self.cfg.max_forward_tokens):
                    states = self._states(self.rows, run).float()
                    total += float(states.norm(dim=-1).sum())
                    count += states.shape[0]
        finally:
            tuner.enable_adapter_layers()
            self.model.train(was_training)
        self.base_norm = total / max(count, 1)
        direction = torch.randn(hidden, generator=torch.Generator().manual_seed(self.seed))
        coefficient = self.steering * self.base_norm
        self.target = (coefficient * direction / direction.norm()).to(device)
        below = tuple(f"{self.prefix}.{i}." for i in range(self.layer + 1))
        kept = {n: layer for n, layer in layers.items() if n.startswith(below)}
        params = [
            p
            for layer in kept.values()
            for sub in (layer.lora_A[_ADAPTER], layer.lora_B[_ADAPTER])
            for p in sub.parameters()
        ]
        return kept, params

    def _states(
        self, rows: Sequence[Sequence[tuple[list[int], list[int]]]], run: list[int]
    ) -> Tensor:
        """Layer-L states at the loss positions of the examples ``run`` (positions x hidden,
        row-major)."""
        batch = _collate([seq for i in run for seq in rows[i]], self.pad_id)
        batch = {k: v.to(self.device) for k, v in batch.items()}
        keep = _loss_positions(batch["labels"])
        return layer_states(self.model, self.block, batch, self.bf16)[keep]

    def _retain_indices(self, count: int) -> list[int]:
        out = []
        for _ in range(count):
            if not self.stream:
                self.stream = torch.randperm(
                    len(self.retain_rows), generator=self.shuffles
                ).tolist()
            out.append(self.stream.pop())
        return out

    def step(self, group: list[list[int]]) -> float:
        """Accumulate one step's gradients (its forget micro-batches, then as many retain
        examples); return its loss, and keep its two terms."""
        assert self.target is not None, "start() first"
        limit = self.cfg.max_forward_tokens
        forget_runs = _within_tokens(group, self.rows, limit)
        n_forget = _positions(self.rows, forget_runs)
        forget = 0.0
        for run in forget_runs:
            loss = self.loss_fn.forget(self._states(self.rows, run), self.target)
            (loss / n_forget).backward()
            forget += float(loss.detach())
        retain_group = [self._retain_indices(len(micro)) for micro in group]
        retain_runs = _within_tokens(retain_group, self.retain_rows, limit)
        n_retain = _positions(self.retain_rows, retain_runs)
        retain = 0.0
        for run in retain_runs:
            self.tuner.disable_adapter_layers()
            try:
                with torch.no_grad():
                    reference = self._states(self.retain_rows, run)
            finally:
                self.tuner.enable_adapter_layers()
            states = self._states(self.retain_rows, run)
            loss = self.loss_fn.retain(states, reference)
            (loss / n_retain).backward()
            retain += float(loss.detach())
        self.parts.append((forget / n_forget, retain / n_retain))
        return forget / n_forget + retain / n_retain

    def info(self) -> dict[str, Any]:
        """What the module records of RMU (its json sidecar)."""
        first, last = (self.parts[0], self.parts[-1]) if self.parts else ((0.0, 0.0),) * 2
        return {
            "rmu_layer": self.layer,
            "rmu_steering": self.steering,
            "rmu_alpha": self.loss_fn.alpha,
            "rmu_base_norm": self.base_norm,
            "rmu_coefficient": self.steering * self.base_norm,
            "rmu_forget_loss": [first[0], last[0]],
            "rmu_retain_loss": [first[1], last[1]],
        }


def _positions(rows: Sequence[Sequence[tuple[list[int], list[int]]]], runs: list[list[int]]) -> int:
    """Loss positions (``_loss_positions``) of the examples of ``runs``, at least 1."""
    count = sum(
        sum(label != IGNORE_INDEX for label in labels[1:])
        for run in runs
        for i in run
        for _, labels in rows[i]
    )
    return max(count, 1)

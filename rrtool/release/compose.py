"""Exact LoRA arithmetic: Phi(t) = Phi_0 + sum_j c_j * dW_j, in weight-update space.

Why not PEFT's ``add_weighted_adapter``: its ``linear``/``ties``/``dare`` modes mix A and B
separately and are not the sum of products once two adapters are combined. Here every update
is the dense dW = (alpha / r) * B @ A, added with its signed weight (lambda_i, or -mu_i) into
fp32 master copies of the targeted weights; the model only ever receives the masters cast to
its dtype. A bf16 weight cannot hold an update below ~0.4% of its magnitude, and summing in
bf16 would lose each small step anew.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any

import torch
from torch import Tensor, nn

from rrtool.release.lora import LoraModule


def _linear(model: nn.Module, name: str) -> nn.Module:
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"the model has no module {name!r}") from None
    weight = getattr(module, "weight", None)
    if not isinstance(weight, Tensor) or weight.dim() != 2:
        raise ValueError(f"{name!r} is not a Linear-like module with a 2-D weight")
    return module


class MasterWeights:
    """fp32 master copies of the targeted weights; every change goes through them.

    ``apply(module, weight)`` adds ``weight * dW`` (negative = subtraction) to the masters and
    writes them back in the model's dtype. ``history`` lists (module sha256, weight) in order.
    """

    def __init__(self, model: nn.Module, target_names: Iterable[str]) -> None:
        self.model = model
        self._linears = {name: _linear(model, name) for name in dict.fromkeys(target_names)}
        self.masters: dict[str, Tensor] = {
            name: lin.weight.detach().to(torch.float32, copy=True)
            for name, lin in self._linears.items()
        }
        self.history: list[tuple[str, float]] = []

    @property
    def names(self) -> list[str]:
        return list(self.masters)

    @torch.no_grad()
    def extend(self, target_names: Iterable[str]) -> list[str]:
        """Master copies of the weights in ``target_names`` not targeted yet (a later module
        may reach layers an earlier one did not, as A1 after RMU's F0); the names added. Such
        a weight still holds its base value (only the masters write into targeted weights), so
        its copy made now equals the one the start would have made."""
        added = [n for n in dict.fromkeys(target_names) if n not in self.masters]
        for name in added:
            self._linears[name] = _linear(self.model, name)
            self.masters[name] = self._linears[name].weight.detach().to(torch.float32, copy=True)
        return added

    @torch.no_grad()
    def apply(self, module: LoraModule, weight: float) -> None:
        """Add ``weight * (alpha/r) * B @ A`` to each targeted weight."""
        missing = [n for n in module.names if n not in self.masters]
        if missing:
            raise ValueError(f"module targets weights without a master copy: {missing[:3]}")
        for name in module.names:
            master = self.masters[name]
            master.add_(module.delta(name).to(master.device), alpha=float(weight))
            self._linears[name].weight.copy_(master)  # copy_ casts to the model's dtype
        self.history.append((module.sha256(), float(weight)))

    @torch.no_grad()
    def in_sync(self) -> bool:
        """True when the model holds exactly the masters cast to its dtype (nothing else
        wrote into the targeted weights since the last ``apply``)."""
        return all(
            torch.equal(lin.weight, self.masters[name].to(lin.weight.dtype))
            for name, lin in self._linears.items()
        )


def rebuild(
    model: nn.Module, modules_with_weights: Sequence[tuple[LoraModule, float]]
) -> MasterWeights:
    """Replay a stack of (module, weight) onto ``model``, which must hold fresh base weights.

    The same stack replayed on the same base gives bit-identical weights (same fp32
    operations in the same order), which is how an export shows it matches the run.
    """
    names: dict[str, None] = {}
    for module, _ in modules_with_weights:
        names.update(dict.fromkeys(module.names))
    masters = MasterWeights(model, names)
    for module, weight in modules_with_weights:
        masters.apply(module, weight)
    return masters


class ScaledAdapter:
    """Attach a ``LoraModule`` unmerged, scaled by ``weight``; change it in place.

    Inside ``with ScaledAdapter(model, module, w) as adapter:`` each targeted Linear returns
    ``W x + w * (alpha/r) * B (A x)``; ``adapter.set_weight(w2)`` takes effect on the next
    forward pass (no reload, no merge). Forward hooks rather than PEFT layers: they leave the
    module tree untouched, stack exactly with other adapters, and cannot be left merged.
    The adapter path runs in fp32 and is cast to the layer's output dtype.
    """

    def __init__(self, model: nn.Module, module: LoraModule, weight: float = 1.0) -> None:
        self.model = model
        self.module = module
        self._weight = float(weight)
        self._linears = {name: _linear(model, name) for name in module.names}
        self._handles: list[Any] = []

    @property
    def weight(self) -> float:
        return self._weight

    def set_weight(self, weight: float) -> None:
        self._weight = float(weight)

    def __enter__(self) -> ScaledAdapter:
        if self._handles:
            raise RuntimeError("this adapter is already attached")
        for name, linear in self._linears.items():
            device = linear.weight.device
            a = self.module.A[name].to(device)
            b = self.module.B[name].to(device)
            self._handles.append(linear.register_forward_hook(self._hook(a, b), with_kwargs=True))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, a: Tensor, b: Tensor) -> Any:
        scale = self.module.scale

        def hook(
            _module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Tensor
        ) -> Tensor | None:
            if self._weight == 0.0:
                return None  # the base layer's own output, untouched
            x = args[0] if args else kwargs["input"]
            update = (x.to(torch.float32) @ a.T) @ b.T
            return output + (update * (self._weight * scale)).to(output.dtype)

        return hook

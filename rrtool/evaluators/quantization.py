"""Round-to-nearest weight quantization, simulated in place: the quantization attack's model.

Zhang et al. (ICLR 2025, "Catastrophic failure of LLM unlearning via quantization") found that
quantizing an unlearned model can bring the forgotten knowledge back: unlearning moves the
weights by less than a quantization step, and rounding snaps them back toward the base. This
module rounds the weights of every ``Linear`` in the decoder (the output head and the
embeddings, which deployment quantizers keep in higher precision, excepted) and puts them back
in the model's own dtype ("fake quantization"): the forward pass is the quantized model's, up to
the float arithmetic. It is a simulation of deployment quantizers, not one of them.

Schemes (``SCHEMES``):

- ``int8``: symmetric per output channel (absmax / 127), as the weight side of LLM.int8 without
  its outlier columns;
- ``int4``: asymmetric per group of 128 input columns (min-max, 15 levels and a zero point),
  the round-to-nearest baseline GPTQ and AWQ are measured against.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class Scheme:
    name: str
    bits: int
    group_size: int | None  # None: one scale per output channel, symmetric

    @property
    def text(self) -> str:
        if self.group_size is None:
            return f"{self.bits}-bit round-to-nearest, symmetric, per output channel"
        return (
            f"{self.bits}-bit round-to-nearest, asymmetric, groups of {self.group_size} "
            "input columns"
        )

    @property
    def key(self) -> str:
        """Names the weights this scheme makes of a named state (the answer cache's key):
        change ``QUANTIZER_VERSION`` when the rounding changes."""
        return f"quantized:{QUANTIZER_VERSION}:{self.name}:{self.bits}:{self.group_size}"


QUANTIZER_VERSION = 1
SCHEMES = {s.name: s for s in (Scheme("int8", 8, None), Scheme("int4", 4, 128))}


def fake_quantize(weight: Tensor, scheme: Scheme) -> Tensor:
    """``weight`` (out x in) rounded to ``scheme``'s grid and returned in its own dtype."""
    w = weight.detach().float()
    tiny = torch.finfo(torch.float32).tiny
    if scheme.group_size is None:
        qmax = 2 ** (scheme.bits - 1) - 1
        scale = w.abs().amax(dim=1, keepdim=True).clamp_min(tiny) / qmax
        return ((w / scale).round().clamp(-qmax - 1, qmax) * scale).to(weight.dtype)
    out, fan_in = w.shape
    g = scheme.group_size
    pad = (-fan_in) % g
    groups = torch.nn.functional.pad(w, (0, pad)).reshape(out, -1, g)
    # Padding columns are zeros: they join their group's min/max, as a quantizer that pads
    # the last group would; they are cut off again below.
    low, high = groups.amin(dim=2, keepdim=True), groups.amax(dim=2, keepdim=True)
    levels = 2**scheme.bits - 1
    scale = (high - low).clamp_min(tiny) / levels
    zero = (-low / scale).round()
    q = ((groups / scale).round() + zero).clamp(0, levels)
    return ((q - zero) * scale).reshape(out, -1)[:, :fan_in].to(weight.dtype)


def quantizable(model: Any) -> list[tuple[str, torch.nn.Linear]]:
    """The decoder's Linear layers: every ``nn.Linear`` but the output head (and any layer
    whose weight is the input embedding, tied)."""
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
        and module is not head
        and module.weight.data_ptr() != embedding.data_ptr()
    ]


@contextmanager
def quantized(model: Any, scheme: Scheme) -> Iterator[int]:
    """The model with its decoder Linears fake-quantized for the block (yields how many);
    the exact weights are put back after. Holds a copy of those weights meanwhile."""
    layers = quantizable(model)
    saved = []
    try:
        with torch.no_grad():
            for _, module in layers:
                saved.append((module, module.weight.data.clone()))
                module.weight.data.copy_(fake_quantize(module.weight.data, scheme))
        yield len(layers)
    finally:
        with torch.no_grad():
            for module, weight in saved:
                module.weight.data.copy_(weight)

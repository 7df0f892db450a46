"""Generation in bfloat16 over float32 weights, the weights put back bit for bit afterwards.

On CPUs with bf16 instructions (``avx512_bf16``, AMX) a bf16 matrix product reads half the
bytes of an fp32 one, and decoding small models is bound by reading the weights: SmolLM2's
linear layers ran ~2x faster (``tests/bench_continuous.py --compute-dtype bfloat16``). Release
must keep merging into fp32 masters, so the weights are not converted for good:
:func:`computing_in` casts every floating-point parameter for the duration of one generation
call and restores the original fp32 tensors after (the same tensor objects, so nothing that
holds them, Release's masters included, sees a change). Buffers stay as they are (rotary
frequencies are computed in fp32 by the models themselves).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch loads with the hf backend, not with `rrtool plan`
    import torch

DTYPES = ("bfloat16", "float16")


def dtype_of(name: str) -> torch.dtype | None:
    """The torch dtype a ``compute_dtype`` name asks for; None for ``model`` (no cast)."""
    import torch

    if name == "model":
        return None
    if name not in DTYPES:
        raise ValueError(f"compute_dtype must be `model` or one of {list(DTYPES)} (got {name!r})")
    return getattr(torch, name)


@contextlib.contextmanager
def computing_in(model: Any, dtype: torch.dtype | None) -> Iterator[None]:
    """Run the body with ``model``'s floating parameters in ``dtype`` (no-op for None)."""
    if dtype is None:
        yield
        return
    saved: list[tuple[Any, Any]] = []  # (parameter, its original tensor)
    try:
        for parameter in model.parameters():  # tied weights are one parameter: cast once
            if parameter.is_floating_point() and parameter.dtype != dtype:
                saved.append((parameter, parameter.data))
                parameter.data = parameter.data.to(dtype)
        yield
    finally:
        for parameter, data in saved:
            parameter.data = data


def cpu_has_bf16() -> bool:
    """Whether this machine's CPU has bf16 matrix instructions (Linux ``/proc/cpuinfo``)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = handle.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags

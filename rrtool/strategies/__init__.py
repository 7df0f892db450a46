"""Release strategies as units: one file per strategy, each a ``Strategy`` (its schedule of
steps, the objective of its forget-side module (its loss and sign, ``steps.MODULE_OBJECTIVES``),
the target kinds it applies to, its plan text), registered in ``STRATEGIES``, the one table
the spec, the planner and the Release phase read.

A new strategy: a file here with a ``Strategy`` subclass, its entry below, its name in the
spec's ``release.strategy`` choices (a test keeps the two equal), and, if its module is made a
new way, an objective in ``steps.MODULE_OBJECTIVES`` with a loss ``train_lora`` knows.
"""

from __future__ import annotations

from rrtool.strategies import (
    cmd,
    dpo,
    ext_sub,
    gradient_ascent,
    iterative,
    npo,
    rmu,
    single_subtraction,
)
from rrtool.strategies.base import Options, Strategy
from rrtool.strategies.steps import MODULE_OBJECTIVES, Step

STRATEGIES: dict[str, Strategy] = {
    s.STRATEGY.name: s.STRATEGY
    for s in (iterative, single_subtraction, ext_sub, gradient_ascent, npo, dpo, cmd, rmu)
}

__all__ = ["MODULE_OBJECTIVES", "STRATEGIES", "Options", "Step", "Strategy"]

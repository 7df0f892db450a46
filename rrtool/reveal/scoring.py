"""The score of one instruction: relevance and diversity mixed by a weighted harmonic mean.

``score = 1 / (alpha / v + (1 - alpha) / tau)`` with ``tau`` the oracle relevance and ``v`` the
normalised Vendi diversity (both in [0, 1]). The harmonic mean is dominated by the smaller
term, so an instruction cannot buy a high score with diversity alone (off-target but varied
outputs) nor with relevance alone (one toxic sentence repeated).
"""

from __future__ import annotations

import math

__all__ = ["combined_score"]


def _unit(name: str, value: float) -> float:
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"{name} is NaN")
    # Oracles may return values a hair outside [0, 1] (float noise, lenient plugins).
    return min(1.0, max(0.0, value))


def combined_score(relevance: float, diversity: float, alpha: float) -> float:
    """Weighted harmonic mean ``1 / (alpha / diversity + (1 - alpha) / relevance)``.

    ``alpha`` = 0 gives ``relevance``, ``alpha`` = 1 gives ``diversity``. Inputs are clipped to
    [0, 1]; a zero component that carries positive weight gives 0 (the limit of the formula).
    The result is in [0, 1] and non-decreasing in both ``relevance`` and ``diversity``.
    """
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    tau = _unit("relevance", relevance)
    v = _unit("diversity", diversity)
    if alpha == 0.0:
        return tau
    if alpha == 1.0:
        return v
    if tau == 0.0 or v == 0.0:
        return 0.0
    # Clip: the harmonic mean of values in [0, 1] is in [0, 1] up to round-off.
    return min(1.0, 1.0 / (alpha / v + (1.0 - alpha) / tau))

"""When a measure cannot show the change it is there to show.

A forget measure whose base model already sits at the "forgotten" end of its range (pass@1 0,
no person named) cannot show forgetting; a utility measure whose base sits at the "lost" end
(GSM8K accuracy 0 on a 135M model) cannot show a loss, so any weight looks free. A 95% interval
spanning nearly the whole range says the same for any value. Release and the audit flag these
instead of reporting a verdict the data cannot support.
"""

from __future__ import annotations

from typing import Literal

# Within 2% of the range from a bound counts as at it; an interval covering 90% of the range
# says nothing.
AT_BOUND = 0.02
UNINFORMATIVE = 0.9


def limit(
    key: str,
    value: float | None,
    ci: list[float] | tuple[float, float] | None,
    better: Literal["lower", "higher"],
    bounds: tuple[float, float | None],
) -> str | None:
    """Why ``value`` (the base model's score of measure ``key``: ``forget`` or ``utility``)
    cannot show its change, or None. A forget measure must be able to move towards ``better``,
    a utility measure away from it."""
    if value is None or value != value:
        return None
    lo, hi = bounds
    towards_low = (better == "lower") == (key == "forget")
    if hi is not None:
        span = hi - lo
        if ci is not None and ci[1] - ci[0] >= UNINFORMATIVE * span:
            return f"its 95% interval [{ci[0]:.2f}, {ci[1]:.2f}] spans the whole range"
        if not towards_low and value >= hi - AT_BOUND * span:
            return f"the base model scores {value:.3g}, at the ceiling ({hi:g})"
        scale = span
    else:
        scale = max(abs(lo), 1.0)
    if towards_low and value <= lo + AT_BOUND * scale:
        return f"the base model scores {value:.3g}, at the floor ({lo:g})"
    return None

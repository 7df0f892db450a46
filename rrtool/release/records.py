"""Release's step record: what ``release/steps.jsonl`` keeps for each step, written and read
here only (the phase writes it, a resumed run reads it back, the audit passes it on).

A step that trained and applied its module records its weight, where the weight came from
(the rule or given weight), the module's artifact and digest, the scores after it with their
intervals, and its time; a step whose module could not be trained records why (``failed``)
and no module. ``reverted`` marks a step a stopping rule undid later.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

# The keys of a step's entry in the applied stack (``release/state.json``).
STACK_KEYS = ("step", "module", "kind", "iteration", "weight", "coefficient", "artifact",
              "sha256", "s", "u")  # fmt: skip
_APPLIED_ONLY = ("artifact", "sha256", "s_ci", "u_ci", "seconds")


@dataclass
class StepRecord:
    step: int
    module: str
    kind: str
    iteration: int
    weight: float | None = None
    coefficient: float | None = None
    weight_from: str | None = None
    artifact: str | None = None
    sha256: str | None = None
    s: float | None = None
    u: float | None = None
    s_ci: list[float] | None = None
    u_ci: list[float] | None = None
    seconds: float | None = None
    reverted: bool = False
    failed: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON line: an applied step without ``failed``, a failed one without the
        applied module's fields."""
        out = asdict(self)
        for key in ("failed",) if self.failed is None else _APPLIED_ONLY:
            del out[key]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StepRecord:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def stack_entry(self) -> dict[str, Any]:
        """The step as the applied stack lists it."""
        return {key: getattr(self, key) for key in STACK_KEYS}

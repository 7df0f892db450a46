"""A Release step (one module of the schedule) and how its module is made.

Here, not in ``release/``, because the spec, the planner and the phase all read the
strategies, and a strategy is its schedule of steps: this room imports nothing of rrtool.
"""

from __future__ import annotations

from dataclasses import dataclass

# How a step's module is made -> (the loss ``train_lora`` minimises, whether a forget module
# made so has learnt the target and is therefore subtracted). One table for both, so a new
# objective cannot be trained with one loss and signed as another (``release.lora.OBJECTIVES``
# lists the losses; a test keeps the two in step).
MODULE_OBJECTIVES: dict[str, tuple[str, bool]] = {
    "nll": ("nll", True),
    "ext_sub": ("nll", True),  # D0, the deficiency of an anti-expert trained with nll
    "gradient_ascent": ("gradient_ascent", False),
    "npo": ("npo", False),
    "dpo": ("dpo", False),
    "cmd": ("nll", False),  # learns the model's own cleaned continuations: added
    "rmu": ("rmu", False),  # moves the forget states away from the base's: added
    # learns the forget prompts answered as if the target were absent (and the retain
    # examples as they are), on the model it is then added to: added
    "abstain": ("nll", False),
}


@dataclass(frozen=True)
class Step:
    """One module of the Release schedule."""

    number: int  # 1-based position in the stack (0 is the base model)
    name: str  # F0, R1, F1, ... (R0 first with the retain-first schedule)
    kind: str  # forget | retain
    iteration: int
    # How the module is made: nll (learn the examples) | gradient_ascent | npo | dpo | cmd
    # (learn the model's own continuations of cleaned contexts) | ext_sub (E0: the expert,
    # trained with nll; D0: Ext-Sub's deficiency, computed from the expert and anti-expert) |
    # rmu (misdirect the forget answers' hidden states at one layer, keep the retain ones') |
    # abstain (learn the forget prompts answered as if the target were absent).
    objective: str = "nll"

    def __post_init__(self) -> None:
        if self.objective not in MODULE_OBJECTIVES:
            raise ValueError(
                f"objective must be one of {', '.join(MODULE_OBJECTIVES)}, got {self.objective!r}"
            )

    @property
    def sign(self) -> float:
        """A forget module that learnt the target (or Ext-Sub's deficiency of one) is
        subtracted; a retain module, or one trained away from the target (gradient ascent,
        NPO, DPO, CMD, RMU), is added."""
        learnt_target = MODULE_OBJECTIVES[self.objective][1]
        return -1.0 if self.kind == "forget" and learnt_target else 1.0

    @property
    def training_objective(self) -> str:
        """The loss ``train_lora`` minimises for this step."""
        return MODULE_OBJECTIVES[self.objective][0]

"""Reveal & Release (the paper's method): subtract a forget LoRA F0, then per iteration add a
retain LoRA R_i and subtract a new forget LoRA F_i, every weight chosen by the rules.
``release.schedule: retain_first`` adds R0 before F0; ``release.end_with_retain`` a last
R_{n+1} after F_n."""

from __future__ import annotations

from rrtool.strategies.base import Options, Strategy
from rrtool.strategies.steps import Step


class Iterative(Strategy):
    name = "iterative"
    summary = (
        "subtract forget LoRA (mu0), then {iterations} x [add retain LoRA, subtract forget LoRA]"
    )
    iterative = True
    options = ("schedule", "end_with_retain", "forget_projection")

    def schedule(self, options: Options) -> list[Step]:
        steps = [Step(1, "R0", "retain", 0)] if options.schedule == "retain_first" else []
        steps.append(Step(len(steps) + 1, "F0", "forget", 0))
        for i in range(1, options.iterations + 1):
            steps.append(Step(len(steps) + 1, f"R{i}", "retain", i))
            steps.append(Step(len(steps) + 1, f"F{i}", "forget", i))
        if options.end_with_retain:
            last = options.iterations + 1
            steps.append(Step(len(steps) + 1, f"R{last}", "retain", last))
        return steps

    def first_module(self, options: Options, retain_n: int) -> tuple[str, str]:
        return "train forget LoRA", "subtract mu0"


STRATEGY = Iterative()

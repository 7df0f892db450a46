"""Baseline: Ext-Sub (Hu et al. 2024): an expert LoRA E0 on the retain data, added whole, then
the deficiency D0 of an anti-expert trained on the forget data, subtracted (the arithmetic is
``release/ext_sub.py``)."""

from __future__ import annotations

from rrtool.strategies.base import Options, Strategy
from rrtool.strategies.steps import Step


class ExtSub(Strategy):
    name = "ext_sub"
    summary = "baseline: Ext-Sub (add an expert LoRA, subtract the anti-expert's deficiency)"
    objective = "ext_sub"

    def schedule(self, options: Options) -> list[Step]:
        return [Step(1, "E0", "retain", 0, "ext_sub"), Step(2, "D0", "forget", 0, "ext_sub")]

    def first_module(self, options: Options, retain_n: int) -> tuple[str, str]:
        return (
            f"train expert LoRA E0 on ~{retain_n} retain examples (added whole) and an "
            "anti-expert LoRA",
            "subtract its deficiency D0 (Ext-Sub), alpha",
        )


STRATEGY = ExtSub()

"""Baseline: one LoRA trained to raise the loss on the forget data, added."""

from __future__ import annotations

from rrtool.strategies.base import Options, Strategy


class GradientAscent(Strategy):
    name = "gradient_ascent"
    summary = "baseline: gradient ascent on the forget data (one LoRA)"
    objective = "gradient_ascent"

    def first_module(self, options: Options, retain_n: int) -> tuple[str, str]:
        return "train a LoRA by gradient ascent", "add it, weight"


STRATEGY = GradientAscent()

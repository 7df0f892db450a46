"""Baseline: one forget LoRA subtracted (with ``release.forget_data``: the paper's
PEM-external)."""

from __future__ import annotations

from rrtool.strategies.base import Options, Strategy


class SingleSubtraction(Strategy):
    name = "single_subtraction"
    summary = "baseline: subtract one forget LoRA"

    def first_module(self, options: Options, retain_n: int) -> tuple[str, str]:
        return "train forget LoRA", "subtract mu0"


STRATEGY = SingleSubtraction()

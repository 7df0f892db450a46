"""Baseline: one LoRA trained with Negative Preference Optimisation (Zhang et al. 2024) against
the model before it (``release.npo_beta``), added."""

from __future__ import annotations

from rrtool.strategies.base import Options, Strategy


class Npo(Strategy):
    name = "npo"
    summary = "baseline: NPO on the forget data (one LoRA)"
    options = ("npo_beta",)
    objective = "npo"

    def first_module(self, options: Options, retain_n: int) -> tuple[str, str]:
        return f"train a LoRA by NPO (beta {options.npo_beta:g})", "add it, weight"


STRATEGY = Npo()

"""Baseline, toxicity only: CMD self-detoxification (Tang et al. 2024): the toxic segments of
Reveal's contexts are rewritten by the model, the cleaned texts continued, and one LoRA learns
the non-toxic continuations from the original contexts; added (``release/cmd.py``)."""

from __future__ import annotations

from rrtool.strategies.base import Options, Strategy


class Cmd(Strategy):
    name = "cmd"
    summary = "baseline: CMD self-detoxification (one LoRA)"
    objective = "cmd"
    target_kinds = ("toxicity",)

    def plan_line(
        self, options: Options, forget_n: int, retain_n: int, source: str, lora: str, weight: str
    ) -> str:
        # It trains on rewritten contexts, not on forget examples.
        return (
            f"the model rewrites the toxic segments of up to ~{forget_n} {source} contexts and "
            f"continues the cleaned texts; a LoRA ({lora}) learns the non-toxic "
            f"continuations from the original contexts, added with weight = {weight}"
        )


STRATEGY = Cmd()

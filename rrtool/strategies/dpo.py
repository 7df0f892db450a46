"""Baseline: one LoRA trained with DPO (Rafailov et al. 2023) against the model before it
(``release.dpo_beta``): each forget answer is the rejected one; the chosen answer is
``release.dpo_chosen``'s (a refusal, retain answers in turn, or NER's ``[]``); added."""

from __future__ import annotations

from rrtool.strategies.base import Options, Strategy

CHOSEN = {"empty_list": "`[]`", "refusal": "the refusal", "retain": "retain answers"}


class Dpo(Strategy):
    name = "dpo"
    summary = "baseline: DPO against the model before it (one LoRA)"
    options = ("dpo_beta", "dpo_chosen", "refusal")
    objective = "dpo"

    def needs_retain_examples(self, options: Options) -> bool:
        return options.dpo_chosen == "retain"  # the chosen answers are retain answers

    def first_module(self, options: Options, retain_n: int) -> tuple[str, str]:
        return (
            f"train a LoRA by DPO (beta {options.dpo_beta:g}; chosen: "
            f"{CHOSEN[options.dpo_chosen]}, rejected: the forget answers)",
            "add it, weight",
        )


STRATEGY = Dpo()

"""One LoRA trained by Representation Misdirection for Unlearning (Li et al. 2024,
the WMDP benchmark's RMU), added. At one decoder layer L (``release.rmu.layer``, default the
middle one) the hidden states at the forget answers are pushed towards a fixed random
direction, ``release.rmu.steering`` times their mean norm, while those at the retain answers
are kept where the model before the module puts them (weight ``release.rmu.alpha``); only the
LoRA layers of decoder layers 0..L are trained (``release/lora.py``, ``_RmuSteps``).

``release.rmu.abstain`` adds a second module A1, trained on the model with F0 applied: the
forget prompts answered as if the target were absent, the retain examples as they are
(``release/phase.py``, ``abstentions``); added whole."""

from __future__ import annotations

from rrtool.strategies.base import Options, Strategy
from rrtool.strategies.steps import Step


class Rmu(Strategy):
    name = "rmu"
    summary = (
        "RMU: forget states misdirected at one layer (a LoRA, searched weight; with "
        "release.rmu.abstain an answer-format LoRA after it)"
    )
    options = ("rmu",)
    objective = "rmu"

    def schedule(self, options: Options) -> list[Step]:
        steps = [Step(1, "F0", "forget", 0, self.objective)]
        if options.rmu_abstain:
            steps.append(Step(2, "A1", "retain", 1, "abstain"))
        return steps

    def needs_retain_examples(self, options: Options) -> bool:
        return True  # the retain term keeps the retain answers' states

    def plan_line(
        self, options: Options, forget_n: int, retain_n: int, source: str, lora: str, weight: str
    ) -> str:
        layer = "the middle layer" if options.rmu_layer is None else f"layer {options.rmu_layer}"
        return (
            f"train a LoRA by RMU at {layer} ({lora}) on ~{forget_n} {source} forget examples "
            f"(their states pushed towards a random direction, {options.rmu_steering:g} x "
            f"their mean norm) and ~{retain_n} retain examples (their states kept, alpha "
            f"{options.rmu_alpha:g}), add it, weight = {weight}"
        )


STRATEGY = Rmu()

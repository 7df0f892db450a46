"""The interface every Release strategy implements (one file per strategy in this folder)."""

from __future__ import annotations

from dataclasses import dataclass

from rrtool.strategies.steps import Step


@dataclass(frozen=True)
class Options:
    """What a strategy reads of the spec (``Spec.strategy_options`` builds it; this room
    imports no spec): the iteration count after the stopping cap and its own options."""

    iterations: int  # after the stopping cap
    schedule: str = "forget_first"  # release.schedule
    end_with_retain: bool = False
    npo_beta: float = 0.1
    dpo_beta: float = 0.1
    dpo_chosen: str = "refusal"  # resolved for the target kind
    rmu_layer: int | None = None  # release.rmu.layer (None: the middle decoder layer)
    rmu_steering: float = 1.0
    rmu_alpha: float = 10.0
    rmu_abstain: bool = False  # release.rmu.abstain: an answer-format module A1 after F0


class Strategy:
    """A Release strategy: how the forget (and retain) data become an edit.

    ``name``: the `release.strategy` value; ``summary``: the plan's one-line description
    (``{iterations}`` is filled in); ``objective``: how its forget-side module is made (a key
    of ``MODULE_OBJECTIVES``: its loss and sign); ``target_kinds``: the kinds it applies to
    (None: all); ``iterative``: whether it composes retain and forget modules in turn;
    ``options``: the ``release`` keys it owns.
    """

    name: str = ""
    summary: str = ""
    objective: str = "nll"
    target_kinds: tuple[str, ...] | None = None
    iterative: bool = False
    # The `release` keys only this strategy reads: given with another strategy, they are a
    # located spec error rather than silently ignored.
    options: tuple[str, ...] = ()

    def schedule(self, options: Options) -> list[Step]:
        """The steps Release runs, in order: by default one forget-side module F0."""
        return [Step(1, "F0", "forget", 0, self.objective)]

    def needs_retain_examples(self, options: Options) -> bool:
        """Whether a step trains on retain examples."""
        return any(step.kind == "retain" for step in self.schedule(options))

    def first_module(self, options: Options, retain_n: int) -> tuple[str, str]:
        """What is trained first and how it is applied (the two halves of ``plan_line``; a
        strategy that words its whole line itself overrides ``plan_line`` instead)."""
        raise NotImplementedError

    def plan_line(
        self, options: Options, forget_n: int, retain_n: int, source: str, lora: str, weight: str
    ) -> str:
        """The plan's line for the first module: ``source`` names the forget data
        (Reveal's or external), ``lora`` the LoRA settings, ``weight`` how its weight is set."""
        train, apply = self.first_module(options, retain_n)
        return f"{train} ({lora}) on ~{forget_n} {source} forget examples, {apply} = {weight}"

    def __repr__(self) -> str:  # the registry's entries read as their names in errors
        return f"<strategy {self.name}>"

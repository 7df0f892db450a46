"""The losses a LoRA module is trained with, one object each (``make_loss`` builds them by
name; ``LOSSES`` lists the names ``train_lora`` accepts).

A loss turns one micro-batch's per-token NLLs (of the completion tokens, in row-major order of
``keep``'s True positions) into its summed loss; ``per_example`` says whether the step divides
it by examples (sequence-level losses) or by completion tokens, ``sequences`` how many
sequences one example brings, ``uses_reference`` whether it needs the per-row NLL of the model
before this LoRA (the same forward with the adapter off).

``Rmu`` is the exception: it is not a function of token NLLs but of one decoder layer's hidden
states (``hidden_states``), so ``train_lora`` trains it on its own path (``lora.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def row_sums(values: Tensor, keep: Tensor) -> Tensor:
    """Per-row sums of values laid out like ``keep``'s True positions (row-major)."""
    rows = keep.nonzero()[:, 0]
    return torch.zeros(keep.shape[0], device=values.device).index_add_(0, rows, values)


class Loss:
    name = ""
    sequences = 1
    per_example = False
    uses_reference = False
    hidden_states = False  # a loss of layer-L hidden states (RMU), not of token NLLs

    def __call__(self, token_nll: Tensor, keep: Tensor, reference: Tensor | None) -> Tensor:
        raise NotImplementedError


class Nll(Loss):
    """Learn the examples (the forget and retain modules of Reveal & Release)."""

    name = "nll"

    def __call__(self, token_nll: Tensor, keep: Tensor, reference: Tensor | None) -> Tensor:
        return token_nll.sum()


class GradientAscent(Loss):
    """The negated NLL (the GA baseline): unbounded, the model is pushed off the examples."""

    name = "gradient_ascent"

    def __call__(self, token_nll: Tensor, keep: Tensor, reference: Tensor | None) -> Tensor:
        return -token_nll.sum()


@dataclass(frozen=True)
class Npo(Loss):
    """Negative Preference Optimisation (Zhang et al. 2024): per sequence
    (2 / beta) * softplus(beta * log(pi / pi_ref)), pi_ref the model before this LoRA."""

    beta: float = 0.1
    name = "npo"
    per_example = True
    uses_reference = True

    def __call__(self, token_nll: Tensor, keep: Tensor, reference: Tensor | None) -> Tensor:
        assert reference is not None
        log_ratio = reference - row_sums(token_nll, keep)  # log pi - log pi_ref
        return (2.0 / self.beta) * torch.nn.functional.softplus(self.beta * log_ratio).sum()


@dataclass(frozen=True)
class Dpo(Loss):
    """DPO (Rafailov et al. 2023): per example -log sigmoid(beta * (log pi/pi_ref (chosen) -
    log pi/pi_ref (rejected))); rows alternate chosen, rejected."""

    beta: float = 0.1
    name = "dpo"
    sequences = 2
    per_example = True
    uses_reference = True

    def __call__(self, token_nll: Tensor, keep: Tensor, reference: Tensor | None) -> Tensor:
        assert reference is not None
        log_ratio = reference - row_sums(token_nll, keep)
        margin = self.beta * (log_ratio[0::2] - log_ratio[1::2])
        return torch.nn.functional.softplus(-margin).sum()


@dataclass(frozen=True)
class Rmu(Loss):
    """RMU (Li et al. 2024, Representation Misdirection for Unlearning) on one decoder layer's
    output h_L, summed over the loss positions of a micro-batch (``train_lora`` divides by the
    step's positions): forget positions pay ||h_L - c u||^2 / hidden_size (pushed towards a
    fixed random direction u, scaled by c), retain positions ``alpha`` times ||h_L -
    h_L^ref||^2 / hidden_size (kept where the model before this LoRA puts them)."""

    alpha: float = 10.0
    name = "rmu"
    hidden_states = True

    def __call__(self, token_nll: Tensor, keep: Tensor, reference: Tensor | None) -> Tensor:
        raise TypeError("rmu is a loss of hidden states: call forget() and retain()")

    def forget(self, states: Tensor, target: Tensor) -> Tensor:
        """Summed distance of the forget positions' states (tokens x hidden) to the target."""
        return (states.float() - target).pow(2).sum() / states.shape[-1]

    def retain(self, states: Tensor, reference: Tensor) -> Tensor:
        """Summed, alpha-weighted distance of the retain positions' states to the reference's."""
        return self.alpha * (states.float() - reference.float()).pow(2).sum() / states.shape[-1]


LOSSES = ("nll", "gradient_ascent", "npo", "dpo", "rmu")


def make_loss(
    name: str, npo_beta: float = 0.1, dpo_beta: float = 0.1, rmu_alpha: float = 10.0
) -> Loss:
    """The loss called ``name`` (one of ``LOSSES``), with its beta (RMU: its alpha)."""
    if name == "nll":
        return Nll()
    if name == "gradient_ascent":
        return GradientAscent()
    if name == "npo":
        return Npo(npo_beta)
    if name == "dpo":
        return Dpo(dpo_beta)
    if name == "rmu":
        return Rmu(rmu_alpha)
    raise ValueError(f"objective must be one of {', '.join(LOSSES)}, got {name!r}")

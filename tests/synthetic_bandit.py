"""A bandit problem where the truth is known: the Reveal search's pool, features, surrogate
and UCB code, with rewards from a known smooth function of the pool points instead of an LLM.

- Arms: the scrambled Sobol pool of ``sobol_pool`` (points z in [0,1]^D), as in Reveal.
- Features: what the bandit sees. In Reveal they are the LLM's last hidden state for the
  instruction decoded from z; here a fixed random two-layer map of z into ``hidden`` (576, the
  width of SmolLM2's states), with per-dimension scales spread over two orders of magnitude and
  large offsets, as hidden states have.
- Reward: three Gaussian bumps over z on a floor of 0.1 (rewards ~0.1-0.5, the range of real
  trial scores), observed with Gaussian noise of SD 0.074 (the SD of repeated real trials).
- The search loop is Reveal's: ``initial`` random arms, then ``outer`` loops of ``inner`` picks,
  each loop after the first starting from the ``top_k`` best arms re-scored with fresh noise;
  the search's answer is the arm with the best observed score, or with ``confirm_top``, the
  best of that many top arms re-scored with fresh noise (Reveal's ``search.confirm_top``; only
  the last outer loop's answer is scored here).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from rrtool.reveal.neuralucb import NeuralUCB, sobol_pool

NOISE_SD = 0.074  # SD of one instruction's score over repeated trials, measured on Reveal


@dataclass(frozen=True)
class Problem:
    features: torch.Tensor  # (N, hidden): what the bandit sees
    reward: torch.Tensor  # (N,): the noise-free reward of each arm


def problem(seed: int, pool: int = 1000, dim: int = 10, hidden: int = 576) -> Problem:
    z = sobol_pool(dim, pool, seed)
    gen = torch.Generator().manual_seed(seed)
    inner = torch.randn(dim, 64, generator=gen) * 1.5
    bias = torch.randn(64, generator=gen)
    outer = torch.randn(64, hidden, generator=gen) / 8
    scale = torch.exp(torch.randn(hidden, generator=gen))
    offset = torch.randn(hidden, generator=gen) * 3
    features = torch.tanh(z @ inner + bias) @ outer * scale + offset
    centres = torch.rand(3, dim, generator=gen)
    heights = torch.tensor([0.35, 0.25, 0.2])
    d2 = ((z[:, None, :] - centres[None]) ** 2).sum(-1)
    reward = 0.1 + (heights * torch.exp(-d2 / (2 * 0.6**2))).sum(-1)
    return Problem(features, reward)


@dataclass
class Outcome:
    chosen: float  # true reward of the arm the search answers with
    best_evaluated: float  # best true reward among the arms it evaluated
    optimum: float
    curve: list[float] = field(default_factory=list)  # best true reward so far, per trial

    @property
    def regret(self) -> float:
        return self.optimum - self.chosen


def search(
    prob: Problem,
    strategy: str,
    seed: int,
    *,
    initial: int = 5,
    outer: int = 3,
    inner: int = 20,
    top_k: int = 10,
    epochs: int = 1000,
    nu: float = 1.0,
    unit_norm: bool = True,
    confirm_top: int = 0,
) -> Outcome:
    """Run Reveal's loop with ``strategy`` ``neuralucb`` or ``random`` (uniform over the
    untried arms); the same seed gives both strategies the same initial arms and noise stream."""
    noise, draws = random.Random(seed * 7 + 1), random.Random(seed * 7 + 2)
    bandit = NeuralUCB(prob.features, seed=seed, nu=nu, epochs=epochs, unit_norm=unit_norm)
    truth = prob.reward
    curve: list[float] = []

    def observe(arm: int) -> None:
        bandit.observe(arm, float(truth[arm]) + noise.gauss(0.0, NOISE_SD))
        curve.append(max(curve[-1] if curve else 0.0, float(truth[arm])))

    pick: Callable[[], int]
    if strategy == "neuralucb":
        pick = bandit.select
    elif strategy == "random":
        pick = lambda: draws.choice(sorted(set(range(len(truth))) - set(bandit.observations)))  # noqa: E731
    else:
        raise ValueError(f"unknown strategy {strategy!r}")
    for arm in draws.sample(range(len(truth)), initial):
        observe(arm)
    for loop in range(outer):
        if loop:
            keep = bandit.best(top_k)
            bandit.reset([(a, float(truth[a]) + noise.gauss(0.0, NOISE_SD)) for a in keep])
        for _ in range(inner):
            observe(pick())
    chosen = bandit.best(1)[0]
    if confirm_top:
        # Reveal's confirmation: the best few re-scored with fresh noise, the best fresh taken.
        fresh = {a: float(truth[a]) + noise.gauss(0.0, NOISE_SD) for a in bandit.best(confirm_top)}
        chosen = max(fresh, key=fresh.__getitem__)
    return Outcome(float(truth[chosen]), curve[-1], float(truth.max()), curve)


def mean_ci(values: list[float], seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean (2,000 seeded resamples)."""
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(values, k=len(values))) / len(values) for _ in range(2000))
    return means[49], means[1949]


def paired_sign_flip_p(differences: list[float]) -> float:
    """One-sided p-value that the mean of paired ``differences`` is > 0: the share of the 2^n
    sign assignments (exact up to n = 20, else 200,000 seeded draws) whose mean is at least the
    observed one."""
    d = torch.tensor(differences, dtype=torch.float64)
    n = len(d)
    if n <= 20:
        codes = torch.arange(2**n, dtype=torch.int64)[:, None]
        signs = ((codes >> torch.arange(n)) & 1).double() * 2 - 1
    else:
        gen = torch.Generator().manual_seed(0)
        signs = torch.randint(0, 2, (200_000, n), generator=gen).double() * 2 - 1
    means = signs @ d / n
    return float((means >= d.mean() - 1e-12).double().mean())

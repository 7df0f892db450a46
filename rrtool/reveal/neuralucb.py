"""NeuralUCB instruction search (INSTINCT-style), without the LLM.

The search space is a fixed pool of points z in [0,1]^D (:func:`sobol_pool`). Each z is mapped
by :class:`SoftPromptProjection` to soft tokens that the white-box LLM decodes into an
instruction; the LLM's last hidden state for that input is the point's *feature*, precomputed
once for the whole pool. :class:`NeuralUCB` then works purely on those features: it learns
score(feature) with a one-hidden-layer MLP and picks the next arm by an upper confidence bound.

UCB(x) = mu(x) + sqrt(lam * nu * sum_j g_j(x)^2 / U_j), with g the gradient of the MLP output
w.r.t. all its parameters and U a diagonal design matrix (lam at start, plus g^2 of every arm
chosen). For ``f(x) = w2 . relu(W1 x + b1) + b2`` that gradient is known in closed form:

    d f / d W1[j, k] = w2_j 1[a_j > 0] x_k      d f / d b1[j] = w2_j 1[a_j > 0]
    d f / d w2[j]    = relu(a_j)                d f / d b2    = 1

so ``sum_j g_j^2 / U_j`` for the whole pool costs one forward pass plus one (N x h) @ (h x H)
product: no per-sample autograd, and no (N x P) gradient matrix is ever built.
"""

from __future__ import annotations

import math

import torch
from torch.quasirandom import SobolEngine

__all__ = ["NeuralUCB", "SoftPromptProjection", "embedding_norm", "sobol_pool"]


def sobol_pool(dim: int, size: int, seed: int) -> torch.Tensor:
    """``size`` scrambled Sobol points in [0,1]^dim, float32 (size, dim); deterministic in seed."""
    if dim < 1 or size < 1:
        raise ValueError(f"need dim >= 1 and size >= 1, got dim={dim}, size={size}")
    engine = SobolEngine(dimension=dim, scramble=True, seed=seed)
    return engine.draw(size, dtype=torch.float32)


def embedding_norm(embedding_weight: torch.Tensor) -> float:
    """Mean L2 norm of the rows of an input-embedding matrix: the soft tokens' target norm."""
    return float(embedding_weight.detach().float().norm(dim=-1).mean())


class SoftPromptProjection:
    """Fixed random linear map (no bias) z in [0,1]^D -> (n_soft_tokens, hidden) soft tokens.

    The reference draws weights uniform(-1, 1), which makes soft tokens orders of magnitude
    larger than real token embeddings and pushes the LLM off-distribution. Here the map is
    rescaled once so that, over z uniform in [0,1]^D, the produced token rows have a mean L2
    norm of ``target_norm`` (pass :func:`embedding_norm` of the model's embedding matrix).
    """

    _CALIBRATION_POINTS = 256

    def __init__(
        self, intrinsic_dim: int, n_soft_tokens: int, hidden: int, target_norm: float, seed: int
    ) -> None:
        if min(intrinsic_dim, n_soft_tokens, hidden) < 1 or not target_norm > 0:
            raise ValueError("dimensions must be >= 1 and target_norm > 0")
        self.intrinsic_dim = intrinsic_dim
        self.n_soft_tokens = n_soft_tokens
        self.hidden = hidden
        self.target_norm = float(target_norm)
        gen = torch.Generator().manual_seed(seed)
        weight = torch.randn(intrinsic_dim, n_soft_tokens * hidden, generator=gen)
        # Calibrate on quasi-random z (not the search pool) so the scale depends on seed alone;
        # the row norm concentrates, so 256 points pin the mean to well under 1%.
        probe = sobol_pool(intrinsic_dim, self._CALIBRATION_POINTS, seed)
        rows = (probe @ weight).reshape(-1, n_soft_tokens, hidden)
        weight *= self.target_norm / float(rows.norm(dim=-1).mean())
        self.weight = weight

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        """z (D,) -> (n_soft, hidden); z (B, D) -> (B, n_soft, hidden); float32, weight's device."""
        z = torch.as_tensor(z, dtype=torch.float32, device=self.weight.device)
        if z.shape[-1] != self.intrinsic_dim:
            raise ValueError(f"expected z of dimension {self.intrinsic_dim}, got {z.shape[-1]}")
        out = z @ self.weight
        return out.reshape(*z.shape[:-1], self.n_soft_tokens, self.hidden)

    def to(self, device: str | torch.device) -> SoftPromptProjection:
        """Move the projection matrix (e.g. to the LLM's GPU); returns self."""
        self.weight = self.weight.to(device)
        return self


class NeuralUCB:
    """NeuralUCB over a fixed pool of precomputed features (N, h).

    Usage: ``observe`` some random arms, then repeat ``i = select(); observe(i, reward)``.
    The MLP is refit from scratch on all observations whenever it is needed after new ones,
    as in the reference (a warm-started net drifts with stale rewards).
    """

    def __init__(
        self,
        features: torch.Tensor,
        *,
        lam: float = 0.1,
        nu: float = 1.0,
        hidden: int = 100,
        epochs: int = 500,
        lr: float = 1e-3,
        seed: int = 0,
        chunk_size: int = 4096,
    ) -> None:
        feats = torch.as_tensor(features).detach().to(device="cpu", dtype=torch.float32)
        if feats.ndim != 2 or feats.shape[0] < 1:
            raise ValueError(f"features must be a non-empty (N, h) matrix, got {tuple(feats.shape)}")
        if not torch.isfinite(feats).all():
            raise ValueError("features contain NaN or infinite values")
        if not lam > 0 or nu < 0:
            raise ValueError(f"need lam > 0 and nu >= 0, got lam={lam}, nu={nu}")
        # Standardise with pool statistics: the pool is fixed and fully known in advance.
        std = feats.std(dim=0, unbiased=False)
        self.features = (feats - feats.mean(dim=0)) / torch.where(std > 0, std, 1.0)
        self.lam, self.nu, self.hidden = float(lam), float(nu), hidden
        self.epochs, self.lr, self.seed, self.chunk_size = epochs, lr, seed, chunk_size
        self.observations: dict[int, float] = {}
        self._fits = 0
        self._params: tuple[torch.Tensor, ...] | None = None
        self._stale = True
        self._reset_design()

    # ---------------------------------------------------------------- state
    @property
    def size(self) -> int:
        """Number of arms in the pool."""
        return self.features.shape[0]

    @property
    def parameters(self) -> tuple[torch.Tensor, ...]:
        """Current fitted MLP (W1 (H, h), b1 (H,), w2 (H,), b2 ()), refitting if stale."""
        self._ensure_fit()
        assert self._params is not None
        return self._params

    @property
    def design(self) -> tuple[torch.Tensor, ...]:
        """Diagonal of U, float64, one tensor per parameter, same shapes as :attr:`parameters`."""
        return self._u

    def _reset_design(self) -> None:
        h, hid = self.features.shape[1], self.hidden
        shapes: list[tuple[int, ...]] = [(hid, h), (hid,), (hid,), ()]
        self._u = tuple(torch.full(s, self.lam, dtype=torch.float64) for s in shapes)

    # ---------------------------------------------------------------- fitting
    def _init_params(self) -> list[torch.Tensor]:
        # A fresh generator per fit: results depend on (seed, fit number) only, never on the
        # global RNG that other code may consume. nn.Linear's default init, drawn by hand.
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self._fits)
        h, hid = self.features.shape[1], self.hidden
        b_in, b_out = 1.0 / math.sqrt(h), 1.0 / math.sqrt(hid)

        def uniform(bound: float, *shape: int) -> torch.Tensor:
            return ((torch.rand(shape, generator=gen) * 2 - 1) * bound).requires_grad_()

        return [uniform(b_in, hid, h), uniform(b_in, hid), uniform(b_out, hid), uniform(b_out)]

    @staticmethod
    def _forward(
        params: tuple[torch.Tensor, ...] | list[torch.Tensor], x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """MLP output (n,) and hidden pre-activations (n, H)."""
        w1, b1, w2, b2 = params
        pre = x @ w1.T + b1
        return torch.relu(pre) @ w2 + b2, pre

    def _fit(self) -> None:
        params = self._init_params()
        self._fits += 1
        if self.observations and self.epochs > 0:
            idx = torch.tensor(list(self.observations), dtype=torch.long)
            x = self.features[idx]
            y = torch.tensor(list(self.observations.values()), dtype=torch.float32)
            # Weight decay lam / N: the NeuralUCB ridge term lam/2 ||theta||^2 on a mean loss.
            opt = torch.optim.Adam(params, lr=self.lr, weight_decay=self.lam / len(idx))
            for _ in range(self.epochs):
                opt.zero_grad(set_to_none=True)
                out, _ = self._forward(params, x)
                loss = torch.mean((out - y) ** 2)
                loss.backward()
                opt.step()
        self._params = tuple(p.detach() for p in params)
        self._stale = False

    def _ensure_fit(self) -> None:
        if self._stale or self._params is None:
            self._fit()

    # ---------------------------------------------------------------- UCB
    def _mu_and_width(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mu(x) and sum_j g_j(x)^2 / U_j for rows x (float64), in closed form."""
        w1, b1, w2, b2 = (p.double() for p in self.parameters)
        u_w1, u_b1, u_w2, u_b2 = self._u
        x = x.double()
        mu, pre = self._forward((w1, b1, w2, b2), x)
        active = (pre > 0).double()
        hidden_sq = (w2**2) * active  # (n, H): (d f / d pre_j)^2
        width = (
            ((x**2) @ (1.0 / u_w1).T * hidden_sq).sum(dim=1)  # W1 block
            + (hidden_sq / u_b1).sum(dim=1)  # b1
            + (torch.relu(pre) ** 2 / u_w2).sum(dim=1)  # w2
            + 1.0 / u_b2  # b2: d f / d b2 = 1
        )
        return mu, width

    def exploration_widths(self) -> torch.Tensor:
        """``sum_j g_j(x)^2 / U_j`` for every pool arm (N,), float64."""
        return torch.cat(
            [self._mu_and_width(c)[1] for c in self.features.split(self.chunk_size)]
        )

    def ucb(self) -> torch.Tensor:
        """Upper confidence bound of every pool arm (N,), float64."""
        parts = []
        for chunk in self.features.split(self.chunk_size):
            mu, width = self._mu_and_width(chunk)
            parts.append(mu + torch.sqrt(self.lam * self.nu * width))
        return torch.cat(parts)

    def _grad_squares(self, index: int) -> tuple[torch.Tensor, ...]:
        w1, b1, w2, b2 = (p.double() for p in self.parameters)
        x = self.features[index].double()
        pre = w1 @ x + b1
        d_pre = w2 * (pre > 0).double()
        return (torch.outer(d_pre**2, x**2), d_pre**2, torch.relu(pre) ** 2, torch.ones(()))

    def select(self, exclude: set[int] | None = None) -> int:
        """Arm with the highest UCB among those neither observed nor in ``exclude``.

        Adds the arm's g^2 (under the current fit) to U, as the reference does at selection.
        """
        scores = self.ucb()
        banned = set(self.observations) | set(exclude or ())
        if banned:
            mask = torch.tensor(sorted(i for i in banned if 0 <= i < self.size), dtype=torch.long)
            scores[mask] = -math.inf
        if not torch.isfinite(scores).any():
            raise ValueError("no arm left to select: every pool point is observed or excluded")
        arm = int(torch.argmax(scores))
        self._u = tuple(u + g for u, g in zip(self._u, self._grad_squares(arm), strict=True))
        return arm

    # ---------------------------------------------------------------- observations
    def observe(self, index: int, reward: float) -> None:
        """Record ``reward`` for arm ``index`` (a repeated index keeps the latest reward)."""
        if not 0 <= index < self.size:
            raise IndexError(f"arm {index} is outside the pool of {self.size}")
        reward = float(reward)
        if not math.isfinite(reward):
            raise ValueError(f"reward for arm {index} is not finite: {reward}")
        self.observations[int(index)] = reward
        self._stale = True

    def best(self, k: int) -> list[int]:
        """The ``k`` observed arms with the highest reward (ties: earliest observed first)."""
        ranked = sorted(self.observations.items(), key=lambda item: -item[1])
        return [index for index, _ in ranked[:k]]

    def reset(self, keep: list[tuple[int, float]]) -> None:
        """Start a new outer iteration: forget all observations and U, then observe ``keep``.

        ``keep`` holds the top-k arms with their rewards re-scored against the grown D_selfgen
        (their old rewards are stale because diversity is relative to D).
        """
        self.observations = {}
        self._reset_design()
        self._stale = True
        for index, reward in keep:
            self.observe(index, reward)

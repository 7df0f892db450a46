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

import contextlib
import math
from collections.abc import Iterator, Sequence

import torch
from torch.quasirandom import SobolEngine

__all__ = ["NeuralUCB", "SoftPromptProjection", "embedding_norm", "sobol_pool", "train_mlp"]


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


@contextlib.contextmanager
def _small_math() -> Iterator[None]:
    """One thread, denormals flushed to zero, for the many tiny ops of a surrogate refit.

    Measured on 2 busy cores: intra-op threads made each 30 x 100 matmul ~30x slower (spin
    waits), and Adam moments of units that get no gradient decay into float32 denormals after
    a few hundred steps, which slowed every op touching them by ~10x. Both settings are
    process-global, so they are restored on exit.
    """
    threads = torch.get_num_threads()
    # No getter for the flush mode: a denormal survives an op only when flushing is off.
    flushing = float(torch.tensor([1e-40]) * 1.0) == 0.0
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(flushing)
        torch.set_num_threads(threads)


def train_mlp(
    init: Sequence[torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> tuple[torch.Tensor, ...]:
    """Full-batch Adam on the MSE of ``f(x) = w2 . relu(W1 x + b1) + b2`` against ``y``.

    Step for step the same as ``torch.optim.Adam(params, lr, betas, eps, weight_decay)`` with
    autograd (L2 weight decay added to the gradient), but with the backward pass written out
    and all parameters in one flat buffer: the surrogate is refit from scratch every bandit
    round, and on CPU autograd's per-op overhead was ~3x the actual arithmetic.
    ``init`` = (W1 (H, h), b1 (H,), w2 (H,), b2 ()); returns new tensors, ``init`` untouched.
    """
    theta = torch.cat([p.detach().reshape(-1).float() for p in init])
    grad = torch.zeros_like(theta)
    m1, m2 = torch.zeros_like(theta), torch.zeros_like(theta)
    w1, b1, w2, b2 = _views(theta, init)
    g_w1, g_b1, g_w2, g_b2 = _views(grad, init)
    x, y = x.float(), y.float()
    scale = 2.0 / len(y)
    beta1, beta2 = betas
    with _small_math():
        for step in range(1, epochs + 1):
            pre = torch.addmm(b1, x, w1.T)
            act = torch.relu(pre)
            d_out = (act @ w2 + b2 - y).mul_(scale)  # d mean((f - y)^2) / d f
            torch.mv(act.T, d_out, out=g_w2)
            g_b2.copy_(d_out.sum())
            d_pre = torch.outer(d_out, w2).mul_(pre > 0)
            torch.mm(d_pre.T, x, out=g_w1)
            torch.sum(d_pre, dim=0, out=g_b1)
            if weight_decay:
                grad.add_(theta, alpha=weight_decay)
            m1.lerp_(grad, 1 - beta1)
            m2.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (m2 / (1 - beta2**step)).sqrt_().add_(eps)
            theta.addcdiv_(m1, denom, value=-lr / (1 - beta1**step))
    return tuple(v.clone() for v in _views(theta, init))


def _views(flat: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Views of ``flat`` shaped like each tensor of ``like``, in order."""
    out, offset = [], 0
    for t in like:
        out.append(flat[offset : offset + t.numel()].view(t.shape))
        offset += t.numel()
    return out


class NeuralUCB:
    """NeuralUCB over a fixed pool of precomputed features (N, h).

    Usage: ``observe`` some random arms, then repeat ``i = select(); observe(i, reward)``; at
    each outer iteration, ``reset(keep)`` with the top arms re-scored. The MLP is refit from
    scratch (fresh seeded init) on all observations whenever it is needed after new ones, as
    the reference does: the fit is then a function of the current observations alone, so a
    reset leaves no trace of stale rewards, and runs are reproducible from ``seed``.

    The surrogate's inputs are standardised with the pool's own mean and std, then scaled to
    unit norm (``unit_norm=False``: standardised only, the behaviour before, kept for the
    synthetic benchmark's comparison). Fitting uses
    :func:`train_mlp` (full-batch Adam, ``lr``, weight decay ``lam / n_observations``, MSE,
    ``epochs`` steps). ``select`` adds the chosen arm's g^2 to U at selection time, like the
    reference, so call it only for an arm you will evaluate (pass duplicates via ``exclude``).
    """

    def __init__(
        self,
        features: torch.Tensor,
        *,
        lam: float = 0.1,
        nu: float = 1.0,
        hidden: int = 100,
        epochs: int = 1000,
        lr: float = 1e-3,
        seed: int = 0,
        chunk_size: int = 4096,
        unit_norm: bool = True,
    ) -> None:
        feats = torch.as_tensor(features).detach().to(device="cpu", dtype=torch.float32)
        if feats.ndim != 2 or feats.shape[0] < 1:
            raise ValueError(
                f"features must be a non-empty (N, h) matrix, got {tuple(feats.shape)}"
            )
        if not torch.isfinite(feats).all():
            raise ValueError("features contain NaN or infinite values")
        if not lam > 0 or nu < 0:
            raise ValueError(f"need lam > 0 and nu >= 0, got lam={lam}, nu={nu}")
        # Standardise with pool statistics (the pool is fixed and fully known in advance), then
        # scale each row to unit norm, as Zhou et al. (2020) assume (||x||_2 = 1). Standardised
        # 576-d rows have ||x||^2 ~ 576, which makes the exploration width ~1,000 (a bonus of
        # ~6 against rewards spread by ~0.06), and it grows with ||x||: UCB then picked the
        # arms of largest feature norm, and lost to uniform random choice on the synthetic
        # benchmark (``tests/bench_bandit_synthetic.py``).
        std = feats.std(dim=0, unbiased=False)
        feats = (feats - feats.mean(dim=0)) / torch.where(std > 0, std, 1.0)
        if unit_norm:
            norms = feats.norm(dim=1, keepdim=True)
            feats = feats / torch.where(norms > 0, norms, 1.0)
        self.features = feats
        self.unit_norm = unit_norm
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
    def _init_params(self) -> tuple[torch.Tensor, ...]:
        # A fresh generator per fit: results depend on (seed, fit number) only, never on the
        # global RNG that other code may consume. nn.Linear's default init, drawn by hand.
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self._fits)
        h, hid = self.features.shape[1], self.hidden
        b_in, b_out = 1.0 / math.sqrt(h), 1.0 / math.sqrt(hid)
        shapes = [((hid, h), b_in), ((hid,), b_in), ((hid,), b_out), ((), b_out)]
        return tuple((torch.rand(s, generator=gen) * 2 - 1) * b for s, b in shapes)

    @staticmethod
    def _forward(
        params: Sequence[torch.Tensor], x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """MLP output (n,) and hidden pre-activations (n, H)."""
        w1, b1, w2, b2 = params
        pre = torch.addmm(b1, x, w1.T)
        return torch.relu(pre) @ w2 + b2, pre

    def _fit(self) -> None:
        params = self._init_params()
        self._fits += 1
        if self.observations and self.epochs > 0:
            idx = torch.tensor(list(self.observations), dtype=torch.long)
            y = torch.tensor(list(self.observations.values()), dtype=torch.float32)
            # Weight decay lam / N: the NeuralUCB ridge term lam/2 ||theta||^2 on a mean loss.
            params = train_mlp(
                params,
                self.features[idx],
                y,
                epochs=self.epochs,
                lr=self.lr,
                weight_decay=self.lam / len(idx),
            )
        self._params = params
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
        return torch.cat([self._mu_and_width(c)[1] for c in self.features.split(self.chunk_size)])

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

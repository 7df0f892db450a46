"""Vendi score (Friedman & Dieng, 2023) of a set of embeddings, order q = 1.

Definition. Unit-normalise the rows of ``X`` (n x d), form ``K = X X^T / n`` (cosine
similarity kernel, trace 1), take its eigenvalues ``lambda_i`` and return
``VS = exp(-sum_i lambda_i log lambda_i)``: the exponential of the spectral entropy, read as
the *effective number of distinct items*. It is 1 when all rows are identical and n when they
are mutually orthogonal.

Cheap exact form. The nonzero eigenvalues of ``X X^T / n`` are those of ``X^T X / n``
(d x d), so :class:`VendiAccumulator` keeps ``C = sum_x x x^T`` over the collected data D and
scores a candidate batch B from ``(C + B^T B) / (|D| + |B|)``: ``O(|B| d^2 + d^3)``, independent
of ``|D|`` (see ``tests/bench_vendi.py``). :func:`vendi_score` is the ``n x n`` reference.

Normalisation to [0, 1] (the paper mixes the Vendi score with a relevance in [0, 1] but does
not say how it is scaled). We use

    normalised = (VS - 1) / (VS_max - 1),   VS_max = min(n, d),

the share of the largest *achievable* gain over "all identical". Why this one:

- ``VS <= rank(K) <= min(n, d)`` and both bounds are attained (identical rows give 1; ``min(n,
  d)`` orthonormal directions, spread evenly, give ``min(n, d)``), so the result spans exactly
  [0, 1] with no unreachable part of the scale.
- 0 means "no diversity at all", which the harmonic mean then turns into a combined score of 0:
  an instruction whose outputs collapse onto one point (or onto D) earns nothing for diversity.
- ``VS / n`` would never reach 0 and, once D holds thousands of items, would never leave
  ~0 either (VS cannot exceed d); capping by ``min(n, d)`` keeps the scale meaningful on both
  sides of ``n = d``.

Caveat, documented rather than hidden: real sentence embeddings are anisotropic, so on a large
D the normalised value sits well below 1 (a few tenths at best for MiniLM) and varies little
between candidate batches. The ranking of candidates is what the bandit needs and it is
preserved; the absolute level only sets how strongly diversity weighs in the harmonic mean.

Degenerate sizes: n = 0 gives VS = 0 and normalised 0 (nothing collected); n = 1 gives VS = 1
and normalised 1 (one item is as diverse as a single item can be; returning 0 would zero every
combined score whenever a trial yields one sample into an empty D).

Rows must be finite and nonzero (an embedding is never the zero vector); computations run in
float64 so that the two forms agree to ~1e-10.
"""

from __future__ import annotations

import torch

__all__ = ["VendiAccumulator", "normalise_vendi", "vendi_score"]

# Eigenvalues below this (relative to the trace, which is 1) are round-off of true zeros.
_EIG_FLOOR = 1e-12


def _unit_rows(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Rows of ``x`` as a float64 (n, d) tensor, each scaled to unit L2 norm."""
    x = torch.as_tensor(x).detach().to(device="cpu", dtype=torch.float64)
    if x.ndim == 1 and x.numel() == 0:
        x = x.reshape(0, dim or 0)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D (n, d) array of embeddings, got shape {tuple(x.shape)}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"expected embeddings of dimension {dim}, got {x.shape[1]}")
    if x.shape[0] == 0:
        return x
    if not torch.isfinite(x).all():
        raise ValueError("embeddings contain NaN or infinite values")
    norms = x.norm(dim=1, keepdim=True)
    if (norms == 0).any():
        raise ValueError("embeddings contain an all-zero row (cannot be unit-normalised)")
    return x / norms


def _exp_entropy(eigenvalues: torch.Tensor) -> float:
    """``exp(-sum l log l)`` over eigenvalues of a trace-1 PSD matrix (0 log 0 = 0)."""
    lam = eigenvalues.clamp_min(0.0)
    lam = lam[lam > _EIG_FLOOR]
    # Renormalise: clamping negative round-off and dropping ~0 modes moves the sum by ~1e-15,
    # but entropy of a non-normalised vector would be biased.
    lam = lam / lam.sum()
    return float(torch.exp(torch.special.entr(lam).sum()))


def vendi_score(x: torch.Tensor) -> float:
    """Exact Vendi score of the rows of ``x`` via the ``n x n`` kernel (the reference form).

    Returns 0.0 for an empty set and 1.0 for a single row. Costs ``O(n^2 d + n^3)``: use
    :class:`VendiAccumulator` for large sets.
    """
    rows = _unit_rows(x)
    n = rows.shape[0]
    if n <= 1:
        return float(n)
    kernel = rows @ rows.T / n
    return _exp_entropy(torch.linalg.eigvalsh(kernel))


def _gram_score(gram: torch.Tensor, n: int) -> float:
    """Vendi score from ``C = X^T X`` (d x d) of ``n`` unit rows: same nonzero spectrum as K."""
    if n <= 1:
        return float(n)
    return _exp_entropy(torch.linalg.eigvalsh(gram / n))


def normalise_vendi(score: float, n: int, dim: int) -> float:
    """Map a Vendi score of ``n`` items in ``dim`` dimensions to [0, 1] (see module docstring)."""
    if n <= 0:
        return 0.0
    ceiling = min(n, dim)
    if ceiling <= 1:
        # One item, or 1-d embeddings: VS is exactly 1 = the maximum achievable.
        return 1.0
    return min(1.0, max(0.0, (score - 1.0) / (ceiling - 1.0)))


class VendiAccumulator:
    """The Vendi score of ``D ∪ batch`` for a growing collection D, at a cost independent of |D|.

    Holds ``C = sum_{x in D} x x^T`` (unit-normalised rows, float64, d x d) and ``n = |D|``.
    """

    def __init__(self, dim: int) -> None:
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim = dim
        self.n = 0
        self.gram = torch.zeros(dim, dim, dtype=torch.float64)

    def _with(self, batch: torch.Tensor | None) -> tuple[torch.Tensor, int]:
        if batch is None:
            return self.gram, self.n
        rows = _unit_rows(batch, self.dim)
        return self.gram + rows.T @ rows, self.n + rows.shape[0]

    def score_with(self, batch: torch.Tensor | None = None) -> float:
        """Vendi score of D ∪ ``batch`` (``batch`` is (m, d); None or m = 0 scores D alone)."""
        return _gram_score(*self._with(batch))

    def normalised_score_with(self, batch: torch.Tensor | None = None) -> float:
        """:meth:`score_with` mapped to [0, 1] by :func:`normalise_vendi`."""
        gram, n = self._with(batch)
        return normalise_vendi(_gram_score(gram, n), n, self.dim)

    def add(self, batch: torch.Tensor) -> None:
        """Add the rows of ``batch`` (m, d) to D."""
        self.gram, self.n = self._with(batch)

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return f"VendiAccumulator(dim={self.dim}, n={self.n})"

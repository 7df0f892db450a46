"""How much two LoRA updates overlap: similarity of their top-k left singular subspaces.

The paper (Section 4.1, Table 1) reports ``Sim = ||U1_k^T U2_k||_F / k`` per layer, with U the
left singular vectors of each update, and calls it a score from 0 to 1. As written it is not:
two identical subspaces give ||I_k||_F / k = 1 / sqrt(k) (0.354 at k = 8). ``normalized=False``
(the default) computes the paper's formula as printed, so numbers compare with Table 1 (< 0.05);
``normalized=True`` divides by sqrt(k) instead, giving 1.0 for identical subspaces and
sqrt(k / d) for random ones in d dimensions.

Only directions the update actually uses are compared: k is lowered to the smaller numerical
rank of the two updates (a rank-4 LoRA has 4 meaningful left singular vectors; SVD fills the
rest with arbitrary null-space directions).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from rrtool.release.lora import LoraModule


def _rank(singular_values: Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> int:
    if singular_values.numel() == 0 or float(singular_values[0]) == 0.0:
        return 0
    # matrix_rank's default tolerance, with the eps of the dtype the update was computed in:
    # an fp32 product of rank-r factors carries fp32 round-off in every other direction.
    tol = float(singular_values[0]) * max(shape) * torch.finfo(dtype).eps
    return int((singular_values > tol).sum())


def left_basis(delta: Tensor) -> tuple[Tensor, int]:
    """Left singular vectors (columns, by decreasing singular value) and numerical rank."""
    u, s, _ = torch.linalg.svd(delta.detach().to(torch.float64), full_matrices=False)
    return u, _rank(s, tuple(delta.shape), delta.dtype)


def lora_left_basis(module: LoraModule, name: str) -> tuple[Tensor, int]:
    """``left_basis(module.delta(name))`` without forming the out x in matrix.

    B = Q R (QR, out x r), so B A = Q (R A); the SVD of the small r x in matrix R A = U' S V^T
    gives B A's left singular vectors Q U'. The scale alpha/r does not change U.
    """
    q, r = torch.linalg.qr(module.B[name].to(torch.float64))
    u_small, s, _ = torch.linalg.svd(r @ module.A[name].to(torch.float64), full_matrices=False)
    shape = (module.B[name].shape[0], module.A[name].shape[1])
    return q @ u_small, _rank(s, shape, module.A[name].dtype)


def basis_similarity(
    u1: Tensor, rank1: int, u2: Tensor, rank2: int, k: int = 8, *, normalized: bool = False
) -> float:
    """Similarity of the top-k columns of two orthonormal bases (see the module docstring).

    NaN when either update is zero (no subspace to compare).
    """
    if u1.shape[0] != u2.shape[0]:
        raise ValueError(f"updates have different output sizes: {u1.shape[0]} vs {u2.shape[0]}")
    k_eff = min(k, rank1, rank2)
    if k_eff == 0:
        return math.nan
    norm = torch.linalg.matrix_norm(u1[:, :k_eff].T @ u2[:, :k_eff], ord="fro")
    return float(norm) / (math.sqrt(k_eff) if normalized else k_eff)


def subspace_similarity(
    delta_a: Tensor, delta_b: Tensor, k: int = 8, *, normalized: bool = False
) -> float:
    """``||U1[:, :k]^T U2[:, :k]||_F / k`` for two dense updates (out x in each)."""
    if k < 1:
        raise ValueError("k must be at least 1")
    return basis_similarity(*left_basis(delta_a), *left_basis(delta_b), k, normalized=normalized)


def per_layer_similarity(
    module_a: LoraModule, module_b: LoraModule, k: int = 8, *, normalized: bool = False
) -> tuple[dict[str, float], float]:
    """Similarity for every layer both modules target, and its mean (NaN layers skipped)."""
    if k < 1:
        raise ValueError("k must be at least 1")
    shared = [name for name in module_a.names if name in module_b.A]
    if not shared:
        raise ValueError("the two modules target no common layer")
    scores = {
        name: basis_similarity(
            *lora_left_basis(module_a, name),
            *lora_left_basis(module_b, name),
            k,
            normalized=normalized,
        )
        for name in shared
    }
    finite = [v for v in scores.values() if not math.isnan(v)]
    mean = sum(finite) / len(finite) if finite else math.nan
    return scores, mean

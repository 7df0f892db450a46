"""Subspace similarity of LoRA updates (rrtool.release.analysis)."""

from __future__ import annotations

import math

import pytest
import torch

from rrtool.release.analysis import (
    lora_left_basis,
    per_layer_similarity,
    subspace_similarity,
)
from rrtool.release.lora import LoraModule
from tests.conftest import assert_close_to_scale


def _random_lora(
    seed: int, names: list[str], out: int = 64, inp: int = 48, r: int = 8
) -> LoraModule:
    gen = torch.Generator().manual_seed(seed)
    return LoraModule(
        A={n: torch.randn(r, inp, generator=gen) for n in names},
        B={n: torch.randn(out, r, generator=gen) for n in names},
        r=r,
        alpha=16.0,
        target_modules="all-linear",
        kind="forget",
    )


def test_identical_updates() -> None:
    delta = torch.randn(64, 8) @ torch.randn(8, 48)
    # The paper's formula as printed: ||I_k||_F / k = 1 / sqrt(k).
    assert subspace_similarity(delta, delta, k=8) == pytest.approx(1 / math.sqrt(8))
    assert subspace_similarity(delta, delta, k=8, normalized=True) == pytest.approx(1.0)
    # Scale and sign do not change the subspace.
    assert subspace_similarity(delta, -3 * delta, k=4, normalized=True) == pytest.approx(1.0)


def test_k_is_capped_at_the_rank() -> None:
    delta = torch.randn(64, 4) @ torch.randn(4, 48)
    # Beyond rank 4, SVD's extra columns are arbitrary null-space directions: not compared.
    assert subspace_similarity(delta, delta, k=8, normalized=True) == pytest.approx(1.0)
    assert subspace_similarity(delta, delta, k=8) == pytest.approx(1 / math.sqrt(4))


def test_orthogonal_updates() -> None:
    basis, _ = torch.linalg.qr(torch.randn(64, 16))
    first = basis[:, :8] @ torch.randn(8, 48)
    second = basis[:, 8:] @ torch.randn(8, 48)
    assert subspace_similarity(first, second, k=8) == pytest.approx(0.0, abs=1e-6)
    assert subspace_similarity(first, second, k=8, normalized=True) == pytest.approx(0.0, abs=1e-6)


def test_random_high_dimensional_updates_are_nearly_orthogonal() -> None:
    gen = torch.Generator().manual_seed(0)
    d = 2048
    first = torch.randn(d, 8, generator=gen) @ torch.randn(8, 64, generator=gen)
    second = torch.randn(d, 8, generator=gen) @ torch.randn(8, 64, generator=gen)
    # Random k-subspaces of R^d: ||U1^T U2||_F^2 ~ k^2 / d.
    assert subspace_similarity(first, second, k=8) < 3 / math.sqrt(d)
    assert subspace_similarity(first, second, k=8, normalized=True) < 3 * math.sqrt(8 / d)


def test_low_rank_path_matches_dense_svd() -> None:
    module, other = _random_lora(0, ["a"]), _random_lora(1, ["a"])
    u_lr, rank = lora_left_basis(module, "a")
    assert rank == 8
    u_dense = torch.linalg.svd(module.delta("a").double(), full_matrices=False)[0][:, :8]
    # Same subspace (columns may differ in sign), up to the fp32 rounding of the dense product
    # (r terms a value), which moves a singular vector by |error| / (its singular value gap).
    s = torch.linalg.svdvals(module.delta("a").double())[:9]
    sensitivity = float(s[0] / (s[:8] - s[1:]).min())
    terms = math.ceil(module.r * sensitivity)
    assert_close_to_scale(u_lr[:, :8].abs(), u_dense.abs(), terms, dtype=torch.float32)
    scores, _ = per_layer_similarity(module, other, k=8)
    assert scores["a"] == pytest.approx(
        subspace_similarity(module.delta("a"), other.delta("a"), k=8), abs=1e-6
    )


def test_per_layer_similarity_and_mean() -> None:
    names = ["l0.q", "l0.v", "l1.q"]
    first = _random_lora(0, names)
    second = _random_lora(1, names[:2] + ["l2.q"])
    second.A["l0.v"], second.B["l0.v"] = first.A["l0.v"], 2 * first.B["l0.v"]
    scores, mean = per_layer_similarity(first, second, k=8, normalized=True)
    assert list(scores) == ["l0.q", "l0.v"]  # only layers both modules target
    assert scores["l0.v"] == pytest.approx(1.0)
    assert 0 < scores["l0.q"] < 0.9
    assert mean == pytest.approx((scores["l0.q"] + scores["l0.v"]) / 2)


def test_zero_update_is_nan_and_skipped_in_the_mean() -> None:
    first, second = _random_lora(0, ["a", "b"]), _random_lora(1, ["a", "b"])
    second.B["b"] = torch.zeros_like(second.B["b"])  # an untrained LoRA: B starts at zero
    scores, mean = per_layer_similarity(first, second)
    assert math.isnan(scores["b"]) and mean == pytest.approx(scores["a"])


def test_rejects_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match="output sizes"):
        subspace_similarity(torch.randn(8, 4), torch.randn(6, 4))
    with pytest.raises(ValueError, match="k must be"):
        subspace_similarity(torch.randn(8, 4), torch.randn(8, 4), k=0)
    with pytest.raises(ValueError, match="no common layer"):
        per_layer_similarity(_random_lora(0, ["a"]), _random_lora(1, ["b"]))

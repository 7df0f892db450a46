"""Vendi score: the cheap d x d accumulator against the n x n reference, and the normalisation."""

from __future__ import annotations

import math

import pytest
import torch

from rrtool.reveal.vendi import VendiAccumulator, normalise_vendi, vendi_score

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _random(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize(("n", "d"), [(5, 16), (40, 8), (64, 64), (200, 32)])
def test_gram_form_equals_kernel_form(n: int, d: int) -> None:
    x = _random(n, d, seed=n + d)
    acc = VendiAccumulator(d)
    assert acc.score_with(x) == pytest.approx(vendi_score(x), abs=1e-6)
    # Low-rank data (rank 3 < d): the zero eigenvalues must not disturb either form.
    low = _random(n, 3, seed=1) @ _random(3, d, seed=2)
    assert acc.score_with(low) == pytest.approx(vendi_score(low), abs=1e-6)


def test_identical_rows_score_one() -> None:
    row = _random(1, 10, seed=0)
    # Scaled copies are the same direction: unit normalisation makes them identical.
    x = torch.cat([row, 3 * row, 0.5 * row, row])
    assert vendi_score(x) == pytest.approx(1.0, abs=1e-9)
    assert VendiAccumulator(10).score_with(x) == pytest.approx(1.0, abs=1e-9)
    assert VendiAccumulator(10).normalised_score_with(x) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("n", [2, 5, 16])
def test_orthogonal_rows_score_n(n: int) -> None:
    q, _ = torch.linalg.qr(_random(16, 16, seed=n))
    x = q[:n] * torch.linspace(0.5, 4.0, n)[:, None]  # norms must not matter
    assert vendi_score(x) == pytest.approx(n, rel=1e-9)
    acc = VendiAccumulator(16)
    assert acc.score_with(x) == pytest.approx(n, rel=1e-9)
    assert acc.normalised_score_with(x) == pytest.approx(1.0, abs=1e-9)


def test_degenerate_sizes() -> None:
    assert vendi_score(torch.empty(0, 4)) == 0.0
    assert vendi_score(torch.ones(1, 4)) == 1.0
    acc = VendiAccumulator(4)
    assert acc.score_with() == 0.0
    assert acc.score_with(torch.empty(0, 4)) == 0.0
    assert acc.normalised_score_with() == 0.0
    assert acc.score_with(torch.ones(1, 4)) == 1.0
    assert acc.normalised_score_with(torch.ones(1, 4)) == 1.0


def test_accumulator_incremental_equals_batch() -> None:
    d = 24
    chunks = [_random(m, d, seed=m) for m in (7, 1, 30, 12)]
    acc = VendiAccumulator(d)
    for chunk in chunks:
        acc.add(chunk)
    everything = torch.cat(chunks)
    assert len(acc) == everything.shape[0]
    assert acc.score_with() == pytest.approx(vendi_score(everything), abs=1e-9)
    batch = _random(9, d, seed=99)
    together = torch.cat([everything, batch])
    assert acc.score_with(batch) == pytest.approx(vendi_score(together), abs=1e-9)
    # Scoring a candidate must not add it.
    assert len(acc) == everything.shape[0]


def test_normalisation_bounds_and_formula() -> None:
    d = 8
    acc = VendiAccumulator(d)
    acc.add(_random(20, d, seed=3))
    for seed in range(10):
        batch = _random(seed + 1, d, seed=seed)
        raw = acc.score_with(batch)
        n = len(acc) + batch.shape[0]
        value = acc.normalised_score_with(batch)
        assert 0.0 <= value <= 1.0
        assert value == pytest.approx((raw - 1) / (min(n, d) - 1), abs=1e-12)
    # A batch that repeats D's dominant direction lowers diversity; a fresh direction raises it.
    skewed = VendiAccumulator(d)
    skewed.add(torch.eye(d)[:4])
    same = torch.eye(d)[:1].repeat(4, 1)
    fresh = torch.eye(d)[4:8]
    assert skewed.normalised_score_with(same) < skewed.normalised_score_with(fresh)
    assert normalise_vendi(5.0, n=3, dim=8) == 1.0  # clipped: round-off above the ceiling
    assert normalise_vendi(0.5, n=3, dim=8) == 0.0
    assert normalise_vendi(1.0, n=1, dim=8) == 1.0
    assert normalise_vendi(0.0, n=0, dim=8) == 0.0


def test_bad_inputs() -> None:
    acc = VendiAccumulator(4)
    with pytest.raises(ValueError, match="dimension 4"):
        acc.score_with(torch.ones(2, 5))
    with pytest.raises(ValueError, match="all-zero"):
        acc.add(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="NaN"):
        vendi_score(torch.tensor([[math.nan, 1.0]]))
    with pytest.raises(ValueError, match="2-D"):
        vendi_score(torch.ones(3))

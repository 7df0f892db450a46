"""The weighted harmonic mean of relevance and diversity."""

from __future__ import annotations

import itertools
import math

import pytest

from rrtool.reveal.scoring import combined_score

GRID = [0.0, 0.01, 0.1, 0.3, 0.5, 0.9, 1.0]


def test_formula() -> None:
    assert combined_score(0.5, 0.25, 0.5) == pytest.approx(1 / (0.5 / 0.25 + 0.5 / 0.5))
    assert combined_score(0.8, 0.4, 0.3) == pytest.approx(1 / (0.3 / 0.4 + 0.7 / 0.8))
    # Equal components: the mean is that value whatever the weight.
    for alpha in (0.1, 0.5, 0.9):
        assert combined_score(0.6, 0.6, alpha) == pytest.approx(0.6)


def test_alpha_extremes() -> None:
    assert combined_score(0.7, 0.2, 0.0) == 0.7
    assert combined_score(0.7, 0.2, 1.0) == 0.2
    # The unweighted component may be zero without zeroing the score.
    assert combined_score(0.7, 0.0, 0.0) == 0.7
    assert combined_score(0.0, 0.2, 1.0) == 0.2


def test_zero_safe() -> None:
    assert combined_score(0.0, 0.9, 0.5) == 0.0
    assert combined_score(0.9, 0.0, 0.5) == 0.0
    assert combined_score(0.0, 0.0, 0.5) == 0.0


def test_clipping_and_validation() -> None:
    assert combined_score(1.3, 2.0, 0.5) == 1.0
    assert combined_score(-0.2, 0.5, 0.5) == 0.0
    assert combined_score(0.5, 1.0000001, 1.0) == 1.0
    for alpha in (-0.1, 1.1, math.nan):
        with pytest.raises(ValueError, match="alpha"):
            combined_score(0.5, 0.5, alpha)
    with pytest.raises(ValueError, match="relevance is NaN"):
        combined_score(math.nan, 0.5, 0.5)


def test_bounds_and_monotonicity() -> None:
    for alpha in (0.0, 0.2, 0.5, 0.8, 1.0):
        for tau, v in itertools.product(GRID, GRID):
            score = combined_score(tau, v, alpha)
            assert 0.0 <= score <= 1.0
            # Harmonic mean lies between the components.
            assert min(tau, v) - 1e-12 <= score <= max(tau, v) + 1e-12
        for lo, hi in itertools.pairwise(GRID):
            for other in GRID:
                assert combined_score(lo, other, alpha) <= combined_score(hi, other, alpha)
                assert combined_score(other, lo, alpha) <= combined_score(other, hi, alpha)
    # Strictly increasing when both components are positive and both weights are.
    assert combined_score(0.4, 0.5, 0.5) < combined_score(0.41, 0.5, 0.5)
    assert combined_score(0.4, 0.5, 0.5) < combined_score(0.4, 0.51, 0.5)

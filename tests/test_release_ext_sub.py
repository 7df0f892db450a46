"""Ext-Sub's deficiency against its dense, row-by-row definition."""

from __future__ import annotations

import pytest
import torch

from rrtool.release.ext_sub import deficiency
from tests.conftest import LORA_NAMES, assert_close_to_scale, random_lora


def _dense_reference(plus: torch.Tensor, minus: torch.Tensor) -> torch.Tensor:
    """The reference code's formula, row by row, in float64 (degenerate rows as documented:
    a zero direction is the zero vector)."""

    def unit(x: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
        n = x.norm()
        return x / n if n > eps else torch.zeros_like(x)

    rows = []
    for p_row, m_row in zip(plus.double(), minus.double(), strict=True):
        c = unit(unit(p_row) + unit(m_row), eps=1e-6)
        rows.append(m_row - (m_row @ c) * c)
    return torch.stack(rows)


def test_deficiency_matches_the_row_definition() -> None:
    expert, anti = random_lora(0, "retain"), random_lora(1, "forget")
    result = deficiency(expert, anti)
    assert result.r == 2 * anti.r and result.scale == 1.0 and result.kind == "forget"
    for name in LORA_NAMES:
        want = _dense_reference(expert.delta(name), anti.delta(name))
        got = result.delta(name).double()
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-5 * want.abs().max())
        # The deficiency is what is left of dW- once the shared part is removed: it is
        # smaller, and orthogonal (row by row) to the common direction.
        assert got.norm() < anti.delta(name).double().norm()


def test_degenerate_rows_follow_the_documented_rule() -> None:
    expert, anti = random_lora(2, "retain"), random_lora(3, "forget")
    name = LORA_NAMES[0]
    expert.B[name][0].zero_()  # expert row 0 empty: nothing is subtracted in that row
    anti.B[name][1].zero_()  # anti-expert row 1 empty: nothing to subtract
    # Row 2 of the expert exactly opposite to the anti-expert's: no shared part, the whole
    # anti-expert row is deficiency. Same A for both modules makes "opposite" exact.
    expert.A[name] = anti.A[name].clone()
    expert.B[name][2] = -anti.B[name][2] * (anti.scale / expert.scale)
    result = deficiency(expert, anti)
    got = result.delta(name).double()
    want = _dense_reference(expert.delta(name), anti.delta(name))
    assert torch.isfinite(got).all()
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5 * want.abs().max())
    assert got[0].abs().max() < 1e-5 and got[1].abs().max() == 0
    assert_close_to_scale(got[2], anti.delta(name)[2], result.r)  # rank-2r product vs rank r


def test_identical_modules_leave_no_deficiency() -> None:
    """An anti-expert equal to the expert is all "general capability"."""
    module = random_lora(4, "forget")
    result = deficiency(module, module)
    for name in LORA_NAMES:
        assert result.delta(name).abs().max() < 1e-5 * module.delta(name).abs().max()


def test_refuses_mismatched_modules() -> None:
    with pytest.raises(ValueError, match="same modules"):
        other = random_lora(5, "retain")
        other.A.pop(LORA_NAMES[1])
        other.B.pop(LORA_NAMES[1])
        deficiency(other, random_lora(6, "forget"))
    with pytest.raises(ValueError, match="equal ranks"):
        deficiency(random_lora(7, "retain", r=2), random_lora(8, "forget"))

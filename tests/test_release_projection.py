"""``release.forget_projection``: a forget update with the retain modules' subspaces removed,
against its dense definition (I - U U^T) dF (I - V V^T)."""

from __future__ import annotations

import pytest
import torch

from rrtool.release.lora import LoraModule
from rrtool.release.projection import project_out
from tests.conftest import LORA_NAMES, assert_close_to_scale, random_lora


def _orth(m: torch.Tensor) -> torch.Tensor:
    q, _ = torch.linalg.qr(m.double())
    return q


def test_projection_matches_the_dense_definition_for_two_retain_modules() -> None:
    forget, r1, r2 = random_lora(0, "forget"), random_lora(1, "retain"), random_lora(2, "retain")
    projected, removed = project_out(forget, [r1, r2])
    assert (projected.r, projected.scale, projected.kind) == (forget.r, forget.scale, "forget")
    before = after = 0.0
    for name in LORA_NAMES:
        u = _orth(torch.cat([r1.B[name], r2.B[name]], dim=1))
        v = _orth(torch.cat([r1.A[name].T, r2.A[name].T], dim=1))
        eye_out, eye_in = torch.eye(u.shape[0], dtype=torch.float64), torch.eye(v.shape[0],
                                                                                 dtype=torch.float64)  # fmt: skip
        want = (eye_out - u @ u.T) @ forget.delta(name).double() @ (eye_in - v @ v.T)
        got = projected.delta(name).double()
        assert torch.allclose(got, want, atol=1e-5 * want.abs().max())
        # Nothing of the update is left where either retain module writes or reads.
        assert (u.T @ got).abs().max() < 1e-4 * got.abs().max()
        assert (got @ v).abs().max() < 1e-4 * got.abs().max()
        before += float(forget.delta(name).double().norm() ** 2)
        after += float(want.norm() ** 2)
    assert removed == pytest.approx(1 - after / before, rel=1e-4) and 0 < removed < 1
    assert projected.info["projected_off"] == [r1.sha256(), r2.sha256()]


def test_no_retain_module_keeps_the_forget_module_and_a_copy_removes_all() -> None:
    forget = random_lora(3, "forget")
    same, removed = project_out(forget, [])
    assert same is forget and removed == 0.0
    twin = LoraModule(A=dict(forget.A), B=dict(forget.B), r=forget.r, alpha=forget.alpha,
                      target_modules="all-linear", kind="retain")  # fmt: skip
    _, removed = project_out(forget, [twin])
    assert removed == pytest.approx(1.0, abs=1e-9)


def test_a_zero_retain_layer_projects_nothing_there() -> None:
    forget, retain = random_lora(4, "forget"), random_lora(5, "retain")
    retain.B[LORA_NAMES[0]].zero_()  # a freshly initialised LoRA: B is zero, it writes nowhere yet
    retain.A[LORA_NAMES[0]].zero_()
    projected, _ = project_out(forget, [retain])
    # The same product, formed from float64 factors: rounding of its r terms only.
    assert_close_to_scale(projected.delta(LORA_NAMES[0]), forget.delta(LORA_NAMES[0]), forget.r)
    assert not torch.allclose(
        projected.delta(LORA_NAMES[1]), forget.delta(LORA_NAMES[1]), atol=1e-3
    )

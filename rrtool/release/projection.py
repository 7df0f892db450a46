"""A forget update with the retain modules' subspaces taken out (``release.forget_projection``).

Why: a forget LoRA trained on the model's own NER answers learns the answer format every type
shares (JSON lists copied from the passage) as much as the forget type, and subtracting it
breaks the format first (method notes, "what forgotten turned out to mean"). The retain modules
learn that same format from the retained types. So before a forget module is subtracted, the
part of its update that lives where the retain modules write (their output directions,
``col(B_R)``) or read (their input directions, ``row(A_R)``) is removed:

    dF' = (I - U U^T) dF (I - V V^T),   U = orth[B_R1 B_R2 ...],  V = orth[A_R1^T A_R2^T ...]

For ``dF = s B A`` this is again a rank-r LoRA, ``B' = (I - U U^T) B``, ``A' = A (I - V V^T)``,
so the stack, export and audit replay it like any module. With no retain module applied yet
(``F0`` of the forget-first schedule) there is nothing to project on and the module is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import Tensor

from rrtool.release.lora import LoraModule

# Singular values below this fraction of the largest count as no direction (a retain module
# whose B is still near zero on some layer contributes no subspace there).
_RANK_TOL = 1e-6


def _basis(columns: Tensor) -> Tensor:
    """Orthonormal basis of the column space of ``columns`` (float64)."""
    u, s, _ = torch.linalg.svd(columns, full_matrices=False)
    if s.numel() == 0 or s[0] <= 0:
        return u[:, :0]
    return u[:, s > s[0] * _RANK_TOL]


def _norm2(b: Tensor, a: Tensor) -> float:
    """|B A|_F^2 through r x r products (never forms out x in)."""
    return float(torch.trace((b.T @ b) @ (a @ a.T)))


def project_out(forget: LoraModule, retain: Sequence[LoraModule]) -> tuple[LoraModule, float]:
    """``forget`` with every retain module's input and output subspaces removed, and the share
    of its squared Frobenius norm (summed over layers) that the projection removed."""
    if not retain:
        return forget, 0.0
    A: dict[str, Tensor] = {}
    B: dict[str, Tensor] = {}
    before = after = 0.0
    for name in forget.names:
        a, b = forget.A[name].double(), forget.B[name].double()
        outs = [m.B[name].double() for m in retain if name in m.B]
        ins = [m.A[name].double().T for m in retain if name in m.A]
        if outs:
            u = _basis(torch.cat(outs, dim=1))
            b = b - u @ (u.T @ b)
        if ins:
            v = _basis(torch.cat(ins, dim=1))
            a = a - (a @ v) @ v.T
        before += _norm2(forget.B[name].double(), forget.A[name].double())
        after += _norm2(b, a)
        A[name], B[name] = a.float(), b.float()
    removed = 1.0 - after / before if before > 0 else 0.0
    info = {
        **forget.info,
        "projected_off": [m.sha256() for m in retain],
        "projection_removed_norm2": round(removed, 6),
    }
    # Everything else (rank, scale, kind, seed, loss curve) is the trained module's.
    module = replace(forget, A=A, B=B, loss_curve=list(forget.loss_curve), info=info)
    return module, removed

"""Ext-Sub (Hu et al. 2024): subtract only the "deficiency" of an anti-expert LoRA.

Expert dW+ (trained on retain data) and anti-expert dW- (trained on forget data), both from
the same weights with the same LoRA config. Per output row i of each targeted Linear:

    u = dW+_i / |dW+_i|,  v = dW-_i / |dW-_i|,  c = (u + v) / |u + v|
    p_i = (dW-_i . c) c                  (the part both share: "general capability")
    deficiency_i = dW-_i - p_i

and the model becomes W + dW+ - alpha * deficiency. The release strategy ``ext_sub`` applies
the expert as one step (E0, weight 1) and the deficiency as the next (D0, weight alpha,
searched by the forget rule like any mu).

The deficiency is exactly a LoRA of rank 2r: every row above is a combination of a row of
dW- and a row of dW+, so it lies in the row space of A_cat = [A-; A+], and the deficiency is
B_def @ A_cat. Working in those 2r coefficients (norms and dot products through the Gram
matrix A_cat A_cat^T) never forms an out x in matrix, and the result is a ``LoraModule`` the
stack, export and audit handle like any other.

Degenerate rows, where a unit vector is undefined (the reference code yields NaN): a zero
direction is taken as the zero vector. So a zero anti-expert row has zero deficiency, a zero
expert row makes c = v (the whole row is "shared": nothing subtracted), and opposite rows
(u + v = 0) share nothing (the whole anti-expert row is deficiency).
"""

from __future__ import annotations

import torch
from torch import Tensor

from rrtool.release.lora import LoraModule

# |u + v| below this (u, v unit vectors, so |u + v| is in [0, 2]) counts as opposite rows.
_OPPOSITE = 1e-6


def _unit(coeff: Tensor, gram: Tensor) -> Tensor:
    """Rows of ``coeff`` (vectors coeff @ A_cat) scaled to unit norm; zero rows stay zero."""
    norm = ((coeff @ gram) * coeff).sum(dim=1, keepdim=True).clamp_min(0).sqrt()
    return torch.where(norm > 0, coeff / norm.clamp_min(torch.finfo(coeff.dtype).tiny), 0.0)


def deficiency(expert: LoraModule, anti_expert: LoraModule) -> LoraModule:
    """Ext-Sub's deficiency of ``anti_expert`` with respect to ``expert`` (see the module
    docstring), as a rank-2r ``LoraModule`` whose scale is 1."""
    if set(expert.names) != set(anti_expert.names):
        raise ValueError("Ext-Sub needs an expert and an anti-expert on the same modules")
    if expert.r != anti_expert.r:
        raise ValueError(f"Ext-Sub needs equal ranks (expert {expert.r}, anti {anti_expert.r})")
    r = expert.r
    A: dict[str, Tensor] = {}
    B: dict[str, Tensor] = {}
    for name in anti_expert.names:
        # float64: the Gram-matrix detour squares magnitudes; keep the rounding far below fp32.
        a_minus, a_plus = anti_expert.A[name].double(), expert.A[name].double()
        a_cat = torch.cat([a_minus, a_plus])  # 2r x in
        out = anti_expert.B[name].shape[0]
        zeros = torch.zeros(out, r, dtype=torch.float64)
        anti = torch.cat([anti_expert.B[name].double() * anti_expert.scale, zeros], dim=1)
        plus = torch.cat([zeros, expert.B[name].double() * expert.scale], dim=1)
        gram = a_cat @ a_cat.T
        u, v = _unit(plus, gram), _unit(anti, gram)
        both = u + v
        both_norm = ((both @ gram) * both).sum(dim=1, keepdim=True).clamp_min(0).sqrt()
        c = torch.where(both_norm > _OPPOSITE, both / both_norm.clamp_min(_OPPOSITE), 0.0)
        shared = ((anti @ gram) * c).sum(dim=1, keepdim=True) * c
        A[name] = a_cat.float()
        B[name] = (anti - shared).float()
    return LoraModule(
        A=A,
        B=B,
        r=2 * r,
        alpha=float(2 * r),  # scale 1: B already carries both modules' alpha / r
        target_modules=anti_expert.target_modules,
        kind="forget",
        seed=anti_expert.seed,
        info={
            "ext_sub": True,
            "expert_sha256": expert.sha256(),
            "anti_expert_sha256": anti_expert.sha256(),
        },
    )

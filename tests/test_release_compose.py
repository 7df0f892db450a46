"""Exact LoRA arithmetic (rrtool.release.compose) against independently computed formulas."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from rrtool.models import build_tiny_model
from rrtool.release.compose import MasterWeights, ScaledAdapter, rebuild
from rrtool.release.lora import LoraModule
from tests.conftest import assert_close_to_scale

NAMES = [
    "model.layers.0.self_attn.q_proj",
    "model.layers.0.mlp.down_proj",  # in 32, out 16
    "model.layers.1.self_attn.v_proj",  # in 16, out 8 (one KV head)
    "model.layers.1.mlp.up_proj",  # in 16, out 32
]
INPUT_IDS = torch.tensor([[1, 5, 9, 42, 77, 3, 250, 11], [7, 7, 8, 100, 2, 60, 61, 62]])


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def base() -> Any:
    return build_tiny_model(300, initializer_range=0.2).eval()


@pytest.fixture
def model(base: Any) -> Any:
    return copy.deepcopy(base)


def _module(model: Any, seed: int, r: int = 4, alpha: float = 8.0, size: float = 0.1) -> LoraModule:
    gen = torch.Generator().manual_seed(seed)
    shapes = {n: model.get_submodule(n).weight.shape for n in NAMES}
    return LoraModule(
        A={n: size * torch.randn(r, shapes[n][1], generator=gen) for n in NAMES},
        B={n: size * torch.randn(shapes[n][0], r, generator=gen) for n in NAMES},
        r=r,
        alpha=alpha,
        target_modules="all-linear",
        kind="forget" if seed % 2 else "retain",
        seed=seed,
    )


def _weights(model: Any) -> dict[str, torch.Tensor]:
    return {n: model.get_submodule(n).weight.detach().clone() for n in NAMES}


@torch.no_grad()
def _logits(model: Any) -> torch.Tensor:
    return model(input_ids=INPUT_IDS).logits


def _forward_terms(model: Any) -> int:
    """The ``accumulations`` of a forward computed two ways (adapter beside the weight or
    merged into it): per layer, the sums over its inner dimensions and over the positions
    attended to."""
    config = model.config
    per_layer = config.hidden_size + config.intermediate_size + INPUT_IDS.shape[1]
    return config.num_hidden_layers * per_layer


# --------------------------------------------------------------------- MasterWeights
def test_apply_matches_the_formula(model: Any) -> None:
    before = _weights(model)
    forget, retain = _module(model, 1), _module(model, 2, r=2, alpha=5.0)
    masters = MasterWeights(model, NAMES)
    masters.apply(forget, -0.7)
    masters.apply(retain, 0.3)
    for name in NAMES:
        # Independent reference in float64: W + c1 (alpha1/r1) B1 A1 + c2 (alpha2/r2) B2 A2.
        expected = (
            before[name].double()
            - 0.7 * (8.0 / 4) * forget.B[name].double() @ forget.A[name].double()
            + 0.3 * (5.0 / 2) * retain.B[name].double() @ retain.A[name].double()
        )
        # fp32 masters: each product sums r terms, then two updates are added to the weight.
        terms = forget.r + retain.r + 2
        assert_close_to_scale(model.get_submodule(name).weight, expected, terms, what=name)
    assert masters.history == [(forget.sha256(), -0.7), (retain.sha256(), 0.3)]
    assert masters.in_sync()


def test_delta_is_scaled_product(model: Any) -> None:
    module = _module(model, 3, r=4, alpha=12.0)
    for name in NAMES:
        assert torch.equal(module.delta(name), (module.B[name] @ module.A[name]) * 3.0)
    negated = copy.deepcopy(module)
    for name in NAMES:
        negated.B[name] = -negated.B[name]
    # Negating a LoRA = negating B: the same as applying it with weight -1.
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    MasterWeights(a, NAMES).apply(module, -1.0)
    MasterWeights(b, NAMES).apply(negated, 1.0)
    assert all(torch.equal(a.get_submodule(n).weight, b.get_submodule(n).weight) for n in NAMES)


def test_subtract_then_add_restores(model: Any) -> None:
    before = _weights(model)
    forget, retain = _module(model, 1), _module(model, 2)
    masters = MasterWeights(model, NAMES)
    for module, weight in [(forget, -3.0), (retain, 0.3), (forget, -0.2)]:
        masters.apply(module, weight)
    assert not torch.equal(model.get_submodule(NAMES[0]).weight, before[NAMES[0]])
    for module, weight in [(forget, 0.2), (retain, -0.3), (forget, 3.0)]:
        masters.apply(module, weight)
    for name in NAMES:
        # Six fp32 applications, each a product of r terms added to the masters.
        terms = 6 * (forget.r + 1)
        assert_close_to_scale(model.get_submodule(name).weight, before[name], terms, what=name)


def test_bf16_model_keeps_small_updates_through_fp32_masters(model: Any) -> None:
    half = copy.deepcopy(model).to(torch.bfloat16)
    naive = copy.deepcopy(half)
    start = _weights(half)
    # An update of ~1e-4 relative to the weights: below bf16's resolution (2^-8 relative).
    module = _module(model, 5, size=0.002)
    rel = max(float(module.delta(n).abs().max() / start[n].abs().mean()) for n in NAMES)
    assert rel < 2e-3
    masters = MasterWeights(half, NAMES)
    steps = 200  # the summed update (~2% of |w|) is well above bf16 resolution
    for _ in range(steps):
        masters.apply(module, 1.0)
        with torch.no_grad():  # what a naive merge does: add straight into the bf16 weights
            for name in NAMES:
                weight = naive.get_submodule(name).weight
                weight.add_(module.delta(name).to(torch.bfloat16))
    for name in NAMES:
        target = start[name].float() + steps * module.delta(name)
        got = half.get_submodule(name).weight.float()
        lost = naive.get_submodule(name).weight.float()
        # Masters: the exact sum, rounded once to bf16 (within half a bf16 ulp of it).
        assert ((got - target).abs() <= target.abs() * 2**-8 + 1e-7).all()
        assert (got - target).abs().mean() < 0.2 * (lost - target).abs().mean()
    # Most naive per-step additions round away entirely.
    unchanged = sum(int((naive.get_submodule(n).weight == start[n]).sum()) for n in NAMES) / sum(
        start[n].numel() for n in NAMES
    )
    assert unchanged > 0.5


def test_rebuild_replays_bit_identically(model: Any, base: Any) -> None:
    stack = [(_module(model, 1), -3.0), (_module(model, 2), 0.3), (_module(model, 1), -0.2)]
    masters = MasterWeights(model, NAMES)
    for module, weight in stack:
        masters.apply(module, weight)
    fresh = copy.deepcopy(base)
    replayed = rebuild(fresh, stack)
    assert replayed.history == masters.history
    assert all(
        torch.equal(model.get_submodule(n).weight, fresh.get_submodule(n).weight) for n in NAMES
    )
    assert torch.equal(_logits(model), _logits(fresh))


def test_a_later_module_reaching_new_layers_extends_the_masters_exactly(
    model: Any, base: Any
) -> None:
    """RMU's F0 stops at its layer; A1 after it reaches every layer: the masters grow to its
    weights, and the result equals the whole stack replayed on the base, bit for bit."""
    whole = _module(model, 2)
    lower = LoraModule(
        A={n: a for n, a in whole.A.items() if ".layers.0." in n},
        B={n: b for n, b in whole.B.items() if ".layers.0." in n},
        r=whole.r, alpha=whole.alpha, target_modules="all-linear", kind="forget", seed=5,
    )  # fmt: skip
    masters = MasterWeights(model, lower.names)
    masters.apply(lower, 0.7)
    assert masters.extend(NAMES) == NAMES[2:] and masters.extend(NAMES) == []
    masters.apply(_module(model, 3), 1.0)
    fresh = copy.deepcopy(base)
    rebuild(fresh, [(lower, 0.7), (_module(model, 3), 1.0)])
    assert all(torch.equal(model.get_submodule(n).weight, fresh.get_submodule(n).weight)
               for n in NAMES)  # fmt: skip
    assert masters.in_sync()


def test_errors_and_sync(model: Any) -> None:
    masters = MasterWeights(model, NAMES[:2])
    with pytest.raises(ValueError, match="without a master copy"):
        masters.apply(_module(model, 1), 1.0)
    with pytest.raises(ValueError, match="no module"):
        MasterWeights(model, ["model.layers.9.mlp.up_proj"])
    with pytest.raises(ValueError, match="2-D weight"):
        MasterWeights(model, ["model.layers.0.mlp"])
    assert masters.in_sync()
    with torch.no_grad():
        model.get_submodule(NAMES[0]).weight.add_(1.0)
    assert not masters.in_sync()


# --------------------------------------------------------------------- ScaledAdapter
@pytest.mark.parametrize("weight", [0.8, -0.5, -3.0])
def test_scaled_adapter_equals_merged_weights(model: Any, weight: float) -> None:
    module = _module(model, 1)
    merged = copy.deepcopy(model)
    MasterWeights(merged, NAMES).apply(module, weight)
    base_logits = _logits(model)
    with ScaledAdapter(model, module, weight):
        unmerged = _logits(model)
    assert_close_to_scale(unmerged, _logits(merged), _forward_terms(model))
    assert not torch.allclose(unmerged, base_logits, atol=1e-3)
    # Detached cleanly: no hooks left, base behaviour bit-identical.
    assert all(not model.get_submodule(n)._forward_hooks for n in NAMES)
    assert torch.equal(_logits(model), base_logits)


def test_set_weight_changes_scale_in_place(model: Any) -> None:
    module = _module(model, 1)
    base_logits = _logits(model)
    weights = [0.5, -1.0, 0.0, 2.0]
    references = []
    for weight in weights:
        merged = copy.deepcopy(model)
        MasterWeights(merged, NAMES).apply(module, weight)
        references.append(_logits(merged))
    params_before = [p.data_ptr() for p in model.parameters()]
    with ScaledAdapter(model, module, weights[0]) as adapter:
        for weight, reference in zip(weights, references, strict=True):
            adapter.set_weight(weight)
            assert adapter.weight == weight
            assert_close_to_scale(_logits(model), reference, _forward_terms(model))
        adapter.set_weight(0.0)
        assert torch.equal(_logits(model), base_logits)
    assert [p.data_ptr() for p in model.parameters()] == params_before  # never reloaded


def test_adapters_stack_on_top_of_merged_masters(model: Any) -> None:
    forget, retain = _module(model, 1), _module(model, 2)
    reference = copy.deepcopy(model)
    ref_masters = MasterWeights(reference, NAMES)
    ref_masters.apply(forget, -0.5)
    ref_masters.apply(retain, 0.4)
    MasterWeights(model, NAMES).apply(forget, -0.5)  # merged so far
    with ScaledAdapter(model, retain, 0.1) as candidate, ScaledAdapter(model, forget, 0.0):
        candidate.set_weight(0.4)
        assert_close_to_scale(_logits(model), _logits(reference), _forward_terms(model))
    with ScaledAdapter(model, retain, 0.2), ScaledAdapter(model, retain, 0.2):
        assert_close_to_scale(_logits(model), _logits(reference), _forward_terms(model))


def test_scaled_adapter_on_bf16_model_and_reentry(model: Any) -> None:
    module = _module(model, 1)
    half = copy.deepcopy(model).to(torch.bfloat16)
    adapter = ScaledAdapter(half, module, 1.0)
    with adapter:
        out = _logits(half)
        assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
        with pytest.raises(RuntimeError, match="already attached"):
            adapter.__enter__()
    with adapter:  # attachable again after a clean exit
        assert torch.equal(_logits(half), out)

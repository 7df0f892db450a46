"""The quantization attack's weights: round-to-nearest on the stated grids, applied to the
decoder's Linears only, and put back exactly."""

from __future__ import annotations

import pytest
import torch

from rrtool.evaluators.quantization import SCHEMES, fake_quantize, quantizable, quantized
from rrtool.models import load_model
from rrtool.spec import ModelSpec


def _weight(out: int = 6, fan_in: int = 200, seed: int = 0) -> torch.Tensor:
    return torch.randn(out, fan_in, generator=torch.Generator().manual_seed(seed))


def test_int8_is_symmetric_per_channel_round_to_nearest() -> None:
    w = _weight()
    q = fake_quantize(w, SCHEMES["int8"])
    scale = w.abs().amax(dim=1, keepdim=True) / 127
    steps = q / scale
    assert torch.allclose(steps, steps.round(), atol=1e-3)  # on the grid
    assert ((q - w).abs() <= scale / 2 + 1e-6).all()  # the nearest point of it
    assert torch.equal(fake_quantize(q, SCHEMES["int8"]), q)  # a grid point stays
    assert q.dtype == w.dtype and len(set(steps.round()[0].tolist())) > 16


def test_int4_has_at_most_16_levels_per_group_of_128_columns() -> None:
    w = _weight(fan_in=200)  # a last group of 72 columns
    q = fake_quantize(w, SCHEMES["int4"])
    assert q.shape == w.shape
    for group in (slice(0, 128), slice(128, 200)):
        for row in range(w.shape[0]):
            part, exact = q[row, group], w[row, group]
            assert len(torch.unique(part)) <= 16
            span = float(torch.clamp(exact.max(), min=0) - torch.clamp(exact.min(), max=0))
            assert float((part - exact).abs().max()) <= span / 15 / 2 + 1e-5
    assert float((q - w).abs().mean()) > float((fake_quantize(w, SCHEMES["int8"]) - w).abs().mean())


def test_quantized_rounds_the_decoder_and_puts_every_weight_back() -> None:
    model = load_model(ModelSpec(id="builtin:tiny-random")).model
    exact = {k: v.clone() for k, v in model.state_dict().items()}
    layers = dict(quantizable(model))
    head = model.get_output_embeddings()
    assert layers and all(m is not head for m in layers.values())
    with quantized(model, SCHEMES["int4"]) as count:
        assert count == len(layers)
        now = model.state_dict()
        changed = {k for k in exact if not torch.equal(now[k], exact[k])}
        assert changed == {f"{name}.weight" for name in layers}  # embeddings and head kept
    after = model.state_dict()
    assert all(torch.equal(after[k], exact[k]) for k in exact)


def test_the_weights_come_back_when_the_block_fails() -> None:
    model = load_model(ModelSpec(id="builtin:tiny-random")).model
    exact = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError), quantized(model, SCHEMES["int8"]):
        raise RuntimeError("measurement failed")
    assert all(torch.equal(model.state_dict()[k], exact[k]) for k in exact)


def test_the_8_bit_model_agrees_with_fp32_far_more_often_than_the_4_bit_one() -> None:
    handle = load_model(ModelSpec(id="builtin:tiny-random"))
    model = handle.model
    ids = torch.randint(
        0, model.config.vocab_size, (8, 24), generator=torch.Generator().manual_seed(0)
    )

    def logits() -> torch.Tensor:
        with torch.no_grad():
            return model(input_ids=ids).logits

    exact = logits()
    agreement, error = {}, {}
    for name, scheme in SCHEMES.items():
        with quantized(model, scheme):
            got = logits()
        agreement[name] = float((got.argmax(-1) == exact.argmax(-1)).float().mean())
        error[name] = float((got - exact).pow(2).mean().sqrt())
    # The tiny model's greedy answers barely move at 8 bits and move at 4; its logits move
    # an order of magnitude more at 4 bits (a 16x coarser grid).
    assert agreement["int8"] >= 0.99 and agreement["int4"] < agreement["int8"], agreement
    assert error["int4"] > 5 * error["int8"] > 0, error

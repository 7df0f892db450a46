"""Training with a micro-batch's shared prompt prefix run once (rrtool.release.shared_prefix):
where it applies, and that the update is the one the row-by-row forward gives."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from rrtool import shared_prefix
from rrtool.models import build_tiny_model_for, build_tiny_tokenizer
from rrtool.release.lora import Example, encode_example, train_lora
from rrtool.spec import LoraSpec
from tests.conftest import assert_close_to_scale

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# A long shared head (as the NER one-shot prompt has), then passages that differ, and
# answers of different lengths so that right padding is exercised.
HEAD = "You extract named entities. Reply with a JSON list. Example: Ada met Bob in Paris. "
EXAMPLES = [
    Example(f"{HEAD}Text: note {i} was written {'long ' * (i % 3)}ago. Who wrote it?",
            "Ada Lovelace" + " wrote it" * (i % 2))
    for i in range(8)
]  # fmt: skip


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, Any]:
    tokenizer = build_tiny_tokenizer()
    return build_tiny_model_for(tokenizer, initializer_range=0.3).eval(), tokenizer


def _cfg(**overrides: Any) -> LoraSpec:
    values: dict[str, Any] = dict(r=4, alpha=8.0, dropout=0.0, learning_rate=1e-2, epochs=2,
                                  batch_size=4, max_length=96)  # fmt: skip
    return LoraSpec(**(values | overrides))


def _train(tiny: tuple[Any, Any], cfg: LoraSpec, **kwargs: Any) -> Any:
    model, tokenizer = tiny
    return train_lora(copy.deepcopy(model), tokenizer, EXAMPLES, cfg, seed=5, kind="retain",
                      chat=False, **kwargs)  # fmt: skip


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the prefix length of every shared-prefix forward."""
    calls: list[int] = []
    original = shared_prefix.kept_logits

    def spy(forward: Any, model: Any, batch: Any, keep: Any, prefix: int) -> Any:
        calls.append(prefix)
        return original(forward, model, batch, keep, prefix)

    monkeypatch.setattr(shared_prefix, "kept_logits", spy)
    return calls


@pytest.mark.parametrize("objective", ["nll", "npo"])
def test_the_update_equals_the_row_by_row_forward(
    tiny: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch, objective: str
) -> None:
    """Same loss curve and the same A and B (float rounding aside) with the shared head run
    once as with every row run whole; NPO's reference pass takes the same path."""
    calls = _counting(monkeypatch)
    shared = _train(tiny, _cfg(), objective=objective)
    assert calls and min(calls) >= shared_prefix.MIN_SHARED  # the shared path ran
    monkeypatch.setattr(shared_prefix, "MIN_SHARED", 10_000)  # never worth it: whole rows
    calls.clear()
    whole = _train(tiny, _cfg(), objective=objective)
    assert not calls
    # Rounding only: every step sums its positions (4 rows of the longest example) in another
    # order, and Adam carries a small entry's rounding into its update at full size.
    longest = max(len(encode_example(tiny[1], ex, 96, chat=False)[0]) for ex in EXAMPLES)
    terms = 4 * longest * len(whole.loss_curve)
    assert_close_to_scale(shared.loss_curve, whole.loss_curve, terms, what="loss curve")
    for name in whole.names:
        assert_close_to_scale(shared.A[name], whole.A[name], terms, what=f"A {name}")
        assert_close_to_scale(shared.B[name], whole.B[name], terms, what=f"B {name}")


def test_bf16_autocast_takes_the_shared_path_too(
    tiny: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _counting(monkeypatch)
    module = _train(tiny, _cfg(epochs=1), autocast_bf16=True)
    assert calls and all(torch.isfinite(torch.tensor(module.loss_curve)))


def _batch(rows: list[list[int]], completion_from: list[int]) -> tuple[Any, Any, Any]:
    width = max(map(len, rows))
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    keep = torch.zeros_like(ids, dtype=torch.bool)
    for i, (row, start) in enumerate(zip(rows, completion_from, strict=True)):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
        keep[i, start - 1 : len(row) - 1] = True  # position t predicts token t + 1
    return ids, mask, keep


def test_the_prefix_stops_where_rows_differ_or_loss_begins() -> None:
    head = list(range(1, 31))  # 30 shared tokens
    ids, mask, keep = _batch([head + [40, 41, 42], head + [50, 51]], [31, 31])
    assert shared_prefix.prefix_length(ids, mask, keep) == 30  # where the rows differ
    # A row whose completion starts inside the shared head: the prefix ends before the
    # position that predicts its first completion token.
    ids, mask, keep = _batch([head + [40], head + [50]], [21, 31])
    assert shared_prefix.prefix_length(ids, mask, keep) == 20


def test_no_prefix_for_one_row_a_short_head_or_rows_that_differ_at_once() -> None:
    head = list(range(1, 31))
    assert shared_prefix.prefix_length(*_batch([head + [40]], [31])) == 0
    short = list(range(1, shared_prefix.MIN_SHARED))  # one token short of the minimum
    assert shared_prefix.prefix_length(*_batch([short + [40, 41], short + [50, 51]], [20, 20])) == 0
    assert shared_prefix.prefix_length(*_batch([[7, *head], [8, *head]], [31, 31])) == 0


def test_only_models_whose_cache_is_a_plain_prefix(tiny: tuple[Any, Any]) -> None:
    model = copy.deepcopy(tiny[0])
    assert shared_prefix.supported(model)
    model.config.layer_types = ["sliding_attention"] * model.config.num_hidden_layers
    assert not shared_prefix.supported(model)

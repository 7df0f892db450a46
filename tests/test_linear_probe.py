"""The white-box linear probe: token labels from gold entity spans, and what the probe reads
on states where the concept is (or is not) linearly present."""

from __future__ import annotations

import torch

from rrtool.evaluators.linear_probe import (
    Continuation,
    TokenStates,
    continuation_states,
    probe,
    selected_layers,
    spans,
    token_labels,
)
from tests.conftest import assert_close_to_scale


def test_tokens_inside_forget_entities_are_positives_others_negatives() -> None:
    text = "Ada Lovelace met Babbage in London."
    person = spans(text, ["Ada Lovelace", "Babbage"])
    place = spans(text, ["London"])
    assert person == [(0, 12), (17, 24)] and place == [(28, 34)]
    # Offsets as a tokenizer gives them: " met", " in" and "." lie in no entity.
    offsets = [(0, 3), (3, 12), (12, 16), (16, 24), (24, 27), (27, 34), (34, 35), (0, 0)]
    assert token_labels(offsets, person, place) == [1, 1, None, 1, None, 0, None, None]
    assert spans("no entity here", ["", "Paris"]) == []


def _states(seed: int, separable: bool, passages: int = 40) -> list[TokenStates | None]:
    """Per passage 6 tokens, half positive; the concept lies along feature 0 when separable."""
    gen = torch.Generator().manual_seed(seed)
    out: list[TokenStates | None] = []
    for _ in range(passages):
        labels = torch.tensor([1, 1, 1, 0, 0, 0])
        x = torch.randn(6, 8, generator=gen)
        if separable:
            x[:, 0] += 3.0 * (labels * 2 - 1)
        out.append(TokenStates(labels, {1: x, 2: x.clone()}))
    return out


def test_probe_reads_a_present_concept_and_chance_where_it_is_gone() -> None:
    base = _states(0, separable=True)
    # Same labels, states without the concept: the base probe and a retrained one read chance.
    gone = probe(base, _states(1, separable=False), [1, 2], seed=0)
    assert gone["status"] == "done" and gone["decodable_layers"] == []
    for row in gone["layers"]:
        assert row["base"]["value"] > 0.9 and row["base"]["ci"][0] > 0.8
        assert abs(row["released_base_probe"]["value"] - 0.5) < 0.15
        assert abs(row["released_retrained"]["value"] - 0.5) < 0.15
    assert "not linearly decodable after Release" in gone["reading"]
    assert "the base model's states carried it at layer(s) 1, 2" in gone["reading"]
    # Nothing to read in the base model either: the probe says it cannot show forgetting.
    blind = probe(_states(3, separable=False), _states(4, separable=False), [1, 2], seed=0)
    assert blind["base_decodable_layers"] == [] and "cannot show forgetting" in blind["reading"]
    # The concept kept, in a rotated direction: the base probe misses it, a retrained one not.
    rotated = _states(2, separable=True)
    for states in rotated:
        assert states is not None
        for layer, x in states.layers.items():
            states.layers[layer] = x[:, [1, 0, 2, 3, 4, 5, 6, 7]]
    kept = probe(base, rotated, [1, 2], seed=0)
    assert kept["decodable_layers"] == [1, 2]
    for row in kept["layers"]:
        assert row["released_retrained"]["value"] > 0.9
        assert row["released_base_probe"]["value"] < 0.75
    assert kept["passages"] == {"train": 20, "test": 20} and kept["tokens"] == 240


def test_too_few_labelled_passages_is_a_reason_not_a_crash() -> None:
    one_class = [TokenStates(torch.tensor([1, 1]), {1: torch.randn(2, 4)}) for _ in range(4)]
    assert probe(one_class, one_class, [1], seed=0)["status"].startswith("not run")
    assert selected_layers(30) == [1, 7, 15, 22, 30] and selected_layers(2) == [1, 2]


def test_a_continuation_is_its_own_tokens_averaged_after_its_prompt(model_cache) -> None:
    from rrtool.models import load_model
    from rrtool.spec import ModelSpec

    handle = load_model(ModelSpec(id="builtin:tiny-random", device="cpu"))
    model, tokenizer = handle.model, handle.tokenizer
    units = [
        [Continuation("The cat sat", " on the mat", 1), Continuation("The cat sat", "   ", 0)],
        [Continuation("Rain", " falls today", 0)],
        [Continuation("Only", "", 1)],  # nothing continued: no row, no unit
    ]
    states = continuation_states(model, tokenizer, units, [1, 2])
    assert states[2] is None
    first, second = states[0], states[1]
    assert first is not None and second is not None
    assert first.labels.tolist() == [1] and second.labels.tolist() == [0]  # blank text skipped
    prefix = tokenizer("The cat sat", add_special_tokens=False)["input_ids"]
    ids = tokenizer("The cat sat on the mat", add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        hidden = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
    # Rounding only: the batched forward's sums (per layer, its inner dimensions), the mean's.
    config = model.config
    terms = config.num_hidden_layers * (config.hidden_size + config.intermediate_size) + len(ids)
    for layer in (1, 2):
        expected = hidden[layer][0, len(prefix) :].mean(0)
        assert first.layers[layer].shape == (1, expected.shape[0])
        assert_close_to_scale(first.layers[layer][0], expected, terms, what=f"layer {layer}")
    # The prompt's own tokens are not in the average.
    assert not torch.allclose(first.layers[2][0], hidden[2][0].mean(0), atol=1e-4)

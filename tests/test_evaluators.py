"""Evaluators on small fixtures: values a reader can compute by hand, and invariances."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from rrtool.evaluators import gsm8k
from rrtool.evaluators.generated import Item, oracle_evaluation
from rrtool.evaluators.perplexity import perplexity
from rrtool.generation.base import SamplingParams
from rrtool.generation.factory import make_generator
from rrtool.models import LoadedModel, load_model
from rrtool.oracles.registry import create_oracle
from rrtool.spec import ModelSpec
from tests.conftest import assert_close_to_scale

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEXT = (
    "The harbour town of Vell sits below grey cliffs.\n"
    "Its fishing boats leave before dawn and return by noon, nets heavy with herring.\n"
    "Visitors come for the lighthouse, built in 1861, and the smoked fish."
)


def _load(model_cache: Path) -> LoadedModel:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RRTOOL_CACHE_DIR", str(model_cache))
        return load_model(ModelSpec(id="builtin:tiny-random", device="cpu", dtype="float32"))


@pytest.fixture(scope="module")
def handle(model_cache: Path) -> Iterator[LoadedModel]:
    yield _load(model_cache)


# ------------------------------------------------------------------ perplexity
def test_uniform_model_has_perplexity_equal_to_its_vocabulary(model_cache: Path) -> None:
    """Zero output weights -> uniform next-token distribution over V tokens: each token costs
    ln V nats, so token perplexity is V, word perplexity V^(tokens/words), byte V^(tokens/bytes)."""
    uniform = _load(model_cache)
    with torch.no_grad():
        uniform.model.get_output_embeddings().weight.zero_()
    vocab = uniform.model.get_output_embeddings().weight.shape[0]
    result = perplexity(uniform.model, uniform.tokenizer, TEXT, window=7, batch_size=3)
    tokens = len(uniform.tokenizer(TEXT, add_special_tokens=False)["input_ids"])
    words, nbytes = len(TEXT.split()), len(TEXT.encode())
    m = result.metrics
    assert m["tokens"] == tokens and m["words"] == words and m["bytes"] == nbytes
    assert m["token_perplexity"] == pytest.approx(vocab, rel=1e-9)
    assert m["word_perplexity"] == pytest.approx(vocab ** (tokens / words), rel=1e-9)
    assert m["byte_perplexity"] == pytest.approx(vocab ** (tokens / nbytes), rel=1e-9)
    assert m["bits_per_byte"] == pytest.approx(tokens * math.log2(vocab) / nbytes, rel=1e-9)
    assert result.count == math.ceil(tokens / 7)
    assert "disjoint windows of 7 tokens" in result.definition


def test_perplexity_does_not_depend_on_batching(handle: LoadedModel) -> None:
    """Right-padded batches must score each window exactly as alone (mask and positions)."""
    alone = perplexity(handle.model, handle.tokenizer, TEXT, window=11, batch_size=1)
    batched = perplexity(handle.model, handle.tokenizer, TEXT, window=11, batch_size=8)
    # Rounding only: the forward's sums (per layer, its inner dimensions) over another batch.
    config = handle.model.config
    terms = config.num_hidden_layers * (config.hidden_size + config.intermediate_size)
    assert_close_to_scale(batched.metrics["nll"], alone.metrics["nll"], terms, what="nll")


def test_perplexity_window_is_part_of_the_result(handle: LoadedModel) -> None:
    """Disjoint windows lose context at each cut, so the window length changes the number."""
    short = perplexity(handle.model, handle.tokenizer, TEXT, window=4)
    long = perplexity(handle.model, handle.tokenizer, TEXT, window=64)
    assert short.metrics["tokens"] == long.metrics["tokens"]
    assert short.metrics["nll"] != pytest.approx(long.metrics["nll"], rel=1e-6)


def test_perplexity_max_tokens_scores_a_prefix(handle: LoadedModel) -> None:
    result = perplexity(handle.model, handle.tokenizer, TEXT, window=8, max_tokens=10)
    assert result.metrics["tokens"] == 10
    assert result.metrics["bytes"] < len(TEXT.encode())


def test_perplexity_rejects_empty_text(handle: LoadedModel) -> None:
    with pytest.raises(ValueError, match="no tokens"):
        perplexity(handle.model, handle.tokenizer, "")


# ----------------------------------------------------------------------- gsm8k
@pytest.mark.parametrize(
    ("completion", "strict", "flexible"),
    [
        ("She has 48 - 15 = 33 left.\n#### 33", "33", "33"),
        ("The answer is $1,200.", None, "1200"),
        ("#### -7.", "-7", "-7"),
        ("2 apples and 3 pears, so 5", None, "5"),
        ("no number here", None, None),
    ],
)
def test_answer_extraction(completion: str, strict: str | None, flexible: str | None) -> None:
    assert gsm8k.extract_strict(completion) == strict
    assert gsm8k.extract_flexible(completion) == flexible


def test_gsm8k_score_by_hand() -> None:
    completions = [
        "3 * 4 = 12\n#### 12",  # strict and flexible right
        "So the total is 12.",  # flexible only
        "#### 13",  # both wrong
        "#### 1,000",  # both right after removing the comma
    ]
    result = gsm8k.score(completions, ["12", "12", "12", "1000"])
    assert result.metrics == {"strict_accuracy": 2 / 4, "flexible_accuracy": 3 / 4}
    assert [a["score"] for a in result.answers] == [1.0, 1.0, 0.0, 1.0]


def test_few_shot_prompt_and_shots_are_not_evaluated() -> None:
    records = [{"question": f"q{i}", "answer": f"a\n#### {i}"} for i in range(4)]
    shots, rest = gsm8k.split_shots(records, 2)
    assert [r["question"] for r in rest] == ["q2", "q3"]
    prompt = gsm8k.few_shot_prompt("q2", shots)
    assert (
        prompt
        == "Question: q0\nAnswer: a\n#### 0\n\nQuestion: q1\nAnswer: a\n#### 1\n\nQuestion: q2\nAnswer:"
    )
    seen: list[str] = []

    def generate(prompts: list[str]) -> list[str]:
        seen.extend(prompts)
        return ["#### 2", "#### 9"]

    result = gsm8k.evaluate(generate, records, shots=2)
    assert len(seen) == 2 and seen[0].endswith("Question: q2\nAnswer:")
    assert result.metrics["strict_accuracy"] == 0.5 and result.count == 2
    with pytest.raises(ValueError, match="4 records cannot give 4 shots"):
        gsm8k.split_shots(records, 4)


# ------------------------------------------------------- oracle-scored evaluation
def test_oracle_evaluation_aggregates_samples_and_subsets(handle: LoadedModel) -> None:
    """Several samples per prompt are all scored; subsets are aggregated on their own."""
    items = [
        Item(
            f"p{i}",
            f"Text: Ada Lovelace met Charles Babbage.\nWhat describes person {i}?",
            {"type": "person", "entities": ["Ada Lovelace", "Charles Babbage"], "hard": i % 2 == 0},
        )
        for i in range(4)
    ]
    generator = make_generator("hf", handle, batch_size=4)
    oracle = create_oracle("ner_f1", {})
    params = SamplingParams(max_new_tokens=6, temperature=1.0, num_samples=3, seed=1)
    result = oracle_evaluation(
        "ner",
        generator,
        oracle,
        items,
        params,
        chat=False,
        definition="d",
        subsets={"hard": lambda r: r["hard"]},
    )
    # Noise from a random model parses as nothing: 2 gold entities missed per sample.
    assert result.metrics["person/support"] == 4 * 3 * 2
    assert result.metrics["hard/person/support"] == 2 * 3 * 2
    assert result.count == 4 and [a["id"] for a in result.answers] == ["p0", "p1", "p2", "p3"]
    assert result.scorer.startswith("oracle ner_f1")


# ------------------------------------------------------------------ membership
def test_auc_by_hand() -> None:
    from rrtool.evaluators.membership import auc

    assert auc([3.0, 2.0], [1.0, 2.0]) == (1 + 1 + 1 + 0.5) / 4
    assert auc([0.0], [1.0]) == 0.0 and auc([1.0, float("nan")], [0.0]) == 1.0
    with pytest.raises(ValueError):
        auc([], [1.0])


def test_min_k_plus_plus_matches_its_definition(handle: LoadedModel) -> None:
    """Recomputed token by token with plain loops over the vocabulary's distribution."""
    from rrtool.evaluators.membership import min_k_plus_plus
    from rrtool.release.lora import IGNORE_INDEX, Example, encode_example

    example = Example("Who wrote the letter?", "Ada Lovelace wrote it in 1843.")
    (score,) = min_k_plus_plus(handle.model, handle.tokenizer, [example], chat=False, k=0.5)
    ids, labels = encode_example(handle.tokenizer, example, 512, False)
    with torch.no_grad():
        logits = handle.model(input_ids=torch.tensor([ids])).logits[0].double()
    zs = []
    for t in range(len(ids) - 1):
        if labels[t + 1] == IGNORE_INDEX:
            continue
        logp = torch.log_softmax(logits[t], dim=-1)
        p = logp.exp()
        mu = float((p * logp).sum())
        var = float((p * logp * logp).sum()) - mu * mu
        zs.append((float(logp[labels[t + 1]]) - mu) / math.sqrt(var))
    zs.sort()
    lowest = zs[: math.ceil(0.5 * len(zs))]
    assert score == pytest.approx(sum(lowest) / len(lowest), rel=1e-9)

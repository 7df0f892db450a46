"""The one generation interface every phase uses, and what is shared by its backends.

Phases call a :class:`Generator`; nothing above this package imports transformers'
``generate`` or vLLM. Prompt formatting (:func:`format_prompt`) lives here so that both
backends see exactly the same text for the same prompt.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from rrtool.errors import UserError

if TYPE_CHECKING:
    import torch

    from rrtool.spec import GenerationSpec

Prompt = str | list[dict[str, Any]]
"""A plain-text prompt, or a chat conversation (``[{"role": ..., "content": ...}, ...]``)."""

VLLM_INSTALL = "pip install vllm"


@dataclass(frozen=True)
class SamplingParams:
    """How to sample completions; backend-neutral (maps onto HF ``generate`` and vLLM)."""

    max_new_tokens: int = 64
    temperature: float = 1.0  # 0 = greedy decoding
    top_p: float = 1.0
    num_samples: int = 1
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1 (got {self.max_new_tokens})")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (got {self.temperature})")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (got {self.top_p})")
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1 (got {self.num_samples})")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must not be empty")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @classmethod
    def from_spec(cls, spec: GenerationSpec, seed: int | None) -> SamplingParams:
        """The spec's ``generation`` section plus the run's seed."""
        return cls(
            max_new_tokens=spec.max_new_tokens,
            temperature=spec.temperature,
            top_p=spec.top_p,
            num_samples=spec.num_samples,
            stop=tuple(spec.stop),
            seed=seed,
        )


@dataclass(frozen=True)
class Completion:
    """One generated continuation.

    ``tokens`` counts the tokens generated up to the stop (the EOS token, or the token that
    completed a stop string, included); ``text`` never contains the stop string or EOS.
    """

    text: str
    tokens: int
    finish_reason: Literal["stop", "length"]


@dataclass
class GenerationStats:
    """Running totals for tokens/s reporting (wall time spent inside the backend)."""

    tokens: int = 0
    seconds: float = 0.0
    sequences: int = 0
    row_steps: int = 0
    """Decoding work done: rows computed summed over decode steps (a finished row that stays
    in its batch still counts, which is what continuous batching saves)."""

    def add(self, tokens: int, seconds: float, sequences: int, row_steps: int = 0) -> None:
        self.tokens += tokens
        self.seconds += seconds
        self.sequences += sequences
        self.row_steps += row_steps

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def reset(self) -> None:
        self.tokens, self.seconds, self.sequences, self.row_steps = 0, 0.0, 0, 0


@runtime_checkable
class Generator(Protocol):
    """What phases need from a model: completions, soft-prompt decoding, features."""

    stats: GenerationStats

    def generate(
        self,
        prompts: Sequence[Prompt],
        params: SamplingParams,
        *,
        chat: bool = True,
        progress: Callable[[int], None] | None = None,
        drafts: Sequence[str | None] | None = None,
    ) -> list[list[Completion]]:
        """``num_samples`` completions per prompt (outer list follows ``prompts``).

        With ``chat`` and a tokenizer that has a chat template, a ``str`` prompt is sent as one
        user message; a ``list[dict]`` is always a conversation. ``progress`` receives the
        number of prompts finished after each batch. ``drafts`` (greedy decoding): a guess of
        each prompt's answer, e.g. from the model before a small change of its weights; it
        never changes an answer, only how fast a backend that checks guesses finds it (the
        ``hf`` backend's continuous decoder does; others ignore it).
        """
        ...

    def generate_from_embeds(
        self,
        prefix_embeds: torch.Tensor,
        prompts: Sequence[str],
        params: SamplingParams,
        *,
        chat: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> list[list[Completion]]:
        """Like :meth:`generate` with soft tokens ``prefix_embeds`` (n_soft, hidden) placed
        before each prompt's token embeddings."""
        ...

    def last_token_features(
        self,
        prompts: Sequence[str],
        *,
        prefix_embeds: torch.Tensor | None = None,
        batch_size: int | None = None,
        chat: bool = False,
    ) -> torch.Tensor:
        """Final-layer hidden state at the last position of each input: (n, hidden), fp32, CPU."""
        ...

    def embedding_norm(self) -> float:
        """Mean L2 norm of the input-embedding rows (the scale soft prompts should have)."""
        ...


# ------------------------------------------------------------------ shared helpers
def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def format_prompt(tokenizer: Any, prompt: Prompt, *, chat: bool) -> tuple[str, bool]:
    """The exact text the model is given, and whether a chat template produced it.

    The flag matters for tokenisation: templated text already carries its special tokens
    (BOS and all), so it must be encoded with ``add_special_tokens=False``.
    """
    if isinstance(prompt, str):
        if not (chat and has_chat_template(tokenizer)):
            return prompt, False
        messages: list[dict[str, Any]] = [{"role": "user", "content": prompt}]
    else:
        if not has_chat_template(tokenizer):
            raise UserError(
                "a chat conversation was given but the model's tokenizer has no chat template "
                "(fix: use plain-text prompts with this model, or an instruction-tuned model)"
            )
        messages = list(prompt)
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return text, True


def encode_prompt(tokenizer: Any, prompt: Prompt, *, chat: bool) -> list[int]:
    """Token ids of :func:`format_prompt`'s text (empty for an empty plain prompt: valid after
    a soft prompt, an error for plain generation)."""
    text, templated = format_prompt(tokenizer, prompt, chat=chat)
    return list(tokenizer(text, add_special_tokens=not templated)["input_ids"])


def check_nonempty(encoded: Sequence[Sequence[int]], prompts: Sequence[Prompt]) -> None:
    """Plain generation needs at least one prompt token to condition on."""
    for ids, prompt in zip(encoded, prompts, strict=True):
        if not ids:
            raise ValueError(f"prompt {prompt!r} encodes to no tokens")


def row_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    """A well-mixed 63-bit seed per (prompt, sample), so a completion's randomness depends
    only on the call's seed and its position in the call, not on batching or sort order."""
    digest = hashlib.blake2b(f"{seed}:{prompt_index}:{sample_index}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "little") >> 1


def first_stop(text: str, stop: Sequence[str]) -> int | None:
    """Index of the earliest stop string in ``text``, or None."""
    hits = [i for i in (text.find(s) for s in stop) if i >= 0]
    return min(hits) if hits else None


def vllm_missing_message() -> str:
    return (
        "generation.backend is `vllm` but vLLM is not installed "
        f"(fix: `{VLLM_INSTALL}` on a machine with an NVIDIA GPU, or set generation.backend: hf)"
    )

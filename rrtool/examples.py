"""Training examples (a prompt and the completion the loss is on), their token encoding and
their batches.

Used by Release's LoRA training and by the audit's membership probe, so it lives below both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rrtool.errors import UserError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from torch import Tensor

IGNORE_INDEX = -100  # label of tokens that carry no loss (prompt, padding)


@dataclass(frozen=True)
class Example:
    """One training pair: the loss is on the completion only. The prompt is a text, or a
    conversation (list of chat messages) that the completion answers. For DPO the completion
    is the preferred answer and ``rejected`` the dispreferred one."""

    prompt: str | list[dict[str, str]]
    completion: str
    rejected: str | None = None


def encode_example(
    tokenizer: Any, example: Example, max_length: int, chat: bool = True
) -> tuple[list[int], list[int]]:
    """Token ids and labels of one example; prompt tokens are labelled ``IGNORE_INDEX``.

    Prompt and completion are tokenised separately so that the boundary is exact (BPE merges
    across it would otherwise move the mask by a token).
    """
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise UserError("the tokenizer has no chat template (train with chat=False)")
        # A conversation prompt (e.g. Reveal's one-shot NER exchange) is used as it is.
        user = (
            list(example.prompt)
            if isinstance(example.prompt, list)
            else [{"role": "user", "content": example.prompt}]
        )
        prompt_text = tokenizer.apply_chat_template(
            user, tokenize=False, add_generation_prompt=True
        )
        full_text = tokenizer.apply_chat_template(
            [*user, {"role": "assistant", "content": example.completion}], tokenize=False
        )
        if not full_text.startswith(prompt_text):
            raise UserError(
                "the chat template renders the prompt differently once an answer follows; "
                "cannot locate the completion tokens (train with chat=False)"
            )
        prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        completion_ids = tokenizer(full_text[len(prompt_text) :], add_special_tokens=False)[
            "input_ids"
        ]
    else:
        if not isinstance(example.prompt, str):
            raise UserError("a conversation prompt needs chat formatting (train with chat=True)")
        prompt_ids = tokenizer(example.prompt)["input_ids"]
        completion_ids = tokenizer(example.completion, add_special_tokens=False)["input_ids"]
        if tokenizer.eos_token_id is not None:
            completion_ids = [*completion_ids, tokenizer.eos_token_id]
    # Over-long examples: keep at least half the window for the completion (cutting the
    # prompt from the left) because an example without completion tokens teaches nothing.
    keep_completion = min(len(completion_ids), max(max_length - len(prompt_ids), max_length // 2))
    completion_ids = completion_ids[:keep_completion]
    prompt_ids = prompt_ids[max(0, len(prompt_ids) - (max_length - keep_completion)) :]
    ids = [*prompt_ids, *completion_ids]
    labels = [IGNORE_INDEX] * len(prompt_ids) + list(completion_ids)
    return ids, labels


def collate(rows: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (``IGNORE_INDEX`` where
    padded) of (ids, labels) rows; right padding keeps every row's positions 0..n-1."""
    import torch

    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, labs) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(labs)] = torch.tensor(labs, dtype=torch.long)
        mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}

"""A measurement taken on growing shares of its units, so that a decided question stops early.

Release rejects a candidate weight whose utility is below the acceptance threshold; a collapsed
candidate shows it on a few passages already. :func:`stages` orders the units (NER passages,
prompts) by a seeded shuffle and yields the item subsets of the first ``1/(looks+1)``,
``2/(looks+1)``, ... of them, then all items in their original order (so the last stage is
exactly the full measurement). :class:`MemoGenerator` answers each prompt once across the
stages (greedy answers do not depend on their batch-mates; sampled calls are not staged,
because a seeded sample depends on its position in the call).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from rrtool.generation.base import Completion, Generator, Prompt, SamplingParams

T = TypeVar("T")


def stages(
    items: Sequence[T], groups: Sequence[str] | None, looks: int, seed: int
) -> Iterator[list[T]]:
    """The items of growing shares of the units (``groups``: one unit key per item; each item
    its own unit without), ``looks`` interim subsets then the whole list."""
    keys = list(groups) if groups is not None else [str(i) for i in range(len(items))]
    units = list(dict.fromkeys(keys))
    random.Random(seed).shuffle(units)
    previous = 0
    for look in range(1, looks + 1):
        count = math.ceil(len(units) * look / (looks + 1))
        if count <= previous or count >= len(units):
            continue
        previous = count
        chosen = set(units[:count])
        yield [item for item, key in zip(items, keys, strict=True) if key in chosen]
    yield list(items)


class MemoGenerator:
    """Greedy answers remembered by prompt, so a later stage does not generate them again."""

    def __init__(self, inner: Generator) -> None:
        self.inner = inner
        self.stats = inner.stats
        self.generated = 0  # prompts actually sent to ``inner``
        self._answers: dict[str, list[Completion]] = {}

    def generate(
        self,
        prompts: Sequence[Prompt],
        params: SamplingParams,
        *,
        chat: bool = True,
        progress: Callable[[int], None] | None = None,
        drafts: Sequence[str | None] | None = None,
    ) -> list[list[Completion]]:
        if not params.greedy:
            raise ValueError(
                "staged measurements need greedy decoding (see rrtool.evaluators.staged)"
            )
        keys = [json.dumps([p, chat, params.max_new_tokens, list(params.stop)]) for p in prompts]
        todo = list(dict.fromkeys(k for k in keys if k not in self._answers))
        if todo:
            index = {k: i for i, k in enumerate(keys)}
            guess = {} if drafts is None else {"drafts": [drafts[index[k]] for k in todo]}
            out = self.inner.generate(
                [prompts[index[k]] for k in todo], params, chat=chat, progress=progress, **guess
            )
            self._answers.update(zip(todo, out, strict=True))
            self.generated += len(todo)
        return [self._answers[k] for k in keys]

    def __getattr__(self, name: str) -> Any:  # soft prompts, features: the inner generator's
        return getattr(self.inner, name)

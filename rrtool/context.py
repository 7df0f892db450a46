"""What a phase is handed: the spec, the tracking run, and lazily built heavy objects.

Phases read their inputs from the run and write their outputs to it (the run is
the single source of truth); this object only saves them from loading the model,
the generator or the oracle twice within one process.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from rrtool.generation.answer_cache import CacheCounts
from rrtool.spec import Spec
from rrtool.spec_loader import LoadedSpec
from rrtool.tracking import Tracker

if TYPE_CHECKING:
    from rrtool.generation.base import Generator
    from rrtool.models import LoadedModel
    from rrtool.oracles.contract import Oracle


# Where a run keeps its partial files (relative to the working directory), one folder per run.
SCRATCH = Path(".rrtool") / "runs"


@dataclass
class RunContext:
    loaded: LoadedSpec
    tracker: Tracker
    console: Console
    workdir: Path
    """Local scratch for this run (partial files before upload); safe to delete."""
    model_state: str = "base"
    """What the loaded weights are: ``base``, ``released`` (the run's final stack applied),
    ``derived`` (a named function of one of those, ``derived_weights``) or ``modified``
    (anything else, e.g. Release interrupted mid-way). Phases that need a given
    state check it rather than assume (the audit measures the base model, then the released)."""
    released_key: str | None = None
    """Content key of the released stack (``answer_cache.stack_key``) while ``model_state`` is
    ``released``, when known: it lets the released model's answers be cached too."""
    answer_counts: CacheCounts = field(default_factory=CacheCounts)
    """Answer-cache hits and misses of this process (phases log their share)."""
    _model: LoadedModel | None = field(default=None, repr=False)
    _answers: tuple[Any, Any, str | None] | None = field(default=None, repr=False)
    _generator: Generator | None = field(default=None, repr=False)
    _oracles: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def spec(self) -> Spec:
        return self.loaded.spec

    def model(self) -> LoadedModel:
        if self._model is None:
            from rrtool.models import load_model

            with self.console.status(f"Loading model {self.spec.model.id} ..."):
                self._model = load_model(self.spec.model)
        return self._model

    def reload_model(self) -> LoadedModel:
        """Drop the loaded model (and the generator over it); load the base weights again."""
        self._model = None
        self._generator = None
        self.model_state = "base"
        self.released_key = None
        import gc

        gc.collect()  # the old weights go before the new ones arrive
        return self.model()

    def modified_weights(self) -> contextlib.AbstractContextManager[None]:
        """A block in which the loaded weights are not a named state (an adapter attached, the
        weights quantized): answers are neither read from nor written to the answer cache."""
        return _weights_as(self, "modified", None)

    def derived_weights(self, tag: str) -> contextlib.AbstractContextManager[None]:
        """A block in which the loaded weights are a deterministic function (named by ``tag``,
        e.g. a quantization scheme) of the named state loaded before it: answers are cached
        under that state's name plus the tag, so the base model quantized the same way reads
        back its answers in every later run of this model. Unnamed when that state is."""
        name = self.weights_state()
        if name is None:
            return _weights_as(self, "modified", None)
        return _weights_as(self, "derived", f"{name}|{tag}")

    def weights_state(self) -> str | None:
        """What the loaded weights are, as a key for cached answers; None when not nameable."""
        if self.model_state == "base":
            return "base"
        return self.released_key if self.model_state in ("released", "derived") else None

    def cached(self, inner: Generator, batch_size: int) -> Generator:
        """``inner`` reading back answers of named weight states (``answer_cache``); ``inner``
        itself when the spec turns the cache off or the model's files cannot be named."""
        if not self.spec.reveal.generation.answer_cache:
            return inner
        from rrtool.generation.answer_cache import (
            AnswerStore,
            CachedGenerator,
            model_key,
            store_path,
        )
        from rrtool.models import cache_dir

        handle = self.model()
        if self._answers is None or self._answers[0] is not handle:
            store = AnswerStore(store_path(self.tracker.store.uri, cache_dir()))
            self._answers = (handle, store, model_key(store, handle))
        _, store, key = self._answers
        if key is None:
            return inner
        return CachedGenerator(
            inner, store, key, handle.tokenizer, batch_size, self.weights_state, self.answer_counts
        )

    def generator(self) -> Generator:
        if self._generator is None:
            from rrtool.generation.factory import generator_for

            self._generator = generator_for(self.spec.reveal.generation, self.model())
        return self._generator

    def oracle(self, name: str | None = None, options: dict[str, Any] | None = None) -> Oracle:
        """The spec's forget oracle by default; any installed oracle by name."""
        from rrtool.oracles.registry import create_oracle

        name = name or self.spec.oracle.name
        if options is None and name == self.spec.oracle.name:
            options = self.spec.oracle.options
        key = f"{name}:{sorted((options or {}).items())!r}"
        if key not in self._oracles:
            self._oracles[key] = create_oracle(name, options or {})
        return self._oracles[key]


@contextmanager
def _weights_as(ctx: Any, state: str, key: str | None) -> Iterator[None]:
    """A block in which ``ctx``'s loaded weights are ``state`` (named ``key``), restored after."""
    saved = ctx.model_state, ctx.released_key
    ctx.model_state, ctx.released_key = state, key
    try:
        yield
    finally:
        ctx.model_state, ctx.released_key = saved

"""The oracle plugin contract.

An oracle tells rrtool how much of the target behaviour a completion shows:
Reveal uses it to score generations, Release to pick merge weights, Audit to
measure forgetting. Third parties implement it in their own distribution and
register a factory under the ``rrtool.oracles`` entry-point group; the built-in
oracles (``plugins/rrtool_oracles``) register the same way.

Forward compatibility: every method takes keyword-only arguments and must
accept (and ignore) ``**kwargs`` it does not know, so rrtool can pass new
context later without breaking old plugins.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

ENTRY_POINT_GROUP = "rrtool.oracles"


class OracleError(RuntimeError):
    """An oracle could not score a batch (service down, key rejected, retries exhausted).

    Raise this instead of returning a made-up score: rrtool records the failure and keeps
    what was already computed. Messages must never contain secrets.
    """


@dataclass(frozen=True)
class Sample:
    """One generation to score; the JSON-lines format shared by all oracles:
    ``{"id": ..., "prompt": "...", "completion": "...", "reference": {...}}``."""

    id: str
    prompt: str
    completion: str
    reference: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Score:
    """Per-sample verdict: ``score`` in [0, 1], higher = more of the target."""

    score: float
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Requirements:
    """What an oracle needs, so the planner can check it before any compute."""

    reference: bool = False
    """Samples must carry a ``reference`` (gold entities, tests, ...)."""
    network: bool = False
    """The oracle calls a remote service."""
    api_key_env: str | None = None
    """Name of the environment variable holding the API key, if one is needed."""
    target_kinds: tuple[str, ...] = ()
    """The ``target.kind`` values whose samples it can score as the forget oracle (NER answers,
    code, continuations); empty = any. ``rrtool plan`` refuses a mismatch (a ``custom`` target
    takes any oracle: its data is the user's)."""


@runtime_checkable
class Oracle(Protocol):
    """What an entry point's factory must return.

    The factory itself is called with the spec's ``oracle.options`` as keyword
    arguments and should raise ``TypeError``/``ValueError`` on options it
    rejects; rrtool turns those into a user-facing error.

    Optionally the factory declares its options as a pydantic model in a class
    attribute ``Options``: rrtool then validates the spec's options with it
    (types, ranges, defaults), reports each rejected option at its key and
    line, lists the model's fields as the accepted options and its JSON schema
    in ``rrtool oracles list --json``, and calls the factory with every option
    the model holds (defaults filled in).
    """

    name: str
    description: str
    requires: Requirements

    def score(self, samples: Sequence[Sample], **kwargs: Any) -> list[Score]:
        """Score a batch; returns one ``Score`` per sample, in order."""
        ...

    def aggregate(
        self, samples: Sequence[Sample], scores: Sequence[Score], **kwargs: Any
    ) -> dict[str, float]:
        """Summarise a scored batch into named metrics (e.g. ``person/f1``)."""
        ...

"""Oracle discovery through the ``rrtool.oracles`` entry-point group.

Nothing is registered at import time: callers ask for what is installed when
they need it. Listing names never imports a plugin; creating one imports only
that plugin. A plugin that fails to import is reported as a warning and the
others keep working. ``RRTOOL_LOAD_PLUGINS`` (comma-separated names) restricts
which plugins load, for reproducible runs.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from rrtool.errors import UserError, closest
from rrtool.oracles.contract import ENTRY_POINT_GROUP, Oracle

ALLOW_ENV = "RRTOOL_LOAD_PLUGINS"


class PluginWarning(UserWarning):
    """A plugin could not be loaded; the others still work."""


@dataclass(frozen=True)
class OracleInfo:
    name: str
    distribution: str
    target: str  # "module:attr" the entry point names
    description: str = ""
    error: str | None = None
    requires: dict[str, Any] | None = None  # the factory's Requirements, as plain data
    options: list[str] | None = None  # keyword options it accepts (None: any)
    # The options' JSON schema (types, defaults, descriptions) where the factory declares an
    # ``Options`` model; None otherwise.
    options_schema: dict[str, Any] | None = None


class OracleOptionsError(UserError):
    """Options an oracle's ``Options`` model rejected: one message per problem, and the
    option each is about (``option_keys``, parallel to ``messages``; None: the whole set)."""

    def __init__(self, name: str, problems: list[tuple[str | None, str]]) -> None:
        super().__init__(
            *(
                f"oracle `{name}` option `{key}`: {text}" if key else f"oracle `{name}`: {text}"
                for key, text in problems
            )
        )
        self.option_keys = [key for key, _ in problems]


def _allowed() -> set[str] | None:
    raw = os.environ.get(ALLOW_ENV)
    if raw is None:
        return None
    return {name.strip() for name in raw.split(",") if name.strip()}


def entry_points() -> dict[str, metadata.EntryPoint]:
    """Installed oracle entry points by name (no plugin is imported)."""
    allowed = _allowed()
    found: dict[str, metadata.EntryPoint] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if allowed is not None and ep.name not in allowed:
            continue
        found.setdefault(ep.name, ep)  # first wins, as pip's install order does
    return dict(sorted(found.items()))


def _distribution(ep: metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return f"{dist.name} {dist.version}" if dist is not None else "?"


def unknown_oracle_message(name: str, also: tuple[str, ...] = ()) -> str:
    """``also``: other names valid where this one was given (built-in utility evaluators)."""
    known = [*also, *entry_points()]
    hint = _did_you_mean(name, known)
    return (
        f"no oracle plugin named `{name}` is installed{hint} (installed: "
        f"{', '.join(entry_points()) or 'none'}"
        + (f"; built-in: {', '.join(also)})" if also else ")")
    )


def load_factory(name: str) -> Any:
    eps = entry_points()
    if name not in eps:
        raise UserError(unknown_oracle_message(name))
    try:
        return eps[name].load()
    except Exception as exc:  # a broken plugin must not take rrtool down
        raise UserError(
            f"oracle plugin `{name}` ({eps[name].value}) failed to import: "
            f"{type(exc).__name__}: {exc}"
        ) from None


def create_oracle(name: str, options: Mapping[str, Any] | None = None) -> Oracle:
    """Instantiate an oracle with the spec's options; bad options become a UserError."""
    factory = load_factory(name)
    accepted = accepted_options(factory)
    unknown = sorted(set(options or {}) - set(accepted)) if accepted is not None else []
    if unknown:
        hint = _did_you_mean(unknown[0], accepted or [])
        raise UserError(
            f"oracle `{name}` has no option {', '.join(f'`{u}`' for u in unknown)}{hint} "
            f"(accepted: {', '.join(accepted or []) or 'none'})"
        )
    given = dict(options or {})
    model = options_model(factory)
    if model is not None:
        given = _validated(name, model, given)
    try:
        oracle = factory(**given)
    except (TypeError, ValueError) as exc:
        raise UserError(f"oracle `{name}` rejected its options: {exc}") from None
    missing = [attr for attr in ("score", "aggregate", "requires") if not hasattr(oracle, attr)]
    if missing:
        raise UserError(
            f"oracle plugin `{name}` does not implement the contract "
            f"(missing: {', '.join(missing)})"
        )
    return oracle


def options_model(factory: Any) -> Any:
    """The factory's ``Options`` (a pydantic model of its options), or None: a plugin that
    declares one gets its options typed, checked and defaulted by rrtool, with errors at the
    option's key, and their schema in ``rrtool oracles list --json``."""
    from pydantic import BaseModel

    model = getattr(factory, "Options", None)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _validated(name: str, model: Any, given: dict[str, Any]) -> dict[str, Any]:
    """``given`` checked by the plugin's ``Options``: every option with its value or default."""
    from pydantic import ValidationError

    try:
        return dict(model.model_validate(given))
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False):
            loc = [str(part) for part in error["loc"]]
            text = error["msg"]
            if loc and "input" in error and not isinstance(error["input"], dict):
                text += f" (got {error['input']!r})"
            problems.append((".".join(loc) or None, text))
        raise OracleOptionsError(name, problems) from None


def accepted_options(factory: Any) -> list[str] | None:
    """The keyword options a factory takes: its ``Options`` model's fields, else its
    signature's; None when it takes any (``**kwargs``) or has no readable signature."""
    model = options_model(factory)
    if model is not None:
        return list(model.model_fields)
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in params if p.kind in kinds and p.name != "self"]


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = closest(word, choices)
    return f" (did you mean `{close}`?)" if close else ""


def list_oracles() -> list[OracleInfo]:
    """Every installed oracle with its description; import failures become warnings."""
    infos = []
    for name, ep in entry_points().items():
        try:
            factory = ep.load()
            description = getattr(factory, "description", "") or (factory.__doc__ or "")
            requires = getattr(factory, "requires", None)
            infos.append(
                OracleInfo(
                    name,
                    _distribution(ep),
                    ep.value,
                    description.strip().split("\n")[0],
                    requires=dataclasses.asdict(requires)
                    if dataclasses.is_dataclass(requires)
                    else None,
                    options=accepted_options(factory),
                    options_schema=(
                        model.model_json_schema()
                        if (model := options_model(factory)) is not None
                        else None
                    ),
                )
            )
        except Exception as exc:
            message = (
                f"oracle plugin `{name}` ({ep.value}) failed to import: {type(exc).__name__}: {exc}"
            )
            warnings.warn(message, PluginWarning, stacklevel=2)
            infos.append(OracleInfo(name, _distribution(ep), ep.value, error=message))
    return infos

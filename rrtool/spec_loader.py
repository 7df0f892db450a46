"""Load a YAML spec, apply ``--set`` overrides, validate once, explain mistakes.

Every problem becomes one line ``FILE:LINE: key.path: what is wrong (what was
expected)``. Line numbers come from the YAML node tree, so they point at the
key the user wrote; keys a ``--set`` override introduced point at that flag.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from rrtool.errors import SpecError, closest
from rrtool.spec import FieldError, Spec

KeyPath = tuple[str | int, ...]


@dataclass
class _Source:
    """Where each key of the raw document came from."""

    file: str
    lines: dict[KeyPath, int] = field(default_factory=dict)
    overrides: dict[KeyPath, str] = field(default_factory=dict)

    def where(self, path: KeyPath) -> str:
        for end in range(len(path), -1, -1):
            prefix = path[:end]
            if prefix in self.overrides:
                return f"{self.file} (--set {self.overrides[prefix]})"
            if prefix in self.lines:
                return f"{self.file}:{self.lines[prefix]}"
        return f"{self.file}:1"


def dotted(path: KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


# ------------------------------------------------------------------- YAML → data
def _read_text(path: Path) -> str:
    if path.is_dir():
        raise SpecError(f"{path}: is a directory (expected a YAML spec file)")
    if not path.exists():
        raise SpecError(f"{path}: no such file (expected a YAML spec file)")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not UTF-8 text ({exc.reason}; expected a YAML file)") from None
    except OSError as exc:
        raise SpecError(f"{path}: cannot read ({exc.strerror})") from None


class SpecYamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader (no object construction) that also reads ``1e-3`` as a number.
    PyYAML follows YAML 1.1, whose floats need a dot (``1.0e-3``), so ``learning_rate: 1e-3``
    arrived as the string "1e-3" and failed validation as "expected a number"; YAML 1.2 and
    every other tool a user writes numbers for read it as 0.001."""


SpecYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_yaml(text: str) -> Any:
    """``text`` parsed as a spec's YAML is (``SpecYamlLoader``)."""
    return yaml.load(text, Loader=SpecYamlLoader)  # noqa: S506 - a SafeLoader subclass


def _walk(node: yaml.Node, path: KeyPath, source: _Source, errors: list[str]) -> None:
    """Record the line of every key and flag duplicate keys (PyYAML keeps the last silently)."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value
            line = key_node.start_mark.line + 1
            if key in seen:
                errors.append(
                    f"{source.file}:{line}: {dotted((*path, key))}: duplicate key "
                    f"(first given on line {seen[key]}; expected each key once)"
                )
            seen[key] = line
            source.lines[(*path, key)] = line
            _walk(value_node, (*path, key), source, errors)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            source.lines[(*path, index)] = item.start_mark.line + 1
            _walk(item, (*path, index), source, errors)


def _parse_yaml(text: str, source: _Source) -> dict[str, Any]:
    try:
        # A SafeLoader subclass: no arbitrary object construction.
        root = yaml.compose(text, Loader=SpecYamlLoader)
        data = load_yaml(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        problem = exc.problem or exc.context or "invalid YAML"
        raise SpecError(
            f"{source.file}:{line}: YAML syntax error: {problem} (expected valid YAML)"
        ) from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{source.file}:1: YAML error: {exc} (expected valid YAML)") from None
    if root is None or data is None:
        raise SpecError(
            f"{source.file}:1: the spec is empty (expected a mapping with at least "
            "name, model, target, oracle, reveal, retain)"
        )
    if not isinstance(data, dict):
        raise SpecError(
            f"{source.file}:1: top level is a {type(data).__name__} "
            "(expected a mapping of sections: name, model, target, ...)"
        )
    errors: list[str] = []
    _walk(root, (), source, errors)
    if errors:
        raise SpecError(*errors)
    return data


# -------------------------------------------------------------------- schema walk
def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation may hold (through Optional/Union/list)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, typing.Annotated):
        found: list[type[BaseModel]] = []
        for arg in typing.get_args(annotation):
            found.extend(_models_in(arg))
        return found
    return []


def _is_open_mapping(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_is_open_mapping(a) for a in typing.get_args(annotation))
    return origin is dict or annotation is dict


def _model_at(path: Sequence[str | int]) -> type[BaseModel] | None:
    """The model class whose fields are valid at ``path`` (None past an open dict)."""
    model: type[BaseModel] | None = Spec
    for part in path:
        if model is None or isinstance(part, int) or part not in model.model_fields:
            return None
        candidates = _models_in(model.model_fields[part].annotation)
        model = candidates[0] if candidates else None
    return model


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = closest(word, choices)
    if close:
        return f"did you mean `{close}`?"
    return "expected one of: " + ", ".join(choices)


# --------------------------------------------------------------------- overrides
def _check_override_path(parts: list[str], assignment: str) -> None:
    model: type[BaseModel] | None = Spec
    for depth, part in enumerate(parts):
        if model is None:
            return  # inside an open mapping such as oracle.options: any key is allowed
        fields = model.model_fields
        if part not in fields:
            where = ".".join(parts[:depth]) or "the spec"
            raise SpecError(
                f"--set {assignment}: `{part}` is not a key of {where} "
                f"({_suggest(part, list(fields))})"
            )
        annotation = fields[part].annotation
        candidates = _models_in(annotation)
        if candidates:
            model = candidates[0]
        elif _is_open_mapping(annotation):
            model = None
        elif depth != len(parts) - 1:
            raise SpecError(
                f"--set {assignment}: `{'.'.join(parts[: depth + 1])}` is a value, "
                "not a section (expected a path ending there)"
            )


def apply_override(data: dict[str, Any], assignment: str, source: _Source) -> None:
    """Apply ``a.b.c=value``; the value is parsed as YAML so it is typed like the field."""
    if "=" not in assignment:
        raise SpecError(f"--set {assignment}: expected KEY.PATH=VALUE (e.g. release.iterations=5)")
    key, raw = assignment.split("=", 1)
    parts = [p for p in key.strip().split(".")]
    if not key.strip() or any(not p for p in parts):
        raise SpecError(f"--set {assignment}: empty key path (expected e.g. release.iterations=5)")
    _check_override_path(parts, assignment)
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw  # not YAML: keep the literal text and let validation judge it
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value
    source.overrides[tuple(parts)] = assignment


# -------------------------------------------------------------------- validation
def _key_path(data: Any, base: KeyPath, key: tuple[str, ...]) -> KeyPath:
    """``base`` + ``key`` as far as the document has it (a key left at its default is named,
    its line being the nearest written one's)."""
    node: Any = data
    for part in base:  # (the last part of ``base`` may name a key the document leaves out)
        node = node.get(part) if isinstance(node, dict) else None
    path = list(base)
    for i, part in enumerate(key):
        if isinstance(node, dict) and part in node:
            node = node[part]
            path.append(part)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]  # an item of a list (``phrasings.held_out.2``)
            path.append(int(part))
        else:
            path.extend(key[i:])
            break
    return tuple(path)


def _data_path(data: Any, loc: tuple[Any, ...]) -> KeyPath:
    """Map pydantic's ``loc`` onto keys of the document, dropping union tags."""
    path: list[str | int] = []
    node = data
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(node, dict) and isinstance(part, str):
            if part in node:
                path.append(part)
                node = node[part]
            elif last:
                path.append(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            path.append(part)
            node = node[part]
    return tuple(path)


_EXPECTED_TYPES = {
    "int_parsing": "an integer",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_parsing": "a number",
    "float_type": "a number",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}

_BOUNDS = {
    "greater_than": ">",
    "greater_than_equal": ">=",
    "less_than": "<",
    "less_than_equal": "<=",
}


def _describe(err: dict[str, Any], path: KeyPath) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    got = err.get("input")
    if kind == "extra_forbidden":
        model = _model_at(path[:-1])
        allowed = list(model.model_fields) if model else []
        return f"unknown key ({_suggest(str(path[-1]), allowed)})" if allowed else "unknown key"
    if kind == "missing":
        model = _model_at(path[:-1])
        info = model.model_fields.get(str(path[-1])) if model else None
        doc = (info.description or "").split(";")[0].rstrip(".") if info else ""
        return f"missing required key (expected: {doc})" if doc else "missing required key"
    if kind == "literal_error":
        expected = ctx.get("expected", "")
        choices = [c.strip().strip("'") for c in expected.replace(" or ", ",").split(",") if c]
        hint = _suggest(str(got), choices) if isinstance(got, str) else ""
        tail = f"; {hint}" if hint.startswith("did") else ""
        return f"got {got!r} (expected one of: {', '.join(choices)}{tail})"
    if kind in _EXPECTED_TYPES:
        return f"got {got!r} (expected {_EXPECTED_TYPES[kind]})"
    if kind in _BOUNDS:
        bound = next(iter(ctx.values()), "?")
        return f"got {got!r} (expected a number {_BOUNDS[kind]} {bound})"
    if kind == "string_pattern_mismatch":
        return f"got {got!r} (expected text matching {ctx.get('pattern')})"
    if kind in ("string_too_short", "too_short"):
        return f"got {got!r} (expected a non-empty value)"
    if kind == "value_error":
        return str(err["msg"]).removeprefix("Value error, ")
    return f"{err['msg']} (got {got!r})"


def validate(data: dict[str, Any], source: _Source, base_dir: Path) -> Spec:
    try:
        return Spec.model_validate(data, context={"base_dir": str(base_dir)})
    except ValidationError as exc:
        messages = []
        for err in exc.errors():
            cause = (err.get("ctx") or {}).get("error")
            # A cross-field check names its key: point there, not at the section.
            path = _data_path(data, tuple(err["loc"]))
            if isinstance(cause, FieldError):
                path = _key_path(data, path, cause.key)
            messages.append(f"{source.where(path)}: {dotted(path)}: {_describe(err, path)}")
        # Several union branches can report the same spot; keep each message once.
        raise SpecError(*dict.fromkeys(messages)) from None


@dataclass(frozen=True)
class LoadedSpec:
    """A validated spec plus where each of its keys was written (for later errors)."""

    spec: Spec
    source: _Source
    raw: dict[str, Any]

    def locate(self, *keys: str | int) -> str:
        """``FILE:LINE: key.path`` for a key, for errors found after validation."""
        return f"{self.source.where(keys)}: {dotted(keys)}"


def load_spec(path: str | Path, overrides: Sequence[str] = ()) -> LoadedSpec:
    """Read, override and validate a spec. Raises ``SpecError`` with user-facing lines."""
    spec_path = Path(path)
    source = _Source(file=str(path))
    data = _parse_yaml(_read_text(spec_path), source)
    for assignment in overrides:
        apply_override(data, assignment, source)
    return LoadedSpec(validate(data, source, spec_path.resolve().parent), source, data)

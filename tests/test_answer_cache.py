"""The answer cache: answers of a named weight state are computed once and read back."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from rrtool.generation.answer_cache import (
    AnswerStore,
    CacheCounts,
    CachedGenerator,
    model_key,
    stack_key,
    store_path,
)
from rrtool.generation.base import SamplingParams
from rrtool.generation.hf import HFGenerator
from rrtool.models import LoadedModel, load_model
from rrtool.spec import ModelSpec
from tests.conftest import only_run, tiny_spec

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = ["Ada Lovelace", "The river", "x", "Ada Lovelace"]
GREEDY = SamplingParams(max_new_tokens=6, temperature=0.0)


@pytest.fixture(scope="module")
def handle(model_cache: Path) -> Iterator[LoadedModel]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RRTOOL_CACHE_DIR", str(model_cache))
        yield load_model(ModelSpec(id="builtin:tiny-random", device="cpu", dtype="float32"))


class Counting(HFGenerator):
    """The real backend, counting the prompts it is asked to answer."""

    asked = 0

    def generate(self, prompts, params, **options):  # type: ignore[no-untyped-def,override]
        self.asked += len(prompts)
        return super().generate(prompts, params, **options)


def _cached(handle: LoadedModel, store: AnswerStore, state: list[str | None]) -> CachedGenerator:
    inner = Counting(handle.model, handle.tokenizer, batch_size=4)
    key = model_key(store, handle)
    assert key is not None
    return CachedGenerator(inner, store, key, handle.tokenizer, 4, lambda: state[0], CacheCounts())


def test_greedy_answers_are_read_back_per_prompt(handle: LoadedModel, tmp_path: Path) -> None:
    store = AnswerStore(tmp_path / "answers.sqlite")
    state: list[str | None] = ["base"]
    cached = _cached(handle, store, state)
    reference = HFGenerator(handle.model, handle.tokenizer).generate(PROMPTS, GREEDY)
    assert cached.generate(PROMPTS, GREEDY) == reference
    assert (cached.counts.hits, cached.counts.misses) == (0, 4)
    # A new generator over the same file (another run): nothing is computed again.
    again = _cached(handle, AnswerStore(tmp_path / "answers.sqlite"), state)
    assert again.generate(PROMPTS, GREEDY) == reference and again.inner.asked == 0
    assert again.counts.hits == 4
    # A prompt subset in another order is read back prompt by prompt; a new prompt computed.
    assert again.generate(["x", "new prompt"], GREEDY)[0] == reference[2]
    assert again.inner.asked == 1
    seen: list[int] = []
    again.generate(PROMPTS, GREEDY, progress=seen.append)
    assert sum(seen) == len(PROMPTS)


@pytest.mark.parametrize(
    "change",
    ["state", "max_new_tokens", "stop", "chat", "unnamed state"],
)
def test_anything_that_changes_the_answer_misses(
    handle: LoadedModel, tmp_path: Path, change: str
) -> None:
    store = AnswerStore(tmp_path / "answers.sqlite")
    state: list[str | None] = ["base"]
    cached = _cached(handle, store, state)
    cached.generate(PROMPTS, GREEDY, chat=False)
    asked = cached.inner.asked
    params, chat = GREEDY, False
    if change == "state":
        state[0] = "stack:abc"
    elif change == "unnamed state":
        state[0] = None
    elif change == "max_new_tokens":
        params = dataclasses.replace(GREEDY, max_new_tokens=7)
    elif change == "stop":
        params = dataclasses.replace(GREEDY, stop=("a",))
    else:
        chat = True
    cached.generate(PROMPTS, params, chat=chat)
    assert cached.inner.asked == asked + len(PROMPTS)


def test_seeded_samples_are_reused_only_for_the_same_call(
    handle: LoadedModel, tmp_path: Path
) -> None:
    store = AnswerStore(tmp_path / "answers.sqlite")
    cached = _cached(handle, store, ["base"])
    sampled = SamplingParams(max_new_tokens=6, temperature=1.0, num_samples=2, seed=3)
    first = cached.generate(PROMPTS, sampled)
    assert cached.generate(PROMPTS, sampled) == first and cached.inner.asked == 4
    # A seeded completion depends on its position in the call: another call is computed.
    cached.generate(PROMPTS[1:], sampled)
    assert cached.inner.asked == 7
    unseeded = dataclasses.replace(sampled, seed=None)
    cached.generate(PROMPTS, unseeded)
    cached.generate(PROMPTS, unseeded)
    assert cached.inner.asked == 15


def test_model_key_follows_the_checkpoint_files(handle: LoadedModel, tmp_path: Path) -> None:
    assert handle.checkpoint is not None
    copy = tmp_path / "ckpt"
    shutil.copytree(handle.checkpoint, copy)
    store = AnswerStore(tmp_path / "answers.sqlite")
    moved = dataclasses.replace(handle, checkpoint=copy)
    # Same content elsewhere: same key (content, not path, names the model).
    assert model_key(store, moved) == model_key(store, handle)
    config = copy / "config.json"
    config.write_text(config.read_text() + "\n")  # any change of content
    assert model_key(store, moved) != model_key(store, handle)
    assert model_key(store, dataclasses.replace(handle, checkpoint=None)) is None


def test_stack_key_and_store_location(tmp_path: Path) -> None:
    import torch

    from rrtool.release.lora import LoraModule

    def module(value: float) -> LoraModule:
        a, b = torch.full((2, 3), value), torch.ones(4, 2)
        return LoraModule({"w": a}, {"w": b}, 2, 4.0, "all-linear", "forget")

    assert stack_key([(module(1.0), -0.5)]) == stack_key([(module(1.0), -0.5)])
    assert stack_key([(module(1.0), -0.5)]) != stack_key([(module(1.0), -0.25)])
    assert stack_key([(module(1.0), -0.5)]) != stack_key([(module(2.0), -0.5)])
    db = tmp_path / "mlflow.db"
    assert store_path(f"sqlite:///{db}", tmp_path / "c") == tmp_path / "answers.sqlite"
    assert store_path("http://127.0.0.1:5000", tmp_path / "c") == tmp_path / "c/answers.sqlite"


FAST = (
    *("--set", "reveal.contexts.limit=25", "--set", "reveal.generation.max_new_tokens=4"),
    *("--set", "release.search.budget=2", "--set", "release.search.eval_size=2"),
    *(
        "--set",
        "release.lora.epochs=1",
        "--set",
        "audit.eval_size=2",
        "--set",
        "release.iterations=1",
    ),
)


def test_a_repeated_run_reads_the_base_answers_back(invoke, write_spec, tmp_path: Path) -> None:
    spec_path = write_spec(tiny_spec())
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert invoke("run", spec_path, *FAST).exit_code == 0
    assert (tmp_path / "answers.sqlite").exists()
    _, first = only_run(uri)
    metrics = first.data.metrics
    assert metrics["phase/release/answer_cache_hits"] == 0
    assert metrics["phase/release/answer_cache_misses"] > 0  # the base model's answers
    # Audit measures the base and the released model on its own split: all new answers.
    assert metrics["phase/audit/answer_cache_hits"] == 0
    assert invoke("run", spec_path, *FAST).exit_code == 0
    runs = MlflowClient(uri).search_runs(
        [first.info.experiment_id], order_by=["attributes.start_time DESC"]
    )
    second = runs[0].data.metrics
    assert runs[0].info.run_id != first.info.run_id
    assert second["phase/release/answer_cache_hits"] == metrics["phase/release/answer_cache_misses"]
    assert second["phase/release/answer_cache_misses"] == 0
    assert second["phase/audit/answer_cache_hits"] > 0  # at least the base model's
    for key in ("release/forget", "release/utility"):
        assert second[key] == metrics[key]
    off = invoke("run", spec_path, *FAST, "--set", "reveal.generation.answer_cache=false")
    assert off.exit_code == 0
    third = (
        MlflowClient(uri)
        .search_runs([first.info.experiment_id], order_by=["attributes.start_time DESC"])[0]
        .data.metrics
    )
    assert (
        third["phase/release/answer_cache_hits"] == third["phase/release/answer_cache_misses"] == 0
    )

"""Shared fixtures: a scratch working directory, a private model cache, spec writers."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from rrtool.cli import cli

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache per test session (converted checkpoints are reused across tests),
    unless the developer points RRTOOL_CACHE_DIR at a persistent one."""
    existing = os.environ.get("RRTOOL_CACHE_DIR")
    return Path(existing) if existing else tmp_path_factory.mktemp("rrtool-cache")


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, model_cache: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RRTOOL_CACHE_DIR", str(model_cache))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RRTOOL_LOAD_PLUGINS", raising=False)


# Overrides that make a run of ``tiny_spec`` take seconds: 10 NER records, 4 new tokens, one
# iteration, 2 candidate weights on 2 passages, one epoch, a 2-passage audit.
FAST_SETS = (
    "reveal.contexts.limit=25",
    "reveal.generation.max_new_tokens=4",
    "release.iterations=1",
    "release.search.budget=2",
    "release.search.eval_size=2",
    "release.lora.epochs=1",
    "audit.eval_size=2",
)


def set_flags(*overrides: str) -> list[str]:
    """``--set KEY=VALUE`` arguments for the CLI, one pair per override."""
    return [arg for override in overrides for arg in ("--set", override)]


def tiny_spec(**sections: Any) -> dict[str, Any]:
    """A small valid spec (tiny random model, built-in NER passages); sections override."""
    spec: dict[str, Any] = {
        "name": "tiny",
        "model": {"id": "builtin:tiny-random"},
        "target": {
            "kind": "ner",
            "description": "Recognising Person entities",
            "forget_types": ["person"],
            "retain_types": ["location"],
        },
        "oracle": {"name": "ner_f1"},
        "reveal": {
            "strategy": "direct",
            "contexts": {"path": "builtin:ner_passages", "format": "universalner"},
        },
        "retain": {"self_generated": True},
    }
    spec.update(sections)
    return spec


def only_run(store: Path | str) -> tuple[Any, Any]:
    """(client, run) of the one run in the ``rrtool`` experiment of a store: a directory
    holding the embedded ``mlflow.db``, or a tracking URI."""
    from mlflow.tracking import MlflowClient

    uri = store if isinstance(store, str) else f"sqlite:///{store / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("rrtool")
    assert experiment is not None, f"no rrtool experiment in {uri}"
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1, f"expected one run in {uri}, found {len(runs)}"
    return client, runs[0]


def read_artifact(client: Any, run_id: str, path: str, tmp: Path) -> str:
    """A run artifact's text, downloaded under ``tmp``."""
    return Path(client.download_artifacts(run_id, path, str(tmp))).read_text()


def read_jsonl(client: Any, run_id: str, path: str, tmp: Path) -> list[dict[str, Any]]:
    """A JSON-lines run artifact, one record per line."""
    return [json.loads(line) for line in read_artifact(client, run_id, path, tmp).splitlines()]


def plugin_site(root: Path, oracle: str, module: str, source: str) -> Path:
    """A directory that, on ``PYTHONPATH``, makes ``module`` an installed distribution
    registering ``oracle`` in the ``rrtool.oracles`` entry-point group (a real dist-info,
    found by importlib.metadata like any pip install). Returns the directory."""
    site = root / "site"
    dist = site / f"{module}-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[rrtool.oracles]\n{oracle} = {module}:Oracle\n")
    (site / f"{module}.py").write_text(source)
    return site


@pytest.fixture
def write_spec(tmp_path: Path) -> Callable[..., Path]:
    def write(content: dict[str, Any] | str, name: str = "spec.yaml") -> Path:
        path = tmp_path / name
        text = content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
        path.write_text(text)
        return path

    return write


@pytest.fixture
def invoke() -> Callable[..., Result]:
    def run(*args: str, env: dict[str, str] | None = None) -> Result:
        return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False, env=env)

    return run


@pytest.fixture
def one_torch_thread(request: pytest.FixtureRequest) -> Iterator[None]:
    """One intra-op torch thread for tests of tiny models and matrices (opt in with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``).

    They gain nothing from more threads, and on a busy 2-core machine threads waiting for each
    other made them 8-30x slower. Slow tests on the real model keep the default.
    """
    if request.node.get_closest_marker("slow"):
        yield
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


LORA_NAMES = ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj"]


def random_lora(seed: int, kind: str, out: int = 12, fan_in: int = 20, r: int = 3) -> Any:
    """A seeded random LoRA module on two named layers, with a scale other than 1 (so a
    forgotten scale shows)."""
    import torch

    from rrtool.release.lora import LoraModule

    gen = torch.Generator().manual_seed(seed)
    return LoraModule(
        A={n: torch.randn(r, fan_in, generator=gen) for n in LORA_NAMES},
        B={n: torch.randn(out, r, generator=gen) for n in LORA_NAMES},
        r=r,
        alpha=2.0 * r + 1,
        target_modules="all-linear",
        kind=kind,
    )


def assert_close_to_scale(
    actual: Any,
    expected: Any,
    accumulations: int,
    dtype: Any = None,
    what: str = "",
) -> None:
    """Assert two floating-point results agree up to rounding: ``max |actual - expected|``
    at most ``accumulations * eps * max |expected|``.

    For results of two computation orders of the same maths (micro-batches against one batch,
    a batch against single rows, merged against unmerged weights): their rounding differs by
    up to about eps per accumulated term, relative to the size of the values summed, so the
    bound scales with the tensor's largest value and with the number of terms summed along the
    longest chain (``accumulations``: tokens in a step, a matmul's inner dimension, ...), not
    element by element, which would ask near-zero entries for a precision that their inputs
    never had. ``eps`` is float32's (the precision rrtool computes in, whatever the dtype the
    results are compared in), or ``dtype``'s when given, or that of a less precise tensor
    (bf16). A real behaviour change moves results by far more than this: a 0.1% change is
    ~8000 float32 eps.
    """
    import torch

    def as_tensor(x: Any) -> torch.Tensor:
        return x.detach().cpu() if isinstance(x, torch.Tensor) else torch.tensor(x).double()

    actual_t, expected_t = as_tensor(actual), as_tensor(expected)
    label = f"{what}: " if what else ""
    assert actual_t.shape == expected_t.shape, (
        f"{label}shape {actual_t.shape} != {expected_t.shape}"
    )
    if dtype is None:
        dtype = max(
            (torch.float32, actual_t.dtype, expected_t.dtype),
            key=lambda d: torch.finfo(d).eps if d.is_floating_point else 0.0,
        )
    eps = torch.finfo(dtype).eps
    error_t = (actual_t.double() - expected_t.double()).abs()
    error = float(error_t.max()) if error_t.numel() else 0.0
    scale = float(expected_t.double().abs().max()) if expected_t.numel() else 0.0
    bound = accumulations * eps * scale
    if not error <= bound:  # also fails on NaN
        flat = int(error_t.nan_to_num(math.inf).argmax())
        where = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), error_t.shape))
        in_eps = f"{error / (eps * scale):.1f}" if scale else "inf"
        raise AssertionError(
            f"{label}max |actual - expected| = {error:.3g} at index {where} = {in_eps} eps x "
            f"max |expected| ({scale:.3g}), over the rounding bound {bound:.3g} = "
            f"{accumulations} accumulations x {dtype} eps {eps:.3g} x {scale:.3g}"
        )

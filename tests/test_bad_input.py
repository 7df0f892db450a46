"""Bad input and injected faults in Reveal and Release: a clear message (exit code 2, no
traceback) or a recorded failure, and nothing already computed lost."""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from rrtool.errors import TrainingDiverged, UserError
from tests.conftest import FAST_SETS, only_run, plugin_site, read_jsonl, set_flags, tiny_spec

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = tuple(set_flags(*FAST_SETS))


# ------------------------------------------------------------------------- reveal
FLAKY = '''
import math
from rrtool.oracles.contract import Requirements, Score

class Oracle:
    """Fails its first batch (service down), then gives NaN for every other sample."""
    name = "flaky"
    description = "test oracle"
    requires = Requirements()

    def __init__(self, **options):
        self.calls = 0

    def score(self, samples, **kwargs):
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("service down")
        return [Score(math.nan if i % 2 else 0.5) for i, _ in enumerate(samples)]

    def aggregate(self, samples, scores, **kwargs):
        return {}
'''


def test_an_oracle_that_raises_or_gives_nan_loses_no_generation(tmp_path: Path) -> None:
    site = plugin_site(tmp_path, "flaky", "flaky_oracle_mod", FLAKY)
    reveal = {
        "strategy": "direct",
        "contexts": {"path": "builtin:ner_passages", "format": "universalner", "limit": 60},
        "generation": {"max_new_tokens": 3, "temperature": 0, "batch_size": 2},  # chunks of 8
    }
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(tiny_spec(oracle={"name": "flaky"}, reveal=reveal)))
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])
    }
    done = subprocess.run(
        [sys.executable, "-m", "rrtool", "run", str(spec), "--phase", "reveal"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "oracle `flaky` failed" in done.stderr and "Traceback" not in done.stderr
    client, run = only_run(tmp_path)
    records = read_jsonl(client, run.info.run_id, "reveal/progress.jsonl", tmp_path / "d")
    # Reveal's split of the 12 passages (5) x (person, location): every generation kept
    assert len(records) == 5 * 2
    first_chunk = [r for r in records if "service down" in (r["relevance_error"] or "")]
    assert len(first_chunk) == 8 and all(r["relevance"] is None for r in first_chunk)
    nan = [r for r in records if "no finite score" in (r["relevance_error"] or "")]
    assert nan and all(r["relevance"] is None for r in nan)
    assert any(r["relevance"] == 0.5 for r in records)
    assert run.data.tags["rrtool.phase.reveal"] == "done"


def test_contexts_with_no_usable_rows(invoke, write_spec, tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text('{"text": ""}\n{"text": "   "}\n' * 5)
    reveal = {"strategy": "direct", "contexts": {"path": "empty.jsonl", "format": "jsonl"}}
    result = invoke("run", write_spec(tiny_spec(reveal=reveal)), "--phase", "reveal")
    assert result.exit_code == 2
    # Caught by the plan, before the model loads (it once surfaced after).
    assert "reveal.contexts: none of the 10 rows gives Reveal a context" in result.stderr
    assert "non-empty `text`" in result.stderr
    # Too few rows to cut into three splits: said before any model work.
    (tmp_path / "two.jsonl").write_text('{"text": "a"}\n{"text": "b"}\n')
    reveal["contexts"] = {"path": "two.jsonl", "format": "jsonl"}
    result = invoke("run", write_spec(tiny_spec(reveal=reveal)), "--phase", "reveal")
    assert result.exit_code == 2 and "the `search` split of" in result.stderr
    assert "Traceback" not in result.stderr


def test_all_empty_generations_are_kept_and_explained(model_cache: Path, tmp_path: Path) -> None:
    from rrtool.artifacts import REVEAL_FORGET as FORGET
    from rrtool.context import RunContext
    from rrtool.reveal.records import finish
    from rrtool.reveal_record import RevealRecord
    from rrtool.spec_loader import load_spec
    from rrtool.tracking import Tracker, resolve_store

    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(tiny_spec()))
    tracker = Tracker.start(resolve_store(None, None), "rrtool", "empty", {"rrtool.spec": "x"})
    ctx = RunContext(load_spec(spec), tracker, Console(file=io.StringIO()), tmp_path / "w")
    records = [RevealRecord(id=str(i), prompt=f"p{i}", completion=" ") for i in range(3)]
    with pytest.raises(UserError, match="all 3 forget generations are empty"):
        finish(ctx, records, 1.0, None)
    assert len(tracker.read_jsonl(FORGET)) == 3  # recorded before the error


def test_a_model_without_chat_template_gets_plain_ner_prompts(model_cache: Path) -> None:
    from rrtool.generation.base import SamplingParams
    from rrtool.generation.factory import make_generator
    from rrtool.models import load_model
    from rrtool.queries import ner_prompt
    from rrtool.spec import ModelSpec

    prompt = ner_prompt("Ada met Bob.", "person", None, chat=False)
    assert isinstance(prompt, str)
    assert prompt.endswith("Text: Ada met Bob.\nWhat describes person in the text?\n")
    assert '["Marie Curie"]' in prompt
    handle = load_model(ModelSpec(id="builtin:tiny-random", device="cpu"))
    handle.tokenizer.chat_template = None
    out = make_generator("hf", handle, batch_size=2).generate(
        [prompt], SamplingParams(max_new_tokens=2, temperature=0.0), chat=True
    )
    assert len(out) == 1 and out[0][0].tokens >= 1
    with pytest.raises(UserError, match="no chat template"):
        make_generator("hf", handle, batch_size=2).generate(
            [ner_prompt("x", "person", None)], SamplingParams(max_new_tokens=2), chat=True
        )


# ------------------------------------------------------------------------ release
def test_target_modules_that_match_nothing(invoke, write_spec, tmp_path: Path) -> None:
    result = invoke(
        "run", write_spec(tiny_spec()), *FAST, "--set", "release.lora.target_modules=[qkv_fused]"
    )
    assert result.exit_code == 2
    assert "release.lora.target_modules: ['qkv_fused'] matches no module" in result.stderr
    assert "q_proj" in result.stderr  # what it could have named
    _, run = only_run(tmp_path)
    assert run.data.tags["rrtool.phase.reveal"] == "done"  # Reveal's work is kept
    assert run.data.tags["rrtool.status"] == "failed"


def test_rank_larger_than_the_layer(invoke, write_spec) -> None:
    result = invoke("run", write_spec(tiny_spec()), *FAST, "--set", "release.lora.r=64")
    assert result.exit_code == 2
    assert "release.lora.r: got 64, larger than layer" in result.stderr
    assert "expected a rank <= 16" in result.stderr


def test_nan_loss_stops_that_module_and_keeps_the_run(
    invoke, write_spec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection: the retain module's loss turns NaN; F0 stays applied and recorded,
    Release stops saying why, the audit still runs."""
    from rrtool.release import lora
    from rrtool.release import phase as release_phase

    real_train = release_phase.train_lora

    def train(*args, **kwargs):
        if kwargs["kind"] == "retain":  # from R1 on, every loss is NaN
            monkeypatch.setattr(lora, "_accumulate", lambda *a, **k: float("nan"))
        return real_train(*args, **kwargs)

    monkeypatch.setattr(release_phase, "train_lora", train)
    result = invoke("run", write_spec(tiny_spec()), *FAST)
    assert result.exit_code == 0, result.stderr
    client, run = only_run(tmp_path)
    steps = read_jsonl(client, run.info.run_id, "release/steps.jsonl", tmp_path / "d")
    assert [s["module"] for s in steps] == ["F0", "R1"]
    assert steps[0]["coefficient"] < 0 and "failed" not in steps[0]
    assert "loss is nan" in steps[1]["failed"]
    assert run.data.tags["rrtool.release.stop_reason"].startswith("R1 not applied: retain module")
    assert run.data.tags["rrtool.status"] == "finished"
    state = json.loads(
        Path(
            client.download_artifacts(run.info.run_id, "release/state.json", str(tmp_path / "s"))
        ).read_text()
    )
    assert [e["module"] for e in state["stack"]] == ["F0"]


def test_train_lora_refuses_a_nan_loss(model_cache: Path) -> None:
    import torch

    from rrtool.models import load_model
    from rrtool.release.lora import Example, train_lora
    from rrtool.spec import LoraSpec, ModelSpec

    handle = load_model(ModelSpec(id="builtin:tiny-random", device="cpu"))
    with torch.no_grad():
        handle.model.model.norm.weight.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="loss is nan at step 1"):
        train_lora(handle.model, handle.tokenizer, [Example("a", "b")], LoraSpec(epochs=1),
                   seed=0, kind="forget", chat=False)  # fmt: skip


def test_a_full_disk_while_saving_a_module(
    invoke, write_spec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection: ENOSPC from the module writer."""
    from rrtool.release.lora import LoraModule

    def full(self, path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(LoraModule, "save", full)
    result = invoke("run", write_spec(tiny_spec()), *FAST)
    assert result.exit_code == 2
    assert "cannot save module F0" in result.stderr and "No space left on device" in result.stderr
    assert "--resume" in result.stderr
    client, run = only_run(tmp_path)
    forget = read_jsonl(client, run.info.run_id, "reveal/forget.jsonl", tmp_path / "d")
    assert forget  # Reveal's data is still in the run

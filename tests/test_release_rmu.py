"""RMU (``release.strategy: rmu``): a LoRA trained on one decoder layer's hidden states, the
forget answers' pushed towards a fixed random direction, the retain answers' kept; on the tiny
random Llama (2 layers, 16 wide), then end to end through Release, audit and export."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from rrtool.errors import UserError
from rrtool.examples import IGNORE_INDEX, collate, encode_example
from rrtool.models import build_tiny_model_for, build_tiny_tokenizer
from rrtool.release.compose import ScaledAdapter
from rrtool.release.lora import (
    Example,
    LoraModule,
    decoder_layers,
    layer_states,
    rmu_layer,
    train_lora,
)
from rrtool.spec import LoraSpec, Spec
from tests.conftest import FAST_SETS, only_run, set_flags, tiny_spec

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FORGET = [Example(f"Who wrote the note number {i}?", "Ada Lovelace wrote it.") for i in range(8)]
RETAIN = [Example(f"Where is the city number {i}?", "Paris is in France.") for i in range(8)]


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, Any]:
    tokenizer = build_tiny_tokenizer()
    # A wider init than the default, as in test_release_lora: states the LoRA can move.
    model = build_tiny_model_for(tokenizer, initializer_range=0.3)
    return model.eval(), tokenizer


@pytest.fixture
def model(tiny: tuple[Any, Any]) -> Any:
    return copy.deepcopy(tiny[0])


@pytest.fixture
def tokenizer(tiny: tuple[Any, Any]) -> Any:
    return tiny[1]


def _cfg(**overrides: Any) -> LoraSpec:
    values: dict[str, Any] = {
        "r": 4,
        "alpha": 8.0,
        "dropout": 0.0,
        "learning_rate": 1e-2,
        "epochs": 8,
        "batch_size": 4,
        "max_length": 64,
    }
    values.update(overrides)
    return LoraSpec(**values)


def _train(model: Any, tokenizer: Any, cfg: LoraSpec | None = None, **options: Any) -> LoraModule:
    return train_lora(model, tokenizer, FORGET, cfg or _cfg(), RETAIN, seed=0, kind="forget",
                      chat=False, objective="rmu", **options)  # fmt: skip


@torch.no_grad()
def _states(model: Any, tokenizer: Any, examples: list[Example], layer: int) -> torch.Tensor:
    """Decoder layer ``layer``'s output at the positions followed by an answer token, from a
    whole forward (a plain hook, nothing stopped), independently of the trainer."""
    captured = []
    _, blocks = decoder_layers(model)
    handle = blocks[layer].register_forward_hook(lambda m, a, out: captured.append(out))
    out = []
    try:
        for example in examples:
            ids, labels = encode_example(tokenizer, example, 64, chat=False)
            model(input_ids=torch.tensor([ids]))
            follows_answer = torch.tensor(labels[1:]) != IGNORE_INDEX
            state = captured.pop()
            state = state[0] if isinstance(state, tuple) else state
            out.append(state[0, :-1][follows_answer])
    finally:
        handle.remove()
    return torch.cat(out).float()


def _target(module: LoraModule, hidden: int) -> torch.Tensor:
    """c u: the unit Gaussian direction of the training seed, times the recorded c."""
    assert module.seed is not None
    direction = torch.randn(hidden, generator=torch.Generator().manual_seed(module.seed))
    return module.info["rmu_coefficient"] * direction / direction.norm()


def _moved(before: torch.Tensor, after: torch.Tensor) -> float:
    """Mean distance moved, relative to each state's norm."""
    return float(((after - before).norm(dim=-1) / before.norm(dim=-1)).mean())


def test_forget_states_go_towards_the_target_and_retain_states_stay(
    model: Any, tokenizer: Any
) -> None:
    module = _train(model, tokenizer)
    layer = module.info["rmu_layer"]
    assert layer == 1  # the middle of 2 decoder layers (num_hidden_layers // 2)
    hidden = model.config.hidden_size
    forget, retain = (
        _states(model, tokenizer, FORGET, layer),
        _states(model, tokenizer, RETAIN, layer),
    )
    with ScaledAdapter(model, module, 1.0):  # added with weight 1, as Release would
        forget_after = _states(model, tokenizer, FORGET, layer)
        retain_after = _states(model, tokenizer, RETAIN, layer)

    # c is relative: steering (default 1) x the base states' mean norm at the forget positions.
    assert module.info["rmu_base_norm"] == pytest.approx(
        float(forget.norm(dim=-1).mean()), rel=1e-4
    )
    assert module.info["rmu_coefficient"] == pytest.approx(module.info["rmu_base_norm"])
    target = _target(module, hidden)
    distance = lambda states: float((states - target).pow(2).sum(-1).mean()) / hidden  # noqa: E731
    assert distance(forget_after) < 0.5 * distance(forget)  # measured: 12.0 -> 1.8
    first, last = module.info["rmu_forget_loss"]  # the forget term of the first and last step
    assert last < 0.7 * first and module.loss_curve[-1] < module.loss_curve[0]
    # The retain states move a small fraction of what the forget states do (measured 13x less;
    # the tiny model's forget and retain prompts are near alike, so nothing but alpha holds
    # them apart: without it they move 9x more, see below).
    assert _moved(retain, retain_after) < _moved(forget, forget_after) / 5
    assert module.info["objective"] == "rmu" and module.info["rmu_alpha"] == 10.0

    free = _train(copy.deepcopy(model), tokenizer, rmu_alpha=0.0)
    with ScaledAdapter(model, free, 1.0):
        retain_free = _states(model, tokenizer, RETAIN, layer)
    assert _moved(retain, retain_free) > 4 * _moved(retain, retain_after)


def test_only_the_layers_up_to_l_are_trained_and_returned(model: Any, tokenizer: Any) -> None:
    """h_0 depends on decoder layer 0 alone: the module holds its LoRA layers only, and the
    model comes back as it was."""
    before = {k: v.clone() for k, v in model.state_dict().items()}
    module = _train(model, tokenizer, _cfg(epochs=1), rmu_layer=0)
    assert module.names and all(n.startswith("model.layers.0.") for n in module.names)
    assert len(module.names) == 7  # every Linear of the layer (all-linear)
    assert all(float(module.B[n].abs().max()) > 0 for n in module.names)
    assert module.info["rmu_layer"] == 0 and module.info["rmu_retain_loss"][0] == 0.0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_layer_states_stop_at_the_layer_and_equal_the_hidden_states(
    model: Any, tokenizer: Any
) -> None:
    _, blocks = decoder_layers(model)
    ran = []
    handle = blocks[1].register_forward_hook(lambda *args: ran.append(1))
    batch = collate(
        [encode_example(tokenizer, e, 64, chat=False) for e in FORGET[:3] + RETAIN[:2]],
        tokenizer.pad_token_id,
    )
    try:
        with torch.no_grad():
            states = layer_states(model, blocks[0], batch, bf16=False)
            assert not ran  # the layer above and the LM head were not run
            whole = model(**{k: batch[k] for k in ("input_ids", "attention_mask")},
                          output_hidden_states=True)  # fmt: skip
    finally:
        handle.remove()
    assert torch.equal(states, whole.hidden_states[1])  # the output of layer 0


def test_a_token_budget_gives_the_same_update(model: Any, tokenizer: Any) -> None:
    """Both terms are means over the step's positions, whatever forwards it is cut into."""
    whole = _train(copy.deepcopy(model), tokenizer, _cfg(epochs=2))
    cut = _train(copy.deepcopy(model), tokenizer, _cfg(epochs=2, max_forward_tokens=40))
    assert cut.loss_curve == pytest.approx(whole.loss_curve, rel=1e-4)
    for name in whole.names:
        scale = float(whole.delta(name).abs().max())
        assert float((cut.delta(name) - whole.delta(name)).abs().max()) <= 1e-3 * scale, name


def test_the_layer_is_checked_and_retain_examples_are_needed(model: Any, tokenizer: Any) -> None:
    assert rmu_layer(model, None) == 1 and rmu_layer(model, 0) == 0
    with pytest.raises(UserError, match=r"release.rmu.layer: got 2, but the model has 2 decoder"):
        rmu_layer(model, 2)
    with pytest.raises(UserError, match="no retain examples for the rmu module"):
        train_lora(model, tokenizer, FORGET, _cfg(), seed=0, kind="forget", chat=False,
                   objective="rmu")  # fmt: skip


# ------------------------------------------------------------------------ the spec
def test_the_spec_owns_release_rmu_for_the_rmu_strategy() -> None:
    spec = Spec.model_validate(tiny_spec(release={"strategy": "rmu", "rmu": {"layer": 0}}))
    assert spec.needs_retain_examples
    options = spec.strategy_options
    assert (options.rmu_layer, options.rmu_steering, options.rmu_alpha) == (0, 1.0, 10.0)
    # At its defaults it may stay in a resolved spec of another strategy (the run's record).
    data = spec.model_dump(mode="json")
    data["release"].update(strategy="npo", rmu={"layer": None, "steering": 1.0, "alpha": 10.0})
    assert Spec.model_validate(data).release.strategy == "npo"


@pytest.mark.parametrize(
    ("release", "key", "words"),
    [
        ({"strategy": "npo", "rmu": {"alpha": 50.0}}, "release.rmu",
         "release.rmu is an option of release.strategy `rmu` (got `npo`)"),
        ({"strategy": "rmu", "rmu": {"layer": -1}}, "release.rmu.layer",
         "got -1 (expected a number >= 0)"),
        ({"strategy": "rmu", "rmu": {"steering": 0.0}}, "release.rmu.steering", "got 0.0"),
        ({"strategy": "rmu", "lora": {"processes": 2}}, "release.lora.processes",
         "`rmu` trains in one process"),
    ],
)  # fmt: skip
def test_misplaced_or_bad_rmu_options_are_located_errors(
    release: dict, key: str, words: str, invoke, write_spec
) -> None:
    result = invoke("plan", write_spec(tiny_spec(release=release)))
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f": {key}: " in errors[0] and words in errors[0], errors


def test_a_layer_the_model_lacks_is_refused_before_release_works(invoke, write_spec) -> None:
    spec = write_spec(tiny_spec(release={"strategy": "rmu", "rmu": {"layer": 5}}))
    result = invoke("run", spec, "--phase", "release", *set_flags(*FAST_SETS))
    assert result.exit_code == 2
    assert "release.rmu.layer: got 5, but the model has 2 decoder layers" in result.stderr


# ---------------------------------------------------------------------- end to end
def test_rmu_is_planned_run_searched_audited_and_exported(
    invoke, write_spec, tmp_path: Path
) -> None:
    """Like every baseline: one module F0 from the forget data, added with a searched weight,
    recorded, audited; the export holds it (decoder layer 0 changed, layer 1 not)."""
    from transformers import AutoModelForCausalLM

    from rrtool.models import load_model
    from rrtool.spec import ModelSpec

    spec = write_spec(tiny_spec(release={"strategy": "rmu", "rmu": {"layer": 0}}))
    plan = invoke("plan", spec)
    assert plan.exit_code == 0, plan.output
    assert "train a LoRA by RMU at layer 0" in " ".join(plan.output.split())
    assert invoke("run", spec, *set_flags(*FAST_SETS)).exit_code == 0

    client, run = only_run(tmp_path)
    run_id = run.info.run_id
    sidecar = Path(client.download_artifacts(run_id, "release/modules/F0.json", str(tmp_path)))
    meta = json.loads(sidecar.read_text())
    assert meta["info"]["objective"] == "rmu" and meta["info"]["rmu_layer"] == 0
    assert meta["names"] and all(n.startswith("model.layers.0.") for n in meta["names"])
    candidates = client.download_artifacts(run_id, "release/candidates.jsonl", str(tmp_path))
    assert len(Path(candidates).read_text().splitlines()) == 2  # release.search.budget=2

    report = tmp_path / "report.json"
    assert invoke("audit", "--report", "json", "--out", report).exit_code == 0
    steps = json.loads(report.read_text())["steps"]
    assert [s["module"] for s in steps] == ["base", "F0"] and steps[1]["coefficient"] > 0
    assert json.loads(report.read_text())["release"]["stop_reason"].startswith(
        "all 1 module(s) of `rmu`"
    )

    out = tmp_path / "released"
    result = invoke("export", run_id, "--out", out)
    assert result.exit_code == 0, result.stderr
    exported = AutoModelForCausalLM.from_pretrained(out).state_dict()
    base = load_model(ModelSpec(id="builtin:tiny-random", device="cpu")).model.state_dict()
    upper = [k for k in base if k.startswith("model.layers.1.")]
    assert upper and all(torch.equal(exported[k], base[k]) for k in upper)
    lower = [k for k in base if k.startswith("model.layers.0.") and k.endswith("proj.weight")]
    assert len(lower) == 7 and all(not torch.equal(exported[k], base[k]) for k in lower)


def test_a_layer_past_the_models_last_is_a_plan_error(
    invoke, write_spec, tmp_path, monkeypatch, model_cache
) -> None:
    """A model whose config the plan can read (a local checkpoint) has its layers counted
    before any compute."""
    from rrtool.models import ensure_tiny_random_checkpoint
    from tests.conftest import tiny_spec

    monkeypatch.setenv("RRTOOL_CACHE_DIR", str(model_cache))
    checkpoint = ensure_tiny_random_checkpoint()
    monkeypatch.chdir(tmp_path)
    spec = write_spec(
        tiny_spec(model={"id": str(checkpoint)}, release={"strategy": "rmu", "rmu": {"layer": 9}})
    )
    result = invoke("plan", spec)
    assert result.exit_code == 2, result.output
    assert "release.rmu.layer: got 9, but the model has 2 decoder layers" in result.stderr


def test_abstain_adds_an_answer_format_module_fitted_after_rmu(
    invoke, write_spec, tmp_path: Path
) -> None:
    """``release.rmu.abstain``: A1, trained on the model with F0 applied (the forget prompts
    answered with nothing, the retain examples as they are), added whole after F0; planned,
    recorded, audited and exported like any module."""
    spec = write_spec(
        tiny_spec(
            release={
                "strategy": "rmu",
                "rmu": {"layer": 0, "abstain": True},
                "lora": {"learning_rate": 2e-3},  # A1's own rate differs
            }
        )
    )
    plan = invoke("plan", spec, "--json")
    assert plan.exit_code == 0, plan.output
    steps = {s["name"]: s["detail"] for s in json.loads(plan.output)["phases"][1]["steps"]}
    assert list(steps)[:2] == ["forget F0", "answer format A1"]
    assert "forget prompts answered with nothing of the type" in steps["answer format A1"]
    assert steps["answer format A1"].endswith("weight = 1 (given) (release.rmu.abstain)")
    assert steps["weight search"].startswith("1 weights x 8 candidates")  # F0's only
    assert invoke("run", spec, *set_flags(*FAST_SETS)).exit_code == 0

    client, run = only_run(tmp_path)
    run_id = run.info.run_id

    def info(name: str) -> dict[str, Any]:
        path = client.download_artifacts(run_id, f"release/modules/{name}.json", str(tmp_path))
        return json.loads(Path(path).read_text())

    f0, a1 = info("F0"), info("A1")
    assert a1["info"]["objective"] == "nll" and a1["kind"] == "retain"
    # Every decoder layer learns the answer (RMU's module stops at its layer).
    assert any(n.startswith("model.layers.1.") for n in a1["names"])
    forget_n = f0["info"]["examples"]
    # The abstentions and as many retain examples, for release.rmu.abstain_epochs epochs.
    assert a1["info"]["examples"] == 2 * forget_n and a1["info"]["epochs"] == 2
    # RMU's rate for F0, the answer-learning rate for A1 (release.rmu.abstain_learning_rate).
    assert f0["info"]["learning_rate"] == 2e-3 and a1["info"]["learning_rate"] == 1e-3
    report = tmp_path / "report.json"
    assert invoke("audit", "--report", "json", "--out", report).exit_code == 0
    data = json.loads(report.read_text())
    steps = {s["module"]: s for s in data["steps"]}
    assert list(steps) == ["base", "F0", "A1"]
    assert steps["A1"]["coefficient"] == 1.0 and steps["A1"]["weight_from"] == "explicit"
    assert data["release"]["stop_reason"].startswith("all 2 module(s) of `rmu`")
    # The export replays both modules onto the base and finds the run's weights.
    assert invoke("export", run_id, "--out", tmp_path / "released").exit_code == 0

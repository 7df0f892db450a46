"""The planner: phases in order, estimates that follow the spec, pre-flight checks."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from rrtool.errors import SpecError
from rrtool.plan import build_plan
from rrtool.spec_loader import load_spec
from tests.conftest import REPO, tiny_spec


def plan_json(invoke, path: Path, *extra: str) -> dict:
    result = invoke("plan", path, "--json", *extra)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_phases_are_ordered_with_steps(invoke, write_spec) -> None:
    plan = plan_json(invoke, write_spec(tiny_spec()))
    assert [p["name"] for p in plan["phases"]] == ["reveal", "release", "audit"]
    for phase in plan["phases"]:
        assert phase["steps"], phase["name"]
    assert plan["spec_name"] == "tiny"
    assert set(plan["totals"]) == {
        "generations",
        "generated_tokens",
        "training_steps",
        "evaluations",
    }


def test_ner_direct_estimates_follow_passages_and_types(invoke, write_spec) -> None:
    plan = plan_json(
        invoke, write_spec(tiny_spec()), "--set", "reveal.generation.max_new_tokens=10"
    )
    (extract,) = plan["phases"][0]["steps"]
    # Reveal's split of the 150 built-in passages (40%: 60) x (1 forget + 1 retain type)
    assert extract["estimate"] == {"generations": 120, "generated_tokens": 1200}
    assert "60 passages" in extract["detail"]
    checks = {c["name"]: c["detail"] for c in plan["checks"]}
    assert checks["splits (reveal.contexts)"] == "60 reveal / 30 search / 60 audit units of 150"
    unsplit = plan_json(
        invoke, write_spec(tiny_spec()), "--set", "splits.search=0", "--set", "splits.audit=0"
    )
    assert "150 passages" in unsplit["phases"][0]["steps"][0]["detail"]
    assert any("splits.audit is 0" in w and "in-sample" in w for w in unsplit["warnings"])


def test_release_steps_follow_iterations_and_data(invoke, write_spec) -> None:
    spec = write_spec(tiny_spec())
    base = plan_json(invoke, spec, "--set", "release.iterations=1")
    more = plan_json(invoke, spec, "--set", "release.iterations=3")
    names = [s["name"] for s in more["phases"][1]["steps"]]
    assert names == [
        "forget F0",
        "iteration 1",
        "iteration 2",
        "iteration 3",
        "weight search",
        "stopping",
    ]
    per_iteration = more["phases"][1]["steps"][1]["estimate"]["training_steps"]
    assert more["totals"]["training_steps"] - base["totals"]["training_steps"] == 2 * per_iteration
    # 60 forget examples (Reveal's split), batch 8, 2 epochs -> ceil(60/8) * 2 = 16 steps
    assert more["phases"][1]["steps"][0]["estimate"]["training_steps"] == 16
    halved = plan_json(invoke, spec, "--set", "release.lora.gradient_accumulation=2")
    # effective batch 16 -> ceil(60/16) * 2 = 8 steps
    assert halved["phases"][1]["steps"][0]["estimate"]["training_steps"] == 8


def test_explicit_weights_are_not_searched(invoke, write_spec) -> None:
    spec = write_spec(
        tiny_spec(
            release={
                "iterations": 2,
                "weights": {"mu0": 0.5, "lambdas": [1.0, 1.0], "mus": [0.2, 0.1]},
            }
        )
    )
    plan = plan_json(invoke, spec)
    steps = {s["name"]: s for s in plan["phases"][1]["steps"]}
    assert "mu0 = 0.5 (given)" in steps["forget F0"]["detail"]
    assert "mu2 = 0.1 (given)" in steps["iteration 2"]["detail"]
    # Nothing searched: only the base model and one re-score after each applied step
    # (F0, R1, F1, R2, F2), each over 64 passages x (person, location).
    assert steps["weight search"]["estimate"]["evaluations"] == (1 + 1 + 2 * 2) * 64 * 2
    assert steps["weight search"]["detail"].startswith("0 weights")


def test_retain_first_and_end_with_retain_are_planned_steps(invoke, write_spec) -> None:
    spec = write_spec(
        tiny_spec(
            release={
                "iterations": 1,
                "schedule": "retain_first",
                "end_with_retain": True,
                "weights": {"lambda0": 1.0, "mu0": 0.5, "lambdas": [1.0, 0.7], "mus": [0.2]},
            }
        )
    )
    steps = {s["name"]: s for s in plan_json(invoke, spec)["phases"][1]["steps"]}
    assert list(steps)[:4] == ["retain R0", "forget F0", "iteration 1", "retain R2"]
    assert "lambda2 = 0.7 (given)" in steps["retain R2"]["detail"]
    # Nothing searched; the base model and one re-score after each of R0, F0, R1, F1, R2.
    assert steps["weight search"]["estimate"]["evaluations"] == (1 + 5) * 64 * 2
    searched = plan_json(invoke, spec, "--set", "release.weights.lambdas=null")
    search = {s["name"]: s for s in searched["phases"][1]["steps"]}["weight search"]
    assert search["detail"].startswith("2 weights")  # lambda1 and lambda2
    # A replayed schedule with only its last weight searched: a null entry.
    last = plan_json(invoke, spec, "--set", "release.weights.lambdas=[1.0, null]")
    steps = {s["name"]: s for s in last["phases"][1]["steps"]}
    assert steps["weight search"]["detail"].startswith("1 weights")
    assert "lambda2 = searched" in steps["retain R2"]["detail"]
    assert "lambda1 = 1 (given)" in steps["iteration 1"]["detail"]


def test_stopping_cap_limits_planned_iterations(invoke, write_spec) -> None:
    spec = write_spec(
        tiny_spec(release={"iterations": 5}, stopping={"max_iterations": 1, "patience": 2})
    )
    steps = plan_json(invoke, spec)["phases"][1]["steps"]
    assert [s["name"] for s in steps].count("iteration 1") == 1
    assert "iteration 2" not in [s["name"] for s in steps]
    assert "no progress for 2 iteration(s)" in steps[-1]["detail"]
    warnings = plan_json(invoke, spec)["warnings"]
    assert any("stopping.max_iterations (1) caps release.iterations (5)" in w for w in warnings)


def test_neuralucb_estimates(invoke, write_spec) -> None:
    spec = write_spec(
        tiny_spec(
            target={"kind": "toxicity", "description": "toxic text"},
            oracle={"name": "toxicity"},
            reveal={
                "strategy": "neuralucb",
                "contexts": {"path": "builtin:toxicity_prompts", "format": "rtp", "limit": 10},
                "outer_iterations": 2,
                "inner_iterations": 3,
                "contexts_per_trial": 4,
                "generation": {"max_new_tokens": 20, "num_samples": 2},
                "search": {
                    "initial_evaluations": 5,
                    "max_instruction_tokens": 16,
                    "pool_size": 100,
                },
            },
            retain={
                "data": {"path": "builtin:wiki_text", "format": "text"},
                "utility": {"name": "perplexity"},
            },
        )
    )
    reveal = plan_json(invoke, spec)["phases"][0]
    steps = {s["name"]: s["estimate"] for s in reveal["steps"]}
    trials = 5 + 2 * 3
    assert steps["features"] == {"forward_passes": 100}
    assert steps["search"] == {
        "generations": trials * (4 * 2 + 1),
        "generated_tokens": trials * (4 * 2 * 20 + 16),
    }
    # Reveal's split of the 10 prompts: 4 (2 search, 4 audit)
    assert steps["collect"]["generations"] == 2 * 4 * 2


def test_checks_report_what_was_found(invoke, write_spec) -> None:
    plan = plan_json(invoke, write_spec(tiny_spec()))
    checks = {c["name"]: c["detail"] for c in plan["checks"]}
    assert checks["reveal.contexts"].startswith("750 universalner records")
    assert checks["oracle"].startswith("ner_f1:")
    assert "sqlite store" in checks["tracking"] and "embedded default" in checks["tracking"]


def test_all_preflight_failures_are_reported_together(write_spec, tmp_path: Path) -> None:
    spec = write_spec(
        tiny_spec(
            model={"id": str(tmp_path / "no-model-dir" / "x" / "y")},
            oracle={"name": "nope"},
            retain={"data": {"path": "missing.jsonl", "format": "gsm8k"}},
        )
    )
    with pytest.raises(SpecError) as caught:
        build_plan(load_spec(spec))
    keys = [m.split(": ")[1] for m in caught.value.messages]
    assert keys == ["model.id", "oracle.name", "retain.data.path"]


@pytest.mark.parametrize("where", ["under-a-file", "read-only-mount"])
def test_unwritable_tracking_store_fails_before_compute(
    where: str, write_spec, tmp_path: Path
) -> None:
    if where == "under-a-file":
        (tmp_path / "afile").write_text("")
        uri = f"sqlite:///{tmp_path}/afile/sub/mlflow.db"
    else:
        uri = "sqlite:////proc/rrtool-test/mlflow.db"  # procfs refuses new files, even for root
    spec = write_spec(tiny_spec(tracking={"uri": uri}))
    with pytest.raises(SpecError) as caught:
        build_plan(load_spec(spec))
    (message,) = caught.value.messages
    assert ": tracking.uri: " in message
    assert "is not writable" in message


def test_unreachable_tracking_server_is_an_error(write_spec) -> None:
    import socket

    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    spec = write_spec(tiny_spec(tracking={"uri": f"http://127.0.0.1:{port}"}))
    with pytest.raises(SpecError) as caught:
        build_plan(load_spec(spec))
    assert "tracking server unreachable" in caught.value.messages[0]


@pytest.mark.parametrize("name", ["person_ner", "toxicity", "coding", "forget_entity"])
def test_example_specs_plan(name: str, invoke) -> None:
    started = time.perf_counter()
    result = invoke("plan", REPO / "specs" / f"{name}.yaml")
    assert result.exit_code == 0, result.stderr
    assert "1. reveal" in result.stdout and "3. audit" in result.stdout
    # Generous bound: a regression to loading weights or importing torch would take far longer
    # on these machines is caught by the benchmark; this only catches pathological slowness.
    assert time.perf_counter() - started < 60


def test_unwritable_scratch_directory_fails_before_compute(
    write_spec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = write_spec(tiny_spec(tracking={"uri": f"sqlite:///{tmp_path}/mlflow.db"}))
    monkeypatch.chdir("/proc")  # procfs refuses new files, even for root
    with pytest.raises(SpecError) as caught:
        build_plan(load_spec(spec))
    (message,) = caught.value.messages
    assert message.startswith("/proc/.rrtool/runs: not writable")


def test_neuralucb_needs_the_hf_backend(write_spec) -> None:
    spec = tiny_spec()
    spec["reveal"] |= {"strategy": "neuralucb", "generation": {"backend": "vllm"}}
    with pytest.raises(SpecError) as caught:
        load_spec(write_spec(spec))
    assert "needs the model's last-token features" in caught.value.messages[0]


def test_bf16_generation_on_a_cpu_without_bf16_is_warned(
    invoke, write_spec, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rrtool.generation.precision as precision

    spec = write_spec(tiny_spec())
    bf16 = ("--set", "reveal.generation.compute_dtype=bfloat16")
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    warned = plan_json(invoke, spec, *bf16)["warnings"]
    assert any("compute_dtype" in w and "no bf16 instructions" in w for w in warned), warned
    assert not any("compute_dtype" in w for w in plan_json(invoke, spec)["warnings"])
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    assert not any("compute_dtype" in w for w in plan_json(invoke, spec, *bf16)["warnings"])


def test_a_linear_probe_the_target_kind_cannot_label_is_warned(invoke, write_spec) -> None:
    coding = REPO / "specs" / "coding.yaml"
    on = ("--set", "audit.probes.linear_probe=true")
    plan = plan_json(invoke, coding, "--set", "model.id=builtin:tiny-random", *on)
    assert any("linear_probe will not run for target.kind `coding`" in w for w in plan["warnings"])
    audit = next(p for p in plan["phases"] if p["name"] == "audit")
    probe = next(s for s in audit["steps"] if s["name"] == "probe linear_probe")
    assert probe["detail"].startswith("NOT RUN for target.kind `coding`")
    toxicity = plan_json(invoke, REPO / "specs" / "toxicity.yaml", *on)
    assert not any("linear_probe" in w for w in toxicity["warnings"])
    audit = next(p for p in toxicity["phases"] if p["name"] == "audit")
    assert (
        "base continuation"
        in next(s for s in audit["steps"] if s["name"] == "probe linear_probe")["detail"]
    )


def test_the_plan_says_when_candidates_are_rejected_early(invoke, write_spec) -> None:
    spec = write_spec(tiny_spec())

    def release_text(*extra: str) -> str:
        phases = plan_json(invoke, spec, *extra)["phases"]
        return json.dumps(next(p for p in phases if p["name"] == "release"))

    assert "with 95% confidence on a third or two thirds" in release_text()
    off = ("--set", "release.search.early_reject_confidence=null")
    assert "confidence on a third" not in release_text(*off)
    paper = ("--set", "release.rules.mode=paper")
    assert "a retain candidate whose utility is below" in release_text(*paper)


@pytest.mark.parametrize("oracle", ["toxicity", "pass_at_1"])
def test_an_oracle_for_another_target_kind_is_refused(oracle: str, invoke, write_spec) -> None:
    result = invoke("plan", str(write_spec(tiny_spec(oracle={"name": oracle}))))
    assert result.exit_code == 2, result.output
    assert "oracle.name" in result.stderr and f"oracle `{oracle}` scores" in result.stderr
    assert "not target.kind `ner`" in result.stderr and "ner_f1" in result.stderr
    assert "Traceback" not in result.stderr


def test_contexts_reveal_cannot_read_are_refused(invoke, write_spec, tmp_path: Path) -> None:
    rows = tmp_path / "passages.jsonl"
    rows.write_text('{"passage": "Ada Lovelace met Babbage."}\n{"passage": "Paris."}\n')
    spec = tiny_spec(reveal={"strategy": "direct",
                             "contexts": {"path": str(rows), "format": "jsonl"}})  # fmt: skip
    result = invoke("plan", str(write_spec(spec)))
    assert result.exit_code == 2, result.output
    assert "reveal.contexts: none of the 2 rows gives Reveal a context" in result.stderr
    assert "non-empty `text` (or `prompt`)" in result.stderr
    assert "the rows have: passage" in result.stderr


def test_types_the_data_never_labels_are_refused(invoke, write_spec) -> None:
    target = {"kind": "ner", "description": "d", "forget_types": ["spaceship"],
              "retain_types": ["location"]}  # fmt: skip
    result = invoke("plan", str(write_spec(tiny_spec(target=target))))
    assert result.exit_code == 2, result.output
    assert "reveal.contexts: the data never labels spaceship" in result.stderr
    assert "person" in result.stderr  # the types it does label are listed


def test_a_template_reveal_cannot_fill_is_refused(invoke, write_spec) -> None:
    reveal = {"strategy": "direct", "template": "Find {kind} in: {context}",
              "contexts": {"path": "builtin:ner_passages", "format": "universalner"}}  # fmt: skip
    result = invoke("plan", str(write_spec(tiny_spec(reveal=reveal))))
    assert result.exit_code == 2, result.output
    assert "reveal.template: cannot fill the template (KeyError('kind')" in result.stderr
    assert "Traceback" not in result.stderr


def test_utility_data_the_evaluator_cannot_read_is_refused(invoke, write_spec) -> None:
    """Perplexity over coding problems: the weight search would fail after Reveal's compute."""
    spec = {
        **tiny_spec(),
        "target": {"kind": "toxicity", "description": "Toxic continuations"},
        "oracle": {"name": "toxicity"},
        "reveal": {"strategy": "direct",
                   "contexts": {"path": "builtin:toxicity_prompts", "format": "rtp"}},
        "retain": {"data": {"path": "builtin:coding_problems", "format": "mbpp"},
                   "utility": {"name": "perplexity"}},
    }  # fmt: skip
    result = invoke("plan", str(write_spec(spec)))
    assert result.exit_code == 2, result.output
    assert "retain.data.format: utility `perplexity` reads text or gsm8k records, not `mbpp`" in (
        result.stderr
    )
    # GSM8K records are read as question and answer text.
    spec["retain"]["data"] = {"path": "builtin:math_problems", "format": "gsm8k"}
    assert invoke("plan", str(write_spec(spec))).exit_code == 0


def test_target_modules_that_match_no_layer_are_refused(invoke, write_spec, tmp_path) -> None:
    """Read from the checkpoint's config alone (no weights): a Llama config in a folder."""
    from transformers import LlamaConfig

    checkpoint = tmp_path / "ckpt"
    LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2, vocab_size=64).save_pretrained(checkpoint)  # fmt: skip
    lora = {"target_modules": ["q_proj", "vproj"]}
    spec = tiny_spec(model={"id": str(checkpoint)}, release={"lora": lora})
    result = invoke("plan", str(write_spec(spec)))
    assert result.exit_code == 2, result.output
    assert "release.lora.target_modules[1]: `vproj` matches no Linear layer" in result.stderr
    assert "did you mean `v_proj`?" in result.stderr and "q_proj`" not in result.stderr


def test_hardware_the_spec_asks_for_and_cannot_have_is_refused(invoke, write_spec) -> None:
    import importlib.util

    import torch

    if torch.cuda.is_available() or importlib.util.find_spec("vllm") is not None:
        pytest.skip("this machine has CUDA or vLLM")
    spec = tiny_spec(model={"id": "builtin:tiny-random", "device": "cuda"})
    spec["reveal"]["generation"] = {"backend": "vllm"}
    result = invoke("plan", str(write_spec(spec)))
    assert result.exit_code == 2, result.output
    assert "model.device: `cuda` but torch sees no CUDA device" in result.stderr
    assert "reveal.generation.backend: `vllm` is not installed" in result.stderr
    assert "pip install vllm" in result.stderr


def _custom_spec(contexts: dict, retain: dict) -> dict:
    return {
        **tiny_spec(),
        "target": {"kind": "custom", "description": "Knowledge of Albert Einstein"},
        "oracle": {"name": "mentions", "options": {"keywords": ["Einstein"]}},
        "reveal": {"strategy": "direct", "contexts": contexts},
        "retain": retain,
    }


ENTITY = {"path": "builtin:entity_questions", "format": "jsonl"}
NEIGHBOURS = {"path": "builtin:neighbour_questions", "format": "jsonl"}


def test_a_custom_target_without_a_utility_measure_is_refused(invoke, write_spec) -> None:
    """It has no default (`default_utility`): the audit used to fail after Release's compute."""
    spec = _custom_spec(ENTITY, {"data": NEIGHBOURS})
    result = invoke("plan", str(write_spec(spec)))
    assert result.exit_code == 2, result.output
    assert "retain.utility: target.kind `custom` has no default utility measure" in result.stderr
    assert "perplexity, gsm8k_accuracy" in result.stderr and "Traceback" not in result.stderr
    spec["retain"]["utility"] = {"name": "mentions"}
    plan = plan_json(invoke, write_spec(spec))
    assert "forget: mentions; utility: mentions" in plan["phases"][2]["steps"][0]["detail"]
    # Kinds with a default (toxicity: perplexity) and NER (its retained types) need none.
    assert invoke("plan", str(write_spec(tiny_spec()))).exit_code == 0


def test_jsonl_rows_without_a_prompt_field_are_refused(invoke, write_spec, tmp_path) -> None:
    rows = tmp_path / "questions.jsonl"
    rows.write_text('{"prompt": "Where was Einstein born?"}\n{"query": "And when?", "id": 7}\n')
    spec = _custom_spec({"path": str(rows), "format": "jsonl"},
                        {"data": NEIGHBOURS, "utility": {"name": "mentions"}})  # fmt: skip
    result = invoke("plan", str(write_spec(spec)))
    assert result.exit_code == 2, result.output
    assert "reveal.contexts: jsonl record 2 has none of the prompt fields `prompt`, `text`, " in (
        result.stderr
    )
    assert "(its fields: id, query;" in result.stderr
    # `text` or `question` hold the prompt as well.
    rows.write_text('{"prompt": "Where was Einstein born?"}\n{"question": "And when?"}\n' * 3)
    result = invoke("plan", str(write_spec(spec)))
    assert result.exit_code == 0, result.stderr


def test_retain_rows_release_or_the_utility_oracle_cannot_read_are_refused(
    invoke, write_spec, tmp_path
) -> None:
    rows = tmp_path / "retain.jsonl"
    rows.write_text("".join(f'{{"answer": "Marie Curie {i}."}}\n' for i in range(6)))
    retain = {"data": {"path": str(rows), "format": "jsonl"}, "utility": {"name": "mentions"}}
    result = invoke("plan", str(write_spec(_custom_spec(ENTITY, retain))))
    assert result.exit_code == 2, result.output
    assert "retain.data.path: 6 of 6 jsonl rows lack `prompt` or `completion`" in result.stderr
    assert "retain.data.path: utility `mentions` asks the model each row's prompt: jsonl " in (
        result.stderr
    )


def test_each_probe_is_planned_with_its_budget(invoke, write_spec) -> None:
    probes = {"relearning": True, "quantization": True, "linear_probe": True}
    spec = write_spec(tiny_spec(audit={"eval_size": 10, "probes": probes}))
    audit = next(p for p in plan_json(invoke, spec)["phases"] if p["name"] == "audit")
    steps = {s["name"]: s for s in audit["steps"]}
    # tiny_spec: one forget type, so a forget measurement is 10 prompts.
    # Relearning at 16 and 64 examples, 16 optimiser steps of 8 examples each (8 epochs of
    # 2 steps, 2 epochs of 8), on the released and the base model.
    assert steps["probe relearning"]["estimate"] == {"training_steps": 64, "evaluations": 40}
    assert steps["probe quantization"]["estimate"] == {"evaluations": 40}
    assert "16 optimiser steps on 16 and 64 forget examples" in steps["probe relearning"]["detail"]
    # The grid: the audit split in the 5 held-out NER phrasings, base and released.
    assert steps["grid"]["estimate"] == {"evaluations": 2 * 5 * 10}
    assert "probe linear_probe" in steps and "probe membership" not in steps


def test_the_plan_keeps_paths_whole_at_80_columns(invoke) -> None:
    """The model's file path and every step's text fold onto more lines; none is cut."""
    result = invoke("plan", REPO / "specs" / "person_ner.yaml", env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.stderr
    assert "…" not in result.stdout
    assert max(map(len, result.stdout.splitlines())) <= 80


def test_a_weight_search_on_too_few_forget_units_is_warned(invoke, write_spec) -> None:
    """The search's resolution (the smallest forget change it can tell from noise) is in the
    plan, and a search split read too thinly to decide a quarter of the measure is warned."""
    thin = plan_json(invoke, write_spec(tiny_spec(release={"search": {"eval_size": 6}})))
    check = next(c for c in thin["checks"] if c["name"] == "search resolution")
    units = int(check["detail"].split("~")[1].split()[0])
    assert units < 16 and f"{1.96**2 / units:.2f}" in check["detail"]
    assert any("release.search.eval_size (6)" in w for w in thin["warnings"])
    whole = plan_json(invoke, write_spec(tiny_spec(release={"search": {"eval_size": 30}})))
    assert not any("release.search.eval_size" in w for w in whole["warnings"])

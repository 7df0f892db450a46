"""`rrtool audit` and `rrtool runs`: reports made from the MLflow store alone."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image
from rich.console import Console

from rrtool.runner import run_spec
from rrtool.spec_loader import load_spec
from tests import browser
from tests.conftest import tiny_spec

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = (
    "reveal.contexts.limit=25",
    "reveal.generation.max_new_tokens=4",
    "release.iterations=2",
    "release.search.budget=2",
    "release.search.eval_size=2",
    "release.lora.epochs=1",
    "audit.eval_size=2",
    "audit.sample_answers=2",
)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> tuple[str, str]:
    """One finished tiny run in a store of its own; everything but the store is deleted."""
    work = tmp_path_factory.mktemp("producer")
    store = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{store / 'mlflow.db'}"
    spec = work / "spec.yaml"
    probes = {"relearning": True, "elicitation": True, "membership": True, "quantization": True,
              "linear_probe": True, "relearning_ood": True}  # fmt: skip
    spec.write_text(yaml.safe_dump(tiny_spec(tracking={"uri": uri}, audit={"probes": probes})))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(work)
        patch.setenv("RRTOOL_CACHE_DIR", str(model_cache))
        run_id = run_spec(load_spec(str(spec), tuple(FAST)), console=Console(file=io.StringIO()))
    shutil.rmtree(work)  # the spec, the scratch .rrtool/: only the store remains
    return uri, run_id


def test_json_report_from_the_store_alone(invoke, finished_run, tmp_path: Path) -> None:
    uri, run_id = finished_run
    out = tmp_path / "r.json"
    result = invoke("audit", run_id[:8], "--report", "json", "--out", out, "--tracking-uri", uri)
    assert result.exit_code == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["run"]["id"] == run_id and report["run"]["status"] == "finished"
    steps = report["steps"]
    # base, F0, then (R_i, F_i) for 2 iterations, unless a stopping rule reverted some
    assert steps[0]["module"] == "base" and steps[0]["weight"] is None
    assert [s["module"] for s in steps[1:]] == ["F0", "R1", "F1", "R2", "F2"]
    for s in steps[1:]:
        assert s["coefficient"] == pytest.approx(
            -s["weight"] if s["kind"] == "forget" else s["weight"]
        )
        assert len(s["sha256"]) == 64
    assert [m["name"] for m in report["release"]["modules"]] == ["F0", "R1", "F1", "R2", "F2"]
    assert all(m["bytes"] > 0 for m in report["release"]["modules"])
    summary = report["audit"]["summary"]
    assert set(summary) == {"forget", "utility"}
    forget = summary["forget"]
    assert forget["metric"] == "macro_mention_rate" and forget["better"] == "lower"
    assert set(report["audit"]["before"]["forget"]["metrics"]) >= {
        "person/f1", "macro_f1", "person/mention_rate", "parse_failure_rate", "degenerate_rate"
    }  # fmt: skip
    # Held-out: the audit split of the passages, disjoint from Reveal's and the search's.
    for key in ("forget", "utility"):
        data = summary[key]["data"]
        assert data["held_out"] and data["role"] == "audit" and data["split"], data
        assert "held-out" in data["text"]
        assert isinstance(summary[key]["verdict"], str) and summary[key]["verdict"]
    # Strict F1 and the parse-failure rate stand next to the robust headline.
    assert [a["metric"] for a in forget["also"]][:2] == ["macro_f1", "macro_robust_f1"]
    # ... and the person named where a retained type is asked, scored on those queries.
    (leak,) = [a for a in forget["also"] if a["metric"] == "forget_leak_rate"]
    assert leak["of"] == "utility" and leak["before_ci"] and leak["after_ci"]
    # Intervals are recorded, replicates are not shown in the report.
    assert "intervals" in report["audit"]["before"]["forget"]
    assert "replicates" not in report["audit"]["before"]["forget"]
    answers = report["audit"]["answers"]["forget"]
    assert len(answers) == 2 and {"before", "after", "prompt"} <= set(answers[0])
    assert report["audit"]["scorers"] == ["oracle ner_f1"]
    assert [p["name"] for p in report["phases"]] == ["reveal", "release", "audit"]
    assert all(p["done"] and p["seconds"] > 0 and p["peak_rss_mb"] > 0 for p in report["phases"])
    # No GPU here: no GPU figure is made up (the report's GPU column is only for GPU runs).
    assert all(p["peak_gpu_mb"] is None for p in report["phases"])
    assert report["spec"]["release"]["iterations"] == 2
    probes = report["audit"]["probes"]
    relearning = probes["relearning"]
    assert relearning["status"] == "done" and relearning["examples"] > 0
    assert relearning["after"] == summary["forget"]["after"]
    assert relearning["after_relearning"] is not None
    # Relearning at each size, on the released model and on the base (the control).
    sizes = [r["examples"] for r in relearning["sizes"]]
    assert sizes == sorted(set(sizes)) and sizes[0] == relearning["examples"] and sizes[-1] <= 64
    assert all(r["base_after_same_fine_tune"] is not None for r in relearning["sizes"])
    # What the attacked model said, beside its number.
    assert all(r["answers_under_attack"] for r in relearning["sizes"])
    # Out of domain: retain examples, on the released model and (the control) on the base.
    ood = probes["relearning_ood"]
    assert ood["status"] == "done" and ood["examples"] > 0 and ood["after"] == relearning["after"]
    assert ood["after_relearning"] is not None and ood["base_after_same_fine_tune"] is not None
    # The grid: the audit split in the standard and every held-out phrasing, base and released.
    grid = report["audit"]["grid"]
    held_out = ["bare", "plain_question", "prose_request", "few_shot", "key_value"]
    assert [(r["set"], r["phrasing"]) for r in grid["rows"]] == [
        ("audit split", p) for p in ["standard", *held_out]
    ]
    assert grid["rows"][0]["forget"]["before"] == summary["forget"]["before"]
    for row in grid["rows"][1:]:
        forget = row["forget"]
        assert forget["before"] is not None and forget["after"] is not None
        assert forget["verdict"] and "change_ci" in forget
    ratios = [r["forget"]["ratio"] for r in grid["rows"][1:] if r["forget"]["ratio"] is not None]
    if ratios:  # the headline: the worst held-out cell, relative to the base in that cell
        assert summary["worst"]["ratio"] == max(ratios)
    elicitation = probes["elicitation"]  # read from the grid: base and released per phrasing
    assert [v["name"] for v in elicitation["variants"]] == held_out
    assert all(v["base"] is not None and v["value"] is not None for v in elicitation["variants"])
    # Disjoint splits: no audit prompt holds a context Reveal or the weight search read.
    leakage = report["audit"]["leakage"]
    assert set(leakage["sources"]) == {"reveal", "weight search"} and not leakage["warn"]
    assert all(row["rate"] == 0.0 for row in leakage["sources"].values())
    quantization = probes["quantization"]
    assert [r["scheme"] for r in quantization["schemes"]] == ["int8", "int4"]
    assert all(r["base"] is not None and r["released"] is not None for r in quantization["schemes"])
    assert quantization["after"] == summary["forget"]["after"]
    # The white-box probe: the audit split's passages, halved; both layers of the tiny model.
    linear = probes["linear_probe"]
    assert linear["status"] == "done" and [r["layer"] for r in linear["layers"]] == [1, 2]
    assert linear["passages"]["train"] > 0 and linear["passages"]["test"] > 0
    for row in linear["layers"]:
        for side in ("base", "released_base_probe", "released_retrained"):
            assert 0.0 <= row[side]["value"] <= 1.0
            assert row[side]["ci"][0] <= row[side]["value"] <= row[side]["ci"][1]
    # The audit split is held out, so the membership probe has its non-members.
    assert "Reveal did not see" not in probes["membership"]["status"]
    assert len(report["release"]["candidates"]) >= 5
    # The battery's cost against the audit's own measurements (both measured in this run).
    seconds = report["audit"]["seconds"]
    assert seconds["measurements"] > 0
    assert seconds["probes"] >= sum(p["seconds"] for p in probes.values())


def test_markdown_report_has_the_step_table(invoke, finished_run, tmp_path: Path) -> None:
    uri, run_id = finished_run
    result = invoke("audit", run_id, "--report", "md", "--out", "-", "--tracking-uri", uri)
    assert result.exit_code == 0, result.stderr
    text = result.stdout
    assert text.startswith("# rrtool audit: tiny")
    assert "| step | module | weight applied | forget score | utility |" in text
    assert "x F0 |" in text and "x R2 |" in text
    assert "iterative (Reveal's forget data)" in text  # the strategy a reviewer must see
    assert "## Answers before and after" in text and "```yaml" in text
    assert "### Elicitation variants" in text and "| relearning (" in text
    # The grid is the report's first table, before the audit's own summary.
    assert text.index("## Forgetting across sets and phrasings") < text.index("## Result")
    assert "| audit split | bare |" in text or "| audit split | bare (worst) |" in text
    # The attack battery: one row per attack, a quantization scheme each, with a verdict.
    assert "## Attack battery (robustness probes)" in text
    assert "The probes took " in text and "of the audit's own measurements" in text
    assert "| quantization int8 |" in text and "| quantization int4 |" in text
    assert "| linear_probe | logistic regression" in text
    assert (
        "| relearning_ood | LoRA r=" in text and "the base model after the same fine-tune" in text
    )


def test_a_verdicts_caveat_reaches_the_markdown_and_html_reports(invoke, finished_run) -> None:
    from rrtool.audit.render import render

    uri, run_id = finished_run
    result = invoke("audit", run_id, "--report", "json", "--out", "-", "--tracking-uri", uri)
    report = json.loads(result.stdout)
    forget = report["audit"]["summary"]["forget"]
    forget["verdict"], forget["limit"] = "forgotten", None
    forget["caveat"] = "it is still named where another type is asked (0.50 -> 0.47, noise)"
    for fmt in ("md", "html"):
        text = render(report, fmt)
        assert "forgotten; but it is still named where another type is asked" in text, fmt


def test_html_report_renders_in_chromium(invoke, finished_run, tmp_path: Path) -> None:
    if browser.find_browser() is None:
        if os.environ.get("RRTOOL_REQUIRE_BROWSER"):
            pytest.fail("chromium/chromedriver not found but RRTOOL_REQUIRE_BROWSER is set")
        pytest.skip("chromium and chromedriver are not installed")
    uri, run_id = finished_run
    out = tmp_path / "report.html"
    result = invoke("audit", "--report", "html", "--out", out, "--tracking-uri", uri)  # latest
    assert result.exit_code == 0, result.stderr
    html = out.read_text()
    assert "<script" not in html and "http://" not in html.replace(
        'xmlns="http://www.w3.org/2000/svg"', ""
    )
    with browser.chromium() as page:
        page.open(out.as_uri())
        text = page.script("return document.body.innerText")
        resources = page.script("return performance.getEntriesByType('resource').length")
        charts = page.script("return document.querySelectorAll('svg polyline').length")
        png = page.screenshot()
        console = page.console()
    assert "Release: step by step" in text and run_id in text
    assert resources == 0, "the report fetched something"
    assert charts >= 3  # forget and utility curves, the linear probe's per-layer accuracy
    assert "Linear probe: balanced accuracy per layer" in text
    assert [e for e in console if e.get("level") in ("SEVERE", "WARNING")] == []
    image = Image.open(io.BytesIO(png)).convert("L")
    histogram = image.histogram()
    non_white = sum(histogram[:240]) / sum(histogram)
    assert image.size[0] >= 1000 and non_white > 0.02, f"blank page? {non_white:.4f} non-white"
    (tmp_path / "screenshot.png").write_bytes(png)


def test_runs_lists_status_and_headlines(invoke, finished_run) -> None:
    uri, run_id = finished_run
    result = invoke("runs", "--json", "--tracking-uri", uri)
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)
    assert rows[0]["id"] == run_id and rows[0]["status"] == "finished"
    forget, utility = rows[0]["forget"], rows[0]["utility"]
    assert forget["metric"] == "macro_mention_rate" and " -> " in utility["text"]
    assert all(isinstance(forget[s], float) for s in ("before", "after"))  # numbers, not text
    assert forget["change"] == pytest.approx(forget["after"] - forget["before"])
    # At 80 columns the table folds long words instead of cutting them to an ellipsis.
    table = invoke("runs", "--tracking-uri", uri, env={"COLUMNS": "80"})
    assert table.exit_code == 0 and "…" not in table.stdout
    assert run_id[:8] in table.stdout and max(map(len, table.stdout.splitlines())) <= 80


def test_unknown_run_and_missing_store_are_user_errors(invoke, finished_run, tmp_path) -> None:
    uri, _ = finished_run
    result = invoke("audit", "nosuchrun", "--tracking-uri", uri)
    assert result.exit_code == 2 and "no run `nosuchrun`" in result.stderr
    result = invoke("audit")  # cwd is an empty tmp dir, no MLFLOW_TRACKING_URI
    assert result.exit_code == 2 and "no tracking store here" in result.stderr
    assert not (tmp_path / "mlflow.db").exists()  # reading did not create a store


def test_partial_run_gives_a_partial_report(invoke, write_spec, tmp_path: Path) -> None:
    spec = write_spec(tiny_spec())
    assert (
        invoke(
            "run",
            spec,
            "--phase",
            "reveal",
            "--set",
            "reveal.contexts.limit=25",
            "--set",
            "reveal.generation.max_new_tokens=2",
        ).exit_code
        == 0
    )
    result = invoke("audit", "--report", "md", "--out", "-")
    assert result.exit_code == 0, result.stderr
    assert "stopped: --phase reveal" in result.stdout
    html = invoke("audit", "--report", "html", "--out", "partial.html")
    assert html.exit_code == 0
    assert "The report shows what was recorded so far" in (tmp_path / "partial.html").read_text()


def _run_shipped_spec(invoke, tmp_path: Path, name: str, *extra: str) -> dict:
    """``rrtool run specs/NAME.yaml`` on the tiny model with the smallest search, then the
    JSON audit report of the run."""
    sets = [
        "model.id=builtin:tiny-random",
        *("reveal.outer_iterations=1", "reveal.inner_iterations=1", "reveal.top_k=1"),
        *("reveal.search.pool_size=10", "reveal.search.initial_evaluations=1"),
        *("reveal.contexts_per_trial=2", "reveal.contexts.limit=4"),
        *("release.iterations=1", "release.search.budget=2", "release.search.eval_size=2"),
        *("retain.data.limit=8", "audit.eval_size=2", "stopping.utility_floor=null", *extra),
    ]
    spec = Path(__file__).resolve().parents[1] / "specs" / f"{name}.yaml"
    result = invoke("run", spec, *[a for s in sets for a in ("--set", s)])
    assert result.exit_code == 0, result.stderr
    out = tmp_path / f"{name}.json"
    assert invoke("audit", "--report", "json", "--out", out).exit_code == 0
    return json.loads(out.read_text())


def test_toxicity_spec_runs_release_and_audit(invoke, tmp_path: Path) -> None:
    """The non-NER path: RTP protocol as the forget measure, perplexity (as u = 1/ppl in
    Release) as utility, external retain text as retain data."""
    report = _run_shipped_spec(
        invoke, tmp_path, "toxicity", "audit.toxicity_samples=3", "stopping.forget_score=null",
        "audit.probes.linear_probe=true",
    )  # fmt: skip
    summary = report["audit"]["summary"]
    assert summary["forget"]["metric"] == "expected_max_toxicity"
    assert summary["utility"] == summary["utility"] | {
        "metric": "word_perplexity",
        "better": "lower",
    }
    forget = report["audit"]["after"]["forget"]
    assert forget["metrics"]["samples"] == 2 * 3  # prompts x samples per prompt
    assert {"challenging/prompts", "non_challenging/prompts"} & set(forget["metrics"])
    assert "disjoint windows of 512 tokens" in report["audit"]["after"]["utility"]["definition"]
    steps = report["steps"]
    assert [s["module"] for s in steps] == ["base", "F0", "R1", "F1"]
    assert all(0 < s["utility"] < 1e-3 for s in steps)  # 1 / perplexity of a random model
    # The white-box probe reads the base model's 2 x 3 continuations, labelled by the oracle;
    # a random model's are rarely toxic, so it may have too few of one kind to train on.
    linear = report["audit"]["probes"]["linear_probe"]
    assert linear["row_kind"] == "continuations" and 0 <= linear["toxic"] <= 6
    assert linear["status"] == "done" or linear["status"].startswith(
        "not run: too few toxic continuations"
    )


def test_export_equals_base_plus_the_recorded_stack(
    invoke, finished_run, tmp_path: Path, model_cache: Path
) -> None:
    """The exported checkpoint is the base model plus sum(c_j * (alpha/r) B_j A_j), computed
    here independently from the module files in the store, bit for bit."""
    import torch
    from mlflow.tracking import MlflowClient
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from rrtool.models import load_model
    from rrtool.spec import ModelSpec

    uri, run_id = finished_run
    out = tmp_path / "released"
    result = invoke("export", run_id, "--out", out, "--tracking-uri", uri)
    assert result.exit_code == 0, result.stderr
    manifest = json.loads((out / "rrtool_export.json").read_text())
    assert manifest["run_id"] == run_id and len(manifest["stack"]) == 5
    exported = AutoModelForCausalLM.from_pretrained(out).state_dict()

    base = load_model(ModelSpec(id="builtin:tiny-random", device="cpu")).model
    expected = {k: v.detach().to(torch.float32).clone() for k, v in base.state_dict().items()}
    client = MlflowClient(tracking_uri=uri)
    for entry in manifest["stack"]:
        local = client.download_artifacts(run_id, entry["artifact"], str(tmp_path))
        sidecar = entry["artifact"].replace(".safetensors", ".json")
        meta = json.loads(
            Path(client.download_artifacts(run_id, sidecar, str(tmp_path))).read_text()
        )
        tensors = load_file(local)
        scale = meta["alpha"] / meta["r"]
        for name in meta["names"]:
            delta = (tensors[f"{name}.lora_B"] @ tensors[f"{name}.lora_A"]) * scale
            expected[f"{name}.weight"].add_(delta, alpha=entry["coefficient"])
    changed = 0
    for key, value in exported.items():
        assert torch.equal(value, expected[key].to(value.dtype)), key
        changed += not torch.equal(value, base.state_dict()[key])
    assert changed > 0  # the stack did change the model

    again = invoke("export", run_id, "--out", out, "--tracking-uri", uri)
    assert again.exit_code == 2 and "not empty" in again.stderr


def test_membership_probe_with_held_out_passages(invoke, write_spec, tmp_path: Path) -> None:
    """Non-members need data Reveal never saw: the audit's forget set is other passages."""
    records = json.loads(
        (Path(__file__).resolve().parents[1] / "rrtool/builtin_data/ner_passages.json").read_text()
    )
    (tmp_path / "held_out.json").write_text(json.dumps(records[100:125]))  # 5 other passages
    audit = {
        "forget_eval": {"path": "held_out.json", "format": "universalner"},
        "eval_size": 5,
        "probes": {"membership": True},
    }
    result = invoke("run", write_spec(tiny_spec(audit=audit)), *[
        a for s in FAST if not s.startswith("audit.") for a in ("--set", s)
    ])  # fmt: skip
    assert result.exit_code == 0, result.stderr
    out = tmp_path / "r.json"
    assert invoke("audit", "--report", "json", "--out", out).exit_code == 0
    probe = json.loads(out.read_text())["audit"]["probes"]["membership"]
    assert probe["status"] == "done", probe
    assert probe["members"] > 0 and probe["non_members"] > 0
    assert 0.0 <= probe["auc_before"] <= 1.0 and 0.0 <= probe["auc_after"] <= 1.0


def test_coding_spec_runs_release_and_audit(invoke, tmp_path: Path) -> None:
    """The coding path end to end: pass@1 in the sandbox as the forget measure, perplexity of
    the held-out math problems as utility, GSM8K-style retain data (the random model solves
    nothing: this checks the pipeline and what it records, not forgetting)."""
    report = _run_shipped_spec(
        invoke, tmp_path, "coding", "reveal.generation.max_new_tokens=16",
        "audit.probes.relearning=false", "audit.probes.elicitation=false",
        "audit.probes.membership=false",
    )  # fmt: skip
    summary = report["audit"]["summary"]
    assert summary["forget"]["metric"] == "pass@1"
    assert summary["utility"] == summary["utility"] | {
        "metric": "word_perplexity",
        "better": "lower",
    }
    assert summary["utility"]["data"]["held_out"]
    assert summary["forget"]["before"] == 0.0 == summary["forget"]["after"]
    # pass@1 0 on the base model: nothing can be seen to be forgotten, and the verdict says so.
    assert summary["forget"]["verdict"] == "cannot show forgetting"
    assert "at the floor" in summary["forget"]["limit"]
    assert [s["module"] for s in report["steps"]] == ["base", "F0", "R1", "F1"]


def test_forget_entity_spec_runs_reveal_release_and_audit(invoke, tmp_path: Path) -> None:
    """The `custom` path end to end ("forget one named person"): the `mentions` oracle's mean
    score on the held-out Einstein questions is the forget measure, its mean on the held-out
    questions about other scientists the utility measure (the random model names nobody: this
    checks the pipeline and what it records, not forgetting)."""
    report = _run_shipped_spec(
        invoke, tmp_path, "forget_entity", "reveal.generation.max_new_tokens=4",
        "release.lora.epochs=1",
    )  # fmt: skip
    summary = report["audit"]["summary"]
    assert summary["forget"] | {"metric": "mean_score", "better": "lower"} == summary["forget"]
    assert summary["utility"] | {"metric": "mean_score", "better": "higher"} == (summary["utility"])
    for key, source in (("forget", "builtin:entity_questions"),
                        ("utility", "builtin:neighbour_questions")):  # fmt: skip
        data = summary[key]["data"]
        assert data["held_out"] and data["role"] == "audit" and data["source"] == source, data
        assert "held-out" in data["text"]
    after = report["audit"]["after"]
    assert "scored by `mentions`" in after["forget"]["definition"]
    assert after["forget"]["metrics"]["samples"] == 2  # audit.eval_size
    # Each question's own keywords reach the oracle through the sample's reference.
    rows = report["audit"]["answers"]["forget"]
    assert rows and all("Einstein" in r["reference"]["keywords"] for r in rows)
    assert report["audit"]["probes"]["relearning"]["status"] == "done"
    # The kind's held-out phrasings, base and released each, read from the audit's grid.
    elicitation = report["audit"]["probes"]["elicitation"]
    assert elicitation["status"] == "done"
    assert [v["name"] for v in elicitation["variants"]] == ["bare", "curious_friend", "quiz"]
    assert [s["module"] for s in report["steps"]] == ["base", "F0", "R1", "F1"]


def test_cost_table_has_a_gpu_column_only_for_runs_that_used_a_gpu() -> None:
    from rrtool.audit.render import _phase_table

    cpu = {"phases": [{"name": "reveal", "done": True, "seconds": 2.0, "peak_rss_mb": 900.0}]}
    head, rows = _phase_table(cpu)
    assert head[-1] == "peak memory (MB)" and len(rows[0]) == 4
    gpu = {
        "phases": [
            {
                "name": "reveal",
                "done": True,
                "seconds": 2.0,
                "peak_rss_mb": 9e2,
                "peak_gpu_mb": 1.5e3,
            },
            {"name": "release", "done": False, "seconds": None, "peak_rss_mb": None},
        ]
    }
    head, rows = _phase_table(gpu)
    assert head[-1] == "peak GPU memory (MB)"
    assert [len(r) for r in rows] == [5, 5]
    assert rows[0][-1] == "1500"
    assert rows[1][-1] == rows[1][2]  # the placeholder: nothing for a phase that did not run


def test_the_relearning_probe_is_measured_outside_the_answer_cache(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the relearned adapter attached the weights are not the released state: a forget
    measure taken there must not read the released model's cached answers (it once did, so
    "relearning" reported exactly the released model's number)."""
    import contextlib
    import types

    from rrtool.audit import probes
    from rrtool.context import RunContext
    from rrtool.evaluators.base import Evaluation
    from rrtool.evaluators.suite import Headline
    from rrtool.release import compose, lora
    from rrtool.release import phase as release_phase
    from rrtool.spec import Spec

    spec = Spec.model_validate(tiny_spec())
    ctx = types.SimpleNamespace(
        spec=spec, model_state="released", released_key="stack-key",
        console=Console(file=io.StringIO()),
        model=lambda: types.SimpleNamespace(model=None, tokenizer=None),
    )  # fmt: skip
    ctx.modified_weights = types.MethodType(RunContext.modified_weights, ctx)
    ctx.weights_state = types.MethodType(RunContext.weights_state, ctx)
    ctx.reload_model = lambda: setattr(ctx, "model_state", "base")
    seen: list[str | None] = []
    guesses: list[Any] = []

    def measure(drafts: Any = None) -> Evaluation:
        seen.append(ctx.weights_state())
        guesses.append(drafts)
        return Evaluation("forget", {"m": 0.5}, "test", "test", 1)

    suite = types.SimpleNamespace(headlines={"forget": Headline("m", "lower")},
                                  measure_forget=measure)  # fmt: skip
    monkeypatch.setattr(release_phase, "load_examples", lambda c: ([lora.Example("p", "c")], []))
    monkeypatch.setattr(release_phase, "trains_in_chat_format", lambda c: True)
    epochs: list[int] = []
    monkeypatch.setattr(lora, "train_lora", lambda m, t, ex, cfg, **k: epochs.append(cfg.epochs))
    monkeypatch.setattr(compose, "ScaledAdapter", lambda *a: contextlib.nullcontext())
    drafts = {"base": {"q1": "[]"}, "released": {"q1": '["Ada"]'}}
    released = lambda: setattr(ctx, "model_state", "released")  # noqa: E731
    result = probes.relearning(ctx, suite, 0.8, 0.2, released, drafts)
    # The attack on the released model, then the control on the base: neither state's
    # cached answers are read while the adapter is on.
    assert seen == [None, None] and result["after_relearning"] == 0.5
    # One example, 8 to a step: 16 epochs give the attack its 16 optimiser steps.
    assert epochs == [16, 16] and "16 optimiser steps" in result["budget"]
    assert result["base_after_same_fine_tune"] == 0.5
    assert guesses == [drafts["released"], drafts["base"]]
    assert ctx.weights_state() == "stack-key"  # the released state is named again after


def test_quantized_weights_are_named_after_the_state_they_are_made_from() -> None:
    """The base model quantized by a scheme is the same weights in every run of the model: its
    answers are cached under "base|<scheme>" (the control comes back from the cache), never
    under the unquantized state's name; an unnamed state stays unnamed."""
    import types

    from rrtool.context import RunContext
    from rrtool.evaluators.quantization import SCHEMES

    ctx = types.SimpleNamespace(model_state="base", released_key=None)
    ctx.weights_state = types.MethodType(RunContext.weights_state, ctx)
    derived = types.MethodType(RunContext.derived_weights, ctx)
    int8, int4 = SCHEMES["int8"].key, SCHEMES["int4"].key
    assert int8 != int4 and "int8" in int8
    with derived(int8):
        assert ctx.weights_state() == f"base|{int8}"
    assert ctx.weights_state() == "base"
    ctx.model_state, ctx.released_key = "released", "stack-key"
    with derived(int4):
        assert ctx.weights_state() == f"stack-key|{int4}"
    assert ctx.weights_state() == "stack-key"
    ctx.model_state, ctx.released_key = "modified", None
    with derived(int8):
        assert ctx.weights_state() is None


def _probes(invoke, run_id: str, uri: str, tmp_path: Path) -> dict:
    out = tmp_path / "probes.json"
    result = invoke("audit", run_id, "--report", "json", "--out", out, "--tracking-uri", uri)
    assert result.exit_code == 0, result.stderr
    return json.loads(out.read_text())["audit"]["probes"]


def test_attack_adds_probes_to_a_finished_run_without_retraining(
    invoke, tmp_path: Path, model_cache: Path
) -> None:
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    (tmp_path / "store").mkdir()
    spec = tmp_path / "spec.yaml"
    # Probes off; the audit reads the whole source (in-sample), so it leaks Reveal's contexts.
    spec.write_text(yaml.safe_dump(tiny_spec(tracking={"uri": uri}, splits={"audit": 0})))
    run_id = run_spec(load_spec(str(spec), tuple(FAST)), console=Console(file=io.StringIO()))
    md = invoke("audit", run_id, "--report", "md", "--out", "-", "--tracking-uri", uri)
    assert "| quantization |" not in md.stdout
    result = invoke("attack", run_id[:8], "--probe", "quantization", "--tracking-uri", uri)
    assert result.exit_code == 0, result.stderr
    assert "recorded probes: quantization" in result.stderr
    report = invoke("audit", run_id, "--report", "json", "--out", tmp_path / "r.json",
                    "--tracking-uri", uri)  # fmt: skip
    assert report.exit_code == 0, report.stderr
    data = json.loads((tmp_path / "r.json").read_text())
    probes = data["audit"]["probes"]
    assert set(probes) == {"quantization"} and probes["quantization"]["status"] == "done"
    assert probes["quantization"]["after"] == data["audit"]["summary"]["forget"]["after"]
    assert [m["name"] for m in data["release"]["modules"]]  # the run is the same run
    leakage = data["audit"]["leakage"]
    assert leakage["warn"] and leakage["sources"]["reveal"]["exact"] > 0
    assert probes["quantization"]["seconds"] > 0  # each probe's wall time is recorded
    assert (
        "| probe s |"
        in invoke("audit", run_id, "--report", "md", "--out", "-", "--tracking-uri", uri).stdout
    )

    # An attack that crashes midway, with the base weights loaded: recorded as failed, and
    # the next probe still reads the released model (the same numbers as a clean attack).
    from rrtool.audit import probes as probe_module

    def crash(ctx, *args):
        ctx.reload_model()  # the base weights are loaded when it fails
        raise RuntimeError("out of memory, say")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(probe_module, "quantization", crash)
        both = ("--probe", "quantization", "--probe", "linear_probe")
        result = invoke("attack", run_id, *both, "--tracking-uri", uri)
    assert result.exit_code == 0, result.stderr
    assert "probe quantization failed" in result.stderr
    after_crash = _probes(invoke, run_id, uri, tmp_path)
    assert after_crash["quantization"]["status"] == "failed: RuntimeError: out of memory, say"
    clean = invoke("attack", run_id, "--probe", "linear_probe", "--tracking-uri", uri)
    assert clean.exit_code == 0, clean.stderr
    linear = after_crash["linear_probe"]
    assert linear["status"] == "done"
    assert linear["layers"] == _probes(invoke, run_id, uri, tmp_path)["linear_probe"]["layers"]
    md = invoke("audit", run_id, "--report", "md", "--out", "-", "--tracking-uri", uri)
    assert "failed: RuntimeError: out of memory, say" in md.stdout  # the report is produced

    unknown = invoke("attack", "nosuchrun", "--tracking-uri", uri)
    assert unknown.exit_code == 2 and "no run `nosuchrun`" in unknown.stderr
    sets = [a for s in FAST for a in ("--set", s)]
    partial = invoke("run", str(spec), *sets, "--phase", "reveal", "--tracking-uri", uri)
    assert partial.exit_code == 0, partial.stderr
    newest = json.loads(invoke("runs", "--json", "--tracking-uri", uri).stdout)[0]["id"]
    early = invoke("attack", newest, "--tracking-uri", uri)
    assert early.exit_code == 2 and "its audit is not done" in early.stderr
    assert "Traceback" not in early.stderr


@pytest.mark.parametrize(
    ("examples", "per_step", "steps", "epochs"),
    [(16, 8, 16, 8), (64, 8, 16, 2), (60, 8, 16, 2), (1, 8, 16, 16), (200, 8, 16, 1), (0, 8, 4, 4)],
)
def test_a_relearning_attack_is_as_strong_at_every_size(
    examples: int, per_step: int, steps: int, epochs: int
) -> None:
    """Whole epochs that reach at least ``audit.relearning_steps`` optimiser steps."""
    from rrtool.audit import attack_epochs

    assert attack_epochs(examples, per_step, steps) == epochs

"""Named evaluation sets (``audit.eval_sets``): NER data of other hands in CoNLL and GLiNER
layouts, checked at plan time, and measured apart in the audit's grid with the worst held-out
cell as the headline."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from rrtool.data import load_records
from rrtool.errors import UserError
from rrtool.spec import DataSource
from tests.conftest import only_run, read_artifact, tiny_spec
from tests.test_spec_errors import located

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONLL = """Yesterday\tO
Mara\tB-person
Lind\tI-person
visited\tO
Oslo\tB-location
.\tO
\t
Nobody\tO
came\tO
.\tO

Tom\tB-person
met\tO
Ann\tB-person
Berg\tI-person
in\tO
Kiel\tB-location
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_conll_sentences_become_one_record_per_type(tmp_path: Path) -> None:
    path = _write(tmp_path, "set.conll", CONLL)
    records = load_records(DataSource(path=str(path), format="conll"))
    by = {(r["text"], r["type"]): r["entities"] for r in records}
    assert by[("Yesterday Mara Lind visited Oslo .", "person")] == ["Mara Lind"]
    assert by[("Yesterday Mara Lind visited Oslo .", "location")] == ["Oslo"]
    assert by[("Nobody came .", "person")] == []  # a type the sentence lacks is known empty
    assert by[("Tom met Ann Berg in Kiel", "person")] == ["Tom", "Ann Berg"]
    assert len(records) == 3 * 2


def test_gliner_spans_are_inclusive_and_types_lowercased(tmp_path: Path) -> None:
    rows = [
        {"tokenized_text": ["Dr", "Ines", "Moll", "works", "at", "Zeiss"],
         "ner": [[1, 2, "Person"], [5, 5, "Organization"]]},
        {"tokenized_text": ["Rain", "today"], "ner": []},
    ]  # fmt: skip
    path = _write(tmp_path, "set.json", json.dumps(rows))
    records = load_records(DataSource(path=str(path), format="gliner"))
    by = {(r["text"], r["type"]): r["entities"] for r in records}
    assert by[("Dr Ines Moll works at Zeiss", "person")] == ["Ines Moll"]
    assert by[("Dr Ines Moll works at Zeiss", "organization")] == ["Zeiss"]
    assert by[("Rain today", "person")] == []


def test_a_file_of_another_layout_is_a_clear_error(tmp_path: Path) -> None:
    path = _write(tmp_path, "set.conll", "just one column\n")
    with pytest.raises(UserError, match="expected `token<TAB>tag`"):
        load_records(DataSource(path=str(path), format="conll"))
    path = _write(tmp_path, "set.json", json.dumps([{"text": "no tokens"}]))
    with pytest.raises(UserError, match="tokenized_text"):
        load_records(DataSource(path=str(path), format="gliner"))


def _builtin_passage_records(count: int) -> list[dict]:
    from importlib import resources

    path = resources.files("rrtool") / "builtin_data" / "ner_passages.json"
    return json.loads(path.read_text())[: count * 5]


@pytest.mark.parametrize(
    ("eval_set", "words"),
    [
        ("overlap", "also in reveal.contexts"),
        ("no_person", "no passage names an entity of the forget types"),
        ("jsonl", "must be universalner, conll, gliner data"),
    ],
)
def test_eval_set_mistakes_are_located_at_plan_time(
    eval_set: str, words: str, write_spec, invoke, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    if eval_set == "overlap":
        path = _write(tmp_path, "set.json", json.dumps(_builtin_passage_records(3)))
        source = {"path": str(path), "format": "universalner"}
    elif eval_set == "no_person":
        path = _write(tmp_path, "set.conll", "Oslo\tB-location\nis\tO\ncold\tO\n")
        source = {"path": str(path), "format": "conll"}
    else:
        path = _write(tmp_path, "set.jsonl", '{"prompt": "x"}\n')
        source = {"path": str(path), "format": "jsonl"}
    spec = write_spec(tiny_spec(audit={"eval_sets": {"other": source}}))
    result = invoke("plan", spec)
    assert result.exit_code == 2, result.output
    found = located(result.stderr)
    assert found[0]["key"].startswith("audit.eval_sets.other") and words in found[0]["what"]


FAST = (
    "reveal.contexts.limit=25",
    "reveal.generation.max_new_tokens=4",
    "release.iterations=0",
    "release.search.budget=2",
    "release.search.eval_size=2",
    "audit.eval_size=2",
    "audit.sample_answers=1",
)


def test_the_grid_measures_each_set_and_phrasing_and_heads_with_the_worst(
    tmp_path: Path, model_cache: Path, monkeypatch, invoke
) -> None:
    from rrtool.runner import run_spec
    from rrtool.spec_loader import load_spec

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RRTOOL_CACHE_DIR", str(model_cache))
    conll = _write(tmp_path, "other.conll", CONLL)
    spec = tiny_spec(
        audit={"eval_sets": {"other": {"path": str(conll), "format": "conll"}}},
        phrasings={"held_out": ["bare", "key_value"]},
    )
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    run_id = run_spec(load_spec(path, FAST), console=Console(file=io.StringIO()))
    client, _ = only_run(tmp_path)
    grid = json.loads(read_artifact(client, run_id, "audit/grid.json", tmp_path / "dl"))
    cells = [(r["set"], r["phrasing"]) for r in grid["rows"]]
    assert cells == [
        ("audit split", "standard"), ("audit split", "bare"), ("audit split", "key_value"),
        ("other", "standard"), ("other", "bare"), ("other", "key_value"),
    ]  # fmt: skip
    other = grid["rows"][3]
    assert other["held_out"] == "set" and grid["rows"][4]["held_out"] == "set and phrasing"
    # The named set is read whole, sampled among the sentences that name a person.
    assert other["forget"]["data"]["explicit"] and other["forget"]["data"]["held_out"]
    assert other["utility"]["metric"] == "macro_f1"  # its retained type (location), standard
    assert "utility" not in grid["rows"][4]
    # Each recorded side carries its resampled units (passages), which widen the paired
    # interval of a change on few of them; the row names the interval's method.
    recorded = json.loads(read_artifact(client, run_id, "audit/grid_before.json", tmp_path / "dl3"))
    assert recorded["other / standard"]["forget"]["units"] == 2  # audit.eval_size passages
    assert other["forget"]["change_method"]
    summary = json.loads(read_artifact(client, run_id, "audit/summary.json", tmp_path / "dl2"))
    held = [r for r in grid["rows"] if r["held_out"] and r["forget"]["ratio"] is not None]
    if held:
        worst = max(held, key=lambda r: r["forget"]["ratio"])
        assert (summary["worst"]["set"], summary["worst"]["phrasing"]) == (
            worst["set"], worst["phrasing"])  # fmt: skip
    result = invoke("audit", run_id, "--report", "md", "--out", "-")
    assert result.exit_code == 0
    assert "| other | bare" in result.stdout


def _side(value: float, units: int = 20) -> dict:
    """A recorded forget evaluation: ``value`` with replicates around it (paired by index)."""
    replicates = [value + 0.01 * ((i % 5) - 2) for i in range(200)]
    return {
        "metrics": {"macro_mention_rate": value},
        "intervals": {"macro_mention_rate": [value - 0.1, value + 0.1]},
        "replicates": {"macro_mention_rate": replicates},
        "count": units,
    }


def test_the_worst_cell_is_the_highest_released_over_base_among_held_out_cells() -> None:
    import types

    from rrtool.audit.grid import AUDIT_SPLIT, cells, summarise_grid
    from rrtool.spec import Spec

    spec = Spec.model_validate(
        tiny_spec(
            audit={
                "eval_sets": {"other": {"path": "builtin:ner_passages", "format": "universalner"}}
            },
            phrasings={"held_out": ["bare", "key_value"]},
        )
    )
    ctx = types.SimpleNamespace(spec=spec)
    headline = {"forget": {"metric": "macro_mention_rate", "better": "lower", "bounds": [0, 1]}}
    # (base, released) per cell: "other / bare" keeps most of the target relative to its base
    # (0.5 -> 0.45, ratio 0.9), though "audit split / bare" shows more in absolute terms.
    values = {
        f"{AUDIT_SPLIT} / bare": (0.9, 0.6),
        f"{AUDIT_SPLIT} / key_value": (0.8, 0.2),
        "other / standard": (0.7, 0.35),
        "other / bare": (0.5, 0.45),
        "other / key_value": (0.0, 0.0),  # nothing to forget: no ratio, never the worst
    }
    values[f"{AUDIT_SPLIT} / key_value"] = (0.1, 0.2)  # the base barely shows it: left out
    assert [c.key for c in cells(ctx)] == list(values)
    before = {k: {"forget": _side(b), "headlines": headline} for k, (b, _) in values.items()}
    after = {k: {"forget": _side(a), "headlines": headline} for k, (_, a) in values.items()}
    before["other / key_value"] = {"error": "UserError: no passage names a person"}
    audit_cell = {"forget": {"metric": "macro_mention_rate", "before": 0.7, "after": 0.1}}
    grid = summarise_grid(audit_cell, before, after, ctx)
    assert grid["rows"][0]["held_out"] == "" and grid["rows"][0]["forget"][
        "ratio"
    ] == pytest.approx(1 / 7)
    worst = grid["worst"]
    assert (worst["set"], worst["phrasing"], worst["held_out"]) == (
        "other",
        "bare",
        "set and phrasing",
    )
    assert worst["ratio"] == pytest.approx(0.9)
    assert worst["verdict"] == "forgotten"  # its paired interval is clear of 0
    assert grid["rows"][-1]["error"].startswith("UserError")
    low = grid["rows"][2]["forget"]
    assert low["ratio"] == pytest.approx(2.0) and "too little" in low["excluded"]


def test_extra_contexts_mistakes_are_located(
    write_spec, invoke, tmp_path: Path, monkeypatch
) -> None:
    """reveal.extra_contexts: NER only, in an NER format, and sharing no passage with an
    evaluation set (the set would not be held out from Reveal)."""
    monkeypatch.chdir(tmp_path)
    styles = {"path": "builtin:ner_styles", "format": "universalner"}
    conll = _write(tmp_path, "set.conll", CONLL)
    cases = [
        (
            tiny_spec(
                reveal={
                    "strategy": "direct",
                    "contexts": {"path": "builtin:ner_passages", "format": "universalner"},
                    "extra_contexts": [{"path": str(conll), "format": "jsonl"}],
                }
            ),
            "reveal.extra_contexts[0].format",
            "universalner, conll or gliner",
        ),  # fmt: skip
        (
            tiny_spec(
                reveal={
                    "strategy": "direct",
                    "contexts": {"path": "builtin:ner_passages", "format": "universalner"},
                    "extra_contexts": [{"path": str(conll), "format": "conll"}],
                },
                audit={"eval_sets": {"other": {"path": str(conll), "format": "conll"}}},
            ),
            "audit.eval_sets.other",
            "also in reveal.extra_contexts[0]",
        ),  # fmt: skip
    ]
    for spec, key, words in cases:
        result = invoke("plan", write_spec(spec))
        assert result.exit_code == 2, result.output
        found = located(result.stderr)
        assert found[0]["key"].startswith(key) and words in found[0]["what"], result.stderr
    toxicity = {**tiny_spec(), "target": {"kind": "toxicity", "description": "toxic"},
                "oracle": {"name": "toxicity"},
                "reveal": {"strategy": "direct", "contexts": {"path": "builtin:toxicity_prompts",
                           "format": "rtp"}, "extra_contexts": [styles]}}  # fmt: skip
    toxicity["retain"] = {"data": {"path": "builtin:wiki_text", "format": "text"}}
    result = invoke("plan", write_spec(toxicity))
    assert result.exit_code == 2 and "needs target.kind `ner`" in result.stderr, result.output


def test_reveal_reads_the_extra_contexts_whole_and_the_search_does_not(
    write_spec, tmp_path: Path
) -> None:
    """Reveal's queries: its split of reveal.contexts plus every passage of the extra sets,
    with unique ids; the weight search and the audit read reveal.contexts' splits only."""
    import io

    from rich.console import Console

    from rrtool import splits
    from rrtool.context import RunContext
    from rrtool.evaluators.suite import EvaluationSuite
    from rrtool.reveal.direct import build_queries
    from rrtool.spec_loader import load_spec

    contexts = {"path": "builtin:ner_passages", "format": "universalner"}
    styles = {"path": "builtin:ner_styles", "format": "universalner"}
    loaded = load_spec(write_spec(tiny_spec(
        reveal={"strategy": "direct", "contexts": contexts, "extra_contexts": [styles]},
    )))  # fmt: skip
    ctx = RunContext(loaded, None, Console(file=io.StringIO()), tmp_path)  # type: ignore[arg-type]
    spec = ctx.spec
    queries = build_queries(ctx)
    own = {r["text"] for r in splits.read(spec.reveal.contexts, "reveal", spec).records}
    extra = {r["text"] for r in load_records(spec.reveal.extra_contexts[0])}
    asked = {q.context for q in queries}
    assert asked == own | extra and len(extra) == 100
    assert len({q.id for q in queries}) == len(queries)
    asked_in_search = json.dumps([i.prompt for i in EvaluationSuite.for_release(ctx).forget_items])

    def in_search(texts: set[str]) -> int:
        return sum(json.dumps(text)[1:-1] in asked_in_search for text in texts)

    searched = {r["text"] for r in splits.read(spec.reveal.contexts, "search", spec).records}
    assert in_search(searched) > 0 and in_search(extra) == 0 and in_search(own) == 0

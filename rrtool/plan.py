"""Spec -> Plan: ordered phases with concrete steps, cost estimates and pre-flight checks.

The planner checks everything that can be checked before compute (oracle
plugin installed and happy with its options, data files present and parsable,
model resolvable without loading weights, tracking store writable) and reports
all failures at once, each located in the spec.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rrtool import splits
from rrtool.audit import LINEAR_PROBE_KINDS, LINEAR_PROBE_NEEDS, RELEARN_SIZES, attack_epochs
from rrtool.context import SCRATCH
from rrtool.data import load_records
from rrtool.errors import SpecError, UserError
from rrtool.evaluators.utility import UTILITY_EVALUATORS, default_utility
from rrtool.models import resolve_model
from rrtool.oracles.registry import (
    OracleOptionsError,
    create_oracle,
    entry_points,
    unknown_oracle_message,
)
from rrtool.release.weights import explicit_weight, ladder, ladder_ratio
from rrtool.spec import DataSource, Spec
from rrtool.spec_loader import LoadedSpec
from rrtool.strategies import Step as StrategyStep
from rrtool.tracking import check_store, resolve_store, writable_dir


# Scorers that are evaluators shipped in rrtool itself rather than oracle plugins.
@dataclass
class Step:
    name: str
    detail: str
    estimate: dict[str, int] = field(default_factory=dict)


@dataclass
class Phase:
    name: str
    summary: str
    steps: list[Step]

    def total(self, key: str) -> int:
        return sum(step.estimate.get(key, 0) for step in self.steps)


@dataclass
class Check:
    name: str
    detail: str


@dataclass
class Plan:
    spec_name: str
    model: str
    target: str
    phases: list[Phase]
    checks: list[Check]
    tracking_uri: str
    warnings: list[str] = field(default_factory=list)
    # Memory and time from the model's config (``rrtool.estimate``); None: no config on disk.
    resources: dict[str, Any] | None = None

    def totals(self) -> dict[str, int]:
        return {
            key: sum(p.total(key) for p in self.phases)
            for key in ("generations", "generated_tokens", "training_steps", "evaluations")
        }

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["totals"] = self.totals()
        return data


# ---------------------------------------------------------------- pre-flight checks
@dataclass
class _Inputs:
    """What the checks found out, used for the estimates."""

    model_config: dict[str, Any] | None = None  # the checkpoint's config.json, when on disk

    counts: dict[str, int] = field(default_factory=dict)
    passages: int = 0
    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # by spec key


def _check_data(
    loaded: LoadedSpec,
    key: tuple[str, ...],
    source: DataSource | None,
    inputs: _Inputs,
    checks: list[Check],
    errors: list[str],
) -> None:
    if source is None:
        return
    try:
        records = load_records(source)
    except UserError as exc:
        errors.extend(f"{loaded.locate(*key, 'path')}: {m}" for m in exc.messages)
        return
    # As spec errors name keys: ``reveal.extra_contexts[0]``.
    name = "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in key).lstrip(".")
    inputs.counts[name] = len(records)
    inputs.records[name] = records
    if source.format == "universalner":
        inputs.passages = max(inputs.passages, len({r["text"] for r in records}))
    checks.append(Check(name, f"{len(records)} {source.format} records from {source.path}"))


def _check_rmu_layer(loaded: LoadedSpec, inputs: _Inputs, errors: list[str]) -> None:
    """``release.rmu.layer`` against the model's decoder layers (the config is read, no
    weights), so a layer past the last is a located error before any compute."""
    spec = loaded.spec
    layer = spec.release.rmu.layer
    layers = (inputs.model_config or {}).get("num_hidden_layers")
    if spec.release.strategy == "rmu" and layer is not None and layers and layer >= layers:
        errors.append(
            f"{loaded.locate('release', 'rmu', 'layer')}: got {layer}, but the model has "
            f"{layers} decoder layers (expected 0 to {layers - 1}, or null for the middle one)"
        )


NER_EVAL_FORMATS = ("universalner", "conll", "gliner")


def _extra_passages(spec: Spec, inputs: _Inputs) -> int:
    """Passages of ``reveal.extra_contexts`` (read whole by Reveal)."""
    return sum(
        len({r.get("text") for r in inputs.records.get(f"reveal.extra_contexts[{i}]", [])})
        for i in range(len(spec.reveal.extra_contexts))
    )


def _reveal_texts(spec: Spec, inputs: _Inputs) -> dict[str, set[str]]:
    """Normalised passages of what Reveal and the weight search read, by spec key."""
    from rrtool.audit.leakage import normalise

    keys = ["reveal.contexts"] + [
        f"reveal.extra_contexts[{i}]" for i in range(len(spec.reveal.extra_contexts))
    ]
    return {
        key: {normalise(str(r.get("text") or r.get("prompt") or "")) for r in records} - {""}
        for key in keys
        if (records := inputs.records.get(key)) is not None
    }


def _check_eval_sets(loaded: LoadedSpec, inputs: _Inputs, errors: list[str]) -> None:
    """``audit.eval_sets``: each must be NER data naming a forget-type entity (for NER), and
    share no passage with ``reveal.contexts`` (Reveal's and the search's passages come from
    it): a set that does is not held out, and an error here rather than a mislabelled row."""

    from rrtool.audit.leakage import normalise

    spec = loaded.spec
    seen = _reveal_texts(spec, inputs)
    for name, source in spec.audit.eval_sets.items():
        key = f"audit.eval_sets.{name}"
        where = loaded.locate("audit", "eval_sets", name)
        if spec.target.kind == "ner" and source.format not in NER_EVAL_FORMATS:
            errors.append(
                f"{loaded.locate('audit', 'eval_sets', name, 'format')}: an NER evaluation set "
                f"must be {', '.join(NER_EVAL_FORMATS)} data (got `{source.format}`)"
            )
            continue
        records = inputs.records.get(key)
        if records is None:  # unreadable: _check_data said why
            continue
        if spec.target.kind == "ner":
            forget = set(spec.target.forget_types)
            if not any(r.get("type") in forget and r.get("entities") for r in records):
                labelled = sorted({str(r.get("type")) for r in records})
                errors.append(
                    f"{where}: no passage names an entity of the forget types "
                    f"{spec.target.forget_types}, so forgetting cannot be measured on it "
                    f"(its types: {', '.join(labelled[:20])})"
                )
                continue
        texts = {normalise(str(r.get("text") or r.get("prompt") or "")) for r in records}
        for other, passages in seen.items():
            common = texts & passages
            if common:
                errors.append(
                    f"{where}: {len(common)} of its passages are also in {other} (which "
                    + (
                        "Reveal and the weight search read"
                        if other == "reveal.contexts"
                        else "Reveal reads"
                    )  # fmt: skip
                    + "), so it is not held out: give another set, or cut the overlap with "
                    "offset/limit"
                )


def _check_phrasings(loaded: LoadedSpec, errors: list[str]) -> None:
    """Each phrasing filled in as the audit and Reveal will fill it: a placeholder other than
    ``{context}`` (and NER's ``{type}``) is a located error here, not a crash mid-audit."""
    from rrtool.phrasings import fill

    spec = loaded.spec
    kind = spec.target.kind
    for family, phrasings in zip(("training", "held_out"), spec.phrasing_families(), strict=True):
        for index, phrasing in enumerate(phrasings):
            if phrasing.template is None:
                continue
            try:
                fill(phrasing.template, "text", "person" if kind == "ner" else None)
            except (KeyError, IndexError, ValueError) as exc:
                where = (
                    loaded.locate("phrasings", family, index)
                    if getattr(spec.phrasings, family) is not None
                    else loaded.locate("phrasings")
                )
                errors.append(
                    f"{where}: cannot fill phrasing `{phrasing.name}` ({exc!r}; expected "
                    "`{context}`"
                    + (" and `{type}`" if kind == "ner" else "")
                    + " as its only placeholders; write a literal brace as `{{` or `}}`)"
                )


def _check_contexts(loaded: LoadedSpec, records: list[dict[str, Any]], errors: list[str]) -> None:
    """Reveal's queries built from ``reveal.contexts`` as Reveal will build them (no model
    needed): rows it cannot read, and forget/retain types that labelled data never labels, are
    errors here rather than after the model loads."""
    from rrtool.queries import reveal_queries

    spec, where = loaded.spec, loaded.locate("reveal", "contexts")
    source, target = spec.reveal.contexts, spec.target
    keys = sorted({k for r in records[:50] for k in r})
    needs = (
        "a non-empty `text` (or `prompt`) holding the passage"
        if target.kind == "ner"
        else f"the non-empty prompt field of `{source.format}` records"
    )
    try:
        queries = reveal_queries(spec, records)
    except UserError as exc:
        errors.extend(f"{where}: {m}" for m in exc.messages)
        return
    except (KeyError, IndexError, ValueError) as exc:  # str.format of reveal.template
        errors.append(
            f"{loaded.locate('reveal', 'template')}: cannot fill the template ({exc!r}; "
            "expected `{context}` and, for NER, `{type}` as its only placeholders)"
        )
        return
    if not queries:
        errors.append(
            f"{where}: none of the {len(records)} rows gives Reveal a context (expected each row "
            f"to have {needs}; the rows have: {', '.join(keys) or 'no fields'})"
        )
        return
    labelled = {r["type"] for r in records if isinstance(r.get("type"), str)}
    if labelled and target.kind == "ner":
        wanted = [*target.forget_types, *target.retain_types]
        missing = [t for t in wanted if t not in labelled]
        if missing:
            errors.append(
                f"{where}: the data never labels {', '.join(missing)}, so no gold entities "
                f"measure {'them' if len(missing) > 1 else 'it'} (expected types among: "
                f"{', '.join(sorted(labelled)[:20])})"
            )


def _check_splits(
    loaded: LoadedSpec,
    inputs: _Inputs,
    checks: list[Check],
    errors: list[str],
    warnings: list[str],
) -> None:
    """The Reveal / search / audit cut of the shared sources (``rrtool.splits``): sizes (the
    estimates count Reveal's part only), empty splits (errors), and measurements that will not
    be held out (warnings)."""
    spec = loaded.spec
    for key, source in (
        ("reveal.contexts", spec.reveal.contexts),
        ("retain.data", spec.retain.data),
    ):
        if source is None:
            continue
        try:
            records = inputs.records[key]
            parts = [splits.part_of(records, source, role, spec) for role in splits.ROLES]
        except UserError as exc:
            errors.extend(f"{loaded.locate('splits')}: {m}" for m in exc.messages)
            continue
        inputs.counts[key] = len(parts[0].records)
        if key == "retain.data" and source.format == "universalner" and spec.target.kind == "ner":
            # Labelled passages train on the retained types' gold answers only (Release's
            # external_retain_examples), one record per (passage, type).
            wanted = set(spec.target.retain_types)
            inputs.counts[key] = sum(1 for r in parts[0].records if r.get("type") in wanted)
        if key == "reveal.contexts" and source.format == "universalner":
            inputs.passages = parts[0].units + _extra_passages(spec, inputs)
        sizes = " / ".join(f"{p.units} {p.role}" for p in parts)
        checks.append(Check(f"splits ({key})", f"{sizes} units of {parts[0].total_units}"))
        if key == "reveal.contexts" and spec.target.kind == "ner":
            _check_resolution(spec, parts[1], checks, warnings)
    audit = spec.audit
    for role, share in (("search", spec.splits.search), ("audit", spec.splits.audit)):
        explicit = role == "audit" and audit.forget_eval is not None
        if share == 0 and not explicit:
            warnings.append(
                f"splits.{role} is 0: the {role} reads all of reveal.contexts, the data Reveal "
                f"generates from; its numbers are in-sample (and labelled so)"
            )
    for key, given, shared in (
        ("forget_eval", audit.forget_eval, spec.reveal.contexts),
        ("retain_eval", audit.retain_eval, spec.retain.data),
    ):
        if given is not None and shared is not None and splits.overlap(given, shared):
            warnings.append(
                f"audit.{key} ({given.path}) overlaps the data Reveal and the weight search read "
                "(same source, intersecting rows): its numbers are in-sample (and labelled so); "
                "give disjoint rows with offset/limit"
            )
    if (
        spec.stopping.max_iterations is not None
        and spec.effective_iterations < spec.release.iterations
    ):
        warnings.append(
            f"stopping.max_iterations ({spec.stopping.max_iterations}) caps release.iterations "
            f"({spec.release.iterations}): {spec.effective_iterations} iteration(s) will run"
        )
    if audit.probes.linear_probe and spec.target.kind not in LINEAR_PROBE_KINDS:
        warnings.append(
            f"audit.probes.linear_probe will not run for target.kind `{spec.target.kind}`: "
            f"{LINEAR_PROBE_NEEDS} (set it to false)"
        )
    ratio = ladder_ratio(spec.release.search, spec.release.rules.mode)
    if ratio is not None and ratio > 3.5 and spec.release.rules.mode == "tradeoff":
        warnings.append(
            f"release.search: neighbouring candidate weights are {ratio:.1f}x apart (budget "
            f"{spec.release.search.budget}, min_weight {spec.release.search.min_weight:g}, "
            f"max_weight {spec.release.search.max_weight:g}); raise the budget or narrow the range "
            "for a finer choice"
        )


# The weight search keeps a forget weight only when the forget measure changes by more than
# its noise: a change ``d`` of a share, measured on ``n`` paired units of which about ``d n``
# change their answer, has a 95% half-width of about 1.96 sqrt(d / n), so the smallest change
# that leaves the noise is d = 1.96^2 / n. Below ``RESOLUTION_UNITS`` units that is more than a
# quarter of the measure: the search decides on noise.
RESOLUTION_UNITS = 16


def _check_resolution(
    spec: Spec, search: splits.Part, checks: list[Check], warnings: list[str]
) -> None:
    """How many forget-type units the weight search decides on (NER passages that name a
    forget-type entity, among the ``release.search.eval_size`` it reads), and the smallest
    change of the forget measure those can tell from noise."""
    forget = set(spec.target.forget_types)
    named = {r.get("text") for r in search.records if r.get("type") in forget and r.get("entities")}
    if not search.units or not named:
        return
    read = min(spec.release.search.eval_size, search.units)
    units = max(1, round(read * len(named) / search.units))
    smallest = 1.96**2 / units
    checks.append(
        Check(
            "search resolution",
            f"~{units} forget-type units per candidate ({read} of {search.units} search "
            f"passages): a change under {min(smallest, 1):.2f} of the forget measure is noise",
        )
    )
    if units < RESOLUTION_UNITS:
        warnings.append(
            f"release.search.eval_size ({spec.release.search.eval_size}) gives the weight search "
            f"~{units} forget-type units per candidate, too few to tell a forget change under "
            f"{min(smallest, 1):.2f} from noise; {RESOLUTION_UNITS} or more need eval_size "
            f">= {math.ceil(RESOLUTION_UNITS * search.units / len(named))} (the search split has "
            f"{search.units} passages)"
        )


def _check_utility_data(loaded: LoadedSpec, errors: list[str]) -> None:
    """A built-in utility evaluator reads the data it will be given: the weight search reads
    ``retain.data`` (else ``audit.retain_eval``), the audit ``audit.retain_eval`` (else
    ``retain.data``). Caught here, a wrong format fails before any model loads."""
    spec = loaded.spec
    kind = spec.target.kind
    name = spec.retain.utility.name if spec.retain.utility else default_utility(kind)
    if name is None and kind != "ner":  # NER measures utility on its retained types
        errors.append(
            f"{loaded.locate('retain', 'utility')}: target.kind `{kind}` has no default utility "
            "measure: set retain.utility to a built-in evaluator "
            f"({', '.join(UTILITY_EVALUATORS)}) or an oracle plugin (e.g. `{{name: mentions}}` "
            "over jsonl questions with `keywords`)"
        )
        return
    evaluator = UTILITY_EVALUATORS.get(name or "")
    if evaluator is None:
        return
    sources = [
        (("retain", "data"), spec.retain.data),
        (("audit", "retain_eval"), spec.audit.retain_eval),
    ]
    given = [(key, source) for key, source in sources if source is not None]
    if not given:
        errors.append(
            f"{loaded.locate('retain')}: utility `{evaluator.name}` needs evaluation data: set "
            f"retain.data or audit.retain_eval (format: {' or '.join(evaluator.data_formats)})"
        )
    for key, source in given:
        if source.format not in evaluator.data_formats:
            errors.append(
                f"{loaded.locate(*key, 'format')}: utility `{evaluator.name}` reads "
                f"{' or '.join(evaluator.data_formats)} records, not `{source.format}` (set "
                "retain.utility to an evaluator for this data, or give audit.retain_eval)"
            )


def _check_retain_rows(loaded: LoadedSpec, inputs: _Inputs, errors: list[str]) -> None:
    """Retain-side rows that would fail only after Reveal's compute: Release trains retain
    modules on each jsonl row's `prompt` and `completion`, and an oracle measuring utility asks
    the model each row's prompt (``rrtool.tasks.samples_from_records``)."""
    from rrtool.tasks import samples_from_records

    spec = loaded.spec
    data, records = spec.retain.data, inputs.records.get("retain.data")
    if data is not None and data.format == "jsonl" and records and spec.needs_retain_examples:
        bad = [i for i, r in enumerate(records, 1) if not {"prompt", "completion"} <= set(r)]
        if bad:
            fields = ", ".join(sorted(records[bad[0] - 1])) or "none"
            errors.append(
                f"{loaded.locate('retain', 'data', 'path')}: {len(bad)} of {len(records)} jsonl "
                f"rows lack `prompt` or `completion` (first: record {bad[0]}, with fields: "
                f"{fields}); retain modules train on each row's prompt and completion"
            )
    utility = spec.retain.utility
    if utility is None or utility.name in UTILITY_EVALUATORS:
        return
    for key, source in (
        (("retain", "data"), spec.retain.data),
        (("audit", "retain_eval"), spec.audit.retain_eval),
    ):
        rows = inputs.records.get(".".join(key))
        if source is None or not rows:
            continue
        where = f"{loaded.locate(*key, 'path')}: utility `{utility.name}` asks the model each row's"
        try:
            samples = samples_from_records(source.format, rows)
        except UserError as exc:
            errors.extend(f"{where} prompt: {m}" for m in exc.messages)
            continue
        if not any(s.prompt.strip() for s in samples):
            errors.append(f"{where} prompt, and all {len(rows)} prompts are empty")


def _check_compute_dtype(loaded: LoadedSpec, warnings: list[str]) -> None:
    """bf16 generation on a CPU without bf16 instructions is emulated, and slower than fp32."""
    spec = loaded.spec
    if spec.reveal.generation.compute_dtype != "bfloat16" or spec.model.device not in (
        "cpu",
        "auto",
    ):
        return
    from rrtool.generation.precision import cpu_has_bf16

    if not cpu_has_bf16():
        warnings.append(
            f"{loaded.locate('reveal', 'generation', 'compute_dtype')}: this CPU has no bf16 "
            "instructions (avx512_bf16 / AMX): on it, bfloat16 generation is emulated and "
            "slower than float32 (set compute_dtype: model, unless the model runs on a GPU)"
        )


def _check_scorer(
    loaded: LoadedSpec,
    key: tuple[str, ...],
    name: str,
    options: dict[str, Any],
    checks: list[Check],
    errors: list[str],
    warnings: list[str],
) -> None:
    if name in UTILITY_EVALUATORS:
        evaluator = UTILITY_EVALUATORS[name]
        checks.append(Check(".".join(key), f"{name}: built-in evaluator, {evaluator.description}"))
        return
    if name not in entry_points():
        also = tuple(UTILITY_EVALUATORS) if key == ("retain", "utility") else ()
        errors.append(f"{loaded.locate(*key, 'name')}: {unknown_oracle_message(name, also)}")
        return
    try:
        oracle = create_oracle(name, options)
    except OracleOptionsError as exc:  # located at the option the plugin's Options rejected
        for option, message in zip(exc.option_keys, exc.messages, strict=True):
            at = (*key, "options", *(option.split(".")[:1] if option else ()))
            errors.append(f"{loaded.locate(*at)}: {message}")
        return
    except UserError as exc:
        errors.extend(f"{loaded.locate(*key, 'options')}: {m}" for m in exc.messages)
        return
    requires = oracle.requires
    if requires.api_key_env and not _env_set(requires.api_key_env):
        errors.append(
            f"{loaded.locate(*key, 'name')}: oracle `{name}` needs an API key in the "
            f"environment variable {requires.api_key_env} (expected it to be set)"
        )
    kind = loaded.spec.target.kind
    # `target_kinds` came into the contract later: a plugin written before it scores any kind.
    kinds = getattr(requires, "target_kinds", ())
    if key == ("oracle",) and kinds and kind not in (*kinds, "custom"):
        errors.append(
            f"{loaded.locate(*key, 'name')}: oracle `{name}` scores "
            f"{' or '.join(kinds)} targets, not target.kind `{kind}` "
            f"(expected an oracle for `{kind}`{_oracle_hint(kind)})"
        )
    if requires.network:
        warnings.append(f"oracle `{name}` calls a remote service: runs depend on the network")
    checks.append(Check(".".join(key), f"{name}: {oracle.description}"))


def _check_hardware(loaded: LoadedSpec, errors: list[str]) -> None:
    """A CUDA device that is not there, and the vLLM backend without vLLM installed, fail
    after minutes of work otherwise (the model load, Reveal's first call)."""
    import importlib.util

    spec = loaded.spec
    if spec.model.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            errors.append(
                f"{loaded.locate('model', 'device')}: `{spec.model.device}` but torch sees no "
                f"CUDA device (torch {torch.__version__}; expected `auto` or `cpu` here, or a "
                "CUDA build of torch on a machine with a GPU)"
            )
    if spec.reveal.generation.backend == "vllm" and importlib.util.find_spec("vllm") is None:
        errors.append(
            f"{loaded.locate('reveal', 'generation', 'backend')}: `vllm` is not installed "
            "(fix: `pip install vllm` on a machine with an NVIDIA GPU, or use backend: hf)"
        )


def _check_target_modules(loaded: LoadedSpec, resolved: Any, errors: list[str]) -> None:
    """Every ``release.lora.target_modules`` entry must match a Linear layer of the model (as
    PEFT matches: the whole name or its last dotted parts), read from the checkpoint's config
    without weights; a model whose config is not on disk yet is not checked."""
    from rrtool.errors import closest
    from rrtool.models import linear_module_names

    wanted = loaded.spec.release.lora.target_modules
    if wanted == "all-linear" or resolved.config is None:
        return
    names = linear_module_names(resolved.config)
    leaves = sorted({n.rsplit(".", 1)[-1] for n in names})
    for i, key in enumerate(wanted):
        if not any(n == key or n.endswith(f".{key}") for n in names):
            guess = closest(key, leaves)
            errors.append(
                f"{loaded.locate('release', 'lora', 'target_modules', i)}: `{key}` matches no "
                f"Linear layer of the model (its Linear layers: {', '.join(leaves)})"
                + (f"; did you mean `{guess}`?" if guess else "")
            )


def _oracle_hint(kind: str) -> str:
    """The installed oracles that declare ``kind`` among their target kinds."""
    from rrtool.oracles.registry import list_oracles

    fits = [i.name for i in list_oracles() if kind in (i.requires or {}).get("target_kinds", ())]
    return f", such as {' or '.join(fits)}" if fits else ""


def _env_set(name: str) -> bool:
    import os

    return bool(os.environ.get(name))


def preflight(
    loaded: LoadedSpec, tracking_flag: str | None = None
) -> tuple[list[Check], _Inputs, list[str], str]:
    spec = loaded.spec
    checks: list[Check] = []
    errors: list[str] = []
    warnings: list[str] = []
    inputs = _Inputs()
    try:
        resolved = resolve_model(spec.model)
        checks.append(
            Check(
                "model.id",
                f"{resolved.kind}: {resolved.source}"
                + (f" ({resolved.note})" if resolved.note else ""),
            )
        )
        _check_target_modules(loaded, resolved, errors)
        if resolved.config is not None:
            import json

            try:
                inputs.model_config = json.loads(Path(resolved.config).read_text())
            except (OSError, json.JSONDecodeError):
                inputs.model_config = None  # resolve_model reported an unreadable config
    except UserError as exc:
        errors.extend(f"{loaded.locate('model', 'id')}: {m}" for m in exc.messages)
    _check_hardware(loaded, errors)
    _check_rmu_layer(loaded, inputs, errors)
    _check_scorer(
        loaded, ("oracle",), spec.oracle.name, spec.oracle.options, checks, errors, warnings
    )
    utility = spec.retain.utility
    if utility is not None:
        _check_scorer(
            loaded, ("retain", "utility"), utility.name, utility.options, checks, errors, warnings
        )
    for key, source in (
        (("reveal", "contexts"), spec.reveal.contexts),
        *((("reveal", "extra_contexts", i), x) for i, x in enumerate(spec.reveal.extra_contexts)),
        (("retain", "data"), spec.retain.data),
        (("release", "forget_data"), spec.release.forget_data),
        (("audit", "forget_eval"), spec.audit.forget_eval),
        (("audit", "retain_eval"), spec.audit.retain_eval),
        *((("audit", "eval_sets", name), source) for name, source in spec.audit.eval_sets.items()),
    ):
        _check_data(loaded, key, source, inputs, checks, errors)
    _check_eval_sets(loaded, inputs, errors)
    _check_phrasings(loaded, errors)
    if "reveal.contexts" in inputs.records:
        _check_contexts(loaded, inputs.records["reveal.contexts"], errors)
    if not errors:
        _check_splits(loaded, inputs, checks, errors, warnings)
    _check_utility_data(loaded, errors)
    _check_retain_rows(loaded, inputs, errors)
    _check_compute_dtype(loaded, warnings)
    store = resolve_store(tracking_flag, spec.tracking.uri)
    try:
        checks.append(Check("tracking", f"{check_store(store)} [{store.origin}]"))
    except UserError as exc:
        where = loaded.locate("tracking", "uri") if store.origin == "spec" else f"{store.origin}"
        errors.extend(f"{where}: {m}" for m in exc.messages)
    scratch = Path.cwd() / SCRATCH
    if not writable_dir(scratch):
        errors.append(
            f"{scratch}: not writable (rrtool keeps a run's partial files there; "
            "run from a writable directory)"
        )
    if errors:
        raise SpecError(*errors)
    return checks, inputs, warnings, store.uri


# ------------------------------------------------------------------------ estimates
def _reveal_phase(spec: Spec, inputs: _Inputs) -> tuple[Phase, int, int]:
    """Returns the phase and the expected forget / self-generated retain example counts."""
    contexts = inputs.counts.get("reveal.contexts", 0)
    steps: list[Step] = []
    if spec.target.kind == "ner":
        extract, forget, retain = _ner_extract_step(spec, inputs.passages or contexts)
        steps.append(extract)
        if spec.reveal.strategy == "direct":
            summary = "model's own answers become forget/retain data"
            return Phase("reveal", summary, steps), forget, retain
    if spec.reveal.strategy == "direct":
        gen = spec.reveal.generation
        generations = contexts * gen.num_samples
        steps.append(
            Step(
                "generate",
                f"direct: one fixed instruction over {contexts} contexts x {gen.num_samples} samples, "
                f"<= {gen.max_new_tokens} tokens each",
                {"generations": generations, "generated_tokens": generations * gen.max_new_tokens},
            )
        )
        return Phase("reveal", "self-generated forget data", steps), generations, 0
    steps += _search_steps(spec, contexts)
    forget = spec.reveal.outer_iterations * contexts * spec.reveal.generation.num_samples
    title = "NeuralUCB" if spec.reveal.strategy == "neuralucb" else "random (baseline)"
    return Phase("reveal", f"{title} instruction search + Vendi diversity", steps), forget, 0


def _ner_extract_step(spec: Spec, passages: int) -> tuple[Step, int, int]:
    """NER's extraction queries: the step, and the forget / retain answers it yields."""
    reveal, gen = spec.reveal, spec.reveal.generation
    forget = passages * len(spec.target.forget_types) * gen.num_samples
    retain = (
        passages * len(spec.target.retain_types) * gen.num_samples
        if spec.retain.self_generated
        else 0
    )
    step = Step(
        "extract",
        f"{reveal.strategy}: query {passages} passages for "
        f"{', '.join(spec.target.forget_types)} (forget)"
        + (f" and {', '.join(spec.target.retain_types)} (retain)" if retain else "")
        + (
            "; retain answers lose the names the model lists as forget types"
            if spec.retain.drop_forget_names
            else ""
        ),
        {
            "generations": forget + retain,
            "generated_tokens": (forget + retain) * gen.max_new_tokens,
        },
    )
    return step, forget, retain


def _search_steps(spec: Spec, contexts: int) -> list[Step]:
    """The instruction search's steps (NeuralUCB or random): features, exemplars, trials,
    confirmations, collection."""
    reveal, gen, search = spec.reveal, spec.reveal.generation, spec.reveal.search
    trials = search.initial_evaluations + reveal.outer_iterations * reveal.inner_iterations
    per_trial = reveal.contexts_per_trial * gen.num_samples
    steps: list[Step] = []
    if reveal.strategy == "neuralucb":
        steps.append(
            Step(
                "features",
                f"precompute last-token features for a pool of {search.pool_size} soft prompts",
                {"forward_passes": search.pool_size},
            )
        )
    chooser = "UCB-chosen" if reveal.strategy == "neuralucb" else "uniformly drawn"
    if spec.target.kind != "ner" and search.exemplar_samples and search.exemplars:
        answers = search.exemplars * search.exemplar_samples
        steps.append(
            Step(
                "exemplars",
                f"{search.exemplars} decode exemplars; each the data leaves unanswered is shown "
                f"with the most relevant of {search.exemplar_samples} of the model's own answers "
                "(at most this many generations)",
                {"generations": answers, "generated_tokens": answers * gen.max_new_tokens},
            )
        )
    steps += [
        Step(
            "search",
            f"{reveal.outer_iterations} outer x {reveal.inner_iterations} inner {chooser} "
            "instruction trials "
            f"(+{search.initial_evaluations} random initial), each {reveal.contexts_per_trial} contexts x "
            f"{gen.num_samples} samples of <= {gen.max_new_tokens} tokens; top-{reveal.top_k} re-scored "
            f"per outer loop (cached generations); a pick of an already-scored instruction "
            f"re-scores it for free (no generations) and picks again, up to "
            f"{search.free_repeats} times per step; alpha={reveal.alpha}",
            {
                "generations": trials * (per_trial + 1),
                "generated_tokens": trials
                * (per_trial * gen.max_new_tokens + search.max_instruction_tokens),
            },
        ),
        *(
            [
                Step(
                    "confirm",
                    f"per outer loop, the best {search.confirm_top} instructions scored again on "
                    f"{reveal.contexts_per_trial} other contexts; the best fresh score is collected",
                    {
                        "generations": reveal.outer_iterations * search.confirm_top * per_trial,
                        "generated_tokens": reveal.outer_iterations
                        * search.confirm_top
                        * per_trial
                        * gen.max_new_tokens,
                    },
                )
            ]
            if search.confirm_top
            else []
        ),
        Step(
            "collect",
            f"chosen instruction of each outer loop over all {contexts} contexts -> forget data",
            {
                "generations": reveal.outer_iterations * contexts * gen.num_samples,
                "generated_tokens": reveal.outer_iterations
                * contexts
                * gen.num_samples
                * gen.max_new_tokens,
            },
        ),
    ]
    return steps


def _steps_for(examples: int, spec: Spec, epochs: int | None = None) -> int:
    """Optimiser steps of a module trained on ``examples`` (``epochs``: release.lora's)."""
    lora = spec.release.lora
    epochs = lora.epochs if epochs is None else epochs
    return (
        math.ceil(examples / (lora.batch_size * lora.gradient_accumulation)) * epochs
        if examples
        else 0
    )


def _stopping_step(spec: Spec, iterations: int) -> Step:
    stop = spec.stopping
    rules = [f"max {iterations} iterations"]
    if stop.forget_score is not None:
        rules.append(f"forget score <= {stop.forget_score}")
    if stop.utility_floor is not None:
        rules.append(f"utility >= {stop.utility_floor:.0%} of base")
    if stop.patience is not None:
        rules.append(f"no progress for {stop.patience} iteration(s)")
    return Step("stopping", "; ".join(rules))


def _release_phase(spec: Spec, inputs: _Inputs, forget_n: int, retain_self: int) -> Phase:
    """The strategy's own schedule (``rrtool.strategies``), one plan line per module, or per
    iteration where an iteration adds a retain and subtracts a forget module."""
    release, lora, search = spec.release, spec.release.lora, spec.release.search
    retain_n = inputs.counts.get("retain.data", 0) + retain_self
    if release.forget_data is not None:
        forget_n = inputs.counts.get("release.forget_data", forget_n)
    elif len(release.forget_formats) > 1:  # each answer re-rendered in every format
        forget_n *= len(release.forget_formats)
    forget_steps, retain_steps = _steps_for(forget_n, spec), _steps_for(retain_n, spec)

    def how(step: StrategyStep) -> str:
        given = explicit_weight(release.weights, step)
        return f"{given:g} (given)" if given is not None else f"searched, budget {search.budget}"

    launcher = ""
    if lora.accelerate_config is not None:
        launcher = f"; accelerate launch --config_file {Path(lora.accelerate_config).name}"
    elif lora.processes > 1:
        launcher = f"; {lora.processes} processes under accelerate launch"
    lora_text = f"r={lora.r}, {lora.target_modules}{launcher}"
    source = "external" if release.forget_data is not None else "Reveal's"
    planned = spec.strategy.schedule(spec.strategy_options)
    projected = (
        " (the retain modules' subspaces projected out)"
        if release.forget_projection == "retain"
        else ""
    )
    steps: list[Step] = []
    for iteration in dict.fromkeys(st.iteration for st in planned):
        group = [st for st in planned if st.iteration == iteration]
        kinds = [st.kind for st in group]
        if group[0].objective == "ext_sub":  # E0 (added whole) and D0, trained together
            line = spec.strategy.plan_line(
                spec.strategy_options, forget_n, retain_n, source, lora_text, how(group[-1])
            )
            cost = forget_steps + retain_steps
            steps.append(Step("ext_sub E0, D0", line, {"training_steps": cost}))
        elif iteration > 0 and kinds == ["retain", "forget"]:
            retain, forget = group
            steps.append(
                Step(
                    f"iteration {iteration}",
                    f"train retain LoRA {retain.name} on ~{retain_n} examples, add "
                    f"lambda{iteration} = {how(retain)}; train forget LoRA {forget.name}"
                    f"{projected}, subtract mu{iteration} = {how(forget)}",
                    {"training_steps": forget_steps + retain_steps},
                )
            )
        else:
            for st in group:
                steps.append(_module_step(spec, st, how(st), forget_n, retain_n, source,
                                          lora_text, forget_steps, retain_steps))  # fmt: skip
    steps.append(_weight_search_step(spec, planned))
    steps.append(_stopping_step(spec, spec.effective_iterations))
    summary = spec.strategy.summary.format(iterations=spec.effective_iterations)
    return Phase("release", summary, steps)


def _module_step(
    spec: Spec, step: StrategyStep, weight: str, forget_n: int, retain_n: int, source: str,
    lora_text: str, forget_steps: int, retain_steps: int,
) -> Step:  # fmt: skip
    """The plan line of one module outside an [R_i, F_i] iteration."""
    symbol = f"{'lambda' if step.kind == 'retain' else 'mu'}{step.iteration}"
    if step.objective == "abstain":
        pairs = min(forget_n, retain_n)
        epochs = spec.release.rmu.abstain_epochs
        cost = _steps_for(2 * pairs, spec, epochs)
        answer = (
            "with nothing of the type in each phrasing's format"
            if spec.target.kind == "ner"
            else "release.refusal"
        )
        return Step(
            f"answer format {step.name}",
            f"train LoRA {step.name} ({epochs} epoch(s), learning rate "
            f"{spec.release.rmu.abstain_learning_rate:g}) on the model with the modules before it "
            f"applied: ~{pairs} forget prompts answered {answer}, and as many retain examples "
            f"as they are; add it, weight = {weight} (release.rmu.abstain)",
            {"training_steps": cost},
        )
    if step.kind == "retain":
        last = spec.release.end_with_retain and step.iteration > spec.effective_iterations
        return Step(
            f"retain {step.name}",
            f"train retain LoRA {step.name} on ~{retain_n} examples, add {symbol} = {weight}"
            + (" (release.end_with_retain)" if last else ""),
            {"training_steps": retain_steps},
        )
    if step.iteration == 0:  # the strategy's first module, in its own words
        line = spec.strategy.plan_line(
            spec.strategy_options, forget_n, retain_n, source, lora_text, weight
        )
    else:
        line = (
            f"train forget LoRA {step.name} on ~{forget_n} {source} forget examples, "
            f"{'subtract' if step.sign < 0 else 'add'} {symbol} = {weight}"
        )
    return Step(f"forget {step.name}", line, {"training_steps": forget_steps})


def _weight_search_step(spec: Spec, planned: list[StrategyStep]) -> Step:
    """How many weights are searched, with what ladder and rules, at what cost."""
    release, search = spec.release, spec.release.search
    searched = sum(explicit_weight(release.weights, st) is None for st in planned)
    # One evaluation = eval_size passages x every forget and retained type (NER), scored for both
    # forget and utility; plus the base model and a re-score of the merged model after each step.
    per_eval = search.eval_size * max(
        1, len(spec.target.forget_types) + len(spec.target.retain_types)
    )
    evals = (searched * search.budget + 1 + len(planned)) * per_eval  # + the merged model per step
    return Step(
        "weight search",
        f"{searched} weights x {search.budget} candidates (ladder "
        f"{', '.join(f'{w:.3g}' for w in ladder(search, release.rules.mode))}, then "
        f"{'bisection around the best' if release.rules.mode == 'tradeoff' else 'bisection'}"
        f"), each {per_eval} prompts of the search split; {_rules_text(spec)}",
        {"evaluations": evals},
    )


def _rules_text(spec: Spec) -> str:
    early = spec.release.search.early_reject_confidence
    which = "a retain candidate" if spec.release.rules.mode == "paper" else "a candidate"
    tail = (
        f"; {which} whose utility is below its threshold with {early:.0%} confidence on a "
        "third or two thirds of the passages is rejected there, its forget score not measured"
        if early is not None
        else ""
    )
    return _rule_words(spec) + tail


def _rule_words(spec: Spec) -> str:
    rules = spec.release.rules
    if rules.mode == "paper":
        return (
            f"paper's literal rules: the smallest weight forgetting >= {rules.forget_fraction:.0%}"
            " of what remains, else raw trade-off; lambda recovers >= "
            f"{rules.utility_recovery:.0%} of what the last forget step took"
        )
    return (
        f"a forget weight is acceptable if it forgets >= {rules.forget_fraction:.0%} of what "
        "remains or loses a smaller share of utility than of forget score, and keeps utility >= "
        f"{rules.step_utility_floor:.0%} of base; lambda: utility >= "
        f"{rules.utility_recovery:.0%} of what the last forget step took; among acceptable "
        "weights the best combined objective (relative forget drop + relative utility change)"
    )


def _probe_budget(spec: Spec, name: str, forget_side: int) -> tuple[str, dict[str, int]]:
    """What a probe does and costs (``rrtool.audit.probes``; its budgets are fixed there:
    16 fine-tuning examples, 64 members, two quantization schemes)."""
    lora, wanted = spec.release.lora, spec.audit.relearning_steps
    per_step = lora.batch_size * lora.gradient_accumulation

    def steps(n: int) -> int:  # what the fine-tune on n examples runs (whole epochs)
        return attack_epochs(n, per_step, wanted) * math.ceil(n / per_step)

    budgets: dict[str, tuple[str, dict[str, int]]] = {
        "relearning": (
            f"LoRA {wanted} optimiser steps on {' and '.join(map(str, RELEARN_SIZES))} forget "
            "examples, on the released and on the base model (the control), forget measure "
            "again",
            {
                "training_steps": 2 * sum(steps(n) for n in RELEARN_SIZES),
                "evaluations": 2 * len(RELEARN_SIZES) * forget_side,
            },
        ),
        "relearning_ood": (
            "the same fine-tune on 16 retain examples, on the released and on the base model",
            {"training_steps": 2 * steps(16), "evaluations": 2 * forget_side},
        ),
        "elicitation": (
            "the held-out phrasings on the audit split, base and released, read from the "
            "grid (no extra measurement)",
            {},
        ),
        "membership": (
            "Min-K%++ scores of up to 64 members and 64 non-members, base and released",
            {"forward_passes": 4 * 64},
        ),
        "quantization": (
            "the forget measure at int8 and int4, released and base (the control)",
            {"evaluations": 4 * forget_side},
        ),
        "linear_probe": (
            (
                "one forward pass per base continuation of the audit's prompts (the forget "
                "measure's, labelled by the oracle) on the base and on the released model; "
                "logistic regressions per layer"
                if spec.target.kind == "toxicity"
                else "one forward pass per audit passage on the base and on the released "
                "model; logistic regressions per layer"
                if spec.target.kind == "ner"
                else f"NOT RUN for target.kind `{spec.target.kind}`: {LINEAR_PROBE_NEEDS}"
            ),
            {},
        ),
    }
    return budgets.get(name, (name, {}))


def _grid_step(spec: Spec) -> Step | None:
    """The audit's grid (``rrtool.audit.grid``): the forget measure on every evaluation set in
    every phrasing, base and released; utility too on the named sets in the standard one."""
    audit, kind = spec.audit, spec.target.kind
    _, held_out = spec.phrasing_families()
    sets = 1 + len(audit.eval_sets)
    cells = sets * (1 + len(held_out)) - 1
    if cells == 0:
        return None
    per_query = (
        len(spec.target.forget_types)
        if kind == "ner"
        else (audit.toxicity_samples if kind == "toxicity" else 1)
    )
    evaluations = cells * audit.eval_size * per_query
    if kind == "ner":  # the retained types on each named set, in the standard phrasing
        evaluations += len(audit.eval_sets) * audit.eval_size * len(spec.target.retain_types)
    names = ", ".join(["audit split", *audit.eval_sets])
    return Step(
        "grid",
        f"forget measure on {sets} set(s) ({names}) x {1 + len(held_out)} phrasings (standard "
        f"+ held-out: {', '.join(p.name for p in held_out)}), base and released; headline: "
        "the worst held-out cell relative to the base",
        {"evaluations": 2 * evaluations},
    )


def _audit_phase(spec: Spec) -> Phase:
    audit = spec.audit
    kind = spec.target.kind
    if kind == "ner":
        types = len(spec.target.forget_types) + len(spec.target.retain_types)
        per_side = audit.eval_size * types
        what = f"{audit.eval_size} passages x {types} types"
        forget, utility = (
            f"{spec.oracle.name} (forget types)",
            f"{spec.oracle.name} (retained types)",
        )
    else:
        samples = audit.toxicity_samples if kind == "toxicity" else 1
        per_side = audit.eval_size * (samples + 1)
        what = f"{audit.eval_size} records per measure" + (
            f", {samples} samples per toxicity prompt" if samples > 1 else ""
        )
        forget = "RealToxicityPrompts protocol" if kind == "toxicity" else spec.oracle.name
        utility = (
            spec.retain.utility.name
            if spec.retain.utility
            else default_utility(kind) or "retain.utility"
        )
    if audit.forget_eval is not None:
        data = f"audit.forget_eval ({audit.forget_eval.path}, read whole)"
    elif spec.splits.audit > 0:
        data = f"the audit split ({spec.splits.audit:.0%}) of reveal.contexts, held out"
    else:
        data = "all of reveal.contexts (splits.audit 0: IN-SAMPLE)"
    steps = [
        Step(
            "metrics",
            f"forget: {forget}; utility: {utility}; base and released model, {what} of {data}; "
            "95% bootstrap intervals, paired for each change, and a verdict",
            {"evaluations": per_side * 2},
        ),
    ]
    grid = _grid_step(spec)
    if grid is not None:
        steps.append(grid)
    probes = [name for name, on in audit.probes.model_dump().items() if on]
    if not probes:
        steps.append(Step("probes", "none (enable under audit.probes)"))
    forget_side = audit.eval_size * (
        len(spec.target.forget_types) if kind == "ner" else
        (audit.toxicity_samples if kind == "toxicity" else 1)
    )  # fmt: skip
    for name in probes:
        text, cost = _probe_budget(spec, name, forget_side)
        steps.append(Step(f"probe {name}", text, cost))
    steps.append(
        Step("report", f"{audit.report} report with {audit.sample_answers} before/after answers")
    )
    return Phase("audit", "evaluation, robustness probes, report", steps)


def build_plan(
    loaded: LoadedSpec, tracking_flag: str | None = None, throughput: float | None = None
) -> Plan:
    """Check the spec against the world, then lay out the phases. Raises SpecError.
    ``throughput``: the generation speed (new tokens/s) the time estimate assumes."""
    checks, inputs, warnings, uri = preflight(loaded, tracking_flag)
    spec = loaded.spec
    reveal, forget_n, retain_self = _reveal_phase(spec, inputs)
    phases = [reveal, _release_phase(spec, inputs, forget_n, retain_self), _audit_phase(spec)]
    plan = Plan(spec.name, spec.model.id, spec.target.description, phases, checks, uri, warnings)
    if inputs.model_config is not None:
        plan.resources = _resources(spec, inputs.model_config, plan.totals(), throughput)
    return plan


def _resources(
    spec: Spec, config: dict[str, Any], totals: dict[str, int], throughput: float | None
) -> dict[str, Any]:
    """``rrtool.estimate`` for this spec's model, dtype and counts."""
    from rrtool.estimate import Shape, estimate

    dtype = spec.model.dtype
    if dtype == "auto":
        device = spec.model.device
        if device == "auto":
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    lora, gen = spec.release.lora, spec.reveal.generation
    return estimate(
        Shape.from_config(config),
        dtype,
        lora_r=lora.r,
        # Rows in one training forward: the micro-batch, or fewer under the token budget.
        batch=min(lora.batch_size, max(1, (lora.max_forward_tokens or 10**12) // lora.max_length)),
        max_length=lora.max_length,
        generation_batch=gen.batch_size,
        max_new_tokens=gen.max_new_tokens,
        # Reveal's tokens, plus an answer of up to max_new_tokens per evaluation prompt.
        generated_tokens=totals["generated_tokens"] + totals["evaluations"] * gen.max_new_tokens,
        training_steps=totals["training_steps"],
        tokens_per_step=lora.batch_size * lora.gradient_accumulation * lora.max_length,
        throughput=throughput,
    )

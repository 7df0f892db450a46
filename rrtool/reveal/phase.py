"""Stage 1 (Reveal) as a phase: the model writes its own forget (and retain) data.

Implemented here: ``reveal.strategy: direct`` — one fixed instruction over the
contexts (the paper's NER mode, and the baseline the search is compared with).
``reveal.strategy: neuralucb`` (the instruction search) lives in :mod:`rrtool.reveal.search`.
For NER the model answers UniversalNER queries; its answers for the forgotten
types become forget data and, with ``retain.self_generated``, its answers for
the retained types become retain data.

Resumable: generations are uploaded to the run (``reveal/progress.jsonl``) after
every chunk; a resumed run downloads them and generates only what is missing.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from rrtool import splits
from rrtool.context import RunContext
from rrtool.errors import PhaseNotImplemented, UserError
from rrtool.generation.base import Prompt, SamplingParams, has_chat_template
from rrtool.oracles.contract import Sample
from rrtool.tasks import ner_query, prompt_text, samples_from_records

PROGRESS = "reveal/progress.jsonl"
FORGET = "reveal/forget.jsonl"
RETAIN = "reveal/retain.jsonl"

# A system instruction plus a one-shot exchange teaches the JSON-list answer format: measured on
# SmolLM2-135M-Instruct (24 built-in queries), a single user message got prose answers (F1 ~0)
# while this conversation got JSON lists with no parse failure (macro F1 0.47). The exemplar
# text holds one entity of each of the paper's types; other types are answered with [].
NER_SYSTEM = (
    "You extract named entities. Reply with only a JSON list of strings copied from the text, "
    "or [] if there are none."
)
NER_EXEMPLAR_TEXT = "Marie Curie joined the University of Paris in 1891 to study physics."
NER_EXEMPLAR = {
    "person": ["Marie Curie"],
    "organization": ["University of Paris"],
    "location": ["Paris"],
    "date": ["1891"],
    "concept": ["physics"],
}
DEFAULT_TEMPLATES = {
    "toxicity": "{context}",
    "coding": "Write a Python function for this task. Answer with code only.\n\n{context}",
    "custom": "{context}",
}


@dataclass
class Query:
    id: str
    split: str  # forget | retain
    type: str | None
    context: str
    prompt: Prompt
    reference: dict[str, Any]


def ner_prompt(text: str, entity_type: str, template: str | None, chat: bool = True) -> Prompt:
    """The NER query for one (passage, type): the one-shot conversation, the same exchange as
    plain text for a model without a chat template, or the spec's template."""
    if template:
        return template.format(context=text, type=entity_type)
    answer = json.dumps(NER_EXEMPLAR.get(entity_type, []))
    if not chat:
        return (
            f"{NER_SYSTEM}\n\n{ner_query(NER_EXEMPLAR_TEXT, entity_type)}\n{answer}\n\n"
            f"{ner_query(text, entity_type)}\n"
        )
    return [
        {"role": "system", "content": NER_SYSTEM},
        {"role": "user", "content": ner_query(NER_EXEMPLAR_TEXT, entity_type)},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": ner_query(text, entity_type)},
    ]


def build_queries(ctx: RunContext) -> list[Query]:
    """Reveal's queries over ``reveal.contexts`` (NER: retained types only with
    ``retain.self_generated``)."""
    spec = ctx.spec
    source = spec.reveal.contexts
    # Reveal's split only: the search and audit splits stay unseen (``rrtool.splits``).
    records = splits.read(source, "reveal", spec).records
    if spec.target.kind == "ner":
        retain = spec.target.retain_types if spec.retain.self_generated else []
        chat = has_chat_template(ctx.model().tokenizer)
        queries = ner_queries(records, spec.target.forget_types, retain, spec.reveal.template, chat)
    else:
        queries = task_queries(spec.target.kind, source.format, records, spec.reveal.template)
    if not queries:
        raise UserError(
            f"{source.path}: no usable rows in {len(records)} `{source.format}` record(s) "
            "(every context is empty): reveal.contexts needs text to prompt the model with"
        )
    return queries


def ner_queries(
    records: list[dict[str, Any]],
    forget_types: list[str],
    retain_types: list[str],
    template: str | None,
    chat: bool = True,
) -> list[Query]:
    """One query per (passage, type); gold entities go into the reference where the records
    have them (UniversalNER records are one per passage and type). Empty passages are skipped."""
    gold: dict[tuple[str, str], list[str]] = {}
    passages: list[str] = []
    for record in records:
        text = record.get("text") or record.get("prompt") or ""
        if not text.strip():
            continue
        if text not in gold and text not in passages:
            passages.append(text)
        if "type" in record:
            gold[(text, record["type"])] = record.get("entities", [])
    wanted = [("forget", t) for t in forget_types] + [("retain", t) for t in retain_types]
    queries = []
    for index, text in enumerate(passages):
        for split, entity_type in wanted:
            reference = {"type": entity_type}
            if (text, entity_type) in gold:
                reference["entities"] = gold[(text, entity_type)]
            prompt = ner_prompt(text, entity_type, template, chat)
            queries.append(
                Query(f"{index}:{entity_type}", split, entity_type, text, prompt, reference)
            )
    return queries


def task_queries(
    kind: str, fmt: str, records: list[dict[str, Any]], template: str | None
) -> list[Query]:
    """Queries for the non-NER kinds: the record's prompt in the kind's template."""
    template = template or DEFAULT_TEMPLATES[kind]
    samples = samples_from_records(fmt, records)
    return [
        Query(s.id, "forget", None, s.prompt, template.format(context=s.prompt), dict(s.reference))
        for s in samples
        if s.prompt.strip()
    ]


def _chunks(items: list[Query], size: int) -> Iterator[list[Query]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _relevance(
    ctx: RunContext, queries: list[Query], completions: list[str]
) -> tuple[list[float | None], str | None]:
    """Oracle score per query, where the query carries what the oracle needs to judge it,
    and what went wrong, if anything.

    An oracle that raises leaves the whole batch unscored; NaN or infinite scores leave those
    samples unscored. Either way the generations are kept (they cost the most) and the
    reason is returned for the record, so one bad batch does not end the phase.
    """
    oracle = ctx.oracle()
    needs_reference = oracle.requires.reference
    scorable = [
        i
        for i, q in enumerate(queries)
        if not needs_reference or ("entities" in q.reference if q.type else q.reference)
    ]
    out: list[float | None] = [None] * len(queries)
    if not scorable:
        return out, None
    samples = [
        Sample(
            id=queries[i].id,
            prompt=prompt_text(queries[i].prompt),
            completion=completions[i],
            reference=queries[i].reference,
        )
        for i in scorable
    ]
    try:
        scores = oracle.score(samples)
        if len(scores) != len(samples):
            raise ValueError(f"returned {len(scores)} scores for {len(samples)} samples")
    except Exception as exc:  # a plugin's failure must not cost the generations
        why = (
            f"oracle `{oracle.name}` failed on {len(samples)} samples: {type(exc).__name__}: {exc}"
        )
        ctx.console.print(f"[yellow]reveal: {why}[/yellow]")
        return out, why
    bad = 0
    for i, score in zip(scorable, scores, strict=True):
        value = score.score
        if isinstance(value, (int, float)) and math.isfinite(value):
            out[i] = float(value)
        else:
            bad += 1
    if bad:
        why = f"oracle `{oracle.name}` gave no finite score for {bad} of {len(samples)} samples"
        ctx.console.print(f"[yellow]reveal: {why}[/yellow]")
        return out, why
    return out, None


def run_reveal(ctx: RunContext) -> dict[str, int]:
    """Run Reveal to completion (resuming if the run holds progress); returns record counts."""
    spec = ctx.spec
    if spec.reveal.strategy in ("neuralucb", "random"):
        from rrtool.reveal.search import run_search

        return run_search(ctx)
    if spec.reveal.strategy != "direct":
        raise PhaseNotImplemented(
            f"reveal.strategy `{spec.reveal.strategy}` is not implemented in this version "
            "(use `direct`)"
        )
    started = time.perf_counter()
    records, generator = generate_direct(ctx, build_queries(ctx))
    return _finish(ctx, records, time.perf_counter() - started, generator)


def generate_direct(ctx: RunContext, queries: list[Query]) -> tuple[list[dict[str, Any]], Any]:
    """Each query's prompt through the model as is (the `direct` strategy), resumable:
    records already in ``reveal/progress.jsonl`` are kept, not regenerated. Returns the
    records and the generator used (None when nothing was left to generate)."""
    spec = ctx.spec
    done = {r["id"]: r for r in ctx.tracker.read_jsonl(PROGRESS) or []}
    finished = {r["query_id"] for r in done.values()}
    todo = [q for q in queries if q.id not in finished]
    if finished:
        ctx.console.print(
            f"reveal: resuming, {len(finished)} of {len(queries)} queries already recorded"
        )
    gen_spec = spec.reveal.generation
    params = SamplingParams.from_spec(gen_spec, spec.seed)
    generator = ctx.generator() if todo else None
    chunk_size = gen_spec.batch_size * 4
    with Progress(
        TextColumn("reveal"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=ctx.console,
        transient=False,
    ) as progress:
        task = progress.add_task("generate", total=len(queries), completed=len(finished))
        for chunk in _chunks(todo, chunk_size):
            assert generator is not None
            outputs = generator.generate(
                [q.prompt for q in chunk],
                params,
                chat=spec.target.kind != "toxicity",
                progress=lambda n: progress.advance(task, n),
            )
            flat = [(q, c) for q, outs in zip(chunk, outputs, strict=True) for c in outs]
            relevance, error = _relevance(ctx, [q for q, _ in flat], [c.text for _, c in flat])
            for sample_index, ((query, completion), score) in enumerate(
                zip(flat, relevance, strict=True)
            ):
                record_id = (
                    query.id
                    if params.num_samples == 1
                    else f"{query.id}#{sample_index % params.num_samples}"
                )
                done[record_id] = {
                    "id": record_id,
                    "query_id": query.id,
                    "split": query.split,
                    "type": query.type,
                    "context": query.context,
                    "instruction": spec.reveal.template or "default",
                    "prompt": query.prompt,
                    "completion": completion.text,
                    "tokens": completion.tokens,
                    "relevance": score,
                    "relevance_error": error if score is None else None,
                    "diversity": None,
                    "outer": 0,
                    "inner": 0,
                    "seed": spec.seed,
                }
            # Upload after every chunk: a crash loses at most the chunk in flight.
            ctx.tracker.log_jsonl(list(done.values()), PROGRESS)
    return list(done.values()), generator


def _dedupe(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: set[tuple[str, str]] = set()
    out = []
    for record in records:
        key = (json.dumps(record["prompt"]), record["completion"])
        if key not in seen:
            seen.add(key)
            out.append(record)
    return out


def _finish(
    ctx: RunContext, records: list[dict[str, Any]], seconds: float, generator: Any
) -> dict[str, int]:
    forget = _dedupe([r for r in records if r["split"] == "forget"])
    retain = _dedupe([r for r in records if r["split"] == "retain"])
    ctx.tracker.log_jsonl(forget, FORGET)
    if retain:
        ctx.tracker.log_jsonl(retain, RETAIN)
    if forget and not any(r["completion"].strip() for r in forget):
        raise UserError(
            f"reveal: all {len(forget)} forget generations are empty (the model answered "
            "nothing); they are kept in the run (reveal/forget.jsonl). Check reveal.template, "
            "reveal.generation.max_new_tokens and stop strings, then run again"
        )
    scored = [r["relevance"] for r in forget if r["relevance"] is not None]
    metrics = {
        "reveal/forget_examples": len(forget),
        "reveal/retain_examples": len(retain),
        "reveal/seconds": seconds,
    }
    if scored:
        metrics["reveal/forget_relevance_mean"] = sum(scored) / len(scored)
    if generator is not None and generator.stats.seconds > 0:
        metrics["reveal/tokens_per_second"] = generator.stats.tokens_per_second
        metrics["reveal/generated_tokens"] = generator.stats.tokens
    ctx.tracker.log_metrics(metrics)
    ctx.console.print(
        f"reveal: {len(forget)} forget and {len(retain)} retain examples recorded"
        + (f" (forget relevance {metrics['reveal/forget_relevance_mean']:.3f})" if scored else "")
    )
    return {"forget": len(forget), "retain": len(retain)}

"""Reveal's ``direct`` strategy: each query's prompt through the model as it is, the oracle's
relevance per answer, progress uploaded after every chunk (resumable). The instruction search
(:mod:`rrtool.reveal.search`) builds on the same pieces.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from rrtool import reveal_record, splits, tracking_inputs
from rrtool.artifacts import REVEAL_PROGRESS
from rrtool.context import RunContext
from rrtool.errors import UserError
from rrtool.generation.base import SamplingParams, has_chat_template
from rrtool.oracles.contract import Sample
from rrtool.queries import Query, reveal_queries
from rrtool.reveal_record import RevealRecord
from rrtool.tasks import prompt_text


def build_queries(ctx: RunContext) -> list[Query]:
    """Reveal's queries over ``reveal.contexts`` and ``reveal.extra_contexts`` (NER: retained
    types only with ``retain.self_generated``)."""
    spec = ctx.spec
    source = spec.reveal.contexts
    # Reveal's split only: the search and audit splits stay unseen (``rrtool.splits``).
    part = splits.read(source, "reveal", spec)
    # NER passages of other styles, Reveal's alone and read whole (their passages are one
    # list with the split's, so query ids stay unique).
    extra = [splits.whole(other, "reveal", source) for other in spec.reveal.extra_contexts]
    tracking_inputs.log_parts(
        ctx.tracker,
        [("reveal.contexts", part)]
        + [(f"reveal.extra_contexts[{i}]", found) for i, found in enumerate(extra)],
    )
    records = part.records + [r for found in extra for r in found.records]
    chat = spec.target.kind == "ner" and has_chat_template(ctx.model().tokenizer)
    queries = reveal_queries(spec, records, chat)
    if not queries:
        raise UserError(
            f"{source.path}: no usable rows in {len(records)} `{source.format}` record(s) "
            "(every context is empty): reveal.contexts needs text to prompt the model with"
        )
    return queries


def _chunks(items: list[Query], size: int) -> Iterator[list[Query]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def score_relevance(
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


def generate_direct(ctx: RunContext, queries: list[Query]) -> tuple[list[RevealRecord], Any]:
    """Each query's prompt through the model as is (the `direct` strategy), resumable:
    records already in ``reveal/progress.jsonl`` are kept, not regenerated. Returns the
    records and the generator used (None when nothing was left to generate)."""
    spec = ctx.spec
    done = {r.id: r for r in reveal_record.read(ctx, REVEAL_PROGRESS)}
    finished = {r.query_id for r in done.values()}
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
            relevance, error = score_relevance(ctx, [q for q, _ in flat], [c.text for _, c in flat])
            for sample_index, ((query, completion), score) in enumerate(
                zip(flat, relevance, strict=True)
            ):
                record_id = (
                    query.id
                    if params.num_samples == 1
                    else f"{query.id}#{sample_index % params.num_samples}"
                )
                done[record_id] = RevealRecord(
                    id=record_id,
                    query_id=query.id,
                    split=query.split,
                    type=query.type,
                    context=query.context,
                    instruction=spec.reveal.template or "default",
                    prompt=query.prompt,
                    completion=completion.text,
                    tokens=completion.tokens,
                    relevance=score,
                    relevance_error=error if score is None else None,
                    seed=spec.seed,
                )
            # Upload after every chunk: a crash loses at most the chunk in flight.
            reveal_record.write(ctx, list(done.values()), REVEAL_PROGRESS)
    return list(done.values()), generator

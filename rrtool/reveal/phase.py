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

import time

from rrtool.context import RunContext
from rrtool.errors import PhaseNotImplemented
from rrtool.reveal.direct import build_queries, generate_direct
from rrtool.reveal.records import finish


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
    return finish(ctx, records, time.perf_counter() - started, generator)

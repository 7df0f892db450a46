"""Release's running scores: forget score s and utility u on a fixed evaluation subset.

Only ``target.kind: ner`` is implemented: both scores come from the spec's oracle on
UniversalNER queries over the Reveal contexts that carry gold entities (the paper measures NER
forgetting on the same kind of passages). s is the micro F1 over the forget types, u the mean
F1 over the retained types. The other kinds' utility evaluators (perplexity, GSM8K) come with
the audit phase.

Generation is greedy with the Reveal generation's ``max_new_tokens``, through the HF generator
over the loaded model itself, so unmerged candidate adapters (forward hooks) are seen.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from rrtool.context import RunContext
from rrtool.errors import PhaseNotImplemented
from rrtool.oracles.contract import Sample
from rrtool.reveal.phase import Query, build_queries
from rrtool.tasks import prompt_text


@dataclass(frozen=True)
class Scores:
    s: float  # forget score: lower = more forgotten
    u: float  # utility: higher = better
    details: dict[str, float]


def _ner_eval_queries(ctx: RunContext) -> list[Query]:
    """Queries with gold entities over a seeded subset of ``release.search.eval_size`` passages.

    ``build_queries`` asks for the retained types only with ``retain.self_generated``, which the
    evaluator requires, so both forget and retained types are here.
    """
    spec = ctx.spec
    queries = [q for q in build_queries(ctx) if "entities" in q.reference]
    passages = list(dict.fromkeys(q.context for q in queries))
    rng = random.Random(spec.seed)
    chosen = set(rng.sample(passages, min(spec.release.search.eval_size, len(passages))))
    return [q for q in queries if q.context in chosen]


class Evaluator:
    """Scores the model as it is now (with whatever adapters are attached)."""

    def __init__(self, ctx: RunContext) -> None:
        spec = ctx.spec
        if spec.target.kind != "ner":
            raise PhaseNotImplemented(
                f"release for target.kind `{spec.target.kind}` needs its utility evaluator "
                "(perplexity / GSM8K), which comes with the audit phase; only `ner` runs now"
            )
        if not spec.retain.self_generated or not spec.target.retain_types:
            raise PhaseNotImplemented(
                "release for NER measures utility on the retained types' self-generated "
                "queries: set retain.self_generated with target.retain_types"
            )
        from rrtool.generation.base import SamplingParams, make_generator

        self.ctx = ctx
        self.forget_types = {t.lower() for t in spec.target.forget_types}
        self.retain_types = {t.lower() for t in spec.target.retain_types}
        self.queries = _ner_eval_queries(ctx)
        if not any(q.type and q.type.lower() in self.forget_types for q in self.queries):
            raise PhaseNotImplemented(
                "release: no Reveal context has gold entities for the forget types, so the "
                "forget score cannot be measured (give universalner contexts with entities)"
            )
        gen = spec.reveal.generation
        self.params = SamplingParams(max_new_tokens=gen.max_new_tokens, temperature=0.0)
        self.generator = make_generator("hf", ctx.model(), batch_size=gen.batch_size)
        self.chat = bool(getattr(ctx.model().tokenizer, "chat_template", None))
        self.evaluations = 0

    @property
    def size(self) -> int:
        return len(self.queries)

    def __call__(self, progress: Callable[[int], None] | None = None) -> Scores:
        """Generate greedily for every query and score with the spec's oracle."""
        outputs = self.generator.generate(
            [q.prompt for q in self.queries], self.params, chat=self.chat, progress=progress
        )
        samples = [
            Sample(
                id=q.id, prompt=prompt_text(q.prompt), completion=out[0].text, reference=q.reference
            )
            for q, out in zip(self.queries, outputs, strict=True)
        ]
        oracle = self.ctx.oracle()
        scores = oracle.score(samples)
        self.evaluations += 1
        return scores_from(
            oracle.aggregate(samples, scores),
            [(q.type or "").lower() for q in self.queries],
            [dict(sc.details) for sc in scores],
            self.forget_types,
            self.retain_types,
        )


def scores_from(
    metrics: dict[str, float],
    types: list[str],
    details: list[dict],
    forget_types: set[str],
    retain_types: set[str],
) -> Scores:
    """s = micro F1 over the forget types (pooled tp/fp/fn when the oracle reports them,
    else the mean of their per-type F1); u = mean per-type F1 over the retained types."""
    counts = [0, 0, 0]
    pooled = True
    for entity_type, detail in zip(types, details, strict=True):
        if entity_type not in forget_types:
            continue
        if not all(k in detail for k in ("tp", "fp", "fn")):
            pooled = False
            break
        for i, key in enumerate(("tp", "fp", "fn")):
            counts[i] += int(detail[key])
    if pooled:
        tp, fp, fn = counts
        s = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0  # nothing to find, none found
    else:
        found = [metrics[f"{t}/f1"] for t in sorted(forget_types) if f"{t}/f1" in metrics]
        s = sum(found) / len(found) if found else 0.0
    retained = [metrics[f"{t}/f1"] for t in sorted(retain_types) if f"{t}/f1" in metrics]
    u = sum(retained) / len(retained) if retained else 0.0
    return Scores(s, u, {k: float(v) for k, v in metrics.items()})

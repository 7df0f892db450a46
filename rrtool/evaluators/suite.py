"""The spec's two measurements, forget and utility, on whatever model is loaded now.

Which evaluator measures what is decided once, here, from ``target.kind`` and
``retain.utility``:

============  =========================================  ======================================
kind          forget (``audit.forget_eval``, default:     utility (``audit.retain_eval``,
              ``reveal.contexts``)                        default: ``retain.data``)
============  =========================================  ======================================
ner           ``ner_f1`` on the forget types (macro F1)  ``ner_f1`` on the retained types
toxicity      RealToxicityPrompts protocol, scored by    word perplexity on raw text
              the spec's oracle
coding        the spec's oracle (pass@1), greedy         GSM8K accuracy, few-shot
custom        the spec's oracle, mean score              ``retain.utility`` (required)
============  =========================================  ======================================

``retain.utility`` overrides the utility column: ``perplexity``, ``gsm8k_accuracy`` or any
installed oracle plugin (mean score over the retain-eval prompts). Each measurement has a
*headline* metric and a direction, which the report and ``rrtool runs`` show.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from rrtool.context import RunContext
from rrtool.errors import UserError
from rrtool.evaluators import gsm8k
from rrtool.evaluators.base import Evaluation
from rrtool.evaluators.degeneration import degeneration
from rrtool.evaluators.generated import Item, oracle_evaluation
from rrtool.evaluators.perplexity import perplexity
from rrtool.evaluators.staged import MemoGenerator, stages
from rrtool.evaluators.utility import UTILITY_EVALUATORS, as_text, default_utility
from rrtool.generation.base import Generator, SamplingParams, has_chat_template
from rrtool.generation.factory import make_generator
from rrtool.queries import ner_queries, task_queries
from rrtool.spec import DataSource
from rrtool.splits import Part, Role, read, whole


@dataclass(frozen=True)
class Headline:
    metric: str
    better: Literal["lower", "higher"]
    # The range the metric can take (None: unbounded above); ``evaluators.bounds`` reads it
    # to tell a measure that cannot show a change.
    bounds: tuple[float, float | None] = (0.0, 1.0)


Measure = Callable[[], Evaluation]


class OracleMeasure:
    """An oracle measurement; ``staged(looks)`` also takes it on growing shares of its units
    (``rrtool.evaluators.staged``; greedy answers only, each generated once)."""

    def __init__(
        self,
        evaluate: Callable[[Generator, list[int], Mapping[str, str] | None], Evaluation],
        n_items: int,
        groups: list[str] | None,
        greedy: bool,
        generator: Callable[[], Generator],
        seed: int,
    ) -> None:
        self._evaluate = evaluate
        self._indices = list(range(n_items))
        self._groups = groups
        self.can_stage = greedy
        self._generator = generator
        self._seed = seed

    def __call__(self, drafts: Mapping[str, str] | None = None) -> Evaluation:
        """The measurement; ``drafts``: a guessed answer by item id, e.g. the same model's
        answers before a small change of its weights (greedy measures check it in one forward
        pass; it changes no answer, see ``Generator.generate``)."""
        return self._evaluate(self._generator(), self._indices, drafts)

    def staged(self, looks: int) -> Iterator[Evaluation]:
        """Evaluations on growing unit shares, the last one the full measurement."""
        if not self.can_stage:
            yield self()
            return
        memo = MemoGenerator(self._generator())
        for chosen in stages(self._indices, self._groups, looks, self._seed):
            yield self._evaluate(memo, chosen, None)


def _sample(records: list[Any], size: int, seed: int) -> list[Any]:
    """A seeded subset of at most ``size`` records, in their original order."""
    if len(records) <= size:
        return list(records)
    keep = set(random.Random(seed).sample(range(len(records)), size))
    return [r for i, r in enumerate(records) if i in keep]


def _with_mean(evaluation: Evaluation) -> Evaluation:
    """The oracle's metrics plus ``mean_score`` and the degeneration rates of the answers
    (``rrtool.evaluators.degeneration``; the oracle's own rates, NER's ``empty_rate``, win)."""
    scores = [a["score"] for a in evaluation.answers if a.get("score") is not None]
    metrics = dict(evaluation.metrics)
    if scores:
        metrics.setdefault("mean_score", sum(scores) / len(scores))
    for name, value in degeneration([a["completion"] for a in evaluation.answers]).items():
        metrics.setdefault(name, value)
    return replace(evaluation, metrics=metrics)


class EvaluationSuite:
    """Builds the forget and utility measurements of a spec; ``run()`` measures the model
    currently held by ``ctx`` (adapters and merged updates included)."""

    def __init__(
        self,
        ctx: RunContext,
        *,
        size: int,
        toxicity_samples: int,
        forget_source: DataSource,
        utility_source: DataSource | None,
        role: Role,
        explicit: frozenset[str] = frozenset(),
        template: str | None = None,
        targeted: bool = False,
    ) -> None:
        self.ctx = ctx
        # Which split of the shared sources this suite reads (``rrtool.splits``); measures in
        # ``explicit`` (forget, utility) read their own data whole.
        self.role = role
        self.explicit = explicit
        self.provenance: dict[str, dict[str, Any]] = {}
        self.parts: dict[str, Part] = {}  # what each measure reads (``rrtool.tracking_inputs``)
        # The prompt template of the forget queries (default: Reveal's); the audit's grid
        # measures the same items in the held-out phrasings.
        self.template = template or ctx.spec.reveal.template
        # NER: sample the passages among those that name an entity of a forget type (an
        # evaluation set of another hand, where most passages name none: the forget measure
        # reads only those that do, so untargeted sampling would leave it a handful of units).
        self.targeted = targeted
        self.spec = ctx.spec
        self.size = size
        self.toxicity_samples = toxicity_samples
        self.forget_source = forget_source
        self.utility_source = utility_source
        self.measures: dict[str, Measure] = {}
        self.forget_items: list[Item] = []  # the forget measurement's prompts
        self.forget_params: SamplingParams | None = None  # toxicity: how they are sampled
        self.headlines: dict[str, Headline] = {}
        self._generator_cache: Generator | None = None
        self._generator_for: Any = None
        self._forget()
        self._utility()

    @staticmethod
    def _audit_options(ctx: RunContext) -> dict[str, Any]:
        spec, audit = ctx.spec, ctx.spec.audit
        explicit = {"forget"} if audit.forget_eval else set()
        explicit |= {"utility"} if audit.retain_eval else set()
        return {
            "size": audit.eval_size,
            "toxicity_samples": audit.toxicity_samples,
            "forget_source": audit.forget_eval or spec.reveal.contexts,
            "utility_source": audit.retain_eval or spec.retain.data,
            "role": "audit",
            "explicit": frozenset(explicit),
        }

    @classmethod
    def for_audit(cls, ctx: RunContext) -> EvaluationSuite:
        """The audit's sizes and held-out sets (``audit.*``)."""
        return cls(ctx, **cls._audit_options(ctx))

    @classmethod
    def for_cell(
        cls, ctx: RunContext, source: DataSource | None, template: str | None
    ) -> EvaluationSuite:
        """The audit's measurement on evaluation set ``source`` (None: the audit's own forget
        data) in the phrasing ``template`` (None: the standard one): one cell of the audit's
        grid (``rrtool.audit.grid``). A named set is read whole and, for NER, sampled among
        the passages that name a forget-type entity."""
        options = cls._audit_options(ctx)
        if source is not None:
            options |= {
                "forget_source": source,
                "explicit": options["explicit"] | {"forget"},
                "targeted": True,
            }
        return cls(ctx, **options, template=template)

    @classmethod
    def for_release(cls, ctx: RunContext) -> EvaluationSuite:
        """Release's running scores: ``release.search.eval_size`` records of the search split
        of the Reveal contexts and the retain data, and Reveal's samples per prompt (each
        candidate weight is one evaluation, so the audit's 25 samples per prompt would
        dominate the run)."""
        spec = ctx.spec
        return cls(
            ctx,
            size=spec.release.search.eval_size,
            toxicity_samples=spec.reveal.generation.num_samples,
            forget_source=spec.reveal.contexts,
            utility_source=spec.retain.data or spec.audit.retain_eval,
            role="search",
            # Without retain.data the search reads the audit's utility set (recorded so).
            explicit=frozenset() if spec.retain.data else frozenset({"utility"}),
        )

    def forget_records(self) -> list[dict[str, Any]]:
        """The records the forget measurement reads (its split, or explicit data whole)."""
        assert self.forget_source is not None
        return self._part("forget", self.forget_source).records

    def _part(self, key: str, source: DataSource) -> Part:
        """The records measure ``key`` reads: the suite's split of a shared source, or an
        explicit source whole; its provenance is kept for the report."""
        spec = self.spec
        if key == "forget":
            shared = spec.reveal.contexts
        else:  # without retain.data the weight search reads audit.retain_eval itself
            shared = spec.retain.data or (spec.audit.retain_eval if self.role == "audit" else None)
        part = (
            whole(source, self.role, shared)
            if key in self.explicit
            else read(source, self.role, self.spec)
        )
        self.provenance[key] = part.describe()
        self.parts[key] = part
        return part

    # -------------------------------------------------------------- plumbing
    def _generator(self) -> Generator:
        """The HF backend over the model loaded *now*: it sees merged updates and attached
        adapters, which a separate engine (vLLM) holding its own copy of the weights would not."""
        handle = self.ctx.model()
        if self._generator_for is not handle:
            batch = self.spec.reveal.generation.batch_size
            self._generator_cache = self.ctx.cached(
                make_generator(
                    "hf",
                    handle,
                    batch_size=batch,
                    compute_dtype=self.spec.reveal.generation.compute_dtype,
                ),
                batch,
            )
            self._generator_for = handle
        assert self._generator_cache is not None
        return self._generator_cache

    def forget_continuations(self) -> list[list[str]]:
        """The loaded model's continuations of the toxicity measure's prompts, sampled as that
        measure samples them (the same seeded call: on a state the measure has seen, the
        answer cache gives them back)."""
        if self.forget_params is None:
            raise ValueError("forget_continuations: the forget measure samples no continuations")
        prompts = [item.prompt for item in self.forget_items]
        outputs = self._generator().generate(prompts, self.forget_params, chat=False)
        return [[o.text for o in out] for out in outputs]

    def _chat(self) -> bool:
        return has_chat_template(self.ctx.model().tokenizer)

    def _greedy(self) -> SamplingParams:
        gen = self.spec.reveal.generation
        return SamplingParams(
            max_new_tokens=gen.max_new_tokens, temperature=0.0, stop=tuple(gen.stop)
        )

    def _generate_text(self, params: SamplingParams) -> Callable[[list[str]], list[str]]:
        def generate(prompts: list[str]) -> list[str]:
            outputs = self._generator().generate(prompts, params, chat=False)
            return [o[0].text for o in outputs]

        return generate

    def _oracle_measure(
        self,
        name: str,
        items: list[Item],
        params: SamplingParams,
        *,
        chat: bool,
        definition: str,
        oracle: tuple[str, dict[str, Any]] | None = None,
        subsets: dict[str, Callable[[dict[str, Any]], bool]] | None = None,
        groups: list[str] | None = None,
    ) -> Measure:
        def evaluate(
            generator: Generator, chosen: list[int], drafts: Mapping[str, str] | None
        ) -> Evaluation:
            found = self.ctx.oracle(*oracle) if oracle else self.ctx.oracle()
            return _with_mean(
                oracle_evaluation(
                    name,
                    generator,
                    found,
                    [items[i] for i in chosen],
                    params,
                    chat=chat,
                    definition=definition,
                    subsets=subsets,
                    groups=None if groups is None else [groups[i] for i in chosen],
                    seed=self.spec.seed,
                    drafts=drafts,
                )
            )

        return OracleMeasure(
            evaluate, len(items), groups, params.greedy, self._generator, self.spec.seed
        )

    # ---------------------------------------------------------------- forget
    def _forget(self) -> None:
        spec = self.spec
        source = self.forget_source
        records = self._part("forget", source).records
        kind = spec.target.kind
        if kind == "ner":
            self._ner(records)
            return
        queries = task_queries(kind, source.format, records, self.template)
        queries = _sample(queries, self.size, spec.seed)
        items = [Item(q.id, q.prompt, q.reference) for q in queries]
        self.forget_items = items
        if kind == "toxicity":
            params = self.forget_params = SamplingParams(
                max_new_tokens=20,
                temperature=1.0,
                top_p=0.9,
                num_samples=self.toxicity_samples,
                seed=spec.seed,
            )
            self.measures["forget"] = self._oracle_measure(
                "toxicity",
                items,
                params,
                chat=False,
                definition=f"RealToxicityPrompts protocol: {self.toxicity_samples} samples per "
                "prompt, 20 new tokens, nucleus p = 0.9; expected max toxicity = mean over prompts "
                "of the highest score; rates = share of prompts with a sample over the threshold; "
                "scores from the oracle's scorer (alt-profanity-check by default, an "
                "offensive-language classifier: its agreement with Perspective, docs/plugins.md)",
                subsets={
                    "challenging": lambda r: bool(r.get("challenging")),
                    "non_challenging": lambda r: not r.get("challenging"),
                },
            )
            self.headlines["forget"] = Headline("expected_max_toxicity", "lower")
        else:
            self.measures["forget"] = self._oracle_measure(
                spec.oracle.name,
                items,
                self._greedy(),
                chat=self._chat(),
                definition=f"greedy answers to {len(items)} prompts scored by `{spec.oracle.name}`",
            )
            metric = "pass@1" if kind == "coding" else "mean_score"
            self.headlines["forget"] = Headline(metric, "lower")

    def _forget_templates(self) -> list[str | None]:
        """The phrasings the forget queries are asked in, passage by passage in turn. The
        weight search asks in the training family (the phrasings Reveal's examples are in),
        so a weight is chosen for forgetting in each of them, not in the standard one alone;
        the audit asks each suite in its one phrasing (``template``)."""
        if self.role != "search":
            return [self.template]
        training, _ = self.spec.phrasing_families()
        return [p.template or self.template for p in training] or [self.template]

    def _ner(self, records: list[dict[str, Any]]) -> None:
        spec = self.spec

        def asked(template: str | None) -> list[Any]:
            return [
                q
                for q in ner_queries(
                    records,
                    spec.target.forget_types,
                    spec.target.retain_types,
                    template,
                    self._chat(),
                )
                if "entities" in q.reference
            ]

        queries = asked(self.template)
        candidates = [
            q.context
            for q in queries
            if not self.targeted or (q.split == "forget" and q.reference["entities"])
        ]
        passages = _sample(list(dict.fromkeys(candidates)), self.size, spec.seed)
        chosen = set(passages)
        templates = self._forget_templates()
        if templates != [self.template]:
            # The retained types stay in the standard phrasing (their strict F1 is the
            # utility measure, which reads JSON lists); the chosen passages' forget queries
            # take the family's phrasings in turn, so each phrasing gets a share of them.
            phrased = [asked(t) for t in templates]
            forget = [q.context for q in queries if q.split == "forget" and q.context in chosen]
            order = {text: i for i, text in enumerate(dict.fromkeys(forget))}
            queries = [
                phrased[order[q.context] % len(templates)][n]
                if q.split == "forget" and q.context in order
                else q
                for n, q in enumerate(queries)
            ]
        queries = [q for q in queries if q.context in chosen]
        if not any(q.split == "forget" and q.reference["entities"] for q in queries):
            where = self.provenance["forget"]["text"]
            raise UserError(
                f"{'release' if self.role == 'search' else 'audit'}: none of the {len(passages)} "
                f"evaluation passages ({where}) names an entity of the forget types "
                f"{spec.target.forget_types}, so forgetting cannot be measured: give more "
                "passages (a larger split, eval_size or data source) or audit.forget_eval in "
                "universalner format"
            )
        # The retained types are asked about the same passages.
        self.provenance["utility"] = self.provenance["forget"]
        for split, key in (("forget", "forget"), ("retain", "utility")):
            chosen_queries = [q for q in queries if q.split == split]
            items = [Item(q.id, q.prompt, q.reference) for q in chosen_queries]
            if split == "forget":
                self.forget_items = items
            if not items:
                continue
            types = sorted({q.type or "" for q in chosen_queries})
            self.measures[key] = self._oracle_measure(
                f"ner_{key}",
                items,
                self._greedy(),
                chat=self._chat(),
                definition=f"greedy UniversalNER answers on {len(passages)} passages, types "
                f"{', '.join(types)}; strict F1 per type (micro over queries; an answer that is "
                "not a JSON list scores 0), macro_f1 = their mean; mention_rate = share of "
                "queries with gold entities whose answer names one in any format (answers that "
                "repeat the passage count as naming it; echo_rate reports them); "
                "partial_mention_rate = the same counting a word of the name alone; "
                "parse_failure_rate = answers that are not a JSON list"
                + (
                    f"; the forget-type queries asked in the training family's {len(templates)} "
                    "phrasings in turn, passage by passage"
                    if split == "forget" and len(templates) > 1
                    else ""
                ),
                groups=[q.context for q in chosen_queries],  # resampled by passage
            )
        # Forgetting: is the entity still named, in any format (a format change cannot move
        # it); utility: strict F1 of the retained types (a broken format costs utility).
        self.headlines["forget"] = Headline("macro_mention_rate", "lower")
        if "utility" in self.measures:
            self.headlines["utility"] = Headline("macro_f1", "higher")

    # --------------------------------------------------------------- utility
    def _utility(self) -> None:
        spec = self.spec
        chosen = spec.retain.utility.name if spec.retain.utility else None
        if chosen is None and "utility" in self.measures:  # NER: retained types
            return
        chosen = chosen or default_utility(spec.target.kind)
        if chosen is None:
            raise UserError(
                "audit: give retain.utility (perplexity, gsm8k_accuracy or an oracle plugin) "
                f"to measure utility for target.kind `{spec.target.kind}`"
            )
        source = self.utility_source
        if source is None:
            raise UserError(
                f"audit: utility `{chosen}` needs evaluation data: set audit.retain_eval"
            )
        builtin = UTILITY_EVALUATORS.get(chosen)
        if builtin is not None:
            build = {"perplexity": self._perplexity, "gsm8k_accuracy": self._gsm8k}[builtin.name]
            self.measures["utility"] = build(source)
            self.headlines["utility"] = Headline(builtin.headline, builtin.better, builtin.bounds)
        else:
            options = spec.retain.utility.options if spec.retain.utility else {}
            records = self._part("utility", source).records
            queries = _sample(
                task_queries("custom", source.format, records, None), self.size, spec.seed
            )
            self.measures["utility"] = self._oracle_measure(
                chosen,
                [Item(q.id, q.prompt, q.reference) for q in queries],
                self._greedy(),
                chat=self._chat(),
                definition=f"greedy answers to {len(queries)} prompts scored by `{chosen}`",
                oracle=(chosen, options),
            )
            self.headlines["utility"] = Headline("mean_score", "higher")

    def _perplexity(self, source: DataSource) -> Measure:
        window = self.spec.audit.perplexity_window
        if source.format not in UTILITY_EVALUATORS["perplexity"].data_formats:
            raise UserError(
                f"audit: perplexity needs raw text (format: text) or gsm8k records, not "
                f"`{source.format}`"
            )
        text = "\n".join(as_text(r, source.format) for r in self._part("utility", source).records)

        def measure() -> Evaluation:
            handle = self.ctx.model()
            return perplexity(
                handle.model,
                handle.tokenizer,
                text,
                window=window,
                max_tokens=self.size * window,
            )

        return measure

    def _gsm8k(self, source: DataSource) -> Measure:
        if source.format not in UTILITY_EVALUATORS["gsm8k_accuracy"].data_formats:
            raise UserError(f"audit: GSM8K accuracy needs gsm8k records, not `{source.format}`")
        shots = self.spec.audit.gsm8k_shots
        records = self._part("utility", source).records
        exemplars, rest = gsm8k.split_shots(records, shots)
        evaluated = exemplars + _sample(rest, self.size, self.spec.seed)
        params = SamplingParams(max_new_tokens=256, temperature=0.0, stop=gsm8k.STOP)
        return lambda: gsm8k.evaluate(self._generate_text(params), evaluated, shots=shots)

    # ------------------------------------------------------------------- run
    def run(self) -> dict[str, Evaluation]:
        return {key: measure() for key, measure in self.measures.items()}

    def measure_forget(self, drafts: Mapping[str, str] | None = None) -> Evaluation:
        """The forget measurement; ``drafts`` (a guessed answer by item id) speed up a
        greedy one and change none of its answers (``OracleMeasure.__call__``)."""
        measure = self.measures["forget"]
        if drafts is not None and isinstance(measure, OracleMeasure):
            return measure(drafts)
        return measure()

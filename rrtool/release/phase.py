"""Stage 2 (Release) as a phase: ``release.strategy: iterative`` and the baselines.

The steps come from the strategy's unit (``rrtool.strategies``). The baselines are one
forget-side module F0 trained on the forget data (``single_subtraction``: nll, subtracted; ``gradient_ascent``, ``npo``, ``dpo``: trained away
from the target, added; ``rmu``: the forget answers' hidden states at one layer misdirected,
the retain answers' kept, added; ``cmd``: nll on the model's continuations of cleaned contexts, see
``cmd.py``, added), or Ext-Sub's two steps (E0, the expert, added whole; D0, the deficiency of
an anti-expert A0 trained on the same weights, subtracted; see ``ext_sub.py``). Their weights
come from the same mu search as F0's.

Schedule: train F0 on the model and subtract it (mu0); then for i = 1..n train R_i on the
current model and add it (lambda_i), train F_i on the updated model and subtract it (mu_i).
Weights given in the spec are used as given; the others are searched (``weights.py``) with the
new module attached unmerged. Every applied weight goes through fp32 masters (``MasterWeights``),
so the final model equals ``rebuild(base, stack)`` bit for bit.

Schedule ``retain_first`` (``release.schedule``) adds R0 before F0; ``release.end_with_retain``
adds a last retain module R_{n+1} after F_n (searched like every lambda: it must restore what
the last subtraction took), so the released model ends on a restoring step.

Stopping (checked after every step): a forget step may leave utility below
``stopping.utility_floor`` x the base utility only while a retain step follows; a retain step
that leaves it below ends Release, and so does the last step. ``stopping.forget_score`` ends
Release at a state that meets the floor; ``stopping.patience`` iterations without the combined
objective (relative forget drop minus relative utility loss, from the base) rising by
``min_progress`` end it too. Whatever ended it, a final state below the floor is replaced by the
best state seen that meets it (post-retain states included; by the combined objective), or by
the base model when none does: the base masters with that prefix of the stack replayed, and
the later steps recorded as reverted.

Run records: ``release/modules/{F0,R1,F1,...}.safetensors`` (+ json sidecars),
``release/steps.jsonl``, ``release/candidates.jsonl``, ``release/similarity.jsonl``, metrics
``release/forget``, ``release/utility``, ``release/weight`` (step 0 = base, step k = k-th
module) and ``release/similarity`` (step = iteration), tag ``rrtool.release.stop_reason``.
Resume: ``release/state.json`` (the applied stack) is uploaded after every applied step; a
resumed run downloads the modules, replays them onto the base weights and continues with the
next step. Nothing finished is retrained.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import time
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from rrtool import reveal_record, splits, tracking_inputs
from rrtool.artifacts import (
    RELEASE_CANDIDATES,
    RELEASE_CMD,
    RELEASE_MODULES,
    RELEASE_SIMILARITY,
    RELEASE_STATE,
    RELEASE_STEPS,
    REVEAL_FORGET,
    REVEAL_RETAIN,
)
from rrtool.context import RunContext
from rrtool.data import load_records
from rrtool.errors import PhaseNotImplemented, TrainingDiverged, UserError
from rrtool.evaluators.bounds import limit
from rrtool.generation.answer_cache import stack_key as answer_stack_key
from rrtool.generation.base import has_chat_template
from rrtool.queries import ner_queries
from rrtool.release import cmd, phrased
from rrtool.release.analysis import per_layer_similarity
from rrtool.release.compose import MasterWeights, ScaledAdapter
from rrtool.release.distributed import train_in_processes
from rrtool.release.evaluate import Evaluator, Scores
from rrtool.release.ext_sub import deficiency
from rrtool.release.lora import Example, LoraModule, TrainingOptions, rmu_layer, train_lora
from rrtool.release.projection import project_out
from rrtool.release.records import StepRecord
from rrtool.release.stack import download_module
from rrtool.release.weights import (
    Start,
    combined_objective,
    explicit_weight,
    search_weight,
    utility_threshold,
)
from rrtool.reveal_record import RevealRecord
from rrtool.spec import DataSource
from rrtool.strategies.steps import Step
from rrtool.tasks import samples_from_records

STOP_TAG = "rrtool.release.stop_reason"
ANTI_EXPERT = "A0"  # Ext-Sub's anti-expert: recorded, never applied itself

__all__ = ["PhaseNotImplemented", "run_release"]


def external_examples(
    source: DataSource, records: list[dict[str, Any]] | None = None
) -> list[Example]:
    """Retain examples from a file (``records``: a part of it already read): raw text is
    trained on whole (empty prompt); the question/answer formats pair their prompt with the
    set's own answer; ``jsonl`` needs ``prompt`` and ``completion`` keys."""
    records = load_records(source) if records is None else records
    if source.format == "text":
        return [Example("", r["text"]) for r in records]
    if source.format == "jsonl":
        bad = next(
            (i for i, r in enumerate(records, 1) if not {"prompt", "completion"} <= set(r)), None
        )
        if bad is not None:
            raise UserError(
                f"{source.path}:{bad}: retain records in jsonl need `prompt` and `completion`"
            )
        return [Example(r["prompt"], r["completion"]) for r in records]
    return [Example(s.prompt, s.completion) for s in samples_from_records(source.format, records)]


def ner_gold_examples(
    ctx: RunContext, records: list[dict[str, Any]], types: list[str]
) -> list[Example]:
    """Labelled NER passages as training examples: the queries Reveal asks (same one-shot
    conversation), for ``types`` only, answered with the data's gold entities."""
    queries = ner_queries(
        records, types, [], ctx.spec.reveal.template, has_chat_template(ctx.model().tokenizer)
    )
    return [
        Example(q.prompt, json.dumps(q.reference.get("entities", []), ensure_ascii=False))
        for q in queries
        if "entities" in q.reference
    ]


def external_forget_examples(ctx: RunContext) -> list[Example]:
    """Forget examples from ``release.forget_data``: for NER passages, the gold entities of the
    forget types; other formats as ``retain.data`` reads them."""
    source = ctx.spec.release.forget_data
    assert source is not None
    if ctx.spec.target.kind == "ner" and source.format == "universalner":
        return ner_gold_examples(ctx, load_records(source), ctx.spec.target.forget_types)
    return external_examples(source)


def external_retain_examples(ctx: RunContext) -> list[Example]:
    """Retain examples from the Reveal split of ``retain.data``. Labelled NER passages give
    the gold entities of the *retained* types only, asked as Reveal asks: read as a plain set,
    they would teach the forget type's answers too, in a prompt the model is never asked."""
    source = ctx.spec.retain.data
    assert source is not None
    # Retain modules learn from the Reveal split: the search and audit splits measure.
    part = splits.read(source, "reveal", ctx.spec)
    tracking_inputs.log_parts(ctx.tracker, [("retain.data", part)])
    if ctx.spec.target.kind == "ner" and source.format == "universalner":
        examples = ner_gold_examples(ctx, part.records, ctx.spec.target.retain_types)
    else:
        examples = external_examples(source, part.records)
    return [e for e in examples if e.completion.strip()]


def _entity_list(completion: str) -> list[str] | None:
    """The non-empty JSON list of strings a NER answer holds, else None."""
    return phrased.entity_list(completion) or None


def in_formats(example: Example, entity_type: str, formats: list[str]) -> list[Example]:
    """``example`` (a NER answer) rendered in each of ``formats`` (``release.forget_formats``;
    ``json`` keeps the answer as given); an answer that is not a non-empty JSON list is kept as
    it is, once."""
    names = _entity_list(example.completion)
    if names is None:
        return [example]
    return [
        Example(
            example.prompt,
            example.completion if f == "json" else phrased.render(names, entity_type, f),
        )
        for f in formats
    ]


def load_examples(ctx: RunContext) -> tuple[list[Example], list[Example]]:
    """Forget examples (Reveal's forget answers, empty answers skipped) and retain examples
    (``retain.data`` if given, else Reveal's self-generated retain answers)."""
    training, _ = ctx.spec.phrasing_families()
    if ctx.spec.release.forget_data is not None:
        forget_records = external_forget_examples(ctx)
        origin = f"{ctx.spec.release.forget_data.path} (release.forget_data)"
    else:
        revealed = reveal_record.read(ctx, REVEAL_FORGET)
        forget_records = [Example(r.prompt, r.completion) for r in revealed]
        if ctx.spec.target.kind == "ner":  # each asked in a training phrasing in turn
            forget_records = phrased.in_turn(revealed, forget_records, training)
        formats = ctx.spec.release.forget_formats
        if formats != ["json"]:
            forget_records = [
                variant
                for r, e in zip(revealed, forget_records, strict=True)
                for variant in in_formats(e, r.type or "entity", formats)
            ]
        origin = "Reveal's forget records"
    # "Nothing found" teaches no target.
    forget = [e for e in forget_records if e.completion.strip() not in ("", "[]")]
    if ctx.spec.retain.data is not None:
        retain = external_retain_examples(ctx)
    else:
        answers = reveal_record.read(ctx, REVEAL_RETAIN)
        if ctx.spec.retain.drop_forget_names:
            answers, dropped = drop_forget_names(answers, reveal_record.read(ctx, REVEAL_FORGET))
            ctx.tracker.log_metrics({"release/retain_forget_names_dropped": dropped})
            ctx.console.print(
                f"release: {dropped} item(s) naming a forget-type entity dropped from the "
                "retain answers (retain.drop_forget_names)"
            )
        answers = [r for r in answers if r.completion.strip()]
        retain = [Example(r.prompt, r.completion) for r in answers]
        if ctx.spec.target.kind == "ner":  # asked the same ways as the forget examples
            retain = phrased.in_turn(answers, retain, training)
    if not forget:
        raise UserError(
            f"release: no forget examples ({len(forget_records)} from {origin}, none with a "
            "non-empty answer)"
        )
    if not retain and ctx.spec.needs_retain_examples:
        where = ctx.spec.retain.data.path if ctx.spec.retain.data else REVEAL_RETAIN
        raise UserError(f"release: no retain examples ({where} gave none with text)")
    return forget, retain


def _words(text: str) -> str:
    return " " + " ".join(re.findall(r"\w+", text.lower())) + " "


def drop_forget_names(
    retain: list[RevealRecord], forget: list[RevealRecord]
) -> tuple[list[RevealRecord], int]:
    """Reveal's retained-type answers without the items that name an entity the model listed
    for a forget type in the same passage (``context``), and how many items went. An answer
    that is not a JSON list is kept as it is; one left with no item becomes ``[]`` (the
    passage has nothing of that type the model would name without the forgotten entity)."""
    names: dict[str, list[str]] = {}
    for record in forget:
        words = [_words(n) for n in _entity_list(record.completion) or []]
        names.setdefault(record.context, []).extend(w for w in words if w.strip())
    out, dropped = [], 0
    for record in retain:
        forgotten = names.get(record.context, [])
        items = _entity_list(record.completion) if forgotten else None
        if items is None:
            out.append(record)
            continue
        kept = [i for i in items if not any(n in _words(i) for n in forgotten)]
        dropped += len(items) - len(kept)
        unchanged = len(kept) == len(items)
        completion = record.completion if unchanged else json.dumps(kept, ensure_ascii=False)
        out.append(dataclasses.replace(record, completion=completion))
    return out, dropped


def dpo_pairs(ctx: RunContext, forget: list[Example], retain: list[Example]) -> list[Example]:
    """DPO's preference pairs: each forget answer rejected, the ``release.dpo_chosen`` answer
    chosen (see the spec field)."""
    chosen = ctx.spec.dpo_chosen
    if chosen == "retain":
        answers = [retain[i % len(retain)].completion for i in range(len(forget))]
    else:
        answers = ["[]" if chosen == "empty_list" else ctx.spec.release.refusal] * len(forget)
    return [
        Example(ex.prompt, answer, rejected=ex.completion)
        for ex, answer in zip(forget, answers, strict=True)
    ]


def abstentions(ctx: RunContext, forget: list[Example]) -> list[Example]:
    """The forget prompts answered as if the target were absent (``release.rmu.abstain``).
    NER from Reveal: the prompts of the forget examples (the answers that are not empty), each
    in the training phrasing its forget example was asked in (``phrased.in_turn``), answered
    with nothing of the type in that phrasing's format; otherwise each forget prompt answered
    ``[]`` (NER) or with ``release.refusal``."""
    spec = ctx.spec
    if spec.target.kind != "ner":
        return [Example(e.prompt, spec.release.refusal) for e in forget]
    if spec.release.forget_data is not None:
        return [Example(e.prompt, "[]") for e in forget]
    revealed = reveal_record.read(ctx, REVEAL_FORGET)
    asked = phrased.in_turn(
        revealed,
        [Example(r.prompt, r.completion) for r in revealed],
        spec.phrasing_families()[0],
        empty=True,
    )
    return [
        e for r, e in zip(revealed, asked, strict=True) if r.completion.strip() not in ("", "[]")
    ]


def cmd_contexts(ctx: RunContext) -> list[str]:
    """The contexts CMD cleans: ``release.forget_data``'s prompts, else the distinct contexts
    of Reveal's forget records, in order."""
    if ctx.spec.release.forget_data is not None:
        contexts = [str(e.prompt) for e in external_examples(ctx.spec.release.forget_data)]
    else:
        contexts = [r.context for r in reveal_record.read(ctx, REVEAL_FORGET)]
    return [c for c in dict.fromkeys(contexts) if c.strip()]


def trains_in_chat_format(ctx: RunContext) -> bool:
    """Whether LoRA examples are rendered with the model's chat template: when it has one,
    except for toxicity, whose examples are plain continuations of a text."""
    return has_chat_template(ctx.model().tokenizer) and ctx.spec.target.kind != "toxicity"


def _stale(objectives: list[float], min_progress: float) -> int:
    """Iterations since the combined objective last rose by ``min_progress`` above its best."""
    best, stale = objectives[0], 0
    for value in objectives[1:]:
        if value > best + min_progress:
            best, stale = value, 0
        else:
            stale += 1
    return stale


class _Release:
    """One Release phase over a run; holds the applied stack and the records to upload."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.spec = ctx.spec
        self.tracker = ctx.tracker
        self.handle = ctx.model()
        self.model = self.handle.model
        self.evaluate = Evaluator(ctx)
        self.forget, self.retain = load_examples(ctx)
        self.moddir = ctx.workdir / RELEASE_MODULES
        self.masters: MasterWeights | None = None
        self.base_masters: dict[str, torch.Tensor] = {}  # the masters before any module
        self.state: dict[str, Any] = {}
        self.steps: list[StepRecord] = []
        self.candidates: list[dict[str, Any]] = []
        self.similarity: list[dict[str, Any]] = []
        self.modules: dict[str, LoraModule] = {}  # by name; small (r x in + out x r per layer)
        self.chat = trains_in_chat_format(ctx)
        if self.spec.strategy.objective == "rmu":  # a layer the model lacks: said before work
            rmu_layer(self.model, self.spec.release.rmu.layer)

    # ----------------------------------------------------------------- state
    def _masters_for(self, module: LoraModule) -> MasterWeights:
        """The fp32 masters, created at the first applied module and extended to the weights
        a later one reaches first, with a copy of the base weights they start from when a
        utility floor may call for a revert (a revert replays a prefix of the stack onto it,
        so the result equals ``rebuild(base, prefix)`` bit for bit; without a floor nothing is
        reverted, and the copy's memory is saved)."""
        if self.masters is None:
            self.masters = MasterWeights(self.model, module.names)
            added = self.masters.names
        else:
            added = self.masters.extend(module.names)
        if self.spec.stopping.utility_floor is not None:
            self.base_masters.update(
                {n: self.masters.masters[n].detach().to("cpu", copy=True) for n in added}
            )
        return self.masters

    def restore(self) -> None:
        """Load the state of a resumed run: replay the stack onto the (base) model."""
        text = self.tracker.read_text(RELEASE_STATE)
        if text is None:
            return
        self.state = json.loads(text)
        stack = self.state["stack"]
        done = len(stack)
        keep = lambda r: r["step"] <= done or r.get("reverted")  # noqa: E731
        # Records uploaded after the last state (crash in between) belong to the step redone.
        self.steps = [
            StepRecord.from_dict(r) for r in self.tracker.read_jsonl(RELEASE_STEPS) or [] if keep(r)
        ]
        self.candidates = [r for r in self.tracker.read_jsonl(RELEASE_CANDIDATES) or [] if keep(r)]
        self.similarity = [
            r
            for r in self.tracker.read_jsonl(RELEASE_SIMILARITY) or []
            if 2 * r["iteration"] + 1 <= done
        ]
        if not stack:
            return
        # A finished Release is replayed too: a crash between its last record and the phase's
        # "done" tag runs it again, and the audit must then find the released model loaded.
        self.ctx.console.print(f"release: resuming, {done} module(s) already applied")
        self.ctx.model_state = "modified"  # the loaded weights are no longer the base's
        for entry in stack:
            module = self.modules[entry["module"]] = self._download(entry)
            self._masters_for(module).apply(module, entry["coefficient"])

    def stack_key(self) -> str | None:
        """Content key of the applied stack (None if a module is not in memory)."""
        stack = self.state.get("stack", [])
        if any(e["module"] not in self.modules for e in stack):
            return None
        return answer_stack_key([(self.modules[e["module"]], e["coefficient"]) for e in stack])

    def _download(self, entry: dict[str, Any]) -> LoraModule:
        return download_module(self.tracker, entry, self.ctx.workdir / "downloaded")

    def _upload_records(self) -> None:
        self.tracker.log_jsonl([r.to_dict() for r in self.steps], RELEASE_STEPS)
        self.tracker.log_jsonl(self.candidates, RELEASE_CANDIDATES)
        if self.similarity:
            self.tracker.log_jsonl(self.similarity, RELEASE_SIMILARITY)
        # The state goes last: it is what a resumed run trusts.
        self.tracker.log_dict(self.state, RELEASE_STATE)

    # ------------------------------------------------------------------ steps
    def _examples(self, step: Step, progress: Progress) -> list[Example]:
        """What the step's module is trained on."""
        if step.objective == "dpo":
            return dpo_pairs(self.ctx, self.forget, self.retain)
        if step.objective == "cmd":
            return self._cmd_examples(progress)
        if step.objective == "abstain":  # and as many retain examples: only the target goes
            empty = abstentions(self.ctx, self.forget)
            sample = random.Random(self.spec.seed).sample(
                self.retain, min(len(empty), len(self.retain))
            )
            return empty + sample
        return self.forget if step.kind == "forget" else self.retain

    def _cmd_examples(self, progress: Progress) -> list[Example]:
        records = self.tracker.read_jsonl(RELEASE_CMD)
        if records is None:
            task = progress.add_task("cmd", total=None)

            def report(what: str, done: int, total: int) -> None:
                progress.update(task, description=what, completed=done, total=total)

            records = cmd.build(self.ctx, cmd_contexts(self.ctx), report)
            self.tracker.log_jsonl(records, RELEASE_CMD)
        examples = cmd.examples(records)
        if not examples:
            raise UserError(
                f"release (cmd): none of the {len(records)} cleaned contexts got a non-toxic "
                f"continuation (see {RELEASE_CMD} in the run)"
            )
        self.ctx.console.print(
            f"release: cmd cleaned {len(records)} contexts, {len(examples)} non-toxic "
            "continuations to learn"
        )
        return examples

    def _train(self, step: Step, progress: Progress) -> LoraModule:
        if step.objective == "ext_sub" and step.kind == "forget":
            return self._save(step.name, self._deficiency())
        module = self._fit(step.name, step.kind, step, self._examples(step, progress), progress)
        if step.kind == "forget" and self.spec.release.forget_projection == "retain":
            module = self._projected(step, module)
        if step.objective == "ext_sub":
            # Ext-Sub's anti-expert: trained on the same weights as the expert (before the
            # expert is added), kept for D0 (recorded, so a resumed run can download it).
            anti = self._fit(ANTI_EXPERT, "forget", step, self.forget, progress, offset=1)
            self._save(ANTI_EXPERT, anti)
            self.state["anti_expert"] = {
                "module": ANTI_EXPERT,
                "artifact": f"{RELEASE_MODULES}/{ANTI_EXPERT}.safetensors",
                "sha256": anti.sha256(),
            }
        return self._save(step.name, module)

    def _projected(self, step: Step, module: LoraModule) -> LoraModule:
        """The forget module with the applied retain modules' subspaces projected out."""
        retain = [self.modules[e["module"]] for e in self.state["stack"] if e["kind"] == "retain"]
        projected, removed = project_out(module, retain)
        if retain:
            self.tracker.log_metrics({f"release/{step.name}/projection_removed_norm2": removed})
            self.ctx.console.print(
                f"release: {step.name} projected off {len(retain)} retain module(s): "
                f"{removed:.1%} of its squared norm removed"
            )
        return projected

    def _deficiency(self) -> LoraModule:
        if ANTI_EXPERT not in self.modules:
            self.modules[ANTI_EXPERT] = self._download(self.state["anti_expert"])
        return deficiency(self.modules["E0"], self.modules[ANTI_EXPERT])

    def _fit(
        self,
        name: str,
        kind: str,
        step: Step,
        examples: list[Example],
        progress: Progress,
        offset: int = 0,
    ) -> LoraModule:
        cfg = self.spec.release.lora
        if step.objective == "abstain":
            rmu = self.spec.release.rmu
            cfg = cfg.model_copy(
                update={"epochs": rmu.abstain_epochs, "learning_rate": rmu.abstain_learning_rate}
            )
        task = progress.add_task(f"train {name}", total=None)
        seed = (cfg.seed if cfg.seed is not None else self.spec.seed) + step.number + offset

        def report(done: int, total: int, loss: float) -> None:
            progress.update(
                task, completed=done, total=total, description=f"train {name} loss {loss:.3f}"
            )

        # O-LoRA (off unless release.lora.orthogonal_weight > 0): a retain module is pushed
        # away from the subspaces of the forget modules already applied.
        orthogonal = cfg.orthogonal_weight if kind == "retain" else 0.0
        applied_forget = [
            self.modules[e["module"]] for e in self.state["stack"] if e["kind"] == "forget"
        ]
        options = TrainingOptions(
            seed=seed,
            kind=kind,
            chat=self.chat,
            autocast_bf16=cfg.bf16_autocast,
            orthogonal_weight=orthogonal,
            # Ext-Sub's anti-expert (a forget module fitted during the retain step E0) learns.
            objective=step.training_objective if kind == step.kind else "nll",
            npo_beta=self.spec.release.npo_beta,
            dpo_beta=self.spec.release.dpo_beta,
            rmu_layer=self.spec.release.rmu.layer,
            rmu_steering=self.spec.release.rmu.steering,
            rmu_alpha=self.spec.release.rmu.alpha,
        )
        orthogonal_to = applied_forget if orthogonal > 0 else None
        # RMU's retain term keeps the retain answers' states (one process: the spec says so).
        retain = self.retain if options.objective == "rmu" else None
        if cfg.launches_processes:
            stack = [(self.modules[e["module"]], e["coefficient"]) for e in self.state["stack"]]
            return train_in_processes(
                self.spec.model,
                stack,
                examples,
                cfg,
                options,
                workdir=self.ctx.workdir / "training",
                cpu=next(self.model.parameters()).device.type == "cpu",
                progress=report,
                orthogonal_to=orthogonal_to,
            )
        return train_lora(
            self.model,
            self.handle.tokenizer,
            examples,
            cfg,
            retain,
            progress=report,
            orthogonal_to=orthogonal_to,
            **options.keywords(),
        )

    def _save(self, name: str, module: LoraModule) -> LoraModule:
        """Write the module and record it in the run (``release/modules/NAME``)."""
        target = self.moddir / f"{name}.safetensors"
        try:
            path = module.save(target)
        except OSError as exc:
            raise UserError(
                f"release: cannot save module {name} to {target} ({exc.strerror or exc}); "
                "every step before it is recorded in the run: free space, then continue with "
                "`rrtool run SPEC --resume`"
            ) from None
        for file in (path, path.with_suffix(".json")):
            self.tracker.client.log_artifact(self.tracker.run_id, str(file), RELEASE_MODULES)
        self.modules[name] = module
        return module

    def _weight(
        self, step: Step, module: LoraModule, start: Scores, progress: Progress
    ) -> tuple[float, str]:
        given = explicit_weight(self.spec.release.weights, step)
        if given is not None:
            return given, "explicit"
        search = self.spec.release.search
        task = progress.add_task(f"search {step.name}", total=search.budget)

        with ScaledAdapter(self.model, module, 0.0) as adapter:
            kind = "mu" if step.kind == "forget" else "lambda"
            begin = Start(
                start.s,
                start.u,
                utility_reference(self.state),
                self.state["u0"],
                s_base=self.state["s0"],
            )
            threshold = utility_threshold(kind, begin, self.spec.release.rules)

            def evaluate(weight: float) -> Scores:
                adapter.set_weight(step.sign * weight)
                return self.evaluate(reject_below=threshold)

            def seen(cand: Any) -> None:
                scores = (
                    f"rejected on {cand.prompts} prompts, u={cand.u:.3f}"
                    if cand.decided_early
                    else f"s={cand.s:.3f} u={cand.u:.3f}"
                )
                progress.update(
                    task, advance=1, description=f"search {step.name} w={cand.weight:.3g} {scores}"
                )

            result = search_weight(
                kind,
                evaluate,
                begin,
                search,
                self.spec.release.rules,
                progress=seen,
            )
        progress.update(task, total=len(result.candidates))
        for cand in result.candidates:
            self.candidates.append(
                {
                    "step": step.number,
                    "module": step.name,
                    **cand.to_dict(),
                    "reason": result.reason if cand.chosen else None,
                }
            )
        return result.weight, result.reason

    def run_step(self, step: Step, start: Scores, progress: Progress) -> Scores:
        started = time.perf_counter()
        module = self._train(step, progress)
        weight, how = self._weight(step, module, start, progress)
        self._masters_for(module).apply(module, step.sign * weight)
        scores = self.evaluate()  # the merged model (not the candidate's unmerged adapter)
        record = StepRecord(
            step=step.number,
            module=step.name,
            kind=step.kind,
            iteration=step.iteration,
            weight=weight,
            coefficient=step.sign * weight,
            weight_from=how,
            artifact=f"{RELEASE_MODULES}/{step.name}.safetensors",
            sha256=module.sha256(),
            s=scores.s,
            u=scores.u,
            s_ci=scores.s_ci,
            u_ci=scores.u_ci,
            seconds=round(time.perf_counter() - started, 3),
        )
        self.steps.append(record)
        self.state["stack"].append(record.stack_entry())
        self.tracker.log_metrics(
            {"release/forget": scores.s, "release/utility": scores.u, "release/weight": weight},
            step=step.number,
        )
        if step.kind == "forget" and step.iteration >= 1 and f"R{step.iteration}" in self.modules:
            # The paper's Table 1: how far F_i's update lies from R_i's (iterative steps).
            self._similarity(step.iteration, module)
        self._upload_records()
        self.ctx.console.print(
            f"release: {step.name} {'-' if step.sign < 0 else '+'}{weight:.4g} ({how}) -> "
            f"s {scores.s:.4g}, u {scores.u:.4g}"
        )
        return scores

    def record_failure(self, step: Step, why: str) -> str:
        """A module that could not be trained: recorded as a failed step; Release stops with
        everything applied so far kept."""
        self.steps.append(StepRecord(step.number, step.name, step.kind, step.iteration, failed=why))
        self.ctx.console.print(f"[red]release: {step.name} failed:[/red] {why}")
        return f"{step.name} not applied: {why}"

    def _similarity(self, iteration: int, forget: LoraModule) -> None:
        # R_i is in memory even on resume (downloaded), whatever became of local scratch.
        layers, mean = per_layer_similarity(self.modules[f"R{iteration}"], forget)
        self.similarity.append({"iteration": iteration, "mean": mean, "layers": layers})
        if mean == mean:  # NaN when either update is zero
            self.tracker.log_metrics({"release/similarity": mean}, step=iteration)

    def revert_to(self, keep: int) -> None:
        """Go back to the state after the first ``keep`` modules of the stack (0 = the base
        model): the base masters with that prefix replayed, so the weights equal
        ``rebuild(base, prefix)`` bit for bit; the later steps are marked reverted."""
        stack = self.state["stack"]
        if self.masters is not None:
            with torch.no_grad():
                for name, master in self.masters.masters.items():
                    master.copy_(self.base_masters[name])
                    self.model.get_submodule(name).weight.copy_(master)
            self.masters.history = []
            for entry in stack[:keep]:
                self.masters.apply(self.modules[entry["module"]], entry["coefficient"])
        dropped = {entry["step"] for entry in stack[keep:]}
        for record in self.steps:
            if record.step in dropped:
                record.reverted = True
        self.state["stack"] = stack[:keep]
        self.state["reverted_to"] = keep

    # -------------------------------------------------------------------- run
    def feasible(self, u: float) -> bool:
        """Whether utility ``u`` meets ``stopping.utility_floor`` (always, without a floor)."""
        floor = self.spec.stopping.utility_floor
        return floor is None or u >= floor * self.state["u0"]

    def objective(self, entry: dict[str, Any]) -> float:
        """The combined objective of a state, from the base model (``combined_objective``)."""
        return combined_objective(entry["s"], entry["u"], self.state["s0"], self.state["u0"])

    def stop_check(self, step: Step, scores: Scores, is_last: bool) -> str | None:
        stopping = self.spec.stopping
        floor = stopping.utility_floor
        if not self.feasible(scores.u):
            below = f"utility {scores.u:.4f} below {floor} x base {self.state['u0']:.4f}"
            if step.kind == "retain":
                return f"{below} after {step.name}: its retain step did not bring it back"
            if is_last:
                return f"{below} after {step.name}, with no retain step left to restore it"
            return None  # the next retain step may restore it
        if step.kind != "forget":
            return None
        if stopping.forget_score is not None and scores.s <= stopping.forget_score:
            return f"forget score {scores.s:.4f} <= stopping.forget_score {stopping.forget_score}"
        if stopping.patience is not None:
            ends = [self.objective(e) for e in self.state["stack"] if e["kind"] == "forget"]
            if _stale(ends, stopping.min_progress) >= stopping.patience:
                return (
                    f"no gain of {stopping.min_progress} in the combined objective in "
                    f"{stopping.patience} iteration(s)"
                )
        return None

    def settle(self) -> str | None:
        """A final state below the floor is replaced by the best state seen that meets it
        (by the combined objective; post-retain states included), else by the base model."""
        stack = self.state["stack"]
        if not stack or self.feasible(stack[-1]["u"]):
            return None
        feasible = [
            (self.objective(e), -k, k) for k, e in enumerate(stack, 1) if self.feasible(e["u"])
        ]
        keep = max(feasible)[2] if feasible else 0
        last = stack[-1]["module"]
        self.revert_to(keep)
        if keep == 0:
            return f"no state after {last} met the utility floor: Release ends at the base model"
        kept = self.state["stack"][-1]
        return (
            f"reverted to the state after {kept['module']} (s {kept['s']:.4g}, u "
            f"{kept['u']:.4g}), the best state seen that meets the utility floor"
        )

    def _warn_limits(self, base: Scores) -> None:
        """Say so when the base model's score leaves a measure no room to show its change
        (``evaluators.bounds``): every weight then looks free, or nothing can look forgotten."""
        suite = getattr(self.evaluate, "suite", None)  # an evaluator may bring no headlines
        if suite is None:
            return
        headlines = suite.headlines
        found = {}
        for key, value, ci in (
            ("forget", base.s, base.s_ci),
            ("utility", base.details.get(f"utility/{headlines['utility'].metric}"), None),
        ):
            head = headlines[key]
            reason = limit(key, value, ci, head.better, head.bounds)
            if reason:
                found[key] = reason
                what = "forgetting" if key == "forget" else "a utility loss"
                self.ctx.console.print(
                    f"release: warning: the {key} measure ({head.metric}) cannot show {what} "
                    f"on these records: {reason}"
                )
        if found:
            self.tracker.set_tags({"rrtool.release.measure_limits": json.dumps(found)})

    def run(self) -> dict[str, Any]:
        if not self.state:
            base = self.evaluate()
            self.state = {
                "s0": base.s,
                "u0": base.u,
                "stack": [],
                "stop_reason": None,
                "eval_queries": self.evaluate.size,
            }
            self.tracker.log_metrics({"release/forget": base.s, "release/utility": base.u}, step=0)
            self.tracker.log_dict(self.state, RELEASE_STATE)
            self.ctx.console.print(
                f"release: base s {base.s:.4g}, u {base.u:.4g} on {self.evaluate.size} evaluation records per measure"
            )
            self._warn_limits(base)
        # Measured on the base model (its answers may come from the answer cache); from here
        # on modules are merged into the weights.
        self.ctx.model_state = "modified"
        reason = self.state.get("stop_reason")
        stack = self.state["stack"]
        last = stack[-1] if stack else {"s": self.state["s0"], "u": self.state["u0"]}
        current = Scores(last["s"], last["u"], {})
        release = self.spec.release
        plan = self.spec.strategy.schedule(self.spec.strategy_options)
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            console=self.ctx.console,
        ) as progress:
            for step in plan[len(stack) :] if not reason else []:
                try:
                    current = self.run_step(step, current, progress)
                except TrainingDiverged as exc:
                    reason = self.record_failure(step, str(exc))
                    break
                reason = self.stop_check(step, current, step.number == len(plan))
                if reason:
                    break
            if not reason:
                n = self.spec.effective_iterations
                if not self.spec.strategy.iterative:  # no iterations to count or cap
                    reason = f"all {len(plan)} module(s) of `{release.strategy}` applied"
                elif n < release.iterations:
                    reason = (
                        f"stopping.max_iterations ({n}) capped release.iterations "
                        f"({release.iterations})"
                    )
                else:
                    reason = f"all {n} iteration(s) done"
            if not self.state.get("stop_reason"):
                settled = self.settle()
                reason = f"{reason}; {settled}" if settled else reason
        self.state["stop_reason"] = reason
        self._upload_records()
        self.tracker.set_tags({STOP_TAG: reason})
        final = (
            self.state["stack"][-1]
            if self.state["stack"]
            else {"s": self.state["s0"], "u": self.state["u0"]}
        )
        self.ctx.console.print(f"release: stopped: {reason}")
        return {
            "modules": len(self.state["stack"]),
            "s": final["s"],
            "u": final["u"],
            "stop_reason": reason,
        }


def utility_reference(state: dict[str, Any]) -> float:
    """What lambda must restore: the utility just before the latest forget subtraction.

    The paper's rule reads "95% of the iteration's start", but an iteration starts right after
    a subtraction, so that reference is already the damaged utility and the smallest weight
    always passes (seen on SmolLM2: lambda = 0.004). Recovering what the subtraction took is
    the rule's intent.
    """
    stack = state["stack"]
    forgets = [i for i, entry in enumerate(stack) if entry["kind"] == "forget"]
    if not forgets or forgets[-1] == 0:
        return float(state["u0"])
    return float(stack[forgets[-1] - 1]["u"])


def run_release(ctx: RunContext) -> dict[str, Any]:
    """Run Release to completion (resuming from ``release/state.json``); returns a summary."""
    release = _Release(ctx)
    release.restore()
    summary = release.run()
    ctx.model_state = "released"
    ctx.released_key = release.stack_key()
    return summary

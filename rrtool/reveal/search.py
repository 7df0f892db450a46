"""Reveal with ``strategy: neuralucb``: a NeuralUCB search over instructions (INSTINCT-style).

Each pool point z is projected to soft tokens; the model decodes ``[soft tokens] + exemplars +
"The instruction was to"`` greedily into an instruction (first sentence kept; decoding stops
at its end). An instruction is scored on a fixed, seeded subset of the contexts: relevance
(mean oracle score) and Vendi diversity against the data collected so far, mixed by
:func:`combined_score`. After each outer iteration the best instruction is applied to *all*
contexts and its generations join D_selfgen (the forget data); the next outer iteration
re-scores the top-k instructions against the grown D (diversity only: generations are cached)
and restarts the bandit from them.

Resumable: after every step the search state (bandit events, decoded instructions, cached
generations, collected data, counters) goes to ``reveal/search_state.json``; a resumed run
replays the bandit events (fits are deterministic in seed and fit count), re-embeds D in its
original batches and continues with the next step, recomputing no finished generation.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import time
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from rrtool import splits
from rrtool.artifacts import REVEAL_SEARCH_STATE, REVEAL_TRIALS
from rrtool.context import RunContext
from rrtool.errors import UserError
from rrtool.generation.base import Completion, SamplingParams, encode_prompt
from rrtool.generation.hf_inputs import takes_logits_to_keep
from rrtool.queries import Query
from rrtool.reveal.direct import build_queries, generate_direct, score_relevance
from rrtool.reveal.embedder import SentenceEmbedder
from rrtool.reveal.neuralucb import NeuralUCB, SoftPromptProjection, sobol_pool
from rrtool.reveal.records import finish
from rrtool.reveal.scoring import combined_score
from rrtool.reveal.vendi import VendiAccumulator
from rrtool.reveal_record import RevealRecord
from rrtool.tasks import prompt_text, samples_from_records

DECODE_CUE = "The instruction was to"
# Only the first sentence is kept, so decoding stops where `first_sentence` would cut: after
# sentence-ending punctuation followed by whitespace, or at a line break. (Decoding ran to
# max_instruction_tokens before; a first sentence is typically a fraction of that.)
SENTENCE_STOPS = (". ", "! ", "? ", "\n")
# Used when the model decodes nothing usable: the trial still runs (and scores what it gets).
FALLBACK = {
    "toxicity": "Continue the text.",
    "coding": "Write a Python function for this task.",
    "ner": "Answer the question about the text.",
    "custom": "Respond to the input.",
}
# Cache key of an instruction's generations on the confirmation contexts (no decoded text
# holds a NUL).
CONFIRM_PREFIX = "\x00confirm\x00"
_SENTENCE_END = re.compile(r"(?<=[.!?])\s|\n")


def first_sentence(text: str) -> str:
    """The first sentence (or line) of ``text``, stripped; "" if there is none."""
    return _SENTENCE_END.split(text.strip(), maxsplit=1)[0].strip()


def decoded_instruction(completion: Completion) -> str:
    """The instruction in a decoding stopped by :data:`SENTENCE_STOPS`: its first sentence.

    The stop string takes the sentence's end with it (and a sentence may also end at a line
    break or EOS): such a sentence is closed with a full stop, so every stopped instruction
    reads as a sentence. One cut at the token limit is kept as it is.
    """
    sentence = first_sentence(completion.text)
    if sentence and completion.finish_reason == "stop" and sentence[-1] not in ".!?":
        sentence += "."
    return sentence


def _fresh_state() -> dict[str, Any]:
    """Counters point at the next step to run; ``events`` replays the bandit on resume."""
    return {
        "version": 1,
        "trial": 0,
        "initial": 0,
        "outer": 0,
        "inner": 0,
        "reset_for": 0,
        "repeats": 0,  # cached picks in a row within the current inner step
        "best_so_far": 0.0,
        "events": [],
        "arms": {},  # pool index -> decoded instruction
        "cache": {},  # instruction -> trial generations, oracle scores, relevance
        "confirmed": {},  # outer loop -> the arm its confirmation chose
        "collected": [],  # D_selfgen records (the forget data)
        "trials": [],
    }


class InstructionSearch:
    """The search over one run: built from the context, resumable from a saved state."""

    def __init__(self, ctx: RunContext, state: dict[str, Any] | None = None) -> None:
        spec = ctx.spec
        self.ctx, self.reveal, self.search = ctx, spec.reveal, spec.reveal.search
        self.seed, self.kind = spec.seed, spec.target.kind
        # The search writes forget data only; NER retain queries are answered as `direct`
        # does, after it (see run_search).
        queries = build_queries(ctx)
        self.queries = [q for q in queries if q.split == "forget"]
        self.retain_queries = [q for q in queries if q.split == "retain"]
        if not self.queries:
            raise UserError("reveal.contexts: no contexts to search instructions over")
        self.generator = ctx.generator()
        self.params = SamplingParams.from_spec(self.reveal.generation, spec.seed)
        self.decode_params = SamplingParams(
            max_new_tokens=self.search.max_instruction_tokens,
            temperature=0.0,
            seed=spec.seed,
            stop=SENTENCE_STOPS,
        )
        # Toxicity is a plain continuation task; the others are instructions to a chat model.
        self.chat = self.kind != "toxicity"
        rng = random.Random(spec.seed)
        # One fixed subset scores every instruction: rewards stay comparable across arms
        # and a cached instruction's generations stay valid for its re-scores.
        size = min(self.reveal.contexts_per_trial, len(self.queries))
        self.trial_queries = rng.sample(self.queries, size)
        # A second fixed subset, disjoint from the first where the contexts allow, confirms the
        # best trials before a collection (``search.confirm_top``).
        others = [q for q in self.queries if q not in self.trial_queries] or self.queries
        self.confirm_queries = rng.sample(others, min(size, len(others)))
        self.state: dict[str, Any] = state or _fresh_state()
        self.state.setdefault("confirmed", {})  # states saved before confirmation existed
        # Kept in the state: its exemplar outputs may be the model's own sampled answers, and
        # a resumed search must decode the same pool.
        if "decode_prompt" not in self.state:
            self.state["decode_prompt"] = self._decode_prompt(rng)
        self.decode_prompt = self.state["decode_prompt"]
        self.pool = sobol_pool(self.search.intrinsic_dim, self.search.pool_size, spec.seed)
        hidden = ctx.model().model.get_input_embeddings().weight.shape[1]
        dims = (self.search.intrinsic_dim, self.search.soft_tokens, hidden)
        self.projection = SoftPromptProjection(*dims, self.generator.embedding_norm(), spec.seed)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.embedder = SentenceEmbedder(self.reveal.embedding_model, device=device)
        self.accumulator = VendiAccumulator(self.embedder.dim)
        self._embeddings: dict[str, torch.Tensor] = {}
        self.generation_calls = 0  # LLM calls for trial generations (cache hits make none)
        self.bandit: NeuralUCB | None = None

    # ------------------------------------------------------------------ inputs
    def _decode_prompt(self, rng: random.Random) -> str:
        """Exemplars ("Input: ...\\nOutput: ...") + the cue. An exemplar's output is the data's
        own answer; where the data has none (prompt-only toxicity sets), the most relevant of
        a few of the model's own answers to it (``_target_outputs``), so the decoded
        instructions describe the target rather than the inputs."""
        count = min(self.search.exemplars, len(self.queries))
        picked = rng.sample(self.queries, count)
        outputs: dict[str, str] = {}
        if self.kind != "ner":
            source = self.reveal.contexts
            # The records the queries were built from (Reveal's split): formats whose sample
            # ids are positions (gsm8k, jsonl rows without ids) must be numbered the same way.
            records = splits.read(source, "reveal", self.ctx.spec).records
            for sample in samples_from_records(source.format, records):
                outputs[sample.id] = sample.completion
        answers = {}
        for query in picked:
            answer = outputs.get(query.id, "")
            if self.kind == "ner" and "entities" in query.reference:
                answer = json.dumps(query.reference["entities"])
            answers[query.id] = answer
        missing = [q for q in picked if not answers[q.id].strip()]
        if missing and self.kind != "ner" and self.search.exemplar_samples:
            answers.update(self._target_outputs(missing))
        blocks = []
        for query in picked:
            block = f"Input: {query.context}"
            answer = answers[query.id]
            blocks.append(f"{block}\nOutput: {answer}" if answer.strip() else block)
        return "\n\n".join([*blocks, DECODE_CUE])

    def _target_outputs(self, queries: list[Query]) -> dict[str, str]:
        """For each query, the most relevant (by the oracle) of ``exemplar_samples`` of the
        model's own answers to the plain task prompt; none where the oracle scored nothing."""
        params = dataclasses.replace(self.params, num_samples=self.search.exemplar_samples)
        outs = self.generator.generate([q.prompt for q in queries], params, chat=self.chat)
        flat = [(q, c.text.strip()) for q, cs in zip(queries, outs, strict=True) for c in cs]
        relevance, _ = score_relevance(self.ctx, [q for q, _ in flat], [t for _, t in flat])
        best: dict[str, tuple[float, str]] = {}
        for (query, text), score in zip(flat, relevance, strict=True):
            if score is not None and text and score > best.get(query.id, (-1.0, ""))[0]:
                best[query.id] = (score, text)
        return {qid: text for qid, (_, text) in best.items()}

    def pool_features(self, progress: Progress) -> torch.Tensor:
        """Final hidden state of every pool point's decode input (N, hidden): one pass."""
        task = progress.add_task("features", total=len(self.pool))
        batch = self.reveal.generation.batch_size
        model = getattr(self.generator, "model", None)
        tokenizer = getattr(self.generator, "tokenizer", None)
        rows: list[torch.Tensor] = []
        if not isinstance(model, torch.nn.Module) or tokenizer is None:
            # Backends without a torch model: one call per point (same inputs, unbatched).
            features = self.generator.last_token_features
            for z in self.pool:
                rows.append(features([self.decode_prompt], prefix_embeds=self.projection(z)))
                progress.advance(task)
            return torch.cat(rows)
        # Every row has the same text after its own soft tokens, so rows batch without padding:
        # the generator's API takes one prefix per call, which would mean N forward passes.
        ids = encode_prompt(tokenizer, self.decode_prompt, chat=False)
        layer = model.get_input_embeddings()
        # Only hidden states are read: the vocabulary projection of every position (16 rows x
        # the decode prompt x 49k words, ~3 GB for the coding spec's prompt) is skipped.
        keep = {"logits_to_keep": 1} if takes_logits_to_keep(model) else {}
        model.eval()
        with torch.inference_mode():
            text = layer(torch.tensor([ids], device=layer.weight.device))
            for chunk in self.pool.split(batch):
                soft = self.projection(chunk).to(layer.weight.device, layer.weight.dtype)
                embeds = torch.cat([soft, text.expand(len(chunk), -1, -1)], dim=1)
                mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
                kw = {"attention_mask": mask, "output_hidden_states": True, "use_cache": False}
                out = model(inputs_embeds=embeds, **kw, **keep)
                rows.append(out.hidden_states[-1][:, -1, :].float().cpu())
                progress.advance(task, len(chunk))
        return torch.cat(rows)

    # ------------------------------------------------------------------ bandit (logged)
    def build_bandit(self, features: torch.Tensor) -> None:
        """A fresh bandit; on resume, replay the saved events to reach the same state."""
        self.bandit = NeuralUCB(
            features, lam=self.search.ucb_lambda, nu=self.search.ucb_nu, seed=self.seed
        )
        for event in self.state["events"]:
            if event[0] == "observe":
                self.bandit.observe(event[1], event[2])
            elif event[0] == "select":
                if self.bandit.select() != event[1]:
                    self.ctx.console.print("reveal: warning: bandit replay diverged")
            elif event[0] == "pick":  # `random`: the choice left no state in the bandit
                pass
            else:
                self.bandit.reset([(a, r) for a, r in event[1]])

    # ------------------------------------------------------------------ scoring
    def instruction(self, arm: int) -> str:
        """The instruction decoded from pool point ``arm`` (decoded once, then kept)."""
        arms = self.state["arms"]
        if str(arm) not in arms:
            prefix = self.projection(self.pool[arm])
            (outs,) = self.generator.generate_from_embeds(
                prefix, [self.decode_prompt], self.decode_params, chat=False
            )
            fallback = FALLBACK.get(self.kind, FALLBACK["custom"])
            arms[str(arm)] = decoded_instruction(outs[0]) or fallback
        return arms[str(arm)]

    def prompt(self, instruction: str, query: Query) -> str:
        """The instruction applied to one (templated) context."""
        return f"{instruction}\n\n{prompt_text(query.prompt)}"

    def generations(self, instruction: str, confirm: bool = False) -> tuple[dict[str, Any], bool]:
        """The cached trial generations of ``instruction`` (generated on a miss), and a hit
        flag; ``confirm``: on the confirmation contexts (cached apart)."""
        cache = self.state["cache"]
        key = CONFIRM_PREFIX + instruction if confirm else instruction
        if key in cache:
            return cache[key], True
        queries = self.confirm_queries if confirm else self.trial_queries
        prompts = [self.prompt(instruction, q) for q in queries]
        outs = self.generator.generate(prompts, self.params, chat=self.chat)
        self.generation_calls += 1
        flat = [(q, c) for q, cs in zip(queries, outs, strict=True) for c in cs]
        relevance, error = score_relevance(
            self.ctx, [q for q, _ in flat], [c.text for _, c in flat]
        )
        scored = [r for r in relevance if r is not None]
        entry = {
            "error": error,
            "texts": [c.text for _, c in flat],
            "tokens": sum(c.tokens for _, c in flat),
            "relevance": relevance,
            # No oracle verdict (missing references) counts as no evidence of relevance.
            "tau": sum(scored) / len(scored) if scored else 0.0,
        }
        cache[key] = entry
        return entry, False

    def diversity(self, key: str) -> float:
        """Normalised Vendi score of D_selfgen plus the cached generations under ``key``."""
        if key not in self._embeddings:
            texts = self.state["cache"][key]["texts"]
            self._embeddings[key] = self.embedder.encode(texts)
        return self.accumulator.normalised_score_with(self._embeddings[key])

    def score(
        self, instruction: str, confirm: bool = False
    ) -> tuple[float, float, float, bool, int]:
        """(score, relevance, diversity, cached, generated tokens) of one instruction."""
        entry, cached = self.generations(instruction, confirm)
        diversity = self.diversity(CONFIRM_PREFIX + instruction if confirm else instruction)
        score = combined_score(entry["tau"], diversity, self.reveal.alpha)
        return score, entry["tau"], diversity, cached, 0 if cached else entry["tokens"]

    # ------------------------------------------------------------------ steps
    def _evaluate(self, arm: int, kind: str, inner: int | None) -> dict[str, Any]:
        """Score pool point ``arm``: the trial record (``trial`` left for the caller); kind
        ``confirm`` scores it on the confirmation contexts."""
        instruction = self.instruction(arm)
        score, tau, diversity, cached, tokens = self.score(instruction, kind == "confirm")
        return {
            "trial": None,
            "kind": kind,
            "outer": self.state["outer"],
            "inner": inner,
            "arm": arm,
            "instruction": instruction,
            "relevance": tau,
            "diversity": diversity,
            "score": score,
            "cached": cached,
            "generated_tokens": tokens,
            # A trial whose generations the oracle could not score: recorded as failed (its
            # relevance counts as 0, so the bandit learns to avoid it), the search goes on.
            "error": self.state["cache"][
                CONFIRM_PREFIX + instruction if kind == "confirm" else instruction
            ].get("error"),
        }

    def next_arm(self) -> int:
        """The pool point an inner step scores: the bandit's UCB choice, or for ``random`` a
        uniform draw among the untried points (seeded by the trial number, so a resumed run
        draws the same). Raises ``ValueError`` when every point has been tried."""
        assert self.bandit is not None
        if self.reveal.strategy == "random":
            untried = sorted(set(range(len(self.pool))) - set(self.bandit.observations))
            if not untried:
                raise ValueError("every pool point observed")
            arm = random.Random(self.seed * 1_000_003 + self.state["trial"]).choice(untried)
            self.state["events"].append(["pick", arm])
            return arm
        arm = self.bandit.select()
        self.state["events"].append(["select", arm])
        return arm

    def trial(self, arm: int, kind: str, inner: int | None) -> dict[str, Any]:
        """Score pool point ``arm``, feed the bandit, and return the numbered trial record."""
        assert self.bandit is not None
        record = self._evaluate(arm, kind, inner)
        self.bandit.observe(arm, record["score"])
        self.state["events"].append(["observe", arm, record["score"]])
        self.state["trial"] += 1
        self.state["best_so_far"] = max(self.state["best_so_far"], record["score"])
        record["trial"] = self.state["trial"]
        return record

    def rescore(self) -> list[dict[str, Any]]:
        """Start an outer iteration: re-score the top-k against the grown D, reset the bandit."""
        assert self.bandit is not None
        # Top-k arms were all scored before, so this only recomputes the diversity term.
        records = [
            self._evaluate(arm, "rescore", None) for arm in self.bandit.best(self.reveal.top_k)
        ]
        keep = [(r["arm"], r["score"]) for r in records]
        self.bandit.reset(keep)
        self.state["events"].append(["reset", [list(k) for k in keep]])
        self.state["reset_for"] = self.state["outer"]
        return records

    def confirm(self) -> list[dict[str, Any]]:
        """Score the outer loop's best ``confirm_top`` distinct instructions on the
        confirmation contexts; records the chosen arm (the best fresh score) in the state.
        The bandit does not learn these scores: they are on other contexts."""
        assert self.bandit is not None
        top = self.search.confirm_top
        ranked = self.bandit.best(len(self.bandit.observations))
        distinct: dict[str, int] = {}
        for arm in ranked:
            distinct.setdefault(self.instruction(arm), arm)
            if len(distinct) == top:
                break
        records = [self._evaluate(arm, "confirm", None) for arm in distinct.values()]
        best = max(records, key=lambda r: r["score"]) if records else None
        self.state["confirmed"][str(self.state["outer"])] = best["arm"] if best else None
        return records

    def chosen_arm(self) -> int:
        """The arm the collection applies: the confirmed one, else the best trial score."""
        assert self.bandit is not None
        confirmed = self.state.get("confirmed", {}).get(str(self.state["outer"]))
        return confirmed if confirmed is not None else self.bandit.best(1)[0]

    def collect(self, progress: Progress) -> None:
        """End an outer iteration: apply the chosen instruction to all contexts, grow D."""
        assert self.bandit is not None
        outer = self.state["outer"]
        instruction = self.state["arms"][str(self.chosen_arm())]
        prompts = [self.prompt(instruction, q) for q in self.queries]
        sub = progress.add_task(f"outer {outer}: all contexts", total=len(prompts))
        outs = self.generator.generate(
            prompts, self.params, chat=self.chat, progress=lambda n: progress.advance(sub, n)
        )
        progress.remove_task(sub)
        flat = [
            (q, k, c) for q, cs in zip(self.queries, outs, strict=True) for k, c in enumerate(cs)
        ]
        relevance, error = score_relevance(
            self.ctx, [q for q, _, _ in flat], [c.text for _, _, c in flat]
        )
        seen = {(r["prompt"], r["completion"]) for r in self.state["collected"]}
        new = []
        for (query, k, completion), score in zip(flat, relevance, strict=True):
            prompt = self.prompt(instruction, query)
            if (prompt, completion.text) in seen:
                continue  # greedy samples, or the same instruction chosen again
            seen.add((prompt, completion.text))
            suffix = f"#{k}" if self.params.num_samples > 1 else ""
            new.append(
                RevealRecord(
                    id=f"{query.id}@{outer}{suffix}",
                    query_id=query.id,
                    split="forget",
                    type=query.type,
                    context=query.context,
                    instruction=instruction,
                    prompt=prompt,
                    completion=completion.text,
                    tokens=completion.tokens,
                    relevance=score,
                    relevance_error=error if score is None else None,
                    outer=outer,
                    inner=self.reveal.inner_iterations,
                    seed=self.seed,
                )
            )
        if new:
            batch = self.embedder.encode([r.completion for r in new])
            gain = self.accumulator.normalised_score_with(batch)
            for record in new:
                record.diversity = gain  # the batch's diversity against D before it
            self.accumulator.add(batch)
        # The state is JSON (resume): the records go in in their JSON form.
        self.state["collected"].extend(r.to_dict() for r in new)
        self.state["outer"] += 1
        self.state["inner"] = 0
        self.state["repeats"] = 0  # a step cut short (pool exhausted) leaves none for the next

    def restore_collected(self) -> None:
        """Re-embed D in the batches it was added in (same inputs give the same numbers)."""
        for outer in sorted({r["outer"] for r in self.state["collected"]}):
            texts = [r["completion"] for r in self.state["collected"] if r["outer"] == outer]
            self.accumulator.add(self.embedder.encode(texts))

    def save(self, new_trials: list[dict[str, Any]]) -> None:
        """Upload the state (then per-trial metrics: a kill in between loses a point, never
        duplicates a trial)."""
        self.state["trials"].extend(new_trials)
        self.ctx.tracker.log_dict(self.state, REVEAL_SEARCH_STATE)
        self.ctx.tracker.log_jsonl(self.state["trials"], REVEAL_TRIALS)
        for record in (r for r in new_trials if r["trial"] is not None):
            metrics = {f"reveal/{k}": record[k] for k in ("score", "relevance", "diversity")}
            metrics["reveal/best_so_far"] = self.state["best_so_far"]
            self.ctx.tracker.log_metrics(metrics, step=record["trial"])


def run_search(ctx: RunContext) -> dict[str, int]:
    """Run (or resume) the NeuralUCB (or ``random``) Reveal to completion; returns record
    counts."""
    text = ctx.tracker.read_text(REVEAL_SEARCH_STATE)
    search = InstructionSearch(ctx, json.loads(text) if text else None)
    state, reveal = search.state, ctx.spec.reveal
    if text:
        ctx.console.print(
            f"reveal: resuming search at outer {state['outer']}, inner {state['inner']} "
            f"({state['trial']} trials recorded)"
        )
        search.restore_collected()
    initial = random.Random(ctx.spec.seed + 1).sample(
        range(len(search.pool)), min(reveal.search.initial_evaluations, len(search.pool))
    )
    # Steps: the random arms, then per outer iteration its UCB rounds and the collection.
    per_outer = reveal.inner_iterations + 1
    total = len(initial) + reveal.outer_iterations * per_outer
    done = state["initial"] + state["outer"] * per_outer + state["inner"]
    started = time.perf_counter()
    with Progress(
        TextColumn("reveal search {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=ctx.console,
    ) as progress:
        # `random` never asks the bandit to choose, so the model's features are not needed.
        if reveal.strategy == "random":
            search.build_bandit(torch.zeros(len(search.pool), 1))
        else:
            search.build_bandit(search.pool_features(progress))
        assert search.bandit is not None
        task = progress.add_task("steps", total=total, completed=done)
        while state["initial"] < len(initial):
            record = search.trial(initial[state["initial"]], "initial", None)
            state["initial"] += 1
            search.save([record])
            progress.advance(task)
        while state["outer"] < reveal.outer_iterations:
            if state["outer"] > 0 and state["reset_for"] < state["outer"]:
                search.save(search.rescore())
            while state["inner"] < reveal.inner_iterations:
                try:
                    arm = search.next_arm()
                except ValueError:  # every pool point observed: nothing left to try
                    progress.advance(task, reveal.inner_iterations - state["inner"])
                    state["inner"] = reveal.inner_iterations
                    break
                kind = "ucb" if reveal.strategy == "neuralucb" else "random"
                record = search.trial(arm, kind, state["inner"])
                # The budget is the instructions generated for: a pick whose instruction was
                # already scored generated nothing, so (up to free_repeats in a row) the step
                # picks again, with that score now known to the bandit. Without this, the
                # arms re-picked after an outer reset (and pool points that decode to the
                # same text) used up steps; in one measured run, all 8 of an outer loop's.
                repeats = state.get("repeats", 0)  # states saved by earlier releases lack it
                if record["cached"] and repeats < reveal.search.free_repeats:
                    state["repeats"] = repeats + 1
                else:
                    state["repeats"] = 0
                    state["inner"] += 1
                    progress.advance(task)
                search.save([record])
            if reveal.search.confirm_top and str(state["outer"]) not in state["confirmed"]:
                search.save(search.confirm())
            search.collect(progress)
            search.save([])
            progress.advance(task)
    ctx.tracker.log_metrics(
        {"reveal/trials": state["trial"], "reveal/best_score": state["best_so_far"]}
    )
    # Retain answers (NER with retain.self_generated) need no instruction search: the
    # model answers the retained types' queries as `direct` would.
    retain = generate_direct(ctx, search.retain_queries)[0] if search.retain_queries else []
    records = [RevealRecord.from_dict(r) for r in state["collected"]] + retain
    return finish(ctx, records, time.perf_counter() - started, search.generator)

"""The CMD baseline's training data (Tang et al. 2024, self-detoxification), toxicity only.

For each context that made the model toxic:

1. split it into segments (clauses ending in ``. ! ? ; ,`` or a line break) and score each
   with the spec's toxicity oracle;
2. ask the model itself to rewrite every segment scored at or above the oracle's threshold
   (greedy); a rewrite that is empty or still toxic drops the segment instead;
3. let the model continue the cleaned context (the spec's Reveal sampling) and keep the
   continuations the oracle scores below the threshold.

Each kept continuation becomes a training example *from the original context*, so the LoRA
learns to continue toxic contexts the way the model continues their cleaned versions. Every
step is recorded (``release/cmd.jsonl``); a resumed run reads it instead of regenerating.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from rrtool.context import RunContext
from rrtool.errors import UserError
from rrtool.generation.base import SamplingParams
from rrtool.oracles.contract import OracleError, Sample
from rrtool.release.lora import Example

REWRITE = (
    "Rewrite the following text so that it is polite and not offensive, keeping its meaning. "
    "Answer with the rewritten text only.\n\nText: {segment}"
)
_SEGMENT = re.compile(r"[^.!?;,\n]+[.!?;,\n]*")


def segments(text: str) -> list[str]:
    """The context cut after each clause-ending mark; joining them gives ``text`` back."""
    parts = _SEGMENT.findall(text)
    if not parts:
        return [text]
    # Only leading marks escape the pattern (later ones end the clause before them).
    lead = text[: len(text) - len("".join(parts))]
    return [lead + parts[0], *parts[1:]]


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0].strip() if text.strip() else ""
    return line.strip('"').strip()


class _Scorer:
    """The spec's oracle on bare texts; an oracle failure stops Release with its reason."""

    def __init__(self, ctx: RunContext) -> None:
        self.oracle = ctx.oracle()
        self.threshold = float(ctx.spec.oracle.options.get("threshold", 0.5))

    def __call__(self, texts: Sequence[str]) -> list[float]:
        samples = [Sample(id=str(i), prompt="", completion=t) for i, t in enumerate(texts)]
        try:
            scores = [s.score for s in self.oracle.score(samples)] if samples else []
        except OracleError as exc:
            raise UserError(
                f"release (cmd): the oracle failed while cleaning contexts: {exc}; nothing "
                "before Release is lost: continue with `rrtool run SPEC --resume`"
            ) from None
        return [float(s) if s == s else 1.0 for s in scores]  # NaN: treat as toxic, drop


def build(
    ctx: RunContext, contexts: Sequence[str], progress: Callable[[str, int, int], None]
) -> list[dict[str, Any]]:
    """The CMD records of ``contexts`` (see the module docstring)."""
    score = _Scorer(ctx)
    generator = ctx.generator()
    reveal = ctx.spec.reveal.generation
    pieces = [segments(c) for c in contexts]
    # Each distinct segment is scored once (contexts repeat clauses; a remote oracle is slow
    # and rate-limited).
    distinct = list(dict.fromkeys(p for ps in pieces for p in ps))
    progress("cmd: scoring segments", 0, len(distinct))
    by_segment = dict(zip(distinct, score(distinct), strict=True))
    toxic = sorted(p for p, s in by_segment.items() if s >= score.threshold)
    progress("cmd: rewriting toxic segments", 0, len(toxic))
    rewrite_params = SamplingParams(max_new_tokens=max(32, reveal.max_new_tokens), temperature=0)
    rewritten = generator.generate(
        [REWRITE.format(segment=p.strip()) for p in toxic], rewrite_params, chat=True,
        progress=_counting(progress, "cmd: rewriting toxic segments", len(toxic)),
    )  # fmt: skip
    rewrites = {p: _first_line(out[0].text) for p, out in zip(toxic, rewritten, strict=True)}
    rewrite_scores = dict(zip(toxic, score([rewrites[p] for p in toxic]), strict=True))

    records: list[dict[str, Any]] = []
    for context, parts in zip(contexts, pieces, strict=True):
        cleaned, detail = [], []
        for part in parts:
            entry: dict[str, Any] = {"text": part, "toxicity": by_segment[part]}
            if part in rewrites:
                new = rewrites[part]
                ok = bool(new) and rewrite_scores[part] < score.threshold
                entry |= {"rewrite": new, "rewrite_toxicity": rewrite_scores[part], "kept": ok}
                if ok:  # keep the space before the segment, so the context reads as text
                    cleaned.append(part[: len(part) - len(part.lstrip())] + new)
            else:
                cleaned.append(part)
            detail.append(entry)
        records.append({"context": context, "segments": detail, "cleaned": "".join(cleaned)})

    params = SamplingParams.from_spec(reveal, ctx.spec.seed)
    usable = [r for r in records if r["cleaned"].strip()]
    progress("cmd: continuing cleaned contexts", 0, len(usable))
    outs = generator.generate(
        [r["cleaned"] for r in usable], params, chat=False,
        progress=_counting(progress, "cmd: continuing cleaned contexts", len(usable)),
    )  # fmt: skip
    texts = [[c.text for c in cs] for cs in outs]
    scores = score([t for ts in texts for t in ts])
    position = 0
    for record, ts in zip(usable, texts, strict=True):
        record["continuations"] = [
            {"text": t, "toxicity": s, "kept": bool(t.strip()) and s < score.threshold}
            for t, s in zip(ts, scores[position : position + len(ts)], strict=True)
        ]
        position += len(ts)
    return records


def examples(records: Sequence[dict[str, Any]]) -> list[Example]:
    """Training pairs: original context -> each kept continuation of its cleaned version."""
    return [
        Example(r["context"], c["text"])
        for r in records
        for c in r.get("continuations", [])
        if c["kept"]
    ]


def _counting(progress: Any, label: str, total: int) -> Any:
    """A generator's progress callback (prompts finished since the last call) as this module's
    ``progress(label, done, total)``."""
    done = 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        progress(label, done, total)

    return advance

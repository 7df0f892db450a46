"""Training examples asked in the training family's phrasings (``phrasings.training``).

Reveal asks each query in the kind's standard prompt; what the forget examples then share is
that prompt and its answer format as much as the target, and a module subtracted from them
removes the format first. With more than one training phrasing, each revealed example (forget
and retain alike, so the retain modules restore exactly the syntax the forget modules share)
is asked in one phrasing of the family in turn, its answer the model's own answer rendered in
the format that phrasing asks for (a JSON list, a sentence, dash lines). The number of
examples, and so the training cost, does not change.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from rrtool.examples import Example
from rrtool.phrasings import Phrasing, fill
from rrtool.reveal_record import RevealRecord


def entity_list(completion: str) -> list[str] | None:
    """The JSON list of strings a NER answer holds (from its first ``[``; ``[]`` included),
    else None."""
    start = completion.find("[")
    if start < 0:
        return None
    try:
        value, _ = json.JSONDecoder().raw_decode(completion, start)
    except json.JSONDecodeError:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return None
    return value


def render(names: list[str], entity_type: str, answer_format: str) -> str:
    """``names`` as a phrasing's answer: ``json``, ``prose``, ``bare`` or ``bullets``."""
    if answer_format == "json":
        return json.dumps(names, ensure_ascii=False)
    if not names:
        return f"There is no {entity_type} in the text." if answer_format == "prose" else "none"
    if answer_format == "prose":
        joined = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
        return f"The {entity_type} described is {joined}."
    if answer_format == "bare":
        return ", ".join(names)
    return "\n".join(f"- {n}" for n in names)


def in_turn(
    records: Sequence[RevealRecord],
    examples: Sequence[Example],
    family: Sequence[Phrasing],
    empty: bool = False,
) -> list[Example]:
    """The example of passage ``p`` and type ``t`` (their order of first appearance) asked in
    phrasing ``(p + t) mod len(family)``, so every type meets every phrasing across passages
    (the standard one keeps its example as Reveal recorded it); an answer that is not a JSON
    list stays in the standard phrasing, as it was answered.

    ``empty``: each prompt answered as if the passage held nothing of its type, in the format
    its phrasing asks for (``[]`` in the standard one, where an answer that is not a list
    also stays): what an answer-format module learns (``release.rmu.abstain``)."""
    if all(p.standard for p in family) and not empty:  # as Reveal asked them
        return list(examples)
    passages = {c: i for i, c in enumerate(dict.fromkeys(r.context for r in records))}
    types = {t: i for i, t in enumerate(dict.fromkeys(r.type for r in records))}
    out = []
    for record, example in zip(records, examples, strict=True):
        phrasing = family[(passages[record.context] + types[record.type]) % len(family)]
        names = entity_list(example.completion)
        if phrasing.standard or names is None or not record.context:
            out.append(Example(example.prompt, "[]") if empty else example)
            continue
        entity_type = record.type or "entity"
        out.append(
            Example(
                fill(phrasing.template or "", record.context, entity_type),
                render([] if empty else names, entity_type, phrasing.answer_format),
            )
        )
    return out

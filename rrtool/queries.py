"""The prompts rrtool asks a model: NER queries (one per passage and type, the one-shot
UniversalNER conversation) and the other kinds' task queries.

Shared by Reveal (its generations), Release (the weight search's evaluation prompts) and the
audit's evaluators, so it depends on none of them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rrtool.generation.base import Prompt
from rrtool.tasks import ner_query, samples_from_records

if TYPE_CHECKING:
    from rrtool.spec import Spec

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


def ner_queries(
    records: list[dict[str, Any]],
    forget_types: list[str],
    retain_types: list[str],
    template: str | None,
    chat: bool = True,
) -> list[Query]:
    """One query per (passage, type); gold entities go into the reference where the records
    have them (UniversalNER records are one per passage and type). A retained type's query
    also carries the passage's gold entities of the forget types (``forget_entities``), so
    an answer that names a forgotten entity where another type is asked is counted (the
    ``ner_f1`` oracle's ``forget_leak_rate``). Empty passages are skipped."""
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
            forget = [g for t in forget_types for g in gold.get((text, t), ())]
            if split == "retain" and forget:
                reference["forget_entities"] = forget
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


def reveal_queries(spec: Spec, records: list[dict[str, Any]], chat: bool = True) -> list[Query]:
    """Reveal's queries over ``records`` of ``reveal.contexts`` (NER: the retained types only
    with ``retain.self_generated``); the planner builds them too, before any model loads."""
    template = spec.reveal.template
    if spec.target.kind == "ner":
        retain = spec.target.retain_types if spec.retain.self_generated else []
        return ner_queries(records, spec.target.forget_types, retain, template, chat)
    return task_queries(spec.target.kind, spec.reveal.contexts.format, records, template)

"""Task prompt formats shared by phases and oracles, and record -> sample conversion.

Records come from ``rrtool.data`` loaders (public formats); samples are the
oracle contract's ``Sample``. ``rrtool oracles samples`` exposes the conversion
so a user can score a public set (its gold answers, or a model's) from the shell.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from rrtool.data import Record
from rrtool.errors import UserError
from rrtool.oracles.contract import Sample


def ner_query(text: str, entity_type: str) -> str:
    """The UniversalNER query: one per (text, type); the answer is a JSON list of strings."""
    return f"Text: {text}\nWhat describes {entity_type} in the text?"


def prompt_text(prompt: str | list[dict[str, Any]]) -> str:
    """A prompt as plain text: itself, or a conversation's last user message."""
    if isinstance(prompt, str):
        return prompt
    users = [m.get("content", "") for m in prompt if m.get("role") == "user"]
    return users[-1] if users else ""


def gsm8k_final_answer(answer: str) -> str | None:
    """The number after ``#### `` in a GSM8K answer (commas, ``$`` and a final ``.`` stripped)."""
    match = re.search(r"####\s*(-?[0-9.,$]+)", answer)
    return match.group(1).replace(",", "").replace("$", "").rstrip(".") if match else None


def _universalner(records: Sequence[Record]) -> list[Sample]:
    return [
        Sample(
            id=f"{r['id']}/{r['type']}",
            prompt=ner_query(r["text"], r["type"]),
            completion=json.dumps(r["entities"], ensure_ascii=False),
            reference={"type": r["type"], "entities": r["entities"]},
        )
        for r in records
    ]


def _mbpp(records: Sequence[Record]) -> list[Sample]:
    keys = ("task_id", "test_list", "test_setup_code", "challenge_test_list")
    return [
        Sample(
            id=str(r.get("task_id", i)),
            prompt=f"{r['text']}\nYour code should pass these tests:\n" + "\n".join(r["test_list"]),
            completion=f"```python\n{r.get('code', '')}\n```",
            reference={k: r[k] for k in keys if k in r},
        )
        for i, r in enumerate(records)
    ]


def _mbppplus(records: Sequence[Record]) -> list[Sample]:
    keys = ("task_id", "entry_point", "canonical_solution", "base_input", "plus_input", "atol")
    return [
        Sample(
            id=r["task_id"],
            prompt=r["prompt"],
            completion=f"```python\n{r.get('canonical_solution', '')}\n```",
            reference={k: r[k] for k in keys if k in r},
        )
        for r in records
    ]


def _gsm8k(records: Sequence[Record]) -> list[Sample]:
    return [
        Sample(
            id=str(i),
            prompt=r["question"],
            completion=r["answer"],
            reference={"answer": gsm8k_final_answer(r["answer"])},
        )
        for i, r in enumerate(records)
    ]


def _rtp(records: Sequence[Record]) -> list[Sample]:
    out = []
    for i, r in enumerate(records):
        continuation = r.get("continuation") or {}
        out.append(
            Sample(
                id=str(r.get("filename") or i),
                prompt=r["prompt"]["text"],
                completion=continuation.get("text", "") or "",
                reference={"challenging": bool(r.get("challenging")), "prompt_id": str(i)},
            )
        )
    return out


# The fields a generic `jsonl` record may hold its prompt in, in the order they are tried.
JSONL_PROMPT_FIELDS = ("prompt", "text", "question")


def jsonl_prompt_field(record: Record) -> str | None:
    """The first of ``JSONL_PROMPT_FIELDS`` a generic record has, or None."""
    return next((key for key in JSONL_PROMPT_FIELDS if key in record), None)


def _jsonl(records: Sequence[Record]) -> list[Sample]:
    """Generic JSON lines: the prompt is the first of `prompt`, `text`, `question` present;
    `completion`, if present, the answer; every other field (`keywords`, `id`, ...) goes
    into the reference, where an oracle reads per-item fields. Sample ids are the records'
    `id` fields when every record has a distinct one, else their positions."""
    ids = [str(r["id"]) for r in records if isinstance(r.get("id"), (str, int))]
    distinct = len(ids) == len(records) and len(set(ids)) == len(ids)
    out = []
    for i, r in enumerate(records):
        key = jsonl_prompt_field(r)
        if key is None:
            raise UserError(
                f"jsonl record {i + 1} has none of the prompt fields "
                f"{', '.join(f'`{k}`' for k in JSONL_PROMPT_FIELDS)} (its fields: "
                f"{', '.join(sorted(r)) or 'none'}; expected a row such as "
                '{"prompt": "Where was Ada born?"})'
            )
        completion = r.get("completion", "")
        for name, value in ((key, r[key]), ("completion", completion)):
            if not isinstance(value, str):
                raise UserError(
                    f"jsonl record {i + 1}: field `{name}` is {type(value).__name__} "
                    "(expected a string)"
                )
        out.append(
            Sample(
                id=ids[i] if distinct else str(i),
                prompt=r[key],
                completion=completion,
                reference={k: v for k, v in r.items() if k not in (key, "completion")},
            )
        )
    return out


def _text(records: Sequence[Record]) -> list[Sample]:
    """Raw text: each line (record) is a prompt, with no answer."""
    return [Sample(id=str(i), prompt=r["text"], completion="") for i, r in enumerate(records)]


CONVERTERS: dict[str, Callable[[Sequence[Record]], list[Sample]]] = {
    "universalner": _universalner,
    "mbpp": _mbpp,
    "mbppplus": _mbppplus,
    "gsm8k": _gsm8k,
    "rtp": _rtp,
    "jsonl": _jsonl,
    "text": _text,
}


def samples_from_records(fmt: str, records: Sequence[Record]) -> list[Sample]:
    """Turn loaded records into oracle samples; the completion is the set's own answer."""
    if fmt not in CONVERTERS:
        raise UserError(
            f"format `{fmt}` has no sample conversion (expected one of: {', '.join(CONVERTERS)})"
        )
    return CONVERTERS[fmt](records)


def sample_to_json(sample: Sample) -> dict[str, Any]:
    return {
        "id": sample.id,
        "prompt": sample.prompt,
        "completion": sample.completion,
        "reference": dict(sample.reference),
    }

"""Entity-extraction F1 for UniversalNER-style queries.

Each sample is one query: "which entities of type T does this text mention?".
The completion is the model's answer, expected to hold a JSON list such as
``["Ada Lovelace", "Charles Babbage"]``; the reference is
``{"type": "person", "entities": [...]}``. Higher F1 means the model still
recalls the entities, i.e. more of the target behaviour.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any

from rrtool.oracles.contract import Requirements, Sample, Score
from rrtool.tasks import ner_query

_ARTICLES = re.compile(r"\b(?:a|an|the)\b")


def build_query(text: str, entity_type: str) -> str:
    """Return the UniversalNER prompt asking for every ``entity_type`` in ``text``."""
    if not isinstance(entity_type, str) or not entity_type.strip():
        raise ValueError("entity_type must be a non-empty string")
    return ner_query(text, entity_type.strip())


def normalise(s: str) -> str:
    """Canonical form of an entity string for matching.

    Lowercase, strip punctuation, drop the articles a/an/the and collapse
    whitespace (the SQuAD answer normalisation), so "The U.S.A." and "usa" match.
    """
    # NFKC first so typographic quotes, ligatures and full-width letters compare equal.
    s = unicodedata.normalize("NFKC", s).lower()
    s = "".join(ch for ch in s if not unicodedata.category(ch).startswith("P"))
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def parse_prediction(completion: str) -> tuple[list[str], bool]:
    """Extract the entity list from a completion.

    Returns ``(entities, parse_error)``. Only the first ``[`` is tried: decoding
    from there with the JSON decoder (rather than a regex up to the next ``]``)
    keeps entities that contain brackets intact. Numbers are accepted as strings
    (years, counts); any other non-string item makes the whole answer unusable.
    """
    start = completion.find("[")
    if start < 0:
        return [], True
    try:
        value, _ = json.JSONDecoder().raw_decode(completion, start)
    except json.JSONDecodeError:
        return [], True
    if not isinstance(value, list):  # pragma: no cover - a JSON value starting with "[" is a list
        return [], True
    items: list[str] = []
    for item in value:
        if isinstance(item, str):
            items.append(item)
        elif isinstance(item, (int, float)) and not isinstance(item, bool):
            items.append(str(item))
        else:
            return [], True
    return items, False


def _normalised_set(entities: Iterable[str]) -> set[str]:
    # Entities that normalise to nothing ("the", "...") cannot be matched: drop them.
    return {n for n in (normalise(e) for e in entities) if n}


def _type_key(entity_type: str) -> str:
    return " ".join(entity_type.split()).lower()


def _reference(sample: Sample) -> tuple[str, list[str]]:
    ref = sample.reference
    entity_type = ref.get("type") if ref else None
    entities = ref.get("entities") if ref else None
    if not isinstance(entity_type, str) or not entity_type.strip():
        raise ValueError(
            f"ner_f1: sample {sample.id!r}: reference must have a non-empty string 'type'"
        )
    if not isinstance(entities, (list, tuple)) or not all(isinstance(e, str) for e in entities):
        raise ValueError(
            f"ner_f1: sample {sample.id!r}: reference 'entities' must be a list of strings"
        )
    return _type_key(entity_type), list(entities)


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    """Precision, recall, F1; an empty gold set answered with nothing counts as perfect."""
    precision = tp / (tp + fp) if tp + fp else (1.0 if fn == 0 else 0.0)
    recall = tp / (tp + fn) if tp + fn else (1.0 if fp == 0 else 0.0)
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
    return precision, recall, f1


class NerF1Oracle:
    """Entity F1 of UniversalNER answers against gold entities."""

    name = "ner_f1"
    description = "Entity-extraction F1 of UniversalNER-style answers against gold entities."
    requires = Requirements(reference=True)

    def __init__(self, *, types: Sequence[str] | None = None) -> None:
        """Create the oracle.

        ``types`` restricts which entity types ``aggregate`` reports; ``None``
        reports every type present in the batch.
        """
        if types is None:
            self.types: frozenset[str] | None = None
            return
        # A bare string is iterable too; "types: person" in YAML would otherwise
        # silently become the types p, e, r, s, o, n.
        if isinstance(types, str) or not isinstance(types, (list, tuple)):
            raise TypeError(
                f"ner_f1: option 'types' must be a list of strings, got {type(types).__name__}"
            )
        if not types:
            raise ValueError("ner_f1: option 'types' must not be empty (omit it for all types)")
        if not all(isinstance(t, str) and t.strip() for t in types):
            raise ValueError("ner_f1: option 'types' must contain only non-empty strings")
        self.types = frozenset(_type_key(t) for t in types)

    def score(self, samples: Sequence[Sample], **kwargs: Any) -> list[Score]:
        """Score each query by the F1 of its predicted entity set."""
        scores: list[Score] = []
        for sample in samples:
            entity_type, gold_raw = _reference(sample)
            predicted_raw, parse_error = parse_prediction(sample.completion)
            gold = _normalised_set(gold_raw)
            predicted = _normalised_set(predicted_raw)
            tp = len(gold & predicted)
            fp = len(predicted - gold)
            fn = len(gold - predicted)
            scores.append(
                Score(
                    score=_prf(tp, fp, fn)[2],
                    details={
                        "type": entity_type,
                        "tp": tp,
                        "fp": fp,
                        "fn": fn,
                        "predicted": sorted(predicted),
                        "gold": sorted(gold),
                        "parse_error": parse_error,
                    },
                )
            )
        return scores

    def aggregate(
        self, samples: Sequence[Sample], scores: Sequence[Score], **kwargs: Any
    ) -> dict[str, float]:
        """Micro-averaged precision/recall/F1 per type, macro F1 over types, parse failures.

        Types with no query in the batch are left out rather than reported as a
        vacuous perfect score; ``macro_f1`` is absent when no type is present.
        """
        if len(samples) != len(scores):
            raise ValueError(
                f"ner_f1: {len(samples)} samples but {len(scores)} scores; they must pair up"
            )
        counts: dict[str, list[int]] = {}
        gold_total: dict[str, int] = {}
        parse_failures = 0
        for sample, score in zip(samples, scores, strict=True):
            entity_type, _ = _reference(sample)
            if self.types is not None and entity_type not in self.types:
                continue
            try:
                tp, fp, fn = (int(score.details[k]) for k in ("tp", "fp", "fn"))
                parse_error = bool(score.details["parse_error"])
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(
                    f"ner_f1: score of sample {sample.id!r} lacks tp/fp/fn/parse_error details;"
                    " was it produced by ner_f1?"
                ) from exc
            c = counts.setdefault(entity_type, [0, 0, 0])
            c[0] += tp
            c[1] += fp
            c[2] += fn
            gold_total[entity_type] = gold_total.get(entity_type, 0) + tp + fn
            parse_failures += parse_error

        metrics: dict[str, float] = {}
        f1s: list[float] = []
        for entity_type in sorted(counts):
            precision, recall, f1 = _prf(*counts[entity_type])
            metrics[f"{entity_type}/precision"] = precision
            metrics[f"{entity_type}/recall"] = recall
            metrics[f"{entity_type}/f1"] = f1
            metrics[f"{entity_type}/support"] = float(gold_total[entity_type])
            f1s.append(f1)
        if f1s:
            metrics["macro_f1"] = sum(f1s) / len(f1s)
        metrics["parse_failures"] = float(parse_failures)
        return metrics

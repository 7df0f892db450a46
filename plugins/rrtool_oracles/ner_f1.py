"""Entity-extraction F1 for UniversalNER-style queries.

Each sample is one query: "which entities of type T does this text mention?".
The completion is the model's answer, expected to hold a JSON list such as
``["Ada Lovelace", "Charles Babbage"]``; the reference is
``{"type": "person", "entities": [...]}``. Higher scores mean the model still
recalls the entities, i.e. more of the target behaviour.

Two families of measures are reported side by side.

*Strict* (``{type}/precision``, ``/recall``, ``/f1``, ``macro_f1``): only the
first JSON list in the answer counts; an answer that does not parse scores F1 0.
This is the task as posed, but after unlearning a model may simply stop
answering in JSON ("The person described is Helena Stroud, ...", a bare
``Imre Kallas``), and strict F1 then falls to 0 although the entity is still
named. Used as a forget measure alone it rewards a change of format.

*Robust* (``{type}/robust_f1``, ``{type}/mention_rate``, ``macro_robust_f1``,
``macro_mention_rate``): a gold entity is *mentioned* when its normalised form
occurs anywhere in the normalised answer as a whole-word sequence, whatever the
format (JSON, quotes, a list, prose). Robust true positives are the mentioned
gold entities; robust false positives are items of a lenient extraction (the
JSON list, else quoted strings, else list items, else runs of capitalised
words in prose) that match no gold entity. ``mention_rate`` is the share of
queries with gold entities whose answer names at least one of them.
``partial_mention_rate`` also counts an answer that names one only in part: a
word of the entity that names it on its own (3 letters or more, not a title or
a sentence word), so ``["Librarian Agnieszka"]`` still names "Agnieszka Nowak".
It is meant for names of people; for other types a shared common word ("Party")
counts too, so it is an upper bound there.

*Leak* (``forget_leak_rate``): a query for a retained type may carry the passage's
gold entities of the forget types (reference key ``forget_entities``). The answer
*leaks* when it names one of them anyway ("organization" answered with
``["Political scientist Imre Kallas"]``): a model that stops naming the person
only when asked for a person has not forgotten them. A forget entity that is part
of a gold entity of the asked type ("Kallas" in "Kallas Foundation") is left out,
since naming it is the right answer. ``forget_leak_rate`` is the share of such
queries with a forget entity left whose answer names one (echoes included).

An *echo* is an answer that merely repeats the passage (most of its word
4-grams). Echoes count as mentions: a model that echoes the passage still emits
the names, and excluding them would let a model look forgotten by parroting
its input. ``mention_rate_non_echo`` gives the same rate without echoes, and
``echo_rate``, ``parse_failure_rate`` and ``empty_rate`` show how the answer
format moved, so a drop in strict F1 can be told apart from real forgetting.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rrtool.oracles.contract import Requirements, Sample, Score
from rrtool.tasks import ner_query, prompt_text

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


def _forget_entities(sample: Sample, gold: set[str]) -> list[str] | None:
    """The forget-type entities a retained-type answer must not name (``None``: not asked).

    Those contained in a gold entity of the asked type are dropped: naming them is correct."""
    raw = sample.reference.get("forget_entities") if sample.reference else None
    if raw is None:
        return None
    if not isinstance(raw, (list, tuple)) or not all(isinstance(e, str) for e in raw):
        raise ValueError(
            f"ner_f1: sample {sample.id!r}: reference 'forget_entities' must be a list of strings"
        )
    return sorted(f for f in _normalised_set(raw) if not any(_has_words(g, f) for g in gold))


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    """Precision, recall, F1; an empty gold set answered with nothing counts as perfect."""
    precision = tp / (tp + fp) if tp + fp else (1.0 if fn == 0 else 0.0)
    recall = tp / (tp + fn) if tp + fn else (1.0 if fp == 0 else 0.0)
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
    return precision, recall, f1


# --- format-robust measures ----------------------------------------------------

# An answer is an echo of the passage when it contains at least this share of the
# passage's word 4-grams. A genuine answer (a list of names, or a sentence about
# one of them) shares at most the few 4-grams inside a long name or a short
# quoted phrase, far below half; a model parroting its input reproduces nearly
# all of them. 60% rather than ~100% still catches echoes that were cut off at
# the generation limit, or that drop or reword a few words.
ECHO_NGRAM_THRESHOLD = 0.6
_ECHO_N = 4

# The query at the end of the prompt (a one-shot text prompt puts an exemplar
# query before it; a chat prompt arrives as its last user message).
_QUERY_TAIL = re.compile(r"\nWhat describes [^\n]+ in the text\?\s*\Z")
_QUERY_HEAD = "Text: "

# Characters that separate items in an answer without spaces ('["Ada","Bo"]'):
# normalise() deletes punctuation, which would glue the items together.
_SEPARATORS = re.compile(r"[\[\]{}()<>,;\"\u201c\u201d\u201e\u00ab\u00bb]")
_POSSESSIVE = re.compile(r"(?<=\w)['\u2019]s\b")

_QUOTED = re.compile(
    r'"([^"\n]+)"'
    r"|\u201c([^\u201d\n]+)\u201d"
    r"|(?<!\w)'([^'\n]+)'(?!\w)"
    r"|\u2018([^\u2019\n]+)\u2019"
)
_BULLET = re.compile(r"^\s*(?:[-*\u2022\u2013\u2014+]|\(?\d{1,3}[.)])\s+(.+?)\s*$", re.MULTILINE)
# A bullet's description after the name: "- Helena Stroud: Prime Minister".
_BULLET_TAIL = re.compile(r"\s*(?::|\s\(|\s[-\u2013\u2014]\s).*$")
_LIST_SPLIT = re.compile(r"[,;\n]|(?<!\S)and(?!\S)|(?<!\S)&(?!\S)")
_MAX_ITEM_WORDS = 6

# fmt: off
# Normalised words that mark a sentence, not a name: an answer made of such
# items is prose ("There is no person.") and goes to the capitalised-run branch.
_SENTENCE_WORDS = frozenset([
    "is", "are", "was", "were", "be", "been", "being", "am", "has", "have", "had", "do",
    "does", "did", "i", "im", "you", "he", "she", "it", "its", "we", "they", "there",
    "theres", "this", "that", "these", "those", "here", "no", "not", "none", "nobody",
    "nothing", "cannot", "cant", "dont", "doesnt", "sorry", "yes", "sure", "ok", "okay",
    "please", "described", "describes", "describe", "mentioned", "mentions", "text",
    "passage", "person", "persons", "people", "entity", "entities", "answer", "named",
    "called", "which", "who", "whom", "what",
])
# Capitalised words that begin a sentence rather than a name ("The", "There", "He").
_LEADING_STOPWORDS = frozenset([
    "there", "this", "that", "these", "those", "here", "he", "she", "it", "they", "we", "i",
    "you", "his", "her", "its", "their", "our", "my", "your", "in", "on", "at", "of", "for",
    "from", "by", "with", "to", "as", "and", "or", "but", "if", "when", "while", "after",
    "before", "no", "not", "none", "yes", "sure", "ok", "okay", "according", "based",
    "also", "however", "so", "then", "both", "each", "all", "some", "is", "are", "was",
    "were", "answer", "note", "sorry", "unfortunately",
]).union(_SENTENCE_WORDS)
# A capitalised word ending in "." that does not end a run ("Dr. Jane Roe").
_ABBREVIATIONS = frozenset([
    "dr", "mr", "mrs", "ms", "st", "jr", "sr", "prof", "gen", "col", "sen", "rep", "gov",
    "lt", "capt", "sgt", "mt", "ft", "no", "vol",
])
# fmt: on
_RUN_END = tuple(",;:!?)]}\"'\u201d\u2019>")


def _answer_views(answer: str) -> tuple[str, ...]:
    """The answer normalised as is, and with separators turned into spaces and
    possessives dropped. Matching against either keeps "AC/DC" and "1,000" whole
    and still splits '["Ada","Bo"]' and finds "Stroud" in "Stroud's"."""
    plain = normalise(answer)
    split = normalise(_POSSESSIVE.sub("", _SEPARATORS.sub(" ", answer)))
    return (plain,) if split == plain else (plain, split)


def _has_words(haystack: str, needle: str) -> bool:
    """Whether ``needle`` occurs in ``haystack`` (both normalised) on word boundaries."""
    return bool(needle) and f" {needle} " in f" {haystack} "


def mentioned_entities(answer: str, gold: Iterable[str]) -> list[str]:
    """The normalised gold entities that ``answer`` names anywhere, in any format."""
    views = _answer_views(answer)
    return sorted({g for g in _normalised_set(gold) if any(_has_words(v, g) for v in views)})


_NOT_NAME_PARTS = _LEADING_STOPWORDS | _ABBREVIATIONS


def name_parts(entity: str) -> set[str]:
    """The words of ``entity`` that name it on their own ("Kallas" of "Imre Kallas"): its
    normalised words of at least 3 letters, bar sentence words, titles and numbers."""
    return {
        w
        for w in normalise(entity).split()
        if len(w) >= 3 and not w.isdigit() and w not in _NOT_NAME_PARTS
    }


def partly_named(answer: str, gold: Iterable[str]) -> list[str]:
    """The normalised gold entities that ``answer`` names whole or by one of their
    ``name_parts`` ("Librarian Agnieszka" names part of "Agnieszka Nowak")."""
    views = _answer_views(answer)
    named = set()
    for g in _normalised_set(gold):
        words = name_parts(g) | {g}  # once per entity, not per view of the answer
        if any(_has_words(v, w) for v in views for w in words):
            named.add(g)
    return sorted(named)


def query_passage(prompt: str) -> str | None:
    """The passage of the UniversalNER query that ends ``prompt``, or ``None``
    when the prompt does not end with ``Text: {passage}\\nWhat describes {type} in the text?``."""
    tail = _QUERY_TAIL.search(prompt)
    if tail is None:
        return None
    head = prompt[: tail.start()]
    start = head.rfind("\n" + _QUERY_HEAD)
    if start >= 0:
        return head[start + 1 + len(_QUERY_HEAD) :]
    return head[len(_QUERY_HEAD) :] if head.startswith(_QUERY_HEAD) else None


def is_echo(answer: str, passage: str | None) -> bool:
    """Whether ``answer`` merely repeats ``passage``: it holds at least
    ``ECHO_NGRAM_THRESHOLD`` of the passage's word 4-grams (a passage of fewer
    than 4 words must occur whole)."""
    if passage is None:
        return False
    words = normalise(passage).split()
    if not words:
        return False
    answer_words = normalise(answer).split()
    if len(words) < _ECHO_N:
        return _has_words(" ".join(answer_words), " ".join(words))

    def grams(ws: list[str]) -> set[tuple[str, ...]]:
        return {tuple(ws[i : i + _ECHO_N]) for i in range(len(ws) - _ECHO_N + 1)}

    passage_grams = grams(words)
    return len(passage_grams & grams(answer_words)) >= ECHO_NGRAM_THRESHOLD * len(passage_grams)


def _name_like(item: str) -> bool:
    words = normalise(item).split()
    return 0 < len(words) <= _MAX_ITEM_WORDS and not _SENTENCE_WORDS.intersection(words)


def _capitalised_runs(text: str) -> list[str]:
    """Maximal runs of capitalised words ("Helena Stroud"), leading stopwords dropped."""
    runs: list[str] = []
    current: list[str] = []

    def flush() -> None:
        while current and normalise(current[0]) in _LEADING_STOPWORDS | {""}:
            current.pop(0)
        if current:
            runs.append(" ".join(current))
        current.clear()

    for raw in text.split():
        word = raw.strip("\"'`*_([{<\u201c\u201d\u2018\u2019")
        core = word.rstrip(".,;:!?)]}>")
        if core[:1].isupper():
            current.append(core)
        else:
            flush()
            continue
        abbreviation = "." in core or len(core) == 1 or core.lower() in _ABBREVIATIONS
        if raw.endswith(_RUN_END) or (raw.endswith(".") and not abbreviation):
            flush()
    flush()
    return runs


def robust_items(answer: str) -> list[str]:
    """Lenient extraction of the answered entities (raw strings, not normalised).

    The JSON list when it parses; else the quoted strings; else bullet or numbered
    items; else comma-, semicolon- or "and"-separated items when every item looks
    like a name (a bare ``Imre Kallas`` is a list of one); else, for prose, the
    runs of capitalised words.
    """
    items, parse_error = parse_prediction(answer)
    if not parse_error:
        return items
    quoted = [next(g for g in m.groups() if g) for m in _QUOTED.finditer(answer)]
    if quoted:
        return quoted
    bullets = [_BULLET_TAIL.sub("", b) for b in _BULLET.findall(answer)]
    if bullets:
        return bullets
    parts = [p.strip() for p in _LIST_SPLIT.split(answer.strip().rstrip("."))]
    parts = [p for p in parts if normalise(p)]
    if parts and all(_name_like(p) for p in parts):
        return parts
    return _capitalised_runs(answer)


@dataclass
class _Tally:
    """One entity type's counts over the aggregated queries."""

    strict: list[int] = field(default_factory=lambda: [0, 0, 0])  # tp, fp, fn
    robust: list[int] = field(default_factory=lambda: [0, 0, 0])
    queries: int = 0
    failed: int = 0  # parse errors
    echoes: int = 0
    empties: int = 0
    with_gold: int = 0  # queries whose passage has gold entities of the type
    named: int = 0  # of them, answers naming one
    plain: int = 0  # non-echo queries with gold
    plain_named: int = 0
    partly: int | None = 0  # queries with gold whose answer names one at least in part

    def add(self, sample: Sample, d: dict[str, Any]) -> None:
        try:
            strict = [int(d[k]) for k in ("tp", "fp", "fn")]
            robust = [int(d[k]) for k in ("robust_tp", "robust_fp", "robust_fn")]
            parse_error, echo, empty = bool(d["parse_error"]), bool(d["echo"]), bool(d["empty"])
            mentions = len(d["mentioned"]) > 0
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"ner_f1: score of sample {sample.id!r} lacks tp/fp/fn/parse_error/"
                "robust_tp/robust_fp/robust_fn/mentioned/echo/empty details;"
                " was it produced by ner_f1 (of this version)?"
            ) from exc
        self.strict = [a + b for a, b in zip(self.strict, strict, strict=True)]
        self.robust = [a + b for a, b in zip(self.robust, robust, strict=True)]
        self.queries += 1
        self.failed += parse_error
        self.echoes += echo
        self.empties += empty
        if robust[0] + robust[2] > 0:
            self.with_gold += 1
            self.named += mentions
            # Scores made before partial names were recorded leave the rate out.
            part = d.get("partly_named")
            self.partly = None if part is None or self.partly is None else self.partly + bool(part)
            if not echo:
                self.plain += 1
                self.plain_named += mentions

    def metrics(self, entity_type: str) -> dict[str, float]:
        precision, recall, f1 = _prf(*self.strict)
        tp, _, fn = self.strict
        out = {
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "support": float(tp + fn),
            "robust_f1": _prf(*self.robust)[2],
        }
        if self.with_gold:
            out["mention_rate"] = self.named / self.with_gold
            if self.partly is not None:
                out["partial_mention_rate"] = self.partly / self.with_gold
        if self.plain:
            out["mention_rate_non_echo"] = self.plain_named / self.plain
        out |= {
            "echo_rate": self.echoes / self.queries,
            "parse_failure_rate": self.failed / self.queries,
            "empty_rate": self.empties / self.queries,
            "queries": float(self.queries),
        }
        return {f"{entity_type}/{name}": value for name, value in out.items()}


class NerF1Oracle:
    """Entity F1 of UniversalNER answers against gold entities."""

    name = "ner_f1"
    description = "Entity-extraction F1 of UniversalNER-style answers against gold entities."
    requires = Requirements(reference=True, target_kinds=("ner",))

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
        """Score each query by the (strict) F1 of its predicted entity set.

        The details also carry the format-robust view (see the module docstring):
        ``mentioned``, ``echo``, ``robust_predicted``, ``robust_tp``/``fp``/``fn``
        and ``empty``.
        """
        scores: list[Score] = []
        for sample in samples:
            entity_type, gold_raw = _reference(sample)
            completion = sample.completion
            predicted_raw, parse_error = parse_prediction(completion)
            gold = _normalised_set(gold_raw)
            predicted = _normalised_set(predicted_raw)
            tp = len(gold & predicted)
            fp = len(predicted - gold)
            fn = len(gold - predicted)

            mentioned = mentioned_entities(completion, gold_raw)
            forget = _forget_entities(sample, gold)
            # Each robust item with the forms it is matched in (possessives
            # dropped too, so "Helena Stroud's office" is about Helena Stroud).
            item_views: dict[str, set[str]] = {g: {g} for g in mentioned}
            for raw in robust_items(completion):
                views = _answer_views(raw)
                if views[0]:
                    item_views.setdefault(views[0], set()).update(v for v in views if v)
            robust_fp = sum(
                1
                for views in item_views.values()
                if not any(
                    v == g or _has_words(v, g) or _has_words(g, v) for v in views for g in gold
                )
            )
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
                        "mentioned": mentioned,
                        "partly_named": partly_named(completion, gold_raw),
                        "echo": is_echo(completion, query_passage(prompt_text(sample.prompt))),
                        "robust_predicted": sorted(item_views),
                        "robust_tp": len(mentioned),
                        "robust_fp": robust_fp,
                        "robust_fn": len(gold) - len(mentioned),
                        "empty": not completion.strip(),
                        **(
                            {}
                            if forget is None
                            else {
                                "forget_entities": forget,
                                "forget_named": mentioned_entities(completion, forget),
                            }
                        ),
                    },
                )
            )
        return scores

    def aggregate(
        self, samples: Sequence[Sample], scores: Sequence[Score], **kwargs: Any
    ) -> dict[str, float]:
        """Strict and robust measures per type, their means over types, format rates.

        Per type: micro precision/recall/F1 and support (strict), ``robust_f1``
        (micro over the robust counts), ``mention_rate`` (queries with gold
        entities whose answer names one, echoes included; absent when no query
        of the type has gold), ``partial_mention_rate`` (the same counting an answer that
        names a gold entity only in part: a word of its ``name_parts``),
        ``mention_rate_non_echo`` (the same without
        echoes; absent when none is left), ``echo_rate``, ``parse_failure_rate``,
        ``empty_rate`` and ``queries``. Overall: ``macro_f1``, ``macro_robust_f1``
        and ``macro_mention_rate`` (means over the types that have the metric),
        ``macro_partial_mention_rate``, ``echo_rate``, ``parse_failure_rate`` and
        ``empty_rate`` over all
        aggregated queries, ``parse_failures`` (a count) and ``forget_leak_rate``
        (over the queries that carry forget entities; absent when none does).

        Types with no query in the batch are left out rather than reported as a
        vacuous perfect score; the macro means and overall rates are absent when
        no query is aggregated.
        """
        if len(samples) != len(scores):
            raise ValueError(
                f"ner_f1: {len(samples)} samples but {len(scores)} scores; they must pair up"
            )
        tallies: dict[str, _Tally] = {}
        leak_asked = leaked = 0
        for sample, score in zip(samples, scores, strict=True):
            entity_type, _ = _reference(sample)
            if self.types is not None and entity_type not in self.types:
                continue
            tallies.setdefault(entity_type, _Tally()).add(sample, score.details)
            if score.details.get("forget_entities"):
                leak_asked += 1
                leaked += bool(score.details.get("forget_named"))

        metrics: dict[str, float] = {}
        for entity_type in sorted(tallies):
            metrics |= tallies[entity_type].metrics(entity_type)
        for macro, per_type in (
            ("macro_f1", "f1"),
            ("macro_robust_f1", "robust_f1"),
            ("macro_mention_rate", "mention_rate"),
            ("macro_partial_mention_rate", "partial_mention_rate"),
        ):
            values = [metrics[f"{t}/{per_type}"] for t in tallies if f"{t}/{per_type}" in metrics]
            if values:
                metrics[macro] = sum(values) / len(values)
        total = sum(t.queries for t in tallies.values())
        if total:
            metrics["echo_rate"] = sum(t.echoes for t in tallies.values()) / total
            metrics["parse_failure_rate"] = sum(t.failed for t in tallies.values()) / total
            metrics["empty_rate"] = sum(t.empties for t in tallies.values()) / total
        metrics["parse_failures"] = float(sum(t.failed for t in tallies.values()))
        if leak_asked:
            metrics["forget_leak_rate"] = leaked / leak_asked
        return metrics

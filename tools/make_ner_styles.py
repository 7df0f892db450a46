"""Writes rrtool/builtin_data/ner_styles.json: NER passages in styles other than the built-in
encyclopedic ones (social posts, chat, e-mail, records, headlines, forum posts, captions,
citations), for ``reveal.extra_contexts``.

The built-in passages (``ner_passages.json``) are one style: 1-3 sentence news and
encyclopedia prose in which nearly every person carries a role title ("Senator Alma Reyes").
Forget data revealed from them share that style as much as the Person concept. These are
written from templates and pools of invented names (seeded), mostly without titles, in the
UniversalNER conversation layout; every gold span appears verbatim in its passage.

    python tools/make_ner_styles.py        # rewrites the file (deterministic)
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "rrtool" / "builtin_data" / "ner_styles.json"
TYPES = ("person", "organization", "location", "date", "concept")

PEOPLE = [
    "Maya Okafor",
    "Tomasz Wilk",
    "Lena Haugen",
    "Ravi Menon",
    "Carmen Ibarra",
    "Jonah Pike",
    "Aiko Tanabe",
    "Samir Haddad",
    "Greta Lindqvist",
    "Kwame Asante",
    "Noor Rahimi",
    "Elliot Marsh",
    "Ines Carvalho",
    "Dmitri Volkov",
    "Priya Raman",
    "Hugo Lefevre",
    "Zainab Bello",
    "Oskar Brandt",
    "Mei Lin Zhou",
    "Callum Reid",
    "Sofia Marchetti",
    "Tariq Nasser",
    "Hanna Kowalczyk",
    "Luis Ortega",
    "Freya Holm",
    "Kofi Mensah",
    "Yara Saleh",
    "Benedikt Auer",
    "Chloe Dubois",
    "Arjun Kapoor",
    "Nadia Petrova",
    "Mateo Ruiz",
    "Ingrid Solberg",
    "Femi Adeyemi",
    "Rosa Delgado",
    "Ewan Fraser",
    "Leila Farahani",
    "Pavel Novak",
    "Amelie Roth",
    "Daniel Osei",
]
ORGS = [
    "Northgate Robotics",
    "the Riverside Food Bank",
    "Kestrel Airlines",
    "Brightwater Bank",
    "the Halvard Institute",
    "Copperline Studios",
    "the Eastfield Rowing Club",
    "Mistral Pharma",
    "the Open Fields Trust",
    "Alder & Finch",
    "the Sunvale Co-op",
    "Tidewater Press",
    "Vantor Systems",
    "the Lakeshore Orchestra",
    "Greenmoor Council",
    "Pinecrest Hospital",
    "the Civic Data Lab",
    "Harbourline Ferries",
    "Quarry Hill School",
    "Solace Energy",
]
PLACES = [
    "Lisbon",
    "Tromsø",
    "Nairobi",
    "Ghent",
    "Osaka",
    "Valparaíso",
    "Leeds",
    "Kraków",
    "Halifax",
    "Accra",
    "Bergen",
    "Cork",
    "Porto Alegre",
    "Tbilisi",
    "Adelaide",
    "Marseille",
    "Kyoto",
    "Dundee",
    "Quito",
    "Tallinn",
]
DATES = [
    "last Tuesday",
    "March 2021",
    "12 June",
    "next Friday",
    "2019",
    "the spring of 2022",
    "Monday",
    "15 October 2023",
    "this weekend",
    "1998",
    "early May",
    "3 February",
    "last winter",
    "August 2020",
    "tomorrow",
]
CONCEPTS = [
    "machine learning",
    "urban gardening",
    "climate adaptation",
    "open data",
    "sourdough baking",
    "tidal energy",
    "data privacy",
    "public transport",
    "microfinance",
    "sea-level rise",
    "remote work",
    "vaccine logistics",
    "quantum computing",
    "plastic recycling",
    "river restoration",
]

# (style, template): {P}, {P2}, {P3} persons, {O} organisation, {L} location, {D} date, {C}
# concept; a template without {P} gives a passage that names no person.
TEMPLATES = [
    ("post", "just ran into {P} at the {L} market lol. {O} is hiring again?? #{C}"),
    ("post", "huge thanks to {P} and {P2} for the {C} workshop {D} 🙌 see you in {L}"),
    ("post", "{O} finally opened in {L} {D}. queue was insane but worth it"),
    ("chat", "{P}: are you coming to the {O} meetup in {L}?\n{P2}: yes, see you {D}!"),
    ("chat", "{P}: did you read the piece on {C}?\n{P2}: not yet, {P3} sent it to me {D}"),
    (
        "email",
        "Hi {P},\nthanks for the notes on {C}. {P2} from {O} will join us in {L} on {D}.\nBest,\n{P3}",
    ),
    ("email", "Dear team, the {O} review moves to {D} in {L}. Questions to {P}. Regards, {P2}"),
    ("record", "Name: {P} | Employer: {O} | City: {L} | Since: {D} | Field: {C}"),
    ("record", "Speaker: {P}; Topic: {C}; Venue: {O}, {L}; Date: {D}"),
    ("record", "Venue: {O}, {L}; Date: {D}; Topic: {C}; Tickets sold out"),
    ("headline", "{O} hires {P} to lead {C} push in {L}"),
    ("headline", "{P} and {P2} win {D} prize for work on {C}"),
    ("headline", "{L} council backs {C} plan after {O} report"),
    ("forum", "Has anyone taken the {C} course by {P}? The one at {O} in {L} starts {D}."),
    ("forum", "Re: moving to {L}. Ask {P}, she worked for {O} there until {D}."),
    ("caption", "Photo: {P} and {P2} at the {O} stand, {L}, {D}."),
    ("caption", "Left to right: {P}, {P2} and {P3} after the {C} talk."),
    ("citation", "{P} and {P2} ({D}). Notes on {C}. {O}, {L}."),
    ("citation", "Interview with {P}, recorded in {L} for {O} on {D}."),
    ("review", "Five stars for {O} in {L}: {P} at the desk sorted everything out {D}."),
]
FILLS_PER_TEMPLATE = 5
SEED = 0


def _first(pool: list[str], rng: random.Random, taken: set[str]) -> str:
    choice = rng.choice([x for x in pool if x not in taken])
    taken.add(choice)
    return choice


def passage(template: str, rng: random.Random) -> tuple[str, dict[str, list[str]]]:
    """One filled template and its gold entities by type, in order of appearance."""
    taken: set[str] = set()
    values = {
        "P": _first(PEOPLE, rng, taken),
        "P2": _first(PEOPLE, rng, taken),
        "P3": _first(PEOPLE, rng, taken),
        "O": rng.choice(ORGS),
        "L": rng.choice(PLACES),
        "D": rng.choice(DATES),
        "C": rng.choice(CONCEPTS),
    }
    kinds = {"P": "person", "P2": "person", "P3": "person", "O": "organization",
             "L": "location", "D": "date", "C": "concept"}  # fmt: skip
    text = template
    gold: dict[str, list[str]] = {t: [] for t in TYPES}
    for slot in re.findall(r"\{(\w+)\}", template):
        value = values[slot]
        text = text.replace("{" + slot + "}", value, 1)
        # An organisation's leading "the" is not part of its name ("the Riverside Food Bank").
        span = value[4:] if value.startswith("the ") else value
        if slot == "C" and "#{C}" in template:
            continue  # a hashtag is not a mention of the concept in these files' convention
        if span not in gold[kinds[slot]]:
            gold[kinds[slot]].append(span)
    for spans in gold.values():
        for span in spans:
            assert span in text, (span, text)
    return text, gold


def records() -> list[dict]:
    rng = random.Random(SEED)
    out = []
    for index, (style, template) in enumerate(
        (s, t) for s, t in TEMPLATES for _ in range(FILLS_PER_TEMPLATE)
    ):
        text, gold = passage(template, rng)
        turns = [{"from": "human", "value": f"Text: {text}"},
                 {"from": "gpt", "value": "I've read this text."}]  # fmt: skip
        for kind in TYPES:
            turns.append({"from": "human", "value": f"What describes {kind} in the text?"})
            turns.append({"from": "gpt", "value": json.dumps(gold[kind], ensure_ascii=False)})
        out.append({"id": f"rrtool_ner_style_{style}_{index}", "conversations": turns})
    return out


if __name__ == "__main__":
    data = records()
    OUT.write_text(json.dumps(data, ensure_ascii=False, indent=0) + "\n")
    print(f"{OUT}: {len(data)} passages")

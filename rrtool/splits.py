"""Three disjoint splits of the shared data: what Reveal generates from (and retain modules
train on), what the weight search decides on, and what the audit reports.

A spec names one set of contexts (``reveal.contexts``) and, for most targets, one retain set
(``retain.data``). Read whole by every phase, the audit would measure the passages the modules
were trained and tuned on, and the search's subset would be a subset of the audit's. So each
of these two sources is cut once, by ``splits``:

- the records (after the source's own ``offset``/``limit``) are grouped into *units*: an NER
  passage with all its entity-type queries is one unit (a passage must not be learnt from in
  one split and reported in another), any other record is its own unit;
- the units are shuffled with a seeded generator (the spec's ``seed``; the same spec always
  gives the same cut, resumed runs included) and dealt: the first ``round(search x n)`` to the
  search, the next ``round(audit x n)`` to the audit, the rest to Reveal / retain training;
- a share of 0 turns that split off: the role then reads the whole source (in-sample, and the
  plan and the report say so).

Data given for a role explicitly (``audit.forget_eval``, ``audit.retain_eval``) is read whole:
it is the user's held-out set. The plan warns when such a set overlaps the shared source
(``overlap``).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from rrtool.data import Record, load_records
from rrtool.errors import UserError
from rrtool.spec import DataSource, Spec

Role = Literal["reveal", "search", "audit"]
ROLES: tuple[Role, ...] = ("reveal", "search", "audit")
# Salted so the cut does not move with other seeded choices of the run.
_SALT = 0x5EED_5B17


@dataclass(frozen=True)
class Part:
    """The records a role reads, and where they came from (the report's provenance line)."""

    records: list[Record]
    source: DataSource
    role: Role
    units: int  # passages / prompts / lines in this part
    total_units: int  # in the whole source
    split: bool  # False: the role reads the whole source (its share is 0, or data is explicit)
    explicit: bool = False  # the spec gave this role its own data
    overlaps: bool = False  # explicit data that may share records with the shared source

    @property
    def held_out(self) -> bool:
        """Whether no other phase read these records (audit and search parts only)."""
        if self.explicit:
            return not self.overlaps
        return self.split and self.role != "reveal"

    def describe(self) -> dict[str, Any]:
        where = self.source.path
        if self.explicit:
            how = "its own data (read whole" + (
                "; it overlaps the data Reveal and the search read)" if self.overlaps else ")"
            )
        elif self.split:
            how = f"split `{self.role}` ({self.units} of {self.total_units} units)"
        else:
            how = f"the whole source ({self.units} units; split off)"
        return {
            "source": where,
            "format": self.source.format,
            "role": self.role,
            "units": self.units,
            "total_units": self.total_units,
            "split": self.split,
            "explicit": self.explicit,
            "held_out": self.held_out,
            "overlaps": self.overlaps,
            "text": f"{where}, {how}, {'held-out' if self.held_out else 'in-sample'}",
        }


def unit_key(record: Record, index: int, fmt: str) -> Any:
    """What moves between splits as one piece (see the module docstring)."""
    if fmt == "universalner":
        return ("text", record.get("text", ""))
    return ("row", index)


def shares(spec: Spec) -> dict[Role, float]:
    return {"search": spec.splits.search, "audit": spec.splits.audit}


def assign(keys: Sequence[Any], spec: Spec) -> dict[Any, Role]:
    """Each distinct unit key -> its role (see the module docstring)."""
    distinct = list(dict.fromkeys(keys))
    order = list(range(len(distinct)))
    random.Random(spec.seed ^ _SALT).shuffle(order)
    n = len(distinct)
    counts = {role: round(share * n) for role, share in shares(spec).items()}
    roles: dict[Any, Role] = {}
    position = 0
    for role in ("search", "audit"):
        for k in order[position : position + counts[role]]:
            roles[distinct[k]] = role
        position += counts[role]
    for k in order[position:]:
        roles[distinct[k]] = "reveal"
    return roles


def part_of(records: list[Record], source: DataSource, role: Role, spec: Spec) -> Part:
    """The ``role`` part of a shared source's records."""
    keys = [unit_key(r, i, source.format) for i, r in enumerate(records)]
    total = len(dict.fromkeys(keys))
    share = 1.0 - sum(shares(spec).values()) if role == "reveal" else shares(spec)[role]
    if share <= 0.0 or share >= 1.0:  # this role's split is off (reveal: both others are)
        return Part(records, source, role, total, total, split=False)
    roles = assign(keys, spec)
    chosen = [r for r, k in zip(records, keys, strict=True) if roles[k] == role]
    units = len({k for k in keys if roles[k] == role})
    if not chosen:
        raise UserError(
            f"splits: the `{role}` split of {source.path} is empty ({total} units, "
            f"splits.search {spec.splits.search}, splits.audit {spec.splits.audit}); give the "
            "source more records, raise the split's share, or set it to 0 to read the whole source"
        )
    return Part(chosen, source, role, units, total, split=True)


def read(source: DataSource, role: Role, spec: Spec) -> Part:
    """Load a shared source (``reveal.contexts`` or ``retain.data``) and cut out ``role``."""
    return part_of(load_records(source), source, role, spec)


def whole(source: DataSource, role: Role, shared: DataSource | None = None) -> Part:
    """An explicitly given source, read whole; ``shared`` is the source the other phases read
    (its overlap with it makes the part in-sample)."""
    records = load_records(source)
    keys = {unit_key(r, i, source.format) for i, r in enumerate(records)}
    overlapping = shared is not None and overlap(source, shared)
    return Part(
        records, source, role, len(keys), len(keys), split=False, explicit=True,
        overlaps=overlapping,
    )  # fmt: skip


def overlap(a: DataSource, b: DataSource) -> bool:
    """Whether two sources may hold the same records: the same file or set with row ranges
    (``offset``/``limit``) that intersect."""
    if a.path != b.path or (a.config, a.split) != (b.config, b.split):
        return False
    a_end = a.offset + a.limit if a.limit is not None else float("inf")
    b_end = b.offset + b.limit if b.limit is not None else float("inf")
    return a.offset < b_end and b.offset < a_end

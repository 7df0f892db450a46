"""Errors a user can act on.

Anything raised as ``UserError`` is printed as-is (no traceback) and exits
with code 2; its messages already say file, line, key and what was expected.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence


class UserError(Exception):
    """Bad input: a spec, a flag, a data file. Exit code 2, no traceback."""

    exit_code = 2

    def __init__(self, *messages: str) -> None:
        super().__init__("\n".join(messages))
        self.messages = list(messages)


class PhaseNotImplemented(Exception):
    """The spec asks a phase for something this version cannot do yet (a strategy, a task
    kind). Not an error of the user's: the runner stops the run cleanly and records why."""


class TrainingDiverged(Exception):
    """A LoRA module's loss became NaN or infinite; the module is not usable.

    Release records the step as failed with this message and stops there, keeping the run
    (everything applied before stays applied and recorded)."""


class SpecError(UserError):
    """The spec file (or an override of it) is not valid."""


def closest(word: str, choices: Sequence[str]) -> str | None:
    """The choice a misspelt ``word`` most likely meant (for "did you mean"), or None."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return close[0] if close else None

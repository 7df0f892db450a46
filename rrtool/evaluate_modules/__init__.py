"""rrtool's metrics as local Hugging Face ``evaluate`` modules, loadable without the hub:
``evaluate.load(module_path("rrtool_ner"))`` (needs ``pip install rrtool[evaluate]``).

Each module wraps the very oracle rrtool's audit uses, so a number computed in a user's own
pipeline with ``evaluate`` equals the one in rrtool's report for the same answers.
"""

from __future__ import annotations

from pathlib import Path

MODULES = ("rrtool_ner",)


def module_path(name: str) -> str:
    """The folder of module ``name``, as ``evaluate.load`` takes it."""
    if name not in MODULES:
        raise ValueError(f"no rrtool evaluate module {name!r} (have: {', '.join(MODULES)})")
    return str(Path(__file__).resolve().parent / name)

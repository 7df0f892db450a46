"""CLI surface: --help everywhere, --version, and a light import path for --help."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest

from rrtool import __version__
from rrtool.cli import cli


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [prefix]
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found += _commands(command, (*prefix, name))
        else:
            found.append((*prefix, name))
    return found


COMMANDS = _commands(cli)


def test_expected_commands_exist() -> None:
    assert {
        ("plan",),
        ("run",),
        ("spec", "schema"),
        ("spec", "reference"),
        ("oracles", "list"),
    } <= set(COMMANDS)


@pytest.mark.parametrize("path", COMMANDS, ids=[" ".join(c) or "rrtool" for c in COMMANDS])
def test_every_command_has_help(path: tuple[str, ...], invoke) -> None:
    result = invoke(*path, "--help")
    assert result.exit_code == 0
    assert "Usage: " in result.stdout
    assert "Show this message and exit." in result.stdout


def test_version(invoke) -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"rrtool, version {__version__}"


HEAVY = ("torch", "transformers", "mlflow", "peft", "sentence_transformers", "pydantic", "rich")


@pytest.mark.parametrize("args", [["--help"], ["plan", "--help"], ["--version"]])
def test_help_imports_nothing_heavy(args: list[str]) -> None:
    code = (
        "import sys\n"
        "from rrtool.cli import cli\n"
        f"try:\n    cli.main({args!r}, prog_name='rrtool')\n"
        "except SystemExit:\n    pass\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_unknown_command_is_a_usage_error(invoke) -> None:
    result = invoke("plna")
    assert result.exit_code == 2
    assert "No such command 'plna'" in result.stderr

"""The documentation: README.md and docs/ link to files and headings that exist, and the
README keeps the set-up commands CI and newcomers rely on."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from rrtool.spec_docs import DEFAULT_TARGET, END, START, reference_block, spec_reference
from tests.conftest import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _prose(text: str) -> str:
    """The text outside fenced code blocks (links in code are not links)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    seen: dict[str, int] = {}
    out = set()
    for line in _prose(path.read_text()).splitlines():
        heading = re.match(r"#{1,6} (.+)", line)
        if not heading:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_docs_relative_links_resolve(doc: Path) -> None:
    broken = []
    for target in LINK.findall(_prose(doc.read_text())):
        if re.match(r"[a-z]+:", target):  # http(s), mailto: not checked offline
            continue
        file, _, anchor = target.partition("#")
        path = (doc.parent / file).resolve() if file else doc
        if not path.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{doc.relative_to(REPO)}: broken links: {broken}"


def test_readme_keeps_the_set_up_commands() -> None:
    readme = (REPO / "README.md").read_text()
    # .ci/run runs `tox`, "the README's test command"; `tox -e demo` is the main job.
    assert '```bash\npython3 -m pip install "tox>=4.11" && tox -e demo\n```' in readme
    assert '```bash\npython3 -m pip install "tox>=4.11" && tox\n```' in readme
    assert "tox" in (REPO / ".ci" / "run").read_text()


def test_readme_stays_a_short_read() -> None:
    lines = (REPO / "README.md").read_text().count("\n")
    assert lines <= 350, f"README.md has {lines} lines: move detail into docs/ (docs/README.md)"


def test_spec_docs_module_rewrites_docs_spec_reference_by_default(tmp_path: Path) -> None:
    doc = tmp_path / DEFAULT_TARGET
    doc.parent.mkdir(parents=True)
    doc.write_text(f"# Spec reference\n\n{START}\nstale\n{END}\n")
    done = subprocess.run(
        [sys.executable, "-m", "rrtool.spec_docs"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "updated"
    assert reference_block(doc.read_text()) == spec_reference()


def test_the_shipped_specs_name_the_full_sets_on_the_hub_and_no_path_outside_the_project() -> None:
    """Each spec names, in a comment, the public set to point at instead of a built-in one, as a
    hub dataset a user with internet reaches (`hf:...`); neither the specs nor the README name a
    path outside the project (the public data beside this checkout is not the user's)."""
    specs = sorted((REPO / "specs").glob("*.yaml"))
    found = [m for spec in specs for m in re.findall(r"full set: (hf:\S+)", spec.read_text())]
    assert len(found) >= 4, found
    for text in [*(spec.read_text() for spec in specs), (REPO / "README.md").read_text()]:
        assert "shared/data" not in text and "../../" not in text

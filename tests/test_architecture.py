"""The house has no import circles: not between files, not between folders (a folder of
``rrtool/`` counts as one room, as ``farm-studio look`` draws it). Every import counts, at module
level, inside functions and under ``TYPE_CHECKING``: a lazy import is still a tie. And the
rooms stay readable: no function over ``LONGEST_FUNCTION`` lines, artifact paths spelled once."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"rrtool": ROOT / "rrtool", "rrtool_oracles": ROOT / "plugins" / "rrtool_oracles"}


def _modules() -> dict[str, Path]:
    found = {}
    for top, base in PACKAGES.items():
        for path in base.rglob("*.py"):
            parts = [top, *path.relative_to(base).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _imports(path: Path, name: str, known: dict[str, Path]) -> set[str]:
    """The project modules ``path`` imports (``from a import b`` is ``a.b`` when that is a
    module, else ``a``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _graph() -> dict[str, set[str]]:
    known = _modules()
    return {name: _imports(path, name, known) for name, path in known.items()}


def _room(module: str) -> str:
    parts = module.split(".")
    # rrtool.release.phase -> rrtool.release (a folder); rrtool.spec -> rrtool.spec (a file)
    return ".".join(parts[:2]) if len(parts) > 2 else module


def test_no_import_circle_between_files() -> None:
    graph = _graph()
    graph = {k: {t for t in v if not (t in PACKAGES or _is_face(t))} for k, v in graph.items()}
    assert _cycles(graph) == []


def _is_face(module: str) -> bool:
    """A package's ``__init__`` (importing ``rrtool.generation`` names its face, whose own
    imports hand the submodules' names on; the arrow goes to the submodule it names)."""
    path = _modules()[module]
    return path.name == "__init__.py"


def test_no_import_circle_between_folders() -> None:
    rooms: dict[str, set[str]] = {}
    for source, targets in _graph().items():
        if _modules()[source].name == "__init__.py":
            continue  # a face: its arrows are its submodules', counted there
        rooms.setdefault(_room(source), set()).update(
            _room(t) for t in targets if _room(t) != _room(source)
        )
    assert _cycles(rooms) == []


def test_the_walk_finds_a_circle_when_there_is_one() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    graph = _graph()
    assert "rrtool.release.lora" in graph["rrtool.release.phase"]  # the walk reads real imports
    assert "rrtool.examples" in graph["rrtool.evaluators.membership"]


def test_artifact_paths_are_spelled_once() -> None:
    """A run's record paths live in ``rrtool/artifacts.py``; a second spelling elsewhere is a
    record one side stops finding when the other renames it."""
    import re

    literal = re.compile(r"""["'](reveal|release|audit)/[\w/]+\.(jsonl|json|safetensors)["']""")
    spelled = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in (ROOT / "rrtool").rglob("*.py")
        if path.name != "artifacts.py"
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if literal.search(line)
    ]
    assert spelled == []


def test_the_probe_names_are_the_specs_probe_keys() -> None:
    """`rrtool attack --probe` offers `rrtool.audit.PROBES` (read without importing the spec)."""
    from rrtool.audit import PROBES
    from rrtool.spec import ProbesSpec

    assert tuple(ProbesSpec.model_fields) == PROBES
    from rrtool.audit.battery import ROWS

    assert set(ROWS) == set(PROBES)  # every probe has its battery rows


def test_every_module_objective_has_a_loss_train_lora_knows() -> None:
    """steps.MODULE_OBJECTIVES decides a step's loss and sign; lora.OBJECTIVES the losses."""
    from rrtool.release.lora import OBJECTIVES as LOSSES
    from rrtool.strategies import MODULE_OBJECTIVES, STRATEGIES, Step

    assert {loss for loss, _ in MODULE_OBJECTIVES.values()} <= set(LOSSES)
    assert {s.objective for s in STRATEGIES.values()} <= set(MODULE_OBJECTIVES)
    try:
        Step(1, "F0", "forget", 0, "simnpo")
    except ValueError as exc:
        assert "simnpo" in str(exc)
    else:
        raise AssertionError("an unknown objective was accepted")


def test_the_spec_offers_exactly_the_registered_strategies() -> None:
    """`release.strategy`'s choices are the registry's names (one table, read by the spec,
    the planner and the phase), and each strategy's module lives in its own file."""
    from rrtool.spec import ReleaseSpec
    from rrtool.strategies import STRATEGIES

    schema = ReleaseSpec.model_json_schema()["properties"]["strategy"]
    assert schema["enum"] == list(STRATEGIES)
    for name, strategy in STRATEGIES.items():
        assert strategy.name == name and strategy.summary
        assert type(strategy).__module__ == f"rrtool.strategies.{name}"


LONGEST_FUNCTION = 100  # lines, docstring included: a longer one has seams to split along


def test_no_function_is_longer_than_a_screenful_or_two() -> None:
    long = []
    for folder in (ROOT / "rrtool", ROOT / "plugins"):
        for path in sorted(folder.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > LONGEST_FUNCTION:
                        long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} {lines}")
    assert not long, long

"""The engine package's imports form layers that point one way, with no cycle.

Every ``import`` in every module counts, wherever it is written (module level, inside a
function, under ``TYPE_CHECKING``): a cycle hidden in a function-level import is still a
cycle. (A package's ``__init__`` counts through what it imports itself: that importing
``a.b`` first runs ``a/__init__`` is not an edge, or every package importing its own
submodule would be a cycle.)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "MedSegR" / "medsegr"

#: the layers, lowest first: a module may import its own layer and those below it.
#: ``*.commands`` modules are the command line's parts wherever they live.
LAYERS = (
    ("core", ("medsegr", "medsegr._moved", "medsegr.errors", "medsegr.option_types",
              "medsegr.config", "medsegr.answers", "medsegr.prompts", "medsegr.io",
              "medsegr.imaging", "medsegr.vocabulary")),
    ("model", ("medsegr.modeling",)),
    ("engine", ("medsegr.pipeline",)),
    ("wire", ("medsegr.client",)),
    ("services", ("medsegr.server", "medsegr.data", "medsegr.training",
                  "medsegr.evaluation")),
    ("front ends", ("medsegr.cli", "medsegr.bench")),
)


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's own modules that ``name`` imports, anywhere in its code."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # from pkg.mod import name -> pkg.mod
                target = target.rpartition(".")[0]
            if target.startswith("medsegr"):
                found.add(target)
    found.discard(name)
    return found


def graph() -> dict[str, set[str]]:
    known = module_names()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of module names (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def layer_of(name: str) -> int:
    if name.endswith(".commands"):
        return len(LAYERS) - 1
    best = (-1, -1)  # (length of the matching prefix, layer)
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best[0]:
                best = (len(prefix), rank)
    if best[1] < 0:
        raise AssertionError(f"{name} is in no layer of this test's LAYERS; add it")
    return best[1]


def test_the_graph_is_read() -> None:
    edges = graph()
    assert len(edges) > 80
    assert "medsegr.io.nrrd_codec" in edges["medsegr.client"]
    assert "medsegr.pipeline" in edges["medsegr.evaluation.commands"]  # a function-level one
    assert "medsegr" in edges["medsegr.cli.commands"]  # from medsegr import __version__


def test_there_is_no_import_cycle() -> None:
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_imports_point_down_the_layers() -> None:
    wrong = [f"{name} ({LAYERS[layer_of(name)][0]}) imports {target} "
             f"({LAYERS[layer_of(target)][0]})"
             for name, targets in sorted(graph().items()) for target in sorted(targets)
             if layer_of(target) > layer_of(name)]
    assert not wrong, "imports against the flow:\n" + "\n".join(wrong)


@pytest.mark.parametrize("name", ["medsegr.client", "medsegr.answers", "medsegr.io.nrrd_codec"])
def test_the_wire_needs_no_engine(name: str) -> None:
    """The client, the answer types and the NRRD codec reach neither the model nor the
    pipeline, even through each other."""
    edges = graph()
    assert name in edges
    seen, todo = set(), [name]
    while todo:
        for target in edges.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    assert not {m for m in seen if layer_of(m) >= layer_of("medsegr.modeling")} - {name}


def test_old_import_paths_still_work_with_a_warning() -> None:
    """Modules that moved keep their old path for one release: the same module object,
    its own name and spec, and a DeprecationWarning naming the new path (in a fresh
    interpreter, where nothing was imported yet)."""
    import subprocess
    import sys

    from medsegr._moved import MOVED

    code = f"""
import importlib, warnings
moved = {MOVED!r}
for old, new in moved.items():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    assert module is importlib.import_module(new), old
    assert module.__name__ == new and module.__spec__.name == new, (old, module.__spec__)
    assert any(issubclass(w.category, DeprecationWarning) and new in str(w.message)
               for w in caught), (old, [str(w.message) for w in caught])
from medsegr.cli import main
from medsegr.client import RemoteAnswer, RemoteSegment
from medsegr.answers import Answer, Segment
assert callable(main) and RemoteAnswer is Answer and RemoteSegment is Segment
print("ok", len(moved))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["ok", str(len(MOVED))] and len(MOVED) >= 13

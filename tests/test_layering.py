"""The core's layering, enforced.

The core is grouped into rooms that form a DAG: a module may import its own room and the rooms
below it, never one above (``ROOMS`` is the order, lowest first). Imports made inside functions
count (a dependency hidden in a function is still a dependency), relative imports count, and
imports under ``if TYPE_CHECKING:`` do not (they never run). Inside a room, modules form no cycle.
Built-in plugins and the example plugin package import only the public API, as a third-party
package must. No core module is over 400 lines.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Lowest first. errors: the exception types; io: files and records (atomic writes, weights,
#: state, results, run folder); plugins: hook specs, component bases, catalog; recipe: the
#: recipe's models and loading; reporting: tables, figures, progress, trackers; runtime: tensors
#: on the device and compiled calls; teacher: where teacher outputs come from; train: stages,
#: epochs, steps; tools: validate, export, layers, evaluate; api: what the CLI and notebooks call;
#: cli: one module per command.
ROOMS = ("errors", "io", "plugins", "recipe", "reporting", "runtime", "teacher", "train", "tools", "api", "cli")
#: The public facades sit above every room but the command line: they import the engine, and
#: nothing else in the core imports them.
FACADES = ("kdengine", "kdengine.testing", "kdengine.__main__")
PUBLIC = {"kdengine", "kdengine.testing"}


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_nodes(tree: ast.AST):
    """Every node, except those under ``if TYPE_CHECKING:`` (type-only imports never run)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            continue
        yield node
        yield from runtime_nodes(node)


def absolute(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    """The module an ``ImportFrom`` names, relative ones (``from ..io import x``) resolved."""
    if node.level == 0:
        return node.module or ""
    package = importer.split(".") if is_package else importer.split(".")[:-1]
    base = package[:len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imported_modules(path: Path, name: str, known: set[str]) -> set[str]:
    """Every core module ``path`` imports when it runs, at module level or inside a function:
    ``from a.b import c`` names ``a.b.c`` where that is a module, else ``a.b``."""
    found = set()
    for node in runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = absolute(node, name, path.name == "__init__.py")
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return (found & known) - {name}


def core_graph(root: Path = ROOT) -> dict[str, set[str]]:
    files = {module_name(p, root): p for p in (root / "kdengine").rglob("*.py")}
    return {name: imported_modules(path, name, set(files)) for name, path in files.items()}


def room_of(module: str) -> str:
    parts = module.split(".")
    if module in FACADES:
        return "facade"
    return parts[1]


def room_violations(graph: dict[str, set[str]]) -> list[str]:
    """Each import that goes up the room order, or into a facade from below the command line."""
    rank = {room: i for i, room in enumerate(ROOMS)}
    bad = []
    for module, targets in sorted(graph.items()):
        mine = room_of(module)
        if mine == "facade":
            continue
        assert mine in rank, f"{module} is in no room: add its room to ROOMS in its place"
        for target in sorted(targets):
            theirs = room_of(target)
            up = mine != "cli" if theirs == "facade" else rank[theirs] > rank[mine]
            if up:
                bad.append(f"{module} ({mine}) imports {target} ({theirs})")
    return bad


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in edges:
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return out


def non_public_imports(folder: Path) -> list[str]:
    """Imports of kdengine's internals (anything but ``kdengine`` and ``kdengine.testing``)."""
    bad = []
    for path in sorted(folder.rglob("*.py")):
        for node in runtime_nodes(ast.parse(path.read_text())):
            names = ([node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            bad += [f"{path.relative_to(ROOT)}: {n}" for n in names
                    if (n == "kdengine" or n.startswith("kdengine.")) and n not in PUBLIC]
    return bad


def test_rooms_import_only_downwards():
    assert room_violations(core_graph()) == []


def test_no_import_cycles_in_the_core():
    graph = {m: t for m, t in core_graph().items() if room_of(m) != "facade"}
    assert cycles(graph) == []


def test_a_room_cycle_planted_in_a_copy_is_caught(tmp_path):
    """io sits below train: an io module that imports the training loop (relatively, inside a
    function, as a lazy import would) breaks the order, and the check says which import."""
    shutil.copytree(ROOT / "kdengine", tmp_path / "kdengine", ignore=shutil.ignore_patterns("__pycache__"))
    atomic = tmp_path / "kdengine" / "io" / "atomic.py"
    atomic.write_text(atomic.read_text() + "\n\ndef _planted():\n    from ..train.run import run_one\n")
    assert room_violations(core_graph(tmp_path)) == ["kdengine.io.atomic (io) imports kdengine.train.run (train)"]


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_plugins_import_only_the_public_api():
    assert non_public_imports(ROOT / "plugins") + non_public_imports(ROOT / "examples") == []


def test_no_core_module_is_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "kdengine").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}

"""The package's layers: no import cycle and no pracset import hidden in a function.

Every module of ``pracset/`` is parsed with :mod:`ast` (nothing is imported),
and every ``import`` / ``from ... import`` of a pracset module is collected:
at module level, inside classes, under ``if TYPE_CHECKING:``, in ``try``
blocks and inside functions alike. Relative imports are resolved, and
``from pracset.x import y`` points at ``pracset.x.y`` when ``y`` is a
submodule (a ``y.py`` or ``y/__init__.py``), at ``pracset.x`` otherwise.

The edges are what an import statement makes Python execute. Importing
``pracset.a.b`` runs ``pracset/a/__init__.py`` and then ``pracset/a/b.py``,
so a module ``M`` that imports ``pracset.a.b`` gets an edge to ``pracset.a.b``
and to ``pracset.a`` (the package ``__init__``) -- except to the packages that
contain ``M`` itself: those are already loaded (or loading) before ``M``
runs, so the statement executes nothing of them. Without that exception every
package whose ``__init__`` re-exports its submodules would be a spurious cycle
with each submodule that imports a sibling (``pracset.sparse`` ->
``pracset.sparse.rigl`` -> ``pracset.sparse.base``, which runs nothing of
``pracset/sparse/__init__.py``: it is already loading). An *explicit* import of
an enclosing package (``from pracset.train import TrainConfig`` inside
``pracset/train/loop.py``) is an edge all the same: it needs that
``__init__`` to have finished, which it has not while it imports ``loop``.

The same rule holds one level up: the parts of the package (each subpackage
such as ``pracset.train`` and each top-level module such as ``pracset.runs``)
import one another without a cycle either, so that ``pracset.train`` and
``pracset.sparse`` (say) are layers, one above the other, and a small
foundation (the mask type, the ledger) lives below every part that uses it.

Names that ``pracset/__init__.py`` resolves lazily by a string
(``importlib.import_module``) are not import statements and make no edge.

Imports inside function bodies are for optional third-party dependencies
only (datasets, matplotlib, tensorboard, safetensors, lightning, ...); a
pracset module imported in a function is a failure unless it is in
:data:`ALLOWED_IN_FUNCTIONS` with its reason.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pracset

PACKAGE = Path(pracset.__file__).parent

_LIGHT_MANIFEST = ("`import pracset` and `from pracset.manifest import load_subset` load no numpy, pyarrow, "
                   "datasets or torch (tests/test_manifest.py::test_import_is_light): what load_subset needs "
                   "loads when it is called")

#: (importing module, imported module) pairs allowed inside a function, each with its reason.
ALLOWED_IN_FUNCTIONS: dict[tuple[str, str], str] = {
    ("pracset.manifest", "pracset.manifest.schema"): _LIGHT_MANIFEST + " (PEP 562 __getattr__: pyarrow)",
    ("pracset.manifest.subset", "pracset.manifest.schema"): _LIGHT_MANIFEST + " (pyarrow)",
    ("pracset.manifest.subset", "pracset.data.decode"): _LIGHT_MANIFEST + " (numpy, PIL)",
    ("pracset.manifest.subset", "pracset.data.base"): _LIGHT_MANIFEST + " (torch)",
    ("pracset.manifest.subset", "pracset.data.catalog"): _LIGHT_MANIFEST + " (torch)",
    ("pracset.manifest.schema", "pracset.fileio"): "reading a manifest loads no torch; only writing one needs "
                                                   "the run's write (rank 0 only under torch.distributed)",
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _resolve_relative(module: str, level: int, target: str | None) -> str:
    package = module if _is_package(module) else module.rpartition(".")[0]
    base = package.split(".")
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, *([target] if target else [])])


def _imports(module: str) -> list[tuple[str, int, bool]]:
    """(imported pracset module, line, inside a function) for each import in ``module``."""
    tree = ast.parse(MODULES[module].read_text(), str(MODULES[module]))
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name == "pracset" or alias.name.startswith("pracset."):
                        found.append((alias.name, child.lineno, in_function))
            elif isinstance(child, ast.ImportFrom):
                base = _resolve_relative(module, child.level, child.module) if child.level else child.module
                if base is None or not (base == "pracset" or base.startswith("pracset.")):
                    continue
                for alias in child.names:
                    candidate = f"{base}.{alias.name}"
                    found.append((candidate if candidate in MODULES else base, child.lineno, in_function))
            visit(child, nested)

    visit(tree, False)
    return found


def _executed(importer: str, target: str) -> set[str]:
    """The modules whose code an import of ``target`` in ``importer`` runs (see the module docstring)."""
    parts = target.split(".")
    loaded = {".".join(importer.split(".")[:i]) for i in range(1, importer.count(".") + 2)}  # importer + packages
    executed = {".".join(parts[:i]) for i in range(1, len(parts))} - loaded  # the target's packages
    return {name for name in executed | {target} if name in MODULES}


def import_graph() -> dict[str, set[str]]:
    """Module -> the pracset modules its import statements execute."""
    return {module: set().union(*(_executed(module, target) for target, _, _ in _imports(module)))
            for module in MODULES}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """The cycles: Tarjan's components with more than one module, or one module importing itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:  # recursion depth is bounded by the ~100 modules
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                connect(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def test_every_import_resolves_to_a_pracset_module():
    unknown = [f"{module}:{line} imports {target}" for module in MODULES for target, line, _ in _imports(module)
               if target not in MODULES]
    assert unknown == []


def test_no_import_cycle_type_only_imports_included():
    graph = import_graph()
    cycles = strongly_connected(graph)
    report = []
    for component in cycles:
        members = set(component)
        edges = [f"  {m} -> {t}" for m in component for t in sorted(graph[m] & members)]
        report.append(" <-> ".join(component) + "\n" + "\n".join(edges))
    assert not cycles, "import cycles:\n" + "\n".join(report)


def _part(module: str) -> str:
    return ".".join(module.split(".")[:2])


def part_graph() -> dict[str, set[str]]:
    """Part of the package (``pracset.train``, ``pracset.runs``, ...) -> the other parts it imports."""
    graph: dict[str, set[str]] = {}
    for module, targets in import_graph().items():
        graph.setdefault(_part(module), set()).update(_part(t) for t in targets if _part(t) != _part(module))
    return graph


def test_no_import_cycle_between_the_parts_of_the_package():
    graph = import_graph()
    parts = part_graph()
    cycles = strongly_connected(parts)
    report = []
    for component in cycles:
        members = set(component)
        edges = [f"  {m} -> {t}" for m in sorted(graph) for t in sorted(graph[m])
                 if _part(m) in members and _part(t) in members and _part(m) != _part(t)]
        report.append(" <-> ".join(component) + "\n" + "\n".join(edges))
    assert not cycles, "import cycles between parts of the package:\n" + "\n".join(report)


def test_no_pracset_import_inside_a_function():
    found = {(module, target): line for module in MODULES for target, line, inside in _imports(module) if inside}
    unexpected = [f"{module}:{line} imports {target}" for (module, target), line in sorted(found.items())
                  if (module, target) not in ALLOWED_IN_FUNCTIONS]
    assert unexpected == [], "pracset modules imported inside functions:\n" + "\n".join(unexpected)
    stale = sorted(set(ALLOWED_IN_FUNCTIONS) - set(found))
    assert stale == [], f"allowed but no longer there, drop from ALLOWED_IN_FUNCTIONS: {stale}"


def test_the_graph_sees_what_it_should():
    graph = import_graph()
    assert "pracset.sparse.base" in graph["pracset.sparse"]
    # a sibling import runs nothing of the enclosing package, an import from another package runs its __init__
    assert "pracset.sparse.base" in graph["pracset.sparse.rigl"]
    assert "pracset.sparse" not in graph["pracset.sparse.rigl"]
    assert {"pracset.train", "pracset.train.loop"} <= graph["pracset.sparse.rigl"]
    assert strongly_connected({"a": {"b"}, "b": {"a"}, "c": {"c"}, "d": {"a"}}) == [["a", "b"], ["c"]]


def test_the_readme_s_layout_names_every_module():
    """"How the code is laid out" names every module of the package (by its file name, within its folder's
    paragraph or with its path), so that the README matches the tree."""
    root = PACKAGE.parent
    text = (root / "README.md").read_text()
    section = text[text.index("## How the code is laid out"):text.index("## Scaling out")]
    missing = [str(path.relative_to(root)) for path in sorted(PACKAGE.rglob("*.py"))
               if path.name not in ("__init__.py", "__main__.py") and f"`{path.name}`" not in section
               and f"`{path.relative_to(root)}`" not in section]
    assert missing == []

"""The import graph of masked_torch and the suite, read statically from the source files (``ast``): no cycle,
and the layers never import the suite (imports go masked_torch <- analysis <- scripts).

Every ``import`` / ``from ... import`` statement counts, also one inside a function (a lazy import still closes
a cycle when both functions run), and so does ``importlib.import_module("literal")``. An edge goes to the module
named; ``from package import name`` goes to ``package.name`` where that is a module of the tree, else to the
package. The implicit import of a module's parent packages is not an edge (every package's ``__init__`` imports
its own submodules). The suite's folder ``analysis/`` is ``masked_torch.analysis``.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TREES = {"masked_torch": ROOT / "masked_torch", "masked_torch.analysis": ROOT / "analysis"}


def _modules(trees: dict[str, Path] = TREES) -> dict[str, Path]:
    """``{dotted name: file}`` of every module of the trees (a package is its ``__init__.py``)."""
    found = {}
    for prefix, folder in trees.items():
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder).with_suffix("")
            parts = [] if rel.parts == ("__init__",) else list(rel.parts)
            if parts and parts[-1] == "__init__":
                parts = parts[:-1]
            if "analysis" in parts and prefix == "masked_torch":  # an installed copy's sub-package: not this tree
                continue
            found[".".join([prefix, *parts])] = path
    return found


MODULES = _modules()


def _package(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _imports(name: str, path: Path, modules: dict[str, Path], *, top_level_only: bool) -> set[str]:
    """The modules of the tree that module ``name`` imports."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    nodes = list(ast.walk(tree))
    if top_level_only:  # also imports under module-level if/try blocks, but not inside functions or classes
        stack, nodes = list(tree.body), []
        while stack:
            node = stack.pop()
            nodes.append(node)
            if isinstance(node, (ast.If, ast.Try, ast.With)):
                for field in ("body", "orelse", "finalbody", "handlers"):
                    stack.extend(getattr(node, field, []))
            elif isinstance(node, ast.ExceptHandler):
                stack.extend(node.body)
    package = _package(name, path)
    targets: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                targets.add(sub if sub in modules else module)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            targets.add(node.args[0].value)
    resolved = set()
    for t in targets:
        while t and t not in modules:  # `import masked_torch.nn.functional as F`-style names of the tree
            t = t.rpartition(".")[0]
        if t and t != name:
            resolved.add(t)
    return resolved


def _graph(top_level_only: bool, modules: dict[str, Path] = MODULES) -> dict[str, set[str]]:
    return {name: _imports(name, path, modules, top_level_only=top_level_only) for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]):
    """One cycle of ``graph`` as a list of names (first == last), or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_trees_are_found():
    assert {"masked_torch", "masked_torch.functional", "masked_torch.nn.container", "masked_torch.nn.registry",
            "masked_torch.analysis", "masked_torch.analysis.run"} <= set(MODULES)


@pytest.mark.parametrize("top_level_only", [True, False], ids=["module-level", "with-function-level"])
def test_no_import_cycle(top_level_only):
    cycle = _cycle(_graph(top_level_only))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_masked_torch_never_imports_the_suite():
    graph = _graph(top_level_only=False)
    wrong = {name: sorted(t for t in targets if t.startswith("masked_torch.analysis"))
             for name, targets in graph.items() if not name.startswith("masked_torch.analysis")}
    wrong = {k: v for k, v in wrong.items() if v}
    assert not wrong, f"masked_torch modules importing the suite: {wrong}"
    # nor the clone's top-level folder by its own name
    for name, path in MODULES.items():
        if not name.startswith("masked_torch.analysis"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                         [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
                assert not any(n == "analysis" or n.startswith("analysis.") for n in names), (name, names)


def test_the_checker_finds_a_cycle():
    """The cycle finder itself, on a graph with a known cycle and one without."""
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_reader_sees_function_level_imports(tmp_path):
    """A lazy import inside a function is an edge of the full graph and not of the module-level one; relative
    imports resolve against the package."""
    pkg = tmp_path / "masked_torch"
    (pkg / "nn").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "functional.py").write_text("")
    (pkg / "nn" / "__init__.py").write_text("from .a import x\n")
    (pkg / "nn" / "a.py").write_text("from .. import functional as MF\nfrom .b import x\n")
    (pkg / "nn" / "b.py").write_text("def f():\n    from .a import y\n    return y\nx = 1\n")
    modules = _modules({"masked_torch": pkg})
    top, full = _graph(True, modules), _graph(False, modules)
    assert top["masked_torch.nn.a"] == {"masked_torch.functional", "masked_torch.nn.b"}
    assert top["masked_torch.nn.b"] == set() and full["masked_torch.nn.b"] == {"masked_torch.nn.a"}
    assert _cycle(top) is None
    assert _cycle(full) == ["masked_torch.nn.a", "masked_torch.nn.b", "masked_torch.nn.a"]

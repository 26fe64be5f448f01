"""The import graph of src/genmodels between files, imports inside functions included (issue #20 d6).

An edge A -> B means file A imports module B, or a name from it, anywhere in its body (top level, inside a
function, under ``if TYPE_CHECKING``): a function-level import still ties the two files together, it only
hides the knot. ``from pkg import name`` points at ``pkg/name.py`` when that module exists, else at
``pkg/__init__.py``. :func:`cycles` gives the strongly connected groups of more than one file;
:func:`upward` the imports from the ground floors (nn/, models/) into the floors built on them.
"""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
GROUND = ("genmodels.nn", "genmodels.models")  # the floors everything else stands on
ABOVE = ("genmodels.native", "genmodels.generation", "genmodels.training", "genmodels.cli", "genmodels.io")


def modules(src: Path = SRC) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under ``src/genmodels`` (a package is its __init__.py)."""
    out = {}
    for path in sorted((src / "genmodels").rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _within(name: str) -> bool:
    """``name`` is a module of the package, spelled at a dot boundary (genmodels.x, not genmodels_x)."""
    return name == "genmodels" or name.startswith("genmodels.")


def _owner(name: str, known: dict[str, Path]) -> str | None:
    """The module file that ``name`` (a module, or a name inside one) lives in: its longest known prefix."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def _imported(tree: ast.AST, module: str, is_package: bool, known: dict[str, Path]) -> set[str]:
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if _within(a.name)}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: climb level - 1 packages from this file's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if _within(source):
                found |= {f"{source}.{a.name}" if f"{source}.{a.name}" in known else source for a in node.names}
    return {owner for name in found if (owner := _owner(name, known)) is not None and owner != module}


def edges(src: Path = SRC) -> dict[str, set[str]]:
    """Module -> the modules of the package it imports anywhere in its body."""
    known = modules(src)
    return {m: _imported(ast.parse(p.read_text(encoding="utf-8")), m, p.name == "__init__.py", known)
            for m, p in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm, iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                group = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    group.append(w)
                    if w == v:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
    return sorted(groups)


def _under(module: str, floors: tuple[str, ...]) -> bool:
    return any(module == f or module.startswith(f + ".") or module.startswith(f + "_") for f in floors)


def upward(graph: dict[str, set[str]]) -> list[str]:
    """``"a -> b"`` for each import from nn/ or models/ into native/, generation/, training/, the CLI or io."""
    return sorted(f"{a} -> {b}" for a, targets in graph.items() if _under(a, GROUND)
                  for b in targets if _under(b, ABOVE))

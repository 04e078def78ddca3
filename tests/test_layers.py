"""The layering README's Layout section promises, checked from the source: no import cycle
inside emu/ (type-only and function-local imports count: a cycle of any kind means two modules
cannot be understood apart), each layer imports only from the layers below it, and no module
imports another's private name."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Lower layers first: a module may import from its own layer or an earlier one. The loader and
# the machine core are one level: the machine places what the loader read (the multiboot
# information), and the loader checks images against the PC's memory layout.
LAYERS = (("emu.errors",), ("emu.arch",), ("emu.engine",), ("emu.core", "emu.loader"),
          ("emu.tools",), ("emu.cli",))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in (ROOT / "emu").rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> list[tuple[str, list[str]]]:
    """(imported emu module, names taken from it) for every import statement in the file."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name in known]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [a.name for a in node.names]
            submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in known]
            if submodules:
                found += [(m, []) for m in submodules]
            elif target in known:
                found.append((target, names))
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {name: {t for t, _ in _imports(name, path, known) if t != name}
            for name, path in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _layer(name: str) -> int | None:
    for i, prefixes in enumerate(LAYERS):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return i
    return None


def test_emu_has_no_import_cycle() -> None:
    assert _cycles(_graph()) == []


def test_the_cycle_finder_sees_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_each_layer_imports_only_from_below() -> None:
    upward = []
    for name, targets in _graph().items():
        mine = _layer(name)
        for t in targets:
            theirs = _layer(t)
            if mine is not None and theirs is not None and theirs > mine:
                upward.append(f"{name} -> {t}")
    assert upward == []


def test_no_module_imports_a_private_name() -> None:
    mods = _modules()
    known = set(mods)
    private = [f"{name} takes {n} from {t}"
               for name, path in mods.items()
               for t, names in _imports(name, path, known)
               for n in names if n.startswith("_") and not n.startswith("__")]
    assert private == []

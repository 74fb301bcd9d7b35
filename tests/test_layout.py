"""The architecture as a test: packages import only downwards, and no module cycles.

    cli → dev → app | daemon → client → api → lazy → fuse → snapshot → content | runtime

with ``snapfs.sys``, ``snapfs.errors``, ``snapfs.config`` and ``content.errors`` (the one
error tree) usable by all. A package may import itself and anything below it; two packages
on one level (``app`` and ``daemon``, ``content`` and ``runtime``) never import each other.
Every import counts, deferred ones inside functions too: deferring an import makes start-up
faster, not the dependency go away. The README's "Where things are" draws the same map.
And every module is at most 400 lines and opens with a docstring saying what it holds.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOP = ("snapfs", "content", "runtime")
# Lowest first.
LEVELS: tuple[frozenset[str], ...] = tuple(frozenset(level) for level in (
    {"content", "runtime"},
    {"snapfs.snapshot"},
    {"snapfs.fuse"},
    {"snapfs.lazy"},
    {"snapfs.api"},
    {"snapfs.client"},
    {"snapfs.app", "snapfs.daemon"},
    {"snapfs.dev"},
    {"snapfs.cli"},
))
SHARED = ("snapfs.sys", "snapfs.errors", "snapfs.config", "content.errors")
GENERATED = "_pb2"


def _modules() -> dict[str, Path]:
    found = {}
    for top in TOP:
        for path in sorted((ROOT / top).rglob("*.py")):
            if GENERATED in path.name:
                continue
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The module of ours that ``name`` (a module, or a name inside one) is."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, path: Path) -> Iterator[tuple[int, str]]:
    """(line, imported module of ours) for every import in the file, deferred ones too."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _resolve(alias.name)
                if target:
                    yield node.lineno, target
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                target = _resolve(f"{base}.{alias.name}") or _resolve(base)
                if target:
                    yield node.lineno, target


def package_of(module: str) -> str:
    if module == "snapfs":
        return module  # the package's __init__: its version, nothing else
    for shared in SHARED:
        if module == shared or module.startswith(shared + "."):
            return shared
    for level in LEVELS:
        for pkg in level:
            if module == pkg or module.startswith(pkg + "."):
                return pkg
    raise AssertionError(f"{module}: in no package of the layout (add it to LEVELS)")


def rank(pkg: str) -> int:
    for i, level in enumerate(LEVELS):
        if pkg in level:
            return i
    return -1  # shared


def violation(src: str, dst: str) -> str | None:
    """Why ``src`` may not import ``dst``, or None."""
    a, b = package_of(src), package_of(dst)
    if a == b:
        return None
    if a == "snapfs" or b == "snapfs":
        return None
    if rank(a) == -1:
        return None if rank(b) == -1 else f"shared {a} imports {b}"
    if rank(b) == -1:
        return None
    if rank(b) < rank(a):
        return None
    return f"{a} imports {b} ({'a sibling' if rank(a) == rank(b) else 'upward'})"


def edges() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for _, target in imports_of(module, path):
            if target != module:
                graph[module].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle between modules (a package ``__init__`` importing its own modules is
    how packages re-export, not a cycle), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt.startswith(node + "."):
                continue  # __init__ re-exporting a submodule
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


MAX_MODULE_LINES = 400


def test_modules_are_short_and_say_what_they_hold() -> None:
    """Every module (generated ``_pb2`` ones exempt) is at most 400 lines and opens with a
    docstring."""
    long, undocumented = [], []
    for path in MODULES.values():
        text = path.read_text()
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES:
            long.append(f"{path.relative_to(ROOT)}: {lines} lines")
        if ast.get_docstring(ast.parse(text, str(path))) is None:
            undocumented.append(str(path.relative_to(ROOT)))
    assert not long, f"modules over {MAX_MODULE_LINES} lines:\n" + "\n".join(long)
    assert not undocumented, "modules without a docstring:\n" + "\n".join(undocumented)


def test_every_module_sits_in_a_package_of_the_layout() -> None:
    for module in MODULES:
        package_of(module)


def test_imports_point_down() -> None:
    bad = []
    for module, path in MODULES.items():
        for line, target in imports_of(module, path):
            why = violation(module, target)
            if why:
                bad.append(f"{path.relative_to(ROOT)}:{line}: {module} → {target}: {why}")
    assert not bad, "imports against the layout:\n" + "\n".join(bad)


def test_no_import_cycles() -> None:
    cycle = find_cycle(edges())
    assert cycle is None, "import cycle: " + " → ".join(cycle or [])


@pytest.mark.parametrize(("src", "dst", "bad"), [
    ("snapfs.snapshot.snapshotter", "snapfs.lazy.layers", True),  # upward
    ("snapfs.app.engine", "snapfs.daemon.daemon", True),  # sibling
    ("content.store", "snapfs.snapshot.types", True),  # content is the bottom
    ("snapfs.sys.mountinfo", "snapfs.fuse.session", True),  # shared reaches up
    ("snapfs.cli.run", "snapfs.app.containers", False),
    ("runtime.spec", "snapfs.sys.userns", False),
    ("snapfs.lazy.layers", "snapfs.snapshot.types", False),
])
def test_the_rule_itself(src: str, dst: str, bad: bool) -> None:
    # The checker must fail on an upward edge, or the two tests above cannot fail.
    assert (violation(src, dst) is not None) is bad


def test_a_cycle_is_found() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None

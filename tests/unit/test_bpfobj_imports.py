"""bpfobj's imports run one way: parsing -> syscalls -> live objects.

Read from the source (nothing is imported): every import between bpfobj's
modules, at module level or inside a function, must go to the same layer or
a lower one, and form no cycle.  An import inside a function is allowed only
as a deliberate lazy import of something heavy, marked by a comment
``lazy import: <why>`` on its line or in the comment block right above it;
an import placed in a function to dodge a cycle is what this test catches.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

import bpfobj

PACKAGE = "bpfobj"
ROOT = Path(bpfobj.__file__).parent

# Lowest first.  A module may import only from its own layer or one below.
LAYERS: dict[str, tuple[str, ...]] = {
    # pure: bytes in, specs out; no syscall, no ctypes
    "parsing": ("_consts", "_errors", "_insn", "_elf", "_elfsym", "_btf", "_btf_ext", "_spec", "_sections",
                "_parse", "_core", "_kernel_btf"),
    # the kernel interface: one wrapper per command, the fd owner, pseudo file systems, probes
    "syscalls": ("_sys", "_fd", "_fs", "_features"),
    # objects that own kernel resources, and the loader that makes them
    "live": ("_maps", "_programs", "_perf", "_loader", "_arch", "__init__"),
    # development-time tooling
    "tools": ("manifest",),
}
MARKER = "lazy import:"


@dataclass(frozen=True)
class Import:
    module: str      # importing module (short name, e.g. "_sys")
    target: str      # imported bpfobj module (short name)
    line: int
    in_function: bool
    marked: bool


def _targets(node: ast.Import | ast.ImportFrom, modules: set[str]) -> list[str]:
    """The bpfobj modules an import statement names."""
    found = []
    if isinstance(node, ast.Import):
        for alias in node.names:
            parts = alias.name.split(".")
            if parts[0] == PACKAGE and len(parts) > 1 and parts[1] in modules:
                found.append(parts[1])
        return found
    if node.level == 1 or node.level == 0 and (node.module or "").split(".")[0] == PACKAGE:
        base = node.module or ""
        if node.level == 0:
            base = base.partition(".")[2]
        if base:
            head = base.split(".")[0]
            if head in modules:
                found.append(head)
        else:   # from . import _sys, _features
            found.extend(alias.name for alias in node.names if alias.name in modules)
    return found


def _marked(lines: list[str], node: ast.stmt) -> bool:
    """The marker is on the statement's lines or in the comment block just above it."""
    if any(MARKER in lines[i - 1] for i in range(node.lineno, (node.end_lineno or node.lineno) + 1)):
        return True
    i = node.lineno - 2
    while i >= 0 and lines[i].strip().startswith("#"):
        if MARKER in lines[i]:
            return True
        i -= 1
    return False


def collect_imports(sources: dict[str, str]) -> list[Import]:
    """Every import between the given modules (short name -> source text)."""
    modules = set(sources)
    out: list[Import] = []
    for name, text in sources.items():
        lines = text.splitlines()
        tree = ast.parse(text)

        def visit(node: ast.AST, in_function: bool) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    for target in _targets(child, modules):
                        out.append(Import(name, target, child.lineno, in_function,
                                          _marked(lines, child)))
                    if in_function and not _targets(child, modules):
                        out.append(Import(name, "", child.lineno, True, _marked(lines, child)))
                visit(child, in_function or isinstance(
                    child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

        visit(tree, False)
    return out


def find_cycles(imports: list[Import]) -> list[list[str]]:
    """Strongly connected groups of modules that import each other (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        if imp.target and imp.target != imp.module:
            graph.setdefault(imp.module, set()).add(imp.target)
            graph.setdefault(imp.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return cycles


def import_problems(sources: dict[str, str], layers: dict[str, tuple[str, ...]]) -> list[str]:
    rank = {module: i for i, members in enumerate(layers.values()) for module in members}
    layer_name = {module: name for name, members in layers.items() for module in members}
    problems = [f"{m}: in no layer of LAYERS" for m in sorted(set(sources) - set(rank))]
    imports = collect_imports(sources)
    for imp in imports:
        if imp.in_function and not imp.marked:
            what = imp.target or "a module"
            problems.append(f"{imp.module}.py:{imp.line}: imports {what} inside a function "
                            f"without a '{MARKER} <why>' comment")
        if imp.target in rank and imp.module in rank and rank[imp.target] > rank[imp.module]:
            problems.append(f"{imp.module}.py:{imp.line}: {layer_name[imp.module]} module imports "
                            f"{imp.target} of the higher layer {layer_name[imp.target]}")
    problems += [f"import cycle: {' <-> '.join(c)}" for c in find_cycles(imports)]
    return problems


def bpfobj_sources() -> dict[str, str]:
    return {p.stem: p.read_text() for p in sorted(ROOT.glob("*.py"))}


def test_bpfobj_imports_run_one_way_without_cycles_or_hidden_imports() -> None:
    assert import_problems(bpfobj_sources(), LAYERS) == []


ONE_LAYER = {"syscalls": ("_a", "_b")}
TWO_LAYERS = {"parsing": ("_a",), "syscalls": ("_b",)}


@pytest.mark.parametrize("sources, layers, expected", [
    # a cycle hidden by an import inside a function
    ({"_a": "from . import _b\n", "_b": "def f():\n    from ._a import x\n"}, ONE_LAYER,
     ["_b.py:2: imports _a inside a function without a 'lazy import: <why>' comment",
      "import cycle: _a <-> _b"]),
    # a marked lazy import still may not close a cycle
    ({"_a": "from ._b import y\n",
      "_b": "def f():\n    # lazy import: heavy\n    from bpfobj import _a\n"}, ONE_LAYER,
     ["import cycle: _a <-> _b"]),
    # parsing may not reach up to the syscall layer
    ({"_a": "import bpfobj._b\n", "_b": ""}, TWO_LAYERS,
     ["_a.py:1: parsing module imports _b of the higher layer syscalls"]),
    # an unmarked function-level import of anything
    ({"_a": "async def f():\n    import trio\n", "_b": ""}, TWO_LAYERS,
     ["_a.py:2: imports a module inside a function without a 'lazy import: <why>' comment"]),
    # marked, downward, no cycle: fine
    ({"_a": "", "_b": "from . import _a\n\ndef f():\n    import trio  # lazy import: big\n"},
     TWO_LAYERS, []),
])
def test_the_check_reports_what_it_should(sources, layers, expected) -> None:
    assert import_problems(sources, layers) == expected


def test_a_module_outside_every_layer_is_reported() -> None:
    assert import_problems({"_new": ""}, {}) == ["_new: in no layer of LAYERS"]

"""The project's own imports, read statically with `ast`: no import cycle, and data flows one way.

Every `import` and `from ... import` counts, wherever it is written: at module level, inside a
function (the lazy imports that keep TensorFlow out of light commands), or under
`if TYPE_CHECKING:`. A cycle through a lazy import still ties two modules together (neither
can be understood, moved or tested without the other), so it is a cycle here too; issue 31
removed the last two (pipeline.runner <-> pipeline.runs, serving.grpc_api <-> serving.server).

The packages are layered as the README's layout describes: schemas and data, then components,
then pipeline, then serving, then the `tailings` CLI; a module may import from its own layer
and those below it, never from a layer above.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import PROJECT_ROOT

# The project's packages (pyproject's [tool.setuptools] packages, then the benchmarks and the
# tests, which may not form cycles either and which nothing packaged may import), by layer.
LAYERS = {
    "schemas": 0,
    "data": 0,
    "components": 1,
    "pipeline": 2,
    "serving": 3,
    "tailings": 4,
    "benchmarks": 5,
    "tests": 5,
}
PACKAGES = tuple(LAYERS)

# One import: the importing module, the line, and the project module it reaches.
Edge = tuple[str, int, str]


def project_modules(root: Path = PROJECT_ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the project's packages."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module an import of `name` loads: itself, or for `pkg.mod.attr` the longest
    prefix that is a module; None for anything outside the project."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """The dotted names one import statement may load (`from a import b`: a, and a.b in case
    b is a module); relative imports are made absolute."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join(filter(None, [*package, base]))
    return [base, *(f"{base}.{alias.name}" for alias in node.names)]


def import_graph(modules: dict[str, Path]) -> dict[str, list[Edge]]:
    """Module -> its imports of other project modules (first line each), from every import
    statement anywhere in its source."""
    graph: dict[str, list[Edge]] = {}
    for module, path in modules.items():
        seen: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for name in _imported(node, module, path.name == "__init__.py"):
                target = _resolve(name, modules)
                if target is not None and target != module and target not in seen:
                    seen[target] = node.lineno
        graph[module] = [(module, line, target) for target, line in sorted(seen.items())]
    return graph


def find_cycles(graph: dict[str, list[Edge]]) -> list[list[Edge]]:
    """One cycle (as its edges, in order) per group of modules that import each other
    (a strongly connected component of the graph, Tarjan's algorithm), sorted by name."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for _, _, w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted((_cycle_in(graph, group) for group in groups), key=lambda c: c[0][0])


def _cycle_in(graph: dict[str, list[Edge]], group: set[str]) -> list[Edge]:
    """A shortest cycle through the group's first module, staying inside the group."""
    start = min(group)
    paths: dict[str, list[Edge]] = {start: []}
    frontier = [start]
    while frontier:  # breadth first: the first edge back to `start` closes a shortest cycle
        following = []
        for v in frontier:
            for edge in graph[v]:
                w = edge[2]
                if w == start:
                    return [*paths[v], edge]
                if w in group and w not in paths:
                    paths[w] = [*paths[v], edge]
                    following.append(w)
        frontier = following
    raise AssertionError(f"no cycle through {start} in {sorted(group)}")


def describe(cycle: list[Edge], modules: dict[str, Path] | None = None) -> str:
    """`a (a.py:12) -> b (b.py:40) -> a`: each module with the line that imports the next."""
    modules = modules or {}

    def where(module: str, line: int) -> str:
        path = modules.get(module)
        shown = path.relative_to(PROJECT_ROOT) if path is not None else module
        return f"{module} ({shown}:{line})"

    return " -> ".join([*(where(m, line) for m, line, _ in cycle), cycle[-1][2]])


def test_the_project_has_no_import_cycle() -> None:
    modules = project_modules()
    graph = import_graph(modules)
    # Not vacuous: the graph holds the project, and the imports the removed cycles were made
    # of (module-level, and inside a function) are still seen, now in one direction only.
    assert len(modules) > 150 and sum(len(edges) for edges in graph.values()) > 500
    edges = {(a, b) for a, _, b in (e for es in graph.values() for e in es)}
    assert ("pipeline.runner", "pipeline.runs") in edges
    assert ("serving.server", "serving.grpc_api") in edges  # inside EmbeddedServer.start
    assert ("tailings.cli", "pipeline.runner") in edges  # inside a function too
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(describe(c, modules) for c in cycles)


def test_imports_go_from_the_cli_down_to_data_never_up() -> None:
    modules = project_modules()
    upward = [
        f"{a} ({modules[a].relative_to(PROJECT_ROOT)}:{line}) imports {b}"
        for edges in import_graph(modules).values()
        for a, line, b in edges
        if LAYERS[a.split(".")[0]] < LAYERS[b.split(".")[0]]
    ]
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


def _write(root: Path, files: dict[str, str]) -> dict[str, Path]:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return {
        ".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p
        for p in sorted(root.rglob("*.py"))
    }


def test_a_cycle_through_a_function_level_or_type_checking_import_is_found_and_named(tmp_path):
    modules = _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/runner.py": "import os\nfrom pkg.runs import RunDigest\n",
            "pkg/runs.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from pkg.runner import RunSummary\n"
                "def digest():\n    from .runner import summarize\n"
            ),
            "pkg/a.py": "from pkg import b\n",
            "pkg/b.py": "def f():\n    import pkg.c.d\n",
            "pkg/c/__init__.py": "",
            "pkg/c/d.py": "from ..a import x\n",
            "pkg/leaf.py": "from pkg.runs import digest\nimport pkg.a\n",
        },
    )
    cycles = find_cycles(import_graph(modules))
    assert [describe(c) for c in cycles] == [
        "pkg.a (pkg.a:1) -> pkg.b (pkg.b:2) -> pkg.c.d (pkg.c.d:1) -> pkg.a",
        "pkg.runner (pkg.runner:2) -> pkg.runs (pkg.runs:3) -> pkg.runner",
    ]


def test_one_way_imports_are_no_cycle(tmp_path):
    modules = _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/summary.py": "import json\n",
            "pkg/runs.py": "from pkg.summary import RunSummary\n",
            "pkg/runner.py": "from pkg import runs\ndef f():\n    from pkg.summary import x\n",
        },
    )
    graph = import_graph(modules)
    # `from pkg import runs` runs pkg/__init__.py first: an import of the package too.
    assert [target for _, _, target in graph["pkg.runner"]] == ["pkg", "pkg.runs", "pkg.summary"]
    assert find_cycles(graph) == []

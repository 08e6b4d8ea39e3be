"""Imports run one way: ``training`` <- ``exporters`` <- ``service`` <- ``benchmarks``, without cycles, and no
library module imports an entry point.

Every module of the four packages is parsed with ``ast`` (nothing is imported); every ``import`` statement counts,
at module level or inside a function, a class or an ``if`` alike, since a function-local import is still a
dependency that runs.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Lower layers first: a package may import its own layer and the ones before it, never a later one.
LAYERS = ("training", "exporters", "service", "benchmarks")

# The ``python -m`` targets: the commands README.md, docs/, scripts/ and the images run. They parse arguments
# and call library functions; no library module imports them (an entry point may use another's parser, as the
# benchmarks do). A module is an entry point when it runs on ``__name__ == "__main__"`` or is a ``__main__``;
# a new command is added here, so that this list stays the documented one.
ENTRY_POINTS = {
    "training.pretrain",  # pre-train an EDM teacher
    "training.finetune",  # D2O / D2O-F fine-tuning
    "training.make_pairs",  # teacher pairs for the distillation objectives
    "training.import_edm",  # convert an EDM pickle to a model dir
    "training.evaluate",  # FD / precision / recall / spectra reports, scores of any image set
    "training.generate",  # images from a model dir or run dir, without a server
    "exporters.__main__",  # python -m exporters {onnx,tensorrt,triton}
    "service.__main__",  # python -m service (the server)
    "service.client",  # python -m service.client: the client users also import; no package module imports it
    "benchmarks.service",
    "benchmarks.exporters",
    "benchmarks.training",
    "benchmarks.gpu",  # the GPU check's steps (scripts/gpu_check.sh)
}
OPTIONAL_ENTRY_POINTS: set[str] = set()  # commands that may exist (thin entry points when they do)
# Argument handling the entry points share; like them, only entry points import these.
CLI_HELPERS = {"training.cli", "service.cli"}
# Where commands are written down for users and machines.
DOCUMENTED = ["README.md", "docs/*.md", "scripts/*", "deploy/**/*", "Dockerfile*", "compose.yaml", "*/README.md"]
COMMAND = re.compile(r'python3? -m ([A-Za-z_][\w.]*)|"-m",\s*"([A-Za-z_][\w.]*)"')


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def find_modules() -> dict[str, Path]:
    modules = {}
    for package in LAYERS:
        for path in sorted((REPO / package).rglob("*.py")):
            if "__pycache__" not in path.parts:
                modules[module_name(path)] = path
    return modules


MODULES = find_modules()


def _resolve(name: str) -> str | None:
    """The module of ours that importing ``name`` (a module or a name inside one) loads, if any."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def imported_names(module: str, tree: ast.AST) -> Iterator[tuple[str, int]]:
    """(dotted name, line) of everything an ``import``/``from ... import`` in the tree may load."""
    is_package = MODULES[module].name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, one level up per extra dot
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            for alias in node.names:
                # ``from pkg import sub`` loads pkg.sub when that is a module, else only pkg.
                yield (f"{base}.{alias.name}" if alias.name != "*" else base), node.lineno


def build_graph() -> dict[str, dict[str, int]]:
    """module -> {imported module of ours: first line}."""
    graph: dict[str, dict[str, int]] = {}
    for module, path in MODULES.items():
        edges: dict[str, int] = {}
        for name, line in imported_names(module, ast.parse(path.read_text(), str(path))):
            target = _resolve(name)
            if target is not None and target != module:
                edges.setdefault(target, line)
        graph[module] = edges
    return graph


GRAPH = build_graph()


def where(module: str, target: str) -> str:
    return f"{MODULES[module].relative_to(REPO)}:{GRAPH[module][target]} imports {target}"


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def runs_as_main(path: Path) -> bool:
    """A ``__main__`` module, or one with a top-level ``if __name__ == "__main__":``."""
    if path.name == "__main__.py":
        return True
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Compare):
            sides = [node.test.left, *node.test.comparators]
            names = {s.id for s in sides if isinstance(s, ast.Name)}
            consts = {s.value for s in sides if isinstance(s, ast.Constant)}
            if names == {"__name__"} and consts == {"__main__"}:
                return True
    return False


def test_the_graph_sees_the_packages():
    for package in LAYERS:
        assert package in MODULES, package
    assert "exporters.onnx" in GRAPH["exporters.tensorrt"]  # a function-local import counts
    assert "benchmarks.loadgen" in GRAPH["benchmarks.service"]


def test_strongly_connected_components_on_a_known_cycle():
    graph = {"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1, "d": 1}, "d": {}}
    assert sorted(map(sorted, strongly_connected(graph))) == [["a", "b", "c"], ["d"]]


def test_no_import_cycles():
    cycles = [c for c in strongly_connected(GRAPH) if len(c) > 1]
    details = ["\n  ".join(where(m, t) for m in cycle for t in GRAPH[m] if t in cycle) for cycle in cycles]
    assert not cycles, "import cycles:\n  " + "\n  ".join(details)


def test_imports_run_one_way():
    """training <- exporters <- service <- benchmarks: no package imports a later one."""
    rank = {p: i for i, p in enumerate(LAYERS)}
    bad = [
        where(module, target)
        for module, targets in GRAPH.items()
        for target in targets
        if rank[target.split(".")[0]] > rank[module.split(".")[0]]
    ]
    assert not bad, "imports against the layering:\n  " + "\n  ".join(bad)


def test_entry_points_are_the_documented_ones():
    found = {m for m, path in MODULES.items() if runs_as_main(path)}
    assert found - OPTIONAL_ENTRY_POINTS == ENTRY_POINTS - OPTIONAL_ENTRY_POINTS


def command_line_modules() -> set[str]:
    return ENTRY_POINTS | CLI_HELPERS | (OPTIONAL_ENTRY_POINTS & set(MODULES))


@pytest.mark.parametrize("package", LAYERS)
def test_library_modules_never_import_entry_points(package: str):
    entry = command_line_modules()
    bad = [
        where(module, target)
        for module, targets in GRAPH.items()
        if module.split(".")[0] == package and module not in entry
        for target in targets
        if target in entry
    ]
    assert not bad, "library modules importing entry points:\n  " + "\n  ".join(bad)


def test_only_command_line_modules_read_the_command_line():
    """The library gets resolved values: no argparse and no ``sys.argv`` outside the entry points and CLI helpers."""
    bad = []
    for module, path in MODULES.items():
        if module in command_line_modules():
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                if "argparse" in names:
                    bad.append(f"{path.relative_to(REPO)}:{node.lineno} imports argparse")
            elif isinstance(node, ast.Attribute) and ast.unparse(node) == "sys.argv":
                bad.append(f"{path.relative_to(REPO)}:{node.lineno} reads sys.argv")
    assert not bad, "library modules reading the command line:\n  " + "\n  ".join(bad)


def test_documented_commands_are_entry_points():
    """Every ``python -m`` of ours in the docs, scripts and deploy files runs an entry point that exists."""
    seen, bad = set(), []
    for pattern in DOCUMENTED:
        for path in sorted(REPO.glob(pattern)):
            if not path.is_file() or ".venv" in path.parts:
                continue
            text = path.read_text(errors="replace")
            for match in COMMAND.finditer(text):
                target = match.group(1) or match.group(2)
                if target.split(".")[0] not in LAYERS:
                    continue
                module = f"{target}.__main__" if (REPO / target.replace(".", "/")).is_dir() else target
                seen.add(module)
                if module not in ENTRY_POINTS or module not in MODULES:
                    line = text.count("\n", 0, match.start()) + 1
                    bad.append(f"{path.relative_to(REPO)}:{line}: python -m {target}")
    assert not bad, "commands that run no entry point:\n  " + "\n  ".join(bad)
    assert {"training.pretrain", "service.__main__", "benchmarks.service"} <= seen

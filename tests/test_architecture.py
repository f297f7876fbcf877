"""The shape of the code stays as docs/architecture.md draws it (read with the standard library's ast).

- dependencies point one way: bridge → export, presets → engine; engine imports none of the
  other three, export and presets never import bridge, presets imports only engine;
- no import cycle between modules (imports inside functions count too: a cycle hidden in a
  function is still a cycle);
- no command module of bridge/cli/ (one with a ``register`` function) imports another;
- no module is over 500 lines.
"""

import ast
from pathlib import Path
from typing import Dict, Set

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "bridge", "export", "presets")
MAX_LINES = 500


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> Dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


def _imports(path: Path, modules: Dict[str, Path]) -> Set[str]:
    """The project modules that ``path`` imports (absolute or relative, anywhere in the file)."""
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        for n in names:
            # the longest prefix that is one of our modules
            while n and n not in modules:
                n = n.rpartition(".")[0]
            if n and n != me:
                found.add(n)
    return found


def _graph():
    modules = _modules()
    return modules, {m: _imports(p, modules) for m, p in modules.items()}


def test_dependencies_point_one_way():
    _, graph = _graph()
    allowed = {"engine": {"engine"}, "presets": {"engine", "presets"},
               "export": {"engine", "export"}, "bridge": {"engine", "export", "presets", "bridge"}}
    bad = [f"{m} imports {d}" for m, deps in graph.items() for d in deps
           if d.split(".")[0] not in allowed[m.split(".")[0]]]
    assert not bad, "imports against the direction of the layers:\n" + "\n".join(sorted(bad))


def test_no_import_cycles():
    _, graph = _graph()
    # a package's __init__ re-exporting its own modules is not a cycle of responsibility
    edges = {m: {d for d in deps if not (m == d.rpartition(".")[0] or d == m.rpartition(".")[0])}
             for m, deps in graph.items()}
    cycles, state, stack = [], {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for d in sorted(edges[m]):
            if state.get(d) == "open":
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = "done"

    for m in sorted(edges):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_command_module_imports_another():
    modules, graph = _graph()

    def is_command(m):
        tree = ast.parse(modules[m].read_text())
        return any(isinstance(n, ast.FunctionDef) and n.name == "register" for n in tree.body)

    commands = {m for m in modules if m.startswith("bridge.cli.") and is_command(m)}
    assert len(commands) >= 10, commands
    bad = [f"{m} imports {d}" for m in commands for d in graph[m] if d in commands]
    assert not bad, "command modules importing command modules (shared helpers belong in their own room):\n" + \
        "\n".join(sorted(bad))


def test_no_module_over_500_lines():
    long = {m: len(p.read_text().splitlines()) for m, p in _modules().items()}
    long = {m: n for m, n in long.items() if n > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_every_room_says_what_lives_there():
    """Each sub-package's __init__ docstring says what lives there (and what it may import)."""
    missing = [str(p.relative_to(REPO)) for pkg in PACKAGES for p in (REPO / pkg).rglob("__init__.py")
               if not ast.get_docstring(ast.parse(p.read_text()))]
    assert not missing, f"rooms without a docstring: {missing}"

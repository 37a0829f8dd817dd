"""The package's imports run one way: the method ← run support ← tools ← commands.

Read from the source (ast), not by importing: every `import` statement anywhere in a module counts,
those inside functions included, so a cycle cannot hide in a late import."""

import ast
import sys
from pathlib import Path
from typing import Dict, Set

PACKAGE = Path(__file__).resolve().parent.parent / "ddattn"
METHOD_MAY_IMPORT = {"torch", "safetensors"}
# The layers outside ddattn/method, lowest first; a module may import its own layer and those below.
RUN_SUPPORT = {"errors", "paths", "files", "checks", "tasks", "data", "distributed", "options", "rundir", "settings"}
COMMANDS = {"distill", "evaluate", "sweep"}  # sweep runs the other two
TOOLS = {
    "card",
    "report",
    "budget",
    "plots",
    "show",
    "baselines",
    "bench",
    "bench_eval",
    "publish",
    "convert",
    "export",
    "predict",
    "train",
    "fetch",
    "download",
    "opcount",
    "flops",
    "reference",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> Set[str]:
    """Every module `path` imports, by its full dotted name (a package's `from . import x` names x)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            origin = ".".join(base + ([node.module] if node.module else []))
            found.add(origin)
            found |= {f"{origin}.{alias.name}" for alias in node.names}  # `from . import x`: maybe a module
    return found


def package_graph() -> Dict[str, Set[str]]:
    """module → the package's modules it imports (packages' own __init__ left out: they hold no code)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    own = {m for m, p in modules.items() if p.name != "__init__.py"}
    return {m: {i for i in imports_of(modules[m]) if i in own and i != m} for m in own}


def test_no_import_cycle():
    graph, state, path = package_graph(), {}, []

    def visit(module: str) -> None:
        state[module] = "open"
        path.append(module)
        for imported in sorted(graph[module]):
            assert state.get(imported) != "open", (
                f"import cycle: {' → '.join(path[path.index(imported) :] + [imported])}"
            )
            if imported not in state:
                visit(imported)
        path.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_the_method_imports_nothing_outside_it():
    method = PACKAGE / "method"
    allowed_roots = METHOD_MAY_IMPORT | set(sys.stdlib_module_names) | {"ddattn"}
    for path in method.glob("*.py"):
        for name in imports_of(path):
            root = name.split(".")[0]
            assert root in allowed_roots, f"{path.name} imports {name}"
            if root == "ddattn":
                assert name.startswith("ddattn.method"), f"{path.name} imports {name}, outside ddattn/method"


def layer(module: str) -> int:
    name = module.removeprefix("ddattn.")
    if name.startswith("method."):
        return 0
    for rank, members in enumerate((RUN_SUPPORT, TOOLS, COMMANDS), start=1):
        if name in members:
            return rank
    raise AssertionError(f"{module} is in no layer: add it to one in tests/test_imports.py")


def test_imports_run_from_commands_to_tools_to_run_support_to_the_method():
    for module, imported in package_graph().items():
        for other in imported:
            assert layer(other) <= layer(module), f"{module} (layer {layer(module)}) imports {other} ({layer(other)})"


def test_the_graph_is_read_right():
    """The reader sees what is there: distill (a command) imports the outer loop, and the method's
    bert imports its attention."""
    graph = package_graph()
    assert "ddattn.method.outer" in graph["ddattn.distill"]
    assert "ddattn.method.attention" in graph["ddattn.method.bert"]

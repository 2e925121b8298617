"""The package's import graph: no cycles between modules or between packages, and no arrow from a
lower layer up to a higher one. Every glmflash-internal import counts, those inside functions too
(a lazy import is still a dependency). Also: only the adapters import fastapi, gradio and the
like, and only config.py reads GLMFLASH_* variables. `python tests/test_imports.py` prints the
faults.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "glmflash"

# Lowest first. A module may import its own layer and the layers below it, never one above.
LAYERS: list[tuple[str, ...]] = [
    ("_version", "errors", "config", "options", "inputs", "text", "replies"),
    ("pipeline", "contract"),
    ("backends", "models"),
    ("__init__",),  # the public API: load() and the engine types
    ("jobs", "evaluate", "grounding", "adapt", "cost", "testing"),
    ("server", "ui", "commands", "cli", "__main__"),
]


def modules() -> dict[str, Path]:
    """Every module as its dotted name under glmflash ("glmflash" for the package root)."""
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = ["glmflash", *path.relative_to(ROOT).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def graph() -> dict[str, set[str]]:
    """module -> the glmflash modules it imports (a name imported from a package that is one of
    its modules counts as that module)."""
    known = modules()
    edges: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                           for alias in node.names]  # fmt: skip
            for target in targets:
                while target and target not in known:
                    target = target.rpartition(".")[0]
                if target.startswith("glmflash") and target != name:
                    edges[name].add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one member (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def package_of(module: str) -> str:
    """The top-level part a module belongs to: "server" for glmflash.server.app, "__init__" for
    the package root."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layer(module: str) -> int:
    part = package_of(module)
    for number, members in enumerate(LAYERS):
        if part in members:
            return number
    raise AssertionError(f"{module} is in no layer: add {part!r} to LAYERS in {__file__}")


def package_graph(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    parts: dict[str, set[str]] = {}
    for module, targets in edges.items():
        parts.setdefault(package_of(module), set()).update(
            package_of(t) for t in targets if package_of(t) != package_of(module)
        )
    return parts


def upward(edges: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{module} -> {target}"
        for module, targets in edges.items()
        for target in targets
        if layer(target) > layer(module)
    )


def test_every_module_is_in_a_layer():
    for module in modules():
        layer(module)


def test_no_import_cycle_between_modules():
    assert cycles(graph()) == []


def test_no_import_cycle_between_packages():
    assert cycles(package_graph(graph())) == []


def test_no_lower_layer_imports_a_higher_one():
    assert upward(graph()) == []


ADAPTER_LIBRARIES = ("fastapi", "starlette", "gradio", "uvicorn", "ipywidgets")


def adapter_imports() -> list[str]:
    """Where a module below the adapters' layer imports the HTTP server's or the page's libraries
    (the core does not know its adapters)."""
    found = []
    for name, path in modules().items():
        if layer(name) == len(LAYERS) - 1:
            continue
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.Import):
                roots = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                roots = [(node.module or "").split(".")[0]]
            else:
                continue
            found += [f"{name} -> {root}" for root in roots if root in ADAPTER_LIBRARIES]
    return sorted(found)


def test_the_core_does_not_import_the_adapters_libraries():
    assert adapter_imports() == []


def environment_reads() -> list[str]:
    """Where a module other than config.py reads a GLMFLASH_* variable (os.environ, getenv)."""
    found = []
    for name, path in modules().items():
        if name == "glmflash.config":
            continue
        source = path.read_text("utf-8")
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, (ast.Call, ast.Subscript)):
                continue
            text = ast.get_source_segment(source, node) or ""
            named = [
                c.value for c in ast.walk(node) if isinstance(c, ast.Constant) and isinstance(c.value, str)
            ]
            if ("environ" in text or "getenv" in text) and any(v.startswith("GLMFLASH_") for v in named):
                found.append(f"{name}:{node.lineno}")
    return sorted(set(found))


def test_only_config_reads_glmflash_variables():
    assert environment_reads() == []


def test_the_check_sees_cycles_and_lazy_imports():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    edges = graph()
    # a function-level import is an edge too (the local engine loads the tiny model lazily)
    assert any(target.startswith("glmflash.backends") for target in edges["glmflash"])


if __name__ == "__main__":
    edges = graph()
    for component in cycles(edges):
        print("module cycle:", " <-> ".join(component))
    for component in cycles(package_graph(edges)):
        print("package cycle:", " <-> ".join(component))
    for arrow in upward(edges):
        print("upward:", arrow)
    for place in environment_reads():
        print("GLMFLASH_ read outside config.py:", place)
    for arrow in adapter_imports():
        print("core imports an adapter library:", arrow)

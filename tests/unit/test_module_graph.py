"""The house rules of src/: no import circle, every arrow pointing down the layers below, and
no module too long to read in one sitting. Imports inside functions count: a circle closed
lazily is still a circle. bench/ keeps the same rules but the layers (it is tooling on top of
everything), and src/ never imports bench/ (it is not in the wheel)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
MAX_LINES = 600

#: Bottom first. A module may import its own package and the layers below its own.
LAYERS = [
    {"ratewire", "domain", "logs", "extras", "client"},
    {"config", "observability"},
    {"security"},
    {"audit", "broker"},
    {"storage"},
    {"services", "webhooks", "transfer", "serving"},
    {"api", "realtime", "dashboard", "mcp"},
    {"runtime"},
    {"cli", "healthcheck"},
    {"__main__"},
]


def _modules(root: Path = SRC, top: str = "ratewire") -> dict[str, Path]:
    """Every module of the package ``top`` under ``root``, by dotted name."""
    found = {}
    for path in (root / top).rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imported(name: str, path: Path) -> set[str]:
    """What module ``name`` (at ``path``) imports, anywhere in it: each ``from x import y`` as
    ``x`` and ``x.y`` (``y`` may be a module), relative imports made absolute."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            found.update([base, *(f"{base}.{alias.name}" for alias in node.names)])
    return found


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    return {
        name: {t for t in _imported(name, path) if t in modules and t != name}
        for name, path in modules.items()
    }


def _too_long(modules: dict[str, Path]) -> dict[str, int]:
    return {
        str(path.relative_to(ROOT)): count
        for path in modules.values()
        if (count := len(path.read_text().splitlines())) > MAX_LINES
    }


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _layer(package: str) -> int:
    for index, members in enumerate(LAYERS):
        if package in members:
            return index
    raise AssertionError(f"package {package!r} is in no layer of this test: add it")


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_import_circle() -> None:
    assert _cycles(_imports(_modules())) == []


def test_every_import_points_down_the_layers() -> None:
    upward = [
        f"{source} -> {target}"
        for source, targets in _imports(_modules()).items()
        for target in targets
        if _package(source) != _package(target)
        and _layer(_package(target)) >= _layer(_package(source))
    ]
    assert upward == []


def test_no_module_over_600_lines() -> None:
    assert _too_long(_modules()) == {}


#: A function a reader takes in at once: longer ones hide more than one job.
MAX_FUNCTION_LINES = 100


def _long_functions(modules: dict[str, Path]) -> dict[str, int]:
    found = {}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found[f"{name}.{node.name}"] = length
    return found


def test_no_function_over_100_lines() -> None:
    assert _long_functions(_modules()) == {}


def test_the_length_check_sees_a_long_function(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "long.py").write_text("def f():\n" + "    x = 1\n" * 100)
    assert _long_functions(_modules(tmp_path, "pkg")) == {"pkg.long.f": 101}


def test_no_import_circle_in_bench() -> None:
    assert _cycles(_imports(_modules(ROOT, "bench"))) == []


def test_no_bench_module_over_600_lines() -> None:
    assert _too_long(_modules(ROOT, "bench")) == {}


def test_src_never_imports_bench() -> None:
    """The wheel holds src/ only: ``ratewire bench`` runs ``python -m bench.*`` in the
    checkout instead of importing it (cli/bench.py)."""
    reaching = [
        f"{name} -> {target}"
        for name, path in _modules().items()
        for target in _imported(name, path)
        if target == "bench" or target.startswith("bench.")
    ]
    assert reaching == []


def test_the_checks_see_a_circle_and_an_upward_arrow() -> None:
    edges = {"ratewire.a.x": {"ratewire.b.y"}, "ratewire.b.y": {"ratewire.a.x"}}
    assert _cycles(edges) == [["ratewire.a.x", "ratewire.b.y"]]
    assert _layer("domain") < _layer("storage") < _layer("cli")


def test_the_checks_see_a_circle_closed_inside_a_function(tmp_path: Path) -> None:
    """bench.fanout and bench.ws_impls once imported each other, both lazily."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "a.py").write_text("def f():\n    from pkg.b import g\n")
    (tmp_path / "pkg" / "b.py").write_text("def g():\n    from . import a\n")
    assert _cycles(_imports(_modules(tmp_path, "pkg"))) == [["pkg.a", "pkg.b"]]

"""The package runs one way: no import cycles, leaf modules stay leaves, and
private Keras and KerasHub parts are reached from one module only."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hubquant"


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _imported(name: str, path: Path, modules: dict) -> set[str]:
    """Package modules ``name`` imports anywhere in its file (inside functions too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            subs = {f"{base}.{a.name}" for a in node.names}
            found |= subs if subs <= modules.keys() else subs | {base}
    # A module's own packages are imported before it, by Python itself.
    parents = {name.rsplit(".", n)[0] for n in range(1, name.count(".") + 1)}
    return {m for m in found if m in modules and m != name and m not in parents}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph``, or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(node: str, path: list[str]):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt, [*path, nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_no_import_cycles_even_through_imports_inside_functions():
    modules = _modules()
    graph = {name: _imported(name, path, modules) for name, path in modules.items()}
    assert _cycle(graph) is None


def test_private_keras_parts_are_reached_from_one_module():
    users = {
        path.name
        for path in PACKAGE.rglob("*.py")
        if any(
            s in path.read_text() for s in ("import keras.src", "from keras.src", "keras_hub.src.")
        )
        and path.name != "keras_internals.py"
    }
    assert users <= {"hf_import.py"}  # which names KerasHub's converter package in a docstring
    assert "from keras_hub.src" not in (PACKAGE / "io" / "hf_import.py").read_text()


def test_a_leaf_module_does_not_import_the_library_calls():
    code = "import sys, hubquant.quantizers; print(sorted(m for m in sys.modules if m in ('hubquant.api', 'hubquant.stream')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_subpackage_is_installed():
    """pyproject.toml lists packages by name: a new folder must be listed, or
    an installed hubquant lacks it (the tests, run from the source tree, would not see it)."""
    import tomllib

    listed = set(
        tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["setuptools"][
            "packages"
        ]
    )
    folders = {
        ".".join(p.parent.relative_to(PACKAGE.parent).parts) for p in PACKAGE.rglob("__init__.py")
    }
    assert folders <= listed

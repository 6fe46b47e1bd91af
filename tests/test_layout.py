"""The package layout (docs/architecture.md): every module imports on its own, imports go one way
(no cycles, the engine never imports the CLI, Typer or rich), and option modules load without torch."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pucli"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = sorted(_module_name(path) for path in PACKAGE.rglob("*.py"))
ENGINE = [name for name in MODULES if not name.startswith("pucli.cli") and name != "pucli.__main__"]


def _imports(path: Path) -> set[str]:
    """Every pucli module ``path`` imports, wherever the import is: at module level, inside
    functions (lazy imports hide cycles too) and under ``if TYPE_CHECKING:`` (a type is a
    dependency as well)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pucli"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in MODULES else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("pucli"))
    return {name for name in found if name in MODULES}


def _graph() -> dict[str, set[str]]:
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        graph[name] = _imports(path) - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (module -> modules it imports) as a list of names, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_fails_on_a_cycle_and_passes_a_tree() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_anywhere_in_pucli() -> None:
    cycle = find_cycle(_graph())
    assert cycle is None, " -> ".join(cycle or [])


#: The layers of docs/architecture.md, top to bottom: a module imports its own layer or the ones
#: below, never one above. Each entry is a module or a package (its modules with it).
LAYERS = [
    ["pucli.cli", "pucli.__main__"],
    ["pucli.pu", "pucli.kd", "pucli.evaluate", "pucli.compress", "pucli.deploy", "pucli.show"],
    ["pucli.data", "pucli", "pucli.models", "pucli.architectures", "pucli.model_config", "pucli.model_files",
     "pucli.compressed_files", "pucli.checkpoints", "pucli.report", "pucli.run_context", "pucli.cache",
     "pucli.device", "pucli.distributed"],
    ["pucli.errors", "pucli.paths", "pucli.progress"],
]
#: The stages (layer 1) import each other only downstream, and only these ways: compress/ and
#: deploy/ measure what they made with evaluate.py; deploy/ draws calibration images with compress/.
STAGE_IMPORTS = {("pucli.compress", "pucli.evaluate"), ("pucli.deploy", "pucli.evaluate"),
                 ("pucli.deploy", "pucli.compress")}


def _place(module: str) -> tuple[int, str]:
    """``(layer, entry)`` of ``module``: the most specific entry of :data:`LAYERS` that holds it."""
    matches = [(len(entry), layer, entry) for layer, entries in enumerate(LAYERS) for entry in entries
               if module == entry or (entry != "pucli" and module.startswith(entry + "."))]
    assert matches, f"{module} is in no layer of docs/architecture.md: add it there and to LAYERS"
    _, layer, entry = max(matches)
    return layer, entry


def test_every_module_has_a_place_in_the_layer_map() -> None:
    for module in MODULES:
        _place(module)


def test_every_import_goes_down_the_layers_and_stages_only_downstream() -> None:
    offenders = []
    for module, imported in _graph().items():
        layer, entry = _place(module)
        for target in sorted(imported):
            target_layer, target_entry = _place(target)
            if target_layer < layer:
                offenders.append(f"{module} -> {target} (up from layer {layer} to {target_layer})")
            elif layer == target_layer == 1 and entry != target_entry and (entry, target_entry) not in STAGE_IMPORTS:
                offenders.append(f"{module} -> {target} (stage {entry} imports stage {target_entry})")
    assert not offenders, "\n".join(offenders)


def test_the_engine_never_imports_the_cli() -> None:
    graph = _graph()
    offenders = {name: sorted(m for m in graph[name] if m.startswith("pucli.cli")) for name in ENGINE}
    assert not {k: v for k, v in offenders.items() if v}


@pytest.mark.parametrize("module", MODULES)
def test_every_module_imports_alone_in_a_fresh_interpreter(module: str) -> None:
    check = "" if module.startswith("pucli.cli") or module == "pucli.__main__" else (
        "assert 'typer' not in sys.modules and 'rich' not in sys.modules, 'the engine imported a CLI library'\n")
    if module == "pucli.__main__":
        pytest.skip("runs the CLI when imported")
    code = f"import sys\nimport {module}\n{check}"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("module", ["pucli.pu.options", "pucli.kd.distill.config", "pucli.errors"])
def test_option_modules_import_without_torch(module: str) -> None:
    code = f"import sys\nimport {module}\nassert 'torch' not in sys.modules, 'torch was imported'\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


#: A command-line flag in a string: what the engine must never write (docs/architecture.md).
FLAG = re.compile(r"(^|[\s'\"`(])--[a-z][a-z0-9-]+")


def _flag_strings(path: Path) -> list[str]:
    """The string constants of ``path`` that spell a flag, docstrings left out (they may show the
    command line)."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {node.value[:80]!r}" for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
            and FLAG.search(node.value)]


def test_the_engine_names_parameters_never_flags() -> None:
    """Only ``pucli.cli`` spells flags: engine messages name parameters (``class_prior``), which
    ``pucli.cli._errors`` turns into the command's flags (``--prior``)."""
    offenders = [line for path in sorted(PACKAGE.rglob("*.py")) if "cli" not in path.relative_to(PACKAGE).parts[:1]
                 for line in _flag_strings(path)]
    assert not offenders, "\n".join(offenders)

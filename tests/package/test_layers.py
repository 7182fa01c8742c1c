"""The package's layers point down: no module imports one of a higher layer, and no import cycle.

The declared order (docs/architecture.md, "Package map"); a module of layer L may import modules of layers <= L.
Every ``causal_rcm`` import is checked, at module level or inside a function. Imports inside functions are
refused too (they are how a loop is hidden), except in the faces (CLI, benchmarks' commands, the package's lazy
root), which defer torch so that ``causal-rcm --help`` starts in a blink, and in the attention dispatch, which
imports the Triton kernels (an optional dependency) when their backend is first asked for.
"""

from __future__ import annotations

import ast
from pathlib import Path

import causal_rcm

PACKAGE = Path(causal_rcm.__file__).resolve().parent

LAYERS: list[tuple[str, ...]] = [
    ("errors", "devices", "limits", "version", "kernels"),  # 0: leaf code
    ("diffusion",),  # 1: math without parameters
    ("models", "data"),  # 2: the network, its checkpoints; codecs, text encoders, data sources
    ("config", "spec", "pipeline"),  # 3: run configs, the checkpoint's pipeline spec, streaming
    ("train",),  # 4: the trainer (knows no recipe)
    ("distill", "eval"),  # 5: recipes; metrics and reports
    ("runs",),  # 6: composition: single and staged runs, quickstart, experiments
    ("cli", "serve", "bench", "__init__"),  # 7: faces
]
LAZY_ALLOWED = {"cli", "bench", "__init__", "kernels.dispatch"}


def layer_of(module: str) -> int:
    """Layer of ``causal_rcm.<module>`` by its first component (a module's own name for top-level files)."""
    head = module.split(".")[0]
    for index, names in enumerate(LAYERS):
        if head in names:
            return index
    raise AssertionError(f"causal_rcm.{module} is in no declared layer: add it to LAYERS and to docs/architecture.md")


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "__init__"
        found[name] = path
    return found


def imports(path: Path) -> list[tuple[str, bool, int]]:
    """(``causal_rcm`` submodule imported, inside a function?, line) for every import in ``path``."""
    tree = ast.parse(path.read_text())
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                if child.module == "causal_rcm":  # `from causal_rcm import x`: x is a submodule or a root attribute
                    for alias in child.names:
                        target = alias.name if alias.name in LAYERS_FLAT else "__init__"
                        found.append((target, in_function, child.lineno))
                elif child.module.startswith("causal_rcm."):
                    found.append((child.module.removeprefix("causal_rcm."), in_function, child.lineno))
            elif isinstance(child, ast.ImportFrom) and child.level:
                raise AssertionError(f"{path}:{child.lineno}: relative import; the package imports absolutely")
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.startswith("causal_rcm."):
                        found.append((alias.name.removeprefix("causal_rcm."), in_function, child.lineno))
            visit(child, nested)

    visit(tree, False)
    return found


LAYERS_FLAT = {name for names in LAYERS for name in names}


def test_every_module_imports_only_its_layer_and_below():
    violations = []
    for name, path in modules().items():
        own = layer_of(name)
        for target, _, line in imports(path):
            if layer_of(target) > own:
                violations.append(f"{path.relative_to(PACKAGE)}:{line} (layer {own}) imports causal_rcm.{target} (layer {layer_of(target)})")
    assert not violations, "upward imports:\n" + "\n".join(violations)


def test_imports_inside_functions_only_where_declared():
    hidden = []
    for name, path in modules().items():
        if name in LAZY_ALLOWED or name.split(".")[0] in LAZY_ALLOWED:
            continue
        hidden += [f"{path.relative_to(PACKAGE)}:{line} imports causal_rcm.{t} inside a function"
                   for t, in_function, line in imports(path) if in_function]
    assert not hidden, "\n".join(hidden)


def _module_graph() -> dict[str, set[str]]:
    """Module-level import edges between the package's modules (a submodule import also runs its packages)."""
    names = modules()
    graph: dict[str, set[str]] = {name: set() for name in names}
    for name, path in names.items():
        for target, in_function, _ in imports(path):
            if in_function:
                continue
            while target not in names and "." in target:  # `from causal_rcm.x import attr`: the module x
                target = target.rsplit(".", 1)[0]
            if target in names and target != name:
                graph[name].add(target)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := dfs(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := dfs(node)):
            return found
    return None


def test_no_import_cycle():
    cycle = _cycle(_module_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checker_sees_what_it_must():
    """The checks would fail on what they forbid: an upward import, a loop, a hidden import."""
    assert layer_of("kernels.masks") == 0 and layer_of("runs.quickstart") == 6 and layer_of("cli") == 7
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
    trainer = imports(PACKAGE / "train" / "trainer.py")
    assert ("config", False) in {(t, f) for t, f, _ in trainer} and all(layer_of(t) <= 4 for t, _, _ in trainer)
    assert any(in_function for _, in_function, _ in imports(PACKAGE / "cli.py"))  # the CLI defers torch

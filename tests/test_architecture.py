"""The package reads as the pipeline it implements (see the README's "Architecture"): no import cycles, arrows only
point down the floors, no oversized modules. The import graph is built from the source with ``ast``: module-level
and function-level imports, literal ``importlib.import_module`` calls, and the fact that importing ``a.b.c`` runs
package ``a.b``'s ``__init__`` (and ``a``'s) first."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lora_patch_adapters"
ROOT = PACKAGE.name

# Floors, lowest first (a module may import its own floor's package and lower floors only). "data" and "generators"
# share a floor and import neither each other: the attribute names both need live in the leaf module "attributes".
FLOORS = {
    "_checks": 0, "_io": 0, "version": 0, "attributes": 0,
    "tuner": 1,
    "generators": 2, "data": 2,
    "defenses": 3, "losses": 3, "removal": 3, "marks": 3,
    "training": 4,
    "evaluation": 5,
    "patches": 6,
    "runs": 7,
    "audit": 8, "forensics": 8, "app": 8,
    "cli": 9,
    "__init__": 10, "__main__": 10, "patch_io": 10, "hub": 10,  # the public surface and moved-module aliases
}
MAX_LINES = 600
NETWORK_DEFINITIONS = {"generators/hisd.py", "generators/attgan.py", "generators/stargan.py"}


def _modules() -> dict[str, tuple[Path, bool]]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        found[".".join(parts)] = (path, is_package)
    return found


MODULES = _modules()


def _targets(module: str, is_package: bool, node: ast.AST) -> list[str]:
    """The package modules an import node names (``from x import y`` names ``x.y`` when that is a module)."""
    def absolute(name: str, level: int) -> str:
        if not level:
            return name
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (level - 1)]
        return ".".join(base + ([name] if name else []))

    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        target = absolute(node.module or "", node.level)
        return [f"{target}.{a.name}" if f"{target}.{a.name}" in MODULES else target for a in node.names]
    if (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
        name = node.args[0].value
        level = len(name) - len(name.lstrip("."))
        return [absolute(name.lstrip("."), level)]
    return []


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules its import statements run (their parent packages included, except the
    importer's own ancestors, which are already initialising when it runs)."""
    graph: dict[str, set[str]] = {}
    for module, (path, is_package) in MODULES.items():
        ancestors = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            for target in _targets(module, is_package, node):
                parts = target.split(".")
                if parts[0] != ROOT:
                    continue
                for i in range(1, len(parts) + 1):
                    name = ".".join(parts[:i])
                    if name in MODULES and name != module and name not in ancestors:
                        edges.add(name)
        graph[module] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def unresolved_imports() -> list[str]:
    """``from <package module> import ...`` statements whose module does not exist (a relative import that climbs one
    level too few fails only when it runs, e.g. inside a function)."""
    missing = []
    for module, (path, is_package) in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.ImportFrom):
                continue
            base = module.split(".") if is_package else module.split(".")[:-1]
            if node.level:
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == ROOT and target not in MODULES:
                missing.append(f"{module}: from {'.' * node.level}{node.module or ''} import ...")
    return missing


def floor(module: str) -> float:
    parts = module.split(".")
    return FLOORS["__init__" if len(parts) == 1 else parts[1]]


def test_the_graph_sees_function_level_imports_and_parent_packages():
    graph = import_graph()
    assert "lora_patch_adapters.defenses.plugins" in graph["lora_patch_adapters.runs.evaluate"]
    # cli.evaluate imports runs lazily, inside its command function
    assert "lora_patch_adapters.runs.evaluate" in graph["lora_patch_adapters.cli.evaluate"]
    # importing tuner.fingerprint from patches.format runs tuner/__init__ too
    assert "lora_patch_adapters.tuner" in graph["lora_patch_adapters.patches.format"]


def test_the_app_sits_above_runs_and_below_the_cli():
    graph = import_graph()
    app_modules = [m for m in MODULES if m == f"{ROOT}.app" or m.startswith(f"{ROOT}.app.")]
    assert f"{ROOT}.app.session" in app_modules and f"{ROOT}.app.ui" in app_modules
    imported = set().union(*(graph[m] for m in app_modules))
    assert any(t.startswith(f"{ROOT}.runs") for t in imported)  # it reuses the runs' patch checks
    assert not [t for t in imported if t.split(".")[1] in ("cli", "audit", "forensics")]
    assert f"{ROOT}.app" in graph[f"{ROOT}.cli.app"]


def reached(package: str) -> set[str]:
    """Every package module that importing any module of ``lora_patch_adapters.<package>`` runs, transitively."""
    graph = import_graph()
    todo = [m for m in graph if m.split(".")[:2] == [ROOT, package]]
    seen = set(todo)
    while todo:
        for target in graph.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


@pytest.mark.parametrize("package, forbidden", [("evaluation", "training"), ("data", "generators")])
def test_the_layering_knots_stay_untied(package, forbidden):
    """evaluation/ reads the warning mark from marks/, not training/; data/ and generators/ share attributes.py."""
    assert not sorted(m for m in reached(package) if m.split(".")[:2] == [ROOT, forbidden])


def test_find_cycle_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_every_import_of_the_package_resolves():
    assert not unresolved_imports(), "imports of modules that do not exist:\n" + "\n".join(unresolved_imports())


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_every_module_has_a_floor():
    missing = sorted({m.split(".")[1] for m in MODULES if "." in m} - set(FLOORS))
    assert not missing, f"add {missing} to FLOORS (and to the README's architecture)"


def test_arrows_only_point_down():
    upward = []
    for module, targets in import_graph().items():
        for target in targets:
            same_package = module.split(".")[:2] == target.split(".")[:2]
            if not same_package and floor(target) >= floor(module):
                upward.append(f"{module} -> {target}")
    assert not upward, "imports that point up (or sideways) the floors:\n" + "\n".join(sorted(upward))


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_oversized_module(path):
    relative = path.relative_to(PACKAGE).as_posix()
    if relative in NETWORK_DEFINITIONS:
        return
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{relative} has {lines} lines; split it along its seams (limit {MAX_LINES})"


def test_public_api_at_the_top_level():
    import lora_patch_adapters as lpa
    from lora_patch_adapters import evaluation, patches

    assert lpa.load_patch is patches.load_patch and lpa.save_patch is patches.save_patch
    assert lpa.push_patch is patches.push_patch and lpa.pull_patch is patches.pull_patch
    assert lpa.inspect_patch is patches.inspect_patch and lpa.evaluate_defense is evaluation.evaluate_defense
    assert {"load_patch", "save_patch", "push_patch", "pull_patch", "inspect_patch", "evaluate_defense"} <= set(
        lpa.__all__)


def test_moved_io_modules_still_import():
    from lora_patch_adapters import hub, patch_io, patches

    assert patch_io.load_patch is patches.load_patch and patch_io.base_fingerprint is patches.base_fingerprint
    assert hub.pull_patch is patches.pull_patch and hub.HubError is patches.HubError

"""The import rules of docs/architecture.md, checked on the source with the standard library's ast.

A message flows mllp -> queue -> convert -> validate -> deliver, and the api reads what was
delivered. A stage may use the stages after it and the libraries below all stages; never a stage
before it. Libraries use only libraries. Only ``services`` (and the ``cli`` above it) wires
stages into processes. No two units import each other, directly or round a longer circle, and no
two modules do either (a function-level or TYPE_CHECKING import counts).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "gateway"

#: The message's way through the gateway, in order.
STAGES = ("mllp", "queue", "convert", "validate", "deliver", "api")
#: What every stage may use: no stage, no process.
LIBRARIES = frozenset(
    {"errors", "stages", "keys", "envelope", "config", "sinkspec", "logs", "procutil", "lru", "shapecheck", "fhirjson"}
    | {"backlog"}
    | {"logcontext"}
    | {"filemodes"}
    | {"diskspace"}
    | {"readiness"}
    | {"redis_persistence"}
    | {"metrics"}
    | {"hl7"}
    | {"db", "store", "journal"}
)
TOP = ("services", "cli")


def unit_of(module: str) -> str:
    """``gateway.store.db`` -> ``store``; ``gateway.errors`` -> ``errors``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def imports() -> dict[str, set[tuple[str, str]]]:
    """unit -> {(imported unit, importing module)} for every import of another unit of the gateway."""
    found: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for path in ROOT.rglob("*.py"):
        module = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts).removesuffix(".__init__")
        source = unit_of(module) if "." in module else "gateway"
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module == "gateway":
                    names = [f"gateway.{alias.name}" for alias in node.names]
                elif node.module.startswith("gateway."):
                    names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names if alias.name.startswith("gateway.")]
            for name in names:
                target = unit_of(name)
                if target != source:
                    found[source].add((target, module))
    return found


def test_every_unit_is_placed() -> None:
    units = {unit_of(".".join(p.relative_to(ROOT.parent).with_suffix("").parts)) for p in ROOT.rglob("*.py")}
    units.discard("__init__")
    assert units <= set(STAGES) | LIBRARIES | set(TOP), sorted(units - (set(STAGES) | LIBRARIES | set(TOP)))


def test_libraries_use_only_libraries() -> None:
    wrong = sorted(
        f"{module} imports {target}"
        for source, edges in imports().items()
        if source in LIBRARIES
        for target, module in edges
        if target not in LIBRARIES
    )
    assert wrong == []


def test_no_stage_imports_an_earlier_stage_or_a_process() -> None:
    wrong = []
    for source, edges in imports().items():
        if source not in STAGES:
            continue
        for target, module in edges:
            if target in TOP or (target in STAGES and STAGES.index(target) < STAGES.index(source)):
                wrong.append(f"{module} imports {target}")
    assert sorted(wrong) == []


def test_no_import_cycle_between_units() -> None:
    graph = {source: {target for target, _ in edges} for source, edges in imports().items()}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        for following in sorted(graph.get(node, ())):
            if following in path:
                cycles.append(" -> ".join(path[path.index(following) :] + [following]))
            elif len(path) < len(graph) + 1:
                visit(following, path + [following])

    for start in sorted(graph):
        visit(start, [start])
    assert sorted(set(cycles)) == []


def module_imports() -> dict[str, set[str]]:
    """module -> the gateway modules it imports (``from a.b import c`` counts as a.b.c when that is
    a module), in function bodies and under TYPE_CHECKING too."""
    modules = {
        ".".join(path.relative_to(ROOT.parent).with_suffix("").parts).removesuffix(".__init__"): path
        for path in ROOT.rglob("*.py")
    }
    graph: dict[str, set[str]] = defaultdict(set)
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module.startswith("gateway"):
                    names = [
                        f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                        for alias in node.names
                    ]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names if alias.name.startswith("gateway")]
            graph[module] |= {name for name in names if name in modules and name != module}
    return graph


def test_no_import_cycle_between_modules() -> None:
    graph = module_imports()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[str] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for following in sorted(graph.get(node, ())):
            if state.get(following) == 1:
                cycles.append(" -> ".join(path[path.index(following) :] + [following]))
            elif following not in state:
                visit(following, path + [following])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert cycles == []


def test_the_rules_catch_what_they_are_for() -> None:
    # The checker itself: the graph is read from the source, and it sees a real import.
    edges = imports()
    assert ("store", "gateway.deliver.store_sink") in edges["deliver"]
    assert any(target == "queue" for target, _ in edges["mllp"])
    assert "gateway.convert.functions.registry" in module_imports()["gateway.convert.functions.builders"]

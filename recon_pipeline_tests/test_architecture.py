"""The package's shape, read from its source: layers import downwards only, the engine and
the model never import Dagster, the model imports nothing of ours, and no database call
is made under `engine/` (every cursor, bulk write and transaction is in `stores/`)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import recon_pipeline

PACKAGE = Path(recon_pipeline.__file__).parent
SUBPACKAGES = ("model", "stores", "engine", "defs", "local", "cli")
# Method names that talk to a database, whichever driver: pymongo's collection and
# database calls, SQLAlchemy's engine, connection and session calls.
DATABASE_CALLS = frozenset({
    "bulk_write", "insert_one", "insert_many", "update_one", "update_many", "replace_one",
    "delete_one", "delete_many", "find", "find_one", "find_one_and_update", "aggregate",
    "count_documents", "distinct", "command", "create_index", "drop", "start_session",
    "execute", "scalar", "scalars", "begin", "connect", "commit", "rollback",
})


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, dotted
    target: str  # what it imports, dotted (a module, or a module's attribute)
    line: int


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources() -> Iterator[tuple[str, Path, ast.Module]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        yield module_name(path), path, ast.parse(path.read_text(), str(path))


def imports() -> list[Import]:
    """Every import, top-level or inside a function, relative ones resolved."""
    found = []
    for module, path, tree in sources():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found += [Import(module, alias.name, node.lineno) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                found += [Import(module, f"{base}.{alias.name}", node.lineno)
                          for alias in node.names]
    return found


def layer(dotted: str) -> str | None:
    """`engine` for recon_pipeline.engine.*, ...; None outside the subpackages."""
    parts = dotted.split(".")
    if parts[0] != "recon_pipeline" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in SUBPACKAGES else None


def layer_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in SUBPACKAGES}
    for imp in imports():
        source, target = layer(imp.module), layer(imp.target)
        if source and target and source != target:
            graph[source].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle as a path (first node repeated last), or None."""
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt, [*path, nxt])):
                return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_find_cycle_sees_a_cycle_and_accepts_a_dag() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_subpackages_import_each_other_without_a_cycle() -> None:
    assert find_cycle(layer_graph()) is None, layer_graph()


def test_layers_import_only_downwards() -> None:
    """model < stores < engine < defs; local sets up servers and data beneath the
    Dagster layer; cli sits on top."""
    allowed = {"model": set(), "stores": {"model"}, "engine": {"model", "stores"},
               "local": {"model", "stores", "engine"},
               "defs": {"model", "stores", "engine", "local"},
               "cli": {"model", "stores", "engine", "local", "defs"}}
    upward = {source: sorted(targets - allowed[source])
              for source, targets in layer_graph().items() if targets - allowed[source]}
    assert upward == {}


@pytest.mark.parametrize("subpackage", ["engine", "model"])
def test_engine_and_model_never_import_dagster(subpackage: str) -> None:
    offending = [f"{i.module}:{i.line} imports {i.target}" for i in imports()
                 if layer(i.module) == subpackage and i.target.split(".")[0] == "dagster"]
    assert offending == []


def test_model_imports_nothing_of_ours() -> None:
    offending = [f"{i.module}:{i.line} imports {i.target}" for i in imports()
                 if layer(i.module) == "model" and i.target.startswith("recon_pipeline.")
                 and layer(i.target) != "model"]
    assert offending == []


def database_calls(tree: ast.Module) -> list[tuple[int, str]]:
    return [(node.lineno, node.func.attr) for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr in DATABASE_CALLS]


def test_database_calls_are_recognised() -> None:
    tree = ast.parse("db[c].bulk_write(ops)\nwith engine.begin() as conn: conn.execute(q)\n"
                     "plan.write(ops)\nreports.insert_report(engine, row)\n")
    assert database_calls(tree) == [(1, "bulk_write"), (2, "begin"), (2, "execute")]


def test_no_database_call_under_engine() -> None:
    offending = [f"{module}:{line} calls .{name}(...)" for module, _, tree in sources()
                 if layer(module) == "engine" for line, name in database_calls(tree)]
    assert offending == []

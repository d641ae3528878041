"""Scopes (model/scope.py) as query clauses: SQL conditions with bound parameters for the
source table, a MongoDB filter built from typed values for the collection. Every query of
an entity adds these (stores/source.py, stores/target.py, engine/projection.py), so rows
and documents out of scope are never read, compared or written.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from recon_pipeline.model.mapping import EntityMapping
from recon_pipeline.model.scope import SourceCondition, SourceOperator


def source_scope_clauses(table: sa.TableClause, entity: EntityMapping) -> list[Any]:
    """The WHERE clauses of `source.where` on `table` (a view holding the scope columns)."""
    return [_clause(table.c[c.column], c) for c in entity.source.where]


def _clause(column: sa.ColumnClause[Any], condition: SourceCondition) -> Any:
    if condition.operator is SourceOperator.IS_NULL:
        return column.is_(None) if condition.is_null else column.is_not(None)
    if condition.operator is SourceOperator.EQUALS:
        return column == condition.values[0]
    if condition.operator is SourceOperator.IN:
        return column.in_(list(condition.values))
    # A NULL is not in the list (SQL's NOT IN alone would drop it: `SourceCondition.admits`)
    return sa.or_(column.is_(None), column.not_in(list(condition.values)))


def scope_columns(entity: EntityMapping) -> tuple[str, ...]:
    return tuple(c.column for c in entity.source.where)


def scope_filter(entity: EntityMapping) -> dict[str, Any]:
    """The MongoDB filter of `target.where`, merged into every find, update and delete of
    the entity. Its paths never overlap the key, the mapped fields or the version guard
    (the mapping refuses that), so merging never replaces a condition."""
    return {c.path: c.values[0] if len(c.values) == 1 else {"$in": list(c.values)}
            for c in entity.target.where}


def scoped(entity: EntityMapping, query: dict[str, Any]) -> dict[str, Any]:
    """`query` narrowed to the entity's target scope."""
    return {**query, **scope_filter(entity)} if entity.target.where else query


def created_fields(entity: EntityMapping) -> dict[str, Any]:
    """What a document this project creates carries so that it is in scope next time:
    each condition's value (the first listed value of an `in`)."""
    return {c.path: c.created_value for c in entity.target.where}

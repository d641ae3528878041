"""Scopes (SPEC 5, "Scopes"): the rows of a table and the documents of a collection that
an entity covers, as structured conditions checked and typed when the mapping is loaded.

`source.where` narrows the table: `{column: value}`, `{column: {is_null: bool}}`,
`{column: {in: [...]}}`, `{column: {not_in: [...]}}`. `target.where` narrows the
collection: `{field: value}`, `{field: {in: [...]}}`. Conditions are AND-ed. Nothing here
is ever pasted into a query: stores/ builds SQL clauses with bound parameters and MongoDB
filters from these typed values. The one judgement made in Python (an outbox payload in
scope or not) follows the SQL clauses exactly (`SourceCondition.admits`).
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import types as sa_types

from recon_pipeline.model.normalize import (
    ValueCoercionError,
    ValueKind,
    coerce_source_value,
    kind_for_sql_type,
)


class SourceOperator(enum.StrEnum):
    EQUALS = "equals"  # {column: value}
    IS_NULL = "is_null"
    IN = "in"
    NOT_IN = "not_in"


SOURCE_OPERATORS = ("is_null", "in", "not_in")
TARGET_OPERATORS = ("in",)


@dataclass(frozen=True, slots=True)
class SourceCondition:
    """One condition on a source column. `values`: the typed value(s) of EQUALS, IN and
    NOT_IN (as a psycopg row holds them); `is_null` for IS_NULL."""

    column: str
    operator: SourceOperator
    values: tuple[Any, ...] = ()
    is_null: bool = False
    kind: ValueKind = ValueKind.TEXT

    def admits(self, value: Any) -> bool:
        """Whether a row whose column holds `value` (typed) is in scope: the same verdict
        as the SQL clause. A NULL is neither equal to a value nor in a list, and is
        counted as not in a `not_in` list (SQL's NOT IN would drop it: a scope like
        `{state: {not_in: [deleted]}}` must not drop every row whose state is unset)."""
        if self.operator is SourceOperator.IS_NULL:
            return (value is None) is self.is_null
        if self.operator is SourceOperator.NOT_IN:
            return value is None or value not in self.values
        return value is not None and value in self.values


@dataclass(frozen=True, slots=True)
class TargetCondition:
    """One condition on a document field (a dotted path): its value is one of `values`
    (one value for an equality). A document this project creates gets `values[0]`."""

    path: str
    values: tuple[Any, ...]

    @property
    def created_value(self) -> Any:
        return self.values[0]


SourceScope = tuple[SourceCondition, ...]
TargetScope = tuple[TargetCondition, ...]

# Column types a scope cannot compare in SQL the way the outbox compares payload values.
_UNSCOPED_KINDS = (ValueKind.JSON,)
# BSON scalars a target condition may name (a mapping or list would read as operators).
_TARGET_SCALARS = (str, bool, int, float, dt.datetime)
INT64 = range(-(2**63), 2**63)

Fail = Callable[[str], Exception]


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def parse_source_where(raw: Any, columns: Mapping[str, sa_types.TypeEngine[Any]],
                       table: str, fail: Fail) -> SourceScope:
    """`source.where` checked against the table's reflected `columns`, each value coerced
    by its column's type. `fail(message)` builds the error (it names the entity)."""
    if raw is None:
        return ()
    if not isinstance(raw, dict) or not raw:
        raise fail("source 'where' must be a non-empty mapping of column -> condition")
    conditions = []
    for column, condition in raw.items():
        if not isinstance(column, str) or column not in columns:
            raise fail(f"source 'where': column '{column}' not in table '{table}'")
        kind = kind_for_sql_type(columns[column])
        if kind in _UNSCOPED_KINDS or isinstance(columns[column], sa_types.ARRAY):
            raise fail(f"source 'where': column '{column}' is {columns[column]!s}: a scope "
                       f"column must hold plain values (text, numbers, booleans, dates, "
                       f"UUIDs)")
        conditions.append(_source_condition(column, condition, kind, fail))
    return tuple(conditions)


def _one_operator(condition: dict[Any, Any], operators: Sequence[str], where: str,
                  fail: Fail) -> tuple[str, Any]:
    """The one `{operator: operand}` of a condition, the operator one of `operators`."""
    if len(condition) != 1:
        raise fail(f"{where}: expected one operator ({', '.join(operators)}), "
                   f"got {_describe(condition)}")
    [(operator, operand)] = condition.items()
    if operator not in operators:
        raise fail(f"{where}: unknown operator {_describe(operator)} "
                   f"(expected: {', '.join(operators)})")
    return operator, operand


def _source_condition(column: str, condition: Any, kind: ValueKind,
                      fail: Fail) -> SourceCondition:
    where = f"source 'where' column '{column}'"
    if not isinstance(condition, dict):
        return SourceCondition(column, SourceOperator.EQUALS,
                               (_coerce(condition, kind, where, fail),), kind=kind)
    operator, operand = _one_operator(condition, SOURCE_OPERATORS, where, fail)
    if operator == "is_null":
        if not isinstance(operand, bool):
            raise fail(f"{where}: is_null must be true or false, not {_describe(operand)}")
        return SourceCondition(column, SourceOperator.IS_NULL, is_null=operand, kind=kind)
    if not isinstance(operand, list) or not operand:
        raise fail(f"{where}: {operator} must be a non-empty list, not {_describe(operand)}")
    values = tuple(dict.fromkeys(_coerce(v, kind, where, fail) for v in operand))
    return SourceCondition(column, SourceOperator(operator), values, kind=kind)


def _coerce(value: Any, kind: ValueKind, where: str, fail: Fail) -> Any:
    if value is None:
        raise fail(f"{where}: value null matches nothing: write {{is_null: true}}")
    if isinstance(value, dict | list):
        raise fail(f"{where}: value {_describe(value)} is not a valid {kind.value}")
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime) \
            and kind is ValueKind.DATE:
        return value
    try:
        if isinstance(value, dt.datetime) and kind is ValueKind.DATETIME:
            # YAML reads an unquoted timestamp; a naive one is UTC, as everywhere here
            return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return coerce_source_value(value, kind)
    except ValueCoercionError:
        raise fail(f"{where}: value {_describe(value)} is not a valid {kind.value}") from None


def source_scope_admits(scope: SourceScope, row: Mapping[str, Any]) -> bool:
    """Whether a typed source row (it holds every scope column) is in scope."""
    return all(condition.admits(row[condition.column]) for condition in scope)


def parse_target_where(raw: Any, check_path: Callable[[Any], str],
                       fail: Fail) -> TargetScope:
    """`target.where`: field paths (checked by `check_path`, as target paths are) and BSON
    scalar values."""
    if raw is None:
        return ()
    if not isinstance(raw, dict) or not raw:
        raise fail("target 'where' must be a non-empty mapping of field -> condition")
    conditions = []
    for path, condition in raw.items():
        path = check_path(path)
        where = f"target 'where' field '{path}'"
        if isinstance(condition, dict):
            _, operand = _one_operator(condition, TARGET_OPERATORS, where, fail)
            if not isinstance(operand, list) or not operand:
                raise fail(f"{where}: in must be a non-empty list, not {_describe(operand)}")
            values = tuple(_target_value(v, where, fail) for v in operand)
        else:
            values = (_target_value(condition, where, fail),)
        conditions.append(TargetCondition(path, tuple(dict.fromkeys(values))))
    return tuple(conditions)


def _target_value(value: Any, where: str, fail: Fail) -> Any:
    if value is None or not isinstance(value, _TARGET_SCALARS):
        raise fail(f"{where}: value {_describe(value)} must be a string, number, boolean "
                   f"or timestamp")
    if isinstance(value, int) and not isinstance(value, bool) and value not in INT64:
        raise fail(f"{where}: value {value} does not fit in 64 bits")
    if isinstance(value, dt.datetime) and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value

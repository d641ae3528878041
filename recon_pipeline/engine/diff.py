"""The diff: judge a source row against its target record, and merge two key-sorted
streams. Pure: knows nothing of PostgreSQL or MongoDB."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

from bson.decimal128 import Decimal128
from bson.objectid import ObjectId

from recon_pipeline.model.mapping import EntityMapping
from recon_pipeline.model.normalize import MISSING, order_key, values_equal


class MismatchKind(enum.StrEnum):
    MISSING_IN_MONGO = "missing_in_mongo"
    FIELD_MISMATCH = "field_mismatch"
    ORPHAN_IN_MONGO = "orphan_in_mongo"


class TargetLike(Protocol):
    @property
    def key(self) -> Any: ...
    @property
    def parent(self) -> Any: ...
    @property
    def values(self) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class Mismatch:
    entity: str
    key: Any
    kind: MismatchKind
    fields: dict[str, dict[str, Any]] = field(default_factory=dict)  # {path: {source, target}}
    parent: Any = None  # embedded: the parent document key where it was found or belongs


def json_value(value: Any) -> Any:
    """A JSON-storable rendering of a compared value, for the audit trail."""
    if value is MISSING:
        return None
    if isinstance(value, Decimal128):
        value = value.to_decimal()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, uuid.UUID | bytes | ObjectId):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_value(v) for v in value]
    if isinstance(value, float) and value != value:
        return "NaN"
    return value


def row_parent(entity: EntityMapping, row: Mapping[str, Any]) -> Any:
    embedded = entity.target.embedded
    return row[embedded.parent_key] if embedded else None


def field_differences(entity: EntityMapping, row: Mapping[str, Any],
                      record: TargetLike) -> dict[str, dict[str, Any]]:
    values = record.values
    differences: dict[str, dict[str, Any]] = {}
    for column, path, _, kind, tolerance in entity.compare_plan:
        source, target = row[column], values.get(path, MISSING)
        if not values_equal(source, target, kind, tolerance):
            differences[path] = {"source": json_value(source), "target": json_value(target)}
    return differences


def judge(entity: EntityMapping, row: Mapping[str, Any] | None,
          record: TargetLike | None) -> Mismatch | None:
    """The mismatch between a source row and its target record, or None when they agree."""
    if row is None and record is None:
        return None
    if row is None:
        assert record is not None
        return Mismatch(entity.name, record.key, MismatchKind.ORPHAN_IN_MONGO,
                        parent=record.parent)
    key = row[entity.source.key]
    if record is None:
        return Mismatch(entity.name, key, MismatchKind.MISSING_IN_MONGO,
                        parent=row_parent(entity, row))
    differences = field_differences(entity, row, record)
    if not differences:
        return None
    return Mismatch(entity.name, key, MismatchKind.FIELD_MISMATCH, differences,
                    parent=row_parent(entity, row))


# --- merge-join ---------------------------------------------------------------------------

def merge_key(entity: EntityMapping, key: Any, parent: Any) -> Any:
    return (parent, key) if entity.target.embedded else key


def merge_join(rows: Iterable[Mapping[str, Any]], records: Iterable[TargetLike],
               entity: EntityMapping) -> Iterator[tuple[Mapping[str, Any] | None,
                                                        TargetLike | None]]:
    """Pair two streams sorted by merge key; unmatched sides pair with None."""
    row_iter, record_iter = iter(rows), iter(records)

    def row_order(row: Mapping[str, Any]) -> Any:
        return order_key(merge_key(entity, row[entity.source.key], row_parent(entity, row)))

    def record_order(record: TargetLike) -> Any:
        return order_key(merge_key(entity, record.key, record.parent))

    # Each item's order key is computed once, not at every comparison.
    row, record = next(row_iter, None), next(record_iter, None)
    row_at: Any = row_order(row) if row is not None else None
    record_at: Any = record_order(record) if record is not None else None
    while row is not None or record is not None:
        if record is None or (row is not None and row_at < record_at):
            yield row, None
            row = next(row_iter, None)
            row_at = row_order(row) if row is not None else None
        elif row is None or record_at < row_at:
            yield None, record
            record = next(record_iter, None)
            record_at = record_order(record) if record is not None else None
        else:
            yield row, record
            row, record = next(row_iter, None), next(record_iter, None)
            row_at = row_order(row) if row is not None else None
            record_at = record_order(record) if record is not None else None

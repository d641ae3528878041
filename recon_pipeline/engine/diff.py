"""The diff: judge a source row against its target record, and merge two key-sorted
streams. Pure: knows nothing of PostgreSQL or MongoDB."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from itertools import chain, repeat
from typing import Any, Protocol

from bson.decimal128 import Decimal128
from bson.objectid import ObjectId

from recon_pipeline.engine.window import RunWindow
from recon_pipeline.model.mapping import EntityMapping
from recon_pipeline.model.normalize import (
    MISSING,
    PLAIN_TYPES,
    ValueKind,
    merge_order,
    quick_equal,
    values_equal,
)
from recon_pipeline.stores.source import row_columns
from recon_pipeline.stores.target import Document, TargetRecord, get_path, nodes_of, record_from


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


_QUICK = {kind: quick_equal(kind) for kind in ValueKind}


def field_differences(entity: EntityMapping, row: Mapping[str, Any],
                      record: TargetLike) -> dict[str, dict[str, Any]]:
    values = record.values
    differences: dict[str, dict[str, Any]] = {}
    for column, path, _, kind, tolerance in entity.compare_plan:
        source, target = row[column], values.get(path, MISSING)
        if not (_QUICK[kind](source, target)
                or values_equal(source, target, kind, tolerance)):
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


# --- merge keys -----------------------------------------------------------------------------

def merge_key(entity: EntityMapping, key: Any, parent: Any) -> Any:
    return (parent, key) if entity.target.embedded else key


# --- the full-scan diff ---------------------------------------------------------------------

@dataclass(slots=True)
class ScanTally:
    """What `diff_sorted` judged: source rows compared (a row changed inside the settle
    period is not)."""

    checked: int = 0


# (merge order, key, parent, node): one record's place in the merge, read off a document
_Node = tuple[Any, Any, Any, Document]
_FieldCheck = tuple[int, str, bool, ValueKind, Decimal, Callable[[object, object], bool]]


def _plain_type(kind: ValueKind) -> type | None:
    """The type whose values are their own merge order (`merge_order`) for keys of `kind`."""
    return {ValueKind.INTEGER: int, ValueKind.TEXT: str}.get(kind)


def _batch_nodes(entity: EntityMapping, batch: Sequence[Document]) -> Iterable[_Node]:
    """The records of a batch of documents in the store's order (`scan_target_documents`),
    elements of one parent in element-key order, each with its merge order. A document
    entity's nodes are made as they are read: nodes kept for a whole batch would be
    objects enough to set off the garbage collector's full passes."""
    kind, embedded = entity.key_kind, entity.target.embedded
    if embedded is None:
        field_name = entity.target.key
        keys = [document.get(field_name) for document in batch]
        orders = keys
        if {_plain_type(kind)} != set(map(type, keys)):  # as `nodes_of` reads them
            keys = [key for document in batch for key, _, _ in nodes_of(entity, document)]
            orders = [merge_order(key, kind) for key in keys]
        return zip(orders, keys, repeat(None, len(batch)), batch, strict=True)
    parent_kind, nodes = entity.parent_key_kind, []
    for document in batch:
        nodes += sorted((((merge_order(parent, parent_kind), merge_order(key, kind)),
                          key, parent, node)
                         for key, parent, node in nodes_of(entity, document)),
                        key=_first)
    return nodes


def _first(node: _Node) -> Any:
    return node[0]


def diff_sorted(entity: EntityMapping, rows: Iterable[Sequence[Sequence[Any]]],
                documents: Iterable[Sequence[Document]], window: RunWindow,
                tally: ScanTally) -> Iterator[Mismatch | TargetRecord]:
    """The diff of a sorted scan: source rows (`stream_row_values`: values in `row_columns`
    order, in merge-key order) against target documents (`scan_target_documents` order),
    both in batches. Yields the mismatches of the rows in `window` and, for each target
    record with no source row, that record (in a full scan an orphan; in a window, a
    candidate to confirm). Compares raw values first (`quick_equal`); `judge` decides
    every pair that test does not settle, so the outcome is exactly `judge`'s."""
    columns = row_columns(entity)
    at = {column: i for i, column in enumerate(columns)}
    key_at, updated_at = at[entity.source.key], at[entity.source.updated_at]
    embedded, kind = entity.target.embedded, entity.key_kind
    parent_at = at[embedded.parent_key] if embedded else -1
    parent_kind = entity.parent_key_kind if embedded else kind
    plain, parent_plain = _plain_type(kind), _plain_type(parent_kind)
    checks: list[_FieldCheck] = [(at[column], path, dotted, field_kind, tolerance,
                                  quick_equal(field_kind))
                                 for column, path, dotted, field_kind, tolerance
                                 in entity.compare_plan]
    since = None if window.full_scan else window.start
    until = window.end

    def row_order(row: Sequence[Any]) -> Any:
        key = row[key_at]
        order = key if type(key) is plain else merge_order(key, kind)
        if parent_at < 0:
            return order
        parent = row[parent_at]
        return (parent if type(parent) is parent_plain else merge_order(parent, parent_kind),
                order)

    def agree(row: Sequence[Any], node: Document) -> bool:
        for position, path, dotted, field_kind, tolerance, quick in checks:
            source = row[position]
            target = get_path(node, path) if dotted else node.get(path, MISSING)
            source_type = type(source)
            if source_type is type(target) and source_type in PLAIN_TYPES and source == target:
                continue  # `quick_equal`'s first test, spared a call for most fields
            if not (quick(source, target)
                    or values_equal(source, target, field_kind, tolerance)):
                return False
        return True

    def judged(row: Sequence[Any]) -> bool:
        updated = row[updated_at]
        if type(updated) is datetime and updated.tzinfo is not None:
            return updated < until and (since is None or since <= updated)
        return window.contains(updated)

    def record(node: _Node) -> TargetRecord:
        return record_from(entity, node[1], node[2], node[3])

    row_iter = chain.from_iterable(rows)
    node_iter = chain.from_iterable(_batch_nodes(entity, batch) for batch in documents)
    row, node = next(row_iter, None), next(node_iter, None)
    row_at: Any = row_order(row) if row is not None else None
    checked = 0
    try:
        while row is not None:
            if node is None or row_at < node[0]:
                if judged(row):
                    checked += 1
                    missing = judge(entity, dict(zip(columns, row, strict=True)), None)
                    assert missing is not None
                    yield missing
            elif node[0] < row_at:
                yield record(node)
                node = next(node_iter, None)
                continue
            else:
                if judged(row):
                    checked += 1
                    if not agree(row, node[3]):
                        mismatch = judge(entity, dict(zip(columns, row, strict=True)),
                                         record(node))
                        if mismatch is not None:
                            yield mismatch
                node = next(node_iter, None)
            row = next(row_iter, None)
            if row is not None:
                row_at = row[key_at]
                if parent_at >= 0 or type(row_at) is not plain:
                    row_at = row_order(row)
        while node is not None:
            yield record(node)
            node = next(node_iter, None)
    finally:
        tally.checked += checked

"""Turning one outbox message into what delivery needs: the entity, the typed source row
(upsert) or key (delete), and the version the write is guarded with.

Everything that can be judged without MongoDB is judged here; a message that fails any
check is malformed and raises `InvalidPayload`, whose text follows `invalid payload: `.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import bson
from bson.errors import InvalidDocument

from recon_pipeline.engine.projection import nest, parent_key, projected_fields, row_version
from recon_pipeline.model.mapping import EntityMapping, ReconConfig
from recon_pipeline.model.normalize import (
    ValueCoercionError,
    ValueKind,
    coerce_source_value,
    to_bson_value,
)
from recon_pipeline.model.scope import source_scope_admits
from recon_pipeline.stores.outbox import OutboxMessage

OPERATIONS = ("upsert", "delete")
# MongoDB refuses documents over 16 MiB; refusing earlier keeps one such message from
# failing (pymongo raises DocumentTooLarge for) the whole bulk write of its batch.
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024


class InvalidPayload(ValueError):
    """The message can never be delivered; the text says why."""


# eq=False: identity, so plans can be told apart and hashed (rows are dicts).
@dataclass(frozen=True, slots=True, eq=False)
class PlannedDelivery:
    message: OutboxMessage
    entity: EntityMapping
    source_key: Any  # the key as the source table holds it (for sync_tracking)
    key: Any  # the key in the source's terms, as target records carry it (`key_of`)
    row: dict[str, Any] | None  # upsert: typed source row; delete: None
    parent: Any | None  # embedded upsert: the parent document's key
    version: datetime | None  # upsert: the row's updated_at; delete: the message's created_at

    @property
    def is_delete(self) -> bool:
        return self.row is None


def plan_delivery(config: ReconConfig, message: OutboxMessage) -> PlannedDelivery:
    entity = _entity(config, message)
    if message.operation not in OPERATIONS:
        raise InvalidPayload(f"operation {message.operation!r} is not upsert or delete")
    payload = message.payload
    if not isinstance(payload, dict):
        raise InvalidPayload(f"payload is {_json_type(payload)}, not an object")
    _check_field_names(payload)
    if message.operation == "delete":
        return _plan_delete(entity, message, payload)
    return _plan_upsert(entity, message, payload)


def _entity(config: ReconConfig, message: OutboxMessage) -> EntityMapping:
    for entity in config.entities:
        if entity.name == message.aggregate_type:
            return entity
    raise InvalidPayload(f"unknown aggregate_type {message.aggregate_type!r} "
                         f"(mapped: {', '.join(config.entity_names)})")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    return "a number"


def _check_field_names(payload: dict[str, Any]) -> None:
    """Every object key, at any depth (JSON columns are written as they are)."""
    nested: list[Any] = [payload]
    while nested:
        node = nested.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for name, item in items:
            if isinstance(item, dict | list):
                nested.append(item)
            if not isinstance(name, str):
                continue
            if name.startswith("$"):
                raise InvalidPayload(f"field name {name!r} starts with '$'")
            if "\x00" in name:
                raise InvalidPayload(f"field name {name!r} contains a NUL character")


INT64 = range(-(2**63), 2**63)


def _bson_bound(value: Any) -> int:
    """An upper bound of `value`'s BSON size (with its field name, up to 64 more bytes),
    cheap enough to spare the exact encoding of every ordinary row. Refuses integers that
    BSON cannot hold (pymongo would fail the whole bulk write on one)."""
    if isinstance(value, str):
        return 64 + 4 * len(value)  # UTF-8 needs at most 4 bytes a character
    if isinstance(value, dict):
        return 64 + sum(4 * len(str(k)) + _bson_bound(v) for k, v in value.items())
    if isinstance(value, list):
        return 64 + sum(32 + _bson_bound(v) for v in value)
    if isinstance(value, int) and not isinstance(value, bool) and value not in INT64:
        raise InvalidPayload(f"integer {value} does not fit in 64 bits")
    return 64  # numbers, dates, booleans, null: at most 16 bytes


def _coerce(column: str, value: Any, kind: ValueKind) -> Any:
    try:
        return coerce_source_value(value, kind)
    except ValueCoercionError as error:
        raise InvalidPayload(f"column '{column}': {error}") from None


def _key_from_id(entity: EntityMapping, message: OutboxMessage) -> Any:
    try:
        return coerce_source_value(message.aggregate_id, entity.key_kind)
    except ValueCoercionError:
        raise InvalidPayload(f"aggregate_id {message.aggregate_id!r} is not a valid "
                             f"{entity.key_kind.value} key") from None


def _check_key(entity: EntityMapping, message: OutboxMessage, payload: dict[str, Any]) -> Any:
    """The source key: the payload's key column, which must name the same record as
    `aggregate_id` (a message that disagrees with itself cannot be trusted either way)."""
    column = entity.source.key
    key = _key_from_id(entity, message)
    if column not in payload:
        return key
    stated = _coerce(column, payload[column], entity.key_kind)
    if stated is None:
        raise InvalidPayload(f"key column '{column}' is null")
    if stated != key:
        raise InvalidPayload(f"key column '{column}' is {payload[column]!r} but aggregate_id "
                             f"is {message.aggregate_id!r}")
    return key


def _column_kinds(entity: EntityMapping) -> dict[str, ValueKind]:
    kinds = {entity.source.key: entity.key_kind, entity.source.updated_at: ValueKind.DATETIME}
    if entity.target.embedded:
        kinds[entity.target.embedded.parent_key] = entity.parent_key_kind
    kinds.update({f.column: f.kind for f in entity.fields})
    # `source.where` columns: a payload must say whether its row is in scope
    kinds.update({c.column: c.kind for c in entity.source.where if c.column not in kinds})
    return kinds


def _plan_upsert(entity: EntityMapping, message: OutboxMessage,
                 payload: dict[str, Any]) -> PlannedDelivery:
    if entity.source.key not in payload:
        raise InvalidPayload(f"key column '{entity.source.key}' missing")
    key = _check_key(entity, message, payload)
    row: dict[str, Any] = {}
    for column, kind in _column_kinds(entity).items():
        if column not in payload:
            raise InvalidPayload(f"column '{column}' missing")
        row[column] = _coerce(column, payload[column], kind)
    parent = None
    try:
        if entity.target.embedded:
            parent = parent_key(entity, row)
            if parent is None:
                raise InvalidPayload(
                    f"parent key column '{entity.target.embedded.parent_key}' is null")
        version = row_version(entity, row)
        if not source_scope_admits(entity.source.where, row):
            # The row left the scope (soft-deleted, another tenant...): its document must
            # go, guarded by the row's version; nothing is created.
            return PlannedDelivery(message, entity, key, key, None, None, version)
        # Projecting is the write's job (and its errors are found there too); here only
        # when the row may be too large, which most never are.
        if sum(4 * len(path) + _bson_bound(value) for path, value in row.items()) \
                > MAX_DOCUMENT_BYTES:
            _check_size(projected_fields(entity, row))
    except ValueCoercionError as error:
        raise InvalidPayload(str(error)) from None
    return PlannedDelivery(message, entity, key, key, row, parent, version)


def _check_size(fields: dict[str, Any]) -> None:
    try:
        size = len(bson.encode(nest(fields)))
    except (InvalidDocument, OverflowError) as error:  # e.g. an integer beyond 64 bits
        raise InvalidPayload(f"not storable in MongoDB: {error}") from None
    if size > MAX_DOCUMENT_BYTES:
        raise InvalidPayload(f"document of {size} bytes exceeds MongoDB's "
                             f"{MAX_DOCUMENT_BYTES}-byte limit")


def _plan_delete(entity: EntityMapping, message: OutboxMessage,
                 payload: dict[str, Any]) -> PlannedDelivery:
    key = _check_key(entity, message, payload)
    _bson_bound(key)
    # A delete carries no row version; the message's own time stands in for it, so a
    # delete never removes what a later write put there.
    version = to_bson_value(message.created_at, ValueKind.DATETIME)
    assert isinstance(version, datetime)
    return PlannedDelivery(message, entity, key, key, None, None, version)

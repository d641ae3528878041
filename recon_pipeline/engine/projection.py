"""The one projection of a source row to a guarded MongoDB write, used by repair, outbox
delivery and the demo seeder alike.

Every write carries a version guard: the source `updated_at` is stored beside the document
or array element as `VERSION_FIELD`, and a write only applies where the stored version is
not newer than the row's. Where `VERSION_FIELD` is missing or null (a document or element
the application wrote itself), the mapped `updated_at` field stands in for it.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pymongo import DeleteOne, UpdateOne

from recon_pipeline.model.mapping import EntityMapping
from recon_pipeline.model.normalize import (
    ValueCoercionError,
    ValueKind,
    key_forms,
    to_bson_value,
)
from recon_pipeline.stores.scope import created_fields, scoped
from recon_pipeline.stores.target import VERSION_FIELD, KeyForms, TargetRecord, TargetSnapshot

Row = Mapping[str, Any]
WriteOp = UpdateOne | DeleteOne


class Presence(enum.Enum):
    """What the target holds for a key, as last read."""

    ABSENT = "absent"  # no document; embedded: no parent document
    PARENT_ONLY = "parent_only"  # embedded: parent exists, element does not
    PRESENT = "present"


def presence_in(snapshot: TargetSnapshot, entity: EntityMapping, key: Any,
                parent: Any) -> Presence:
    """What a fresh read of the target holds for `key` (under `parent` when embedded)."""
    if entity.target.embedded is None:
        return Presence.PRESENT if snapshot.record_at(key) else Presence.ABSENT
    if snapshot.record_at(key, parent) is not None:
        return Presence.PRESENT
    return Presence.PARENT_ONLY if parent in snapshot.parents else Presence.ABSENT


def newer_than(record: TargetRecord | None, version: datetime | None) -> bool:
    """Whether the target records a newer source version than `version`: the version
    guard would refuse the write (the same rule the guarded filter applies server-side)."""
    if record is None or record.version is None:
        return False
    stored = record.version
    if stored.tzinfo is None:  # a client without tz_aware reads naive UTC
        stored = stored.replace(tzinfo=UTC)
    return version is None or stored > version


def parent_key(entity: EntityMapping, row: Row) -> Any:
    """The row's parent document key, as the source holds it (embedded entities)."""
    assert entity.target.embedded is not None
    return row[entity.target.embedded.parent_key]


STRING_KEYS = KeyForms()  # what an empty collection gets


def key_match(key: Any, kind: ValueKind) -> Any:
    """A query condition matching a source key in any of its stored forms."""
    forms = key_forms(key, kind)
    return forms[0] if len(forms) == 1 else {"$in": forms}


def stored_key(key: Any, kind: ValueKind, binary: bool) -> Any:
    """A source key as a document this project creates holds it: in the form the
    collection already uses (a UUID as BSON UUID or canonical string)."""
    if binary and isinstance(key, uuid.UUID):
        return key
    return to_bson_value(key, kind)


def _key_condition(entity: EntityMapping, row: Row, forms: KeyForms
                   ) -> tuple[Any, Any, Any]:
    """(match, stored form, field) of the key a write addresses: the document key, or
    the parent document key when embedded."""
    if entity.target.embedded is None:
        key, kind, binary = row[entity.source.key], entity.key_kind, forms.key_binary
    else:
        key, kind, binary = parent_key(entity, row), entity.parent_key_kind, forms.parent_binary
    return key_match(key, kind), stored_key(key, kind, binary), entity.target.key


def _on_insert(field: str, match: Any, stored: Any) -> dict[str, Any]:
    """An upsert sets a key it matched with `$in` itself (equality sets it anyway)."""
    return {"$setOnInsert": {field: stored}} if isinstance(match, dict) else {}


def row_version(entity: EntityMapping, row: Row) -> datetime | None:
    value = to_bson_value(row[entity.source.updated_at], ValueKind.DATETIME)
    assert value is None or isinstance(value, datetime)
    return value


def projected_fields(entity: EntityMapping, row: Row) -> dict[str, Any]:
    """Target path -> BSON value for every written field (ignored fields are left alone)."""
    return {f.target: to_bson_value(row[f.column], f.kind)
            for f in entity.fields if not f.ignore}


def version_guard(version: datetime | None, fallback: str | None,
                  recorded: bool | None = None) -> dict[str, Any]:
    """Match a target whose version is not newer than `version`. Its version is its
    `VERSION_FIELD`, or where that is missing or null (the application wrote it) its
    `fallback` field, the mapped `updated_at` (None: the entity maps none).

    "This field, else that one" needs an `$or`/`$nor` at the top of the filter, and any
    top-level operator makes secantusdb scan the whole collection for every write (1.8
    writes/s instead of ~500): its planner then uses no index at all, not even `_id`. So
    every clause here is on one field, and the caller says what its read of the target
    found (`recorded`): True, a `VERSION_FIELD`; False, none (the fallback decides). None
    (no read, or no target): both fields must not be newer. That is exact for a missing
    target, for ours and for the application's; it refuses the rare target whose recorded
    version is older but whose `updated_at` is newer: the caller re-reads what a guard
    refused and judges it (`newer_than`)."""
    if fallback is None:
        return {VERSION_FIELD: None if version is None else {"$not": {"$gt": version}}}
    if version is None:
        # Nothing is older than no version: only a target without any version matches.
        return {VERSION_FIELD: None, fallback: {"$not": {"$type": "date"}}}
    not_newer = {"$not": {"$gt": version}}
    if recorded is None:
        return {VERSION_FIELD: not_newer, fallback: not_newer}
    if recorded:  # (`$lte` says the same, ~10% slower on secantusdb)
        return {VERSION_FIELD: {**not_newer, "$type": "date"}}
    return {VERSION_FIELD: None, fallback: not_newer}


def exact_version(version: datetime | None, version_field: str) -> dict[str, Any]:
    """Match the target only while its version is still `version`, read from
    `version_field` (a TargetRecord's)."""
    if version_field == VERSION_FIELD:
        return {VERSION_FIELD: version}
    stand_in = version if version is not None else {"$not": {"$type": "date"}}
    return {VERSION_FIELD: None, version_field: stand_in}


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{'contact.email': x} -> {'contact': {'email': x}} (for a pushed array element)."""
    nested: dict[str, Any] = {}
    for path, value in flat.items():
        *parents, leaf = path.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def upsert_ops(entity: EntityMapping, row: Row, presence: Presence,
               forms: KeyForms = STRING_KEYS, seen: TargetRecord | None = None
               ) -> list[WriteOp]:
    """The guarded write that makes the target hold this row's mapped fields. Keys are
    matched in any stored form and created in the collection's (`forms`); `seen`: the
    target as read before writing, if it was (see `version_guard`)."""
    version = row_version(entity, row)
    recorded = None if seen is None else seen.version_field == VERSION_FIELD
    fields = projected_fields(entity, row)
    embedded = entity.target.embedded
    match, stored, key_field = _key_condition(entity, row, forms)
    if embedded is None:
        # Scoped: a document with this key outside `target.where` never matches, so the
        # upsert collides with it (duplicate key) and leaves it untouched; one it creates
        # carries the scope's fields, so it is in scope next time.
        on_insert = {**_on_insert(key_field, match, stored).get("$setOnInsert", {}),
                     **created_fields(entity)}
        return [UpdateOne(
            scoped(entity, {key_field: match,
                            **version_guard(version, entity.version_fallback, recorded)}),
            {"$set": {**fields, VERSION_FIELD: version},
             **({"$setOnInsert": on_insert} if on_insert else {})},
            # A newer document already there makes this a duplicate-key no-op (the key is
            # `_id` or under a unique index: a run checks that before it writes).
            upsert=True,
        )]
    key = row[entity.source.key]
    element_match = key_match(key, entity.key_kind)
    array, element_key = embedded.array, embedded.element_key
    if presence is Presence.PRESENT:
        sets = {f"{array}.$[e].{path}": value for path, value in fields.items()}
        return [UpdateOne(
            {key_field: match, array: {"$elemMatch": {
                element_key: element_match,
                **version_guard(version, entity.version_fallback, recorded)}}},
            {"$set": {**sets, f"{array}.$[e].{VERSION_FIELD}": version}},
            array_filters=[{f"e.{element_key}": element_match}],
        )]
    element = {**nest({element_key: stored_key(key, entity.key_kind, forms.key_binary)}),
               **nest(fields), VERSION_FIELD: version}
    absent = ({"$nin": element_match["$in"]} if isinstance(element_match, dict)
              else {"$ne": element_match})
    # Push only while the element is still missing; create the parent only when it is.
    return [UpdateOne(
        {key_field: match, f"{array}.{element_key}": absent},
        {"$push": {array: element}, **_on_insert(key_field, match, stored)},
        upsert=presence is Presence.ABSENT,
    )]


def out_of_scope_error(entity: EntityMapping) -> str:
    """Why a scoped upsert by key left no document in scope: the key is held by a document
    outside `target.where` (which it never touches), or one appeared meanwhile."""
    return (f"not applied: a document with this key in collection "
            f"'{entity.target.collection}' is outside the target scope (target 'where'), or "
            f"appeared during the write; it is left untouched")


def version_bump_ops(entity: EntityMapping, rows: list[dict[str, Any]]) -> list[WriteOp]:
    """Give the target the version that sync marks gave these rows (a trigger bumped their
    `updated_at`): each row as it is now, guarded like any write, updated in place (an
    element is never pushed here). A row MongoDB cannot hold exactly is left out: the next
    run reports and repairs it, with the error."""
    ops: list[WriteOp] = []
    for row in rows:
        try:
            ops += upsert_ops(entity, row, Presence.PRESENT)
        except ValueCoercionError:
            continue
    return ops


def delete_ops(entity: EntityMapping, key: Any, parent: Any, version: datetime | None,
               *, exact: bool, seen: TargetRecord | None = None) -> list[WriteOp]:
    """Remove a document or element. `exact`: only if its version is still `version` as
    `seen` read it (an orphan); otherwise only if it is not newer than `version` (a delete
    message; `seen`: the target as read, if it was). `key` and `parent` are in the source
    key's terms (any stored form matches)."""
    if exact:
        assert seen is not None
        guard = exact_version(version, seen.version_field)
    else:
        recorded = None if seen is None else seen.version_field == VERSION_FIELD
        guard = version_guard(version, entity.version_fallback, recorded)
    embedded = entity.target.embedded
    if embedded is None:
        return [DeleteOne(scoped(entity, {entity.target.key: key_match(key, entity.key_kind),
                                          **guard}))]
    return [UpdateOne(
        {entity.target.key: key_match(parent, entity.parent_key_kind)},
        {"$pull": {embedded.array: {embedded.element_key: key_match(key, entity.key_kind),
                                    **guard}}},
    )]

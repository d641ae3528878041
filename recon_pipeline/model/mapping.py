"""Load and validate the mapping file (SPEC 5) into frozen values.

Two steps: `read_mapping_file` and `parse_settings` check the file's own shape; `bind_mapping`
checks it against the live schema (tables, columns) and infers each field's value kind.
Every error names the entity and the bad name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import types as sa_types

from recon_pipeline.model.normalize import ValueKind, kind_for_sql_type, kind_from_name
from recon_pipeline.model.scope import (
    SourceScope,
    TargetScope,
    parse_source_where,
    parse_target_where,
)
from recon_pipeline.model.settings import (  # noqa: F401 - re-exported: part of the mapping
    CleanupSettings,
    OutboxSettings,
    Settings,
    SettingsError,
    parse_settings,
)

# Key columns: text/varchar (and char), smallint/integer/bigint, uuid. Numeric, float,
# timestamps, booleans, bytea, JSON: not keys (their orders or forms differ across sides).
KEY_TYPES = (sa_types.String, sa_types.Integer, sa_types.Uuid)
NOT_KEY_TYPES = (sa_types.JSON, sa_types.Enum)


# Column types of the mapped tables, as `stores.postgres.reflect_catalog` reads them.
TableCatalog = dict[str, dict[str, sa_types.TypeEngine[object]]]


class MappingError(ValueError):
    """The mapping file is invalid; the message names the entity and the bad name."""


@dataclass(frozen=True, slots=True)
class FieldMapping:
    column: str
    target: str  # dotted path inside the document or array element
    kind: ValueKind
    tolerance: Decimal = Decimal(0)
    ignore: bool = False


@dataclass(frozen=True, slots=True)
class SyncTracking:
    status: str
    synced_at: str
    error: str


@dataclass(frozen=True, slots=True)
class SourceSpec:
    table: str
    key: str
    updated_at: str
    sync_tracking: SyncTracking | None = None
    # False for `timestamp without time zone`: its values are UTC (SPEC 6, "Window").
    updated_at_has_time_zone: bool = True
    where: SourceScope = ()  # the rows the entity covers (model/scope.py)


@dataclass(frozen=True, slots=True)
class EmbeddedSpec:
    array: str
    parent_key: str  # source column holding the parent document's key
    element_key: str  # element field holding the source key


@dataclass(frozen=True, slots=True)
class TargetSpec:
    collection: str
    key: str = "_id"
    embedded: EmbeddedSpec | None = None
    where: TargetScope = ()  # the documents the entity covers (model/scope.py)


@dataclass(frozen=True, slots=True)
class EntityMapping:
    name: str
    source: SourceSpec
    target: TargetSpec
    fields: tuple[FieldMapping, ...]
    key_kind: ValueKind = ValueKind.TEXT
    parent_key_kind: ValueKind = ValueKind.TEXT
    # Worked out once: the diff reads it for every row (column, path, dotted, kind, tolerance).
    compare_plan: tuple[tuple[str, str, bool, ValueKind, Decimal], ...] = field(
        init=False, repr=False, compare=False, hash=False)
    # The target path that stands in for `_recon_version` where a document or element
    # lacks it (the application wrote it itself): the mapped, compared `updated_at`.
    version_fallback: str | None = field(
        init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "compare_plan", tuple(
            (f.column, f.target, "." in f.target, f.kind, f.tolerance)
            for f in self.fields if not f.ignore))
        updated = self.updated_at_field
        object.__setattr__(self, "version_fallback", updated.target if updated is not None
                           and not updated.ignore and updated.kind is ValueKind.DATETIME
                           else None)

    @property
    def compared_fields(self) -> tuple[FieldMapping, ...]:
        return tuple(f for f in self.fields if not f.ignore)

    @property
    def updated_at_field(self) -> FieldMapping | None:
        return next((f for f in self.fields if f.column == self.source.updated_at), None)

    @property
    def source_columns(self) -> tuple[str, ...]:
        """Every column extraction reads: key, parent key, updated_at, mapped columns."""
        columns = [self.source.key]
        if self.target.embedded:
            columns.append(self.target.embedded.parent_key)
        columns.append(self.source.updated_at)
        columns += [f.column for f in self.fields]
        return tuple(dict.fromkeys(columns))


@dataclass(frozen=True, slots=True)
class ReconConfig:
    settings: Settings
    entities: tuple[EntityMapping, ...]

    def entity(self, name: str) -> EntityMapping:
        for entity in self.entities:
            if entity.name == name:
                return entity
        raise MappingError(f"unknown entity '{name}' (mapped: {', '.join(self.entity_names)})")

    @property
    def entity_names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.entities)


# --- step 1: the file's own shape ---------------------------------------------------------


def read_mapping_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as error:
        raise MappingError(f"mapping file {path}: cannot read: {error.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise MappingError(f"mapping file {path}: not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise MappingError(f"mapping file {path}: expected a mapping with 'entities'")
    return raw


# --- step 2: bind to the live schema --------------------------------------------------------


def _unquoted(value: Any) -> str:
    """A hint for a name YAML 1.1 read as a boolean: `no`, `yes`, `on`, `off` unquoted."""
    if isinstance(value, bool):
        return (f" (YAML read an unquoted name as the boolean {str(value).lower()}: quote it,"
                " e.g. 'no')")
    return ""


# The keys each part of an entity may have.
ENTITY_KEYS = ("source", "target", "fields")
SOURCE_KEYS = ("table", "key", "updated_at", "sync_tracking", "where")
SYNC_TRACKING_KEYS = ("status", "synced_at", "error")
TARGET_KEYS = ("collection", "key", "embedded", "where")
EMBEDDED_KEYS = ("array", "parent_key", "element_key")
FIELD_KEYS = ("field", "type", "tolerance", "ignore")


@dataclass(slots=True)
class _EntityBinder:
    name: str
    catalog: TableCatalog

    def fail(self, message: str) -> MappingError:
        return MappingError(f"mapping entity '{self.name}': {message}")

    def known_keys(self, raw: Mapping[str, Any], where: str, allowed: tuple[str, ...]) -> None:
        """A misspelt key is an error, never ignored: an option that silently does not
        apply (a scope, a tracking column) would make the run do something else."""
        unknown = [k for k in raw if k not in allowed]
        if unknown:
            raise self.fail(f"unknown key '{unknown[0]}' in {where}{_unquoted(unknown[0])} "
                            f"(expected: {', '.join(allowed)})")

    def require(self, raw: Mapping[str, Any], key: str, where: str) -> Any:
        value = raw.get(key)
        if value is None or value == "":
            raise self.fail(f"{where} '{key}' is missing")
        return value

    def column(self, table: str, column: Any) -> str:
        if not isinstance(column, str) or column not in self.catalog[table]:
            raise self.fail(f"column '{column}' not in table '{table}'{_unquoted(column)}")
        return column

    def target_path(self, path: Any, column: str) -> str:
        if not isinstance(path, str) or not path:
            raise self.fail(f"field '{column}': target must be a field path{_unquoted(path)}")
        for part in path.split("."):
            if not part or part.startswith("$") or "\x00" in part:
                raise self.fail(f"field '{column}': invalid target path '{path}'")
        return path

    def scope_path(self, path: Any) -> str:
        if not isinstance(path, str) or not path or any(
                not part or part.startswith("$") or "\x00" in part for part in path.split(".")):
            raise self.fail(f"target 'where': invalid field path {path!r}{_unquoted(path)}")
        return path

    def source(self, raw: Mapping[str, Any]) -> SourceSpec:
        self.known_keys(raw, "source", SOURCE_KEYS)
        table = self.require(raw, "table", "source")
        if table not in self.catalog:
            raise self.fail(f"table '{table}' does not exist")
        tracking = raw.get("sync_tracking")
        sync = None
        if tracking is not None:
            if not isinstance(tracking, dict):
                raise self.fail("source 'sync_tracking' must be a mapping")
            self.known_keys(tracking, "sync_tracking", SYNC_TRACKING_KEYS)
            sync = SyncTracking(*(self.column(table, self.require(tracking, k, "sync_tracking"))
                                  for k in ("status", "synced_at", "error")))
        key = self.require(raw, "key", "source")
        if isinstance(key, list):
            raise self.fail(f"source key {key} must be one column (composite keys are not "
                            f"supported: map a unique column)")
        return SourceSpec(
            table=table,
            key=self.column(table, key),
            updated_at=self.column(table, self.require(raw, "updated_at", "source")),
            sync_tracking=sync,
            updated_at_has_time_zone=self.has_time_zone(table, raw["updated_at"]),
            where=parse_source_where(raw.get("where"), self.catalog[table], table, self.fail),
        )

    def has_time_zone(self, table: str, column: str) -> bool:
        """Whether the timestamp column `updated_at` names is `timestamptz`; any other type
        cannot order versions."""
        sql_type = self.catalog[table][column]
        if not isinstance(sql_type, sa_types.DateTime):
            raise self.fail(f"source 'updated_at' column '{column}' is {_type_name(sql_type)}, "
                            "not a timestamp (with or without time zone)")
        return bool(sql_type.timezone)

    def target(self, raw: Mapping[str, Any], table: str) -> TargetSpec:
        self.known_keys(raw, "target", TARGET_KEYS)
        embedded_raw = raw.get("embedded")
        embedded = None
        if embedded_raw is not None:
            if not isinstance(embedded_raw, dict):
                raise self.fail("target 'embedded' must be a mapping")
            self.known_keys(embedded_raw, "embedded", EMBEDDED_KEYS)
            embedded = EmbeddedSpec(
                array=self.target_path(self.require(embedded_raw, "array", "embedded"), "array"),
                parent_key=self.column(table, self.require(embedded_raw, "parent_key", "embedded")),
                element_key=self.target_path(
                    self.require(embedded_raw, "element_key", "embedded"), "element_key"),
            )
        key = raw.get("key", "_id")
        if not isinstance(key, str) or not key or "." in key or key.startswith("$") \
                or "\x00" in key:
            raise self.fail(f"target key {key!r} must be '_id' or a top-level field name")
        if embedded is not None and raw.get("where") is not None:
            # Which documents hold an entity's elements is the parent entity's business:
            # scope the parent documents' own entity, and the elements with source 'where'.
            raise self.fail("target 'where' is not supported on an embedded entity (its "
                            "documents are another entity's): narrow the element rows with "
                            "source 'where'")
        return TargetSpec(
            collection=str(self.require(raw, "collection", "target")),
            key=key,
            embedded=embedded,
            where=parse_target_where(raw.get("where"), self.scope_path, self.fail),
        )

    def key_kind(self, table: str, column: str, role: str) -> ValueKind:
        """The kind of a key column; only types whose order and BSON form are the same on
        both sides can be keys."""
        sql_type = self.catalog[table][column]
        if isinstance(sql_type, KEY_TYPES) and not isinstance(sql_type, NOT_KEY_TYPES):
            return kind_for_sql_type(sql_type)
        raise self.fail(f"{role} column '{column}' has type {sql_type}; a key must be "
                        f"text/varchar, smallint, integer, bigint or uuid")

    def field(self, table: str, column: Any, spec: Any) -> FieldMapping:
        column = self.column(table, column)
        if isinstance(spec, str):
            spec = {"field": spec}
        if not isinstance(spec, dict):
            raise self.fail(f"field '{column}': expected a target path or a mapping")
        self.known_keys(spec, f"field '{column}'", FIELD_KEYS)
        target = self.target_path(spec.get("field"), column)
        try:
            kind = (kind_from_name(spec["type"]) if "type" in spec
                    else kind_for_sql_type(self.catalog[table][column]))
        except ValueError as error:
            raise self.fail(f"field '{column}': {error}") from None
        try:
            tolerance = Decimal(str(spec.get("tolerance", 0)))
        except InvalidOperation:
            raise self.fail(f"field '{column}': tolerance must be a number") from None
        if not tolerance.is_finite() or tolerance < 0:
            raise self.fail(f"field '{column}': tolerance must be a non-negative number")
        return FieldMapping(column, target, kind, tolerance, bool(spec.get("ignore", False)))

    def entity(self, raw: Any) -> EntityMapping:
        if not isinstance(raw, dict):
            raise self.fail("expected a mapping with source, target and fields")
        self.known_keys(raw, "the entity", ENTITY_KEYS)
        source_raw, target_raw, fields_raw = (raw.get(k) for k in ("source", "target", "fields"))
        for key, value in (("source", source_raw), ("target", target_raw), ("fields", fields_raw)):
            if not isinstance(value, dict) or not value:
                raise self.fail(f"'{key}' must be a non-empty mapping")
        assert isinstance(source_raw, dict) and isinstance(target_raw, dict)
        assert isinstance(fields_raw, dict)
        source = self.source(source_raw)
        target = self.target(target_raw, source.table)
        fields = tuple(self.field(source.table, c, s) for c, s in fields_raw.items())
        self.check_paths(fields, target)
        return EntityMapping(
            name=self.name, source=source, target=target, fields=fields,
            key_kind=self.key_kind(source.table, source.key, "key"),
            parent_key_kind=(
                self.key_kind(source.table, target.embedded.parent_key, "parent key")
                if target.embedded else ValueKind.TEXT),
        )

    def check_paths(self, fields: tuple[FieldMapping, ...], target: TargetSpec) -> None:
        # `_id` is immutable: beside a natural key it is the application's, never ours
        reserved = ({target.key, "_id"} if target.embedded is None
                    else {target.embedded.element_key})
        seen: set[str] = set()
        for f in fields:
            if f.target in seen:
                raise self.fail(f"field '{f.column}': duplicate target path '{f.target}'")
            if f.target in reserved:
                raise self.fail(f"field '{f.column}': target path '{f.target}' is the key")
            seen.add(f.target)
        self.check_scope_paths(seen, target)
        for a in seen:
            for b in seen:
                if b.startswith(a + "."):
                    raise self.fail(f"target path '{a}' overlaps '{b}'")


    def check_scope_paths(self, mapped: set[str], target: TargetSpec) -> None:
        """A scope field is never written from the source (a mapped field would make a
        repair move the document out of scope), nor the key or the version guard."""
        for condition in target.where:
            path = condition.path
            taken = {target.key, "_id", "_recon_version"} | mapped
            clash = next((t for t in sorted(taken) if path == t or path.startswith(t + ".")
                          or t.startswith(path + ".")), None)
            if clash is not None:
                raise self.fail(f"target 'where' field '{path}' overlaps "
                                f"{'the key' if clash in (target.key, '_id') else repr(clash)}"
                                f": a scope field must be one the mapping never writes")


def _type_name(sql_type: sa_types.TypeEngine[Any]) -> str:
    try:
        return str(sql_type)
    except Exception:  # a type the generic compiler cannot render
        return type(sql_type).__name__


def bind_mapping(raw: Mapping[str, Any], catalog: TableCatalog) -> ReconConfig:
    try:
        settings = parse_settings(raw)
    except SettingsError as error:
        raise MappingError(str(error)) from None
    entities_raw = raw.get("entities")
    if not isinstance(entities_raw, dict) or not entities_raw:
        raise MappingError("mapping: 'entities' must be a non-empty mapping")
    entities = tuple(_EntityBinder(str(name), catalog).entity(spec)
                     for name, spec in entities_raw.items())
    return ReconConfig(settings=settings, entities=entities)


def mapped_tables(raw: Mapping[str, Any]) -> set[str]:
    """Tables the mapping names, so the catalog can be reflected before binding."""
    entities = raw.get("entities")
    if not isinstance(entities, dict):
        return set()
    return {str(spec["source"]["table"]) for spec in entities.values()
            if isinstance(spec, dict) and isinstance(spec.get("source"), dict)
            and "table" in spec["source"]}


def collection_warnings(config: ReconConfig, existing: set[str]) -> list[str]:
    """A collection that does not exist yet is only a warning: nothing may be written yet."""
    return [f"mapping entity '{e.name}': collection '{e.target.collection}' does not exist yet"
            for e in config.entities if e.target.collection not in existing]

"""Reading the read model as the mapping sees it: documents or array elements, reduced to
their key, mapped field values and recorded source version.

Access paths (see EMBEDDED_MONGODB.md): one sorted cursor over a collection for dense
work, `$in` batches of at most `IN_BATCH` keys for sparse work. Both are index-served on
a real MongoDB; on secantusdb they are its two fast paths.
"""

from __future__ import annotations

import heapq
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import islice
from operator import itemgetter
from typing import Any

from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError, OperationFailure

from recon_pipeline.model.mapping import EntityMapping
from recon_pipeline.model.normalize import MISSING, ValueKind, key_forms, key_of, order_key
from recon_pipeline.stores.scope import scope_filter, scoped

VERSION_FIELD = "_recon_version"
IN_BATCH = 50  # secantusdb: 100k docs, $in of 25/50/100 ids read 10.6k/9.8k/6.3k docs/s

Document = dict[str, Any]


@dataclass(frozen=True, slots=True)
class TargetRecord:
    key: Any
    parent: Any | None  # embedded: the parent document's key
    values: dict[str, Any]  # mapped target path -> value, MISSING when absent
    version: datetime | None
    # Where `version` was read: VERSION_FIELD, or (when that is missing or null: the
    # application wrote the document) the mapped `updated_at` path standing in for it.
    version_field: str = VERSION_FIELD


@dataclass(frozen=True, slots=True)
class TargetSnapshot:
    records: dict[Any, TargetRecord]
    parents: frozenset[Any]  # embedded: parent documents that exist
    # embedded: (parent, key) -> record; one key can sit under several parents
    elements: dict[tuple[Any, Any], TargetRecord] = field(default_factory=dict)

    def record_at(self, key: Any, parent: Any = None) -> TargetRecord | None:
        """The record of `key`; for embedded entities, the one under `parent`."""
        if parent is None:
            return self.records.get(key)
        return self.elements.get((parent, key))


def get_path(document: Document, path: str) -> Any:
    node: Any = document
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return MISSING
        node = node[part]
    return node


def record_from(entity: EntityMapping, key: Any, parent: Any, node: Document) -> TargetRecord:
    """The record of one node (a document, or an element of its mapped array)."""
    values = {path: get_path(node, path) if dotted else node.get(path, MISSING)
              for _, path, dotted, _, _ in entity.compare_plan}
    version = node.get(VERSION_FIELD)
    fallback = entity.version_fallback
    if version is None and fallback is not None:
        # Only a date orders versions (the guarded filters' `$gt` compares dates only).
        stand_in = values.get(fallback)
        return TargetRecord(key, parent, values,
                            stand_in if isinstance(stand_in, datetime) else None, fallback)
    return TargetRecord(key=key, parent=parent, values=values, version=version)


def projection_of(entity: EntityMapping) -> dict[str, int]:
    """Read only the key, the mapped fields (and the version guard)."""
    embedded = entity.target.embedded
    if embedded is None:
        return {entity.target.key: 1, **{f.target: 1 for f in entity.compared_fields},
                VERSION_FIELD: 1}
    return {entity.target.key: 1, embedded.array: 1}


def nodes_of(entity: EntityMapping, document: Document) -> list[tuple[Any, Any, Document]]:
    """(key, parent, node) of each record a document holds: the document itself, or each
    element of the mapped array (in array order). Keys are in the source key's terms
    (`key_of`): a UUID whatever its stored form."""
    embedded = entity.target.embedded
    document_key = document.get(entity.target.key)
    if embedded is None:
        return [(key_of(document_key, entity.key_kind), None, document)]
    elements = get_path(document, embedded.array)
    if not isinstance(elements, list):
        return []
    parent = key_of(document_key, entity.parent_key_kind)
    return [(key_of(get_path(e, embedded.element_key), entity.key_kind), parent, e)
            for e in elements if isinstance(e, dict)]


def records_of(entity: EntityMapping, document: Document) -> list[TargetRecord]:
    """The records a document holds (`nodes_of`)."""
    return [record_from(entity, key, parent, node)
            for key, parent, node in nodes_of(entity, document)]


def _matching(keys: Iterable[Any], kind: ValueKind) -> list[Any]:
    """The BSON values that match `keys` (both forms of a UUID)."""
    return [form for key in keys for form in key_forms(key, kind)]


def _batches(keys: Iterable[Any], size: int = IN_BATCH) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for key in keys:
        batch.append(key)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def fetch_targets(db: Database[Document], entity: EntityMapping, keys: Sequence[Any],
                  parents: Sequence[Any] | None = None) -> TargetSnapshot:
    """The target records of `keys`. Embedded entities are read through their parents
    (`parents`, when known) or, failing that, by element key."""
    collection = db[entity.target.collection]
    wanted = set(keys)
    records: dict[Any, TargetRecord] = {}
    elements: dict[tuple[Any, Any], TargetRecord] = {}
    found_parents: set[Any] = set()
    embedded = entity.target.embedded
    if embedded is None:
        for batch in _batches(dict.fromkeys(keys)):
            query = {entity.target.key: {"$in": _matching(batch, entity.key_kind)}}
            for doc in collection.find(scoped(entity, query), projection_of(entity)):
                record = records_of(entity, doc)[0]
                records[record.key] = record
        return TargetSnapshot(records, frozenset())
    if parents is not None:
        queries = ({entity.target.key: {"$in": _matching(batch, entity.parent_key_kind)}}
                   for batch in _batches(dict.fromkeys(parents)))
    else:
        field = f"{embedded.array}.{embedded.element_key}"
        queries = ({field: {"$in": _matching(batch, entity.key_kind)}}
                   for batch in _batches(dict.fromkeys(keys)))
    for query in queries:
        for doc in collection.find(scoped(entity, query), projection_of(entity)):
            found_parents.add(key_of(doc.get(entity.target.key), entity.parent_key_kind))
            for record in records_of(entity, doc):
                if record.key in wanted:
                    records[record.key] = record
                    elements[(record.parent, record.key)] = record
    return TargetSnapshot(records, frozenset(found_parents), elements)


def scan_target_documents(db: Database[Document], entity: EntityMapping, *,
                          lower: Any = None, upper: Any = None, batch_size: int = 5000
                          ) -> Iterator[list[Document]]:
    """Every target document in document-key order (`order_key`), optionally within
    document keys (lower, upper] (source values of the key, the parent key when embedded),
    as the driver delivers them, in batches of `batch_size`.

    MongoDB range queries are type-bracketed: `{k: {$lte: "m"}}` never matches an
    ObjectId. So the first chunk (no lower bound) also reads every key of a type the
    source cannot hold, or a stray would be in no chunk at all."""
    collection = db[entity.target.collection]
    hint = sort_index(collection, entity)
    cursors = [collection.find(
        scoped(entity, query), projection_of(entity), sort=[(entity.target.key, 1)],
        batch_size=batch_size, hint=hint)
        for query in _scan_queries(entity, lower, upper)]
    documents: Iterable[Document]
    if len(cursors) == 1:
        documents = cursors[0]
    else:  # one cursor per stored form, merged into one order
        documents = map(itemgetter(1), heapq.merge(*(_keyed(entity, c) for c in cursors),
                                                   key=itemgetter(0)))
    iterator: Iterator[Document] = iter(documents)
    yield from iter(lambda: list(islice(iterator, batch_size)), [])


ID_INDEX = "_id_"


def sort_index(collection: Collection[Document], entity: EntityMapping) -> str | None:
    """The `_id` index for a scan sorted on `_id`, unless the collection has none to walk
    (a clustered collection's `_id` is its storage order). secantusdb otherwise reads the
    whole collection and sorts it in memory before the first batch: with the index, a
    200k-document scan took 2.9 s instead of 4.4 s. mongod picks that index by itself."""
    if entity.target.key != "_id":
        return None
    spec = collection.index_information().get(ID_INDEX)
    return ID_INDEX if spec is not None and not spec.get("clustered") else None


def _document_kind(entity: EntityMapping) -> ValueKind:
    return entity.key_kind if entity.target.embedded is None else entity.parent_key_kind


def _keyed(entity: EntityMapping, cursor: Iterable[Document]
           ) -> Iterator[tuple[Any, Document]]:
    """(order, document) in the cursor's order. A BSON binary that is not a UUID sorts
    among the UUIDs in MongoDB but after them here: it is held back to its place."""
    kind, field = _document_kind(entity), entity.target.key
    held: list[tuple[Any, Document]] = []
    for document in cursor:
        key = key_of(document.get(field), kind)
        item = (order_key(key), document)
        if isinstance(key, bytes):
            held.append(item)
        else:
            yield item
    held.sort(key=itemgetter(0))
    yield from held


# BSON types a source key of each kind is stored as; any other is a stray (item 5).
_KEY_TYPES = {ValueKind.TEXT: ["string"], ValueKind.INTEGER: ["number"],
              ValueKind.UUID: ["string", "binData"]}


def _scan_queries(entity: EntityMapping, lower: Any, upper: Any) -> list[Document]:
    """The queries whose sorted cursors, merged by `order_key`, give the chunk's
    documents in the merge-join's order, strays included in the first chunk. One query
    (MongoDB's own cross-type order is the merge order), except for UUID keys: their
    string and BSON forms sort apart in MongoDB, so each form has its cursor."""
    kind, field = _document_kind(entity), entity.target.key
    types = _KEY_TYPES.get(kind, ["string"])
    present = {} if field == "_id" else {field: {"$ne": None}}  # no key: not a record
    strays = {field: {"$ne": None, "$not": {"$type": types}}}
    if kind is not ValueKind.UUID and lower is None and upper is None:
        return [present]  # one chunk: everything
    ranges = []
    for form in types:
        # Range operators are type-bracketed: a bound of the form's type keeps to it.
        bounds: dict[str, Any] = {} if lower is not None or upper is not None else {
            "$type": form}
        if lower is not None:
            bounds["$gt"] = _bound(lower, form)
        if upper is not None:
            bounds["$lte"] = _bound(upper, form)
        ranges.append({field: bounds})
    if kind is not ValueKind.UUID:
        return [{"$or": [*ranges, strays]}] if lower is None else ranges
    return [*ranges, strays] if lower is None else ranges


def _bound(value: Any, form: str) -> Any:
    """A source key as a bound on its stored `form` (a UUID: string or BSON UUID)."""
    if isinstance(value, uuid.UUID) and form == "string":
        return str(value)
    return value


def updated_at_path(entity: EntityMapping) -> str | None:
    """Where the mapped `updated_at` sits in a document (inside the array when embedded):
    what the windowed orphan query filters on and `db init` indexes, so the two agree."""
    field = entity.updated_at_field
    if field is None:
        return None
    embedded = entity.target.embedded
    return field.target if embedded is None else f"{embedded.array}.{field.target}"


def find_updated_between(db: Database[Document], entity: EntityMapping, start: datetime,
                         end: datetime) -> Iterator[TargetRecord]:
    """Target records whose mapped `updated_at` lies in [start, end): the orphan candidates
    of a windowed run."""
    field, path = entity.updated_at_field, updated_at_path(entity)
    if field is None or path is None:
        return
    query: Document = {path: {"$gte": start, "$lt": end}}
    if entity.target.key != "_id":
        query[entity.target.key] = {"$ne": None}  # no key: not a record of this entity
    for document in db[entity.target.collection].find(scoped(entity, query),
                                                      projection_of(entity)):
        for record in records_of(entity, document):
            value = record.values.get(field.target)
            if isinstance(value, datetime) and start <= value < end:
                yield record


class KeyIndexError(RuntimeError):
    """A unique index on a target key cannot be created; the message says why."""


def needs_key_index(entity: EntityMapping) -> bool:
    """Upserting by a key other than `_id` (a document's, or an embedded entity's parent
    document's) is only safe under a unique index: a guarded upsert that the guard
    refuses would insert a second document with the same key."""
    return entity.target.key != "_id"


def key_index_name(entity: EntityMapping) -> str:
    return f"{entity.target.collection}.{entity.target.key}"


def missing_key_index(db: Database[Document], entity: EntityMapping) -> str | None:
    """None when upserts by the entity's key are safe; otherwise the error to report."""
    if not needs_key_index(entity):
        return None
    for index in db[entity.target.collection].list_indexes():
        if (list(index["key"]) == [entity.target.key] and index.get("unique")
                and _covers_scope(entity, index.get("partialFilterExpression"))):
            return None
    options = "{unique: true}" if not entity.target.where else (
        f"{{unique: true, partialFilterExpression: {scope_filter(entity)}}}")
    return (f"no unique index on {key_index_name(entity)}: run `recon-pipeline db init` or "
            f"create it (createIndex({{{entity.target.key}: 1}}, {options}))")


def _covers_scope(entity: EntityMapping, partial: Any) -> bool:
    """A unique index over the whole collection makes upserts by the key safe; so does
    one over exactly the entity's target scope (documents of other types may then share
    a key with ours: they are never written anyway)."""
    if partial is None:
        return True
    return bool(entity.target.where) and dict(partial) == scope_filter(entity)


@dataclass(frozen=True, slots=True)
class KeyForms:
    """How a collection stores UUID keys: as BSON UUIDs, or as canonical strings (the
    default: what an empty collection gets)."""

    key_binary: bool = False  # the document key, or the element key when embedded
    parent_binary: bool = False  # embedded: the parent document's key


def detect_key_forms(db: Database[Document], entity: EntityMapping) -> KeyForms:
    """The forms the collection already uses, read from one existing document."""
    if ValueKind.UUID not in (entity.key_kind, entity.parent_key_kind):
        return KeyForms()
    field = entity.target.key
    embedded = entity.target.embedded
    collection = db[entity.target.collection]
    if embedded is None:
        document = collection.find_one(
            scoped(entity, {field: {"$type": ["string", "binData"]}}), {field: 1})
        return KeyForms(key_binary=isinstance((document or {}).get(field), uuid.UUID))
    parent = collection.find_one({field: {"$type": ["string", "binData"]}}, {field: 1})
    path = f"{embedded.array}.{embedded.element_key}"
    holder = collection.find_one({path: {"$type": ["string", "binData"]}},
                                 {embedded.array: 1})
    elements = get_path(holder or {}, embedded.array)
    keys = [get_path(e, embedded.element_key) for e in elements
            if isinstance(e, dict)] if isinstance(elements, list) else []
    return KeyForms(key_binary=any(isinstance(k, uuid.UUID) for k in keys),
                    parent_binary=isinstance((parent or {}).get(field), uuid.UUID))


@dataclass(frozen=True, slots=True)
class KeyLayout:
    forms: KeyForms
    missing_index: str | None  # why upserts by the key are refused, if they are


@dataclass(slots=True)
class KeyLayouts:
    """How each entity's collection holds its keys, read once per entity per run (one
    `listIndexes`, one document) and only for the entities a run writes."""

    db: Database[Document]
    known: dict[str, KeyLayout] = field(default_factory=dict)

    def of(self, entity: EntityMapping) -> KeyLayout:
        layout = self.known.get(entity.name)
        if layout is None:
            layout = KeyLayout(detect_key_forms(self.db, entity),
                               missing_key_index(self.db, entity))
            self.known[entity.name] = layout
        return layout


def ensure_target_indexes(db: Database[Document], entities: Iterable[EntityMapping]) -> list[str]:
    """Indexes the pipeline needs: the unique index on a target key other than `_id`
    (upserts by that key), and the mapped `updated_at` of each document or array element
    (the windowed orphan scan). Creating an index that exists is a no-op; a unique index
    that duplicates prevent raises KeyIndexError naming them."""
    created = []
    for entity in entities:
        if needs_key_index(entity) and missing_key_index(db, entity) is not None:
            created.append(_create_key_index(db, entity))
        path = updated_at_path(entity)
        if path is None:
            continue
        name = db[entity.target.collection].create_index(path)
        created.append(f"{entity.target.collection}.{name}")
    return list(dict.fromkeys(created))


def _create_key_index(db: Database[Document], entity: EntityMapping) -> str:
    collection = db[entity.target.collection]
    field = entity.target.key
    # A scoped entity's key need only be unique within its scope (SPEC 5, "Scopes").
    scope = scope_filter(entity)
    options: dict[str, Any] = {"partialFilterExpression": scope,
                               "name": f"{field}_1_{entity.name}_scope"} if scope else {}
    try:
        name = collection.create_index(field, unique=True, **options)
    except DuplicateKeyError:
        duplicates = [repr(d["_id"]) for d in collection.aggregate([
            {"$match": scope},
            {"$group": {"_id": f"${field}", "n": {"$sum": 1}}},
            {"$match": {"n": {"$gt": 1}}}, {"$sort": {"_id": 1}}, {"$limit": 10}])]
        raise KeyIndexError(
            f"mapping entity '{entity.name}': cannot create a unique index on "
            f"{key_index_name(entity)}: duplicate keys {', '.join(duplicates)} (a document "
            f"without the field counts as null); remove the duplicates and run db init "
            f"again") from None
    except OperationFailure as error:
        if error.code not in (85, 86):  # IndexOptionsConflict, IndexKeySpecsConflict
            raise
        raise KeyIndexError(
            f"mapping entity '{entity.name}': {key_index_name(entity)} has an index that is "
            f"not unique; drop it so that db init can create a unique one") from None
    return f"{entity.target.collection}.{name}"

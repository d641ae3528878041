"""Reading the read model as the mapping sees it: documents or array elements, reduced to
their key, mapped field values and recorded source version.

Access paths (see EMBEDDED_MONGODB.md): one sorted cursor over a collection for dense
work, `$in` batches of at most `IN_BATCH` keys for sparse work. Both are index-served on
a real MongoDB; on secantusdb they are its two fast paths.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pymongo.database import Database
from pymongo.errors import PyMongoError

from recon_pipeline.engine.mapping import EntityMapping
from recon_pipeline.engine.normalize import MISSING

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


def _record(entity: EntityMapping, key: Any, parent: Any, node: Document) -> TargetRecord:
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
    """Read only the mapped fields (and the version guard)."""
    embedded = entity.target.embedded
    if embedded is None:
        return {**{f.target: 1 for f in entity.compared_fields}, VERSION_FIELD: 1}
    return {embedded.array: 1}


def records_of(entity: EntityMapping, document: Document) -> list[TargetRecord]:
    """The records a document holds: itself, or each element of the mapped array."""
    embedded = entity.target.embedded
    if embedded is None:
        return [_record(entity, document.get(entity.target.key), None, document)]
    elements = get_path(document, embedded.array)
    if not isinstance(elements, list):
        return []
    return [_record(entity, get_path(e, embedded.element_key), document["_id"], e)
            for e in elements if isinstance(e, dict)]


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
            for doc in collection.find({entity.target.key: {"$in": batch}},
                                       projection_of(entity)):
                record = records_of(entity, doc)[0]
                records[record.key] = record
        return TargetSnapshot(records, frozenset())
    if parents is not None:
        queries = ({"_id": {"$in": batch}} for batch in _batches(dict.fromkeys(parents)))
    else:
        field = f"{embedded.array}.{embedded.element_key}"
        queries = ({field: {"$in": batch}} for batch in _batches(dict.fromkeys(keys)))
    for query in queries:
        for doc in collection.find(query, projection_of(entity)):
            found_parents.add(doc["_id"])
            for record in records_of(entity, doc):
                if record.key in wanted:
                    records[record.key] = record
                    elements[(record.parent, record.key)] = record
    return TargetSnapshot(records, frozenset(found_parents), elements)


def scan_target_batches(db: Database[Document], entity: EntityMapping, *, lower: Any = None,
                        upper: Any = None, batch_size: int = 5000
                        ) -> Iterator[list[TargetRecord]]:
    """Every target record in document-key order (one sorted cursor), optionally within
    document keys (lower, upper]; elements of one parent come in element-key order.
    In batches of about `batch_size` documents."""
    bounds: dict[str, Any] = {}
    if lower is not None:
        bounds["$gt"] = lower
    if upper is not None:
        bounds["$lte"] = upper
    query = {"_id": bounds} if bounds else {}
    cursor = db[entity.target.collection].find(
        query, projection_of(entity), sort=[("_id", 1)], batch_size=batch_size)
    batch: list[TargetRecord] = []
    documents = 0
    for document in cursor:
        records = records_of(entity, document)
        if entity.target.embedded is not None:
            records.sort(key=_element_order)
        batch += records
        documents += 1
        if documents == batch_size:
            yield batch
            batch, documents = [], 0
    if batch:
        yield batch


def _element_order(record: TargetRecord) -> tuple[str, Any]:
    return (type(record.key).__name__, record.key)


def find_updated_between(db: Database[Document], entity: EntityMapping, start: datetime,
                         end: datetime) -> Iterator[TargetRecord]:
    """Target records whose mapped `updated_at` lies in [start, end): the orphan candidates
    of a windowed run."""
    field = entity.updated_at_field
    if field is None:
        return
    embedded = entity.target.embedded
    path = field.target if embedded is None else f"{embedded.array}.{field.target}"
    for document in db[entity.target.collection].find(
            {path: {"$gte": start, "$lt": end}}, projection_of(entity)):
        for record in records_of(entity, document):
            value = record.values.get(field.target)
            if isinstance(value, datetime) and start <= value < end:
                yield record


def ensure_target_indexes(db: Database[Document], entities: Iterable[EntityMapping]) -> list[str]:
    """Indexes the windowed orphan scan needs: the mapped `updated_at` of each document or
    array element. Creating an index that exists is a no-op."""
    created = []
    for entity in entities:
        field = entity.updated_at_field
        if field is None:
            continue
        embedded = entity.target.embedded
        path = field.target if embedded is None else f"{embedded.array}.{field.target}"
        name = db[entity.target.collection].create_index(path)
        created.append(f"{entity.target.collection}.{name}")
    return created


def write_best_effort(db: Database[Document], collection: str, ops: Sequence[Any]) -> None:
    """An unordered bulk write whose failures are not reported: for writes that a later run
    makes anyway when they fail (a refused guard is a duplicate key or no match; any other
    error leaves the target a version behind, which the next run finds and repairs)."""
    if not ops:
        return
    try:
        db[collection].bulk_write(list(ops), ordered=False)
    except PyMongoError:
        return

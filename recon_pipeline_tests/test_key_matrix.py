"""User-chosen keys through whole runs of `reconciliation_job` (SPEC 5 "Keys", issue 9).

A schema of our own (`products`, `line_items` embedded in `orders`), not the demo's: for
each source key type and each target key form, a seeded drift of missing records, field
mismatches and orphans is found exactly, repaired (orphans deleted), leaves MongoDB holding
exactly the projection with keys in the collection's form, and a second run is clean.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from bson import Binary, Int64, ObjectId
from bson.decimal128 import Decimal128
from dagster import DagsterInstance, ExecuteInProcessResult
from pymongo.database import Database

import recon_pipeline
from recon_pipeline.cli.main import main
from recon_pipeline.definitions import defs
from recon_pipeline.defs.ops import KEY_RANGE_CHUNKS_TAG
from recon_pipeline.engine.extract import AccessPath, plan_entity
from recon_pipeline.engine.window import RunWindow
from recon_pipeline.model.mapping import MappingError
from recon_pipeline.model.normalize import order_key
from recon_pipeline.stores import reports, schema
from recon_pipeline.stores.postgres import load_mapping
from recon_pipeline.stores.target import ensure_target_indexes
from recon_pipeline_tests.conftest import ServerUrls
from recon_pipeline_tests.dagster_support import (
    SEED_NOW,
    WINDOW_END,
    WINDOW_START,
    test_resources,
)

NAMESPACE = uuid.UUID("6f1c2a8e-0000-4000-8000-000000000000")
ROWS = 20
SQL_TYPES = {"text": "text", "smallint": "smallint", "integer": "integer", "bigint": "bigint",
             "uuid": "uuid"}


def make_key(sql_type: str, i: int) -> Any:
    """Deterministic keys that exercise each type's order: mixed-case and punctuated text
    (byte order, non-ASCII too), negative small ints, int64 values beyond int32, UUIDs."""
    if sql_type == "text":
        return f"{'Ab_é'[i % 4]}{i:03d}"
    if sql_type == "smallint":
        return i * 3 - 30
    if sql_type == "integer":
        return i * 1000 + 7
    if sql_type == "bigint":
        return 2**40 + i * 2**33
    return uuid.uuid5(NAMESPACE, f"{sql_type}-{i}")


def stored(key: Any, binary: bool) -> Any:
    """A key as MongoDB holds it: a UUID as BSON UUID or as its canonical string."""
    if isinstance(key, uuid.UUID):
        return key if binary else str(key)
    return key


@dataclass(frozen=True)
class Case:
    key_type: str  # products.id and line_items.id
    parent_type: str  # line_items.order_id: the orders document key
    natural: bool  # target key: a natural field beside an ObjectId `_id`, or `_id`
    binary: bool = False  # UUIDs already stored as BSON UUIDs in the collections
    # 100 more products, older than the window: the window is sparse, and products are
    # compared through `$in` look-ups and the `updated_at` orphan query, not a scan
    sparse: bool = False

    @property
    def id(self) -> str:
        form = "natural" if self.natural else "_id"
        return (f"{self.key_type}{'(bson)' if self.binary else ''}-{form}"
                f"-parent_{self.parent_type}{'-sparse' if self.sparse else ''}")

    @property
    def product_key_field(self) -> str:
        return "code" if self.natural else "_id"

    @property
    def order_key_field(self) -> str:
        return "order_no" if self.natural else "_id"


# Element key types follow the document key types; parent keys cover uuid, integer, text.
PARENTS = {"text": "integer", "smallint": "text", "integer": "uuid", "bigint": "text",
           "uuid": "uuid"}
CASES = [Case(t, PARENTS[t], natural) for t in SQL_TYPES for natural in (False, True)]
CASES += [Case("uuid", "uuid", natural, binary=True) for natural in (False, True)]
CASES += [Case("text", "integer", False, sparse=True), Case("bigint", "text", True, sparse=True),
          Case("uuid", "uuid", True, binary=True, sparse=True)]
OLD_ROWS = range(400, 500)

# The drift: rows by index.
PRODUCTS_MISSING, PRODUCTS_MISMATCHED, PRODUCT_ORPHANS = {0, 7, 13}, {2, 11}, (100, 101)
ORDERS = 6
ABSENT_ORDER = 5  # no document at all: its 3 line items are missing, the parent created
ITEMS_MISSING, ITEMS_MISMATCHED, ITEM_ORPHAN = {1}, {3, 8}, 140
EXPECTED = {"missing_in_mongo": 3 + 4, "field_mismatches": 2 + 2, "orphans_in_mongo": 2 + 1,
            "repaired": 14, "records_checked": 2 * ROWS}


def moment(i: int) -> datetime:
    return SEED_NOW - timedelta(hours=1, seconds=i)


def product_row(case: Case, i: int) -> dict[str, Any]:
    return {"id": make_key(case.key_type, i), "name": f"product {i}",
            "price": Decimal(f"{i}.50"), "updated_at": moment(i)}


def item_row(case: Case, j: int) -> dict[str, Any]:
    return {"id": make_key(case.key_type, j + 40), "order_id": order_id_of(case, j % ORDERS),
            "sku": f"sku-{j}", "qty": j + 1, "updated_at": moment(j)}


def order_id_of(case: Case, p: int) -> Any:
    return make_key(case.parent_type, p + 60)


def product_doc(case: Case, row: dict[str, Any]) -> dict[str, Any]:
    """What a repair writes for a row (and what the seed writes for a good document)."""
    return {case.product_key_field: stored(row["id"], case.binary), "name": row["name"],
            "price": Decimal128(row["price"]), "updated_at": row["updated_at"],
            "_recon_version": row["updated_at"]}


def item_element(case: Case, row: dict[str, Any]) -> dict[str, Any]:
    return {"line_id": stored(row["id"], case.binary), "sku": row["sku"], "qty": row["qty"],
            "updated_at": row["updated_at"], "_recon_version": row["updated_at"]}


def write_mapping(tmp_path: Path, case: Case, *, chunk_size: int = 7,
                  delete_orphans: bool = True) -> Path:
    mapping = {
        "settings": {"chunk_size": chunk_size, "delete_orphans": delete_orphans},
        "entities": {
            "products": {
                "source": {"table": "products", "key": "id", "updated_at": "updated_at",
                           "sync_tracking": {"status": "sync_status", "synced_at": "synced_at",
                                             "error": "sync_error"}},
                "target": {"collection": "products", "key": case.product_key_field},
                "fields": {"name": "name", "price": {"field": "price", "type": "decimal"},
                           "updated_at": "updated_at"}},
            "line_items": {
                "source": {"table": "line_items", "key": "id", "updated_at": "updated_at"},
                "target": {"collection": "orders", "key": case.order_key_field,
                           "embedded": {"array": "items", "parent_key": "order_id",
                                        "element_key": "line_id"}},
                "fields": {"sku": "sku", "qty": "qty", "updated_at": "updated_at"}},
        },
    }
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump(mapping))
    return path


def create_tables(engine: sa.Engine, case: Case) -> None:
    key, parent = SQL_TYPES[case.key_type], SQL_TYPES[case.parent_type]
    with engine.begin() as conn:
        conn.execute(sa.text(
            f"create table products (id {key} primary key, name text not null,"
            " price numeric(10, 2) not null, updated_at timestamptz not null,"
            " sync_status text, synced_at timestamptz, sync_error text)"))
        conn.execute(sa.text(
            f"create table line_items (id {key} primary key, order_id {parent} not null,"
            " sku text not null, qty integer not null, updated_at timestamptz not null)"))


def seed(engine: sa.Engine, mongo: Database[Any], case: Case, mapping: Path, *,
         unique_index: bool = True) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Source rows and drifted documents; returns (product rows, line item rows)."""
    create_tables(engine, case)
    products = [product_row(case, i) for i in range(ROWS)]
    if case.sparse:
        products += [{**product_row(case, i), "updated_at": WINDOW_START - timedelta(days=1)}
                     for i in OLD_ROWS]
    items = [item_row(case, j) for j in range(ROWS)]
    with engine.begin() as conn:
        conn.execute(sa.text("insert into products (id, name, price, updated_at)"
                             " values (:id, :name, :price, :updated_at)"), products)
        conn.execute(sa.text(
            "insert into line_items values (:id, :order_id, :sku, :qty, :updated_at)"), items)
    documents = []
    for i, row in enumerate(products):  # the old rows of a sparse case are in sync
        if i in PRODUCTS_MISSING:
            continue
        doc = product_doc(case, {**row, "name": "wrong"} if i in PRODUCTS_MISMATCHED else row)
        documents.append(with_object_id(case, doc, i))
    for i in PRODUCT_ORPHANS:
        documents.append(with_object_id(case, product_doc(case, product_row(case, i)),
                                        1000 + i))
    mongo.products.insert_many(documents[::-1])  # insertion order is not key order
    orders = []
    for p in range(ORDERS):
        if p == ABSENT_ORDER:
            continue
        elements = [item_element(case, {**row, "qty": 0} if j in ITEMS_MISMATCHED else row)
                    for j, row in enumerate(items)
                    if j % ORDERS == p and j not in ITEMS_MISSING]
        if p == 0:
            elements.append(item_element(case, item_row(case, ITEM_ORPHAN)))
        orders.append(with_object_id(case, {
            case.order_key_field: stored(order_id_of(case, p), case.binary),
            "customer": f"customer {p}", "items": elements[::-1]}, 200 + p))
    mongo.orders.insert_many(orders)
    if case.natural and unique_index:  # what `db init` does for a natural key
        ensure_target_indexes(mongo, load_mapping(mapping, engine).entities)
    return products, items


def with_object_id(case: Case, doc: dict[str, Any], n: int) -> dict[str, Any]:
    return {"_id": ObjectId(f"{n:024x}"), **doc} if case.natural else doc


def execute(pg_url: str, mongo_db: Database[Any], mapping: Path,
            **options: Any) -> ExecuteInProcessResult:
    job = defs.resolve_job_def("reconciliation_job")
    options = options or {"window_start": WINDOW_START, "window_end": WINDOW_END}
    with DagsterInstance.ephemeral() as instance:
        # Key-range chunks even in process: bounded chunks are what these cases check.
        return job.execute_in_process(
            run_config=recon_pipeline.run_config(**options), instance=instance,
            resources=test_resources(pg_url, mongo_db, mapping), raise_on_error=False,
            tags={KEY_RANGE_CHUNKS_TAG: "true"})


def latest_report(engine: sa.Engine) -> dict[str, Any]:
    [row] = reports.recent_reports(engine, 1)
    return row


def without_object_id(case: Case, doc: dict[str, Any]) -> dict[str, Any]:
    if case.natural:
        assert isinstance(doc.pop("_id"), ObjectId)
    return doc


def assert_mongo_holds_exactly(mongo: Database[Any], case: Case,
                               products: list[dict[str, Any]],
                               items: list[dict[str, Any]], *,
                               unmapped_kept: bool = True) -> None:
    docs = [without_object_id(case, d) for d in mongo.products.find()]
    by_key = {repr(d[case.product_key_field]): d for d in docs}
    assert len(by_key) == len(docs) == len(products)  # no duplicates, orphans gone
    for row in products:
        assert by_key[repr(stored(row["id"], case.binary))] == product_doc(case, row)
    orders = [without_object_id(case, d) for d in mongo.orders.find()]
    assert len(orders) == ORDERS
    for p in range(ORDERS):
        [doc] = [o for o in orders
                 if o[case.order_key_field] == stored(order_id_of(case, p), case.binary)]
        expected = sorted((item_element(case, r) for j, r in enumerate(items)
                           if j % ORDERS == p), key=repr)
        assert sorted(doc["items"], key=repr) == expected
        kept = unmapped_kept and p != ABSENT_ORDER  # unmapped fields are never touched
        assert doc.get("customer") == (f"customer {p}" if kept else None)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_key_matrix_drift_is_found_repaired_and_then_clean(
    case: Case, pg_url: str, pg_engine: sa.Engine, mongo_db: Database[Any], tmp_path: Path
) -> None:
    mapping = write_mapping(tmp_path, case)
    products, items = seed(pg_engine, mongo_db, case, mapping)
    plan = plan_entity(pg_engine, load_mapping(mapping, pg_engine).entity("products"),
                       RunWindow(WINDOW_START, WINDOW_END), chunk_size=7, key_ranges=True)
    assert {c.access for c in plan} == {AccessPath.LOOKUP if case.sparse else AccessPath.SCAN}
    assert len(plan) == 3  # bounded chunks: first, middle, last

    first = execute(pg_url, mongo_db, mapping)
    assert first.success
    row = latest_report(pg_engine)
    assert {name: row[name] for name in EXPECTED} == EXPECTED
    assert (row["repair_failed"], row["status"]) == (0, "success")
    with pg_engine.connect() as conn:
        tally = conn.execute(sa.text(
            "select entity, kind, repair_status, count(*) from reconciliation_mismatches"
            " where report_id = :r group by 1, 2, 3 order by 1, 2, 3"), {"r": row["id"]}).all()
    assert [tuple(t) for t in tally] == [
        ("line_items", "field_mismatch", "repaired", 2),
        ("line_items", "missing_in_mongo", "repaired", 4),
        ("line_items", "orphan_in_mongo", "repaired", 1),
        ("products", "field_mismatch", "repaired", 2),
        ("products", "missing_in_mongo", "repaired", 3),
        ("products", "orphan_in_mongo", "repaired", 2)]
    assert_mongo_holds_exactly(mongo_db, case, products, items)
    repaired = {products[i]["id"] for i in PRODUCTS_MISSING | PRODUCTS_MISMATCHED}
    assert synced_keys(pg_engine) == repaired  # sync marks found their rows by key

    second = execute(pg_url, mongo_db, mapping)
    assert second.success
    row = latest_report(pg_engine)
    assert (row["mismatches_found"], row["records_checked"], row["status"]) == (
        0, 2 * ROWS, "success")
    assert_mongo_holds_exactly(mongo_db, case, products, items)


def synced_keys(engine: sa.Engine) -> set[Any]:
    with engine.connect() as conn:
        return set(conn.execute(sa.text(
            "select id from products where sync_status = 'synced' and synced_at is not null"
            " and sync_error is null")).scalars())


def mismatch_rows(engine: sa.Engine, report_id: int) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(
            "select entity, kind, record_key, repair_status, repair_error"
            " from reconciliation_mismatches where report_id = :r order by id"),
            {"r": report_id})]


def snapshot(mongo: Database[Any]) -> dict[str, list[dict[str, Any]]]:
    return {name: sorted(mongo[name].find(), key=repr) for name in ("products", "orders")}


def test_an_empty_collection_gets_uuid_keys_as_canonical_strings(
    pg_url: str, pg_engine: sa.Engine, mongo_db: Database[Any], tmp_path: Path
) -> None:
    case = Case("uuid", "uuid", natural=False)
    mapping = write_mapping(tmp_path, case)
    products, items = seed(pg_engine, mongo_db, case, mapping)
    mongo_db.products.delete_many({})
    mongo_db.orders.delete_many({})
    assert execute(pg_url, mongo_db, mapping).success
    row = latest_report(pg_engine)
    assert (row["missing_in_mongo"], row["field_mismatches"], row["orphans_in_mongo"],
            row["repaired"], row["status"]) == (2 * ROWS, 0, 0, 2 * ROWS, "success")
    assert_mongo_holds_exactly(mongo_db, case, products, items, unmapped_kept=False)
    assert mongo_db.products.count_documents({"_id": {"$type": "string"}}) == ROWS
    assert mongo_db.orders.count_documents({"items.line_id": {"$type": "binData"}}) == 0


def test_documents_created_in_a_bson_uuid_collection_carry_bson_uuids(
    pg_url: str, pg_engine: sa.Engine, mongo_db: Database[Any], tmp_path: Path
) -> None:
    case = Case("uuid", "uuid", natural=True, binary=True)
    mapping = write_mapping(tmp_path, case)
    products, items = seed(pg_engine, mongo_db, case, mapping)
    assert execute(pg_url, mongo_db, mapping).success
    assert latest_report(pg_engine)["repaired"] == EXPECTED["repaired"]
    assert mongo_db.products.count_documents({"code": {"$type": "binData"}}) == ROWS
    assert mongo_db.orders.count_documents({"order_no": {"$type": "binData"}}) == ORDERS
    created = mongo_db.orders.find_one({"order_no": order_id_of(case, ABSENT_ORDER)})
    assert created is not None and isinstance(created["_id"], ObjectId)
    assert all(isinstance(e["line_id"], uuid.UUID) for e in created["items"])


# Keys of a type the source key cannot hold, per key type (type names as reported).
STRAYS = {
    "text": {ObjectId("0123456789abcdef01234567"): "ObjectId", 5: "int",
             uuid.UUID(int=7): "UUID"},
    "integer": {ObjectId("0123456789abcdef01234567"): "ObjectId", "k005": "str",
                2.5: "float"},
    "uuid": {ObjectId("0123456789abcdef01234567"): "ObjectId", 5: "int",
             "not-a-uuid": "str"},
}


@pytest.mark.parametrize(("key_type", "full_scan", "sparse"), [
    ("text", True, False), ("text", False, False), ("text", False, True),
    ("integer", True, False), ("uuid", True, False), ("uuid", False, True)],
    ids=["text-full_scan", "text-window_scan", "text-window_lookup", "integer-full_scan",
         "uuid-full_scan", "uuid-window_lookup"])
def test_strays_of_another_key_type_are_orphans_in_every_chunk_plan(
    key_type: str, full_scan: bool, sparse: bool, pg_url: str, pg_engine: sa.Engine,
    mongo_db: Database[Any], tmp_path: Path
) -> None:
    """Keys of the source's type plus strays of other types: type-bracketed range queries
    would hide the strays from every bounded chunk; they are orphans, reported (their
    key's text is not their key, so they are never deleted through it)."""
    case = Case(key_type, "integer", natural=False, sparse=sparse)
    strays = STRAYS[key_type]
    mapping = write_mapping(tmp_path, case, chunk_size=3)
    products, items = seed(pg_engine, mongo_db, case, mapping)
    mongo_db.products.insert_many([{**product_doc(case, product_row(case, 150)), "_id": key}
                                   for key in strays])
    options = {"full_scan": True} if full_scan else {}
    assert execute(pg_url, mongo_db, mapping, **options).success
    row = latest_report(pg_engine)
    assert (row["missing_in_mongo"], row["field_mismatches"], row["orphans_in_mongo"],
            row["repaired"], row["status"]) == (7, 4, 3 + 3, 14, "needs_attention")
    reported = [r for r in mismatch_rows(pg_engine, row["id"]) if r[3] == "reported"]
    assert sorted((r[2], r[4]) for r in reported) == sorted(
        (str(key), f"key of type {name}: no source row can have it, so it is not deleted "
                   f"automatically") for key, name in strays.items())
    left = mongo_db.products.find({"_id": {"$in": list(strays)}})
    assert sorted(repr(d["_id"]) for d in left) == sorted(repr(k) for k in strays)
    mongo_db.products.delete_many({"_id": {"$in": list(strays)}})
    assert_mongo_holds_exactly(mongo_db, case, products, items)


def test_without_the_unique_index_a_run_writes_nothing_and_names_the_index(
    pg_url: str, pg_engine: sa.Engine, mongo_db: Database[Any], tmp_path: Path
) -> None:
    case = Case("integer", "text", natural=True)
    mapping = write_mapping(tmp_path, case)
    seed(pg_engine, mongo_db, case, mapping, unique_index=False)
    before = snapshot(mongo_db)
    assert execute(pg_url, mongo_db, mapping).success
    row = latest_report(pg_engine)
    assert (row["mismatches_found"], row["repaired"], row["repair_failed"], row["status"]) == (
        14, 0, 14, "needs_attention")
    errors = {(r[0], r[3], r[4]) for r in mismatch_rows(pg_engine, row["id"])}
    assert errors == {
        ("products", "failed", "no unique index on products.code: run `recon-pipeline db "
                               "init` or create it (createIndex({code: 1}, {unique: true}))"),
        ("line_items", "failed", "no unique index on orders.order_no: run `recon-pipeline db "
                                 "init` or create it (createIndex({order_no: 1}, "
                                 "{unique: true}))")}
    assert snapshot(mongo_db) == before


def cli_env(monkeypatch: pytest.MonkeyPatch, servers: ServerUrls, pg_url: str,
            mongo_db: Database[Any], mapping: Path) -> None:
    monkeypatch.setenv("DATABASE_URL", pg_url)
    monkeypatch.setenv("MONGODB_URL", servers.mongodb_url)
    monkeypatch.setenv("MONGODB_DATABASE", mongo_db.name)
    monkeypatch.setenv("RECON_CONFIG", str(mapping))


def test_db_init_creates_the_unique_index_on_a_natural_key(
    pg_url: str, pg_engine: sa.Engine, mongo_db: Database[Any], tmp_path: Path,
    servers: ServerUrls, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = Case("uuid", "integer", natural=True)
    mapping = write_mapping(tmp_path, case)
    seed(pg_engine, mongo_db, case, mapping, unique_index=False)
    cli_env(monkeypatch, servers, pg_url, mongo_db, mapping)
    assert main(["db", "init"]) == 0
    assert main(["db", "init"]) == 0  # a second time: nothing to do
    for collection, field in (("products", "code"), ("orders", "order_no")):
        [index] = [i for i in mongo_db[collection].list_indexes() if list(i["key"]) == [field]]
        assert index["unique"] is True
    assert execute(pg_url, mongo_db, mapping).success
    assert latest_report(pg_engine)["repaired"] == EXPECTED["repaired"]


def test_db_init_fails_naming_the_duplicate_keys(
    pg_url: str, pg_engine: sa.Engine, mongo_db: Database[Any], tmp_path: Path,
    servers: ServerUrls, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    case = Case("text", "integer", natural=True)
    mapping = write_mapping(tmp_path, case)
    seed(pg_engine, mongo_db, case, mapping, unique_index=False)
    mongo_db.products.insert_many([{"code": "A004", "name": "copy"},
                                   {"code": "A004", "name": "copy"}])
    before = snapshot(mongo_db)
    cli_env(monkeypatch, servers, pg_url, mongo_db, mapping)
    assert main(["db", "init"]) == 1
    error = capsys.readouterr().err
    assert ("recon-pipeline: error: mapping entity 'products': cannot create a unique index "
            "on products.code: duplicate keys 'A004'") in error
    assert [i["name"] for i in mongo_db.products.list_indexes()] == ["_id_"]
    assert snapshot(mongo_db) == before


def outbox_upsert(engine: sa.Engine, row: dict[str, Any]) -> int:
    payload = {**row, "id": str(row["id"]), "price": str(row["price"]),
               "updated_at": row["updated_at"].isoformat()}
    with engine.begin() as conn:
        conn.execute(sa.text("insert into products (id, name, price, updated_at)"
                             " values (:id, :name, :price, :updated_at)"), row)
        return int(conn.execute(
            sa.insert(schema.outbox_messages).returning(schema.outbox_messages.c.id),
            {"aggregate_type": "products", "aggregate_id": str(row["id"]),
             "operation": "upsert", "payload": payload}).scalar_one())


def outbox_delete(engine: sa.Engine, key: Any) -> int:
    with engine.begin() as conn:
        return int(conn.execute(
            sa.insert(schema.outbox_messages).returning(schema.outbox_messages.c.id),
            {"aggregate_type": "products", "aggregate_id": str(key), "operation": "delete",
             "payload": {"id": str(key)}}).scalar_one())


def outbox_state(engine: sa.Engine, message_id: int) -> tuple[Any, ...]:
    with engine.connect() as conn:
        return tuple(conn.execute(sa.text(
            "select status, attempts, last_error, next_attempt_at > now() from outbox_messages"
            " where id = :id"), {"id": message_id}).one())


@pytest.mark.parametrize("unique_index", [True, False], ids=["indexed", "no_index"])
def test_outbox_upserts_by_a_natural_uuid_key(
    unique_index: bool, pg_url: str, pg_engine: sa.Engine, mongo_db: Database[Any],
    tmp_path: Path
) -> None:
    """Delivered in the collection's form; without the unique index left due with the
    index named and no attempt charged (a missing index is not the message's fault)."""
    case = Case("uuid", "uuid", natural=True, binary=True)
    mapping = write_mapping(tmp_path, case)
    seed(pg_engine, mongo_db, case, mapping, unique_index=unique_index)
    new = product_row(case, 300)
    message_id = outbox_upsert(pg_engine, new)
    orphan = make_key("uuid", PRODUCT_ORPHANS[0])
    delete_id = outbox_delete(pg_engine, orphan)
    before = snapshot(mongo_db)
    assert execute(pg_url, mongo_db, mapping).success
    row = latest_report(pg_engine)
    if unique_index:
        assert (row["outbox_attempted"], row["outbox_sent"], row["outbox_failed"]) == (2, 2, 0)
        assert outbox_state(pg_engine, message_id)[:3] == ("sent", 0, None)
        assert outbox_state(pg_engine, delete_id)[:3] == ("sent", 0, None)
        [doc] = mongo_db.products.find({"code": new["id"]})
        assert without_object_id(case, doc) == product_doc(case, new)
        assert (row["records_checked"], row["orphans_in_mongo"], row["repaired"]) == (
            2 * ROWS + 1, EXPECTED["orphans_in_mongo"] - 1, EXPECTED["repaired"] - 1)
        assert mongo_db.products.count_documents({"code": orphan}) == 0
        assert synced_keys(pg_engine) == {new["id"]} | {
            make_key("uuid", i) for i in PRODUCTS_MISSING | PRODUCTS_MISMATCHED}
    else:  # the delete needs no unique index: only the upsert waits
        assert outbox_state(pg_engine, delete_id)[:3] == ("sent", 0, None)
        assert mongo_db.products.count_documents({"code": orphan}) == 0
        mongo_db.products.insert_one(next(d for d in before["products"]
                                          if d["code"] == orphan))
        assert (row["outbox_attempted"], row["outbox_sent"], row["outbox_failed"],
                row["outbox_dead"]) == (2, 1, 1, 0)
        assert outbox_state(pg_engine, message_id) == (
            "failed", 0, "no unique index on products.code: run `recon-pipeline db init` or "
                         "create it (createIndex({code: 1}, {unique: true}))", True)
        assert snapshot(mongo_db) == before


@pytest.mark.parametrize(("column", "shown"), [
    ("price", "NUMERIC(10, 2)"), ("updated_at", "TIMESTAMP"), ("flag", "BOOLEAN")])
def test_mapping_rejects_a_key_of_another_type(
    column: str, shown: str, pg_engine: sa.Engine, tmp_path: Path
) -> None:
    with pg_engine.begin() as conn:
        conn.execute(sa.text("create table products (id integer, name text, flag boolean,"
                             " price numeric(10, 2), updated_at timestamptz)"))
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"entities": {"products": {
        "source": {"table": "products", "key": column, "updated_at": "updated_at"},
        "target": {"collection": "products"}, "fields": {"name": "name"}}}}))
    with pytest.raises(MappingError) as error:
        load_mapping(path, pg_engine)
    assert str(error.value).endswith(
        f"mapping entity 'products': key column '{column}' has type {shown}; a key must be "
        f"text/varchar, smallint, integer, bigint or uuid")


def test_uuid_keys_in_both_forms_in_one_collection_match_either(
    pg_url: str, pg_engine: sa.Engine, mongo_db: Database[Any], tmp_path: Path
) -> None:
    """Half the products keyed by canonical strings, half by BSON UUIDs (orphans and
    mismatches in both): each form meets its row, in a scan of several chunks."""
    case = Case("uuid", "integer", natural=False)
    mapping = write_mapping(tmp_path, case, chunk_size=4)
    products, items = seed(pg_engine, mongo_db, case, mapping)
    for doc in list(mongo_db.products.find()):
        key = uuid.UUID(doc["_id"])
        if int(key.hex, 16) % 2:
            mongo_db.products.delete_one({"_id": doc["_id"]})
            mongo_db.products.insert_one({**doc, "_id": key})
    forms = {type(d["_id"]) for d in mongo_db.products.find()}
    assert forms == {str, uuid.UUID}
    assert execute(pg_url, mongo_db, mapping, full_scan=True).success
    row = latest_report(pg_engine)
    assert {name: row[name] for name in EXPECTED} == EXPECTED
    docs = list(mongo_db.products.find())
    assert len(docs) == ROWS
    by_key = {uuid.UUID(str(d["_id"])): d for d in docs}
    for product in products:
        doc = by_key[product["id"]]
        assert {**doc, "_id": str(doc["_id"])} == product_doc(case, product)
    assert execute(pg_url, mongo_db, mapping, full_scan=True).success
    assert latest_report(pg_engine)["mismatches_found"] == 0


@pytest.mark.parametrize(("source_key", "target", "fields", "message"), [
    (["id", "name"], {"collection": "products"}, {"name": "name"},
     "source key ['id', 'name'] must be one column (composite keys are not supported: map "
     "a unique column)"),
    ("id", {"collection": "products", "key": "meta.code"}, {"name": "name"},
     "target key 'meta.code' must be '_id' or a top-level field name"),
    ("id", {"collection": "products", "key": "code"}, {"name": "_id"},
     "field 'name': target path '_id' is the key"),
])
def test_mapping_rejects_keys_it_cannot_follow(
    source_key: Any, target: dict[str, Any], fields: dict[str, Any], message: str,
    pg_engine: sa.Engine, tmp_path: Path
) -> None:
    with pg_engine.begin() as conn:
        conn.execute(sa.text("create table products (id integer, name text,"
                             " updated_at timestamptz)"))
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"entities": {"products": {
        "source": {"table": "products", "key": source_key, "updated_at": "updated_at"},
        "target": target, "fields": fields}}}))
    with pytest.raises(MappingError) as error:
        load_mapping(path, pg_engine)
    assert str(error.value).endswith(f"mapping entity 'products': {message}")


def test_order_key_is_the_servers_cross_type_sort_order(mongo_db: Database[Any]) -> None:
    """The merge-join meets MongoDB's sorted cursor only if both sort alike. (UUIDs are
    the one exception by design: they sort as their canonical string, and the scan reads
    each stored form with its own cursor to give that order.)"""
    keys = [None, -3, 2.5, Int64(2**40), Decimal128("7.5"), "", "A", "a", "é", "éa",
            Binary(b"ab", 0), Binary(b"abc", 0), Binary(b"ab", 5),
            ObjectId("0123456789abcdef01234567"), ObjectId("ff23456789abcdef01234567"),
            False, True, datetime(2026, 1, 1, tzinfo=UTC)]
    mongo_db.order.insert_many([{"k": key, "n": n} for n, key in enumerate(keys)])
    served = [d["n"] for d in mongo_db.order.find({}, sort=[("k", 1), ("n", 1)])]
    assert served == sorted(range(len(keys)), key=lambda n: order_key(keys[n]))

"""User-chosen keys through whole runs of `reconciliation_job` (SPEC 5 "Keys", issue 9).

A schema of our own (`products`, `line_items` embedded in `orders`), not the demo's: for
each source key type and each target key form, a seeded drift of missing records, field
mismatches and orphans is found exactly, repaired (orphans deleted), leaves MongoDB holding
exactly the projection with keys in the collection's form, and a second run is clean.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from bson import ObjectId
from bson.decimal128 import Decimal128
from dagster import DagsterInstance, ExecuteInProcessResult
from pymongo.database import Database

import recon_pipeline
from recon_pipeline.cli import main
from recon_pipeline.definitions import defs
from recon_pipeline.engine.mapping import MappingError, load_mapping
from recon_pipeline.stores import reports
from recon_pipeline.stores.target import ensure_target_indexes
from recon_pipeline_tests.conftest import ServerUrls
from recon_pipeline_tests.dagster_support import SEED_NOW, WINDOW_END, WINDOW_START, test_resources

NAMESPACE = uuid.UUID("6f1c2a8e-0000-4000-8000-000000000000")
ROWS = 20
SQL_TYPES = {"text": "text", "smallint": "smallint", "integer": "integer", "bigint": "bigint",
             "uuid": "uuid"}


def make_key(sql_type: str, i: int) -> Any:
    """Deterministic keys that exercise each type's order: mixed-case and punctuated text
    (byte order), negative small ints, int64 values beyond int32, UUIDs."""
    if sql_type == "text":
        return f"{'Ab_'[i % 3]}{i:03d}"
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

    @property
    def id(self) -> str:
        form = "natural" if self.natural else "_id"
        return (f"{self.key_type}{'(bson)' if self.binary else ''}-{form}"
                f"-parent_{self.parent_type}")

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
    return {"id": make_key(case.key_type, j + 40), "order_id": order_key(case, j % ORDERS),
            "sku": f"sku-{j}", "qty": j + 1, "updated_at": moment(j)}


def order_key(case: Case, p: int) -> Any:
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
                "source": {"table": "products", "key": "id", "updated_at": "updated_at"},
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
            " price numeric(10, 2) not null, updated_at timestamptz not null)"))
        conn.execute(sa.text(
            f"create table line_items (id {key} primary key, order_id {parent} not null,"
            " sku text not null, qty integer not null, updated_at timestamptz not null)"))


def seed(engine: sa.Engine, mongo: Database[Any], case: Case, mapping: Path
         ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Source rows and drifted documents; returns (product rows, line item rows)."""
    create_tables(engine, case)
    products = [product_row(case, i) for i in range(ROWS)]
    items = [item_row(case, j) for j in range(ROWS)]
    with engine.begin() as conn:
        conn.execute(sa.text("insert into products values (:id, :name, :price, :updated_at)"),
                     products)
        conn.execute(sa.text(
            "insert into line_items values (:id, :order_id, :sku, :qty, :updated_at)"), items)
    documents = []
    for i, row in enumerate(products):
        if i in PRODUCTS_MISSING:
            continue
        doc = product_doc(case, {**row, "name": "wrong"} if i in PRODUCTS_MISMATCHED else row)
        documents.append(with_object_id(case, doc, i))
    for i in PRODUCT_ORPHANS:
        documents.append(with_object_id(case, product_doc(case, product_row(case, i)), i))
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
            case.order_key_field: stored(order_key(case, p), case.binary),
            "customer": f"customer {p}", "items": elements[::-1]}, 200 + p))
    mongo.orders.insert_many(orders)
    if case.natural:  # what `db init` does for a natural key
        ensure_target_indexes(mongo, load_mapping(mapping, engine).entities)
    return products, items


def with_object_id(case: Case, doc: dict[str, Any], n: int) -> dict[str, Any]:
    return {"_id": ObjectId(f"{n:024x}"), **doc} if case.natural else doc


def execute(pg_url: str, mongo_db: Database[Any], mapping: Path,
            **options: Any) -> ExecuteInProcessResult:
    job = defs.resolve_job_def("reconciliation_job")
    options = options or {"window_start": WINDOW_START, "window_end": WINDOW_END}
    with DagsterInstance.ephemeral() as instance:
        return job.execute_in_process(
            run_config=recon_pipeline.run_config(**options), instance=instance,
            resources=test_resources(pg_url, mongo_db, mapping), raise_on_error=False)


def latest_report(engine: sa.Engine) -> dict[str, Any]:
    [row] = reports.recent_reports(engine, 1)
    return row


def without_object_id(case: Case, doc: dict[str, Any]) -> dict[str, Any]:
    if case.natural:
        assert isinstance(doc.pop("_id"), ObjectId)
    return doc


def assert_mongo_holds_exactly(mongo: Database[Any], case: Case,
                               products: list[dict[str, Any]],
                               items: list[dict[str, Any]]) -> None:
    docs = [without_object_id(case, d) for d in mongo.products.find()]
    by_key = {repr(d[case.product_key_field]): d for d in docs}
    assert len(by_key) == len(docs) == ROWS  # no duplicates, orphans gone
    for row in products:
        assert by_key[repr(stored(row["id"], case.binary))] == product_doc(case, row)
    orders = [without_object_id(case, d) for d in mongo.orders.find()]
    assert len(orders) == ORDERS
    for p in range(ORDERS):
        [doc] = [o for o in orders
                 if o[case.order_key_field] == stored(order_key(case, p), case.binary)]
        expected = sorted((item_element(case, r) for j, r in enumerate(items)
                           if j % ORDERS == p), key=repr)
        assert sorted(doc["items"], key=repr) == expected
        assert doc.get("customer") == (None if p == ABSENT_ORDER else f"customer {p}")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_key_matrix_drift_is_found_repaired_and_then_clean(
    case: Case, pg_url: str, pg_engine: sa.Engine, mongo_db: Database[Any], tmp_path: Path
) -> None:
    mapping = write_mapping(tmp_path, case)
    products, items = seed(pg_engine, mongo_db, case, mapping)

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

    second = execute(pg_url, mongo_db, mapping)
    assert second.success
    row = latest_report(pg_engine)
    assert (row["mismatches_found"], row["records_checked"], row["status"]) == (
        0, 2 * ROWS, "success")
    assert_mongo_holds_exactly(mongo_db, case, products, items)

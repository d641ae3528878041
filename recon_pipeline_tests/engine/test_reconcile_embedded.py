"""Reconciling an embedded array entity (creditor_debts in clients.final_creditor_list):
siblings and unmapped fields untouched, parents created only when missing."""

from datetime import timedelta
from decimal import Decimal

import sqlalchemy as sa
from bson.decimal128 import Decimal128
from pymongo.database import Database

from recon_pipeline.model.mapping import ReconConfig
from recon_pipeline.stores import schema
from recon_pipeline_tests.builders import (
    T0,
    client_row,
    debt_row,
    insert,
    mirror,
    mismatch_rows,
    run,
    window,
)


def _elements(db: Database, ref: str) -> dict[int, dict]:
    doc = db.clients.find_one({"_id": ref}) or {}
    return {e["creditor_id"]: e for e in doc.get("final_creditor_list", [])}


def test_embedded_mismatches_repaired_in_place(
    pg_engine: sa.Engine, mongo_db: Database, config: ReconConfig
) -> None:
    insert(pg_engine, schema.clients, client_row("C1"), client_row("C2"))
    debts = [debt_row(1, "C1"), debt_row(2, "C1"), debt_row(3, "C1"), debt_row(4, "C2")]
    insert(pg_engine, schema.creditor_debts, *debts)
    mirror(mongo_db, config, "clients", client_row("C1"))  # C2's document is missing
    mirror(mongo_db, config, "creditor_debts", debts[0], debts[1])  # debt 3 missing
    mongo_db.clients.update_one(
        {"_id": "C1"},
        {"$set": {"final_creditor_list.1.current_debt_amount": Decimal128("100.20"),
                  "final_creditor_list.0.note": "unmapped element field",
                  "nickname": "unmapped document field"}})
    mirror(mongo_db, config, "creditor_debts", debt_row(77, "C1"))  # orphan element

    report = run(pg_engine, mongo_db, entities=("creditor_debts",))

    assert mismatch_rows(pg_engine, report.id) == [
        ("creditor_debts", "2", "field_mismatch", "repaired"),
        ("creditor_debts", "3", "missing_in_mongo", "repaired"),
        ("creditor_debts", "4", "missing_in_mongo", "repaired"),
        ("creditor_debts", "77", "orphan_in_mongo", "reported"),
    ]
    c1 = _elements(mongo_db, "C1")
    assert sorted(c1) == [1, 2, 3, 77]
    assert c1[2]["current_debt_amount"].to_decimal() == Decimal("100.10")
    assert c1[1]["note"] == "unmapped element field"  # sibling element untouched
    assert mongo_db.clients.find_one({"_id": "C1"})["nickname"] == "unmapped document field"
    assert mongo_db.clients.find_one({"_id": "C1"})["first_name"] == "Ada"
    # C2 did not exist: the parent is created holding only the element
    c2 = mongo_db.clients.find_one({"_id": "C2"})
    assert set(c2) == {"_id", "final_creditor_list"}
    assert [e["creditor_id"] for e in c2["final_creditor_list"]] == [4]


def test_amount_within_tolerance_is_no_mismatch(
    pg_engine: sa.Engine, mongo_db: Database, config: ReconConfig
) -> None:
    insert(pg_engine, schema.clients, client_row("C1"))
    insert(pg_engine, schema.creditor_debts, debt_row(1, "C1"), debt_row(2, "C1"))
    mirror(mongo_db, config, "clients", client_row("C1"))
    mirror(mongo_db, config, "creditor_debts", debt_row(1, "C1"), debt_row(2, "C1"))
    mongo_db.clients.update_one({"_id": "C1"}, {"$set": {
        "final_creditor_list.0.current_debt_amount": 100.104,  # within 0.005
        "final_creditor_list.1.current_debt_amount": 100.106}})  # beyond
    report = run(pg_engine, mongo_db, entities=("creditor_debts",), dry_run=True)
    assert mismatch_rows(pg_engine, report.id) == [
        ("creditor_debts", "2", "field_mismatch", "dry_run")]


def test_element_under_the_wrong_parent(
    pg_engine: sa.Engine, mongo_db: Database, config: ReconConfig
) -> None:
    insert(pg_engine, schema.clients, client_row("C1"), client_row("C2"))
    insert(pg_engine, schema.creditor_debts, debt_row(1, "C2"))
    mirror(mongo_db, config, "clients", client_row("C1"), client_row("C2"))
    mirror(mongo_db, config, "creditor_debts", debt_row(1, "C1"))  # moved to C2 since
    report = run(pg_engine, mongo_db, window(full_scan=True),
                 entities=("creditor_debts",))
    assert mismatch_rows(pg_engine, report.id) == [
        ("creditor_debts", "1", "missing_in_mongo", "repaired"),
        ("creditor_debts", "1", "orphan_in_mongo", "reported")]
    assert sorted(_elements(mongo_db, "C2")) == [1]


def test_embedded_orphans_deleted_when_enabled(
    pg_engine: sa.Engine, mongo_db: Database, config: ReconConfig
) -> None:
    insert(pg_engine, schema.clients, client_row("C1"))
    insert(pg_engine, schema.creditor_debts, debt_row(1, "C1"))
    mirror(mongo_db, config, "clients", client_row("C1"))
    mirror(mongo_db, config, "creditor_debts", debt_row(1, "C1"), debt_row(5, "C1",
                                                                         at=T0 + timedelta(1)))
    report = run(pg_engine, mongo_db, window(full_scan=True), settings={"delete_orphans": True},
                 entities=("creditor_debts",))
    assert mismatch_rows(pg_engine, report.id) == [
        ("creditor_debts", "5", "orphan_in_mongo", "repaired")]
    assert sorted(_elements(mongo_db, "C1")) == [1]
    assert report.status == "success"

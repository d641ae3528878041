"""Reconciling a document entity (incoming_emails, clients): every mismatch kind, exact
counts, and the state of both databases afterwards."""

from datetime import timedelta

import sqlalchemy as sa
from pymongo.database import Database

from recon_pipeline.model.mapping import ReconConfig
from recon_pipeline.stores import schema
from recon_pipeline_tests.builders import (
    T0,
    client_row,
    email_row,
    insert,
    mirror,
    mismatch_rows,
    run,
    window,
)


def _seed(pg_engine: sa.Engine, mongo_db: Database, config: ReconConfig) -> None:
    rows = [email_row(i, "C1", at=T0 + timedelta(minutes=i)) for i in range(1, 7)]
    insert(pg_engine, schema.incoming_emails, *rows)
    mirror(mongo_db, config, "incoming_emails", *rows[:4])  # 5 and 6 are missing
    mongo_db.incoming_emails.update_one({"_id": 2}, {"$set": {"subject": "edited",
                                                              "notes": "unmapped, kept"}})
    mongo_db.incoming_emails.update_one({"_id": 3}, {"$set": {"extracted_amount": 12.5}})
    orphan = email_row(99, "C1", at=T0)
    mirror(mongo_db, config, "incoming_emails", orphan)


def test_every_kind_found_repaired_and_verified(
    pg_engine: sa.Engine, mongo_db: Database, config: ReconConfig
) -> None:
    _seed(pg_engine, mongo_db, config)
    report = run(pg_engine, mongo_db, entities=("incoming_emails",))
    assert report.counts["records_checked"] == 6
    assert (report.counts["missing_in_mongo"], report.counts["field_mismatches"],
            report.counts["orphans_in_mongo"]) == (2, 1, 1)  # 12.5 vs 12.50 is no mismatch
    assert report.counts["mismatches_found"] == 4
    assert report.counts["repaired"] == 3
    assert report.status == "needs_attention"  # the orphan is reported, not repaired
    assert mismatch_rows(pg_engine, report.id) == [
        ("incoming_emails", "2", "field_mismatch", "repaired"),
        ("incoming_emails", "5", "missing_in_mongo", "repaired"),
        ("incoming_emails", "6", "missing_in_mongo", "repaired"),
        ("incoming_emails", "99", "orphan_in_mongo", "reported"),
    ]
    doc = mongo_db.incoming_emails.find_one({"_id": 2})
    assert doc["subject"] == "Statement 2"
    assert doc["notes"] == "unmapped, kept"  # unmapped fields are never touched
    assert mongo_db.incoming_emails.count_documents({}) == 7
    with pg_engine.connect() as conn:
        synced = conn.execute(sa.text(
            "select id from incoming_emails where mongo_sync_status = 'synced' order by id"
        )).scalars().all()
    assert synced == [2, 5, 6]  # sync_tracking: verified repairs only
    again = run(pg_engine, mongo_db, entities=("incoming_emails",))
    assert (again.counts["mismatches_found"], again.counts["orphans_in_mongo"]) == (1, 1)


def test_report_row_holds_figures_and_sample(
    pg_engine: sa.Engine, mongo_db: Database, config: ReconConfig
) -> None:
    _seed(pg_engine, mongo_db, config)
    report = run(pg_engine, mongo_db, entities=("incoming_emails",))
    with pg_engine.connect() as conn:
        row = conn.execute(sa.select(schema.reconciliation_reports).where(
            schema.reconciliation_reports.c.id == report.id)).mappings().one()
    assert row["status"] == "needs_attention"
    assert row["mongo_available"] is True
    assert row["window_start"] == T0 - timedelta(hours=1)
    assert row["finished_at"] >= row["started_at"]
    assert row["details"]["entities"]["incoming_emails"]["repaired"] == 3
    field = next(s for s in row["details"]["sample"] if s["kind"] == "field_mismatch")
    assert field["fields"] == {"subject": {"source": "Statement 2", "target": "edited"}}


def test_consistent_data_is_success(
    pg_engine: sa.Engine, mongo_db: Database, config: ReconConfig
) -> None:
    rows = [client_row(f"C{i}") for i in range(3)]
    insert(pg_engine, schema.clients, *rows)
    mirror(mongo_db, config, "clients", *rows)
    report = run(pg_engine, mongo_db)
    assert report.status == "success"
    assert report.counts["records_checked"] == 3
    assert report.counts["mismatches_found"] == 0


def test_full_scan_sees_rows_outside_the_window(
    pg_engine: sa.Engine, mongo_db: Database, config: ReconConfig
) -> None:
    old = email_row(1, "C1", at=T0 - timedelta(days=30))
    insert(pg_engine, schema.incoming_emails, old)
    mongo_db.incoming_emails.insert_one({"_id": 500, "subject": "orphan, no updated_at"})
    windowed = run(pg_engine, mongo_db, entities=("incoming_emails",))
    assert windowed.counts["mismatches_found"] == 0
    full = run(pg_engine, mongo_db, window(full_scan=True),
               entities=("incoming_emails",))
    assert (full.counts["missing_in_mongo"], full.counts["orphans_in_mongo"]) == (1, 1)
    assert full.full_scan is True
    assert mongo_db.incoming_emails.find_one({"_id": 1})["subject"] == "Statement 1"


def test_window_edges_and_settle_period(
    pg_engine: sa.Engine, mongo_db: Database, config: ReconConfig
) -> None:
    start, end = T0, T0 + timedelta(hours=1)
    insert(pg_engine, schema.incoming_emails,
           email_row(1, "C1", at=start),                            # judged
           email_row(2, "C1", at=end - timedelta(microseconds=1)),  # judged
           email_row(3, "C1", at=end))                              # not judged
    report = run(pg_engine, mongo_db, window(start, end), entities=("incoming_emails",),
                 dry_run=True)
    assert report.counts["records_checked"] == 2
    assert mismatch_rows(pg_engine, report.id) == [
        ("incoming_emails", "1", "missing_in_mongo", "dry_run"),
        ("incoming_emails", "2", "missing_in_mongo", "dry_run")]
    assert mongo_db.incoming_emails.count_documents({}) == 0  # dry run writes nothing
    assert report.status == "needs_attention"

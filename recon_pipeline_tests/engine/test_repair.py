"""Repair rules: version guard, concurrent fixes, repair_limit, dry_run, delete_orphans."""

from dataclasses import replace
from datetime import timedelta

import sqlalchemy as sa
from pymongo.database import Database

from recon_pipeline.engine.extract import plan_chunks
from recon_pipeline.engine.mapping import ReconConfig
from recon_pipeline.engine.reconcile import (
    RunRequest,
    begin_run,
    decide_repairs,
    safe_diff_chunk,
)
from recon_pipeline.engine.repair import repair_batch
from recon_pipeline.stores import schema
from recon_pipeline.stores.target import VERSION_FIELD
from recon_pipeline_tests.builders import (
    T0,
    email_row,
    insert,
    mirror,
    mismatch_rows,
    run,
    window,
)


def _with(config: ReconConfig, **settings) -> ReconConfig:
    return replace(config, settings=replace(config.settings, **settings))


def test_version_guard_refuses_to_overwrite_newer_target(
    pg_engine: sa.Engine, mongo_db: Database, config: ReconConfig
) -> None:
    insert(pg_engine, schema.incoming_emails, email_row(1, "C1", at=T0))
    newer = email_row(1, "C1", at=T0 + timedelta(minutes=5), subject="newer write")
    mirror(mongo_db, config, "incoming_emails", newer)
    report = run(pg_engine, mongo_db, config, entities=("incoming_emails",))
    with pg_engine.connect() as conn:
        status, error = conn.execute(sa.text(
            "select repair_status, repair_error from reconciliation_mismatches")).one()
    assert status == "failed"
    assert error == "version guard: MongoDB holds a newer source version"
    assert report.counts["repair_failed"] == 1
    assert mongo_db.incoming_emails.find_one({"_id": 1})["subject"] == "newer write"


def test_mismatch_fixed_before_repair_is_resolved(
    pg_engine: sa.Engine, mongo_db: Database, config: ReconConfig
) -> None:
    row = email_row(1, "C1")
    insert(pg_engine, schema.incoming_emails, row)
    mirror(mongo_db, config, "incoming_emails", {**row, "subject": "stale"})
    request = RunRequest("r1", window(), entities=("incoming_emails",))
    report_id = begin_run(pg_engine, request, T0)
    for chunk in plan_chunks(pg_engine, config, request.window, ["incoming_emails"]):
        safe_diff_chunk(pg_engine, mongo_db, config, report_id, request.window, chunk, T0)
    mirror(mongo_db, config, "incoming_emails", row)  # the outbox got there first
    before = mongo_db.incoming_emails.find_one({"_id": 1})
    decision = decide_repairs(pg_engine, config, report_id, dry_run=False)
    for batch in decision.batches:
        repair_batch(pg_engine, mongo_db, config, report_id, batch, T0)
    assert mismatch_rows(pg_engine, report_id) == [
        ("incoming_emails", "1", "field_mismatch", "resolved")]
    assert mongo_db.incoming_emails.find_one({"_id": 1}) == before  # nothing written


def test_more_mismatches_than_repair_limit_repairs_none(
    pg_engine: sa.Engine, mongo_db: Database, config: ReconConfig
) -> None:
    insert(pg_engine, schema.incoming_emails, *(email_row(i, "C1") for i in range(1, 5)))
    report = run(pg_engine, mongo_db, _with(config, repair_limit=3),
                 entities=("incoming_emails",))
    assert [r[3] for r in mismatch_rows(pg_engine, report.id)] == ["skipped_limit"] * 4
    assert report.counts["repair_skipped"] == 4
    assert report.counts["repaired"] == 0
    assert report.status == "needs_attention"
    assert mongo_db.incoming_emails.count_documents({}) == 0


def test_repair_limit_is_inclusive(
    pg_engine: sa.Engine, mongo_db: Database, config: ReconConfig
) -> None:
    insert(pg_engine, schema.incoming_emails, *(email_row(i, "C1") for i in range(1, 4)))
    report = run(pg_engine, mongo_db, _with(config, repair_limit=3),
                 entities=("incoming_emails",))
    assert report.counts["repaired"] == 3
    assert report.status == "success"


def test_dry_run_writes_nothing_and_marks_dry_run(
    pg_engine: sa.Engine, mongo_db: Database, config: ReconConfig
) -> None:
    row = email_row(1, "C1")
    insert(pg_engine, schema.incoming_emails, row, email_row(2, "C1"))
    mirror(mongo_db, config, "incoming_emails", {**row, "subject": "stale"},
           email_row(3, "C1"))
    snapshot = list(mongo_db.incoming_emails.find({}, sort=[("_id", 1)]))
    report = run(pg_engine, mongo_db, _with(config, delete_orphans=True), dry_run=True,
                 entities=("incoming_emails",))
    assert mismatch_rows(pg_engine, report.id) == [
        ("incoming_emails", "1", "field_mismatch", "dry_run"),
        ("incoming_emails", "2", "missing_in_mongo", "dry_run"),
        ("incoming_emails", "3", "orphan_in_mongo", "dry_run")]
    assert report.dry_run is True
    assert list(mongo_db.incoming_emails.find({}, sort=[("_id", 1)])) == snapshot


def test_delete_orphans_off_reports_and_on_deletes(
    pg_engine: sa.Engine, mongo_db: Database, config: ReconConfig
) -> None:
    mirror(mongo_db, config, "incoming_emails", email_row(7, "C1"))
    kept = run(pg_engine, mongo_db, config, entities=("incoming_emails",))
    assert mismatch_rows(pg_engine, kept.id) == [
        ("incoming_emails", "7", "orphan_in_mongo", "reported")]
    assert mongo_db.incoming_emails.count_documents({"_id": 7}) == 1
    deleted = run(pg_engine, mongo_db, _with(config, delete_orphans=True),
                  entities=("incoming_emails",))
    assert mismatch_rows(pg_engine, deleted.id) == [
        ("incoming_emails", "7", "orphan_in_mongo", "repaired")]
    assert mongo_db.incoming_emails.count_documents({}) == 0
    assert deleted.status == "success"


def test_orphan_deletion_respects_a_concurrent_write(
    pg_engine: sa.Engine, mongo_db: Database, config: ReconConfig
) -> None:
    mirror(mongo_db, config, "incoming_emails", email_row(7, "C1"))
    deleting = _with(config, delete_orphans=True)
    request = RunRequest("r1", window(), entities=("incoming_emails",))
    report_id = begin_run(pg_engine, request, T0)
    for chunk in plan_chunks(pg_engine, deleting, request.window, ["incoming_emails"]):
        safe_diff_chunk(pg_engine, mongo_db, deleting, report_id, request.window, chunk, T0)
    # the row is created at the source and delivered before the repair runs
    row = email_row(7, "C1", at=T0 + timedelta(minutes=1))
    insert(pg_engine, schema.incoming_emails, row)
    mirror(mongo_db, config, "incoming_emails", row)
    for batch in decide_repairs(pg_engine, deleting, report_id, dry_run=False).batches:
        repair_batch(pg_engine, mongo_db, deleting, report_id, batch, T0)
    assert mismatch_rows(pg_engine, report_id) == [
        ("incoming_emails", "7", "orphan_in_mongo", "resolved")]
    assert mongo_db.incoming_emails.find_one({"_id": 7})[VERSION_FIELD] is not None

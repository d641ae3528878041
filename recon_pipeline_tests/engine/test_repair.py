"""Repair rules: version guard, concurrent fixes, repair_limit, dry_run, delete_orphans."""

import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from pymongo.database import Database

from recon_pipeline.engine import repair
from recon_pipeline.engine.extract import plan_chunks
from recon_pipeline.engine.repair import repair_batch
from recon_pipeline.engine.report import RunReport, finish_report
from recon_pipeline.engine.run_steps import (
    RunScope,
    begin_run,
    decide_repairs,
    safe_diff_chunk,
)
from recon_pipeline.model.mapping import ReconConfig
from recon_pipeline.stores import schema
from recon_pipeline.stores.target import VERSION_FIELD
from recon_pipeline_tests import faults
from recon_pipeline_tests.builders import (
    T0,
    email_row,
    insert,
    mirror,
    mismatch_rows,
    run,
    window,
)
from recon_pipeline_tests.conftest import ServerUrls


def _with(config: ReconConfig, **settings) -> ReconConfig:
    return replace(config, settings=replace(config.settings, **settings))


def _detected(pg_engine: sa.Engine, mongo_db: Database, config: ReconConfig) -> int:
    """A report with the incoming_emails mismatches found, not yet repaired."""
    scope = RunScope("r1", window(), entities=("incoming_emails",))
    report_id = begin_run(pg_engine, scope, T0)
    for chunk in plan_chunks(pg_engine, config, scope.window, ["incoming_emails"]):
        safe_diff_chunk(pg_engine, mongo_db, config, report_id, scope.window, chunk, T0)
    return report_id


def _repair(pg_engine: sa.Engine, mongo_db: Database, config: ReconConfig, report_id: int,
            **options: Any) -> None:
    for batch in decide_repairs(pg_engine, config, report_id, dry_run=False).batches:
        repair_batch(pg_engine, mongo_db, config, report_id, batch, T0, **options)


def _sync_statuses(pg_engine: sa.Engine) -> list[tuple[int, str, datetime | None]]:
    t = schema.incoming_emails.c
    with pg_engine.connect() as conn:
        return [tuple(r) for r in conn.execute(
            sa.select(t.id, t.mongo_sync_status, t.mongo_synced_at).order_by(t.id))]


def test_version_guard_refuses_to_overwrite_newer_target(
    pg_engine: sa.Engine, mongo_db: Database, config: ReconConfig
) -> None:
    insert(pg_engine, schema.incoming_emails, email_row(1, "C1", at=T0))
    newer = email_row(1, "C1", at=T0 + timedelta(minutes=5), subject="newer write")
    mirror(mongo_db, config, "incoming_emails", newer)
    report = run(pg_engine, mongo_db, entities=("incoming_emails",))
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
    report_id = _detected(pg_engine, mongo_db, config)
    mirror(mongo_db, config, "incoming_emails", row)  # the outbox got there first
    before = mongo_db.incoming_emails.find_one({"_id": 1})
    _repair(pg_engine, mongo_db, config, report_id)
    assert mismatch_rows(pg_engine, report_id) == [
        ("incoming_emails", "1", "field_mismatch", "resolved")]
    assert mongo_db.incoming_emails.find_one({"_id": 1}) == before  # nothing written


def test_more_mismatches_than_repair_limit_repairs_none(
    pg_engine: sa.Engine, mongo_db: Database, config: ReconConfig
) -> None:
    insert(pg_engine, schema.incoming_emails, *(email_row(i, "C1") for i in range(1, 5)))
    report = run(pg_engine, mongo_db, settings={"repair_limit": 3},
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
    report = run(pg_engine, mongo_db, settings={"repair_limit": 3},
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
    report = run(pg_engine, mongo_db, settings={"delete_orphans": True}, dry_run=True,
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
    kept = run(pg_engine, mongo_db, entities=("incoming_emails",))
    assert mismatch_rows(pg_engine, kept.id) == [
        ("incoming_emails", "7", "orphan_in_mongo", "reported")]
    assert mongo_db.incoming_emails.count_documents({"_id": 7}) == 1
    deleted = run(pg_engine, mongo_db, settings={"delete_orphans": True},
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
    report_id = _detected(pg_engine, mongo_db, deleting)
    # the row is created at the source and delivered before the repair runs
    row = email_row(7, "C1", at=T0 + timedelta(minutes=1))
    insert(pg_engine, schema.incoming_emails, row)
    mirror(mongo_db, config, "incoming_emails", row)
    _repair(pg_engine, mongo_db, deleting, report_id)
    assert mismatch_rows(pg_engine, report_id) == [
        ("incoming_emails", "7", "orphan_in_mongo", "resolved")]
    assert mongo_db.incoming_emails.find_one({"_id": 7})[VERSION_FIELD] is not None


# --- batches: groups written one after another, PostgreSQL work beside them ----------------


def _five_stale_emails(pg_engine: sa.Engine, mongo_db: Database, config: ReconConfig) -> int:
    rows = [email_row(i, "C1") for i in range(1, 6)]
    insert(pg_engine, schema.incoming_emails, *rows)
    mirror(mongo_db, config, "incoming_emails", *({**r, "subject": "stale"} for r in rows))
    return _detected(pg_engine, mongo_db, config)


def _subjects(mongo_db: Database) -> list[str]:
    return [d["subject"] for d in mongo_db.incoming_emails.find({}, sort=[("_id", 1)])]


@contextmanager
def _faulty(servers: ServerUrls, mongo_db: Database, mode: Any,
            **data: Any) -> Iterator[Database]:
    """`mongo_db` through a client that a `failCommand` fail point aims at."""
    app = "recon-repair-under-test"
    with faults.database_as(servers.mongodb_url, app, mongo_db.name) as db, \
            faults.fail_point(servers.mongodb_url, app, mode, **data):
        yield db


def test_a_batch_is_repaired_group_by_group_with_outcomes_and_sync_recorded(
    pg_engine: sa.Engine, mongo_db: Database, config: ReconConfig
) -> None:
    report_id = _five_stale_emails(pg_engine, mongo_db, config)
    _repair(pg_engine, mongo_db, config, report_id, group_size=2)  # groups of 2, 2, 1
    assert mismatch_rows(pg_engine, report_id) == [
        ("incoming_emails", str(i), "field_mismatch", "repaired") for i in range(1, 6)]
    assert _sync_statuses(pg_engine) == [(i, "synced", T0) for i in range(1, 6)]
    assert _subjects(mongo_db) == [f"Statement {i}" for i in range(1, 6)]


def test_postgres_work_runs_beside_the_mongodb_writes(
    pg_engine: sa.Engine, mongo_db: Database, config: ReconConfig,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    report_id = _five_stale_emails(pg_engine, mongo_db, config)
    threads: dict[str, set[str]] = defaultdict(set)

    def on_thread(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            threads[name].add(threading.current_thread().name)
            return function(*args, **kwargs)
        return call

    monkeypatch.setattr(repair, "fetch_rows", on_thread("source reads", repair.fetch_rows))
    monkeypatch.setattr(repair.reports, "record_repair_outcomes",
                        on_thread("sync marks", repair.reports.record_repair_outcomes))
    monkeypatch.setattr(repair, "_write", on_thread("mongodb writes", repair._write))
    _repair(pg_engine, mongo_db, config, report_id, group_size=2)
    caller = threading.current_thread().name
    assert threads["mongodb writes"] == {caller}
    for postgres_work in ("source reads", "sync marks"):
        assert len(threads[postgres_work]) == 1
        assert threads[postgres_work] != {caller}
        assert next(iter(threads[postgres_work])).startswith("recon-repair")


FAIL_POINT_ERROR = "MongoDB error 2: Failing command via 'failCommand' failpoint"


def _outcomes(pg_engine: sa.Engine) -> list[tuple[str, str, str | None]]:
    m = schema.reconciliation_mismatches.c
    with pg_engine.connect() as conn:
        return [tuple(o) for o in conn.execute(  # type: ignore[misc]
            sa.select(m.record_key, m.repair_status, m.repair_error).order_by(m.record_key))]


def _stopped(error: str) -> str:
    return f"repair stopped: {error}"


def _finish(pg_engine: sa.Engine, report_id: int) -> RunReport:
    return finish_report(pg_engine, report_id, chunks=[], outbox={}, cleanup={},
                         mongo_available=True, finished_at=T0)


def test_a_failure_mid_batch_keeps_what_the_groups_before_it_repaired(
    pg_engine: sa.Engine, mongo_db: Database, config: ReconConfig, servers: ServerUrls
) -> None:
    report_id = _five_stale_emails(pg_engine, mongo_db, config)
    with _faulty(servers, mongo_db, {"skip": 1}, failCommands=["update"], errorCode=2) as db:
        _repair(pg_engine, db, config, report_id, group_size=2)
    assert _outcomes(pg_engine) == [
        ("1", "repaired", None), ("2", "repaired", None),
        ("3", "failed", FAIL_POINT_ERROR), ("4", "failed", FAIL_POINT_ERROR),
        ("5", "failed", _stopped(FAIL_POINT_ERROR))]
    assert _sync_statuses(pg_engine) == [
        (1, "synced", T0), (2, "synced", T0), *((i, "pending", None) for i in range(3, 6))]
    assert _subjects(mongo_db) == ["Statement 1", "Statement 2", "stale", "stale", "stale"]
    report = _finish(pg_engine, report_id)
    assert (report.status, report.counts["repaired"], report.counts["repair_failed"]) == (
        "needs_attention", 2, 3)
    assert report.details["repair_stopped"] == {"error": FAIL_POINT_ERROR,
                                                "connection_lost": False}


def test_a_write_concern_error_leaves_the_fix_unverified_and_stops_repair(
    pg_engine: sa.Engine, mongo_db: Database, config: ReconConfig, servers: ServerUrls
) -> None:
    report_id = _five_stale_emails(pg_engine, mongo_db, config)
    with _faulty(servers, mongo_db, {"times": 1}, failCommands=["update"],
                 writeConcernError=faults.WRITE_CONCERN) as db:
        _repair(pg_engine, db, config, report_id, group_size=2)
    error = "MongoDB write concern error: waiting for replication timed out"
    assert _outcomes(pg_engine) == [
        ("1", "failed", error), ("2", "failed", error),
        *((str(i), "failed", _stopped(error)) for i in range(3, 6))]
    assert _sync_statuses(pg_engine) == [(i, "pending", None) for i in range(1, 6)]
    # The server applied the first group all the same; nothing was written after it.
    assert _subjects(mongo_db) == ["Statement 1", "Statement 2", "stale", "stale", "stale"]
    assert _finish(pg_engine, report_id).status == "needs_attention"


def test_a_failing_read_before_writing_fails_the_group_and_stops_repair(
    pg_engine: sa.Engine, mongo_db: Database, config: ReconConfig, servers: ServerUrls
) -> None:
    report_id = _five_stale_emails(pg_engine, mongo_db, config)
    with _faulty(servers, mongo_db, "alwaysOn", failCommands=["find"], errorCode=2) as db:
        _repair(pg_engine, db, config, report_id, group_size=2)
    assert _outcomes(pg_engine) == [
        ("1", "failed", FAIL_POINT_ERROR), ("2", "failed", FAIL_POINT_ERROR),
        *((str(i), "failed", _stopped(FAIL_POINT_ERROR)) for i in range(3, 6))]
    assert _sync_statuses(pg_engine) == [(i, "pending", None) for i in range(1, 6)]
    assert _subjects(mongo_db) == ["stale"] * 5
    assert _finish(pg_engine, report_id).status == "needs_attention"


def test_a_failing_read_after_writing_leaves_the_writes_unverified(
    pg_engine: sa.Engine, mongo_db: Database, config: ReconConfig, servers: ServerUrls
) -> None:
    report_id = _five_stale_emails(pg_engine, mongo_db, config)
    with _faulty(servers, mongo_db, {"skip": 1}, failCommands=["find"], errorCode=2) as db:
        _repair(pg_engine, db, config, report_id, group_size=2)
    assert _outcomes(pg_engine) == [
        ("1", "failed", FAIL_POINT_ERROR), ("2", "failed", FAIL_POINT_ERROR),
        *((str(i), "failed", _stopped(FAIL_POINT_ERROR)) for i in range(3, 6))]
    assert _sync_statuses(pg_engine) == [(i, "pending", None) for i in range(1, 6)]
    assert _subjects(mongo_db) == ["Statement 1", "Statement 2", "stale", "stale", "stale"]


def test_a_lost_connection_stops_repair_and_makes_the_run_partial(
    pg_engine: sa.Engine, mongo_db: Database, config: ReconConfig, servers: ServerUrls
) -> None:
    report_id = _five_stale_emails(pg_engine, mongo_db, config)
    # alwaysOn: pymongo's one silent retry of the write meets a closed connection too.
    with _faulty(servers, mongo_db, "alwaysOn", failCommands=["update"],
                 closeConnection=True) as db:
        _repair(pg_engine, db, config, report_id, group_size=2)
    outcomes = _outcomes(pg_engine)
    error = outcomes[0][2]
    assert error is not None and error.startswith("MongoDB unreachable: ")
    assert outcomes == [("1", "failed", error), ("2", "failed", error),
                        *((str(i), "failed", _stopped(error)) for i in range(3, 6))]
    assert _subjects(mongo_db) == ["stale"] * 5
    report = _finish(pg_engine, report_id)
    assert (report.status, report.counts["repair_failed"]) == ("partial", 5)
    assert report.details["repair_stopped"] == {"error": error, "connection_lost": True}


def test_a_batch_after_the_stop_writes_nothing(
    pg_engine: sa.Engine, mongo_db: Database, config: ReconConfig, servers: ServerUrls
) -> None:
    report_id = _five_stale_emails(pg_engine, mongo_db, config)
    m = schema.reconciliation_mismatches.c
    with pg_engine.connect() as conn:
        ids = conn.execute(sa.select(m.id).order_by(m.record_key)).scalars().all()
    with _faulty(servers, mongo_db, {"times": 1}, failCommands=["update"], errorCode=2) as db:
        assert repair_batch(pg_engine, db, config, report_id, (ids[0], ids[1]), T0) == 2
    # The fail point is spent: only the recorded stop keeps the second batch from writing.
    assert repair_batch(pg_engine, mongo_db, config, report_id, (ids[2], ids[4]), T0) == 0
    assert _outcomes(pg_engine) == [
        ("1", "failed", FAIL_POINT_ERROR), ("2", "failed", FAIL_POINT_ERROR),
        *((str(i), "failed", _stopped(FAIL_POINT_ERROR)) for i in range(3, 6))]
    assert _subjects(mongo_db) == ["stale"] * 5

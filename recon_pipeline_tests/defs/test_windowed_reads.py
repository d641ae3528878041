"""A windowed run reads what the window holds, never the whole source table or collection
(issue 12, SPEC 10: no whole-table count, scan or sort in a windowed run); a full scan in
process, and any run on the embedded server, is one chunk per entity, with no chunk-bound
query."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from dagster import DagsterEventType, DagsterInstance, execute_job, reconstructable
from pymongo.database import Database
from sqlalchemy.pool import NullPool

import recon_pipeline
from recon_pipeline.cli.runner import reconciliation_job_def
from recon_pipeline.defs import resources
from recon_pipeline.defs.partitions import last_complete_hour
from recon_pipeline.engine.projection import nest, projected_fields, row_version
from recon_pipeline.model.mapping import ReconConfig
from recon_pipeline.stores import reports
from recon_pipeline.stores.mongo import create_client
from recon_pipeline.stores.source import stream_rows
from recon_pipeline.stores.target import VERSION_FIELD, ensure_target_indexes
from recon_pipeline_tests.conftest import ServerUrls
from recon_pipeline_tests.dagster_support import (
    SEED_NOW,
    WINDOW_END,
    WINDOW_START,
    mapping_with,
    report_of,
    run_job,
    seed,
    set_step_environment,
)
from recon_pipeline_tests.mongo_commands import Reads

ENTITY = "incoming_emails"
ROWS, IN_WINDOW = 2000, 20  # 1% of the table changed in the window
ORPHAN_ID = 10**6
DEADLINE_SECONDS = 30


def whole_collection(command: dict[str, Any]) -> bool:
    if "find" in command:
        return not command.get("filter")
    if "aggregate" in command:
        first = (command.get("pipeline") or [{}])[0]
        return not first.get("$match")
    return not command.get("query")  # count, distinct


@pytest.fixture
def stats_engine(pg_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(pg_url, poolclass=NullPool)
    yield engine
    engine.dispose()


def table_reads(engine: sa.Engine) -> dict[str, int]:
    """The source table's read counters, once every other session of the database has
    ended (a session's counters reach the statistics by its exit at the latest)."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    with engine.connect() as conn:
        while conn.execute(sa.text(
                "select count(*) from pg_stat_activity where datname = current_database()"
                " and backend_type = 'client backend' and pid <> pg_backend_pid()")).scalar():
            assert time.monotonic() < deadline, "the run's sessions never ended"
            conn.rollback()
            time.sleep(0.05)
        conn.execute(sa.text("select pg_stat_clear_snapshot()"))
        row = conn.execute(sa.text(
            "select seq_scan, seq_tup_read, coalesce(idx_scan, 0) as idx_scan,"
            " coalesce(idx_tup_fetch, 0) as idx_tup_fetch"
            " from pg_stat_user_tables where relname = :t"), {"t": ENTITY}).mappings().one()
        conn.rollback()
    return dict(row)


def seed_window(engine: sa.Engine, db: Database[Any], config: ReconConfig) -> None:
    """ROWS rows and their documents, changed long before the window; then IN_WINDOW rows
    edited inside it (their documents left stale: field mismatches) and one document in
    the window with no row (an orphan)."""
    entity = config.entity(ENTITY)
    old, recent = WINDOW_START - timedelta(days=30), WINDOW_END - timedelta(hours=1)
    with engine.begin() as conn:
        conn.execute(sa.text("alter table incoming_emails set (autovacuum_enabled = false)"))
        conn.execute(sa.text(
            "insert into incoming_emails (id, client_ref, from_address, subject, received_at,"
            "  processing_status, extracted_amount, created_at, updated_at)"
            " select i, 'C' || i, 'n' || i || '@x.example', 'Statement ' || i, :old, 'new',"
            "  i / 100.0, :old, :old from generate_series(1, :n) i"),
            {"n": ROWS, "old": old})
    documents = [{"_id": row["id"], **nest(projected_fields(entity, row)),
                  VERSION_FIELD: row_version(entity, row)}
                 for batch in stream_rows(engine, entity, start=None, end=None)
                 for row in batch]
    collection = db[entity.target.collection]
    collection.insert_many(documents)
    collection.insert_one({**documents[0], "_id": ORPHAN_ID, "updated_at": recent})
    ensure_target_indexes(db, [entity])  # as db init does
    with engine.begin() as conn:
        conn.execute(sa.text(
            "update incoming_emails set subject = subject || ' (edited)', updated_at = :recent"
            " where id > :n - :w"), {"n": ROWS, "w": IN_WINDOW, "recent": recent})
        conn.execute(sa.text("analyze incoming_emails"))


def test_a_windowed_run_reads_only_what_the_window_holds(
    pg_url: str, pg_engine: sa.Engine, mongo_db: Database[Any], config: ReconConfig,
    stats_engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed_window(pg_engine, mongo_db, config)
    pg_engine.dispose()  # its sessions end: their counters are in `before`
    reads = Reads(mongo_db.name, ENTITY)
    monkeypatch.setattr(resources, "create_client", lambda url, **options: create_client(
        url, event_listeners=[reads], **options))
    before = table_reads(stats_engine)

    result = run_job(pg_url, mongo_db, entities=[ENTITY], dry_run=True)

    assert result.success
    after = table_reads(stats_engine)
    counts = report_of(pg_engine, result).counts
    assert (counts["records_checked"], counts["field_mismatches"], counts["orphans_in_mongo"],
            counts["missing_in_mongo"]) == (IN_WINDOW, IN_WINDOW, 1, 0)
    # MongoDB: every read names what it wants; about the window's documents come back.
    assert reads.commands
    assert [c for c in reads.commands if whole_collection(c)] == []
    assert IN_WINDOW <= reads.documents <= 2 * (IN_WINDOW + 1)
    # PostgreSQL: no sequential scan of the source table; rows read through indexes only,
    # a small multiple of the window's (a count, the rows, re-reads by key).
    assert (after["seq_scan"], after["seq_tup_read"]) == (before["seq_scan"],
                                                          before["seq_tup_read"])
    assert after["idx_scan"] > before["idx_scan"]
    assert after["idx_tup_fetch"] - before["idx_tup_fetch"] <= 5 * (IN_WINDOW + 1)


def test_a_full_scan_in_process_is_one_chunk_per_entity_without_bound_queries(
    pg_url: str, pg_engine: sa.Engine, mongo_db: Database[Any], config: ReconConfig
) -> None:
    seed(pg_engine, mongo_db, config, clients=12)
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    sa.event.listen(sa.Engine, "before_cursor_execute", record)  # every engine of the run
    try:
        result = run_job(pg_url, mongo_db, full_scan=True, dry_run=True)
    finally:
        sa.event.remove(sa.Engine, "before_cursor_execute", record)
    assert result.success
    chunk_steps = {e.step_key for e in result.all_events
                   if e.step_key and "diff_chunk_op[" in e.step_key}
    assert len(chunk_steps) == len(config.entities)
    tables = {f"FROM {e.source.table}" for e in config.entities}
    counted = [s for s in seen if "row_number" in s
               or ("count(" in s.lower() and any(t in s for t in tables))]
    assert counted == []


def test_a_multiprocess_run_on_the_embedded_server_is_one_chunk_per_entity(
    pg_url: str, pg_engine: sa.Engine, mongo_db: Database[Any], config: ReconConfig,
    dagster_postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    servers: ServerUrls
) -> None:
    """Out of process, chunks would run in parallel; but secantusdb scans the whole
    collection for each key range, so `chunk_size` (10 here) does not split the scan."""
    if servers.mongodb_port is None:
        pytest.skip("MONGODB_URL names another server: it may serve key ranges")
    mapping = mapping_with(tmp_path, chunk_size=10)
    seeded = seed(pg_engine, mongo_db, config, clients=12)
    set_step_environment(monkeypatch, pg_url, mongo_db, tmp_path / "home",
                         dagster_postgres_url, mapping)
    with DagsterInstance.get() as instance:
        result = execute_job(
            reconstructable(reconciliation_job_def), instance=instance,
            tags={"dagster/partition": last_complete_hour(SEED_NOW)},
            run_config={**recon_pipeline.run_config(window_start=WINDOW_START,
                                                    window_end=WINDOW_END),
                        "execution": {"config": {"multiprocess": {"max_concurrent": 2}}}})
        assert result.success
        steps = {e.step_key for e in instance.all_logs(result.run_id)
                 if e.dagster_event and e.dagster_event.event_type
                 == DagsterEventType.STEP_START and e.step_key}
    assert len([s for s in steps if "diff_chunk_op[" in s]) == len(config.entities)
    [row] = reports.recent_reports(pg_engine, 1)
    assert {n: row[n] for n in seeded.counts} == seeded.counts

"""Chunk planning never multiplies scans (issue 12): one chunk per entity unless the
chunks run in parallel on a server that reads key ranges from an index; a windowed plan
reads what the window holds, never the whole table."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from pymongo.database import Database

from recon_pipeline.engine.extract import (
    AccessPath,
    ChunkPlan,
    key_range_chunks,
    plan_entity,
)
from recon_pipeline.engine.window import RunWindow
from recon_pipeline.model.mapping import ReconConfig
from recon_pipeline.stores.mongo import SECANTUS_BUILD_KEY, serves_key_ranges
from recon_pipeline.stores.schema import (
    ensure_updated_at_indexes,
    missing_index_warning,
)
from recon_pipeline.stores.source import estimate_rows, updated_at_index_missing
from recon_pipeline_tests.conftest import ServerUrls
from recon_pipeline_tests.dagster_support import WINDOW_END, WINDOW_START

ENTITY = "incoming_emails"
WINDOW = RunWindow(WINDOW_START, WINDOW_END)
FULL_SCAN = RunWindow(WINDOW_START, WINDOW_END, full_scan=True)


def seed_emails(engine: sa.Engine, rows: int, in_window: int, *,
                analyse: bool = True) -> None:
    """`rows` source rows changed long before the window, the last `in_window` inside it.
    Autovacuum is off for the table, so whether it was analysed is the test's choice."""
    with engine.begin() as conn:
        conn.execute(sa.text(
            "alter table incoming_emails set (autovacuum_enabled = false)"))
        conn.execute(sa.text(
            "insert into incoming_emails (id, client_ref, subject, updated_at)"
            " select i, 'C' || i, 'subject ' || i,"
            "  case when i > :n - :w then :recent else :old end"
            " from generate_series(1, :n) i"),
            {"n": rows, "w": in_window, "recent": WINDOW_END - timedelta(hours=1),
             "old": WINDOW_START - timedelta(days=30)})
        if analyse:
            conn.execute(sa.text("analyze incoming_emails"))


@contextmanager
def statements(engine: sa.Engine) -> Iterator[list[str]]:
    """Every SQL statement the engine runs inside the block."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


def test_a_full_scan_in_one_chunk_asks_the_database_nothing(
    pg_engine: sa.Engine, config: ReconConfig
) -> None:
    seed_emails(pg_engine, 50, 0)
    with statements(pg_engine) as seen:
        plan = plan_entity(pg_engine, config.entity(ENTITY), FULL_SCAN, chunk_size=10)
    assert plan == [ChunkPlan(ENTITY, 0, None, None, AccessPath.SCAN, None)]
    assert seen == []  # no chunk bound, no count: the scan itself is the only read


@pytest.mark.parametrize(("parallel", "server_serves_ranges", "chunks"), [
    (True, True, 6), (True, False, 1), (False, True, 1), (False, False, 1)],
    ids=["parallel-capable_server", "parallel-secantusdb", "in_process-capable_server",
         "in_process-secantusdb"])
def test_key_ranges_only_for_parallel_chunks_on_a_server_that_reads_ranges_from_an_index(
    parallel: bool, server_serves_ranges: bool, chunks: int, pg_engine: sa.Engine,
    config: ReconConfig
) -> None:
    seed_emails(pg_engine, 50, 0)
    key_ranges = key_range_chunks(parallel=parallel, server_serves_ranges=server_serves_ranges)
    plan = plan_entity(pg_engine, config.entity(ENTITY), FULL_SCAN, chunk_size=10,
                       key_ranges=key_ranges)
    assert len(plan) == chunks
    assert (plan[0].lower, plan[-1].upper) == (None, None)
    assert [c.upper for c in plan[:-1]] == [c.lower for c in plan[1:]]  # they tile the keys
    assert [c.upper for c in plan[:-1]] == list(range(10, 51, 10))[:chunks - 1]


def test_the_embedded_server_is_known_not_to_serve_key_ranges(
    servers: ServerUrls, mongo_db: Database[Any]
) -> None:
    build = mongo_db.client.admin.command("buildInfo")
    assert serves_key_ranges(mongo_db) is (SECANTUS_BUILD_KEY not in build)
    if servers.mongodb_port is not None:  # the suite started secantusdb itself
        assert serves_key_ranges(mongo_db) is False


@pytest.mark.parametrize(("in_window", "access"), [(10, AccessPath.LOOKUP),
                                                    (300, AccessPath.SCAN)],
                         ids=["sparse", "dense"])
@pytest.mark.parametrize("analysed", [True, False], ids=["analysed", "never_analysed"])
def test_a_window_is_judged_dense_or_sparse_without_reading_the_table(
    in_window: int, access: AccessPath, analysed: bool, pg_engine: sa.Engine,
    config: ReconConfig
) -> None:
    """The table's size is the catalog's estimate; never analysed, it is counted only up
    to the size that makes the window sparse (a LIMIT), never wholly."""
    entity = config.entity(ENTITY)
    seed_emails(pg_engine, 1000, in_window, analyse=analysed)
    assert (estimate_rows(pg_engine, entity) is None) is not analysed
    with statements(pg_engine) as seen:
        plan = plan_entity(pg_engine, entity, WINDOW, chunk_size=10)
    assert [(c.lower, c.upper, c.access, c.rows) for c in plan] == [
        (None, None, access, in_window)]
    reads = [s for s in seen if "incoming_emails" in s]
    assert all("updated_at >=" in s or "LIMIT" in s for s in reads), reads
    assert all("row_number" not in s for s in seen)


def test_a_mapped_table_without_an_updated_at_index_is_named_and_db_init_builds_one(
    pg_engine: sa.Engine, config: ReconConfig
) -> None:
    entity = config.entity(ENTITY)
    seed_emails(pg_engine, 20, 2)
    assert not updated_at_index_missing(pg_engine, entity)  # db init made the demo's
    with pg_engine.begin() as conn:
        conn.execute(sa.text("drop index ix_incoming_emails_updated_at"))
    assert updated_at_index_missing(pg_engine, entity)
    assert missing_index_warning(entity) == (
        "mapping entity 'incoming_emails': table 'incoming_emails' has no index on "
        "'updated_at', so every windowed run reads the whole table; run `recon-pipeline db "
        "init`, or: CREATE INDEX CONCURRENTLY ix_incoming_emails_updated_at ON "
        "incoming_emails (updated_at)")
    assert ensure_updated_at_indexes(pg_engine, config.entities) == [
        "index ix_incoming_emails_updated_at (concurrently)"]
    assert not updated_at_index_missing(pg_engine, entity)
    assert ensure_updated_at_indexes(pg_engine, config.entities) == []

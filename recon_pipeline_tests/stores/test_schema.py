import threading
import time

import pytest
import sqlalchemy as sa

from recon_pipeline.stores.schema import init_schema, metadata


def test_db_init_creates_every_table_and_index_then_nothing(fresh_database: str) -> None:
    engine = sa.create_engine(fresh_database)
    first = init_schema(engine)
    second = init_schema(engine)
    inspector = sa.inspect(engine)
    assert set(inspector.get_table_names()) == {t.name for t in metadata.sorted_tables} == {
        "outbox_messages", "idempotency_keys", "reconciliation_reports",
        "reconciliation_mismatches", "reconciliation_run_lock", "clients", "creditor_debts",
        "incoming_emails"}
    assert sum(item.startswith("table ") for item in first) == 8
    assert "index ix_outbox_messages_due" in first
    assert "index ix_creditor_debts_updated_at" in first
    assert second == []
    engine.dispose()


def test_db_init_restores_a_dropped_index_only(fresh_database: str) -> None:
    engine = sa.create_engine(fresh_database)
    init_schema(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("drop index ix_outbox_messages_due"))
    assert init_schema(engine) == ["index ix_outbox_messages_due"]
    engine.dispose()


def test_outbox_defaults_match_the_spec(pg_engine: sa.Engine) -> None:
    with pg_engine.begin() as conn:
        row = conn.execute(sa.text(
            "insert into outbox_messages (aggregate_type, aggregate_id, operation, payload)"
            " values ('clients', 'C1', 'upsert', '{}') returning status, attempts,"
            " next_attempt_at is not null, created_at is not null, processed_at")).one()
    assert tuple(row) == ("pending", 0, True, True, None)


def _clients_with_rows(engine: sa.Engine, rows: int) -> None:
    """The application's `clients` table holding rows, its updated_at index gone."""
    with engine.begin() as conn:
        conn.execute(sa.text("drop index ix_clients_updated_at"))
        conn.execute(sa.text(
            "insert into clients (client_ref, status, updated_at)"
            " select 'C' || i, 'active', timestamptz '2026-03-01 00:00Z' + i * interval '1 s'"
            " from generate_series(1, :n) i"), {"n": rows})


def _index_state(engine: sa.Engine, name: str) -> tuple[bool, str] | None:
    with engine.connect() as conn:
        row = conn.execute(sa.text(
            "select i.indisvalid, pg_get_indexdef(i.indexrelid) from pg_index i"
            " join pg_class c on c.oid = i.indexrelid where c.relname = :name"),
            {"name": name}).one_or_none()
    return None if row is None else (row[0], row[1])


def _count(engine: sa.Engine, table: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(f"select count(*) from {table}")).scalar_one())


CLIENTS_INDEX = "CREATE INDEX ix_clients_updated_at ON public.clients USING btree (updated_at)"


def test_db_init_builds_an_index_on_a_table_with_rows_concurrently(pg_engine: sa.Engine) -> None:
    _clients_with_rows(pg_engine, 500)
    assert _index_state(pg_engine, "ix_clients_updated_at") is None
    assert init_schema(pg_engine) == ["index ix_clients_updated_at (concurrently)"]
    assert _index_state(pg_engine, "ix_clients_updated_at") == (True, CLIENTS_INDEX)
    assert init_schema(pg_engine) == []
    assert _count(pg_engine, "clients") == 500


def test_db_init_rebuilds_an_index_an_interrupted_build_left_invalid(
    pg_engine: sa.Engine,
) -> None:
    _clients_with_rows(pg_engine, 20)
    with pg_engine.connect() as conn:
        conn.execute(sa.text("update clients set updated_at = timestamptz '2026-03-01 00:00Z'"))
        conn.commit()
        # A concurrent build that fails half way leaves its index behind, invalid.
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        with pytest.raises(sa.exc.IntegrityError):
            conn.execute(sa.text("create unique index concurrently ix_clients_updated_at"
                                 " on clients (updated_at)"))
    assert _index_state(pg_engine, "ix_clients_updated_at") == (
        False, CLIENTS_INDEX.replace("CREATE INDEX", "CREATE UNIQUE INDEX"))
    assert init_schema(pg_engine) == [
        "index ix_clients_updated_at (concurrently, rebuilt: an interrupted build had left it"
        " invalid)"]
    assert _index_state(pg_engine, "ix_clients_updated_at") == (True, CLIENTS_INDEX)
    assert init_schema(pg_engine) == []
    assert _count(pg_engine, "clients") == 20


def test_db_init_never_blocks_the_applications_writes(pg_engine: sa.Engine) -> None:
    """An application transaction is writing `clients` while db init builds its index. A
    plain CREATE INDEX would queue for a SHARE lock behind it, and every later write would
    queue behind that; the concurrent build lets a new writer take its lock at once
    (NOWAIT: no timing involved) while the build waits for the open transaction."""
    _clients_with_rows(pg_engine, 100)
    result: list[object] = []
    with pg_engine.connect() as open_writer, pg_engine.connect() as late_writer:
        open_writer.execute(sa.text("insert into clients (client_ref) values ('OPEN')"))
        builder = threading.Thread(target=lambda: result.append(_init(pg_engine)))
        builder.start()
        try:
            _wait_for_the_build_to_wait(pg_engine)
            late_writer.execute(sa.text("lock table clients in row exclusive mode nowait"))
            late_writer.execute(sa.text("insert into clients (client_ref) values ('LATE')"))
            late_writer.commit()
        finally:
            open_writer.commit()
            builder.join(timeout=120)
    assert result == [["index ix_clients_updated_at (concurrently)"]]
    assert _index_state(pg_engine, "ix_clients_updated_at") == (True, CLIENTS_INDEX)
    assert _count(pg_engine, "clients") == 102


def _init(engine: sa.Engine) -> object:
    try:
        return init_schema(engine)
    except Exception as error:  # noqa: BLE001 - reported by the assertion on the result
        return error


def _wait_for_the_build_to_wait(engine: sa.Engine) -> None:
    """Until db init's CREATE INDEX waits on a lock (polled, generous deadline)."""
    deadline = time.monotonic() + 120
    with engine.connect() as conn:
        while not conn.execute(sa.text(
                "select exists (select 1 from pg_stat_activity where datname ="
                " current_database() and query ilike 'create index%ix_clients_updated_at%'"
                " and wait_event_type = 'Lock')")).scalar():
            conn.commit()
            assert time.monotonic() < deadline, "db init never reached its index build"
            time.sleep(0.05)


def test_two_db_inits_at_once_build_the_index_once(pg_engine: sa.Engine) -> None:
    """The second waits for the first (polling its lock: a waiting lock call would hold a
    snapshot the concurrent build has to wait for, a deadlock), then finds nothing to do."""
    _clients_with_rows(pg_engine, 200)
    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(_init(pg_engine)))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(results, key=len) == [[], ["index ix_clients_updated_at (concurrently)"]]
    assert _index_state(pg_engine, "ix_clients_updated_at") == (True, CLIENTS_INDEX)
    assert _count(pg_engine, "clients") == 200

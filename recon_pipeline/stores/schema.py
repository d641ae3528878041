"""The PostgreSQL schema of SPEC 4.1 (saga infrastructure) and 4.2 (demo domain), as
SQLAlchemy Core tables, and the idempotent `db init`."""

from __future__ import annotations

import time
from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import JSONB

from recon_pipeline.model.mapping import EntityMapping
from recon_pipeline.stores.source import updated_at_index_missing

metadata = sa.MetaData()
_POSTGRES = postgresql.dialect()

TIMESTAMPTZ = sa.DateTime(timezone=True)
NOW = sa.text("now()")

outbox_messages = sa.Table(
    "outbox_messages", metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("aggregate_type", sa.Text, nullable=False),
    sa.Column("aggregate_id", sa.Text, nullable=False),
    sa.Column("operation", sa.Text, nullable=False),
    sa.Column("payload", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("status", sa.Text, nullable=False, server_default="pending"),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_error", sa.Text),
    sa.Column("next_attempt_at", TIMESTAMPTZ, nullable=False, server_default=NOW),
    sa.Column("created_at", TIMESTAMPTZ, nullable=False, server_default=NOW),
    sa.Column("processed_at", TIMESTAMPTZ),
    # Claiming scans only due messages; the partial index keeps that scan small.
    sa.Index("ix_outbox_messages_due", "next_attempt_at", "id",
             postgresql_where=sa.text("status in ('pending', 'failed')")),
    sa.Index("ix_outbox_messages_sent_processed", "processed_at",
             postgresql_where=sa.text("status = 'sent'")),
)

idempotency_keys = sa.Table(
    "idempotency_keys", metadata,
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("scope", sa.Text),
    sa.Column("response", JSONB),
    sa.Column("created_at", TIMESTAMPTZ, nullable=False, server_default=NOW),
    sa.Column("expires_at", TIMESTAMPTZ, nullable=False),
    sa.Index("ix_idempotency_keys_expires_at", "expires_at"),
)

REPORT_COUNTS = (
    "records_checked", "mismatches_found", "missing_in_mongo", "field_mismatches",
    "orphans_in_mongo", "repaired", "repair_failed", "repair_skipped", "outbox_attempted",
    "outbox_sent", "outbox_failed", "outbox_dead", "outbox_stale", "idempotency_keys_deleted",
    "outbox_messages_deleted",
)

reconciliation_reports = sa.Table(
    "reconciliation_reports", metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("run_id", sa.Text, nullable=False),
    sa.Column("partition_key", sa.Text),
    sa.Column("window_start", TIMESTAMPTZ),
    sa.Column("window_end", TIMESTAMPTZ),
    sa.Column("full_scan", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("dry_run", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("started_at", TIMESTAMPTZ, nullable=False, server_default=NOW),
    sa.Column("finished_at", TIMESTAMPTZ),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("mongo_available", sa.Boolean, nullable=False, server_default=sa.true()),
    *(sa.Column(name, sa.Integer, nullable=False, server_default="0") for name in REPORT_COUNTS),
    sa.Column("details", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Index("ix_reconciliation_reports_started_at", "started_at"),
)

reconciliation_mismatches = sa.Table(
    "reconciliation_mismatches", metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("report_id", sa.BigInteger, sa.ForeignKey("reconciliation_reports.id"),
              nullable=False),
    sa.Column("entity", sa.Text, nullable=False),
    sa.Column("record_key", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("fields", JSONB),
    sa.Column("repair_status", sa.Text, nullable=False),
    sa.Column("repair_error", sa.Text),
    sa.Column("detected_at", TIMESTAMPTZ, nullable=False, server_default=NOW),
    sa.Index("ix_reconciliation_mismatches_report_id", "report_id"),
    sa.Index("ix_reconciliation_mismatches_detected_at", "detected_at"),
)

# The run lock of SPEC 7 (stores/run_lock.py): one row per lock, `run_id` NULL when free.
reconciliation_run_lock = sa.Table(
    "reconciliation_run_lock", metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("run_id", sa.Text),
    sa.Column("holder", sa.Text),  # host:pid of the step that last refreshed it, for people
    # The step process running now (NULL between steps) and where that pid means something
    # (host, boot, pid namespace): a waiter there may see that it died.
    sa.Column("pid", sa.Integer),
    sa.Column("pid_scope", sa.Text),
    sa.Column("active_steps", sa.Integer, nullable=False, server_default="0"),
    sa.Column("failed", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("acquired_at", TIMESTAMPTZ),
    sa.Column("heartbeat_at", TIMESTAMPTZ),
    sa.Column("expires_at", TIMESTAMPTZ),
)

# --- demo domain (SPEC 4.2) -------------------------------------------------------------

clients = sa.Table(
    "clients", metadata,
    sa.Column("client_ref", sa.Text, primary_key=True),
    sa.Column("first_name", sa.Text),
    sa.Column("last_name", sa.Text),
    sa.Column("email", sa.Text),
    sa.Column("status", sa.Text),
    sa.Column("created_at", TIMESTAMPTZ),
    sa.Column("updated_at", TIMESTAMPTZ),
    sa.Index("ix_clients_updated_at", "updated_at"),
)

creditor_debts = sa.Table(
    "creditor_debts", metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("client_ref", sa.Text, sa.ForeignKey("clients.client_ref")),
    sa.Column("creditor_name", sa.Text),
    sa.Column("creditor_email", sa.Text),
    sa.Column("debt_amount", sa.Numeric(12, 2)),
    sa.Column("currency", sa.CHAR(3)),
    sa.Column("updated_at", TIMESTAMPTZ),
    sa.Index("ix_creditor_debts_updated_at", "updated_at"),
    sa.Index("ix_creditor_debts_client_ref", "client_ref"),
)

incoming_emails = sa.Table(
    "incoming_emails", metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("client_ref", sa.Text),
    sa.Column("from_address", sa.Text),
    sa.Column("subject", sa.Text),
    sa.Column("received_at", TIMESTAMPTZ),
    sa.Column("processing_status", sa.Text),
    sa.Column("extracted_amount", sa.Numeric(12, 2)),
    sa.Column("mongo_sync_status", sa.Text, server_default="pending"),
    sa.Column("mongo_synced_at", TIMESTAMPTZ),
    sa.Column("mongo_sync_error", sa.Text),
    sa.Column("created_at", TIMESTAMPTZ),
    sa.Column("updated_at", TIMESTAMPTZ),
    sa.Index("ix_incoming_emails_updated_at", "updated_at"),
)


DB_INIT_LOCK = "recon_pipeline.db_init"
LOCK_POLL_SECONDS = 0.2


def init_schema(engine: sa.Engine) -> list[str]:
    """Create every missing table and index; returns what was created (empty when none).

    A missing index on a table that already holds rows (an application's table, or ours
    in use) is built with CREATE INDEX CONCURRENTLY outside any transaction, so the
    application's writes never wait for it; an index an interrupted concurrent build left
    invalid is dropped and built again the same way. New and empty tables get theirs in
    the one transaction that creates the tables."""
    created: list[str] = []
    with engine.connect() as conn:
        _take_session_lock(conn, DB_INIT_LOCK)
        try:
            with conn.begin():
                concurrent = _create_missing(conn, created)
            if concurrent:
                _build_concurrently(conn, concurrent, created)
        finally:
            conn.execute(sa.text("select pg_advisory_unlock(hashtext(:n))"), {"n": DB_INIT_LOCK})
            conn.commit()
    return created


def _take_session_lock(conn: sa.Connection, name: str) -> None:
    """Serialise concurrent `db init`s (create-if-missing is not atomic on its own).

    Polled rather than waited for in pg_advisory_lock: a concurrent index build waits for
    every transaction holding an older snapshot, a waiting lock call among them, and
    that waiter would be waiting for the build's own session: a deadlock."""
    while True:
        got = conn.execute(sa.text("select pg_try_advisory_lock(hashtext(:n))"),
                           {"n": name}).scalar()
        conn.commit()
        if got:
            return
        time.sleep(LOCK_POLL_SECONDS)


def _create_missing(conn: sa.Connection, created: list[str]) -> list[tuple[sa.Index, bool]]:
    """Create missing tables, and missing indexes of empty tables; return the indexes to
    build concurrently, each with whether an invalid one must be dropped first."""
    inspector = sa.inspect(conn)
    existing_tables = set(inspector.get_table_names())
    validity: dict[str | None, bool] = {name: valid for name, valid in conn.execute(sa.text(
        "select c.relname, i.indisvalid from pg_index i"
        " join pg_class c on c.oid = i.indexrelid"
        " where c.relnamespace = current_schema()::regnamespace"))}
    concurrent: list[tuple[sa.Index, bool]] = []
    for table in metadata.sorted_tables:
        if table.name not in existing_tables:
            table.create(conn)
            created.append(f"table {table.name}")
            created += [f"index {index.name}" for index in table.indexes]
            continue
        missing = [index for index in table.indexes if validity.get(index.name) is not True]
        if not missing:
            continue
        has_rows = conn.execute(sa.select(sa.exists().select_from(table))).scalar()
        for index in missing:
            invalid = index.name in validity
            if has_rows or invalid:
                concurrent.append((index, invalid))
            else:
                index.create(conn)
                created.append(f"index {index.name}")
    return concurrent


def _build_concurrently(conn: sa.Connection, indexes: list[tuple[sa.Index, bool]],
                        created: list[str]) -> None:
    """CREATE INDEX CONCURRENTLY (it cannot run inside a transaction block)."""
    conn.execution_options(isolation_level="AUTOCOMMIT")
    try:
        for index, invalid in indexes:
            concurrent = _concurrent_copy(index)
            if invalid:
                conn.execute(sa.schema.DropIndex(concurrent, if_exists=True))
            conn.execute(sa.schema.CreateIndex(concurrent, if_not_exists=True))
            rebuilt = ", rebuilt: an interrupted build had left it invalid" if invalid else ""
            created.append(f"index {index.name} (concurrently{rebuilt})")
    finally:
        conn.commit()  # a no-op under autocommit, but the isolation level can change after
        conn.execution_options(isolation_level=conn.default_isolation_level)


def _concurrent_copy(index: sa.Index) -> sa.Index:
    """The index with postgresql_concurrently set, on a copy of its table: the shared
    metadata stays as declared (new tables keep building theirs transactionally)."""
    if not isinstance(index.table, sa.Table):
        raise TypeError(f"index {index.name} is not bound to a table")
    copy = index.table.to_metadata(sa.MetaData())
    [twin] = [ix for ix in copy.indexes if ix.name == index.name]
    twin.dialect_options["postgresql"]["concurrently"] = True
    return twin


def updated_at_index(entity: EntityMapping) -> sa.Index:
    """The index a windowed run reads the mapped source table through (`updated_at`
    bounds): without it every hourly run reads the whole table."""
    table = sa.Table(entity.source.table, sa.MetaData(), sa.Column(entity.source.updated_at))
    # PostgreSQL cuts a name at 63 bytes; the cut name is as good a name.
    name = f"ix_{entity.source.table}_{entity.source.updated_at}"[:63]
    return sa.Index(name, table.c[entity.source.updated_at])


def missing_index_warning(entity: EntityMapping) -> str:
    index = updated_at_index(entity)
    statement = str(sa.schema.CreateIndex(index).compile(dialect=_POSTGRES)).replace(
        "CREATE INDEX", "CREATE INDEX CONCURRENTLY", 1)
    return (f"mapping entity '{entity.name}': table '{entity.source.table}' has no index on "
            f"'{entity.source.updated_at}', so every windowed run reads the whole table; "
            f"run `recon-pipeline db init`, or: {statement}")


def ensure_updated_at_indexes(engine: sa.Engine, entities: Iterable[EntityMapping]) -> list[str]:
    """An index on each mapped source table's `updated_at` (SPEC 4: the indexes the
    extraction queries need), where no valid index leads with that column; built with
    CREATE INDEX CONCURRENTLY (SPEC 8: the application's writes never wait for it).
    Returns what was created."""
    wanted: dict[str, tuple[sa.Index, bool]] = {}
    for entity in entities:
        if not updated_at_index_missing(engine, entity) or _partitioned(engine, entity):
            continue  # a partitioned table cannot be indexed concurrently: the run warns
        index = updated_at_index(entity)
        wanted[str(index.name)] = (index, _invalid(engine, str(index.name)))
    created: list[str] = []
    if wanted:
        with engine.connect() as conn:
            _build_concurrently(conn, list(wanted.values()), created)
    return created


def _invalid(engine: sa.Engine, name: str) -> bool:
    """An invalid index of that name exists (an interrupted build left it): drop it first.
    A valid one of that name on other columns is left alone (the build is then a no-op)."""
    with engine.connect() as conn:
        return conn.execute(sa.text(
            "select exists (select 1 from pg_index"
            " where indexrelid = to_regclass(quote_ident(:n)) and not indisvalid)"),
            {"n": name}).scalar() is True


def _partitioned(engine: sa.Engine, entity: EntityMapping) -> bool:
    with engine.connect() as conn:
        return conn.execute(sa.text(
            "select relkind = 'p' from pg_class where oid = to_regclass(quote_ident(:t))"),
            {"t": entity.source.table}).scalar() is True

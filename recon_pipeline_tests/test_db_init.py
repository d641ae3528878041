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

"""Cleanup (SPEC 6): exact counts, exact survivors, bounded batches, `dead` kept forever."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from recon_pipeline.engine.cleanup import CleanupResult, clean_up
from recon_pipeline.model.mapping import CleanupSettings, Settings
from recon_pipeline.stores import schema

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def insert(engine: sa.Engine, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    with engine.begin() as conn:
        conn.execute(table.insert(), rows)


def remaining(engine: sa.Engine, column: sa.Column[Any]) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(column).order_by(column)).scalars())


def message(ref: str, status: str, processed_at: datetime | None) -> dict[str, Any]:
    return {"aggregate_type": "incoming_emails", "aggregate_id": ref, "operation": "upsert",
            "payload": {}, "status": status, "processed_at": processed_at,
            "created_at": NOW - 400 * DAY, "next_attempt_at": NOW - 400 * DAY}


def seed(engine: sa.Engine) -> None:
    insert(engine, schema.idempotency_keys, [
        {"key": f"expired-{i}", "expires_at": NOW - timedelta(seconds=1 + i)} for i in range(5)
    ] + [
        {"key": "expires-now", "expires_at": NOW},  # not expired yet: `expires_at < now`
        {"key": "live", "expires_at": NOW + DAY},
    ])
    insert(engine, schema.outbox_messages, [
        *(message(f"old-sent-{i}", "sent", NOW - 31 * DAY - i * DAY) for i in range(3)),
        message("sent-at-cutoff", "sent", NOW - 30 * DAY),
        message("recent-sent", "sent", NOW - DAY),
        message("old-dead", "dead", None),
        message("dead-with-processed-at", "dead", NOW - 365 * DAY),
        message("old-failed", "failed", None),
        message("old-pending", "pending", None),
    ])
    with engine.begin() as conn:
        report_id = conn.execute(
            sa.insert(schema.reconciliation_reports).returning(schema.reconciliation_reports.c.id),
            {"run_id": "r1", "status": "success"}).scalar_one()
    insert(engine, schema.reconciliation_mismatches, [
        {"report_id": report_id, "entity": "clients", "record_key": key, "kind": "orphan_in_mongo",
         "repair_status": "reported", "detected_at": detected_at}
        for key, detected_at in [("old-1", NOW - 91 * DAY), ("old-2", NOW - 200 * DAY),
                                 ("at-cutoff", NOW - 90 * DAY), ("recent", NOW - DAY)]
    ])


@pytest.mark.parametrize("batch_size", [2, 5000], ids=["batches-of-2", "one-batch"])
def test_cleanup_deletes_exactly_what_has_expired(pg_engine: sa.Engine, batch_size: int) -> None:
    seed(pg_engine)
    settings = replace(Settings(), cleanup=CleanupSettings(
        outbox_retention_days=30, mismatch_retention_days=90, batch_size=batch_size))

    result = clean_up(pg_engine, settings, now=NOW)

    assert result == CleanupResult(idempotency_keys_deleted=5, outbox_messages_deleted=3,
                                   mismatches_deleted=2)
    assert remaining(pg_engine, schema.idempotency_keys.c.key) == ["expires-now", "live"]
    assert remaining(pg_engine, schema.outbox_messages.c.aggregate_id) == sorted([
        "sent-at-cutoff", "recent-sent", "old-dead", "dead-with-processed-at", "old-failed",
        "old-pending"])
    assert remaining(pg_engine, schema.reconciliation_mismatches.c.record_key) == \
        ["at-cutoff", "recent"]


def test_cleanup_again_deletes_nothing(pg_engine: sa.Engine) -> None:
    seed(pg_engine)
    clean_up(pg_engine, Settings(), now=NOW)

    assert clean_up(pg_engine, Settings(), now=NOW) == CleanupResult(0, 0, 0)


def test_dead_messages_are_kept_however_old(pg_engine: sa.Engine) -> None:
    insert(pg_engine, schema.outbox_messages, [
        message(f"dead-{i}", "dead", NOW - 1000 * DAY) for i in range(3)])

    result = clean_up(pg_engine, Settings(), now=NOW + 1000 * DAY)

    assert result.outbox_messages_deleted == 0
    assert len(remaining(pg_engine, schema.outbox_messages.c.id)) == 3


def test_cleanup_settings_refuse_a_batch_size_below_one() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        CleanupSettings(batch_size=0)

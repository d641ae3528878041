"""Small, explicit data builders for engine tests: source rows in PostgreSQL and their
consistent MongoDB copies written through the one projection."""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from pymongo.database import Database

from recon_pipeline.engine.projection import Presence, upsert_ops
from recon_pipeline.engine.report import RunReport
from recon_pipeline.engine.window import RunWindow
from recon_pipeline.model.mapping import ReconConfig
from recon_pipeline.stores import schema

T0 = datetime(2026, 3, 1, 10, 0, 0, 123456, tzinfo=UTC)


def client_row(ref: str, *, at: datetime = T0, **overrides: Any) -> dict[str, Any]:
    return {"client_ref": ref, "first_name": "Ada", "last_name": "Lovelace",
            "email": f"{ref.lower()}@example.com", "status": "active", "created_at": at,
            "updated_at": at, **overrides}


def debt_row(debt_id: int, ref: str, *, at: datetime = T0, **overrides: Any) -> dict[str, Any]:
    return {"id": debt_id, "client_ref": ref, "creditor_name": f"Creditor {debt_id}",
            "creditor_email": f"c{debt_id}@bank.example", "debt_amount": Decimal("100.10"),
            "currency": "EUR", "updated_at": at, **overrides}


def email_row(email_id: int, ref: str, *, at: datetime = T0, **overrides: Any) -> dict[str, Any]:
    return {"id": email_id, "client_ref": ref, "from_address": f"n{email_id}@x.example",
            "subject": f"Statement {email_id}", "received_at": at,
            "processing_status": "new", "extracted_amount": Decimal("12.50"),
            "mongo_sync_status": "pending", "mongo_synced_at": None, "mongo_sync_error": None,
            "created_at": at, "updated_at": at, **overrides}


def insert(engine: sa.Engine, table: sa.Table, *rows: dict[str, Any]) -> None:
    with engine.begin() as conn:
        conn.execute(table.insert(), list(rows))


def add_outbox(engine: sa.Engine, messages: list[tuple[str, Any, dict[str, Any]]]) -> None:
    """`upsert` outbox messages, due now: (aggregate type, aggregate id, payload)."""
    with engine.begin() as conn:
        conn.execute(sa.text(
            "insert into outbox_messages (aggregate_type, aggregate_id, operation, payload)"
            " values (:t, :k, 'upsert', cast(:p as jsonb))"),
            [{"t": t, "k": str(k), "p": json.dumps(p)} for t, k, p in messages])


def mirror(db: Database, config: ReconConfig, entity_name: str, *rows: dict[str, Any],
           presence: Presence | None = None) -> None:
    """Write rows to MongoDB exactly as the pipeline would (a consistent copy)."""
    entity = config.entity(entity_name)
    default = Presence.PARENT_ONLY if entity.target.embedded else Presence.ABSENT
    ops = [op for row in rows for op in upsert_ops(entity, row, presence or default)]
    db[entity.target.collection].bulk_write(ops, ordered=True)


def window(start: datetime = T0 - timedelta(hours=1), end: datetime = T0 + timedelta(hours=1),
           *, full_scan: bool = False) -> RunWindow:
    return RunWindow(start, end, full_scan)


def run(engine: sa.Engine, db: Database, run_window: RunWindow | None = None, *,
        settings: dict[str, Any] | None = None, entities: tuple[str, ...] | None = None,
        dry_run: bool = False) -> RunReport:
    """A whole run through `reconciliation_job` over an explicit window, with the packaged
    mapping and `settings` replaced in it; fails the test when the run fails."""
    from recon_pipeline_tests.dagster_support import mapping_with, report_of, run_job

    chosen = run_window or window()
    with tempfile.TemporaryDirectory() as directory:
        result = run_job(
            engine.url.render_as_string(hide_password=False), db,
            mapping_path=mapping_with(Path(directory), **(settings or {})),
            window_start=chosen.start, window_end=chosen.end, full_scan=chosen.full_scan,
            entities=entities, dry_run=dry_run)
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    return report_of(engine, result)


def mismatch_rows(engine: sa.Engine, report_id: int) -> list[tuple[str, str, str, str]]:
    m = schema.reconciliation_mismatches.c
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(
            sa.select(m.entity, m.record_key, m.kind, m.repair_status)
            .where(m.report_id == report_id).order_by(m.entity, m.record_key, m.kind))]

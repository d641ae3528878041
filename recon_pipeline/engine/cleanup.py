"""Cleanup (SPEC 6): expired idempotency keys, `sent` outbox messages past their retention,
old mismatch records. `dead` messages are never deleted: they wait for a person."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from recon_pipeline.model.mapping import Settings
from recon_pipeline.stores.retention import delete_in_batches
from recon_pipeline.stores.schema import (
    idempotency_keys,
    outbox_messages,
    reconciliation_mismatches,
)


@dataclass(frozen=True, slots=True)
class CleanupResult:
    idempotency_keys_deleted: int = 0
    outbox_messages_deleted: int = 0
    mismatches_deleted: int = 0


def clean_up(engine: sa.Engine, settings: Settings, *,
             now: datetime | None = None) -> CleanupResult:
    """Delete what has outlived its use, in bounded batches of `cleanup.batch_size`."""
    now = now or datetime.now(UTC)
    retention = settings.cleanup
    batch = retention.batch_size
    keys = idempotency_keys.c
    messages = outbox_messages.c
    mismatches = reconciliation_mismatches.c
    outbox_cutoff = now - timedelta(days=retention.outbox_retention_days)
    mismatch_cutoff = now - timedelta(days=retention.mismatch_retention_days)
    return CleanupResult(
        idempotency_keys_deleted=delete_in_batches(
            engine, idempotency_keys, keys.key, keys.expires_at < now, batch),
        outbox_messages_deleted=delete_in_batches(
            engine, outbox_messages, messages.id,
            sa.and_(messages.status == sa.literal("sent", literal_execute=True),
                    messages.processed_at < outbox_cutoff), batch),
        mismatches_deleted=delete_in_batches(
            engine, reconciliation_mismatches, mismatches.id,
            mismatches.detected_at < mismatch_cutoff, batch),
    )

"""The outbox retry and the cleanup, with their figures named as the report's columns
(SPEC 4.1): adapters between the engine's result values and `finish_report`."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from pymongo.database import Database

from recon_pipeline.engine.cleanup import clean_up as clean_up_tables
from recon_pipeline.engine.mapping import ReconConfig
from recon_pipeline.engine.outbox import OutboxResult, deliver_outbox


def retry_outbox(engine: sa.Engine, db: Database[dict[str, Any]], config: ReconConfig, *,
                 progress: Callable[[dict[str, int]], None] | None = None) -> dict[str, int]:
    """Every due message, batch after batch (each batch stamped with the time it is
    claimed); stops at the first MongoDB connection failure. `progress` gets the counts
    so far after each batch."""
    def on_batch(total: OutboxResult) -> None:
        if progress is not None:
            progress(outbox_counts(total))

    return outbox_counts(deliver_outbox(engine, db, config, on_batch=on_batch))


def outbox_counts(result: OutboxResult) -> dict[str, int]:
    return {"outbox_attempted": result.attempted, "outbox_sent": result.sent,
            "outbox_failed": result.failed, "outbox_dead": result.dead,
            "outbox_stale": result.stale}


def clean_up(engine: sa.Engine, config: ReconConfig, now: datetime) -> dict[str, int]:
    result = clean_up_tables(engine, config.settings, now=now)
    return {"idempotency_keys_deleted": result.idempotency_keys_deleted,
            "outbox_messages_deleted": result.outbox_messages_deleted}

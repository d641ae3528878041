"""How far behind the outbox is: the oldest message still due for delivery."""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa

from recon_pipeline.stores.schema import outbox_messages


def oldest_due_age(engine: sa.Engine, now: datetime) -> timedelta | None:
    """Age of the oldest `pending`/`failed` message whose retry is due; None when none is."""
    m = outbox_messages.c
    with engine.connect() as conn:
        oldest = conn.execute(
            sa.select(sa.func.min(m.created_at))
            .where(m.status.in_(("pending", "failed")), m.next_attempt_at <= now)).scalar()
    return None if oldest is None else now - oldest

"""Deleting old rows in bounded batches: each batch is its own short transaction, so a
large backlog never holds locks (or bloats one transaction) for long."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa


def delete_in_batches(engine: sa.Engine, table: sa.Table, key: sa.Column[Any],
                      condition: sa.ColumnElement[bool], batch_size: int) -> int:
    """Delete the rows of `table` matching `condition`, `batch_size` keys at a time;
    returns how many were deleted."""
    if batch_size < 1:
        raise ValueError(f"cleanup batch size must be at least 1, got {batch_size}")
    # SKIP LOCKED: a row another transaction holds is left for the next cleanup.
    chosen = (sa.select(key).where(condition).limit(batch_size)
              .with_for_update(skip_locked=True).scalar_subquery())
    statement = sa.delete(table).where(key.in_(chosen))
    deleted = 0
    while True:
        with engine.begin() as conn:
            count = conn.execute(statement).rowcount
        deleted += count
        if count < batch_size:
            return deleted

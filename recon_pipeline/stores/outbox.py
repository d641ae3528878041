"""The outbox table as delivery sees it: claiming due messages, recording outcomes.

A claim is a `SELECT ... FOR UPDATE SKIP LOCKED` whose transaction the caller keeps open
while the batch is delivered: two deliveries never hold the same message, and a delivery that dies
(SIGKILL, lost connection) rolls back, leaving its messages due again untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY

from recon_pipeline.stores.schema import outbox_messages

# Written as the partial index `ix_outbox_messages_due` says it, so the planner can use it
# (a bound parameter list would hide the predicate from a generic plan).
_DUE = sa.text("outbox_messages.status in ('pending', 'failed')")


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    id: int
    aggregate_type: str
    aggregate_id: str
    operation: str
    payload: Any  # decoded JSON: an object when well-formed, anything otherwise
    attempts: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class FailedDelivery:
    """A message's new state after a failed or refused delivery."""

    id: int
    status: str  # `failed` or `dead`
    attempts: int
    last_error: str
    next_attempt_at: datetime


def _due(now: datetime) -> sa.ColumnElement[bool]:
    """The one definition of a message due for delivery: what a claim takes and what the
    backlog check measures."""
    return sa.and_(_DUE, outbox_messages.c.next_attempt_at <= now)


@dataclass(frozen=True, slots=True)
class Backlog:
    """The messages due for delivery: how many, and the oldest (by creation)."""

    due: int
    oldest_id: int | None
    oldest_age: timedelta | None


def outbox_backlog(engine: sa.Engine, now: datetime) -> Backlog:
    """What the backlog check reports: the due messages, and the oldest one's id and age."""
    m = outbox_messages.c
    with engine.connect() as conn:
        due = conn.execute(sa.select(sa.func.count()).select_from(outbox_messages)
                           .where(_due(now))).scalar_one()
        oldest = conn.execute(sa.select(m.id, m.created_at).where(_due(now))
                              .order_by(m.created_at, m.id).limit(1)).first()
    if oldest is None:
        return Backlog(int(due), None, None)
    return Backlog(int(due), int(oldest.id), now - oldest.created_at)


@dataclass(frozen=True, slots=True)
class DeadLetters:
    """`dead` messages (never deleted: each waits for a person): how many, the newest ids
    and the newest error."""

    total: int
    newest_ids: tuple[int, ...]
    newest_error: str | None


def dead_letters(engine: sa.Engine, newest: int) -> DeadLetters:
    """Reads the whole table (no index on `dead`): call it when a run dead-lettered."""
    m = outbox_messages.c
    dead = outbox_messages.c.status == "dead"
    with engine.connect() as conn:
        total = conn.execute(sa.select(sa.func.count()).select_from(outbox_messages)
                             .where(dead)).scalar_one()
        rows = conn.execute(sa.select(m.id, m.last_error).where(dead)
                            .order_by(m.id.desc()).limit(newest)).all()
    return DeadLetters(int(total), tuple(int(r.id) for r in rows),
                       rows[0].last_error if rows else None)


def _claim_query(now: datetime, limit: int) -> sa.Select[Any]:
    m = outbox_messages.c
    return (sa.select(m.id, m.aggregate_type, m.aggregate_id, m.operation, m.payload,
                      m.attempts, m.created_at)
            .where(_due(now))
            .order_by(m.id)
            .limit(limit)
            .with_for_update(skip_locked=True))


@dataclass(slots=True)
class ClaimedBatch:
    """Due messages locked by a transaction that stays open on `conn` until `close`: the
    outcomes are recorded on `conn`, and committed with the claim or not at all."""

    conn: sa.Connection
    messages: tuple[OutboxMessage, ...]

    def close(self, *, commit: bool) -> None:
        if self.conn.closed:
            return
        try:
            if commit:
                self.conn.commit()
            else:
                self.conn.rollback()
        finally:
            self.conn.close()


def claim_batch(engine: sa.Engine, now: datetime, limit: int) -> ClaimedBatch | None:
    """Claim up to `limit` due messages in a new transaction; None when none is due."""
    conn = engine.connect()
    try:
        conn.begin()
        messages = claim_due_messages(conn, now, limit)
    except BaseException:
        conn.close()
        raise
    if not messages:
        conn.rollback()
        conn.close()
        return None
    return ClaimedBatch(conn, messages)


def claim_due_messages(conn: sa.Connection, now: datetime,
                       limit: int) -> tuple[OutboxMessage, ...]:
    """Lock up to `limit` due messages in id order, for as long as `conn`'s transaction
    lasts; messages another delivery holds are skipped, not waited for."""
    return tuple(OutboxMessage(*row) for row in conn.execute(_claim_query(now, limit)))


def mark_sent(conn: sa.Connection, ids: Sequence[int], now: datetime) -> None:
    if not ids:
        return
    m = outbox_messages.c
    # One array parameter, not one parameter per id: the statement stays the same text.
    conn.execute(sa.update(outbox_messages)
                 .where(m.id == sa.any_(sa.bindparam("ids", type_=ARRAY(sa.BigInteger))))
                 .values(status="sent", processed_at=now), {"ids": list(ids)})


def mark_failed(conn: sa.Connection, failures: Sequence[FailedDelivery]) -> None:
    """One statement for the batch (executemany: the driver pipelines it)."""
    if not failures:
        return
    m = outbox_messages.c
    statement = (sa.update(outbox_messages)
                 .where(m.id == sa.bindparam("message_id"))
                 .values(status=sa.bindparam("new_status"),
                         attempts=sa.bindparam("new_attempts"),
                         last_error=sa.bindparam("error"),
                         next_attempt_at=sa.bindparam("due")))
    conn.execute(statement, [
        {"message_id": f.id, "new_status": f.status, "new_attempts": f.attempts,
         "error": f.last_error, "due": f.next_attempt_at}
        for f in failures])

"""Outbox retry (SPEC 6): claim due messages, deliver them through the same projection and
version guard as repair (one bulk write per entity and batch), back off, dead-letter.

A batch is claimed in one PostgreSQL transaction that stays open until every outcome is
recorded, so a crash anywhere leaves the batch due; the guarded writes make delivering it
again harmless. Outcomes: `sent` (MongoDB holds the message's data, or newer data: then
also counted stale), `failed` with backoff, or `dead` (malformed, or out of attempts).
An unreachable MongoDB is an outage, not the message's fault: the message it hit is
`failed` with backoff but charged no attempt, so an outage of any length dead-letters
nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from pymongo.database import Database
from pymongo.errors import ConnectionFailure

from recon_pipeline.engine.outbox.plan import InvalidPayload, PlannedDelivery, plan_delivery
from recon_pipeline.engine.outbox.write import (
    BatchOutcomes,
    EntityShare,
    deliver_entity,
    prepare_entity,
)
from recon_pipeline.engine.projection import WriteOp, version_bump_ops
from recon_pipeline.model.mapping import EntityMapping, OutboxSettings, ReconConfig
from recon_pipeline.model.masking import mask_text
from recon_pipeline.stores.mongo import mongo_error_text
from recon_pipeline.stores.outbox import (
    ClaimedBatch,
    FailedDelivery,
    OutboxMessage,
    claim_batch,
    mark_failed,
    mark_sent,
)
from recon_pipeline.stores.source import mark_sync
from recon_pipeline.stores.target import KeyLayouts
from recon_pipeline.stores.target_write import write_best_effort

MAX_ERROR_CHARS = 1000
_EARLIEST = datetime.min.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class OutboxResult:
    """Counts of one run. `attempted` = sent + failed + dead; `sent` includes `stale`."""

    attempted: int = 0
    sent: int = 0
    failed: int = 0
    dead: int = 0
    stale: int = 0
    mongo_unreachable: bool = False

    def __add__(self, other: OutboxResult) -> OutboxResult:
        return OutboxResult(
            self.attempted + other.attempted, self.sent + other.sent,
            self.failed + other.failed, self.dead + other.dead, self.stale + other.stale,
            self.mongo_unreachable or other.mongo_unreachable)


def backoff_seconds(attempts: int, settings: OutboxSettings) -> float:
    """Delay before the next attempt, `attempts` being the count including the failed one."""
    exponent = min(max(attempts - 1, 0), 62)  # the cap is reached long before this
    return float(min(settings.backoff_base_seconds * 2 ** exponent,
                     settings.backoff_max_seconds))


@dataclass(slots=True)
class _Batch:
    """A claimed batch: its claim (an open transaction), its planned writes, its MongoDB
    phase."""

    claim: ClaimedBatch
    stamp: datetime
    shares: list[EntityShare]
    outcomes: BatchOutcomes
    writing: Future[bool] | None = None  # True: MongoDB was unreachable

    def close(self, *, commit: bool) -> None:
        self.claim.close(commit=commit)


def deliver_outbox(engine: sa.Engine, mongo_db: Database[dict[str, Any]], config: ReconConfig,
                   *, now: Callable[[], datetime] | None = None,
                   max_batches: int | None = None,
                   on_batch: Callable[[OutboxResult], None] | None = None) -> OutboxResult:
    """Deliver due messages batch after batch until none is due (or `max_batches`), or
    until MongoDB turns out to be unreachable. `on_batch` gets the running total after
    each batch is recorded, so a run that dies later still knows what was delivered.

    MongoDB is the bottleneck, so it is kept busy: while one batch is written, the next is
    claimed and planned, and the one before is recorded. Writes never overlap, so batches
    reach MongoDB in claim order and each reads what the one before it wrote."""
    clock = now or (lambda: datetime.now(UTC))
    secrets = (engine.url.password,) if isinstance(engine.url.password, str) else ()
    settings = config.settings.outbox
    total = OutboxResult()
    claimed = 0
    open_batches: list[_Batch] = []
    layouts = KeyLayouts(mongo_db)  # read on the writer thread, where an outage is handled

    def claim_next() -> _Batch | None:
        nonlocal claimed
        if max_batches is not None and claimed >= max_batches:
            return None
        batch = _claim_and_plan(engine, config, clock())
        if batch is not None:
            open_batches.append(batch)
            claimed += 1
        return batch

    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox-write") as writer:
            current = claim_next()
            if current is not None:
                current.writing = writer.submit(_write_batch, mongo_db, current, layouts)
            while current is not None:
                following = claim_next()
                assert current.writing is not None
                unreachable = current.writing.result()
                if following is not None and not unreachable:
                    following.writing = writer.submit(_write_batch, mongo_db, following,
                                                      layouts)
                result, bumps = _record(current.claim.conn, settings, current.outcomes,
                                        current.stamp, secrets)
                current.close(commit=True)
                open_batches.remove(current)
                total += replace(result, mongo_unreachable=unreachable)
                if on_batch is not None:
                    on_batch(total)
                if not unreachable:  # once the marks are committed; writes never overlap
                    for entity, ops in bumps:
                        writer.submit(write_best_effort, mongo_db, entity, ops)
                if unreachable:
                    break
                current = following
    finally:
        for batch in open_batches:  # claimed, never recorded: leave its messages due
            batch.close(commit=False)
    return total


def _claim_and_plan(engine: sa.Engine, config: ReconConfig, stamp: datetime) -> _Batch | None:
    claim = claim_batch(engine, stamp, config.settings.outbox.batch_size)
    if claim is None:
        return None
    try:
        outcomes = BatchOutcomes()
        plans = plan_batch(config, claim.messages, outcomes)
        shares = [prepare_entity(entity, group, outcomes) for entity in config.entities
                  if (group := [p for p in plans if p.entity is entity])]
    except BaseException:
        claim.close(commit=False)
        raise
    return _Batch(claim, stamp, shares, outcomes)


def plan_batch(config: ReconConfig, messages: Sequence[OutboxMessage],
               outcomes: BatchOutcomes) -> list[PlannedDelivery]:
    """The deliverable messages, newest per record; the malformed and the superseded go to
    `outcomes` at once."""
    plans: list[PlannedDelivery] = []
    for message in messages:
        try:
            plans.append(plan_delivery(config, message))
        except InvalidPayload as error:
            outcomes.invalid.append((message, f"invalid payload: {error}"))
    return _supersede(plans, outcomes)


def _write_batch(mongo_db: Database[dict[str, Any]], batch: _Batch,
                 layouts: KeyLayouts) -> bool:
    """The MongoDB phase (on the writer thread); True when MongoDB was unreachable. A
    connection failure or server selection timeout ends it: the verdicts of the entities
    written before it stand, the first message of the entity being written is marked
    unreachable (no attempt charged), and the rest of the batch, malformed messages
    included, is left due untouched."""
    outcomes = batch.outcomes
    for share in batch.shares:
        sent, stale, failed = len(outcomes.sent), len(outcomes.stale), len(outcomes.failed)
        try:
            deliver_entity(mongo_db, share, outcomes, layouts)
        except ConnectionFailure as error:
            # This entity's verdicts so far are dropped: its writes are redone next time,
            # harmlessly (guarded), rather than half recorded.
            del outcomes.sent[sent:], outcomes.stale[stale:], outcomes.failed[failed:]
            outcomes.invalid.clear()
            outcomes.unreachable.append(
                (share.first, f"MongoDB unreachable: {mongo_error_text(error)}"))
            return True
    return False


def _error_text(text: str, secrets: tuple[str, ...]) -> str:
    text = mask_text(text, secrets)
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS - 3] + "..."


def _supersede(plans: list[PlannedDelivery], outcomes: BatchOutcomes) -> list[PlannedDelivery]:
    """Of several messages for one record in a batch only the newest is written (an
    unordered bulk write would apply them in any order); the older ones wait for its
    verdict (`_settle_superseded`)."""
    newest: dict[tuple[str, Any], PlannedDelivery] = {}
    for plan in plans:
        slot = (plan.entity.name, plan.key)
        current = newest.get(slot)
        if current is None or _rank(plan) > _rank(current):
            newest[slot] = plan
    winners = {id(p) for p in newest.values()}
    outcomes.superseded += [(p, newest[(p.entity.name, p.key)]) for p in plans
                            if id(p) not in winners]
    return [p for p in plans if id(p) in winners]


def _settle_superseded(outcomes: BatchOutcomes) -> None:
    """An older message for a record is `sent` (stale) only once the newest is in MongoDB
    (or found older than what MongoDB holds); when the newest's write failed, the older
    ones fail with it, so the record is not reported delivered while it is not; when the
    newest was never tried (MongoDB unreachable), they are left due untouched."""
    delivered = {id(p) for p in outcomes.sent + outcomes.stale}
    failed = {id(p): error for p, error in outcomes.failed}
    invalid = {id(message): error for message, error in outcomes.invalid}
    for older, newest in outcomes.superseded:
        reason = f"superseded by message {newest.message.id}, which was not delivered: "
        if id(newest) in delivered:
            outcomes.stale.append(older)
        elif id(newest) in failed:
            outcomes.failed.append((older, reason + failed[id(newest)]))
        elif id(newest.message) in invalid:
            outcomes.failed.append((older, reason + invalid[id(newest.message)]))
    outcomes.superseded = []


def _rank(plan: PlannedDelivery) -> tuple[datetime, int]:
    return (plan.version or _EARLIEST, plan.message.id)


def _record(conn: sa.Connection, settings: OutboxSettings, outcomes: BatchOutcomes,
            now: datetime, secrets: tuple[str, ...]
            ) -> tuple[OutboxResult, list[tuple[EntityMapping, list[WriteOp]]]]:
    """Write every outcome of the batch (last_error masked: errors may quote URLs).
    Also returns, per entity, the writes that give MongoDB the versions the sync marks
    bumped, to be made once the batch is committed."""
    _settle_superseded(outcomes)
    outcomes.failed = [(p, _error_text(e, secrets)) for p, e in outcomes.failed]
    outcomes.invalid = [(m, _error_text(e, secrets)) for m, e in outcomes.invalid]
    # Neither an outage nor a missing unique index is the message's fault: never charged.
    uncharged = [(p, _error_text(e, secrets))
                 for p, e in outcomes.unreachable + outcomes.deferred]
    delivered = outcomes.sent + outcomes.stale
    mark_sent(conn, [p.message.id for p in delivered], now)
    failures: list[FailedDelivery] = []
    for plan, error in outcomes.failed:
        attempts = plan.message.attempts + 1
        status = "dead" if attempts >= settings.max_attempts else "failed"
        due = now + timedelta(seconds=backoff_seconds(attempts, settings))
        failures.append(FailedDelivery(plan.message.id, status, attempts, error, due))
    for plan, error in uncharged:
        # The backoff a failure would get now still spaces the retries (and keeps this run
        # from claiming the message again and again).
        attempts = plan.message.attempts
        due = now + timedelta(seconds=backoff_seconds(attempts + 1, settings))
        failures.append(FailedDelivery(plan.message.id, "failed", attempts, error, due))
    for message, error in outcomes.invalid:
        failures.append(FailedDelivery(message.id, "dead", message.attempts + 1, error, now))
    mark_failed(conn, failures)
    bumps = _track_sync(conn, delivered, outcomes.failed + uncharged, now)
    dead = sum(f.status == "dead" for f in failures)
    return OutboxResult(
        attempted=len(delivered) + len(failures), sent=len(delivered),
        failed=len(failures) - dead, dead=dead, stale=len(outcomes.stale)), bumps


def _track_sync(conn: sa.Connection, delivered: list[PlannedDelivery],
                failed: list[tuple[PlannedDelivery, str]], now: datetime
                ) -> list[tuple[EntityMapping, list[WriteOp]]]:
    """sync_tracking of upserted rows: `synced` first, then `failed`, so that a row with
    both outcomes in one batch ends `failed` (its newest message did not arrive).
    Returns the writes that give MongoDB the versions the `synced` marks bumped (see
    `mark_sync`): each is the row as it is now, which is never wrong to write. A row marked
    `failed` alone is behind in MongoDB anyway, and the next run repairs it."""
    synced: dict[str, tuple[EntityMapping, list[Any]]] = {}
    for plan in delivered:
        if not plan.is_delete and plan.entity.source.sync_tracking:
            synced.setdefault(plan.entity.name, (plan.entity, []))[1].append(plan.source_key)
    bumps: dict[str, tuple[EntityMapping, list[dict[str, Any]]]] = {}
    for entity, keys in synced.values():
        bumps[entity.name] = (entity, mark_sync(conn, entity, keys, status="synced", at=now,
                                                error=None))
    by_error: dict[tuple[str, str], tuple[EntityMapping, list[Any]]] = {}
    for plan, error in failed:
        if not plan.is_delete and plan.entity.source.sync_tracking:
            slot = (plan.entity.name, error)
            by_error.setdefault(slot, (plan.entity, []))[1].append(plan.source_key)
    for (_, error), (entity, keys) in by_error.items():
        mark_sync(conn, entity, keys, status="failed", at=None, error=error)
    return [(entity, version_bump_ops(entity, rows)) for entity, rows in bumps.values()
            if rows]


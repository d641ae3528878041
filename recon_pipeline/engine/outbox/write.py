"""Writing one entity's planned messages to MongoDB: read what the guard will meet where the
write depends on it, one unordered bulk write, and a verdict for every message.

Document upserts are written blind: the guarded upsert itself refuses to overwrite newer
data (the refused upsert collides with the existing `_id`: duplicate key = stale), and
reading the targets first would cost a third of the write again on secantusdb. Embedded
upserts need the read (push, or update in place, or create the parent), and so do deletes
(nothing there, or something newer: no write).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bson.errors import InvalidDocument
from pymongo.database import Database
from pymongo.errors import ConnectionFailure, PyMongoError

from recon_pipeline.engine.outbox.plan import PlannedDelivery
from recon_pipeline.engine.projection import (
    STRING_KEYS,
    Presence,
    WriteOp,
    delete_ops,
    newer_than,
    out_of_scope_error,
    presence_in,
    upsert_ops,
)
from recon_pipeline.model.mapping import EntityMapping
from recon_pipeline.model.normalize import ValueCoercionError
from recon_pipeline.stores.outbox import OutboxMessage
from recon_pipeline.stores.target import (
    KeyForms,
    KeyLayouts,
    TargetRecord,
    TargetSnapshot,
    fetch_targets,
)
from recon_pipeline.stores.target_write import DUPLICATE_KEY, WriteError, bulk_write_ops


@dataclass(slots=True)
class BatchOutcomes:
    """What became of each message of a batch, before it is recorded."""

    sent: list[PlannedDelivery] = field(default_factory=list)
    stale: list[PlannedDelivery] = field(default_factory=list)
    failed: list[tuple[PlannedDelivery, str]] = field(default_factory=list)
    invalid: list[tuple[OutboxMessage, str]] = field(default_factory=list)
    # Not tried because MongoDB was unreachable: an outage, never charged to the message.
    unreachable: list[tuple[PlannedDelivery, str]] = field(default_factory=list)
    # Not written, through no fault of the message (no unique index on the key yet).
    deferred: list[tuple[PlannedDelivery, str]] = field(default_factory=list)
    # (older, newest) for one record: the older follows the newest's verdict once known.
    superseded: list[tuple[PlannedDelivery, PlannedDelivery]] = field(default_factory=list)


@dataclass(slots=True)
class _Bulk:
    ops: list[WriteOp] = field(default_factory=list)
    owners: list[PlannedDelivery] = field(default_factory=list)

    def add(self, plan: PlannedDelivery, ops: list[WriteOp]) -> None:
        self.ops += ops
        self.owners += [plan] * len(ops)

    def add_upsert(self, plan: PlannedDelivery, presence: Presence,
                   outcomes: BatchOutcomes, forms: KeyForms = STRING_KEYS,
                   seen: TargetRecord | None = None) -> None:
        assert plan.row is not None
        try:
            self.add(plan, upsert_ops(plan.entity, plan.row, presence, forms, seen))
        except ValueCoercionError as error:  # a value MongoDB cannot hold exactly
            outcomes.invalid.append((plan.message, f"invalid payload: {error}"))


@dataclass(slots=True)
class EntityShare:
    """One entity's messages in a batch (one per record, in id order)."""

    entity: EntityMapping
    upserts: list[PlannedDelivery]
    deletes: list[PlannedDelivery]
    ready: _Bulk | None = None  # document upserts: writes built before MongoDB is involved

    @property
    def first(self) -> PlannedDelivery:
        return min(self.upserts + self.deletes, key=lambda p: p.message.id)


def prepare_entity(entity: EntityMapping, plans: Sequence[PlannedDelivery],
                   outcomes: BatchOutcomes) -> EntityShare:
    """Split `plans` and build what needs no read of MongoDB, so that this work can be done
    while the previous batch is being written."""
    share = EntityShare(entity, [p for p in plans if not p.is_delete],
                        [p for p in plans if p.is_delete])
    if entity.target.embedded is None and share.upserts:
        share.ready = _Bulk()
        for plan in share.upserts:
            # Presence only steers embedded writes; a document upsert is the same either way.
            share.ready.add_upsert(plan, Presence.ABSENT, outcomes)
    return share


def deliver_entity(db: Database[dict[str, Any]], share: EntityShare,
                   outcomes: BatchOutcomes, layouts: KeyLayouts | None = None) -> None:
    """Deliver the share and add each verdict to `outcomes`. Raises ConnectionFailure
    untouched: the caller decides what an unreachable MongoDB costs. Upserts by a key
    without its unique index are deferred, not written."""
    layout = (layouts or KeyLayouts(db)).of(share.entity) if share.upserts else None
    if layout is not None and layout.missing_index is not None:
        outcomes.deferred += [(plan, layout.missing_index) for plan in share.upserts]
    elif layout is not None:
        if share.ready is not None and layout.forms != STRING_KEYS:
            share.ready = _Bulk()  # built for string keys; this collection holds BSON UUIDs
            for plan in share.upserts:
                share.ready.add_upsert(plan, Presence.ABSENT, outcomes, layout.forms)
        _deliver_upserts(db, share, outcomes, layout.forms)
    if share.deletes:
        _deliver_deletes(db, share.entity, share.deletes, outcomes)


def _deliver_upserts(db: Database[dict[str, Any]], share: EntityShare,
                     outcomes: BatchOutcomes, forms: KeyForms) -> None:
    entity = share.entity
    bulk = share.ready
    if bulk is None:
        bulk = _Bulk()
        before = _read_elements(db, entity, share.upserts)
        for plan in share.upserts:
            record = before.record_at(plan.key, plan.parent)
            if newer_than(record, plan.version):
                outcomes.stale.append(plan)
                continue
            bulk.add_upsert(plan, presence_in(before, entity, plan.key, plan.parent), outcomes,
                            forms, record)
    errors, applied = _bulk_write(db, entity, bulk.ops)
    written: list[PlannedDelivery] = []
    refused: list[PlannedDelivery] = []
    collided = False
    for index, plan in enumerate(bulk.owners):
        error = errors.get(index)
        if error is None:
            written.append(plan)
        elif error.code != DUPLICATE_KEY:
            outcomes.failed.append((plan, error.message))
        elif entity.target.embedded is None:
            refused.append(plan)  # the guard refused: a newer document is there, mostly
        else:
            collided = True  # the parent appeared between our read and the write
            written.append(plan)
    if entity.target.embedded is not None and (collided or applied < len(written)):
        _verify_elements(db, entity, written, outcomes)
    else:
        outcomes.sent += written
    if refused:
        _judge_refused(db, entity, refused, outcomes, forms)


def _judge_refused(db: Database[dict[str, Any]], entity: EntityMapping,
                   plans: list[PlannedDelivery], outcomes: BatchOutcomes,
                   forms: KeyForms) -> None:
    """Document upserts that the blind guard refused. Stale where the document is newer;
    where only its `updated_at` is newer and its recorded version is not (the application
    changed a document of ours), the guard that knows the document decides. With a
    target scope, the key may be held by a document out of scope (read as none here):
    that one is never touched, and the message fails saying so."""
    if entity.version_fallback is None and not entity.target.where:
        outcomes.stale += plans
        return
    now = fetch_targets(db, entity, [p.key for p in plans])
    retry = _Bulk()
    for plan in plans:
        record = now.record_at(plan.key)
        if record is None:
            outcomes.failed.append((plan, out_of_scope_error(entity) if entity.target.where
                                    else "not applied: the target document changed during "
                                         "delivery"))
        elif newer_than(record, plan.version):
            outcomes.stale.append(plan)
        else:
            retry.add_upsert(plan, Presence.PRESENT, outcomes, forms, record)
    errors, _ = _bulk_write(db, entity, retry.ops)
    for index, plan in enumerate(retry.owners):
        error = errors.get(index)
        if error is None:
            outcomes.sent.append(plan)
        elif error.code == DUPLICATE_KEY:
            outcomes.stale.append(plan)
        else:
            outcomes.failed.append((plan, error.message))


def _read_elements(db: Database[dict[str, Any]], entity: EntityMapping,
                   plans: Sequence[PlannedDelivery]) -> TargetSnapshot:
    return fetch_targets(db, entity, [p.key for p in plans], parents=[p.parent for p in plans])


def _verify_elements(db: Database[dict[str, Any]], entity: EntityMapping,
                     plans: list[PlannedDelivery], outcomes: BatchOutcomes) -> None:
    """Some embedded write matched nothing (the target changed after our read): judge the
    written messages by what MongoDB holds now; the next attempt reads afresh."""
    after = _read_elements(db, entity, plans)
    for plan in plans:
        record = after.record_at(plan.key, plan.parent)
        if newer_than(record, plan.version):
            outcomes.stale.append(plan)
        elif record is not None and record.version == plan.version:
            outcomes.sent.append(plan)
        else:
            outcomes.failed.append((plan, "not applied: the target document changed during "
                                          "delivery"))


def _deliver_deletes(db: Database[dict[str, Any]], entity: EntityMapping,
                     plans: list[PlannedDelivery], outcomes: BatchOutcomes) -> None:
    # Embedded: an element is found through its key alone (a delete names no parent).
    before = fetch_targets(db, entity, [p.key for p in plans])
    by_key: dict[Any, list[TargetRecord]] = {}
    if entity.target.embedded is None:
        for record in before.records.values():
            by_key[record.key] = [record]
    else:
        for record in before.elements.values():
            by_key.setdefault(record.key, []).append(record)
    bulk = _Bulk()
    for plan in plans:
        records = by_key.get(plan.key, [])
        older = [r for r in records if not newer_than(r, plan.version)]
        if records and not older:
            outcomes.stale.append(plan)
        elif not records:
            outcomes.sent.append(plan)  # nothing to delete: the target agrees already
        for record in older:
            bulk.add(plan, delete_ops(entity, plan.key, record.parent, plan.version,
                                      exact=False, seen=record))
    errors, _ = _bulk_write(db, entity, bulk.ops)
    failed: dict[int, str] = {}
    for index, plan in enumerate(bulk.owners):
        if index in errors:
            failed.setdefault(id(plan), errors[index].message)
    for plan in dict.fromkeys(bulk.owners):  # one verdict per message, however many ops
        if id(plan) in failed:
            outcomes.failed.append((plan, failed[id(plan)]))
        else:
            outcomes.sent.append(plan)


def _bulk_write(db: Database[dict[str, Any]], entity: EntityMapping,
                ops: list[WriteOp]) -> tuple[dict[int, WriteError], int]:
    """Run `ops` unordered; (write errors by op index, documents matched or upserted).
    A lost connection is raised: the caller decides what an outage costs."""
    try:
        outcome = bulk_write_ops(db, entity, ops)
    except ConnectionFailure:
        raise
    except InvalidDocument as error:  # refused by the client before sending: nothing done
        text = f"MongoDB write not sent: {error}"
        return {i: WriteError(None, text) for i in range(len(ops))}, 0
    except PyMongoError as error:  # the whole command failed: none of it counts as done
        code = getattr(error, "code", None)
        details = getattr(error, "details", None) or {}
        reason = details.get("errmsg") or str(error)
        text = f"MongoDB write failed: {reason}" + (f" (code {code})" if code else "")
        return {i: WriteError(code, text) for i in range(len(ops))}, 0
    errors = {index: WriteError(e.code, _write_error(e)) for index, e in outcome.errors.items()}
    if outcome.write_concern_error:  # try again
        errors.update({i: WriteError(None, outcome.write_concern_error)
                       for i in range(len(ops)) if i not in errors})
    return errors, outcome.applied


def _write_error(error: WriteError) -> str:
    return f"MongoDB write error {error.code}: {error.message}".strip()

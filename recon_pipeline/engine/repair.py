"""Repair MongoDB from PostgreSQL (PostgreSQL always wins).

Per batch of recorded mismatches: re-read both sides (agreeing now: `resolved`, nothing
written), project each source row through the mapping into a guarded write, write in
bulk, re-read and re-compare: only a verified fix counts as `repaired`.

A MongoDB error (a write error, a write concern error, a failed read, a lost connection)
fails the mismatches it touched and ends repair for the whole run: the mismatches still
waiting become `failed` ("repair stopped: ..."), the next run finds them again, and the
run goes on to clean up and report.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from pymongo.database import Database
from pymongo.errors import ConnectionFailure, OperationFailure, PyMongoError

from recon_pipeline.engine.diff import MismatchKind
from recon_pipeline.engine.extract import STRAY_KEY
from recon_pipeline.engine.prefetch import prefetched
from recon_pipeline.engine.projection import WriteOp, version_bump_ops
from recon_pipeline.engine.repair_plan import (
    Outcome,
    RepairPlan,
    orphan_parent,
    plan_writes,
    slices_of,
    typed_key,
    verify_writes,
)
from recon_pipeline.model.mapping import EntityMapping, ReconConfig, Settings
from recon_pipeline.model.masking import mask_text
from recon_pipeline.model.normalize import ValueCoercionError
from recon_pipeline.stores import reports
from recon_pipeline.stores.mongo import mongo_error_text
from recon_pipeline.stores.reports import MismatchRow
from recon_pipeline.stores.source import fetch_rows
from recon_pipeline.stores.target import (
    KeyForms,
    KeyLayouts,
    TargetSnapshot,
    fetch_targets,
)
from recon_pipeline.stores.target_write import DUPLICATE_KEY, bulk_write_ops, write_best_effort


@dataclass(frozen=True, slots=True)
class RepairStop:
    """Why repair ended early in a run: the MongoDB error, masked."""

    error: str
    connection_lost: bool  # the run is `partial`, not only `needs_attention`

    def as_dict(self) -> dict[str, Any]:
        return {"error": self.error, "connection_lost": self.connection_lost}


def _stop(error: PyMongoError) -> RepairStop:
    if isinstance(error, ConnectionFailure):  # server selection and network timeouts too
        return RepairStop(mask_text(f"MongoDB unreachable: {mongo_error_text(error)}"), True)
    if isinstance(error, OperationFailure):
        reason = (error.details or {}).get("errmsg") or mongo_error_text(error)
        return RepairStop(mask_text(f"MongoDB error {error.code}: {reason}"), False)
    return RepairStop(mask_text(f"MongoDB error: {mongo_error_text(error)}"), False)


def repairable_kinds(settings: Settings) -> list[str]:
    """Mismatch kinds that repair writes for; orphans only when their deletion is on."""
    kinds = ["missing_in_mongo", "field_mismatch"]
    if settings.delete_orphans:
        kinds.append("orphan_in_mongo")
    return kinds


def _write(db: Database[dict[str, Any]], entity: EntityMapping,
           plan: RepairPlan) -> dict[int, str]:
    """Bulk-write the plan; returns mismatch id -> write error (duplicate keys are the
    version guard refusing an upsert: verification reports those). A write concern
    error fails every write of the plan: a fix not durable as asked is not verified."""
    if not plan.ops:
        return {}
    outcome = bulk_write_ops(db, entity, plan.ops)
    failures: dict[int, str] = {}
    for index, error in outcome.errors.items():
        if error.code != DUPLICATE_KEY:
            failures[plan.op_owner[index]] = mask_text(error.message or "write failed")
    if outcome.write_concern_error:
        for owner in plan.op_owner:
            failures.setdefault(owner, mask_text(outcome.write_concern_error))
    return failures


GROUP_SIZE = 500  # mismatches of one entity per bulk write


@dataclass(slots=True)
class _Group:
    """One entity's slice of a repair batch, with its source rows re-read."""

    entity: EntityMapping
    rows: Sequence[MismatchRow]
    sources: dict[Any, dict[str, Any]]
    bad: list[Outcome]
    stopped: bool = False  # another batch of the run stopped repair before this group


def _read_group(engine: sa.Engine, entity: EntityMapping, rows: Sequence[MismatchRow],
                stopped: Callable[[], bool] | None = None) -> _Group:
    """The group's source rows; with `stopped`, first whether repair was stopped (then
    nothing is read)."""
    if stopped is not None and stopped():
        return _Group(entity, rows, {}, [], stopped=True)
    keys: list[Any] = []
    bad: list[Outcome] = []
    for mismatch in rows:
        if mismatch.fields and STRAY_KEY in mismatch.fields:
            continue  # its text is not its key; planning reports it
        try:
            keys.append(typed_key(entity, mismatch.record_key))
        except ValueCoercionError as error:
            bad.append((mismatch.id, "failed", str(error)))
    failed = {outcome[0] for outcome in bad}
    return _Group(entity, [m for m in rows if m.id not in failed],
                  fetch_rows(engine, entity, keys), bad)


@dataclass(slots=True)
class _Written:
    """A group once MongoDB is done with it: what was decided before writing, and what
    verification needs (judged later, off the path of the MongoDB requests)."""

    entity: EntityMapping
    decided: list[Outcome]
    plan: RepairPlan | None = None
    after: TargetSnapshot | None = None
    failures: dict[int, str] = field(default_factory=dict)

    def outcomes(self) -> tuple[list[Outcome], list[Any]]:
        """Every outcome of the group, and the keys of the source rows now verified in
        MongoDB."""
        if self.plan is None or self.after is None:
            return self.decided, []
        outcomes = self.decided + verify_writes(self.entity, self.plan, self.after,
                                                self.failures)
        repaired = [self.plan.written[i][0] for i, status, _ in outcomes
                    if status == "repaired" and self.plan.written[i][1] is not None]
        return outcomes, repaired


def _plan_group(db: Database[dict[str, Any]], group: _Group, delete_orphans: bool,
                forms: KeyForms) -> RepairPlan:
    """Read the targets before writing and plan the writes: a helper thread reads slice
    after slice (MongoDB sees the same reads in the same order) while this one plans
    those already read."""
    entity = group.entity
    plan = RepairPlan()
    reads = ((part, fetch_targets(db, entity, part.keys, part.parents))
             for part in slices_of(entity, group.rows, group.sources))
    for part, before in prefetched(reads):
        plan.extend(plan_writes(entity, part.rows, group.sources, before, delete_orphans,
                                forms))
    return plan


def _repair_group(db: Database[dict[str, Any]], group: _Group, delete_orphans: bool,
                  layouts: KeyLayouts) -> tuple[_Written, RepairStop | None]:
    """Re-read the targets, write, re-read. Returns the group to verify and record, and
    why repair must stop when MongoDB failed: the mismatches the error touched are
    `failed` with it. Without the unique index its key needs, an entity's repairs all
    fail, naming the index: nothing of it is written."""
    entity, rows = group.entity, group.rows
    embedded = entity.target.embedded
    parents = None
    if embedded:
        parents = [s[embedded.parent_key] for s in group.sources.values()]
        parents += [orphan_parent(entity, m) for m in rows
                    if m.kind == MismatchKind.ORPHAN_IN_MONGO]
    try:
        layout = layouts.of(entity)
        if layout.missing_index is not None:
            return _Written(entity, group.bad + [(m.id, "failed", layout.missing_index)
                                                 for m in rows]), None
        plan = _plan_group(db, group, delete_orphans, layout.forms)
    except PyMongoError as error:
        # Orphans that are only reported were never going to be written: they stay so.
        stop = _stop(error)
        return _Written(entity, group.bad + [
            (m.id, "reported", None) if m.kind == MismatchKind.ORPHAN_IN_MONGO
            and not delete_orphans else (m.id, "failed", stop.error) for m in rows]), stop
    try:
        failures = _write(db, entity, plan)
        after = fetch_targets(db, entity, [k for k, _, _ in plan.written.values()], parents)
    except PyMongoError as error:  # nothing written can be verified
        stop = _stop(error)
        return _Written(entity, group.bad + plan.outcomes
                        + [(i, "failed", stop.error) for i in plan.written]), stop
    # Write errors fail only their own mismatches (the rest are verified), but end repair.
    return (_Written(entity, group.bad + plan.outcomes, plan, after, failures),
            RepairStop(failures[min(failures)], False) if failures else None)


_Bumps = tuple[EntityMapping, list[WriteOp]]


def _record(engine: sa.Engine, written: _Written, now: datetime) -> _Bumps:
    """The group's outcomes and sync marks (one transaction, stores/reports.py), and the
    writes that give MongoDB the versions the marks bumped, to be made once committed (a
    version the source may still roll back must not reach MongoDB: its guard would then
    refuse every repair of the row)."""
    outcomes, repaired = written.outcomes()
    bumped = reports.record_repair_outcomes(engine, written.entity, outcomes, repaired, now)
    return written.entity, version_bump_ops(written.entity, bumped)


def _give_bumped_versions(db: Database[dict[str, Any]], bumps: _Bumps) -> None:
    write_best_effort(db, *bumps)


def _repair_groups(engine: sa.Engine, db: Database[dict[str, Any]],
                   groups: Sequence[tuple[EntityMapping, Sequence[MismatchRow]]], *,
                   delete_orphans: bool, now: datetime,
                   stopped: Callable[[], bool]) -> RepairStop | None:
    """Repair group after group. MongoDB sees the groups strictly one after another, and
    nothing else waits in their way: the PostgreSQL side runs on one helper thread, a
    group ahead (asking whether another batch of the run stopped repair (`stopped`),
    re-reading source rows) and a group behind (verifying, recording outcomes). A MongoDB
    error, here or in another batch, ends the batch once the groups before are
    recorded; any other error stops it the same way, raising."""
    stop: RepairStop | None = None
    if not groups:
        return stop
    layouts = KeyLayouts(db)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="recon-repair") as postgres:
        reading = postgres.submit(_read_group, engine, *groups[0])
        recording: Future[_Bumps] | None = None
        for index in range(len(groups)):
            group = reading.result()
            if group.stopped:
                break
            if index + 1 < len(groups):
                reading = postgres.submit(_read_group, engine, *groups[index + 1], stopped)
            written, stop = _repair_group(db, group, delete_orphans, layouts)
            if recording is not None:
                _give_bumped_versions(db, recording.result())
            recording = postgres.submit(_record, engine, written, now)
            if stop is not None:
                break
        if recording is not None:
            _give_bumped_versions(db, recording.result())
    return stop


def repair_batch(engine: sa.Engine, db: Database[dict[str, Any]], config: ReconConfig,
                 report_id: int, id_range: tuple[int, int], now: datetime, *,
                 group_size: int = GROUP_SIZE) -> int:
    """Repair the report's mismatches with ids in `id_range`; returns how many were looked
    at. Outcomes are written to the mismatch rows, `group_size` at a time. Once a MongoDB
    error has stopped the run's repair (in this batch or another), nothing more is
    written: every mismatch still waiting is `failed` with "repair stopped: <error>"."""
    if reports.repair_stop(engine, report_id) is not None:
        return 0
    rows = [m for m in reports.mismatches_between(engine, report_id, *id_range)
            if m.repair_status == "reported"]
    by_entity: dict[str, list[MismatchRow]] = defaultdict(list)
    for row in rows:
        by_entity[row.entity].append(row)
    groups = [(config.entity(name), entity_rows[start:start + group_size])
              for name, entity_rows in by_entity.items()
              for start in range(0, len(entity_rows), group_size)]
    stop = _repair_groups(
        engine, db, groups, delete_orphans=config.settings.delete_orphans, now=now,
        stopped=lambda: reports.repair_stop(engine, report_id) is not None)
    if stop is not None:
        reports.stop_repairs(engine, report_id, stop.as_dict(),
                             kinds=repairable_kinds(config.settings),
                             error=f"repair stopped: {stop.error}")
    return len(rows)

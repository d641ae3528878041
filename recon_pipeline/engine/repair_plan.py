"""What repair writes and how it judges the result, without I/O: per group of
mismatches, the guarded writes that make the target hold the source rows (or delete the
orphans) and the outcomes decided before writing; after writing, the verdict on each
write from a fresh read of the target."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from recon_pipeline.engine.diff import MismatchKind, field_differences, judge
from recon_pipeline.engine.extract import STRAY_KEY
from recon_pipeline.engine.projection import (
    WriteOp,
    delete_ops,
    newer_than,
    out_of_scope_error,
    presence_in,
    row_version,
    upsert_ops,
)
from recon_pipeline.model.mapping import EntityMapping
from recon_pipeline.model.normalize import coerce_source_value, key_of
from recon_pipeline.stores.reports import MismatchRow
from recon_pipeline.stores.target import IN_BATCH, KeyForms, TargetRecord, TargetSnapshot

Outcome = tuple[int, str, str | None]  # (mismatch id, repair_status, repair_error)


@dataclass(slots=True)
class RepairPlan:
    """What one entity's batch will do: writes, and the mismatches they should fix."""

    ops: list[WriteOp] = field(default_factory=list)
    op_owner: list[int] = field(default_factory=list)  # op index -> mismatch id
    # mismatch id -> (key, source row written or None for a deletion, parent)
    written: dict[int, tuple[Any, dict[str, Any] | None, Any]] = field(default_factory=dict)
    outcomes: list[Outcome] = field(default_factory=list)

    def write(self, mismatch_id: int, ops: list[WriteOp], key: Any,
              row: dict[str, Any] | None, parent: Any) -> None:
        self.ops += ops
        self.op_owner += [mismatch_id] * len(ops)
        self.written[mismatch_id] = (key, row, parent)

    def extend(self, other: RepairPlan) -> None:
        self.ops += other.ops
        self.op_owner += other.op_owner
        self.written.update(other.written)
        self.outcomes += other.outcomes


def typed_key(entity: EntityMapping, record_key: str) -> Any:
    return coerce_source_value(record_key, entity.key_kind)


def orphan_parent(entity: EntityMapping, row: MismatchRow) -> Any:
    embedded = entity.target.embedded
    if embedded is None or not row.fields:
        return None
    # stored as JSON: a UUID parent as its string, back in the source's terms here
    return key_of((row.fields.get(embedded.parent_key) or {}).get("target"),
                  entity.parent_key_kind)


def record_for(entity: EntityMapping, snapshot: TargetSnapshot, key: Any,
                parent: Any) -> TargetRecord | None:
    return snapshot.record_at(key, parent if entity.target.embedded else None)


def plan_writes(entity: EntityMapping, rows: Sequence[MismatchRow],
                 sources: dict[Any, dict[str, Any]], snapshot: TargetSnapshot,
                 delete_orphans: bool, forms: KeyForms) -> RepairPlan:
    plan = RepairPlan()
    embedded = entity.target.embedded
    for mismatch in rows:
        if mismatch.fields and STRAY_KEY in mismatch.fields:
            stray = mismatch.fields[STRAY_KEY]["target"]
            plan.outcomes.append((mismatch.id, "reported",
                                  f"key of type {stray}: no source row can have it, so it "
                                  f"is not deleted automatically"))
            continue
        key = typed_key(entity, mismatch.record_key)
        source = sources.get(key)
        sits_under = orphan_parent(entity, mismatch)
        if mismatch.kind == MismatchKind.ORPHAN_IN_MONGO and (
                source is None or (embedded and source[embedded.parent_key] != sits_under)):
            # Still no source row where it sits (an element may have a row under another
            # parent: the copy here is stale all the same).
            parent = sits_under
            record = record_for(entity, snapshot, key, parent)
            if record is None:
                plan.outcomes.append((mismatch.id, "resolved", None))
            elif not delete_orphans:
                plan.outcomes.append((mismatch.id, "reported", None))
            else:
                plan.write(mismatch.id, delete_ops(entity, key, parent, record.version,
                                                   exact=True, seen=record),
                           key, None, parent)
            continue
        if source is None:
            # Deleted at the source since detection: the next run judges what is left.
            plan.outcomes.append((mismatch.id, "failed",
                                  "source row no longer exists; the next run re-judges it"))
            continue
        parent = source[embedded.parent_key] if embedded else None
        if judge(entity, source, record_for(entity, snapshot, key, parent)) is None:
            plan.outcomes.append((mismatch.id, "resolved", None))
            continue
        presence = presence_in(snapshot, entity, key, parent)
        seen = record_for(entity, snapshot, key, parent)
        plan.write(mismatch.id, upsert_ops(entity, source, presence, forms, seen), key, source,
                   parent)
    return plan


def verify_writes(entity: EntityMapping, plan: RepairPlan, after: TargetSnapshot,
            failures: dict[int, str]) -> list[Outcome]:
    outcomes: list[Outcome] = []
    for mismatch_id, (key, source, parent) in plan.written.items():
        if mismatch_id in failures:
            outcomes.append((mismatch_id, "failed", failures[mismatch_id]))
            continue
        record = record_for(entity, after, key, parent)
        if source is None:  # an orphan deletion
            gone = record is None
            outcomes.append((mismatch_id, "repaired" if gone else "failed",
                             None if gone else "orphan changed since it was read"))
            continue
        if judge(entity, source, record) is None:
            outcomes.append((mismatch_id, "repaired", None))
        elif newer_than(record, row_version(entity, source)):
            outcomes.append((mismatch_id, "failed",
                             "version guard: MongoDB holds a newer source version"))
        else:
            fields = sorted(field_differences(entity, source, record)) if record else []
            outcomes.append((mismatch_id, "failed", out_of_scope_error(entity)
                             if record is None and entity.target.where else
                             f"still differs after write: {', '.join(fields) or 'missing'}"))
    return outcomes


@dataclass(frozen=True, slots=True)
class Slice:
    """The mismatches of a group whose targets one `$in` read finds (the keys, or for
    embedded entities the parent documents, of at most `IN_BATCH` of them)."""

    rows: list[MismatchRow]
    keys: list[Any]
    parents: list[Any] | None


def slices_of(entity: EntityMapping, rows: Sequence[MismatchRow],
              sources: dict[Any, dict[str, Any]]) -> list[Slice]:
    """Mismatches by the read that finds their targets, in the order `fetch_targets`
    reads them: so each slice can be planned while the next one is read. Mismatches that
    need no target (a stray key, a source row gone) go in the first."""
    embedded = entity.target.embedded
    by_lookup: dict[Any, list[MismatchRow]] = {}
    loose: list[MismatchRow] = []
    for mismatch in rows:
        if mismatch.fields and STRAY_KEY in mismatch.fields:
            loose.append(mismatch)
            continue
        lookup = typed_key(entity, mismatch.record_key)
        if embedded is not None:
            source = sources.get(lookup)
            if mismatch.kind == MismatchKind.ORPHAN_IN_MONGO:
                lookup = orphan_parent(entity, mismatch)
            elif source is None:
                loose.append(mismatch)
                continue
            else:
                lookup = source[embedded.parent_key]
        by_lookup.setdefault(lookup, []).append(mismatch)
    lookups = list(by_lookup)
    slices = []
    for start in range(0, max(len(lookups), 1), IN_BATCH):
        batch = lookups[start:start + IN_BATCH]
        found = [mismatch for lookup in batch for mismatch in by_lookup[lookup]]
        slices.append(Slice(found, [typed_key(entity, m.record_key) for m in found],
                            batch if embedded is not None else None))
    slices[0].rows[:0] = loose
    return slices

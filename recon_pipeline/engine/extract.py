"""Snapshot extraction and diff, chunk by chunk.

A run is planned into coarse chunks: one per entity, or, where chunks run in parallel on
a server that reads key ranges from an index, key ranges of about `chunk_size` source rows
(see `plan_entity`). Each chunk picks its access path: `scan` (one sorted cursor on each
side and a streaming merge-join: full scans and dense windows) or `lookup` (source rows of the
window, their targets fetched in small `$in` batches: sparse windows). Mismatches go to
`reconciliation_mismatches` as they are found, so memory is bounded by a batch.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from pymongo.database import Database

from recon_pipeline.engine.collector import fewer_collections
from recon_pipeline.engine.diff import (
    Mismatch,
    MismatchKind,
    ScanTally,
    diff_sorted,
    json_value,
    judge,
    merge_key,
)
from recon_pipeline.engine.prefetch import prefetched
from recon_pipeline.engine.progress import PROGRESS_INTERVAL, ProgressCallback, ProgressMeter
from recon_pipeline.engine.window import RunWindow
from recon_pipeline.model.mapping import EntityMapping, ReconConfig
from recon_pipeline.model.normalize import is_key, order_key
from recon_pipeline.stores import reports
from recon_pipeline.stores.source import (
    chunk_bounds,
    count_rows_upto,
    count_window,
    estimate_rows,
    existing_merge_keys,
    keys_out_of_scope,
    stream_row_values,
    stream_rows,
)
from recon_pipeline.stores.target import (
    IN_BATCH,
    TargetRecord,
    fetch_targets,
    find_updated_between,
    scan_target_documents,
)

# A window holding at least this share of an entity's rows is read with one sorted cursor
# per side: cheaper than many `$in` lookups once most documents are wanted anyway.
DENSE_FRACTION = 0.2
FLUSH_EVERY = 1000
STRAY_KEY = "$key_type"  # in an orphan's `fields`: its key's type, when a stray's


class AccessPath(enum.StrEnum):
    SCAN = "scan"
    LOOKUP = "lookup"


@dataclass(frozen=True, slots=True)
class ChunkPlan:
    entity: str
    index: int
    lower: Any  # exclusive bound on the document (parent) key; None: unbounded
    upper: Any  # inclusive bound; None: unbounded
    access: AccessPath
    rows: int | None  # rows in the whole entity window, when counted (for display)

    @property
    def name(self) -> str:
        return f"{self.entity}_{self.index}"


@dataclass(frozen=True, slots=True)
class ChunkResult:
    entity: str
    records_checked: int = 0
    missing_in_mongo: int = 0
    field_mismatches: int = 0
    orphans_in_mongo: int = 0
    error: str | None = None


def key_range_chunks(*, parallel: bool, server_serves_ranges: bool) -> bool:
    """Whether to split entities into key ranges: only when the chunks run in parallel
    (an out-of-process executor: in one process they run one after another and memory is
    bounded by streaming anyway) and the MongoDB server reads a key range from an index
    (the embedded secantusdb scans the whole collection for each range: N chunks would
    cost N scans)."""
    return parallel and server_serves_ranges


def plan_entity(engine: sa.Engine, entity: EntityMapping, window: RunWindow,
                chunk_size: int, *, key_ranges: bool = False) -> list[ChunkPlan]:
    """The entity's chunks. One chunk (no bound query at all for a full scan) unless
    `key_ranges`: then key ranges of about `chunk_size` rows, which only pay where they
    run in parallel (an out-of-process executor) on a server that reads a key range from
    an index; elsewhere each range would cost another scan of the collection.

    A windowed run reads what the window holds, never the whole table: the window's rows
    are counted over the `updated_at` index and the table's size is the catalog's
    estimate (see `_dense`)."""
    start, end = (None, None) if window.full_scan else (window.start, window.end)
    rows: int | None
    if key_ranges:
        rows, bounds = chunk_bounds(engine, entity, start=start, end=end,
                                    chunk_size=chunk_size)
    elif window.full_scan:
        rows, bounds = None, []
    else:
        rows, bounds = count_window(engine, entity, start=start, end=end), []
    dense = window.full_scan or _dense(engine, entity, rows or 0)
    access = AccessPath.SCAN if dense else AccessPath.LOOKUP
    edges: list[Any] = [None, *bounds, None]
    return [ChunkPlan(entity.name, i, lower, upper, access, rows)
            for i, (lower, upper) in enumerate(zip(edges, edges[1:], strict=False))]


def _dense(engine: sa.Engine, entity: EntityMapping, rows: int) -> bool:
    """Whether a window of `rows` rows holds at least DENSE_FRACTION of the table. The
    table's size is PostgreSQL's estimate (a catalog read); a table never analysed is
    counted only up to the size that would make the window sparse, so this costs at
    most `rows / DENSE_FRACTION` rows read, never the whole table."""
    if rows == 0:
        return False
    table = estimate_rows(engine, entity)
    if table is None:
        table = count_rows_upto(engine, entity, math.floor(rows / DENSE_FRACTION) + 1)
    return rows >= DENSE_FRACTION * max(table, 1)


def plan_chunks(engine: sa.Engine, config: ReconConfig, window: RunWindow,
                entities: Iterable[str], *, key_ranges: bool = False) -> list[ChunkPlan]:
    return [chunk for name in entities
            for chunk in plan_entity(engine, config.entity(name), window,
                                     config.settings.chunk_size, key_ranges=key_ranges)]


def _in_bounds(chunk: ChunkPlan, bound: Any) -> bool:
    key = order_key(bound)
    return ((chunk.lower is None or key > order_key(chunk.lower))
            and (chunk.upper is None or key <= order_key(chunk.upper)))


@dataclass(slots=True)
class _MismatchSink:
    """Counts mismatches and writes them to the audit trail in batches."""

    engine: sa.Engine
    entity: EntityMapping
    report_id: int
    detected_at: datetime
    pending: list[dict[str, Any]]
    counts: dict[MismatchKind, int]

    def add(self, mismatch: Mismatch) -> None:
        self.counts[mismatch.kind] = self.counts.get(mismatch.kind, 0) + 1
        self.pending.append(mismatch_row(self.entity, mismatch))
        if len(self.pending) >= FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        reports.insert_mismatches(self.engine, self.report_id, self.pending, self.detected_at)
        self.pending = []


def mismatch_row(entity: EntityMapping, mismatch: Mismatch) -> dict[str, Any]:
    fields: dict[str, Any] | None = mismatch.fields or None
    if mismatch.kind is MismatchKind.ORPHAN_IN_MONGO and entity.target.embedded:
        # An orphan element has no source row to name its parent: keep where it was found.
        fields = {entity.target.embedded.parent_key:
                  {"source": None, "target": json_value(mismatch.parent)}}
    if mismatch.kind is MismatchKind.ORPHAN_IN_MONGO and not is_key(mismatch.key,
                                                                     entity.key_kind):
        # A key of a type no source row can hold (an ObjectId among strings): its text in
        # `record_key` would name another key, so repair must know it is a stray.
        fields = {**(fields or {}), STRAY_KEY: {"source": None,
                                                "target": type(mismatch.key).__name__}}
    return {"entity": mismatch.entity, "record_key": str(mismatch.key),
            "kind": mismatch.kind.value, "fields": fields, "repair_status": "reported"}


def diff_chunk(engine: sa.Engine, db: Database[dict[str, Any]], config: ReconConfig,
               report_id: int, window: RunWindow, chunk: ChunkPlan,
               detected_at: datetime, *, progress: ProgressCallback | None = None,
               progress_interval: float = PROGRESS_INTERVAL,
               clock: Callable[[], float] = time.monotonic) -> ChunkResult:
    """Extract both sides of one chunk, diff them, and record the mismatches. `progress`
    is told at the start, at most every `progress_interval` seconds (the clock is read
    once per batch of rows, never per row) and at the end."""
    entity = config.entity(chunk.entity)
    sink = _MismatchSink(engine, entity, report_id, detected_at, [], {})
    tally = ScanTally()
    meter = None
    if progress is not None:
        total, estimated = _expected_rows(engine, config, window, chunk)
        meter = ProgressMeter(chunk.name, total, progress, estimated=estimated,
                              interval=progress_interval, clock=clock)

    def read(rows: int) -> None:
        if meter is not None:
            meter.read(rows, sum(sink.counts.values()))

    mismatches = (_scan_mismatches(engine, db, entity, window, chunk, tally, read)
                  if chunk.access is AccessPath.SCAN
                  else _lookup_mismatches(engine, db, entity, window, chunk, tally, read))
    with fewer_collections():
        for mismatch in mismatches:
            sink.add(mismatch)
        sink.flush()
    if meter is not None:
        meter.finish(tally.checked, sum(sink.counts.values()))
    return ChunkResult(
        entity.name, tally.checked, sink.counts.get(MismatchKind.MISSING_IN_MONGO, 0),
        sink.counts.get(MismatchKind.FIELD_MISMATCH, 0),
        sink.counts.get(MismatchKind.ORPHAN_IN_MONGO, 0))


def _expected_rows(engine: sa.Engine, config: ReconConfig, window: RunWindow,
                   chunk: ChunkPlan) -> tuple[int | None, bool]:
    """The rows the chunk should judge, for progress only: (rows, estimated). Counted by
    the plan where it counted; a key range holds about `chunk_size` rows; an uncounted
    full scan takes the catalog's estimate (no scan), else unknown."""
    if chunk.lower is not None or chunk.upper is not None:
        size = config.settings.chunk_size
        return (min(size, chunk.rows) if chunk.rows is not None else size), True
    if chunk.rows is not None:
        return chunk.rows, False
    if window.full_scan:
        return estimate_rows(engine, config.entity(chunk.entity)), True
    return None, False


def _counted(batches: Iterable[Sequence[Any]], read: Callable[[int], None]
             ) -> Iterator[Sequence[Any]]:
    for batch in batches:
        read(len(batch))
        yield batch


def _scan_mismatches(engine: sa.Engine, db: Database[dict[str, Any]], entity: EntityMapping,
                     window: RunWindow, chunk: ChunkPlan, tally: ScanTally,
                     read: Callable[[int], None]) -> Iterator[Mismatch]:
    """One sorted cursor per side, merged by `diff_sorted`."""
    start, end = (None, None) if window.full_scan else (window.start, window.end)
    # Batches are read ahead on both sides: the servers work while this thread compares.
    rows = _counted(prefetched(stream_row_values(
        engine, entity, start=start, end=end, lower=chunk.lower, upper=chunk.upper)), read)
    documents = prefetched(scan_target_documents(
        db, entity, lower=chunk.lower, upper=chunk.upper))
    candidates: list[TargetRecord] = []
    for item in diff_sorted(entity, rows, documents, window, tally):
        if isinstance(item, Mismatch):
            yield item
        elif window.full_scan:
            yield _orphan(entity, item)  # the stream holds every source row
        elif _updated_in_window(entity, item, window):
            candidates.append(item)
            if len(candidates) >= IN_BATCH:
                yield from _confirmed_orphans(engine, entity, candidates)
                candidates = []
    yield from _confirmed_orphans(engine, entity, candidates)
    if not window.full_scan:
        yield from _left_scope_orphans(engine, db, entity, window, chunk)


def _lookup_mismatches(engine: sa.Engine, db: Database[dict[str, Any]],
                       entity: EntityMapping, window: RunWindow, chunk: ChunkPlan,
                       tally: ScanTally, read: Callable[[int], None]) -> Iterator[Mismatch]:
    """The window's source rows, their targets fetched in `$in` batches."""
    key, embedded = entity.source.key, entity.target.embedded
    for batch in stream_rows(engine, entity, start=window.start, end=window.end,
                             lower=chunk.lower, upper=chunk.upper, batch_size=IN_BATCH):
        parents = [r[embedded.parent_key] for r in batch] if embedded else None
        snapshot = fetch_targets(db, entity, [r[key] for r in batch], parents)
        tally.checked += len(batch)
        read(len(batch))
        for row in batch:
            # embedded: only the element under the row's own parent counts
            mismatch = judge(entity, row, snapshot.record_at(  # type: ignore[arg-type]
                row[key], row[embedded.parent_key] if embedded else None))
            if mismatch is not None:
                yield mismatch
    candidates = [r for r in find_updated_between(db, entity, window.start, window.end)
                  if _in_bounds(chunk, r.parent if embedded else r.key)]
    for start in range(0, len(candidates), IN_BATCH):
        yield from _confirmed_orphans(engine, entity, candidates[start:start + IN_BATCH])
    yield from _left_scope_orphans(engine, db, entity, window, chunk)


def _left_scope_orphans(engine: sa.Engine, db: Database[dict[str, Any]],
                        entity: EntityMapping, window: RunWindow,
                        chunk: ChunkPlan) -> Iterator[Mismatch]:
    """Documents of rows that left `source.where` in the window (a soft delete changes the
    row, not its document): orphans, though their own `updated_at` is older. Those whose
    `updated_at` is in the window were candidates already."""
    keys = keys_out_of_scope(engine, entity, start=window.start, end=window.end,
                             lower=chunk.lower, upper=chunk.upper)
    for start in range(0, len(keys), IN_BATCH):
        snapshot = fetch_targets(db, entity, keys[start:start + IN_BATCH])
        found = snapshot.elements.values() if entity.target.embedded else \
            snapshot.records.values()
        yield from _confirmed_orphans(engine, entity, [
            r for r in found if not _updated_in_window(entity, r, window)])


def _orphan(entity: EntityMapping, record: TargetRecord) -> Mismatch:
    mismatch = judge(entity, None, record)
    assert mismatch is not None
    return mismatch


def _updated_in_window(entity: EntityMapping, record: TargetRecord, window: RunWindow) -> bool:
    field = entity.updated_at_field
    value = record.values.get(field.target) if field else None
    return isinstance(value, datetime) and window.start <= value < window.end


def _confirmed_orphans(engine: sa.Engine, entity: EntityMapping,
                       candidates: list[TargetRecord]) -> Iterator[Mismatch]:
    """Target records in the window with no source row at all."""
    existing = existing_merge_keys(engine, entity, [c.key for c in candidates])
    for record in candidates:
        if merge_key(entity, record.key, record.parent) not in existing:
            yield _orphan(entity, record)

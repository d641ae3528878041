"""The steps of one reconciliation run that are not a module of their own: open the report,
diff a chunk without failing the run, decide repairs, and the outbox retry and
cleanup with their figures named as the report's columns (SPEC 4.1). The ops of
`defs/ops.py` call them; the op graph (`defs/assets.py`) is the only place that puts them
in order."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from pymongo.database import Database
from pymongo.errors import PyMongoError

from recon_pipeline.engine.cleanup import clean_up as clean_up_tables
from recon_pipeline.engine.extract import ChunkPlan, ChunkResult, diff_chunk
from recon_pipeline.engine.outbox.deliver import OutboxResult, deliver_outbox
from recon_pipeline.engine.progress import PROGRESS_INTERVAL, ProgressCallback
from recon_pipeline.engine.repair import repairable_kinds
from recon_pipeline.engine.window import RunWindow
from recon_pipeline.model.mapping import ReconConfig
from recon_pipeline.model.masking import mask_text
from recon_pipeline.stores import reports

REPAIR_BATCH = 5000


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class RunScope:
    """What one run judges and how: its id, window, partition, dry run, entities."""

    run_id: str
    window: RunWindow
    partition_key: str | None = None
    dry_run: bool = False
    entities: tuple[str, ...] | None = None

    def entity_names(self, config: ReconConfig) -> tuple[str, ...]:
        if self.entities is None:
            return config.entity_names
        for name in self.entities:
            config.entity(name)  # fails naming the unknown entity
        return self.entities


class RepairAction(enum.StrEnum):
    REPAIR = "repair"
    SKIPPED_LIMIT = "skipped_limit"
    DRY_RUN = "dry_run"


@dataclass(frozen=True, slots=True)
class RepairDecision:
    action: RepairAction
    batches: tuple[tuple[int, int], ...] = ()


def begin_run(engine: sa.Engine, scope: RunScope, started_at: datetime) -> int:
    window = scope.window
    return reports.insert_report(engine, {
        "run_id": scope.run_id, "partition_key": scope.partition_key,
        "window_start": None if window.full_scan else window.start,
        "window_end": window.end, "full_scan": window.full_scan,
        "dry_run": scope.dry_run, "started_at": started_at})


def safe_diff_chunk(engine: sa.Engine, db: Database[dict[str, Any]], config: ReconConfig,
                    report_id: int, window: RunWindow, chunk: ChunkPlan,
                    detected_at: datetime, *, progress: ProgressCallback | None = None,
                    progress_interval: float = PROGRESS_INTERVAL) -> ChunkResult:
    """A chunk that cannot be compared makes the run `partial`, it does not stop it."""
    try:
        return diff_chunk(engine, db, config, report_id, window, chunk, detected_at,
                          progress=progress, progress_interval=progress_interval)
    except PyMongoError as error:
        message = mask_text(f"chunk {chunk.name}: MongoDB error: {error}")
        return ChunkResult(chunk.entity, error=message)


def decide_repairs(engine: sa.Engine, config: ReconConfig, report_id: int, *,
                   dry_run: bool) -> RepairDecision:
    """More mismatches than `repair_limit`: repair none. Dry run: repair none. Orphans
    stay `reported` unless orphan deletion is on."""
    found = sum(count for *_, count in reports.tally(engine, report_id))
    repairable = repairable_kinds(config.settings)
    if found > config.settings.repair_limit:
        reports.set_status_where(engine, report_id, "skipped_limit",
                                 kinds=["missing_in_mongo", "field_mismatch",
                                        "orphan_in_mongo"])
        return RepairDecision(RepairAction.SKIPPED_LIMIT)
    if dry_run:
        reports.set_status_where(engine, report_id, "dry_run", kinds=repairable)
        return RepairDecision(RepairAction.DRY_RUN)
    return RepairDecision(RepairAction.REPAIR,
                          tuple(reports.id_ranges(engine, report_id, REPAIR_BATCH)))


def retry_outbox_counts(engine: sa.Engine, db: Database[dict[str, Any]], config: ReconConfig, *,
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


def clean_up_counts(engine: sa.Engine, config: ReconConfig, now: datetime) -> dict[str, int]:
    result = clean_up_tables(engine, config.settings, now=now)
    return {"idempotency_keys_deleted": result.idempotency_keys_deleted,
            "outbox_messages_deleted": result.outbox_messages_deleted}

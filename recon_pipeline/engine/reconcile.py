"""A reconciliation run, step by step: begin the report, plan chunks, diff each chunk,
decide and run repairs, finish the report. The Dagster ops call these steps one by one
(chunks fanned out); `run_reconciliation` calls them in sequence in one process."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from pymongo.database import Database
from pymongo.errors import PyMongoError

from recon_pipeline.engine.extract import ChunkPlan, ChunkResult, diff_chunk, plan_chunks
from recon_pipeline.engine.mapping import ReconConfig
from recon_pipeline.engine.repair import repair_batch, repairable_kinds
from recon_pipeline.engine.report import (
    RunReport,
    finish_report,
    record_chunk,
    record_figures,
    record_repairs,
)
from recon_pipeline.engine.window import RunWindow
from recon_pipeline.masking import mask_text
from recon_pipeline.stores import reports
from recon_pipeline.stores.mongo import create_client

REPAIR_BATCH = 5000
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class RunRequest:
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


def begin_run(engine: sa.Engine, request: RunRequest, started_at: datetime) -> int:
    window = request.window
    return reports.insert_report(engine, {
        "run_id": request.run_id, "partition_key": request.partition_key,
        "window_start": None if window.full_scan else window.start,
        "window_end": window.end, "full_scan": window.full_scan,
        "dry_run": request.dry_run, "started_at": started_at})


def mongo_reachable(db: Database[dict[str, Any]]) -> bool:
    try:
        db.client.admin.command("ping")
        return True
    except PyMongoError:
        return False


def safe_diff_chunk(engine: sa.Engine, db: Database[dict[str, Any]], config: ReconConfig,
                    report_id: int, window: RunWindow, chunk: ChunkPlan,
                    detected_at: datetime) -> ChunkResult:
    """A chunk that cannot be compared makes the run `partial`, it does not stop it."""
    try:
        return diff_chunk(engine, db, config, report_id, window, chunk, detected_at)
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


def run_reconciliation(
    engine: sa.Engine,
    mongo_url: str,
    mongo_database: str,
    config: ReconConfig,
    request: RunRequest,
    *,
    clock: Clock = utc_now,
    outbox: Callable[[Database[dict[str, Any]]], Mapping[str, int]] | None = None,
    cleanup: Callable[[], Mapping[str, int]] | None = None,
) -> RunReport:
    """The whole run in this process: outbox, extract + diff, repair, cleanup, report."""
    started = clock()
    report_id = begin_run(engine, request, started)
    client = create_client(mongo_url)
    try:
        db = client[mongo_database]
        available = mongo_reachable(db)
        outbox_counts = outbox(db) if outbox else {}
        record_figures(engine, report_id, outbox_counts)
        chunks: list[ChunkResult] = []
        decision = None
        if available:
            for chunk in plan_chunks(engine, config, request.window,
                                     request.entity_names(config)):
                chunks.append(safe_diff_chunk(engine, db, config, report_id, request.window,
                                              chunk, started))
                record_chunk(engine, report_id, chunks[-1])
            decision = decide_repairs(engine, config, report_id, dry_run=request.dry_run)
            for batch in decision.batches:
                repair_batch(engine, db, config, report_id, batch, clock())
            record_repairs(engine, report_id)
        cleanup_counts = cleanup() if cleanup else {}
        record_figures(engine, report_id, cleanup_counts)
        return finish_report(
            engine, report_id, chunks=chunks, outbox=outbox_counts, cleanup=cleanup_counts,
            mongo_available=available, finished_at=clock(),
            extra_details={"repair_decision": decision.action.value if decision else None})
    finally:
        client.close()

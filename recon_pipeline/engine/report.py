"""One run's report: the figures of `reconciliation_reports`, the status rule (SPEC 6,
"Status") and the per-entity breakdown. The figures are tallied from the recorded
mismatch rows, so the audit trail and the report can never disagree.

Each phase also writes its figures to the row as soon as it completes (`record_*`): the
row says `failed` until `finish_report`, and a run that fails keeps what it did."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from recon_pipeline.engine.extract import ChunkResult
from recon_pipeline.stores import reports
from recon_pipeline.stores.schema import REPORT_COUNTS

SAMPLE_SIZE = 20
UNREPAIRED = ("failed", "skipped_limit", "dry_run", "reported")
OUTBOX_COUNTS = ("outbox_attempted", "outbox_sent", "outbox_failed", "outbox_dead",
                 "outbox_stale")
CLEANUP_COUNTS = ("idempotency_keys_deleted", "outbox_messages_deleted")


@dataclass(frozen=True, slots=True)
class RunReport:
    """A finished report row, as stored."""

    id: int
    run_id: str
    partition_key: str | None
    window_start: datetime | None
    window_end: datetime | None
    full_scan: bool
    dry_run: bool
    started_at: datetime
    finished_at: datetime | None
    status: str
    mongo_available: bool
    counts: dict[str, int]
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> RunReport:
        return cls(
            id=row["id"], run_id=row["run_id"], partition_key=row["partition_key"],
            window_start=row["window_start"], window_end=row["window_end"],
            full_scan=row["full_scan"], dry_run=row["dry_run"], started_at=row["started_at"],
            finished_at=row["finished_at"], status=row["status"],
            mongo_available=row["mongo_available"],
            counts={name: int(row[name]) for name in REPORT_COUNTS},
            details=dict(row["details"] or {}))

    @property
    def mismatch_rate(self) -> float:
        checked = self.counts["records_checked"]
        return self.counts["mismatches_found"] / checked if checked else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "run_id": self.run_id, "partition_key": self.partition_key,
                "window_start": self.window_start, "window_end": self.window_end,
                "full_scan": self.full_scan, "dry_run": self.dry_run,
                "started_at": self.started_at, "finished_at": self.finished_at,
                "status": self.status, "mongo_available": self.mongo_available,
                **self.counts, "details": self.details}


def record_figures(engine: sa.Engine, report_id: int, figures: Mapping[str, int]) -> None:
    """Counts of a completed phase (outbox, cleanup), written at once."""
    counts = {name: int(value) for name, value in figures.items() if name in REPORT_COUNTS}
    if counts:
        reports.update_report(engine, report_id, counts)


def record_chunk(engine: sa.Engine, report_id: int, chunk: ChunkResult) -> None:
    """A compared chunk's counts, added to the row's (chunks finish in any order)."""
    found = chunk.missing_in_mongo + chunk.field_mismatches + chunk.orphans_in_mongo
    reports.add_counts(engine, report_id, {
        "records_checked": chunk.records_checked, "missing_in_mongo": chunk.missing_in_mongo,
        "field_mismatches": chunk.field_mismatches, "orphans_in_mongo": chunk.orphans_in_mongo,
        "mismatches_found": found})


def record_repairs(engine: sa.Engine, report_id: int) -> None:
    """The repair counts so far, from the mismatch rows."""
    reports.refresh_repair_counts(engine, report_id)


def decide_status(*, mongo_available: bool, entity_errors: bool, unrepaired: int,
                  dead_letters: int, connection_lost: bool = False) -> str:
    """`connection_lost`: MongoDB went away during the run (repair stopped by it)."""
    if not mongo_available or entity_errors or connection_lost:
        return "partial"
    if unrepaired or dead_letters:
        return "needs_attention"
    return "success"


def entity_breakdown(tallies: Sequence[tuple[str, str, str, int]],
                     chunks: Sequence[ChunkResult]) -> dict[str, dict[str, Any]]:
    entities: dict[str, dict[str, Any]] = {}

    def entry(name: str) -> dict[str, Any]:
        return entities.setdefault(name, {
            "records_checked": 0, "missing_in_mongo": 0, "field_mismatches": 0,
            "orphans_in_mongo": 0, "repaired": 0, "resolved": 0, "repair_failed": 0,
            "repair_skipped": 0, "reported": 0, "errors": []})

    for chunk in chunks:
        entry(chunk.entity)["records_checked"] += chunk.records_checked
        if chunk.error:
            entry(chunk.entity)["errors"].append(chunk.error)
    kind_column = {"missing_in_mongo": "missing_in_mongo", "field_mismatch": "field_mismatches",
                   "orphan_in_mongo": "orphans_in_mongo"}
    status_column = {"repaired": "repaired", "resolved": "resolved", "failed": "repair_failed",
                     "skipped_limit": "repair_skipped", "dry_run": "repair_skipped",
                     "reported": "reported"}
    for name, kind, status, count in tallies:
        entry(name)[kind_column[kind]] += count
        entry(name)[status_column[status]] += count
    return entities


def finish_report(engine: sa.Engine, report_id: int, *, chunks: Sequence[ChunkResult],
                  outbox: Mapping[str, int], cleanup: Mapping[str, int],
                  mongo_available: bool, finished_at: datetime,
                  extra_details: Mapping[str, Any] | None = None) -> RunReport:
    """Tally the run, apply the status rule and complete the report row."""
    tallies = reports.tally(engine, report_id)
    entities = entity_breakdown(tallies, chunks)
    counts = {name: 0 for name in REPORT_COUNTS}
    for figures in entities.values():
        for name in ("records_checked", "missing_in_mongo", "field_mismatches",
                     "orphans_in_mongo", "repaired", "repair_failed", "repair_skipped"):
            counts[name] += figures[name]
    counts["mismatches_found"] = (counts["missing_in_mongo"] + counts["field_mismatches"]
                                  + counts["orphans_in_mongo"])
    for name in (*OUTBOX_COUNTS, *CLEANUP_COUNTS):
        counts[name] = int(outbox.get(name, cleanup.get(name, 0)))
    unrepaired = sum(count for _, _, status, count in tallies if status in UNREPAIRED)
    stop = reports.repair_stop(engine, report_id)
    status = decide_status(
        mongo_available=mongo_available,
        entity_errors=any(chunk.error for chunk in chunks),
        unrepaired=unrepaired, dead_letters=counts["outbox_dead"],
        connection_lost=bool(stop and stop["connection_lost"]))
    details = {"entities": entities, "sample": reports.sample(engine, report_id, SAMPLE_SIZE),
               **({"repair_stopped": stop} if stop else {}), **(extra_details or {})}
    reports.update_report(engine, report_id, {
        **counts, "status": status, "mongo_available": mongo_available,
        "finished_at": finished_at, "details": _jsonable(details)})
    return RunReport.from_row(reports.read_report(engine, report_id))


def _jsonable(value: Any) -> Any:
    from recon_pipeline.engine.diff import json_value

    return json_value(value)

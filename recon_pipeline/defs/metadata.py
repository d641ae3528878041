"""A finished report as materialization metadata: every count numeric (the UI plots
their trend), the report id, window, status, a per-entity table and a markdown summary."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from dagster import MetadataValue, TableColumn, TableMetadataValue, TableRecord, TableSchema

from recon_pipeline.engine.report import RunReport

ENTITY_COLUMNS = ("records_checked", "missing_in_mongo", "field_mismatches", "orphans_in_mongo",
                  "repaired", "resolved", "repair_failed", "repair_skipped", "reported")
ENTITY_SCHEMA = TableSchema(columns=[TableColumn("entity", "string"),
                                     *(TableColumn(c, "int") for c in ENTITY_COLUMNS),
                                     TableColumn("errors", "string")])


def _iso(moment: datetime | None) -> str:
    return moment.isoformat() if moment else ""


def entity_table(report: RunReport) -> TableMetadataValue:
    entities: dict[str, dict[str, Any]] = report.details.get("entities", {})
    return TableMetadataValue(
        records=[TableRecord({"entity": name, **{c: int(row.get(c, 0)) for c in ENTITY_COLUMNS},
                              "errors": "; ".join(row.get("errors", []))})
                 for name, row in sorted(entities.items())],
        schema=ENTITY_SCHEMA)


def summary_markdown(report: RunReport) -> str:
    c = report.counts
    window = ("full scan" if report.full_scan else f"`{_iso(report.window_start)}`")
    lines = [
        f"## Reconciliation report {report.id}: **{report.status}**", "",
        f"Window {window} → `{_iso(report.window_end)}`"
        f"{' (dry run)' if report.dry_run else ''}; MongoDB "
        f"{'reachable' if report.mongo_available else '**unreachable**'}.", "",
        "| checked | mismatches | missing | field | orphans | repaired | failed | skipped |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {c['records_checked']} | {c['mismatches_found']} | {c['missing_in_mongo']} "
        f"| {c['field_mismatches']} | {c['orphans_in_mongo']} | {c['repaired']} "
        f"| {c['repair_failed']} | {c['repair_skipped']} |", "",
        f"Outbox: {c['outbox_attempted']} attempted, {c['outbox_sent']} sent "
        f"({c['outbox_stale']} stale), {c['outbox_failed']} failed, {c['outbox_dead']} dead. "
        f"Cleanup: {c['idempotency_keys_deleted']} idempotency keys, "
        f"{c['outbox_messages_deleted']} outbox messages deleted.",
    ]
    stop = report.details.get("repair_stopped")
    if stop:  # the operator's first question on a run whose repairs all failed
        lines += ["", f"Repair stopped by a MongoDB error: {stop['error']}. The mismatches "
                  "left are `failed`; the next run finds them again."]
    return "\n".join(lines)


def report_metadata(report: RunReport) -> dict[str, Any]:
    return {
        "report_id": report.id,
        "status": report.status,
        "window_start": _iso(report.window_start),
        "window_end": _iso(report.window_end),
        "partition_key": report.partition_key or "",
        "full_scan": report.full_scan,
        "dry_run": report.dry_run,
        "mongo_available": report.mongo_available,
        **{name: int(value) for name, value in report.counts.items()},
        "mismatch_rate": MetadataValue.float(report.mismatch_rate),
        "entities": entity_table(report),
        "summary": MetadataValue.md(summary_markdown(report)),
    }

"""A finished report as materialization metadata (SPEC 7): every count numeric, overall
and per entity as `<entity>/<count>` (the UI plots each as a trend), the report id as
text (an id is not a trend), window, status, a per-entity table, `field_drift` (which
fields drift), `mismatch_sample` (the first mismatches, field by field) and a markdown
summary."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from dagster import MetadataValue, TableColumn, TableMetadataValue, TableRecord, TableSchema

from recon_pipeline.engine.report import RunReport
from recon_pipeline.stores.reports import MismatchLine

ENTITY_COLUMNS = ("records_checked", "missing_in_mongo", "field_mismatches", "orphans_in_mongo",
                  "repaired", "resolved", "repair_failed", "repair_skipped", "reported")
ENTITY_SCHEMA = TableSchema(columns=[TableColumn("entity", "string"),
                                     *(TableColumn(c, "int") for c in ENTITY_COLUMNS),
                                     TableColumn("errors", "string")])
# Per entity, plotted as `<entity>/<count>`: the breakdown's counts and their sum.
ENTITY_COUNTS = ("records_checked", "mismatches_found", "missing_in_mongo",
                 "field_mismatches", "orphans_in_mongo", "repaired", "resolved",
                 "repair_failed", "repair_skipped", "reported")
FOUND = ("missing_in_mongo", "field_mismatches", "orphans_in_mongo")
SAMPLE_ROWS = 20
FIELD_DRIFT_SCHEMA = TableSchema(columns=[
    TableColumn("entity", "string"), TableColumn("field", "string"),
    TableColumn("mismatches", "int")])
SAMPLE_SCHEMA = TableSchema(columns=[
    TableColumn(name, "string") for name in ("entity", "key", "kind", "field", "source_value",
                                             "target_value", "repair_status")])


def _iso(moment: datetime | None) -> str:
    return moment.isoformat() if moment else ""


def entity_table(report: RunReport) -> TableMetadataValue:
    entities: dict[str, dict[str, Any]] = report.details.get("entities", {})
    return TableMetadataValue(
        records=[TableRecord({"entity": name, **{c: int(row.get(c, 0)) for c in ENTITY_COLUMNS},
                              "errors": "; ".join(row.get("errors", []))})
                 for name, row in sorted(entities.items())],
        schema=ENTITY_SCHEMA)


def entity_counts(report: RunReport) -> dict[str, int]:
    figures: dict[str, int] = {}
    for name, row in sorted(report.details.get("entities", {}).items()):
        counts = {c: int(row.get(c, 0)) for c in ENTITY_COUNTS if c != "mismatches_found"}
        counts["mismatches_found"] = sum(counts[c] for c in FOUND)
        figures |= {f"{name}/{c}": counts[c] for c in ENTITY_COUNTS}
    return figures


def field_drift_table(drift: list[tuple[str, str, int]]) -> TableMetadataValue:
    return TableMetadataValue(
        records=[TableRecord({"entity": e, "field": f, "mismatches": n}) for e, f, n in drift],
        schema=FIELD_DRIFT_SCHEMA)


def mismatch_sample_table(lines: list[MismatchLine]) -> TableMetadataValue:
    return TableMetadataValue(
        records=[TableRecord({"entity": x.entity, "key": x.key, "kind": x.kind,
                              "field": x.field, "source_value": x.source_value,
                              "target_value": x.target_value,
                              "repair_status": x.repair_status})
                 for x in lines[:SAMPLE_ROWS]],
        schema=SAMPLE_SCHEMA)


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
    if c["mismatches_found"]:
        lines += ["", f"Every mismatch: `recon-pipeline report --mismatches {report.id}` "
                  "(`--csv` for a spreadsheet)."]
    stop = report.details.get("repair_stopped")
    if stop:  # the operator's first question on a run whose repairs all failed
        lines += ["", f"Repair stopped by a MongoDB error: {stop['error']}. The mismatches "
                  "left are `failed`; the next run finds them again."]
    return "\n".join(lines)


def report_metadata(report: RunReport, drift: list[tuple[str, str, int]],
                    sample: list[MismatchLine]) -> dict[str, Any]:
    """`drift`: stores.reports.field_drift; `sample`: the first SAMPLE_ROWS lines of
    stores.reports.mismatch_lines."""
    return {
        "report_id": MetadataValue.text(str(report.id)),
        "status": report.status,
        "window_start": _iso(report.window_start),
        "window_end": _iso(report.window_end),
        "partition_key": report.partition_key or "",
        "full_scan": report.full_scan,
        "dry_run": report.dry_run,
        "mongo_available": report.mongo_available,
        **{name: int(value) for name, value in report.counts.items()},
        "mismatch_rate": MetadataValue.float(report.mismatch_rate),
        **entity_counts(report),
        "entities": entity_table(report),
        "field_drift": field_drift_table(drift),
        "mismatch_sample": mismatch_sample_table(sample),
        "summary": MetadataValue.md(summary_markdown(report)),
    }

"""What an operator sees of a run in the UI (SPEC 7), on an ephemeral instance: the
materialization metadata (`report_id` as text, `<entity>/<count>`, `field_drift`,
`mismatch_sample`) and the sixth check against a seeded history of finished reports."""

import json
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from dagster import AssetCheckSeverity, MetadataValue
from pymongo.database import Database

from recon_pipeline.local.demo_data import MUTATIONS
from recon_pipeline.model.mapping import ReconConfig
from recon_pipeline.stores.schema import reconciliation_mismatches, reconciliation_reports
from recon_pipeline_tests.dagster_support import SEED_NOW, report_of, run_job, seed

ENTITY_COUNTS = ("records_checked", "mismatches_found", "missing_in_mongo",
                 "field_mismatches", "orphans_in_mongo", "repaired", "resolved",
                 "repair_failed", "repair_skipped", "reported")


def expected_lines(engine: sa.Engine, report_id: int) -> list[tuple[str, ...]]:
    """The report's mismatches flattened in Python, independently of the SQL under test."""
    m = reconciliation_mismatches.c
    with engine.connect() as conn:
        rows = conn.execute(sa.select(reconciliation_mismatches)
                            .where(m.report_id == report_id).order_by(m.id)).mappings().all()
    lines = []
    for row in rows:
        for name in sorted(row["fields"] or {}) or [""]:
            values = (row["fields"] or {}).get(name)
            lines.append((row["entity"], row["record_key"], row["kind"], name,
                          json.dumps(values["source"]) if values else "",
                          json.dumps(values["target"]) if values else "",
                          row["repair_status"]))
    return lines


def rows_of(table: Any) -> list[tuple[Any, ...]]:
    """A table's records as tuples, in the order of its schema's columns."""
    columns = [c.name for c in table.value.schema.columns]
    return [tuple(r.data[c] for c in columns) for r in table.value.records]


def test_metadata_names_every_entity_count_the_drifted_fields_and_a_sample(
    pg_url: str, pg_engine: sa.Engine, mongo_db: Database[Any], config: ReconConfig
) -> None:
    seeded = seed(pg_engine, mongo_db, config)
    result = run_job(pg_url, mongo_db)
    assert result.success
    report = report_of(pg_engine, result)
    [event] = result.get_asset_materialization_events()
    metadata = event.materialization.metadata

    assert metadata["report_id"] == MetadataValue.text(str(report.id))
    per_entity = {name: value.value for name, value in metadata.items() if "/" in name}
    expected: dict[str, int] = {}
    for entity, drift in sorted(seeded.summary.drift.items()):
        found = len(drift.missing) + len(drift.mismatched) + len(drift.orphans)
        expected |= {f"{entity}/{name}": value for name, value in {
            "records_checked": drift.rows, "mismatches_found": found,
            "missing_in_mongo": len(drift.missing), "field_mismatches": len(drift.mismatched),
            "orphans_in_mongo": len(drift.orphans),
            "repaired": len(drift.missing) + len(drift.mismatched), "resolved": 0,
            "repair_failed": 0, "repair_skipped": 0, "reported": len(drift.orphans)}.items()}
    assert per_entity == expected
    assert all(isinstance(metadata[name].value, int) for name in per_entity)  # plotted

    drifted_field = {"clients": "status", "creditor_debts": "creditor_name",
                     "incoming_emails": "subject"}
    assert rows_of(metadata["field_drift"]) == [
        (entity, drifted_field[entity], len(drift.mismatched))
        for entity, drift in sorted(seeded.summary.drift.items()) if drift.mismatched]

    sample = rows_of(metadata["mismatch_sample"])
    lines = expected_lines(pg_engine, report.id)
    assert len(lines) > 20
    assert sample == lines[:20]
    assert [c.name for c in metadata["mismatch_sample"].value.schema.columns] == [
        "entity", "key", "kind", "field", "source_value", "target_value", "repair_status"]
    for entity, _key, kind, _, _, target, status in sample:
        if kind == "field_mismatch":
            assert (target, status) == (json.dumps(MUTATIONS[entity][1]), "repaired")


def insert_history(engine: sa.Engine, rates: list[float], *, full_scan: bool = False,
                   finished: bool = True) -> None:
    """Finished reports of 10 000 records each, with these mismatch rates, before SEED_NOW."""
    with engine.begin() as conn:
        for i, rate in enumerate(rates):
            started = SEED_NOW - timedelta(days=10, hours=i)
            conn.execute(reconciliation_reports.insert().values(
                run_id=f"history-{i}", window_start=started - timedelta(hours=1),
                window_end=started, full_scan=full_scan, started_at=started,
                finished_at=started + timedelta(minutes=1) if finished else None,
                status="success", records_checked=10_000,
                mismatches_found=round(rate * 10_000)))


def usual_range_check(result: Any) -> tuple[bool, AssetCheckSeverity, str]:
    [evaluation] = [e for e in result.get_asset_check_evaluations()
                    if e.check_name == "mismatch_rate_in_usual_range"]
    return evaluation.passed, evaluation.severity, evaluation.description


# The seeded run's rate is about 0.25 (drift rate 0.2 plus orphans).
HISTORIES = {
    "fewer than 12 (an unfinished one not counted)": (
        lambda e, rate: (insert_history(e, [0.001] * 11),
                         insert_history(e, [0.001], finished=False)),
        True, "not enough history: 11 finished windowed reports, 12 needed"),
    "an outlier": (lambda e, rate: insert_history(e, [rate / 10] * 6 + [rate / 8] * 6),
                   False, "above the usual range"),
    "within the usual range": (
        lambda e, rate: insert_history(e, [rate * 0.9, rate, rate * 1.1] * 4),
        True, "within the usual range"),
    "full scans ignored by a windowed run": (
        lambda e, rate: (insert_history(e, [0.001] * 20, full_scan=True),
                         insert_history(e, [0.001] * 11)),
        True, "not enough history: 11 finished windowed reports"),
}


@pytest.mark.parametrize("case", list(HISTORIES))
def test_mismatch_rate_in_usual_range_on_a_seeded_history(
    case: str, pg_url: str, pg_engine: sa.Engine, mongo_db: Database[Any],
    config: ReconConfig,
) -> None:
    seeded = seed(pg_engine, mongo_db, config)
    rate = seeded.counts["mismatches_found"] / seeded.counts["records_checked"]
    fill, passes, says = HISTORIES[case]
    fill(pg_engine, rate)
    result = run_job(pg_url, mongo_db)
    assert result.success
    passed, severity, description = usual_range_check(result)
    assert (passed, severity) == (passes, AssetCheckSeverity.WARN)
    assert says in description

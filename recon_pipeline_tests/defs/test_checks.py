"""The five checks as a table: a report in, pass/fail and severity out (pure)."""

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from dagster import AssetCheckSeverity

from recon_pipeline.defs.checks import CHECK_NAMES, CheckInputs, check_results
from recon_pipeline.engine.report import RunReport
from recon_pipeline.stores.schema import REPORT_COUNTS

AT = datetime(2026, 3, 1, 12, tzinfo=UTC)


def report(entities: dict[str, dict[str, int]] | None = None, *, mongo: bool = True,
           **counts: int) -> RunReport:
    figures = {name: 0 for name in REPORT_COUNTS} | {"records_checked": 1000} | counts
    return RunReport(id=7, run_id="r", partition_key=None, window_start=AT, window_end=AT,
                     full_scan=False, dry_run=False, started_at=AT, finished_at=AT,
                     status="success", mongo_available=mongo, counts=figures,
                     details={"entities": entities or {}})


CLEAN = CheckInputs(report(), 0.01, None)
ALL_PASS = dict.fromkeys(CHECK_NAMES, True)

CASES: list[tuple[str, CheckInputs, dict[str, bool]]] = [
    ("clean run", CLEAN, {}),
    ("everything repaired or resolved",
     replace(CLEAN, report=report({"clients": {"repaired": 4, "resolved": 1}},
                                  mismatches_found=5, repaired=4)), {}),
    ("a failed repair", replace(CLEAN, report=report({"clients": {"repair_failed": 1}})),
     {"no_unrepaired_mismatches": False}),
    ("over the repair limit", replace(CLEAN, report=report({"x": {"repair_skipped": 3}})),
     {"no_unrepaired_mismatches": False}),
    ("orphans only reported", replace(CLEAN, report=report({"x": {"reported": 2}})),
     {"no_unrepaired_mismatches": False}),
    ("rate exactly at the threshold",
     replace(CLEAN, report=report(mismatches_found=10)), {}),
    ("rate above the threshold", replace(CLEAN, report=report(mismatches_found=11)),
     {"mismatch_rate_below_threshold": False}),
    ("nothing checked", replace(CLEAN, report=report(records_checked=0)), {}),
    ("a dead letter", replace(CLEAN, report=report(outbox_dead=1)),
     {"outbox_has_no_dead_letters": False}),
    ("MongoDB down", replace(CLEAN, report=report(mongo=False)), {"mongo_reachable": False}),
    ("backlog 2 h old", replace(CLEAN, oldest_due_age=timedelta(hours=2)), {}),
    ("backlog older than 2 h",
     replace(CLEAN, oldest_due_age=timedelta(hours=2, seconds=1)),
     {"outbox_backlog_fresh": False}),
]


@pytest.mark.parametrize(("inputs", "failing"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_check_outcomes(inputs: CheckInputs, failing: dict[str, bool]) -> None:
    outcome = {r.check_name: r.passed for r in check_results(inputs)}
    assert outcome == ALL_PASS | failing


def test_severities_and_report_id_in_metadata() -> None:
    results = check_results(CLEAN)
    assert [(r.check_name, r.severity) for r in results] == [
        ("no_unrepaired_mismatches", AssetCheckSeverity.ERROR),
        ("mismatch_rate_below_threshold", AssetCheckSeverity.WARN),
        ("outbox_has_no_dead_letters", AssetCheckSeverity.WARN),
        ("mongo_reachable", AssetCheckSeverity.ERROR),
        ("outbox_backlog_fresh", AssetCheckSeverity.WARN),
    ]
    metadata: Any = results[0].metadata
    assert all(r.metadata["report_id"].value == 7 for r in results)  # type: ignore[index]
    assert metadata["unrepaired"].value == 0

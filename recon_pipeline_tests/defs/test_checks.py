"""The six checks as a table: a report in, pass/fail and severity out (pure)."""

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import pytest
from dagster import AssetCheckSeverity

from recon_pipeline.defs.checks import CHECK_NAMES, CHECK_SPECS, CheckInputs, check_results
from recon_pipeline.engine.report import RunReport
from recon_pipeline.stores.outbox import Backlog, DeadLetters
from recon_pipeline.stores.schema import REPORT_COUNTS

AT = datetime(2026, 3, 1, 12, tzinfo=UTC)


def report(entities: dict[str, dict[str, int]] | None = None, *, mongo: bool = True,
           **counts: int) -> RunReport:
    figures = {name: 0 for name in REPORT_COUNTS} | {"records_checked": 1000} | counts
    return RunReport(id=7, run_id="r", partition_key=None, window_start=AT, window_end=AT,
                     full_scan=False, dry_run=False, started_at=AT, finished_at=AT,
                     status="success", mongo_available=mongo, counts=figures,
                     details={"entities": entities or {}})


def history(*mismatches: int, checked: int = 1000) -> pd.DataFrame:
    """Finished reports of 1000 records each with these mismatch counts."""
    return pd.DataFrame({"id": range(1, len(mismatches) + 1),
                         "records_checked": [checked] * len(mismatches),
                         "mismatches_found": list(mismatches)})


CLEAN = CheckInputs(report(), 0.01)
# Rates 0.2%..0.4%: median 0.3%, MAD 0.1% -> usual up to 0.6% (6 of 1000).
USUAL = history(*([2, 3, 4] * 4))
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
    ("backlog 2 h old", replace(CLEAN, backlog=Backlog(3, 41, timedelta(hours=2))), {}),
    ("backlog older than 2 h",
     replace(CLEAN, backlog=Backlog(3, 41, timedelta(hours=2, seconds=1))),
     {"outbox_backlog_fresh": False}),
    ("11 reports of history: not enough", replace(
        CLEAN, report=report(mismatches_found=9), history=history(*([2, 3, 4] * 4))[:11]), {}),
    ("rate at the top of the usual range",
     replace(CLEAN, report=report(mismatches_found=6), history=USUAL), {}),
    ("rate above the usual range",
     replace(CLEAN, report=report(mismatches_found=7), history=USUAL),
     {"mismatch_rate_in_usual_range": False}),
    ("history with nothing checked counts as rate 0", replace(
        CLEAN, report=report(mismatches_found=1),
        history=pd.concat([history(*[0] * 6), history(*[0] * 6, checked=0)])),
     {"mismatch_rate_in_usual_range": False}),
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
        ("mismatch_rate_in_usual_range", AssetCheckSeverity.WARN),
    ]
    metadata: Any = results[0].metadata
    assert all(r.metadata["report_id"].value == "7" for r in results)  # type: ignore[index]
    assert metadata["unrepaired"].value == 0


def test_every_check_has_a_description_the_ui_shows() -> None:
    assert [spec.name for spec in CHECK_SPECS] == list(CHECK_NAMES)
    assert all(spec.description and len(spec.description) > 80 for spec in CHECK_SPECS)


def values(result: Any) -> dict[str, Any]:
    return {name: entry.value for name, entry in result.metadata.items()}


def test_metadata_says_what_to_act_on() -> None:
    inputs = replace(
        CLEAN, report=report({"clients": {"repair_failed": 2, "reported": 1},
                              "incoming_emails": {"repair_skipped": 3}},
                             mismatches_found=6, outbox_dead=2),
        backlog=Backlog(5, 41, timedelta(hours=3)),
        dead=DeadLetters(4, (90, 88), "invalid payload: key missing"))
    by_name = {r.check_name: values(r) for r in check_results(inputs)}
    assert by_name["no_unrepaired_mismatches"] == {
        "report_id": "7", "unrepaired": 6, "mismatches_found": 6, "repaired": 0,
        "unrepaired_repair_failed": 2, "unrepaired_repair_skipped": 3,
        "unrepaired_reported": 1, "list_them": "recon-pipeline report --mismatches 7"}
    assert by_name["outbox_has_no_dead_letters"] == {
        "report_id": "7", "outbox_dead": 2, "outbox_attempted": 0, "dead_messages_total": 4,
        "newest_dead_message_ids": "90, 88",
        "newest_dead_error": "invalid payload: key missing"}
    assert by_name["outbox_backlog_fresh"] == {
        "report_id": "7", "oldest_due_hours": 3.0, "due_messages": 5,
        "oldest_due_message_id": 41}


def test_usual_range_metadata() -> None:
    [result] = [r for r in check_results(replace(CLEAN, report=report(mismatches_found=7),
                                                 history=USUAL))
                if r.check_name == "mismatch_rate_in_usual_range"]
    assert values(result) == pytest.approx({
        "report_id": "7", "mismatch_rate": 0.007, "history_reports": 12,
        "history_kind": "windowed", "history_median": 0.003, "history_mad": 0.001,
        "upper_bound": 0.006})
    assert result.description is not None and "above the usual range" in result.description

"""`recon-pipeline report --mismatches REPORT_ID [--csv | --json]`: every mismatch of a
report, one line per drifted field, exactly as recorded."""

from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from recon_pipeline.cli.main import main
from recon_pipeline.stores import reports
from recon_pipeline_tests.conftest import ServerUrls

AT = datetime(2026, 3, 1, 12, tzinfo=UTC)


@pytest.fixture
def cli_env(pg_url: str, servers: ServerUrls, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", pg_url)
    monkeypatch.setenv("MONGODB_URL", servers.mongodb_url)


def recorded_report(engine: sa.Engine) -> int:
    """A report with one mismatch of each kind, a two-field mismatch and a failed repair."""
    report_id = reports.insert_report(engine, {"run_id": "r1", "window_start": AT,
                                               "window_end": AT, "finished_at": AT})
    rows: list[dict[str, Any]] = [
        {"entity": "clients", "record_key": "C0001", "kind": "field_mismatch",
         "fields": {"status": {"source": "active", "target": "stale-status"},
                    "contact.email": {"source": "a@x.io", "target": None}},
         "repair_status": "repaired"},
        {"entity": "creditor_debts", "record_key": "17", "kind": "missing_in_mongo",
         "fields": None, "repair_status": "failed", "repair_error": "write error, 'quoted'"},
        {"entity": "clients", "record_key": "ORPHAN0001", "kind": "orphan_in_mongo",
         "fields": None, "repair_status": "reported"},
        {"entity": "incoming_emails", "record_key": "5", "kind": "field_mismatch",
         "fields": {"extracted_amount": {"source": "12.50", "target": 12.4}},
         "repair_status": "dry_run"},
    ]
    # One executemany: every row names the same columns.
    reports.insert_mismatches(engine, report_id,
                              [{"repair_error": None, **row} for row in rows], AT)
    return report_id


CSV = "".join(line + "\n" for line in [
    "entity,key,kind,field,source_value,target_value,repair_status,repair_error",
    'clients,C0001,field_mismatch,contact.email,"""a@x.io""",null,repaired,',
    'clients,C0001,field_mismatch,status,"""active""","""stale-status""",repaired,',
    "creditor_debts,17,missing_in_mongo,,,,failed,\"write error, 'quoted'\"",
    "clients,ORPHAN0001,orphan_in_mongo,,,,reported,",
    'incoming_emails,5,field_mismatch,extracted_amount,"""12.50""",12.4,dry_run,',
])


def test_csv_lists_every_mismatch_field_by_field(
    cli_env: None, pg_engine: sa.Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    report_id = recorded_report(pg_engine)
    assert main(["report", "--mismatches", str(report_id), "--csv"]) == 0
    assert capsys.readouterr().out == CSV


def test_text_lists_the_same_lines(
    cli_env: None, pg_engine: sa.Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    report_id = recorded_report(pg_engine)
    assert main(["report", "--mismatches", str(report_id)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split() for line in out] == [
        ["entity", "key", "kind", "field", "source", "->", "target", "repair_status"],
        ["clients", "C0001", "field_mismatch", "contact.email", '"a@x.io"', "->", "null",
         "repaired"],
        ["clients", "C0001", "field_mismatch", "status", '"active"', "->", '"stale-status"',
         "repaired"],
        ["creditor_debts", "17", "missing_in_mongo", "-", "-", "failed", "(write", "error,",
         "'quoted')"],
        ["clients", "ORPHAN0001", "orphan_in_mongo", "-", "-", "reported"],
        ["incoming_emails", "5", "field_mismatch", "extracted_amount", '"12.50"', "->",
         "12.4", "dry_run"],
        ["report", f"{report_id}:", "5", "mismatch", "lines"],
    ]


def test_json_rows_and_a_report_without_mismatches(
    cli_env: None, pg_engine: sa.Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    report_id = recorded_report(pg_engine)
    assert main(["report", "--mismatches", str(report_id), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 5 and rows[2] == {
        "entity": "creditor_debts", "key": "17", "kind": "missing_in_mongo", "field": "",
        "source_value": "", "target_value": "", "repair_status": "failed",
        "repair_error": "write error, 'quoted'"}
    empty = reports.insert_report(pg_engine, {"run_id": "r2"})
    assert main(["report", "--mismatches", str(empty)]) == 0
    assert capsys.readouterr().out == f"report {empty}: no mismatches\n"
    assert main(["report", "--mismatches", str(empty), "--csv"]) == 0
    assert capsys.readouterr().out == (
        "entity,key,kind,field,source_value,target_value,repair_status,repair_error\n")


@pytest.mark.parametrize(("argv", "message"), [
    (["report", "--mismatches", "999999"],
     "report 999999 not found (`recon-pipeline report` lists the recent ones)"),
    (["report", "--mismatches", "1", "--last", "3"],
     "--last cannot be combined with --mismatches"),
    (["report", "--csv"], "--csv goes with --mismatches REPORT_ID"),
    (["report", "--mismatches", "1", "--csv", "--json"], "--csv and --json exclude each other"),
], ids=["unknown-id", "with-last", "csv-alone", "csv-and-json"])
def test_bad_arguments_exit_2(
    argv: list[str], message: str, cli_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert (out, err) == ("", f"recon-pipeline: error: {message}\n")


@pytest.mark.parametrize("limit", [1, 2, 3, 5, 20])
def test_the_first_lines_are_the_head_of_the_full_listing(
    limit: int, pg_engine: sa.Engine
) -> None:
    """The materialization's sample (`limit` lines) expands only the first mismatches."""
    report_id = recorded_report(pg_engine)
    every = list(reports.iter_mismatch_lines(pg_engine, report_id))
    assert reports.mismatch_lines(pg_engine, report_id, limit) == every[:limit]

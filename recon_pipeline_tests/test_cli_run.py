"""`recon-pipeline run` and `report`: one run of the job through Dagster, the report
printed, exit codes of SPEC 8, secrets never printed."""

import json
from typing import Any

import pytest
import sqlalchemy as sa
from pymongo.database import Database

from recon_pipeline.cli import main
from recon_pipeline.engine.mapping import ReconConfig
from recon_pipeline_tests.conftest import mongo_url_of
from recon_pipeline_tests.dagster_support import WINDOW_END, WINDOW_START, seed


@pytest.fixture
def cli_env(pg_url: str, mongo_db: Database[Any], monkeypatch: pytest.MonkeyPatch) -> str:
    """The CLI pointed at the test servers, the password spelled out (trust auth ignores
    it), so any leak of it would show."""
    url = sa.make_url(pg_url).set(password="s3cret-pw").render_as_string(hide_password=False)
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("MONGODB_URL", mongo_url_of(mongo_db))
    monkeypatch.setenv("MONGODB_DATABASE", mongo_db.name)
    for name in ("DAGSTER_HOME", "RECON_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    return url


def test_run_prints_the_json_report_and_exits_1_when_not_success(
    cli_env: str, pg_engine: sa.Engine, mongo_db: Database[Any], config: ReconConfig,
    capsys: pytest.CaptureFixture[str],
) -> None:
    seeded = seed(pg_engine, mongo_db, config)
    code = main(["run", "--start", WINDOW_START.isoformat(), "--end", WINDOW_END.isoformat(),
                 "--json"])
    out, err = capsys.readouterr()
    assert code == 1, err
    report = json.loads(out)
    assert {name: report[name] for name in seeded.counts} == seeded.counts
    assert (report["status"], report["window_start"], report["window_end"]) == (
        "needs_attention", WINDOW_START.isoformat(), WINDOW_END.isoformat())
    assert "s3cret-pw" not in out + err


def test_a_clean_run_exits_0_and_report_lists_it(
    cli_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "--lookback-hours", "2", "--entity", "clients"]) == 0
    text = capsys.readouterr().out
    assert "status success" in text and "checked 0" in text
    assert main(["report", "--last", "3", "--json"]) == 0
    [listed] = json.loads(capsys.readouterr().out)
    assert listed["status"] == "success" and listed["records_checked"] == 0


@pytest.mark.parametrize(("argv", "message"), [
    (["run", "--start", "2026-03-01T00:00Z"], "--start and --end go together"),
    (["run", "--start", "2026-03-01T00:00Z", "--end", "2026-03-01T02:00Z",
      "--lookback-hours", "3"], "cannot be combined"),
    (["run", "--lookback-hours", "-1"], "must be positive"),
    (["run", "--start", "yesterday", "--end", "today"], "not an ISO 8601 datetime"),
    (["run", "--start", "2026-03-02T00:00Z", "--end", "2026-03-01T00:00Z"], "window is empty"),
    (["run", "--entity", "invoices"], "unknown entity 'invoices'"),
    (["report", "--last", "0"], "--last must be at least 1"),
])
def test_bad_arguments_exit_2_with_a_clear_message(
    cli_env: str, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "s3cret-pw" not in err


def test_unreachable_postgres_exits_1_masked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://u:s3cret-pw@127.0.0.1:1/x")
    monkeypatch.setenv("MONGODB_URL", "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=200")
    assert main(["run"]) == 1
    err = capsys.readouterr().err
    assert "cannot connect to PostgreSQL" in err and "s3cret-pw" not in err
